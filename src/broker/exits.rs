//! What waits for a stopped guest's helper process to be gone: a
//! `destroy`'s answer, and the end of a guest whose helper reported it
//! stopped (shut down, reset, crashed).
//!
//! A guest's disk images are locked with open file description locks
//! (`disks.rs`), and the helper holds the same open file descriptions as
//! the broker: the locks go only when the helper's last fd closes, at its
//! exit. A `destroy` answered, or a guest shown shut off (or restarted for
//! a reboot), before that would let the next `start` on the same image
//! fail on a lock nobody holds a moment later. So both wait here until the
//! helper has exited (a zombie has closed its fds), checked without
//! blocking each time the event loop turns, and at most [`GRACE`], after
//! which they go on anyway.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::domain::Uuid;
use crate::privsep::helper::StopReason;
use crate::privsep::{CallError, CallValue};

/// How long an answer waits for a helper to exit at most.
pub const GRACE: Duration = Duration::from_secs(10);
/// How often a helper that has not exited is looked at again.
pub const POLL: Duration = Duration::from_millis(5);

/// An answer for a waiting client: its connection, request and result.
pub type Reply = (u64, u32, Result<CallValue, CallError>);

/// One reply waiting for helper `pid` to exit.
#[derive(Debug)]
struct Waiting {
    pid: Pid,
    reply: Reply,
    give_up: Instant,
}

/// A helper that reported its guest stopped, not yet exited.
#[derive(Debug)]
struct Stopping {
    uuid: Uuid,
    pid: Pid,
    reason: StopReason,
    detail: String,
    give_up: Instant,
}

/// A guest whose helper has exited after reporting it stopped: its uuid,
/// the helper's pid, and what the helper said.
pub type Stopped = (Uuid, Pid, StopReason, String);

/// The replies and guest ends waiting for helpers to exit.
#[derive(Debug, Default)]
pub struct Exits {
    waiting: Vec<Waiting>,
    stopping: Vec<Stopping>,
}

impl Exits {
    /// `reply` once helper `pid` has exited: now (returned) if it has.
    pub fn after_exit(&mut self, pid: Pid, reply: Reply) -> Option<Reply> {
        if exited(pid) {
            return Some(reply);
        }
        self.waiting.push(Waiting { pid, reply, give_up: Instant::now() + GRACE });
        None
    }

    /// The replies whose helper has exited, or that waited [`GRACE`].
    pub fn due(&mut self, now: Instant) -> Vec<Reply> {
        let (done, waiting): (Vec<Waiting>, Vec<Waiting>) =
            std::mem::take(&mut self.waiting).into_iter().partition(|w| w.give_up <= now || exited(w.pid));
        self.waiting = waiting;
        done.into_iter()
            .map(|w| {
                if w.give_up <= now {
                    log::warn!("helper {} has not exited within {} s; answering anyway", w.pid, GRACE.as_secs());
                }
                w.reply
            })
            .collect()
    }

    /// Guest `uuid`'s helper `pid` reported it stopped: its end, now
    /// (returned) if the helper has exited, else once it has.
    pub fn after_stop(&mut self, uuid: Uuid, pid: Pid, reason: StopReason, detail: String) -> Option<Stopped> {
        if exited(pid) {
            return Some((uuid, pid, reason, detail));
        }
        self.stopping.push(Stopping { uuid, pid, reason, detail, give_up: Instant::now() + GRACE });
        None
    }

    /// Whether helper `pid` reported its guest stopped and is exiting:
    /// nothing more it sends (its channel's end) is read.
    pub fn is_stopping(&self, pid: Pid) -> bool {
        self.stopping.iter().any(|s| s.pid == pid)
    }

    /// The guests whose helper has exited since it reported them stopped,
    /// or that waited [`GRACE`].
    pub fn stopped(&mut self, now: Instant) -> Vec<Stopped> {
        let (done, stopping): (Vec<Stopping>, Vec<Stopping>) =
            std::mem::take(&mut self.stopping).into_iter().partition(|s| s.give_up <= now || exited(s.pid));
        self.stopping = stopping;
        done.into_iter().map(|s| (s.uuid, s.pid, s.reason, s.detail)).collect()
    }

    /// When to look again, while something waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        (!self.waiting.is_empty() || !self.stopping.is_empty()).then(|| Instant::now() + POLL)
    }
}

/// Whether process `pid` has exited: reaped here if it is a child of ours
/// (or gone already), else absent from `/proc` or a zombie there (a helper
/// re-attached after a restart is another process's child).
fn exited(pid: Pid) -> bool {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => false,
        Err(Errno::ECHILD) => not_running(pid),
        Ok(_) | Err(_) => true,
    }
}

/// Whether `/proc` shows no live process `pid`.
fn not_running(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    // The state follows the name in parentheses, which may hold anything.
    stat.rfind(')').and_then(|at| stat[at + 1..].split_whitespace().next()).is_none_or(|s| s == "Z" || s == "X")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_waits_until_its_process_has_exited() {
        let mut child = std::process::Command::new("sleep").arg("0.3").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let mut exits = Exits::default();
        assert_eq!(exits.after_exit(pid, (1, 2, Ok(CallValue::Unit))), None, "sleep is still running");
        assert!(exits.next_deadline().is_some());
        assert!(exits.due(Instant::now()).is_empty());
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut replies = Vec::new();
        while replies.is_empty() && Instant::now() < deadline {
            std::thread::sleep(POLL);
            replies = exits.due(Instant::now());
        }
        assert_eq!(replies.len(), 1, "answered once sleep exited");
        assert_eq!(replies[0].1, 2);
        assert!(exits.next_deadline().is_none());
        // Reaped by the check: nothing is left for std to wait for.
        assert!(child.try_wait().is_err());
    }

    #[test]
    fn a_guest_ends_once_its_helper_has_exited() {
        let mut child = std::process::Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let uuid = Uuid([7; 16]);
        let mut exits = Exits::default();
        assert!(exits.after_stop(uuid, pid, StopReason::PowerOff, "off".into()).is_none());
        assert!(exits.is_stopping(pid));
        assert!(exits.stopped(Instant::now()).is_empty());
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut ended = Vec::new();
        while ended.is_empty() && Instant::now() < deadline {
            std::thread::sleep(POLL);
            ended = exits.stopped(Instant::now());
        }
        assert_eq!(ended, vec![(uuid, pid, StopReason::PowerOff, "off".to_string())]);
        assert!(!exits.is_stopping(pid));
        assert!(exits.next_deadline().is_none());
        // A helper gone already ends its guest at once.
        assert!(exits.after_stop(uuid, pid, StopReason::Crash, String::new()).is_some());
        assert!(child.try_wait().is_err(), "reaped by the check");
    }

    #[test]
    fn a_process_that_never_exits_is_answered_after_the_grace_period() {
        let mut exits = Exits::default();
        // This test's own process: alive, and no child of itself.
        let me = nix::unistd::getpid();
        assert_eq!(exits.after_exit(me, (1, 3, Ok(CallValue::Unit))), None);
        assert!(exits.due(Instant::now()).is_empty());
        assert_eq!(exits.due(Instant::now() + GRACE).len(), 1);
    }

    #[test]
    fn proc_states_of_the_dead_count_as_exited() {
        assert!(!not_running(nix::unistd::getpid()));
        assert!(not_running(Pid::from_raw(i32::MAX)));
    }
}
