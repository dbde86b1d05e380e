//! PCI: bus 0 with a host bridge, reached through ports 0xCF8/0xCFC and an
//! ECAM window ([`bus`]), each function's config space ([`config`]), and
//! the allocator that places BARs in the 32-bit hole below the ECAM window.
//!
//! The guest-physical layout above RAM (which ends at 3 GiB at most):
//! `0xC000_0000..0xE000_0000` BARs, `0xE000_0000` + 1 MiB ECAM for bus 0,
//! then the I/O APIC and local APIC pages at `0xFEC0_0000`/`0xFEE0_0000`.

pub mod bus;
pub mod config;
pub mod msix;
pub mod msix_irq;

/// Where 32-bit BARs go.
pub const BAR_HOLE_START: u64 = 0xc000_0000;
/// End of the BAR hole, and where ECAM starts.
pub const ECAM_BASE: u64 = 0xe000_0000;

/// A PCI function as the bus sees it: its config space.
pub trait PciDevice: Send {
    /// A config read of 1, 2 or 4 bytes at `offset` (0-4095; past 255 reads all-ones).
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    /// A config write.
    fn config_write(&mut self, offset: usize, data: &[u8]);
}

/// Hands out naturally aligned BAR ranges from the 32-bit hole, bottom up.
#[derive(Debug)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl Default for BarAllocator {
    fn default() -> Self {
        BarAllocator { next: BAR_HOLE_START, end: ECAM_BASE }
    }
}

impl BarAllocator {
    /// A range of `size` (a power of two) aligned to its size, or `None` when the hole is full.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        let at = self.next.checked_next_multiple_of(size)?;
        let end = at.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_aligned_disjoint_and_bounded() {
        let mut a = BarAllocator::default();
        assert_eq!(a.allocate(0x4000), Some(0xc000_0000));
        assert_eq!(a.allocate(0x1000), Some(0xc000_4000));
        assert_eq!(a.allocate(0x8000), Some(0xc000_8000), "aligned up to its size");
        assert_eq!(a.allocate(0x3000), None, "not a power of two");
        assert_eq!(a.allocate(0x4000_0000), None, "past the hole");
    }
}
