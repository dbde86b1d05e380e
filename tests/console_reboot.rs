//! A console stream open while its guest reboots goes on with the new boot,
//! as with libvirt and QEMU (whose reboot keeps the process and its
//! chardev), though here a reboot hands the guest over to a new helper:
//! the client reads the new boot's output and types to the new guest
//! without opening the console again, and a console opened during the hand-over
//! waits for the new helper. The stream ends when the guest really stops.
//! `on_poweroff`/`on_crash` `restart` run on likewise (libvirt's "fake
//! reboot"), with libvirt's events. A console is one stream's: FORCE ends
//! the other one, on the same connection too; without it a second open fails.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const UUID: &str = "8e1f0c2a-5b3d-4c6e-9f70-1a2b3c4d5e6f";

fn ready() -> bool {
    let kvm = require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm");
    let py = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    kvm && require(py, "python3-libvirt")
}

/// `conn`, `console(dom, flags, connection)`, `prompt(st)`, `ends(st)` (whether the
/// stream reaches end of file within 15 s, whatever it brings first).
const PRELUDE: &str = r#"
import libvirt, sys, threading, time
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open(URI)

def console(dom, flags=0, c=conn):
    st = c.newStream(0)
    dom.openConsole(None, st, flags)
    return st

def prompt(st):
    st.send(b"\r")
    until(st, b"> ")

def ends(st):
    done = []
    def drain():
        while st.recv(4096):
            pass
        done.append(True)
    threading.Thread(target=drain, daemon=True).start()
    end = time.time() + 15
    while not done and time.time() < end:
        time.sleep(0.05)
    return bool(done)

def new_boot(st):
    until(st, b"GUEST-READY")
    until(st, b"> ")
    return hello(st)

def hello(st):
    st.send(b"echo hello\r")
    until(st, b"\nhello\r\n")
    return True

def reprompt(st):
    # A prompt from the guest, asked for until one comes: what the guest
    # printed before this stream took the console went to the one before,
    # and a key typed while the old helper hands over may go with it.
    seen = [b""]
    def pump():
        while b"> " not in seen[0]:
            data = st.recv(4096)
            if not data:
                return
            seen[0] += data
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    end = time.time() + 60
    while t.is_alive() and time.time() < end:
        st.send(b"\r")
        t.join(1)
    return b"> " in seen[0]
"#;

fn python(d: &Daemon, name: &str, xml: &str, script: &str) -> String {
    let head = format!("URI = {:?}\nNAME = {name:?}\nXML = {xml:?}\n", uri(&d.tree.sock("libvirt-sock")));
    run_python(d, &(head + PRELUDE + PY_UNTIL + script), Duration::from_secs(120))
}

#[test]
fn an_open_console_shows_each_new_boot_and_reaches_the_new_guest_then_ends_with_destroy() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let xml = test_guest_xml(&d, "con-reboot", UUID);
    let out = python(
        &d,
        "con-reboot",
        &xml,
        r#"
dom = conn.defineXML(XML)
dom.create()
first = dom.ID()
st = console(dom)
prompt(st)
# The guest's own reboot (i8042 reset): a new helper runs it on.
st.send(b"reboot\r")
print("guest's reboot:", new_boot(st), dom.ID() == first)
# virDomainReset and virDomainReboot hand over likewise.
dom.reset(0)
print("reset:", new_boot(st))
dom.reboot(0)
print("reboot:", new_boot(st))
dom.destroy()
print("destroy ends it:", ends(st))
st.finish()
"#,
    );
    assert_eq!(out, "guest's reboot: True True\nreset: True\nreboot: True\ndestroy ends it: True\n");
}

#[test]
fn a_console_opened_as_the_guest_reboots_waits_for_the_new_helper() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let xml = test_guest_xml(&d, "con-handover", UUID);
    let out = python(
        &d,
        "con-handover",
        &xml,
        r#"
dom = conn.defineXML(XML)
dom.create()
old = console(dom)
prompt(old)
# Taken over (FORCE, by another client) at once after the reboot word,
# while the old helper goes and the new one comes.
other = libvirt.open(URI)
old.send(b"reboot\r")
until(old, b"reboot")
st = console(other.lookupByName(NAME), libvirt.VIR_DOMAIN_CONSOLE_FORCE, other)
# The new boot's banner may come before the takeover (to the old stream).
print("new boot:", reprompt(st) and hello(st))
print("taken over one ends:", ends(old))
old.finish()
dom.shutdown()
print("poweroff ends it:", ends(st))
st.finish()
"#,
    );
    assert_eq!(out, "new boot: True\ntaken over one ends: True\npoweroff ends it: True\n");
}

