//! What a monitoring system pays, on the read-only socket, beside Debian's
//! libvirtd+QEMU in the same run (issue 14's goals):
//!
//! - `virConnectListAllDomains` latency, one client, one call at a time
//!   (goal: at most half of libvirtd's);
//! - `virConnectGetAllDomainStats` (state, cpu-total, balloon, vcpu) with 20
//!   guests running (goal: at most half of libvirtd+QEMU's): back to back on
//!   the read-only socket, as scrapers sharing a host call it (ours answers
//!   from the snapshot while it is younger than `privsep::snapshot::FRESH`),
//!   and on the read-write socket, where every call samples the guests;
//! - throughput of 8 clients each pipelining `virConnectListAllDomains`
//!   calls, 16 in flight per client (goal: at least twice libvirtd's).
//!
//! Both daemons run the project's test guest (`tests/guest/build.sh`): ours
//! its bzImage in KVM helpers, Debian's its PVH image through QEMU's
//! `-kernel`, with `type='kvm'` when QEMU can use this host's KVM, else
//! `type='qemu'` (TCG), which the output says. Debian's daemon is a private
//! instance in namespaces of its own (`shared/debian.rs`); when it is not
//! installed only our figures are printed. Figures are taken once every guest
//! printed `GUEST-READY` (so booting guests do not compete for the CPU).
//!
//! Run: `cargo bench --bench monitoring` (as root, with /dev/kvm and virsh).

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

use common::{Daemon, RawClient, wait_until};
use debian::Debian;
use guests::{guest_xml, virsh};
use libvirtd::rpc::remote::ListAllDomainsArgs;
use libvirtd::rpc::stats::GetAllDomainStatsArgs;
use libvirtd::rpc::xdr;

const GUESTS: usize = 20;
const LIST_ALL_DOMAINS: i32 = 273;
const GET_ALL_DOMAIN_STATS: i32 = 344;
/// `virDomainStatsTypes`: state, cpu-total, balloon, vcpu.
const GROUPS: u32 = 1 | 2 | 4 | 8;
const LIST_CALLS: usize = 2000;
const STATS_CALLS: usize = 200;
const CLIENTS: usize = 8;
const CALLS_PER_CLIENT: usize = 2000;
const WINDOW: usize = 16;
const CALL: Duration = Duration::from_secs(120);

struct Figures {
    /// Per call, sorted.
    list: Vec<Duration>,
    stats: Vec<Duration>,
    /// `getAllDomainStats` on the read-write socket: sampled for each call.
    sampled: Vec<Duration>,
    /// Calls per second, all clients together.
    throughput: f64,
}

fn list_args() -> Vec<u8> {
    xdr::to_bytes(&ListAllDomainsArgs { need_results: 1, flags: 3 }).unwrap()
}

/// The domain count of a LIST_ALL_DOMAINS reply (its trailing `ret`).
fn listed(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[payload.len() - 4..].try_into().unwrap())
}

fn timed(c: &mut RawClient, proc_: i32, payload: &[u8], calls: usize, check: &dyn Fn(&[u8])) -> Vec<Duration> {
    for _ in 0..calls / 10 {
        c.call(proc_, payload);
    }
    let mut d: Vec<Duration> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            let (h, p) = c.call(proc_, payload);
            let took = t.elapsed();
            assert_eq!(h.status, 0, "call {proc_} failed");
            check(&p);
            took
        })
        .collect();
    d.sort_unstable();
    d
}

