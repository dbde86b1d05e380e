//! libvirt's storage driver for directory pools, driven by the stock `virsh`
//! and `virt-install` (issue 15): pools defined, built, started, persisted and
//! autostarted across a daemon restart; raw and qcow2 volumes that
//! `qemu-img` finds clean; volume streams whose bytes flow through the
//! frontend, not the broker; the read-only socket; libvirt's errors.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const SECS: Duration = Duration::from_secs(10);

fn have_qemu_img() -> bool {
    require(
        Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success()),
        "qemu-img (qemu-utils)",
    )
}

/// `virsh ARGS` that must succeed; its stdout.
fn ok(sock: &Path, args: &[&str]) -> String {
    let (code, out, err) = virsh(sock, args);
    assert_eq!(code, 0, "virsh {args:?} failed: {err}");
    out
}

/// `virsh ARGS` that must fail; its stderr.
fn fails(sock: &Path, args: &[&str]) -> String {
    let (code, out, err) = virsh(sock, args);
    assert_ne!(code, 0, "virsh {args:?} succeeded: {out}");
    err
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A daemon with a running, autostarted pool `p` at `<tree>/images`.
fn daemon_with_pool() -> (Daemon, std::path::PathBuf) {
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let images = d.tree.path("images");
    let target = images.to_str().unwrap();
    assert_eq!(ok(&rw, &["pool-define-as", "p", "dir", "--target", target]).trim(), "Pool p defined");
    ok(&rw, &["pool-build", "p"]);
    ok(&rw, &["pool-start", "p"]);
    ok(&rw, &["pool-autostart", "p"]);
    (d, images)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

#[test]
fn pools_persist_as_libvirt_lays_them_out_and_autostart_after_a_restart() {
    if !have_virsh() {
        return;
    }
    let (mut d, images) = daemon_with_pool();
    let rw = d.tree.sock("libvirt-sock");
    assert!(images.is_dir());
    let storage = d.tree.path("etc/storage");
    let saved = std::fs::read_to_string(storage.join("p.xml")).unwrap();
    assert!(saved.contains(&format!("<path>{}</path>", images.display())), "{saved}");
    let link = std::fs::read_link(storage.join("autostart/p.xml")).unwrap();
    assert_eq!(link, storage.join("p.xml"));
    let list = ok(&rw, &["pool-list", "--all", "--details"]);
    assert!(list.lines().any(|l| l.split_whitespace().take(4).eq(["p", "running", "yes", "yes"])), "{list}");
    let info = ok(&rw, &["pool-info", "p"]);
    assert!(info.contains("State:          running"), "{info}");
    let uuid = ok(&rw, &["pool-uuid", "p"]).trim().to_owned();
    assert_eq!(ok(&rw, &["pool-name", &uuid]).trim(), "p");
    let xml = ok(&rw, &["pool-dumpxml", "p"]);
    assert!(xml.starts_with("<pool type='dir'>\n  <name>p</name>\n"), "{xml}");
    assert!(!xml.contains("<capacity unit='bytes'>0</capacity>"), "a running pool has its sizes: {xml}");
    assert!(xml.contains("<mode>0711</mode>\n      <owner>0</owner>"), "pool-build's directory, as it is: {xml}");
    let caps = ok(&rw, &["pool-capabilities"]);
    assert!(
        caps.contains("<pool type='dir' supported='yes'>") && caps.contains("<pool type='logical' supported='no'/>")
    );
    // A transient pool is not saved and is gone once destroyed.
    let t = d.tree.path("transient");
    ok(&rw, &["pool-create-as", "t", "dir", "--target", t.to_str().unwrap(), "--build"]);
    assert!(!storage.join("t.xml").exists());
    assert!(ok(&rw, &["pool-list", "--transient"]).contains(" t "));

    // Across a restart: still running (its record), still autostarted; the transient one too.
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(SECS).is_some_and(|s| s.success()));
    d.restart();
    let list = ok(&rw, &["pool-list", "--all"]);
    assert!(list.lines().any(|l| l.split_whitespace().eq(["p", "active", "yes"])), "{list}");
    assert!(list.lines().any(|l| l.split_whitespace().eq(["t", "active", "no"])), "{list}");
    ok(&rw, &["pool-destroy", "t"]);
    assert!(fails(&rw, &["pool-info", "t"]).contains("Storage pool not found"));
    // Stopped, then a restart: autostart starts it again.
    ok(&rw, &["pool-destroy", "p"]);
    assert!(ok(&rw, &["pool-list", "--inactive"]).contains(" p "));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(SECS).is_some_and(|s| s.success()));
    d.restart();
    assert!(ok(&rw, &["pool-info", "p"]).contains("State:          running"));
    // Without autostart it stays down; undefined, its files are gone.
    ok(&rw, &["pool-autostart", "p", "--disable"]);
    assert!(!storage.join("autostart/p.xml").exists());
    ok(&rw, &["pool-destroy", "p"]);
    ok(&rw, &["pool-undefine", "p"]);
    assert!(!storage.join("p.xml").exists());
    assert!(images.is_dir(), "undefine leaves the directory");
    ok(&rw, &["pool-define-as", "p", "dir", "--target", images.to_str().unwrap()]);
    ok(&rw, &["pool-delete", "p"]);
    assert!(!images.exists());
}

