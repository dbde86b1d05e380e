//! `<clock>`: where the guest's CMOS clock (RTC) starts, and its timers.
//!
//! The helper's RTC runs at the host's UTC plus an offset in seconds; the
//! domain says which: `utc` (none), `localtime` (the host's offset from UTC
//! at start), `variable` (`adjustment` seconds from UTC or, with
//! `basis='localtime'`, from local time) or `absolute` (the clock starts at
//! `start`, seconds since 1970). As in libvirt, `utc` or `localtime` with a
//! numeric `adjustment` is `variable` with that basis, and `adjustment='reset'`
//! is kept. `timezone` (a named zone's offset) is refused: the daemon reads
//! no zone database.
//!
//! Timers describe the platform's (see `platform.rs`): the `rtc` is this
//! clock, following the host's wall clock (`track='wall'`); it raises no
//! periodic interrupts, so its `tickpolicy` (`delay`, `catchup`) has
//! nothing to act on. The PIT is KVM's, which re-injects missed ticks
//! (`tickpolicy='delay'`); kvmclock is always offered; there is no HPET.
//! Anything else is refused naming it.

use super::DomainError;
use super::xml::Element;

/// The largest `adjustment` (about 10000 years in seconds): any more puts
/// the clock outside what its registers hold (years 0 to 9999).
pub const MAX_ADJUSTMENT: i64 = 10_000 * 366 * 86_400;

/// What `variable` counts its adjustment from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// UTC.
    Utc,
    /// The host's local time.
    Localtime,
}

impl Basis {
    /// The XML word.
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Utc => "utc",
            Basis::Localtime => "localtime",
        }
    }
}

/// Where the guest's clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// At UTC (`reset`: `adjustment='reset'`, kept for round trips).
    Utc {
        /// `adjustment='reset'`.
        reset: bool,
    },
    /// At the host's local time.
    Localtime {
        /// `adjustment='reset'`.
        reset: bool,
    },
    /// `adjustment` seconds from `basis`.
    Variable {
        /// Seconds.
        adjustment: i64,
        /// From UTC or local time.
        basis: Basis,
    },
    /// At `start` seconds since 1970, whenever the guest starts.
    Absolute {
        /// Seconds since 1970.
        start: u64,
    },
}

/// A domain's `<clock>`: its offset and its (checked) timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    /// Where the RTC starts.
    pub offset: Offset,
    /// The `<timer>` children, as written.
    pub timers: Vec<Element>,
}

impl Default for Clock {
    /// What a domain without `<clock>` gets: UTC, as libvirt's default.
    fn default() -> Clock {
        Clock { offset: Offset::Utc { reset: false }, timers: Vec::new() }
    }
}

fn unsupported(msg: impl Into<String>) -> DomainError {
    DomainError::Unsupported(msg.into())
}

fn invalid(msg: impl Into<String>) -> DomainError {
    DomainError::Invalid(msg.into())
}

fn adjustment(text: &str) -> Result<i64, DomainError> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|a| a.unsigned_abs() <= MAX_ADJUSTMENT as u64)
        .ok_or_else(|| invalid(format!("unknown clock adjustment '{text}'")))
}

/// Parses and checks `<clock>`.
pub fn parse(e: &Element) -> Result<Clock, DomainError> {
    let reset_or = |basis: Basis, reset: bool| -> Result<Offset, DomainError> {
        match e.get("adjustment") {
            None => Ok(if basis == Basis::Utc { Offset::Utc { reset } } else { Offset::Localtime { reset } }),
            Some("reset") => {
                Ok(if basis == Basis::Utc { Offset::Utc { reset: true } } else { Offset::Localtime { reset: true } })
            }
            Some(a) => Ok(Offset::Variable { adjustment: adjustment(a)?, basis }),
        }
    };
    let offset = match e.get("offset") {
        None | Some("utc") => reset_or(Basis::Utc, false)?,
        Some("localtime") => reset_or(Basis::Localtime, false)?,
        Some("variable") => {
            let adjustment = e.get("adjustment").map(adjustment).transpose()?.unwrap_or(0);
            let basis = match e.get("basis") {
                None | Some("utc") => Basis::Utc,
                Some("localtime") => Basis::Localtime,
                Some(b) => {
                    return Err(invalid(format!("Invalid value for attribute 'basis' in element 'clock': '{b}'")));
                }
            };
            Offset::Variable { adjustment, basis }
        }
        Some("absolute") => {
            let start = e
                .get("start")
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|s| *s <= MAX_ADJUSTMENT as u64)
                .ok_or_else(|| invalid("<clock offset='absolute'> needs a 'start' in seconds since 1970"))?;
            Offset::Absolute { start }
        }
        Some("timezone") => {
            return Err(unsupported(
                "<clock offset='timezone'> is not supported by this daemon: it reads no time zone database",
            ));
        }
        Some(o) => return Err(invalid(format!("unknown clock offset '{o}'"))),
    };
    for t in &e.children {
        timer(t)?;
    }
    Ok(Clock { offset, timers: e.children.clone() })
}

/// Checks one `<timer>` against the platform's.
fn timer(t: &Element) -> Result<(), DomainError> {
    if t.name != "timer" {
        return Err(unsupported(format!("<clock><{}> is not supported by this daemon", t.name)));
    }
    let name = t.get("name").unwrap_or("");
    let present = t.get("present");
    let only = |allowed: &[&str]| t.attrs.iter().all(|(k, _)| k == "name" || allowed.contains(&k.as_str()));
    let ok = match name {
        "rtc" => {
            present != Some("no")
                && matches!(t.get("tickpolicy"), None | Some("delay" | "catchup"))
                && matches!(t.get("track"), None | Some("wall"))
                && only(&["present", "tickpolicy", "track"])
                && t.children.is_empty()
        }
        "pit" => present != Some("no") && matches!(t.get("tickpolicy"), None | Some("delay")),
        "hpet" => present == Some("no"),
        "kvmclock" => present != Some("no") && only(&["present"]),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(unsupported(format!("<timer name='{name}'> as given is not supported by this daemon")))
    }
}

