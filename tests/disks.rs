//! Disks through the stock clients: `<disk>` definitions with PCI addresses,
//! the shapes refused at define, start failures that name the disk and leave
//! nothing behind, QEMU-style image locking between guests (and against
//! `qemu-img`), qcow2 backing chains found from relative names, and the
//! `virsh` disk commands.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const SECS: Duration = Duration::from_secs(10);
const UUID_A: &str = "6b0c3c1e-2f4d-4e5a-8b9c-0d1e2f3a4b01";
const UUID_B: &str = "6b0c3c1e-2f4d-4e5a-8b9c-0d1e2f3a4b02";

fn have_kvm() -> bool {
    require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm")
}

fn have_qemu_img() -> bool {
    require(
        Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success()),
        "qemu-img (qemu-utils)",
    )
}

/// `disks` (each a `<disk>` element) added to the minimal domain `name`.
fn with_disks(xml: &str, disks: &str) -> String {
    xml.replace("<devices>\n", &format!("<devices>\n{disks}\n"))
}

fn raw_disk(path: &Path, target: &str, extra: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/>\
         <target dev='{target}' bus='virtio'/>{extra}</disk>",
        path.display()
    )
}

/// Defines `xml` (written into the tree as `NAME.xml`); returns virsh's answer.
fn define(d: &Daemon, name: &str, xml: &str) -> (i32, String, String) {
    let file = d.tree.path(&format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    virsh(&d.tree.sock("libvirt-sock"), &["define", file.to_str().unwrap()])
}

/// A sparse raw image of `mib` MiB.
fn raw_image(path: &Path, mib: u64) {
    std::fs::File::create(path).unwrap().set_len(mib << 20).unwrap();
}

fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `qemu-io` writing one sector of the raw image `img`, as a QEMU writer would open it.
fn qemu_io_write(img: &Path) -> (bool, String) {
    let out = Command::new("qemu-io").args(["-f", "raw", "-c", "write 0 512", img.to_str().unwrap()]).output();
    let out = out.expect("qemu-io");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("lock"), text)
}

/// Helper processes the daemon spawned that still run.
fn helpers(d: &Daemon) -> Vec<i32> {
    children_of(d.pid).into_iter().filter(|p| cmdline(*p).contains("libvirt-helper")).collect()
}

#[test]
fn disks_get_pci_addresses_at_define_that_dumpxml_shows_and_redefine_keeps() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let (a, b) = (d.tree.path("a.img"), d.tree.path("b.qcow2"));
    let disks = raw_disk(&a, "vda", "<serial>SER-1</serial><boot order='1'/>")
        + &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none' discard='unmap'/>\
             <source file='{}'/><target dev='vdb' bus='virtio'/><readonly/></disk>",
            b.display()
        );
    let (code, _, err) = define(&d, "dd", &with_disks(&domain_xml("dd", UUID_A), &disks));
    assert_eq!(code, 0, "{err}");
    let (_, xml, _) = virsh(&rw, &["dumpxml", "dd"]);
    for needle in [
        "<driver name='qemu' type='raw'/>",
        &format!("<source file='{}'/>", a.display()),
        "<target dev='vda' bus='virtio'/>",
        "<serial>SER-1</serial>",
        "<boot order='1'/>",
        "<address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>",
        "<driver name='qemu' type='qcow2' cache='none' discard='unmap'/>",
        "<readonly/>",
        "<address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>",
    ] {
        assert!(xml.contains(needle), "{needle} missing from\n{xml}");
    }
    // Shut off: no alias, no chain (those are the running guest's).
    assert!(!xml.contains("<alias"), "{xml}");
    // The dumped XML defines back to itself.
    let (code, _, err) = define(&d, "dd", &xml);
    assert_eq!(code, 0, "{err}");
    assert_eq!(virsh(&rw, &["dumpxml", "dd"]).1, xml);
    // A redefine without addresses keeps each disk's slot, and a new disk takes a free one.
    let c = d.tree.path("c.img");
    let swapped = raw_disk(&c, "vdc", "") + &raw_disk(&a, "vda", "");
    assert_eq!(define(&d, "dd", &with_disks(&domain_xml("dd", UUID_A), &swapped)).0, 0);
    let (_, xml, _) = virsh(&rw, &["dumpxml", "dd"]);
    let vda = xml.find("dev='vda'").unwrap();
    let vdc = xml.find("dev='vdc'").unwrap();
    assert!(xml[vda..].contains("slot='0x03'") && xml[vdc..vda].contains("slot='0x04'"), "{xml}");
    // domblklist reads the definition.
    let (code, out, err) = virsh(&rw, &["domblklist", "dd", "--details"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("file   disk     vdc      {}", c.display())), "{out}");
    assert!(out.contains(&format!("file   disk     vda      {}", a.display())), "{out}");
}

