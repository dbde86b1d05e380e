//! virtio-blk end to end: the helper, driven directly with fds as the
//! broker drives it, boots the test guest with disks; the guest's own
//! virtio driver (tests/guest/guest.S) finds them on PCI, reads, writes,
//! flushes, asks for the serial and sends a malformed request, and the
//! host checks the image files and the helper's DiskStats.

mod common;

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::require;
use libvirtd::privsep::helper::{
    DiskConfig, DiskCounters, GuestConfig, HELPER_PROTOCOL_VERSION, HelperCommand, HelperEvent, ImageFormat, StartFds,
    StopReason,
};

const HELPER: &str = env!("CARGO_BIN_EXE_libvirt-helper");
const T: Duration = Duration::from_secs(60);

fn guest() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("libvirtd-test-guest-blk-{}", std::process::id()));
        common::build_guest(&dir);
        dir
    })
}

fn have_kvm() -> bool {
    require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm")
}

/// FNV-1a 32, as the guest's blkread prints it.
fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// `sectors` of a pattern that differs per sector, so a read at the wrong offset shows.
fn pattern(sectors: usize, seed: u8) -> Vec<u8> {
    (0..sectors * 512).map(|i| ((i / 512) as u8).wrapping_mul(31).wrapping_add(seed) ^ (i as u8)).collect()
}

/// One disk to give the guest: its config and its layers (top first).
struct GuestDisk {
    config: DiskConfig,
    layers: Vec<std::fs::File>,
}

/// A helper running the test guest, its console and control channel.
struct Guest {
    pid: nix::unistd::Pid,
    channel: libvirtd::privsep::Channel,
    console: UnixStream,
    output: String,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn boot(disks: &[GuestDisk]) -> Guest {
        Guest::boot_with(disks, "", 1)
    }

    /// Boots with `cmdline` on `vcpus` vCPUs.
    fn boot_with(disks: &[GuestDisk], cmdline: &str, vcpus: u32) -> Guest {
        let spawned = libvirtd::broker::spawn_helper(Path::new(HELPER)).unwrap();
        let kvm = OwnedFd::from(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").unwrap());
        let kernel = OwnedFd::from(std::fs::File::open(guest().join("pvh.elf")).unwrap());
        let (console, theirs) = UnixStream::pair().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let listener = common::helper_guest::control_listener(&dir.path().join("guest.ctl"));
        let id = libvirtd::config::SANDBOX_ID_BASE + 9;
        let ids = common::is_root().then_some((id, id));
        let config = GuestConfig {
            memory_mib: 32,
            vcpus,
            cmdline: cmdline.into(),
            ids,
            invariant_tsc: true,
            disks: disks.iter().map(|d| d.config.clone()).collect(),
            balloon: None,
            nics: Vec::new(),
            mem_locked: false,
            rtc_offset_secs: 0,
        };
        let layer_fds: Vec<Vec<_>> = disks.iter().map(|d| d.layers.iter().map(|f| f.as_fd()).collect()).collect();
        let fds = StartFds {
            kvm: kvm.as_fd(),
            kernel: kernel.as_fd(),
            initrd: None,
            console: theirs.as_fd(),
            control_listener: listener.as_fd(),
            disks: &layer_fds,
            taps: &[],
        };
        let (command, borrowed) = HelperCommand::start(config, &fds);
        spawned.channel.send(&command, &borrowed).unwrap();
        let libvirtd::broker::Spawned { pid, channel } = spawned;
        let g = Guest { pid, channel, console, output: String::new(), _dir: dir };
        assert_eq!(g.event(Duration::from_secs(10)), HelperEvent::Hello { version: HELPER_PROTOCOL_VERSION });
        assert_eq!(g.event(Duration::from_secs(10)), HelperEvent::Started);
        g
    }

    fn event(&self, timeout: Duration) -> HelperEvent {
        common::helper_guest::event(&self.channel, timeout)
    }

    fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        common::helper_guest::expect(&mut self.console, &mut self.output, needle, timeout)
    }

    /// Types `line` and returns the output line that starts with `answer`.
    fn run(&mut self, line: &str, answer: &str) -> String {
        self.console.write_all(format!("{line}\r").as_bytes()).unwrap();
        self.expect(&format!("{line}\r\n"), T);
        self.expect(answer, T);
        let rest = self.expect("\r\n", T);
        format!("{answer}{}", rest.trim_end())
    }

    fn disk_stats(&self) -> Vec<DiskCounters> {
        self.channel.send(&HelperCommand::DiskStats, &[]).unwrap();
        match self.event(Duration::from_secs(10)) {
            HelperEvent::DiskStats(d) => d,
            other => panic!("{other:?}"),
        }
    }