#[test]
fn raw_and_qcow2_volumes_are_created_inspected_copied_resized_wiped_and_deleted() {
    if !have_virsh() || !have_qemu_img() {
        return;
    }
    let (d, images) = daemon_with_pool();
    let rw = d.tree.sock("libvirt-sock");
    assert_eq!(ok(&rw, &["vol-create-as", "p", "base.img", "64M"]).trim(), "Vol base.img created");
    // Audited with the client's identity and the pool.
    assert!(d.tree.audit(&["op=vol-create", "storage=\"p\"", "uid=0", "res=success"], SECS).is_some());
    let base = images.join("base.img");
    let meta = std::fs::metadata(&base).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 20, "a new raw volume is sparse");
    let args = ["vol-create-as", "p", "ov.qcow2", "1G", "--format", "qcow2"];
    ok(&rw, &[&args[..], &["--backing-vol", "base.img", "--backing-vol-format", "raw"]].concat());
    let ov = images.join("ov.qcow2");
    assert!(qemu_img(&["check", ov.to_str().unwrap()]).contains("No errors were found"));
    let info = qemu_img(&["info", ov.to_str().unwrap()]);
    assert!(info.contains(&format!("backing file: {}\n", base.display())), "{info}");
    assert!(info.contains("backing file format: raw") && info.contains("virtual size: 1 GiB"), "{info}");

    let xml = ok(&rw, &["vol-dumpxml", "ov.qcow2", "--pool", "p"]);
    for want in [
        "<volume type='file'>\n  <name>ov.qcow2</name>\n".to_owned(),
        format!("<key>{}</key>", ov.display()),
        "<capacity unit='bytes'>1073741824</capacity>".into(),
        "<physical unit='bytes'>".into(),
        "<format type='qcow2'/>".into(),
        "<mode>0600</mode>".into(),
        format!("<backingStore>\n    <path>{}</path>\n    <format type='raw'/>", base.display()),
    ] {
        assert!(xml.contains(&want), "{want} not in\n{xml}");
    }
    let list = ok(&rw, &["vol-list", "p", "--details"]);
    assert!(
        list.lines().any(|l| l.split_whitespace().take(5).eq([
            "ov.qcow2",
            ov.to_str().unwrap(),
            "file",
            "1.00",
            "GiB"
        ])),
        "{list}"
    );
    let vinfo = ok(&rw, &["vol-info", "base.img", "--pool", "p"]);
    assert!(vinfo.contains("Capacity:       64.00 MiB"), "{vinfo}");
    let path = ok(&rw, &["vol-path", "base.img", "--pool", "p"]);
    assert_eq!(path.trim(), base.to_str().unwrap());
    assert_eq!(ok(&rw, &["vol-key", "base.img", "--pool", "p"]).trim(), base.to_str().unwrap());
    assert_eq!(ok(&rw, &["vol-name", base.to_str().unwrap()]).trim(), "base.img");
    assert_eq!(ok(&rw, &["vol-pool", base.to_str().unwrap()]).trim(), "p");

    // Copies: a raw clone, and a qcow2 made from the raw volume.
    std::fs::write(d.tree.path("pattern"), vec![0x5a; 1 << 20]).unwrap();
    ok(&rw, &["vol-upload", "base.img", d.tree.path("pattern").to_str().unwrap(), "--pool", "p"]);
    ok(&rw, &["vol-clone", "base.img", "copy.img", "--pool", "p"]);
    assert_eq!(sha256(&images.join("copy.img")), sha256(&base));
    let from = d.tree.path("from.xml");
    std::fs::write(&from, "<volume><name>from.qcow2</name><target><format type='qcow2'/></target></volume>").unwrap();
    ok(&rw, &["vol-create-from", "p", from.to_str().unwrap(), "base.img", "--inputpool", "p"]);
    let fq = images.join("from.qcow2");
    assert!(qemu_img(&["check", fq.to_str().unwrap()]).contains("No errors were found"));
    let cmp = Command::new("qemu-img").args(["compare", fq.to_str().unwrap(), base.to_str().unwrap()]).output();
    assert!(cmp.unwrap().status.success(), "the qcow2 copy holds the raw volume's bytes");

    // Resize: grows, refuses to shrink without --shrink.
    ok(&rw, &["vol-resize", "copy.img", "128M", "--pool", "p"]);
    assert_eq!(std::fs::metadata(images.join("copy.img")).unwrap().len(), 128 << 20);
    assert!(fails(&rw, &["vol-resize", "copy.img", "1M", "--pool", "p"]).contains("Can't shrink capacity"));
    ok(&rw, &["vol-resize", "ov.qcow2", "2G", "--pool", "p"]);
    assert!(qemu_img(&["info", ov.to_str().unwrap()]).contains("virtual size: 2 GiB"));
    // Wipe: a raw volume reads as zeroes; a qcow2 one keeps its size and backing file.
    ok(&rw, &["vol-wipe", "copy.img", "--pool", "p"]);
    let wiped = std::fs::read(images.join("copy.img")).unwrap();
    assert!(wiped.len() == 128 << 20 && wiped.iter().all(|b| *b == 0));
    ok(&rw, &["vol-wipe", "ov.qcow2", "--pool", "p"]);
    let info = qemu_img(&["info", ov.to_str().unwrap()]);
    assert!(info.contains("virtual size: 2 GiB") && info.contains("backing file: "), "{info}");
    assert!(qemu_img(&["check", ov.to_str().unwrap()]).contains("No errors were found"));
    // Delete.
    ok(&rw, &["vol-delete", "copy.img", "--pool", "p"]);
    assert!(!images.join("copy.img").exists());
    assert!(fails(&rw, &["vol-info", "copy.img", "--pool", "p"]).contains("Storage volume not found"));
}

