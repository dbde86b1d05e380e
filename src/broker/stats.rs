//! Domain statistics for monitoring, with libvirt's fields, types and
//! argument rules: vCPUs, memory, CPU time, control and job state, and the
//! bulk `virConnectGetAllDomainStats` records.
//!
//! The figures of a running guest here come from its helper process
//! through [`super::procfs`] (and the process CPU clock of
//! [`super::guests`]): no request to a helper, so one wedged guest delays
//! no statistics. The device counters of the bulk call are the helpers'
//! own, sampled with a deadline by [`super::sampling`].

use super::domains::Entry;
use super::hoststats::{online_cpus, pack, present_cpus};
use super::procfs::{self, VcpuThread};
use super::state::Ctx;
use crate::privsep::admin::{Param, ParamValue};
use crate::privsep::domstats;
use crate::privsep::{CallError, CallValue, DomainRef, VcpuInfo};
use crate::rpc::remote::DomainInfoRet;
use crate::rpc::stats as limits;

/// `virVcpuState`.
const VCPU_OFFLINE: i32 = 0;
const VCPU_RUNNING: i32 = 1;
/// `VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON`, `_RSS`, `_NR`.
const MEMORY_STAT_ACTUAL: i32 = 6;
const MEMORY_STAT_RSS: i32 = 7;
const MEMORY_STAT_NR: u32 = 13;
/// `virDomainModificationImpact` and `virDomainVcpuFlags`.
const AFFECT_LIVE: u32 = 1;
const AFFECT_CONFIG: u32 = 2;
const VCPU_MAXIMUM: u32 = 4;
const VCPU_GUEST: u32 = 8;
/// `VIR_TYPED_PARAM_STRING_OKAY`.
const STRING_OKAY: u32 = 4;
/// `VIR_DOMAIN_JOB_STATS_COMPLETED`, `_KEEP_COMPLETED`.
const JOB_STATS_COMPLETED: u32 = 1;
const JOB_STATS_KEEP_COMPLETED: u32 = 2;
/// `virDomainControlState`: OK, OCCUPIED.
const CONTROL_OK: u32 = 0;
const CONTROL_OCCUPIED: u32 = 2;
/// Parameters of the CPU total (`cpu_time`, `user_time`, `system_time`).
const CPU_TOTAL_PARAMS: u32 = 3;

/// The groups, shared with the frontends' answers from snapshots.
pub use crate::privsep::domstats::group;

fn check_flags(flags: u32, known: u32, function: &str) -> Result<(), CallError> {
    match flags & !known {
        0 => Ok(()),
        _ => Err(CallError::UnsupportedFlags { flags, function: function.into() }),
    }
}

/// The helper's pid of a running domain, or libvirt's "not running" error.
fn running(e: &Entry) -> Result<nix::unistd::Pid, CallError> {
    e.pid.filter(|_| e.id.is_some()).ok_or(CallError::NotRunning)
}

/// The vCPU threads of a running domain (none for one that is not).
fn threads(e: &Entry) -> Vec<Option<VcpuThread>> {
    match running(e) {
        Ok(pid) => procfs::vcpu_threads(pid, e.def.vcpus),
        Err(_) => Vec::new(),
    }
}

/// `virDomainGetVcpus`.
pub fn vcpus(e: &Entry, maxinfo: i32, maplen: i32) -> Result<CallValue, CallError> {
    if maxinfo > limits::VCPUINFO_MAX {
        return Err(CallError::Internal("maxinfo > REMOTE_VCPUINFO_MAX".into()));
    }
    if i64::from(maxinfo) * i64::from(maplen) > limits::CPUMAPS_MAX {
        return Err(CallError::Internal("maxinfo * maplen > REMOTE_CPUMAPS_MAX".into()));
    }
    if maxinfo <= 0 {
        return Err(CallError::InvalidArg("maxinfo in virDomainGetVcpus must be greater than zero".into()));
    }
    if maplen < 0 {
        return Err(CallError::InvalidArg("maplen in virDomainGetVcpus must be zero or greater".into()));
    }
    if running(e).is_err() {
        return Err(CallError::OperationInvalid("cannot retrieve vcpu information for inactive domain".into()));
    }
    let mut info = Vec::new();
    let mut cpumaps = Vec::new();
    for (index, thread) in threads(e).into_iter().enumerate().take(maxinfo as usize) {
        let (state, cpu_time, cpu, affinity) = match &thread {
            Some(t) => (VCPU_RUNNING, t.time_ns, t.cpu, t.affinity.as_slice()),
            // Its thread does not run yet (the helper is starting it).
            None => (VCPU_OFFLINE, 0, -1, &[][..]),
        };
        info.push(VcpuInfo { number: index as u32, state, cpu_time, cpu });
        cpumaps.extend(pack(affinity, maplen as usize));
    }
    Ok(CallValue::Vcpus { info, cpumaps })
}

