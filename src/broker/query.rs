//! `Call::Query`: what a client may read of one domain, answered from the
//! domain table and, for a running guest, its helper's `/proc` entries
//! (never by asking the helper, so a wedged guest delays nobody).

use super::state::Ctx;
use super::{sched, stats};
use crate::domain::Uuid;
use crate::privsep::{CallError, CallValue, Query};

/// Carries out query `query` on domain `uuid` for a client whose
/// connection is `readonly`.
pub fn query_domain(ctx: &Ctx, uuid: &Uuid, query: Query, readonly: bool) -> Result<CallValue, CallError> {
    let e = ctx.domains.by_uuid(uuid)?;
    let cgroup = ctx.guests.get(uuid).and_then(|r| r.cgroup.as_ref());
    Ok(match query {
        Query::Info => CallValue::DomainInfo(e.info()),
        Query::State { flags } => {
            no_flags(flags, "qemuDomainGetState")?;
            {
                let (state, reason) = e.state.to_libvirt();
                CallValue::State { state, reason }
            }
        }
        Query::IsActive => CallValue::Int(e.id.is_some().into()),
        Query::IsPersistent => CallValue::Int(e.persistent.into()),
        Query::IsUpdated => CallValue::Int(0),
        Query::OsType => CallValue::Text("hvm".into()),
        Query::MaxMemory => CallValue::Int(e.def.memory_kib as i64),
        Query::MaxVcpus => CallValue::Int(e.def.vcpus.into()),
        Query::Autostart => CallValue::Int(e.autostart.into()),
        Query::HasManagedSave { flags } => {
            no_flags(flags, "qemuDomainHasManagedSaveImage")?;
            CallValue::Int(0)
        }
        Query::SecurityLabel => CallValue::Label { label: String::new(), enforcing: false },
        Query::Messages { flags } => {
            if flags & !3 != 0 {
                return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainGetMessages".into() });
            }
            CallValue::Texts(Vec::new())
        }
        Query::SnapshotNum { flags } => {
            if flags & !0x7ff != 0 {
                return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainSnapshotNum".into() });
            }
            CallValue::Int(0)
        }
        Query::XmlDesc { flags } => {
            // SECURE | INACTIVE | UPDATE_CPU | MIGRATABLE; SECURE and
            // MIGRATABLE would reveal secrets, so a read-only caller cannot.
            if flags & !0xf != 0 {
                return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainGetXMLDesc".into() });
            }
            if readonly && flags & (1 | 8) != 0 {
                return Err(CallError::ReadOnly("virDomainGetXMLDesc with secure flag".into()));
            }
            CallValue::Text(super::disks::xml_desc(&e.def, ctx.guests.get(uuid), flags))
        }
        Query::Vcpus { maxinfo, maplen } => stats::vcpus(e, maxinfo, maplen)?,
        Query::VcpusFlags { flags } => {
            // VIR_DOMAIN_VCPU_GUEST asks the guest agent: a change, not a read.
            if readonly && flags & 8 != 0 {
                return Err(CallError::ReadOnly("virDomainGetVcpusFlags".into()));
            }
            stats::vcpus_flags(e, flags)?
        }
        Query::VcpuPinInfo { ncpumaps, maplen, flags } => stats::vcpu_pin_info(e, ncpumaps, maplen, flags)?,
        Query::MemoryStats { max, flags } => match super::balloon::memory_stats(ctx, e, max, flags) {
            Some(v) => v,
            None => stats::memory_stats(e, max, flags)?,
        },
        Query::CpuStats { nparams, start_cpu, ncpus, flags } => {
            stats::cpu_stats(e, cgroup, nparams, start_cpu, ncpus, flags)?
        }
        Query::ControlInfo { flags } => stats::control_info(ctx, e, flags)?,
        Query::JobInfo => stats::job_info(e)?,
        Query::SchedulerType => {
            let (kind, nparams) = sched::scheduler_type(e, cgroup)?;
            CallValue::SchedulerType { kind, nparams }
        }
        Query::SchedulerParams { nparams, flags } => {
            let params = sched::scheduler_params(e, cgroup, nparams, flags)?;
            CallValue::Params { count: params.len() as i32, params }
        }
        Query::JobStats { flags } => stats::job_stats(e, flags)?,
        Query::TuningParams { kind, nparams, flags } => {
            let all = super::tuning::params(e, cgroup, kind, nparams, flags)?;
            // Asked with no room: how many there are.
            match nparams {
                0 => CallValue::Params { count: all.len() as i32, params: Vec::new() },
                _ => CallValue::Params { count: all.len() as i32, params: all },
            }
        }
        Query::EmulatorPinInfo { maplen, flags } => {
            CallValue::PinInfo { cpumaps: super::tuning::emulator_pin_info(e, maplen, flags)?, num: 1 }
        }
    })
}

fn no_flags(flags: u32, function: &str) -> Result<(), CallError> {
    if flags != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: function.into() });
    }
    Ok(())
}
