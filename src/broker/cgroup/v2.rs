//! cgroup v2: one unified tree. A guest's scope and its `libvirt` group are
//! resource domains (memory, io, pids limits on the scope); `libvirt/emulator`
//! and `libvirt/vcpuN` are threaded groups, so single threads of the one
//! helper process can be placed and weighted apart, as libvirt does. Each
//! level enables the controllers its children use in `cgroup.subtree_control`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{
    Backend, Bandwidth, CgroupError, Controller, Kind, Place, base, mkdir, own_cgroup, read, read_num, rmdir, write,
};
use crate::domain::tuning::{CpuSet, MemTune, UNLIMITED_KIB};

/// The unified hierarchy: the partition's directory and the controllers
/// enabled there.
#[derive(Debug)]
pub struct V2 {
    base: PathBuf,
    controllers: HashSet<Controller>,
    /// The daemon's group the partition goes below, and its components
    /// (made with the first guest's groups).
    top: PathBuf,
    parts: Vec<String>,
}

/// Controllers that work in threaded groups.
const THREADED: [Controller; 2] = [Controller::Cpu, Controller::Cpuset];

impl V2 {
    /// Finds the controllers the daemon's own group may hand down, and
    /// whether the partition can be made below it (it is made, enabling
    /// them at each level, with the first guest's groups).
    pub fn open(place: &Place<'_>, parts: &[String], absolute: bool, notes: &mut Vec<String>) -> Result<V2, String> {
        let own = own_cgroup(place.self_cgroup, None);
        let top = base(place.mount, own.as_deref(), &[], absolute);
        let offered = read(&top.join("cgroup.controllers")).unwrap_or_default();
        let offered: Vec<&str> = offered.split_whitespace().collect();
        let mut controllers: HashSet<Controller> =
            Controller::ALL.into_iter().filter(|c| c.v2_name().is_some_and(|n| offered.contains(&n))).collect();
        if controllers.contains(&Controller::Cpu) {
            controllers.insert(Controller::Cpuacct);
        }
        for c in Controller::ALL {
            if !controllers.contains(&c) {
                notes.push(format!("cgroup v2 controller '{}' is not offered at '{}'", c.v1_name(), top.display()));
            }
        }
        let base = base(&top, None, parts, true);
        let mut v2 = V2 { base, controllers, top, parts: parts.to_vec() };
        // Nothing is made until a guest starts: here only whether it could be.
        if let Err(e) = super::writable(&v2.base) {
            notes.push(format!("cgroup v2 partition is not writable: {e}"));
            v2.controllers.clear();
        }
        Ok(v2)
    }

    /// Makes the partition, enabling the controllers at each level.
    fn make_partition(&self) -> Result<(), CgroupError> {
        let mut dir = self.top.clone();
        for p in &self.parts {
            self.enable(&dir, &Controller::ALL)?;
            dir.push(p);
            mkdir(&dir)?;
        }
        Ok(())
    }

    /// Enables `which` (those available) for the children of `dir`.
    fn enable(&self, dir: &Path, which: &[Controller]) -> Result<(), CgroupError> {
        let words: Vec<String> = which
            .iter()
            .filter(|c| self.controllers.contains(c))
            .filter_map(|c| c.v2_name())
            .map(|n| format!("+{n}"))
            .collect();
        if words.is_empty() {
            return Ok(());
        }
        write(&dir.join("cgroup.subtree_control"), &words.join(" "))
    }

    fn file(&self, c: Controller, group: &Path, name: &str) -> Result<PathBuf, CgroupError> {
        if !self.controllers.contains(&c) {
            return Err(CgroupError::Unavailable(c.v2_name().unwrap_or("cpu")));
        }
        Ok(self.base.join(group).join(name))
    }
}

/// A v2 memory figure ("max" or bytes) in KiB.
fn kib_of(path: &Path) -> Result<u64, CgroupError> {
    match read(path)?.as_str() {
        "max" => Ok(UNLIMITED_KIB),
        _ => Ok(read_num::<u64>(path)? / 1024),
    }
}

fn bytes_of(kib: u64) -> String {
    if kib >= UNLIMITED_KIB { "max".into() } else { kib.saturating_mul(1024).to_string() }
}

