//! The requests a supervisor has sent to its guests' helpers and not yet
//! seen answered. A guest may have several in flight (a suspend and a
//! graceful destroy, say): each helper answer settles the oldest request
//! that waits for that kind of answer, as a helper answers its commands in
//! the order they came. Only a start excludes every other request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::domain::Uuid;
use crate::privsep::{CallError, PeerIdentity};

/// How long a helper may take to answer a pause, resume or stop.
const ASK_TIMEOUT: Duration = Duration::from_millis(5_000);
/// How long a new helper may take to report `Started`.
const START_TIMEOUT: Duration = Duration::from_millis(10_000);

/// A request sent to a guest's helper whose answer arrives through the event
/// loop: the broker settles it when the helper answers, the guest stops or
/// the deadline passes, and serves everyone else meanwhile, so a slow or
/// wedged helper stalls only whoever asked it.
pub struct Awaiting {
    /// Tells it from the guest's other requests.
    pub seq: u64,
    /// The helper event that settles it.
    pub wait: Wait,
    /// The audit operation (`start`, `create`, `suspend`, ...).
    pub op: &'static str,
    /// Who asked.
    pub asker: Asker,
    /// The helper's pid, for the audit record after it is gone.
    pub pid: i32,
    /// The domain's name, likewise (a transient domain may be gone).
    pub name: String,
    /// When it was asked.
    pub asked: Instant,
    /// When to give up on the helper.
    pub deadline: Instant,
}

/// What an [`Awaiting`] request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A new helper's `Started`; with `paused` it is then asked to pause
    /// (START_PAUSED). `fresh` is false for a restart in place (reboot),
    /// which keeps its id and is no new start for clients; `crashed`, one
    /// after a panic, which then runs on as crashed and resumed.
    Started { paused: bool, fresh: bool, crashed: bool },
    /// `Paused` after a START_PAUSED start.
    StartPaused,
    /// `Paused` (virDomainSuspend).
    Paused,
    /// `Resumed` (virDomainResume).
    Resumed,
    /// `Stopped` (a graceful destroy).
    Stopped,
}

impl Wait {
    /// Whether this is part of a start: failing it stops the guest.
    pub fn starting(self) -> bool {
        matches!(self, Wait::Started { .. } | Wait::StartPaused)
    }

    /// Whether a `Paused` (or `PauseFailed`) answers it.
    pub fn pausing(self) -> bool {
        matches!(self, Wait::Paused | Wait::StartPaused)
    }

    /// How long the helper gets.
    pub fn timeout(self) -> Duration {
        if matches!(self, Wait::Started { .. }) { START_TIMEOUT } else { ASK_TIMEOUT }
    }

    /// The error for a helper that let the deadline pass.
    pub fn overdue(self, name: &str) -> CallError {
        let secs = self.timeout().as_secs();
        CallError::OperationFailed(match self {
            Wait::Started { .. } => format!("guest '{name}' did not start within {secs} s"),
            Wait::Stopped => {
                format!("guest '{name}' did not stop within {secs} s and a graceful destroy does not kill it")
            }
            _ => format!("guest '{name}' did not answer within {secs} s"),
        })
    }
}

/// Who is waiting on an [`Awaiting`] request.
pub enum Asker {
    /// A client: its call is answered when the request settles.
    Client {
        /// Its connection.
        conn: u64,
        /// Its identity.
        peer: PeerIdentity,
        /// The frontend request to answer; `None` once the frontend that
        /// sent it is gone (a new one numbers its requests afresh).
        reply_to: Option<u32>,
    },
    /// The daemon itself (autostart, an `on_*` restart), for this reason.
    Daemon(&'static str),
}

/// Every guest's requests in flight, oldest first.
#[derive(Default)]
pub struct Pending {
    by_guest: HashMap<Uuid, Vec<Awaiting>>,
    next: u64,
}

impl Pending {
    /// Records a request just sent to guest `uuid`'s helper.
    pub fn add(&mut self, uuid: Uuid, wait: Wait, op: &'static str, asker: Asker, pid: i32, name: String) {
        self.next += 1;
        let asked = Instant::now();
        let a = Awaiting { seq: self.next, wait, op, asker, pid, name, asked, deadline: asked + wait.timeout() };
        self.by_guest.entry(uuid).or_default().push(a);
    }

