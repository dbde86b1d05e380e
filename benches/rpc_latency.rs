//! Per-call latency of simple read-only calls from one client process:
//! `virConnectListAllDomains` (answered by the broker, through the frontend)
//! and `virConnectGetLibVersion` (answered by the frontend alone), against our
//! daemon with 10 defined domains, and against Debian's libvirtd when one is
//! listening on /run/libvirt/libvirt-sock-ro (or $LIBVIRTD_BENCH_SOCKET).
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

fn bench_socket(name: &str, socket: &Path) {
    let list = xdr::to_bytes(&ListAllDomainsArgs { need_results: 1, flags: 3 }).unwrap();
    let mut c = RawClient::connect(socket);
    c.open(0);
    let (_, payload) = c.call(LIST_ALL_DOMAINS, &list);
    let count = u32::from_be_bytes(payload[payload.len() - 4..].try_into().unwrap());
    report(&format!("{name}: list all domains ({count} defined)"), measure(&mut c, LIST_ALL_DOMAINS, &list));
    report(&format!("{name}: get lib version"), measure(&mut c, GET_LIB_VERSION, &[]));
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let d = Daemon::start("", &[]);
    let mut c = RawClient::connect(&d.tree.sock("libvirt-sock"));
    c.open(0);
    for i in 0..10 {
        let uuid = format!("00000000-0000-4000-8000-{i:012}");
        let xml = xdr::to_bytes(&StringArg { value: domain_xml(&format!("bench-{i}"), &uuid) }).unwrap();
        assert_eq!(c.call(DEFINE_XML, &xml).0.status, 0);
    }
    drop(c);
    bench_socket("libvirtd-rs", &d.tree.sock("libvirt-sock-ro"));
    let theirs: std::path::PathBuf =
        std::env::var_os("LIBVIRTD_BENCH_SOCKET").unwrap_or_else(|| "/run/libvirt/libvirt-sock-ro".into()).into();
    let theirs = theirs.as_path();
    if std::os::unix::net::UnixStream::connect(theirs).is_ok() {
        bench_socket("Debian libvirtd", theirs);
    } else {
        println!("Debian libvirtd: not listening on {} (install libvirt-daemon-system to compare)", theirs.display());
    }
}