    fn alive(&mut self) {
        self.run("echo still here", "still");
    }

    fn power_off(mut self) {
        self.console.write_all(b"poweroff\r").unwrap();
        match self.event(T) {
            HelperEvent::Stopped { reason, .. } => assert_eq!(reason, StopReason::PowerOff),
            other => panic!("{other:?}"),
        }
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// A raw image of `sectors` sectors holding `pattern(sectors, seed)`.
fn raw_image(dir: &Path, name: &str, sectors: usize, seed: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pattern(sectors, seed)).unwrap();
    path
}

fn open_rw(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap()
}

fn raw_disk(path: &Path, target: &str, slot: u8) -> GuestDisk {
    GuestDisk { config: DiskConfig { pci_slot: slot, ..DiskConfig::test(target) }, layers: vec![open_rw(path)] }
}

#[test]
fn a_raw_disk_is_found_read_written_flushed_and_counted() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "vda.raw", 2048, 7);
    let mut disk = raw_disk(&path, "vda", 4);
    disk.config.serial = Some("LVRT-SERIAL-0042".into());
    let mut g = Guest::boot(&[disk]);
    g.expect("BLK vda SECTORS=2048\r\n", T);
    g.expect("> ", T);
    let host = std::fs::read(&path).unwrap();
    let line = g.run("blkread 0 5", "BLKREAD ");
    assert_eq!(line, format!("BLKREAD STATUS=0 SUM={}", fnv1a(&host[5 * 512..6 * 512])), "what the host wrote");
    assert_eq!(g.run("blkwrite 0 9 90", "BLKWRITE "), "BLKWRITE STATUS=0");
    assert_eq!(g.run("blkflush 0", "BLKFLUSH "), "BLKFLUSH STATUS=0");
    let after = std::fs::read(&path).unwrap();
    assert!(after[9 * 512..10 * 512].iter().all(|b| *b == 90), "the guest's write landed at sector 9");
    assert_eq!(after[..9 * 512], host[..9 * 512], "nothing else changed");
    assert_eq!(after[10 * 512..], host[10 * 512..]);
    let line = g.run("blkread 0 9", "BLKREAD ");
    assert_eq!(line, format!("BLKREAD STATUS=0 SUM={}", fnv1a(&[90; 512])));
    assert_eq!(g.run("blkid 0", "BLKID "), "BLKID STATUS=0 SERIAL=LVRT-SERIAL-0042");
    // A data descriptor outside guest RAM: an error status, the device and the guest go on.
    assert_eq!(g.run("blkbad 0", "BLKBAD "), "BLKBAD STATUS=1");
    let line = g.run("blkread 0 5", "BLKREAD ");
    assert_eq!(line, format!("BLKREAD STATUS=0 SUM={}", fnv1a(&host[5 * 512..6 * 512])));
    // A read past the end is refused.
    assert_eq!(g.run("blkread 0 2048", "BLKREAD ").split(' ').nth(1), Some("STATUS=1"));
    let stats = g.disk_stats();
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    assert_eq!(s.alias, "virtio-disk-vda");
    assert_eq!((s.rd_reqs, s.rd_bytes), (3, 3 * 512), "{s:?}");
    assert_eq!((s.wr_reqs, s.wr_bytes, s.flush_reqs), (1, 512, 1), "{s:?}");
    assert_eq!(s.errors, 2, "the bad descriptor and the read past the end: {s:?}");
    g.power_off();
}

/// The guest's `irqs` count.
fn irqs(g: &mut Guest) -> u32 {
    let line = g.run("irqs", "IRQS=");
    line.trim_start_matches("IRQS=").parse().unwrap()
}

