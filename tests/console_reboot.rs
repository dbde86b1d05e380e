//! A console stream open while its guest reboots goes on with the new boot,
//! as with libvirt and QEMU (whose reboot keeps the process and its
//! chardev), though here a reboot hands the guest over to a new helper:
//! the client reads the new boot's output and types to the new guest
//! without opening the console again, and a console opened during the hand-over
//! waits for the new helper. The stream ends when the guest really stops.

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
    st.send(b"echo hello\r")
    until(st, b"\nhello\r\n")
    return True
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
print("new boot:", new_boot(st))
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
fn a_reboot_that_on_reboot_makes_a_stop_ends_the_console() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let xml = test_guest_xml(&d, "con-stop", UUID);
    assert!(!xml.contains("<on_reboot>"), "{xml}");
    let xml = xml.replace("</domain>", "  <on_reboot>destroy</on_reboot>\n</domain>");
    let out = python(
        &d,
        "con-stop",
        &xml,
        r#"
dom = conn.defineXML(XML)
dom.create()
st = console(dom)
prompt(st)
st.send(b"reboot\r")
print("ends:", ends(st), dom.isActive())
st.finish()
"#,
    );
    assert_eq!(out, "ends: True 0\n");
}