#[test]
fn disk_shapes_we_do_not_run_are_refused_at_define_with_libvirts_error() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let img = d.tree.path("x.img");
    for (disk, needle) in [
        (
            format!(
                "<disk type='file' device='cdrom'><source file='{}'/><target dev='vdc' bus='virtio'/></disk>",
                img.display()
            ),
            "unsupported configuration: disk device 'cdrom' is not supported",
        ),
        (
            format!(
                "<disk type='file' device='disk'><source file='{}'/><target dev='sda' bus='sata'/></disk>",
                img.display()
            ),
            "unsupported configuration: disk bus 'sata' is not supported",
        ),
        (
            "<disk type='network' device='disk'><source protocol='nbd' name='x'><host name='h'/></source>\
             <target dev='vda' bus='virtio'/></disk>"
                .to_string(),
            "unsupported configuration: disk type 'network' is not supported",
        ),
        (
            format!(
                "<disk type='file' device='disk'><driver name='qemu' type='raw' io='native'/><source file='{}'/>\
                 <target dev='vda' bus='virtio'/></disk>",
                img.display()
            ),
            "unsupported configuration: disk io mode 'native' is not supported",
        ),
        (
            raw_disk(&img, "vda", "") + &raw_disk(&d.tree.path("y.img"), "vda", ""),
            &format!(
                "XML error: target 'vda' duplicated for disk sources '{}' and '{}'",
                img.display(),
                d.tree.path("y.img").display()
            ),
        ),
    ] {
        let (code, _, err) = define(&d, "bad", &with_disks(&domain_xml("bad", UUID_A), &disk));
        assert_eq!(code, 1, "{needle}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(virsh(&d.tree.sock("libvirt-sock"), &["list", "--all", "--name"]).1.trim().is_empty());
}

#[test]
fn a_disk_that_is_no_image_fails_start_naming_it_and_leaves_nothing_behind() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let base = test_guest_xml(&d, "nd", UUID_A);
    let fifo = d.tree.path("fifo.img");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let dir = d.tree.path("dir.img");
    std::fs::create_dir(&dir).unwrap();
    let missing = d.tree.path("missing.img");
    let good = d.tree.path("good.img");
    raw_image(&good, 1);
    for (path, needle) in [
        (fifo.clone(), "is a FIFO, not a regular file or block device".to_string()),
        (dir.clone(), "is a directory, not a regular file or block device".to_string()),
        (PathBuf::from("/dev/null"), "is a character device, not a regular file or block device".to_string()),
        (missing.clone(), format!("cannot open disk 'vdb' image '{}': No such file or directory", missing.display())),
    ] {
        // A good first disk, whose lock must not outlive the failed start.
        let disks = raw_disk(&good, "vda", "") + &raw_disk(&path, "vdb", "");
        assert_eq!(define(&d, "nd", &with_disks(&base, &disks)).0, 0);
        let started = std::time::Instant::now();
        let (code, _, err) = virsh(&rw, &["start", "nd"]);
        assert!(started.elapsed() < Duration::from_secs(5), "the start waited");
        assert_eq!(code, 1, "{}", path.display());
        assert!(err.contains("error: Failed to start domain 'nd'"), "{err}");
        assert!(err.contains(&needle) && err.contains(&path.display().to_string()), "{needle}: {err}");
        assert!(err.contains("'vdb'"), "{err}");
        assert_eq!(virsh(&rw, &["domstate", "nd"]).1, "shut off\n\n");
        assert!(helpers(&d).is_empty(), "a helper was left running");
        assert!(!d.tree.path("run/qemu/nd.xml").exists() && !d.tree.path("run/qemu/nd.status").exists());
    }
    // No lock on the first disk was left behind: QEMU's tools may write it.
    if have_qemu_img() {
        let (ok, text) = qemu_img(&["resize", "-f", "raw", good.to_str().unwrap(), "2M"]);
        assert!(ok, "{text}");
    }
}

/// `qemu-io` holding `img` open (read-write unless `read_only`), as a QEMU
/// guest would: it takes QEMU's locks. Killed when dropped.
struct QemuIo(std::process::Child);

