//! The guest's CMOS clock (issue 14's RTC change event): the test guest
//! reads the clock the helper's MC146818 RTC shows and sets it (`rtc`,
//! `rtcset`) and takes its update interrupts (`rtcirq`); python-libvirt clients registered for
//! `VIR_DOMAIN_EVENT_ID_RTC_CHANGE` on the read-only and read-write sockets
//! get the guest's new offset, unasked and rate-limited; `<clock
//! offset='variable' adjustment=...>` starts the clock that far from UTC,
//! and the live XML's adjustment follows the guest while the persistent
//! one keeps its own. A reboot keeps the time the guest set, and a broker
//! that restarts finds it where the guest put it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// A daemon, or `None` (outside CI) where KVM or python3-libvirt is missing.
fn daemon() -> Option<Daemon> {
    let kvm = require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm");
    let py = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    if !kvm || !require(py, "python3-libvirt") {
        return None;
    }
    Some(Daemon::start("", &[]))
}

/// Both connections with an event loop; `rtc` collects (socket, domain,
/// offset) of every RTC change; `console(dom)`, `cmd(line, needle)` run a
/// guest command and return its output line; `rtc_time()` asks the guest's
/// clock as seconds since 1970; `rtcset(delta)` sets it to host UTC + delta.
const PRELUDE: &str = r#"
import calendar, libvirt, sys, threading, time
libvirt.registerErrorHandler(lambda *a: None, None)
libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open(URI)
ro = libvirt.openReadOnly(URI_RO)
rtc = []
for c, label in ((conn, "rw"), (ro, "ro")):
    c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_RTC_CHANGE,
                             lambda c, dom, offset, opaque: rtc.append((opaque, dom.name(), offset)), label)
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()

def wait(cond, timeout=15):
    end = time.time() + timeout
    while not cond() and time.time() < end:
        time.sleep(0.05)
    return cond()

st = None
def console(dom):
    global st
    st = conn.newStream(0)
    dom.openConsole(None, st, 0)
    st.send(b"\r")
    upto(st, b"> ")
def cmd(line, needle):
    st.send(line.encode() + b"\r")
    upto(st, needle.encode())
    out = needle + upto(st, b"\r\n").decode(errors="replace").strip()
    upto(st, b"> ")
    return out
def rtc_time():
    line = cmd("rtc", "RTC=")
    return calendar.timegm(time.strptime(line[4:], "%Y-%m-%d %H:%M:%S"))
def rtcset(delta):
    when = time.strftime("%Y%m%d%H%M%S", time.gmtime(int(time.time()) + delta))
    return cmd("rtcset " + when, "RTC=")
"#;

fn python(d: &Daemon, name: &str, xml: &str, script: &str) -> String {
    let head = format!(
        "import libvirt\nURI = {:?}\nURI_RO = {:?}\nNAME = {name:?}\nXML = {xml:?}\n",
        uri(&d.tree.sock("libvirt-sock")),
        uri(&d.tree.sock("libvirt-sock-ro")),
    );
    run_python(d, &format!("{head}{PY_UPTO}{PRELUDE}{script}"), Duration::from_secs(120))
}