impl Backend for V2 {
    fn version(&self) -> u8 {
        2
    }

    fn has(&self, c: Controller) -> bool {
        self.controllers.contains(&c)
    }

    fn dir(&self, _: Controller, group: &Path) -> PathBuf {
        self.base.join(group)
    }

    fn create(&self, group: &Path, kind: Kind) -> Result<(), CgroupError> {
        let dir = self.base.join(group);
        let parent = dir.parent().unwrap_or(&self.base).to_owned();
        if parent == self.base {
            self.make_partition()?;
        }
        match kind {
            Kind::Domain => self.enable(&parent, &Controller::ALL)?,
            Kind::Emulator | Kind::Vcpu => self.enable(&parent, &THREADED)?,
        }
        mkdir(&dir)?;
        if kind != Kind::Domain {
            write(&dir.join("cgroup.type"), "threaded")?;
        }
        Ok(())
    }

    fn remove(&self, group: &Path) -> Result<(), CgroupError> {
        rmdir(&self.base.join(group))
    }

    fn exists(&self, group: &Path) -> bool {
        self.base.join(group).is_dir()
    }

    fn add_process(&self, group: &Path, pid: i32) -> Result<(), CgroupError> {
        write(&self.base.join(group).join("cgroup.procs"), &pid.to_string())
    }

    fn add_thread(&self, group: &Path, tid: i32) -> Result<(), CgroupError> {
        write(&self.base.join(group).join("cgroup.threads"), &tid.to_string())
    }

    fn set_cpu_shares(&self, group: &Path, shares: u64) -> Result<(), CgroupError> {
        // libvirt writes the figure as the weight, which the kernel bounds (1-10000).
        write(&self.file(Controller::Cpu, group, "cpu.weight")?, &shares.clamp(1, 10_000).to_string())
    }

    fn cpu_shares(&self, group: &Path) -> Result<u64, CgroupError> {
        read_num(&self.file(Controller::Cpu, group, "cpu.weight")?)
    }

    fn set_bandwidth(&self, group: &Path, b: Bandwidth) -> Result<(), CgroupError> {
        let path = self.file(Controller::Cpu, group, "cpu.max")?;
        let now = self.bandwidth(group).unwrap_or(Bandwidth { period: 100_000, quota: -1 });
        let period = if b.period == 0 { now.period } else { b.period };
        let quota = if b.quota == 0 { now.quota } else { b.quota };
        let q = if quota < 0 { "max".to_owned() } else { quota.to_string() };
        write(&path, &format!("{q} {period}"))
    }

    fn bandwidth(&self, group: &Path) -> Result<Bandwidth, CgroupError> {
        let path = self.file(Controller::Cpu, group, "cpu.max")?;
        let text = read(&path)?;
        let bad = || CgroupError::Read { path: path.clone(), detail: format!("unexpected '{text}'") };
        let (q, p) = text.split_once(' ').ok_or_else(bad)?;
        let quota = if q == "max" { -1 } else { q.parse().map_err(|_| bad())? };
        Ok(Bandwidth { period: p.parse().map_err(|_| bad())?, quota })
    }

    fn set_memory(&self, group: &Path, t: &MemTune) -> Result<(), CgroupError> {
        if let Some(h) = t.hard_limit {
            write(&self.file(Controller::Memory, group, "memory.max")?, &bytes_of(h))?;
        }
        if let Some(s) = t.soft_limit {
            write(&self.file(Controller::Memory, group, "memory.high")?, &bytes_of(s))?;
        }
        if let Some(s) = t.swap_hard_limit {
            // v2 bounds swap alone; libvirt's figure is memory plus swap.
            let hard = match t.hard_limit {
                Some(h) => h,
                None => kib_of(&self.file(Controller::Memory, group, "memory.max")?)?,
            };
            let swap = if s >= UNLIMITED_KIB { UNLIMITED_KIB } else { s.saturating_sub(hard) };
            write(&self.file(Controller::Memory, group, "memory.swap.max")?, &bytes_of(swap))?;
        }
        Ok(())
    }

