//! The control thread's event loop: a level-triggered epoll (vmm-sys-util's,
//! the primitive rust-vmm's `event-manager` is built on) where each device
//! registers the fds it waits on, and adds, drops and swaps them as its
//! peers come and go, instead of a fixed poll array.
//!
//! Two kinds of owner share it: [`Subscriber`]s (a device's event side,
//! such as the console), whose events the loop hands to them itself, and
//! the control loop, whose own fds (the broker link, the control listener,
//! the vCPU stop eventfd) come back from [`EventLoop::wait`] for it to act
//! on, since acting on them touches the whole VM.

use std::os::fd::RawFd;

use libvirtd::privsep::helper::RoleFds;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// The owner number of the control loop's own fds.
const CONTROL: u32 = u32::MAX;
/// Most events taken from one wait.
const MAX_EVENTS: usize = 16;

/// Why the loop failed.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// An epoll call failed.
    #[error("epoll: {0}")]
    Epoll(#[from] std::io::Error),
}

/// A device's event side: the fds it waits on, and what it does when one is ready.
pub trait Subscriber {
    /// Registers the fds it waits on from the start.
    fn init(&mut self, ops: &mut Ops<'_>) -> Result<(), EventError>;
    /// One of its fds is ready with `events`.
    fn process(&mut self, fd: RawFd, events: EventSet, ops: &mut Ops<'_>);
    /// Takes the fds of the roles it owns from a message's fds (a new
    /// console, say), registering what it now waits on.
    fn take_fds(&mut self, _fds: &mut RoleFds, _ops: &mut Ops<'_>) -> Result<(), EventError> {
        Ok(())
    }
    /// How soon, in ms, it needs a [`Subscriber::retry`] without an event
    /// (work that waits for room rather than for an fd), if at all.
    fn retry_in_ms(&self) -> Option<u16> {
        None
    }
    /// Called after each wait while it asks for a retry.
    fn retry(&mut self, _ops: &mut Ops<'_>) {}
}

/// Registering and dropping fds, on behalf of one owner.
pub struct Ops<'a> {
    epoll: &'a Epoll,
    owner: u32,
}

impl Ops<'_> {
    /// Waits for `events` (readable: [`EventSet::IN`]) on `fd` from now on.
    pub fn add(&mut self, fd: RawFd, events: EventSet) -> Result<(), EventError> {
        let event = EpollEvent::new(events, token(self.owner, fd));
        Ok(self.epoll.ctl(ControlOperation::Add, fd, event)?)
    }

    /// Stops waiting on `fd` (before it closes: epoll forgets a closed fd
    /// only once every duplicate is closed).
    pub fn remove(&mut self, fd: RawFd) {
        // Failing means it was not registered: nothing to undo.
        let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

fn token(owner: u32, fd: RawFd) -> u64 {
    (u64::from(owner) << 32) | u64::from(fd as u32)
}

/// One ready fd of the control loop's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// The fd.
    pub fd: RawFd,
    /// What it is ready for (hang-ups included).
    pub events: EventSet,
}

/// The loop: an epoll and the subscribers registered with it.
pub struct EventLoop {
    epoll: Epoll,
    subscribers: Vec<Box<dyn Subscriber>>,
}

impl EventLoop {
    /// An empty loop (`epoll_create1`: before the seccomp filter goes on).
    pub fn new() -> Result<EventLoop, EventError> {
        Ok(EventLoop { epoll: Epoll::new()?, subscribers: Vec::new() })
    }

    /// Adds a subscriber, which registers its fds.
    pub fn add_subscriber(&mut self, mut s: Box<dyn Subscriber>) -> Result<(), EventError> {
        let owner = self.subscribers.len() as u32;
        s.init(&mut Ops { epoll: &self.epoll, owner })?;
        self.subscribers.push(s);
        Ok(())
    }

    /// Registers and drops the control loop's own fds.
    pub fn control(&self) -> Ops<'_> {
        Ops { epoll: &self.epoll, owner: CONTROL }
    }

    /// Offers a message's fds to every subscriber, each taking its roles.
    pub fn deliver(&mut self, fds: &mut RoleFds) -> Result<(), EventError> {
        for (owner, s) in self.subscribers.iter_mut().enumerate() {
            s.take_fds(fds, &mut Ops { epoll: &self.epoll, owner: owner as u32 })?;
        }
        Ok(())
    }

    /// Waits for events (at most until the soonest retry a subscriber asks
    /// for, or `timeout_ms`), hands subscribers theirs, runs their retries,
    /// and returns the control loop's.
    pub fn wait(&mut self, timeout_ms: Option<u16>) -> Result<Vec<Ready>, EventError> {
        let retry = self.subscribers.iter().filter_map(|s| s.retry_in_ms()).min();
        let timeout = match (retry, timeout_ms) {
            (Some(a), Some(b)) => i32::from(a.min(b)),
            (Some(t), None) | (None, Some(t)) => i32::from(t),
            (None, None) => -1,
        };
        let mut events = [EpollEvent::default(); MAX_EVENTS];
        let n = match self.epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e.into()),
        };
        let mut control = Vec::new();
        for event in &events[..n] {
            let (owner, fd) = ((event.data() >> 32) as u32, event.data() as u32 as RawFd);
            let ready = EventSet::from_bits_truncate(event.events());
            if owner == CONTROL {
                control.push(Ready { fd, events: ready });
            } else if let Some(s) = self.subscribers.get_mut(owner as usize) {
                s.process(fd, ready, &mut Ops { epoll: &self.epoll, owner });
            }
        }
        for (owner, s) in self.subscribers.iter_mut().enumerate() {
            if s.retry_in_ms().is_some() {
                s.retry(&mut Ops { epoll: &self.epoll, owner: owner as u32 });
            }
        }
        Ok(control)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records what it saw; drops its fd on the first event.
    struct Recorder {
        fd: RawFd,
        seen: Arc<Mutex<Vec<RawFd>>>,
        retries: Arc<Mutex<u32>>,
        want_retry: bool,
    }

