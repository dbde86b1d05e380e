//! A cgroup per guest, laid out as libvirt lays it out:
//! `PARTITION/machine-qemu\x2dID\x2dNAME.scope/libvirt/{emulator,vcpuN}`.
//!
//! The broker (root) creates the guest's groups, moves the helper into
//! `libvirt/emulator` before it sends `Start` (so no guest instruction runs
//! outside them), moves each vCPU thread into `libvirt/vcpuN` once the helper
//! has started them, writes the limits of `<cputune>`, `<memtune>` and
//! `<blkiotune>`, and removes the groups when the guest stops. The helper
//! does nothing: its sandbox is unchanged. A restarted broker finds a
//! running guest's groups again by name.
//!
//! Hosts have one of two hierarchies: cgroup v1 (one tree per controller,
//! [`v1`]) or v2 (one unified tree, [`v2`]); [`Backend`] is what both offer
//! and [`Cgroups::detect`] picks one at start. The partition (config key
//! `cgroup_partition`) is absolute within the hierarchy (`/machine.slice`,
//! the default) or, without a leading `/`, relative to the daemon's own
//! cgroup, as where systemd delegates a subtree (`Delegate=yes`) or a test
//! keeps its own.

mod guest;
pub mod v1;
pub mod v2;

use std::path::{Path, PathBuf};

pub use guest::{GuestCgroup, scope_name};

use crate::domain::tuning::{CpuSet, MemTune};

/// The controllers a guest's limits use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    /// CPU weight and bandwidth (`<cputune>`).
    Cpu,
    /// CPU accounting (v1 only; part of `cpu` on v2).
    Cpuacct,
    /// Host CPUs and memory nodes (pinning).
    Cpuset,
    /// Memory limits (`<memtune>`).
    Memory,
    /// Block I/O weight and throttles (`<blkiotune>`): `blkio` on v1, `io` on v2.
    Blkio,
    /// The number of tasks.
    Pids,
}

impl Controller {
    /// All of them, in the order they are set up.
    pub const ALL: [Controller; 6] = [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Cpuset,
        Controller::Memory,
        Controller::Blkio,
        Controller::Pids,
    ];

    /// The v1 hierarchy's name (its directory under the mount).
    pub fn v1_name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Cpuset => "cpuset",
            Controller::Memory => "memory",
            Controller::Blkio => "blkio",
            Controller::Pids => "pids",
        }
    }

    /// The v2 name in `cgroup.controllers` (`None`: folded into another).
    pub fn v2_name(self) -> Option<&'static str> {
        match self {
            Controller::Cpu => Some("cpu"),
            Controller::Cpuacct => None,
            Controller::Cpuset => Some("cpuset"),
            Controller::Memory => Some("memory"),
            Controller::Blkio => Some("io"),
            Controller::Pids => Some("pids"),
        }
    }

    /// Controllers that act on single threads, and so get the `vcpuN` and
    /// `emulator` sub-groups' own settings.
    pub fn threaded(self) -> bool {
        matches!(self, Controller::Cpu | Controller::Cpuacct | Controller::Cpuset)
    }
}

/// What a guest's group holds, which decides where it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The guest's scope, and `libvirt` below it: resource domains.
    Domain,
    /// `libvirt/emulator`: the helper's process (and its non-vCPU threads).
    Emulator,
    /// `libvirt/vcpuN`: one vCPU thread.
    Vcpu,
}

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be written.
    #[error("cannot write '{value}' to '{}': {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup file could not be read or parsed.
    #[error("cannot read '{}': {detail}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A cgroup could not be created or removed.
    #[error("cannot {what} cgroup '{}': {source}", path.display())]
    Dir {
        /// `create` or `remove`.
        what: &'static str,
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The controller a setting needs is not available to the daemon.
    #[error("cgroup {0} controller is not available")]
    Unavailable(&'static str),
    /// A level of the guest's cgroup chain could not get the real-time CPU
    /// time its fifo/rr vCPUs need (`cpu.rt_runtime_us`).
    #[error(
        "no real-time CPU budget for the guest's fifo/rr vCPUs: cannot raise '{}' to {runtime_us} us per period \
         (its parent has too little left, or real-time group scheduling is off): {source}",
        path.display()
    )]
    RtBudget {
        /// The group's `cpu.rt_runtime_us`.
        path: PathBuf,
        /// The runtime asked for.
        runtime_us: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One group's CPU bandwidth: period and quota, µs (quota -1: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth {
    /// CFS period.
    pub period: u64,
    /// CFS quota (-1: unlimited).
    pub quota: i64,
}

