//! Guest accesses to physical addresses where no device and no RAM sit.
//!
//! Real hardware and QEMU answer such a read with all-ones and drop the
//! write; a guest probing for a device it does not have must keep running.
//! Each access is counted and logged on the helper's stderr, rate-limited
//! by count (the 1st, 2nd, 4th, 8th, ... access): a vCPU thread's seccomp
//! filter has no clock, and a guest polling such an address in a loop must
//! not flood the log.

use std::sync::atomic::{AtomicU64, Ordering};

/// Accesses to unassigned MMIO since the helper started.
static COUNT: AtomicU64 = AtomicU64::new(0);

/// A read of `addr` with no device: all-ones.
pub fn read(addr: u64, data: &mut [u8]) {
    data.fill(0xff);
    note("read", addr, data.len());
}

/// A write to `addr` with no device: dropped.
pub fn write(addr: u64, data: &[u8]) {
    note("write", addr, data.len());
}

/// Counts one access; logs it when the count is a power of two.
fn note(what: &str, addr: u64, len: usize) -> u64 {
    let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        eprintln!("libvirt-helper: guest {what} of {len} bytes at unassigned MMIO {addr:#x} ({n} so far)");
    }
    n
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_are_all_ones_and_every_access_is_counted() {
        let mut data = [0u8; 4];
        super::read(0x3ff0_0000, &mut data);
        assert_eq!(data, [0xff; 4]);
        let before = super::note("write", 0, 1);
        super::write(0x3ff0_0000, &[1, 2]);
        assert!(super::note("write", 0, 1) >= before + 2);
    }
}
