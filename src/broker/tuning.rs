//! Resource controls of a domain, read and set: `virsh schedinfo`,
//! `memtune`, `blkiotune` (typed parameters), `vcpupin` and `emulatorpin`.
//!
//! A running guest's figures are read from its cgroups (the kernel's word);
//! the definition's from its `<cputune>`, `<memtune>` and `<blkiotune>`.
//! A change is checked as libvirt checks it, written to the cgroup or the
//! threads first for a live change (so a refused write changes nothing), and
//! then kept in the definition. The daemon keeps one definition per domain,
//! so for a running persistent domain a `--live` change also shows in the
//! stored one, as for metadata.

use super::cgroup::{Bandwidth, GuestCgroup};
use super::domains::{AFFECT_CONFIG, AFFECT_LIVE, Entry};
use super::pinning;
use crate::domain::tuning::{self, CpuSet, MemTune, Tuning, UNLIMITED_KIB};
use crate::privsep::CallError;
use crate::privsep::admin::{Param, ParamValue};

/// `VIR_TYPED_PARAM_STRING_OKAY`.
const STRING_OKAY: u32 = 4;
/// Memory parameters libvirt's QEMU driver reports, in its order.
const MEMORY_PARAMS: [&str; 3] = ["hard_limit", "soft_limit", "swap_hard_limit"];

fn failed(e: impl std::fmt::Display) -> CallError {
    CallError::OperationFailed(e.to_string())
}

fn no_cgroup(what: &str) -> CallError {
    CallError::OperationInvalid(format!("cgroup {what} controller is not mounted"))
}

/// A typed parameter as an unsigned figure.
fn unsigned(p: &Param) -> Result<u64, CallError> {
    let v: i128 = match &p.value {
        ParamValue::Int(v) => (*v).into(),
        ParamValue::UInt(v) => (*v).into(),
        ParamValue::LLong(v) => (*v).into(),
        ParamValue::ULLong(v) => (*v).into(),
        _ => return Err(CallError::InvalidArg(format!("invalid type for parameter '{}'", p.field))),
    };
    u64::try_from(v).map_err(|_| CallError::InvalidArg(format!("value of '{}' out of range", p.field)))
}

/// A typed parameter as a signed figure.
fn signed(p: &Param) -> Result<i64, CallError> {
    match &p.value {
        ParamValue::Int(v) => Ok((*v).into()),
        ParamValue::UInt(v) => Ok((*v).into()),
        ParamValue::LLong(v) => Ok(*v),
        ParamValue::ULLong(v) => {
            i64::try_from(*v).map_err(|_| CallError::InvalidArg(format!("value of '{}' out of range", p.field)))
        }
        _ => Err(CallError::InvalidArg(format!("invalid type for parameter '{}'", p.field))),
    }
}

fn check_flags(flags: u32, allowed: u32, function: &str) -> Result<(), CallError> {
    if flags & !allowed != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: function.into() });
    }
    Ok(())
}

/// The guest's cgroup, for a live read or change of `what`.
fn live_cgroup<'a>(cg: Option<&'a GuestCgroup>, what: &str) -> Result<&'a GuestCgroup, CallError> {
    cg.ok_or_else(|| no_cgroup(what))
}

/// `virDomainGetSchedulerParametersFlags` of a running guest: its cgroups'
/// figures, in libvirt's order and types.
pub fn live_scheduler(cg: &GuestCgroup) -> Result<Vec<Param>, CallError> {
    let b = &cg.cgroups().backend;
    let shares = b.cpu_shares(cg.scope()).map_err(failed)?;
    let vcpu = b.bandwidth(&cg.vcpu(0)).map_err(failed)?;
    let emulator = b.bandwidth(&cg.emulator()).map_err(failed)?;
    let global = b.bandwidth(cg.scope()).map_err(failed)?;
    Ok(scheduler_list(shares, vcpu, emulator, global))
}