/// What a cgroup hierarchy offers, whichever version. `group` is a path
/// relative to the partition (`machine-qemu\x2d1\x2dvm.scope/libvirt/vcpu0`).
pub trait Backend: std::fmt::Debug + Send + Sync {
    /// 1 or 2.
    fn version(&self) -> u8;
    /// Whether the daemon can use `c` (mounted, enabled, writable).
    fn has(&self, c: Controller) -> bool;
    /// The directory of `group` in the hierarchy of `c`.
    fn dir(&self, c: Controller, group: &Path) -> PathBuf;
    /// Creates `group` (whose parents exist) in every usable hierarchy.
    fn create(&self, group: &Path, kind: Kind) -> Result<(), CgroupError>;
    /// Removes `group` (already empty of tasks and sub-groups) everywhere.
    fn remove(&self, group: &Path) -> Result<(), CgroupError>;
    /// Whether `group` exists.
    fn exists(&self, group: &Path) -> bool;
    /// Moves every thread of process `pid` into `group`.
    fn add_process(&self, group: &Path, pid: i32) -> Result<(), CgroupError>;
    /// Moves thread `tid` into `group` for the threaded controllers.
    fn add_thread(&self, group: &Path, tid: i32) -> Result<(), CgroupError>;
    /// Sets the CPU weight, in libvirt's `cpu_shares` figure.
    fn set_cpu_shares(&self, group: &Path, shares: u64) -> Result<(), CgroupError>;
    /// The CPU weight.
    fn cpu_shares(&self, group: &Path) -> Result<u64, CgroupError>;
    /// Sets CPU bandwidth.
    fn set_bandwidth(&self, group: &Path, b: Bandwidth) -> Result<(), CgroupError>;
    /// CPU bandwidth.
    fn bandwidth(&self, group: &Path) -> Result<Bandwidth, CgroupError>;
    /// Sets the memory limits that `t` names (KiB).
    fn set_memory(&self, group: &Path, t: &MemTune) -> Result<(), CgroupError>;
    /// The memory limits (KiB; unlimited as libvirt's unlimited figure).
    fn memory(&self, group: &Path) -> Result<MemTune, CgroupError>;
    /// Sets the block I/O weight.
    fn set_blkio_weight(&self, group: &Path, weight: u64) -> Result<(), CgroupError>;
    /// The block I/O weight.
    fn blkio_weight(&self, group: &Path) -> Result<u64, CgroupError>;
    /// Sets one device's throttles: `(major, minor)` and read/write bytes
    /// and operations per second (0: none).
    fn set_blkio_throttle(&self, group: &Path, dev: (u32, u32), limits: [u64; 4]) -> Result<(), CgroupError>;
    /// Sets the most tasks the group may hold.
    fn set_pids_max(&self, group: &Path, max: u64) -> Result<(), CgroupError>;
    /// Sets the host CPUs of a group (cpuset).
    fn set_cpus(&self, group: &Path, cpus: &CpuSet) -> Result<(), CgroupError>;
    /// How many tasks of the group the kernel killed for want of memory.
    fn oom_kills(&self, group: &Path) -> u64;
    /// Gives the guest whose scope is `scope` `each_us` of real-time CPU
    /// time per period for each of the vCPU groups `vcpus` (v1's
    /// `cpu.rt_runtime_us`, without which the kernel refuses SCHED_FIFO/RR
    /// to a task in the group): the partition's levels are raised by the
    /// sum, the scope and `libvirt` get the sum, each vCPU group `each_us`.
    /// Returns the sum given, 0 where the kernel has no real-time group
    /// scheduling (nothing to give; v2, whose cpu controller has no such
    /// budget). On failure nothing stays raised.
    fn reserve_rt(&self, _scope: &Path, _vcpus: &[PathBuf], _each_us: u64) -> Result<u64, CgroupError> {
        Ok(0)
    }
    /// Takes a stopped guest's real-time budget back: its `groups`
    /// (deepest first) go to 0, then the partition's levels give up
    /// `total_us`. Done before the groups are removed, as the kernel frees
    /// a removed group's budget only later. Whether all of it went back.
    fn release_rt(&self, _groups: &[PathBuf], _total_us: u64) -> bool {
        true
    }
    /// The real-time runtime a group holds, 0 without one.
    fn rt_runtime(&self, _group: &Path) -> u64 {
        0
    }
}

