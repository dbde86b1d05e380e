//! Debian's `virt-install` against the daemon: the domain XML it writes by
//! default (USB controllers, the `pc` machine, a host-passthrough CPU, its
//! clock and features), and the calls it makes to choose that XML
//! (`virConnectGetDomainCapabilities` among them), define and start the test
//! guest (issue 12, item 9).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn have_kvm() -> bool {
    require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm")
}

fn have_virt_install() -> bool {
    require(
        Command::new("virt-install").arg("--version").output().is_ok_and(|o| o.status.success()),
        "virt-install (virtinst)",
    )
}

/// Runs `virt-install ARGS` with its home, cache and config in `home` (it
/// writes a log under `~/.cache/virt-manager`), killed after `timeout`;
/// returns (exit code, stdout, stderr).
fn virt_install(home: &Path, args: &[&str], timeout: Duration) -> (i32, String, String) {
    std::fs::create_dir_all(home).unwrap();
    let mut child = Command::new("virt-install")
        .args(args)
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_RUNTIME_DIR", home)
        .env_remove("LIBVIRT_DEFAULT_URI")
        .env_remove("VIRSH_DEFAULT_CONNECT_URI")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("virt-install; tests/run installs virtinst");
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || read_all(out));
    let err = std::thread::spawn(move || read_all(err));
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("virt-install did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code().unwrap_or(-1), out.join().unwrap(), err.join().unwrap())
}

#[test]
fn virt_installs_default_import_defines_and_runs_the_guest() {
    if !have_virsh() || !have_virt_install() || !have_kvm() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let images = d.tree.path("guest");
    build_guest(&images);
    let boot = format!("kernel={},kernel_args=console=ttyS0", images.join("vmlinuz").display());
    let connect = uri(&rw);
    let home = d.tree.path("home");
    #[rustfmt::skip]
    let args = [
        "--connect", &connect,
        "--import", "--name", "t", "--memory", "128", "--vcpus", "1",
        "--boot", &boot,
        "--disk", "none", "--network", "none", "--graphics", "none", "--noautoconsole",
        "--osinfo", "detect=off,require=off",
    ];
    let (code, out, err) = virt_install(&home, &args, Duration::from_secs(120));
    assert_eq!(code, 0, "virt-install failed:\n{out}\n{err}\n{}", d.stderr());
    assert!(out.contains("Domain creation completed."), "{out}");

    // It created the guest (virDomainCreateXML), then made it persistent
    // (virDomainDefineXML): a running, persistent domain.
    assert_eq!(virsh(&rw, &["domstate", "--reason", "t"]).1, "running (booted)\n\n");
    let (_, info, _) = virsh(&rw, &["dominfo", "t"]);
    assert!(info.contains("Persistent:     yes\n"), "{info}");
    // What it wrote is kept and written back.
    let (_, xml, _) = virsh(&rw, &["dumpxml", "t"]);
    for kept in [
        "<type arch='x86_64' machine='pc'>hvm</type>",
        "<cpu mode='host-passthrough'/>",
        "<timer name='hpet' present='no'/>",
        "<controller type='usb' model='ich9-ehci1'/>",
        "<console type='pty'>",
    ] {
        assert!(xml.contains(kept), "{kept} missing from\n{xml}");
    }
    // The guest's own shell answers on its console.
    let echo = Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console.py"))
        .args([connect.as_str(), "t", "echo"])
        .env("HOME", &home)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&echo.stdout);
    assert!(echo.status.success(), "{text}{}\n{}", String::from_utf8_lossy(&echo.stderr), d.stderr());
    assert_eq!(text, "echoed: 0\n");
    // virt-install kept its log in the test's tree, not the user's home.
    assert!(home.join(".cache/virt-manager/virt-install.log").is_file());

    assert_eq!(virsh(&rw, &["destroy", "t"]).0, 0);
    assert_eq!(virsh(&rw, &["domstate", "t"]).1, "shut off\n\n");
}

#[test]
fn domain_capabilities_describe_what_a_guest_gets_here() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let (code, caps, err) = virsh(&rw, &["domcapabilities"]);
    assert_eq!(code, 0, "{err}");
    assert!(caps.contains("<machine>pc</machine>") && caps.contains("<domain>kvm</domain>"), "{caps}");
    assert!(caps.contains("<mode name='host-passthrough' supported='yes'>"), "{caps}");
    assert!(caps.contains("<mode name='host-model' supported='no'/>"), "{caps}");
    assert!(caps.contains("<loader supported='no'/>") && caps.contains("<graphics supported='no'/>"), "{caps}");
    // Disks are virtio-blk, and nothing else.
    let disk = caps.split("<disk supported='yes'>").nth(1).and_then(|s| s.split("</disk>").next()).unwrap_or("");
    assert!(disk.contains("<enum name='bus'>\n        <value>virtio</value>\n      </enum>"), "{caps}");
    assert!(disk.contains("<enum name='diskDevice'>\n        <value>disk</value>\n      </enum>"), "{caps}");
    let (code, caps, _) = virsh(&rw, &["domcapabilities", "--machine", "q35", "--virttype", "kvm"]);
    assert_eq!(code, 0);
    assert!(caps.contains("<machine>q35</machine>"), "{caps}");
    // Both names are listed as the guest machines of capabilities.
    let (_, host, _) = virsh(&rw, &["capabilities"]);
    assert!(host.contains(">pc</machine>") && host.contains(">q35</machine>"), "{host}");

    let (code, _, err) = virsh(&rw, &["domcapabilities", "--machine", "microvm"]);
    assert_eq!(code, 1);
    assert!(err.contains("unsupported configuration: machine type 'microvm' is not supported"), "{err}");
    // No emulator is ever run, or even looked at.
    let (code, _, err) = virsh(&rw, &["domcapabilities", "--emulatorbin", "/bin/true"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid argument: this daemon runs guests without an emulator binary"), "{err}");
    // As in libvirt, read-only clients may not ask.
    let (code, _, err) = virsh(&d.tree.sock("libvirt-sock-ro"), &["domcapabilities"]);
    assert_eq!(code, 1);
    assert!(err.contains("read only access prevents virConnectGetDomainCapabilities"), "{err}");
}