    /// Guest `uuid`'s oldest request, if any.
    pub fn oldest(&self, uuid: &Uuid) -> Option<&Awaiting> {
        self.by_guest.get(uuid).and_then(|v| v.first())
    }

    /// Guest `uuid`'s oldest request that `which` picks.
    pub fn find(&self, uuid: &Uuid, which: impl Fn(&Awaiting) -> bool) -> Option<&Awaiting> {
        self.by_guest.get(uuid)?.iter().find(|a| which(a))
    }

    /// The same, to change.
    pub fn find_mut(&mut self, uuid: &Uuid, which: impl Fn(&Awaiting) -> bool) -> Option<&mut Awaiting> {
        self.by_guest.get_mut(uuid)?.iter_mut().find(|a| which(a))
    }

    /// Takes out guest `uuid`'s oldest request that `which` picks.
    pub fn take(&mut self, uuid: &Uuid, which: impl Fn(&Awaiting) -> bool) -> Option<Awaiting> {
        let list = self.by_guest.get_mut(uuid)?;
        let a = list.remove(list.iter().position(which)?);
        if list.is_empty() {
            self.by_guest.remove(uuid);
        }
        Some(a)
    }

    /// Guest `uuid`'s helper is starting: nothing else may be asked of it.
    pub fn starting(&self, uuid: &Uuid) -> Option<&Awaiting> {
        self.find(uuid, |a| a.wait.starting())
    }

    /// Every request, with its guest.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &Awaiting)> {
        self.by_guest.iter().flat_map(|(u, v)| v.iter().map(move |a| (u, a)))
    }

    /// How many requests are in flight.
    pub fn len(&self) -> usize {
        self.by_guest.values().map(Vec::len).sum()
    }

    /// The earliest deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.iter().map(|(_, a)| a.deadline).min()
    }

    /// The frontend that sent the requests of the clients `gone` picks is
    /// gone: their answers have nobody to go to (a new frontend numbers its
    /// requests afresh), but are still audited.
    pub fn orphan(&mut self, gone: impl Fn(u64) -> bool) {
        for a in self.by_guest.values_mut().flatten() {
            if let Asker::Client { conn, reply_to, .. } = &mut a.asker
                && gone(*conn)
            {
                *reply_to = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_has_several_requests_in_flight_each_answer_settling_the_oldest_it_fits() {
        let (mut p, u) = (Pending::default(), Uuid([1; 16]));
        p.add(u, Wait::Paused, "suspend", Asker::Daemon("a"), 7, "g".into());
        p.add(u, Wait::Stopped, "destroy", Asker::Daemon("b"), 7, "g".into());
        p.add(u, Wait::Paused, "suspend", Asker::Daemon("c"), 7, "g".into());
        assert_eq!(p.len(), 3);
        assert!(p.starting(&u).is_none());
        let first = p.take(&u, |a| a.wait.pausing()).unwrap();
        assert!(matches!(first.asker, Asker::Daemon("a")));
        assert_eq!(p.take(&u, |a| a.wait == Wait::Stopped).unwrap().op, "destroy");
        assert!(matches!(p.take(&u, |a| a.wait.pausing()).unwrap().asker, Asker::Daemon("c")));
        assert!(p.len() == 0 && p.deadline().is_none());
    }

    #[test]
    fn orphaned_requests_keep_their_audit_but_lose_their_reply() {
        let (mut p, u) = (Pending::default(), Uuid([2; 16]));
        let peer = PeerIdentity {
            socket: crate::privsep::ListenerKind::ReadWrite,
            uid: None,
            gid: None,
            pid: None,
            addr: None,
            dn: None,
        };
        p.add(u, Wait::Resumed, "resume", Asker::Client { conn: 4, peer, reply_to: Some(9) }, 7, "g".into());
        p.orphan(|conn| conn == 4);
        assert!(matches!(p.oldest(&u).unwrap().asker, Asker::Client { reply_to: None, .. }));
        assert!(p.deadline().is_some_and(|d| d > Instant::now()));
    }
}
