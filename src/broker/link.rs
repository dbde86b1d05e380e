//! The broker's view of its frontends: one process per trust class, each
//! with its clients, and when to start the next after one ends.
//!
//! A class is a kind of listener (read-write, read-only, admin, TCP, TLS):
//! its sockets go to its own frontend and to no other, so the class of every
//! request is known from the channel it arrives on, never from what a
//! frontend says. A compromised read-only frontend holds nothing but
//! read-only clients and the read-only listener.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::permit::Phase;
use crate::privsep::{Channel, ListenerKind, PeerIdentity};

/// What the broker knows of one client.
#[derive(Debug)]
pub struct Client {
    /// Who it is and which socket it came through.
    pub peer: PeerIdentity,
    /// Read-only: came through the read-only socket, or asked for it.
    pub readonly: bool,
    /// When it connected, seconds since the epoch.
    pub since: i64,
    /// It has proved who it is (a Unix peer at once; a TLS client once its
    /// certificate checked out).
    pub authenticated: bool,
    /// The frontend slot whose process serves it.
    pub slot: usize,
    /// Its socket's inode: one connection is one client, however often a
    /// frontend reports it.
    pub inode: u64,
}

/// A frontend process and what the broker knows of its clients.
#[derive(Debug)]
pub struct FrontendLink {
    /// Its pid.
    pub pid: Pid,
    /// The broker's end of its channel.
    pub channel: Channel,
    /// Where it is in its life; decides what it may ask.
    pub phase: Phase,
    /// When it was started.
    pub started: Instant,
    /// The broker's end of its sign channel (TLS handshake signatures).
    pub sign: Option<Channel>,
}

impl FrontendLink {
    /// Stops the process (if still running) and reaps it; returns how it ended.
    pub fn reap(&self) -> String {
        let status = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                let _ = kill(self.pid, Signal::SIGKILL);
                waitpid(self.pid, None)
            }
            other => other,
        };
        describe(status)
    }
}

/// One trust class's frontend: its listeners, its process when one runs,
/// and its own restart backoff (a crash loop in one class does not delay
/// the others).
#[derive(Debug)]
pub struct Slot {
    /// The class: every client of this frontend is of this kind.
    pub class: ListenerKind,
    /// Indices of its sockets in the broker's listener list.
    pub listeners: Vec<usize>,
    /// The running process.
    pub link: Option<FrontendLink>,
    /// When to start the next one.
    pub restart: Restart,
    /// A frontend of this class has been confined and serving once.
    pub ready_once: bool,
    /// Its channel may hold more requests than its last turn took.
    pub more: bool,
}

impl Slot {
    /// Slots for the listeners, one per kind present, in order of first
    /// appearance; each is due to start now.
    pub fn for_listeners(kinds: impl Iterator<Item = ListenerKind>, now: Instant) -> Vec<Slot> {
        let mut slots: Vec<Slot> = Vec::new();
        for (i, kind) in kinds.enumerate() {
            match slots.iter_mut().find(|s| s.class == kind) {
                Some(s) => s.listeners.push(i),
                None => slots.push(Slot {
                    class: kind,
                    listeners: vec![i],
                    link: None,
                    restart: Restart { due: Some(now), ..Restart::default() },
                    ready_once: false,
                    more: false,
                }),
            }
        }
        slots
    }

    /// The link, if its frontend is serving clients.
    pub fn serving(&self) -> Option<&FrontendLink> {
        self.link.as_ref().filter(|l| l.phase == Phase::Serving)
    }
}

/// A human description of how a child ended.
pub fn describe(status: nix::Result<WaitStatus>) -> String {
    match status {
        Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
        Ok(WaitStatus::Signaled(_, Signal::SIGSYS, _)) => {
            "killed by SIGSYS: it made a system call outside its seccomp policy".into()
        }
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
        Ok(other) => format!("ended ({other:?})"),
        Err(e) => format!("already reaped ({e})"),
    }
}

/// Backoff between frontend restarts: quick after a long, healthy run,
/// slower when it keeps dying young (a crash loop should not spin a core).
#[derive(Debug)]
pub struct Restart {
    delay: Duration,
    /// When the next start is due.
    pub due: Option<Instant>,
}

const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(10);
const HEALTHY_RUN: Duration = Duration::from_secs(30);

impl Default for Restart {
    fn default() -> Self {
        Restart { delay: FIRST_DELAY, due: None }
    }
}

impl Restart {
    /// Schedules a start after a frontend that ran for `ran` ended.
    pub fn schedule(&mut self, ran: Duration, now: Instant) {
        self.delay = if ran >= HEALTHY_RUN { FIRST_DELAY } else { (self.delay * 2).min(MAX_DELAY) };
        self.due = Some(now + self.delay);
    }

    /// The current delay, for logs.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_listener_kind_gets_a_slot_of_its_own() {
        use ListenerKind::*;
        let now = Instant::now();
        let slots = Slot::for_listeners([ReadWrite, ReadOnly, Admin, Tcp, Tcp, Tls].into_iter(), now);
        let classes: Vec<_> = slots.iter().map(|s| s.class).collect();
        assert_eq!(classes, [ReadWrite, ReadOnly, Admin, Tcp, Tls]);
        assert_eq!(slots[3].listeners, [3, 4]);
        assert!(slots.iter().all(|s| s.restart.due == Some(now) && s.link.is_none()));
    }

    #[test]
    fn crash_loops_back_off_and_healthy_runs_reset() {
        let now = Instant::now();
        let mut r = Restart::default();
        r.schedule(Duration::from_millis(5), now);
        r.schedule(Duration::from_millis(5), now);
        assert_eq!(r.delay(), Duration::from_millis(800));
        for _ in 0..10 {
            r.schedule(Duration::ZERO, now);
        }
        assert_eq!(r.delay(), MAX_DELAY);
        r.schedule(HEALTHY_RUN, now);
        assert_eq!(r.delay(), FIRST_DELAY);
        assert_eq!(r.due, Some(now + FIRST_DELAY));
    }
}
