//! Confinement shared by all processes: ids, capabilities, landlock, seccomp, self-checks.
//!
//! Each process's privileges are written down once, in [`profiles`]; one
//! function, [`confine`], applies a profile in the only safe order, and
//! [`verify`] proves afterwards, from the kernel's own answers, that it holds.

mod caps;
mod ids;
mod landlock;
pub mod profiles;
pub mod seccomp;
mod verify;

pub use caps::restrict_to;
pub use profiles::{BROKER_CAPS, Profile};
pub use seccomp::Thread;
pub use verify::{check_process, verify};

use nix::errno::Errno;

/// Why a process could not be confined, or its confinement does not hold.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Changing uid/gid/groups failed.
    #[error("cannot switch to uid {uid} gid {gid}: {source}")]
    Ids {
        /// Target uid.
        uid: u32,
        /// Target gid.
        gid: u32,
        /// The failing call's error.
        #[source]
        source: Errno,
    },
    /// A capability operation failed.
    #[error("cannot drop capabilities: {0}")]
    Caps(String),
    /// A prctl (no_new_privs, dumpable, parent-death signal) failed.
    #[error("prctl {what}: {source}")]
    Prctl {
        /// Which setting.
        what: &'static str,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The parent died before the parent-death signal was armed.
    #[error("parent process exited during start-up")]
    Orphaned,
    /// The landlock ruleset could not be enforced.
    #[error("landlock: {0}")]
    Landlock(String),
    /// Loading the seccomp filter failed.
    #[error("seccomp filter {thread:?}: {reason}")]
    Seccomp {
        /// The thread kind.
        thread: Thread,
        /// Why.
        reason: String,
    },
    /// A self-check found the confinement not in force.
    #[error("sandbox does not hold: {0}")]
    NotHolding(String),
}

/// Applies `profile` to the calling process (and thread, for seccomp and
/// landlock: call it before starting any thread).
///
/// The order matters:
/// 1. bounding-set drop while we still have CAP_SETPCAP;
/// 2. groups, gid, then uid: the uid change clears every remaining capability,
///    and nothing after it needs one;
/// 3. the parent-death signal, re-armed after the uid change (which clears it),
///    then a check that the parent is still the one we expect;
/// 4. not dumpable, so nothing with our uid can ptrace or read our memory;
/// 5. no_new_privs, which landlock and an unprivileged seccomp load require;
/// 6. landlock with no filesystem access, probed before seccomp forbids the probe;
/// 7. seccomp last, since it forbids the syscalls the earlier steps use.
pub fn confine(profile: &Profile) -> Result<(), SandboxError> {
    let root = nix::unistd::geteuid().is_root();
    if root {
        caps::drop_bounding_set()?;
    }
    if let Some((uid, gid)) = profile.ids {
        ids::switch(uid, gid)?;
    }
    caps::clear_all()?;
    if let Some(parent) = profile.parent {
        prctl("parent-death signal", || nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL))?;
        if nix::unistd::getppid() != parent {
            return Err(SandboxError::Orphaned);
        }
    }
    prctl("dumpable", || nix::sys::prctl::set_dumpable(false))?;
    prctl("no_new_privs", nix::sys::prctl::set_no_new_privs)?;
    if profile.no_filesystem {
        landlock::deny_filesystem()?;
        landlock::probe_denied()?;
    }
    if let Some(thread) = profile.seccomp {
        seccomp::apply(thread)?;
    }
    Ok(())
}

fn prctl(what: &'static str, f: impl FnOnce() -> nix::Result<()>) -> Result<(), SandboxError> {
    f().map_err(|source| SandboxError::Prctl { what, source })
}