/// `CLIENTS` connections to `ro`, each keeping `WINDOW` calls in flight.
fn throughput(ro: &Path, guests: u32) -> f64 {
    let clients: Vec<RawClient> = (0..CLIENTS)
        .map(|_| {
            let mut c = RawClient::connect(ro);
            c.open(1);
            c
        })
        .collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS + 1));
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let args = list_args();
                let (_, one) = c.packet(LIST_ALL_DOMAINS, &args);
                barrier.wait();
                let (mut sent, mut received) = (0, 0);
                while received < CALLS_PER_CLIENT {
                    while sent < CALLS_PER_CLIENT && sent - received < WINDOW {
                        // The serial does not matter here: replies come in order per client.
                        c.send(&one);
                        sent += 1;
                    }
                    let (h, p) = c.read().unwrap();
                    assert_eq!(h.status, 0);
                    assert_eq!(listed(&p), guests);
                    received += 1;
                }
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    (CLIENTS * CALLS_PER_CLIENT) as f64 / t.elapsed().as_secs_f64()
}

/// Defines and starts the guests on `rw`, waits for every `GUEST-READY`, and
/// measures through `ro`.
fn measure(
    rw: &Path,
    ro: &Path,
    dir: &Path,
    kind: &str,
    kernel: &Path,
    ready_within: Duration,
) -> Result<Figures, String> {
    let mut logs = Vec::new();
    for i in 0..GUESTS {
        let name = format!("mon-{i}");
        let log = dir.join(format!("{name}.log"));
        let file = dir.join(format!("{name}.xml"));
        std::fs::write(&file, guest_xml(kind, &name, i, kernel, &log)).map_err(|e| format!("writing: {e}"))?;
        virsh(rw, &["define", &file.to_string_lossy()], CALL)?;
        virsh(rw, &["start", &name], CALL)?;
        logs.push(log);
    }
    let booted = |l: &PathBuf| std::fs::read_to_string(l).is_ok_and(|t| t.contains("GUEST-READY"));
    if !wait_until(ready_within, || logs.iter().all(booted)) {
        let n = logs.iter().filter(|l| booted(l)).count();
        return Err(format!("{n} of {GUESTS} guests reached GUEST-READY within {} s", ready_within.as_secs()));
    }
    let mut c = RawClient::connect(ro);
    c.open(1);
    let guests = GUESTS as u32;
    let list = timed(&mut c, LIST_ALL_DOMAINS, &list_args(), LIST_CALLS, &|p| assert_eq!(listed(p), guests));
    let stats_args = xdr::to_bytes(&GetAllDomainStatsArgs { doms: Vec::new(), stats: GROUPS, flags: 0 }).unwrap();
    // The reply starts with the record count.
    let stats = timed(&mut c, GET_ALL_DOMAIN_STATS, &stats_args, STATS_CALLS, &|p| {
        assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), guests)
    });
    let mut w = RawClient::connect(rw);
    w.open(0);
    let sampled = timed(&mut w, GET_ALL_DOMAIN_STATS, &stats_args, STATS_CALLS, &|p| {
        assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), guests)
    });
    let throughput = throughput(ro, guests);
    Ok(Figures { list, stats, sampled, throughput })
}

fn summary(d: &[Duration]) -> String {
    let mean = d.iter().sum::<Duration>() / d.len() as u32;
    let pct = |p: f64| d[((d.len() as f64 * p) as usize).min(d.len() - 1)];
    format!(
        "mean {:>8.1} us  p50 {:>8.1} us  p99 {:>8.1} us",
        mean.as_secs_f64() * 1e6,
        pct(0.5).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6
    )
}

fn report(title: &str, f: &Figures) {
    println!("{title}");
    println!("  {:<44}{}  ({LIST_CALLS} calls)", "listAllDomains, read-only", summary(&f.list));
    println!("  {:<44}{}  ({STATS_CALLS} calls)", format!("getAllDomainStats, {GUESTS} running"), summary(&f.stats));
    println!("  {:<44}{}  ({STATS_CALLS} calls)", "  same, read-write (sampled each call)", summary(&f.sampled));
    println!("  {:<44}{:>10.0} calls/s", format!("{CLIENTS} clients pipelining listAllDomains"), f.throughput);
}

fn mean(d: &[Duration]) -> f64 {
    d.iter().sum::<Duration>().as_secs_f64() / d.len() as f64
}