#[test]
fn completions_arrive_as_msix_interrupts_and_intx_still_works_without() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "vda.raw", 256, 5);
    let host = std::fs::read(&path).unwrap();
    // One vCPU (xAPIC, MMIO) and two (the guest switches to x2APIC to start the second).
    for vcpus in [1, 2] {
        let mut g = Guest::boot_with(&[raw_disk(&path, "vda", 4)], "", vcpus);
        g.expect("BLK vda SECTORS=256\r\nBLK vda MSIX=on\r\n", T);
        g.expect("> ", T);
        let before = irqs(&mut g);
        for sector in [3, 4, 5] {
            let line = g.run(&format!("blkread 0 {sector}"), "BLKREAD ");
            let want = fnv1a(&host[sector * 512..(sector + 1) * 512]);
            assert_eq!(line, format!("BLKREAD STATUS=0 SUM={want}"));
        }
        let after = irqs(&mut g);
        assert!(after >= before + 3, "{vcpus} vCPUs: {before} MSI-X interrupts before 3 reads, {after} after");
        g.power_off();
    }
    // "nomsix": the driver leaves MSI-X off, the device falls back to INTx,
    // and the disk works the same.
    let mut g = Guest::boot_with(&[raw_disk(&path, "vda", 4)], "nomsix", 1);
    g.expect("BLK vda SECTORS=256\r\nBLK vda MSIX=off\r\n", T);
    g.expect("> ", T);
    let line = g.run("blkread 0 7", "BLKREAD ");
    assert_eq!(line, format!("BLKREAD STATUS=0 SUM={}", fnv1a(&host[7 * 512..8 * 512])));
    assert_eq!(irqs(&mut g), 0, "no MSI-X interrupt without MSI-X");
    g.power_off();
}

/// `blkbench` keeps 16 requests in flight (EVENT_IDX negotiated, the
/// avail ring of 64 wrapping twice): every request is answered and
/// counted, the interrupts are at most one per request, and single
/// requests after it still read what the image holds.
#[test]
fn requests_in_flight_are_all_answered_and_the_ring_wraps() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "vda.raw", 2048, 11);
    let mut g = Guest::boot(&[raw_disk(&path, "vda", 4)]);
    g.expect("BLK vda SECTORS=2048\r\nBLK vda MSIX=on\r\n", T);
    g.expect("> ", T);
    let before = irqs(&mut g);
    let line = g.run("blkbench 0 64", "BLKBENCH ");
    assert!(line.starts_with("BLKBENCH N=64 ERRORS=0 CYCLES="), "{line}");
    let taken = irqs(&mut g) - before;
    assert!((1..=128).contains(&taken), "{taken} interrupts for 128 requests");
    let s = &g.disk_stats()[0];
    assert_eq!((s.rd_reqs, s.rd_bytes, s.wr_reqs, s.wr_bytes), (64, 64 * 4096, 64, 64 * 4096), "{s:?}");
    assert_eq!(s.errors, 0, "{s:?}");
    let host = std::fs::read(&path).unwrap();
    for sector in [0, 9, 2047] {
        let line = g.run(&format!("blkread 0 {sector}"), "BLKREAD ");
        assert_eq!(line, format!("BLKREAD STATUS=0 SUM={}", fnv1a(&host[sector * 512..(sector + 1) * 512])));
    }
    assert_eq!(g.run("blkwrite 0 9 77", "BLKWRITE "), "BLKWRITE STATUS=0");
    assert!(std::fs::read(&path).unwrap()[9 * 512..10 * 512].iter().all(|b| *b == 77));
    g.power_off();
}

#[test]
fn a_read_only_disk_refuses_writes_and_the_guest_runs_on() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "ro.raw", 64, 3);
    let before = std::fs::read(&path).unwrap();
    let mut disk = raw_disk(&path, "vda", 4);
    disk.config.read_only = true;
    disk.layers = vec![std::fs::File::open(&path).unwrap()];
    let mut g = Guest::boot(&[disk]);
    g.expect("BLK vda SECTORS=64\r\n", T);
    g.expect("> ", T);
    assert_eq!(g.run("blkwrite 0 1 255", "BLKWRITE "), "BLKWRITE STATUS=1");
    let line = g.run("blkread 0 1", "BLKREAD ");
    assert_eq!(line, format!("BLKREAD STATUS=0 SUM={}", fnv1a(&before[512..1024])));
    g.alive();
    assert_eq!(std::fs::read(&path).unwrap(), before, "the image is untouched");
    assert_eq!(g.disk_stats()[0].wr_reqs, 0);
    g.power_off();
}

#[test]
fn two_disks_are_found_in_slot_order_each_with_its_own_image() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = raw_image(dir.path(), "a.raw", 128, 1);
    let b = raw_image(dir.path(), "b.raw", 256, 2);
    let mut g = Guest::boot(&[raw_disk(&a, "vda", 4), raw_disk(&b, "vdb", 5)]);
    g.expect("BLK vda SECTORS=128\r\n", T);
    g.expect("BLK vdb SECTORS=256\r\n", T);
    g.expect("> ", T);
    let hb = std::fs::read(&b).unwrap();
    let line = g.run("blkread 1 200", "BLKREAD ");
    assert_eq!(line, format!("BLKREAD STATUS=0 SUM={}", fnv1a(&hb[200 * 512..201 * 512])));
    assert_eq!(g.run("blkwrite 1 3 17", "BLKWRITE "), "BLKWRITE STATUS=0");
    assert!(std::fs::read(&b).unwrap()[3 * 512..4 * 512].iter().all(|x| *x == 17));
    assert_eq!(std::fs::read(&a).unwrap(), pattern(128, 1), "the other disk is untouched");
    assert_eq!(g.run("blkread 2 0", "BLK "), "BLK NODISK");
    let stats = g.disk_stats();
    let aliases: Vec<_> = stats.iter().map(|s| (s.alias.as_str(), s.wr_reqs)).collect();
    assert_eq!(aliases, [("virtio-disk-vda", 0), ("virtio-disk-vdb", 1)]);
    g.power_off();
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img").args(args).output().expect("qemu-img")
}

