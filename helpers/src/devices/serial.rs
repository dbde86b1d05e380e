//! COM1: vm-superio's 16550 UART on the port bus. Guest output goes to the
//! writer it is given (the console, [`super::console::ConsoleOut`]); input
//! is queued into its 64-byte receive FIFO by the console's event side.

use std::io::Write;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::serial::NoEvents;

use super::{BusDevice, DeviceState, Irq, Request, StateError};

/// COM1's base port.
pub const BASE: u16 = 0x3f8;
/// Eight registers.
pub const LEN: u64 = 8;
/// The 16550's receive FIFO (vm-superio's `FIFO_SIZE`).
const FIFO_SIZE: usize = 64;

/// Raises the UART's interrupt line (IRQ 4) for vm-superio.
#[derive(Clone)]
pub struct SerialIrq(Arc<dyn Irq>);

impl vm_superio::Trigger for SerialIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.raise();
        Ok(())
    }
}

type Uart<W> = vm_superio::Serial<SerialIrq, NoEvents, W>;

/// The saved state: vm-superio's `SerialState`, as a serde type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes the guest has not read, oldest first.
    pub in_buffer: Vec<u8>,
}

impl Default for SerialState {
    fn default() -> SerialState {
        vm_superio::serial::SerialState::default().into()
    }
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> SerialState {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> vm_superio::serial::SerialState {
        vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// The UART, writing guest output to `W`.
pub struct Serial<W: Write> {
    uart: Uart<W>,
}

impl<W: Write + Default> Serial<W> {
    /// A UART in its power-on state, raising `irq`.
    pub fn new(irq: Arc<dyn Irq>, out: W) -> Serial<W> {
        Serial { uart: Uart::new(SerialIrq(irq), out) }
    }

    /// Queues console input for the guest; returns how many bytes the
    /// receive FIFO took (none while it is full).
    pub fn enqueue(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Guest output goes to `out` from now on.
    pub fn set_output(&mut self, out: W) {
        *self.uart.writer_mut() = out;
    }

    /// Where guest output goes.
    #[cfg(test)]
    pub fn output(&self) -> &W {
        self.uart.writer()
    }
}

impl<W: Write + Default + Send> BusDevice for Serial<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Request> {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            // Output the console cannot take is lost, as on a UART whose
            // line is cut; the guest runs on.
            let _ = self.uart.write(offset, value);
        }
        None
    }

    fn state(&self) -> DeviceState {
        DeviceState::Serial(self.uart.state().into())
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Serial(s) = state else { return Err(StateError::Kind { want: "serial", got: state.kind() }) };
        // Checked first: vm-superio refuses nothing else, and its refusal
        // would consume the writer.
        if s.in_buffer.len() > FIFO_SIZE {
            let reason = format!("{} bytes received, the FIFO holds {FIFO_SIZE}", s.in_buffer.len());
            return Err(StateError::Invalid { kind: "serial", reason });
        }
        let irq = self.uart.interrupt_evt().clone();
        let old = std::mem::replace(&mut self.uart, Uart::new(irq.clone(), W::default()));
        match Uart::from_state(&s.into(), irq, NoEvents, old.into_writer()) {
            Ok(uart) => self.uart = uart,
            Err(e) => return Err(StateError::Invalid { kind: "serial", reason: e.to_string() }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::testing::CountingIrq;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const SCRATCH: u64 = 7;

    fn device() -> (Serial<Vec<u8>>, Arc<CountingIrq>) {
        let irq = Arc::new(CountingIrq::default());
        (Serial::new(irq.clone(), Vec::new()), irq)
    }

    fn read(s: &mut Serial<Vec<u8>>, offset: u64) -> u8 {
        let mut b = [0u8];
        s.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut s, _) = device();
        for b in b"hi" {
            assert_eq!(s.write(THR, &[*b]), None);
        }
        assert_eq!(s.output(), b"hi");
    }

    #[test]
    fn input_fills_the_fifo_raises_the_interrupt_and_is_read_in_order() {
        let (mut s, irq) = device();
        s.write(IER, &[1]);
        assert_eq!(s.enqueue(&[b'a'; 100]), FIFO_SIZE, "the FIFO takes 64 bytes");
        assert_eq!(s.enqueue(b"more"), 0, "a full FIFO takes nothing");
        assert!(irq.count() >= 1);
        assert_eq!(read(&mut s, LSR) & 1, 1, "data ready");
        assert_eq!(read(&mut s, THR), b'a');
    }

    #[test]
    fn a_wide_read_fills_the_bytes_past_the_register_with_ones() {
        let (mut s, _) = device();
        s.write(SCRATCH, &[0x5a]);
        let mut wide = [0u8; 2];
        s.read(SCRATCH, &mut wide);
        assert_eq!(wide, [0x5a, 0xff]);
    }

    #[test]
    fn state_round_trips_with_the_received_bytes() {
        let (mut s, _) = device();
        s.write(SCRATCH, &[0x42]);
        s.enqueue(b"xy");
        let saved = s.state();
        let (mut fresh, _) = device();
        fresh.restore(&saved).unwrap();
        assert_eq!(fresh.state(), saved);
        assert_eq!(read(&mut fresh, SCRATCH), 0x42);
        assert_eq!(read(&mut fresh, THR), b'x');
    }

    #[test]
    fn restoring_keeps_the_writer_and_refuses_bad_states() {
        let (mut s, _) = device();
        s.write(THR, b"a");
        let too_full = SerialState { in_buffer: vec![0; FIFO_SIZE + 1], ..Default::default() };
        assert!(matches!(s.restore(&DeviceState::Serial(too_full)), Err(StateError::Invalid { .. })));
        let other = DeviceState::I8042(Default::default());
        assert!(matches!(s.restore(&other), Err(StateError::Kind { want: "serial", got: "i8042" })));
        s.restore(&DeviceState::Serial(SerialState::default())).unwrap();
        s.write(THR, b"b");
        assert_eq!(s.output(), b"ab");
    }
}
