//! The broker's side of the helper protocol, against stand-in helpers the
//! test serves on the guests' control sockets, as helpers that outlived a
//! daemon would be found: one of another protocol version (or of none) is
//! reported running but unmanageable, never parsed; one that could not
//! pause its guest within its bound makes `suspend` fail at once with its
//! reason. No KVM needed.

mod common;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use libvirtd::privsep::Channel;
use libvirtd::privsep::helper::{GuestStats, HELPER_PROTOCOL_VERSION, HelperCommand, HelperEvent};

const SECS: Duration = Duration::from_secs(10);

/// How a stand-in helper behaves once a broker connects.
#[derive(Clone, Copy)]
enum Speaks {
    /// Greets with this version, then says nothing.
    Version(u32),
    /// Never greets (a build from before the handshake); answers `Stats`.
    Unversioned,
    /// Greets with this build's version, answers `Stats`, and answers
    /// `Pause` with `PauseFailed` (a vCPU that did not park).
    CannotPause,
}

/// A stand-in helper: a `sleep` process as its pid (what destroy kills),
/// and a thread serving its control socket, recording every command.
struct StandIn {
    process: std::process::Child,
    heard: Arc<Mutex<Vec<String>>>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl StandIn {
    fn heard(&self) -> Vec<String> {
        self.heard.lock().unwrap().clone()
    }

    fn gone(&mut self) -> bool {
        self.process.try_wait().unwrap().is_some()
    }
}

/// Writes the records a daemon leaves for a running guest `name` (id 1,
/// running) and serves its control socket as `speaks` says.
fn stand_in(tree: &Tree, name: &str, uuid: &str, id: i32, speaks: Speaks) -> StandIn {
    let dir = tree.path("run/qemu");
    std::fs::create_dir_all(&dir).unwrap();
    let process = std::process::Command::new("sleep").arg("120").spawn().unwrap();
    let status = format!("id={id}\npid={}\nuid=0\nstate=1\nreason=1\npersistent=0\n", process.id());
    std::fs::write(dir.join(format!("{name}.status")), status).unwrap();
    std::fs::write(dir.join(format!("{name}.live.xml")), domain_xml(name, uuid)).unwrap();
    let listener = listen(&dir.join(format!("{name}.ctl")));
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = heard.clone();
    std::thread::spawn(move || serve(listener, speaks, log));
    StandIn { process, heard }
}

fn listen(path: &Path) -> OwnedFd {
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(path).unwrap()).unwrap();
    listen(&fd, Backlog::new(4).unwrap()).unwrap();
    fd
}

fn serve(listener: OwnedFd, speaks: Speaks, heard: Arc<Mutex<Vec<String>>>) {
    let Ok(fd) = nix::sys::socket::accept(&listener) else { return };
    let channel = Channel::from_fd(fd).unwrap();
    match speaks {
        Speaks::Version(version) => channel.send_wait(&HelperEvent::Hello { version }, &[]).unwrap(),
        Speaks::CannotPause => {
            channel.send_wait(&HelperEvent::Hello { version: HELPER_PROTOCOL_VERSION }, &[]).unwrap()
        }
        Speaks::Unversioned => {}
    }
    let stats = GuestStats { paused: false, vcpu_time_ns: vec![0], memory_mib: 128, rss_kib: 1 };
    loop {
        let (command, _fds) = match channel.recv_blocking::<HelperCommand>(60_000, HelperCommand::fd_count) {
            Ok(m) => m,
            Err(libvirtd::privsep::ChannelError::Decode(_)) => {
                heard.lock().unwrap().push("something undecodable".into());
                continue;
            }
            Err(_) => return,
        };
        heard.lock().unwrap().push(format!("{command:?}"));
        let answer = match (speaks, command) {
            (Speaks::Unversioned | Speaks::CannotPause, HelperCommand::Stats) => HelperEvent::Stats(stats.clone()),
            (Speaks::CannotPause, HelperCommand::Pause) => {
                HelperEvent::PauseFailed { detail: "vCPU 0 did not stop within 1000 ms; the guest runs on".into() }
            }
            _ => continue,
        };
        let _ = channel.send_wait(&answer, &[]);
    }
}

