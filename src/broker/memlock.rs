//! `<memoryBacking><locked/>`: the broker lets the guest's helper lock its
//! RAM. The helper locks only guest RAM (`mlock2(MLOCK_ONFAULT)`, see the
//! helper's `vm/builder.rs`), so its `RLIMIT_MEMLOCK` is set to guest RAM
//! plus [`MARGIN_BYTES`], before it is told to start: a limit that is too
//! low would make its `mlock2` fail and the start with it. Raising the
//! hard limit needs `CAP_SYS_RESOURCE`; a host that withholds it (a
//! container: this project's CI machine has no `CAP_SYS_RESOURCE` and an
//! 8 MiB hard limit) still locks when the broker holds `CAP_IPC_LOCK`,
//! since the helper locks before it is confined, with the capabilities it
//! inherited (which bypass the limit), and drops them right after; the
//! lock stays. With neither, the start fails, naming the limit. A guest
//! larger than the host's memory can never be locked: that start is
//! refused before anything is spawned.

use nix::unistd::Pid;

use crate::privsep::CallError;

/// Room above guest RAM in the helper's limit: what the kernel may count
/// beside the locked RAM ranges (nothing else is locked today).
pub const MARGIN_BYTES: u64 = 64 << 20;

/// The `RLIMIT_MEMLOCK` a helper of `guest_bytes` of RAM gets.
pub fn limit_for(guest_bytes: u64) -> u64 {
    guest_bytes.saturating_add(MARGIN_BYTES)
}

/// Refuses to lock more than the host has (`host_kib`, its total memory).
pub fn check(name: &str, guest_bytes: u64, host_kib: u64) -> Result<(), CallError> {
    if limit_for(guest_bytes) > host_kib.saturating_mul(1024) {
        return Err(CallError::OperationFailed(format!(
            "cannot lock the memory of guest '{name}' (<memoryBacking><locked/>): {} MiB of guest RAM plus {} MiB \
             is more than the host's {} MiB",
            guest_bytes >> 20,
            MARGIN_BYTES >> 20,
            host_kib >> 10
        )));
    }
    Ok(())
}

/// Raises helper `pid`'s `RLIMIT_MEMLOCK` (soft and hard) to fit guest RAM
/// of `guest_bytes`; the broker's `CAP_SYS_RESOURCE` allows raising the hard
/// limit.
pub fn raise(name: &str, pid: Pid, guest_bytes: u64) -> Result<(), CallError> {
    let limit = limit_for(guest_bytes);
    let new = libc::rlimit64 { rlim_cur: limit, rlim_max: limit };
    // SAFETY: `new` is a valid rlimit64 that outlives the call; the old
    // value is not asked for (null).
    let rc = unsafe { libc::prlimit64(pid.as_raw(), libc::RLIMIT_MEMLOCK, &new, std::ptr::null_mut()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let ipc_lock = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_IPC_LOCK).unwrap_or(false);
        if e.raw_os_error() == Some(libc::EPERM) && ipc_lock {
            log::info!(
                "guest '{name}': RLIMIT_MEMLOCK stays as it is ({e}); its helper locks its memory under CAP_IPC_LOCK \
                 before it is confined"
            );
            return Ok(());
        }
        return Err(CallError::OperationFailed(format!(
            "cannot lock the memory of guest '{name}' (<memoryBacking><locked/>): raising its helper's \
             RLIMIT_MEMLOCK to {} MiB: {e}",
            limit >> 20
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_fits_guest_ram_and_a_guest_larger_than_the_host_is_refused() {
        assert_eq!(limit_for(1 << 30), (1 << 30) + MARGIN_BYTES);
        assert!(check("g", 1 << 30, 4 << 20).is_ok());
        let e = check("g", 8 << 30, 4 << 20).unwrap_err().to_string();
        assert!(e.contains("8192 MiB") && e.contains("4096 MiB") && e.contains("'g'"), "{e}");
    }

    #[test]
    fn a_child_gets_the_limit() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let raised = raise("g", pid, 1 << 20);
        let may = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE).unwrap_or(false);
        let status = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        if may {
            assert!(raised.is_ok(), "{raised:?}");
            let line = status.lines().find(|l| l.starts_with("Max locked memory")).unwrap();
            let want = limit_for(1 << 20).to_string();
            assert_eq!(line.split_whitespace().filter(|w| *w == want).count(), 2, "{line}");
        } else {
            // Without CAP_SYS_RESOURCE the limit stays; the start goes on only
            // where the helper will lock under CAP_IPC_LOCK.
            let ipc = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_IPC_LOCK).unwrap_or(false);
            assert_eq!(raised.is_ok(), ipc, "{raised:?}");
        }
    }
}
