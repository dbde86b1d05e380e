//! systemd socket activation with the unit files shipped in `systemd/`.

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const SECS: Duration = Duration::from_secs(10);

/// The unix socket units we ship, with the socket file each listens on.
fn shipped_unix_units() -> Vec<(String, String)> {
    let mut units = Vec::new();
    for e in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".socket") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let listen = text.lines().find_map(|l| l.strip_prefix("ListenStream=")).unwrap().to_owned();
        if listen.starts_with('/') {
            let file = listen.rsplit('/').next().unwrap().to_owned();
            units.push((name, file));
        }
    }
    units.sort();
    units
}

/// Starts the daemon as systemd would: sockets on fds 3.., LISTEN_PID set to the daemon's pid.
fn activated<L: AsRawFd>(tree: &Tree, socks: &[(String, L)], with_names: bool, args: &[&str]) -> Command {
    let raw: Vec<RawFd> = socks.iter().map(|(_, l)| l.as_raw_fd()).collect();
    let names =
        if with_names { socks.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(":") } else { String::new() };
    let script = "LISTEN_PID=$$; LISTEN_FDS=$1; export LISTEN_PID LISTEN_FDS; \
                  if [ -n \"$2\" ]; then LISTEN_FDNAMES=$2; export LISTEN_FDNAMES; fi; shift 2; exec \"$@\"";
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script).arg("sh").arg(socks.len().to_string()).arg(names);
    cmd.arg(BIN).arg("-f").arg(tree.conf_path()).arg("-p").arg(tree.pid_path()).args(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(tree.path("stderr")).unwrap());
    cmd.env_remove("LISTEN_PID").env_remove("LISTEN_FDS").env_remove("LISTEN_FDNAMES").env_remove("NOTIFY_SOCKET");
    // SAFETY: fcntl/dup2/close/setpgid are async-signal-safe and touch only fds this closure owns copies of.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            // Move every socket out of 3.. first, so no dup2 overwrites one not yet placed.
            let high: Vec<RawFd> = raw.iter().map(|fd| libc::fcntl(*fd, libc::F_DUPFD, 100)).collect();
            for (i, fd) in high.iter().enumerate() {
                if *fd < 0 || libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(*fd);
            }
            Ok(())
        });
    }
    cmd
}

fn bind_shipped(tree: &Tree) -> Vec<(String, UnixListener)> {
    std::fs::create_dir_all(tree.path("run")).unwrap();
    shipped_unix_units()
        .into_iter()
        .map(|(unit, file)| {
            let l = UnixListener::bind(tree.sock(&file)).unwrap();
            (unit, l)
        })
        .collect()
}

#[test]
fn the_shipped_units_cover_the_three_unix_sockets() {
    let mut files: Vec<String> = shipped_unix_units().into_iter().map(|(_, f)| f).collect();
    files.sort();
    assert_eq!(files, ["libvirt-admin-sock", "libvirt-sock", "libvirt-sock-ro"]);
}

#[test]
fn the_daemon_serves_on_sockets_systemd_passed_by_name() {
    let tree = Tree::new();
    tree.write_conf("");
    let socks = bind_shipped(&tree);
    let child = activated(&tree, &socks, true, &[]).spawn().unwrap();
    let mut d = Daemon { tree, pid: child.id() as i32, child: Some(child) };
    assert!(d.wait_serving(SECS), "{}", d.stderr());
    let _c = connect(&d.tree.sock("libvirt-sock-ro"));
    assert!(d.tree.audit(&["op=client-open", "sock=\"ro\""], SECS).is_some(), "{}", d.stderr());
    // The sockets belong to systemd: a clean exit leaves them in place.
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(SECS).expect("no exit").success());
    assert!(d.tree.sock("libvirt-sock").exists());
    drop(socks);
}

#[test]
fn unnamed_passed_sockets_are_matched_by_path() {
    let tree = Tree::new();
    tree.write_conf("");
    let socks = bind_shipped(&tree);
    let child = activated(&tree, &socks, false, &[]).spawn().unwrap();
    let mut d = Daemon { tree, pid: child.id() as i32, child: Some(child) };
    assert!(d.wait_serving(SECS), "{}", d.stderr());
    let _c = connect(&d.tree.sock("libvirt-admin-sock"));
    assert!(d.tree.audit(&["op=client-open", "sock=\"admin\""], SECS).is_some(), "{}", d.stderr());
}

#[test]
fn listen_is_refused_under_socket_activation() {
    let tree = Tree::new();
    tree.write_conf("");
    let socks = bind_shipped(&tree);
    let out = activated(&tree, &socks, true, &["--listen"]).status().unwrap();
    assert_eq!(out.code(), Some(1));
    let err = std::fs::read_to_string(tree.path("stderr")).unwrap();
    assert!(err.contains("--listen parameter not permitted with systemd activation sockets"), "{err}");
}

#[test]
fn an_activated_tcp_socket_needs_auth_tcp_none_too() {
    let tree = Tree::new();
    tree.write_conf("");
    let mut socks: Vec<(String, std::os::fd::OwnedFd)> =
        bind_shipped(&tree).into_iter().map(|(n, l)| (n, std::os::fd::OwnedFd::from(l))).collect();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socks.push(("libvirtd-tcp.socket".into(), std::os::fd::OwnedFd::from(tcp)));
    let mut child = activated(&tree, &socks, true, &[]).spawn().unwrap();
    let exited = wait_until(SECS, || child.try_wait().unwrap().is_some());
    if !exited {
        kill_tree(child.id() as i32);
    }
    assert!(exited, "the daemon served unauthenticated TCP");
    assert_eq!(child.wait().unwrap().code(), Some(1));
    let err = std::fs::read_to_string(tree.path("stderr")).unwrap();
    assert!(err.contains("set auth_tcp = \"none\" to allow unauthenticated TCP"), "{err}");
}
