//! A guest's memory against its limits: a guest that touches more than its
//! `<memtune>` hard limit is killed by the kernel, the domain reports shut
//! off (crashed) with the reason in the log, and the daemon serves on.

mod common;

use std::time::Duration;

use common::*;

const UUID_M: &str = "4b2e8f10-6c3d-4a5e-8f7a-9b0c1d2e3f01";

fn ready() -> bool {
    have_virsh()
        && require(is_root(), "root (cgroups)")
        && require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm")
        && require(std::path::Path::new("/usr/bin/python3").exists(), "python3")
}

/// Python with python-libvirt: `conn`, a console opener and `until`.
const PRELUDE: &str = r#"
import libvirt, sys, time
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open(URI)

def console(dom):
    st = conn.newStream(0)
    dom.openConsole(None, st, 0)
    return st
"#;

#[test]
fn a_guest_over_its_memory_limit_is_killed_and_reported_crashed() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &["--verbose"]);
    let rw = d.tree.sock("libvirt-sock");
    // 256 MiB of RAM, 64 MiB the helper may keep (no swap either).
    let limits = "<memtune><hard_limit unit='MiB'>64</hard_limit><swap_hard_limit unit='MiB'>64</swap_hard_limit>\
                  </memtune>";
    let xml = test_guest_xml(&d, "oom", UUID_M)
        .replace("<memory unit='MiB'>128</memory>", "<memory unit='MiB'>256</memory>")
        .replace("<currentMemory unit='MiB'>128</currentMemory>", "<currentMemory unit='MiB'>256</currentMemory>")
        .replace("<vcpu placement='static'>1</vcpu>", &format!("<vcpu placement='static'>1</vcpu>{limits}"));
    let file = d.tree.path("oom.xml");
    std::fs::write(&file, &xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);

    let script = format!(
        "URI = {:?}\n{PRELUDE}{PY_UNTIL}{}",
        uri(&rw),
        r#"
dom = conn.lookupByName("oom")
dom.create()
st = console(dom)
st.send(b"\r")
until(st, b"> ")
st.send(b"touch 8\r")
until(st, b"TOUCHED=8")
print("touched 8")
st.send(b"touch 200\r")
seen = b""
try:
    while True:
        data = st.recv(4096)
        if not data:
            break
        seen += data
except libvirt.libvirtError:
    pass
if b"TOUCHED=200" in seen:
    sys.exit("the guest touched 200 MiB under a 64 MiB limit")
print("ended")
"#
    );
    let out = run_python(&d, &script, Duration::from_secs(120));
    assert_eq!(out, "touched 8\nended\n");

    assert!(wait_until(Duration::from_secs(10), || virsh(&rw, &["domstate", "oom", "--reason"]).1.trim()
        == "shut off (crashed)"));
    assert!(
        wait_until(Duration::from_secs(5), || d.stderr().contains("killed by the kernel: out of memory in its cgroup")),
        "{}",
        d.stderr()
    );
    // The daemon is unharmed: it serves, and the domain starts again.
    assert_eq!(virsh(&rw, &["list", "--all"]).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "oom"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(virsh(&rw, &["destroy", "oom"]).0, 0);
}