/// The definition's scheduler figures (0: not set).
pub fn config_scheduler(t: &Tuning) -> Vec<Param> {
    let c = &t.cpu;
    let bw = |p: Option<u64>, q: Option<i64>| Bandwidth { period: p.unwrap_or(0), quota: q.unwrap_or(0) };
    scheduler_list(
        c.shares.unwrap_or(0),
        bw(c.period, c.quota),
        bw(c.emulator_period, c.emulator_quota),
        bw(c.global_period, c.global_quota),
    )
}

fn scheduler_list(shares: u64, vcpu: Bandwidth, emulator: Bandwidth, global: Bandwidth) -> Vec<Param> {
    let p = |field: &str, value| Param { field: field.into(), value };
    vec![
        p("cpu_shares", ParamValue::ULLong(shares)),
        p("vcpu_period", ParamValue::ULLong(vcpu.period)),
        p("vcpu_quota", ParamValue::LLong(vcpu.quota)),
        p("emulator_period", ParamValue::ULLong(emulator.period)),
        p("emulator_quota", ParamValue::LLong(emulator.quota)),
        p("global_period", ParamValue::ULLong(global.period)),
        p("global_quota", ParamValue::LLong(global.quota)),
        p("iothread_period", ParamValue::ULLong(0)),
        p("iothread_quota", ParamValue::LLong(0)),
    ]
}

/// `virDomainGet{Memory,Blkio}Parameters`.
pub fn params(
    e: &Entry,
    cg: Option<&GuestCgroup>,
    kind: crate::privsep::TuneKind,
    nparams: i32,
    flags: u32,
) -> Result<Vec<Param>, CallError> {
    use crate::privsep::TuneKind;
    let function = match kind {
        TuneKind::Memory => "qemuDomainGetMemoryParameters",
        TuneKind::Blkio => "qemuDomainGetBlkioParameters",
        TuneKind::Scheduler => "qemuDomainGetSchedulerParametersFlags",
    };
    check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | STRING_OKAY, function)?;
    let (live, _) = e.impact(flags & !STRING_OKAY, true)?;
    let t = e.def.tuning();
    let all = match kind {
        TuneKind::Memory => {
            let m = if live {
                let cg = live_cgroup(cg, "memory")?;
                cg.cgroups().backend.memory(cg.scope()).map_err(failed)?
            } else {
                t.memory
            };
            let v = |x: Option<u64>| ParamValue::ULLong(x.unwrap_or(UNLIMITED_KIB).min(UNLIMITED_KIB));
            let values = [v(m.hard_limit), v(m.soft_limit), v(m.swap_hard_limit)];
            MEMORY_PARAMS.iter().zip(values).map(|(f, value)| Param { field: (*f).into(), value }).collect()
        }
        TuneKind::Blkio => {
            let weight = if live {
                let cg = live_cgroup(cg, "blkio")?;
                cg.cgroups().backend.blkio_weight(cg.scope()).map_err(failed)?
            } else {
                t.blkio.weight.unwrap_or(0)
            };
            let mut out = vec![Param { field: "weight".into(), value: ParamValue::UInt(weight as u32) }];
            if flags & STRING_OKAY != 0 {
                let list = |f: fn(&tuning::BlkioDevice) -> Option<u64>| {
                    let items: Vec<String> =
                        t.blkio.devices.iter().filter_map(|d| f(d).map(|v| format!("{},{v}", d.path))).collect();
                    ParamValue::Text(items.join(","))
                };
                for (field, f) in [
                    ("device_weight", (|d: &tuning::BlkioDevice| d.weight) as fn(&tuning::BlkioDevice) -> Option<u64>),
                    ("device_read_iops_sec", |d| d.read_iops_sec),
                    ("device_write_iops_sec", |d| d.write_iops_sec),
                    ("device_read_bytes_sec", |d| d.read_bytes_sec),
                    ("device_write_bytes_sec", |d| d.write_bytes_sec),
                ] {
                    out.push(Param { field: field.into(), value: list(f) });
                }
            }
            out
        }
        TuneKind::Scheduler => match live {
            true => live_scheduler(live_cgroup(cg, "CPU")?)?,
            false => config_scheduler(&t),
        },
    };
    if nparams == 0 {
        return Ok(all);
    }
    Ok(all.into_iter().take(usize::try_from(nparams).unwrap_or(0)).collect())
}

