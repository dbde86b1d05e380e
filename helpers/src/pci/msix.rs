//! One function's MSI-X state (PCI 3.0, 6.8.2): the vector table and the
//! pending bit array the guest reaches through a BAR, and the enable and
//! function-mask bits of the capability's message control.
//!
//! This is plain state with no KVM in it, so it can be tested alone: the
//! owner asks [`Msix::signal`] whether a vector fires now or waits
//! (masked, its PBA bit set), and acts on the [`Update`]s a guest write
//! returns (a vector's message changed, so its route must; a vector was
//! unmasked with its pending bit set, so it fires now). Every guest offset
//! is checked against the table and PBA sizes, and accesses other than
//! aligned dwords and qwords are ignored (reads give zeros), as the PCI
//! specification allows.

/// The capability id.
pub const CAP_ID: u8 = 0x11;
/// The most vectors a function here offers (a virtio device's queues and
/// its configuration vector).
pub const MAX_VECTORS: u16 = 64;
/// Bytes per table entry.
const ENTRY_LEN: u64 = 16;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: every vector masked.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: this vector masked.
const VECTOR_MASKED: u32 = 1;

/// An MSI message: what the device writes where, as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// The address (0xFEEx_xxxx for a local APIC).
    pub address: u64,
    /// The data (the vector and delivery mode).
    pub data: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    message: MsiMessage,
    control: u32,
}

impl Default for Entry {
    fn default() -> Self {
        // Every vector starts masked (PCI 3.0, 6.8.2.9).
        Entry { message: MsiMessage::default(), control: VECTOR_MASKED }
    }
}

/// What a guest write means for the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// The vector's message changed: its route must follow.
    Message(u16),
    /// The vector was pending and may fire now: its pending bit is clear,
    /// deliver it.
    Fire(u16),
}

/// Whether a signalled vector goes to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Deliver it now.
    Deliver,
    /// Masked: its pending bit is set, it fires on unmask.
    Pending,
    /// No such vector.
    Invalid,
}

