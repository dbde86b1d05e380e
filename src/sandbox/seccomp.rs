//! Seccomp filters compiled from `policy/seccomp/*.json` by `build.rs`.

use seccompiler::sock_filter;

include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

use super::SandboxError;

/// Every kind of thread the daemon runs under a filter. Named the same in
/// code, in `policy/seccomp/<process>.json` (`<thread>` key) and in
/// `/proc/<tid>/comm` (`<process>-<thread>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thread {
    /// The frontend's event loop.
    FrontendMain,
    /// The TLS frontend's handshake thread, which waits on the broker's
    /// signatures (`frontend/handshakes.rs`).
    FrontendTls,
    /// A guest helper's control loop (console input, broker commands).
    HelperVmm,
    /// A guest helper's vCPU threads.
    HelperVcpu,
    /// A guest helper's disk I/O threads.
    HelperIo,
    /// A guest helper's network interface threads.
    HelperNet,
}

impl Thread {
    /// The compiled filter for this thread.
    pub fn policy(self) -> PolicyFilter {
        match self {
            Thread::FrontendMain => PolicyFilter::FrontendMain,
            Thread::FrontendTls => PolicyFilter::FrontendTls,
            Thread::HelperVmm => PolicyFilter::HelperVmm,
            Thread::HelperVcpu => PolicyFilter::HelperVcpu,
            Thread::HelperIo => PolicyFilter::HelperIo,
            Thread::HelperNet => PolicyFilter::HelperNet,
        }
    }

    /// The thread that runs under `filter`. Exhaustive on purpose: a policy
    /// key with no thread in the code does not compile.
    pub fn for_policy(filter: PolicyFilter) -> Thread {
        match filter {
            PolicyFilter::FrontendMain => Thread::FrontendMain,
            PolicyFilter::FrontendTls => Thread::FrontendTls,
            PolicyFilter::HelperVmm => Thread::HelperVmm,
            PolicyFilter::HelperVcpu => Thread::HelperVcpu,
            PolicyFilter::HelperIo => Thread::HelperIo,
            PolicyFilter::HelperNet => Thread::HelperNet,
        }
    }

    /// `/proc/<tid>/comm` of this thread (at most 15 bytes).
    pub fn comm(self) -> &'static str {
        match self {
            Thread::FrontendMain => "frontend-main",
            Thread::FrontendTls => "frontend-tls",
            Thread::HelperVmm => "helper-vmm",
            Thread::HelperVcpu => "helper-vcpu",
            Thread::HelperIo => "helper-io",
            Thread::HelperNet => "helper-net",
        }
    }
}

/// Names the calling thread and loads its filter. The filter's default action
/// kills the whole process: a thread that strays is not left half-alive.
pub fn apply(thread: Thread) -> Result<(), SandboxError> {
    apply_named(thread, thread.comm().to_owned())
}

/// [`apply`] for one of several threads of a kind, whose name gets its index
/// (`helper-vcpu3`): the broker's statistics tell a guest's vCPUs apart by
/// it in `/proc/<pid>/task/<tid>/comm`. At most 15 bytes are kept, which
/// holds every index up to 9999.
pub fn apply_numbered(thread: Thread, index: u32) -> Result<(), SandboxError> {
    apply_named(thread, format!("{}{index}", thread.comm()))
}

fn apply_named(thread: Thread, name: String) -> Result<(), SandboxError> {
    let err = |reason: String| SandboxError::Seccomp { thread, reason };
    let name = std::ffi::CString::new(name).map_err(|e| err(e.to_string()))?;
    nix::sys::prctl::set_name(&name).map_err(|e| err(e.to_string()))?;
    let program: Vec<sock_filter> =
        thread.policy().instructions().iter().map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k }).collect();
    seccompiler::apply_filter(&program).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_filter_has_a_thread_and_back() {
        for &f in PolicyFilter::ALL {
            assert_eq!(Thread::for_policy(f).policy(), f);
            assert!(!f.instructions().is_empty());
        }
    }

    #[test]
    fn comm_names_fit_the_kernel_limit() {
        for &f in PolicyFilter::ALL {
            assert!(Thread::for_policy(f).comm().len() <= 15);
        }
    }
}
