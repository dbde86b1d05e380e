//! A daemon run by an ordinary user: session paths from the XDG variables,
//! and the same process split and confinement, minus the uid change.

mod common;

use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const USER: u32 = 4242;

#[test]
fn a_non_root_daemon_uses_xdg_paths_and_is_still_confined() {
    if !require(is_root(), "root (to become an ordinary user)") {
        return;
    }
    let tree = Tree::new();
    let top_buf = tree.dir.path().to_path_buf();
    let top = top_buf.as_path();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The binary may sit under a directory the user cannot enter: run a copy.
    let bin = top.join("libvirtd");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in ["home", "rt", "cfg/libvirt"] {
        std::fs::create_dir_all(top.join(dir)).unwrap();
    }
    std::fs::write(top.join("cfg/libvirt/libvirtd.conf"), "unix_sock_ro_perms = \"0700\"\n").unwrap();
    for dir in ["home", "rt", "cfg", "cfg/libvirt", "cfg/libvirt/libvirtd.conf"] {
        chown(top.join(dir), Some(USER), Some(USER)).unwrap();
    }
    let mut cmd = Command::new(&bin);
    cmd.env_clear()
        .env("HOME", top.join("home"))
        .env("XDG_RUNTIME_DIR", top.join("rt"))
        .env("XDG_CONFIG_HOME", top.join("cfg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(top.join("stderr")).unwrap());
    // SAFETY: setgroups/setgid/setuid/setpgid are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(USER) != 0 || libc::setuid(USER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let d = Daemon { pid: child.id() as i32, child: Some(child), tree };
    let sock = top.join("rt/libvirt/libvirt-sock");
    let stderr = || std::fs::read_to_string(top.join("stderr")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || { std::os::unix::net::UnixStream::connect(&sock).is_ok() }),
        "{}",
        stderr()
    );
    let pid: i32 = std::fs::read_to_string(top.join("rt/libvirt/libvirtd.pid")).unwrap().trim().parse().unwrap();
    assert_eq!(pid, d.pid);
    let ro = std::fs::metadata(top.join("rt/libvirt/libvirt-sock-ro")).unwrap();
    assert_eq!(ro.permissions().mode() & 0o777, 0o700, "the XDG config file was not read");
    assert!(top.join("rt/libvirt/libvirt-admin-sock").exists());

    let f = d.frontend_pid().expect("no frontend");
    assert!(wait_until(Duration::from_secs(5), || status_field(f, "Seccomp").as_deref() == Some("2")));
    assert_eq!(status_field(f, "Uid").unwrap(), format!("{USER}\t{USER}\t{USER}\t{USER}"));
    assert_eq!(status_field(f, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(status_field(f, "CapEff").as_deref(), Some("0000000000000000"));
}