#[test]
fn a_console_ends_when_a_reboot_or_crash_stops_the_guest_or_its_helper_dies() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let xml = test_guest_xml(&d, "con-stop", UUID);
    assert!(!xml.contains("<on_reboot>") && !xml.contains("<on_crash>"), "{xml}");
    let xml = xml.replace("</domain>", "  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n</domain>");
    let script = format!("DAEMON = {}\n{PY_HELPER_PID}{STOPS}", d.pid);
    let out = python(&d, "con-stop", &xml, &script);
    assert_eq!(
        out,
        "on_reboot destroy ends it: True 0\non_crash destroy ends it: True 0\na dead helper ends it: True 0\n"
    );
}

/// The guest stops three ways under an open console.
const STOPS: &str = r#"

def inactive(dom):
    end = time.time() + 15
    while dom.isActive() and time.time() < end:
        time.sleep(0.05)
    return dom.isActive()

dom = conn.defineXML(XML)
for label, stop in (("on_reboot destroy", lambda st: st.send(b"reboot\r")),
                    ("on_crash destroy", lambda st: st.send(b"panic\r")),
                    ("a dead helper", lambda st: os.kill(helper(), 9))):
    dom.create()
    st = console(dom)
    prompt(st)
    stop(st)
    print(label + " ends it:", ends(st), inactive(dom))
    st.finish()
"#;

#[test]
fn with_nobody_on_the_console_each_new_boot_goes_to_the_serial_log() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let log = d.tree.path("con-log.log");
    let serial = "<serial type='pty'><target port='0'/></serial>";
    let xml = test_guest_xml(&d, "con-log", UUID);
    assert!(xml.contains(serial), "{xml}");
    let file = format!("<serial type='file'><source path='{}'/><target port='0'/></serial>", log.display());
    let xml = xml.replace(serial, &file);
    let script = format!("LOG = {:?}\n{}", log.display().to_string(), LOGGED);
    let out = python(&d, "con-log", &xml, &script);
    assert_eq!(out, "first boot: True\nafter a reset: True\nafter a reboot: True\n");
}

/// Boots counted in the serial log: the broker drains the console the
/// next helper took over while nobody holds it.
const LOGGED: &str = r#"
def boots(n):
    end = time.time() + 15
    while time.time() < end:
        try:
            if open(LOG, "rb").read().count(b"GUEST-READY") >= n:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False

dom = conn.defineXML(XML)
dom.create()
print("first boot:", boots(1))
dom.reset(0)
print("after a reset:", boots(2))
dom.reboot(0)
print("after a reboot:", boots(3))
dom.destroy()
"#;

/// Lifecycle and reboot events of the domain, as `events` ("reboot", or
/// (event, detail)) and `ids` (the domain ID each event names), on a
/// connection of their own with an event loop;
/// `clear_after_start()` waits for the first boot's STARTED and forgets it.
const EVENTS: &str = r#"
libvirt.virEventRegisterDefaultImpl()
ev = libvirt.open(URI)
events, ids = [], []
def lifecycle(c, d, e, detail, o):
    ids.append(d.ID())
    events.append((e, detail))
def reboot(c, d, o):
    ids.append(d.ID())
    events.append("reboot")
ev.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None)
ev.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, reboot, None)
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()

def settled(n):
    end = time.time() + 15
    while len(events) < n and time.time() < end:
        time.sleep(0.05)
    # Anything more would come at once.
    time.sleep(0.5)
    return list(events)

def clear_after_start():
    settled(1)
    events.clear()
    ids.clear()
"#;

/// `on_poweroff` or `on_crash` set to `restart` and the guest's word for it:
/// libvirt's "fake reboot" (QEMU stopped, reset and resumed in place), which
/// keeps the time the guest set its clock to, as QEMU's reset keeps its RTC.
const FAKE_REBOOT: &str = r#"
import calendar, re

def clock(st):
    # The guest's clock (`rtc`) less the host's, in seconds.
    st.send(b"rtc\r")
    seen = b""
    while not re.search(rb"RTC=(\S+ \S+)\r\n", seen):
        data = st.recv(4096)
        if not data:
            sys.exit("end of file while waiting for RTC=; got %r" % seen)
        seen += data
    when = re.search(rb"RTC=(\S+ \S+)\r\n", seen).group(1).decode()
    return calendar.timegm(time.strptime(when, "%Y-%m-%d %H:%M:%S")) - int(time.time())

