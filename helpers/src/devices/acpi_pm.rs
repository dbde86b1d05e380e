//! The ACPI PM1a event and control registers the FADT points the guest at
//! (`acpi.rs`): a write of SLP_EN to PM1a control is how it powers off
//! (`_S5` is sleep type 0, so the type bits are not looked at).
//!
//! ACPI is always on (there is no SMI command port to enable it), nothing
//! raises an SCI, and the registers keep nothing: status reads clear,
//! enable bits read 0, control reads SCI_EN.

use serde::{Deserialize, Serialize};

use super::{BusDevice, DeviceState, Request, StateError};
use crate::acpi::{PM1A_CNT, PM1A_EVT};

/// The PM1a event block (status, then enable).
pub const BASE: u16 = PM1A_EVT;
/// Through the low byte of PM1a control: the ports the guest reads and
/// writes. (A byte read of the control register's high byte, one past,
/// finds no device and reads all-ones.)
pub const LEN: u64 = (PM1A_CNT - PM1A_EVT) as u64 + 1;
const CONTROL: u64 = (PM1A_CNT - PM1A_EVT) as u64;
/// PM1 control: sleep enable.
const SLP_EN: u16 = 1 << 13;
/// PM1 control: SCI_EN, ACPI mode.
const SCI_EN: u8 = 1;

/// The saved state: the registers keep nothing, so there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {}

/// PM1a.
#[derive(Debug, Default)]
pub struct AcpiPm;

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == CONTROL
            && let Some(low) = data.first_mut()
        {
            *low = SCI_EN;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Request> {
        let value = match data {
            [low, high] => u16::from_le_bytes([*low, *high]),
            _ => return None,
        };
        (offset == CONTROL && value & SLP_EN != 0).then_some(Request::PowerOff)
    }

    fn state(&self) -> DeviceState {
        DeviceState::AcpiPm(AcpiPmState {})
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        match state {
            DeviceState::AcpiPm(_) => Ok(()),
            other => Err(StateError::Kind { want: "acpi-pm", got: other.kind() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_write_of_slp_en_to_control_powers_off() {
        let mut pm = AcpiPm;
        assert_eq!(pm.write(CONTROL, &0x2000u16.to_le_bytes()), Some(Request::PowerOff));
        assert_eq!(pm.write(CONTROL, &0x3c01u16.to_le_bytes()), Some(Request::PowerOff), "any sleep type");
    }

    #[test]
    fn other_writes_do_nothing() {
        let mut pm = AcpiPm;
        assert_eq!(pm.write(CONTROL, &0x0001u16.to_le_bytes()), None, "SCI_EN alone");
        assert_eq!(pm.write(CONTROL, &[0x20]), None, "a byte write is not the register");
        assert_eq!(pm.write(0, &0x2000u16.to_le_bytes()), None, "status is not control");
    }

    #[test]
    fn status_and_enable_read_0_and_control_reads_sci_en() {
        let mut pm = AcpiPm;
        let mut dword = [0xaa; 4];
        pm.read(0, &mut dword);
        assert_eq!(dword, [0; 4]);
        let mut word = [0xaa; 2];
        pm.read(CONTROL, &mut word);
        assert_eq!(word, [SCI_EN, 0]);
        assert_eq!(LEN, 5);
    }

    #[test]
    fn state_round_trips_and_other_kinds_are_refused() {
        let mut pm = AcpiPm;
        assert!(pm.restore(&pm.state()).is_ok());
        let serial = crate::devices::serial::SerialState::default();
        assert!(matches!(pm.restore(&DeviceState::Serial(serial)), Err(StateError::Kind { want: "acpi-pm", .. })));
    }
}
