//! UTC wall-clock fields for log lines, computed without the time-zone
//! database (which a sandboxed process cannot open).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::calendar::Fields;

/// A UTC timestamp split into calendar fields, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// The date and time to the second.
    pub date: Fields,
    /// Millisecond.
    pub milli: u32,
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

impl Utc {
    /// Now.
    pub fn now() -> Self {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::from_unix_millis(d.as_millis() as i64)
    }

    /// From milliseconds since the epoch.
    pub fn from_unix_millis(ms: i64) -> Self {
        Utc { date: crate::calendar::fields(ms.div_euclid(1000)), milli: ms.rem_euclid(1000) as u32 }
    }

    /// `2026-11-26 06:22:55.123+0000`, as libvirt's log lines start.
    pub fn log_stamp(&self) -> String {
        let d = &self.date;
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}+0000",
            d.year, d.month, d.day, d.hour, d.minute, d.second, self.milli
        )
    }

    /// `Nov 26 06:22:55`, the RFC 3164 syslog timestamp.
    pub fn syslog_stamp(&self) -> String {
        let d = &self.date;
        let mon = MONTHS[(d.month as usize).saturating_sub(1) % 12];
        format!("{mon} {:2} {:02}:{:02}:{:02}", d.day, d.hour, d.minute, d.second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_convert() {
        let t = Utc::from_unix_millis(1_795_674_175_123);
        assert_eq!(t.log_stamp(), "2026-11-26 06:22:55.123+0000");
        assert_eq!(t.syslog_stamp(), "Nov 26 06:22:55");
        assert_eq!(Utc::from_unix_millis(951_782_400_000).log_stamp(), "2000-02-29 00:00:00.000+0000");
        assert_eq!(Utc::from_unix_millis(0).syslog_stamp(), "Jan  1 00:00:00");
    }
}
