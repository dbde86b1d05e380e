//! The i8042 keyboard controller, as much as a guest uses to leave and to
//! be asked to: a write of `0xfe` to the command port resets the machine
//! (Linux's `reboot=kbd`, the test guest's `reboot`), and ctrl-alt-del
//! arrives as the make codes of ctrl, alt and delete, one per keyboard
//! interrupt (IRQ 1), from the data port.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{BusDevice, DeviceState, Irq, Request, StateError};

/// The data port; the device spans it to the command/status port.
pub const BASE: u16 = 0x60;
/// Ports from [`BASE`] the device answers: 0x60 to 0x64. (0x61, the PC
/// speaker, is KVM's own PIT; 0x62 and 0x63 read all-ones.)
pub const LEN: u64 = 5;
const DATA: u64 = 0;
const COMMAND: u64 = 4;
/// Command: pulse the reset line.
const RESET: u8 = 0xfe;
/// Status: the output buffer holds a byte for the guest.
const OUTPUT_FULL: u8 = 1;
/// Scan codes waiting at most, as a keyboard's own buffer holds; more are
/// dropped (a broker asking ctrl-alt-del again and again of a guest that
/// does not read them).
const QUEUE_MAX: usize = 16;
/// Make codes of left ctrl, left alt and delete (scan code set 1).
const CTRL_ALT_DEL: [u8; 3] = [0x1d, 0x38, 0x53];

/// The saved state: the scan codes the guest has yet to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Oldest first.
    pub queue: Vec<u8>,
}

/// The controller.
pub struct I8042 {
    queue: VecDeque<u8>,
    /// IRQ 1.
    irq: Arc<dyn Irq>,
}

impl I8042 {
    /// A controller with nothing queued, raising `irq` (IRQ 1).
    pub fn new(irq: Arc<dyn Irq>) -> I8042 {
        I8042 { queue: VecDeque::new(), irq }
    }

    /// Presses ctrl-alt-del: queues the three make codes and raises the
    /// interrupt; the guest reads one per interrupt.
    pub fn ctrl_alt_del(&mut self) {
        for code in CTRL_ALT_DEL {
            if self.queue.len() < QUEUE_MAX {
                self.queue.push_back(code);
            }
        }
        self.irq.raise();
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(first) = data.first_mut() else { return };
        match offset {
            DATA => {
                // An empty buffer reads 0; another code waiting raises the
                // interrupt again for it.
                *first = self.queue.pop_front().unwrap_or(0);
                if !self.queue.is_empty() {
                    self.irq.raise();
                }
            }
            COMMAND => *first = if self.queue.is_empty() { 0 } else { OUTPUT_FULL },
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Request> {
        (offset == COMMAND && data.first() == Some(&RESET)).then_some(Request::Reset)
    }

    fn state(&self) -> DeviceState {
        DeviceState::I8042(I8042State { queue: self.queue.iter().copied().collect() })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::I8042(s) = state else { return Err(StateError::Kind { want: "i8042", got: state.kind() }) };
        if s.queue.len() > QUEUE_MAX {
            let reason = format!("{} scan codes queued, at most {QUEUE_MAX}", s.queue.len());
            return Err(StateError::Invalid { kind: "i8042", reason });
        }
        self.queue = s.queue.iter().copied().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::testing::CountingIrq;

    fn device() -> (I8042, Arc<CountingIrq>) {
        let irq = Arc::new(CountingIrq::default());
        (I8042::new(irq.clone()), irq)
    }

    fn read(d: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        d.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn ctrl_alt_del_is_read_one_code_per_interrupt() {
        let (mut d, irq) = device();
        assert_eq!(read(&mut d, COMMAND), 0, "nothing waits yet");
        d.ctrl_alt_del();
        assert_eq!(irq.count(), 1);
        assert_eq!(read(&mut d, COMMAND), OUTPUT_FULL);
        assert_eq!(read(&mut d, DATA), 0x1d);
        assert_eq!(irq.count(), 2, "the next code raises the interrupt again");
        assert_eq!(read(&mut d, DATA), 0x38);
        assert_eq!(read(&mut d, DATA), 0x53);
        assert_eq!(irq.count(), 3, "no interrupt once the buffer is empty");
        assert_eq!(read(&mut d, COMMAND), 0);
        assert_eq!(read(&mut d, DATA), 0, "an empty buffer reads 0");
    }

    #[test]
    fn only_0xfe_on_the_command_port_resets() {
        let (mut d, _) = device();
        assert_eq!(d.write(COMMAND, &[RESET]), Some(Request::Reset));
        assert_eq!(d.write(COMMAND, &[0xd1]), None);
        assert_eq!(d.write(DATA, &[RESET]), None);
    }

    #[test]
    fn ports_between_data_and_command_read_all_ones() {
        let (mut d, _) = device();
        assert_eq!(read(&mut d, 2), 0xff);
        let mut wide = [0u8; 2];
        d.read(COMMAND, &mut wide);
        assert_eq!(wide, [0, 0xff], "only the status byte is the device's");
    }

    #[test]
    fn the_queue_is_bounded() {
        let (mut d, _) = device();
        for _ in 0..10 {
            d.ctrl_alt_del();
        }
        let DeviceState::I8042(s) = d.state() else { panic!() };
        assert_eq!(s.queue.len(), QUEUE_MAX);
    }

    #[test]
    fn state_round_trips_and_other_kinds_are_refused() {
        let (mut d, _) = device();
        d.ctrl_alt_del();
        read(&mut d, DATA);
        let saved = d.state();
        let (mut fresh, _) = device();
        fresh.restore(&saved).unwrap();
        assert_eq!(read(&mut fresh, DATA), 0x38);
        let other = DeviceState::Pvpanic(crate::devices::pvpanic::PvpanicState::default());
        assert!(matches!(fresh.restore(&other), Err(StateError::Kind { want: "i8042", got: "pvpanic" })));
        let huge = DeviceState::I8042(I8042State { queue: vec![0; 100] });
        assert!(matches!(fresh.restore(&huge), Err(StateError::Invalid { .. })));
    }
}