    fn memory(&self, group: &Path) -> Result<MemTune, CgroupError> {
        let hard = kib_of(&self.file(Controller::Memory, group, "memory.max")?)?;
        let swap_path = self.file(Controller::Memory, group, "memory.swap.max")?;
        let swap = if swap_path.exists() { Some(kib_of(&swap_path)?) } else { None };
        Ok(MemTune {
            hard_limit: Some(hard),
            soft_limit: Some(kib_of(&self.file(Controller::Memory, group, "memory.high")?)?),
            swap_hard_limit: swap
                .map(|s| if s >= UNLIMITED_KIB || hard >= UNLIMITED_KIB { UNLIMITED_KIB } else { s + hard }),
        })
    }

    fn set_blkio_weight(&self, group: &Path, weight: u64) -> Result<(), CgroupError> {
        let bfq = self.file(Controller::Blkio, group, "io.bfq.weight")?;
        if bfq.exists() {
            return write(&bfq, &weight.to_string());
        }
        write(&self.file(Controller::Blkio, group, "io.weight")?, &format!("default {weight}"))
    }

    fn blkio_weight(&self, group: &Path) -> Result<u64, CgroupError> {
        let bfq = self.file(Controller::Blkio, group, "io.bfq.weight")?;
        let path = if bfq.exists() { bfq } else { self.file(Controller::Blkio, group, "io.weight")? };
        let text = read(&path)?;
        let line = text.lines().find(|l| l.starts_with("default")).unwrap_or(&text);
        let v = line.split_whitespace().last().unwrap_or("");
        v.parse().map_err(|_| CgroupError::Read { path, detail: format!("unexpected '{text}'") })
    }

    fn set_blkio_throttle(&self, group: &Path, dev: (u32, u32), limits: [u64; 4]) -> Result<(), CgroupError> {
        let v = |n: u64| if n == 0 { "max".to_owned() } else { n.to_string() };
        let line = format!(
            "{}:{} rbps={} wbps={} riops={} wiops={}",
            dev.0,
            dev.1,
            v(limits[0]),
            v(limits[1]),
            v(limits[2]),
            v(limits[3])
        );
        write(&self.file(Controller::Blkio, group, "io.max")?, &line)
    }

    fn set_pids_max(&self, group: &Path, max: u64) -> Result<(), CgroupError> {
        let v = if max == 0 { "max".to_owned() } else { max.to_string() };
        write(&self.file(Controller::Pids, group, "pids.max")?, &v)
    }

    fn set_cpus(&self, group: &Path, cpus: &CpuSet) -> Result<(), CgroupError> {
        write(&self.file(Controller::Cpuset, group, "cpuset.cpus")?, &cpus.format())
    }

