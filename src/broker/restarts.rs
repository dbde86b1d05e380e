//! How often a guest may restart itself before it is ended as crashed.
//!
//! A guest that resets (or powers off, or panics) and whose `on_reboot`
//! (`on_poweroff`, `on_crash`) says `restart` costs the broker a new helper
//! each time: a fork and exec, new namespaces, a seccomp filter, a KVM VM. A
//! guest that triple-faults at its first instruction does that hundreds of
//! times a second (issue 11: 474 helpers in 10 s). Neither libvirt nor QEMU
//! limits this; we do, here, as a pure policy the event loop asks.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::domain::LifecycleAction;
use crate::privsep::helper::StopReason;

/// Self-restarts a guest may make within [`WINDOW`]; one more ends it.
///
/// Five in ten seconds is systemd's default start limit for a service
/// (`StartLimitBurst=5` in `StartLimitIntervalSec=10s`), the same problem one
/// level up. No real guest comes near it: even a minimal Linux takes about a
/// second from reset to a reboot of its own, and a normal reboot cycle takes
/// many seconds; a guest past it is looping, not rebooting.
pub const MAX_RESTARTS: usize = 5;

/// The window [`MAX_RESTARTS`] counts over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The audit reason (and log word) for a guest ended by the limit.
pub const REASON: &str = "reset-loop";

/// What to do with a guest that stopped by itself: why it counts as stopped,
/// what happens next, and the word the audit record and log give for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// How the stop is recorded (a guest ended by the limit crashed).
    pub reason: StopReason,
    /// Restart, or leave it off.
    pub action: LifecycleAction,
    /// The audit reason.
    pub op: &'static str,
}

/// Recent self-restarts per domain.
#[derive(Debug, Default)]
pub struct Restarts {
    recent: HashMap<crate::domain::Uuid, VecDeque<Instant>>,
}

impl Restarts {
    /// Judges `planned` for guest `uuid`, which stopped by itself at `now`:
    /// a restart the guest caused (not one a client asked for, `requested`)
    /// is counted, and the one past [`MAX_RESTARTS`] within [`WINDOW`] is
    /// turned into a crash handled by `on_crash`, except that a crash is
    /// never restarted then (that would be the same loop again).
    pub fn judge(
        &mut self,
        uuid: crate::domain::Uuid,
        now: Instant,
        planned: Outcome,
        requested: bool,
        on_crash: LifecycleAction,
    ) -> Outcome {
        let counts = planned.action == LifecycleAction::Restart
            && !requested
            && matches!(planned.reason, StopReason::Reset | StopReason::PowerOff | StopReason::Crash);
        if !counts {
            return planned;
        }
        let recent = self.recent.entry(uuid).or_default();
        while recent.front().is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW) {
            recent.pop_front();
        }
        if recent.len() < MAX_RESTARTS {
            recent.push_back(now);
            return planned;
        }
        // Ended: a later start begins with a clean slate.
        self.recent.remove(&uuid);
        let action = match on_crash {
            LifecycleAction::Restart => LifecycleAction::Destroy,
            other => other,
        };
        Outcome { reason: StopReason::Crash, action, op: REASON }
    }

    /// Forgets `uuid` (its domain was undefined).
    pub fn forget(&mut self, uuid: &crate::domain::Uuid) {
        self.recent.remove(uuid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: crate::domain::Uuid = crate::domain::Uuid([1; 16]);
    const REBOOT: Outcome = Outcome { reason: StopReason::Reset, action: LifecycleAction::Restart, op: "reboot" };

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_guest_that_resets_in_a_loop_is_ended_as_crashed_after_the_limit() {
        let mut r = Restarts::default();
        let t0 = Instant::now();
        for i in 0..MAX_RESTARTS as u64 {
            assert_eq!(r.judge(U, at(t0, i * 10), REBOOT, false, LifecycleAction::Destroy), REBOOT);
        }
        let ended = r.judge(U, at(t0, 60), REBOOT, false, LifecycleAction::Destroy);
        assert_eq!(ended, Outcome { reason: StopReason::Crash, action: LifecycleAction::Destroy, op: REASON });
        // The next start begins afresh.
        assert_eq!(r.judge(U, at(t0, 70), REBOOT, false, LifecycleAction::Destroy), REBOOT);
    }

    #[test]
    fn resets_spread_wider_than_the_window_restart_forever() {
        let mut r = Restarts::default();
        let t0 = Instant::now();
        let gap = WINDOW.as_millis() as u64 / MAX_RESTARTS as u64 + 1;
        for i in 0..100 {
            assert_eq!(r.judge(U, at(t0, i * gap), REBOOT, false, LifecycleAction::Destroy), REBOOT, "reset {i}");
        }
    }

    #[test]
    fn on_crash_restart_does_not_restart_a_looping_guest() {
        let mut r = Restarts::default();
        let t0 = Instant::now();
        let crash = Outcome { reason: StopReason::Crash, action: LifecycleAction::Restart, op: "crash" };
        for _ in 0..MAX_RESTARTS {
            assert_eq!(r.judge(U, t0, crash, false, LifecycleAction::Restart), crash);
        }
        let ended = r.judge(U, t0, crash, false, LifecycleAction::Restart);
        assert_eq!((ended.reason, ended.action, ended.op), (StopReason::Crash, LifecycleAction::Destroy, REASON));
        // on_crash=preserve is kept as it is.
        for _ in 0..MAX_RESTARTS {
            r.judge(U, t0, REBOOT, false, LifecycleAction::Preserve);
        }
        assert_eq!(r.judge(U, t0, REBOOT, false, LifecycleAction::Preserve).action, LifecycleAction::Preserve);
    }

    #[test]
    fn client_resets_stops_and_other_domains_do_not_count() {
        let mut r = Restarts::default();
        let t0 = Instant::now();
        let reset = Outcome { reason: StopReason::Reset, action: LifecycleAction::Restart, op: "reset" };
        let off = Outcome { reason: StopReason::PowerOff, action: LifecycleAction::Destroy, op: "shutdown" };
        for _ in 0..50 {
            assert_eq!(r.judge(U, t0, reset, true, LifecycleAction::Destroy), reset);
            assert_eq!(r.judge(U, t0, off, false, LifecycleAction::Destroy), off);
        }
        for _ in 0..MAX_RESTARTS {
            r.judge(U, t0, REBOOT, false, LifecycleAction::Destroy);
        }
        assert_eq!(r.judge(crate::domain::Uuid([2; 16]), t0, REBOOT, false, LifecycleAction::Destroy), REBOOT);
        r.forget(&U);
        assert_eq!(r.judge(U, t0, REBOOT, false, LifecycleAction::Destroy), REBOOT);
    }
}
