//! A guest's figures as the kernel publishes them for its helper process in
//! `/proc`: CPU time, resident memory, and per vCPU thread (named
//! `helper-vcpuN` by the helper) run time, wait, last CPU and affinity.
//!
//! The broker reads them itself, as root, instead of asking the helper: a
//! read of `/proc` never waits on the guest, so statistics of a wedged helper
//! cost nobody anything, and they are the kernel's word, not the helper's.
//! What the helper controls (its thread names, how many threads it has) is
//! bounded and only used to pick threads, never trusted for a figure.

use std::io::Read;
use std::path::Path;

use nix::unistd::Pid;

/// The most threads of one helper looked at (a guest has at most
/// [`crate::domain::MAX_VCPUS`] vCPU threads, plus a few of the VMM's).
const MAX_TASKS: usize = 1024;
/// The most bytes read of one `/proc` file (`sched` is the longest, ~2 KiB).
const MAX_FILE: u64 = 64 * 1024;

/// Reads a small `/proc` file, bounded; `None` if absent or unreadable.
fn read(path: &Path) -> Option<String> {
    let mut s = String::new();
    std::fs::File::open(path).ok()?.take(MAX_FILE).read_to_string(&mut s).ok()?;
    Some(s)
}

/// Nanoseconds in one clock tick (`USER_HZ`), the unit of `/proc/*/stat` times.
pub fn tick_ns() -> u64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|h| *h > 0).unwrap_or(100);
    1_000_000_000 / hz as u64
}

/// The figures of one `/proc/<pid>[/task/<tid>]/stat` line that are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    /// User time, ns (clock ticks converted).
    pub user_ns: u64,
    /// System time, ns (clock ticks converted).
    pub system_ns: u64,
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// The CPU it last ran on.
    pub processor: i32,
}

/// Parses a `stat` line: the name in parentheses may hold anything, so the
/// fields are counted from its last `)`.
fn parse_stat(line: &str, tick_ns: u64, page_kib: u64) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().take(40).collect();
    // f[0] is field 3 (state): field N is f[N - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        user_ns: num(14)?.saturating_mul(tick_ns),
        system_ns: num(15)?.saturating_mul(tick_ns),
        rss_kib: num(24)?.saturating_mul(page_kib),
        processor: f.get(39 - 3)?.parse().ok()?,
    })
}

fn page_kib() -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().filter(|p| *p > 0);
    page.map_or(4, |p| p as u64 / 1024)
}

/// `/proc/<pid>/stat` of a helper.
pub fn process_stat(pid: Pid) -> Option<Stat> {
    parse_stat(&read(&Path::new("/proc").join(pid.to_string()).join("stat"))?, tick_ns(), page_kib())
}

/// One vCPU thread's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuThread {
    /// Its thread id.
    pub tid: i32,
    /// Time on a CPU, ns (`schedstat`; clock ticks where that is missing).
    pub time_ns: u64,
    /// Time runnable but waiting for a CPU, ns (`schedstat`'s run delay).
    pub delay_ns: u64,
    /// `wait_sum` of `sched`, ns, where the kernel keeps scheduler statistics.
    pub wait_ns: u64,
    /// The host CPU it last ran on.
    pub cpu: i32,
    /// Host CPUs it may run on.
    pub affinity: Vec<bool>,
}

/// Parses `schedstat`: run time, run delay (both ns), time slices.
fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut f = text.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Parses `sched`'s `wait_sum` (ms with a fraction) into ns, as libvirt does.
fn parse_wait_sum(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("se.statistics.wait_sum") || l.starts_with("se.wait_sum"))?;
    let ms: f64 = line.split_once(':')?.1.trim().parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then_some((ms * 1_000_000.0) as u64)
}

/// What a helper thread's name says of it: vCPU `N` (`helper-vcpuN`), a vCPU
/// of a helper from before vCPU threads were numbered (`helper-vcpu`), or
/// something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    Vcpu(u32),
    UnnumberedVcpu,
    Other,
}

/// Reads a thread's `comm`: only indexes below `vcpus` count.
fn vcpu_index(comm: &str, vcpus: u32) -> Named {
    let vcpu = crate::sandbox::seccomp::Thread::HelperVcpu.comm();
    match comm.trim_end().strip_prefix(vcpu) {
        Some("") => Named::UnnumberedVcpu,
        Some(n) => match n.parse::<u32>() {
            Ok(n) if n < vcpus => Named::Vcpu(n),
            _ => Named::Other,
        },
        None => Named::Other,
    }
}

/// The host CPUs a thread may run on (empty if it is gone).
fn affinity(tid: i32) -> Vec<bool> {
    let Ok(set) = nix::sched::sched_getaffinity(Pid::from_raw(tid)) else { return Vec::new() };
    let mut bits: Vec<bool> = (0..nix::sched::CpuSet::count()).map(|i| set.is_set(i).unwrap_or(false)).collect();
    while bits.last() == Some(&false) {
        bits.pop();
    }
    bits
}

