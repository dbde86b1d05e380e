//! The guest-level figures of `benches/virtio_net.rs`: the test guest over
//! a tap in a namespace of its own, in our helper and in QEMU, side by side.

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use libvirtd::privsep::helper::{GuestConfig, HelperCommand, HelperEvent, NicConfig, StartFds};

use super::Netns;
use super::qemu::Qemu;

const HELPER: &str = env!("CARGO_BIN_EXE_libvirt-helper");
const TAP: &str = "gtap0";
const HOST_IP: &str = "10.79.0.1";
const GUEST_IP: &str = "10.79.0.15";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x4e, 0x45, 0x54];
const ECHO_PORT: u16 = 7007;
const SINK_PORT: u16 = 9009;
/// Round trips and back-to-back datagrams per run: each costs the guest
/// about a millisecond where /dev/kvm emulates its instructions.
const RR: u32 = 500;
const BURST: u32 = 3000;
/// Each side's flood comes in slices, the two sides' alternating.
const FLOOD_SLICE: Duration = Duration::from_millis(750);
const FLOOD_SLICES: u32 = 4;
const ROUNDS: u32 = 9;
const IDLE: Duration = Duration::from_secs(1);
const T: Duration = Duration::from_secs(120);

/// A guest's serial console: a thread pumps what it prints into `out`.
struct Console {
    input: Box<dyn Write + Send>,
    out: Receiver<Vec<u8>>,
    seen: String,
}

impl Console {
    fn new(mut reader: impl Read + Send + 'static, input: impl Write + Send + 'static) -> Console {
        let (tx, out) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Console { input: Box::new(input), out, seen: String::new() }
    }

