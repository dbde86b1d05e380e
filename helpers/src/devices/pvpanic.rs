//! The pvpanic port (QEMU's ISA device at 0x505): a guest that panics
//! writes bit 0 (PANICKED) there, and the helper ends it as crashed.

use serde::{Deserialize, Serialize};

use super::{BusDevice, DeviceState, Request, StateError};

/// The port.
pub const BASE: u16 = 0x505;
/// One byte.
pub const LEN: u64 = 1;
/// Event bit: the guest panicked. (Bit 1, crash-loaded, means a kdump
/// kernel takes over: the guest goes on, so it is not an event here.)
const PANICKED: u8 = 1;

/// The saved state: the port keeps nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvpanicState {}

/// The pvpanic port.
#[derive(Debug, Default)]
pub struct Pvpanic;

impl BusDevice for Pvpanic {
    /// Reads all-ones, as the port did before it was a device of its own.
    /// (QEMU reads the events it supports, 3; Linux ANDs what it reads
    /// with the events it knows, so both enable PANICKED.)
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<Request> {
        data.first().is_some_and(|b| b & PANICKED != 0).then_some(Request::Panic)
    }

    fn state(&self) -> DeviceState {
        DeviceState::Pvpanic(PvpanicState {})
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        match state {
            DeviceState::Pvpanic(_) => Ok(()),
            other => Err(StateError::Kind { want: "pvpanic", got: other.kind() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_0_is_a_panic_and_crash_loaded_alone_is_not() {
        let mut p = Pvpanic;
        assert_eq!(p.write(0, &[1]), Some(Request::Panic));
        assert_eq!(p.write(0, &[3]), Some(Request::Panic));
        assert_eq!(p.write(0, &[2]), None);
        assert_eq!(p.write(0, &[]), None);
    }

    #[test]
    fn reads_are_all_ones() {
        let mut b = [0u8; 1];
        Pvpanic.read(0, &mut b);
        assert_eq!(b, [0xff]);
    }

    #[test]
    fn state_round_trips_and_other_kinds_are_refused() {
        let mut p = Pvpanic;
        assert!(p.restore(&p.state()).is_ok());
        assert!(matches!(p.restore(&crate::devices::acpi_pm::AcpiPm.state()), Err(StateError::Kind { .. })));
    }
}
