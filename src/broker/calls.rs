//! The dispatcher of the hypervisor calls the frontend forwards: one row
//! per call, each handing it to the module that carries it out.
//!
//! The broker re-checks what the frontend already checked (a mutating call on
//! a read-only connection is refused here too), validates content again, and
//! audits every change and every refused change with the client's identity.
//! A call is answered now, or later ([`Answer::Later`]) when it waits on a
//! guest's helper: the supervisor settles it when the helper answers.

use super::audit::{Auditor, Value};
use super::call_audit::{audit, audit_change};
use super::devices::{self, Change};
pub use super::state::Ctx;
use super::{agent, blockinfo, guest_calls, host, hostpages, hoststats, metadata, netinfo, query, sampling};
use crate::domain::uuid_string;
use crate::privsep::{Call, CallError, CallValue, DomainEvent, EventKind, PeerIdentity};

/// Most domains or names returned by the legacy list calls.
const LIST_MAX: i32 = 16_384;

/// When a call is answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Now, with this.
    Now(Result<CallValue, CallError>),
    /// When the guest's helper answers what it was asked (the supervisor
    /// settles the call then, or at its deadline).
    Later,
}

impl Answer {
    /// A request handed to a guest's helper: answered later if it was
    /// asked, now if it could not be.
    pub fn when_settled<T>(asked: Result<T, CallError>) -> Answer {
        match asked {
            Ok(_) => Answer::Later,
            Err(e) => Answer::Now(Err(e)),
        }
    }
}

impl From<Result<CallValue, CallError>> for Answer {
    fn from(result: Result<CallValue, CallError>) -> Answer {
        Answer::Now(result)
    }
}

/// One client's call, with who made it and how it is connected.
pub struct Caller<'a> {
    /// Frontend connection number.
    pub conn: u64,
    /// Identity.
    pub peer: &'a PeerIdentity,
    /// Read-only connection.
    pub readonly: bool,
    /// The frontend request carrying the call: a call that waits for its
    /// helper ([`Awaiting`]) is answered to it later.
    pub request: u32,
}

/// Carries out `call` for `caller`; a failure's texts are clipped
/// ([`CallError::clipped`]), as they may quote the client's arguments.
pub fn handle(ctx: &mut Ctx, auditor: &mut Auditor, caller: &Caller, call: Call) -> Answer {
    if call.mutates() && caller.readonly {
        let api = call.api();
        audit(auditor, caller, op_of(&call), &[("reason", Value::Text("read-only"))], false);
        return Answer::Now(Err(CallError::ReadOnly(api.into())));
    }
    // A change drops the statistics snapshots before its reply leaves.
    if call.mutates() {
        ctx.snapshots.clear();
    }
    let read = match &call {
        Call::Query { uuid, query } => Some((*uuid, *query)),
        _ => None,
    };
    let answer = if guest_calls::handles(&call) {
        guest_calls::handle(ctx, auditor, caller, call)
    } else if blockinfo::handles(&call) {
        blockinfo::handle(ctx, caller, call)
    } else if let Call::DomainStats { doms, stats: groups, flags } = &call {
        sampling::handle(ctx, caller, doms, *groups, *flags)
    } else if let Call::Storage(c) = &call
        && super::storage::is_copy(c)
    {
        super::storage::handle_copy(&mut ctx.storage, auditor, caller, c)
    } else if netinfo::handles(&call) {
        netinfo::handle(ctx, auditor, caller, call)
    } else {
        Answer::Now(carry_out(ctx, auditor, caller, call))
    };
    if let (Some((uuid, query)), Answer::Now(result)) = (&read, &answer) {
        super::snapshots::answered(ctx, uuid, query, result);
    }
    match answer {
        Answer::Now(result) => Answer::Now(result.map_err(CallError::clipped)),
        Answer::Later => Answer::Later,
    }
}