/// The `oom_kill N` figure of a `memory.oom_control` or `memory.events` file.
pub(crate) fn oom_kill_count(text: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()).unwrap_or(0)
}

/// Writes `value` to `path`.
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Reads a small cgroup file, trimmed.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_string(&mut s))
        .map_err(|e| CgroupError::Read { path: path.to_owned(), detail: e.to_string() })?;
    Ok(s.trim().to_owned())
}

/// Reads a number from a cgroup file.
pub(crate) fn read_num<T: std::str::FromStr>(path: &Path) -> Result<T, CgroupError> {
    let s = read(path)?;
    s.parse().map_err(|_| CgroupError::Read { path: path.to_owned(), detail: format!("not a number: '{s}'") })
}

/// Creates `dir` if missing.
pub(crate) fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Dir { what: "create", path: dir.to_owned(), source }),
    }
}

/// Removes `dir` if present.
pub(crate) fn rmdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Dir { what: "remove", path: dir.to_owned(), source }),
    }
}

/// Whether the daemon could create `dir` (or write in it, if it exists):
/// the nearest existing ancestor must be a writable directory.
pub(crate) fn writable(dir: &Path) -> Result<(), CgroupError> {
    let mut at = dir;
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    nix::unistd::access(at, nix::unistd::AccessFlags::W_OK).map_err(|e| CgroupError::Dir {
        what: "create",
        path: dir.to_owned(),
        source: std::io::Error::from(e),
    })
}

/// The partition's components, checked: no `..`, no empty or odd names, at
/// most 16 deep (it comes from the configuration file).
pub fn partition_parts(partition: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = partition.split('/').filter(|p| !p.is_empty()).map(str::to_owned).collect();
    let ok = |p: &String| p != "." && p != ".." && p.len() <= 255 && !p.contains('\0');
    (!parts.is_empty() && parts.len() <= 16 && parts.iter().all(ok)).then_some(parts)
}

/// The daemon's own cgroup in a hierarchy, from `/proc/self/cgroup` text:
/// the line of v1 controller `name`, or the v2 line (`0::`) for `None`.
pub fn own_cgroup(proc_self_cgroup: &str, name: Option<&str>) -> Option<String> {
    proc_self_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = match name {
            None => ctrls.is_empty(),
            Some(n) => ctrls.split(',').any(|c| c == n),
        };
        hit.then(|| path.to_owned())
    })
}

/// The host's cgroups as the daemon uses them.
#[derive(Debug)]
pub struct Cgroups {
    /// The hierarchy.
    pub backend: Box<dyn Backend>,
    /// Scopes of stopped guests whose removal waits for their last tasks to
    /// leave. A guest started again under the same id and name (a reboot)
    /// takes its scope back from here, under this lock, so a late removal
    /// never takes the new guest's groups.
    pub(crate) pending: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

/// Where to look for cgroups and where guests go.
#[derive(Debug, Clone)]
pub struct Place<'a> {
    /// The cgroup mount (`/sys/fs/cgroup`).
    pub mount: &'a Path,
    /// `cgroup_partition`.
    pub partition: &'a str,
    /// The text of `/proc/self/cgroup`.
    pub self_cgroup: &'a str,
}

