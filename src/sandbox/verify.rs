//! Self-checks: the kernel's own answers that a confinement is in force.
//!
//! Run after [`super::confine`], inside the confined process, with only the
//! syscalls its seccomp filter allows for exactly this purpose.

use super::{Profile, SandboxError};

const PR_GET_SECCOMP: libc::c_int = 21;
const SECCOMP_MODE_FILTER: libc::c_int = 2;

/// Checks ids, capabilities, no_new_privs and seccomp mode against `profile`.
/// (Landlock was probed by `confine` before seccomp made the probe impossible.)
pub fn verify(profile: &Profile) -> Result<(), SandboxError> {
    let fail = |what: String| Err(SandboxError::NotHolding(what));
    if let Some((uid, gid)) = profile.ids {
        let u = nix::unistd::getresuid().map_err(|e| SandboxError::NotHolding(e.to_string()))?;
        let g = nix::unistd::getresgid().map_err(|e| SandboxError::NotHolding(e.to_string()))?;
        for id in [u.real, u.effective, u.saved] {
            if id.as_raw() != uid {
                return fail(format!("uid {id} is not {uid}"));
            }
        }
        for id in [g.real, g.effective, g.saved] {
            if id.as_raw() != gid {
                return fail(format!("gid {id} is not {gid}"));
            }
        }
    }
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted, caps::CapSet::Inheritable] {
        let held = caps::read(None, set).map_err(|e| SandboxError::NotHolding(e.to_string()))?;
        if !held.is_empty() {
            return fail(format!("{set:?} capabilities remain: {held:?}"));
        }
    }
    if !nix::sys::prctl::get_no_new_privs().unwrap_or(false) {
        return fail("no_new_privs is not set".into());
    }
    if profile.seccomp.is_some() {
        // SAFETY: PR_GET_SECCOMP takes no pointer arguments and only reads our own mode.
        let mode = unsafe { libc::prctl(PR_GET_SECCOMP, 0, 0, 0, 0) };
        if mode != SECCOMP_MODE_FILTER {
            return fail(format!("seccomp mode is {mode}, not filter"));
        }
    }
    Ok(())
}

/// Checks another process from outside, through `/proc/<pid>/task/*/status`:
/// every thread has `Seccomp: 2`, `NoNewPrivs: 1`, empty capability sets and,
/// if given, the expected uid. The broker runs this on each new frontend
/// rather than trusting the frontend's own report.
pub fn check_process(pid: i32, uid: Option<u32>) -> Result<(), SandboxError> {
    let fail = |what: String| SandboxError::NotHolding(format!("pid {pid}: {what}"));
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| fail(e.to_string()))?;
    let mut seen = 0;
    for task in tasks {
        let task = task.map_err(|e| fail(e.to_string()))?;
        let status = std::fs::read_to_string(task.path().join("status")).map_err(|e| fail(e.to_string()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(str::trim)
                .unwrap_or("")
        };
        for (name, want) in [("Seccomp", "2"), ("NoNewPrivs", "1")] {
            if field(name) != want {
                return Err(fail(format!("{name} is '{}', not {want}", field(name))));
            }
        }
        for name in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            if u64::from_str_radix(field(name), 16) != Ok(0) {
                return Err(fail(format!("{name} is {}", field(name))));
            }
        }
        if let Some(uid) = uid
            && field("Uid").split_whitespace().any(|u| u.parse() != Ok(uid))
        {
            return Err(fail(format!("Uid is '{}', not {uid}", field("Uid"))));
        }
        seen += 1;
    }
    if seen == 0 {
        return Err(fail("no threads".into()));
    }
    Ok(())
}
