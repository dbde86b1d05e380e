//! Guests through the daemon, as a user runs them: the time from `virsh
//! start` to `GUEST-READY` in the guest's serial log, the time `virsh
//! destroy` takes, sequential starts per second for 10 guests, the daemon's
//! RSS (broker and frontend) with 10 guests running, and `virsh list`
//! latency with 10 guests running. Debian's libvirtd+QEMU is not driven here
//! (each of its defines takes ~50 s on this machine; see the issue notes).
//!
//! Run: `cargo bench --bench lifecycle` (as root, with /dev/kvm and virsh).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Daemon, children_of, domain_xml, status_field, virsh, wait_until};

const GUESTS: usize = 10;

fn rss_kib(pid: i32) -> u64 {
    status_field(pid, "VmRSS").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let images = d.tree.path("guest");
    common::build_guest(&images);
    let mut names = Vec::new();
    for i in 0..GUESTS {
        let name = format!("bench-{i}");
        let log = d.tree.path(&format!("{name}.log"));
        let xml = domain_xml(&name, &format!("00000000-0000-4000-8000-{i:012}"))
            .replace("/var/tmp/guestkit/vmlinuz", images.join("vmlinuz").to_str().unwrap())
            .replace(
                "<serial type='pty'><target port='0'/></serial>",
                &format!("<serial type='file'><source path='{}'/><target port='0'/></serial>", log.display()),
            );
        let file = d.tree.path(&format!("{name}.xml"));
        std::fs::write(&file, xml).unwrap();
        assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
        names.push((name, log));
    }

    // Start to GUEST-READY and destroy, one guest at a time.
    let (mut ready, mut destroy) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (name, log) = &names[0];
        let _ = std::fs::remove_file(log);
        let t = Instant::now();
        assert_eq!(virsh(&rw, &["start", name]).0, 0);
        assert!(wait_until(Duration::from_secs(30), || std::fs::read_to_string(log)
            .is_ok_and(|l| l.contains("GUEST-READY"))));
        ready.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(virsh(&rw, &["destroy", name]).0, 0);
        destroy.push(t.elapsed());
    }
    let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1e3).sum::<f64>() / v.len() as f64;
    println!("virsh start to GUEST-READY         mean {:>8.1} ms (5 runs)", ms(&ready));
    println!("virsh destroy                      mean {:>8.1} ms (5 runs)", ms(&destroy));

    // Ten sequential starts.
    let t = Instant::now();
    for (name, _) in &names {
        assert_eq!(virsh(&rw, &["start", name]).0, 0);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "sequential starts                  {:>8.1} per second ({GUESTS} guests in {secs:.2} s)",
        GUESTS as f64 / secs
    );

    let frontend = d.frontend_pid().unwrap();
    let daemon_rss = rss_kib(d.pid) + rss_kib(frontend);
    let helpers: Vec<i32> = children_of(d.pid).into_iter().filter(|p| *p != frontend).collect();
    let helper_rss: u64 = helpers.iter().map(|p| rss_kib(*p)).sum();
    println!(
        "daemon RSS with {GUESTS} guests          {:>8.1} MiB (broker + frontend); helpers {:.1} MiB in all",
        daemon_rss as f64 / 1024.0,
        helper_rss as f64 / 1024.0
    );

    let t = Instant::now();
    for _ in 0..20 {
        let (code, out, _) = virsh(&rw, &["list"]);
        assert_eq!(code, 0);
        assert_eq!(out.matches("running").count(), GUESTS);
    }
    println!(
        "virsh list, {GUESTS} guests running       mean {:>8.1} ms (20 runs, whole virsh process)",
        t.elapsed().as_secs_f64() * 1e3 / 20.0
    );
    for (name, _) in &names {
        let _ = virsh(&rw, &["destroy", name]);
    }
}
