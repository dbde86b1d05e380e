//! Per-call latency of simple read-only calls from one client process:
//! `virConnectListAllDomains` (answered by the broker, through the frontend)
//! and `virConnectGetLibVersion` (answered by the frontend alone), against our
//! daemon with 10 defined domains, and against Debian's libvirtd when one is
//! listening in /run/libvirt (or $LIBVIRTD_BENCH_SOCKET_DIR); the same ten
//! domains are defined for a second run and undefined after (on Debian's
//! daemon only with $LIBVIRTD_BENCH_DEFINE_OTHER, as each define takes ~50 s there).
//!
//! Run: `cargo bench --bench rpc_latency` (as root, like the tests).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, RawClient, domain_xml};
use libvirtd::rpc::remote::{ListAllDomainsArgs, StringArg};
use libvirtd::rpc::xdr;

const LIST_ALL_DOMAINS: i32 = 273;
const GET_LIB_VERSION: i32 = 157;
const DEFINE_XML: i32 = 11;
const UNDEFINE: i32 = 35;
const CALLS: usize = 5000;

fn measure(c: &mut RawClient, proc_: i32, payload: &[u8]) -> Vec<Duration> {
    for _ in 0..200 {
        c.call(proc_, payload);
    }
    (0..CALLS)
        .map(|_| {
            let t = Instant::now();
            let (h, _) = c.call(proc_, payload);
            assert_eq!(h.status, 0);
            t.elapsed()
        })
        .collect()
}

fn report(label: &str, mut d: Vec<Duration>) {
    d.sort_unstable();
    let mean = d.iter().sum::<Duration>() / d.len() as u32;
    let pct = |p: f64| d[((d.len() as f64 * p) as usize).min(d.len() - 1)];
    println!(
        "{label:<48} mean {:>7.1} us  p50 {:>7.1} us  p99 {:>7.1} us  ({:.0} calls/s)",
        mean.as_secs_f64() * 1e6,
        pct(0.5).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        1.0 / mean.as_secs_f64()
    );
}

/// Measures through `ro`, first as the daemon is, then (if `define`) with
/// `bench-0..9` defined through `rw`, which are undefined again after.
fn bench_socket(name: &str, rw: &Path, ro: &Path, define: bool) {
    let list = xdr::to_bytes(&ListAllDomainsArgs { need_results: 1, flags: 3 }).unwrap();
    let mut c = RawClient::connect(ro);
    c.open(0);
    let run = |c: &mut RawClient| {
        let (_, payload) = c.call(LIST_ALL_DOMAINS, &list);
        let count = u32::from_be_bytes(payload[payload.len() - 4..].try_into().unwrap());
        report(&format!("{name}: list all domains ({count} defined)"), measure(c, LIST_ALL_DOMAINS, &list));
    };
    run(&mut c);
    report(&format!("{name}: get lib version"), measure(&mut c, GET_LIB_VERSION, &[]));
    if !define {
        return;
    }
    let mut admin = RawClient::connect(rw);
    admin.open(0);
    let mut handles = Vec::new();
    for i in 0..10 {
        let uuid = format!("00000000-0000-4000-8000-{i:012}");
        let xml = xdr::to_bytes(&StringArg { value: domain_xml(&format!("bench-{i}"), &uuid) }).unwrap();
        let (h, payload) = admin.call(DEFINE_XML, &xml);
        assert_eq!(h.status, 0, "{name}: define failed");
        handles.push(payload);
    }
    run(&mut c);
    for dom in handles {
        // DOMAIN_UNDEFINE takes the remote_nonnull_domain DEFINE_XML returned.
        assert_eq!(admin.call(UNDEFINE, &dom).0.status, 0, "{name}: undefine failed");
    }
}

fn main() {
    // `cargo test --all-targets` runs this binary too, without `--bench`:
    // figures from a debug build would mislead, so measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let d = Daemon::start("", &[]);
    bench_socket("libvirtd-rs", &d.tree.sock("libvirt-sock"), &d.tree.sock("libvirt-sock-ro"), true);
    let dir: std::path::PathBuf =
        std::env::var_os("LIBVIRTD_BENCH_SOCKET_DIR").unwrap_or_else(|| "/run/libvirt".into()).into();
    let (rw, ro) = (dir.join("libvirt-sock"), dir.join("libvirt-sock-ro"));
    if std::os::unix::net::UnixStream::connect(&ro).is_ok() {
        // Debian's define probes QEMU (about 50 s per call here): only on request.
        let define = std::env::var_os("LIBVIRTD_BENCH_DEFINE_OTHER").is_some();
        bench_socket("Debian libvirtd", &rw, &ro, define);
    } else {
        println!("Debian libvirtd: not listening in {} (install libvirt-daemon-system to compare)", dir.display());
    }
}
