//! Running guests driven by python-libvirt, as scripts do: console streams
//! that end with the guest, CPU time, reboots of transient guests, and a
//! guest touching MMIO where no device sits.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const UUID: &str = "5d0c6a0e-2f3a-4b8c-9e51-0a4f3c2b1d7e";

fn ready() -> bool {
    let kvm = require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm");
    let py = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    kvm && require(py, "python3-libvirt")
}

/// A daemon and the test guest's domain XML for `name` (not yet defined).
fn daemon_and_xml(name: &str) -> (Daemon, String) {
    let d = Daemon::start("", &[]);
    let xml = test_guest_xml(&d, name, UUID);
    (d, xml)
}

/// Python helpers every script gets: `conn`, `XML`, `NAME`, a console
/// opener and a reader that waits for a marker.
const PRELUDE: &str = r#"
import libvirt, sys, time
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open(URI)

def console(dom):
    st = conn.newStream(0)
    dom.openConsole(None, st, 0)
    return st

def prompt(st):
    st.send(b"\r")
    until(st, b"> ")
"#;

/// Runs `script` (after [`PRELUDE`]) with python3, killed after `limit`;
/// returns stdout, failing the test (with stderr and the daemon's) if the
/// script failed or ran out of time.
fn python(d: &Daemon, name: &str, xml: &str, script: &str, limit: Duration) -> String {
    let head = format!("URI = {:?}\nNAME = {name:?}\nXML = {xml:?}\n", uri(&d.tree.sock("libvirt-sock")));
    run_python(d, &(head + PRELUDE + PY_UNTIL + script), limit)
}

#[test]
fn a_guest_that_stops_under_an_open_console_ends_the_stream_not_the_connection() {
    if !ready() {
        return;
    }
    let (d, xml) = daemon_and_xml("py-eof");
    let out = python(
        &d,
        "py-eof",
        &xml,
        r#"
dom = conn.createXML(XML, 0)
st = console(dom)
prompt(st)
dom.shutdown()
while True:
    data = st.recv(4096)
    if not data:
        break
print("eof")
st.finish()
print("finished")
# The helper's end reaches the broker on its own path: give it a moment.
end = time.time() + 10
while [x.name() for x in conn.listAllDomains(0)] and time.time() < end:
    time.sleep(0.05)
print("domains:", [x.name() for x in conn.listAllDomains(0)])
try:
    conn.lookupByName(NAME)
    print("still there")
except libvirt.libvirtError as e:
    print("lookup error:", e.get_error_code())
"#,
        Duration::from_secs(60),
    );
    assert_eq!(out, "eof\nfinished\ndomains: []\nlookup error: 42\n");
}

#[test]
fn aborting_a_console_stream_returns_at_once_and_frees_the_console() {
    if !ready() {
        return;
    }
    let (d, xml) = daemon_and_xml("py-abort");
    let out = python(
        &d,
        "py-abort",
        &xml,
        r#"
dom = conn.createXML(XML, 0)
st = console(dom)
prompt(st)
t = time.time()
st.abort()
print("abort took under 2 s:", time.time() - t < 2)
st = console(dom)
prompt(st)
st.finish()
print("second console finished")
print("active:", dom.isActive())
dom.destroy()
"#,
        Duration::from_secs(60),
    );
    assert_eq!(out, "abort took under 2 s: True\nsecond console finished\nactive: 1\n");
}

#[test]
fn cpu_time_is_in_nanoseconds_and_grows_while_the_guest_spins() {
    if !ready() {
        return;
    }
    let (d, xml) = daemon_and_xml("py-cpu");
    let out = python(
        &d,
        "py-cpu",
        &xml,
        r#"
dom = conn.createXML(XML, 0)
st = console(dom)
prompt(st)
booted = dom.info()[4]
st.send(b"spin 300\r")
until(st, b"SPUN")
spun = dom.info()[4]
print("booted > 0:", booted > 0)
print("not whole clock ticks:", booted % 10000000 != 0 or spun % 10000000 != 0)
print("grew:", spun > booted)
st.finish()
dom.destroy()
"#,
        Duration::from_secs(60),
    );
    assert_eq!(out, "booted > 0: True\nnot whole clock ticks: True\ngrew: True\n");
}

#[test]
fn a_transient_guest_that_is_reset_or_reboots_comes_back_as_itself() {
    if !ready() {
        return;
    }
    let (d, xml) = daemon_and_xml("py-reboot");
    let out = python(
        &d,
        "py-reboot",
        &xml,
        r#"
def wait_running(dom):
    end = time.time() + 15
    while time.time() < end:
        try:
            if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                return True
        except libvirt.libvirtError:
            pass
        time.sleep(0.1)
    return False

dom = conn.createXML(XML, 0)
first = (dom.ID(), dom.UUIDString())
st = console(dom)
prompt(st)
st.finish()
dom.reset(0)
time.sleep(0.5)
again = conn.lookupByName(NAME)
print("after reset:", wait_running(again), (again.ID(), again.UUIDString()) == first, again.isPersistent())
st = console(again)
prompt(st)
# The console stays open through the reboot and shows the new boot.
st.send(b"reboot\r")
until(st, b"GUEST-READY")
again = conn.lookupByName(NAME)
print("after reboot:", wait_running(again), (again.ID(), again.UUIDString()) == first)
prompt(st)
print("shell answers")
st.finish()
again.destroy()
"#,
        Duration::from_secs(90),
    );
    assert_eq!(out, "after reset: True True 0\nafter reboot: True True\nshell answers\n");
}

#[test]
fn a_guest_touching_unassigned_mmio_reads_all_ones_and_keeps_running() {
    if !ready() {
        return;
    }
    let (d, xml) = daemon_and_xml("py-mmio");
    let out = python(
        &d,
        "py-mmio",
        &xml,
        r#"
dom = conn.createXML(XML, 0)
st = console(dom)
prompt(st)
st.send(b"mmio\r")
seen = b""
while b"MMIO=" not in seen or b"\r\n" not in seen.split(b"MMIO=")[1]:
    data = st.recv(4096)
    if not data:
        sys.exit("end of file after %r" % seen)
    seen += data
print(seen.split(b"MMIO=")[1].split(b"\r")[0].decode())
prompt(st)
print("state:", dom.state()[0])
st.finish()
dom.destroy()
"#,
        Duration::from_secs(60),
    );
    assert_eq!(out, "ones\nstate: 1\n");
}