    impl Subscriber for Recorder {
        fn init(&mut self, ops: &mut Ops<'_>) -> Result<(), EventError> {
            ops.add(self.fd, EventSet::IN)
        }
        fn process(&mut self, fd: RawFd, _events: EventSet, ops: &mut Ops<'_>) {
            self.seen.lock().unwrap().push(fd);
            ops.remove(fd);
        }
        fn retry_in_ms(&self) -> Option<u16> {
            self.want_retry.then_some(5)
        }
        fn retry(&mut self, _ops: &mut Ops<'_>) {
            *self.retries.lock().unwrap() += 1;
            self.want_retry = false;
        }
    }

    #[test]
    fn subscribers_get_their_events_and_the_control_loop_its_own() {
        let mut ev = EventLoop::new().unwrap();
        let (mut dev_peer, dev) = UnixStream::pair().unwrap();
        let (mut ctl_peer, ctl) = UnixStream::pair().unwrap();
        let seen = Arc::default();
        let retries = Arc::default();
        let recorder = Recorder { fd: dev.as_raw_fd(), seen: Arc::clone(&seen), retries, want_retry: false };
        ev.add_subscriber(Box::new(recorder)).unwrap();
        ev.control().add(ctl.as_raw_fd(), EventSet::IN).unwrap();
        dev_peer.write_all(b"x").unwrap();
        ctl_peer.write_all(b"y").unwrap();
        let mut control = Vec::new();
        for _ in 0..3 {
            control.extend(ev.wait(Some(100)).unwrap());
        }
        assert_eq!(*seen.lock().unwrap(), [dev.as_raw_fd()], "once: it dropped its fd");
        assert!(control.iter().all(|r| r.fd == ctl.as_raw_fd() && r.events.contains(EventSet::IN)));
        assert_eq!(control.len(), 3, "level-triggered: unread data is reported again");
    }

    #[test]
    fn a_subscriber_that_asks_for_a_retry_is_called_without_an_event() {
        let mut ev = EventLoop::new().unwrap();
        let (_peer, dev) = UnixStream::pair().unwrap();
        let retries = Arc::new(Mutex::new(0));
        let seen = Arc::default();
        let recorder = Recorder { fd: dev.as_raw_fd(), seen, retries: Arc::clone(&retries), want_retry: true };
        ev.add_subscriber(Box::new(recorder)).unwrap();
        let started = std::time::Instant::now();
        assert!(ev.wait(None).unwrap().is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "the retry bounded the wait");
        assert_eq!(*retries.lock().unwrap(), 1);
    }
}
