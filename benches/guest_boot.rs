//! The guest helper's figures, over several runs: time from spawning the
//! helper to `GUEST-READY` on the console (both image formats), the helper's
//! memory overhead for a 128 MiB guest (RSS minus the guest RAM it touched,
//! which this small guest keeps to a few pages), and the cost of one serial
//! byte exit round trip (a line echoed by the guest); and start time and
//! helper RSS for guests of 1, 8 and 64 GiB (RAM reserved, not touched),
//! beside QEMU booting the same image with the same memory and vCPUs
//! (`qemu-system-x86_64 -accel kvm -m N -kernel pvh.elf`, its PVH entry;
//! the domain XML's devices: one serial console, nothing else) where
//! `/usr/bin/qemu-system-x86_64` is installed, or Debian's packages are
//! unpacked (`dpkg -x` of qemu-system-x86, -common, -data and seabios) where
//! `$LIBVIRTD_BENCH_QEMU_ROOT` or `$LIBVIRTD_BENCH_QEMU` says
//! (`shared/qemu.rs`); without either, only ours.
//!
//! Run: `cargo bench --bench guest_boot` (as root, with /dev/kvm).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libvirtd::privsep::helper::{GuestConfig, HelperCommand, HelperEvent, StartFds};

const HELPER: &str = env!("CARGO_BIN_EXE_libvirt-helper");
const RUNS: usize = 10;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/qemu.rs"]
mod qemu;

fn build_guest() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("libvirtd-bench-guest-{}", std::process::id()));
    common::build_guest(&dir);
    dir
}

struct Run {
    spawned: libvirtd::broker::Spawned,
    console: UnixStream,
    seen: Vec<u8>,
}

impl Run {
    fn start(image: &Path, memory_mib: u64) -> Run {
        let spawned = libvirtd::broker::spawn_helper(Path::new(HELPER)).unwrap();
        let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").unwrap();
        let kernel = std::fs::File::open(image).unwrap();
        let (console, theirs) = UnixStream::pair().unwrap();
        // The control listener a restarted broker would reconnect on; unused
        // here, but a real one: the helper watches it.
        let path = std::env::temp_dir().join(format!("libvirtd-bench-boot-{}.ctl", std::process::id()));
        let listener = common::helper_guest::control_listener(&path);
        // The helper keeps the socket, not its name.
        let _ = std::fs::remove_file(&path);
        let (kvm, kernel, theirs) = (OwnedFd::from(kvm), OwnedFd::from(kernel), OwnedFd::from(theirs));
        let fds = StartFds {
            kvm: kvm.as_fd(),
            kernel: kernel.as_fd(),
            initrd: None,
            console: theirs.as_fd(),
            control_listener: listener.as_fd(),
            disks: &[],
            taps: &[],
        };
        let config = GuestConfig::test(memory_mib);
        let (command, borrowed) = HelperCommand::start(config, &fds);
        spawned.channel.send(&command, &borrowed).unwrap();
        console.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Run { spawned, console, seen: Vec::new() }
    }

    fn wait_for(&mut self, needle: &[u8]) {
        let mut buf = [0u8; 4096];
        while !self.seen.windows(needle.len()).any(|w| w == needle) {
            let n = self.console.read(&mut buf).expect("console");
            self.seen.extend_from_slice(&buf[..n]);
        }
        let at = self.seen.windows(needle.len()).position(|w| w == needle).unwrap_or(0);
        self.seen.drain(..at + needle.len());
    }

    fn stats(&self) -> libvirtd::privsep::helper::GuestStats {
        self.spawned.channel.send(&HelperCommand::Stats, &[]).unwrap();
        loop {
            let (e, _) = self.spawned.channel.recv_blocking::<HelperEvent>(10_000, HelperEvent::fd_count).unwrap();
            if let HelperEvent::Stats(s) = e {
                return s;
            }
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.spawned.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.spawned.pid, None);
    }
}

/// QEMU running the test guest's PVH image with `mib` of RAM, its serial
/// console on a pipe; killed when dropped.
struct Qemu {
    child: std::process::Child,
    seen: Vec<u8>,
}