#[test]
fn a_large_copy_runs_off_the_loop_and_read_only_clients_are_served_meanwhile() {
    if !have_virsh() || !have_qemu_img() {
        return;
    }
    let (d, images) = daemon_with_pool();
    let (rw, ro) = (d.tree.sock("libvirt-sock"), d.tree.sock("libvirt-sock-ro"));
    // 1 GiB of data that is not zeroes (qemu-img skips zeroes), made a
    // qcow2 copy of: seconds of work for qemu-img.
    let big = images.join("big.img");
    {
        let mut f = std::fs::File::create(&big).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1).collect();
        for _ in 0..1024 {
            std::io::Write::write_all(&mut f, &chunk).unwrap();
        }
    }
    ok(&rw, &["pool-refresh", "p"]);
    let from = d.tree.path("big-copy.xml");
    std::fs::write(&from, "<volume><name>big.qcow2</name><target><format type='qcow2'/></target></volume>").unwrap();
    let mut copy = Command::new("virsh")
        .args(["-c", &uri(&rw), "vol-create-from", "p", from.to_str().unwrap(), "big.img", "--inputpool", "p"])
        .env_remove("LIBVIRT_DEFAULT_URI")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The copy has begun once its file exists.
    assert!(wait_until(SECS, || images.join("big.qcow2").exists()), "no copy under way");
    let started = std::time::Instant::now();
    let listed = virsh_within(&ro, &["list", "--all"], SECS);
    let took = started.elapsed();
    let copying = copy.try_wait().unwrap().is_none();
    assert!(listed.is_some_and(|(code, _, _)| code == 0), "a read-only list did not answer within {SECS:?}");
    assert!(copying, "the copy ended before the list answered ({took:?}): nothing shows the loop was free");
    // A read-write call on another connection is served meanwhile too.
    assert!(ok(&rw, &["pool-list", "--all"]).contains(" p "));
    let out = copy.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Vol big.qcow2 created from input vol big.img"));
    let copied = images.join("big.qcow2");
    let cmp = Command::new("qemu-img").args(["compare", copied.to_str().unwrap(), big.to_str().unwrap()]).output();
    assert!(cmp.unwrap().status.success(), "the copy holds the volume's bytes");
    assert!(d.tree.audit(&["op=vol-clone", "storage=\"p\"", "res=success"], SECS).is_some());
    // A copy refused before it starts (the target exists) is answered at once.
    let err = fails(&rw, &["vol-create-from", "p", from.to_str().unwrap(), "big.img", "--inputpool", "p"]);
    assert!(err.contains("already exists"), "{err}");
}

