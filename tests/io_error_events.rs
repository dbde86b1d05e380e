//! libvirt's I/O error events (issue 14): a disk whose backend fails a
//! guest's write (its file is on a full filesystem) raises
//! `VIR_DOMAIN_EVENT_ID_IO_ERROR` and `IO_ERROR_REASON` on both sockets,
//! unasked: the helper reports the error itself, and no statistics call
//! is made before the events arrive. Further errors within a second raise
//! none (the helper's bound), and asking for the counters raises none.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const UUID: &str = "7d1e5c30-2f4a-4b6c-9e8d-1a2b3c4d5e21";

/// A tiny tmpfs, unmounted when dropped.
struct FullFs(PathBuf);

impl FullFs {
    fn mount(dir: &Path) -> FullFs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(dir).status().unwrap();
        assert!(ok.success(), "mount tmpfs");
        FullFs(dir.to_owned())
    }
}

impl Drop for FullFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_backend_write_error_raises_the_io_error_events_on_both_sockets() {
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let py = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    if !have_virsh()
        || !require(kvm, "/dev/kvm")
        || !require(is_root(), "root (mount)")
        || !require(py, "python3-libvirt")
    {
        return;
    }
    let d = Daemon::start("", &[]);
    let full = FullFs::mount(&d.tree.path("full"));
    // A sparse 1 MiB disk, and a filler that takes every block left.
    let disk = full.0.join("d.raw");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let _ = std::fs::write(full.0.join("filler"), vec![1u8; 1 << 20]);
    let xml = test_guest_xml(&d, "ioe", UUID).replace(
        "<devices>\n",
        &format!(
            "<devices>\n<disk type='file' device='disk'><driver name='qemu' type='raw' error_policy='report'/><source file='{}'/>\
             <target dev='vda' bus='virtio'/></disk>\n",
            disk.display()
        ),
    );
    let file = d.tree.path("ioe.xml");
    std::fs::write(&file, xml).unwrap();
    let rw = d.tree.sock("libvirt-sock");
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "ioe"]);
    assert_eq!(code, 0, "{err}\n{}", d.stderr());

    let program = format!(
        r#"
import libvirt, sys, threading, time
libvirt.registerErrorHandler(lambda *a: None, None)
libvirt.virEventRegisterDefaultImpl()
rw = libvirt.open({rw:?})
ro = libvirt.openReadOnly({ro:?})
got = []
def io(conn, dom, src, alias, action, opaque):
    got.append((opaque, "io", dom.name(), src, alias, action))
def reason(conn, dom, src, alias, action, why, opaque):
    got.append((opaque, "reason", dom.name(), src, alias, action, why))
for c, name in ((rw, "rw"), (ro, "ro")):
    c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR, io, name)
    c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, reason, name)
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()
dom = rw.lookupByName("ioe")
st = rw.newStream(0)
dom.openConsole(None, st, 0)
{PY_UPTO}
for sector in (5, 6):
    st.send(b"blkwrite 0 %d 7\r" % sector)
    upto(st, b"BLKWRITE ")
    print("BLKWRITE " + upto(st, b"\r\n").decode(errors="replace").strip())
st.abort()
# No statistics call: the helper's own report brings the events.
deadline = time.time() + 10
while len(got) < 4 and time.time() < deadline:
    time.sleep(0.05)
print("events before any stats call:", len(got))
# Asking for the counters raises no more.
dom.blockStats("vda")
ro.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_BLOCK)
time.sleep(0.5)
for g in sorted(got):
    print(g)
"#,
        rw = uri(&rw),
        ro = uri(&d.tree.sock("libvirt-sock-ro")),
    );
    let out = run_python(&d, &program, Duration::from_secs(60));
    let path = disk.display().to_string();
    assert_eq!(out.matches("BLKWRITE STATUS=1").count(), 2, "{out}");
    assert!(out.contains("events before any stats call: 4\n"), "{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('(')).collect();
    assert_eq!(lines.len(), 4, "one of each event on each socket:\n{out}");
    for sock in ["ro", "rw"] {
        let io = format!("('{sock}', 'io', 'ioe', '{path}', 'virtio-disk0', 2)");
        assert!(lines.contains(&io.as_str()), "{io} missing:\n{out}");
        let reason = format!("('{sock}', 'reason', 'ioe', '{path}', 'virtio-disk0', 2, ");
        let r = lines.iter().find(|l| l.starts_with(&reason)).unwrap_or_else(|| panic!("{reason} missing:\n{out}"));
        assert!(r.contains("No space"), "{r}");
    }
    // domblkerror says the same.
    let (code, err_out, _) = virsh(&rw, &["domblkerror", "ioe"]);
    assert_eq!(code, 0);
    assert!(err_out.contains("vda: no space"), "{err_out}");
    assert_eq!(virsh(&rw, &["destroy", "ioe"]).0, 0);
    drop(full);
}
