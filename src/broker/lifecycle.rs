//! A domain's lifecycle as the broker types it: its state with the reason
//! for it, and the lifecycle events clients get. libvirt's numbers for them
//! appear here and nowhere else in the broker; they are given out at the
//! RPC boundary (a call's value, a stats record, an event) and in the
//! run-state records, whose format they are.

use crate::privsep::helper::StopReason;

/// A domain's state and why it is in it (`virDomainState` with its reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Its guest runs.
    Running(RunningReason),
    /// Its guest is paused (or its helper is starting).
    Paused(PausedReason),
    /// Not running.
    Shutoff(ShutoffReason),
}

/// `virDomainRunningReason`, the ones this daemon gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunningReason {
    /// `VIR_DOMAIN_RUNNING_UNKNOWN`.
    Unknown = 0,
    /// `VIR_DOMAIN_RUNNING_BOOTED`.
    Booted = 1,
    /// `VIR_DOMAIN_RUNNING_UNPAUSED`.
    Unpaused = 5,
    /// `VIR_DOMAIN_RUNNING_CRASHED`: running on after a panic (`on_crash` restart).
    Crashed = 9,
}

/// `virDomainPausedReason`, the ones this daemon gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PausedReason {
    /// `VIR_DOMAIN_PAUSED_UNKNOWN`.
    Unknown = 0,
    /// `VIR_DOMAIN_PAUSED_USER`.
    User = 1,
    /// `VIR_DOMAIN_PAUSED_STARTING_UP`: its helper is starting.
    StartingUp = 11,
}

/// `virDomainShutoffReason`, the ones this daemon gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutoffReason {
    /// `VIR_DOMAIN_SHUTOFF_UNKNOWN`: defined, never started (or gone while
    /// no daemon watched).
    Unknown = 0,
    /// `VIR_DOMAIN_SHUTOFF_SHUTDOWN`.
    Shutdown = 1,
    /// `VIR_DOMAIN_SHUTOFF_DESTROYED`.
    Destroyed = 2,
    /// `VIR_DOMAIN_SHUTOFF_CRASHED`.
    Crashed = 3,
    /// `VIR_DOMAIN_SHUTOFF_FAILED`.
    Failed = 6,
}

/// `VIR_DOMAIN_RUNNING`.
const RUNNING: i32 = 1;
/// `VIR_DOMAIN_PAUSED`.
const PAUSED: i32 = 3;
/// `VIR_DOMAIN_SHUTOFF`.
const SHUTOFF: i32 = 5;

impl DomainState {
    /// A domain that is defined and not running.
    pub const DEFINED: DomainState = DomainState::Shutoff(ShutoffReason::Unknown);

    /// libvirt's `(state, reason)` numbers.
    pub fn to_libvirt(self) -> (i32, i32) {
        match self {
            DomainState::Running(r) => (RUNNING, r as i32),
            DomainState::Paused(r) => (PAUSED, r as i32),
            DomainState::Shutoff(r) => (SHUTOFF, r as i32),
        }
    }

    /// The state libvirt's numbers name (a run-state record's); a reason
    /// this daemon does not give reads as that state's unknown reason.
    pub fn from_libvirt(state: i32, reason: i32) -> Option<DomainState> {
        Some(match state {
            RUNNING => DomainState::Running(match reason {
                1 => RunningReason::Booted,
                5 => RunningReason::Unpaused,
                9 => RunningReason::Crashed,
                _ => RunningReason::Unknown,
            }),
            PAUSED => DomainState::Paused(match reason {
                1 => PausedReason::User,
                11 => PausedReason::StartingUp,
                _ => PausedReason::Unknown,
            }),
            SHUTOFF => DomainState::Shutoff(match reason {
                1 => ShutoffReason::Shutdown,
                2 => ShutoffReason::Destroyed,
                3 => ShutoffReason::Crashed,
                6 => ShutoffReason::Failed,
                _ => ShutoffReason::Unknown,
            }),
            _ => return None,
        })
    }

    /// `virDomainState` alone (`virDomainGetInfo`, list filters).
    pub fn code(self) -> i32 {
        self.to_libvirt().0
    }

    /// Paused, for whatever reason.
    pub fn is_paused(self) -> bool {
        matches!(self, DomainState::Paused(_))
    }

    /// Running (not paused).
    pub fn is_running(self) -> bool {
        matches!(self, DomainState::Running(_))
    }
}

impl From<StopReason> for ShutoffReason {
    /// The reason a domain is shut off when its helper ends for `reason`.
    fn from(reason: StopReason) -> ShutoffReason {
        match reason {
            StopReason::PowerOff | StopReason::Reset => ShutoffReason::Shutdown,
            StopReason::Destroyed => ShutoffReason::Destroyed,
            StopReason::Crash => ShutoffReason::Crashed,
            StopReason::Failed => ShutoffReason::Failed,
        }
    }
}

/// `virDomainEventType` values and their details.
pub mod event {
    /// DEFINED: ADDED 0, UPDATED 1.
    pub const DEFINED: i32 = 0;
    /// UNDEFINED: REMOVED 0.
    pub const UNDEFINED: i32 = 1;
    /// STARTED: BOOTED 0.
    pub const STARTED: i32 = 2;
    /// SUSPENDED: PAUSED 0.
    pub const SUSPENDED: i32 = 3;
    /// RESUMED: UNPAUSED 0.
    pub const RESUMED: i32 = 4;
    /// STOPPED: SHUTDOWN 0, DESTROYED 1, CRASHED 2, FAILED 5.
    pub const STOPPED: i32 = 5;
    /// SHUTDOWN: FINISHED 0.
    pub const SHUTDOWN: i32 = 6;
    /// CRASHED: PANICKED 0.
    pub const CRASHED: i32 = 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_libvirts_numbers_and_back() {
        for s in [
            DomainState::Running(RunningReason::Booted),
            DomainState::Running(RunningReason::Unpaused),
            DomainState::Running(RunningReason::Crashed),
            DomainState::Paused(PausedReason::User),
            DomainState::Paused(PausedReason::StartingUp),
            DomainState::Shutoff(ShutoffReason::Failed),
            DomainState::DEFINED,
        ] {
            let (state, reason) = s.to_libvirt();
            assert_eq!(DomainState::from_libvirt(state, reason), Some(s));
        }
        assert_eq!(DomainState::Paused(PausedReason::StartingUp).to_libvirt(), (3, 11));
        assert_eq!(DomainState::Shutoff(ShutoffReason::Crashed).to_libvirt(), (5, 3));
        assert_eq!(DomainState::from_libvirt(1, 99), Some(DomainState::Running(RunningReason::Unknown)));
        assert_eq!(DomainState::from_libvirt(42, 0), None);
    }

    #[test]
    fn a_helper_reset_is_a_shutdown_and_a_failure_a_failure() {
        assert_eq!(ShutoffReason::from(StopReason::Reset), ShutoffReason::Shutdown);
        assert_eq!(ShutoffReason::from(StopReason::Failed), ShutoffReason::Failed);
    }
}
