//! Guest RAM the broker creates for `<memoryBacking>`: a memfd, with huge
//! pages (`MFD_HUGETLB`, 2 MiB or 1 GiB) where the domain asks, sized and,
//! for huge pages, allocated whole before the helper exists, so that a host
//! without enough free huge pages fails the start at once, clearly, with
//! nothing half-started. The helper maps it shared; it opens nothing.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

use crate::domain::backing::Backing;
use crate::privsep::CallError;

/// Free huge pages of `kib` KiB on the host (sysfs), 0 if it has none.
pub fn free_hugepages(kib: u64) -> u64 {
    let path = format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB/free_hugepages");
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Creates `bytes` of guest RAM for domain `name` as `backing` says, or
/// `None` for anonymous memory (the helper's own).
pub fn create(name: &str, bytes: u64, backing: &Backing) -> Result<Option<OwnedFd>, CallError> {
    if !backing.needs_fd() {
        return Ok(None);
    }
    let fail = |what: &str, e: nix::Error| {
        CallError::OperationFailed(format!("cannot create guest memory for '{name}': {what}: {e}"))
    };
    let mut flags = nix::sys::memfd::MFdFlags::MFD_CLOEXEC;
    if let Some(kib) = backing.hugepage_kib {
        let page = kib * 1024;
        if !bytes.is_multiple_of(page) {
            return Err(CallError::ConfigUnsupported(format!(
                "guest memory of {} KiB is not a multiple of the {kib} KiB huge page size",
                bytes / 1024
            )));
        }
        let need = bytes / page;
        let free = free_hugepages(kib);
        if need > free {
            return Err(CallError::OperationFailed(format!(
                "not enough free {kib} KiB huge pages for guest '{name}': {need} needed, {free} free"
            )));
        }
        let size = match kib {
            1_048_576 => nix::sys::memfd::MFdFlags::MFD_HUGE_1GB,
            _ => nix::sys::memfd::MFdFlags::MFD_HUGE_2MB,
        };
        flags |= nix::sys::memfd::MFdFlags::MFD_HUGETLB | size;
    }
    let label = CString::new(format!("guest-ram:{}", name.chars().take(40).collect::<String>()).replace('\0', ""))
        .unwrap_or_default();
    let fd = nix::sys::memfd::memfd_create(label.as_c_str(), flags).map_err(|e| fail("memfd_create", e))?;
    let len = i64::try_from(bytes).map_err(|_| CallError::InvalidArg("guest memory too large".into()))?;
    nix::unistd::ftruncate(fd.as_fd(), len).map_err(|e| fail("ftruncate", e))?;
    if let Some(kib) = backing.hugepage_kib {
        // Take the pages now: another guest may not get them in between, and a
        // shortfall is this start's error rather than a guest fault later.
        nix::fcntl::fallocate(fd.as_fd(), nix::fcntl::FallocateFlags::empty(), 0, len).map_err(|e| {
            CallError::OperationFailed(format!(
                "not enough free {kib} KiB huge pages for guest '{name}': allocating {} MiB: {e}",
                bytes >> 20
            ))
        })?;
    }
    Ok(Some(fd))
}
