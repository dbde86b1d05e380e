//! Confines the helper, in the order the steps need: once the VM is built
//! (nothing needs privilege or a path any more) and before the guest runs
//! a single instruction, the process gets new namespaces, the kick handler
//! (`rt_sigaction` is not in any filter), then the sandbox profile (the
//! guest's ids, no capabilities, no_new_privs, landlock with no
//! filesystem). Each vCPU thread puts its own filter on before it runs the
//! guest, and each disk's I/O thread and network interface's thread (started after
//! the process is confined, so they inherit all of it) before it serves a request; the control thread's goes on last, once the vCPU threads exist
//! (it allows no `clone`), and is checked from inside.

use libvirtd::sandbox::{self, Profile, SandboxError, Thread, seccomp};

use crate::vcpu::kick;

/// Why the process could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The kick handler could not be installed.
    #[error("sigaction: {0}")]
    KickHandler(std::io::Error),
    /// A sandbox step failed.
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
}

/// Confines the process for a guest running under `ids`; returns the
/// profile, for [`control_thread`] to check.
pub fn process(ids: Option<(u32, u32)>) -> Result<Profile, ConfineError> {
    isolate_namespaces();
    kick::install_handler().map_err(ConfineError::KickHandler)?;
    let profile = Profile::helper(ids);
    sandbox::confine(&profile)?;
    Ok(profile)
}

/// Run first on vCPU thread `index`: its own, narrower filter, and its
/// name with its index (`helper-vcpu3`), by which the broker's statistics
/// tell the vCPUs apart.
pub fn vcpu_thread(index: usize) -> Result<(), String> {
    seccomp::apply_numbered(Thread::HelperVcpu, index as u32).map_err(|e| e.to_string())
}

/// Run first on disk I/O thread `index`: its filter (no path can be
/// opened, only I/O on the fds it has) and its name (`helper-io0`).
pub fn io_thread(index: usize) -> Result<(), String> {
    seccomp::apply_numbered(Thread::HelperIo, index as u32).map_err(|e| e.to_string())
}

/// Run first on network interface thread `index`: its filter (no path can
/// be opened; reads and writes on its tap and eventfds, and the tap's
/// offloads) and its name (`helper-net0`).
pub fn net_thread(index: usize) -> Result<(), String> {
    seccomp::apply_numbered(Thread::HelperNet, index as u32).map_err(|e| e.to_string())
}

/// The control thread's filter, then a check from inside that all of the
/// profile holds.
pub fn control_thread(profile: Profile) -> Result<(), ConfineError> {
    seccomp::apply(Thread::HelperVmm)?;
    sandbox::verify(&Profile { seccomp: Some(Thread::HelperVmm), ..profile })?;
    Ok(())
}

/// New mount, IPC, network and UTS namespaces where the host allows (root):
/// the guest's process then sees no host mounts, IPC objects or network.
fn isolate_namespaces() {
    use nix::sched::{CloneFlags, unshare};
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let flags =
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    if let Err(e) = unshare(flags) {
        eprintln!("libvirt-helper: cannot create namespaces: {e}");
    }
}