/// The one definition `flags` picks, as `virDomainObjGetOneDef` checks it.
fn one_def(e: &Entry, flags: u32) -> Result<(), CallError> {
    if flags & AFFECT_LIVE != 0 && flags & AFFECT_CONFIG != 0 {
        return Err(CallError::InvalidArg("flags 'affect live' and 'affect config' are mutually exclusive".into()));
    }
    if flags & AFFECT_LIVE != 0 && e.id.is_none() {
        return Err(CallError::NotRunning);
    }
    if flags & AFFECT_CONFIG != 0 && !e.persistent {
        return Err(CallError::OperationInvalid("transient domains do not have any persistent config".into()));
    }
    Ok(())
}

/// `virDomainGetVcpusFlags`: the vCPU count (current and maximum are the
/// same: vCPUs are not hot-plugged).
pub fn vcpus_flags(e: &Entry, flags: u32) -> Result<CallValue, CallError> {
    check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | VCPU_MAXIMUM | VCPU_GUEST, "qemuDomainGetVcpusFlags")?;
    one_def(e, flags)?;
    if flags & VCPU_GUEST != 0 {
        if e.id.is_none() {
            return Err(CallError::InvalidArg(
                "vCPU count provided by the guest agent can only be requested for live domains".into(),
            ));
        }
        return Err(CallError::ArgumentUnsupported("QEMU guest agent is not configured".into()));
    }
    Ok(CallValue::Int(e.def.vcpus.into()))
}

/// `virDomainGetVcpuPinInfo`: every vCPU may run on every online host CPU
/// (the daemon does not pin).
pub fn vcpu_pin_info(e: &Entry, ncpumaps: i32, maplen: i32, flags: u32) -> Result<CallValue, CallError> {
    if ncpumaps > limits::VCPUINFO_MAX {
        return Err(CallError::Internal("ncpumaps > REMOTE_VCPUINFO_MAX".into()));
    }
    if i64::from(ncpumaps) * i64::from(maplen) > limits::CPUMAPS_MAX {
        return Err(CallError::Internal("maxinfo * maplen > REMOTE_CPUMAPS_MAX".into()));
    }
    if ncpumaps <= 0 || maplen <= 0 {
        return Err(CallError::InvalidArg("ncpumaps and maplen in virDomainGetVcpuPinInfo must be positive".into()));
    }
    check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainGetVcpuPinInfo")?;
    one_def(e, flags)?;
    let num = (e.def.vcpus as i32).min(ncpumaps);
    let all = pack(&online_cpus(present_cpus()), maplen as usize);
    // Each vCPU's pin (`<vcpupin>`, kept current by `virsh vcpupin`), or every online CPU.
    let cpumaps = (0..num as u32)
        .flat_map(|v| super::tuning::pinned(e, Some(v)).map_or_else(|| all.clone(), |s| s.to_map(maplen as usize)))
        .collect();
    Ok(CallValue::PinInfo { cpumaps, num })
}

