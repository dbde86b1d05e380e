//! The guest setting its CMOS clock, told to the broker unasked
//! (`HelperEvent::RtcChange`) and rate-limited as QEMU limits its
//! RTC_CHANGE event: the first change goes at once, later ones at most one
//! a second, and the last of a burst when its second is over, so the
//! broker always learns the final offset and a guest writing the clock in
//! a loop cannot flood it.
//!
//! The clock runs on a vCPU thread, which must not block on the broker's
//! channel: [`RtcChanges`] keeps the latest offset and wakes the control
//! loop through an eventfd; the loop sends what [`RateLimit`] lets through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::devices::rtc::OffsetSink;

/// The least time between two reports.
pub const PERIOD: Duration = Duration::from_secs(1);

/// The clock's side: the latest offset and the control loop's wake-up
/// (also when the guest enables an interrupt the loop must tick for).
pub struct RtcChanges {
    latest: AtomicI64,
    changed: AtomicBool,
    /// Readable when the guest set its clock since the last [`RtcChanges::take`].
    pub fd: Arc<EventFd>,
}

impl RtcChanges {
    /// With a fresh eventfd.
    pub fn new() -> std::io::Result<RtcChanges> {
        let fd = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        Ok(RtcChanges { latest: AtomicI64::new(0), changed: AtomicBool::new(false), fd })
    }

    /// Once the eventfd was readable (drains it): the latest offset, if the
    /// guest set its clock since the last call (the wake-up may have been
    /// for an interrupt only).
    pub fn take(&self) -> Option<i64> {
        // Drains the counter; the offset itself is in `latest`.
        let _ = self.fd.read();
        self.changed.swap(false, Ordering::SeqCst).then(|| self.latest.load(Ordering::SeqCst))
    }
}

impl OffsetSink for RtcChanges {
    fn offset_changed(&self, offset: i64) {
        self.latest.store(offset, Ordering::SeqCst);
        self.changed.store(true, Ordering::SeqCst);
        // Fails only when the counter would overflow: a wake-up is pending.
        let _ = self.fd.write(1);
    }

    fn ticks_wanted(&self) {
        // The loop wakes and asks the clock when to tick next.
        let _ = self.fd.write(1);
    }
}

/// Which changes go to the broker, and when.
#[derive(Debug, Default)]
pub struct RateLimit {
    last_sent: Option<Instant>,
    pending: Option<i64>,
}

impl RateLimit {
    /// The guest set its clock to `offset` at `now`: `Some` if it goes now;
    /// otherwise it waits (replacing any change still waiting).
    pub fn offer(&mut self, offset: i64, now: Instant) -> Option<i64> {
        match self.last_sent {
            Some(t) if now.duration_since(t) < PERIOD => {
                self.pending = Some(offset);
                None
            }
            _ => {
                self.last_sent = Some(now);
                self.pending = None;
                Some(offset)
            }
        }
    }

    /// The change that waited, once its time has come.
    pub fn due(&mut self, now: Instant) -> Option<i64> {
        let waited = self.last_sent.is_some_and(|t| now.duration_since(t) >= PERIOD);
        if waited && self.pending.is_some() {
            self.last_sent = Some(now);
            return self.pending.take();
        }
        None
    }

    /// How long the control loop may sleep before a waiting change is due.
    pub fn wait_ms(&self, now: Instant) -> Option<u16> {
        self.pending?;
        let elapsed = self.last_sent.map_or(PERIOD, |t| now.duration_since(t));
        let left = PERIOD.saturating_sub(elapsed);
        // Rounded up, so the loop never wakes just short of it.
        Some(left.as_millis().saturating_add(1).min(u128::from(u16::MAX)) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_change_goes_at_once_and_a_burst_ends_with_its_last() {
        let mut r = RateLimit::default();
        let t0 = Instant::now();
        assert_eq!(r.wait_ms(t0), None, "nothing waits");
        assert_eq!(r.offer(10, t0), Some(10));
        for (i, offset) in (11..100).enumerate() {
            assert_eq!(r.offer(offset, t0 + Duration::from_millis(i as u64)), None);
        }
        let later = t0 + Duration::from_millis(500);
        assert_eq!(r.due(later), None, "not yet");
        let wait = r.wait_ms(later).unwrap();
        assert!((500..=502).contains(&wait), "{wait}");
        assert_eq!(r.due(t0 + PERIOD), Some(99), "the last of the burst");
        assert_eq!(r.due(t0 + PERIOD * 3), None, "once");
        assert_eq!(r.wait_ms(t0 + PERIOD), None);
        assert_eq!(r.offer(5, t0 + PERIOD * 3), Some(5), "a quiet second later, at once again");
    }

    #[test]
    fn the_sink_keeps_the_latest_offset_and_wakes_the_loop() {
        let c = RtcChanges::new().unwrap();
        assert!(c.fd.read().is_err(), "not readable before a change");
        c.offset_changed(3);
        c.offset_changed(-7);
        assert_eq!(c.take(), Some(-7));
        assert!(c.fd.read().is_err(), "drained");
        c.ticks_wanted();
        assert_eq!(c.take(), None, "a wake-up for the interrupts only");
    }
}