/// A function's MSI-X table, PBA and control bits.
#[derive(Debug, Clone)]
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl Msix {
    /// A function with `vectors` vectors (1-[`MAX_VECTORS`], clamped).
    pub fn new(vectors: u16) -> Msix {
        let n = vectors.clamp(1, MAX_VECTORS);
        Msix {
            entries: vec![Entry::default(); usize::from(n)],
            pending: vec![0; usize::from(n).div_ceil(64)],
            enabled: false,
            function_masked: false,
        }
    }

    /// Vectors in the table.
    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// The table's size in bytes.
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_LEN
    }

    /// The PBA's size in bytes.
    pub fn pba_len(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The capability's body after its id and next pointer: message
    /// control (table size - 1), then the table's and the PBA's offset,
    /// each with the BAR index in its low 3 bits.
    pub fn capability(&self, bar: u8, table_offset: u32, pba_offset: u32) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0..2].copy_from_slice(&(self.vectors() - 1).to_le_bytes());
        b[2..6].copy_from_slice(&(table_offset | u32::from(bar & 7)).to_le_bytes());
        b[6..10].copy_from_slice(&(pba_offset | u32::from(bar & 7)).to_le_bytes());
        b
    }

    /// Whether the guest turned MSI-X on (INTx is off while it is).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The message control register the guest wrote (only enable and
    /// function mask count); returns the vectors this unmasked that were
    /// pending, now to fire.
    pub fn set_control(&mut self, control: u16) -> Vec<Update> {
        let was_enabled = self.enabled;
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        let mut out = Vec::new();
        if self.enabled && !was_enabled {
            // Routes follow the table only while enabled: refresh them all.
            out.extend((0..self.vectors()).map(Update::Message));
        }
        if self.enabled {
            out.extend(self.release());
        }
        out
    }

    /// The message of `vector`, while MSI-X is on.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.entries.get(usize::from(vector)).filter(|_| self.enabled).map(|e| e.message)
    }

    fn masked(&self, vector: usize) -> bool {
        self.function_masked || self.entries[vector].control & VECTOR_MASKED != 0
    }

    /// The device wants to raise `vector`.
    pub fn signal(&mut self, vector: u16) -> Signal {
        let v = usize::from(vector);
        if v >= self.entries.len() {
            return Signal::Invalid;
        }
        if self.masked(v) {
            self.pending[v / 64] |= 1 << (v % 64);
            return Signal::Pending;
        }
        Signal::Deliver
    }

    /// Pending vectors no longer masked: their bits cleared, to fire.
    fn release(&mut self) -> Vec<Update> {
        let mut out = Vec::new();
        for v in 0..self.entries.len() {
            if self.pending[v / 64] & (1 << (v % 64)) != 0 && !self.masked(v) {
                self.pending[v / 64] &= !(1 << (v % 64));
                out.push(Update::Fire(v as u16));
            }
        }
        out
    }

    /// A guest read of the table at `offset` (relative to the table).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((index, field)) = self.locate(offset, data.len()) else { return };
        let e = &self.entries[index];
        let words = [e.message.address as u32, (e.message.address >> 32) as u32, e.message.data, e.control];
        let w = field / 4;
        let value =
            if data.len() == 8 { u64::from(words[w]) | (u64::from(words[w + 1]) << 32) } else { u64::from(words[w]) };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    /// A guest write to the table at `offset`.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> Vec<Update> {
        let Some((index, field)) = self.locate(offset, data.len()) else { return Vec::new() };
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(b);
        let before = self.entries[index];
        // One dword or a qword covering two fields.
        let dwords: &[(usize, u32)] = &if data.len() == 8 {
            [(field, value as u32), (field + 4, (value >> 32) as u32)]
        } else {
            [(field, value as u32); 2]
        };
        for &(f, v) in dwords {
            let e = &mut self.entries[index];
            match f {
                0 => e.message.address = (e.message.address & !0xffff_ffff) | u64::from(v),
                4 => e.message.address = (e.message.address & 0xffff_ffff) | (u64::from(v) << 32),
                8 => e.message.data = v,
                _ => e.control = v & VECTOR_MASKED,
            }
        }
        let after = self.entries[index];
        let mut out = Vec::new();
        if after.message != before.message {
            out.push(Update::Message(index as u16));
        }
        if self.enabled && before.control & VECTOR_MASKED != 0 && after.control & VECTOR_MASKED == 0 {
            out.extend(self.release());
        }
        out
    }

    /// A guest read of the PBA at `offset` (relative to the PBA).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) || offset + len > self.pba_len() {
            return;
        }
        let word = self.pending[(offset / 8) as usize];
        let value = if len == 8 { word } else { word >> ((offset % 8) * 8) };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    /// The entry and the byte within it of an aligned dword or qword access.
    fn locate(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        let len = len as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) || offset.checked_add(len)? > self.table_len() {
            return None;
        }
        Some(((offset / ENTRY_LEN) as usize, (offset % ENTRY_LEN) as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w32(m: &mut Msix, off: u64, v: u32) -> Vec<Update> {
        m.table_write(off, &v.to_le_bytes())
    }

    #[test]
    fn the_capability_states_size_and_places() {
        let m = Msix::new(3);
        let c = m.capability(1, 0, 0x800);
        assert_eq!(u16::from_le_bytes([c[0], c[1]]), 2, "table size is N-1");
        assert_eq!(u32::from_le_bytes(c[2..6].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(c[6..10].try_into().unwrap()), 0x801);
        assert_eq!(Msix::new(0).vectors(), 1);
        assert_eq!(Msix::new(5000).vectors(), MAX_VECTORS);
    }

    #[test]
    fn a_programmed_vector_routes_and_delivers_once_unmasked() {
        let mut m = Msix::new(2);
        assert_eq!(m.set_control(CONTROL_ENABLE), [Update::Message(0), Update::Message(1)]);
        assert_eq!(w32(&mut m, 16, 0xfee0_0000), [Update::Message(1)]);
        assert_eq!(w32(&mut m, 16 + 8, 0x41), [Update::Message(1)]);
        assert_eq!(w32(&mut m, 16 + 8, 0x41), [], "the same value changes nothing");
        assert_eq!(m.message(1), Some(MsiMessage { address: 0xfee0_0000, data: 0x41 }));
        assert_eq!(m.signal(1), Signal::Pending, "vectors start masked");
        let mut pba = [0u8; 8];
        m.pba_read(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 2);
        assert_eq!(w32(&mut m, 16 + 12, 0), [Update::Fire(1)], "unmasking fires what was pending");
        m.pba_read(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0);
        assert_eq!(m.signal(1), Signal::Deliver);
        let mut d = [0u8; 8];
        m.table_read(16 + 8, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0x41, "data, then control (unmasked)");
    }

    #[test]
    fn the_function_mask_holds_every_vector() {
        let mut m = Msix::new(2);
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        w32(&mut m, 12, 0);
        assert_eq!(m.signal(0), Signal::Pending);
        assert_eq!(m.set_control(CONTROL_ENABLE), [Update::Fire(0)]);
        assert_eq!(m.signal(0), Signal::Deliver);
        m.set_control(0);
        assert!(!m.enabled());
        assert_eq!(m.message(0), None, "no message while disabled");
    }

    #[test]
    fn guest_offsets_are_bounded() {
        let mut m = Msix::new(2);
        assert_eq!(m.table_len(), 32);
        assert!(w32(&mut m, 32, 1).is_empty(), "past the table");
        assert!(w32(&mut m, u64::MAX - 3, 1).is_empty(), "no overflow");
        assert!(m.table_write(2, &[1, 2]).is_empty(), "a word access");
        assert!(w32(&mut m, 6, 1).is_empty(), "misaligned");
        assert_eq!(m.signal(2), Signal::Invalid);
        assert_eq!(m.signal(u16::MAX), Signal::Invalid);
        let mut d = [0xffu8; 4];
        m.table_read(40, &mut d);
        assert_eq!(d, [0; 4]);
        m.pba_read(8, &mut d);
        assert_eq!(d, [0; 4], "past the PBA");
        m.table_write(0, &0x0000_0001_fee0_0000u64.to_le_bytes());
        assert_eq!(m.entries[0].message.address, 0x1_fee0_0000, "a qword write sets both halves");
        w32(&mut m, 12, 0xffff_fffe);
        m.table_read(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0, "only the mask bit of vector control is kept");
    }
}