impl QemuIo {
    fn hold(img: &Path, format: &str, read_only: bool) -> QemuIo {
        let mut cmd = Command::new("qemu-io");
        if read_only {
            cmd.arg("-r");
        }
        let child = cmd
            .args(["-f", format, "-c", "sleep 60000", img.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("qemu-io");
        // Locked once /proc/locks shows its OFD lock on the write permission's byte (101).
        use std::os::unix::fs::MetadataExt;
        let ino = format!(":{} ", std::fs::metadata(img).unwrap().ino());
        let byte = if read_only { " 100 100" } else { " 101" };
        let locked = wait_until(SECS, || {
            std::fs::read_to_string("/proc/locks")
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("OFDLCK") && l.contains(&ino) && l.contains(byte))
        });
        assert!(locked, "qemu-io did not lock {}", img.display());
        QemuIo(child)
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_image_a_qemu_writes_is_refused_at_start_with_qemus_lock_error() {
    if !have_virsh() || !have_kvm() || !have_qemu_img() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let img = d.tree.path("held.img");
    raw_image(&img, 4);
    let base = test_guest_xml(&d, "qh", UUID_A);
    let holder = QemuIo::hold(&img, "raw", false);
    // A writer shares writes (qemu-io does), but our disks do not: both a
    // writable and a read-only disk refuse an image another process writes.
    for extra in ["", "<readonly/>"] {
        assert_eq!(define(&d, "qh", &with_disks(&base, &raw_disk(&img, "vda", extra))).0, 0);
        let (code, _, err) = virsh(&rw, &["start", "qh"]);
        assert_eq!(code, 1);
        let needle = format!("disk 'vda': Failed to get shared \"write\" lock on '{}'", img.display());
        assert!(err.contains(&needle), "{needle}: {err}");
        assert!(err.contains("is another process using the image?"), "{err}");
        assert_eq!(virsh(&rw, &["domstate", "qh"]).1, "shut off\n\n");
        assert!(helpers(&d).is_empty());
    }
    drop(holder);
}

#[test]
fn a_qcow2_chain_is_followed_from_relative_names_and_every_layer_checked() {
    if !have_virsh() || !have_kvm() || !have_qemu_img() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let images = d.tree.path("images");
    std::fs::create_dir(&images).unwrap();
    let base = images.join("base.raw");
    raw_image(&base, 8);
    let overlay = images.join("overlay.qcow2");
    let top = images.join("top.qcow2");
    // Relative names, each found from the directory of the image naming it.
    let create = |file: &Path, backing: &str, fmt: &str| {
        let (ok, text) = qemu_img(&["create", "-f", "qcow2", "-b", backing, "-F", fmt, file.to_str().unwrap()]);
        assert!(ok, "{text}");
    };
    create(&overlay, "base.raw", "raw");
    create(&top, "overlay.qcow2", "qcow2");
    let disk = |file: &Path| {
        format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>\
             <target dev='vda' bus='virtio'/></disk>",
            file.display()
        )
    };
    let xml = with_disks(&test_guest_xml(&d, "qc", UUID_A), &disk(&top));
    assert_eq!(define(&d, "qc", &xml).0, 0);
    // The base, two layers down, is found and locked as a backing file:
    // a QEMU writing it keeps the guest from starting.
    {
        let _writer = QemuIo::hold(&base, "raw", false);
        let (code, _, err) = virsh(&rw, &["start", "qc"]);
        assert_eq!(code, 1);
        assert!(err.contains(&format!("Failed to get shared \"write\" lock on '{}'", base.display())), "{err}");
    }
    // A missing layer is named, as resolved.
    std::fs::rename(&base, images.join("elsewhere.raw")).unwrap();
    let (code, _, err) = virsh(&rw, &["start", "qc"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("cannot open disk 'vda' image '{}'", base.display())), "{err}");
    std::fs::rename(images.join("elsewhere.raw"), &base).unwrap();
    // A backing format the header does not name is refused, as libvirt refuses it.
    let nofmt = images.join("nofmt.qcow2");
    // (qemu-img no longer writes one: its backing format extension is renamed to an unknown one.)
    create(&nofmt, "base.raw", "raw");
    let mut bytes = std::fs::read(&nofmt).unwrap();
    let at = bytes.windows(4).position(|w| w == [0xe2, 0x79, 0x2a, 0xca]).expect("backing format extension");
    bytes[at..at + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    std::fs::write(&nofmt, bytes).unwrap();
    assert_eq!(define(&d, "qc", &with_disks(&test_guest_xml(&d, "qc", UUID_A), &disk(&nofmt))).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "qc"]);
    assert_eq!(code, 1);
    assert!(err.contains("was not specified in the image metadata"), "{err}");
    assert!(helpers(&d).is_empty());
}

#[test]
fn a_second_guest_cannot_take_an_image_another_writes() {
    if !have_virsh() || !have_kvm() || !have_qemu_img() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let img = d.tree.path("shared.img");
    raw_image(&img, 4);
    let a = with_disks(&test_guest_xml(&d, "la", UUID_A), &raw_disk(&img, "vda", ""));
    let b = with_disks(&test_guest_xml(&d, "lb", UUID_B), &raw_disk(&img, "vdb", "<readonly/>"));
    assert_eq!(define(&d, "la", &a).0, 0);
    assert_eq!(define(&d, "lb", &b).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "la"]);
    assert_eq!(code, 0, "{err}");
    // Even a read-only user is kept out: what it reads would change under it.
    let (code, _, err) = virsh(&rw, &["start", "lb"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("disk 'vdb': Failed to get shared \"write\" lock on '{}'", img.display())), "{err}");
    assert_eq!(virsh(&rw, &["domstate", "lb"]).1, "shut off\n\n");
    assert_eq!(virsh(&rw, &["domstate", "la"]).1, "running\n\n");
    // QEMU's tools see our lock, as they would see a QEMU's: no writer gets in.
    let (ok, text) = qemu_io_write(&img);
    assert!(!ok && text.contains("Failed to get \"write\" lock"), "{text}");
    // Two readers share.
    assert_eq!(virsh(&rw, &["destroy", "la"]).0, 0);
    let ra = with_disks(&test_guest_xml(&d, "la", UUID_A), &raw_disk(&img, "vda", "<readonly/>"));
    assert_eq!(define(&d, "la", &ra).0, 0);
    assert_eq!(virsh(&rw, &["start", "la"]).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "lb"]);
    assert_eq!(code, 0, "{err}");
    for name in ["la", "lb"] {
        assert_eq!(virsh(&rw, &["destroy", name]).0, 0);
    }
    // Once both are gone, the image is free.
    assert!(wait_until(SECS, || qemu_io_write(&img).0));
}

