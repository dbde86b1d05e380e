//! Replies that wait for a stopped guest's helper process to be gone.
//!
//! A guest's disk images are locked with open file description locks
//! (`disks.rs`), and the helper holds the same open file descriptions as
//! the broker: the locks go only when the helper's last fd closes, at its
//! exit. A `destroy` answered before that would let the client's next
//! `start` of another guest on the same image fail on a lock nobody holds
//! a moment later. So the answer waits here until the helper has exited
//! (a zombie has closed its fds), checked without blocking each time the
//! event loop turns, and at most [`GRACE`], after which it goes anyway.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

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

/// The replies waiting for helpers to exit.
#[derive(Debug, Default)]
pub struct Exits {
    waiting: Vec<Waiting>,
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

    /// When to look again, while a reply waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        (!self.waiting.is_empty()).then(|| Instant::now() + POLL)
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