/// The answers to `e820`, `himem 5120` and `himem 8192` (past its RAM) of a 6 GiB
/// guest booted from `kernel` (a file of the guest kit).
fn six_gib_guest(kernel: &str, name: &str, uuid: &str) -> String {
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let images = d.tree.path("guest");
    let xml = test_guest_xml(&d, name, uuid)
        .replace(images.join("vmlinuz").to_str().unwrap(), images.join(kernel).to_str().unwrap())
        .replace("<memory unit='MiB'>128</memory>", "<memory unit='GiB'>6</memory>")
        .replace("<currentMemory unit='MiB'>128</currentMemory>", "<currentMemory unit='GiB'>6</currentMemory>");
    let script = format!(
        "URI = {:?}\nXML = {xml:?}\n{PRELUDE}{PY_UNTIL}{}",
        uri(&rw),
        r#"
dom = conn.createXML(XML, 0)
st = console(dom)
# The console may open before or after the guest's first prompt: a marker
# line the guest echoes back says where its answers begin.
st.send(b"echo ready-for-commands\r")
until(st, b"ready-for-commands\r\n> ")
def answer(command, marker):
    st.send(command + b"\r")
    text = until(st, b"\r\n> ").decode()
    lines = [l for l in text.splitlines() if l.startswith(marker)]
    if not lines:
        raise SystemExit("no %s line in the guest's answer %r" % (marker, text))
    print(lines[0])
answer(b"e820", "E820=")
answer(b"himem 5120", "HIMEM=")
answer(b"himem 8192", "HIMEM=")
dom.destroy()
"#
    );
    run_python(&d, &script, Duration::from_secs(120))
}

#[test]
fn a_six_gib_guest_gets_ram_above_4_gib_in_both_boot_protocols() {
    if !ready() {
        return;
    }
    // KiB: conventional memory, 1 MiB up to the hole at 3 GiB, and 3 GiB from 4 GiB.
    let map = "E820=0+639:1,1024+3144704:1,4194304+3145728:1";
    for (kernel, name, uuid) in [
        ("vmlinuz", "big-bz", "4b2e8f10-6c3d-4a5e-8f7a-9b0c1d2e3f02"),
        ("pvh.elf", "big-pvh", "4b2e8f10-6c3d-4a5e-8f7a-9b0c1d2e3f03"),
    ] {
        let out = six_gib_guest(kernel, name, uuid);
        // 8 GiB is past the guest's RAM: no memory there to keep the pattern.
        assert_eq!(out, format!("{map}\nHIMEM=ok 5120\nHIMEM=bad 8192\n"), "{kernel}");
    }
}

/// Reserves `n` more 2 MiB huge pages for the test and gives them back
/// after. The pool is the host's, one for every test here: a test holds it
/// alone, so that another's guest never takes the pages it counts.
struct HugePages {
    before: u64,
    _alone: std::sync::MutexGuard<'static, ()>,
}

impl HugePages {
    const KNOB: &str = "/proc/sys/vm/nr_hugepages";

    fn reserve(n: u64) -> HugePages {
        static POOL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let alone = POOL.lock().unwrap_or_else(|p| p.into_inner());
        let before: u64 = std::fs::read_to_string(Self::KNOB).unwrap().trim().parse().unwrap();
        std::fs::write(Self::KNOB, (before + n).to_string()).unwrap();
        HugePages { before, _alone: alone }
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::KNOB, self.before.to_string());
    }
}

fn free_2m() -> u64 {
    let f = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
    std::fs::read_to_string(f).unwrap().trim().parse().unwrap()
}

