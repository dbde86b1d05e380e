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
//! helper has exited (a zombie has closed its fds), and at most [`GRACE`],
//! after which they go on anyway.
//!
//! Nothing is polled on a timer meanwhile: the event loop turns when the
//! exit happens. A helper this broker spawned is its child, and its exit
//! is the SIGCHLD the loop reaps ([`Exits::reaped`]); one re-attached after
//! a restart is another process's child, and is watched through a pidfd,
//! readable once the process has exited, in the loop's poll (token
//! [`Exits::TOKEN`]). Which of the two a helper is, the kernel says
//! (`waitpid` knows only our children), so a graceful destroy, answered
//! after the guest is forgotten, needs no record of it.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::domain::Uuid;
use crate::privsep::helper::StopReason;
use crate::privsep::{CallError, CallValue};

/// How long an answer waits for a helper to exit at most.
pub const GRACE: Duration = Duration::from_secs(10);

/// An answer for a waiting client: its connection, request and result.
pub type Reply = (u64, u32, Result<CallValue, CallError>);

/// How a helper's exit will be seen.
#[derive(Debug)]
enum Watch {
    /// It has exited.
    Gone,
    /// Our child: its reaping after SIGCHLD.
    Child,
    /// Not our child: its pidfd turning readable.
    Pidfd(OwnedFd),
}

impl Watch {
    fn gone(&self) -> bool {
        match self {
            Watch::Gone => true,
            Watch::Child => false,
            Watch::Pidfd(fd) => readable(fd),
        }
    }
}

/// One reply waiting for helper `pid` to exit.
#[derive(Debug)]
struct Waiting {
    pid: Pid,
    watch: Watch,
    reply: Reply,
    give_up: Instant,
}

/// A helper that reported its guest stopped, not yet exited.
#[derive(Debug)]
struct Stopping {
    uuid: Uuid,
    pid: Pid,
    watch: Watch,
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
    /// The event loop's poll, where pidfds are registered (none in tests
    /// that drive this by hand: pidfds are then only looked at).
    registry: Option<Registry>,
}

impl Exits {
    /// The token every watched pidfd is registered with: on its event the
    /// loop settles what is due ([`Exits::due`], [`Exits::stopped`]).
    pub const TOKEN: Token = Token(1);

    /// Registers the pidfds of helpers that are not our children in
    /// `registry`, so that their exit wakes the event loop.
    pub fn watch_with(&mut self, registry: Registry) {
        self.registry = Some(registry);
    }

    /// `reply` once helper `pid` has exited: now (returned) if it has.
    pub fn after_exit(&mut self, pid: Pid, reply: Reply) -> Option<Reply> {
        let watch = self.watch(pid);
        if watch.gone() {
            self.unwatch(watch);
            return Some(reply);
        }
        self.waiting.push(Waiting { pid, watch, reply, give_up: Instant::now() + GRACE });
        None
    }

    /// Child `pid` was reaped (the event loop's SIGCHLD): what waited for
    /// it is due.
    pub fn reaped(&mut self, pid: Pid) {
        let waiting = self.waiting.iter_mut().filter(|w| w.pid == pid).map(|w| &mut w.watch);
        let stopping = self.stopping.iter_mut().filter(|s| s.pid == pid).map(|s| &mut s.watch);
        for watch in waiting.chain(stopping) {
            if let Watch::Pidfd(fd) = std::mem::replace(watch, Watch::Gone)
                && let Some(registry) = &self.registry
            {
                let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
        }
    }

    /// The replies whose helper has exited, or that waited [`GRACE`].
    pub fn due(&mut self, now: Instant) -> Vec<Reply> {
        let (done, waiting): (Vec<Waiting>, Vec<Waiting>) =
            std::mem::take(&mut self.waiting).into_iter().partition(|w| w.give_up <= now || w.watch.gone());
        self.waiting = waiting;
        done.into_iter()
            .map(|w| {
                if !w.watch.gone() {
                    log::warn!("helper {} has not exited within {} s; answering anyway", w.pid, GRACE.as_secs());
                }
                self.unwatch(w.watch);
                w.reply
            })
            .collect()
    }

    /// Guest `uuid`'s helper `pid` reported it stopped: its end, now
    /// (returned) if the helper has exited, else once it has.
    pub fn after_stop(&mut self, uuid: Uuid, pid: Pid, reason: StopReason, detail: String) -> Option<Stopped> {
        let watch = self.watch(pid);
        if watch.gone() {
            self.unwatch(watch);
            return Some((uuid, pid, reason, detail));
        }
        self.stopping.push(Stopping { uuid, pid, watch, reason, detail, give_up: Instant::now() + GRACE });
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
            std::mem::take(&mut self.stopping).into_iter().partition(|s| s.give_up <= now || s.watch.gone());
        self.stopping = stopping;
        done.into_iter()
            .map(|s| {
                self.unwatch(s.watch);
                (s.uuid, s.pid, s.reason, s.detail)
            })
            .collect()
    }

    /// When the oldest wait gives up, while something waits; its exit
    /// wakes the loop before that.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.give_up).chain(self.stopping.iter().map(|s| s.give_up)).min()
    }