/// `destroy` answers once the helper has exited and its image locks are
/// gone: another guest writing the same image starts right after it, every
/// time, with no wait in between; likewise after a graceful destroy, and
/// once a guest that shut itself down shows as shut off.
#[test]
fn a_guest_started_right_after_another_is_destroyed_takes_its_image() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let img = d.tree.path("handed.img");
    raw_image(&img, 4);
    let a = with_disks(&test_guest_xml(&d, "ha", UUID_A), &raw_disk(&img, "vda", ""));
    let b = with_disks(&test_guest_xml(&d, "hb", UUID_B), &raw_disk(&img, "vda", ""));
    assert_eq!(define(&d, "ha", &a).0, 0);
    assert_eq!(define(&d, "hb", &b).0, 0);
    for round in 0..4 {
        let (first, second) = if round % 2 == 0 { ("ha", "hb") } else { ("hb", "ha") };
        let (code, _, err) = virsh(&rw, &["start", first]);
        assert_eq!(code, 0, "round {round}: {err}");
        let destroy: &[&str] = if round < 3 { &["destroy", first] } else { &["destroy", "--graceful", first] };
        let (code, _, err) = virsh(&rw, destroy);
        assert_eq!(code, 0, "round {round}: {err}");
        let (code, _, err) = virsh(&rw, &["start", second]);
        assert_eq!(code, 0, "round {round}: {second} could not take the image {first} had: {err}");
        let (code, _, err) = virsh(&rw, &["destroy", second]);
        assert_eq!(code, 0, "round {round}: {err}");
    }
    // A guest that shuts itself down shows as shut off only once its
    // helper has exited: the other starts the moment it does (python, to
    // leave no time between the two).
    let py = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    if !require(py, "python3-libvirt") {
        return;
    }
    let program = format!(
        r#"
import libvirt, time
libvirt.registerErrorHandler(lambda *a: None, None)
c = libvirt.open({uri:?})
for r in range(4):
    a, b = c.lookupByName("ha" if r % 2 == 0 else "hb"), c.lookupByName("hb" if r % 2 == 0 else "ha")
    a.create()
    time.sleep(0.5)  # time for the guest to set up its keyboard, which hears ctrl-alt-del
    a.shutdown()
    deadline = time.time() + 10
    while a.isActive() and time.time() < deadline:
        pass
    try:
        b.create()
        b.destroy()
        print("ROUND %d ok" % r)
    except libvirt.libvirtError as e:
        print("ROUND %d failed: %s" % (r, e))
"#,
        uri = uri(&rw)
    );
    let out = run_python(&d, &program, Duration::from_secs(60));
    for r in 0..4 {
        assert!(out.contains(&format!("ROUND {r} ok")), "{out}");
    }
}