#[test]
fn huge_page_backing_shows_in_the_helpers_smaps_and_a_shortfall_fails_the_start() {
    if !ready() {
        return;
    }
    let _pages = HugePages::reserve(8);
    assert!(free_2m() >= 8, "the kernel did not give 8 huge pages of 2 MiB");
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let backed = |mib: u32| {
        format!(
            "<memory unit='MiB'>{mib}</memory>\n  <currentMemory unit='MiB'>{mib}</currentMemory>\n  \
             <memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages><nosharepages/></memoryBacking>"
        )
    };
    let base = test_guest_xml(&d, "huge", UUID_M);
    let plain = "<memory unit='MiB'>128</memory>\n  <currentMemory unit='MiB'>128</currentMemory>";
    let file = d.tree.path("huge.xml");
    std::fs::write(&file, base.replace(plain, &backed(16))).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let free = free_2m();
    let (code, _, err) = virsh(&rw, &["start", "huge"]);
    assert_eq!(code, 0, "{err}\n{}", d.stderr());
    assert_eq!(free_2m(), free - 8, "the guest's 16 MiB are 8 huge pages");
    let pid = children_of(d.pid).into_iter().find(|p| cmdline(*p).contains("libvirt-helper")).expect("helper");
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    // The mapping of guest RAM: 16 MiB in 2 MiB kernel pages, from the broker's memfd.
    let mapping = smaps.split("\nSize:").find(|m| m.trim_start().starts_with("16384 kB")).expect(&smaps);
    assert!(mapping.contains("KernelPageSize:     2048 kB"), "{mapping}");
    let (code, _, _) = virsh(&rw, &["destroy", "huge"]);
    assert_eq!(code, 0);
    assert!(wait_until(Duration::from_secs(5), || free_2m() == free));

    // 64 MiB would need 32 pages: refused at start, nothing left running.
    std::fs::write(&file, base.replace(plain, &backed(64))).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let (code, _, err) = virsh(&rw, &["start", "huge"]);
    assert_ne!(code, 0);
    assert!(err.contains("not enough free 2048 KiB huge pages for guest 'huge': 32 needed"), "{err}");
    assert_eq!(virsh(&rw, &["domstate", "huge"]).1.trim(), "shut off");
    assert!(children_of(d.pid).into_iter().all(|p| !cmdline(p).contains("libvirt-helper")));
    assert_eq!(free_2m(), free);
}