/// The definition `params` makes of `t` (each checked as libvirt checks it).
fn changed(mut t: Tuning, kind: crate::privsep::TuneKind, params: &[Param]) -> Result<Tuning, CallError> {
    use crate::privsep::TuneKind;
    let range = |p: &Param, msg: &str| CallError::InvalidArg(format!("value of '{}' {msg}", p.field));
    for p in params {
        let c = &mut t.cpu;
        match (kind, p.field.as_str()) {
            (TuneKind::Scheduler, "cpu_shares") => {
                let v = unsigned(p)?;
                if !(2..=262_144).contains(&v) {
                    return Err(range(p, "must be in range [2, 262144]"));
                }
                c.shares = Some(v);
            }
            (TuneKind::Scheduler, f @ ("vcpu_period" | "emulator_period" | "global_period")) => {
                let v = unsigned(p)?;
                if !tuning::check_period(v) {
                    return Err(range(p, "must be in range [1000, 1000000]"));
                }
                let slot = match f {
                    "vcpu_period" => &mut c.period,
                    "emulator_period" => &mut c.emulator_period,
                    _ => &mut c.global_period,
                };
                *slot = (v != 0).then_some(v);
            }
            (TuneKind::Scheduler, f @ ("vcpu_quota" | "emulator_quota" | "global_quota")) => {
                let v = signed(p)?;
                let v = if v < 0 { -1 } else { v };
                if !tuning::check_quota(v) {
                    return Err(range(p, "must be in range [1000, 17592186044415] or less than 0"));
                }
                let slot = match f {
                    "vcpu_quota" => &mut c.quota,
                    "emulator_quota" => &mut c.emulator_quota,
                    _ => &mut c.global_quota,
                };
                *slot = (v != 0).then_some(v);
            }
            (TuneKind::Scheduler, "iothread_period" | "iothread_quota") if unsigned(p).is_ok_and(|v| v == 0) => {}
            (TuneKind::Scheduler, "iothread_period" | "iothread_quota") => {
                return Err(CallError::OperationUnsupported("the guest has no I/O threads to tune".into()));
            }
            (TuneKind::Memory, f @ ("hard_limit" | "soft_limit" | "swap_hard_limit")) => {
                let v = unsigned(p)?.min(UNLIMITED_KIB);
                let m = &mut t.memory;
                let slot = match f {
                    "hard_limit" => &mut m.hard_limit,
                    "soft_limit" => &mut m.soft_limit,
                    _ => &mut m.swap_hard_limit,
                };
                *slot = (v < UNLIMITED_KIB).then_some(v);
            }
            (TuneKind::Blkio, "weight") => {
                let v = unsigned(p)?;
                if !(100..=1000).contains(&v) {
                    return Err(range(p, "must be in range [100, 1000]"));
                }
                t.blkio.weight = Some(v);
            }
            (_, f) => return Err(CallError::InvalidArg(format!("parameter '{f}' is not supported"))),
        }
    }
    tuning::check_memtune(&t.memory).map_err(|e| CallError::InvalidArg(e.to_string()))?;
    Ok(t)
}