fn median(d: &[Duration]) -> f64 {
    d[d.len() / 2].as_secs_f64()
}

/// The ratios, judged on medians: on a shared machine a few calls that
/// waited for the CPU move a mean more than they say about either daemon.
fn compare(ours: &Figures, theirs: &Figures) {
    let verdict = |met: bool| if met { "goal met" } else { "goal NOT met" };
    let ratio = |a: &[Duration], b: &[Duration]| (median(a) / median(b), mean(a) / mean(b));
    let (list, list_mean) = ratio(&ours.list, &theirs.list);
    let (stats, stats_mean) = ratio(&ours.stats, &theirs.stats);
    let (sampled, sampled_mean) = ratio(&ours.sampled, &theirs.sampled);
    let through = ours.throughput / theirs.throughput;
    println!("Side by side (ours / Debian's; latency as the ratio of medians, of means in brackets):");
    println!("  listAllDomains latency       {list:>6.2}x ({list_mean:.2}x)  (goal <= 0.5x: {})", verdict(list <= 0.5));
    println!(
        "  getAllDomainStats latency    {stats:>6.2}x ({stats_mean:.2}x)  (goal <= 0.5x: {})",
        verdict(stats <= 0.5)
    );
    println!("  getAllDomainStats, sampled   {sampled:>6.2}x ({sampled_mean:.2}x)");
    println!("  pipelined throughput         {through:>6.2}x  (goal >= 2x: {})", verdict(through >= 2.0));
}

fn ours(images: &Path) -> Figures {
    let d = Daemon::start("", &[]);
    let (rw, ro) = (d.tree.sock("libvirt-sock"), d.tree.sock("libvirt-sock-ro"));
    let f = measure(&rw, &ro, d.tree.dir.path(), "kvm", &images.join("vmlinuz"), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("libvirtd-rs: {e}"));
    report(&format!("libvirtd-rs ({GUESTS} KVM helper guests, bzImage test guest):"), &f);
    f
}

/// Debian's figures: with `type='kvm'` if its QEMU boots the guest under
/// this KVM, else `type='qemu'`.
fn debian(images: &Path) -> Result<Figures, String> {
    debian::available()?;
    let kernel = images.join("pvh.elf");
    let mut why_not_kvm = String::new();
    for kind in ["kvm", "qemu"] {
        let d = Debian::start()?;
        let version = virsh(&d.sock(), &["version"], CALL)?;
        let version_of =
            |label: &str| version.lines().find_map(|l| l.strip_prefix(label)).map(str::trim).unwrap_or("?").to_owned();
        match measure(&d.sock(), &d.sock_ro(), d.dir.path(), kind, &kernel, Duration::from_secs(300)) {
            Ok(f) => {
                let accel = match kind {
                    "kvm" => "QEMU with KVM".to_owned(),
                    _ => format!("QEMU with TCG, as type='kvm' did not work: {why_not_kvm}"),
                };
                report(
                    &format!(
                        "Debian libvirtd {} + QEMU {} ({GUESTS} guests, {accel}; PVH image of the test guest):",
                        version_of("Using library: libvirt"),
                        version_of("Running hypervisor: QEMU")
                    ),
                    &f,
                );
                return Ok(f);
            }
            Err(e) if kind == "kvm" => why_not_kvm = e,
            Err(e) => return Err(format!("not even with type='qemu' (TCG): {e}")),
        }
    }
    Err("no domain type worked".into())
}

fn main() {
    // `cargo test --all-targets` runs this binary too, without `--bench`:
    // figures from a debug build would mislead, so measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let images = tempfile::Builder::new().prefix("monitoring-guest").tempdir().unwrap();
    common::build_guest(images.path());
    let ours = ours(images.path());
    println!();
    match debian(images.path()) {
        Ok(theirs) => {
            println!();
            compare(&ours, &theirs);
        }
        Err(why) => println!("Debian side skipped: {why}"),
    }
}