#[test]
fn a_qcow2_overlay_on_a_relative_backing_file_starts_and_shows_its_chain() {
    if !have_virsh() || !have_kvm() || !have_qemu_img() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let images = d.tree.path("images");
    std::fs::create_dir(&images).unwrap();
    let base = images.join("base.raw");
    raw_image(&base, 8);
    let overlay = images.join("overlay.qcow2");
    // Relative name: found from the overlay's own directory.
    let (ok, text) = qemu_img(&["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay.to_str().unwrap()]);
    assert!(ok, "{text}");
    let disk = format!(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>\
         <target dev='vda' bus='virtio'/></disk>",
        overlay.display()
    );
    assert_eq!(define(&d, "qc", &with_disks(&test_guest_xml(&d, "qc", UUID_A), &disk)).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "qc"]);
    assert_eq!(code, 0, "{err}");
    let (_, live, _) = virsh(&rw, &["dumpxml", "qc"]);
    for needle in [
        format!("<source file='{}' index='1'/>", overlay.display()),
        "<backingStore type='file' index='2'>".to_string(),
        "<format type='raw'/>".to_string(),
        format!("<source file='{}'/>", base.display()),
    ] {
        assert!(live.contains(&needle), "{needle} missing from\n{live}");
    }
    let (_, inactive, _) = virsh(&rw, &["dumpxml", "--inactive", "qc"]);
    assert!(!inactive.contains("backingStore"), "{inactive}");
    // The base is held read-only: a writer (qemu-img commit would be one) is refused.
    let (ok, text) = qemu_img(&["info", base.to_str().unwrap()]);
    assert!(ok, "a reader may look at the base: {text}");
    let (ok, text) = qemu_img(&["resize", "-f", "raw", base.to_str().unwrap(), "16M"]);
    assert!(!ok && text.contains("lock"), "{text}");
    assert_eq!(virsh(&rw, &["destroy", "qc"]).0, 0);

    // A backing format the header does not name is refused, as libvirt refuses it.
    let (ok, text) =
        qemu_img(&["create", "-f", "qcow2", "-u", "-b", "base.raw", images.join("nofmt.qcow2").to_str().unwrap()]);
    if ok {
        let disk = disk.replace("overlay.qcow2", "nofmt.qcow2");
        assert_eq!(define(&d, "qc", &with_disks(&test_guest_xml(&d, "qc", UUID_A), &disk)).0, 0);
        let (code, _, err) = virsh(&rw, &["start", "qc"]);
        assert_eq!(code, 1);
        assert!(err.contains("was not specified in the image metadata"), "{err}");
    } else {
        eprintln!("qemu-img refuses a backing file without a format here: {text}");
    }
}

#[test]
fn attach_and_detach_change_the_definition_and_domblkinfo_reads_the_images() {
    if !have_virsh() || !have_qemu_img() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    assert_eq!(define(&d, "at", &domain_xml("at", UUID_A)).0, 0);
    let raw = d.tree.path("a.img");
    raw_image(&raw, 4);
    let qcow = d.tree.path("b.qcow2");
    let (ok, text) = qemu_img(&["create", "-f", "qcow2", qcow.to_str().unwrap(), "16M"]);
    assert!(ok, "{text}");

    let (code, out, err) =
        virsh(&rw, &["attach-disk", "at", raw.to_str().unwrap(), "vda", "--subdriver", "raw", "--config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Disk attached successfully"), "{out}");
    let (code, _, err) = virsh(&rw, &["attach-disk", "at", raw.to_str().unwrap(), "vda", "--config"]);
    assert_eq!(code, 1);
    assert!(err.contains("Requested operation is not valid: target vda already exists"), "{err}");
    let (code, _, err) =
        virsh(&rw, &["attach-disk", "at", raw.to_str().unwrap(), "sdb", "--targetbus", "sata", "--config"]);
    assert_eq!(code, 1);
    assert!(err.contains("unsupported configuration: disk bus 'sata' is not supported"), "{err}");
    let (code, _, err) = virsh(&rw, &["attach-disk", "at", raw.to_str().unwrap(), "vdc", "--live"]);
    assert_eq!(code, 1);
    assert!(err.contains("domain is not running"), "{err}");
    let dev = d.tree.path("vdb.xml");
    std::fs::write(
        &dev,
        format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>\
             <target dev='vdb' bus='virtio'/><readonly/></disk>",
            qcow.display()
        ),
    )
    .unwrap();
    let (code, out, err) = virsh(&rw, &["attach-device", "at", dev.to_str().unwrap(), "--config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Device attached successfully"), "{out}");
    let (_, xml, _) = virsh(&rw, &["dumpxml", "at"]);
    assert!(xml.contains("slot='0x03'") && xml.contains("slot='0x04'") && xml.contains("<readonly/>"), "{xml}");
    let (_, list, _) = virsh(&rw, &["domblklist", "at"]);
    assert!(list.contains(&format!("vda      {}", raw.display())), "{list}");
    assert!(list.contains(&format!("vdb      {}", qcow.display())), "{list}");

    // Block info from the images themselves: a sparse raw file, a qcow2 image's virtual size.
    let (code, out, err) = virsh(&rw, &["domblkinfo", "at", "vda"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Capacity:       4194304") && out.contains("Physical:       4194304"), "{out}");
    let (_, out, _) = virsh(&rw, &["domblkinfo", "at", qcow.to_str().unwrap()]);
    assert!(out.contains("Capacity:       16777216"), "{out}");
    let physical = std::fs::metadata(&qcow).unwrap().len();
    assert!(out.contains(&format!("Physical:       {physical}")), "{out}");
    let (code, out, err) = virsh(&rw, &["domblkinfo", "at", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("vda") && out.contains("vdb") && out.contains("16777216"), "{out}");
    let (code, _, err) = virsh(&rw, &["domblkinfo", "at", "vdq"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid path vdq not assigned to domain"), "{err}");
    // The read-only socket may look.
    assert_eq!(virsh(&d.tree.sock("libvirt-sock-ro"), &["domblkinfo", "at", "vda"]).0, 0);
    let (code, out, err) = virsh(&d.tree.sock("libvirt-sock-ro"), &["domstats", "at", "--block"]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "block.count=2".to_string(),
        "block.0.name=vda".to_string(),
        format!("block.0.path={}", raw.display()),
        "block.0.capacity=4194304".to_string(),
        "block.1.name=vdb".to_string(),
        "block.1.capacity=16777216".to_string(),
    ] {
        assert!(out.contains(&line), "{line} missing from\n{out}");
    }
    // Counters and errors are a running guest's.
    let (code, _, err) = virsh(&rw, &["domblkstat", "at", "vda"]);
    assert_eq!(code, 1);
    assert!(err.contains("domain is not running"), "{err}");
    let (code, _, err) = virsh(&rw, &["domblkerror", "at"]);
    assert_eq!(code, 1);
    assert!(err.contains("domain is not running"), "{err}");

    let (code, out, err) = virsh(&rw, &["detach-disk", "at", "vda", "--config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Disk detached successfully"), "{out}");
    let (code, _, err) = virsh(&rw, &["detach-device-alias", "at", "virtio-disk9", "--config"]);
    assert_eq!(code, 1);
    assert!(err.contains("device not found: no device found with alias virtio-disk9"), "{err}");
    let (code, _, err) = virsh(&rw, &["detach-device-alias", "at", "virtio-disk1", "--config"]);
    assert_eq!(code, 0, "{err}");
    let (_, xml, _) = virsh(&rw, &["dumpxml", "at"]);
    assert!(!xml.contains("<disk"), "{xml}");
    // The stored definition has the change: a restarted daemon loads it.
    let stored = std::fs::read_to_string(d.tree.path("etc/qemu/at.xml")).unwrap();
    assert!(stored.contains("<name>at</name>") && !stored.contains("<disk"), "{stored}");
    assert!(d.tree.audit(&["op=attach", "vm=\"at\"", "res=success"], SECS).is_some());
    assert!(d.tree.audit(&["op=detach", "vm=\"at\"", "res=success"], SECS).is_some());
}

#[test]
fn a_running_guest_refuses_live_and_persistent_device_changes_with_a_clear_error() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    assert_eq!(define(&d, "rl", &test_guest_xml(&d, "rl", UUID_A)).0, 0);
    assert_eq!(virsh(&rw, &["start", "rl"]).0, 0);
    let img = d.tree.path("r.img");
    raw_image(&img, 1);
    let (code, _, err) = virsh(&rw, &["attach-disk", "rl", img.to_str().unwrap(), "vda", "--live"]);
    assert_eq!(code, 1);
    assert!(err.contains("Operation not supported: live attach of devices is not supported"), "{err}");
    let (code, _, err) = virsh(&rw, &["attach-disk", "rl", img.to_str().unwrap(), "vda", "--config"]);
    assert_eq!(code, 1);
    assert!(err.contains("Operation not supported: changing the persistent definition of a running domain"), "{err}");
    // No disks: nothing to report, at once.
    let (code, out, err) = virsh(&rw, &["domblkerror", "rl"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("No errors found"), "{out}");
    assert_eq!(virsh(&rw, &["destroy", "rl"]).0, 0);
}

/// FNV-1a 32 of `bytes`, as the test guest's `blkread` prints it.
fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The test guest's domain `name` with `disks`, driven through python-libvirt:
/// `script` runs after its console is open at the shell's prompt (`st`, and
/// `cmd(line, answer)` returning the guest's answer line).
fn drive_guest(d: &Daemon, name: &str, xml: &str, script: &str) -> String {
    let head = format!(
        "URI = {:?}\nNAME = {name:?}\nimport libvirt, sys\nlibvirt.registerErrorHandler(lambda *a: None, None)\n\
         conn = libvirt.open(URI)\n",
        uri(&d.tree.sock("libvirt-sock"))
    );
    let body = format!(
        r#"
{PY_UPTO}
dom = conn.defineXML({xml:?})
st = conn.newStream(0)
# Paused until the console is open: output with nobody attached is not kept.
dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
dom.openConsole(None, st, 0)
dom.resume()
print(upto(st, b"> ").decode(errors="replace"))
def cmd(line, answer):
    st.send(line.encode() + b"\r")
    upto(st, answer.encode())
    rest = upto(st, b"\r\n")
    upto(st, b"> ")
    return answer + rest[:-2].decode()
{script}
"#
    );
    run_python(d, &(head + &body), Duration::from_secs(120))
}

#[test]
fn the_guest_reads_and_writes_its_raw_and_qcow2_disks_and_the_counters_move() {
    let py = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    if !have_virsh() || !have_kvm() || !have_qemu_img() || !require(py, "python3-libvirt") {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let dir = d.tree.path("e2e");
    std::fs::create_dir(&dir).unwrap();
    // vda: raw, with a pattern the host wrote; vdb: qcow2 over a raw base; vdc: read-only raw.
    let raw = dir.join("vda.raw");
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i / 512 * 7 + i % 251) as u8).collect();
    std::fs::write(&raw, &pattern).unwrap();
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0x11u8; 1 << 20]).unwrap();
    let overlay = dir.join("vdb.qcow2");
    let (ok, text) = qemu_img(&["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay.to_str().unwrap()]);
    assert!(ok, "{text}");
    let ro = dir.join("vdc.raw");
    std::fs::write(&ro, vec![0x22u8; 1 << 20]).unwrap();
    let disks = raw_disk(&raw, "vda", "<serial>E2E-SERIAL</serial>")
        + &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='writeback'/>\
             <source file='{}'/><target dev='vdb' bus='virtio'/></disk>",
            overlay.display()
        )
        + &raw_disk(&ro, "vdc", "<readonly/>");
    let xml = with_disks(&test_guest_xml(&d, "e2e", UUID_A), &disks);
    let out = drive_guest(
        &d,
        "e2e",
        &xml,
        r#"
print(cmd("blkread 0 5", "BLKREAD "))
print(cmd("blkwrite 0 9 90", "BLKWRITE "))
print(cmd("blkflush 0", "BLKFLUSH "))
print(cmd("blkid 0", "BLKID "))
print(cmd("blkwrite 1 3 77", "BLKWRITE "))
print(cmd("blkflush 1", "BLKFLUSH "))
print(cmd("blkread 1 4", "BLKREAD "))
print(cmd("blkwrite 2 1 255", "BLKWRITE "))
print(cmd("blkread 2 1", "BLKREAD "))
"#,
    );
    for line in [
        "BLK vda SECTORS=2048",
        "BLK vdb SECTORS=2048",
        "BLK vdc SECTORS=2048",
        &format!("BLKREAD STATUS=0 SUM={}", fnv1a(&pattern[5 * 512..6 * 512])),
        "BLKWRITE STATUS=0",
        "BLKFLUSH STATUS=0",
        "BLKID STATUS=0 SERIAL=E2E-SERIAL",
        &format!("BLKREAD STATUS=0 SUM={}", fnv1a(&[0x11; 512])),
        // The read-only disk refuses the write; the guest answers on.
        "BLKWRITE STATUS=1",
        &format!("BLKREAD STATUS=0 SUM={}", fnv1a(&[0x22; 512])),
    ] {
        assert!(out.contains(line), "{line} missing from\n{out}");
    }
    // The guest's write is in the host's raw file, and nothing else changed.
    let after = std::fs::read(&raw).unwrap();
    assert!(after[9 * 512..10 * 512].iter().all(|b| *b == 90));
    assert_eq!(after[..9 * 512], pattern[..9 * 512]);
    assert_eq!(after[10 * 512..], pattern[10 * 512..]);
    assert!(std::fs::read(&ro).unwrap().iter().all(|b| *b == 0x22), "the read-only image changed");

    // The helper's counters, as libvirt names them.
    let (code, out, err) = virsh(&rw, &["domblkstat", "e2e", "vda"]);
    assert_eq!(code, 0, "{err}");
    for line in ["vda rd_req 1", "vda rd_bytes 512", "vda wr_req 1", "vda wr_bytes 512", "vda flush_operations 1"] {
        assert!(out.contains(line), "{line} missing from\n{out}");
    }
    let (_, out, _) = virsh(&d.tree.sock("libvirt-sock-ro"), &["domblkstat", "e2e", "vdc"]);
    assert!(out.contains("vdc wr_req 0") && out.contains("vdc errs 1"), "{out}");
    let (code, _, err) = virsh(&rw, &["domblkstat", "e2e", "vdq"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid path: vdq"), "{err}");
    let (code, out, err) = virsh(&rw, &["domblkerror", "e2e"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("No errors found"), "{out}");
    let (_, list, _) = virsh(&rw, &["domblklist", "e2e"]);
    assert!(list.contains(&format!("vdb      {}", overlay.display())), "{list}");

    assert_eq!(helpers(&d).len(), 1, "the running guest's helper is the daemon's child");
    assert_eq!(virsh(&rw, &["destroy", "e2e"]).0, 0);
    // The qcow2 overlay holds the write, is clean, and reads as the base with it; the base is untouched.
    // (Once the killed helper is gone: it holds the image's locks until then.)
    assert!(wait_until(SECS, || helpers(&d).is_empty()), "the helper lingers");
    let (ok, text) = qemu_img(&["check", overlay.to_str().unwrap()]);
    assert!(ok && text.contains("No errors were found"), "{text}");
    let mut expected = vec![0x11u8; 1 << 20];
    expected[3 * 512..4 * 512].fill(77);
    let want = dir.join("expected.raw");
    std::fs::write(&want, &expected).unwrap();
    let (ok, text) =
        qemu_img(&["compare", "-f", "qcow2", "-F", "raw", overlay.to_str().unwrap(), want.to_str().unwrap()]);
    assert!(ok && text.contains("Images are identical"), "{text}");
    assert!(std::fs::read(&base).unwrap().iter().all(|b| *b == 0x11), "the base changed");
}

/// Kills a process that outlived its parent when the test ends (or fails).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Kills the daemon under running guest `dom` (its one helper) and starts
/// it again, which re-attaches the helper: nobody's child now, so the
/// guard kills it whatever the test does. The helper's pid, and the guard.
fn reattached(d: &mut Daemon, rw: &std::path::Path, dom: &str) -> (i32, KillOnDrop) {
    let helper = helpers(d);
    assert_eq!(helper.len(), 1);
    let reaper = KillOnDrop(helper[0]);
    d.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(d.wait_exit(SECS).is_some());
    assert!(wait_until(SECS, || d.frontend_pid().is_none()));
    d.restart();
    assert_eq!(virsh(rw, &["domstate", dom]).1, "running\n\n");
    (helper[0], reaper)
}

#[test]
fn after_a_daemon_restart_the_helper_still_holds_its_images_and_answers_for_them() {
    if !have_virsh() || !have_kvm() || !have_qemu_img() {
        return;
    }
    let mut d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let img = d.tree.path("kept.img");
    raw_image(&img, 1);
    let a = with_disks(&test_guest_xml(&d, "ka", UUID_A), &raw_disk(&img, "vda", ""));
    assert_eq!(define(&d, "ka", &a).0, 0);
    assert_eq!(virsh(&rw, &["start", "ka"]).0, 0);
    let (_, _reaper) = reattached(&mut d, &rw, "ka");
    // The broker that re-attached did not reopen the image: the helper's
    // open file descriptions still hold QEMU's locks.
    let (ok, text) = qemu_io_write(&img);
    assert!(!ok && text.contains("Failed to get \"write\" lock"), "{text}");
    let b = with_disks(&test_guest_xml(&d, "kb", UUID_B), &raw_disk(&img, "vda", ""));
    assert_eq!(define(&d, "kb", &b).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "kb"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("disk 'vda': Failed to get \"write\" lock on '{}'", img.display())), "{err}");
    // The counters are still the helper's to give.
    let (code, out, err) = virsh(&rw, &["domblkstat", "ka", "vda"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("vda wr_req 0"), "{out}");
    assert_eq!(virsh(&rw, &["destroy", "ka"]).0, 0);
    // The helper gone, the image is free.
    assert!(wait_until(SECS, || qemu_io_write(&img).0));
}

/// Whether process `pid` is gone: absent, or a zombie (its fds, and with
/// them its image locks, closed).
fn gone(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    stat.rfind(')').and_then(|at| stat[at + 1..].split_whitespace().next()).is_none_or(|s| s == "Z" || s == "X")
}

/// `destroy` answers only once the helper is gone, and promptly: the
/// helper's exit itself wakes the broker (SIGCHLD for a helper it spawned,
/// a pidfd for one re-attached after a daemon restart, not its child), so
/// the answer waits neither on a timer nor for the 10 s bound.
#[test]
fn destroy_answers_promptly_once_the_helper_is_gone_spawned_or_re_attached() {
    if !have_virsh() || !have_kvm() {
        return;
    }
    const PROMPT: Duration = Duration::from_secs(3);
    let mut d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    assert_eq!(define(&d, "pa", &test_guest_xml(&d, "pa", UUID_A)).0, 0);
    // A helper the broker spawned, destroyed outright and gracefully.
    for destroy in [&["destroy", "pa"][..], &["destroy", "--graceful", "pa"]] {
        let (code, _, err) = virsh(&rw, &["start", "pa"]);
        assert_eq!(code, 0, "{err}");
        let helper = helpers(&d);
        assert_eq!(helper.len(), 1);
        let asked = std::time::Instant::now();
        let (code, _, err) = virsh(&rw, destroy);
        let took = asked.elapsed();
        assert_eq!(code, 0, "{destroy:?}: {err}");
        assert!(gone(helper[0]), "{destroy:?} answered before helper {} was gone", helper[0]);
        assert!(took < PROMPT, "{destroy:?} took {took:?}");
    }
    // A helper re-attached by a restarted daemon: nobody's child here.
    assert_eq!(virsh(&rw, &["start", "pa"]).0, 0);
    let (helper, _reaper) = reattached(&mut d, &rw, "pa");
    let asked = std::time::Instant::now();
    let (code, _, err) = virsh(&rw, &["destroy", "pa"]);
    let took = asked.elapsed();
    assert_eq!(code, 0, "{err}");
    assert!(gone(helper), "destroy answered before re-attached helper {helper} was gone");
    assert!(took < PROMPT, "destroy of a re-attached helper took {took:?}");
}
