//! Where guest RAM sits in guest-physical space: below the 32-bit PCI hole
//! (up to 3 GiB) and, for what does not fit there, from 4 GiB up, as on
//! QEMU's boards. The hole (3-4 GiB) holds the I/O APIC, the local APICs,
//! KVM's TSS and the MMIO of devices to come; it is never RAM. The boot
//! protocols' memory maps (bzImage E820, PVH memmap) are built from
//! [`e820`], the memory slots from [`ram`], so the two cannot disagree.

/// Where the PCI hole begins: the end of low RAM.
pub const LOW_END: u64 = 3 << 30;
/// Where RAM above the hole begins.
pub const HIGH_START: u64 = 4 << 30;
/// The most guest memory a helper gives, in MiB (1 TiB: within the 40
/// physical address bits every x86-64 host with KVM offers).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Low memory below the EBDA, usable by the guest.
const LOW_MEM_END: u64 = 0x9_fc00;
/// Where the kernel goes, and usable RAM resumes, above the BIOS area.
const EXT_START: u64 = 0x10_0000;

/// The guest RAM ranges, (start, length), for `size` bytes of memory.
pub fn ram(size: u64) -> Vec<(u64, u64)> {
    let low = size.min(LOW_END);
    let mut out = vec![(0, low)];
    if size > LOW_END {
        out.push((HIGH_START, size - LOW_END));
    }
    out
}

/// The usable RAM the boot protocols report, (start, length): conventional
/// memory below the EBDA, RAM from 1 MiB to the hole, and RAM above 4 GiB.
pub fn e820(size: u64) -> Vec<(u64, u64)> {
    let mut out = vec![(0, LOW_MEM_END)];
    for (start, len) in ram(size) {
        let from = start.max(EXT_START);
        if start + len > from {
            out.push((from, start + len - from));
        }
    }
    out
}

/// Where guest-physical `start` (a range of [`ram`]) lies in a file that
/// holds all of guest RAM: above the hole, RAM follows low RAM directly.
pub fn file_offset(start: u64) -> u64 {
    if start >= HIGH_START { start - HIGH_START + LOW_END } else { start }
}

/// The end of RAM below 4 GiB (where an initrd must fit for 32-bit loaders).
pub fn low_top(size: u64) -> u64 {
    size.min(LOW_END)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_split_around_the_hole() {
        assert_eq!(ram(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram(3 << 30), vec![(0, 3 << 30)]);
        assert_eq!(ram(6 << 30), vec![(0, 3 << 30), (4 << 30, 3 << 30)]);
        assert_eq!(e820(128 << 20), vec![(0, 0x9_fc00), (0x10_0000, (128 << 20) - 0x10_0000)]);
        let map = e820(6 << 30);
        assert_eq!(map[2], (4 << 30, 3 << 30));
        assert_eq!(map[1], (0x10_0000, (3 << 30) - 0x10_0000));
        // Nothing reported lies in the hole, and the total is what was asked less the BIOS area.
        assert!(map.iter().all(|(s, l)| s + l <= LOW_END || *s >= HIGH_START));
        assert_eq!(low_top(6 << 30), 3 << 30);
    }
}
