//! One PCI function's 256-byte configuration space (type 0 header): the
//! registers as 64 dwords with a mask of the bits a guest may write, BARs
//! that answer the all-ones sizing write with their size, and a capability
//! list built by appending.
//!
//! BARs are placed by the helper (as firmware would) and stay where they
//! were placed: a guest may size them and write the same address back, but
//! a write of another address is kept out of the register and reported, so
//! the guest never believes a device moved when its MMIO range did not.

/// Registers by dword index.
const VENDOR_DEVICE: usize = 0;
const COMMAND_STATUS: usize = 1;
const CLASS_REVISION: usize = 2;
const HEADER_TYPE: usize = 3;
const BAR0: usize = 4;
const SUBSYSTEM: usize = 11;
const CAP_POINTER: usize = 13;
const INTERRUPT: usize = 15;
/// Status register: the capability list is valid.
const STATUS_CAP_LIST: u32 = 1 << 20;
/// Command register: memory space decoding on.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Where the first capability goes (after the type 0 header).
const FIRST_CAP: usize = 0x40;
/// Config space size in bytes.
pub const CONFIG_SIZE: usize = 256;

/// What identifies a function.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code (base class, subclass, prog-if) in the low 24 bits.
    pub class: u32,
    /// Revision.
    pub revision: u8,
    /// Subsystem vendor.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem: u16,
}

/// A 32-bit memory BAR: where the helper put it and how large it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Guest-physical address.
    pub addr: u32,
    /// Size, a power of two of at least 16 bytes.
    pub size: u32,
}

/// Something a config write did that the device owner must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigEvent {
    /// The guest wrote an address other than the one the BAR sits at.
    BarMoveRefused {
        /// BAR index.
        bar: usize,
        /// What it wrote.
        addr: u32,
    },
}

/// A type 0 configuration space.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    regs: [u32; CONFIG_SIZE / 4],
    writable: [u32; CONFIG_SIZE / 4],
    bars: [Option<Bar>; 6],
    /// Where the last capability's next pointer is, and the next free offset.
    last_cap: Option<usize>,
    next_cap: usize,
}

impl ConfigSpace {
    /// A function with `id` that raises INTx `pin` (1 = INTA, 0 = none) on `line`.
    pub fn new(id: Identity, pin: u8, line: u8) -> ConfigSpace {
        let mut regs = [0u32; CONFIG_SIZE / 4];
        let mut writable = [0u32; CONFIG_SIZE / 4];
        regs[VENDOR_DEVICE] = u32::from(id.vendor) | (u32::from(id.device) << 16);
        regs[CLASS_REVISION] = (id.class << 8) | u32::from(id.revision);
        regs[HEADER_TYPE] = 0; // type 0, single function
        regs[SUBSYSTEM] = u32::from(id.subsystem_vendor) | (u32::from(id.subsystem) << 16);
        regs[INTERRUPT] = u32::from(line) | (u32::from(pin) << 8);
        // Command: I/O, memory, bus master, INTx disable.
        writable[COMMAND_STATUS] = 0x0407;
        // Interrupt line is scratch for the OS.
        writable[INTERRUPT] = 0xff;
        ConfigSpace { regs, writable, bars: [None; 6], last_cap: None, next_cap: FIRST_CAP }
    }

    /// Places BAR `index` (0-5) at `bar`: a 32-bit, non-prefetchable memory BAR.
    pub fn set_bar(&mut self, index: usize, bar: Bar) {
        debug_assert!(bar.size.is_power_of_two() && bar.size >= 16 && bar.addr.is_multiple_of(bar.size));
        self.bars[index] = Some(bar);
        self.regs[BAR0 + index] = bar.addr;
        self.writable[BAR0 + index] = !(bar.size - 1);
    }

