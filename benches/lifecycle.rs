//! Guests through the daemon, as a user runs them: the time from `virsh
//! start` to `GUEST-READY` in the guest's serial log, the time `virsh
//! destroy` takes, sequential starts per second for 10 guests, the daemon's
//! RSS with 10 guests running, and `virsh list` latency with 10 guests
//! running.
//!
//! The same figures follow for Debian's libvirtd+QEMU booting the same test
//! guest (its PVH image, `-kernel pvh.elf`) when `/usr/sbin/libvirtd` and
//! `qemu-system-x86_64` are installed, so the two can be read side by side.
//! That libvirtd is a private instance in namespaces of its own
//! (`shared/debian.rs`), which neither sees nor disturbs the host's. One such daemon serves all its guests, so its QEMU capability probe runs
//! once, before its first answer, and stays cached in that private cache
//! directory: it is reported separately, with the first define and a warm-up
//! start that checks whether QEMU can use KVM here (else the guests run as
//! `type='qemu'`, TCG, and the figures say so). Every wait on that side is
//! bounded; if something does not work it prints "Debian side skipped: why".
//! RSS and `virsh list` are measured once every guest has printed
//! `GUEST-READY`, as a QEMU guest under an emulating KVM takes seconds of CPU
//! to boot and would otherwise slow the list calls.
//!
//! Run: `cargo bench --bench lifecycle` (as root, with /dev/kvm and virsh).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/debian.rs"]
mod debian;
#[path = "shared/guests.rs"]
mod guests;
#[path = "shared/qemu.rs"]
mod qemu;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Daemon, children_of, rss_kib_of, wait_until};
use debian::Debian;
use guests::{guest_xml, virsh};

const GUESTS: usize = 10;
/// Start to `GUEST-READY` and destroy, one guest at a time.
const RUNS: usize = 5;
const LISTS: usize = 20;
/// Bound on any one virsh call (a first call to Debian's daemon may wait for its QEMU probe).
const CALL: Duration = Duration::from_secs(120);
/// Bound on the whole Debian side; fewer guests are started if it would take longer.
const DEBIAN_BUDGET: Duration = Duration::from_secs(15 * 60);

struct Guest {
    name: String,
    log: PathBuf,
}

struct Figures {
    ready: Vec<Duration>,
    destroy: Vec<Duration>,
    /// Guests started one after another, and how long that took.
    started: usize,
    starts: Duration,
    /// RSS in KiB of the daemon itself and of all its guest processes.
    daemon_rss: u64,
    guests_rss: u64,
    list: Duration,
}

/// Defines `bench-0..count` in `dir`; returns them and how long the first define took.
fn define(rw: &Path, dir: &Path, kind: &str, kernel: &Path, count: usize) -> Result<(Vec<Guest>, Duration), String> {
    let mut guests = Vec::new();
    let mut first = Duration::ZERO;
    for i in 0..count {
        let name = format!("bench-{i}");
        let log = dir.join(format!("{name}.log"));
        let file = dir.join(format!("{name}.xml"));
        std::fs::write(&file, guest_xml(kind, &name, i, kernel, &log))
            .map_err(|e| format!("writing {}: {e}", file.display()))?;
        let t = Instant::now();
        virsh(rw, &["define", &file.to_string_lossy()], CALL)?;
        if i == 0 {
            first = t.elapsed();
        }
        guests.push(Guest { name, log });
    }
    Ok((guests, first))
}

/// Starts `g`, waits for `GUEST-READY` and destroys it: (start returned, ready, destroy).
fn start_to_ready(rw: &Path, g: &Guest, within: Duration) -> Result<(Duration, Duration, Duration), String> {
    let _ = std::fs::remove_file(&g.log);
    let t = Instant::now();
    virsh(rw, &["start", &g.name], CALL)?;
    let started = t.elapsed();
    if !wait_until(within, || std::fs::read_to_string(&g.log).is_ok_and(|l| l.contains("GUEST-READY"))) {
        let _ = virsh(rw, &["destroy", &g.name], CALL);
        return Err(format!("no GUEST-READY from {} within {} s", g.name, within.as_secs()));
    }
    let ready = t.elapsed();
    let t = Instant::now();
    virsh(rw, &["destroy", &g.name], CALL)?;
    Ok((started, ready, t.elapsed()))
}