/// The figures of thread `tid` of a helper.
fn vcpu_thread(task: &Path, tid: i32, tick: u64, page: u64) -> VcpuThread {
    let stat = read(&task.join("stat")).and_then(|s| parse_stat(&s, tick, page)).unwrap_or_default();
    let sched = read(&task.join("schedstat")).and_then(|s| parse_schedstat(&s));
    VcpuThread {
        tid,
        time_ns: sched.map_or(stat.user_ns + stat.system_ns, |(run, _)| run),
        delay_ns: sched.map_or(0, |(_, delay)| delay),
        wait_ns: read(&task.join("sched")).and_then(|s| parse_wait_sum(&s)).unwrap_or(0),
        cpu: stat.processor,
        affinity: affinity(tid),
    }
}

/// The vCPU threads of helper `pid`, by index (`None` where none runs yet:
/// a starting helper creates them last). A helper started before vCPU
/// threads were numbered has them all named alike; it created them in index
/// order, so they are taken by ascending thread id.
pub fn vcpu_threads(pid: Pid, vcpus: u32) -> Vec<Option<VcpuThread>> {
    let mut out: Vec<Option<VcpuThread>> = vec![None; vcpus as usize];
    let dir = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(entries) = std::fs::read_dir(&dir) else { return out };
    let (tick, page) = (tick_ns(), page_kib());
    let mut unnumbered: Vec<i32> = Vec::new();
    for entry in entries.flatten().take(MAX_TASKS) {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else { continue };
        match read(&entry.path().join("comm")).map(|c| vcpu_index(&c, vcpus)) {
            Some(Named::Vcpu(index)) if out[index as usize].is_none() => {
                out[index as usize] = Some(vcpu_thread(&entry.path(), tid, tick, page));
            }
            Some(Named::UnnumberedVcpu) => unnumbered.push(tid),
            _ => {}
        }
    }
    unnumbered.sort_unstable();
    let free = out.iter_mut().filter(|slot| slot.is_none());
    for (slot, tid) in free.zip(unnumbered) {
        *slot = Some(vcpu_thread(&dir.join(tid.to_string()), tid, tick, page));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A name with spaces and a ')' must not shift the fields.
        let line =
            "42 (a) b) c) R 1 2 3 4 5 6 7 8 9 10 250 130 0 0 20 0 3 0 99 1000 300 0 0 0 0 0 0 0 0 0 0 0 0 0 17 5 0 0";
        let s = parse_stat(line, 10_000_000, 4).unwrap();
        assert_eq!((s.user_ns, s.system_ns, s.rss_kib, s.processor), (2_500_000_000, 1_300_000_000, 1200, 5));
        assert_eq!(parse_stat("1 (x) R 1 2", 1, 4), None);
    }

    /// This process's vCPU threads once `helper-vcpu1` has used 30 ms (at most 10 s).
    fn wait_spun(me: Pid) -> Vec<Option<VcpuThread>> {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let threads = vcpu_threads(me, 2);
            let spun = threads[1].as_ref().is_some_and(|t| t.time_ns >= 30_000_000);
            if spun || std::time::Instant::now() > end {
                return threads;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn this_process_reads_as_a_helper_would() {
        let me = Pid::this();
        let stat = process_stat(me).unwrap();
        assert!(stat.rss_kib > 0);
        // Spin a named thread and find it as a vCPU.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let spinner = std::thread::Builder::new()
            .name("helper-vcpu1".into())
            .spawn(move || {
                // 30 ms on a CPU, however long that takes on a busy host.
                let clock = nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID;
                let used = || nix::time::clock_gettime(clock).map_or(0, |t| t.tv_sec() * 1_000_000_000 + t.tv_nsec());
                while used() < 30_000_000 {}
                let _ = rx.recv();
            })
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let threads = wait_spun(me);
        let _ = tx.send(());
        spinner.join().unwrap();
        assert!(threads[0].is_none(), "no thread is vcpu0");
        let t = threads[1].as_ref().expect("vcpu1 found by name");
        assert!(t.time_ns >= 30_000_000, "{t:?}");
        assert!(t.affinity.iter().any(|b| *b), "{t:?}");
        // A thread named beyond the domain's vCPUs is not one of them.
        assert!(vcpu_threads(me, 1).iter().all(Option::is_none));
    }

    #[test]
    fn wait_sum_is_milliseconds_and_names_are_checked() {
        assert_eq!(parse_wait_sum("se.statistics.wait_sum   :   1.500000\n"), Some(1_500_000));
        assert_eq!(parse_wait_sum("se.sum_exec_runtime : 3\n"), None);
        assert_eq!(parse_schedstat("394068646 335139 31\n"), Some((394_068_646, 335_139)));
        assert_eq!(vcpu_index("helper-vcpu3\n", 4), Named::Vcpu(3));
        assert_eq!(vcpu_index("helper-vcpu4\n", 4), Named::Other);
        assert_eq!(vcpu_index("helper-vcpux", 4), Named::Other);
        assert_eq!(vcpu_index("helper-vcpu\n", 4), Named::UnnumberedVcpu);
        assert_eq!(vcpu_index("helper-vmm\n", 4), Named::Other);
    }
}
