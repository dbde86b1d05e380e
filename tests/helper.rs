//! The per-guest helper boots the project's test guest with KVM, through
//! the same spawn code the broker uses: both image formats, the console both
//! ways, and each way a guest can stop.

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::require;
use libvirtd::privsep::helper::{
    GuestConfig, HELPER_PROTOCOL_VERSION, HelperCommand, HelperEvent, StartFds, StopReason,
};

const HELPER: &str = env!("CARGO_BIN_EXE_libvirt-helper");

/// Builds the test guest once per test binary.
fn guest() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("libvirtd-test-guest-{}", std::process::id()));
        common::build_guest(&dir);
        dir
    })
}

fn have_kvm() -> bool {
    require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm")
}

/// A running helper, its console, and its control channel.
struct Guest {
    pid: nix::unistd::Pid,
    channel: libvirtd::privsep::Channel,
    console: UnixStream,
    output: String,
    /// Where a restarted broker reconnects.
    control_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn boot(image: &str, memory_mib: u64, cmdline: &str) -> Guest {
        Self::boot_with(image, memory_mib, cmdline, 1)
    }

    fn boot_with(image: &str, memory_mib: u64, cmdline: &str, vcpus: u32) -> Guest {
        Self::start(&guest().join(image), None, memory_mib, cmdline, vcpus)
    }

    /// Spawns a helper as the broker does and starts `kernel` (and `initrd`).
    fn start(kernel: &Path, initrd: Option<&Path>, memory_mib: u64, cmdline: &str, vcpus: u32) -> Guest {
        let g = Self::launch(kernel, initrd, memory_mib, cmdline, vcpus);
        assert_eq!(g.event(Duration::from_secs(10)), HelperEvent::Started);
        g
    }

    /// Like `start`, without waiting for the helper's first event after its greeting.
    fn launch(kernel: &Path, initrd: Option<&Path>, memory_mib: u64, cmdline: &str, vcpus: u32) -> Guest {
        Self::launch_with(kernel, initrd, (memory_mib, cmdline, vcpus), |_| {}, |_| {})
    }

    /// Like `launch`; `console` may change the helper's end of the console
    /// and `start` the `Start` command before they are sent.
    fn launch_with(
        kernel: &Path,
        initrd: Option<&Path>,
        (memory_mib, cmdline, vcpus): (u64, &str, u32),
        console_tweak: fn(&UnixStream),
        start_tweak: fn(&mut HelperCommand),
    ) -> Guest {
        let spawned = libvirtd::broker::spawn_helper(Path::new(HELPER)).unwrap();
        let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").unwrap();
        let kernel = std::fs::File::open(kernel).unwrap();
        let (console, theirs) = UnixStream::pair().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let control_path = dir.path().join("guest.ctl");
        let config = GuestConfig {
            memory_mib,
            vcpus,
            cmdline: cmdline.into(),
            ids: guest_ids(),
            invariant_tsc: true,
            disks: Vec::new(),
            balloon: None,
            nics: Vec::new(),
            mem_locked: false,
            rtc_offset_secs: 0,
        };
        console_tweak(&theirs);
        let (kvm, kernel, theirs) = (OwnedFd::from(kvm), OwnedFd::from(kernel), OwnedFd::from(theirs));
        let listener = common::helper_guest::control_listener(&control_path);
        let initrd = initrd.map(|p| OwnedFd::from(std::fs::File::open(p).unwrap()));
        use std::os::fd::AsFd;
        let fds = StartFds {
            kvm: kvm.as_fd(),
            kernel: kernel.as_fd(),
            initrd: initrd.as_ref().map(|f| f.as_fd()),
            console: theirs.as_fd(),
            control_listener: listener.as_fd(),
            disks: &[],
            taps: &[],
        };
        let (mut command, borrowed) = HelperCommand::start(config, &fds);
        start_tweak(&mut command);
        spawned.channel.send(&command, &borrowed).unwrap();
        let libvirtd::broker::Spawned { pid, channel } = spawned;
        let g = Guest { pid, channel, console, output: String::new(), control_path, _dir: dir };
        // Every connection starts with the helper's greeting.
        assert_eq!(g.event(Duration::from_secs(10)), HelperEvent::Hello { version: HELPER_PROTOCOL_VERSION });
        g
    }

