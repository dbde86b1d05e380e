//! virtio-net end to end: the helper, driven directly with fds as the
//! broker drives it, runs the test guest with a NIC over a tap that this
//! test makes (as the broker does, `network::tap::create`) inside a
//! network namespace of its own; the host side of every frame is that
//! namespace. The helper must refuse taps that do not match the guest's
//! interfaces, run each interface on a `helper-net<N>` thread under its own
//! seccomp filter (which kills a path open), count frames, and drop them
//! both ways with the link down.
//!
//! The `guest_` tests boot the test guest with its virtio-net driver
//! (`tests/guest/guest.S`): it prints `NET eth0 MAC=... IP=...`, answers
//! ARP and ICMP echo, echoes UDP on port 7 and has the shell commands
//! `udpsend`, `netbad`, `udprr` and `udpburst`.

mod common;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{is_root, require};
use libvirtd::privsep::helper::{
    FdRole, GuestConfig, HELPER_PROTOCOL_VERSION, HelperCommand, HelperEvent, NicConfig, NicCounters, StartFds,
    StopReason,
};

const HELPER: &str = env!("CARGO_BIN_EXE_libvirt-helper");
const T: Duration = Duration::from_secs(60);
const PROBE_ENV: &str = "LIBVIRTD_NET_SANDBOX_PROBE";
/// The tap's end of the link, in the namespace.
const HOST_IP: &str = "10.77.0.1";
/// The guest's static address (kernel command line `ip=`).
const GUEST_IP: &str = "10.77.0.15";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x4e, 0x45, 0x54];

fn guest() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("libvirtd-test-guest-net-{}", std::process::id()));
        common::build_guest(&dir);
        dir
    })
}

/// Root (taps, namespaces), `ip` and `/dev/kvm`; under CI a missing one fails.
fn can_run() -> bool {
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    require(is_root(), "root") && require(kvm, "/dev/kvm") && require(ip, "ip (iproute2)")
}

/// A network namespace this test made, with one tap in it (up, with
/// [`HOST_IP`]), whose fd the helper gets. Deleted, with the tap, when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("lvrs-net-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success(), "ip netns add");
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `argv` in the namespace; returns (success, stdout + stderr).
    fn run(&self, argv: &[&str]) -> (bool, String) {
        let out = Command::new("ip").args(["netns", "exec", &self.name]).args(argv).output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Runs `f` on a thread that has entered the namespace: what it makes
    /// (a tap, a socket) stays in the namespace.
    fn inside<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// A tap named `name` made as the broker makes it, up, with [`HOST_IP`].
    fn tap(&self, name: &'static str) -> OwnedFd {
        let (fd, given) = self.inside(move || libvirtd::network::tap::create(Some(name)).unwrap());
        assert_eq!(given, name);
        let (ok, out) = self.run(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", name]);
        assert!(ok, "{out}");
        let (ok, out) = self.run(&["ip", "link", "set", name, "up"]);
        assert!(ok, "{out}");
        fd
    }

    /// Sends `count` ICMP echo requests to `addr` from the namespace (a raw
    /// socket: no `ping` binary needed); whether any answer came.
    fn ping(&self, addr: &str, count: u16) -> bool {
        self.echoes(addr, count) > 0
    }

    /// How many of `count` ICMP echoes to `addr` were answered.
    fn echoes(&self, addr: &str, count: u16) -> u64 {
        use nix::sys::socket::{
            AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recv, sendto, setsockopt, socket,
            sockopt,
        };
        let fd = self
            .inside(|| socket(AddressFamily::Inet, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::Icmp).unwrap());
        let timeout = nix::sys::time::TimeVal::new(0, 300_000);
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).unwrap();
        let to: SockaddrIn = format!("{addr}:0").parse::<std::net::SocketAddrV4>().unwrap().into();
        let id: u16 = 0x4c56;
        let mut answered = 0;
        for seq in 0..count {
            let mut packet = vec![8u8, 0, 0, 0];
            packet.extend_from_slice(&id.to_be_bytes());
            packet.extend_from_slice(&seq.to_be_bytes());
            packet.extend((0..56).map(|i| i as u8));
            let sum = checksum(&packet);
            packet[2..4].copy_from_slice(&sum.to_be_bytes());
            sendto(fd.as_raw_fd(), &packet, &to, MsgFlags::empty()).unwrap();
            let end = Instant::now() + Duration::from_millis(1500);
            let mut buf = [0u8; 1500];
            while Instant::now() < end {
                let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else { continue };
                // An IPv4 header, then ICMP: an echo reply with our id and sequence.
                let ihl = usize::from(buf[0] & 0xf) * 4;
                let icmp = &buf[ihl.min(n)..n];
                if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() && icmp[6..8] == seq.to_be_bytes()
                {
                    answered += 1;
                    break;
                }
            }
        }
        answered
    }
}