/// Writes the figures `params` named to a running guest's cgroups.
fn apply_live(cg: &GuestCgroup, kind: crate::privsep::TuneKind, t: &Tuning, params: &[Param]) -> Result<(), CallError> {
    use crate::privsep::TuneKind;
    let b = &cg.cgroups().backend;
    let named = |f: &str| params.iter().any(|p| p.field == f);
    let c = &t.cpu;
    let bw = |p: Option<u64>, q: Option<i64>| Bandwidth { period: p.unwrap_or(0), quota: q.unwrap_or(0) };
    match kind {
        TuneKind::Scheduler => {
            if named("cpu_shares")
                && let Some(s) = c.shares
            {
                b.set_cpu_shares(cg.scope(), s).map_err(failed)?;
            }
            if named("global_period") || named("global_quota") {
                b.set_bandwidth(cg.scope(), bw(c.global_period, c.global_quota)).map_err(failed)?;
            }
            if named("emulator_period") || named("emulator_quota") {
                b.set_bandwidth(&cg.emulator(), bw(c.emulator_period, c.emulator_quota)).map_err(failed)?;
            }
            if named("vcpu_period") || named("vcpu_quota") {
                for n in 0..cg.vcpus() {
                    b.set_bandwidth(&cg.vcpu(n), bw(c.period, c.quota)).map_err(failed)?;
                }
            }
        }
        TuneKind::Memory => {
            // A limit the call leaves out is not written again.
            let m = MemTune {
                hard_limit: named("hard_limit").then(|| t.memory.hard_limit.unwrap_or(UNLIMITED_KIB)),
                soft_limit: named("soft_limit").then(|| t.memory.soft_limit.unwrap_or(UNLIMITED_KIB)),
                swap_hard_limit: named("swap_hard_limit").then(|| t.memory.swap_hard_limit.unwrap_or(UNLIMITED_KIB)),
            };
            b.set_memory(cg.scope(), &m).map_err(failed)?;
        }
        TuneKind::Blkio => {
            if let Some(w) = t.blkio.weight {
                b.set_blkio_weight(cg.scope(), w).map_err(failed)?;
            }
        }
    }
    Ok(())
}

/// `virDomainSet{Scheduler,Memory,Blkio}Parameters(Flags)`: returns the
/// definition to keep.
pub fn set(
    e: &Entry,
    cg: Option<&GuestCgroup>,
    kind: crate::privsep::TuneKind,
    params: &[Param],
    flags: u32,
) -> Result<crate::domain::DomainDef, CallError> {
    use crate::privsep::TuneKind;
    let (function, what) = match kind {
        TuneKind::Memory => ("qemuDomainSetMemoryParameters", "memory"),
        TuneKind::Blkio => ("qemuDomainSetBlkioParameters", "blkio"),
        TuneKind::Scheduler => ("qemuDomainSetSchedulerParametersFlags", "CPU"),
    };
    check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG, function)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(CallError::OperationUnsupported(format!("{what} tuning is not available in session mode")));
    }
    let (live, _) = e.impact(flags, false)?;
    let t = changed(e.def.tuning(), kind, params)?;
    if live {
        apply_live(live_cgroup(cg, what)?, kind, &t, params)?;
    }
    let mut def = e.def.clone();
    def.set_tuning(&t);
    Ok(def)
}

/// `virDomainPinVcpuFlags` (`vcpu` set) or `virDomainPinEmulator`: pins the
/// running threads for a live change, and returns the definition to keep.
pub fn pin(
    e: &Entry,
    cg: Option<&GuestCgroup>,
    vcpu: Option<u32>,
    cpumap: &[u8],
    flags: u32,
) -> Result<crate::domain::DomainDef, CallError> {
    let function = if vcpu.is_some() { "qemuDomainPinVcpuFlags" } else { "qemuDomainPinEmulator" };
    check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG, function)?;
    let (live, _) = e.impact(flags, false)?;
    let set = CpuSet::from_map(cpumap);
    let host = super::hoststats::present_cpus() as u32;
    let set = CpuSet(set.0.into_iter().filter(|c| *c < host).collect());
    if set.0.is_empty() {
        return Err(CallError::InvalidArg("Empty cpu list for pinning".into()));
    }
    if let Some(v) = vcpu
        && v >= e.def.vcpus
    {
        return Err(CallError::InvalidArg(format!("vcpu {v} is out of range of live cpu count {}", e.def.vcpus)));
    }
    if live {
        let pid = e.pid.ok_or(CallError::NotRunning)?;
        let (by_index, others) = pinning::threads(pid, e.def.vcpus);
        let tids: Vec<i32> = match vcpu {
            Some(v) => vec![
                by_index.get(v as usize).copied().flatten().ok_or_else(|| failed(format!("vCPU {v} has no thread")))?,
            ],
            None => others,
        };
        if let Some(cg) = cg
            && cg.cgroups().backend.has(super::cgroup::Controller::Cpuset)
        {
            let group = match vcpu {
                Some(v) => cg.vcpu(v),
                None => cg.emulator(),
            };
            cg.cgroups().backend.set_cpus(&group, &set).map_err(failed)?;
        }
        for tid in tids {
            pinning::set_affinity(tid, &set).map_err(failed)?;
        }
    }
    let mut t = e.def.tuning();
    match vcpu {
        Some(v) => {
            t.cpu.vcpupin.retain(|(n, _)| *n != v);
            t.cpu.vcpupin.push((v, set));
            t.cpu.vcpupin.sort_by_key(|(n, _)| *n);
        }
        None => t.cpu.emulatorpin = Some(set),
    }
    let mut def = e.def.clone();
    def.set_tuning(&t);
    Ok(def)
}

