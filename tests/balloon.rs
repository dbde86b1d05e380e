//! virtio-balloon end to end: `<memballoon model='virtio'>` gets a PCI
//! slot, `setmem --live` sets the balloon's target, the test guest's
//! polling driver inflates to it, `dommemstat` and `domstats --balloon`
//! follow with the guest's statistics, the pages the guest had touched go back to the host (the
//! helper's resident set drops), and a page number outside guest RAM is
//! ignored with the helper serving on. A guest without a balloon keeps
//! libvirt's error for a live `setmem`.

mod common;

use std::time::Duration;

use common::*;

const UUID_B: &str = "5c3f9021-7d4e-4b6f-9a8b-0c1d2e3f4a01";
const UUID_N: &str = "5c3f9021-7d4e-4b6f-9a8b-0c1d2e3f4a02";

fn ready() -> bool {
    have_virsh()
        && require(std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(), "/dev/kvm")
        && require(std::path::Path::new("/usr/bin/python3").exists(), "python3")
}

/// The test guest with 256 MiB and `balloon` as its `<memballoon>`.
fn guest_xml(d: &Daemon, name: &str, uuid: &str, balloon: &str) -> String {
    test_guest_xml(d, name, uuid)
        .replace("<memory unit='MiB'>128</memory>", "<memory unit='MiB'>256</memory>")
        .replace("<currentMemory unit='MiB'>128</currentMemory>", "<currentMemory unit='MiB'>256</currentMemory>")
        .replace("<memballoon model='none'/>", balloon)
}