    /// Everything up to and including `needle`, or None if it did not come
    /// within `timeout` (or the guest's console ended).
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(i) = self.seen.find(needle) {
                let upto = self.seen[..i + needle.len()].to_owned();
                self.seen.drain(..i + needle.len());
                return Some(upto);
            }
            let left = end.checked_duration_since(Instant::now())?;
            let bytes = self.out.recv_timeout(left.min(Duration::from_millis(200)));
            match bytes {
                Ok(b) => self.seen.push_str(&String::from_utf8_lossy(&b)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Types `line`; returns the answer line that starts with `answer` and
    /// the wall-clock time from typing to that line.
    fn run(&mut self, line: &str, answer: &str) -> (String, Duration) {
        let t = Instant::now();
        self.input.write_all(format!("{line}\r").as_bytes()).unwrap();
        self.input.flush().unwrap();
        self.wait_for(&format!("\n{answer}"), T).unwrap_or_else(|| panic!("no {answer} answer to {line:?}"));
        let rest = self.wait_for("\r\n", T).unwrap();
        let took = t.elapsed();
        self.wait_for("> ", T).unwrap();
        (format!("{answer}{}", rest.trim_end()), took)
    }
}

/// What runs the guest: killed when dropped. (The helper's control
/// channel is kept open: a helper whose broker hangs up stops its guest.)
enum Vmm {
    Helper(nix::unistd::Pid, #[allow(dead_code)] libvirtd::privsep::Channel),
    Qemu(Child),
}

impl Vmm {
    fn pid(&self) -> i32 {
        match self {
            Vmm::Helper(pid, _) => pid.as_raw(),
            Vmm::Qemu(child) => child.id() as i32,
        }
    }

    /// CPU time so far of the process's threads that are not vCPUs (ours:
    /// `helper-vcpu<N>`; QEMU's, named with `debug-threads=on`: `CPU
    /// <N>/KVM`): what moving the frames cost the host, apart from running
    /// the guest.
    fn device_cpu(&self) -> Duration {
        self.cpu(false)
    }

    /// CPU time so far of the vCPU threads: running the guest, which an
    /// emulating KVM does an instruction at a time, and serving its exits.
    fn vcpu_cpu(&self) -> Duration {
        self.cpu(true)
    }

    fn cpu(&self, vcpus: bool) -> Duration {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).into_iter().flatten().flatten();
        let ns: u64 = tasks
            .filter(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                vcpus == (comm.starts_with("helper-vcpu") || comm.trim_end().ends_with("/KVM"))
            })
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(ns)
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        match self {
            Vmm::Helper(pid, _) => {
                let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(*pid, None);
            }
            Vmm::Qemu(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A namespace with a tap up at [`HOST_IP`] and the guest's neighbour
/// entry fixed (the flood needs no ARP).
fn namespace(tag: &str) -> Netns {
    let ns = Netns(format!("lvrs-bench-{tag}-{}", std::process::id()));
    let _ = Command::new("ip").args(["netns", "del", &ns.0]).stderr(Stdio::null()).status();
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    ns.run(&["ip", "link", "set", "lo", "up"]);
    ns
}

fn address_tap(ns: &Netns) {
    ns.run(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    ns.run(&["ip", "link", "set", TAP, "up"]);
    let mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
    ns.run(&["ip", "neigh", "replace", GUEST_IP, "lladdr", &mac, "dev", TAP]);
}

/// Our helper running `kernel` with one NIC over a tap made as the broker
/// makes it, under the sandbox ids the daemon gives guests.
fn ours(ns: &Netns, kernel: &Path, dir: &Path) -> (Vmm, Console) {
    let tap: OwnedFd = ns.inside(|| libvirtd::network::tap::create(Some(TAP)).unwrap().0);
    address_tap(ns);
    let spawned = libvirtd::broker::spawn_helper(Path::new(HELPER)).unwrap();
    let kvm = OwnedFd::from(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").unwrap());
    let kernel = OwnedFd::from(std::fs::File::open(kernel).unwrap());
    let (console, theirs) = UnixStream::pair().unwrap();
    // The last round's socket is replaced.
    let listener = super::common::helper_guest::control_listener(&dir.join("guest.ctl"));
    let id = libvirtd::config::SANDBOX_ID_BASE + 21;
    let nic = NicConfig { alias: "net0".into(), mac: GUEST_MAC, pci_slot: 3, link_up: true, mtu: None };
    let config = GuestConfig {
        cmdline: format!("console=ttyS0 ip={GUEST_IP}/24"),
        ids: Some((id, id)),
        nics: vec![nic],
        ..GuestConfig::test(64)
    };
    let taps = [tap.as_fd()];
    let fds = StartFds {
        kvm: kvm.as_fd(),
        kernel: kernel.as_fd(),
        initrd: None,
        console: theirs.as_fd(),
        control_listener: listener.as_fd(),
        disks: &[],
        taps: &taps,
    };
    let (command, borrowed) = HelperCommand::start(config, &fds);
    spawned.channel.send(&command, &borrowed).unwrap();
    loop {
        let (e, _) = spawned.channel.recv_blocking::<HelperEvent>(30_000, HelperEvent::fd_count).unwrap();
        match e {
            HelperEvent::Started => break,
            HelperEvent::Hello { .. } => {}
            other => panic!("the helper did not start the guest: {other:?}"),
        }
    }
    let vmm = Vmm::Helper(spawned.pid, spawned.channel);
    let reader = console.try_clone().unwrap();
    (vmm, Console::new(reader, console))
}

/// QEMU running `kernel` in `ns` with `-device virtio-net-pci` over a tap
/// of the same kind (vnet header; no vhost), its console on stdio.
fn qemu(ns: &Netns, kernel: &Path, q: &Qemu) -> (Vmm, Console) {
    ns.run(&["ip", "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"]);
    address_tap(ns);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0]).arg(&q.bin);
    q.set_up(&mut cmd);
    let mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
    // A session of its own, as the broker gives our helper: the scheduler
    // groups threads by session (autogroups), and a VMM in the benchmark's
    // own session would share its group with the echo server's thread.
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .args(["-accel", "kvm", "-M", "pc", "-m", "64", "-smp", "1", "-nodefaults", "-display", "none"])
        .args(["-name", "guest=bench,debug-threads=on"])
        .args(["-no-reboot", "-serial", "stdio", "-monitor", "none", "-kernel"])
        .arg(kernel)
        .args(["-append", &format!("console=ttyS0 ip={GUEST_IP}/24")])
        .args(["-netdev", &format!("tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off")])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},disable-legacy=on,romfile=")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    (Vmm::Qemu(child), Console::new(stdout, stdin))
}

/// A UDP server in `ns` at `port`: echoes (or only counts) what comes,
/// until `stop`; the count.
fn server(ns: &Netns, port: u16, echo: bool, stop: Arc<AtomicBool>) -> (std::thread::JoinHandle<()>, Arc<AtomicU64>) {
    let socket: UdpSocket = ns.inside(move || UdpSocket::bind(format!("{HOST_IP}:{port}")).unwrap());
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                seen.fetch_add(1, Ordering::Relaxed);
                if echo {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        }
    });
    (handle, count)
}

/// The guest's counts (`netstat`): frames received, receive batches (passes
/// that found frames) and sleeps (waits in `hlt` for an interrupt).
fn guest_rx(console: &mut Console) -> [u64; 3] {
    let (line, _) = console.run("netstat", "NETSTAT eth0");
    let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)?.parse().ok()).unwrap_or(0);
    [field("RX="), field("BATCHES="), field("SLEEPS=")]
}