/// The calls answered at once, one row each.
fn carry_out(ctx: &mut Ctx, auditor: &mut Auditor, caller: &Caller, call: Call) -> Result<CallValue, CallError> {
    match call {
        Call::GetHostname => host::hostname().map(CallValue::Text),
        Call::GetCapabilities => host::capabilities(&ctx.host_uuid).map(CallValue::Text),
        Call::GetDomainCapabilities { emulator, arch, machine, virttype, flags } => {
            let asked = host::DomainCapabilitiesQuery {
                emulator: emulator.as_deref(),
                arch: arch.as_deref(),
                machine: machine.as_deref(),
                virttype: virttype.as_deref(),
            };
            host::domain_capabilities(&asked, flags).map(CallValue::Text)
        }
        Call::NodeGetInfo => host::node_info().map(|n| CallValue::NodeInfo(n.to_wire())),
        Call::NodeGetFreeMemory => host::free_memory().map(|m| CallValue::Int(m as i64)),
        Call::NodeGetCellsFreeMemory { start, max } => host::cells_free_memory(start, max).map(CallValue::U64s),
        Call::GetMaxVcpus { kind } => host::max_vcpus(kind.as_deref()).map(|n| CallValue::Int(n.into())),
        Call::GetSysinfo { flags } => host::sysinfo(flags).map(CallValue::Text),
        Call::NodeCpuStats { cpu, nparams, flags } => {
            hoststats::node_cpu_stats(cpu, nparams, flags).map(|(params, count)| CallValue::NodeStats { params, count })
        }
        Call::NodeMemoryStats { cell, nparams, flags } => hoststats::node_memory_stats(cell, nparams, flags)
            .map(|(params, count)| CallValue::NodeStats { params, count }),
        Call::NodeCpuMap { map, online, flags } => hoststats::cpu_map(map, online, flags)
            .map(|(map, online, present)| CallValue::CpuMap { map, online, present }),
        Call::BlockInfo { uuid, path, flags } => blockinfo::block_info(&ctx.domains.by_uuid(&uuid)?.def, &path, flags),
        Call::ChangeDevice { uuid, xml, flags, detach } => {
            let (op, change) = if detach { ("detach", Change::Detach) } else { ("attach", Change::Attach) };
            let result = devices::change(&mut ctx.domains, &uuid, &xml, flags, change);
            audit_change(auditor, caller, op, &uuid, &result, &[]);
            result.map(|_| CallValue::Unit)
        }
        Call::DetachAlias { uuid, alias, flags } => {
            let result = devices::detach_alias(&mut ctx.domains, &uuid, &alias, flags);
            audit_change(auditor, caller, "detach", &uuid, &result, &[]);
            result.map(|_| CallValue::Unit)
        }
        Call::ListAll { flags, need_results } => {
            let list = ctx.domains.list(flags)?;
            let count = list.len() as u32;
            Ok(CallValue::Domains { list: if need_results { list } else { Vec::new() }, count })
        }
        Call::NumOfDomains => Ok(CallValue::Int(ctx.domains.list(1)?.len() as i64)),
        Call::ListDomainIds { max } => {
            let ids = ctx.domains.list(1)?.into_iter().map(|h| h.id).take(bound(max)?).collect();
            Ok(CallValue::Ints(ids))
        }
        Call::NumOfDefined => Ok(CallValue::Int(ctx.domains.list(2 | 4)?.len() as i64)),
        Call::ListDefinedNames { max } => {
            let names = ctx.domains.list(2 | 4)?.into_iter().map(|h| h.name).take(bound(max)?).collect();
            Ok(CallValue::Texts(names))
        }
        Call::LookupById(id) => ctx.domains.by_id(id).map(|e| CallValue::Domain(e.handle())),
        Call::LookupByName(name) => ctx.domains.by_name(&name).map(|e| CallValue::Domain(e.handle())),
        Call::LookupByUuid(uuid) => ctx.domains.by_uuid(&uuid).map(|e| CallValue::Domain(e.handle())),
        Call::Define { xml, flags } => {
            let result = ctx.domains.define(&xml, flags);
            match &result {
                Ok(d) => {
                    if !d.dropped.is_empty() {
                        log::warn!("domain '{}': ignored unknown XML {}", d.handle.name, d.dropped.join(", "));
                    }
                    let uuid = uuid_string(&d.handle.uuid);
                    let fields = [("vm", Value::Text(&d.handle.name)), ("uuid", Value::Text(&uuid))];
                    audit(auditor, caller, if d.updated { "redefine" } else { "define" }, &fields, true);
                    ctx.emit(d.handle.clone(), super::lifecycle::event::DEFINED, d.updated.into());
                }
                Err(e) => audit(auditor, caller, "define", &[("reason", Value::Text(&e.to_string()))], false),
            }
            result.map(|d| CallValue::Domain(d.handle))
        }
        Call::Undefine { uuid, flags } => {
            let handle = ctx.domains.by_uuid(&uuid).map(|e| e.handle());
            let result = ctx.domains.undefine(&uuid, flags);
            if result.is_ok() {
                ctx.guests.restarts.forget(&uuid);
            }
            audit_change(auditor, caller, "undefine", &uuid, &result, &[]);
            if let (Ok(_), Ok(dom)) = (&result, handle) {
                ctx.emit(dom, super::lifecycle::event::UNDEFINED, 0);
            }
            result.map(|_| CallValue::Unit)
        }
        Call::SetAutostart { uuid, on } => {
            let result = ctx.domains.set_autostart(&uuid, on);
            audit_change(auditor, caller, "autostart", &uuid, &result, &[("on", Value::Num(on.into()))]);
            result.map(|_| CallValue::Unit)
        }
        Call::Query { uuid, query } => {
            if let crate::privsep::Query::MemoryStats { .. } = query {
                // Fresh balloon figures for the next call (this one has the last ones).
                super::balloon::refresh(ctx, &uuid);
            }
            query::query_domain(ctx, &uuid, query, caller.readonly)
        }
        Call::NodeFreePages { pages, start, count, flags } => {
            hostpages::free_pages(&pages, start, count, flags).map(CallValue::U64s)
        }
        Call::CpuModelNames { arch, flags } => host::cpu_model_names(&arch, flags).map(CallValue::Texts),
        Call::CompareCpu { on, xml, flags } => super::hostcpu::compare(&on, &xml, flags).map(CallValue::Int),
        Call::BaselineCpu { on, xmls, flags } => super::hostcpu::baseline(&on, &xmls, flags).map(CallValue::Text),
        Call::GetTime { uuid, flags } => agent::get_time(ctx.domains.by_uuid(&uuid)?, flags)
            .map(|(seconds, nseconds)| CallValue::Time { seconds, nseconds }),
        Call::GetMetadata { uuid, kind, uri, flags } => {
            let e = ctx.domains.by_uuid(&uuid)?;
            metadata::check_impact(e, flags, false)?;
            metadata::get(&e.def, kind, uri.as_deref()).map(CallValue::Text)
        }
        Call::SetTuning { uuid, kind, params, flags } => {
            let cgroup = ctx.guests.get(&uuid).and_then(|r| r.cgroup.as_ref());
            let result = ctx.domains.by_uuid(&uuid).and_then(|e| super::tuning::set(e, cgroup, kind, &params, flags));
            let result = result.and_then(|def| ctx.domains.replace_def(&uuid, def));
            let what = match kind {
                crate::privsep::TuneKind::Scheduler => "cputune",
                crate::privsep::TuneKind::Memory => "memtune",
                crate::privsep::TuneKind::Blkio => "blkiotune",
            };
            audit_change(auditor, caller, "tune", &uuid, &result, &[("what", Value::Text(what))]);
            result?;
            if ctx.guests.contains_key(&uuid) {
                ctx.record(&uuid);
            }
            Ok(CallValue::Unit)
        }
        Call::SetMemory { uuid, kib, flags } => {
            let result = match super::balloon::set_memory(ctx, &uuid, kib, flags) {
                Some(by_balloon) => by_balloon,
                None => ctx
                    .domains
                    .by_uuid(&uuid)
                    .and_then(|e| super::memsize::set(e, kib, flags))
                    .and_then(|def| ctx.domains.replace_def(&uuid, def)),
            };
            let what = if flags & super::memsize::MEM_MAXIMUM != 0 { "maximum" } else { "current" };
            audit_change(auditor, caller, "memory", &uuid, &result, &[("what", Value::Text(what))]);
            result?;
            Ok(CallValue::Unit)
        }
        Call::SetMemoryStatsPeriod { uuid, period, flags } => {
            let result = super::balloon::set_period(ctx, &uuid, period, flags);
            audit_change(auditor, caller, "memory", &uuid, &result, &[("what", Value::Text("stats-period"))]);
            result?;
            Ok(CallValue::Unit)
        }
        Call::Pin { uuid, vcpu, cpumap, flags } => {
            let cgroup = ctx.guests.get(&uuid).and_then(|r| r.cgroup.as_ref());
            let result = ctx.domains.by_uuid(&uuid).and_then(|e| super::tuning::pin(e, cgroup, vcpu, &cpumap, flags));
            let result = result.and_then(|def| ctx.domains.replace_def(&uuid, def));
            let what = if vcpu.is_some() { "vcpupin" } else { "emulatorpin" };
            audit_change(auditor, caller, "pin", &uuid, &result, &[("what", Value::Text(what))]);
            result?;
            if ctx.guests.contains_key(&uuid) {
                ctx.record(&uuid);
            }
            Ok(CallValue::Unit)
        }
        Call::SetMetadata { uuid, kind, value, key, uri, flags } => {
            let result = ctx.domains.by_uuid(&uuid).and_then(|e| {
                metadata::check_impact(e, flags, true)?;
                let def = metadata::set(&e.def, kind, value.as_deref(), key.as_deref(), uri.as_deref())?;
                Ok((e.handle(), def))
            });
            let result = result.and_then(|(dom, def)| ctx.domains.replace_def(&uuid, def).map(|name| (dom, name)));
            let named = result.as_ref().map(|(_, n)| n.clone()).map_err(Clone::clone);
            audit_change(auditor, caller, "metadata", &uuid, &named, &[("type", Value::Num(kind.into()))]);
            let (dom, _) = result?;
            // A running guest's record carries its definition.
            if ctx.guests.contains_key(&uuid) {
                ctx.record(&uuid);
            }
            let uri = if kind == metadata::ELEMENT { uri } else { None };
            ctx.guests.events.push(DomainEvent { dom, kind: EventKind::MetadataChange { kind, uri } });
            Ok(CallValue::Unit)
        }
        // `handle` hands these to blockinfo.rs: the helper counts.
        Call::BlockStats { .. } | Call::DiskErrors { .. } => {
            Err(CallError::Internal("a question about a guest's disks outside its module".into()))
        }
        // `handle` hands this to sampling.rs: the helpers count the devices.
        Call::DomainStats { .. } => Err(CallError::Internal("bulk statistics outside their module".into())),
        // `handle` hands these to netinfo.rs.
        Call::InterfaceStats { .. } | Call::InterfaceAddresses { .. } | Call::UpdateDevice { .. } => {
            Err(CallError::Internal("a call on a guest's interfaces outside its module".into()))
        }
        // `handle` hands these to guest_calls.rs.
        Call::Create { .. }
        | Call::CreateXml { .. }
        | Call::Shutdown { .. }
        | Call::Reboot { .. }
        | Call::Reset { .. }
        | Call::Suspend { .. }
        | Call::Resume { .. }
        | Call::OpenConsole { .. }
        | Call::Destroy { .. } => Err(CallError::Internal("a call on a guest's life outside its module".into())),
        Call::Storage(c) => super::storage::handle(&mut ctx.storage, auditor, caller, c),
        Call::Network(n) => ctx.networks.handle(auditor, caller, n).map(CallValue::Network).map_err(CallError::Network),
        // The event loop hands these to the admin module, for admin-socket clients only.
        Call::Admin(_) => Err(CallError::Internal("an admin call outside the admin server".into())),
    }
}

