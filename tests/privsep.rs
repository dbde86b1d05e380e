//! The process boundary between trust classes holds: the process that parses
//! read-only clients' bytes holds nothing of the read-write class, and a
//! process holding its broker channel (what an attacker who took it over
//! would have) gets read-only rights and nothing more.

mod common;

use std::collections::HashSet;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use common::*;
use libvirtd::privsep::{BrokerReply, Call, CallError, Channel, ChannelError, Envelope, FrontendRequest};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SECS: Duration = Duration::from_secs(10);
const GET_VERSION: i32 = 157;

/// Inodes of every Unix socket bound to or accepted on `path`.
fn socket_inodes(path: &Path) -> HashSet<u64> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let want = path.to_str().unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 8 && cols[7] == want).then(|| cols[6].parse().unwrap())
        })
        .collect()
}

/// Inodes of the sockets in `pid`'s fd table.
fn held_sockets(pid: i32) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| t.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// The connection number the broker gave the newest client of socket `sock`.
fn conn_of(tree: &Tree, sock: &str) -> u64 {
    let line = tree.audit(&["op=client-open", &format!("sock=\"{sock}\"")], SECS).expect("no client-open record");
    let at = line.find("conn=").expect("no conn field") + 5;
    line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn opened(path: &Path) -> RawClient {
    let mut c = RawClient::connect(path);
    c.open(0);
    c
}

#[test]
fn each_trust_class_is_parsed_in_a_process_that_holds_only_its_own_sockets() {
    let d = Daemon::start("", &[]);
    assert!(wait_until(SECS, || d.frontend_pids().len() == 3), "frontends: {:?}", d.frontend_pids());
    let (rw, ro, admin) =
        (d.tree.sock("libvirt-sock"), d.tree.sock("libvirt-sock-ro"), d.tree.sock("libvirt-admin-sock"));
    let _rw_client = opened(&rw);
    let _ro_client = opened(&ro);
    let (rw_pid, ro_pid) = (d.frontend_pid_of("rw").unwrap(), d.frontend_pid_of("ro").unwrap());
    let (rw_socks, ro_socks, admin_socks) = (socket_inodes(&rw), socket_inodes(&ro), socket_inodes(&admin));
    // Listener plus the accepted connection.
    assert!(rw_socks.len() >= 2 && ro_socks.len() >= 2, "{rw_socks:?} {ro_socks:?}");

    let ro_holds = held_sockets(ro_pid);
    assert!(!ro_socks.is_disjoint(&ro_holds), "the read-only frontend does not hold its own sockets");
    assert!(ro_holds.is_disjoint(&rw_socks), "the read-only frontend holds a read-write socket");
    assert!(ro_holds.is_disjoint(&admin_socks), "the read-only frontend holds an admin socket");
    let rw_holds = held_sockets(rw_pid);
    assert!(!rw_socks.is_disjoint(&rw_holds));
    assert!(rw_holds.is_disjoint(&ro_socks), "the read-write frontend holds read-only clients");
    assert_eq!(cmdline(ro_pid).split_whitespace().last(), Some("ro"));
}

/// Takes fd `fd` of process `pid` (root may: CAP_SYS_PTRACE).
fn steal_fd(pid: i32, fd: i32) -> OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just gave us this fd; we own it from here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes an open pidfd, a target fd number and flags,
    // and returns a new fd in our table or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, std::os::fd::AsRawFd::as_raw_fd(&pidfd), fd, 0) };
    assert!(fd >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
    // SAFETY: as above, a fresh fd of ours.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Stops the read-only frontend and speaks on its broker channel instead.
fn stand_in_for(d: &Daemon) -> (i32, Channel) {
    let pid = d.frontend_pid_of("ro").expect("no read-only frontend");
    assert_eq!(status_field(pid, "Seccomp").as_deref(), Some("2"), "not confined yet");
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let fd = steal_fd(pid, libvirtd::frontend::CHANNEL_FD);
    (pid, Channel::from_fd(fd).unwrap())
}

fn ask(channel: &Channel, id: u32, body: FrontendRequest, fds: &[std::os::fd::BorrowedFd<'_>]) -> BrokerReply {
    channel.send_wait(&Envelope { id, body }, fds).unwrap();
    loop {
        let (env, _) = channel.recv_blocking::<Envelope<BrokerReply>>(5000, |e| e.body.fd_count()).unwrap();
        if env.id == id {
            return env.body;
        }
    }
}

/// The broker ends a frontend that breaks the rules: its channel closes.
fn is_cut_off(channel: &Channel) -> bool {
    loop {
        match channel.recv_blocking::<Envelope<BrokerReply>>(5000, |e| e.body.fd_count()) {
            Err(ChannelError::Closed) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_stand_in_holding_the_read_only_channel_gets_read_only_rights_and_nothing_more() {
    if !require(is_root(), "root (pidfd_getfd on the confined frontend)") {
        return;
    }
    let d = Daemon::start("", &[]);
    let (rw, ro) = (d.tree.sock("libvirt-sock"), d.tree.sock("libvirt-sock-ro"));
    let mut rw_client = opened(&rw);
    let rw_conn = conn_of(&d.tree, "rw");
    let _ro_client = opened(&ro);
    let ro_conn = conn_of(&d.tree, "ro");
    let images = d.tree.path("guest");
    build_guest(&images);
    let planted = d.tree.path("planted-by-stand-in");
    let xml = domain_xml("stand-in", "5a1e6d2c-3b4f-4c1d-9e8f-0a1b2c3d4e5f")
        .replace("/var/tmp/guestkit/vmlinuz", images.join("pvh.elf").to_str().unwrap())
        .replace(
            "<serial type='pty'><target port='0'/></serial>",
            &format!("<serial type='file'><source path='{}'/><target port='0'/></serial>", planted.display()),
        );

    let (pid, channel) = stand_in_for(&d);
    // Its own read-only client's calls are read-only, whatever it sends.
    for (id, call) in [
        (90_001, Call::CreateXml { xml: xml.clone(), flags: 0 }),
        (90_002, Call::Define { xml: xml.clone(), flags: 0 }),
    ] {
        let reply = ask(&channel, id, FrontendRequest::Call { conn: ro_conn, call }, &[]);
        assert!(matches!(reply, BrokerReply::Value(Err(CallError::ReadOnly(_)))), "{reply:?}");
    }
    // A connection of its own making is not a client of its listener.
    let (mine, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    channel.send_wait(&Envelope { id: 90_003, body: FrontendRequest::ClientOpened }, &[mine.as_fd()]).unwrap();
    assert!(is_cut_off(&channel), "the broker accepted a forged connection");
    assert!(d.tree.audit(&["op=frontend-violation", "class=\"ro\""], SECS).is_some());
    assert!(wait_until(SECS, || !Path::new(&format!("/proc/{pid}")).exists()), "the stand-in's frontend lives");

    // The next read-only frontend: a read-write client's number is not its to use.
    assert!(wait_until(SECS, || d.frontend_pid_of("ro").is_some_and(|p| p != pid)));
    assert!(
        wait_until(SECS, || d.frontend_pid_of("ro").and_then(|p| status_field(p, "Seccomp")).as_deref() == Some("2"))
    );
    let (_, channel) = stand_in_for(&d);
    channel
        .send_wait(
            &Envelope {
                id: 90_004,
                body: FrontendRequest::Call { conn: rw_conn, call: Call::CreateXml { xml, flags: 0 } },
            },
            &[],
        )
        .unwrap();
    assert!(is_cut_off(&channel), "the broker took a read-write client's call from the read-only channel");

    std::thread::sleep(Duration::from_millis(500));
    assert!(!planted.exists(), "a file was created through the read-only channel");
    let (list_code, _, _) = virsh(&rw, &["list", "--all", "--name"]);
    assert_eq!(list_code, 0);
    let (_, out, _) = virsh(&rw, &["list", "--all", "--name"]);
    assert!(!out.contains("stand-in"), "a domain was defined through the read-only channel: {out}");
    // The read-write session opened before all this still answers.
    let (h, _) = rw_client.call(GET_VERSION, &[]);
    assert_eq!(h.status, 0);
}