dom = conn.defineXML(XML)
dom.create()
clear_after_start()
first = dom.ID()
st = console(dom)
prompt(st)
ahead = time.strftime("%Y%m%d%H%M%S", time.gmtime(int(time.time()) + 86400))
st.send(b"rtcset " + ahead.encode() + b"\r")
until(st, b"RTC=")
prompt(st)
st.send(WORD + b"\r")
print("new boot on the same stream:", new_boot(st), "same id:", dom.ID() == first)
print("clock kept:", abs(clock(st) - 86400) <= 3)
print("events:", settled(N), "of the same id:", set(ids) == {first})
print("state:", dom.state())
dom.destroy()
print("destroy ends it:", ends(st))
st.finish()
"#;

fn fake_reboot(name: &str, action: &str, word: &str, events: usize) -> String {
    let d = Daemon::start("", &[]);
    let xml = test_guest_xml(&d, name, UUID);
    let xml = match action {
        "on_poweroff" => xml.replace("<on_poweroff>destroy</on_poweroff>", "<on_poweroff>restart</on_poweroff>"),
        _ => xml.replace("</domain>", "  <on_crash>restart</on_crash>\n</domain>"),
    };
    assert!(xml.contains(&format!("<{action}>restart</{action}>")), "{xml}");
    let script = format!("WORD = b{word:?}\nN = {events}\n{EVENTS}{FAKE_REBOOT}");
    python(&d, name, &xml, &script)
}

#[test]
fn on_poweroff_restart_runs_on_in_place_as_libvirts_fake_reboot() {
    if !ready() {
        return;
    }
    // libvirt hides the transient shutdown (no SHUTDOWN, STOPPED or
    // STARTED): a reboot event alone, and the domain stays running (booted).
    let out = fake_reboot("con-poweroff", "on_poweroff", "poweroff", 1);
    assert_eq!(
        out,
        "new boot on the same stream: True same id: True\nclock kept: True\nevents: ['reboot'] of the same id: True\nstate: [1, 1]\ndestroy ends it: True\n"
    );
}

#[test]
fn on_crash_restart_runs_on_in_place_as_libvirts_fake_reboot() {
    if !ready() {
        return;
    }
    // CRASHED (panicked), the reset's reboot event, RESUMED (unpaused);
    // the domain then runs with the reason "crashed" (9).
    let out = fake_reboot("con-crash", "on_crash", "panic", 3);
    assert_eq!(
        out,
        "new boot on the same stream: True same id: True\nclock kept: True\nevents: [(8, 0), 'reboot', (4, 0)] of the same id: True\nstate: [1, 9]\n\
         destroy ends it: True\n"
    );
}

#[test]
fn force_on_the_same_connection_ends_its_other_stream_and_without_force_a_second_open_fails() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let xml = test_guest_xml(&d, "con-force", UUID);
    let out = python(
        &d,
        "con-force",
        &xml,
        r#"
def refused(dom, c=conn):
    try:
        console(dom, 0, c)
        return "opened"
    except libvirt.libvirtError as e:
        return (e.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED, e.get_error_message())

dom = conn.defineXML(XML)
dom.create()
a = console(dom)
prompt(a)
print("second open on the same connection:", refused(dom))
b = console(dom, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
print("A ends:", ends(a))
a.finish()
prompt(b)
b.send(b"echo hello\r")
until(b, b"\nhello\r\n")
print("B echoes: True")
# The console is still B's: another client is refused without FORCE.
other = libvirt.open(URI)
print("another connection:", refused(other.lookupByName(NAME), other))
dom.destroy()
print("destroy ends B:", ends(b))
b.finish()
"#,
    );
    let refused = "(True, 'operation failed: Active console session exists for this domain')";
    assert_eq!(
        out,
        format!(
            "second open on the same connection: {refused}\nA ends: True\nB echoes: True\n\
             another connection: {refused}\ndestroy ends B: True\n"
        )
    );
}

#[test]
fn on_crash_destroy_reports_the_panic_then_the_stop_as_libvirt_does() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let xml = test_guest_xml(&d, "con-panic", UUID);
    let xml = xml.replace("</domain>", "  <on_crash>destroy</on_crash>\n</domain>");
    let script = format!(
        "{EVENTS}{}",
        r#"
dom = conn.defineXML(XML)
dom.create()
clear_after_start()
first = dom.ID()
st = console(dom)
prompt(st)
st.send(b"panic\r")
print("ends:", ends(st), "events:", settled(2), "ids:", ids == [first, -1])
print("state:", dom.state())
st.finish()
"#
    );
    let out = python(&d, "con-panic", &xml, &script);
    // CRASHED (panicked) of the running domain, then STOPPED (crashed).
    assert_eq!(out, "ends: True events: [(8, 0), (5, 2)] ids: True\nstate: [5, 3]\n");
}
