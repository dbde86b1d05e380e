//! A cgroup per guest, through the stock virsh: the helper lands in
//! `machine-qemu\x2dID\x2dNAME.scope/libvirt/emulator` and its vCPU threads
//! in `libvirt/vcpuN` with the limits of the domain XML, read back from the
//! cgroup files and from `/proc`; `schedinfo`, `memtune`, `vcpupin` and
//! `emulatorpin` read and change them live; the groups go when the guest
//! stops, and a restarted daemon finds them again. Every group lives in the
//! test tree's own partition (`tests/common/cgroup.rs`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const SECS: Duration = Duration::from_secs(10);
const UUID_T: &str = "7d1e5c30-2f4a-4b6c-9e8d-1a2b3c4d5e01";
const UUID_B: &str = "7d1e5c30-2f4a-4b6c-9e8d-1a2b3c4d5e02";
const UUID_R: &str = "7d1e5c30-2f4a-4b6c-9e8d-1a2b3c4d5e03";
const UUID_RB: &str = "7d1e5c30-2f4a-4b6c-9e8d-1a2b3c4d5e04";

fn have_kvm() -> bool {
    require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm")
}

fn ready() -> bool {
    have_virsh() && require(is_root(), "root (cgroups)") && have_kvm()
}

/// The guest's scope directory in controller `ctrl`.
fn scope(d: &Daemon, ctrl: &str, id: i32, name: &str) -> PathBuf {
    cgroup::dir(d.tree.dir.path(), ctrl).join(format!("machine-qemu\\x2d{id}\\x2d{name}.scope"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
}

/// The helper: the daemon's child running `libvirt-helper`.
fn helper_of(d: &Daemon) -> i32 {
    let mut found = None;
    wait_until(SECS, || {
        found = children_of(d.pid).into_iter().find(|p| cmdline(*p).contains("libvirt-helper"));
        found.is_some()
    });
    found.expect("a helper process")
}

/// The helper's vCPU threads by index (named `helper-vcpuN`).
fn vcpu_tids(pid: i32, n: usize) -> Vec<i32> {
    let mut out = vec![0; n];
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let tid: i32 = e.file_name().to_str().unwrap().parse().unwrap();
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if let Some(i) = comm.trim().strip_prefix("helper-vcpu").and_then(|i| i.parse::<usize>().ok())
            && i < n
        {
            out[i] = tid;
        }
    }
    out
}

fn cpus_allowed(pid: i32, tid: i32) -> String {
    task_status_field(&format!("/proc/{pid}/task/{tid}/status"), "Cpus_allowed_list").unwrap_or_default()
}

/// Kills a helper that outlived its daemon, if the test ends early.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
    }
}

fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn a_guest_runs_in_its_own_cgroups_with_the_limits_of_its_xml() {
    if !ready() {
        return;
    }
    assert!(cgroup::is_v1() || !cgroup::is_v1(), "either hierarchy");
    let mut d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let last = (host_cpus() - 1).to_string();
    let tune = format!(
        "<vcpu placement='static'>2</vcpu>\n  <cputune><shares>512</shares><period>100000</period>\
         <quota>50000</quota><global_period>100000</global_period><global_quota>200000</global_quota>\
         <emulator_period>100000</emulator_period><emulator_quota>20000</emulator_quota>\
         <vcpupin vcpu='0' cpuset='{last}'/><vcpupin vcpu='1' cpuset='0'/><emulatorpin cpuset='0'/><vcpusched vcpus='1' scheduler='batch'/></cputune>\n  \
         <memtune><hard_limit unit='MiB'>256</hard_limit><soft_limit unit='MiB'>192</soft_limit></memtune>"
    );
    let xml = test_guest_xml(&d, "cg", UUID_T).replace("<vcpu placement='static'>1</vcpu>", &tune);
    let file = d.tree.path("cg.xml");
    std::fs::write(&file, xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "cg"]);
    assert_eq!(code, 0, "{err}\n{}", d.stderr());
    let pid = helper_of(&d);
    let mut tids = vec![0, 0];
    assert!(wait_until(SECS, || {
        tids = vcpu_tids(pid, 2);
        tids.iter().all(|t| *t != 0)
    }));

    if cgroup::is_v1() {
        let cpu = scope(&d, "cpu", 1, "cg");
        assert_eq!(read(&cpu.join("cpu.shares")), "512");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "200000");
        for (n, tid) in tids.iter().enumerate() {
            let v = cpu.join(format!("libvirt/vcpu{n}"));
            assert_eq!(read(&v.join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(&v.join("cpu.cfs_quota_us")), "50000");
            // Each vCPU thread, and only it, in its own group.
            assert_eq!(read(&v.join("tasks")), tid.to_string());
        }
        assert_eq!(read(&cpu.join("libvirt/emulator/cpu.cfs_quota_us")), "20000");
        assert!(read(&cpu.join("libvirt/emulator/tasks")).lines().any(|t| t == pid.to_string()));
        let mem = scope(&d, "memory", 1, "cg");
        assert_eq!(read(&mem.join("memory.limit_in_bytes")), (256u64 << 20).to_string());
        assert_eq!(read(&mem.join("memory.soft_limit_in_bytes")), (192u64 << 20).to_string());
        assert!(read(&mem.join("libvirt/emulator/cgroup.procs")).lines().any(|p| p == pid.to_string()));
        let pids = scope(&d, "pids", 1, "cg");
        assert_eq!(read(&pids.join("pids.max")), (2 + 64).to_string());
        let cpuset = scope(&d, "cpuset", 1, "cg");
        assert_eq!(read(&cpuset.join("libvirt/vcpu0/cpuset.cpus")), last);
        // The kernel's word on where the helper is.
        let own = read(Path::new(&format!("/proc/{pid}/cgroup")));
        let line = own.lines().find(|l| l.split(':').nth(1) == Some("memory")).unwrap();
        assert!(line.ends_with("machine-qemu\\x2d1\\x2dcg.scope/libvirt/emulator"), "{line}");
    }
    // vCPU 1 under SCHED_BATCH (3), vCPU 0 left as it was (SCHED_OTHER, 0).
    let policy = |tid: i32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/sched")).unwrap();
        text.lines().find(|l| l.starts_with("policy")).and_then(|l| l.split_whitespace().last()).unwrap().to_owned()
    };
    assert_eq!((policy(tids[0]).as_str(), policy(tids[1]).as_str()), ("0", "3"));
    // Pinned where the XML says.
    assert_eq!(cpus_allowed(pid, tids[0]), last);
    assert_eq!(cpus_allowed(pid, tids[1]), "0");
    assert_eq!(cpus_allowed(pid, pid), "0");

    // schedinfo reads the cgroups.
    let (code, out, err) = virsh(&rw, &["schedinfo", "cg", "--live"]);
    assert_eq!(code, 0, "{err}");
    for want in ["cpu_shares     : 512", "vcpu_quota     : 50000", "emulator_quota : 20000", "global_quota   : 200000"]
    {
        assert!(out.contains(want), "{want}: {out}");
    }
    // Changed live: the files change, and so does the definition.
    let (code, _, err) = virsh(&rw, &["schedinfo", "cg", "--live", "--set", "cpu_shares=300"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = virsh(&rw, &["schedinfo", "cg", "--live", "--set", "vcpu_quota=40000"]);
    assert_eq!(code, 0, "{err}");
    if cgroup::is_v1() {
        let cpu = scope(&d, "cpu", 1, "cg");
        assert_eq!(read(&cpu.join("cpu.shares")), "300");
        assert_eq!(read(&cpu.join("libvirt/vcpu1/cpu.cfs_quota_us")), "40000");
    }
    let (code, out, _) = virsh(&rw, &["schedinfo", "cg", "--config"]);
    assert_eq!(code, 0);
    assert!(out.contains("cpu_shares     : 300"), "{out}");
    let (code, _, err) = virsh(&rw, &["schedinfo", "cg", "--live", "--set", "cpu_shares=1"]);
    assert_ne!(code, 0);
    assert!(err.contains("cpu_shares"), "{err}");

    // memtune: read, and the hard limit changed live.
    let (code, out, err) = virsh(&rw, &["memtune", "cg"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hard_limit     : 262144"), "{out}");
    assert!(out.contains("soft_limit     : 196608"), "{out}");
    let (code, _, err) = virsh(&rw, &["memtune", "cg", "--hard-limit", "300000", "--live"]);
    assert_eq!(code, 0, "{err}");
    if cgroup::is_v1() {
        let mem = scope(&d, "memory", 1, "cg");
        assert_eq!(read(&mem.join("memory.limit_in_bytes")), (300_000u64 << 10).to_string());
    }
    let (_, dump, _) = virsh(&rw, &["dumpxml", "cg"]);
    assert!(dump.contains("<hard_limit unit='KiB'>300000</hard_limit>"), "{dump}");

    // vcpupin live: the thread's affinity, as /proc shows it, and vcpupin's table.
    let (code, _, err) = virsh(&rw, &["vcpupin", "cg", "0", "0", "--live"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(cpus_allowed(pid, tids[0]), "0");
    let (code, out, _) = virsh(&rw, &["vcpupin", "cg"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["0", "0"]), "{out}");
    let (code, out, _) = virsh(&rw, &["vcpuinfo", "cg"]);
    assert_eq!(code, 0);
    let affinity = "y".to_owned() + &"-".repeat(host_cpus() - 1);
    assert!(out.contains(&format!("CPU Affinity:   {affinity}")), "{out}");
    if host_cpus() > 1 {
        let (code, _, err) = virsh(&rw, &["emulatorpin", "cg", &last, "--live"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(cpus_allowed(pid, pid), last);
        let (_, out, _) = virsh(&rw, &["emulatorpin", "cg"]);
        assert!(out.contains(&format!("*: {last}")), "{out}");
    }
    let (code, _, err) = virsh(&rw, &["vcpupin", "cg", "5", "0", "--live"]);
    assert_ne!(code, 0);
    assert!(err.contains("out of range"), "{err}");

    // A restarted daemon finds the guest's groups again: stopping the
    // guest then removes them.
    let _helper = KillOnDrop(pid);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(SECS).is_some_and(|s| s.success()));
    d.restart();
    let rw = d.tree.sock("libvirt-sock");
    let (code, out, _) = virsh(&rw, &["schedinfo", "cg", "--live"]);
    assert_eq!(code, 0);
    assert!(out.contains("cpu_shares     : 300"), "{out}");
    let (code, _, err) = virsh(&rw, &["destroy", "cg"]);
    assert_eq!(code, 0, "{err}");
    let ctrl = if cgroup::is_v1() { "cpu" } else { "unified" };
    let gone = scope(&d, ctrl, 1, "cg");
    assert!(wait_until(SECS, || !gone.exists()), "{} stays", gone.display());
    if cgroup::is_v1() {
        assert!(wait_until(SECS, || !scope(&d, "memory", 1, "cg").exists()));
    }
}

#[test]
fn tuning_the_host_cannot_apply_fails_the_start_naming_it() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let xml = test_guest_xml(&d, "bw", UUID_B).replace(
        "<vcpu placement='static'>1</vcpu>",
        "<vcpu placement='static'>1</vcpu><blkiotune><weight>300</weight></blkiotune>",
    );
    let file = d.tree.path("bw.xml");
    std::fs::write(&file, xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let weighted = ["blkio.weight", "blkio.bfq.weight", "io.weight", "io.bfq.weight"];
    let (code, _, err) = virsh(&rw, &["start", "bw"]);
    // Whether a group can weigh block I/O depends on the host's I/O
    // schedulers (CFQ or BFQ): the weight is in the group's file, or the
    // start is refused saying why.
    if code == 0 {
        let scope = scope(&d, if cgroup::is_v1() { "blkio" } else { "unified" }, 1, "bw");
        let file = weighted.iter().map(|f| scope.join(f)).find(|p| p.exists()).expect("a weight file");
        assert_eq!(read(&file).split_whitespace().last(), Some("300"));
        let (_, out, _) = virsh(&rw, &["blkiotune", "bw"]);
        assert!(out.contains("weight         : 300"), "{out}");
        assert_eq!(virsh(&rw, &["destroy", "bw"]).0, 0);
    } else {
        // Nothing half-started: refused, the domain shut off, no group left.
        assert!(err.contains("blkio weight"), "{err}");
        assert_eq!(virsh(&rw, &["domstate", "bw"]).1.trim(), "shut off");
        assert!(wait_until(SECS, || !scope(&d, "cpu", 1, "bw").exists() && !scope(&d, "cpu", 2, "bw").exists()));
        assert!(children_of(d.pid).into_iter().all(|p| !cmdline(p).contains("libvirt-helper")));
    }
    // The definition's own figure reads back through blkiotune --config.
    let (code, out, err) = virsh(&rw, &["blkiotune", "bw", "--config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("weight         : 300"), "{out}");
}

/// Field `n` (1-based, as proc(5) counts) of `/proc/PID/task/TID/stat`.
fn stat_field(pid: i32, tid: i32, n: usize) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    // Fields after the command name, which ends at the last ')', start at 3.
    let rest = &text[text.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(n - 3).unwrap().to_owned()
}

#[test]
fn fifo_and_rr_vcpus_get_a_real_time_budget_and_their_scheduler() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let tune = "<vcpu placement='static'>2</vcpu><cputune><vcpusched vcpus='0' scheduler='fifo' priority='10'/>\
                <vcpusched vcpus='1' scheduler='rr' priority='5'/></cputune>";
    let xml = test_guest_xml(&d, "rt", UUID_R).replace("<vcpu placement='static'>1</vcpu>", tune);
    let file = d.tree.path("rt.xml");
    std::fs::write(&file, xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "rt"]);
    assert_eq!(code, 0, "{err}\n{}", d.stderr());
    let pid = helper_of(&d);
    let _kill = KillOnDrop(pid);
    let mut tids = vec![0, 0];
    assert!(wait_until(SECS, || {
        tids = vcpu_tids(pid, 2);
        tids.iter().all(|t| *t != 0)
    }));
    // stat field 40 is rt_priority, 41 the policy: SCHED_FIFO 1, SCHED_RR 2.
    assert!(wait_until(SECS, || stat_field(pid, tids[0], 41) == "1"), "{}", d.stderr());
    assert_eq!((stat_field(pid, tids[0], 40).as_str(), stat_field(pid, tids[0], 41).as_str()), ("10", "1"));
    assert_eq!((stat_field(pid, tids[1], 40).as_str(), stat_field(pid, tids[1], 41).as_str()), ("5", "2"));
    if cgroup::is_v1() && cgroup::dir(d.tree.dir.path(), "cpu").parent().unwrap().join("cpu.rt_runtime_us").exists() {
        // The chain holds the budget: 5 % of the period per real-time vCPU.
        let cpu = scope(&d, "cpu", 1, "rt");
        assert_eq!(read(&cpu.join("cpu.rt_runtime_us")), "100000");
        assert_eq!(read(&cpu.join("libvirt/vcpu0/cpu.rt_runtime_us")), "50000");
        assert_eq!(read(&cpu.join("libvirt/vcpu1/cpu.rt_runtime_us")), "50000");
        let partition = cgroup::dir(d.tree.dir.path(), "cpu");
        assert_eq!(read(&partition.join("cpu.rt_runtime_us")), "100000");
    }
    // Live pinning still works on a real-time vCPU.
    let (code, _, err) = virsh(&rw, &["vcpupin", "rt", "0", "0", "--live"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(cpus_allowed(pid, tids[0]), "0");
    let (code, out, _) = virsh(&rw, &["vcpuinfo", "rt"]);
    assert_eq!(code, 0);
    assert!(out.contains("CPU Affinity:   y"), "{out}");
    // The guest still answers.
    assert_eq!(virsh(&rw, &["destroy", "rt"]).0, 0);
    if cgroup::is_v1() && cgroup::dir(d.tree.dir.path(), "cpu").parent().unwrap().join("cpu.rt_runtime_us").exists() {
        // Its budget went back with its groups.
        let partition = cgroup::dir(d.tree.dir.path(), "cpu");
        assert!(wait_until(SECS, || read(&partition.join("cpu.rt_runtime_us")) == "0"), "{}", d.stderr());
    }

    // batch, idle and other: no budget needed; SCHED_IDLE is 5, SCHED_OTHER 0.
    let tune = "<vcpu placement='static'>2</vcpu><cputune><vcpusched vcpus='0' scheduler='idle'/>\
                <vcpusched vcpus='1' scheduler='other'/></cputune>";
    let xml = test_guest_xml(&d, "rt", UUID_R).replace("<vcpu placement='static'>1</vcpu>", tune);
    std::fs::write(&file, xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "rt"]);
    assert_eq!(code, 0, "{err}");
    let pid = helper_of(&d);
    let _kill2 = KillOnDrop(pid);
    assert!(wait_until(SECS, || {
        tids = vcpu_tids(pid, 2);
        tids.iter().all(|t| *t != 0)
    }));
    assert!(wait_until(SECS, || stat_field(pid, tids[0], 41) == "5"));
    assert_eq!(stat_field(pid, tids[1], 41), "0");
    assert_eq!(virsh(&rw, &["destroy", "rt"]).0, 0);
}

#[test]
fn real_time_vcpus_beyond_the_hosts_budget_fail_the_start_clearly() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    // 20 fifo vCPUs need 20 x 5 % of the period: more than the host's 95 %.
    let tune = "<vcpu placement='static'>20</vcpu><cputune><vcpusched scheduler='fifo' priority='1'/></cputune>";
    let xml = test_guest_xml(&d, "rtbig", UUID_RB).replace("<vcpu placement='static'>1</vcpu>", tune);
    let file = d.tree.path("rtbig.xml");
    std::fs::write(&file, xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "rtbig"]);
    if cgroup::is_v1() && Path::new("/sys/fs/cgroup/cpu/cpu.rt_runtime_us").exists() {
        assert_ne!(code, 0);
        assert!(err.contains("no real-time CPU budget"), "{err}");
        assert_eq!(virsh(&rw, &["domstate", "rtbig"]).1.trim(), "shut off");
        assert!(wait_until(SECS, || !scope(&d, "cpu", 1, "rtbig").exists()));
        assert!(children_of(d.pid).into_iter().all(|p| !cmdline(p).contains("libvirt-helper")));
        assert_eq!(read(&cgroup::dir(d.tree.dir.path(), "cpu").join("cpu.rt_runtime_us")), "0");
    } else {
        // Without real-time group scheduling no budget is needed.
        assert_eq!(code, 0, "{err}");
        assert_eq!(virsh(&rw, &["destroy", "rtbig"]).0, 0);
    }
}
