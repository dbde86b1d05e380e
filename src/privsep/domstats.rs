//! The rules of `virConnectGetAllDomainStats` / `virDomainListGetStats`
//! that do not depend on where the figures come from: which flags and
//! groups are accepted, which domains a call picks, and which fields belong
//! to which group. The broker applies them to the figures it samples and
//! the frontends to the snapshots the broker published, so both give the
//! same answer to the same call.

use super::admin::Param;
use super::{CallError, DomainRef};
use crate::domain::Uuid;
use crate::rpc::stats as limits;

/// `virDomainStatsTypes` groups.
pub mod group {
    /// `state.*`.
    pub const STATE: u32 = 1;
    /// `cpu.*`.
    pub const CPU_TOTAL: u32 = 2;
    /// `balloon.*`.
    pub const BALLOON: u32 = 4;
    /// `vcpu.*`.
    pub const VCPU: u32 = 8;
    /// `net.*`: per interface, its helper's counters (`ifstats.rs`).
    pub const INTERFACE: u32 = 16;
    /// `block.*`: per disk, its image's sizes and its helper's counters
    /// (`blockinfo.rs`).
    pub const BLOCK: u32 = 32;
    /// The groups whose figures come from the helpers' device counters,
    /// sampled for each call (`sampling.rs`).
    pub const DEVICES: u32 = INTERFACE | BLOCK;
    /// The groups this daemon fills; the others (perf, iothread, memory,
    /// dirtyrate, vm) are left out, as libvirt leaves out what its QEMU
    /// cannot provide.
    pub const SUPPORTED: u32 = STATE | CPU_TOTAL | BALLOON | VCPU | DEVICES;
}

/// `virConnectGetAllDomainStatsFlags`: the list filters (as
/// `virConnectListAllDomains`), NOWAIT, BACKING and ENFORCE_STATS.
pub const FILTERS: u32 = 0xff;
const NOWAIT: u32 = 1 << 29;
const BACKING: u32 = 1 << 30;
const ENFORCE: u32 = 1 << 31;

/// The groups a call with `stats` and `flags` naming `ndoms` domains
/// fills, or libvirt's error for it.
pub fn plan(stats: u32, flags: u32, ndoms: usize) -> Result<u32, CallError> {
    if flags & !(FILTERS | NOWAIT | BACKING | ENFORCE) != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "qemuConnectGetAllDomainStats".into() });
    }
    if ndoms > limits::DOMAIN_LIST_MAX {
        return Err(CallError::InvalidArg(format!("at most {} domains", limits::DOMAIN_LIST_MAX)));
    }
    let missing = stats & !group::SUPPORTED;
    if flags & ENFORCE != 0 && stats != 0 && missing != 0 {
        return Err(CallError::ArgumentUnsupported(format!(
            "Stats types bits 0x{missing:x} are not supported by this daemon or QEMU"
        )));
    }
    Ok(if stats == 0 { group::SUPPORTED } else { stats & group::SUPPORTED })
}

/// The domains of `matching` (those the list filters keep) a call naming
/// `doms` covers: all of them when it names none, else the ones named, in
/// the order named (a domain that is gone or filtered out is skipped).
pub fn pick<'a>(matching: &'a [DomainRef], doms: &[Uuid]) -> Vec<&'a DomainRef> {
    if doms.is_empty() {
        matching.iter().collect()
    } else {
        doms.iter().filter_map(|u| matching.iter().find(|d| &d.uuid == u)).collect()
    }
}

/// The group a record's field belongs to (0: none known).
pub fn group_of(field: &str) -> u32 {
    let prefix = field.split('.').next().unwrap_or_default();
    match prefix {
        "state" => group::STATE,
        "cpu" => group::CPU_TOTAL,
        "balloon" => group::BALLOON,
        "vcpu" => group::VCPU,
        "net" => group::INTERFACE,
        "block" => group::BLOCK,
        _ => 0,
    }
}

/// The fields of `record` that belong to `groups`, in the record's order
/// (which is libvirt's: the groups follow each other).
pub fn keep(record: &[Param], groups: u32) -> Vec<Param> {
    record.iter().filter(|p| group_of(&p.field) & groups != 0).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privsep::admin::ParamValue;

    #[test]
    fn groups_and_flags_follow_libvirt() {
        assert_eq!(plan(0, 0, 0), Ok(group::SUPPORTED));
        assert_eq!(plan(group::STATE | 64, 0, 0), Ok(group::STATE), "perf is left out");
        assert!(
            matches!(plan(group::STATE | 64, ENFORCE, 0), Err(CallError::ArgumentUnsupported(m)) if m.contains("0x40"))
        );
        assert_eq!(plan(0, ENFORCE, 0), Ok(group::SUPPORTED), "every group, enforced, is what there is");
        assert!(matches!(plan(0, 1 << 20, 0), Err(CallError::UnsupportedFlags { .. })));
        assert!(matches!(plan(0, 0, limits::DOMAIN_LIST_MAX + 1), Err(CallError::InvalidArg(_))));
    }

    #[test]
    fn a_record_splits_by_group_in_order() {
        let p = |f: &str| Param { field: f.into(), value: ParamValue::ULLong(1) };
        let record =
            [p("state.state"), p("cpu.time"), p("balloon.current"), p("vcpu.0.time"), p("net.count"), p("block.count")];
        let fields = |g| keep(&record, g).into_iter().map(|p| p.field).collect::<Vec<_>>();
        assert_eq!(fields(group::STATE | group::VCPU), ["state.state", "vcpu.0.time"]);
        assert_eq!(fields(group::DEVICES), ["net.count", "block.count"]);
        assert_eq!(fields(group::SUPPORTED).len(), record.len());
        let d = |n: u8| DomainRef { name: n.to_string(), uuid: Uuid([n; 16]), id: -1 };
        let matching = [d(1), d(2), d(3)];
        let names = |doms: &[Uuid]| pick(&matching, doms).into_iter().map(|d| d.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&[]), ["1", "2", "3"]);
        assert_eq!(names(&[Uuid([3; 16]), Uuid([9; 16]), Uuid([1; 16])]), ["3", "1"]);
    }
}
