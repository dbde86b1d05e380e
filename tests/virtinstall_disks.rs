//! Debian's `virt-install` installing guests with disks against the daemon
//! (issue 15, its last storage item): `--import` of an existing qcow2 image
//! and `--disk size=1` making a new volume in the `default` pool, each
//! defined AND started, and the running test guest reading the last sector
//! of its disk and failing one past its end.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn have_tools() -> bool {
    let ok = |cmd: &str, arg: &str| Command::new(cmd).arg(arg).output().is_ok_and(|o| o.status.success());
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    have_virsh()
        && require(kvm, "/dev/kvm")
        && require(ok("virt-install", "--version"), "virt-install (virtinst)")
        && require(ok("qemu-img", "--version"), "qemu-img (qemu-utils)")
        && require(python_libvirt(), "python3-libvirt")
        && require(is_root(), "root (a private mount namespace)")
}

fn python_libvirt() -> bool {
    Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success())
}

/// Runs virt-install with its home in the test's tree; panics with its
/// output and the daemon's log when it fails.
fn virt_install(d: &Daemon, args: &[&str]) -> String {
    let home = d.tree.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut child = Command::new("virt-install")
        .args(["--connect", &uri(&d.tree.sock("libvirt-sock"))])
        .args(args)
        .args(["--memory", "128", "--vcpus", "1", "--network", "none", "--graphics", "none"])
        // linux2022 knows virtio-blk (generic OS gets an IDE disk); no
        // qemu-ga channel (virtio-serial), no virtio balloon, no virtio-rng: the helper
        // has neither, and the daemon refuses them rather than drop them.
        .args([
            "--noautoconsole",
            "--osinfo",
            "linux2022",
            "--channel",
            "none",
            "--memballoon",
            "none",
            "--rng",
            "none",
        ])
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env_remove("LIBVIRT_DEFAULT_URI")
        .env_remove("VIRSH_DEFAULT_CONNECT_URI")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("virt-install");
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || read_all(out));
    let err = std::thread::spawn(move || read_all(err));
    let status = wait_or_kill(&mut child, Duration::from_secs(120));
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.is_some_and(|s| s.success()), "virt-install {args:?}: {status:?}\n{out}\n{err}\n{}", d.stderr());
    assert!(out.contains("Domain creation completed."), "{out}");
    out
}

/// Asks the running guest `name`, through its shell on the console, to read
/// sector `last` of its first disk and the one after it (virt-install started
/// it before anyone listened, so its `BLK vda` boot line is gone): the
/// guest's answers, one a line.
fn guest_reads_around(d: &Daemon, name: &str, last: u64) -> String {
    let program = format!(
        r#"
import libvirt, sys
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open({uri:?})
dom = conn.lookupByName({name:?})
{PY_UPTO}
st = conn.newStream(0)
dom.openConsole(None, st, 0)
for sector in ({last}, {last} + 1):
    st.send(b"blkread 0 %d\r" % sector)
    upto(st, b"BLKREAD ")
    print("BLKREAD " + upto(st, b"\r\n").decode(errors="replace").strip())
st.abort()
"#,
        uri = uri(&d.tree.sock("libvirt-sock"))
    );
    run_python(d, &program, Duration::from_secs(90))
}

/// `qemu-img check` of `image` finds it clean, once the destroyed guest's
/// helper has exited and let go of its lock.
fn checks_clean(image: &Path) -> bool {
    wait_until(Duration::from_secs(10), || {
        Command::new("qemu-img")
            .args(["check", image.to_str().unwrap()])
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("No errors were found"))
    })
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn guest_kernel(d: &Daemon) -> PathBuf {
    let dir = d.tree.path("guest");
    build_guest(&dir);
    dir.join("vmlinuz")
}

fn boot_arg(kernel: &Path) -> String {
    format!("kernel={},kernel_args=console=ttyS0", kernel.display())
}

#[test]
fn virt_install_imports_a_qcow2_image_and_the_guest_sees_it() {
    if !have_tools() {
        return;
    }
    let d = common::daemon_with_private_var_lib();
    let rw = d.tree.sock("libvirt-sock");
    let boot = boot_arg(&guest_kernel(&d));
    let images = d.tree.path("images");
    std::fs::create_dir(&images).unwrap();
    let image = images.join("imp.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "4M"]);
    let disk = format!("path={},format=qcow2", image.display());
    virt_install(&d, &["--import", "--name", "imp", "--boot", &boot, "--disk", &disk]);

    assert_eq!(virsh(&rw, &["domstate", "imp"]).1, "running\n\n");
    let (_, info, _) = virsh(&rw, &["dominfo", "imp"]);
    assert!(info.contains("Persistent:     yes\n"), "{info}");
    let (_, xml, _) = virsh(&rw, &["dumpxml", "imp"]);
    assert!(xml.contains(&format!("<source file='{}'", image.display())), "{xml}");
    assert!(xml.contains("<target dev='vda' bus='virtio'/>"), "{xml}");
    assert!(xml.contains("type='qcow2'"), "{xml}");
    // 4 MiB: its last sector reads, the one past its end does not.
    let text = guest_reads_around(&d, "imp", 8191);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() == 2 && lines[0].starts_with("BLKREAD STATUS=0 SUM="), "{text}");
    assert!(lines[1].starts_with("BLKREAD STATUS=") && !lines[1].starts_with("BLKREAD STATUS=0"), "{text}");
    assert_eq!(virsh(&rw, &["destroy", "imp"]).0, 0);
    assert!(checks_clean(&image));
}

#[test]
fn virt_install_makes_a_volume_in_the_default_pool_and_the_guest_sees_it() {
    if !have_tools() {
        return;
    }
    let d = common::daemon_with_private_var_lib();
    let rw = d.tree.sock("libvirt-sock");
    let boot = boot_arg(&guest_kernel(&d));
    virt_install(&d, &["--import", "--name", "vi", "--boot", &boot, "--disk", "size=1"]);

    assert_eq!(virsh(&rw, &["domstate", "vi"]).1, "running\n\n");
    let (_, xml, _) = virsh(&rw, &["dumpxml", "vi"]);
    assert!(xml.contains("<source file='/var/lib/libvirt/images/vi.qcow2'"), "{xml}");
    assert!(xml.contains("<target dev='vda' bus='virtio'/>"), "{xml}");
    let vol = virsh(&rw, &["vol-info", "vi.qcow2", "--pool", "default"]).1;
    assert!(vol.contains("Capacity:       1.00 GiB"), "{vol}");
    let text = guest_reads_around(&d, "vi", (1 << 30) / 512 - 1);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() == 2 && lines[0].starts_with("BLKREAD STATUS=0 SUM="), "{text}");
    assert!(lines[1].starts_with("BLKREAD STATUS=") && !lines[1].starts_with("BLKREAD STATUS=0"), "{text}");
    assert_eq!(virsh(&rw, &["destroy", "vi"]).0, 0);
    let inside = Path::new("/proc").join(d.pid.to_string()).join("root/var/lib/libvirt/images/vi.qcow2");
    assert!(checks_clean(&inside));
    assert!(!Path::new("/var/lib/libvirt/images/vi.qcow2").exists(), "the host's /var/lib was touched");
}
