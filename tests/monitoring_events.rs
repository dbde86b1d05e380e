//! Events a monitor registers for beyond the lifecycle, received with
//! python-libvirt's `domainEventRegisterAny` on the read-write and the
//! read-only socket alike: a reboot (the guest's own, and `virDomainReset`)
//! and a control error (the guest's helper killed under the daemon).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const UUID: &str = "7e1f0c3a-5b2d-4c8e-9a61-2d3c4b5a6f70";

/// A daemon and the test guest's XML; `None` (outside CI) where KVM or
/// python3-libvirt is missing.
fn daemon_and_xml(name: &str) -> Option<(Daemon, String)> {
    let kvm = require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm");
    let py = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    if !kvm || !require(py, "python3-libvirt") {
        return None;
    }
    let d = Daemon::start("", &[]);
    let xml = test_guest_xml(&d, name, UUID);
    Some((d, xml))
}

/// Every script: both connections with an event loop, `seen` collecting
/// (connection, domain, id) of the event `EVENT` on both, `lifecycle`
/// collecting (event, detail) on the read-only one, and `wait(n)`.
const PRELUDE: &str = r#"
import libvirt, os, sys, threading, time
libvirt.registerErrorHandler(lambda *a: None, None)
libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open(URI)
ro = libvirt.openReadOnly(URI_RO)
seen, lifecycle = [], []
for c, label in ((conn, "rw"), (ro, "ro")):
    c.domainEventRegisterAny(None, EVENT, lambda c, dom, opaque: seen.append((opaque, dom.name(), dom.ID())), label)
ro.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                          lambda c, dom, ev, detail, opaque: lifecycle.append((ev, detail)), None)
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()

def wait(cond):
    end = time.time() + 15
    while not cond() and time.time() < end:
        time.sleep(0.05)
    return cond()
"#;

fn python(d: &Daemon, name: &str, xml: &str, event: &str, script: &str) -> String {
    let head = format!(
        "URI = {:?}\nURI_RO = {:?}\nNAME = {name:?}\nXML = {xml:?}\nDAEMON = {}\nEVENT = libvirt.{event}\n",
        uri(&d.tree.sock("libvirt-sock")),
        uri(&d.tree.sock("libvirt-sock-ro")),
        d.pid
    );
    let program = format!("import libvirt\n{head}{PRELUDE}{PY_UNTIL}{PY_HELPER_PID}{script}");
    run_python(d, &program, Duration::from_secs(90))
}

#[test]
fn a_reboot_by_the_guest_or_by_reset_reaches_both_sockets_as_a_reboot_event() {
    let Some((d, xml)) = daemon_and_xml("ev-reboot") else { return };
    let out = python(
        &d,
        "ev-reboot",
        &xml,
        "VIR_DOMAIN_EVENT_ID_REBOOT",
        r#"
dom = conn.defineXML(XML)
dom.create()
first = dom.ID()
st = conn.newStream(0)
dom.openConsole(None, st, 0)
st.send(b"\r")
until(st, b"> ")
st.send(b"reboot\r")
until(st, b"GUEST-READY")
st.finish()
print("guest's reboot:", wait(lambda: len(seen) == 2), sorted(seen) == [("ro", NAME, first), ("rw", NAME, first)])
dom.reset(0)
print("reset:", wait(lambda: len(seen) == 4), sorted(seen[2:]) == [("ro", NAME, first), ("rw", NAME, first)])
print("runs on as itself:", wait(lambda: dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING), dom.ID() == first)
print("no stop announced:", not any(ev == libvirt.VIR_DOMAIN_EVENT_STOPPED for ev, _ in lifecycle))
dom.destroy()
print("destroy stops:", wait(lambda: (libvirt.VIR_DOMAIN_EVENT_STOPPED, 1) in lifecycle))
dom.create()
dom.shutdown()
time.sleep(0.5)
print("no reboot on destroy or start:", len(seen) == 4)
"#,
    );
    assert_eq!(
        out,
        "guest's reboot: True True\nreset: True True\nruns on as itself: True True\nno stop announced: True\n\
         destroy stops: True\nno reboot on destroy or start: True\n"
    );
}

#[test]
fn a_helper_killed_under_the_daemon_is_a_control_error_on_both_sockets() {
    let Some((d, xml)) = daemon_and_xml("ev-control") else { return };
    let out = python(
        &d,
        "ev-control",
        &xml,
        "VIR_DOMAIN_EVENT_ID_CONTROL_ERROR",
        r#"

dom = conn.defineXML(XML)
dom.create()
dom.destroy()
dom.create()
running = dom.ID()
time.sleep(0.3)
print("none for a start or a destroy:", seen == [])
os.kill(helper(), 9)
print("control error:", wait(lambda: len(seen) == 2), sorted(seen) == [("ro", NAME, running), ("rw", NAME, running)])
print("then stopped, failed:", wait(lambda: (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED) in lifecycle))
print("state:", dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED])
"#,
    );
    assert_eq!(
        out,
        "none for a start or a destroy: True\ncontrol error: True True\nthen stopped, failed: True\nstate: True\n"
    );
}
