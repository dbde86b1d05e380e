//! The serial console's fd side: [`ConsoleOut`], the writer COM1's guest
//! output goes to, and [`ConsoleIo`], the event-loop subscriber that reads
//! console input into the UART and takes new console fds (`ConsoleInput`,
//! `ConsoleOutput`) when a restarted broker hands them over.
//!
//! The control thread never waits for the UART's lock: a vCPU holds it
//! while it writes guest output, and that write blocks for as long as
//! nobody reads the console. Input and a new output wait for the lock on a
//! short retry instead, so the helper keeps answering its broker.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

use libvirtd::privsep::helper::{FdRole, RoleFds};
use vmm_sys_util::epoll::EventSet;

use super::serial::Serial;
use crate::events::{EventError, Ops, Subscriber};

/// How soon to offer the UART queued input (or take its lock) again, in ms.
const RETRY_MS: u16 = 2;
/// Console input read at once.
const READ_CHUNK: usize = 256;

/// Where guest output goes: the console, or nowhere before one is given.
///
/// A write interrupted by the vCPU kick signal is retried, so output
/// stalls the guest while nobody reads (a real UART's line would), except
/// once the VM is stopping: then it gives up, so that a vCPU blocked on a
/// console nobody reads can leave and be joined.
#[derive(Debug, Default)]
pub struct ConsoleOut {
    file: Option<File>,
    stopping: Arc<AtomicBool>,
}