    /// BAR `index`, if it has one.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// Appends a capability with id `id` whose body (after id and next
    /// pointer) is `body`; returns its offset, or `None` if it does not fit.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Option<usize> {
        let len = (2 + body.len()).next_multiple_of(4);
        let at = self.next_cap;
        if at + len > CONFIG_SIZE {
            return None;
        }
        let mut bytes = vec![id, 0];
        bytes.extend_from_slice(body);
        for (i, b) in bytes.iter().enumerate() {
            self.set_byte(at + i, *b);
        }
        match self.last_cap {
            Some(prev) => self.set_byte(prev + 1, at as u8),
            None => {
                self.regs[CAP_POINTER] = at as u32;
                self.regs[COMMAND_STATUS] |= STATUS_CAP_LIST;
            }
        }
        self.last_cap = Some(at);
        self.next_cap = at + len;
        Some(at)
    }

    /// Lets the guest change the bits of `mask` in the dword at `offset`
    /// (a capability's registers the guest programs).
    pub fn set_writable(&mut self, offset: usize, mask: u32) {
        if let Some(w) = self.writable.get_mut(offset / 4) {
            *w = mask;
        }
    }

    fn set_byte(&mut self, offset: usize, b: u8) {
        let shift = (offset % 4) * 8;
        let r = &mut self.regs[offset / 4];
        *r = (*r & !(0xff << shift)) | (u32::from(b) << shift);
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.regs[COMMAND_STATUS] as u16
    }

    /// Reads `data.len()` bytes (1, 2 or 4, not crossing a dword) at `offset`;
    /// outside the space, all-ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        if !fits(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let dword = self.regs[offset / 4].to_le_bytes();
        let at = offset % 4;
        data.copy_from_slice(&dword[at..at + data.len()]);
    }

    /// Writes `data` at `offset`, only the bits the guest may change.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Option<ConfigEvent> {
        if !fits(offset, data.len()) {
            return None;
        }
        let index = offset / 4;
        let at = offset % 4;
        let mut value = self.regs[index].to_le_bytes();
        value[at..at + data.len()].copy_from_slice(data);
        let mut mask = [0u8; 4];
        mask[at..at + data.len()].fill(0xff);
        let mask = u32::from_le_bytes(mask) & self.writable[index];
        let value = u32::from_le_bytes(value);
        let new = (self.regs[index] & !mask) | (value & mask);
        if let Some(bar) = index.checked_sub(BAR0).filter(|b| *b < 6).and_then(|b| self.bars[b].map(|bar| (b, bar))) {
            let (i, bar) = bar;
            let sizing = !(bar.size - 1);
            // The all-ones write reads back the size; the placed address
            // restores it; anything else is refused (see the module doc).
            if new == sizing || new == bar.addr {
                self.regs[index] = new;
                return None;
            }
            self.regs[index] = bar.addr;
            return Some(ConfigEvent::BarMoveRefused { bar: i, addr: new });
        }
        self.regs[index] = new;
        None
    }
}

/// Whether an access of `len` at `offset` is one the space answers.
fn fits(offset: usize, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len) && offset + len <= CONFIG_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            vendor: 0x1af4,
            device: 0x1042,
            class: 0x01_00_00,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        }
    }

    fn read32(c: &ConfigSpace, off: usize) -> u32 {
        let mut d = [0u8; 4];
        c.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn the_header_says_who_it_is_and_keeps_read_only_bits() {
        let mut c = ConfigSpace::new(id(), 1, 10);
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        assert_eq!(read32(&c, 8) >> 8, 0x01_00_00);
        assert_eq!(read32(&c, 0x2c), 0x1100_1af4);
        assert_eq!(read32(&c, 0x3c) & 0xffff, 0x010a);
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(read32(&c, 0), 0x1042_1af4, "ids are read-only");
        c.write(4, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(c.command(), 0x0407, "only the command bits we implement stick");
        let mut b = [0u8; 2];
        c.read(0, &mut b);
        assert_eq!(b, [0xf4, 0x1a]);
        let mut odd = [0u8; 2];
        c.read(1, &mut odd);
        assert_eq!(odd, [0xff, 0xff], "a misaligned access reads all-ones");
        c.read(0x100, &mut b);
        assert_eq!(b, [0xff, 0xff]);
    }

    #[test]
    fn a_bar_is_sized_and_restored_but_not_moved() {
        let mut c = ConfigSpace::new(id(), 1, 10);
        c.set_bar(0, Bar { addr: 0xc000_0000, size: 0x4000 });
        assert_eq!(read32(&c, 0x10), 0xc000_0000);
        assert_eq!(c.write(0x10, &0xffff_ffffu32.to_le_bytes()), None);
        assert_eq!(read32(&c, 0x10), 0xffff_c000, "the size");
        assert_eq!(c.write(0x10, &0xc000_0000u32.to_le_bytes()), None);
        assert_eq!(read32(&c, 0x10), 0xc000_0000);
        let moved = c.write(0x10, &0xd000_0000u32.to_le_bytes());
        assert_eq!(moved, Some(ConfigEvent::BarMoveRefused { bar: 0, addr: 0xd000_0000 }));
        assert_eq!(read32(&c, 0x10), 0xc000_0000);
        assert_eq!(read32(&c, 0x14), 0, "no BAR 1");
        c.write(0x14, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read32(&c, 0x14), 0, "an absent BAR sizes to zero");
    }

    #[test]
    fn capabilities_chain_from_the_pointer() {
        let mut c = ConfigSpace::new(id(), 1, 10);
        assert_eq!(read32(&c, 4) & STATUS_CAP_LIST, 0);
        let a = c.add_capability(0x09, &[14, 1, 2, 3]).unwrap();
        let b = c.add_capability(0x09, &[14, 4]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48);
        assert_ne!(read32(&c, 4) & STATUS_CAP_LIST, 0);
        assert_eq!(read32(&c, 0x34) & 0xff, 0x40);
        assert_eq!(read32(&c, 0x40), 0x010e_4809, "id, next, body");
        assert_eq!(read32(&c, 0x48) & 0xffff, 0x0009, "the last one ends the list");
        c.write(0x40, &[0, 0, 0, 0]);
        assert_eq!(read32(&c, 0x40) & 0xff, 0x09, "capabilities are read-only");
        let mut full = ConfigSpace::new(id(), 1, 10);
        let mut n = 0;
        while full.add_capability(0x09, &[0; 14]).is_some() {
            n += 1;
        }
        assert_eq!(n, 12, "192 bytes of capability space, 16 each");
    }
}
