//! CPU scheduler parameters, free pages and CPU model names through the stock
//! virsh and python-libvirt, answered as libvirt answers them for what this
//! daemon has: a running guest's CPU cgroup, sysfs page counts, and no named
//! CPU models (every guest gets the host CPU).

mod common;

use std::process::Command;

use common::*;

const UUID_S: &str = "6a3c1e55-0d4b-4f7e-8a21-9b8c7d6e5f01";

/// A figure of sysfs.
fn sysfs(path: &str) -> u64 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// `MemFree` of node 0, in KiB.
fn node0_free_kib() -> u64 {
    let m = std::fs::read_to_string("/sys/devices/system/node/node0/meminfo").unwrap();
    let line = m.lines().find(|l| l.contains("MemFree:")).unwrap();
    line.split_whitespace().rev().nth(1).unwrap().parse().unwrap()
}

#[test]
fn schedinfo_reports_libvirts_parameters_from_the_definition_and_a_running_guests_cgroup() {
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !have_virsh() || !require(is_root(), "root (libvirt allows no CPU tuning in session mode)") {
        return;
    }
    let d = Daemon::start("", &[]);
    let (rw, ro) = (d.tree.sock("libvirt-sock"), d.tree.sock("libvirt-sock-ro"));
    let images = d.tree.path("guest");
    let file = d.tree.path("s.xml");
    let mut xml = domain_xml("s", UUID_S);
    if kvm {
        build_guest(&images);
        xml = xml.replace("/var/tmp/guestkit/vmlinuz", images.join("vmlinuz").to_str().unwrap());
    }
    std::fs::write(&file, xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);

    // Shut off: the persistent definition, whose <cputune> is never set.
    let zeros = "Scheduler      : posix\ncpu_shares     : 0\nvcpu_period    : 0\nvcpu_quota     : 0\n\
                 emulator_period: 0\nemulator_quota : 0\nglobal_period  : 0\nglobal_quota   : 0\n\
                 iothread_period: 0\niothread_quota : 0\n\n";
    for flag in ["--current", "--config"] {
        let (code, out, err) = virsh(&ro, &["schedinfo", "s", flag]);
        assert_eq!((code, out.as_str(), err.as_str()), (0, zeros, ""), "{flag}");
    }
    let (code, _, err) = virsh(&ro, &["schedinfo", "s", "--live"]);
    assert_eq!((code, err.trim()), (1, "error: Requested operation is not valid: domain is not running"));
    // Setting them is refused read-only.
    let (code, _, err) = virsh(&ro, &["schedinfo", "s", "--set", "cpu_shares=512"]);
    assert_eq!(code, 1);
    assert!(err.contains("read only access prevents virDomainSetSchedulerParameters"), "{err}");

    if !require(kvm, "/dev/kvm") {
        return;
    }
    let (code, _, err) = virsh(&rw, &["start", "s"]);
    assert_eq!(code, 0, "{err}");
    // Running: the figures of the guest's CPU cgroup (tests/cgroups.rs
    // checks them against the files), on the read-only socket too.
    let (code, out, err) = virsh(&ro, &["schedinfo", "s"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Scheduler      : posix\ncpu_shares     : "), "{out}");
    assert!(!out.contains("cpu_shares     : 0\n"), "the live weight is the cgroup's: {out}");
    assert_eq!(virsh(&ro, &["schedinfo", "s", "--config"]).1, zeros);
    // No vCPU hotplug: libvirt's unsupported error, the guest unchanged.
    for args in [&["setvcpus", "s", "2", "--live"][..], &["setvcpus", "s", "1", "--live"][..]] {
        let (code, _, err) = virsh(&rw, args);
        assert_eq!(code, 1);
        assert!(
            err.contains("this function is not supported by the connection driver: virDomainSetVcpusFlags"),
            "{err}"
        );
    }
    assert!(virsh(&ro, &["vcpucount", "s", "--live", "--active"]).1.trim().ends_with('1'));
    assert_eq!(virsh(&rw, &["destroy", "s"]).0, 0);
}

#[test]
fn freepages_come_from_sysfs_and_the_capabilities_list_the_sizes() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let ro = d.tree.sock("libvirt-sock-ro");
    let caps = virsh(&ro, &["capabilities"]).1;
    let base = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap().unwrap() as u64 / 1024;
    assert!(caps.contains(&format!("      <pages unit='KiB' size='{base}'/>\n")), "{caps}");
    let mut huge: Vec<u64> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    huge.sort_unstable();
    for size in &huge {
        assert!(caps.contains(&format!("      <pages unit='KiB' size='{size}'/>\n")), "{caps}");
    }

    let before = node0_free_kib() / base;
    let (code, out, err) = virsh(&ro, &["freepages", "--all"]);
    let after = node0_free_kib() / base;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Node 0:\n"), "{out}");
    let count = |label: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("{label}: {out}"))
            .trim()
            .parse()
            .unwrap()
    };
    let free = count(&format!("{base}KiB:"));
    let (lo, hi) = (before.min(after), before.max(after));
    // Free memory moves between readings: within 1% of sysfs's.
    assert!(free + hi / 100 >= lo && free <= hi + hi / 100, "{free} not near {lo}..{hi}");
    for size in &huge {
        let want = sysfs(&format!("/sys/devices/system/node/node0/hugepages/hugepages-{size}kB/free_hugepages"));
        assert_eq!(count(&format!("{size}KiB:")), want, "{out}");
    }

    let (code, _, err) = virsh(&ro, &["freepages", "--cellno", "0", "--pagesize", "3"]);
    assert_eq!((code, err.trim()), (1, "error: operation failed: page size 3 is not available on node 0"));
    let (code, _, err) = virsh(&ro, &["freepages", "--cellno", "4000", "--pagesize", &base.to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("start cell 4000 out of range"), "{err}");
}