impl ConsoleOut {
    /// Output to `file`, given up once `stopping` is set.
    pub fn new(file: File, stopping: Arc<AtomicBool>) -> ConsoleOut {
        ConsoleOut { file: Some(file), stopping }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(file) = self.file.as_mut() else { return Ok(buf.len()) };
        match file.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && self.stopping.load(Ordering::SeqCst) => {
                Err(std::io::Error::other("the VM is stopping"))
            }
            other => other,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The console's event side.
pub struct ConsoleIo {
    serial: Arc<Mutex<Serial<ConsoleOut>>>,
    /// Read for guest input; `None` once it hung up.
    input: Option<File>,
    /// Whether `input` is registered (it is not while `pending` waits).
    watching: bool,
    /// Input the UART has not taken yet.
    pending: Vec<u8>,
    /// A new output waiting for the UART's lock.
    output: Option<ConsoleOut>,
    /// Given to every new output.
    stopping: Arc<AtomicBool>,
}

impl ConsoleIo {
    /// The event side of `serial`; its fds come with `take_fds`.
    pub fn new(serial: Arc<Mutex<Serial<ConsoleOut>>>, stopping: Arc<AtomicBool>) -> ConsoleIo {
        ConsoleIo { serial, input: None, watching: false, pending: Vec::new(), output: None, stopping }
    }

    /// Hands the UART what it can take now, without waiting for its lock.
    fn feed(&mut self) {
        if self.pending.is_empty() && self.output.is_none() {
            return;
        }
        let mut serial = match self.serial.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if let Some(out) = self.output.take() {
            serial.set_output(out);
        }
        let n = serial.enqueue(&self.pending);
        self.pending.drain(..n);
    }

    /// Watches `input` exactly while no input waits for the UART: the
    /// 16550's receive FIFO holds 64 bytes, so input is read only as the
    /// guest drains it.
    fn rewatch(&mut self, ops: &mut Ops<'_>) {
        let want = self.pending.is_empty();
        match (&self.input, self.watching, want) {
            (Some(f), false, true) => self.watching = ops.add(f.as_raw_fd(), EventSet::IN).is_ok(),
            (Some(f), true, false) => {
                ops.remove(f.as_raw_fd());
                self.watching = false;
            }
            _ => {}
        }
    }

    /// Nobody is on the console any more: the guest keeps running, its
    /// input closed until a new console comes.
    fn hang_up(&mut self, ops: &mut Ops<'_>) {
        if let Some(f) = self.input.take()
            && self.watching
        {
            ops.remove(f.as_raw_fd());
        }
        self.watching = false;
    }
}

impl Subscriber for ConsoleIo {
    fn init(&mut self, _ops: &mut Ops<'_>) -> Result<(), EventError> {
        Ok(())
    }

    fn process(&mut self, fd: RawFd, _events: EventSet, ops: &mut Ops<'_>) {
        let Some(input) = self.input.as_mut().filter(|f| f.as_raw_fd() == fd) else { return };
        let mut buf = [0u8; READ_CHUNK];
        match input.read(&mut buf) {
            Ok(0) | Err(_) => return self.hang_up(ops),
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
        }
        self.feed();
        self.rewatch(ops);
    }

    fn take_fds(&mut self, fds: &mut RoleFds, ops: &mut Ops<'_>) -> Result<(), EventError> {
        if let Some(out) = fds.take(FdRole::ConsoleOutput) {
            self.output = Some(ConsoleOut::new(File::from(out), self.stopping.clone()));
        }
        if let Some(input) = fds.take(FdRole::ConsoleInput) {
            self.hang_up(ops);
            self.input = Some(File::from(input));
        }
        self.feed();
        self.rewatch(ops);
        Ok(())
    }

    fn retry_in_ms(&self) -> Option<u16> {
        (!self.pending.is_empty() || self.output.is_some()).then_some(RETRY_MS)
    }

    fn retry(&mut self, ops: &mut Ops<'_>) {
        self.feed();
        self.rewatch(ops);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use super::*;
    use crate::devices::BusDevice;
    use crate::devices::testing::CountingIrq;
    use crate::events::EventLoop;

    fn console_fds(theirs: &UnixStream) -> RoleFds {
        let dup = || -> OwnedFd { theirs.as_fd().try_clone_to_owned().unwrap() };
        const ROLES: [FdRole; 2] = [FdRole::ConsoleInput, FdRole::ConsoleOutput];
        let roles = ROLES;
        let rule = libvirtd::privsep::helper::manifest::FdRule::new(&ROLES, &[]);
        RoleFds::sort(&roles, vec![dup(), dup()], &rule).unwrap()
    }

    fn setup() -> (EventLoop, Arc<Mutex<Serial<ConsoleOut>>>, Arc<AtomicBool>) {
        let stopping = Arc::new(AtomicBool::new(false));
        let serial = Arc::new(Mutex::new(Serial::new(Arc::new(CountingIrq::default()), ConsoleOut::default())));
        let mut ev = EventLoop::new().unwrap();
        ev.add_subscriber(Box::new(ConsoleIo::new(serial.clone(), stopping.clone()))).unwrap();
        (ev, serial, stopping)
    }

    fn received(serial: &Mutex<Serial<ConsoleOut>>) -> Vec<u8> {
        let crate::devices::DeviceState::Serial(s) = serial.lock().unwrap().state() else { panic!() };
        s.in_buffer
    }

    #[test]
    fn input_reaches_the_uart_as_its_fifo_drains() {
        let (mut ev, serial, _) = setup();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        ev.deliver(&mut console_fds(&theirs)).unwrap();
        ours.write_all(&[b'z'; 100]).unwrap();
        for _ in 0..5 {
            ev.wait(Some(20)).unwrap();
        }
        assert_eq!(received(&serial).len(), 64, "the FIFO holds 64; the rest waits");
        let mut b = [0u8];
        for _ in 0..64 {
            serial.lock().unwrap().read(0, &mut b);
        }
        for _ in 0..5 {
            ev.wait(Some(20)).unwrap();
        }
        assert_eq!(received(&serial).len(), 36, "the rest follows once the guest read");
    }

    #[test]
    fn a_new_console_takes_guest_output_even_while_a_vcpu_holds_the_uart() {
        let (mut ev, serial, _) = setup();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let held = serial.lock().unwrap();
        ev.deliver(&mut console_fds(&theirs)).unwrap();
        ev.wait(Some(5)).unwrap();
        drop(held);
        ev.wait(Some(5)).unwrap();
        serial.lock().unwrap().write(0, b"k");
        let mut b = [0u8];
        ours.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        ours.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"k");
    }

    #[test]
    fn a_console_that_hangs_up_is_dropped_and_the_loop_goes_quiet() {
        let (mut ev, serial, _) = setup();
        let (ours, theirs) = UnixStream::pair().unwrap();
        ev.deliver(&mut console_fds(&theirs)).unwrap();
        drop(ours);
        ev.wait(Some(20)).unwrap();
        let started = std::time::Instant::now();
        ev.wait(Some(50)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(40), "a hung-up console still wakes the loop");
        assert!(received(&serial).is_empty());
    }

    #[test]
    fn output_interrupted_while_stopping_gives_up() {
        let stopping = Arc::new(AtomicBool::new(true));
        let (_ours, theirs) = UnixStream::pair().unwrap();
        let mut out = ConsoleOut::new(File::from(OwnedFd::from(theirs)), stopping);
        assert_eq!(out.write(b"fine").unwrap(), 4, "only an interrupted write gives up");
        assert_eq!(ConsoleOut::default().write(b"nowhere").unwrap(), 7);
    }
}
