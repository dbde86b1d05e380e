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

use std::os::fd::{BorrowedFd, OwnedFd};
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

/// An interrupt raised through a KVM irqfd: the ISA devices' lines (COM1,
/// the i8042, the CMOS clock), which a kworker pulses one at a time.
#[derive(Debug, Clone)]
pub struct IrqFd(pub Arc<EventFd>);

impl Irq for IrqFd {
    fn raise(&self) {
        // An eventfd write fails only when the counter would overflow, and
        // then an interrupt is pending anyway.
        let _ = self.0.write(1);
    }
}

vmm_sys_util::ioctl_iow_nr!(KVM_IRQ_LINE, kvm_bindings::KVMIO, 0x61, kvm_bindings::kvm_irq_level);

/// A PCI INTx line, pulsed with `KVM_IRQ_LINE` by the thread that raises
/// it. KVM injects an irqfd whose route is the PIC or IOAPIC from a
/// kworker (only MSI routes are injected in the writer's context), so
/// every such interrupt wakes one more thread before the vCPU's, and a
/// guest waiting on a reply (a UDP round trip, a disk read) pays that hop
/// each time. QEMU, too, raises INTx with this ioctl on the raising thread.
/// The pulse (high, then low) is what an irqfd without a resample fd does.
#[derive(Debug)]
pub struct IrqLine {
    vm: OwnedFd,
    gsi: u32,
}

impl IrqLine {
    /// A line on `gsi` of the VM `vm` (an fd of its own, the VM's).
    pub fn new(vm: &kvm_ioctls::VmFd, gsi: u32) -> std::io::Result<IrqLine> {
        // SAFETY: the VM fd is open while `vm` is borrowed.
        let vm = unsafe { BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(vm)) };
        Ok(IrqLine { vm: vm.try_clone_to_owned()?, gsi })
    }

    fn set(&self, level: u32) {
        let mut line = kvm_bindings::kvm_irq_level { level, ..Default::default() };
        line.__bindgen_anon_1.irq = self.gsi;
        // SAFETY: KVM_IRQ_LINE reads one kvm_irq_level, which outlives the
        // call, from an fd this line owns. It fails only for a GSI the
        // irqchip lacks, which the builder never gives.
        let _ = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&self.vm, KVM_IRQ_LINE(), &line) };
    }
}

impl std::os::fd::AsFd for IrqLine {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.vm.as_fd()
    }
}

impl Irq for IrqLine {
    fn raise(&self) {
        self.set(1);
        self.set(0);
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

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use kvm_ioctls::VmFd;
    use libvirtd::sandbox::{Thread, seccomp};

    use super::*;

    /// A VM with the in-kernel irqchip, or `None` (a failure under CI)
    /// without /dev/kvm.
    fn vm() -> Option<VmFd> {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI requires /dev/kvm");
            return None;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        Some(vm)
    }

    /// Whether IRQ 10 (the slave PIC's line 2) is requested.
    fn irq10_requested(vm: &VmFd) -> bool {
        let mut chip = kvm_bindings::kvm_irqchip { chip_id: kvm_bindings::KVM_IRQCHIP_PIC_SLAVE, ..Default::default() };
        vm.get_irqchip(&mut chip).unwrap();
        // SAFETY: the PIC variant is what KVM_GET_IRQCHIP fills for a PIC.
        unsafe { chip.chip.pic.irr & 0b100 != 0 }
    }

    #[test]
    fn a_pulse_sets_the_request_bit_of_its_line_in_the_in_kernel_pic() {
        let Some(vm) = vm() else { return };
        let line = IrqLine::new(&vm, 10).unwrap();
        assert_ne!(line.as_fd().as_raw_fd(), vm.as_raw_fd(), "a VM fd of its own");
        assert!(!irq10_requested(&vm));
        line.raise();
        assert!(irq10_requested(&vm), "IRQ 10 requested after the pulse");
    }

    /// Every thread that may raise a virtio device's INTx (the vCPU that
    /// made the access, the device threads, the control thread for the
    /// balloon) may pulse it under its own seccomp filter,
    /// whose default kills the process: so the pulses run in a test process
    /// of their own.
    #[test]
    fn every_thread_that_raises_intx_may_pulse_it_under_its_filter() {
        if vm().is_none() {
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "devices::tests::pulses_under_each_filter", "--ignored", "--nocapture"])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{:?}: {said}", out.status);
        assert!(said.contains("1 passed"), "{said}");
    }

    #[test]
    #[ignore = "run by every_thread_that_raises_intx_may_pulse_it_under_its_filter in a process of its own"]
    fn pulses_under_each_filter() {
        for thread in [Thread::HelperVmm, Thread::HelperVcpu, Thread::HelperIo, Thread::HelperNet] {
            let vm = vm().unwrap();
            let line = IrqLine::new(&vm, 10).unwrap();
            // A thread of this process (KVM refuses a VM's ioctls from
            // another), under the filter as the helper loads it: it
            // applies to that thread alone.
            std::thread::spawn(move || {
                seccomp::apply(thread).unwrap();
                line.raise();
            })
            .join()
            .unwrap();
            assert!(irq10_requested(&vm), "{thread:?}: the pulse reached the PIC");
        }
    }
}