/// The Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn nic(alias: &str, slot: u8) -> NicConfig {
    NicConfig { alias: alias.into(), mac: GUEST_MAC, pci_slot: slot, link_up: true, mtu: None }
}

/// A helper running the test guest, its console and control channel.
struct Guest {
    pid: nix::unistd::Pid,
    channel: libvirtd::privsep::Channel,
    console: UnixStream,
    output: String,
    _dir: tempfile::TempDir,
}

/// What a helper said to a `Start`.
enum Started {
    Running(Guest),
    Failed(String),
}

impl Guest {
    /// Starts the guest with `nics`; `roles` and `taps` are sent as the tap
    /// fds' manifest, so a test can send ones that do not match.
    fn start(nics: Vec<NicConfig>, cmdline: &str, taps: &[(FdRole, &OwnedFd)]) -> Started {
        let spawned = libvirtd::broker::spawn_helper(Path::new(HELPER)).unwrap();
        let kvm = OwnedFd::from(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").unwrap());
        let kernel = OwnedFd::from(std::fs::File::open(guest().join("pvh.elf")).unwrap());
        let (console, theirs) = UnixStream::pair().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let listener = common::helper_guest::control_listener(&dir.path().join("guest.ctl"));
        let id = libvirtd::config::SANDBOX_ID_BASE + 11;
        let config = GuestConfig { cmdline: cmdline.into(), ids: Some((id, id)), nics, ..GuestConfig::test(32) };
        let fds = StartFds {
            kvm: kvm.as_fd(),
            kernel: kernel.as_fd(),
            initrd: None,
            console: theirs.as_fd(),
            control_listener: listener.as_fd(),
            disks: &[],
            taps: &[],
        };
        let (command, mut borrowed) = HelperCommand::start(config, &fds);
        let HelperCommand::Start { version, config, fds: mut roles } = command else { unreachable!() };
        for (role, fd) in taps {
            roles.push(*role);
            borrowed.push(fd.as_fd());
        }
        spawned.channel.send(&HelperCommand::Start { version, config, fds: roles }, &borrowed).unwrap();
        let libvirtd::broker::Spawned { pid, channel } = spawned;
        let g = Guest { pid, channel, console, output: String::new(), _dir: dir };
        assert_eq!(g.event(Duration::from_secs(10)), HelperEvent::Hello { version: HELPER_PROTOCOL_VERSION });
        match g.event(Duration::from_secs(10)) {
            HelperEvent::Started => Started::Running(g),
            HelperEvent::Stopped { reason: StopReason::Failed, detail } => Started::Failed(detail),
            other => panic!("{other:?}"),
        }
    }

    /// Boots the guest with one NIC over `tap`.
    fn boot(tap: &OwnedFd, cmdline: &str) -> Guest {
        match Guest::start(vec![nic("net0", 3)], cmdline, &[(FdRole::Tap { nic: 0 }, tap)]) {
            Started::Running(g) => g,
            Started::Failed(why) => panic!("the helper refused the guest: {why}"),
        }
    }

    fn event(&self, timeout: Duration) -> HelperEvent {
        common::helper_guest::event(&self.channel, timeout)
    }

    fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        common::helper_guest::expect(&mut self.console, &mut self.output, needle, timeout)
    }

    /// Types `line` and waits for the next prompt; returns what came before it.
    fn run(&mut self, line: &str) -> String {
        self.console.write_all(format!("{line}\r").as_bytes()).unwrap();
        self.expect(&format!("{line}\r\n"), T);
        self.expect("> ", T)
    }

