//! cgroup v1: one hierarchy per controller, each mounted at
//! `MOUNT/<controller>`. A guest's groups exist in each; its helper's
//! process sits in `libvirt/emulator` of every controller, and its vCPU
//! threads move to `libvirt/vcpuN` in the controllers that act on threads
//! (cpu, cpuacct, cpuset). The memory, blkio and pids limits go on the
//! guest's scope, which counts all of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{
    Backend, Bandwidth, CgroupError, Controller, Kind, Place, base, mkdir, own_cgroup, read, read_num, rmdir, write,
};
use crate::domain::tuning::{CpuSet, MemTune, UNLIMITED_KIB};

/// The v1 hierarchies the daemon can use, by controller: the partition's
/// directory in each.
#[derive(Debug)]
pub struct V1 {
    bases: HashMap<Controller, PathBuf>,
    /// Per controller: the existing group the partition goes below, and the
    /// partition relative to it (made with the first guest's groups).
    partitions: HashMap<Controller, (PathBuf, PathBuf)>,
}

/// Creates `dir` below `top` (which exists), each missing level in turn;
/// new cpuset levels get their parent's CPUs and memory nodes, without
/// which the kernel refuses them any task.
fn create_below(top: &Path, rel: &Path, cpuset: bool) -> Result<(), CgroupError> {
    let mut dir = top.to_owned();
    for c in rel.components() {
        let parent = dir.clone();
        dir.push(c);
        if dir.exists() {
            continue;
        }
        mkdir(&dir)?;
        if cpuset {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = read(&parent.join(f))?;
                write(&dir.join(f), &v)?;
            }
        }
    }
    Ok(())
}

impl V1 {
    /// Finds the mounted v1 controllers whose partition the daemon could
    /// make (it is made with the first guest's groups); notes say why a
    /// controller is left out.
    pub fn open(place: &Place<'_>, parts: &[String], absolute: bool, notes: &mut Vec<String>) -> Result<V1, String> {
        let (mut bases, mut partitions) = (HashMap::new(), HashMap::new());
        for c in Controller::ALL {
            let root = place.mount.join(c.v1_name());
            if !root.join("cgroup.procs").exists() {
                notes.push(format!("cgroup v1 controller '{}' is not mounted at '{}'", c.v1_name(), root.display()));
                continue;
            }
            let own = own_cgroup(place.self_cgroup, Some(c.v1_name()));
            let own_dir = base(&root, own.as_deref(), &[], absolute);
            let dir = base(&root, own.as_deref(), parts, absolute);
            let rel = dir.strip_prefix(&own_dir).unwrap_or(&dir).to_owned();
            // Nothing is made until a guest starts: here only whether it could be.
            match super::writable(&dir) {
                Ok(()) => {
                    bases.insert(c, dir);
                    partitions.insert(c, (own_dir, rel));
                }
                Err(e) => notes.push(format!("cgroup v1 controller '{}' is not writable: {e}", c.v1_name())),
            }
        }
        Ok(V1 { bases, partitions })
    }

    fn base(&self, c: Controller) -> Result<&PathBuf, CgroupError> {
        self.bases.get(&c).ok_or(CgroupError::Unavailable(c.v1_name()))
    }

    fn file(&self, c: Controller, group: &Path, name: &str) -> Result<PathBuf, CgroupError> {
        Ok(self.base(c)?.join(group).join(name))
    }
}

/// A v1 memory figure (bytes, with the kernel's "unlimited" near 2^63) in KiB.
fn kib_of(bytes: u64) -> u64 {
    if bytes >= (i64::MAX as u64) & !0xFFF { UNLIMITED_KIB } else { bytes / 1024 }
}

/// KiB as v1 wants it: bytes, or -1 for unlimited.
fn bytes_of(kib: u64) -> String {
    if kib >= UNLIMITED_KIB { "-1".into() } else { (kib.saturating_mul(1024)).to_string() }
}

/// `cpu.rt_runtime_us` of the cpu group `dir`.
const RT_RUNTIME: &str = "cpu.rt_runtime_us";

/// Adds `delta_us` (may be negative) to `dir`'s real-time runtime.
fn add_rt(dir: &Path, delta_us: i64) -> Result<(), CgroupError> {
    let path = dir.join(RT_RUNTIME);
    let now: i64 = read_num(&path)?;
    set_rt(dir, now.saturating_add(delta_us).max(0) as u64)
}

/// Sets `dir`'s real-time runtime.
fn set_rt(dir: &Path, runtime_us: u64) -> Result<(), CgroupError> {
    let path = dir.join(RT_RUNTIME);
    std::fs::write(&path, runtime_us.to_string()).map_err(|source| CgroupError::RtBudget { path, runtime_us, source })
}