/// The figures for `guests`, defined and shut off on `rw`. With a `deadline`,
/// starts only as many of them as it leaves time for.
fn measure(
    rw: &Path,
    guests: &[Guest],
    ready_within: Duration,
    deadline: Option<Instant>,
    rss: &dyn Fn() -> (u64, u64),
) -> Result<Figures, String> {
    let (mut started, mut ready, mut destroy) = (Duration::ZERO, Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (s, r, d) = start_to_ready(rw, &guests[0], ready_within)?;
        started += s;
        ready.push(r);
        destroy.push(d);
    }

    let mut count = guests.len();
    if let Some(deadline) = deadline {
        // Each start about as long as above, or longer while earlier guests boot;
        // then the list calls (generously).
        let per_start = (started / RUNS as u32).max(Duration::from_millis(1)) * 4;
        let left = deadline.saturating_duration_since(Instant::now()).saturating_sub(Duration::from_secs(60));
        count = count.min((left.as_secs_f64() / per_start.as_secs_f64()) as usize).max(1);
        if count < guests.len() {
            println!("  (only {count} of {} guests started: the run would exceed its time budget)", guests.len());
        }
    }
    for g in &guests[..count] {
        let _ = std::fs::remove_file(&g.log);
    }
    let t = Instant::now();
    for g in &guests[..count] {
        virsh(rw, &["start", &g.name], CALL)?;
    }
    let starts = t.elapsed();
    // RSS and list latency with every guest up and idle, not while some still boot
    // (a QEMU guest under an emulating KVM takes seconds of CPU to get there).
    let booted = |g: &Guest| std::fs::read_to_string(&g.log).is_ok_and(|l| l.contains("GUEST-READY"));
    if !wait_until(ready_within * 2, || guests[..count].iter().all(booted)) {
        return Err(format!("not all {count} guests reached GUEST-READY within {} s", (ready_within * 2).as_secs()));
    }
    let (daemon_rss, guests_rss) = rss();

    let t = Instant::now();
    for _ in 0..LISTS {
        let running = virsh(rw, &["list"], CALL)?.matches("running").count();
        if running != count {
            return Err(format!("virsh list shows {running} guests running, not {count}"));
        }
    }
    let list = t.elapsed() / LISTS as u32;
    for g in &guests[..count] {
        let _ = virsh(rw, &["destroy", &g.name], CALL);
    }
    Ok(Figures { ready, destroy, started: count, starts, daemon_rss, guests_rss, list })
}

fn report(title: &str, f: &Figures, daemon: &str, guest_processes: &str) {
    let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1e3).sum::<f64>() / v.len() as f64;
    let n = f.started;
    let secs = f.starts.as_secs_f64();
    println!("{title}");
    println!("{:<35}mean {:>8.1} ms ({} runs)", "virsh start to GUEST-READY", ms(&f.ready), f.ready.len());
    println!("{:<35}mean {:>8.1} ms ({} runs)", "virsh destroy", ms(&f.destroy), f.destroy.len());
    println!("{:<35}{:>13.1} per second ({n} guests in {secs:.2} s)", "sequential starts", n as f64 / secs);
    println!(
        "{:<35}{:>13.1} MiB ({daemon}); {guest_processes} {:.1} MiB in all",
        format!("daemon RSS with {n} guests"),
        f.daemon_rss as f64 / 1024.0,
        f.guests_rss as f64 / 1024.0
    );
    println!(
        "{:<35}mean {:>8.1} ms ({LISTS} runs, whole virsh process)",
        format!("virsh list, {n} guests running"),
        f.list.as_secs_f64() * 1e3
    );
}