/// `virDomainMemoryStats`: the memory the guest has (no balloon takes any
/// back) and the helper's resident set, in KiB.
pub fn memory_stats(e: &Entry, max: u32, flags: u32) -> Result<CallValue, CallError> {
    if max > limits::DOMAIN_MEMORY_STATS_MAX {
        return Err(CallError::Internal("maxStats > REMOTE_DOMAIN_MEMORY_STATS_MAX".into()));
    }
    if max == 0 {
        return Ok(CallValue::MemoryStats(Vec::new()));
    }
    check_flags(flags, 0, "qemuDomainMemoryStats")?;
    let pid = running(e)?;
    let mut stats = vec![(MEMORY_STAT_ACTUAL, e.def.memory_kib)];
    if let Some(s) = procfs::process_stat(pid) {
        stats.push((MEMORY_STAT_RSS, s.rss_kib));
    }
    stats.truncate(max.min(MEMORY_STAT_NR) as usize);
    Ok(CallValue::MemoryStats(stats))
}

/// `virDomainMemoryStats` of a running guest without a balloon, every
/// figure, from its bulk record's balloon group, which holds the same two
/// figures [`memory_stats`] reads (so a sampling round need not read them
/// again); `None` when the record lacks the group.
pub fn memory_stats_of_record(record: &[Param]) -> Option<Vec<(i32, u64)>> {
    let field = |name: &str| {
        record.iter().find(|p| p.field == name).and_then(|p| match p.value {
            ParamValue::ULLong(v) => Some(v),
            _ => None,
        })
    };
    let mut stats = vec![(MEMORY_STAT_ACTUAL, field("balloon.current")?)];
    stats.extend(field("balloon.rss").map(|kib| (MEMORY_STAT_RSS, kib)));
    Some(stats)
}

/// `virDomainGetInfo` of domain `e` ([`Entry::info`]) from its bulk
/// record, whose state, CPU, balloon and vCPU groups hold the same figures
/// (so a sampling round need not read them again): the state, the
/// maximum memory (`balloon.maximum`), the vCPUs (`vcpu.current`) and the
/// CPU time (`cpu.time`, absent for a guest with no helper, whose time is
/// 0). The memory is the definition's current memory, as `Entry::info`
/// reads it: `balloon.current` is what the guest has, not that. `None`
/// when the record lacks a figure.
pub fn info_of_record(e: &Entry, record: &[Param]) -> Option<DomainInfoRet> {
    let field = |name: &str| record.iter().find(|p| p.field == name).map(|p| &p.value);
    let ParamValue::Int(state) = field("state.state")? else { return None };
    let ParamValue::ULLong(max_mem) = field("balloon.maximum")? else { return None };
    let ParamValue::UInt(vcpus) = field("vcpu.current")? else { return None };
    let cpu_time = match (field("cpu.time"), e.pid) {
        (Some(ParamValue::ULLong(t)), Some(_)) => *t,
        (None, None) => 0,
        _ => return None,
    };
    Some(DomainInfoRet {
        state: u8::try_from(*state).ok()?,
        max_mem: *max_mem,
        memory: e.def.current_memory_kib,
        nr_virt_cpu: u16::try_from(*vcpus).ok()?,
        cpu_time,
    })
}

/// The helper's CPU time: total (its process CPU clock), user and system.
fn cpu_times(pid: nix::unistd::Pid) -> (u64, u64, u64) {
    let stat = procfs::process_stat(pid).unwrap_or_default();
    (super::guests::cpu_time_ns(pid), stat.user_ns, stat.system_ns)
}

fn ullong(field: impl Into<String>, v: u64) -> Param {
    Param { field: field.into(), value: ParamValue::ULLong(v) }
}

