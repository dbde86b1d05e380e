//! The guest's two address spaces, port I/O and MMIO, each a map from
//! address ranges to devices (Firecracker's `vstate/bus.rs` is the model):
//! an access goes to the device whose range holds its address, at the
//! offset from the range's start. Ranges never overlap; that is checked
//! when a device is inserted, before the guest runs.
//!
//! Where no device sits, a port reads all-ones and a write is dropped, as
//! on a PC; unassigned MMIO does the same and is counted ([`crate::mmio`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::devices::{BusDevice, DeviceState, Request, StateError};

/// A device shared by the vCPUs (and, for its event side, the control thread).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device could not be inserted.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range is empty or runs past the end of the address space.
    #[error("{space} range at {base:#x} of {len} bytes is empty or wraps")]
    BadRange {
        /// The address space.
        space: Space,
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps a device already there.
    #[error("{space} range {base:#x}+{len} overlaps the device at {other:#x}")]
    Overlap {
        /// The address space.
        space: Space,
        /// Start.
        base: u64,
        /// Length.
        len: u64,
        /// Start of the device in the way.
        other: u64,
    },
}

/// Which address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Space {
    /// Port I/O (16-bit addresses).
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

impl std::fmt::Display for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Space::Pio => "port",
            Space::Mmio => "MMIO",
        })
    }
}

/// One address space's devices, by the start of their range.
#[derive(Default)]
struct RangeMap {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl RangeMap {
    fn insert(&mut self, space: Space, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let Some(end) = base.checked_add(len).filter(|_| len > 0) else {
            return Err(BusError::BadRange { space, base, len });
        };
        // The nearest range starting at or below the new one's end could
        // overlap it; any earlier range ends before that one starts.
        if let Some((&other, &(other_len, _))) = self.ranges.range(..end).next_back()
            && other + other_len > base
        {
            return Err(BusError::Overlap { space, base, len, other });
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// The device whose range holds `addr`, and the offset into it.
    fn lookup(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (&base, (len, device)) = self.ranges.range(..=addr).next_back()?;
        (addr - base < *len).then_some((device, addr - base))
    }
}

/// The device at one place, as save/restore finds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlacedState {
    /// Its address space.
    pub space: Space,
    /// Where its range starts.
    pub base: u64,
    /// Its state.
    pub state: DeviceState,
}

/// Both address spaces.
#[derive(Default)]
pub struct Bus {
    pio: RangeMap,
    mmio: RangeMap,
}

/// Locks a device; a vCPU that panicked holding it left plain data behind.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bus {
    /// Puts `device` at `base..base + len` in `space`.
    pub fn insert(&mut self, space: Space, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        match space {
            Space::Pio => self.pio.insert(space, base, len, device),
            Space::Mmio => self.mmio.insert(space, base, len, device),
        }
    }

    /// A guest `in`: all-ones where no device sits.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        match self.pio.lookup(port.into()) {
            Some((device, offset)) => lock(device).read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// A guest `out`; `Some` when the guest asked the machine to stop.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> Option<Request> {
        let (device, offset) = self.pio.lookup(port.into())?;
        lock(device).write(offset, data)
    }

