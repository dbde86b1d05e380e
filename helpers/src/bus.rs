//! The port-I/O devices: COM1 (vm-superio 16550), and the three ports a
//! guest uses to leave: ACPI PM1a control (power-off), i8042 (reset, and
//! ctrl-alt-del in the other direction) and pvpanic (crash).

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use libvirtd::privsep::helper::StopReason;

const COM1: u16 = 0x3f8;
use super::acpi::{PM1A_CNT, PM1A_EVT};
const SLP_EN: u16 = 1 << 13;
const I8042_DATA: u16 = 0x60;
const I8042_CMD: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
const PVPANIC: u16 = 0x505;

/// Raises COM1's interrupt through a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The console: guest output is written here.
pub type Console = Serial<IrqTrigger, vm_superio::serial::NoEvents, File>;

/// The devices one guest has.
pub struct Bus {
    /// COM1, shared with the thread that feeds it input.
    pub serial: Arc<Mutex<Console>>,
    /// Scan codes the guest has yet to read from the i8042 data port.
    pub kbd_data: Arc<Mutex<std::collections::VecDeque<u8>>>,
    /// Raises the keyboard interrupt (IRQ 1) through a KVM irqfd.
    pub kbd_irq: EventFd,
}

impl Bus {
    /// A guest port read.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        match port {
            COM1..=0x3ff => {
                if let Ok(mut s) = self.serial.lock() {
                    data[0] = s.read((port - COM1) as u8);
                }
            }
            // PM1a status and enable: nothing pending, nothing enabled.
            PM1A_EVT..=0x603 => data.fill(0),
            // PM1a control: SCI_EN, as ACPI is always on (there is no SMI_CMD).
            PM1A_CNT => {
                data.fill(0);
                data[0] = 1;
            }
            I8042_DATA => {
                if let Ok(mut k) = self.kbd_data.lock() {
                    data[0] = k.pop_front().unwrap_or(0);
                    if !k.is_empty() {
                        let _ = self.kbd_irq.write(1);
                    }
                }
            }
            // Status: output buffer full when a scan code waits.
            I8042_CMD => data[0] = u8::from(self.kbd_data.lock().is_ok_and(|k| !k.is_empty())),
            _ => {}
        }
    }

    /// Queues the make codes of ctrl, alt and delete and raises IRQ 1; the
    /// guest reads one per interrupt.
    pub fn ctrl_alt_del(&self) {
        if let Ok(mut k) = self.kbd_data.lock() {
            k.extend([0x1d, 0x38, 0x53]);
        }
        let _ = self.kbd_irq.write(1);
    }

    /// A guest port write; `Some` when the guest asked to stop.
    pub fn write(&self, port: u16, data: &[u8]) -> Option<StopReason> {
        match port {
            COM1..=0x3ff => {
                if let Ok(mut s) = self.serial.lock() {
                    let _ = s.write((port - COM1) as u8, data[0]);
                    let _ = s.writer_mut().flush();
                }
                None
            }
            PM1A_CNT if data.len() == 2 && u16::from_le_bytes([data[0], data[1]]) & SLP_EN != 0 => {
                Some(StopReason::PowerOff)
            }
            I8042_CMD if data[0] == I8042_RESET => Some(StopReason::Reset),
            PVPANIC if data[0] & 1 != 0 => Some(StopReason::Crash),
            _ => None,
        }
    }
}
