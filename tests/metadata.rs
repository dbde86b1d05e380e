//! Domain metadata through the stock clients: `virsh desc` (title and
//! description, `--config`/`--live`/`--current`), `virsh metadata` (a
//! namespaced element, `--remove`), as libvirt stores them in the domain XML;
//! the read-only socket reads but may not change them; and the metadata-change
//! event reaches python-libvirt callbacks on both sockets.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

const UUID_M: &str = "4d1e7c20-5b3a-4c8e-9f61-0a2b3c4d5e01";
const NS: &str = "http://example.org/app/1.0";

/// A daemon with domain `m` defined (shut off); its rw and ro sockets.
fn defined() -> (Daemon, PathBuf, PathBuf) {
    let d = Daemon::start("", &[]);
    let (rw, ro) = (d.tree.sock("libvirt-sock"), d.tree.sock("libvirt-sock-ro"));
    let file = d.tree.path("m.xml");
    std::fs::write(&file, domain_xml("m", UUID_M)).unwrap();
    let (code, _, err) = virsh(&rw, &["define", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    (d, rw, ro)
}

#[test]
fn virsh_desc_sets_and_reads_the_title_and_description() {
    if !have_virsh() {
        return;
    }
    let (d, rw, ro) = defined();
    let (code, out, err) = virsh(&ro, &["desc", "m"]);
    assert_eq!((code, out.trim(), err.as_str()), (0, "No description for domain: m", ""));

    let (code, out, err) = virsh(&rw, &["desc", "m", "--title", "Web front end"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Domain title updated successfully");
    let (code, out, err) = virsh(&rw, &["desc", "m", "--config", "Serves", "<pages>", "&", "more"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Domain description updated successfully");

    // Read back from either socket, and kept in the XML where libvirt keeps it.
    for sock in [&rw, &ro] {
        assert_eq!(virsh(sock, &["desc", "m", "--title"]).1.trim(), "Web front end");
        assert_eq!(virsh(sock, &["desc", "m", "--current"]).1.trim(), "Serves <pages> & more");
    }
    let xml = virsh(&ro, &["dumpxml", "m"]).1;
    assert!(
        xml.contains("  <title>Web front end</title>\n  <description>Serves &lt;pages&gt; &amp; more</description>\n")
    );
    let (_, list, _) = virsh(&ro, &["list", "--all", "--title"]);
    assert!(list.lines().any(|l| l.contains(" m ") && l.trim_end().ends_with("Web front end")), "{list}");

    // The stored definition has it: it survives a daemon restart.
    let mut d = d;
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    d.restart();
    assert_eq!(virsh(&ro, &["desc", "m", "--title"]).1.trim(), "Web front end");

    // A shut-off domain has no live definition, as in libvirt.
    let (code, _, err) = virsh(&rw, &["desc", "m", "--live", "x"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "error: Failed to set new domain description\nerror: Requested operation is not valid: domain is not running"
    );

    // The read-only socket may not change it, and nothing changed.
    let (code, _, err) = virsh(&ro, &["desc", "m", "--title", "other"]);
    assert_eq!(code, 1);
    assert!(err.contains("operation forbidden: read only access prevents virDomainSetMetadata"), "{err}");
    assert!(d.tree.audit(&["op=metadata", "res=failed"], Duration::from_secs(5)).is_some());
    assert_eq!(virsh(&ro, &["desc", "m", "--title"]).1.trim(), "Web front end");

    // An empty text removes it.
    assert_eq!(virsh(&rw, &["desc", "m", "--title", ""]).0, 0);
    let (code, out, _) = virsh(&ro, &["desc", "m", "--title"]);
    assert_eq!((code, out.trim()), (0, "No title for domain: m"));
    assert!(!virsh(&ro, &["dumpxml", "m"]).1.contains("<title>"));
}

#[test]
fn virsh_metadata_keeps_a_namespaced_element_and_removes_it() {
    if !have_virsh() {
        return;
    }
    let (_d, rw, ro) = defined();
    let (code, _, err) = virsh(&ro, &["metadata", "m", NS]);
    assert_eq!(code, 1);
    assert!(err.contains("metadata not found: Requested metadata element is not present"), "{err}");

    let set = ["metadata", "m", NS, "--key", "app", "--set", "<owner team='web'><name>Ops</name></owner>"];
    let (code, out, err) = virsh(&rw, &set);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Metadata modified");
    let other = ["metadata", "m", "http://other/", "--key", "o", "--set", "<x/>"];
    assert_eq!(virsh(&rw, &other).0, 0);

    // Read back without the namespace; stored with it, under the key.
    let (code, out, err) = virsh(&ro, &["metadata", "m", NS]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "<owner team=\"web\"><name>Ops</name></owner>");
    let xml = virsh(&ro, &["dumpxml", "m"]).1;
    assert!(
        xml.contains(&format!(
            "<metadata>\n    <app:owner xmlns:app=\"{NS}\" team=\"web\"><app:name>Ops</app:name></app:owner>\n    \
             <o:x xmlns:o=\"http://other/\"/>\n  </metadata>"
        )),
        "{xml}"
    );

    // Malformed XML is refused with the parser's words; nothing changes.
    let (code, _, err) = virsh(&rw, &["metadata", "m", NS, "--key", "app", "--set", "<a><b></a>"]);
    assert_eq!(code, 1);
    assert!(err.contains("(metadata_xml):1:"), "{err}");
    let (code, _, err) = virsh(&ro, &["metadata", "m", NS, "--remove"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("read only access prevents virDomainSetMetadata"), "{err}");

    let (code, out, err) = virsh(&rw, &["metadata", "m", NS, "--remove"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Metadata removed");
    assert_eq!(virsh(&ro, &["metadata", "m", NS]).0, 1);
    assert_eq!(virsh(&ro, &["metadata", "m", "http://other/"]).1.trim(), "<x/>");
}

#[test]
fn metadata_change_events_reach_callbacks_on_both_sockets() {
    let py = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    if !require(py, "python3-libvirt") {
        return;
    }
    let (d, rw, ro) = defined();
    let (rw, ro) = (uri(&rw), uri(&ro));
    let script = format!(
        r#"
import libvirt, threading, time
libvirt.registerErrorHandler(lambda *a: None, None)
libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open({rw:?})
ro = libvirt.openReadOnly({ro:?})
seen = []
def cb(c, dom, kind, nsuri, opaque):
    seen.append((opaque, dom.name(), kind, nsuri))
ids = [c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, cb, label)
       for c, label in ((conn, "rw"), (ro, "ro"))]
lifecycle = []
conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda *a: lifecycle.append(a[2]), None)
def run():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=run, daemon=True).start()
dom = conn.lookupByName("m")
dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_TITLE, "T", None, None, 0)
dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<v>1</v>", "k", "http://n/", libvirt.VIR_DOMAIN_AFFECT_CONFIG)
try:
    ro.lookupByName("m").setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "D", None, None, 0)
except libvirt.libvirtError as e:
    print("ro set:", e.get_error_code())
end = time.time() + 10
while len(seen) < 4 and time.time() < end:
    time.sleep(0.05)
print(sorted(seen))
print("title:", ro.lookupByName("m").metadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None, 0))
print("element:", ro.lookupByName("m").metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "http://n/", 0))
try:
    ro.lookupByName("m").metadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None, 0)
except libvirt.libvirtError as e:
    print("no description:", e.get_error_code(), e.get_error_domain())
print("no lifecycle events:", lifecycle)
for c, i in zip((conn, ro), ids):
    c.domainEventDeregisterAny(i)
"#
    );
    let out = run_python(&d, &script, Duration::from_secs(30));
    assert_eq!(
        out,
        "ro set: 29\n\
         [('ro', 'm', 1, None), ('ro', 'm', 2, 'http://n/'), ('rw', 'm', 1, None), ('rw', 'm', 2, 'http://n/')]\n\
         title: T\nelement: <v>1</v>\nno description: 80 20\nno lifecycle events: []\n"
    );
}

#[test]
fn a_running_guests_metadata_changes_live_and_in_its_config() {
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !have_virsh() || !require(kvm, "/dev/kvm") {
        return;
    }
    let d = Daemon::start("", &[]);
    let (rw, ro) = (d.tree.sock("libvirt-sock"), d.tree.sock("libvirt-sock-ro"));
    let xml = test_guest_xml(&d, "m", UUID_M);
    let file = d.tree.path("m.xml");
    std::fs::write(&file, xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "m"]);
    assert_eq!(code, 0, "{err}");
    for (flag, text) in [("--live", "live one"), ("--config", "config one"), ("--current", "current one")] {
        let (code, _, err) = virsh(&rw, &["desc", "m", flag, "--title", text]);
        assert_eq!(code, 0, "{flag}: {err}");
        assert_eq!(virsh(&ro, &["desc", "m", "--title", flag]).1.trim(), text, "{flag}");
    }
    // Both at once, as virsh sends them for `--live --config`.
    let (code, _, err) = virsh(&rw, &["desc", "m", "--live", "--config", "both"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(virsh(&ro, &["desc", "m", "--config"]).1.trim(), "both");
    // A transient guest has no config to change.
    assert_eq!(virsh(&rw, &["undefine", "m"]).0, 0);
    let (code, _, err) = virsh(&rw, &["desc", "m", "--config", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("transient domains do not have any persistent config"), "{err}");
    assert_eq!(virsh(&rw, &["desc", "m", "--live", "still"]).0, 0);
    assert_eq!(virsh(&ro, &["desc", "m"]).1.trim(), "still");
    assert_eq!(virsh(&rw, &["destroy", "m"]).0, 0);
}