/// `<clock>` as libvirt writes it: `offset` always, `adjustment` and
/// `basis` for `variable`, `start` for `absolute`, then the timers.
pub fn emit(c: &Clock) -> Element {
    let e = Element::new("clock");
    let mut e = match c.offset {
        Offset::Utc { reset } if reset => e.attr("offset", "utc").attr("adjustment", "reset"),
        Offset::Utc { .. } => e.attr("offset", "utc"),
        Offset::Localtime { reset } if reset => e.attr("offset", "localtime").attr("adjustment", "reset"),
        Offset::Localtime { .. } => e.attr("offset", "localtime"),
        Offset::Variable { adjustment, basis } => {
            e.attr("offset", "variable").attr("adjustment", adjustment.to_string()).attr("basis", basis.as_str())
        }
        Offset::Absolute { start } => e.attr("offset", "absolute").attr("start", start.to_string()),
    };
    e.children = c.timers.clone();
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::xml;

    fn clock(text: &str) -> Result<Clock, DomainError> {
        parse(&xml::parse(text).unwrap())
    }

    fn round_trip(text: &str) -> String {
        emit(&clock(text).unwrap()).to_xml().split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn offsets_parse_and_write_back_as_libvirt_writes_them() {
        assert_eq!(clock("<clock/>").unwrap().offset, Offset::Utc { reset: false });
        assert_eq!(round_trip("<clock/>"), "<clock offset='utc'/>");
        assert_eq!(clock("<clock offset='localtime'/>").unwrap().offset, Offset::Localtime { reset: false });
        assert_eq!(
            clock("<clock offset='variable' adjustment='3600'/>").unwrap().offset,
            Offset::Variable { adjustment: 3600, basis: Basis::Utc }
        );
        assert_eq!(
            round_trip("<clock offset='variable' adjustment='-60' basis='localtime'/>"),
            "<clock offset='variable' adjustment='-60' basis='localtime'/>"
        );
        assert_eq!(round_trip("<clock offset='variable'/>"), "<clock offset='variable' adjustment='0' basis='utc'/>");
        // A number on utc or localtime makes it variable, as libvirt reads it.
        assert_eq!(
            clock("<clock offset='localtime' adjustment='120'/>").unwrap().offset,
            Offset::Variable { adjustment: 120, basis: Basis::Localtime }
        );
        assert_eq!(round_trip("<clock offset='utc' adjustment='reset'/>"), "<clock offset='utc' adjustment='reset'/>");
        assert_eq!(
            round_trip("<clock offset='absolute' start='1000000000'/>"),
            "<clock offset='absolute' start='1000000000'/>"
        );
    }

    #[test]
    fn bad_offsets_are_refused_and_timezone_is_unsupported() {
        for bad in [
            "<clock offset='martian'/>",
            "<clock offset='variable' adjustment='soon'/>",
            "<clock offset='variable' adjustment='99999999999999999'/>",
            "<clock offset='variable' basis='mars'/>",
            "<clock offset='utc' adjustment='1e3'/>",
            "<clock offset='absolute'/>",
            "<clock offset='absolute' start='-5'/>",
        ] {
            assert!(matches!(clock(bad), Err(DomainError::Invalid(_))), "{bad}");
        }
        let tz = clock("<clock offset='timezone' timezone='Europe/Paris'/>");
        assert!(matches!(tz, Err(DomainError::Unsupported(m)) if m.contains("timezone")));
    }

    #[test]
    fn virt_installs_timers_are_kept_and_others_refused() {
        let virt_install = "<clock offset='utc'><timer name='rtc' tickpolicy='catchup'/>\
            <timer name='pit' tickpolicy='delay'/><timer name='hpet' present='no'/></clock>";
        assert_eq!(clock(virt_install).unwrap().timers.len(), 3);
        assert!(round_trip(virt_install).contains("<timer name='rtc' tickpolicy='catchup'/>"));
        assert!(clock("<clock offset='localtime'><timer name='kvmclock' present='yes'/></clock>").is_ok());
        assert!(clock("<clock><timer name='rtc' present='yes' track='wall'/></clock>").is_ok());
        for (bad, name) in [
            ("<clock><timer name='hpet'/></clock>", "'hpet'"),
            ("<clock><timer name='hpet' present='yes'/></clock>", "'hpet'"),
            ("<clock><timer name='rtc' present='no'/></clock>", "'rtc'"),
            ("<clock><timer name='rtc' track='guest'/></clock>", "'rtc'"),
            ("<clock><timer name='rtc' tickpolicy='merge'/></clock>", "'rtc'"),
            ("<clock><timer name='pit' tickpolicy='discard'/></clock>", "'pit'"),
            ("<clock><timer name='pit' present='no'/></clock>", "'pit'"),
            ("<clock><timer name='kvmclock' present='no'/></clock>", "'kvmclock'"),
            ("<clock><timer name='tsc' frequency='1000000000'/></clock>", "'tsc'"),
            ("<clock><timer name='hypervclock' present='yes'/></clock>", "'hypervclock'"),
        ] {
            assert!(matches!(clock(bad), Err(DomainError::Unsupported(m)) if m.contains(name)), "{bad}");
        }
        assert!(matches!(clock("<clock><tick/></clock>"), Err(DomainError::Unsupported(_))));
    }
}