fn bound(max: i32) -> Result<usize, CallError> {
    if !(0..=LIST_MAX).contains(&max) {
        return Err(CallError::InvalidArg(format!("count {max} out of range 0-{LIST_MAX}")));
    }
    Ok(max as usize)
}

fn op_of(call: &Call) -> &'static str {
    match call {
        Call::Define { .. } => "define",
        Call::Undefine { .. } => "undefine",
        Call::SetAutostart { .. } => "autostart",
        Call::SetMetadata { .. } => "metadata",
        Call::SetTuning { .. } => "tune",
        Call::SetMemory { .. } | Call::SetMemoryStatsPeriod { .. } => "memory",
        Call::Pin { .. } => "pin",
        Call::GetTime { .. } => "gettime",
        Call::Create { .. } => "start",
        Call::CreateXml { .. } => "create",
        Call::Destroy { .. } => "destroy",
        Call::Shutdown { .. } => "shutdown",
        Call::Reboot { .. } => "reboot",
        Call::Reset { .. } => "reset",
        Call::Suspend { .. } => "suspend",
        Call::Resume { .. } => "resume",
        Call::OpenConsole { .. } => "console",
        Call::GetDomainCapabilities { .. } => "domcapabilities",
        Call::ChangeDevice { detach: false, .. } => "attach",
        Call::ChangeDevice { detach: true, .. } | Call::DetachAlias { .. } => "detach",
        Call::UpdateDevice { .. } => "update",
        _ => "call",
    }
}