#[test]
fn setmaxmem_changes_the_definition_and_a_running_guests_maximum_stays() {
    if !have_virsh()
        || !require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm")
    {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let file = d.tree.path("mx.xml");
    std::fs::write(&file, test_guest_xml(&d, "mx", "4b2e8f10-6c3d-4a5e-8f7a-9b0c1d2e3f04")).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let (code, _, err) = virsh(&rw, &["setmaxmem", "mx", "96M", "--config"]);
    assert_eq!(code, 0, "{err}");
    let xml = virsh(&rw, &["dumpxml", "mx"]).1;
    assert!(xml.contains("<memory unit='KiB'>98304</memory>"), "{xml}");
    assert!(xml.contains("<currentMemory unit='KiB'>98304</currentMemory>"), "{xml}");
    assert_eq!(
        virsh(&rw, &["dominfo", "mx"])
            .1
            .lines()
            .find(|l| l.starts_with("Max memory"))
            .unwrap()
            .split_whitespace()
            .nth(2),
        Some("98304")
    );
    assert_eq!(virsh(&rw, &["start", "mx"]).0, 0);
    let (code, _, err) = virsh(&rw, &["setmaxmem", "mx", "64M", "--live"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot resize the maximum memory on an active domain"), "{err}");
    let (code, _, err) = virsh(&rw, &["setmaxmem", "mx", "64M", "--config"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(virsh(&rw, &["destroy", "mx"]).0, 0);
}

/// `VmLck` of process `pid`, KiB.
fn vm_lck(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn locked_guest_memory_is_locked_in_the_helper_and_one_too_large_fails_the_start() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let plain = "<memory unit='MiB'>128</memory>\n  <currentMemory unit='MiB'>128</currentMemory>";
    let locked = format!("{plain}\n  <memoryBacking><locked/></memoryBacking>");
    let file = d.tree.path("lck.xml");
    std::fs::write(&file, test_guest_xml(&d, "lck", UUID_M).replace(plain, &locked)).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let dumped = virsh(&rw, &["dumpxml", "lck"]).1;
    assert!(dumped.contains("<memoryBacking>") && dumped.contains("<locked/>"), "{dumped}");
    let helpers =
        || children_of(d.pid).into_iter().filter(|p| cmdline(*p).contains("libvirt-helper")).collect::<Vec<_>>();
    let (code, _, err) = virsh(&rw, &["start", "lck"]);
    assert_eq!(code, 0, "{err}\n{}", d.stderr());
    let pid = helpers()[0];
    // The whole of guest RAM is locked (on fault: nothing is touched up front).
    assert_eq!(vm_lck(pid), 128 << 10, "{}", d.stderr());
    let rss = |pid: i32| task_status_field(&format!("/proc/{pid}/status"), "VmRSS").unwrap_or_default();
    assert!(rss(pid).trim_end_matches(" kB").trim().parse::<u64>().unwrap() < 64 << 10, "{}", rss(pid));
    assert!(virsh(&rw, &["dumpxml", "lck"]).1.contains("<locked/>"));
    assert_eq!(virsh(&rw, &["destroy", "lck"]).0, 0);

    // The same guest unlocked locks nothing.
    std::fs::write(&file, test_guest_xml(&d, "lck", UUID_M)).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    assert_eq!(virsh(&rw, &["start", "lck"]).0, 0);
    assert!(wait_until(Duration::from_secs(5), || helpers().len() == 1));
    assert_eq!(vm_lck(helpers()[0]), 0);
    assert_eq!(virsh(&rw, &["destroy", "lck"]).0, 0);

    // More than the host has can never be locked: refused, nothing started.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo.lines().next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let gib = (total_kib >> 20) + 2;
    let big = format!(
        "<memory unit='GiB'>{gib}</memory>\n  <currentMemory unit='GiB'>{gib}</currentMemory>\n  \
         <memoryBacking><locked/></memoryBacking>"
    );
    std::fs::write(&file, test_guest_xml(&d, "lck", UUID_M).replace(plain, &big)).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    assert!(wait_until(Duration::from_secs(5), || helpers().is_empty()));
    let (code, _, err) = virsh(&rw, &["start", "lck"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot lock the memory of guest 'lck'") && err.contains("more than the host's"), "{err}");
    assert_eq!(virsh(&rw, &["domstate", "lck"]).1.trim(), "shut off");
    assert!(helpers().is_empty());
}

#[test]
fn a_huge_page_backed_guest_gives_whole_huge_pages_back_to_the_pool_when_it_inflates() {
    if !ready() {
        return;
    }
    let _pages = HugePages::reserve(128);
    assert!(free_2m() >= 128, "the kernel did not give 128 huge pages of 2 MiB");
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let plain = "<memory unit='MiB'>128</memory>\n  <currentMemory unit='MiB'>128</currentMemory>";
    let backed = "<memory unit='MiB'>256</memory>\n  <currentMemory unit='MiB'>256</currentMemory>\n  \
                  <memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages></memoryBacking>";
    let xml = test_guest_xml(&d, "hb", UUID_M)
        .replace(plain, backed)
        .replace("<memballoon model='none'/>", "<memballoon model='virtio'/>");
    let file = d.tree.path("hb.xml");
    std::fs::write(&file, &xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let script = format!(
        "URI = {:?}\n{PRELUDE}{PY_UNTIL}{}",
        uri(&rw),
        r#"
dom = conn.lookupByName("hb")
dom.create()
st = console(dom)
st.send(b"\r")
until(st, b"> ")
st.send(b"balloon\r")
until(st, b"BALLOON actual=0\r\n")
print("FREE", open("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read().strip())
# 64 MiB into the balloon: 16384 pages of 4 KiB from 16 MiB up, which are
# 32 whole huge pages.
dom.setMemoryFlags(192 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
st.send(b"balloon\r")
until(st, b"BALLOON actual=64\r\n")
time.sleep(0.5)
print("FREE", open("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read().strip())
dom.destroy()
"#
    );
    let out = run_python(&d, &script, Duration::from_secs(120));
    let free: Vec<u64> = out.lines().filter_map(|l| l.strip_prefix("FREE ")?.parse().ok()).collect();
    assert_eq!(free.len(), 2, "{out}");
    assert_eq!(free[1] - free[0], 32, "whole huge pages went back to the pool: {out}");
}