fn ours(images: &Path) {
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let mut guests = Vec::new();
    for i in 0..GUESTS {
        let name = format!("bench-{i}");
        let log = d.tree.path(&format!("{name}.log"));
        let file = d.tree.path(&format!("{name}.xml"));
        std::fs::write(&file, guest_xml("kvm", &name, i, &images.join("vmlinuz"), &log)).unwrap();
        virsh(&rw, &["define", file.to_str().unwrap()], CALL).unwrap();
        guests.push(Guest { name, log });
    }
    let rss = || {
        let frontends = d.frontend_pids();
        let helpers: u64 = children_of(d.pid).into_iter().filter(|p| !frontends.contains(p)).map(rss_kib_of).sum();
        (d.rss_kib(), helpers)
    };
    let f = measure(&rw, &guests, Duration::from_secs(30), None, &rss).unwrap_or_else(|e| panic!("libvirtd-rs: {e}"));
    report("libvirtd-rs (a KVM helper process per guest; bzImage test guest):", &f, "broker + frontends", "helpers");
}

/// Debian's libvirtd+QEMU with the PVH image; Err says why it could not run.
fn debian(images: &Path) -> Result<(), String> {
    let deadline = Instant::now() + DEBIAN_BUDGET;
    let t = Instant::now();
    let d = Debian::start()?;
    let rw = d.sock();
    let version = virsh(&rw, &["version"], CALL)?;
    let first_answer = t.elapsed();
    let version_of =
        |label: &str| version.lines().find_map(|l| l.strip_prefix(label)).map(str::trim).unwrap_or("?").to_owned();
    let (libvirt, qemu) = (version_of("Using library: libvirt"), version_of("Running hypervisor: QEMU"));

    // KVM if QEMU can boot the guest with it here, else TCG.
    let kernel = images.join("pvh.elf");
    let mut why_not_kvm = None;
    let mut chosen = None;
    for kind in ["kvm", "qemu"] {
        let tried = define(&rw, d.dir.path(), kind, &kernel, GUESTS).and_then(|(guests, first_define)| {
            match start_to_ready(&rw, &guests[0], Duration::from_secs(60)) {
                Ok((_, warm_up, _)) => Ok((guests, first_define, warm_up)),
                Err(e) => {
                    for g in &guests {
                        let _ = virsh(&rw, &["undefine", &g.name], CALL);
                    }
                    Err(e)
                }
            }
        });
        match tried {
            Ok(found) => {
                chosen = Some((kind, found));
                break;
            }
            Err(e) if kind == "kvm" => why_not_kvm = Some(e),
            Err(e) => return Err(format!("not even with type='qemu' (TCG): {e}")),
        }
    }
    let Some((kind, (guests, first_define, warm_up))) = chosen else {
        return Err("no domain type worked".into());
    };
    let accel = if kind == "kvm" { "KVM" } else { "TCG, as type='kvm' did not work" };
    if let Some(why) = why_not_kvm {
        println!("Debian: type='kvm' did not work, so its guests run type='qemu' (TCG): {why}");
    }

    let f = measure(&rw, &guests, Duration::from_secs(60), Some(deadline), &|| d.rss())?;
    println!(
        "Debian one-time setup: first answer {:.2} s after daemon start (includes its QEMU capability probe, \
         cached for the rest of the run); first define {:.1} ms; warm-up start to GUEST-READY {:.1} ms",
        first_answer.as_secs_f64(),
        first_define.as_secs_f64() * 1e3,
        warm_up.as_secs_f64() * 1e3
    );
    report(
        &format!("Debian libvirtd {libvirt} + QEMU {qemu} ({accel}; PVH image of the same test guest):"),
        &f,
        "libvirtd",
        "qemu",
    );
    Ok(())
}

fn main() {
    // `cargo test --all-targets` runs this binary too, without `--bench`:
    // figures from a debug build would mislead, so measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let images = tempfile::Builder::new().prefix("lifecycle-guest").tempdir().unwrap();
    common::build_guest(images.path());
    ours(images.path());
    println!();
    if let Err(why) = debian(images.path()) {
        println!("Debian side skipped: {why}");
    }
}
