//! Where a guest's threads run: `<vcpupin>`, `<emulatorpin>` and
//! `<vcpusched>` at start, `virsh vcpupin` and `emulatorpin` live.
//!
//! The broker (root, with `CAP_SYS_NICE`) sets each thread's affinity and
//! scheduler itself, on the thread ids it reads from the helper's
//! `/proc/PID/task` (vCPU threads are named `helper-vcpuN`, see
//! [`super::procfs`]), and moves them into their cgroups: the helper asks
//! for nothing and needs no syscall for it.

use nix::sched::{CpuSet as NixCpuSet, sched_setaffinity};
use nix::unistd::Pid;

use super::cgroup::GuestCgroup;
use super::procfs;
use crate::domain::tuning::{CpuSet, CpuTune};

/// How long a started helper's vCPU threads may take to name themselves.
const NAMING_GRACE: std::time::Duration = std::time::Duration::from_millis(300);
/// The most threads of one helper looked at.
const MAX_TASKS: usize = 1024;

/// Why a thread could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// `sched_setaffinity` failed.
    #[error("cannot set the affinity of thread {tid} to '{cpus}': {source}")]
    Affinity {
        /// The thread.
        tid: i32,
        /// The CPUs.
        cpus: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// `sched_setscheduler` failed.
    #[error("cannot set scheduler '{scheduler}' on vCPU thread {tid}: {source}")]
    Scheduler {
        /// The thread.
        tid: i32,
        /// The policy.
        scheduler: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup could not take a thread.
    #[error(transparent)]
    Cgroup(#[from] super::cgroup::CgroupError),
}

/// Sets thread `tid`'s host CPUs.
pub fn set_affinity(tid: i32, cpus: &CpuSet) -> Result<(), PinError> {
    let mut set = NixCpuSet::new();
    for c in &cpus.0 {
        // CPUs beyond what the kernel's mask holds cannot be asked for.
        let _ = set.set(*c as usize);
    }
    sched_setaffinity(Pid::from_raw(tid), &set).map_err(|source| PinError::Affinity {
        tid,
        cpus: cpus.format(),
        source,
    })
}

/// Thread ids of helper `pid`: its vCPU threads by index, and the others.
pub fn threads(pid: Pid, vcpus: u32) -> (Vec<Option<i32>>, Vec<i32>) {
    let by_index: Vec<Option<i32>> =
        procfs::vcpu_threads(pid, vcpus).iter().map(|t| t.as_ref().map(|t| t.tid)).collect();
    let dir = std::path::Path::new("/proc").join(pid.to_string()).join("task");
    let others = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .take(MAX_TASKS)
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|tid| !by_index.contains(&Some(*tid)))
                .collect()
        })
        .unwrap_or_default();
    (by_index, others)
}

fn set_scheduler(tid: i32, scheduler: &str, priority: Option<u32>) -> Result<(), PinError> {
    let policy = match scheduler {
        "fifo" => libc::SCHED_FIFO,
        "rr" => libc::SCHED_RR,
        "batch" => libc::SCHED_BATCH,
        "idle" => libc::SCHED_IDLE,
        _ => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: priority.unwrap_or(0) as i32 };
    // SAFETY: `param` is a valid sched_param that outlives the call; the
    // kernel only reads it.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if rc != 0 {
        let source = std::io::Error::last_os_error();
        return Err(PinError::Scheduler { tid, scheduler: scheduler.into(), source });
    }
    Ok(())
}

/// Whether thread `tid` of helper `pid` still exists.
fn alive(pid: Pid, tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

/// Places a started guest's threads: each vCPU thread into its cgroup and
/// onto its pinned CPUs with its scheduler, the other threads onto the
/// emulator's CPUs. A guest may already be stopping again (one that resets
/// at once): a vCPU thread that is gone, or never showed, is not placed,
/// and said so in the log; any other failure fails the start.
pub fn place(pid: Pid, vcpus: u32, t: &CpuTune, cgroup: Option<&GuestCgroup>) -> Result<(), PinError> {
    // Each vCPU thread names itself as it begins, which may be a moment
    // after the helper reported the guest started.
    let end = std::time::Instant::now() + NAMING_GRACE;
    let (mut by_index, mut others) = threads(pid, vcpus);
    while by_index.iter().any(Option::is_none) && std::time::Instant::now() < end && alive(pid, pid.as_raw()) {
        std::thread::sleep(std::time::Duration::from_millis(2));
        (by_index, others) = threads(pid, vcpus);
    }
    for (n, tid) in by_index.iter().enumerate() {
        let n = n as u32;
        let Some(tid) = *tid else {
            log::warn!("helper {pid}: vCPU {n} has no thread to place (is the guest stopping?)");
            continue;
        };
        let pin = t.vcpupin.iter().find(|(v, _)| *v == n).map(|(_, s)| s);
        let placed = (|| {
            if let Some(cg) = cgroup {
                cg.add_vcpu(n, tid, pin)?;
            }
            if let Some(set) = pin {
                set_affinity(tid, set)?;
            }
            if let Some(s) = t.vcpusched.iter().find(|s| s.vcpus.0.contains(&n)) {
                set_scheduler(tid, &s.scheduler, s.priority)?;
            }
            Ok(())
        })();
        match placed {
            Err(e) if alive(pid, tid) => return Err(e),
            Err(e) => log::warn!("helper {pid}: vCPU {n} ended while placed: {e}"),
            Ok(()) => {}
        }
    }
    if let Some(set) = &t.emulatorpin {
        for tid in others {
            match set_affinity(tid, set) {
                Err(e) if alive(pid, tid) => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_pinned_where_asked() {
        let Ok(now) = nix::sched::sched_getaffinity(Pid::from_raw(0)) else { return };
        let first = (0..NixCpuSet::count()).find(|c| now.is_set(*c).unwrap_or(false)).unwrap_or(0) as u32;
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            tx.send(tid).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
            nix::sched::sched_getaffinity(Pid::from_raw(0)).unwrap()
        });
        let tid = rx.recv().unwrap();
        set_affinity(tid, &CpuSet(vec![first])).unwrap();
        let after = t.join().unwrap();
        assert!(after.is_set(first as usize).unwrap());
        assert_eq!((0..NixCpuSet::count()).filter(|c| after.is_set(*c).unwrap_or(false)).count(), 1);
    }
}