/// One implementation's figures: round trip (µs), TX packets/s, RX
/// packets/s, and the host CPU its non-vCPU threads spent per packet sent
/// and per packet received (µs).
#[derive(Clone, Copy)]
struct Figures {
    rr_us: f64,
    tx_pps: f64,
    rx_pps: f64,
    tx_cpu_us: f64,
    rx_cpu_us: f64,
}

/// One implementation under test, booted: its guest, namespace and the
/// host's UDP servers there. (Fields drop in order: the VMM before its
/// namespace.)
struct Side {
    label: String,
    vmm: Vmm,
    console: Console,
    ns: Netns,
    net: String,
    stop: Arc<AtomicBool>,
    servers: Vec<std::thread::JoinHandle<()>>,
    sunk: Arc<AtomicU64>,
    flood: Flood,
}

/// What the flood slices of one side added up to.
#[derive(Default)]
struct Flood {
    sent: u64,
    frames: u64,
    batches: u64,
    sleeps: u64,
    wall: Duration,
    device: Duration,
    vcpu: Duration,
}

impl Side {
    /// Waits for the guest's prompt and starts the servers; `None` (said
    /// why) if it did not boot.
    fn boot(label: String, ns: Netns, vmm: Vmm, mut console: Console) -> Option<Side> {
        let Some(boot) = console.wait_for("> ", Duration::from_secs(120)) else {
            println!("{label}: the guest did not boot");
            return None;
        };
        let net = boot.lines().find(|l| l.starts_with("NET eth0")).unwrap_or("no NET line").trim().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let (echo, _) = server(&ns, ECHO_PORT, true, stop.clone());
        let (sink, sunk) = server(&ns, SINK_PORT, false, stop.clone());
        let mut side =
            Side { label, vmm, console, ns, net, stop, servers: vec![echo, sink], sunk, flood: Flood::default() };
        // Warm up: ARP, the first frames.
        side.console.run(&format!("udprr {HOST_IP} {ECHO_PORT} 10"), "UDPRR ");
        Some(side)
    }

    /// Microseconds per UDP round trip, guest to the echo server and back.
    fn round_trip(&mut self) -> f64 {
        let (rr, took) = self.console.run(&format!("udprr {HOST_IP} {ECHO_PORT} {RR}"), "UDPRR ");
        let rr_us = took.as_secs_f64() * 1e6 / f64::from(RR);
        println!("{}: {rr}; {rr_us:.0} µs per UDP round trip (wall clock, {RR} round trips)", self.label);
        rr_us
    }

    /// Packets per second from the guest to the sink, and device-thread
    /// CPU per packet (µs).
    fn burst(&mut self) -> (f64, f64) {
        let (before, cpu) = (self.sunk.load(Ordering::Relaxed), self.vmm.device_cpu());
        let (burst, took) = self.console.run(&format!("udpburst {HOST_IP} {SINK_PORT} {BURST}"), "UDPBURST ");
        let tx_cpu = self.vmm.device_cpu() - cpu;
        std::thread::sleep(Duration::from_millis(200));
        let got = self.sunk.load(Ordering::Relaxed) - before;
        let tx_pps = got as f64 / took.as_secs_f64();
        let tx_cpu_us = tx_cpu.as_secs_f64() * 1e6 / f64::from(BURST);
        println!(
            "{}: {burst}; host received {got} of {BURST}: {tx_pps:.0} packets/s guest to host, \
             {tx_cpu_us:.1} µs of device-thread CPU each",
            self.label
        );
        (tx_pps, tx_cpu_us)
    }

