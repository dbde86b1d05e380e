//! One guest's groups: its scope, `libvirt/emulator` and `libvirt/vcpuN`,
//! created before its helper runs guest code and removed once it is gone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Bandwidth, CgroupError, Cgroups, Controller, Kind};
use crate::domain::tuning::{CpuSet, Tuning};

/// Tasks a guest's scope may hold beyond one per vCPU: the helper's own
/// threads (its VMM thread and the device threads to come), with room.
pub const EXTRA_TASKS: u64 = 64;
/// How long removal of a stopped guest's groups is retried while its
/// helper's last threads exit.
const REMOVE_GRACE: Duration = Duration::from_secs(10);

/// libvirt's scope name for guest `id` called `name`: systemd's escaping
/// of `qemu-ID-NAME` (the name cut to 40 characters, as a path component
/// must stay under 255 bytes), e.g. `machine-qemu\x2d1\x2dvm.scope`.
pub fn scope_name(id: i32, name: &str) -> String {
    let short: String = name.chars().take(40).collect();
    let machine = format!("qemu-{id}-{short}");
    let mut out = String::from("machine-");
    for b in machine.bytes() {
        if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || (b == b'.' && out.len() > 8) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out + ".scope"
}

/// Real-time CPU time each fifo/rr vCPU's group gets, µs per period (of
/// the default 1 s): 5 %, so that a real-time vCPU that never yields is
/// throttled rather than starving the host.
pub const RT_RUNTIME_PER_VCPU_US: u64 = 50_000;

/// A running guest's groups.
#[derive(Debug)]
pub struct GuestCgroup {
    cgroups: Arc<Cgroups>,
    scope: PathBuf,
    vcpus: u32,
    /// Real-time runtime the partition's levels hold for this guest, µs
    /// (0 once given back).
    rt_us: std::sync::atomic::AtomicU64,
}

impl GuestCgroup {
    /// Creates the groups of guest `id` (`name`, `vcpus` vCPUs).
    pub fn create(cgroups: &Arc<Cgroups>, id: i32, name: &str, vcpus: u32) -> Result<GuestCgroup, CgroupError> {
        let g = GuestCgroup {
            cgroups: cgroups.clone(),
            scope: PathBuf::from(scope_name(id, name)),
            vcpus,
            rt_us: Default::default(),
        };
        let b = &g.cgroups.backend;
        // A previous run of this guest whose removal still waits gives its
        // groups over (see `Cgroups::pending`).
        let mut pending = g.cgroups.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.remove(&g.scope);
        let made = (|| {
            b.create(&g.scope, Kind::Domain)?;
            b.create(&g.scope.join("libvirt"), Kind::Domain)?;
            b.create(&g.emulator(), Kind::Emulator)?;
            for n in 0..vcpus {
                b.create(&g.vcpu(n), Kind::Vcpu)?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            g.remove_now();
            return Err(e);
        }
        drop(pending);
        Ok(g)
    }

    /// The groups of a guest a previous broker started, if they exist.
    pub fn find(cgroups: &Arc<Cgroups>, id: i32, name: &str, vcpus: u32) -> Option<GuestCgroup> {
        let mut g = GuestCgroup {
            cgroups: cgroups.clone(),
            scope: PathBuf::from(scope_name(id, name)),
            vcpus,
            rt_us: Default::default(),
        };
        g.rt_us = g.cgroups.backend.rt_runtime(&g.scope).into();
        g.cgroups.backend.exists(&g.scope).then_some(g)
    }

    /// The scope, relative to the partition.
    pub fn scope(&self) -> &Path {
        &self.scope
    }

    /// `libvirt/emulator`.
    pub fn emulator(&self) -> PathBuf {
        self.scope.join("libvirt/emulator")
    }

    /// `libvirt/vcpuN`.
    pub fn vcpu(&self, n: u32) -> PathBuf {
        self.scope.join(format!("libvirt/vcpu{n}"))
    }

    /// How many vCPU groups it has.
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }

    /// The hierarchies.
    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    /// Moves the helper (all its threads) into `libvirt/emulator`.
    pub fn add_helper(&self, pid: i32) -> Result<(), CgroupError> {
        self.cgroups.backend.add_process(&self.emulator(), pid)
    }

    /// Moves vCPU thread `tid` into `libvirt/vcpuN`, with the vCPU's host
    /// CPUs first where it is pinned (a thread entering a cpuset group takes
    /// the group's CPUs).
    pub fn add_vcpu(&self, n: u32, tid: i32, pin: Option<&CpuSet>) -> Result<(), CgroupError> {
        let b = &self.cgroups.backend;
        if let Some(set) = pin.filter(|_| b.has(Controller::Cpuset)) {
            b.set_cpus(&self.vcpu(n), set)?;
        }
        b.add_thread(&self.vcpu(n), tid)
    }

    /// Writes the limits of `t` and the task bound. Every figure the
    /// definition gives is written; one its controller lacks fails.
    pub fn apply(&self, t: &Tuning) -> Result<(), CgroupError> {
        let b = &self.cgroups.backend;
        let c = &t.cpu;
        if let Some(s) = c.shares {
            b.set_cpu_shares(&self.scope, s)?;
        }
        let bw = |p: Option<u64>, q: Option<i64>| Bandwidth { period: p.unwrap_or(0), quota: q.unwrap_or(0) };
        if c.global_period.is_some() || c.global_quota.is_some() {
            b.set_bandwidth(&self.scope, bw(c.global_period, c.global_quota))?;
        }
        if c.emulator_period.is_some() || c.emulator_quota.is_some() {
            b.set_bandwidth(&self.emulator(), bw(c.emulator_period, c.emulator_quota))?;
        }
        if c.period.is_some() || c.quota.is_some() {
            for n in 0..self.vcpus {
                b.set_bandwidth(&self.vcpu(n), bw(c.period, c.quota))?;
            }
        }
        if let Some(set) = c.emulatorpin.as_ref().filter(|_| b.has(Controller::Cpuset)) {
            b.set_cpus(&self.emulator(), set)?;
        }
        if t.memory != Default::default() {
            b.set_memory(&self.scope, &t.memory)?;
        }
        if let Some(w) = t.blkio.weight {
            b.set_blkio_weight(&self.scope, w)?;
        }
        for d in &t.blkio.devices {
            if let Some(w) = d.weight {
                b.set_blkio_weight(&self.scope, w)?;
            }
            let limits = [d.read_bytes_sec, d.write_bytes_sec, d.read_iops_sec, d.write_iops_sec];
            if limits.iter().any(Option::is_some) {
                let dev = device_number(&d.path)?;
                b.set_blkio_throttle(&self.scope, dev, limits.map(|l| l.unwrap_or(0)))?;
            }
        }
        if b.has(Controller::Pids) {
            b.set_pids_max(&self.scope, u64::from(self.vcpus) + EXTRA_TASKS)?;
        }
        Ok(())
    }

    /// Gives the vCPU groups of `<vcpusched>` fifo/rr vCPUs their
    /// real-time budget (see [`super::Backend::reserve_rt`]), before their
    /// threads get the scheduler.
    pub fn reserve_rt(&mut self, t: &crate::domain::tuning::CpuTune) -> Result<(), CgroupError> {
        let rt: Vec<PathBuf> = (0..self.vcpus)
            .filter(|n| {
                t.vcpusched.iter().any(|s| s.vcpus.0.contains(n) && matches!(s.scheduler.as_str(), "fifo" | "rr"))
            })
            .map(|n| self.vcpu(n))
            .collect();
        let _held = self.cgroups.pending.lock().unwrap_or_else(|p| p.into_inner());
        let given = self.cgroups.backend.reserve_rt(&self.scope, &rt, RT_RUNTIME_PER_VCPU_US)?;
        self.rt_us = given.into();
        Ok(())
    }

    /// Why the helper is gone, if the kernel killed it for exceeding the
    /// guest's memory limit.
    pub fn out_of_memory(&self, limit: Option<u64>) -> Option<String> {
        let kills = self.cgroups.backend.oom_kills(&self.scope);
        (kills > 0).then(|| match limit {
            Some(kib) => format!("killed by the kernel: out of memory in its cgroup (memtune hard_limit {kib} KiB)"),
            None => "killed by the kernel: out of memory in its cgroup".to_owned(),
        })
    }

    /// Removes the groups, deepest first; false if one is still busy.
    fn remove_now(&self) -> bool {
        let b = &self.cgroups.backend;
        let mut groups: Vec<PathBuf> = (0..self.vcpus).map(|n| self.vcpu(n)).collect();
        groups.extend([self.emulator(), self.scope.join("libvirt"), self.scope.clone()]);
        let rt = self.rt_us.load(std::sync::atomic::Ordering::SeqCst);
        if rt > 0 {
            if !b.release_rt(&groups, rt) {
                return false;
            }
            self.rt_us.store(0, std::sync::atomic::Ordering::SeqCst);
        }
        groups.iter().all(|g| b.remove(g).is_ok())
    }

    /// Removes the groups of a guest that stopped. Its helper's threads may
    /// still be exiting (a group holding a task cannot go), so removal is
    /// retried on a thread of its own for a while rather than blocking
    /// the broker.
    pub fn remove(self) {
        {
            let mut pending = self.cgroups.pending.lock().unwrap_or_else(|p| p.into_inner());
            if self.remove_now() {
                return;
            }
            pending.insert(self.scope.clone());
        }
        let spawned = std::thread::Builder::new().name("cgroup-remove".into()).spawn(move || {
            let end = Instant::now() + REMOVE_GRACE;
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
                let mut pending = self.cgroups.pending.lock().unwrap_or_else(|p| p.into_inner());
                // Taken back by a new run of the guest: its groups now.
                if !pending.contains(&self.scope) {
                    return;
                }
                if self.remove_now() {
                    pending.remove(&self.scope);
                    return;
                }
            }
            log::warn!("cgroup '{}' of a stopped guest could not be removed", self.scope.display());
        });
        if let Err(e) = spawned {
            log::warn!("cannot remove a stopped guest's cgroup later: {e}");
        }
    }
}

/// The device number of a block device node.
fn device_number(path: &str) -> Result<(u32, u32), CgroupError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta =
        std::fs::metadata(path).map_err(|e| CgroupError::Read { path: PathBuf::from(path), detail: e.to_string() })?;
    if !meta.file_type().is_block_device() {
        return Err(CgroupError::Read { path: PathBuf::from(path), detail: "not a block device".into() });
    }
    let rdev = meta.rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_escape_as_systemd_does() {
        assert_eq!(scope_name(1, "vm"), "machine-qemu\\x2d1\\x2dvm.scope");
        assert_eq!(scope_name(12, "a b.c"), "machine-qemu\\x2d12\\x2da\\x20b.c.scope");
        assert!(scope_name(3, &"x".repeat(300)).len() < 255);
    }
}