/// `virDomainGetCPUStats`: the total (`start_cpu` -1) as libvirt's
/// `cpu_time`, `user_time`, `system_time`; per host CPU from the guest's
/// cpuacct cgroup (`percpu.rs`), the kernel splitting time by CPU only there.
pub fn cpu_stats(
    e: &Entry,
    cgroup: Option<&super::cgroup::GuestCgroup>,
    nparams: u32,
    start_cpu: i32,
    ncpus: u32,
    flags: u32,
) -> Result<CallValue, CallError> {
    if nparams > limits::NODE_CPU_STATS_MAX as u32 {
        return Err(CallError::Internal("nparams too large".into()));
    }
    if ncpus > limits::GET_CPU_STATS_NCPUS_MAX {
        return Err(CallError::Internal("ncpus too large".into()));
    }
    if start_cpu == -1 && ncpus != 1 {
        return Err(CallError::InvalidArg("ncpus must be 1 when start_cpu is -1".into()));
    }
    if start_cpu < -1 {
        return Err(CallError::InvalidArg("start_cpu in virDomainGetCPUStats must be non-negative".into()));
    }
    check_flags(flags, STRING_OKAY, "qemuDomainGetCPUStats")?;
    let pid = running(e)?;
    if start_cpu == -1 {
        if nparams == 0 {
            return Ok(CallValue::Params { params: Vec::new(), count: CPU_TOTAL_PARAMS as i32 });
        }
        let (total, user, system) = cpu_times(pid);
        let mut params = vec![ullong("cpu_time", total), ullong("user_time", user), ullong("system_time", system)];
        params.truncate(nparams as usize);
        let count = params.len() as i32;
        return Ok(CallValue::Params { params, count });
    }
    super::percpu::cpu_stats(cgroup, nparams, start_cpu, ncpus, present_cpus())
}

/// `virDomainGetControlInfo`: OK, or OCCUPIED while the helper has a
/// request to answer (a start, pause, resume or graceful stop), for as long
/// as it has been asked.
pub fn control_info(ctx: &Ctx, e: &Entry, flags: u32) -> Result<CallValue, CallError> {
    check_flags(flags, 0, "qemuDomainGetControlInfo")?;
    running(e)?;
    Ok(match ctx.guests.pending.oldest(&e.def.uuid) {
        Some(a) => {
            let ms = a.asked.elapsed().as_millis();
            CallValue::ControlInfo { state: CONTROL_OCCUPIED, details: 0, time_ms: ms as u64 }
        }
        None => CallValue::ControlInfo { state: CONTROL_OK, details: 0, time_ms: 0 },
    })
}

/// `virDomainGetJobInfo`: no job (migration, dump, backup) ever runs here.
pub fn job_info(e: &Entry) -> Result<CallValue, CallError> {
    running(e)?;
    Ok(CallValue::NoJob)
}

/// `virDomainGetJobStats`: none running; none completed either.
pub fn job_stats(e: &Entry, flags: u32) -> Result<CallValue, CallError> {
    check_flags(flags, JOB_STATS_COMPLETED | JOB_STATS_KEEP_COMPLETED, "qemuDomainGetJobStats")?;
    if flags & JOB_STATS_COMPLETED == 0 {
        running(e)?;
    }
    Ok(CallValue::NoJob)
}

/// One domain's record of the groups in `stats`, as libvirt's QEMU driver
/// fills them: figures of a running guest only where it has one.
fn record(e: &Entry, stats: u32) -> Vec<Param> {
    let mut p = Vec::new();
    let int = |field: String, v: i32| Param { field, value: ParamValue::Int(v) };
    let uint = |field: &str, v: u32| Param { field: field.into(), value: ParamValue::UInt(v) };
    let pid = running(e).ok();
    // One read of the helper's stat serves the CPU and balloon groups.
    let stat = pid.filter(|_| stats & (group::CPU_TOTAL | group::BALLOON) != 0).and_then(procfs::process_stat);
    if stats & group::STATE != 0 {
        let (state, reason) = e.state.to_libvirt();
        p.push(int("state.state".into(), state));
        p.push(int("state.reason".into(), reason));
    }
    if stats & group::CPU_TOTAL != 0
        && let Some(pid) = pid
    {
        let stat = stat.unwrap_or_default();
        let total = super::guests::cpu_time_ns(pid);
        p.extend([ullong("cpu.time", total), ullong("cpu.user", stat.user_ns), ullong("cpu.system", stat.system_ns)]);
    }
    if stats & group::BALLOON != 0 {
        // No balloon: the guest has all of its memory.
        p.push(ullong("balloon.current", e.def.memory_kib));
        p.push(ullong("balloon.maximum", e.def.memory_kib));
        if let Some(s) = stat {
            p.push(ullong("balloon.rss", s.rss_kib));
        }
    }
    if stats & group::VCPU != 0 {
        p.push(uint("vcpu.current", e.def.vcpus));
        p.push(uint("vcpu.maximum", e.def.vcpus));
        for (i, t) in threads(e).iter().enumerate() {
            p.push(int(format!("vcpu.{i}.state"), if t.is_some() { VCPU_RUNNING } else { VCPU_OFFLINE }));
            let t = t.as_ref();
            p.push(ullong(format!("vcpu.{i}.time"), t.map_or(0, |t| t.time_ns)));
            p.push(ullong(format!("vcpu.{i}.wait"), t.map_or(0, |t| t.wait_ns)));
            p.push(ullong(format!("vcpu.{i}.delay"), t.map_or(0, |t| t.delay_ns)));
        }
    }
    p
}