    /// One slice of flood: the namespace sends datagrams to the guest (to
    /// a port it neither echoes nor answers) as fast as it can for
    /// `FLOOD_SLICE`; the guest counts what its driver took.
    fn flood_slice(&mut self) {
        let rx0 = guest_rx(&mut self.console);
        let flooding = Arc::new(AtomicBool::new(true));
        let socket: UdpSocket = self.ns.inside(|| UdpSocket::bind(format!("{HOST_IP}:0")).unwrap());
        let flood = {
            let flooding = flooding.clone();
            std::thread::spawn(move || {
                let payload = [0x42u8; 18];
                let to: std::net::SocketAddr = format!("{GUEST_IP}:9").parse().unwrap();
                let mut sent = 0u64;
                while flooding.load(Ordering::Relaxed) {
                    if socket.send_to(&payload, to).is_ok() {
                        sent += 1;
                    }
                }
                sent
            })
        };
        let (t, device, vcpu) = (Instant::now(), self.vmm.device_cpu(), self.vmm.vcpu_cpu());
        std::thread::sleep(FLOOD_SLICE);
        flooding.store(false, Ordering::Relaxed);
        let sent = flood.join().unwrap();
        let f = &mut self.flood;
        f.wall += t.elapsed();
        f.device += self.vmm.device_cpu() - device;
        f.vcpu += self.vmm.vcpu_cpu() - vcpu;
        f.sent += sent;
        let rx1 = guest_rx(&mut self.console);
        let [frames, batches, sleeps] = [0, 1, 2].map(|i| rx1[i].saturating_sub(rx0[i]));
        f.frames += frames;
        f.batches += batches;
        f.sleeps += sleeps;
    }

    /// Packets per second host to guest over the slices, device-thread CPU
    /// per packet (µs); what they were, said.
    fn flooded(&self) -> (f64, f64) {
        let f = &self.flood;
        let rx_pps = f.frames as f64 / f.wall.as_secs_f64();
        // The frames the tap dropped cost nothing; those delivered did.
        let rx_cpu_us = f.device.as_secs_f64() * 1e6 / f.frames.max(1) as f64;
        // The guest's own pace: frames per second of its vCPU thread's CPU,
        // whatever share of the machine it got beside the flood's sender.
        let per_vcpu_s = f.frames as f64 / f.vcpu.as_secs_f64().max(1e-9);
        println!(
            "{}: flooded with {} datagrams in {:.1} s, the guest took {}: {rx_pps:.0} packets/s host to guest, \
             {rx_cpu_us:.1} µs of device-thread CPU each; {:.2} frames a batch, {} sleeps, {per_vcpu_s:.0} frames \
             per vCPU-second",
            self.label,
            f.sent,
            f.wall.as_secs_f64(),
            f.frames,
            f.frames as f64 / f.batches.max(1) as f64,
            f.sleeps
        );
        (rx_pps, rx_cpu_us)
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for server in self.servers.drain(..) {
            let _ = server.join();
        }
    }
}

/// Each figure's median over the rounds (the machine's load varies
/// between them).
fn median(rounds: &[Figures]) -> Option<Figures> {
    let mid = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (!rounds.is_empty()).then(|| Figures {
        rr_us: mid(|r| r.rr_us),
        tx_pps: mid(|r| r.tx_pps),
        rx_pps: mid(|r| r.rx_pps),
        tx_cpu_us: mid(|r| r.tx_cpu_us),
        rx_cpu_us: mid(|r| r.rx_cpu_us),
    })
}

