//! UTC wall-clock fields for log lines, computed without the time-zone
//! database (which a sandboxed process cannot open).

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC timestamp split into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Year.
    pub year: i64,
    /// Month, 1-12.
    pub month: u32,
    /// Day of month, 1-31.
    pub day: u32,
    /// Hour.
    pub hour: u32,
    /// Minute.
    pub minute: u32,
    /// Second.
    pub second: u32,
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

    /// From milliseconds since the epoch (days-from-civil inverse, Howard Hinnant's algorithm).
    pub fn from_unix_millis(ms: i64) -> Self {
        let secs = ms.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            milli: ms.rem_euclid(1000) as u32,
        }
    }

    /// `2026-11-26 06:22:55.123+0000`, as libvirt's log lines start.
    pub fn log_stamp(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}+0000",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.milli
        )
    }

    /// `Nov 26 06:22:55`, the RFC 3164 syslog timestamp.
    pub fn syslog_stamp(&self) -> String {
        let mon = MONTHS[(self.month as usize).saturating_sub(1) % 12];
        format!("{mon} {:2} {:02}:{:02}:{:02}", self.day, self.hour, self.minute, self.second)
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