    fn net_stats(&self, command: HelperCommand) -> Vec<NicCounters> {
        self.channel.send(&command, &[]).unwrap();
        loop {
            match self.event(Duration::from_secs(10)) {
                HelperEvent::NetStats(n) => return n,
                // Unsolicited events may come first.
                HelperEvent::IoError { .. } | HelperEvent::Balloon(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    fn stats(&self) -> NicCounters {
        let mut all = self.net_stats(HelperCommand::NetStats);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    fn set_link(&self, up: bool) -> NicCounters {
        let mut all = self.net_stats(HelperCommand::SetLink { alias: "net0".into(), up });
        all.remove(0)
    }

    fn power_off(mut self) {
        self.console.write_all(b"poweroff\r").unwrap();
        loop {
            match self.event(T) {
                HelperEvent::Stopped { reason, detail } => {
                    assert_eq!(reason, StopReason::PowerOff, "{detail}");
                    break;
                }
                HelperEvent::IoError { .. } | HelperEvent::Balloon(_) => {}
                other => panic!("{other:?}"),
            }
        }
        let status = nix::sys::wait::waitpid(self.pid, None).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(self.pid, 0), "no signal ended it");
    }

    fn alive(&mut self) {
        let out = self.run("echo still here");
        assert!(out.contains("still here"), "{out}");
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

#[test]
fn the_helper_refuses_taps_that_do_not_match_its_interfaces() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("refuse");
    let tap = ns.tap("vnet0");
    let other = ns.tap("vnet1");
    let refused = |nics: Vec<NicConfig>, taps: &[(FdRole, &OwnedFd)]| match Guest::start(nics, "", taps) {
        Started::Running(_) => panic!("a mismatched Start was run"),
        Started::Failed(why) => why,
    };
    // An interface without its tap.
    let why = refused(vec![nic("net0", 3)], &[]);
    assert!(why.contains("Tap { nic: 0 }"), "{why}");
    // A tap with no interface.
    let why = refused(Vec::new(), &[(FdRole::Tap { nic: 0 }, &tap)]);
    assert!(why.contains("no use"), "{why}");
    // Two taps for one interface, and a tap under another interface's number.
    let why = refused(vec![nic("net0", 3)], &[(FdRole::Tap { nic: 0 }, &tap), (FdRole::Tap { nic: 1 }, &other)]);
    assert!(why.contains("no use"), "{why}");
    let why = refused(vec![nic("net0", 3)], &[(FdRole::Tap { nic: 1 }, &tap)]);
    assert!(why.contains("Tap { nic: 0 }"), "{why}");
    // The same role twice.
    let why = refused(vec![nic("net0", 3)], &[(FdRole::Tap { nic: 0 }, &tap), (FdRole::Tap { nic: 0 }, &other)]);
    assert!(why.contains("twice"), "{why}");
    // Values a broker should never send: a multicast MAC, an MTU below 68.
    let multicast = NicConfig { mac: [0x01, 0, 0x5e, 0, 0, 1], ..nic("net0", 3) };
    let why = refused(vec![multicast], &[(FdRole::Tap { nic: 0 }, &tap)]);
    assert!(why.contains("multicast"), "{why}");
    let tiny = NicConfig { mtu: Some(60), ..nic("net0", 3) };
    let why = refused(vec![tiny], &[(FdRole::Tap { nic: 0 }, &tap)]);
    assert!(why.contains("MTU"), "{why}");
}

#[test]
fn an_interface_runs_on_its_own_confined_thread_and_drops_frames_with_its_link_down() {
    if !can_run() {
        return;
    }
    let ns = Netns::new("thread");
    let tap = ns.tap("vnet0");
    let mut g = Guest::boot(&tap, &format!("ip={GUEST_IP}/24"));
    g.expect("> ", T);
    let pid = g.pid.as_raw();
    let mut net = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_string();
        if comm.starts_with("helper-net") {
            let status = format!("{}/status", task.path().display());
            assert_eq!(common::task_status_field(&status, "Seccomp").as_deref(), Some("2"), "{comm}");
            assert_eq!(common::task_status_field(&status, "NoNewPrivs").as_deref(), Some("1"), "{comm}");
            let id = (libvirtd::config::SANDBOX_ID_BASE + 11).to_string();
            let uids = common::task_status_field(&status, "Uid").unwrap();
            assert!(uids.split_whitespace().all(|u| u == id), "{comm} runs as the guest: {uids}");
            assert_eq!(common::task_status_field(&status, "CapEff").as_deref(), Some("0000000000000000"));
            net.push(comm);
        }
    }
    assert_eq!(net, ["helper-net0"]);

    // The guest's address is known: each ping is one frame to the tap, no ARP.
    let lladdr = GUEST_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let (ok, out) = ns.run(&["ip", "neigh", "replace", GUEST_IP, "lladdr", &lladdr, "dev", "vnet0"]);
    assert!(ok, "{out}");
    let before = g.stats();
    assert_eq!((before.alias.as_str(), before.link_up, before.tx_errs), ("net0", true, 0), "{before:?}");
    // The host's frames reach the device: delivered if the guest has a
    // driver up, dropped (and counted) if not.
    ns.ping(GUEST_IP, 2);
    let up = g.stats();
    let seen = |c: &NicCounters| c.rx_packets + c.rx_drop;
    assert!(seen(&up) > seen(&before), "the host's frames reached the device: {up:?}");

    let down = g.set_link(false);
    assert!(!down.link_up, "{down:?}");
    assert!(!ns.ping(GUEST_IP, 3), "nothing answers with the link down");
    let after = g.stats();
    assert!(after.rx_drop >= up.rx_drop + 3, "each frame from the host dropped and counted: {after:?}");
    assert_eq!(after.rx_packets, up.rx_packets, "none delivered: {after:?}");
    assert!(!after.link_up);
    assert!(g.set_link(true).link_up);
    g.alive();
    // An unknown alias changes nothing and still gets the interfaces' counters.
    let all = g.net_stats(HelperCommand::SetLink { alias: "net9".into(), up: false });
    assert_eq!((all.len(), all[0].link_up), (1, true), "{all:?}");
    // The network thread ends under its filter too: the helper reports the power-off.
    g.power_off();
}

/// Re-runs this test binary's `net_probe_entry` with `kind`, in a child process.
fn probe(kind: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "net_probe_entry", "--nocapture", "--test-threads=1"])
        .env(PROBE_ENV, kind)
        .output()
        .unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// In a child (PROBE_ENV set): confines itself as a helper's network thread
/// and tries what the kind names. In the test run itself: checks that the
/// thread has a compiled filter of its own.
#[test]
fn net_probe_entry() {
    use libvirtd::sandbox::{self, Profile, Thread};
    let Ok(kind) = std::env::var(PROBE_ENV) else {
        assert_eq!(Thread::HelperNet.comm(), "helper-net");
        assert_ne!(Thread::HelperNet.policy(), Thread::HelperIo.policy(), "a filter of its own");
        assert!(!Thread::HelperNet.policy().instructions().is_empty());
        return;
    };
    let ids = is_root().then_some((libvirtd::config::SANDBOX_ID_BASE, libvirtd::config::SANDBOX_ID_BASE));
    sandbox::confine(&Profile::helper(ids)).unwrap();
    sandbox::seccomp::apply(Thread::HelperNet).unwrap();
    println!("confined");
    // What the thread does is allowed: TUNSETOFFLOAD (on stdin, not a tap: ENOTTY).
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    let r = unsafe { libc::ioctl(0, libc::TUNSETOFFLOAD as _, 0 as libc::c_ulong) };
    println!("TUNSETOFFLOAD ran ({r})");
    match kind.as_str() {
        "open" => {
            let r = std::fs::File::open("/etc/hostname");
            println!("open returned {r:?}");
        }
        "ioctl" => {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD on stdin writes one int into `n`.
            let r = unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) };
            println!("ioctl returned {r}");
        }
        other => panic!("unknown probe {other}"),
    }
    let _ = std::io::stdout().flush();
    // SAFETY: _exit ends the process at once; nothing needs to run after it.
    unsafe { libc::_exit(0) }
}

#[test]
fn a_network_thread_cannot_open_a_path_or_make_another_ioctl() {
    for kind in ["open", "ioctl"] {
        let (status, out) = probe(kind);
        assert!(out.contains("TUNSETOFFLOAD ran"), "{kind}: its own calls are allowed: {out}");
        assert!(!out.contains("returned"), "{kind}: {out}");
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{kind}: {status:?} {out}");
    }
}

// ---- Against the test guest's virtio-net driver (guest side of issue 16). ----

/// Boots the guest on a fresh namespace's tap with its static address and
/// waits for its NET line.
fn net_guest(tag: &str) -> (Netns, OwnedFd, Guest) {
    let ns = Netns::new(tag);
    let tap = ns.tap("vnet0");
    let mut g = Guest::boot(&tap, &format!("ip={GUEST_IP}/24"));
    g.expect(&format!("NET eth0 MAC=52:54:00:4e:45:54 IP={GUEST_IP}"), T);
    g.expect("> ", T);
    (ns, tap, g)
}

#[test]
fn guest_answers_ping_on_its_static_address_and_the_counters_show_it() {
    if !can_run() {
        return;
    }
    let (ns, _tap, g) = net_guest("ping");
    let answered = ns.echoes(GUEST_IP, 3);
    assert!(answered > 0, "the guest answers ICMP echo");
    // Every answer the host saw went out through the device, after the ARP
    // reply that let the host send at all. The device counts a frame after
    // the tap took it, so the host may see the last answer a moment before
    // the counter does.
    let counted = |c: &NicCounters| c.rx_packets > answered && c.tx_packets > answered;
    let end = Instant::now() + Duration::from_secs(2);
    let mut c = g.stats();
    while !counted(&c) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        c = g.stats();
    }
    assert!(counted(&c), "ARP and {answered} echoes: {c:?}");
    assert!(c.rx_bytes >= answered * 98 && c.tx_bytes >= answered * 98, "{c:?}");
    assert_eq!((c.rx_errs, c.tx_errs), (0, 0), "{c:?}");
}