/// One domain's statistics record.
pub type Record = (DomainRef, Vec<Param>);

/// `virConnectGetAllDomainStats` (no `doms`) and `virDomainListGetStats`:
/// the groups to fill and each domain's record of the groups read from
/// `/proc` and the broker's own state. The device groups ([`group::DEVICES`])
/// are `sampling.rs`'s to add once the helpers have reported.
pub fn domain_stats(
    ctx: &Ctx,
    doms: &[crate::domain::Uuid],
    stats: u32,
    flags: u32,
) -> Result<(u32, Vec<Record>), CallError> {
    let groups = domstats::plan(stats, flags, doms.len())?;
    let matching = ctx.domains.list(flags & domstats::FILTERS)?;
    let picked = domstats::pick(&matching, doms);
    let mut records = Vec::with_capacity(picked.len());
    for d in picked {
        let e = ctx.domains.by_uuid(&d.uuid)?;
        let mut r = record(e, groups);
        super::balloon::patch_record(ctx, e, &mut r);
        records.push((e.handle(), r));
    }
    Ok((groups, records))
}

/// The fields of `virDomainBlockStatsFlags`, in libvirt's QEMU driver's order.
const BLOCK_FIELDS: [&str; 8] = [
    "wr_bytes",
    "wr_operations",
    "rd_bytes",
    "rd_operations",
    "flush_operations",
    "wr_total_times",
    "rd_total_times",
    "flush_total_times",
];