/// rchar + wchar of a process: every byte it read or wrote, files and sockets alike.
fn io_bytes(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .filter(|l| l.starts_with("rchar:") || l.starts_with("wchar:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

#[test]
fn volume_upload_and_download_stream_through_the_frontend_not_the_broker() {
    if !have_virsh() {
        return;
    }
    let (d, images) = daemon_with_pool();
    let rw = d.tree.sock("libvirt-sock");
    ok(&rw, &["vol-create-as", "p", "data.img", "4M"]);
    let up = d.tree.path("up.bin");
    let random: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&up, &random).unwrap();
    let broker_before = io_bytes(d.pid);
    let frontend = d.frontend_pid().unwrap();
    let frontend_before = io_bytes(frontend);
    let started = std::time::Instant::now();
    ok(&rw, &["vol-upload", "data.img", up.to_str().unwrap(), "--pool", "p"]);
    let uploaded = started.elapsed();
    let down = d.tree.path("down.bin");
    let started = std::time::Instant::now();
    ok(&rw, &["vol-download", "data.img", down.to_str().unwrap(), "--pool", "p"]);
    let downloaded = started.elapsed();
    eprintln!("4 MiB: vol-upload {uploaded:?}, vol-download {downloaded:?}");
    assert_eq!(sha256(&up), sha256(&images.join("data.img")));
    assert_eq!(sha256(&up), sha256(&down));
    // 8 MiB went through the frontend's file reads and writes (its socket
    // I/O is not all counted in rchar/wchar); the broker saw only the calls.
    let (broker, front) = (io_bytes(d.pid) - broker_before, io_bytes(frontend) - frontend_before);
    assert!(front >= 8 << 20, "frontend moved {front} bytes");
    assert!(broker < 1 << 20, "broker moved {broker} bytes of a volume stream");
    // A part, at an offset.
    let part = d.tree.path("part.bin");
    ok(
        &rw,
        &["vol-download", "data.img", part.to_str().unwrap(), "--pool", "p", "--offset", "1000", "--length", "5000"],
    );
    assert_eq!(std::fs::read(&part).unwrap(), &random[1000..6000]);
    // An upload at an offset writes there and only there.
    std::fs::write(&part, b"hello").unwrap();
    ok(&rw, &["vol-upload", "data.img", part.to_str().unwrap(), "--pool", "p", "--offset", "10"]);
    let now = std::fs::read(images.join("data.img")).unwrap();
    assert_eq!(&now[10..15], b"hello");
    assert_eq!(&now[..10], &random[..10]);
    assert_eq!(&now[15..], &random[15..]);
}

#[test]
fn the_read_only_socket_lists_and_inspects_but_changes_nothing() {
    if !have_virsh() {
        return;
    }
    let (d, images) = daemon_with_pool();
    let (rw, ro) = (d.tree.sock("libvirt-sock"), d.tree.sock("libvirt-sock-ro"));
    ok(&rw, &["vol-create-as", "p", "v.img", "1M"]);
    assert!(ok(&ro, &["pool-list", "--all"]).contains(" p "));
    assert!(ok(&ro, &["pool-info", "p"]).contains("running"));
    assert!(ok(&ro, &["pool-dumpxml", "p"]).contains("<name>p</name>"));
    assert!(ok(&ro, &["vol-list", "p"]).contains("v.img"));
    assert!(ok(&ro, &["vol-dumpxml", "v.img", "--pool", "p"]).contains("<name>v.img</name>"));
    let v = images.join("v.img");
    assert_eq!(ok(&ro, &["vol-name", v.to_str().unwrap()]).trim(), "v.img");
    let file = d.tree.path("f");
    std::fs::write(&file, b"x").unwrap();
    let f = file.to_str().unwrap();
    let target = d.tree.path("q");
    for (args, api) in [
        (vec!["pool-define-as", "q", "dir", "--target", target.to_str().unwrap()], "virStoragePoolDefineXML"),
        (vec!["pool-destroy", "p"], "virStoragePoolDestroy"),
        (vec!["pool-refresh", "p"], "virStoragePoolRefresh"),
        (vec!["pool-autostart", "p", "--disable"], "virStoragePoolSetAutostart"),
        (vec!["vol-create-as", "p", "w.img", "1M"], "virStorageVolCreateXML"),
        (vec!["vol-delete", "v.img", "--pool", "p"], "virStorageVolDelete"),
        (vec!["vol-resize", "v.img", "2M", "--pool", "p"], "virStorageVolResize"),
        (vec!["vol-wipe", "v.img", "--pool", "p"], "virStorageVolWipe"),
        (vec!["vol-upload", "v.img", f, "--pool", "p"], "virStorageVolUpload"),
        (vec!["vol-download", "v.img", f, "--pool", "p"], "virStorageVolDownload"),
    ] {
        let err = fails(&ro, &args);
        assert!(err.contains(&format!("operation forbidden: read only access prevents {api}")), "{args:?}: {err}");
    }
    assert_eq!(std::fs::metadata(&v).unwrap().len(), 1 << 20);
    assert!(!images.join("w.img").exists() && !target.exists());
    assert!(d.tree.audit(&["op=denied", "api=\"virStorageVolDelete\"", "res=failed"], SECS).is_some());
    assert!(ok(&rw, &["pool-info", "p"]).contains("running"));
}

#[test]
fn storage_errors_are_libvirts() {
    if !have_virsh() {
        return;
    }
    let (d, images) = daemon_with_pool();
    let rw = d.tree.sock("libvirt-sock");
    let missing = d.tree.path("missing");
    let m = missing.to_str().unwrap();
    ok(&rw, &["pool-define-as", "m", "dir", "--target", m]);
    let err = fails(&rw, &["pool-start", "m"]);
    assert!(err.contains(&format!("cannot open directory '{m}': No such file or directory")), "{err}");
    assert!(
        fails(&rw, &["pool-define-as", "other", "dir", "--target", images.to_str().unwrap()])
            .contains("Storage source conflict with pool: 'p'")
    );
    let xml = d.tree.path("dup.xml");
    std::fs::write(&xml, format!("<pool type='dir'><name>p</name><uuid>00000000-0000-0000-0000-000000000001</uuid><target><path>{m}2</path></target></pool>")).unwrap();
    assert!(
        fails(&rw, &["pool-define", xml.to_str().unwrap()])
            .contains("operation failed: pool 'p' already exists with uuid")
    );
    assert!(fails(&rw, &["pool-undefine", "p"]).contains("storage pool 'p' is still active"));
    assert!(fails(&rw, &["pool-start", "p"]).contains("storage pool 'p' is already active"));
    let err = fails(&rw, &["pool-define-as", "vg", "logical", "--source-name", "vg", "--target", "/dev/vg"]);
    assert!(err.contains("missing backend for pool type 3 (logical)"), "{err}");
    let err = fails(
        &rw,
        &[
            "pool-define-as",
            "i",
            "iscsi",
            "--source-host",
            "h",
            "--source-dev",
            "iqn.x",
            "--target",
            "/dev/disk/by-path",
        ],
    );
    assert!(err.contains("(iscsi)"), "{err}");
    assert!(
        fails(&rw, &["pool-info", "nope"])
            .contains("Storage pool not found: no storage pool with matching name 'nope'")
    );

    ok(&rw, &["vol-create-as", "p", "v.img", "1M"]);
    assert!(fails(&rw, &["vol-create-as", "p", "v.img", "1M"]).contains("storage volume already exists"));
    for name in ["../escape.img", "..", "."] {
        let err = fails(&rw, &["vol-create-as", "p", name, "1M"]);
        assert!(err.contains("invalid argument: volume name"), "{name}: {err}");
    }
    assert!(!d.tree.path("escape.img").exists());
    // A file beside the pool is no volume of it, whatever path names it.
    std::fs::write(d.tree.path("outside.img"), b"x").unwrap();
    let dotted = format!("{}/../outside.img", images.display());
    assert!(fails(&rw, &["vol-info", &dotted]).contains("Storage volume not found"));
    // A symlink in the pool is not a volume either.
    std::os::unix::fs::symlink(d.tree.path("outside.img"), images.join("link.img")).unwrap();
    assert!(!ok(&rw, &["vol-list", "p"]).contains("link.img"));
    assert!(fails(&rw, &["vol-download", "link.img", "/dev/null", "--pool", "p"]).contains("Storage volume not found"));
    // virsh tries the name, then the key, then the path: the last one's error is shown.
    let err = fails(&rw, &["vol-info", "none.img", "--pool", "p"]);
    assert!(err.contains("Storage volume not found: no storage vol with matching path 'none.img'"), "{err}");
    ok(&rw, &["pool-destroy", "p"]);
    assert!(fails(&rw, &["vol-list", "p"]).contains("storage pool 'p' is not active"));
}

#[test]
fn pool_lifecycle_events_reach_a_registered_virsh() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let watcher = Command::new("virsh")
        .args(["-c", &uri(&rw), "pool-event", "--event", "lifecycle", "--loop", "--timeout", "6"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let t = d.tree.path("t");
    ok(&rw, &["pool-define-as", "t", "dir", "--target", t.to_str().unwrap()]);
    ok(&rw, &["pool-build", "t"]);
    ok(&rw, &["pool-start", "t"]);
    ok(&rw, &["pool-destroy", "t"]);
    ok(&rw, &["pool-undefine", "t"]);
    let out = read_all(watcher.wait_with_output().unwrap().stdout.as_slice());
    let events: Vec<&str> =
        out.lines().filter_map(|l| l.strip_prefix("event 'lifecycle' for storage pool t: ")).collect();
    assert_eq!(events, ["Defined", "Created", "Started", "Stopped", "Undefined"], "{out}");
}

#[test]
fn virt_install_creates_the_default_pool_and_a_volume_in_it() {
    if !have_virsh() || !have_qemu_img() {
        return;
    }
    let have = Command::new("virt-install").arg("--version").output().is_ok_and(|o| o.status.success());
    if !require(have, "virt-install (virtinst)") || !require(is_root(), "root (a private mount namespace)") {
        return;
    }
    // virt-install puts the system default pool at /var/lib/libvirt/images:
    // the daemon runs in a mount namespace of its own with a tmpfs on
    // /var/lib, so the host's is never touched.
    let mut d = common::daemon_with_private_var_lib();
    let rw = d.tree.sock("libvirt-sock");
    let home = d.tree.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let connect = uri(&rw);
    let kernel = d.tree.path("vmlinuz");
    std::fs::write(&kernel, b"").unwrap();
    let boot = format!("kernel={},kernel_args=console=ttyS0", kernel.display());
    let run = |disk: &str| {
        let out = Command::new("virt-install")
            .args(["--connect", &connect, "--name", "vi", "--memory", "128", "--vcpus", "1"])
            .args(["--boot", &boot, "--disk", disk])
            .args(["--network", "none", "--graphics", "none", "--noautoconsole"])
            .args(["--osinfo", "detect=off,require=off", "--print-xml"])
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env_remove("LIBVIRT_DEFAULT_URI")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "virt-install --disk {disk}: {e}\n{}", d.stderr());
        o
    };
    // (Its default format is qcow2 for the QEMU version the daemon reports.)
    let xml = run("size=1,format=raw");
    assert!(xml.contains("<source file=\"/var/lib/libvirt/images/vi.img\"/>"), "{xml}");
    // The pool it made, as it made it against libvirt: defined, built, started, autostarted.
    let list = ok(&rw, &["pool-list", "--all", "--details"]);
    assert!(list.lines().any(|l| l.split_whitespace().take(4).eq(["default", "running", "yes", "yes"])), "{list}");
    assert!(ok(&rw, &["pool-dumpxml", "default"]).contains("<path>/var/lib/libvirt/images</path>"));
    let vol = ok(&rw, &["vol-info", "vi.img", "--pool", "default"]);
    assert!(vol.contains("Capacity:       1.00 GiB"), "{vol}");
    let inside = Path::new("/proc").join(d.pid.to_string()).join("root/var/lib/libvirt/images");
    assert_eq!(std::fs::metadata(inside.join("vi.img")).unwrap().len(), 1 << 30);
    // A second run finds the pool and makes a qcow2 volume in it.
    let xml = run("size=1,format=qcow2");
    assert!(xml.contains("<source file=\"/var/lib/libvirt/images/vi.qcow2\"/>"), "{xml}");
    assert_eq!(ok(&rw, &["pool-list", "--all", "--name"]).trim(), "default");
    let q = inside.join("vi.qcow2");
    assert!(qemu_img(&["check", q.to_str().unwrap()]).contains("No errors were found"));
    assert!(!Path::new("/var/lib/libvirt/images/vi.img").exists(), "the host's /var/lib was touched");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(SECS).is_some());
}

#[test]
fn python_libvirt_lists_looks_up_and_hears_pool_events() {
    let have =
        Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    if !require(have, "python3-libvirt") {
        return;
    }
    let (d, images) = daemon_with_pool();
    let rw = d.tree.sock("libvirt-sock");
    ok(&rw, &["vol-create-as", "p", "v.qcow2", "1M", "--format", "qcow2"]);
    let program = format!(
        r#"
import libvirt, threading
libvirt.registerErrorHandler(lambda *a: None, None)
libvirt.virEventRegisterDefaultImpl()
c = libvirt.open({uri:?})
ro = libvirt.openReadOnly({ro:?})
seen = []
done = threading.Event()
def cb(conn, pool, event, detail, opaque):
    seen.append((pool.name(), event))
    if event == libvirt.VIR_STORAGE_POOL_EVENT_STOPPED:
        done.set()
cid = c.storagePoolEventRegisterAny(None, libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, cb, None)
def loop():
    while not done.is_set():
        libvirt.virEventRunDefaultImpl()
t = threading.Thread(target=loop, daemon=True)
t.start()
print("all", [p.name() for p in ro.listAllStoragePools()])
print("active", [p.name() for p in ro.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE | libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_DIR)])
print("inactive", [p.name() for p in ro.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_INACTIVE)])
p = ro.storagePoolLookupByName("p")
print("uuid", ro.storagePoolLookupByUUIDString(p.UUIDString()).name())
print("info", p.info()[0], p.isActive(), p.isPersistent(), p.autostart())
print("vols", [v.name() for v in p.listAllVolumes()], p.numOfVolumes(), p.listVolumes())
v = ro.storageVolLookupByPath({path:?})
print("vol", v.name(), v.key() == v.path(), v.info()[0], v.info()[1], v.storagePoolLookupByVolume().name())
print("bypath", ro.storagePoolLookupByTargetPath({dir:?}).name())
try:
    ro.storagePoolLookupByName("nope")
except libvirt.libvirtError as e:
    print("missing", e.get_error_code(), e.get_error_domain())
try:
    ro.storagePoolLookupByName("p").destroy()
except libvirt.libvirtError as e:
    print("ro", e.get_error_code())
tp = c.storagePoolCreateXML("<pool type='dir'><name>tp</name><target><path>{tdir}</path></target></pool>", libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD)
tp.destroy()
done.wait(10)
c.storagePoolEventDeregisterAny(cid)
print("events", seen)
"#,
        uri = uri(&rw),
        ro = uri(&d.tree.sock("libvirt-sock-ro")),
        path = images.join("v.qcow2").display(),
        dir = images.display(),
        tdir = d.tree.path("tp").display(),
    );
    let out = run_python(&d, &program, Duration::from_secs(30));
    let want = [
        "all ['p']".to_owned(),
        "active ['p']".into(),
        "inactive []".into(),
        "uuid p".into(),
        "info 2 1 1 1".into(),
        "vols ['v.qcow2'] 1 ['v.qcow2']".into(),
        "vol v.qcow2 True 0 1048576 p".into(),
        "bypath p".into(),
        "missing 49 18".into(),
        "ro 29".into(),
        "events [('tp', 2), ('tp', 3)]".into(),
    ];
    for w in want {
        assert!(out.lines().any(|l| l == w), "{w} not in\n{out}");
    }
}