    fn oom_kills(&self, group: &Path) -> u64 {
        // Hierarchical on v2: the scope's figure counts its descendants'.
        self.file(Controller::Memory, group, "memory.events")
            .and_then(|p| read(&p))
            .map_or(0, |t| super::oom_kill_count(&t))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::cgroup::{Cgroups, GuestCgroup};
    use crate::domain::tuning::{CpuTune, Tuning};

    /// A unified tree as the kernel shows it to a daemon in `/daemon.service`.
    fn fake_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        std::fs::create_dir(dir.path().join("daemon.service")).unwrap();
        std::fs::write(dir.path().join("daemon.service/cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        dir
    }

    fn get(dir: &Path, rel: &str) -> String {
        std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")).trim().to_owned()
    }

    #[test]
    fn a_guest_on_a_unified_tree_gets_threaded_vcpu_groups_and_v2_limits() {
        let tree = fake_tree();
        let place = Place { mount: tree.path(), partition: "machine", self_cgroup: "0::/daemon.service\n" };
        let mut notes = Vec::new();
        let cgroups = Arc::new(Cgroups::detect(&place, &mut notes).unwrap());
        assert_eq!(cgroups.backend.version(), 2, "{notes:?}");
        assert!(Controller::ALL.iter().all(|c| cgroups.backend.has(*c)), "{notes:?}");
        let base = tree.path().join("daemon.service/machine");
        assert!(!base.exists(), "nothing is made before a guest starts");

        let cg = GuestCgroup::create(&cgroups, 3, "vm", 2).unwrap();
        assert!(get(&tree.path().join("daemon.service"), "cgroup.subtree_control").contains("+memory"));
        let scope = "machine-qemu\\x2d3\\x2dvm.scope";
        assert_eq!(get(&base, &format!("{scope}/libvirt/vcpu1/cgroup.type")), "threaded");
        assert_eq!(get(&base, &format!("{scope}/libvirt/emulator/cgroup.type")), "threaded");
        // Only the threaded controllers are handed to the threaded groups.
        assert_eq!(get(&base, &format!("{scope}/libvirt/cgroup.subtree_control")), "+cpu +cpuset");
        cg.add_helper(4242).unwrap();
        assert_eq!(get(&base, &format!("{scope}/libvirt/emulator/cgroup.procs")), "4242");
        cg.add_vcpu(1, 4243, Some(&CpuSet(vec![0, 1]))).unwrap();
        assert_eq!(get(&base, &format!("{scope}/libvirt/vcpu1/cgroup.threads")), "4243");
        assert_eq!(get(&base, &format!("{scope}/libvirt/vcpu1/cpuset.cpus")), "0-1");

        let t = Tuning {
            cpu: CpuTune {
                shares: Some(512),
                period: Some(100_000),
                quota: Some(50_000),
                emulator_quota: Some(-1),
                ..Default::default()
            },
            memory: MemTune { hard_limit: Some(262_144), soft_limit: Some(131_072), swap_hard_limit: Some(393_216) },
            blkio: crate::domain::tuning::BlkioTune { weight: Some(300), devices: Vec::new() },
        };
        cg.apply(&t).unwrap();
        assert_eq!(get(&base, &format!("{scope}/cpu.weight")), "512");
        assert_eq!(get(&base, &format!("{scope}/libvirt/vcpu0/cpu.max")), "50000 100000");
        assert_eq!(get(&base, &format!("{scope}/libvirt/emulator/cpu.max")), "max 100000");
        assert_eq!(get(&base, &format!("{scope}/memory.max")), (256u64 << 20).to_string());
        assert_eq!(get(&base, &format!("{scope}/memory.high")), (128u64 << 20).to_string());
        // v2 bounds swap alone: libvirt's figure less the hard limit.
        assert_eq!(get(&base, &format!("{scope}/memory.swap.max")), (128u64 << 20).to_string());
        assert_eq!(get(&base, &format!("{scope}/io.weight")), "default 300");
        assert_eq!(get(&base, &format!("{scope}/pids.max")), "66");
        // Read back as libvirt reports them.
        let b = &cgroups.backend;
        assert_eq!(b.memory(cg.scope()).unwrap(), t.memory);
        assert_eq!(b.bandwidth(&cg.vcpu(0)).unwrap(), Bandwidth { period: 100_000, quota: 50_000 });
        assert_eq!(b.cpu_shares(cg.scope()).unwrap(), 512);
        assert_eq!(b.blkio_weight(cg.scope()).unwrap(), 300);
        b.set_blkio_throttle(cg.scope(), (8, 0), [1000, 0, 0, 20]).unwrap();
        assert_eq!(get(&base, &format!("{scope}/io.max")), "8:0 rbps=1000 wbps=max riops=max wiops=20");

        // Found again by name, as after a daemon restart.
        assert!(GuestCgroup::find(&cgroups, 3, "vm", 2).is_some());
        assert!(GuestCgroup::find(&cgroups, 4, "vm", 2).is_none());
    }

    #[test]
    fn an_absolute_partition_ignores_the_daemons_own_group_and_no_controllers_means_none() {
        let tree = fake_tree();
        let place = Place { mount: tree.path(), partition: "/machine.slice", self_cgroup: "0::/daemon.service\n" };
        let cgroups = Cgroups::detect(&place, &mut Vec::new()).unwrap();
        assert_eq!(cgroups.backend.dir(Controller::Cpu, Path::new("x")), tree.path().join("machine.slice/x"));
        std::fs::write(tree.path().join("cgroup.controllers"), "").unwrap();
        assert!(Cgroups::detect(&place, &mut Vec::new()).is_err());
    }
}
