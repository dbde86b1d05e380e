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

#[test]
fn a_stand_in_cannot_pass_off_a_listener_or_one_connection_twice_as_clients() {
    if !require(is_root(), "root (pidfd_getfd on the confined frontend)") {
        return;
    }
    let d = Daemon::start("", &[]);
    let ro = d.tree.sock("libvirt-sock-ro");
    let _client = opened(&ro);
    let ours = socket_inodes(&ro);
    let pid = d.frontend_pid_of("ro").expect("no read-only frontend");
    // The frontend's own sockets on the read-only path: its listener and its client.
    let fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let inode: u64 = std::fs::read_link(e.path())
                .ok()?
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            ours.contains(&inode).then(|| e.file_name().to_str()?.parse().ok()).flatten()
        })
        .collect();
    let (_, channel) = stand_in_for(&d);
    let stolen: Vec<OwnedFd> = fds.iter().map(|fd| steal_fd(pid, *fd)).collect();
    let listening = |fd: &OwnedFd| nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::AcceptConn).unwrap();
    let listener = stolen.iter().find(|f| listening(f)).expect("the listener");
    let client = stolen.iter().find(|f| !listening(f)).expect("the client");

    // The client it already reported, once more: a second client from one connection.
    channel.send_wait(&Envelope { id: 91_001, body: FrontendRequest::ClientOpened }, &[client.as_fd()]).unwrap();
    assert!(is_cut_off(&channel), "one connection was admitted twice");
    assert!(d.tree.audit(&["op=frontend-violation", "class=\"ro\""], SECS).is_some());
    assert!(wait_until(SECS, || d.stderr().contains("a client fd that is already a client")), "{}", d.stderr());

    // The listener: its peer credentials would be the broker's own (uid 0).
    assert!(wait_until(SECS, || d.frontend_pid_of("ro").is_some_and(|p| p != pid)));
    assert!(
        wait_until(SECS, || d.frontend_pid_of("ro").and_then(|p| status_field(p, "Seccomp")).as_deref() == Some("2"))
    );
    let (_, channel) = stand_in_for(&d);
    channel.send_wait(&Envelope { id: 91_002, body: FrontendRequest::ClientOpened }, &[listener.as_fd()]).unwrap();
    assert!(is_cut_off(&channel), "a listener was admitted as a client");
    assert!(d.tree.audit(&["op=frontend-violation", "class=\"ro\""], SECS).is_some());
    assert!(wait_until(SECS, || d.stderr().contains("a client fd that is not a connected stream")), "{}", d.stderr());
    // Nothing was admitted with the broker's own credentials.
    let broker = format!("pid={} ", d.pid);
    assert!(d.tree.audit(&["op=client-open", &broker], Duration::from_millis(300)).is_none());
}

#[test]
fn a_tcp_client_that_resets_before_admission_costs_its_frontend_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = Daemon::start(
        &format!(
            "listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\nlisten_addr = \"127.0.0.1\"\ntcp_port = {port}\n"
        ),
        &["--listen"],
    );
    assert!(wait_until(SECS, || d.frontend_pid_of("tcp").is_some()));
    let tcp = d.frontend_pid_of("tcp").unwrap();
    for _ in 0..20 {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // SO_LINGER 0: close sends a reset, so the peer is gone before the broker looks.
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: a valid socket fd and a linger struct of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        assert_eq!(rc, 0);
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.frontend_pid_of("tcp"), Some(tcp), "the TCP frontend was replaced:\n{}", d.stderr());
    assert!(!d.stderr().contains("violated"), "{}", d.stderr());
    let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(d.tree.audit(&["op=client-open", "sock=\"tcp\"", "res=success"], SECS).is_some());
}