impl Qemu {
    fn start(qemu: &qemu::Qemu, image: &Path, mib: u64) -> Qemu {
        let child = qemu
            .command()
            .args(["-accel", "kvm", "-smp", "1", "-m"])
            .arg(format!("{mib}M"))
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-kernel"])
            .arg(image)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64");
        Qemu { child, seen: Vec::new() }
    }

    /// Reads the console up to `needle`; QEMU's error output if it ended first.
    fn wait_for(&mut self, needle: &[u8]) -> Result<(), String> {
        let out = self.child.stdout.as_mut().expect("qemu's stdout");
        let mut buf = [0u8; 4096];
        while !self.seen.windows(needle.len()).any(|w| w == needle) {
            let n = out.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                let mut err = String::new();
                if let Some(e) = self.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(err.lines().last().unwrap_or("it ended").to_owned());
            }
            self.seen.extend_from_slice(&buf[..n]);
        }
        Ok(())
    }

    /// Resident set of the QEMU process, MiB.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn summary(label: &str, mut v: Vec<f64>, unit: &str) {
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    println!("{label:<44} mean {mean:>9.1} {unit}  min {:>9.1}  max {:>9.1}  ({} runs)", v[0], v[v.len() - 1], v.len());
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = build_guest();
    for image in ["vmlinuz", "pvh.elf"] {
        let times = (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                let mut r = Run::start(&dir.join(image), 128);
                r.wait_for(b"GUEST-READY");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        summary(&format!("spawn to GUEST-READY ({image})"), times, "ms");
    }
    let mut overheads = Vec::new();
    let mut per_byte = Vec::new();
    for _ in 0..RUNS {
        let mut r = Run::start(&dir.join("vmlinuz"), 128);
        r.wait_for(b"> ");
        overheads.push(r.stats().rss_kib as f64 / 1024.0);
        // Each echoed byte: the guest's input interrupt and LSR/RBR reads,
        // then an LSR read and a THR write per output byte.
        let line = "x".repeat(100);
        let t = Instant::now();
        r.console.write_all(format!("echo {line}\r").as_bytes()).unwrap();
        r.wait_for(format!("{line}\r\n").as_bytes());
        per_byte.push(t.elapsed().as_secs_f64() * 1e6 / (line.len() as f64 * 2.0 + 7.0));
    }
    summary("helper RSS, 128 MiB guest (guest touches <1 MiB)", overheads, "MiB");
    summary("serial byte round trip (in + echo out)", per_byte, "us");
    // Guest size: RAM is reserved (MAP_NORESERVE), not touched, so start
    // time and the helper's own memory should not grow with it.
    for gib in [1u64, 8, 64] {
        let (mut times, mut rss) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let t = Instant::now();
            let mut r = Run::start(&dir.join("vmlinuz"), gib << 10);
            r.wait_for(b"> ");
            times.push(t.elapsed().as_secs_f64() * 1e3);
            rss.push(r.stats().rss_kib as f64 / 1024.0);
        }
        summary(&format!("spawn to prompt, {gib} GiB guest"), times, "ms");
        summary(&format!("helper RSS, {gib} GiB guest"), rss, "MiB");
        let Some(qemu) = qemu::find() else { continue };
        let (mut times, mut rss) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let t = Instant::now();
            let mut q = Qemu::start(&qemu, &dir.join("pvh.elf"), gib << 10);
            if let Err(e) = q.wait_for(b"> ") {
                // QEMU maps RAM without MAP_NORESERVE: a guest larger than
                // the host's overcommit allows does not start at all.
                println!("QEMU: {gib} GiB guest did not start: {e}");
                break;
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
            rss.push(q.rss_mib());
        }
        if times.is_empty() {
            continue;
        }
        summary(&format!("QEMU: spawn to prompt, {gib} GiB guest"), times, "ms");
        summary(&format!("QEMU: RSS, {gib} GiB guest"), rss, "MiB");
    }
    if qemu::find().is_none() {
        println!(
            "(no QEMU installed, and neither $LIBVIRTD_BENCH_QEMU nor $LIBVIRTD_BENCH_QEMU_ROOT names one: QEMU's figures left out)"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
