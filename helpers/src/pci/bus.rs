//! PCI bus 0 and the two ways a guest reaches its config spaces: the
//! legacy mechanism #1 (address at port 0xCF8, data at 0xCFC-0xCFF) and
//! the ECAM window (one 4 KiB page per function, bus 0 only) that the MCFG
//! table describes. Only function 0 of each slot exists; every other
//! function, slot or bus reads all-ones, as an empty slot does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::PciDevice;
use super::config::{ConfigSpace, Identity};
use crate::devices::{BusDevice, DeviceState, Request, StateError};

/// The config address port, and the length of the range (address + data).
pub const CONFIG_PORT: u16 = 0xcf8;
/// 0xCF8-0xCFF.
pub const CONFIG_PORT_LEN: u64 = 8;
/// ECAM: bus 0's 32 slots x 8 functions x 4 KiB.
pub const ECAM_LEN: u64 = 1 << 20;
/// Slots on a bus.
pub const SLOTS: u8 = 32;

/// A device on bus 0.
pub type SharedPci = Arc<Mutex<dyn PciDevice>>;

/// The host bridge at 00:00.0: an ID and nothing to program.
pub struct HostBridge(ConfigSpace);

impl HostBridge {
    /// Red Hat's generic PCIe host bridge ids (QEMU's `gpex`).
    pub fn new() -> HostBridge {
        let id = Identity {
            vendor: 0x1b36,
            device: 0x0008,
            class: 0x06_00_00,
            revision: 0,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        };
        HostBridge(ConfigSpace::new(id, 0, 0))
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.0.read(offset, data);
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
}

/// Bus 0's slots, and the legacy address register.
#[derive(Default)]
pub struct PciBus {
    slots: BTreeMap<u8, SharedPci>,
    address: u32,
}

/// Why a device could not go on the bus.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Slot taken or past 31.
    #[error("PCI slot {0} is taken or does not exist")]
    Slot(u8),
}

impl PciBus {
    /// A bus with the host bridge in slot 0.
    pub fn new() -> PciBus {
        let mut bus = PciBus::default();
        bus.slots.insert(0, Arc::new(Mutex::new(HostBridge::new())));
        bus
    }

    /// Puts `device` in `slot` (function 0).
    pub fn insert(&mut self, slot: u8, device: SharedPci) -> Result<(), SlotError> {
        if slot >= SLOTS || self.slots.contains_key(&slot) {
            return Err(SlotError::Slot(slot));
        }
        self.slots.insert(slot, device);
        Ok(())
    }

    fn device(&self, bus: u32, slot: u32, function: u32) -> Option<&SharedPci> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(&(slot as u8))
    }

    fn access(&self, bus: u32, slot: u32, function: u32, offset: usize, op: Op<'_>) {
        match (self.device(bus, slot, function), op) {
            (Some(d), Op::Read(data)) => d.lock().unwrap_or_else(|p| p.into_inner()).config_read(offset, data),
            (Some(d), Op::Write(data)) => d.lock().unwrap_or_else(|p| p.into_inner()).config_write(offset, data),
            (None, Op::Read(data)) => data.fill(0xff),
            (None, Op::Write(_)) => {}
        }
    }

    /// The data port's access at `byte` (0-3) of the addressed dword.
    fn legacy(&mut self, byte: usize, op: Op<'_>) {
        let a = self.address;
        if a & 0x8000_0000 == 0 {
            if let Op::Read(data) = op {
                data.fill(0xff);
            }
            return;
        }
        let offset = (a & 0xfc) as usize + byte;
        self.access((a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 7, offset, op);
    }
}

enum Op<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// The legacy ports 0xCF8-0xCFF, on the port bus.
pub struct PciPorts(pub Arc<Mutex<PciBus>>);

impl BusDevice for PciPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut bus = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&bus.address.to_le_bytes()),
            4..=7 => bus.legacy(offset as usize - 4, Op::Read(data)),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Request> {
        let mut bus = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match offset {
            0 if data.len() == 4 => bus.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            4..=7 => bus.legacy(offset as usize - 4, Op::Write(data)),
            _ => {}
        }
        None
    }

    fn state(&self) -> DeviceState {
        DeviceState::Pci(PciState { address: self.0.lock().unwrap_or_else(|p| p.into_inner()).address })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        match state {
            DeviceState::Pci(s) => {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).address = s.address;
                Ok(())
            }
            other => Err(StateError::Kind { want: "pci", got: other.kind() }),
        }
    }
}

/// The ECAM window, on the MMIO bus.
pub struct PciEcam(pub Arc<Mutex<PciBus>>);

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let bus = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (b, s, f, o) = ecam_split(offset);
        bus.access(b, s, f, o, Op::Read(data));
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Request> {
        let bus = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (b, s, f, o) = ecam_split(offset);
        bus.access(b, s, f, o, Op::Write(data));
        None
    }

    fn state(&self) -> DeviceState {
        DeviceState::Pci(PciState { address: 0 })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        match state {
            DeviceState::Pci(_) => Ok(()),
            other => Err(StateError::Kind { want: "pci", got: other.kind() }),
        }
    }
}

/// bus, slot, function and register offset of an ECAM offset. Offsets
/// past the 256-byte legacy space (PCIe extended space) read all-ones in
/// [`ConfigSpace::read`].
fn ecam_split(offset: u64) -> (u32, u32, u32, usize) {
    let o = offset as u32;
    (o >> 20, (o >> 15) & 0x1f, (o >> 12) & 7, (o & 0xfff) as usize)
}

/// The legacy address register, for save/restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PciState {
    /// 0xCF8's value.
    pub address: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy_read32(ports: &mut PciPorts, slot: u32, reg: u32) -> u32 {
        ports.write(0, &(0x8000_0000 | (slot << 11) | reg).to_le_bytes());
        let mut d = [0u8; 4];
        ports.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn both_mechanisms_reach_the_host_bridge_and_empty_slots_read_ones() {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let mut ports = PciPorts(bus.clone());
        let mut ecam = PciEcam(bus.clone());
        assert_eq!(legacy_read32(&mut ports, 0, 0), 0x0008_1b36);
        assert_eq!(legacy_read32(&mut ports, 3, 0), 0xffff_ffff);
        let mut d = [0u8; 4];
        ecam.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        ecam.read(3 << 15, &mut d);
        assert_eq!(d, [0xff; 4]);
        ecam.read(1 << 12, &mut d);
        assert_eq!(d, [0xff; 4], "function 1 is absent");
        let mut w = [0u8; 2];
        ports.write(0, &0x8000_0008u32.to_le_bytes());
        ports.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0600, "class at 0x0a through the data port's third byte");
        ports.write(0, &0u32.to_le_bytes());
        ports.read(4, &mut d);
        assert_eq!(d, [0xff; 4], "enable bit clear: no config cycle");
    }

    #[test]
    fn slots_are_unique_and_bounded() {
        let mut bus = PciBus::new();
        assert!(bus.insert(0, Arc::new(Mutex::new(HostBridge::new()))).is_err());
        assert!(bus.insert(32, Arc::new(Mutex::new(HostBridge::new()))).is_err());
        assert!(bus.insert(4, Arc::new(Mutex::new(HostBridge::new()))).is_ok());
    }
}