#[test]
fn guest_link_down_makes_it_unreachable_and_up_brings_it_back() {
    if !can_run() {
        return;
    }
    let (ns, _tap, g) = net_guest("link");
    assert!(ns.ping(GUEST_IP, 2));
    g.set_link(false);
    assert!(!ns.ping(GUEST_IP, 3), "unreachable with the link down");
    let c = g.stats();
    assert!(c.rx_drop >= 3, "{c:?}");
    g.set_link(true);
    assert!(ns.ping(GUEST_IP, 3), "reachable again");
}

#[test]
fn guest_echoes_udp_and_sends_udp_to_the_host() {
    if !can_run() {
        return;
    }
    let (ns, _tap, mut g) = net_guest("udp");
    let socket = ns.inside(|| std::net::UdpSocket::bind(format!("{HOST_IP}:5555")).unwrap());
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    socket.send_to(b"ping over virtio", format!("{GUEST_IP}:7")).unwrap();
    let mut buf = [0u8; 256];
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from.to_string()), (&b"ping over virtio"[..], format!("{GUEST_IP}:7")));
    g.run(&format!("udpsend {HOST_IP} 5555 hello-from-guest"));
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello-from-guest");
    assert_eq!(from.ip().to_string(), GUEST_IP);
}

#[test]
fn guest_malformed_chain_is_counted_and_the_helper_lives() {
    if !can_run() {
        return;
    }
    let (ns, _tap, mut g) = net_guest("bad");
    let before = g.stats();
    g.run("netbad");
    let after = g.stats();
    assert!(after.tx_errs > before.tx_errs, "the malformed chain is counted: {after:?}");
    assert_eq!(after.tx_packets, before.tx_packets, "and not sent: {after:?}");
    g.alive();
    assert!(ns.ping(GUEST_IP, 2), "the device goes on");
}