    fn event(&self, timeout: Duration) -> HelperEvent {
        common::helper_guest::event(&self.channel, timeout)
    }

    /// Reads console output until `needle` appears after what was consumed.
    fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        common::helper_guest::expect(&mut self.console, &mut self.output, needle, timeout)
    }

    fn type_line(&mut self, line: &str) {
        self.console.write_all(format!("{line}\r").as_bytes()).unwrap();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

fn boots_and_reports_what_it_was_given(image: &str) {
    let mut g = Guest::boot(image, 64, "console=ttyS0 marker=xyz");
    g.expect("GUEST-READY", Duration::from_secs(30));
    let report = g.expect("> ", Duration::from_secs(30));
    assert!(report.contains("CPUS=1\r\n"), "{report}");
    // 64 MiB less the legacy hole between 640 KiB and 1 MiB.
    assert!(report.contains("MEM=63\r\n"), "{report}");
    assert!(report.contains("CMDLINE=console=ttyS0 marker=xyz\r\n"), "{report}");
    assert!(report.contains("ACPI=LVRTRS\r\n"), "the guest did not find our RSDP: {report}");
    assert!(report.contains("INITRD=0\r\n"), "{report}");
    g.type_line("echo hello there");
    g.expect("hello there\r\n", Duration::from_secs(30));
    g.type_line("poweroff");
    match g.event(Duration::from_secs(30)) {
        HelperEvent::Stopped { reason, .. } => assert_eq!(reason, StopReason::PowerOff),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_bzimage_boots_and_powers_off() {
    if have_kvm() {
        boots_and_reports_what_it_was_given("vmlinuz");
    }
}

#[test]
fn the_pvh_elf_boots_and_powers_off() {
    if have_kvm() {
        boots_and_reports_what_it_was_given("pvh.elf");
    }
}

#[test]
fn reboot_and_panic_are_reported() {
    if !have_kvm() {
        return;
    }
    for (word, want) in [("reboot", StopReason::Reset), ("panic", StopReason::Crash)] {
        let mut g = Guest::boot("vmlinuz", 32, "");
        g.expect("> ", Duration::from_secs(30));
        g.type_line(word);
        match g.event(Duration::from_secs(30)) {
            HelperEvent::Stopped { reason, .. } => assert_eq!(reason, want, "{word}"),
            other => panic!("{word}: {other:?}"),
        }
    }
}

#[test]
fn the_broker_can_stop_a_guest() {
    if !have_kvm() {
        return;
    }
    let mut g = Guest::boot("pvh.elf", 32, "");
    g.expect("GUEST-READY", Duration::from_secs(30));
    g.channel.send(&HelperCommand::Stop, &[]).unwrap();
    assert_eq!(
        g.event(Duration::from_secs(10)),
        HelperEvent::Stopped { reason: StopReason::Destroyed, detail: "stopped by the broker".into() }
    );
}

#[test]
fn a_broker_reset_ends_the_helper_with_reason_reset() {
    if !have_kvm() {
        return;
    }
    let mut g = Guest::boot("vmlinuz", 32, "");
    g.expect("GUEST-READY", Duration::from_secs(30));
    g.channel.send(&HelperCommand::Reset, &[]).unwrap();
    assert_eq!(
        g.event(Duration::from_secs(10)),
        HelperEvent::Stopped { reason: StopReason::Reset, detail: "reset by the broker".into() }
    );
}

#[test]
fn a_helper_is_not_in_the_daemons_session() {
    if !have_kvm() {
        return;
    }
    let g = Guest::boot("pvh.elf", 32, "");
    let sid = nix::unistd::getsid(Some(g.pid)).unwrap();
    assert_eq!(sid, g.pid, "the helper leads a session of its own");
    assert_ne!(sid, nix::unistd::getsid(None).unwrap());
}

#[test]
fn a_kernel_that_is_neither_format_is_refused() {
    if !have_kvm() {
        return;
    }
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), vec![0x42u8; 8192]).unwrap();
    let g = Guest::launch(junk.path(), None, 32, "", 1);
    match g.event(Duration::from_secs(10)) {
        HelperEvent::Stopped { reason: StopReason::Failed, detail } => {
            assert!(detail.contains("neither a bzImage nor a PVH ELF"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}

/// The ids a guest helper runs under in these tests (as the broker would
/// hand out from helper_uid_min..helper_uid_max).
const GUEST_ID: u32 = libvirtd::config::SANDBOX_ID_BASE + 7;

fn guest_ids() -> Option<(u32, u32)> {
    common::is_root().then_some((GUEST_ID, GUEST_ID))
}

#[test]
fn every_helper_thread_runs_confined_under_the_guests_ids() {
    if !have_kvm() || !require(common::is_root(), "root") {
        return;
    }
    let mut g = Guest::boot("pvh.elf", 32, "");
    g.expect("> ", Duration::from_secs(30));
    let pid = g.pid.as_raw();
    let mut comms = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = format!("{}/status", task.path().display());
        let field = |n| common::task_status_field(&status, n).unwrap();
        assert_eq!(field("Uid"), format!("{GUEST_ID}\t{GUEST_ID}\t{GUEST_ID}\t{GUEST_ID}"));
        assert_eq!(field("Gid"), format!("{GUEST_ID}\t{GUEST_ID}\t{GUEST_ID}\t{GUEST_ID}"));
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(set), "0000000000000000", "{set}");
        }
        assert_eq!(field("NoNewPrivs"), "1");
        assert_eq!(field("Seccomp"), "2");
        comms.push(std::fs::read_to_string(task.path().join("comm")).unwrap().trim().to_owned());
    }
    // KVM may add kernel worker tasks to the process (kvm-nx-lpage-recovery);
    // they were checked above like the rest, but are not ours to name.
    comms.retain(|c| !c.starts_with("kvm-"));
    comms.sort();
    // vCPU threads carry their index, by which the broker tells them apart.
    assert_eq!(comms, ["helper-vcpu0", "helper-vmm"]);
    for ns in ["net", "ipc", "mnt", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the helper shares our {ns} namespace");
    }
    // Guest memory is not dumpable: the helper's /proc files are root's.
    let meta = std::fs::metadata(format!("/proc/{pid}/mem")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
}

#[test]
fn the_guest_counts_every_vcpu_it_was_given() {
    if !have_kvm() {
        return;
    }
    for (image, vcpus) in [("vmlinuz", 2), ("pvh.elf", 4)] {
        let mut g = Guest::boot_with(image, 64, "", vcpus);
        let report = g.expect("> ", Duration::from_secs(60));
        assert!(report.contains(&format!("CPUS={vcpus}\r\n")), "{image}: {report}");
        let tasks = std::fs::read_dir(format!("/proc/{}/task", g.pid)).unwrap().count();
        assert!(tasks > vcpus as usize, "one thread per vCPU plus the control loop: {tasks}");
    }
}

fn stats(g: &Guest) -> libvirtd::privsep::helper::GuestStats {
    g.channel.send(&HelperCommand::Stats, &[]).unwrap();
    match g.event(Duration::from_secs(10)) {
        HelperEvent::Stats(s) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn ctrl_alt_del_through_the_i8042_powers_the_guest_off() {
    if !have_kvm() {
        return;
    }
    let mut g = Guest::boot("vmlinuz", 32, "");
    g.expect("> ", Duration::from_secs(30));
    g.channel.send(&HelperCommand::CtrlAltDel, &[]).unwrap();
    match g.event(Duration::from_secs(30)) {
        HelperEvent::Stopped { reason, .. } => assert_eq!(reason, StopReason::PowerOff),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    if !have_kvm() {
        return;
    }
    let mut g = Guest::boot_with("pvh.elf", 64, "", 2);
    g.expect("> ", Duration::from_secs(30));
    g.channel.send(&HelperCommand::Pause, &[]).unwrap();
    assert_eq!(g.event(Duration::from_secs(10)), HelperEvent::Paused);
    let before = stats(&g);
    assert!(before.paused);
    assert_eq!(before.vcpu_time_ns.len(), 2);
    assert_eq!(before.memory_mib, 64);
    assert!(before.rss_kib > 0);
    g.type_line("echo while paused");
    std::thread::sleep(Duration::from_millis(500));
    let mut buf = [0u8; 256];
    g.console.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(g.console.read(&mut buf).is_err(), "the paused guest answered");
    // A parked vCPU uses no time, bar the few microseconds between counting
    // itself parked and sleeping.
    let paused_later = stats(&g).vcpu_time_ns;
    for (b, a) in before.vcpu_time_ns.iter().zip(&paused_later) {
        assert!(a - b < 1_000_000, "vCPU time moved while paused: {b} -> {a}");
    }
    g.channel.send(&HelperCommand::Resume, &[]).unwrap();
    assert_eq!(g.event(Duration::from_secs(10)), HelperEvent::Resumed);
    g.expect("while paused\r\n", Duration::from_secs(30));
    assert!(!stats(&g).paused);
}

#[test]
fn vcpu_time_is_accounted() {
    if !have_kvm() {
        return;
    }
    let mut g = Guest::boot("vmlinuz", 32, "");
    g.expect("> ", Duration::from_secs(30));
    let before: u64 = stats(&g).vcpu_time_ns.iter().sum();
    g.type_line("spin 100");
    g.expect("SPUN", Duration::from_secs(60));
    let after: u64 = stats(&g).vcpu_time_ns.iter().sum();
    assert!(after > before + 10_000_000, "spinning used {} ns", after - before);
}

#[test]
fn long_input_lines_are_not_lost_to_the_uart_fifo() {
    if !have_kvm() {
        return;
    }
    let mut g = Guest::boot("vmlinuz", 32, "");
    g.expect("> ", Duration::from_secs(30));
    let line = "0123456789".repeat(11);
    g.type_line(&format!("echo {line}"));
    g.expect(&format!("{line}\r\n"), Duration::from_secs(60));
}

#[test]
fn the_guest_outlives_its_console_hanging_up() {
    if !have_kvm() {
        return;
    }
    let mut g = Guest::boot("pvh.elf", 32, "");
    g.expect("> ", Duration::from_secs(30));
    g.console.shutdown(std::net::Shutdown::Both).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!stats(&g).paused, "the helper stopped answering");
    g.channel.send(&HelperCommand::Stop, &[]).unwrap();
    assert!(matches!(g.event(Duration::from_secs(10)), HelperEvent::Stopped { reason: StopReason::Destroyed, .. }));
}

/// Connects to a helper's control socket as a restarted broker would,
/// and reads its greeting.
fn reconnect(path: &Path) -> libvirtd::privsep::Channel {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(path).unwrap()).unwrap();
    let channel = libvirtd::privsep::Channel::from_fd(fd).unwrap();
    let (hello, _) = channel.recv_blocking::<HelperEvent>(10_000, HelperEvent::fd_count).unwrap();
    assert_eq!(hello, HelperEvent::Hello { version: HELPER_PROTOCOL_VERSION });
    channel
}

#[test]
fn the_guest_outlives_its_broker_and_a_new_one_reconnects() {
    if !have_kvm() {
        return;
    }
    let mut g = Guest::boot("pvh.elf", 32, "");
    g.expect("> ", Duration::from_secs(30));
    // The broker dies: its end of the channel closes.
    g.channel = reconnect(&g.control_path);
    std::thread::sleep(Duration::from_millis(200));
    assert!(std::path::Path::new(&format!("/proc/{}", g.pid)).exists(), "the helper died with its broker");
    assert!(!stats(&g).paused);
    g.type_line("echo still here");
    g.expect("still here\r\n", Duration::from_secs(30));
}

#[test]
fn a_guest_that_stops_while_the_broker_is_away_reports_it_on_reconnect() {
    if !have_kvm() {
        return;
    }
    let mut g = Guest::boot("vmlinuz", 32, "");
    g.expect("> ", Duration::from_secs(30));
    // Drop the broker's end by replacing it with a throwaway pair.
    let (a, _b) = libvirtd::privsep::Channel::pair().unwrap();
    g.channel = a;
    g.type_line("poweroff");
    std::thread::sleep(Duration::from_millis(500));
    g.channel = reconnect(&g.control_path);
    match g.event(Duration::from_secs(10)) {
        HelperEvent::Stopped { reason, .. } => assert_eq!(reason, StopReason::PowerOff),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_initrd_is_handed_to_both_boot_protocols() {
    if !have_kvm() {
        return;
    }
    let initrd = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(initrd.path(), vec![0x5a; 12345]).unwrap();
    for image in ["vmlinuz", "pvh.elf"] {
        let mut g = Guest::start(&guest().join(image), Some(initrd.path()), 32, "", 1);
        let report = g.expect("> ", Duration::from_secs(30));
        assert!(report.contains("INITRD=12345\r\n"), "{image}: {report}");
    }
}

/// Whether this host's KVM runs guests in hardware (VT-x or AMD-V).
fn hardware_kvm() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.split_whitespace().any(|w| w == "vmx" || w == "svm"))
}

#[test]
#[ignore = "opt-in: boots Debian's Linux kernel, which needs hardware KVM (vmx/svm) and tests/linux-kit/build.sh \
            (downloads the kernel and busybox with apt); run: cargo test --test helper -- --ignored linux"]
fn linux_boots_to_the_ready_marker_on_hardware_kvm() {
    // On an emulating KVM a stock kernel needs minutes and then dies: this
    // must not pass there, so it fails saying why.
    assert!(hardware_kvm(), "not run: this host's KVM is emulated (no vmx/svm in /proc/cpuinfo)");
    let kit = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/linux-kit/build.sh"))
        .arg(kit.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "tests/linux-kit/build.sh failed");
    let cmdline = "console=ttyS0 panic=-1 reboot=acpi marker=linux";
    let mut g = Guest::start(&kit.path().join("vmlinuz"), Some(&kit.path().join("initrd.img")), 256, cmdline, 2);
    g.expect("GUEST-READY", Duration::from_secs(120));
    let report = g.expect("> ", Duration::from_secs(60));
    assert!(report.contains("CPUS=2"), "{report}");
    assert!(report.contains("marker=linux"), "{report}");
    g.type_line("echo from linux");
    g.expect("from linux", Duration::from_secs(30));
    g.type_line("poweroff");
    match g.event(Duration::from_secs(60)) {
        HelperEvent::Stopped { reason, .. } => assert_eq!(reason, StopReason::PowerOff),
        other => panic!("{other:?}"),
    }
}

/// Reads console output until `needle` (without the `Guest` buffer), or the timeout.
fn drain_until(console: &mut UnixStream, needle: &str, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    console.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    while Instant::now() < end {
        if let Ok(n) = console.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains(needle) {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_vcpu_that_never_parks_fails_the_pause_within_its_bound_and_the_helper_still_answers() {
    if !have_kvm() {
        return;
    }
    // The helper's end of the console takes only a few bytes the test has
    // not read: a guest writing more blocks its vCPU in write(), holding
    // the UART, and that vCPU cannot park.
    let small_buffer = |theirs: &UnixStream| {
        nix::sys::socket::setsockopt(theirs, nix::sys::socket::sockopt::SndBuf, &1).unwrap();
    };
    let image = guest().join("pvh.elf");
    let mut g = Guest::launch_with(&image, None, (32, "", 2), small_buffer, |_| {});
    assert_eq!(g.event(Duration::from_secs(10)), HelperEvent::Started);
    g.expect("> ", Duration::from_secs(30));
    // The guest echoes what is typed: with nobody reading, its vCPU blocks.
    g.type_line(&format!("echo {}", "x".repeat(100)));
    std::thread::sleep(Duration::from_millis(500));

    let asked = Instant::now();
    g.channel.send(&HelperCommand::Pause, &[]).unwrap();
    let answer = g.event(Duration::from_secs(10));
    let took = asked.elapsed();
    match answer {
        HelperEvent::PauseFailed { detail } => {
            assert!(detail.contains("vCPU 0 did not stop within 1000 ms"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "answered after {took:?}");
    // The helper still answers, and the guest runs on: it was not left half-paused.
    assert!(!stats(&g).paused);

    // Once the console is read, the vCPU parks like any other.
    let answer_and_prompt = format!("{}\r\n> ", "x".repeat(100));
    assert!(drain_until(&mut g.console, &answer_and_prompt, Duration::from_secs(30)), "the guest's echo never came");
    g.channel.send(&HelperCommand::Pause, &[]).unwrap();
    assert_eq!(g.event(Duration::from_secs(10)), HelperEvent::Paused);
    g.channel.send(&HelperCommand::Stop, &[]).unwrap();
    assert!(matches!(g.event(Duration::from_secs(10)), HelperEvent::Stopped { reason: StopReason::Destroyed, .. }));
}

#[test]
fn a_guest_whose_console_nobody_reads_still_stops_when_told() {
    if !have_kvm() {
        return;
    }
    let small_buffer = |theirs: &UnixStream| {
        nix::sys::socket::setsockopt(theirs, nix::sys::socket::sockopt::SndBuf, &1).unwrap();
    };
    let image = guest().join("pvh.elf");
    let mut g = Guest::launch_with(&image, None, (32, "", 1), small_buffer, |_| {});
    assert_eq!(g.event(Duration::from_secs(10)), HelperEvent::Started);
    g.expect("> ", Duration::from_secs(30));
    g.type_line(&format!("echo {}", "y".repeat(100)));
    std::thread::sleep(Duration::from_millis(500));
    // The vCPU is blocked writing guest output; a stop still ends the helper
    // promptly (the write gives up once the VM is stopping).
    let asked = Instant::now();
    g.channel.send(&HelperCommand::Stop, &[]).unwrap();
    assert!(matches!(g.event(Duration::from_secs(10)), HelperEvent::Stopped { reason: StopReason::Destroyed, .. }));
    assert!(asked.elapsed() < Duration::from_secs(3), "stopping took {:?}", asked.elapsed());
    assert!(common::wait_until(Duration::from_secs(5), || nix::sys::wait::waitpid(
        g.pid,
        Some(nix::sys::wait::WaitPidFlag::WNOHANG)
    )
    .is_ok_and(|s| s != nix::sys::wait::WaitStatus::StillAlive)));
}

#[test]
fn a_faulting_vcpu_reports_where_it_was() {
    if !have_kvm() {
        return;
    }
    let mut g = Guest::boot("vmlinuz", 32, "");
    g.expect("> ", Duration::from_secs(30));
    g.type_line("fault");
    // A triple fault on hardware KVM (reset), an internal error under an
    // emulating one (failed): either way, read from the vCPU's own thread
    // under its filter, the detail says where.
    match g.event(Duration::from_secs(30)) {
        HelperEvent::Stopped { reason: StopReason::Reset | StopReason::Failed, detail } => {
            assert!(detail.contains(" at rip 0x"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hotplug_is_answered_as_not_supported_and_fds_in_the_wrong_role_are_refused() {
    if !have_kvm() {
        return;
    }
    use libvirtd::privsep::helper::{DeviceAnswer, DeviceSpec, DiskConfig, FdRole};
    use std::os::fd::AsFd;
    let mut g = Guest::boot("pvh.elf", 32, "");
    g.expect("> ", Duration::from_secs(30));
    let image = tempfile::NamedTempFile::new().unwrap();
    let disk = DeviceSpec::Disk(DiskConfig { read_only: true, ..DiskConfig::test("vdb") });
    let alias = disk.id().to_string();
    let attach =
        HelperCommand::AttachDevice { device: disk.clone(), fds: vec![FdRole::DiskLayer { disk: 0, layer: 0 }] };
    g.channel.send(&attach, &[image.as_file().as_fd()]).unwrap();
    match g.event(Duration::from_secs(10)) {
        HelperEvent::Device { id, answer: DeviceAnswer::Unsupported(why) } => {
            assert_eq!(id, alias);
            assert!(why.contains("PCI"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    let wrong = HelperCommand::AttachDevice { device: disk, fds: vec![FdRole::Tap { nic: 0 }] };
    g.channel.send(&wrong, &[image.as_file().as_fd()]).unwrap();
    match g.event(Duration::from_secs(10)) {
        // A disk's fds must include its top layer (a NIC's Tap is a per-device role, not a disk's).
        HelperEvent::Device { answer: DeviceAnswer::Refused(why), .. } => assert!(why.contains("DiskLayer"), "{why}"),
        other => panic!("{other:?}"),
    }
    g.channel.send(&HelperCommand::DetachDevice { id: alias }, &[]).unwrap();
    assert!(matches!(
        g.event(Duration::from_secs(10)),
        HelperEvent::Device { answer: DeviceAnswer::Unsupported(_), .. }
    ));
    // The guest runs on.
    g.type_line("echo still here");
    g.expect("still here\r\n", Duration::from_secs(30));
}

#[test]
fn a_broker_of_another_protocol_version_is_refused_at_start() {
    if !have_kvm() {
        return;
    }
    let image = guest().join("pvh.elf");
    let newer = |c: &mut HelperCommand| {
        if let HelperCommand::Start { version, .. } = c {
            *version = HELPER_PROTOCOL_VERSION + 1;
        }
    };
    let g = Guest::launch_with(&image, None, (32, "", 1), |_| {}, newer);
    match g.event(Duration::from_secs(10)) {
        HelperEvent::Stopped { reason: StopReason::Failed, detail } => {
            let broker = format!("the broker speaks helper protocol version {}", HELPER_PROTOCOL_VERSION + 1);
            assert!(detail.contains(&broker), "{detail}");
            assert!(detail.contains(&format!("this helper speaks version {HELPER_PROTOCOL_VERSION}")), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_start_whose_fds_do_not_fit_their_roles_is_refused() {
    if !have_kvm() {
        return;
    }
    use libvirtd::privsep::helper::FdRole;
    let image = guest().join("pvh.elf");
    let kernel_twice = |c: &mut HelperCommand| {
        if let HelperCommand::Start { fds, .. } = c {
            fds[0] = FdRole::Kernel;
        }
    };
    let g = Guest::launch_with(&image, None, (32, "", 1), |_| {}, kernel_twice);
    match g.event(Duration::from_secs(10)) {
        HelperEvent::Stopped { reason: StopReason::Failed, detail } => {
            assert_eq!(detail, "Start: fd role Kernel is named twice");
        }
        other => panic!("{other:?}"),
    }
}
