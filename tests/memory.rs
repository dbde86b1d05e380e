//! A guest's memory against its limits: a guest that touches more than its
//! `<memtune>` hard limit is killed by the kernel, the domain reports shut
//! off (crashed) with the reason in the log, and the daemon serves on.

mod common;

use std::time::Duration;

use common::*;

const UUID_M: &str = "4b2e8f10-6c3d-4a5e-8f7a-9b0c1d2e3f01";

fn ready() -> bool {
    have_virsh()
        && require(is_root(), "root (cgroups)")
        && require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm")
        && require(std::path::Path::new("/usr/bin/python3").exists(), "python3")
}

/// Python with python-libvirt: `conn`, a console opener and `until`.
const PRELUDE: &str = r#"
import libvirt, sys, time
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open(URI)

def console(dom):
    st = conn.newStream(0)
    dom.openConsole(None, st, 0)
    return st
"#;

#[test]
fn a_guest_over_its_memory_limit_is_killed_and_reported_crashed() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &["--verbose"]);
    let rw = d.tree.sock("libvirt-sock");
    // 256 MiB of RAM, 64 MiB the helper may keep (no swap either).
    let limits = "<memtune><hard_limit unit='MiB'>64</hard_limit><swap_hard_limit unit='MiB'>64</swap_hard_limit>\
                  </memtune>";
    let xml = test_guest_xml(&d, "oom", UUID_M)
        .replace("<memory unit='MiB'>128</memory>", "<memory unit='MiB'>256</memory>")
        .replace("<currentMemory unit='MiB'>128</currentMemory>", "<currentMemory unit='MiB'>256</currentMemory>")
        .replace("<vcpu placement='static'>1</vcpu>", &format!("<vcpu placement='static'>1</vcpu>{limits}"));
    let file = d.tree.path("oom.xml");
    std::fs::write(&file, &xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);

    let script = format!(
        "URI = {:?}\n{PRELUDE}{PY_UNTIL}{}",
        uri(&rw),
        r#"
dom = conn.lookupByName("oom")
dom.create()
st = console(dom)
st.send(b"\r")
until(st, b"> ")
st.send(b"touch 8\r")
until(st, b"TOUCHED=8")
print("touched 8")
st.send(b"touch 200\r")
seen = b""
try:
    while True:
        data = st.recv(4096)
        if not data:
            break
        seen += data
except libvirt.libvirtError:
    pass
if b"TOUCHED=200" in seen:
    sys.exit("the guest touched 200 MiB under a 64 MiB limit")
print("ended")
"#
    );
    let out = run_python(&d, &script, Duration::from_secs(120));
    assert_eq!(out, "touched 8\nended\n");

    assert!(wait_until(Duration::from_secs(10), || virsh(&rw, &["domstate", "oom", "--reason"]).1.trim()
        == "shut off (crashed)"));
    assert!(
        wait_until(Duration::from_secs(5), || d.stderr().contains("killed by the kernel: out of memory in its cgroup")),
        "{}",
        d.stderr()
    );
    // The daemon is unharmed: it serves, and the domain starts again.
    assert_eq!(virsh(&rw, &["list", "--all"]).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "oom"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(virsh(&rw, &["destroy", "oom"]).0, 0);
}