impl V1 {
    /// The partition's levels in the cpu hierarchy that the daemon may
    /// raise, top first: those below the daemon's own group (the root, or
    /// the group it was started in, is the host's to budget).
    fn rt_partition_levels(&self) -> Vec<PathBuf> {
        let Some((top, rel)) = self.partitions.get(&Controller::Cpu) else { return Vec::new() };
        let mut dir = top.clone();
        rel.components()
            .map(|c| {
                dir.push(c);
                dir.clone()
            })
            .collect()
    }
}

impl Backend for V1 {
    fn version(&self) -> u8 {
        1
    }

    fn has(&self, c: Controller) -> bool {
        self.bases.contains_key(&c)
    }

    fn dir(&self, c: Controller, group: &Path) -> PathBuf {
        self.bases.get(&c).map(|b| b.join(group)).unwrap_or_default()
    }

    fn create(&self, group: &Path, kind: Kind) -> Result<(), CgroupError> {
        for (c, b) in &self.bases {
            if kind == Kind::Vcpu && !c.threaded() {
                continue;
            }
            if let Some((top, rel)) = self.partitions.get(c) {
                create_below(top, rel, *c == Controller::Cpuset)?;
            }
            create_below(b, group, *c == Controller::Cpuset)?;
        }
        Ok(())
    }

