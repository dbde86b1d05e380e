//! virtio-blk figures: the test guest's own driver (tests/guest/guest.S)
//! issuing 4 KiB random reads, then writes (`blkbench`), against a raw
//! image in the page cache, in our helper and, when `qemu-system-x86_64`
//! is installed, under QEMU with `-device virtio-blk-pci` (KVM if it
//! works here, else TCG), the same guest image, side by side: both guests
//! stay up and take turns, [`ROUNDS`] runs each, and the median counts
//! (with the MSI-X interrupts each run took). The guest's BLK line and a
//! sector's checksum must agree under both. Also the helper's RSS with one
//! qcow2 disk against the same guest with none, and its IOPS over qcow2.
//!
//! The device model alone, from the host side, is a unit test of the
//! helper (it is not a library): `cargo test --release --bin libvirt-helper
//! -- --ignored --nocapture host_side`.
//!
//! Run: `cargo bench --bench virtio_blk` (as root, with /dev/kvm);
//! `LIBVIRTD_BENCH_QEMU=/path/to/usr/bin/qemu-system-x86_64` or
//! `LIBVIRTD_BENCH_QEMU_ROOT=/path` for a QEMU that is unpacked rather than
//! installed (`shared/qemu.rs`). QEMU is never required:
//! without it, its column is skipped.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libvirtd::privsep::helper::{DiskConfig, GuestConfig, HelperCommand, HelperEvent, ImageFormat, StartFds};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/qemu.rs"]
mod qemu;

const HELPER: &str = env!("CARGO_BIN_EXE_libvirt-helper");
/// Requests per direction in one guest benchmark.
const N: u32 = 2000;
const DISK_SECTORS: usize = 32 * 2048; // 32 MiB

/// A console: what was read so far, and how to write.
trait Console {
    fn read_some(&mut self, buf: &mut [u8]) -> usize;
    fn send(&mut self, bytes: &[u8]);
    fn seen(&mut self) -> &mut String;

    /// Reads until `needle`; returns everything up to and including it.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = self.seen().find(needle) {
                let upto: String = self.seen()[..i + needle.len()].to_string();
                self.seen().drain(..i + needle.len());
                return upto;
            }
            assert!(Instant::now() < end, "no {needle:?}; got {:?}", self.seen());
            let n = self.read_some(&mut buf);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen().push_str(&text);
        }
    }

    /// Runs a shell line; returns its answer line starting with `answer`, and how long it took.
    fn run(&mut self, line: &str, answer: &str) -> (String, Duration) {
        let t = Instant::now();
        self.send(format!("{line}\r").as_bytes());
        self.wait_for(answer, Duration::from_secs(600));
        let rest = self.wait_for("\r\n", Duration::from_secs(60));
        let took = t.elapsed();
        self.wait_for("> ", Duration::from_secs(60));
        (format!("{answer}{}", rest.trim_end()), took)
    }
}

struct Helper {
    spawned: libvirtd::broker::Spawned,
    console: UnixStream,
    seen: String,
}

impl Console for Helper {
    fn read_some(&mut self, buf: &mut [u8]) -> usize {
        self.console.read(buf).unwrap_or(0)
    }
    fn send(&mut self, bytes: &[u8]) {
        self.console.write_all(bytes).unwrap();
    }
    fn seen(&mut self) -> &mut String {
        &mut self.seen
    }
}