#[test]
fn a_qcow2_overlay_takes_the_writes_and_its_raw_base_stays_as_it_was() {
    let have_qemu_img = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_kvm() || !require(have_qemu_img, "qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = raw_image(dir.path(), "base.raw", 2048, 5);
    let overlay = dir.path().join("overlay.qcow2");
    let (b, o) = (base.to_str().unwrap(), overlay.to_str().unwrap());
    let out = qemu_img(&["create", "-q", "-f", "qcow2", "-b", b, "-F", "raw", o]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = std::fs::read(&base).unwrap();
    let mut config = DiskConfig { format: ImageFormat::Qcow2, layers: 2, ..DiskConfig::test("vda") };
    config.pci_slot = 6;
    let disk = GuestDisk { config, layers: vec![open_rw(&overlay), std::fs::File::open(&base).unwrap()] };
    let mut g = Guest::boot(&[disk]);
    g.expect("BLK vda SECTORS=2048\r\n", T);
    g.expect("> ", T);
    let line = g.run("blkread 0 100", "BLKREAD ");
    assert_eq!(line, format!("BLKREAD STATUS=0 SUM={}", fnv1a(&before[100 * 512..101 * 512])), "from the base");
    assert_eq!(g.run("blkwrite 0 100 66", "BLKWRITE "), "BLKWRITE STATUS=0");
    assert_eq!(g.run("blkflush 0", "BLKFLUSH "), "BLKFLUSH STATUS=0");
    let line = g.run("blkread 0 100", "BLKREAD ");
    assert_eq!(line, format!("BLKREAD STATUS=0 SUM={}", fnv1a(&[66; 512])), "from the overlay");
    let line = g.run("blkread 0 101", "BLKREAD ");
    assert_eq!(
        line,
        format!("BLKREAD STATUS=0 SUM={}", fnv1a(&before[101 * 512..102 * 512])),
        "the rest of the cluster"
    );
    g.power_off();
    assert_eq!(std::fs::read(&base).unwrap(), before, "the base is untouched");
    let check = qemu_img(&["check", "-q", o]);
    assert!(check.status.success(), "qemu-img check: {}", String::from_utf8_lossy(&check.stdout));
    let flat = dir.path().join("flat.raw");
    let out = qemu_img(&["convert", "-O", "raw", o, flat.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let flat = std::fs::read(&flat).unwrap();
    let mut want = before.clone();
    want[100 * 512..101 * 512].fill(66);
    assert!(flat == want, "the overlay reads as the base with the guest's one sector");
    let cmp = qemu_img(&["compare", "-q", "-f", "raw", "-F", "qcow2", b, o]);
    assert_eq!(cmp.status.code(), Some(1), "base and overlay differ (by the guest's write)");
}

#[test]
fn a_disk_without_its_layers_is_refused_at_start() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "r.raw", 8, 0);
    // A raw image said to have a backing layer: the helper says why it cannot start.
    let mut disk = raw_disk(&path, "vda", 4);
    disk.config.layers = 2;
    disk.layers.push(std::fs::File::open(&path).unwrap());
    let spawned = libvirtd::broker::spawn_helper(Path::new(HELPER)).unwrap();
    let kvm = OwnedFd::from(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").unwrap());
    let kernel = OwnedFd::from(std::fs::File::open(guest().join("pvh.elf")).unwrap());
    let (_console, theirs) = UnixStream::pair().unwrap();
    let listener = common::helper_guest::control_listener(&dir.path().join("c.ctl"));
    let config = GuestConfig { disks: vec![disk.config.clone()], ..GuestConfig::test(32) };
    let layers = vec![disk.layers.iter().map(|f| f.as_fd()).collect::<Vec<_>>()];
    let fds = StartFds {
        kvm: kvm.as_fd(),
        kernel: kernel.as_fd(),
        initrd: None,
        console: theirs.as_fd(),
        control_listener: listener.as_fd(),
        disks: &layers,
        taps: &[],
    };
    let (command, borrowed) = HelperCommand::start(config, &fds);
    spawned.channel.send(&command, &borrowed).unwrap();
    let recv = || spawned.channel.recv_blocking::<HelperEvent>(10_000, HelperEvent::fd_count).unwrap().0;
    assert_eq!(recv(), HelperEvent::Hello { version: HELPER_PROTOCOL_VERSION });
    match recv() {
        HelperEvent::Stopped { reason: StopReason::Failed, detail } => {
            assert!(detail.contains("raw image has no backing file"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    let _ = nix::sys::wait::waitpid(spawned.pid, None);
}

#[test]
fn each_disk_has_an_io_thread_of_its_own_under_its_filter() {
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = raw_image(dir.path(), "a.raw", 16, 1);
    let b = raw_image(dir.path(), "b.raw", 16, 2);
    let mut g = Guest::boot(&[raw_disk(&a, "vda", 4), raw_disk(&b, "vdb", 5)]);
    g.expect("> ", T);
    let pid = g.pid.as_raw();
    let mut io = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_string();
        if comm.starts_with("helper-io") {
            let status = format!("{}/status", task.path().display());
            assert_eq!(common::task_status_field(&status, "Seccomp").as_deref(), Some("2"), "{comm}");
            assert_eq!(common::task_status_field(&status, "NoNewPrivs").as_deref(), Some("1"), "{comm}");
            if common::is_root() {
                let id = (libvirtd::config::SANDBOX_ID_BASE + 9).to_string();
                let uids = common::task_status_field(&status, "Uid").unwrap();
                assert!(uids.split_whitespace().all(|u| u == id), "{comm} runs as the guest: {uids}");
                assert_eq!(common::task_status_field(&status, "CapEff").as_deref(), Some("0000000000000000"));
            }
            io.push(comm);
        }
    }
    io.sort();
    assert_eq!(io, ["helper-io0", "helper-io1"]);
    g.power_off();
}

#[test]
fn cache_none_takes_single_sectors_through_o_direct_and_unsafe_still_answers_flushes() {
    use libvirtd::privsep::helper::CacheMode;
    use std::os::unix::fs::OpenOptionsExt;
    if !have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let direct = raw_image(dir.path(), "direct.raw", 2048, 9);
    let host = std::fs::read(&direct).unwrap();
    // As the broker opens a cache='none' image: O_DIRECT.
    let file = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&direct);
    let Ok(file) = file else {
        // A filesystem without O_DIRECT (tmpfs): nothing to prove here.
        return;
    };
    let mut none = DiskConfig { cache: CacheMode::None, pci_slot: 4, ..DiskConfig::test("vda") };
    none.serial = Some("direct".into());
    let scratch = raw_image(dir.path(), "unsafe.raw", 64, 4);
    let mut unsafe_disk = raw_disk(&scratch, "vdb", 5);
    unsafe_disk.config.cache = CacheMode::Unsafe;
    let mut g = Guest::boot(&[GuestDisk { config: none, layers: vec![file] }, unsafe_disk]);
    g.expect("BLK vda SECTORS=2048\r\n", T);
    g.expect("> ", T);
    let line = g.run("blkread 0 3", "BLKREAD ");
    assert_eq!(line, format!("BLKREAD STATUS=0 SUM={}", fnv1a(&host[3 * 512..4 * 512])), "an unaligned-size read");
    assert_eq!(g.run("blkwrite 0 5 33", "BLKWRITE "), "BLKWRITE STATUS=0");
    assert_eq!(g.run("blkflush 0", "BLKFLUSH "), "BLKFLUSH STATUS=0");
    let after = std::fs::read(&direct).unwrap();
    assert!(after[5 * 512..6 * 512].iter().all(|b| *b == 33), "a 512-byte write through O_DIRECT landed");
    assert_eq!(after[4 * 512..5 * 512], host[4 * 512..5 * 512], "its neighbours are intact");
    assert_eq!(after[6 * 512..7 * 512], host[6 * 512..7 * 512]);
    assert_eq!(g.run("blkwrite 1 2 44", "BLKWRITE "), "BLKWRITE STATUS=0");
    assert_eq!(g.run("blkflush 1", "BLKFLUSH "), "BLKFLUSH STATUS=0");
    let stats = g.disk_stats();
    assert_eq!((stats[0].flush_reqs, stats[1].flush_reqs), (1, 1), "both flushes are answered and counted");
    g.power_off();
}