impl Cgroups {
    /// Finds the hierarchy at `place.mount` (v2 if its root is a unified
    /// tree, v1 otherwise), and the controllers whose partition the daemon
    /// could make; nothing is created until a guest starts. Returns `None`, with the reason, when no
    /// controller is usable; the reasons for each missing controller go
    /// into `notes`.
    pub fn detect(place: &Place<'_>, notes: &mut Vec<String>) -> Result<Cgroups, String> {
        let parts = partition_parts(place.partition)
            .ok_or_else(|| format!("cgroup_partition '{}' is not a valid cgroup path", place.partition))?;
        let absolute = place.partition.starts_with('/');
        let backend: Box<dyn Backend> = if place.mount.join("cgroup.controllers").exists() {
            Box::new(v2::V2::open(place, &parts, absolute, notes)?)
        } else {
            Box::new(v1::V1::open(place, &parts, absolute, notes)?)
        };
        if !Controller::ALL.iter().any(|c| backend.has(*c)) {
            return Err("no cgroup controller is writable".into());
        }
        Ok(Cgroups { backend, pending: Default::default() })
    }

    /// The controllers available, by name, for the start-up log line.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = Controller::ALL.iter().filter(|c| self.backend.has(**c)).map(|c| c.v1_name()).collect();
        format!("cgroup v{} with controllers {}", self.backend.version(), names.join(", "))
    }
}

/// Refuses, naming the element and the controller, tuning that `cgroups`
/// cannot apply (`None`: the daemon has no cgroups at all), rather than
/// run the guest without it.
pub fn check(cgroups: Option<&Cgroups>, t: &crate::domain::tuning::Tuning) -> Result<(), String> {
    let c = &t.cpu;
    let needs = [
        ("cputune", Controller::Cpu, c.shares.is_some()),
        ("cputune", Controller::Cpu, c.period.is_some() || c.quota.is_some()),
        ("cputune", Controller::Cpu, c.global_period.is_some() || c.global_quota.is_some()),
        ("cputune", Controller::Cpu, c.emulator_period.is_some() || c.emulator_quota.is_some()),
        ("memtune", Controller::Memory, t.memory != MemTune::default()),
        ("blkiotune", Controller::Blkio, t.blkio != Default::default()),
    ];
    for (element, controller, asked) in needs {
        if !asked {
            continue;
        }
        match cgroups {
            None => return Err(format!("<{element}> cannot be applied: this daemon has no cgroups for guests")),
            Some(g) if !g.backend.has(controller) => {
                return Err(format!(
                    "<{element}> cannot be applied: the cgroup {} controller is not available",
                    controller.v1_name()
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The base directory of a hierarchy for the partition: `root` joined with
/// the daemon's own cgroup (for a relative partition) and the partition.
pub(crate) fn base(root: &Path, own: Option<&str>, parts: &[String], absolute: bool) -> PathBuf {
    let mut dir = root.to_owned();
    if !absolute && let Some(own) = own {
        for c in own.split('/').filter(|c| !c.is_empty()) {
            dir.push(c);
        }
    }
    for p in parts {
        dir.push(p);
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroups_are_read_per_controller_and_partitions_checked() {
        let text = "4:memory:/a/b\n2:cpu,cpuacct:/\n0::/user.slice\n";
        assert_eq!(own_cgroup(text, Some("memory")).as_deref(), Some("/a/b"));
        assert_eq!(own_cgroup(text, Some("cpuacct")).as_deref(), Some("/"));
        assert_eq!(own_cgroup(text, None).as_deref(), Some("/user.slice"));
        assert_eq!(own_cgroup(text, Some("pids")), None);
        assert_eq!(partition_parts("/machine.slice"), Some(vec!["machine.slice".to_owned()]));
        assert_eq!(partition_parts("t/m"), Some(vec!["t".to_owned(), "m".to_owned()]));
        assert_eq!(partition_parts("/a/../b"), None);
        assert_eq!(partition_parts("/"), None);
        let b = base(Path::new("/cg/memory"), Some("/a/b"), &["t".into()], false);
        assert_eq!(b, Path::new("/cg/memory/a/b/t"));
        assert_eq!(base(Path::new("/cg"), Some("/a"), &["m".into()], true), Path::new("/cg/m"));
    }
}
