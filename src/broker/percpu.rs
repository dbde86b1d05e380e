//! `virDomainGetCPUStats` per host CPU (`virsh cpu-stats` without
//! `--total`): the guest's CPU time on each host CPU, which only its
//! cpuacct cgroup knows, answered as libvirt's `virCgroupGetPercpuStats`
//! answers it: `cpu_time` (the whole guest) and `vcpu_time` (its vCPU
//! threads) per CPU, and libvirt's errors where there is no such figure.

use std::path::Path;

use super::cgroup::{Controller, GuestCgroup};
use crate::privsep::admin::{Param, ParamValue};
use crate::privsep::{CallError, CallValue};

/// File of per-CPU nanoseconds in a v1 cpuacct group.
const USAGE_PERCPU: &str = "cpuacct.usage_percpu";

/// The per-CPU answer for `ncpus` CPUs from `start_cpu` (>= 0), `nparams`
/// figures each, with `present` the host's CPU count.
pub fn cpu_stats(
    cg: Option<&GuestCgroup>,
    nparams: u32,
    start_cpu: i32,
    ncpus: u32,
    present: i32,
) -> Result<CallValue, CallError> {
    let cg = cg
        .filter(|c| c.cgroups().backend.has(Controller::Cpuacct))
        .ok_or_else(|| CallError::OperationInvalid("cgroup CPUACCT controller is not mounted".into()))?;
    // cpu_time, and vcpu_time since a running guest has vCPUs.
    let per_cpu = if cg.vcpus() > 0 { 2 } else { 1 };
    if nparams == 0 && ncpus != 0 {
        return Ok(CallValue::Params { params: Vec::new(), count: per_cpu });
    }
    if ncpus == 0 {
        return Ok(CallValue::Params { params: Vec::new(), count: present });
    }
    if start_cpu >= present {
        return Err(CallError::InvalidArg(format!("start_cpu {start_cpu} larger than maximum of {}", present - 1)));
    }
    let backend = &cg.cgroups().backend;
    if backend.version() != 1 {
        // cgroup v2 keeps no per-CPU figure; libvirt's v2 backend has no such call.
        return Err(CallError::OperationUnsupported("operation 'getCpuacctPercpuUsage' not supported".into()));
    }
    let start = start_cpu as usize;
    let need = (i64::from(start_cpu) + i64::from(ncpus)).min(i64::from(present)) as usize;
    let own = usage(&backend.dir(Controller::Cpuacct, cg.scope()), need)?;
    let vcpus = if nparams >= 2 && per_cpu == 2 {
        let mut sum = vec![0u64; need];
        for n in 0..cg.vcpus() {
            let one = usage(&backend.dir(Controller::Cpuacct, &cg.vcpu(n)), need)?;
            for (s, v) in sum.iter_mut().zip(one) {
                *s = s.saturating_add(v);
            }
        }
        Some(sum)
    } else {
        None
    };
    let mut params = Vec::with_capacity((need - start) * 2);
    for cpu in start..need {
        params.push(ullong("cpu_time", own.get(cpu).copied().unwrap_or(0)));
        if let Some(v) = &vcpus {
            params.push(ullong("vcpu_time", v[cpu]));
        }
    }
    let count = if vcpus.is_some() { 2 } else { 1 };
    Ok(CallValue::Params { params, count })
}

fn ullong(field: &str, v: u64) -> Param {
    Param { field: field.into(), value: ParamValue::ULLong(v) }
}

/// The first `need` per-CPU figures of the group at `dir` (CPUs the file
/// does not list count 0).
fn usage(dir: &Path, need: usize) -> Result<Vec<u64>, CallError> {
    let path = dir.join(USAGE_PERCPU);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CallError::OperationFailed(format!("Unable to read from '{}': {e}", path.display())))?;
    parse_usage(&text, need).ok_or_else(|| CallError::Internal("cpuacct parse error".into()))
}

/// `cpuacct.usage_percpu`: nanoseconds per CPU, space-separated; at most
/// `need` are read.
fn parse_usage(text: &str, need: usize) -> Option<Vec<u64>> {
    text.split_ascii_whitespace().take(need).map(|w| w.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_per_cpu_and_bounded() {
        assert_eq!(parse_usage("10 20 30 40\n", 2), Some(vec![10, 20]));
        assert_eq!(parse_usage("10 20\n", 4), Some(vec![10, 20]));
        assert_eq!(parse_usage("10 x 30\n", 3), None);
        assert_eq!(parse_usage("", 3), Some(vec![]));
    }

    #[test]
    fn without_a_cgroup_it_is_libvirts_error() {
        assert_eq!(
            cpu_stats(None, 2, 0, 1, 4),
            Err(CallError::OperationInvalid("cgroup CPUACCT controller is not mounted".into()))
        );
    }
}
