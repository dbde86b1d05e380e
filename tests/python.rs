//! python3-libvirt against the daemon: the calls and errors scripts rely on.

mod common;

use std::process::Command;

use common::*;

/// Runs `script` with Debian's python3 and its libvirt module; `URI` and
/// `RO_URI` are defined for it. Returns stdout, failing the test on error.
fn python(d: &Daemon, script: &str) -> String {
    let prelude = format!(
        "import libvirt, sys\nlibvirt.registerErrorHandler(lambda *a: None, None)\nURI = {:?}\nRO_URI = {:?}\n",
        uri(&d.tree.sock("libvirt-sock")),
        uri(&d.tree.sock("libvirt-sock-ro"))
    );
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(prelude + script)
        .output()
        .expect("python3 (tests/run installs python3-libvirt)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have_python_libvirt() -> bool {
    let ok = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    require(ok, "python3-libvirt")
}

#[test]
fn python_defines_looks_up_and_inspects() {
    if !have_python_libvirt() {
        return;
    }
    let d = Daemon::start("", &[]);
    let xml = domain_xml("py-a", "4b756f5b-4608-417c-a706-f41a63ae86d9");
    let out = python(
        &d,
        &format!(
            r#"
c = libvirt.open(URI)
dom = c.defineXML({xml:?})
print("defined", dom.name(), dom.UUIDString(), dom.ID())
print("type", c.getType(), "lib", c.getLibVersion(), "uri", c.getURI())
print("host", c.getHostname() != "", "info", c.getInfo()[0])
print("list", [d.name() for d in c.listAllDomains()])
print("defined-names", c.listDefinedDomains(), c.numOfDefinedDomains(), c.numOfDomains())
d2 = c.lookupByUUIDString("4b756f5b-4608-417c-a706-f41a63ae86d9")
print("info", d2.info())
print("state", d2.state())
print("flags", d2.isActive(), d2.isPersistent(), d2.autostart(), d2.OSType(), d2.maxMemory(), d2.maxVcpus())
try:
    c.lookupByName("nope")
except libvirt.libvirtError as e:
    print("missing", e.get_error_code(), e.get_error_domain(), e.get_error_message())
d2.undefine()
print("after", c.listAllDomains())
c.close()
"#
        ),
    );
    assert!(out.contains("defined py-a 4b756f5b-4608-417c-a706-f41a63ae86d9 -1"), "{out}");
    let rw = uri(&d.tree.sock("libvirt-sock"));
    assert!(out.contains(&format!("type QEMU lib 9000000 uri {rw}")), "{out}");
    assert!(out.contains(&format!("host True info {}", std::env::consts::ARCH)), "{out}");
    assert!(out.contains("list ['py-a']"), "{out}");
    assert!(out.contains("defined-names ['py-a'] 1 0"), "{out}");
    assert!(out.contains("info [5, 131072, 131072, 1, 0]"), "{out}");
    assert!(out.contains("state [5, 0]"), "{out}");
    assert!(out.contains("flags 0 1 0 hvm 131072 1"), "{out}");
    assert!(out.contains("missing 42 10 Domain not found: no domain with matching name 'nope'"), "{out}");
    assert!(out.contains("after []"), "{out}");
}

#[test]
fn python_read_only_access_is_refused_with_libvirts_error() {
    if !have_python_libvirt() {
        return;
    }
    let d = Daemon::start("", &[]);
    let xml = domain_xml("py-r", "5b756f5b-4608-417c-a706-f41a63ae86d9");
    let out = python(
        &d,
        &format!(
            r#"
for uri in (URI, RO_URI):
    c = libvirt.open(uri)
    try:
        c.defineXML({xml:?})
        print("defined via", uri == RO_URI and "ro" or "rw")
    except libvirt.libvirtError as e:
        print("refused", e.get_error_code(), e.get_error_domain(), e.get_error_message())
    c.close()
# The read-only flag on the read-write socket: the library refuses itself,
# so this only proves the connection works read-only.
r = libvirt.openReadOnly(URI)
print("ro-list", [d.name() for d in r.listAllDomains()])
"#
        ),
    );
    assert!(out.contains("defined via rw"), "{out}");
    assert!(out.contains("refused 29 20 operation forbidden: read only access prevents virDomainDefineXML"), "{out}");
    assert!(out.contains("ro-list ['py-r']"), "{out}");
}