    fn remove(&self, group: &Path) -> Result<(), CgroupError> {
        let mut first = Ok(());
        for b in self.bases.values() {
            if let Err(e) = rmdir(&b.join(group))
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    fn exists(&self, group: &Path) -> bool {
        self.bases.values().any(|b| b.join(group).is_dir())
    }

    fn add_process(&self, group: &Path, pid: i32) -> Result<(), CgroupError> {
        for b in self.bases.values() {
            write(&b.join(group).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn reserve_rt(&self, scope: &Path, vcpus: &[PathBuf], each_us: u64) -> Result<u64, CgroupError> {
        let Ok(base) = self.base(Controller::Cpu) else { return Ok(0) };
        if vcpus.is_empty() || !base.join(RT_RUNTIME).exists() {
            return Ok(0);
        }
        let total = each_us.saturating_mul(vcpus.len() as u64);
        let delta = i64::try_from(total).unwrap_or(i64::MAX);
        // Top down: a group may hold no more than its parent leaves it.
        let levels = self.rt_partition_levels();
        let mut raised = Vec::new();
        let mut given = || -> Result<(), CgroupError> {
            for l in &levels {
                add_rt(l, delta)?;
                raised.push(l.clone());
            }
            set_rt(&base.join(scope), total)?;
            set_rt(&base.join(scope).join("libvirt"), total)?;
            for v in vcpus {
                set_rt(&base.join(v), each_us)?;
            }
            Ok(())
        };
        match given() {
            Ok(()) => Ok(total),
            Err(e) => {
                // Bottom up, the guest's own groups first.
                for v in vcpus {
                    let _ = set_rt(&base.join(v), 0);
                }
                let _ = set_rt(&base.join(scope).join("libvirt"), 0);
                let _ = set_rt(&base.join(scope), 0);
                for l in raised.iter().rev() {
                    let _ = add_rt(l, -delta);
                }
                Err(e)
            }
        }
    }

    fn release_rt(&self, groups: &[PathBuf], total_us: u64) -> bool {
        let Ok(base) = self.base(Controller::Cpu) else { return true };
        // A group still holding a real-time task refuses 0 (EBUSY): the
        // helper's threads are still exiting, and this is tried again.
        if groups.iter().any(|g| base.join(g).exists() && set_rt(&base.join(g), 0).is_err()) {
            return false;
        }
        let delta = i64::try_from(total_us).unwrap_or(i64::MAX);
        for l in self.rt_partition_levels().iter().rev() {
            if let Err(e) = add_rt(l, -delta) {
                log::warn!("cannot take back the real-time budget of a stopped guest: {e}");
            }
        }
        true
    }

    fn rt_runtime(&self, group: &Path) -> u64 {
        self.file(Controller::Cpu, group, RT_RUNTIME).ok().and_then(|p| read_num(&p).ok()).unwrap_or(0)
    }

    fn add_thread(&self, group: &Path, tid: i32) -> Result<(), CgroupError> {
        for (c, b) in &self.bases {
            if c.threaded() {
                write(&b.join(group).join("tasks"), &tid.to_string())?;
            }
        }
        Ok(())
    }

    fn set_cpu_shares(&self, group: &Path, shares: u64) -> Result<(), CgroupError> {
        write(&self.file(Controller::Cpu, group, "cpu.shares")?, &shares.to_string())
    }

    fn cpu_shares(&self, group: &Path) -> Result<u64, CgroupError> {
        read_num(&self.file(Controller::Cpu, group, "cpu.shares")?)
    }

    fn set_bandwidth(&self, group: &Path, b: Bandwidth) -> Result<(), CgroupError> {
        if b.period != 0 {
            write(&self.file(Controller::Cpu, group, "cpu.cfs_period_us")?, &b.period.to_string())?;
        }
        if b.quota != 0 {
            write(&self.file(Controller::Cpu, group, "cpu.cfs_quota_us")?, &b.quota.to_string())?;
        }
        Ok(())
    }

    fn bandwidth(&self, group: &Path) -> Result<Bandwidth, CgroupError> {
        Ok(Bandwidth {
            period: read_num(&self.file(Controller::Cpu, group, "cpu.cfs_period_us")?)?,
            quota: read_num(&self.file(Controller::Cpu, group, "cpu.cfs_quota_us")?)?,
        })
    }

    fn set_memory(&self, group: &Path, t: &MemTune) -> Result<(), CgroupError> {
        let hard = self.file(Controller::Memory, group, "memory.limit_in_bytes")?;
        let swap = self.file(Controller::Memory, group, "memory.memsw.limit_in_bytes")?;
        if let Some(s) = t.soft_limit {
            write(&self.file(Controller::Memory, group, "memory.soft_limit_in_bytes")?, &bytes_of(s))?;
        }
        // memsw may never be below the hard limit: where writing it first
        // fails, the hard limit goes first.
        let mut hard_done = false;
        if let Some(s) = t.swap_hard_limit
            && write(&swap, &bytes_of(s)).is_err()
        {
            if let Some(h) = t.hard_limit {
                write(&hard, &bytes_of(h))?;
                hard_done = true;
            }
            write(&swap, &bytes_of(s))?;
        }
        if !hard_done && let Some(h) = t.hard_limit {
            write(&hard, &bytes_of(h))?;
        }
        Ok(())
    }

    fn memory(&self, group: &Path) -> Result<MemTune, CgroupError> {
        let get = |name: &str| -> Result<Option<u64>, CgroupError> {
            let path = self.file(Controller::Memory, group, name)?;
            if !path.exists() {
                return Ok(None);
            }
            Ok(Some(kib_of(read_num(&path)?)))
        };
        Ok(MemTune {
            hard_limit: get("memory.limit_in_bytes")?,
            soft_limit: get("memory.soft_limit_in_bytes")?,
            swap_hard_limit: get("memory.memsw.limit_in_bytes")?,
        })
    }

    fn set_blkio_weight(&self, group: &Path, weight: u64) -> Result<(), CgroupError> {
        let dir = self.base(Controller::Blkio)?.join(group);
        let file = ["blkio.weight", "blkio.bfq.weight"].iter().map(|f| dir.join(f)).find(|p| p.exists());
        write(&file.ok_or(CgroupError::Unavailable("blkio weight (no CFQ or BFQ scheduler)"))?, &weight.to_string())
    }

    fn blkio_weight(&self, group: &Path) -> Result<u64, CgroupError> {
        let dir = self.base(Controller::Blkio)?.join(group);
        let file = ["blkio.weight", "blkio.bfq.weight"].iter().map(|f| dir.join(f)).find(|p| p.exists());
        read_num(&file.ok_or(CgroupError::Unavailable("blkio weight (no CFQ or BFQ scheduler)"))?)
    }

    fn set_blkio_throttle(&self, group: &Path, dev: (u32, u32), limits: [u64; 4]) -> Result<(), CgroupError> {
        let names = [
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_bps_device",
            "blkio.throttle.read_iops_device",
            "blkio.throttle.write_iops_device",
        ];
        for (name, v) in names.iter().zip(limits) {
            write(&self.file(Controller::Blkio, group, name)?, &format!("{}:{} {v}", dev.0, dev.1))?;
        }
        Ok(())
    }

    fn set_pids_max(&self, group: &Path, max: u64) -> Result<(), CgroupError> {
        let v = if max == 0 { "max".to_owned() } else { max.to_string() };
        write(&self.file(Controller::Pids, group, "pids.max")?, &v)
    }

    fn set_cpus(&self, group: &Path, cpus: &CpuSet) -> Result<(), CgroupError> {
        write(&self.file(Controller::Cpuset, group, "cpuset.cpus")?, &cpus.format())
    }

    fn oom_kills(&self, group: &Path) -> u64 {
        // v1 counts a kill in the victim's own group only, not its parents'.
        let count = |g: &Path| {
            self.file(Controller::Memory, g, "memory.oom_control")
                .and_then(|p| read(&p))
                .map_or(0, |t| super::oom_kill_count(&t))
        };
        count(group) + count(&group.join("libvirt/emulator"))
    }
}
