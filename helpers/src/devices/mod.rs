//! The guest's devices, one file each, behind one trait: [`BusDevice`]
//! takes a guest's reads and writes at an offset from where the device
//! sits, and gives its state as plain data ([`DeviceState`]), so that the
//! bus, save/restore and migration handle every device the same way.
//!
//! Devices are pure state machines: they reach the world only through an
//! [`Irq`] they are given and, for the serial port, the console writer; the
//! fds a device waits on live in its event side ([`console`]), which the
//! VM's event loop runs.

pub mod acpi_pm;
pub mod console;
pub mod i8042;
pub mod pvpanic;
pub mod rtc;
pub mod serial;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

/// What a guest asked of the machine through a device, beyond the access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// ACPI S5: power off.
    PowerOff,
    /// Reset the machine.
    Reset,
    /// The guest panicked.
    Panic,
}

/// A device on the port or MMIO bus. `offset` counts from the start of the
/// range the device was inserted at; `data` is the access, 1 to 8 bytes.
pub trait BusDevice: Send {
    /// A guest read: fills all of `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write; `Some` when the guest asked the machine to stop.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Request>;
    /// The device's state, as plain data.
    fn state(&self) -> DeviceState;
    /// Puts back a state [`BusDevice::state`] gave for a device of the same kind.
    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError>;
}

/// The saved state of one device: what save/restore and migration carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// The 16550 UART.
    Serial(serial::SerialState),
    /// The i8042 keyboard controller.
    I8042(i8042::I8042State),
    /// The ACPI PM1a registers.
    AcpiPm(acpi_pm::AcpiPmState),
    /// The pvpanic port.
    Pvpanic(pvpanic::PvpanicState),
    /// The PCI config mechanism (0xCF8's address register).
    Pci(crate::pci::bus::PciState),
    /// A virtio-pci function.
    VirtioPci(crate::virtio::pci::VirtioPciState),
    /// The CMOS real-time clock.
    Rtc(rtc::RtcState),
}

impl DeviceState {
    /// The kind of device it belongs to, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::Serial(_) => "serial",
            DeviceState::I8042(_) => "i8042",
            DeviceState::AcpiPm(_) => "acpi-pm",
            DeviceState::Pvpanic(_) => "pvpanic",
            DeviceState::Pci(_) => "pci",
            DeviceState::VirtioPci(_) => "virtio-pci",
            DeviceState::Rtc(_) => "rtc",
        }
    }
}

/// Why a state could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state belongs to another kind of device.
    #[error("a {got} state cannot restore a {want} device")]
    Kind {
        /// The device's kind.
        want: &'static str,
        /// The state's kind.
        got: &'static str,
    },
    /// The state holds values the device cannot take.
    #[error("{kind} state: {reason}")]
    Invalid {
        /// The device's kind.
        kind: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Not every device found its state, or a state found no device.
    #[error("saved states and devices do not match: {0}")]
    Mismatch(String),
}

/// An interrupt line a device raises.
pub trait Irq: Send + Sync {
    /// Raises the line (edge): the guest sees one interrupt.
    fn raise(&self);
}

/// An interrupt raised through a KVM irqfd.
#[derive(Debug, Clone)]
pub struct IrqFd(pub Arc<EventFd>);

impl Irq for IrqFd {
    fn raise(&self) {
        // An eventfd write fails only when the counter would overflow, and
        // then an interrupt is pending anyway.
        let _ = self.0.write(1);
    }
}

#[cfg(test)]
pub mod testing {
    //! A counting interrupt line for device tests.

    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts how often it was raised.
    #[derive(Debug, Default)]
    pub struct CountingIrq(pub AtomicU32);

    impl CountingIrq {
        /// Raises so far.
        pub fn count(&self) -> u32 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl super::Irq for CountingIrq {
        fn raise(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