/// The number after `key` on the line that starts with it.
fn value(out: &str, key: &str) -> i64 {
    let line = out.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in:\n{out}"));
    line[key.len()..].trim().parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn near(got: i64, want: i64, what: &str, out: &str) {
    assert!((got - want).abs() <= 3, "{what}: {got}, expected about {want}\n{out}");
}

#[test]
fn a_guest_setting_its_clock_raises_rtc_change_on_both_sockets_at_most_once_a_second() {
    let Some(d) = daemon() else { return };
    let xml = test_guest_xml(&d, "rtc-utc", "3c5a1e2f-8b7d-4e6a-9c1b-0d2e3f4a5b61");
    let out = python(
        &d,
        "rtc-utc",
        &xml,
        r#"
dom = conn.defineXML(XML)
dom.create()
console(dom)
print("clock at start:", rtc_time() - int(time.time()))
print("none before a set:", rtc == [])
# The update-ended interrupt: one a second on IRQ 8.
started = time.time()
line = cmd("rtcirq", "RTCIRQ=")
print("interrupts:", line, "seconds apart:", 1.9 < time.time() - started < 6)
rtcset(86400 * 30 + 12345)
print("one on each socket:", wait(lambda: len(rtc) == 2))
print("sockets:", sorted(r[0] for r in rtc), "names:", set(r[1] for r in rtc) == {NAME})
print("first:", rtc[0][2])
print("clock after:", rtc_time() - int(time.time()))
# A burst, a quiet second after: six sets as fast as the guest makes them.
time.sleep(1.2)
del rtc[:]
started = time.time()
for i in range(6):
    rtcset(1000 * (i + 1))
took = time.time() - started
wait(lambda: False, 2.5)
ro_events = [r[2] for r in rtc if r[0] == "ro"]
print("burst took under a second:", took < 1)
print("burst events:", len(ro_events))
print("last:", ro_events[-1])
print("same on both:", ro_events == [r[2] for r in rtc if r[0] == "rw"])
# A reboot keeps the time the guest set, as a PC's clock does; the console
# stays open through it and shows the new boot.
st.send(b"reboot\r")
upto(st, b"GUEST-READY")
upto(st, b"> ")
print("clock after a reboot:", rtc_time() - int(time.time()))
dom.destroy()
while st.recv(4096):
    pass
st.finish()
dom.create()
buf[0] = b""
console(dom)
print("clock after a new start:", rtc_time() - int(time.time()))
dom.destroy()
"#,
    );
    near(value(&out, "clock at start:"), 0, "a utc clock starts at UTC", &out);
    assert!(out.contains("none before a set: True\n"), "{out}");
    assert!(out.contains("interrupts: RTCIRQ=3 seconds apart: True\n"), "{out}");
    assert!(out.contains("one on each socket: True\n"), "{out}");
    assert!(out.contains("sockets: ['ro', 'rw'] names: True\n"), "{out}");
    near(value(&out, "first:"), 86400 * 30 + 12345, "the event's offset", &out);
    near(value(&out, "clock after:"), 86400 * 30 + 12345, "the guest's clock runs on from its set", &out);
    let events = value(&out, "burst events:");
    if out.contains("burst took under a second: True") {
        assert_eq!(events, 2, "the first at once, the last when its second ended:\n{out}");
    } else {
        assert!((1..6).contains(&events), "six sets must not make six events:\n{out}");
    }
    near(value(&out, "last:"), 6000, "the burst's last offset arrives", &out);
    assert!(out.contains("same on both: True\n"), "{out}");
    near(value(&out, "clock after a reboot:"), 6000, "a reboot keeps the guest's time", &out);
    near(value(&out, "clock after a new start:"), 0, "a new start begins at the definition's offset", &out);
}

#[test]
fn a_variable_clock_starts_at_its_adjustment_and_its_live_xml_follows_the_guest() {
    let Some(mut d) = daemon() else { return };
    let clock = "<clock offset='variable' adjustment='3600' basis='utc'>\n    \
                 <timer name='rtc' tickpolicy='catchup'/>\n    <timer name='pit' tickpolicy='delay'/>\n    \
                 <timer name='hpet' present='no'/>\n  </clock>";
    let xml =
        test_guest_xml(&d, "rtc-var", "3c5a1e2f-8b7d-4e6a-9c1b-0d2e3f4a5b62").replace("<clock offset='utc'/>", clock);
    let out = python(
        &d,
        "rtc-var",
        &xml,
        r#"
import re
def adjustment(x):
    m = re.search(r"<clock offset='variable' adjustment='(-?\d+)' basis='(\w+)'>", x)
    return m and (int(m.group(1)), m.group(2))
dom = conn.defineXML(XML)
x = dom.XMLDesc(0)
print("defined:", adjustment(x), "timers:", x.count("<timer "), "<timer name='rtc' tickpolicy='catchup'/>" in x)
dom.create()
console(dom)
print("clock at start:", rtc_time() - int(time.time()))
rtcset(7200 + 77)
print("event:", wait(lambda: len(rtc) == 2))
print("offset:", rtc[0][2])
live = adjustment(dom.XMLDesc(0))
print("live basis:", live[1])
print("live adjustment:", live[0])
print("inactive:", adjustment(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
st.abort()
"#,
    );
    assert!(out.contains("defined: (3600, 'utc') timers: 3 True\n"), "{out}");
    near(value(&out, "clock at start:"), 3600, "the guest's clock starts an hour ahead", &out);
    assert!(out.contains("event: True\n"), "{out}");
    near(value(&out, "offset:"), 7277, "a variable clock's event carries its offset from UTC", &out);
    assert!(out.contains("live basis: utc\n"), "{out}");
    near(value(&out, "live adjustment:"), 7277, "the live adjustment", &out);
    assert!(out.contains("inactive: (3600, 'utc')\n"), "{out}");

    // A broker that dies and starts again finds the clock where the guest put it.
    let helpers: Vec<i32> = children_of(d.pid).into_iter().filter(|p| cmdline(*p).contains("libvirt-helper")).collect();
    let _helpers = KillOnDrop(helpers);
    d.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
    assert!(wait_until(Duration::from_secs(10), || d.frontend_pid().is_none()));
    d.restart();
    let rw = d.tree.sock("libvirt-sock");
    let live_adjustment = |d: &Daemon| {
        let (code, xml, err) = virsh(&rw, &["dumpxml", "rtc-var"]);
        assert_eq!(code, 0, "{err}\n{}", d.stderr());
        let at = xml.find("<clock offset='variable' adjustment='").unwrap_or_else(|| panic!("{xml}"));
        let rest = &xml[at + "<clock offset='variable' adjustment='".len()..];
        rest[..rest.find('\'').unwrap()].parse::<i64>().unwrap()
    };
    near(live_adjustment(&d), 7277, "the live adjustment after a broker restart", &out);
    assert_eq!(virsh(&rw, &["destroy", "rtc-var"]).0, 0);
    assert_eq!(live_adjustment(&d), 3600, "a stopped domain shows its definition");
}

/// Kills the helpers a killed daemon left behind, when the test ends.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[test]
fn unsupported_clocks_are_refused_naming_them() {
    let Some(d) = daemon() else { return };
    let base = test_guest_xml(&d, "rtc-bad", "3c5a1e2f-8b7d-4e6a-9c1b-0d2e3f4a5b63");
    let rw = d.tree.sock("libvirt-sock");
    for (clock, needle) in [
        ("<clock offset='timezone' timezone='Europe/Paris'/>", "timezone"),
        ("<clock offset='utc'><timer name='rtc' track='guest'/></clock>", "rtc"),
        ("<clock offset='utc'><timer name='hpet' present='yes'/></clock>", "hpet"),
    ] {
        let file = d.tree.path("rtc-bad.xml");
        std::fs::write(&file, base.replace("<clock offset='utc'/>", clock)).unwrap();
        let (code, _, err) = virsh(&rw, &["define", file.to_str().unwrap()]);
        assert_ne!(code, 0, "{clock}");
        assert!(err.contains("unsupported configuration") && err.contains(needle), "{clock}: {err}");
    }
}
