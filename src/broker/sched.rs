//! `virDomainGetSchedulerType` and `virDomainGetSchedulerParameters(Flags)`,
//! answered as libvirt's QEMU driver answers them for a guest without a CPU
//! cgroup controller: a guest's helper runs in no cgroup of its own, so there
//! are no live CPU tunables to read, and libvirt says so ("cgroup CPU
//! controller is not mounted"); a shut-off domain, or the persistent
//! definition, reports `<cputune>`, which the daemon refuses at define time,
//! so every figure is libvirt's "not set", 0. A daemon that is not root is a
//! session daemon, which libvirt allows no CPU tuning at all.

use super::cgroup::{Controller, GuestCgroup};
use super::domains::Entry;
use crate::privsep::CallError;
use crate::privsep::admin::Param;

/// The parameters libvirt's QEMU driver reports, in its order, each with
/// whether it is signed (`VIR_TYPED_PARAM_LLONG`) or not (`ULLONG`).
const PARAMS: [(&str, bool); 9] = [
    ("cpu_shares", false),
    ("vcpu_period", false),
    ("vcpu_quota", true),
    ("emulator_period", false),
    ("emulator_quota", true),
    ("global_period", false),
    ("global_quota", true),
    ("iothread_period", false),
    ("iothread_quota", true),
];
/// `VIR_TYPED_PARAM_STRING_OKAY`: accepted, no parameter is a string.
const STRING_OKAY: u32 = 4;

fn privileged() -> Result<(), CallError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(CallError::OperationUnsupported("CPU tuning is not available in session mode".into()));
    }
    Ok(())
}

fn no_cgroup() -> CallError {
    CallError::OperationInvalid("cgroup CPU controller is not mounted".into())
}

/// `virDomainGetSchedulerType`: the scheduler and how many parameters it has.
pub fn scheduler_type(e: &Entry, cg: Option<&GuestCgroup>) -> Result<(String, i32), CallError> {
    privileged()?;
    if e.id.is_some() && !cg.is_some_and(|c| c.cgroups().backend.has(Controller::Cpu)) {
        return Err(no_cgroup());
    }
    Ok(("posix".into(), PARAMS.len() as i32))
}

/// `virDomainGetSchedulerParametersFlags` (flags 0 for the older call): at
/// most `nparams` of the parameters.
pub fn scheduler_params(
    e: &Entry,
    cg: Option<&GuestCgroup>,
    nparams: i32,
    flags: u32,
) -> Result<Vec<Param>, CallError> {
    if flags & !(super::domains::AFFECT_LIVE | super::domains::AFFECT_CONFIG | STRING_OKAY) != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainGetSchedulerParametersFlags".into() });
    }
    privileged()?;
    let (live, _) = e.impact(flags & !STRING_OKAY, true)?;
    let all = match (live, cg.filter(|c| c.cgroups().backend.has(Controller::Cpu))) {
        (true, None) => return Err(no_cgroup()),
        (true, Some(cg)) => super::tuning::live_scheduler(cg)?,
        (false, _) => super::tuning::config_scheduler(&e.def.tuning()),
    };
    debug_assert!(all.iter().zip(PARAMS).all(|(p, (f, _))| p.field == f));
    let n = usize::try_from(nparams).unwrap_or(0).min(PARAMS.len());
    Ok(all.into_iter().take(n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privsep::admin::ParamValue;

    fn entry(running: bool, persistent: bool) -> Entry {
        let xml = "<domain type='kvm'><name>s</name><memory unit='MiB'>64</memory>\
                   <os><type>hvm</type><kernel>/k</kernel></os></domain>";
        Entry {
            def: crate::domain::parse(xml, false).unwrap().0,
            persistent,
            autostart: false,
            id: running.then_some(3),
            pid: None,
            state: if running {
                crate::broker::lifecycle::DomainState::Running(crate::broker::lifecycle::RunningReason::Booted)
            } else {
                crate::broker::lifecycle::DomainState::DEFINED
            },
        }
    }

    #[test]
    fn the_definition_reports_nine_unset_parameters_and_a_running_guest_no_cgroup() {
        let off = entry(false, true);
        if !nix::unistd::geteuid().is_root() {
            assert!(matches!(scheduler_type(&off, None), Err(CallError::OperationUnsupported(_))));
            return;
        }
        assert_eq!(scheduler_type(&off, None).unwrap(), ("posix".into(), 9));
        let all = scheduler_params(&off, None, 16, 0).unwrap();
        assert_eq!(all.iter().map(|p| p.field.as_str()).collect::<Vec<_>>(), PARAMS.map(|(f, _)| f));
        assert_eq!(all[2].value, ParamValue::LLong(0));
        assert_eq!(all[1].value, ParamValue::ULLong(0));
        assert_eq!(scheduler_params(&off, None, 3, STRING_OKAY).unwrap().len(), 3);
        assert!(matches!(scheduler_params(&off, None, 9, 1), Err(CallError::NotRunning)));
        assert!(matches!(scheduler_params(&off, None, 9, 8), Err(CallError::UnsupportedFlags { .. })));
        let on = entry(true, true);
        let no_cgroup = CallError::OperationInvalid("cgroup CPU controller is not mounted".into());
        assert_eq!(scheduler_type(&on, None).unwrap_err(), no_cgroup);
        assert_eq!(scheduler_params(&on, None, 9, 0).unwrap_err(), no_cgroup);
        assert_eq!(scheduler_params(&on, None, 9, 2).unwrap().len(), 9);
        assert!(matches!(scheduler_params(&entry(true, false), None, 9, 2), Err(CallError::OperationInvalid(_))));
    }
}