/// Ours and QEMU's with the same guest image, both up at once, in
/// [`ROUNDS`]: each round measures them in turns (the first to go changes
/// every round), and their floods in alternating slices, so that a change
/// in the machine's speed, which an emulating KVM feels at once, falls on
/// both alike. Then each figure's median, and the median of the rounds'
/// ratios.
pub fn compare() {
    let dir = std::env::temp_dir().join(format!("libvirtd-bench-net-guest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/guest/build.sh")).arg(&dir).status();
    assert!(status.is_ok_and(|s| s.success()), "building the test guest");
    let kernel = dir.join("pvh.elf");
    let binary = super::qemu::find();
    if binary.is_none() {
        println!(
            "QEMU: skipped (not installed, and neither $LIBVIRTD_BENCH_QEMU nor $LIBVIRTD_BENCH_QEMU_ROOT names one)"
        );
    }
    let (mut helper, mut qemus, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let mut sides = Vec::new();
        let ns = namespace("ng-ours");
        let (vmm, console) = ours(&ns, &kernel, &dir);
        sides.extend(Side::boot(format!("helper, round {round}"), ns, vmm, console));
        if let Some(binary) = &binary {
            let ns = namespace("ng-qemu");
            let (vmm, console) = qemu(&ns, &kernel, binary);
            sides.extend(Side::boot(format!("QEMU virtio-net-pci, round {round}"), ns, vmm, console));
        }
        if round % 2 == 0 {
            sides.reverse();
        }
        // Each measures while the other idles: what an idle guest costs
        // the machine is taken from the one measured.
        let idle: Vec<Duration> = sides.iter().map(|s| s.vmm.vcpu_cpu() + s.vmm.device_cpu()).collect();
        std::thread::sleep(IDLE);
        for (side, before) in sides.iter().zip(idle) {
            let idle = (side.vmm.vcpu_cpu() + side.vmm.device_cpu() - before).as_secs_f64() / IDLE.as_secs_f64();
            println!("{}: {}; idle, it takes {:.1} % of a core", side.label, side.net, idle * 100.0);
        }
        let rr: Vec<f64> = sides.iter_mut().map(Side::round_trip).collect();
        let tx: Vec<(f64, f64)> = sides.iter_mut().map(Side::burst).collect();
        for _ in 0..FLOOD_SLICES {
            sides.iter_mut().for_each(Side::flood_slice);
        }
        let (mut h, mut q) = (None, None);
        for (i, side) in sides.iter().enumerate() {
            let (rx_pps, rx_cpu_us) = side.flooded();
            let figures = Figures { rr_us: rr[i], tx_pps: tx[i].0, rx_pps, tx_cpu_us: tx[i].1, rx_cpu_us };
            *(if side.label.starts_with("helper") { &mut h } else { &mut q }) = Some(figures);
        }
        helper.extend(h);
        qemus.extend(q);
        pairs.extend(h.zip(q));
    }
    if let (Some(h), Some(q)) = (median(&helper), median(&qemus)) {
        println!(
            "side by side, median of {ROUNDS} (helper / QEMU): round trip {:.0} / {:.0} µs, guest to host {:.0} / {:.0} \
             packets/s, host to guest {:.0} / {:.0} packets/s",
            h.rr_us, q.rr_us, h.tx_pps, q.tx_pps, h.rx_pps, q.rx_pps
        );
        println!(
            "side by side, median of {ROUNDS} (helper / QEMU): device-thread CPU per packet {:.1} / {:.1} µs guest to \
             host, {:.1} / {:.1} µs host to guest",
            h.tx_cpu_us, q.tx_cpu_us, h.rx_cpu_us, q.rx_cpu_us
        );
        // Within a round both met the same machine: their ratio is the
        // figure that does not drift with it.
        let ratios: Vec<Figures> = pairs
            .iter()
            .map(|(h, q)| Figures {
                rr_us: q.rr_us / h.rr_us,
                tx_pps: h.tx_pps / q.tx_pps,
                rx_pps: h.rx_pps / q.rx_pps,
                tx_cpu_us: q.tx_cpu_us / h.tx_cpu_us,
                rx_cpu_us: q.rx_cpu_us / h.rx_cpu_us,
            })
            .collect();
        let each = |f: fn(&Figures) -> f64| ratios.iter().map(|r| format!("{:.2}", f(r))).collect::<Vec<_>>().join(" ");
        if let Some(r) = median(&ratios) {
            println!(
                "helper against QEMU, each round's ratio (above 1: the helper ahead), median of {}: round trip {:.2} ({}), \
                 guest to host {:.2} ({}), host to guest {:.2} ({})",
                ratios.len(),
                r.rr_us,
                each(|r| r.rr_us),
                r.tx_pps,
                each(|r| r.tx_pps),
                r.rx_pps,
                each(|r| r.rx_pps)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