#[test]
fn cpu_models_says_guests_get_the_host_cpu_not_that_every_model_is_accepted() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let ro = d.tree.sock("libvirt-sock-ro");
    let (code, out, err) = virsh(&ro, &["cpu-models", "x86_64"]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("all CPU models are accepted"), "{out}");
    assert!(
        err.contains(
            "Operation not supported: named CPU models are not supported: every guest gets the host CPU \
             (cpu mode 'host-passthrough')"
        ),
        "{err}"
    );
    let (code, _, err) = virsh(&ro, &["cpu-models", "aarch64"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid argument: cannot find architecture aarch64"), "{err}");
}

#[test]
fn python_reads_scheduler_and_free_pages_read_only() {
    let py = Command::new("/usr/bin/python3").args(["-c", "import libvirt"]).output().is_ok_and(|o| o.status.success());
    if !require(py, "python3-libvirt") || !require(is_root(), "root") {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let file = d.tree.path("s.xml");
    std::fs::write(&file, domain_xml("s", UUID_S)).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let script = format!(
        r#"
import libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
ro = libvirt.openReadOnly({:?})
dom = ro.lookupByName("s")
print(dom.schedulerType())
p = dom.schedulerParametersFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG)
print(sorted(p.items()))
print(list(dom.schedulerParameters().keys())[:3])
pages = ro.getFreePages([2048], 0, 1)
print(pages)
try:
    ro.getCPUModelNames("x86_64")
except libvirt.libvirtError as e:
    print("models:", e.get_error_code())
"#,
        uri(&d.tree.sock("libvirt-sock-ro"))
    );
    let out = run_python(&d, &script, std::time::Duration::from_secs(30));
    let free_2m = std::fs::read_to_string("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages")
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("('posix', 9)"));
    assert_eq!(
        lines.next(),
        Some(
            "[('cpu_shares', 0), ('emulator_period', 0), ('emulator_quota', 0), ('global_period', 0), \
             ('global_quota', 0), ('iothread_period', 0), ('iothread_quota', 0), ('vcpu_period', 0), ('vcpu_quota', 0)]"
        )
    );
    assert_eq!(lines.next(), Some("['cpu_shares', 'vcpu_period', 'vcpu_quota']"));
    if !free_2m.is_empty() {
        assert_eq!(lines.next(), Some(format!("{{0: {{2048: {free_2m}}}}}").as_str()), "{out}");
    } else {
        lines.next();
    }
    assert_eq!(lines.next(), Some("models: 84"));
}

#[test]
fn domtime_answers_as_libvirt_does_without_a_guest_agent() {
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !have_virsh() || !require(kvm, "/dev/kvm") {
        return;
    }
    let d = Daemon::start("", &[]);
    let (rw, ro) = (d.tree.sock("libvirt-sock"), d.tree.sock("libvirt-sock-ro"));
    let xml = test_guest_xml(&d, "s", UUID_S);
    let file = d.tree.path("s.xml");
    std::fs::write(&file, xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let (code, _, err) = virsh(&rw, &["domtime", "s"]);
    assert_eq!((code, err.trim()), (1, "error: Requested operation is not valid: domain is not running"));
    assert_eq!(virsh(&rw, &["start", "s"]).0, 0);
    // libvirt asks the agent, so a read-only client may not.
    let (code, _, err) = virsh(&ro, &["domtime", "s"]);
    assert_eq!((code, err.trim()), (1, "error: operation forbidden: read only access prevents virDomainGetTime"));
    let (code, _, err) = virsh(&rw, &["domtime", "s"]);
    assert_eq!((code, err.trim()), (1, "error: argument unsupported: QEMU guest agent is not configured"));
    assert_eq!(virsh(&rw, &["suspend", "s"]).0, 0);
    let (code, _, err) = virsh(&rw, &["domtime", "s"]);
    assert_eq!((code, err.trim()), (1, "error: Requested operation is not valid: domain is not running"));
    assert_eq!(virsh(&rw, &["destroy", "s"]).0, 0);
}