#[test]
fn guest_udp_round_trips_reach_a_host_echo_server() {
    if !can_run() {
        return;
    }
    let (ns, _tap, mut g) = net_guest("udprr");
    let socket = ns.inside(|| std::net::UdpSocket::bind(format!("{HOST_IP}:7007")).unwrap());
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut seen = 0;
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            socket.send_to(&buf[..n], from).unwrap();
            seen += 1;
            if seen == 20 {
                break;
            }
        }
        seen
    });
    let out = g.run(&format!("udprr {HOST_IP} 7007 20"));
    assert_eq!(echo.join().unwrap(), 20, "every request reached the host: {out}");
    assert!(out.chars().any(|c| c.is_ascii_digit()), "it prints the elapsed time: {out}");
    let c = g.stats();
    assert!(c.tx_packets >= 20 && c.rx_packets >= 20, "{c:?}");
}

#[test]
fn guest_udpburst_sends_every_datagram_back_to_back_and_the_device_counts_them() {
    if !can_run() {
        return;
    }
    let (ns, _tap, mut g) = net_guest("burst");
    let socket = ns.inside(|| std::net::UdpSocket::bind(format!("{HOST_IP}:9009")).unwrap());
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let before = g.stats().tx_packets;
    let out = g.run(&format!("udpburst {HOST_IP} 9009 50"));
    assert!(out.contains("UDPBURST N=50 CYCLES="), "{out}");
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        assert_eq!((&buf[..n], from.to_string()), (&b"udprr-00"[..], format!("{GUEST_IP}:40000")));
        got += 1;
        if got == 50 {
            break;
        }
    }
    assert_eq!(got, 50, "every datagram reached the host: {out}");
    // Each went out through the device (ARP for the host's MAC came first).
    assert!(g.stats().tx_packets >= before + 50);
}
