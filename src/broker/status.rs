//! Running-guest records in `domain_state_dir`, so that a restarted broker
//! finds its guests: `NAME.status` (ids and state) beside `NAME.live.xml`
//! (the definition the guest runs with; the only copy for a transient one)
//! and the helper's control socket `NAME.ctl`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::lifecycle::DomainState;
use super::store::read_bounded;
use crate::domain::{self, DomainDef};

/// Most records read at start-up.
const MAX_RECORDS: usize = 4096;
/// Most interfaces read from one record.
const MAX_NICS: usize = 64;

/// What a restarted broker needs to re-attach to a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Domain id.
    pub id: i32,
    /// The helper's pid.
    pub pid: i32,
    /// The helper's uid.
    pub uid: u32,
    /// Its state and why (written as libvirt's numbers).
    pub state: DomainState,
    /// Defined (persistent) or transient.
    pub persistent: bool,
    /// Its interfaces' taps (`nic=` lines, see `nics.rs`).
    pub nics: Vec<super::nics::GuestNic>,
    /// Its CMOS clock (`clock=BASE OFFSET VARIABLE`; `None` in records
    /// written before the RTC, whose guests start from the definition's).
    pub clock: Option<super::rtc::LiveClock>,
}

/// Where guest `name`'s helper listens for a (re)connecting broker.
pub fn control_socket(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.ctl"))
}

fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.status")), dir.join(format!("{name}.live.xml")))
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("new");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Writes (or rewrites) the record of a running guest.
pub fn save(dir: &Path, def: &DomainDef, s: &Status) -> std::io::Result<()> {
    let (status, live) = paths(dir, &def.name);
    write_atomic(&live, &def.to_xml())?;
    let (state, reason) = s.state.to_libvirt();
    let text = format!(
        "id={}\npid={}\nuid={}\nstate={}\nreason={}\npersistent={}\n",
        s.id,
        s.pid,
        s.uid,
        state,
        reason,
        u8::from(s.persistent)
    );
    let nics: String = s.nics.iter().map(|n| format!("nic={}\n", super::nics::record_line(n))).collect();
    let clock =
        s.clock.map(|c| format!("clock={} {} {}\n", c.base, c.offset, u8::from(c.variable))).unwrap_or_default();
    write_atomic(&status, &(text + &nics + &clock))
}

/// Removes a guest's record (it stopped).
pub fn remove(dir: &Path, name: &str) {
    let (status, live) = paths(dir, name);
    let _ = std::fs::remove_file(status);
    let _ = std::fs::remove_file(live);
    let _ = std::fs::remove_file(control_socket(dir, name));
}

fn parse(text: &str) -> Option<Status> {
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('='));
    Some(Status {
        id: field("id")?.parse().ok()?,
        pid: field("pid")?.parse().ok()?,
        uid: field("uid")?.parse().ok()?,
        state: DomainState::from_libvirt(field("state")?.parse().ok()?, field("reason")?.parse().ok()?)?,
        persistent: field("persistent")? == "1",
        nics: text
            .lines()
            .filter_map(|l| l.strip_prefix("nic="))
            .take(MAX_NICS)
            .map(super::nics::parse_record_line)
            .collect::<Option<_>>()?,
        clock: field("clock").and_then(parse_clock),
    })
}

/// A `clock=` line's value; a malformed one is as good as none.
fn parse_clock(v: &str) -> Option<super::rtc::LiveClock> {
    let mut words = v.split(' ');
    let mut num = || words.next()?.parse::<i64>().ok();
    let (base, offset, variable) = (num()?, num()?, num()?);
    let bound = crate::domain::clock::MAX_ADJUSTMENT;
    let bounded = |n: i64| (-bound..=bound).contains(&n);
    (bounded(base) && bounded(offset) && (0..=1).contains(&variable)).then_some(super::rtc::LiveClock {
        base,
        offset,
        variable: variable == 1,
    })
}

/// Every readable record with the definition it was saved with; broken ones
/// are logged and left for an operator.
pub fn load_all(dir: &Path) -> Vec<(Status, DomainDef)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten().take(MAX_RECORDS) {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "status") {
            continue;
        }
        let live = path.with_extension("live.xml");
        let record = read_bounded(&path).ok().and_then(|t| parse(&t));
        let def = read_bounded(&live).ok().and_then(|x| domain::parse(&x, false).ok()).map(|(d, _)| d);
        match (record, def) {
            (Some(s), Some(d)) => out.push((s, d)),
            _ => log::error!("skipping unreadable guest record {}", path.display()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let s = Status {
            id: 7,
            pid: 1234,
            uid: 99,
            state: DomainState::Paused(super::super::lifecycle::PausedReason::User),
            persistent: false,
            nics: Vec::new(),
            clock: None,
        };
        assert_eq!(parse("id=7\npid=1234\nuid=99\nstate=3\nreason=1\npersistent=0\n"), Some(s.clone()));
        let with_tap = "id=7\npid=1234\nuid=99\nstate=3\nreason=1\npersistent=0\nnic=vnet0 12 virbr0\n";
        let nics = parse(with_tap).map(|s| s.nics).unwrap_or_default();
        assert_eq!(nics.iter().map(super::super::nics::record_line).collect::<Vec<_>>(), ["vnet0 12 virbr0"]);
        assert_eq!(parse("id=x\n"), None);
        let clock = super::super::rtc::LiveClock { base: 3600, offset: -20, variable: true };
        let dir = tempfile::tempdir().unwrap();
        let xml = "<domain type='kvm'><name>c</name><memory>65536</memory><os><type>hvm</type>\
                   <kernel>/k</kernel></os></domain>";
        let def = crate::domain::parse(xml, false).unwrap().0;
        save(dir.path(), &def, &Status { clock: Some(clock), ..s }).unwrap();
        let (back, _) = load_all(dir.path()).pop().unwrap();
        assert_eq!(back.clock, Some(clock));
        for bad in ["1 2", "1 2 3", "x 2 1", "1 99999999999999999 0"] {
            assert_eq!(parse_clock(bad), None, "{bad}");
        }
    }
}