    /// How helper `pid`'s exit will be seen. A child of ours that has
    /// exited is reaped here; one gone already settles what else waited
    /// for it (it may have been reaped elsewhere, by `Running::kill`).
    fn watch(&mut self, pid: Pid) -> Watch {
        let watch = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => Watch::Child,
            // Not our child (or reaped already: then its pid is free).
            Err(Errno::ECHILD) => match pidfd_open(pid) {
                Ok(fd) => {
                    if let Some(registry) = &self.registry
                        && let Err(e) =
                            registry.register(&mut SourceFd(&fd.as_raw_fd()), Self::TOKEN, Interest::READABLE)
                    {
                        log::warn!("cannot watch helper {pid} for its exit: {e}");
                    }
                    Watch::Pidfd(fd)
                }
                Err(Errno::ESRCH) => Watch::Gone,
                Err(e) => {
                    log::warn!(
                        "cannot watch helper {pid} for its exit (pidfd_open: {e}); waiting {} s",
                        GRACE.as_secs()
                    );
                    Watch::Child
                }
            },
            Ok(_) | Err(_) => Watch::Gone,
        };
        if let Watch::Gone = watch {
            self.reaped(pid);
        }
        watch
    }

    /// Stops watching a settled wait's pidfd (closed as it drops).
    fn unwatch(&self, watch: Watch) {
        if let (Watch::Pidfd(fd), Some(registry)) = (watch, &self.registry) {
            let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
    }
}

/// A pidfd for process `pid`: readable once it has exited (as a zombie, its
/// fds closed, or reaped).
fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags (0) and touches no memory of
    // ours; a non-negative result is a new fd that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: `fd` was just returned by the kernel, open and ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether pidfd `fd` is readable: its process has exited.
fn readable(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A process that exits after `secs` and is not a child of this one
    /// (its shell parent is gone): what a re-attached helper is.
    fn orphan_sleeping(secs: &str) -> Pid {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", &format!("sleep {secs} >/dev/null & echo $!")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = String::new();
        sh.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        sh.wait().unwrap();
        Pid::from_raw(out.trim().parse().unwrap())
    }

    fn running(pid: Pid) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        stat.rfind(')').and_then(|at| stat[at + 1..].split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X")
    }

    #[test]
    fn a_reply_to_a_child_waits_for_its_reaping_and_nothing_polls_meanwhile() {
        let mut child = std::process::Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let mut exits = Exits::default();
        assert_eq!(exits.after_exit(pid, (1, 2, Ok(CallValue::Unit))), None, "sleep is still running");
        // No timer: the loop sleeps until the exit (or the grace period).
        let next = exits.next_deadline().unwrap();
        assert!(next >= Instant::now() + GRACE - Duration::from_secs(1));
        // Exited and reaped elsewhere, unannounced: still waiting, since only
        // the loop's reaping settles a child.
        child.wait().unwrap();
        assert!(exits.due(Instant::now()).is_empty());
        exits.reaped(pid);
        let replies = exits.due(Instant::now());
        assert_eq!(replies.len(), 1, "answered once sleep was reaped");
        assert_eq!(replies[0].1, 2);
        assert!(exits.next_deadline().is_none());
    }

    #[test]
    fn a_guest_ends_once_its_helper_is_reaped() {
        let mut child = std::process::Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let uuid = Uuid([7; 16]);
        let mut exits = Exits::default();
        assert!(exits.after_stop(uuid, pid, StopReason::PowerOff, "off".into()).is_none());
        assert!(exits.is_stopping(pid));
        assert!(exits.stopped(Instant::now()).is_empty());
        exits.reaped(Pid::from_raw(i32::MAX));
        assert!(exits.stopped(Instant::now()).is_empty(), "another child's reaping settles nothing");
        child.wait().unwrap();
        exits.reaped(pid);
        assert_eq!(exits.stopped(Instant::now()), vec![(uuid, pid, StopReason::PowerOff, "off".to_string())]);
        assert!(!exits.is_stopping(pid));
        assert!(exits.next_deadline().is_none());
    }

    #[test]
    fn a_helper_gone_already_settles_at_once_and_with_it_what_else_waited() {
        let mut child = std::process::Command::new("sleep").arg("0.1").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let uuid = Uuid([8; 16]);
        let mut exits = Exits::default();
        assert!(exits.after_stop(uuid, pid, StopReason::Crash, String::new()).is_none());
        // Reaped elsewhere (as `Running::kill` does), then a destroy asks.
        child.wait().unwrap();
        assert!(exits.after_exit(pid, (1, 4, Ok(CallValue::Unit))).is_some(), "gone: answered now");
        assert_eq!(exits.stopped(Instant::now()).len(), 1, "the stop that waited for it is due too");
        // A child that exited but is not reaped yet is reaped by the check.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        while running(pid) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(exits.after_exit(pid, (1, 5, Ok(CallValue::Unit))).is_some());
        assert!(child.try_wait().is_err(), "reaped by the check");
    }

    #[test]
    fn a_helper_that_is_not_our_child_wakes_the_poll_when_it_exits() {
        let mut poll = mio::Poll::new().unwrap();
        let mut exits = Exits::default();
        exits.watch_with(poll.registry().try_clone().unwrap());
        let pid = orphan_sleeping("0.3");
        let asked = Instant::now();
        assert_eq!(exits.after_exit(pid, (1, 6, Ok(CallValue::Unit))), None, "sleep is still running");
        assert!(exits.due(Instant::now()).is_empty());
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert!(events.iter().any(|e| e.token() == Exits::TOKEN), "the pidfd woke the poll");
        assert!(!running(pid), "only once the process has exited");
        let replies = exits.due(Instant::now());
        assert_eq!(replies.len(), 1);
        assert!(asked.elapsed() < Duration::from_secs(3), "{:?}", asked.elapsed());
        assert!(exits.next_deadline().is_none());
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
}
