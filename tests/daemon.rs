//! The daemon's process life: sockets, PID file, daemonizing, signals,
//! timeout and frontend restarts. Run as root, as CI does.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const SECS: Duration = Duration::from_secs(10);

#[test]
fn sockets_get_the_configured_modes_and_group() {
    if !require(is_root(), "root") {
        return;
    }
    let d = Daemon::start(
        "unix_sock_group = \"daemon\"\nunix_sock_ro_perms = \"0755\"\nunix_sock_rw_perms = \"0770\"\nunix_sock_admin_perms = \"0700\"\n",
        &[],
    );
    let daemon_gid = nix::unistd::Group::from_name("daemon").unwrap().unwrap().gid.as_raw();
    for (name, mode) in [("libvirt-sock", 0o770), ("libvirt-sock-ro", 0o755), ("libvirt-admin-sock", 0o700)] {
        let meta = std::fs::metadata(d.tree.sock(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        assert_eq!(meta.gid(), daemon_gid, "{name}");
    }
}

#[test]
fn default_socket_modes_match_libvirt() {
    let d = Daemon::start("", &[]);
    for (name, mode) in [("libvirt-sock", 0o700), ("libvirt-sock-ro", 0o777), ("libvirt-admin-sock", 0o700)] {
        let meta = std::fs::metadata(d.tree.sock(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
}

#[test]
fn each_connection_is_audited_with_its_peer_credentials_and_socket() {
    let d = Daemon::start("", &[]);
    let c = connect(&d.tree.sock("libvirt-sock-ro"));
    let me = std::process::id();
    let uid = nix::unistd::getuid();
    let open = d.tree.audit(&["op=client-open", "sock=\"ro\"", &format!("pid={me} "), &format!("uid={uid} ")], SECS);
    assert!(open.is_some(), "no client-open record; stderr:\n{}", d.stderr());
    drop(c);
    assert!(d.tree.audit(&["op=client-close", "sock=\"ro\"", &format!("pid={me} ")], SECS).is_some());
    let _admin = connect(&d.tree.sock("libvirt-admin-sock"));
    assert!(d.tree.audit(&["op=client-open", "sock=\"admin\""], SECS).is_some());
}

#[test]
fn a_stale_socket_is_replaced() {
    let tree = Tree::new();
    tree.write_conf("");
    std::fs::create_dir_all(tree.path("run")).unwrap();
    // A socket file nobody listens on, as a crashed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(tree.sock("libvirt-sock")).unwrap());
    assert!(UnixStream::connect(tree.sock("libvirt-sock")).is_err());
    let d = Daemon::start_in(tree, &[]);
    assert!(UnixStream::connect(d.tree.sock("libvirt-sock")).is_ok());
}

#[test]
fn a_second_daemon_on_the_same_pid_file_refuses_to_start() {
    let d = Daemon::start("", &[]);
    let out = command(&d.tree, &[]).stderr(std::process::Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("already running") && err.contains(&format!("pid {}", d.pid)), "{err}");
    // The first one is untouched.
    assert!(UnixStream::connect(d.tree.sock("libvirt-sock")).is_ok());
}

#[test]
fn a_second_daemon_on_the_same_sockets_refuses_to_start() {
    let d = Daemon::start("", &[]);
    let other = d.tree.path("other.pid");
    let out = command_with_pid_file(&d.tree, &other, &[]).stderr(std::process::Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by another daemon"), "{err}");
    assert!(UnixStream::connect(d.tree.sock("libvirt-sock")).is_ok());
}

#[test]
fn daemon_mode_exits_zero_once_serving_and_writes_a_live_pid() {
    let tree = Tree::new();
    tree.write_conf("");
    let status = command(&tree, &["-d"]).status().unwrap();
    assert!(status.success());
    // The parent returned only after the daemon was listening.
    assert!(UnixStream::connect(tree.sock("libvirt-sock")).is_ok());
    let pid: i32 = std::fs::read_to_string(tree.pid_path()).unwrap().trim().parse().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    // Detached: not our child, and in a session of its own.
    assert_ne!(status_field(pid, "PPid"), Some(std::process::id().to_string()));
    assert_ne!(nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).unwrap(), nix::unistd::getsid(None).unwrap());
    kill_tree(pid);
}

#[test]
fn daemon_mode_reports_the_childs_error_and_exits_non_zero() {
    let tree = Tree::new();
    tree.write_conf("");
    std::fs::create_dir_all(tree.path("run")).unwrap();
    std::fs::write(tree.sock("libvirt-sock"), "not a socket").unwrap();
    let out = command(&tree, &["-d"]).stderr(std::process::Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("is not a socket"), "{err}");
}

#[test]
fn sigterm_exits_cleanly_and_removes_sockets_and_pid_file() {
    let mut d = Daemon::start("", &[]);
    let frontend = d.frontend_pid().unwrap();
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(SECS).expect("daemon did not exit");
    assert!(status.success());
    for name in ["libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock"] {
        assert!(!d.tree.sock(name).exists(), "{name} left behind");
    }
    assert!(!d.tree.pid_path().exists());
    assert!(wait_until(SECS, || !std::path::Path::new(&format!("/proc/{frontend}")).exists()));
}

#[test]
fn sighup_applies_a_new_log_level_and_survives_a_broken_file() {
    let d = Daemon::start("log_level = 3\n", &[]);
    drop(connect(&d.tree.sock("libvirt-sock")));
    assert!(d.tree.audit(&["op=client-close"], SECS).is_some());
    assert!(!d.stderr().contains("accepted client"), "debug output before the reload");

    d.tree.write_conf("log_level = 1\n");
    d.signal(Signal::SIGHUP);
    assert!(wait_until(SECS, || d.stderr().contains("configuration reloaded")), "{}", d.stderr());
    drop(connect(&d.tree.sock("libvirt-sock")));
    assert!(wait_until(SECS, || d.stderr().contains("accepted client")), "{}", d.stderr());

    std::fs::write(d.tree.conf_path(), "log_level = = broken\n").unwrap();
    d.signal(Signal::SIGHUP);
    assert!(wait_until(SECS, || d.stderr().contains("failed to reload configuration")), "{}", d.stderr());
    let _c = connect(&d.tree.sock("libvirt-sock-ro"));
    assert!(d.tree.audit(&["op=client-open", "sock=\"ro\""], SECS).is_some(), "not serving after a broken reload");
}

#[test]
fn timeout_exits_when_idle_but_not_while_a_client_is_connected() {
    let mut d = Daemon::start("", &["--timeout", "2"]);
    let c = connect(&d.tree.sock("libvirt-sock"));
    assert!(d.tree.audit(&["op=client-open"], SECS).is_some());
    std::thread::sleep(Duration::from_secs(3));
    assert!(d.is_running(), "exited while a client was connected");
    drop(c);
    let status = d.wait_exit(Duration::from_secs(8)).expect("did not time out");
    assert!(status.success());
    assert!(!d.tree.pid_path().exists());
}

#[test]
fn a_killed_frontend_is_replaced_and_clients_reconnect() {
    let mut d = Daemon::start("", &[]);
    // Start-up is over only once every class's frontend is ready.
    assert!(d.wait_all_frontends_ready(SECS), "{}", d.stderr());
    let first = d.frontend_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
    assert!(wait_until(SECS, || d.frontend_pid().is_some_and(|p| p != first)), "{}", d.stderr());
    assert!(d.wait_serving(SECS));
    let second = d.frontend_pid().unwrap();
    let _c = connect(&d.tree.sock("libvirt-sock"));
    assert!(d.tree.audit(&["op=frontend-start", &format!("pid={second} ")], SECS).is_some());
    assert!(d.tree.audit(&["op=client-open", "sock=\"rw\""], SECS).is_some());
    // "frontend pid N killed by SIGKILL", or "... went away (...); killed by
    // SIGKILL" when the channel's hang-up is seen before SIGCHLD.
    let log = d.stderr();
    assert!(log.contains(&format!("frontend pid {first} ")) && log.contains("killed by SIGKILL"), "{log}");
    assert!(d.is_running());
}

#[test]
fn the_daemon_works_with_no_syslog_listening() {
    let tree = Tree::new();
    tree.write_conf("");
    std::fs::remove_file(tree.path("syslog")).unwrap();
    let d = Daemon::start_in(tree, &[]);
    drop(connect(&d.tree.sock("libvirt-sock")));
    assert!(UnixStream::connect(d.tree.sock("libvirt-sock")).is_ok());
}

#[test]
fn audit_level_2_refuses_to_start_without_syslog() {
    let tree = Tree::new();
    tree.write_conf("audit_level = 2\n");
    std::fs::remove_file(tree.path("syslog")).unwrap();
    let out = command(&tree, &[]).stderr(std::process::Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit_level = 2"));
}

#[test]
fn listen_with_unauthenticated_tcp_accepts_and_warns() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = Daemon::start(
        &format!(
            "listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\nlisten_addr = \"127.0.0.1\"\ntcp_port = {port}\n"
        ),
        &["--listen"],
    );
    assert!(d.stderr().contains("unauthenticated"), "{}", d.stderr());
    let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(d.tree.audit(&["op=client-open", "sock=\"tcp\"", "addr=\"127.0.0.1:"], SECS).is_some());
}

#[test]
fn clients_beyond_max_clients_are_turned_away_and_others_keep_working() {
    use std::io::Read;
    let d = Daemon::start("max_clients = 2\n", &[]);
    // Daemon::start's own probe connection must be gone before counting.
    assert!(d.tree.audit(&["op=client-close"], SECS).is_some());
    let a = connect(&d.tree.sock("libvirt-sock"));
    let b = connect(&d.tree.sock("libvirt-sock-ro"));
    assert!(d.tree.audit(&["op=client-open", "sock=\"rw\""], SECS).is_some());
    assert!(d.tree.audit(&["op=client-open", "sock=\"ro\""], SECS).is_some());
    let mut c = connect(&d.tree.sock("libvirt-sock"));
    c.set_read_timeout(Some(SECS)).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(c.read(&mut buf).unwrap(), 0, "the third client was not closed");
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let err = (&*s).read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "an admitted client was dropped");
    }
    drop(a);
    assert!(d.tree.audit(&["op=client-close"], SECS).is_some());
    let _again = connect(&d.tree.sock("libvirt-sock"));
    assert!(d.tree.audit(&["op=client-open"], SECS).is_some(), "no room again after a client left");
}

#[test]
fn verbose_shows_info_messages_in_the_foreground() {
    let quiet = Daemon::start("", &[]);
    let verbose = Daemon::start("", &["-v"]);
    assert!(verbose.stderr().contains("is confined and serving"), "{}", verbose.stderr());
    assert!(!quiet.stderr().contains("is confined and serving"), "{}", quiet.stderr());
}

#[test]
fn sigint_exits_like_sigterm() {
    let mut d = Daemon::start("", &[]);
    d.signal(Signal::SIGINT);
    assert!(d.wait_exit(SECS).expect("no exit").success());
    assert!(!d.tree.sock("libvirt-sock").exists());
}

#[test]
fn a_syslog_daemon_that_stops_reading_does_not_wedge_the_daemon() {
    let tree = Tree::new();
    let stuck = tree.path("stuck-syslog");
    let _never_read = std::os::unix::net::UnixDatagram::bind(&stuck).unwrap();
    tree.write_conf(&format!("syslog_socket = \"{}\"\n", stuck.display()));
    let d = Daemon::start_in(tree, &[]);
    // Each connection is two audit records; the socket's queue holds ten.
    for _ in 0..40 {
        drop(connect(&d.tree.sock("libvirt-sock")));
    }
    let mut c = RawClient::connect(&d.tree.sock("libvirt-sock"));
    let (h, payload) = c.call(66, &[]);
    assert_eq!((h.status, payload), (0, vec![0, 0, 0, 1, 0, 0, 0, 0]));
    assert!(wait_until(SECS, || d.stderr().contains("audit record(s) dropped")), "{}", d.stderr());
}