/// `virDomainBlockStats` and `virDomainBlockStatsFlags`. A running guest has
/// no disks (a domain with one does not start yet), so a disk named is not
/// the domain's, and all of them ("") add up to nothing.
pub fn block_stats(e: &Entry, path: &str, params: Option<(i32, u32)>) -> Result<CallValue, CallError> {
    if let Some((nparams, flags)) = params {
        if nparams > limits::BLOCK_STATS_PARAMETERS_MAX {
            return Err(CallError::Internal("nparams too large".into()));
        }
        if nparams < 0 {
            return Err(CallError::InvalidArg("nparams in virDomainBlockStatsFlags must be non-negative".into()));
        }
        check_flags(flags, STRING_OKAY, "qemuDomainBlockStatsFlags")?;
    }
    running(e)?;
    if !path.is_empty() || !e.def.disks.is_empty() {
        return Err(CallError::InvalidArg(format!("invalid path: {path}")));
    }
    Ok(match params {
        None => CallValue::Figures(vec![0, 0, 0, 0, -1]),
        Some((0, _)) => CallValue::Params { params: Vec::new(), count: BLOCK_FIELDS.len() as i32 },
        Some((nparams, _)) => {
            let params: Vec<Param> = BLOCK_FIELDS
                .iter()
                .take(nparams as usize)
                .map(|f| Param { field: (*f).into(), value: ParamValue::LLong(0) })
                .collect();
            let count = params.len() as i32;
            CallValue::Params { params, count }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process standing in for a helper: it uses some CPU, then waits;
    /// real `/proc` figures, no vCPU threads. Killed when dropped.
    struct StandIn(std::process::Child);

    impl StandIn {
        fn start() -> StandIn {
            let child = std::process::Command::new("/bin/sh")
                .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 30"])
                .spawn()
                .unwrap();
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while super::super::guests::cpu_time_ns(pid) < 1_000_000 && std::time::Instant::now() < end {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            StandIn(child)
        }
    }

    impl Drop for StandIn {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn entry_of(stand_in: Option<&StandIn>) -> Entry {
        let mut e = entry(false);
        if let Some(s) = stand_in {
            (e.id, e.pid, e.state) = (
                Some(1),
                Some(nix::unistd::Pid::from_raw(s.0.id() as i32)),
                crate::broker::lifecycle::DomainState::Running(crate::broker::lifecycle::RunningReason::Booted),
            );
        }
        e
    }

    fn entry(running: bool) -> Entry {
        let xml = "<domain type='kvm'><name>s</name><uuid>0c9c4a52-8a61-4a0e-9d2f-3f7b8e1a5c09</uuid>\
                   <memory unit='MiB'>64</memory><vcpu>2</vcpu><os><type>hvm</type><kernel>/k</kernel></os></domain>";
        let (def, _) = crate::domain::parse(xml, false).unwrap();
        Entry {
            def,
            persistent: false,
            autostart: false,
            id: running.then_some(1),
            pid: running.then(nix::unistd::Pid::this),
            state: if running {
                crate::broker::lifecycle::DomainState::Running(crate::broker::lifecycle::RunningReason::Booted)
            } else {
                crate::broker::lifecycle::DomainState::DEFINED
            },
        }
    }

    #[test]
    fn client_sizes_are_bounded_before_anything_is_built() {
        let e = entry(true);
        assert!(matches!(vcpus(&e, limits::VCPUINFO_MAX + 1, 1), Err(CallError::Internal(_))));
        assert!(matches!(vcpus(&e, 16_384, 1024), Err(CallError::Internal(_))));
        assert!(matches!(vcpus(&e, 0, 1), Err(CallError::InvalidArg(_))));
        assert!(matches!(vcpu_pin_info(&e, 1, i32::MAX, 0), Err(CallError::Internal(_))));
        assert!(matches!(memory_stats(&e, 1025, 0), Err(CallError::Internal(_))));
        assert!(matches!(cpu_stats(&e, None, 17, -1, 1, 0), Err(CallError::Internal(_))));
        assert!(matches!(cpu_stats(&e, None, 3, 0, 129, 0), Err(CallError::Internal(_))));
        assert!(matches!(cpu_stats(&e, None, 3, -1, 2, 0), Err(CallError::InvalidArg(_))));
        assert!(matches!(block_stats(&e, "", Some((17, 0))), Err(CallError::Internal(_))));
    }

    #[test]
    fn a_running_domain_reports_its_process_figures() {
        let helper = StandIn::start();
        let e = entry_of(Some(&helper));
        let CallValue::Vcpus { info, cpumaps } = vcpus(&e, 8, 2).unwrap() else { panic!() };
        // Two vCPUs, neither with a thread: offline, as a starting helper's are.
        assert_eq!(info.len(), 2);
        assert!(info.iter().all(|v| v.state == VCPU_OFFLINE && v.cpu == -1));
        assert_eq!(cpumaps, [0; 4]);
        let CallValue::MemoryStats(m) = memory_stats(&e, 13, 0).unwrap() else { panic!() };
        assert_eq!(m[0], (MEMORY_STAT_ACTUAL, 65536));
        assert!(m[1].0 == MEMORY_STAT_RSS && m[1].1 > 0, "{m:?}");
        let from_record = memory_stats_of_record(&record(&e, group::BALLOON)).unwrap();
        assert_eq!(from_record.iter().map(|s| s.0).collect::<Vec<_>>(), [MEMORY_STAT_ACTUAL, MEMORY_STAT_RSS]);
        assert_eq!(from_record[0], m[0]);
        assert_eq!(memory_stats_of_record(&record(&e, group::STATE)), None);
        let CallValue::MemoryStats(one) = memory_stats(&e, 1, 0).unwrap() else { panic!() };
        assert_eq!(one.len(), 1);
        let CallValue::Params { params, count } = cpu_stats(&e, None, 3, -1, 1, 0).unwrap() else { panic!() };
        assert_eq!(count, 3);
        let names: Vec<&str> = params.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(names, ["cpu_time", "user_time", "system_time"]);
        assert!(matches!(params[0].value, ParamValue::ULLong(t) if t > 0));
        // Per host CPU needs the guest's cpuacct cgroup, as in libvirt.
        assert!(
            matches!(cpu_stats(&e, None, 0, 0, 0, 0), Err(CallError::OperationInvalid(m)) if m.contains("CPUACCT"))
        );
        let CallValue::PinInfo { cpumaps, num } = vcpu_pin_info(&e, 4, 1, 0).unwrap() else { panic!() };
        assert_eq!((num, cpumaps.len()), (2, 2));
        assert!(cpumaps[0] != 0 && cpumaps[0] == cpumaps[1]);
        let fields: Vec<String> = record(&e, group::SUPPORTED).into_iter().map(|p| p.field).collect();
        for f in ["state.state", "cpu.time", "balloon.rss", "vcpu.maximum", "vcpu.1.state", "vcpu.1.delay"] {
            assert!(fields.iter().any(|x| x == f), "{f}: {fields:?}");
        }
    }

    #[test]
    fn dominfo_from_a_record_is_what_the_info_query_gives() {
        let all = group::STATE | group::CPU_TOTAL | group::BALLOON | group::VCPU;
        let helper = StandIn::start();
        let mut e = entry_of(Some(&helper));
        // Less current memory than maximum: the record's balloon figure is
        // not `dominfo`'s memory.
        e.def.current_memory_kib = 32_768;
        let pid = e.pid.unwrap();
        // The stand-in asleep: its CPU time no longer moves.
        let mut last = 0;
        while super::super::guests::cpu_time_ns(pid) != last {
            last = super::super::guests::cpu_time_ns(pid);
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        for state in [
            crate::broker::lifecycle::DomainState::Running(crate::broker::lifecycle::RunningReason::Booted),
            crate::broker::lifecycle::DomainState::Paused(crate::broker::lifecycle::PausedReason::User),
        ] {
            e.state = state;
            let derived = info_of_record(&e, &record(&e, all)).unwrap();
            assert_eq!(derived, e.info(), "{state:?}");
            assert!(derived.cpu_time > 0 && derived.memory == 32_768 && derived.max_mem == 65_536);
        }
        // Without a group that holds a figure, the query is asked.
        for without in [group::STATE, group::CPU_TOTAL, group::BALLOON, group::VCPU] {
            assert_eq!(info_of_record(&e, &record(&e, all & !without)), None, "{without:#x}");
        }
        // A shut-off domain: no CPU group figures, and none needed.
        let off = entry_of(None);
        let derived = info_of_record(&off, &record(&off, all)).unwrap();
        assert_eq!(derived, off.info());
        assert_eq!((derived.cpu_time, derived.nr_virt_cpu), (0, 2));
    }

    #[test]
    fn a_shut_off_domain_answers_as_libvirt_does() {
        let e = entry_of(None);
        assert!(matches!(vcpus(&e, 2, 1), Err(CallError::OperationInvalid(_))));
        assert_eq!(memory_stats(&e, 13, 0), Err(CallError::NotRunning));
        assert_eq!(cpu_stats(&e, None, 3, -1, 1, 0), Err(CallError::NotRunning));
        assert_eq!(job_info(&e), Err(CallError::NotRunning));
        assert_eq!(job_stats(&e, JOB_STATS_COMPLETED), Ok(CallValue::NoJob));
        assert_eq!(vcpus_flags(&e, AFFECT_LIVE), Err(CallError::NotRunning));
        assert_eq!(vcpus_flags(&e, 0), Ok(CallValue::Int(2)));
        // A transient domain has no persistent configuration to read.
        assert!(matches!(vcpus_flags(&e, AFFECT_CONFIG), Err(CallError::OperationInvalid(_))));
        assert!(matches!(vcpus_flags(&e, AFFECT_LIVE | AFFECT_CONFIG), Err(CallError::InvalidArg(_))));
        let fields: Vec<String> = record(&e, group::SUPPORTED).into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            ["state.state", "state.reason", "balloon.current", "balloon.maximum", "vcpu.current", "vcpu.maximum"]
        );
    }
}