#[test]
fn setmem_inflates_the_balloon_and_the_host_gets_the_pages_back() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let xml = guest_xml(&d, "bal", UUID_B, "<memballoon model='virtio'><stats period='5'/></memballoon>");
    let file = d.tree.path("bal.xml");
    std::fs::write(&file, &xml).unwrap();
    let (code, _, err) = virsh(&rw, &["define", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let dumped = virsh(&rw, &["dumpxml", "bal"]).1;
    assert!(dumped.contains("<memballoon model='virtio'>"), "{dumped}");
    assert!(dumped.contains("<address type='pci' domain='0x0000' bus='0x00' slot='0x03'"), "{dumped}");

    let script = format!(
        "URI = {:?}\n{}{PY_UNTIL}{}",
        uri(&rw),
        r#"
import libvirt, sys, time
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open(URI)
"#,
        r#"
def stat(dom, key, want):
    # dommemstat answers from the helper's last report and asks for a fresh one.
    for _ in range(100):
        s = dom.memoryStats()
        if s.get(key) == want:
            return s
        time.sleep(0.1)
    sys.exit("%s never became %d: %r" % (key, want, s))

dom = conn.lookupByName("bal")
dom.create()
st = conn.newStream(0)
dom.openConsole(None, st, 0)
st.send(b"\r")
until(st, b"> ")
st.send(b"touch 64\r")
until(st, b"TOUCHED=64")
# The driver's setup: the target is 0, and the guest posts its statistics.
st.send(b"balloon\r")
until(st, b"BALLOON actual=0\r\n")
s = stat(dom, "actual", 256 * 1024)
rss_touched = s["rss"]
for _ in range(100):
    if "available" in s:
        break
    time.sleep(0.1)
    s = dom.memoryStats()
available = s.get("available", 0)
print("guest stats", available > 200 * 1024, s.get("unused") == available - 16 * 1024)
dom.setMemoryFlags(192 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
st.send(b"balloon\r")
until(st, b"BALLOON actual=64\r\n")
s = stat(dom, "actual", 192 * 1024)
print("inflated", s["actual"])
# The guest posted fresh statistics with this balloon command.
s = stat(dom, "available", available - 64 * 1024)
dropped = rss_touched - s["rss"]
print("rss dropped by 48 MiB or more:", dropped >= 48 * 1024, dropped // 1024)
rec = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_BALLOON)[0][1]
print("balloon.current", rec["balloon.current"])
dom.setMemoryFlags(256 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
st.send(b"balloon\r")
until(st, b"BALLOON actual=0\r\n")
s = stat(dom, "actual", 256 * 1024)
print("deflated", s["actual"])
st.send(b"balloonbad\r")
until(st, b"BALLOONBAD used=1")
st.send(b"echo alive\r")
until(st, b"alive\r\n")
print("alive", dom.isActive(), dom.memoryStats()["actual"])
dom.destroy()
"#
    );
    let out = run_python(&d, &script, Duration::from_secs(180));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "guest stats True True", "{out}");
    assert_eq!(lines[1], "inflated 196608", "{out}");
    assert!(lines[2].starts_with("rss dropped by 48 MiB or more: True"), "{out}");
    assert_eq!(lines[3..], ["balloon.current 196608", "deflated 262144", "alive 1 262144"], "{out}");

    // virsh's own path: setmem --live on the running guest, dommemstat shows actual.
    let (code, _, err) = virsh(&rw, &["start", "bal"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = virsh(&rw, &["setmem", "bal", "200M", "--live"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = virsh(&rw, &["setmem", "bal", "300M", "--live"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot set memory higher than max memory"), "{err}");
    let mem = virsh(&rw, &["dommemstat", "bal"]).1;
    assert!(mem.contains("actual 262144"), "the guest has not inflated yet: {mem}");
    assert_eq!(virsh(&rw, &["destroy", "bal"]).0, 0);
}

#[test]
fn without_a_balloon_setmem_live_keeps_libvirts_error() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let xml = guest_xml(&d, "nob", UUID_N, "<memballoon model='none'/>");
    let file = d.tree.path("nob.xml");
    std::fs::write(&file, &xml).unwrap();
    assert_eq!(virsh(&rw, &["create", file.to_str().unwrap()]).0, 0);
    let (code, _, err) = virsh(&rw, &["setmem", "nob", "128M", "--live"]);
    assert_ne!(code, 0);
    assert!(err.contains("without the balloon device and guest OS balloon driver"), "{err}");
    let dumped = virsh(&rw, &["dumpxml", "nob"]).1;
    assert!(dumped.contains("<memballoon model='none'/>"), "{dumped}");
    assert_eq!(virsh(&rw, &["destroy", "nob"]).0, 0);
    // An unknown model is refused with libvirt's kind of error.
    std::fs::write(&file, guest_xml(&d, "xen", UUID_N, "<memballoon model='xen'/>")).unwrap();
    let (code, _, err) = virsh(&rw, &["define", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("memballoon model 'xen' is not supported"), "{err}");
}

const UUID_F: &str = "5c3f9021-7d4e-4b6f-9a8b-0c1d2e3f4a03";

/// `RssShmem` of process `pid` (its resident shared memory: a memfd's pages), KiB.
fn rss_shmem(pid: i32) -> u64 {
    task_status_field(&format!("/proc/{pid}/status"), "RssShmem")
        .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_memfd_backed_guest_gives_inflated_pages_back_and_the_stats_period_is_set_live() {
    if !ready() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let xml = guest_xml(&d, "mfd", UUID_F, "<memballoon model='virtio'/>").replace(
        "<currentMemory unit='MiB'>256</currentMemory>",
        "<currentMemory unit='MiB'>256</currentMemory><memoryBacking><source type='memfd'/></memoryBacking>",
    );
    let file = d.tree.path("mfd.xml");
    std::fs::write(&file, &xml).unwrap();
    assert_eq!(virsh(&rw, &["define", file.to_str().unwrap()]).0, 0);
    let script = format!(
        "URI = {:?}\n{}{PY_UNTIL}{}",
        uri(&rw),
        r#"
import libvirt, sys, time
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open(URI)
"#,
        r#"
dom = conn.lookupByName("mfd")
dom.create()
st = conn.newStream(0)
dom.openConsole(None, st, 0)
st.send(b"\r")
until(st, b"> ")
st.send(b"touch 64\r")
until(st, b"TOUCHED=64")
st.send(b"balloon\r")
until(st, b"BALLOON actual=0\r\n")
# No period: the guest's own statistics are not collected.
s = dom.memoryStats()
print("no period", "available" in s, "actual" in s)
print("READY", flush=True)
sys.stdin.readline()
dom.setMemoryFlags(192 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
st.send(b"balloon\r")
until(st, b"BALLOON actual=64\r\n")
print("INFLATED", flush=True)
sys.stdin.readline()
try:
    dom.setMemoryStatsPeriod(-1, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    print("negative accepted")
except libvirt.libvirtError as e:
    print("negative:", e.get_error_message())
dom.setMemoryStatsPeriod(1, libvirt.VIR_DOMAIN_AFFECT_LIVE)
# After a period the helper handed the guest its buffer back; the guest
# posts fresh figures with its next balloon command.
time.sleep(1.5)
st.send(b"balloon\r")
until(st, b"BALLOON actual=64\r\n")
for _ in range(50):
    s = dom.memoryStats()
    if "available" in s:
        break
    time.sleep(0.1)
print("period", "available" in s, "unused" in s)
print("xml", "<stats period='1'/>" in dom.XMLDesc(0))
dom.setMemoryStatsPeriod(0, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
print("off", "available" in dom.memoryStats(), "<stats" in dom.XMLDesc(0))
dom.destroy()
"#
    );
    let _ = &d;
    let mut py = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = String::new();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(py.stdout.take().unwrap()));
    let mut next = |out: &mut String| {
        let l = lines.next().expect("a line from python").unwrap();
        out.push_str(&l);
        out.push('\n');
        l
    };
    assert_eq!(next(&mut out), "no period False True", "{out}");
    assert_eq!(next(&mut out), "READY", "{out}");
    let pid = children_of(d.pid).into_iter().find(|p| cmdline(*p).contains("libvirt-helper")).expect("helper");
    let before = rss_shmem(pid);
    assert!(before >= 64 << 10, "the touched pages are the memfd's: {before} KiB");
    let mut stdin = py.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"\n").unwrap();
    assert_eq!(next(&mut out), "INFLATED", "{out}");
    let after = rss_shmem(pid);
    assert!(before - after >= 48 << 10, "the memfd's pages went back: {before} -> {after} KiB");
    std::io::Write::write_all(&mut stdin, b"\n").unwrap();
    // libvirt's client library refuses a negative period before sending it.
    assert!(next(&mut out).starts_with("negative: period in virDomainSetMemoryStatsPeriod must be zero or greater"));
    assert_eq!(next(&mut out), "period True True", "{out}");
    assert_eq!(next(&mut out), "xml True", "{out}");
    assert_eq!(next(&mut out), "off False False", "{out}");
    assert!(py.wait().unwrap().success());
    // virsh's own path, on the shut-off domain: --config changes the
    // definition, --live is refused.
    assert!(wait_until(Duration::from_secs(5), || virsh(&rw, &["domstate", "mfd"]).1.trim() == "shut off"));
    let (code, _, err) = virsh(&rw, &["dommemstat", "mfd", "--period", "3", "--config"]);
    assert_eq!(code, 0, "{err}");
    assert!(virsh(&rw, &["dumpxml", "mfd"]).1.contains("<stats period='3'/>"));
    let (code, _, err) = virsh(&rw, &["dommemstat", "mfd", "--period", "4", "--live"]);
    assert_ne!(code, 0);
    assert!(err.contains("domain is not running"), "{err}");
}
