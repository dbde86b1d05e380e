//! The guest's CMOS clock from the broker's side: where it starts (from
//! `<clock offset=...>`, worked out when the helper starts), and libvirt's
//! RTC change event when the guest sets it (the helper's unsolicited
//! `RtcChange`, at most one a second).
//!
//! The helper reports the guest's new offset from the host's UTC. The event
//! carries what libvirt's QEMU driver sends: for `offset='variable'` the
//! new offset from UTC (the live definition's `adjustment` becomes it, and
//! a live `basis='localtime'` became `basis='utc'` at start, as libvirt
//! converts it); for the other offsets the change since start, from the
//! clock's base (UTC, local time or the absolute start). Only the live XML
//! shows the new adjustment; the persistent definition keeps its own.

use super::state::Ctx;
use crate::domain::Uuid;
use crate::domain::clock::{Basis, Clock, MAX_ADJUSTMENT, Offset};
use crate::privsep::{DomainEvent, EventKind};

/// The least time between two RTC change events of one guest the broker
/// passes on: half the helper's own period, so that jitter on the channel
/// never costs a well-behaved helper an event.
const MIN_EVENT_GAP: std::time::Duration = std::time::Duration::from_millis(500);

/// A running guest's clock: where it started and where the guest put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveClock {
    /// The offset from UTC the guest started with (libvirt's `adjustment0`
    /// for a variable clock).
    pub base: i64,
    /// `offset='variable'`: events carry the offset from UTC, and the live
    /// XML shows it as the adjustment.
    pub variable: bool,
    /// The guest's offset from UTC now.
    pub offset: i64,
}

impl LiveClock {
    /// The clock of a guest starting at `now` (seconds since 1970), where
    /// the host's local time is `local` seconds from UTC.
    pub fn at_start(clock: &Clock, now: i64, local: i64) -> LiveClock {
        let (base, variable) = match clock.offset {
            Offset::Utc { .. } => (0, false),
            Offset::Localtime { .. } => (local, false),
            Offset::Variable { adjustment, basis: Basis::Utc } => (adjustment, true),
            Offset::Variable { adjustment, basis: Basis::Localtime } => (adjustment.saturating_add(local), true),
            Offset::Absolute { start } => (i64::try_from(start).unwrap_or(i64::MAX).saturating_sub(now), false),
        };
        let base = base.clamp(-MAX_ADJUSTMENT, MAX_ADJUSTMENT);
        LiveClock { base, variable, offset: base }
    }

    /// The guest set its clock to UTC + `offset` (the helper's word,
    /// bounded here): returns the event's offset.
    pub fn changed(&mut self, offset: i64) -> i64 {
        self.offset = offset.clamp(-MAX_ADJUSTMENT, MAX_ADJUSTMENT);
        if self.variable { self.offset } else { self.offset - self.base }
    }

    /// `<clock>` as the running guest has it: a variable clock shows its
    /// current offset from UTC; others show what was defined.
    pub fn live(&self, defined: &Clock) -> Clock {
        let mut c = defined.clone();
        if self.variable {
            c.offset = Offset::Variable { adjustment: self.offset, basis: Basis::Utc };
        }
        c
    }
}

/// The host's local time's offset from UTC at `now`, in seconds (0 if the
/// C library cannot say).
pub fn local_offset(now: i64) -> i64 {
    let t: libc::time_t = now;
    // SAFETY: an all-zero `tm` is a valid value of the plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; localtime_r is the
    // re-entrant form and writes only `tm`.
    let ok = !unsafe { libc::localtime_r(&t, &mut tm) }.is_null();
    if ok { tm.tm_gmtoff } else { 0 }
}

/// Seconds since 1970 now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Guest `uuid`'s helper reported that the guest set its clock to UTC +
/// `offset_secs`: updates its live clock and queues the event (sent with
/// the loop's next flush).
pub fn raise(ctx: &mut Ctx, uuid: &Uuid, offset_secs: i64) {
    let Some(running) = ctx.guests.get_mut(uuid) else { return };
    let offset = running.clock.changed(offset_secs);
    // The helper sends at most one a second; one that sends more (a
    // compromised one) gets its clock followed, not its events passed on
    // or a record written for each.
    let now = std::time::Instant::now();
    if running.rtc_event_at.is_some_and(|t| now.duration_since(t) < MIN_EVENT_GAP) {
        return;
    }
    running.rtc_event_at = Some(now);
    let Ok(e) = ctx.domains.by_uuid(uuid) else { return };
    if e.id.is_none() {
        return;
    }
    ctx.guests.events.push(DomainEvent { dom: e.handle(), kind: EventKind::RtcChange { offset } });
    // A restarted broker finds the clock where the guest put it.
    ctx.record(uuid);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(offset: Offset) -> Clock {
        Clock { offset, timers: Vec::new() }
    }

    #[test]
    fn the_start_offset_follows_the_definition() {
        let at = |o| LiveClock::at_start(&clock(o), 1_000_000, 7200);
        assert_eq!(at(Offset::Utc { reset: false }).base, 0);
        assert_eq!(at(Offset::Localtime { reset: false }).base, 7200);
        assert_eq!(at(Offset::Variable { adjustment: 3600, basis: Basis::Utc }).base, 3600);
        assert_eq!(at(Offset::Variable { adjustment: 3600, basis: Basis::Localtime }).base, 10_800);
        assert_eq!(at(Offset::Absolute { start: 999_000 }).base, -1000);
        assert_eq!(at(Offset::Absolute { start: u64::MAX }).base, MAX_ADJUSTMENT);
    }

    #[test]
    fn events_carry_libvirts_offsets_and_the_live_clock_follows_a_variable_one() {
        let defined = clock(Offset::Variable { adjustment: 60, basis: Basis::Localtime });
        let mut live = LiveClock::at_start(&defined, 0, 3600);
        assert_eq!(live.changed(3700), 3700, "variable: the offset from UTC");
        assert_eq!(live.live(&defined).offset, Offset::Variable { adjustment: 3700, basis: Basis::Utc });
        let utc = clock(Offset::Utc { reset: false });
        let mut live = LiveClock::at_start(&utc, 0, 3600);
        assert_eq!(live.changed(42), 42);
        assert_eq!(live.live(&utc), utc, "only a variable clock's live XML changes");
        let local = clock(Offset::Localtime { reset: false });
        let mut live = LiveClock::at_start(&local, 0, 3600);
        assert_eq!(live.changed(3610), 10, "the change from local time");
        assert_eq!(live.changed(i64::MIN), -MAX_ADJUSTMENT - 3600, "a helper's word is bounded");
    }

    #[test]
    fn the_local_offset_is_within_a_day() {
        assert!(local_offset(now()).abs() < 86_400);
    }
}