    /// A guest MMIO read: all-ones, counted, where no device sits.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.mmio.lookup(addr) {
            Some((device, offset)) => lock(device).read(offset, data),
            None => crate::mmio::read(addr, data),
        }
    }

    /// A guest MMIO write: dropped, counted, where no device sits.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> Option<Request> {
        match self.mmio.lookup(addr) {
            Some((device, offset)) => lock(device).write(offset, data),
            None => {
                crate::mmio::write(addr, data);
                None
            }
        }
    }

    /// Every device's state, with where it sits: what save/restore and
    /// migration carry, without knowing the devices.
    #[cfg_attr(not(test), expect(dead_code, reason = "save/restore and migration will call it; unit tests do now"))]
    pub fn save(&self) -> Vec<PlacedState> {
        let spaces = [(Space::Pio, &self.pio), (Space::Mmio, &self.mmio)];
        spaces
            .into_iter()
            .flat_map(|(space, map)| {
                map.ranges.iter().map(move |(&base, (_, d))| PlacedState { space, base, state: lock(d).state() })
            })
            .collect()
    }

    /// Restores what [`Bus::save`] gave into a bus with the same devices.
    /// Every device must find its state and every state its device.
    #[cfg_attr(not(test), expect(dead_code, reason = "save/restore and migration will call it; unit tests do now"))]
    pub fn restore(&self, saved: &[PlacedState]) -> Result<(), StateError> {
        let count = self.pio.ranges.len() + self.mmio.ranges.len();
        if saved.len() != count {
            return Err(StateError::Mismatch(format!("{} states for {count} devices", saved.len())));
        }
        for s in saved {
            let map = if s.space == Space::Pio { &self.pio } else { &self.mmio };
            let (_, device) = map
                .ranges
                .get(&s.base)
                .ok_or_else(|| StateError::Mismatch(format!("no {} device at {:#x}", s.space, s.base)))?;
            lock(device).restore(&s.state)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{i8042::I8042, pvpanic::Pvpanic, testing::CountingIrq};

    /// Remembers the last offset it was read at; writes of 0x99 stop.
    #[derive(Default)]
    struct Probe {
        last: Option<u64>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.last = Some(offset);
            data.fill(offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Option<Request> {
            (data == [0x99]).then_some(Request::PowerOff)
        }
        fn state(&self) -> DeviceState {
            DeviceState::Pvpanic(Default::default())
        }
        fn restore(&mut self, _state: &DeviceState) -> Result<(), StateError> {
            Ok(())
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let mut bus = Bus::default();
        let p = probe();
        bus.insert(Space::Pio, 0x3f8, 8, p.clone()).unwrap();
        let mut b = [0u8; 1];
        bus.pio_read(0x3fd, &mut b);
        assert_eq!((b[0], p.lock().unwrap().last), (5, Some(5)));
        assert_eq!(bus.pio_write(0x3f8, &[0x99]), Some(Request::PowerOff));
        assert_eq!(bus.pio_write(0x3f8, &[0x98]), None);
    }

    #[test]
    fn unassigned_ports_read_all_ones_and_ignore_writes() {
        let mut bus = Bus::default();
        bus.insert(Space::Pio, 0x3f8, 8, probe()).unwrap();
        let mut b = [0u8; 2];
        bus.pio_read(0x400, &mut b);
        assert_eq!(b, [0xff, 0xff], "one past the range");
        bus.pio_read(0x3f7, &mut b);
        assert_eq!(b, [0xff, 0xff], "one before it");
        assert_eq!(bus.pio_write(0x3f7, &[0x99]), None);
    }

    #[test]
    fn unassigned_mmio_reads_all_ones_and_mapped_mmio_reaches_its_device() {
        let mut bus = Bus::default();
        bus.insert(Space::Mmio, 0xd000_0000, 0x1000, probe()).unwrap();
        let mut d = [0u8; 4];
        bus.mmio_read(0xd000_0010, &mut d);
        assert_eq!(d, [0x10; 4]);
        bus.mmio_read(0xd000_1000, &mut d);
        assert_eq!(d, [0xff; 4]);
        assert_eq!(bus.mmio_write(0xd000_1000, &[0x99]), None);
        let mut b = [0u8; 1];
        bus.pio_read(0x10, &mut b);
        assert_eq!(b, [0xff], "the port space is another space");
    }

    #[test]
    fn overlapping_or_empty_ranges_are_refused() {
        let mut bus = Bus::default();
        bus.insert(Space::Pio, 0x60, 5, probe()).unwrap();
        for (base, len) in [(0x64, 1), (0x5c, 5), (0x50, 0x100), (0x60, 1)] {
            let e = bus.insert(Space::Pio, base, len, probe()).unwrap_err();
            assert!(matches!(e, BusError::Overlap { other: 0x60, .. }), "{base:#x}+{len}: {e}");
        }
        assert!(bus.insert(Space::Pio, 0x5b, 5, probe()).is_ok(), "touching is fine");
        assert!(bus.insert(Space::Pio, 0x65, 1, probe()).is_ok());
        assert!(matches!(bus.insert(Space::Pio, 0x70, 0, probe()), Err(BusError::BadRange { .. })));
        assert!(matches!(bus.insert(Space::Mmio, u64::MAX, 2, probe()), Err(BusError::BadRange { .. })));
        assert!(bus.insert(Space::Mmio, 0x60, 5, probe()).is_ok(), "spaces are separate");
    }

    #[test]
    fn save_and_restore_go_through_every_device() {
        let build = || {
            let mut bus = Bus::default();
            let kbd = Arc::new(Mutex::new(I8042::new(Arc::new(CountingIrq::default()))));
            bus.insert(Space::Pio, 0x60, 5, kbd.clone()).unwrap();
            bus.insert(Space::Pio, 0x505, 1, Arc::new(Mutex::new(Pvpanic))).unwrap();
            (bus, kbd)
        };
        let (bus, kbd) = build();
        kbd.lock().unwrap().ctrl_alt_del();
        let saved = bus.save();
        assert_eq!(saved.len(), 2);
        let (fresh, _) = build();
        fresh.restore(&saved).unwrap();
        assert_eq!(fresh.save(), saved);
        let mut b = [0u8];
        fresh.pio_read(0x60, &mut b);
        assert_eq!(b, [0x1d], "the queued scan codes came along");
        assert!(matches!(fresh.restore(&saved[..1]), Err(StateError::Mismatch(_))));
        let mut moved = saved.clone();
        moved[1].base = 0x506;
        assert!(matches!(fresh.restore(&moved), Err(StateError::Mismatch(_))));
    }
}