impl Helper {
    fn start(kernel: &Path, disks: Vec<(DiskConfig, Vec<std::fs::File>)>) -> Helper {
        let spawned = libvirtd::broker::spawn_helper(Path::new(HELPER)).unwrap();
        let kvm = OwnedFd::from(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").unwrap());
        let socket = kernel.with_file_name(format!("control-{}.ctl", spawned.pid));
        let kernel = OwnedFd::from(std::fs::File::open(kernel).unwrap());
        let (console, theirs) = UnixStream::pair().unwrap();
        let listener = common::helper_guest::control_listener(&socket);
        let layers: Vec<Vec<_>> = disks.iter().map(|(_, l)| l.iter().map(|f| f.as_fd()).collect()).collect();
        let fds = StartFds {
            kvm: kvm.as_fd(),
            kernel: kernel.as_fd(),
            initrd: None,
            console: theirs.as_fd(),
            control_listener: listener.as_fd(),
            disks: &layers,
            taps: &[],
        };
        let config = GuestConfig { disks: disks.iter().map(|(c, _)| c.clone()).collect(), ..GuestConfig::test(64) };
        let (command, borrowed) = HelperCommand::start(config, &fds);
        spawned.channel.send(&command, &borrowed).unwrap();
        console.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Helper { spawned, console, seen: String::new() }
    }

    /// Mean time the image took per read and per write so far, in µs, and
    /// the time it took for both in all, in ns, from `DiskStats`.
    fn backend_us(&self) -> (f64, f64, u64) {
        self.spawned.channel.send(&HelperCommand::DiskStats, &[]).unwrap();
        loop {
            let (e, _) = self.spawned.channel.recv_blocking::<HelperEvent>(10_000, HelperEvent::fd_count).unwrap();
            if let HelperEvent::DiskStats(d) = e {
                let mean = |ns: u64, n: u64| ns as f64 / n.max(1) as f64 / 1000.0;
                return d.first().map_or((0.0, 0.0, 0), |d| {
                    (mean(d.rd_total_ns, d.rd_reqs), mean(d.wr_total_ns, d.wr_reqs), d.rd_total_ns + d.wr_total_ns)
                });
            }
        }
    }

    /// Peak RSS in KiB, from `Stats`.
    fn rss_kib(&self) -> u64 {
        self.spawned.channel.send(&HelperCommand::Stats, &[]).unwrap();
        loop {
            let (e, _) = self.spawned.channel.recv_blocking::<HelperEvent>(10_000, HelperEvent::fd_count).unwrap();
            if let HelperEvent::Stats(s) = e {
                return s.rss_kib;
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.spawned.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.spawned.pid, None);
    }
}

struct Qemu {
    child: Child,
    /// Its stdout, pumped by a thread so that a silent QEMU times out.
    out: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Console for Qemu {
    fn read_some(&mut self, buf: &mut [u8]) -> usize {
        match self.out.recv_timeout(Duration::from_millis(200)) {
            Ok(bytes) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                n
            }
            Err(_) => 0,
        }
    }
    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }
    fn seen(&mut self) -> &mut String {
        &mut self.seen
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    /// QEMU booted to the guest's prompt, and what the guest printed at boot.
    fn start(kernel: &Path, disk: &Path, accel: &str) -> Option<(Qemu, String)> {
        let drive = format!("file={},format=raw,if=none,id=d0,cache=writeback", disk.display());
        let mut child = qemu()
            .args(["-accel", accel, "-M", "pc", "-m", "64", "-nodefaults", "-display", "none", "-no-reboot"])
            .args(["-serial", "stdio", "-monitor", "none", "-kernel"])
            .arg(kernel)
            .args(["-drive", &drive, "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut stdout = child.stdout.take()?;
        let (tx, out) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut q = Qemu { child, out, seen: String::new() };
        let end = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 4096];
        while !q.seen.contains("> ") {
            // A QEMU that cannot use this accelerator exits at once.
            if Instant::now() > end || q.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            let n = q.read_some(&mut buf);
            q.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let boot = q.wait_for("> ", Duration::from_secs(1));
        Some((q, boot))
    }
}

/// The QEMU to measure beside (`shared/qemu.rs`), else whatever
/// `qemu-system-x86_64` the path has.
fn qemu() -> Command {
    qemu::find().map_or_else(|| Command::new("qemu-system-x86_64"), |q| q.command())
}

/// Writes the image and makes it durable: a page still under writeback
/// makes a later write to it wait, which would measure the host's disk.
/// Written 4 KiB at a time, so that the page cache holds each copy in
/// 4 KiB folios, both alike: written at once, ext4 caches a file in large
/// folios when memory lets it, and a 4 KiB write into a 2 MiB folio walks
/// its 512 buffer heads (about 12 µs here against 3), so whichever copy
/// happened to get large folios had the slow writes.
fn write_synced(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    for page in bytes.chunks(4096) {
        f.write_all(page).unwrap();
    }
    f.sync_all().unwrap();
}

fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The BLK line the guest printed at boot and the checksum it reads of sector 77.
fn identify(console: &mut dyn Console, boot: &str) -> (String, String) {
    let blk = boot.lines().find(|l| l.starts_with("BLK vda")).unwrap_or("none").trim().to_string();
    let (sum, _) = console.run("blkread 0 77", "BLKREAD ");
    (blk, sum)
}

/// One `blkbench` on `console`: prints and returns its IOPS and the
/// MSI-X interrupts the guest took meanwhile.
fn guest_bench(label: &str, console: &mut dyn Console) -> (f64, u64, Duration) {
    let irqs = |console: &mut dyn Console| -> u64 {
        let (line, _) = console.run("irqs", "IRQS=");
        line.trim_start_matches("IRQS=").parse().unwrap_or(0)
    };
    let before = irqs(console);
    let (line, took) = console.run(&format!("blkbench 0 {N}"), "BLKBENCH ");
    let iops = f64::from(2 * N) / took.as_secs_f64();
    let taken = irqs(console).saturating_sub(before);
    println!("{label}: {line}; {iops:.0} IOPS (4 KiB, half read half write, wall clock); {taken} MSI-X interrupts");
    (iops, taken, took)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Rounds of the guest benchmark, ours and QEMU's taking turns: the load
/// other processes put on the machine changes from second to second, and
/// turns spread it over both. A run takes under a second, and on a shared
/// machine one run of each can differ by half: seven make the median steadier.
const ROUNDS: usize = 7;

fn main() {
    // `cargo test --all-targets` runs this binary too, without `--bench`:
    // the figures are for `cargo bench`, not for the test suite's time.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with `cargo bench --bench virtio_blk` for figures");
        return;
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("no /dev/kvm: nothing to measure");
        return;
    }
    let dir = std::env::temp_dir().join(format!("libvirtd-bench-blk-{}", std::process::id()));
    common::build_guest(&dir);
    let kernel = dir.join("pvh.elf");
    // One copy of the image each, written the same way (the page cache
    // holds both alike), so that neither sees the other's writes.
    let disk = dir.join("disk.raw");
    let qemu_disk = dir.join("disk-qemu.raw");
    let bytes: Vec<u8> = (0..DISK_SECTORS * 512).map(|i| (i / 512) as u8 ^ (i as u8).wrapping_mul(7)).collect();
    write_synced(&disk, &bytes);
    write_synced(&qemu_disk, &bytes);
    let want_sum = format!("BLKREAD STATUS=0 SUM={}", fnv1a(&bytes[77 * 512..78 * 512]));

    let open = || std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    let mut ours = Helper::start(&kernel, vec![(DiskConfig::test("vda"), vec![open()])]);
    let boot = ours.wait_for("> ", Duration::from_secs(60));
    let (our_blk, our_sum) = identify(&mut ours, &boot);
    assert_eq!(our_sum, want_sum, "our checksum");
    let msix = boot.lines().find(|l| l.starts_with("BLK vda MSIX=")).unwrap_or("BLK vda MSIX=?").trim().to_string();
    println!("helper: {msix}");

    let have_qemu = qemu().arg("--version").output().is_ok_and(|o| o.status.success());
    let mut theirs = None;
    if have_qemu {
        for accel in ["kvm", "tcg"] {
            let Some((mut q, boot)) = Qemu::start(&kernel, &qemu_disk, accel) else {
                println!("QEMU with -accel {accel}: did not boot the guest");
                continue;
            };
            let (blk, sum) = identify(&mut q, &boot);
            println!(
                "QEMU -accel {accel}: BLK line {}; checksum {}",
                if blk == our_blk { "agrees" } else { "differs" },
                if sum == our_sum { "agrees" } else { "DIFFERS" }
            );
            theirs = Some((q, accel));
            break;
        }
    } else {
        println!("qemu-system-x86_64 not installed: no side-by-side figure");
    }
    let (mut our_iops, mut their_iops) = (Vec::new(), Vec::new());
    let (mut our_irqs, mut their_irqs) = (0, 0);
    let mut busy_before = ours.backend_us().2;
    for round in 1..=ROUNDS {
        let (iops, irqs, took) = guest_bench(&format!("round {round}, helper"), &mut ours);
        let (rd, wr, busy) = ours.backend_us();
        // How much of the run the I/O thread spent in the image: the most a
        // faster (or parallel) backend could take off the guest's wall clock.
        let share = (busy - busy_before) as f64 / took.as_nanos().max(1) as f64 * 100.0;
        busy_before = busy;
        println!(
            "  helper's image so far: {rd:.1} µs a read, {wr:.1} µs a write (mean); \
             the I/O thread was in the image {share:.0}% of this run"
        );
        our_iops.push(iops);
        our_irqs += irqs;
        if let Some((q, accel)) = theirs.as_mut() {
            let (iops, irqs, _) = guest_bench(&format!("round {round}, QEMU -accel {accel}"), q);
            their_iops.push(iops);
            their_irqs += irqs;
        }
    }
    drop(ours);
    let rounds = ROUNDS as u64;
    let ours_median = median(our_iops);
    match theirs.take() {
        Some((q, accel)) => {
            drop(q);
            println!(
                "side by side, median of {ROUNDS} turns: helper {ours_median:.0} IOPS ({} interrupts a run), \
                 QEMU ({accel}) {:.0} IOPS ({} interrupts a run)",
                our_irqs / rounds,
                median(their_iops),
                their_irqs / rounds
            );
        }
        None => {
            println!("helper: median of {ROUNDS} runs {ours_median:.0} IOPS ({} interrupts a run)", our_irqs / rounds)
        }
    }

    // RSS: the same guest with no disk, then with one qcow2 disk (over a raw base).
    let mut bare = Helper::start(&kernel, Vec::new());
    bare.wait_for("> ", Duration::from_secs(60));
    let rss_bare = bare.rss_kib();
    drop(bare);
    let overlay = dir.join("overlay.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&disk)
        .args(["-F", "raw"])
        .arg(&overlay)
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let config = DiskConfig { format: ImageFormat::Qcow2, layers: 2, ..DiskConfig::test("vda") };
        let top = std::fs::OpenOptions::new().read(true).write(true).open(&overlay).unwrap();
        let mut q = Helper::start(&kernel, vec![(config, vec![top, std::fs::File::open(&disk).unwrap()])]);
        q.wait_for("> ", Duration::from_secs(60));
        let (iops, _, _) = guest_bench("helper, qcow2 over raw", &mut q);
        let rss_disk = q.rss_kib();
        println!(
            "helper, qcow2 over raw: {iops:.0} IOPS; peak RSS {} KiB vs {} KiB with no disk: +{} KiB for the disk",
            rss_disk,
            rss_bare,
            rss_disk.saturating_sub(rss_bare)
        );
    } else {
        println!("helper RSS with no disk: {rss_bare} KiB (no qemu-img for the qcow2 figure)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
