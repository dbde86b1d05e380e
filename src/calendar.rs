//! Calendar arithmetic in UTC, without the time-zone database (which a
//! sandboxed process cannot open): seconds since 1970 to a date and time
//! and back, the day of the week, the days in a month (proleptic
//! Gregorian, Howard Hinnant's day-count method). Pure. The helper's CMOS
//! clock keeps its registers with it, over the years 0 to 9999 it holds;
//! the log and syslog stamps are made with it.

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    /// The year (0 is 1 BC, as ISO 8601 counts).
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    /// 0 to 23.
    pub hour: u32,
    /// 0 to 59.
    pub minute: u32,
    /// 0 to 59.
    pub second: u32,
}

/// Days since 1970-01-01 of a date (proleptic Gregorian).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The date and time of `t` seconds since 1970.
pub fn fields(t: i64) -> Fields {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400) as u32);
    let (year, month, day) = civil_from_days(days);
    Fields { year, month, day, hour: secs / 3600, minute: secs / 60 % 60, second: secs % 60 }
}

/// Seconds since 1970 of a date and time.
pub fn to_seconds(f: Fields) -> i64 {
    days_from_civil(f.year, f.month, f.day) * 86_400 + i64::from(f.hour * 3600 + f.minute * 60 + f.second)
}

/// The RTC's day of the week: 1 is Sunday (1970-01-01 was a Thursday).
pub fn weekday(t: i64) -> u32 {
    (t.div_euclid(86_400) + 4).rem_euclid(7) as u32 + 1
}

/// Days in `month` of `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calendar_agrees_with_known_dates() {
        assert_eq!(fields(0), Fields { year: 1970, month: 1, day: 1, hour: 0, minute: 0, second: 0 });
        assert_eq!(fields(1_796_337_015), Fields { year: 2026, month: 12, day: 3, hour: 22, minute: 30, second: 15 });
        assert_eq!(fields(951_782_400).month, 2, "2000-02-29 exists");
        assert_eq!(fields(951_782_400).day, 29);
        for t in [-62_167_219_200, -1, 0, 68_169_600, 1_796_337_015, 253_402_300_799] {
            assert_eq!(to_seconds(fields(t)), t, "{t}");
        }
        assert_eq!(weekday(0), 5, "a Thursday");
        assert_eq!(weekday(1_796_337_015), 5);
    }
}