/// An audit record's `reason`, hex-decoded where it was encoded.
fn reason(record: &str) -> String {
    let value = record.split(" reason=").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_default();
    if let Some(quoted) = value.strip_prefix('"') {
        return quoted.trim_end_matches('"').to_owned();
    }
    let bytes: Vec<u8> =
        (0..value.len() / 2).map(|i| u8::from_str_radix(&value[2 * i..2 * i + 2], 16).unwrap()).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn a_helper_of_another_protocol_version_is_reported_running_but_unmanageable() {
    if !have_virsh() {
        return;
    }
    let tree = Tree::new();
    tree.write_conf("");
    // A helper of a newer build than this daemon's.
    let newer_version = HELPER_PROTOCOL_VERSION + 1;
    let mut newer = stand_in(
        &tree,
        "from-v3",
        "5d1f7a3c-2b8e-4c61-9f0a-7e3d2c1b0a01",
        1,
        Speaks::Version(HELPER_PROTOCOL_VERSION + 1),
    );
    let mut older = stand_in(&tree, "from-v1", "5d1f7a3c-2b8e-4c61-9f0a-7e3d2c1b0a02", 2, Speaks::Unversioned);
    let d = Daemon::start_in(tree, &[]);
    let rw = d.tree.sock("libvirt-sock");

    // Both guests run, as far as anyone can tell.
    let (_, list, _) = virsh(&rw, &["list", "--name"]);
    assert!(list.contains("from-v1\n") && list.contains("from-v3\n"), "{list}\n{}", d.stderr());
    assert_eq!(virsh(&rw, &["domstate", "from-v3"]).1.trim(), "running");
    assert_eq!(virsh(&rw, &["domid", "from-v3"]).1.trim(), "1");

    // Every operation names the mismatch, and what still works.
    for (op, args) in [("suspend", vec!["suspend"]), ("shutdown", vec!["shutdown"]), ("reboot", vec!["reboot"])] {
        let mut args = args;
        args.push("from-v3");
        let (code, _, err) = virsh(&rw, &args);
        assert_ne!(code, 0, "{op} worked on an unmanageable guest");
        assert!(err.contains("guest 'from-v3' runs but cannot be managed"), "{op}: {err}");
        assert!(err.contains(&format!("its helper speaks helper protocol version {newer_version}")), "{op}: {err}");
        assert!(err.contains(&format!("this daemon speaks version {HELPER_PROTOCOL_VERSION}")), "{op}: {err}");
        assert!(err.contains("only destroy works on it"), "{op}: {err}");
    }
    let (code, _, err) = virsh(&rw, &["suspend", "from-v1"]);
    assert_ne!(code, 0);
    assert!(err.contains("the unversioned helper protocol of builds before version 2"), "{err}");
    // (virsh console needs a terminal: the call itself, raw.)
    let mut client = RawClient::connect(&rw);
    client.open(0);
    let uuid = libvirtd::domain::parse_uuid("5d1f7a3c-2b8e-4c61-9f0a-7e3d2c1b0a01").unwrap();
    let dom = libvirtd::rpc::remote::NonnullDomain {
        name: "from-v3".into(),
        uuid: libvirtd::rpc::xdr::FixedOpaque(uuid.0),
        id: 1,
    };
    let args = libvirtd::rpc::remote::OpenConsoleArgs { dom, dev_name: None, flags: 0 };
    let (h, payload) = client.call(201, &libvirtd::rpc::xdr::to_bytes(&args).unwrap());
    assert_ne!(h.status, 0, "a console opened on an unmanageable guest");
    let message = remote_error(&payload).message.unwrap_or_default();
    assert!(message.contains("cannot be managed"), "{message}");

    // Reported in the audit trail and the log.
    let v3 = d.tree.audit(&["op=reattach ", "vm=\"from-v3\"", "res=failed"], SECS).expect("no audit record");
    let why = reason(&v3);
    assert!(
        why.starts_with(&format!("unmanageable: its helper speaks helper protocol version {newer_version};")),
        "{why}"
    );
    let v1 = d.tree.audit(&["op=reattach ", "vm=\"from-v1\"", "res=failed"], SECS).expect("no audit record");
    assert!(reason(&v1).contains("unversioned"), "{v1}");
    assert!(
        d.stderr().contains("domain 'from-v3' (id 1): guest 'from-v3' runs but cannot be managed"),
        "{}",
        d.stderr()
    );

    // Nothing was sent to the helper that greeted in another version; the
    // unversioned one was only asked what every version reads alike.
    assert_eq!(newer.heard(), Vec::<String>::new());
    assert_eq!(older.heard(), ["Stats"]);

    // Destroy still stops such a guest.
    let (code, _, err) = virsh(&rw, &["destroy", "from-v3"]);
    assert_eq!(code, 0, "{err}");
    assert!(wait_until(SECS, || newer.gone()), "destroy left the helper running");
    // (A transient guest, it is gone with its helper.)
    let (_, list, _) = virsh(&rw, &["list", "--all", "--name"]);
    assert!(!list.contains("from-v3") && list.contains("from-v1"), "{list}");
    assert!(!older.gone());
}

#[test]
fn a_pause_the_helper_could_not_complete_fails_suspend_at_once_with_its_reason() {
    if !have_virsh() {
        return;
    }
    let tree = Tree::new();
    tree.write_conf("");
    let helper = stand_in(&tree, "stuck-vcpu", "5d1f7a3c-2b8e-4c61-9f0a-7e3d2c1b0a03", 1, Speaks::CannotPause);
    let d = Daemon::start_in(tree, &[]);
    let rw = d.tree.sock("libvirt-sock");
    assert_eq!(virsh(&rw, &["domstate", "stuck-vcpu"]).1.trim(), "running", "{}", d.stderr());

    let asked = Instant::now();
    let (code, _, err) = virsh(&rw, &["suspend", "stuck-vcpu"]);
    assert_ne!(code, 0);
    assert!(asked.elapsed() < Duration::from_secs(4), "suspend waited for the broker's own deadline");
    assert!(err.contains("guest 'stuck-vcpu' could not be paused: vCPU 0 did not stop within 1000 ms"), "{err}");
    assert_eq!(virsh(&rw, &["domstate", "stuck-vcpu"]).1.trim(), "running");
    let uuid = "uuid=\"5d1f7a3c-2b8e-4c61-9f0a-7e3d2c1b0a03\"";
    let record = d.tree.audit(&["op=suspend ", uuid, "res=failed"], SECS).expect("no audit record");
    assert!(reason(&record).contains("could not be paused"), "{record}");
    // It was spoken to as a helper of this version: a new console, its
    // state asked, then the pause.
    let heard = helper.heard();
    assert!(heard.iter().any(|h| h.starts_with("Console")), "{heard:?}");
    assert_eq!(heard.last().map(String::as_str), Some("Pause"), "{heard:?}");
}
