//! `virsh cpu-stats DOMAIN` without `--total` (issue 14): the guest's CPU
//! time per host CPU from its cpuacct cgroup, `cpu_time` and `vcpu_time`
//! for each CPU as libvirt prints them, summing to about the total.

mod common;

use std::time::Duration;

use common::*;

const UUID: &str = "7d1e5c30-2f4a-4b6c-9e8d-1a2b3c4d5e11";

/// `(section, field, seconds)` for each figure virsh printed.
fn figures(out: &str) -> Vec<(String, String, f64)> {
    let mut section = String::new();
    let mut all = Vec::new();
    for line in out.lines() {
        if let Some(s) = line.strip_suffix(':') {
            section = s.trim().to_owned();
        } else if let [field, value, "seconds"] = line.split_whitespace().collect::<Vec<_>>()[..] {
            all.push((section.clone(), field.to_owned(), value.parse().unwrap()));
        }
    }
    all
}

#[test]
fn cpu_stats_per_host_cpu_sum_to_about_the_total() {
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !have_virsh() || !require(kvm, "/dev/kvm") || !require(is_root(), "root (cgroups)") {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let file = d.tree.path("pc.xml");
    std::fs::write(&file, test_guest_xml(&d, "pc", UUID)).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "pc"]);
    assert_eq!(code, 0, "{err}\n{}", d.stderr());
    std::thread::sleep(Duration::from_millis(500));

    let (code, out, err) = virsh(&rw, &["cpu-stats", "pc"]);
    if !cgroup::is_v1() {
        // cgroup v2 keeps no per-CPU time; libvirt says so.
        assert_eq!(code, 1);
        assert!(err.contains("operation 'getCpuacctPercpuUsage' not supported"), "{err}");
        return;
    }
    assert_eq!(code, 0, "{err}\n{}", d.stderr());
    let all = figures(&out);
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_cpu: Vec<_> = all.iter().filter(|f| f.0.starts_with("CPU")).collect();
    let cpu_times: Vec<f64> = per_cpu.iter().filter(|f| f.1 == "cpu_time").map(|f| f.2).collect();
    let vcpu_times: Vec<f64> = per_cpu.iter().filter(|f| f.1 == "vcpu_time").map(|f| f.2).collect();
    assert!(cpu_times.len() >= host_cpus && vcpu_times.len() == cpu_times.len(), "{out}");
    let total = all.iter().find(|f| f.0 == "Total" && f.1 == "cpu_time").map(|f| f.2).expect("a total");
    let sum: f64 = cpu_times.iter().sum();
    let vsum: f64 = vcpu_times.iter().sum();
    assert!(sum > 0.0 && vsum > 0.0 && vsum <= sum + 1e-3, "{out}");
    // Read one after the other, from the cgroup and from the process: about the same.
    assert!((sum - total).abs() <= 0.2 * total + 0.05, "per CPU {sum} s, total {total} s\n{out}");

    // One CPU at a time, as libvirt answers it.
    let (code, one, err) = virsh(&rw, &["cpu-stats", "pc", "--start", "0", "--count", "1"]);
    assert_eq!(code, 0, "{err}");
    let one = figures(&one);
    assert!(one.iter().all(|f| f.0 == "CPU0" || f.0 == "Total"), "{one:?}");
    assert!(one.iter().any(|f| f.0 == "CPU0" && f.1 == "cpu_time"), "{one:?}");
    let (code, _, err) = virsh(&rw, &["cpu-stats", "pc", "--start", "4096", "--count", "1"]);
    assert_eq!(code, 1);
    // virsh checks the range against the CPU count the daemon gave it.
    assert!(err.contains(&format!("Start CPU 4096 is out of range (min: 0, max: {})", cpu_times.len() - 1)), "{err}");
    assert_eq!(virsh(&rw, &["destroy", "pc"]).0, 0);
}