/// The host CPUs of vCPU `n` (or of the emulator, `None`) as the
/// definition says: its pin, or every online CPU.
pub fn pinned(e: &Entry, vcpu: Option<u32>) -> Option<CpuSet> {
    let t = e.def.tuning().cpu;
    match vcpu {
        Some(v) => t.vcpupin.into_iter().find(|(n, _)| *n == v).map(|(_, s)| s),
        None => t.emulatorpin,
    }
}

/// `virDomainGetEmulatorPinInfo`: one map of `maplen` bytes.
pub fn emulator_pin_info(e: &Entry, maplen: i32, flags: u32) -> Result<Vec<u8>, CallError> {
    check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainGetEmulatorPinInfo")?;
    e.impact(flags, true)?;
    if maplen <= 0 || maplen > 1024 {
        return Err(CallError::InvalidArg("maplen in virDomainGetEmulatorPinInfo must be positive".into()));
    }
    Ok(match pinned(e, None) {
        Some(set) => set.to_map(maplen as usize),
        None => {
            let host = super::hoststats::present_cpus();
            super::hoststats::pack(&super::hoststats::online_cpus(host), maplen as usize)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privsep::TuneKind;

    fn p(field: &str, value: ParamValue) -> Param {
        Param { field: field.into(), value }
    }

    #[test]
    fn parameters_change_the_definition_within_libvirts_ranges() {
        let t = changed(
            Tuning::default(),
            TuneKind::Scheduler,
            &[p("cpu_shares", ParamValue::ULLong(512)), p("vcpu_quota", ParamValue::LLong(-5))],
        )
        .unwrap();
        assert_eq!((t.cpu.shares, t.cpu.quota), (Some(512), Some(-1)));
        assert!(changed(Tuning::default(), TuneKind::Scheduler, &[p("cpu_shares", ParamValue::ULLong(1))]).is_err());
        assert!(changed(Tuning::default(), TuneKind::Scheduler, &[p("vcpu_period", ParamValue::ULLong(5))]).is_err());
        let m = changed(Tuning::default(), TuneKind::Memory, &[p("hard_limit", ParamValue::ULLong(65536))]).unwrap();
        assert_eq!(m.memory.hard_limit, Some(65536));
        let unl = changed(m, TuneKind::Memory, &[p("hard_limit", ParamValue::ULLong(UNLIMITED_KIB))]).unwrap();
        assert_eq!(unl.memory.hard_limit, None);
        let bad = [p("hard_limit", ParamValue::ULLong(2048)), p("swap_hard_limit", ParamValue::ULLong(1024))];
        assert!(changed(Tuning::default(), TuneKind::Memory, &bad).is_err());
        assert!(changed(Tuning::default(), TuneKind::Memory, &[p("min_guarantee", ParamValue::ULLong(1))]).is_err());
        let config = config_scheduler(&Tuning::default());
        assert_eq!(config.len(), 9);
        assert_eq!(config[2].value, ParamValue::LLong(0));
    }
}
