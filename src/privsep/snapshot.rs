//! Statistics snapshots as the broker publishes them to the frontends,
//! beside the domain table (`replica.rs`): per domain, the figures its last
//! answers carried (a bulk statistics record, `virDomainGetInfo`,
//! `virDomainMemoryStats`), each with the instant it was sampled, so that a
//! frontend answers the same question again from the copy while it is
//! young enough, and the broker and the guests' helpers are not asked.
//!
//! Instants are `CLOCK_MONOTONIC` nanoseconds: the broker and the
//! frontends run on the same host, so both read the same clock and a
//! frontend computes a snapshot's age without trusting anyone's wall clock.

use serde::{Deserialize, Serialize};

use super::admin::Param;
use crate::domain::Uuid;
use crate::rpc::remote::DomainInfoRet;

/// How old a snapshot's figures may be to answer a statistics call. A
/// scraper, or several, asking more often than this share one sampling of
/// the guests; one asking less often gets figures sampled for it (the
/// broker's answer then refreshes the snapshot). Read-write connections
/// always get figures sampled for them: a manager acts on what it reads.
pub const FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Most snapshots one message carries; more go in further messages, so a
/// message's size is bounded by a few dozen records, not by the domains.
pub const PER_MESSAGE: usize = 32;

/// One domain's snapshot. It describes the domain as it was at `id` and
/// `state`: a frontend whose table shows the domain otherwise (stopped,
/// started again, paused) does not use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The domain.
    pub uuid: Uuid,
    /// Its running id when sampled (-1: inactive).
    pub id: i32,
    /// Its `virDomainState` and reason when sampled.
    pub state: (i32, i32),
    /// The bulk statistics record, for the groups it holds.
    pub record: Option<Record>,
    /// `virDomainGetInfo`'s answer, and when it was sampled.
    pub info: Option<(u64, DomainInfoRet)>,
    /// `virDomainMemoryStats`' answer, every figure there is (a call gets
    /// the first `nr_stats` of them), and when it was sampled.
    pub memory: Option<(u64, Vec<(i32, u64)>)>,
}

/// A bulk statistics record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When its sampling began (the oldest of its figures).
    pub sampled: u64,
    /// The groups (`domstats::group`) it holds whole.
    pub groups: u32,
    /// Their fields, in libvirt's order.
    pub params: Vec<Param>,
}

/// What changed since the frontend's last update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Forget every snapshot first: something changed that the snapshots
    /// cannot show (a call that changes domains was made).
    pub clear: bool,
    /// New snapshots, each replacing the domain's previous one.
    pub snapshots: Vec<Snapshot>,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64),
        // Cannot fail for this clock; a zero makes every snapshot look old.
        Err(_) => 0,
    }
}

/// `CLOCK_MONOTONIC` at `instant` (std's `Instant` is that clock, but
/// does not say its value).
pub fn ns_at(instant: std::time::Instant) -> u64 {
    let now = std::time::Instant::now();
    let back = now.saturating_duration_since(instant).as_nanos() as u64;
    now_ns().saturating_sub(back)
}
