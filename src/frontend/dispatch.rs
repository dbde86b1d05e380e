//! One incoming packet to one action: answer it here, forward it to the
//! broker as a typed [`Call`], or end the connection.
//!
//! The read-only rule is enforced here, from the access table in `policy/`,
//! before anything reaches the broker (which checks again).

use serde::de::DeserializeOwned;

use super::packets::{ErasedRet, ok_reply};
pub use super::packets::{error_reply, keepalive, stream_packet};
pub use super::session::{Action, Facts, Session};
use super::session::{LIB_VERSION, MAX_CALLBACKS, nonnull};
use crate::privsep::TuneKind;
use crate::privsep::{Call, CallValue, CpuTarget, Query};
use crate::rpc::blockdev::*;
use crate::rpc::cpu;
use crate::rpc::error::RpcError;
use crate::rpc::frame::{
    self, ADMIN_PROGRAM, Header, KEEPALIVE_PROGRAM, LXC_PROGRAM, MessageType, QEMU_PROGRAM, REMOTE_PROGRAM, Status,
};
use crate::rpc::remote::*;
use crate::rpc::stats::*;
use crate::rpc::xdr;

/// Keepalive procedures.
const PING: i32 = 1;
const PONG: i32 = 2;
/// `VIR_CONNECT_RO`.
const CONNECT_RO: u32 = 1;

/// Handles one packet from a client.
pub fn dispatch(s: &mut Session, facts: &Facts, h: &Header, payload: &[u8]) -> Action {
    if h.prog == KEEPALIVE_PROGRAM && h.kind == MessageType::Message {
        return match h.proc_ {
            PING => Action::Send(keepalive(PONG)),
            _ => Action::Nothing,
        };
    }
    match h.kind {
        MessageType::Call => {}
        MessageType::CallWithFds => {
            return Action::Close("file descriptor passing is not supported");
        }
        // The connection matches it to its open stream, or drops it as libvirtd does.
        MessageType::Stream => return Action::Stream(*h, payload.to_vec()),
        MessageType::StreamHole => return Action::Nothing,
        MessageType::Reply | MessageType::ReplyWithFds | MessageType::Message => {
            return Action::Close("unexpected message type from client");
        }
    }
    match call(s, facts, h, payload) {
        Ok(action) => action,
        Err(e @ (RpcError::ReadOnly { .. } | RpcError::SecureXmlReadOnly)) => Action::Denied(error_reply(h, &e)),
        Err(e) => Action::Send(error_reply(h, &e)),
    }
}

fn call(s: &mut Session, facts: &Facts, h: &Header, payload: &[u8]) -> Result<Action, RpcError> {
    let programs: &[u32] = if s.admin { &[ADMIN_PROGRAM] } else { &[REMOTE_PROGRAM, QEMU_PROGRAM, LXC_PROGRAM] };
    if h.vers != frame::PROTOCOL_VERSION || !programs.contains(&h.prog) {
        return Err(RpcError::UnknownProgram { prog: h.prog, vers: h.vers });
    }
    if h.status != Status::Ok as i32 {
        return Err(RpcError::UnexpectedStatus(h.status));
    }
    if s.admin {
        return super::admin::call(s, h, payload);
    }
    // Only libvirt's own procedures; its event messages have no handler in
    // libvirtd either, so calling one is an unknown procedure there too.
    let entry = libvirt_proc(h.proc_)
        .filter(|e| h.prog == REMOTE_PROGRAM && e.status != ProcStatus::Event)
        .ok_or(RpcError::UnknownProcedure(h.proc_))?;
    use RemoteProc as P;
    let served = RemoteProc::from_number(entry.number);
    let before_open = entry.status == ProcStatus::Auth
        || matches!(served, Some(P::AuthList | P::ConnectSupportsFeature | P::ConnectOpen | P::ConnectClose));
    if !s.opened && !before_open {
        return Err(RpcError::NotOpen);
    }
    if s.readonly && entry.access == Access::ReadWrite {
        return Err(RpcError::ReadOnly { api: entry.api, family: entry.family });
    }
    let proc_ = match (served, entry.status) {
        (Some(p), _) => p,
        (None, ProcStatus::Auth) => return Err(RpcError::AuthFailed),
        (None, _) => return Err(RpcError::NoSupport { api: entry.api, family: entry.family }),
    };
    let ok = |v: &dyn ErasedRet| Ok(Action::Send(ok_reply(h, v)?));
    let fwd = |c: Call| Ok(Action::Forward(c));
    match proc_ {
        P::AuthList => ok(&AuthListRet { types: vec![0] }),
        P::ConnectSupportsFeature => {
            let f: IntArg = args(payload)?;
            let supported = match f.value {
                // 16: NETWORK_UPDATE_HAS_CORRECT_ORDER (virNetworkUpdate's
                // command before its section on the wire).
                9 | 14 | 15 | 16 => 1,
                10 => {
                    s.keepalive = true;
                    1
                }
                _ => 0,
            };
            ok(&supported)
        }
        P::ConnectOpen => {
            let a: ConnectOpenArgs = args(payload)?;
            if s.opened {
                return Err(RpcError::AlreadyOpen);
            }
            let name = a.name.unwrap_or_default();
            if !name.is_empty() && !super::uri::names_us(&name, facts.uri) {
                return Err(RpcError::NoDriver(name));
            }
            s.opened = true;
            if a.flags & CONNECT_RO != 0 && !s.readonly {
                s.readonly = true;
                return Ok(Action::BecameReadOnly(ok_reply(h, &())?));
            }
            ok(&())
        }
        P::ConnectClose => {
            args::<()>(payload)?;
            Ok(Action::SendAndClose(ok_reply(h, &())?))
        }
        P::ConnectGetType => ok(&"QEMU"),
        P::ConnectGetVersion => ok(&hypervisor_version()),
        P::ConnectGetLibVersion => ok(&LIB_VERSION),
        P::ConnectGetUri => ok(&facts.uri),
        P::ConnectIsSecure => ok(&i32::from(s.secure)),
        P::ConnectRegisterCloseCallback => {
            s.close_callback = true;
            ok(&())
        }
        P::ConnectUnregisterCloseCallback => {
            s.close_callback = false;
            ok(&())
        }
        P::ConnectDomainEventCallbackRegisterAny => {
            let a: EventRegisterArgs = args(payload)?;
            if s.callbacks.len() >= MAX_CALLBACKS {
                return Err(RpcError::TooManyCallbacks(MAX_CALLBACKS));
            }
            let id = s.next_callback;
            s.next_callback += 1;
            s.callbacks.push((id, a.event_id, a.dom.map(|d| d.uuid.0.into())));
            ok(&id)
        }
        P::ConnectDomainEventCallbackDeregisterAny => {
            let id = args::<IntArg>(payload)?.value;
            let before = s.callbacks.len();
            s.callbacks.retain(|(c, _, _)| *c != id);
            if s.callbacks.len() == before {
                return Err(RpcError::NoCallback(id));
            }
            ok(&())
        }
        // Storage pools and volumes: decoded in their own module.
        P::ConnectNumOfStoragePools
        | P::ConnectListStoragePools
        | P::ConnectNumOfDefinedStoragePools
        | P::ConnectListDefinedStoragePools
        | P::StoragePoolCreateXml
        | P::StoragePoolDefineXml
        | P::StoragePoolCreate
        | P::StoragePoolBuild
        | P::StoragePoolDestroy
        | P::StoragePoolDelete
        | P::StoragePoolUndefine
        | P::StoragePoolRefresh
        | P::StoragePoolLookupByName
        | P::StoragePoolLookupByUuid
        | P::StoragePoolLookupByVolume
        | P::StoragePoolGetInfo
        | P::StoragePoolGetXmlDesc
        | P::StoragePoolGetAutostart
        | P::StoragePoolSetAutostart
        | P::StoragePoolNumOfVolumes
        | P::StoragePoolListVolumes
        | P::StorageVolCreateXml
        | P::StorageVolDelete
        | P::StorageVolLookupByName
        | P::StorageVolLookupByKey
        | P::StorageVolLookupByPath
        | P::StorageVolGetInfo
        | P::StorageVolGetXmlDesc
        | P::StorageVolGetPath
        | P::StorageVolCreateXmlFrom
        | P::StoragePoolIsActive
        | P::StoragePoolIsPersistent
        | P::StorageVolWipe
        | P::StorageVolUpload
        | P::StorageVolDownload
        | P::StorageVolWipePattern
        | P::StorageVolResize
        | P::ConnectListAllStoragePools
        | P::StoragePoolListAllVolumes
        | P::ConnectStoragePoolEventRegisterAny
        | P::ConnectStoragePoolEventDeregisterAny
        | P::StorageVolGetInfoFlags
        | P::StoragePoolLookupByTargetPath
        | P::ConnectGetStoragePoolCapabilities => super::storage::call(s, h, proc_, payload),
        P::NodeGetSecurityModel => ok(&SecurityModelRet { model: c_chars("none"), doi: c_chars("0") }),
        P::ConnectGetHostname => fwd(Call::GetHostname),
        P::ConnectGetCapabilities => fwd(Call::GetCapabilities),
        P::ConnectGetDomainCapabilities => {
            let a: DomainCapabilitiesArgs = args(payload)?;
            fwd(Call::GetDomainCapabilities {
                emulator: a.emulatorbin,
                arch: a.arch,
                machine: a.machine,
                virttype: a.virttype,
                flags: a.flags,
            })
        }
        P::NodeGetInfo => fwd(Call::NodeGetInfo),
        P::NodeGetFreeMemory => fwd(Call::NodeGetFreeMemory),
        P::NodeGetCellsFreeMemory => {
            let a: CellsFreeMemoryArgs = args(payload)?;
            fwd(Call::NodeGetCellsFreeMemory { start: a.start_cell, max: a.maxcells })
        }
        P::ConnectGetMaxVcpus => fwd(Call::GetMaxVcpus { kind: args::<OptStringArg>(payload)?.value }),
        P::ConnectGetSysinfo => fwd(Call::GetSysinfo { flags: args::<FlagsArgs>(payload)?.flags }),
        P::ConnectListAllDomains => {
            let a: ListAllDomainsArgs = args(payload)?;
            fwd(Call::ListAll { flags: a.flags, need_results: a.need_results != 0 })
        }
        P::ConnectNumOfDomains => fwd(Call::NumOfDomains),
        P::ConnectListDomains => fwd(Call::ListDomainIds { max: args::<IntArg>(payload)?.value }),
        P::ConnectNumOfDefinedDomains => fwd(Call::NumOfDefined),
        P::ConnectListDefinedDomains => fwd(Call::ListDefinedNames { max: args::<IntArg>(payload)?.value }),
        P::DomainLookupById => fwd(Call::LookupById(args::<IntArg>(payload)?.value)),
        P::DomainLookupByName => fwd(Call::LookupByName(args::<StringArg>(payload)?.value)),
        P::DomainLookupByUuid => fwd(Call::LookupByUuid(args::<UuidArg>(payload)?.uuid.0.into())),
        P::DomainDefineXml => fwd(Call::Define { xml: args::<StringArg>(payload)?.value, flags: 0 }),
        P::DomainDefineXmlFlags => {
            let a: XmlFlagsArgs = args(payload)?;
            fwd(Call::Define { xml: a.xml, flags: a.flags })
        }
        P::DomainUndefine => fwd(Call::Undefine { uuid: args::<DomainArg>(payload)?.dom.uuid.0.into(), flags: 0 }),
        P::DomainUndefineFlags => {
            let a: DomainFlagsArgs = args(payload)?;
            fwd(Call::Undefine { uuid: a.dom.uuid.0.into(), flags: a.flags })
        }
        P::DomainCreate => fwd(Call::Create { uuid: args::<DomainArg>(payload)?.dom.uuid.0.into(), flags: 0 }),
        P::DomainCreateWithFlags => {
            let a: DomainFlagsArgs = args(payload)?;
            fwd(Call::Create { uuid: a.dom.uuid.0.into(), flags: a.flags })
        }
        P::DomainCreateXml => {
            let a: XmlFlagsArgs = args(payload)?;
            fwd(Call::CreateXml { xml: a.xml, flags: a.flags })
        }
        P::DomainDestroy => fwd(Call::Destroy { uuid: args::<DomainArg>(payload)?.dom.uuid.0.into(), flags: 0 }),
        P::DomainDestroyFlags => {
            let a: DomainFlagsArgs = args(payload)?;
            fwd(Call::Destroy { uuid: a.dom.uuid.0.into(), flags: a.flags })
        }
        P::DomainShutdown => fwd(Call::Shutdown { uuid: args::<DomainArg>(payload)?.dom.uuid.0.into(), flags: 0 }),
        P::DomainShutdownFlags => {
            let a: DomainFlagsArgs = args(payload)?;
            fwd(Call::Shutdown { uuid: a.dom.uuid.0.into(), flags: a.flags })
        }
        P::DomainReboot => {
            let a: DomainFlagsArgs = args(payload)?;
            fwd(Call::Reboot { uuid: a.dom.uuid.0.into(), flags: a.flags })
        }
        P::DomainReset => {
            let a: DomainFlagsArgs = args(payload)?;
            fwd(Call::Reset { uuid: a.dom.uuid.0.into(), flags: a.flags })
        }
        P::DomainSuspend => fwd(Call::Suspend { uuid: args::<DomainArg>(payload)?.dom.uuid.0.into() }),
        P::DomainResume => fwd(Call::Resume { uuid: args::<DomainArg>(payload)?.dom.uuid.0.into() }),
        P::DomainOpenConsole => {
            let a: OpenConsoleArgs = args(payload)?;
            fwd(Call::OpenConsole { uuid: a.dom.uuid.0.into(), flags: a.flags })
        }
        P::DomainSetAutostart => {
            let a: DomainSetAutostartArgs = args(payload)?;
            fwd(Call::SetAutostart { uuid: a.dom.uuid.0.into(), on: a.autostart != 0 })
        }
        P::DomainGetXmlDesc => {
            let a: DomainFlagsArgs = args(payload)?;
            // VIR_DOMAIN_XML_SECURE | VIR_DOMAIN_XML_MIGRATABLE reveal secrets.
            if s.readonly && a.flags & (1 | 8) != 0 {
                return Err(RpcError::SecureXmlReadOnly);
            }
            query(a.dom, Query::XmlDesc { flags: a.flags })
        }
        P::DomainGetInfo => query(args::<DomainArg>(payload)?.dom, Query::Info),
        P::DomainGetState => {
            let a: DomainFlagsArgs = args(payload)?;
            query(a.dom, Query::State { flags: a.flags })
        }
        P::DomainIsActive => query(args::<DomainArg>(payload)?.dom, Query::IsActive),
        P::DomainIsPersistent => query(args::<DomainArg>(payload)?.dom, Query::IsPersistent),
        P::DomainIsUpdated => query(args::<DomainArg>(payload)?.dom, Query::IsUpdated),
        P::DomainGetOsType => query(args::<DomainArg>(payload)?.dom, Query::OsType),
        P::DomainGetMaxMemory => query(args::<DomainArg>(payload)?.dom, Query::MaxMemory),
        P::DomainGetMaxVcpus => query(args::<DomainArg>(payload)?.dom, Query::MaxVcpus),
        P::DomainGetAutostart => query(args::<DomainArg>(payload)?.dom, Query::Autostart),
        P::DomainHasManagedSaveImage => {
            let a: DomainFlagsArgs = args(payload)?;
            query(a.dom, Query::HasManagedSave { flags: a.flags })
        }
        P::DomainGetSecurityLabel => query(args::<DomainArg>(payload)?.dom, Query::SecurityLabel),
        P::DomainGetMessages => {
            let a: DomainFlagsArgs = args(payload)?;
            query(a.dom, Query::Messages { flags: a.flags })
        }
        P::DomainSnapshotNum => {
            let a: DomainFlagsArgs = args(payload)?;
            query(a.dom, Query::SnapshotNum { flags: a.flags })
        }
        P::NodeGetCpuStats => {
            let a: NodeGetCpuStatsArgs = args(payload)?;
            fwd(Call::NodeCpuStats { cpu: a.cpu_num, nparams: a.nparams, flags: a.flags })
        }
        P::NodeGetMemoryStats => {
            let a: NodeGetMemoryStatsArgs = args(payload)?;
            fwd(Call::NodeMemoryStats { cell: a.cell_num, nparams: a.nparams, flags: a.flags })
        }
        P::NodeGetCpuMap => {
            let a: NodeGetCpuMapArgs = args(payload)?;
            fwd(Call::NodeCpuMap { map: a.need_map != 0, online: a.need_online != 0, flags: a.flags })
        }
        P::DomainGetVcpus => {
            let a: DomainGetVcpusArgs = args(payload)?;
            query(a.dom, Query::Vcpus { maxinfo: a.maxinfo, maplen: a.maplen })
        }
        P::DomainGetVcpusFlags => {
            let a: DomainFlagsArgs = args(payload)?;
            // VIR_DOMAIN_VCPU_GUEST asks the guest agent, which libvirt
            // allows read-write connections only.
            if s.readonly && a.flags & 8 != 0 {
                return Err(RpcError::ReadOnly { api: proc_.api(), family: ApiFamily::Domain });
            }
            query(a.dom, Query::VcpusFlags { flags: a.flags })
        }
        P::DomainSetSchedulerParameters => {
            let a: crate::rpc::tuning::SetParamsArgs = args(payload)?;
            set_tuning(a.dom, TuneKind::Scheduler, a.params, 0)
        }
        P::DomainSetSchedulerParametersFlags => {
            let a: crate::rpc::tuning::SetParamsFlagsArgs = args(payload)?;
            set_tuning(a.dom, TuneKind::Scheduler, a.params, a.flags)
        }
        P::DomainSetMemoryParameters => {
            let a: crate::rpc::tuning::SetParamsFlagsArgs = args(payload)?;
            set_tuning(a.dom, TuneKind::Memory, a.params, a.flags)
        }
        P::DomainSetBlkioParameters => {
            let a: crate::rpc::tuning::SetParamsFlagsArgs = args(payload)?;
            set_tuning(a.dom, TuneKind::Blkio, a.params, a.flags)
        }
        P::DomainSetMaxMemory => {
            let a: crate::rpc::tuning::SetMemoryArgs = args(payload)?;
            Ok(Action::Forward(Call::SetMemory { uuid: a.dom.uuid.0.into(), kib: a.memory, flags: 4 }))
        }
        P::DomainSetMemoryStatsPeriod => {
            let a: crate::rpc::tuning::SetMemoryStatsPeriodArgs = args(payload)?;
            Ok(Action::Forward(Call::SetMemoryStatsPeriod {
                uuid: a.dom.uuid.0.into(),
                period: a.period,
                flags: a.flags,
            }))
        }
        P::DomainSetMemoryFlags => {
            let a: crate::rpc::tuning::SetMemoryFlagsArgs = args(payload)?;
            Ok(Action::Forward(Call::SetMemory { uuid: a.dom.uuid.0.into(), kib: a.memory, flags: a.flags }))
        }
        P::DomainGetMemoryParameters => {
            let a: crate::rpc::tuning::GetParamsArgs = args(payload)?;
            query(a.dom, Query::TuningParams { kind: TuneKind::Memory, nparams: a.nparams, flags: a.flags })
        }
        P::DomainGetBlkioParameters => {
            let a: crate::rpc::tuning::GetParamsArgs = args(payload)?;
            query(a.dom, Query::TuningParams { kind: TuneKind::Blkio, nparams: a.nparams, flags: a.flags })
        }
        P::DomainPinVcpu => {
            let a: crate::rpc::tuning::PinVcpuArgs = args(payload)?;
            pin(a.dom, Some(a.vcpu), a.cpumap.0, 0)
        }
        P::DomainPinVcpuFlags => {
            let a: crate::rpc::tuning::PinVcpuFlagsArgs = args(payload)?;
            pin(a.dom, Some(a.vcpu), a.cpumap.0, a.flags)
        }
        P::DomainPinEmulator => {
            let a: crate::rpc::tuning::PinEmulatorArgs = args(payload)?;
            pin(a.dom, None, a.cpumap.0, a.flags)
        }
        P::DomainGetEmulatorPinInfo => {
            let a: crate::rpc::tuning::GetEmulatorPinInfoArgs = args(payload)?;
            query(a.dom, Query::EmulatorPinInfo { maplen: a.maplen, flags: a.flags })
        }
        P::DomainGetVcpuPinInfo => {
            let a: DomainGetVcpuPinInfoArgs = args(payload)?;
            query(a.dom, Query::VcpuPinInfo { ncpumaps: a.ncpumaps, maplen: a.maplen, flags: a.flags })
        }
        P::DomainMemoryStats => {
            let a: DomainMemoryStatsArgs = args(payload)?;
            query(a.dom, Query::MemoryStats { max: a.max_stats, flags: a.flags })
        }
        P::DomainGetCpuStats => {
            let a: DomainGetCpuStatsArgs = args(payload)?;
            let q = Query::CpuStats { nparams: a.nparams, start_cpu: a.start_cpu, ncpus: a.ncpus, flags: a.flags };
            query(a.dom, q)
        }
        P::DomainGetControlInfo => {
            let a: DomainFlagsArgs = args(payload)?;
            query(a.dom, Query::ControlInfo { flags: a.flags })
        }
        P::DomainGetJobInfo => query(args::<DomainArg>(payload)?.dom, Query::JobInfo),
        P::DomainGetJobStats => {
            let a: DomainFlagsArgs = args(payload)?;
            query(a.dom, Query::JobStats { flags: a.flags })
        }
        P::DomainBlockStats => {
            let a: DomainDeviceArgs = args(payload)?;
            fwd(Call::BlockStats { uuid: a.dom.uuid.0.into(), path: a.device, params: None })
        }
        P::DomainBlockStatsFlags => {
            let a: BlockStatsFlagsArgs = args(payload)?;
            fwd(Call::BlockStats { uuid: a.dom.uuid.0.into(), path: a.path, params: Some((a.nparams, a.flags)) })
        }
        P::DomainInterfaceStats => {
            let a: DomainDeviceArgs = args(payload)?;
            fwd(Call::InterfaceStats { uuid: a.dom.uuid.0.into(), device: a.device })
        }
        P::DomainInterfaceAddresses => {
            let a: crate::rpc::stats::InterfaceAddressesArgs = args(payload)?;
            // VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT asks the guest agent,
            // which libvirt allows read-write connections only.
            if s.readonly && a.source == 1 {
                return Err(RpcError::ReadOnly { api: proc_.api(), family: ApiFamily::Domain });
            }
            fwd(Call::InterfaceAddresses { uuid: a.dom.uuid.0.into(), source: a.source, flags: a.flags })
        }
        P::DomainUpdateDeviceFlags => {
            let a: DeviceFlagsArgs = args(payload)?;
            fwd(Call::UpdateDevice { uuid: a.dom.uuid.0.into(), xml: a.xml, flags: a.flags })
        }
        P::DomainGetSchedulerType => query(args::<DomainArg>(payload)?.dom, Query::SchedulerType),
        P::DomainGetSchedulerParameters => {
            let a: SchedulerParamsArgs = args(payload)?;
            query(a.dom, Query::SchedulerParams { nparams: a.nparams, flags: 0 })
        }
        P::DomainGetSchedulerParametersFlags => {
            let a: SchedulerParamsFlagsArgs = args(payload)?;
            query(a.dom, Query::SchedulerParams { nparams: a.nparams, flags: a.flags })
        }
        P::NodeGetFreePages => {
            // unsigned int pages<REMOTE_NODE_MAX_CELLS>: the count is checked
            // before anything is decoded.
            let count = payload.get(..4).map_or(0, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
            if count as usize > NODE_MAX_CELLS {
                return Err(RpcError::Decode);
            }
            let a: NodeGetFreePagesArgs = args(payload)?;
            fwd(Call::NodeFreePages { pages: a.pages, start: a.start_cell, count: a.cell_count, flags: a.flags })
        }
        P::ConnectGetCpuModelNames => {
            let a: CpuModelNamesArgs = args(payload)?;
            fwd(Call::CpuModelNames { arch: a.arch, flags: a.flags })
        }
        P::ConnectCompareCpu => {
            let a: cpu::CompareCpuArgs = args(payload)?;
            fwd(Call::CompareCpu { on: CpuTarget::Host, xml: a.xml, flags: a.flags })
        }
        P::ConnectCompareHypervisorCpu => {
            let a: cpu::CompareHypervisorCpuArgs = args(payload)?;
            let on =
                CpuTarget::Hypervisor { emulator: a.emulator, arch: a.arch, machine: a.machine, virttype: a.virttype };
            fwd(Call::CompareCpu { on, xml: a.xml_cpu, flags: a.flags })
        }
        P::ConnectBaselineCpu => {
            let a: cpu::BaselineCpuArgs = args(payload)?;
            fwd(Call::BaselineCpu { on: CpuTarget::Host, xmls: a.xml_cpus.0, flags: a.flags })
        }
        P::ConnectBaselineHypervisorCpu => {
            let a: cpu::BaselineHypervisorCpuArgs = args(payload)?;
            let on =
                CpuTarget::Hypervisor { emulator: a.emulator, arch: a.arch, machine: a.machine, virttype: a.virttype };
            fwd(Call::BaselineCpu { on, xmls: a.xml_cpus.0, flags: a.flags })
        }
        P::DomainGetTime => {
            let a: DomainFlagsArgs = args(payload)?;
            fwd(Call::GetTime { uuid: a.dom.uuid.0.into(), flags: a.flags })
        }
        P::DomainGetMetadata => {
            let a: DomainGetMetadataArgs = args(payload)?;
            fwd(Call::GetMetadata { uuid: a.dom.uuid.0.into(), kind: a.kind, uri: a.uri, flags: a.flags })
        }
        P::DomainSetMetadata => {
            let a: DomainSetMetadataArgs = args(payload)?;
            fwd(Call::SetMetadata {
                uuid: a.dom.uuid.0.into(),
                kind: a.kind,
                value: a.metadata,
                key: a.key,
                uri: a.uri,
                flags: a.flags,
            })
        }
        P::DomainAttachDevice | P::DomainDetachDevice => {
            let a: DeviceArgs = args(payload)?;
            let detach = proc_ == P::DomainDetachDevice;
            // virDomainAttachDevice is the flags form with VIR_DOMAIN_AFFECT_LIVE.
            fwd(Call::ChangeDevice { uuid: a.dom.uuid.0.into(), xml: a.xml, flags: 1, detach })
        }
        P::DomainAttachDeviceFlags | P::DomainDetachDeviceFlags => {
            let a: DeviceFlagsArgs = args(payload)?;
            let detach = proc_ == P::DomainDetachDeviceFlags;
            fwd(Call::ChangeDevice { uuid: a.dom.uuid.0.into(), xml: a.xml, flags: a.flags, detach })
        }
        P::DomainDetachDeviceAlias => {
            let a: DetachAliasArgs = args(payload)?;
            fwd(Call::DetachAlias { uuid: a.dom.uuid.0.into(), alias: a.alias, flags: a.flags })
        }
        P::DomainGetBlockInfo => {
            let a: BlockInfoArgs = args(payload)?;
            fwd(Call::BlockInfo { uuid: a.dom.uuid.0.into(), path: a.path, flags: a.flags })
        }
        P::DomainGetDiskErrors => {
            let a: DiskErrorsArgs = args(payload)?;
            fwd(Call::DiskErrors { uuid: a.dom.uuid.0.into(), maxerrors: a.maxerrors, flags: a.flags })
        }
        P::ConnectListAllNetworks
        | P::ConnectNumOfNetworks
        | P::ConnectNumOfDefinedNetworks
        | P::ConnectListNetworks
        | P::ConnectListDefinedNetworks
        | P::NetworkLookupByName
        | P::NetworkLookupByUuid
        | P::NetworkDefineXml
        | P::NetworkDefineXmlFlags
        | P::NetworkCreateXml
        | P::NetworkCreateXmlFlags
        | P::NetworkUndefine
        | P::NetworkCreate
        | P::NetworkDestroy
        | P::NetworkSetAutostart
        | P::NetworkGetXmlDesc
        | P::NetworkGetBridgeName
        | P::NetworkGetAutostart
        | P::NetworkIsActive
        | P::NetworkIsPersistent
        | P::NetworkUpdate
        | P::NetworkGetDhcpLeases
        | P::ConnectNetworkEventRegisterAny
        | P::ConnectNetworkEventDeregisterAny => super::network::call(s, h, proc_, payload),
        P::ConnectGetAllDomainStats => {
            // remote_nonnull_domain doms<REMOTE_DOMAIN_LIST_MAX>: the count is
            // checked before anything is decoded.
            let count = payload.get(..4).map_or(0, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
            if count as usize > DOMAIN_LIST_MAX {
                return Err(RpcError::Decode);
            }
            let a: GetAllDomainStatsArgs = args(payload)?;
            let doms = a.doms.into_iter().map(|d| d.uuid.0.into()).collect();
            fwd(Call::DomainStats { doms, stats: a.stats, flags: a.flags })
        }
    }
}

/// A resource-control setter, its parameters bounded in count.
fn set_tuning(
    dom: NonnullDomain,
    kind: TuneKind,
    params: Vec<crate::rpc::admin::TypedParam>,
    flags: u32,
) -> Result<Action, RpcError> {
    let params = super::admin::params_in(params)?;
    Ok(Action::Forward(Call::SetTuning { uuid: dom.uuid.0.into(), kind, params, flags }))
}

/// A vCPU's or the emulator's pinning; a map longer than the most host CPUs
/// a set may name is refused.
fn pin(dom: NonnullDomain, vcpu: Option<u32>, cpumap: Vec<u8>, flags: u32) -> Result<Action, RpcError> {
    if cpumap.len() > crate::domain::tuning::MAX_CPUS as usize / 8 {
        return Err(
            crate::privsep::CallError::InvalidArg("cpumap is longer than the host CPUs it may name".into()).into()
        );
    }
    Ok(Action::Forward(Call::Pin { uuid: dom.uuid.0.into(), vcpu, cpumap, flags }))
}

fn query(dom: NonnullDomain, query: Query) -> Result<Action, RpcError> {
    Ok(Action::Forward(Call::Query { uuid: dom.uuid.0.into(), query }))
}

/// The hypervisor version a `qemu://` client sees: the QEMU release (Debian
/// bookworm's 7.2.0, beside libvirt 9.0) whose libvirt XML defaults and
/// device shapes the daemon follows. Tools gate their choices on it
/// (virt-install makes qcow2 volumes only for QEMU >= 1.2.0), so our own
/// 0.x version would make them write XML for a decade-old QEMU.
fn hypervisor_version() -> u64 {
    QEMU_COMPAT_VERSION
}

/// QEMU 7.2.0 as major * 1e6 + minor * 1e3 + micro.
const QEMU_COMPAT_VERSION: u64 = 7_002_000;

fn args<T: DeserializeOwned>(payload: &[u8]) -> Result<T, RpcError> {
    xdr::from_bytes(payload).map_err(|_| RpcError::Decode)
}

/// Shapes the broker's answer to call `h` into its reply packet.
pub fn reply(h: &Header, result: Result<CallValue, crate::privsep::CallError>) -> Vec<u8> {
    let shaped = result.map_err(RpcError::from).and_then(|v| shape(h, v));
    match shaped {
        Ok(bytes) if bytes.len() > frame::MAX_REPLY => error_reply(h, &RpcError::ReplyTooLarge(bytes.len())),
        Ok(bytes) => bytes,
        Err(e) => error_reply(h, &e),
    }
}

fn shape(h: &Header, v: CallValue) -> Result<Vec<u8>, RpcError> {
    if h.prog == ADMIN_PROGRAM {
        return super::admin::shape_value(h, v);
    }
    use RemoteProc as P;
    let proc_ = RemoteProc::from_number(h.proc_).ok_or(RpcError::Internal("procedure"))?;
    let mismatch = RpcError::Internal(proc_.name());
    match (proc_, v) {
        (p, v @ CallValue::Network(_)) => super::network::shape_value(h, p, v),
        // virDomainCreate has no return value; the client looks the id up itself.
        (P::DomainCreate, _) | (_, CallValue::Unit) => ok_reply(h, &()),
        (_, CallValue::Domain(d)) => ok_reply(h, &DomainRet { dom: nonnull(d) }),
        (P::ConnectListAllDomains, CallValue::Domains { list, count }) => {
            ok_reply(h, &ListAllDomainsRet { domains: list.into_iter().map(nonnull).collect(), ret: count })
        }
        (_, CallValue::Text(t)) => ok_reply(h, &t),
        (P::ConnectGetCpuModelNames, CallValue::Texts(models)) => {
            let ret = i32::try_from(models.len()).map_err(|_| mismatch.clone())?;
            ok_reply(h, &CpuModelNamesRet { models, ret })
        }
        (_, CallValue::Texts(t)) => ok_reply(h, &StringListRet { values: t }),
        (_, CallValue::Ints(i)) => ok_reply(h, &IntListRet { values: i }),
        (_, CallValue::U64s(u)) => ok_reply(h, &U64ListRet { values: u }),
        (P::NodeGetFreeMemory | P::DomainGetMaxMemory, CallValue::Int(n)) => ok_reply(h, &(n as u64)),
        (_, CallValue::Int(n)) => ok_reply(h, &(i32::try_from(n).map_err(|_| mismatch)?)),
        (_, CallValue::NodeInfo(n)) => ok_reply(h, &n),
        (_, CallValue::DomainInfo(i)) => ok_reply(h, &i),
        (_, CallValue::State { state, reason }) => ok_reply(h, &DomainStateRet { state, reason }),
        (_, CallValue::Label { label, enforcing }) => {
            ok_reply(h, &SecurityLabelRet { label: c_chars(&label), enforcing: enforcing.into() })
        }
        // The stream itself is set up by the connection, with the fd that came along.
        (P::DomainOpenConsole, CallValue::Console) => ok_reply(h, &()),
        (_, CallValue::NodeStats { params, count }) => {
            let params = params.into_iter().map(|(field, value)| NodeStat { field, value }).collect();
            ok_reply(h, &NodeStatsRet { params, nparams: count })
        }
        (_, CallValue::CpuMap { map, online, present }) => {
            ok_reply(h, &NodeGetCpuMapRet { cpumap: xdr::Opaque(map.unwrap_or_default()), online, ret: present })
        }
        (_, CallValue::Vcpus { info, cpumaps }) => {
            let info = info
                .into_iter()
                .map(|v| VcpuInfoWire { number: v.number, state: v.state, cpu_time: v.cpu_time, cpu: v.cpu })
                .collect();
            ok_reply(h, &DomainGetVcpusRet { info, cpumaps: xdr::Opaque(cpumaps) })
        }
        (_, CallValue::PinInfo { cpumaps, num }) => {
            ok_reply(h, &DomainGetVcpuPinInfoRet { cpumaps: xdr::Opaque(cpumaps), num })
        }
        (_, CallValue::MemoryStats(stats)) => {
            let stats = stats.into_iter().map(|(tag, val)| MemoryStat { tag, val }).collect();
            ok_reply(h, &DomainMemoryStatsRet { stats })
        }
        (P::DomainGetSchedulerParameters | P::DomainGetSchedulerParametersFlags, CallValue::Params { params, .. }) => {
            let params = params.into_iter().map(super::admin::param_out).collect();
            ok_reply(h, &crate::rpc::admin::ParamsRet { params })
        }
        (_, CallValue::Params { params, count }) => {
            let params = params.into_iter().map(super::admin::param_out).collect();
            ok_reply(h, &ParamsCountRet { params, nparams: count })
        }
        (_, CallValue::ControlInfo { state, details, time_ms }) => {
            ok_reply(h, &DomainGetControlInfoRet { state, details, state_time: time_ms })
        }
        (P::DomainGetJobInfo, CallValue::NoJob) => ok_reply(h, &DomainGetJobInfoRet { kind: 0, figures: [0; 11] }),
        (_, CallValue::NoJob) => ok_reply(h, &DomainGetJobStatsRet { kind: 0, params: Vec::new() }),
        (_, CallValue::DomainStats(records)) => {
            let ret_stats = records
                .into_iter()
                .map(|(d, params)| DomainStatsRecord {
                    dom: nonnull(d),
                    params: params.into_iter().map(super::admin::param_out).collect(),
                })
                .collect();
            ok_reply(h, &GetAllDomainStatsRet { ret_stats })
        }
        (p, CallValue::Storage(v)) => super::storage::shape(h, p, v),
        (_, CallValue::Time { seconds, nseconds }) => ok_reply(h, &DomainGetTimeRet { seconds, nseconds }),
        (_, CallValue::SchedulerType { kind, nparams }) => ok_reply(h, &SchedulerTypeRet { kind, nparams }),
        (P::DomainBlockStats, CallValue::Figures(v)) => {
            ok_reply(h, &BlockStatsRet { values: v.try_into().map_err(|_| mismatch)? })
        }
        (P::DomainInterfaceStats, CallValue::Figures(v)) => {
            ok_reply(h, &InterfaceStatsRet { values: v.try_into().map_err(|_| mismatch)? })
        }
        (_, CallValue::Interfaces(list)) => {
            use crate::rpc::stats::{
                DomainInterfaceWire, INTERFACE_MAX, IP_ADDR_MAX, InterfaceAddressesRet, IpAddrWire,
            };
            let ifaces = list
                .into_iter()
                .take(INTERFACE_MAX)
                .map(|i| DomainInterfaceWire {
                    name: i.name,
                    hwaddr: i.hwaddr,
                    addrs: i
                        .addrs
                        .into_iter()
                        .take(IP_ADDR_MAX)
                        .map(|(kind, addr, prefix)| IpAddrWire { kind, addr, prefix })
                        .collect(),
                })
                .collect();
            ok_reply(h, &InterfaceAddressesRet { ifaces })
        }
        (_, CallValue::BlockInfo { allocation, capacity, physical }) => {
            ok_reply(h, &BlockInfoRet { allocation, capacity, physical })
        }
        (_, CallValue::DiskErrors { errors, count }) => {
            let errors = errors.into_iter().map(|(disk, error)| DiskErrorWire { disk, error }).collect();
            ok_reply(h, &DiskErrorsRet { errors, nerrors: count })
        }
        (_, CallValue::Domains { .. } | CallValue::Console | CallValue::Admin(_) | CallValue::Figures(_)) => {
            Err(mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACTS: Facts = Facts { uri: "qemu:///system" };

    fn call_header(proc_: i32, serial: u32) -> Header {
        Header { prog: REMOTE_PROGRAM, vers: 1, proc_, kind: MessageType::Call, serial, status: 0 }
    }

    fn decode_error(bytes: &[u8]) -> (Header, RemoteError) {
        let (h, payload, _) = frame::split(bytes).unwrap().unwrap();
        assert_eq!(h.status, Status::Error as i32);
        (h, xdr::from_bytes(&bytes[payload]).unwrap())
    }

    fn open(s: &mut Session, flags: u32) -> Action {
        let payload = xdr::to_bytes(&ConnectOpenArgs { name: Some("qemu:///system".into()), flags }).unwrap();
        dispatch(s, &FACTS, &call_header(1, 2), &payload)
    }

    #[test]
    fn auth_list_offers_none_before_open() {
        let mut s = Session::default();
        let Action::Send(bytes) = dispatch(&mut s, &FACTS, &call_header(66, 0), &[]) else { panic!() };
        let (h, payload, _) = frame::split(&bytes).unwrap().unwrap();
        assert_eq!((h.kind, h.serial, h.status), (MessageType::Reply, 0, 0));
        assert_eq!(&bytes[payload], &[0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn hypervisor_calls_need_an_open_connection() {
        let mut s = Session::default();
        let Action::Send(bytes) = dispatch(&mut s, &FACTS, &call_header(273, 3), &[0, 0, 0, 1, 0, 0, 0, 3]) else {
            panic!()
        };
        let (_, e) = decode_error(&bytes);
        assert_eq!(e.message.as_deref(), Some("internal error: hypervisor connection not open"));
        assert!(matches!(open(&mut s, 0), Action::Send(_)));
        assert!(matches!(
            dispatch(&mut s, &FACTS, &call_header(273, 4), &[0, 0, 0, 1, 0, 0, 0, 3]),
            Action::Forward(Call::ListAll { flags: 3, need_results: true })
        ));
        let Action::Send(again) = open(&mut s, 0) else { panic!() };
        assert_eq!(decode_error(&again).1.message.as_deref(), Some("internal error: connection already open"));
    }

    #[test]
    fn a_read_only_connection_is_refused_mutators_with_libvirts_message() {
        let mut s = Session::default();
        assert!(matches!(open(&mut s, CONNECT_RO), Action::BecameReadOnly(_)));
        let payload = xdr::to_bytes(&"<domain/>").unwrap();
        let Action::Denied(bytes) = dispatch(&mut s, &FACTS, &call_header(11, 9), &payload) else { panic!() };
        let (h, e) = decode_error(&bytes);
        assert_eq!(h.serial, 9);
        assert_eq!((e.code, e.domain), (29, 20));
        assert_eq!(e.message.as_deref(), Some("operation forbidden: read only access prevents virDomainDefineXML"));
    }

    #[test]
    fn every_read_write_procedure_is_refused_on_a_read_only_connection() {
        let mut s = Session { opened: true, readonly: true, ..Session::default() };
        for &p in RemoteProc::ALL.iter().filter(|p| p.access() == Access::ReadWrite) {
            let Action::Denied(bytes) = dispatch(&mut s, &FACTS, &call_header(p as i32, 1), &[]) else {
                panic!("{p:?}")
            };
            assert_eq!(decode_error(&bytes).1.code, 29, "{p:?}");
        }
    }

    #[test]
    fn numbers_libvirt_does_not_define_are_unknown_procedures() {
        let mut s = Session { opened: true, ..Session::default() };
        for n in [0, 444, 9999, -1] {
            let Action::Send(bytes) = dispatch(&mut s, &FACTS, &call_header(n, 1), &[]) else { panic!() };
            let (_, e) = decode_error(&bytes);
            assert_eq!((e.code, e.domain), (39, 7));
            assert_eq!(e.message.unwrap(), format!("unknown procedure: {n}"));
        }
    }

    /// What a read-write, opened connection gets for procedure `n` with no arguments.
    fn answer(n: i32) -> Result<Action, Box<RemoteError>> {
        let mut s = Session { opened: true, ..Session::default() };
        match dispatch(&mut s, &FACTS, &call_header(n, 1), &[]) {
            Action::Send(bytes) if frame::split(&bytes).unwrap().unwrap().0.status == Status::Error as i32 => {
                Err(Box::new(decode_error(&bytes).1))
            }
            other => Ok(other),
        }
    }

    #[test]
    fn every_procedure_of_libvirt_is_served_or_answered_as_libvirt_answers_it() {
        for e in LIBVIRT_PROCS {
            let got = answer(e.number);
            let message = got.as_ref().err().and_then(|r| r.message.clone()).unwrap_or_default();
            match e.status {
                // Served: whatever it is, not the unknown-procedure answer.
                ProcStatus::Served => assert!(!message.starts_with("unknown procedure"), "{e:?}: {message}"),
                ProcStatus::Unsupported => {
                    let r = got.expect_err("an error");
                    assert_eq!(r.code, 3, "{e:?}");
                    assert_eq!(
                        r.message.as_deref(),
                        Some(format!("this function is not supported by the connection driver: {}", e.api).as_str())
                    );
                    assert_eq!(r.str2.as_deref(), Some(e.api));
                    assert_ne!(r.domain, 7, "{e:?}: an API's error, not the RPC layer's");
                }
                ProcStatus::Event => assert_eq!(message, format!("unknown procedure: {}", e.number)),
                ProcStatus::Auth => assert_eq!(got.expect_err("an error").code, 45, "{e:?}"),
            }
        }
        let unsupported = LIBVIRT_PROCS.iter().filter(|e| e.status == ProcStatus::Unsupported).count();
        assert!(unsupported > 150, "{unsupported}");
    }

    #[test]
    fn unsupported_procedures_carry_their_apis_error_domain() {
        let domain_of = |n: i32| answer(n).expect_err("an error").domain;
        // virConnectDomainXMLFromNative (libvirt-domain.c), virNetworkCreate
        // (libvirt-network.c), virConnectFindStoragePoolSources (libvirt-storage.c).
        assert_eq!(domain_of(135), 20);
        assert_eq!(domain_of(404), 19);
        assert_eq!(domain_of(75), 18);
    }

    #[test]
    fn read_only_rules_come_before_not_supported() {
        let mut s = Session { opened: true, readonly: true, ..Session::default() };
        for e in LIBVIRT_PROCS.iter().filter(|e| e.status == ProcStatus::Unsupported) {
            let action = dispatch(&mut s, &FACTS, &call_header(e.number, 1), &[]);
            let (Action::Denied(bytes) | Action::Send(bytes)) = action else { panic!("{e:?}") };
            let r = decode_error(&bytes).1;
            match e.access {
                Access::ReadWrite => {
                    assert_eq!(r.code, 29, "{e:?}");
                    assert_eq!(r.message.unwrap(), format!("operation forbidden: read only access prevents {}", e.api));
                }
                Access::ReadOnly => assert_eq!(r.code, 3, "{e:?}"),
            }
        }
        // Before CONNECT_OPEN nothing of the hypervisor's is reached.
        let mut fresh = Session::default();
        let Action::Send(bytes) = dispatch(&mut fresh, &FACTS, &call_header(135, 1), &[]) else { panic!() };
        assert_eq!(decode_error(&bytes).1.message.as_deref(), Some("internal error: hypervisor connection not open"));
    }

    #[test]
    fn a_stats_call_naming_more_domains_than_libvirt_allows_is_refused_undecoded() {
        let mut s = Session { opened: true, readonly: true, ..Session::default() };
        // 16385 domains claimed, none sent: refused on the count alone.
        let mut payload = 16_385u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0; 8]);
        let Action::Send(bytes) = dispatch(&mut s, &FACTS, &call_header(344, 1), &payload) else { panic!() };
        assert_eq!(decode_error(&bytes).1.message.as_deref(), Some("Unable to decode message payload"));
        let dom = NonnullDomain { name: "a".into(), uuid: xdr::FixedOpaque([7; 16]), id: 1 };
        let ok = xdr::to_bytes(&GetAllDomainStatsArgs { doms: vec![dom], stats: 8, flags: 1 << 31 }).unwrap();
        let Action::Forward(call) = dispatch(&mut s, &FACTS, &call_header(344, 2), &ok) else { panic!() };
        assert_eq!(call, Call::DomainStats { doms: vec![crate::domain::Uuid([7; 16])], stats: 8, flags: 1 << 31 });
    }

    #[test]
    fn asking_the_guest_agent_for_vcpus_is_refused_read_only() {
        let mut s = Session { opened: true, readonly: true, ..Session::default() };
        let dom = NonnullDomain { name: "a".into(), uuid: xdr::FixedOpaque([1; 16]), id: 1 };
        let guest = xdr::to_bytes(&DomainFlagsArgs { dom: dom.clone(), flags: 8 }).unwrap();
        let Action::Denied(bytes) = dispatch(&mut s, &FACTS, &call_header(200, 1), &guest) else { panic!() };
        let message = decode_error(&bytes).1.message.unwrap();
        assert_eq!(message, "operation forbidden: read only access prevents virDomainGetVcpusFlags");
        let plain = xdr::to_bytes(&DomainFlagsArgs { dom, flags: 4 }).unwrap();
        assert!(matches!(dispatch(&mut s, &FACTS, &call_header(200, 2), &plain), Action::Forward(_)));
    }

    /// Argument shapes to try on a served procedure until one decodes.
    fn candidate_payloads() -> Vec<Vec<u8>> {
        let dom = NonnullDomain { name: "a".into(), uuid: xdr::FixedOpaque([7; 16]), id: 1 };
        let enc = |v: &dyn ErasedRet| v.encode().unwrap();
        vec![
            Vec::new(),
            enc(&DomainArg { dom: dom.clone() }),
            enc(&DomainFlagsArgs { dom: dom.clone(), flags: 0 }),
            enc(&DomainSetAutostartArgs { dom: dom.clone(), autostart: 1 }),
            enc(&OpenConsoleArgs { dom: dom.clone(), dev_name: None, flags: 0 }),
            enc(&XmlFlagsArgs { xml: "<domain/>".into(), flags: 0 }),
            enc(&StringArg { value: "x".into() }),
            enc(&OptStringArg { value: None }),
            enc(&IntArg { value: 1 }),
            enc(&UuidArg { uuid: xdr::FixedOpaque([7; 16]) }),
            enc(&ListAllDomainsArgs { need_results: 1, flags: 0 }),
            enc(&CellsFreeMemoryArgs { start_cell: 0, maxcells: 1 }),
            enc(&EventRegisterArgs { event_id: 0, dom: None }),
            enc(&ConnectOpenArgs { name: None, flags: 0 }),
            enc(&NodeGetCpuStatsArgs { cpu_num: -1, nparams: 0, flags: 0 }),
            enc(&DomainGetVcpusArgs { dom: dom.clone(), maxinfo: 1, maplen: 1 }),
            enc(&DomainGetVcpuPinInfoArgs { dom: dom.clone(), ncpumaps: 1, maplen: 1, flags: 0 }),
            enc(&DomainGetCpuStatsArgs { dom: dom.clone(), nparams: 0, start_cpu: -1, ncpus: 1, flags: 0 }),
            enc(&GetAllDomainStatsArgs { doms: vec![dom.clone()], stats: 0, flags: 0 }),
            enc(&BlockStatsFlagsArgs { dom: dom.clone(), path: String::new(), nparams: 0, flags: 0 }),
            enc(&SchedulerParamsArgs { dom: dom.clone(), nparams: 1 }),
            enc(&SchedulerParamsFlagsArgs { dom: dom.clone(), nparams: 1, flags: 0 }),
            enc(&NodeGetFreePagesArgs { pages: vec![4], start_cell: 0, cell_count: 1, flags: 0 }),
            enc(&CpuModelNamesArgs { arch: "x86_64".into(), need_results: 1, flags: 0 }),
            enc(&DomainGetMetadataArgs { dom: dom.clone(), kind: 1, uri: None, flags: 0 }),
            enc(&DomainSetMetadataArgs { dom: dom.clone(), kind: 1, metadata: None, key: None, uri: None, flags: 0 }),
            enc(&DomainCapabilitiesArgs { emulatorbin: None, arch: None, machine: None, virttype: None, flags: 0 }),
            enc(&cpu::CompareCpuArgs { xml: "<cpu/>".into(), flags: 0 }),
            enc(&cpu::BaselineCpuArgs { xml_cpus: cpu::CpuXmls(vec!["<cpu/>".into()]), flags: 0 }),
            enc(&cpu::CompareHypervisorCpuArgs {
                emulator: None,
                arch: None,
                machine: None,
                virttype: None,
                xml_cpu: "<cpu/>".into(),
                flags: 0,
            }),
            enc(&cpu::BaselineHypervisorCpuArgs {
                emulator: None,
                arch: None,
                machine: None,
                virttype: None,
                xml_cpus: cpu::CpuXmls(vec!["<cpu/>".into()]),
                flags: 0,
            }),
            enc(&DeviceArgs { dom: dom.clone(), xml: "<disk/>".into() }),
            enc(&DeviceFlagsArgs { dom: dom.clone(), xml: "<disk/>".into(), flags: 2 }),
            enc(&DetachAliasArgs { dom: dom.clone(), alias: "virtio-disk0".into(), flags: 2 }),
            enc(&crate::rpc::stats::InterfaceAddressesArgs { dom: dom.clone(), source: 0, flags: 0 }),
            enc(&BlockInfoArgs { dom: dom.clone(), path: "vda".into(), flags: 0 }),
            enc(&DiskErrorsArgs { dom: dom.clone(), maxerrors: 0, flags: 0 }),
            enc(&crate::rpc::tuning::SetParamsArgs { dom: dom.clone(), params: Vec::new() }),
            enc(&crate::rpc::tuning::SetParamsFlagsArgs { dom: dom.clone(), params: Vec::new(), flags: 0 }),
            enc(&crate::rpc::tuning::GetParamsArgs { dom: dom.clone(), nparams: 0, flags: 0 }),
            enc(&crate::rpc::tuning::PinVcpuArgs { dom: dom.clone(), vcpu: 0, cpumap: xdr::Opaque(vec![1]) }),
            enc(&crate::rpc::tuning::PinVcpuFlagsArgs {
                dom: dom.clone(),
                vcpu: 0,
                cpumap: xdr::Opaque(vec![1]),
                flags: 0,
            }),
            enc(&crate::rpc::tuning::PinEmulatorArgs { dom: dom.clone(), cpumap: xdr::Opaque(vec![1]), flags: 0 }),
            enc(&crate::rpc::tuning::GetEmulatorPinInfoArgs { dom: dom.clone(), maplen: 1, flags: 0 }),
            enc(&crate::rpc::tuning::SetMemoryArgs { dom: dom.clone(), memory: 1024 }),
            enc(&crate::rpc::tuning::SetMemoryFlagsArgs { dom: dom.clone(), memory: 1024, flags: 0 }),
        ]
        .into_iter()
        .chain(crate::frontend::storage::candidate_payloads())
        .chain(network_payloads())
        .collect()
    }

    fn network_payloads() -> Vec<Vec<u8>> {
        use crate::rpc::network::*;
        let net = NonnullNetwork { name: "n".into(), uuid: xdr::FixedOpaque([7; 16]) };
        let enc = |v: &dyn ErasedRet| v.encode().unwrap();
        vec![
            enc(&NetArg { net: net.clone() }),
            enc(&NetFlagsArgs { net: net.clone(), flags: 0 }),
            enc(&NetSetAutostartArgs { net: net.clone(), autostart: 1 }),
            enc(&ListAllNetworksArgs { need_results: 1, flags: 0 }),
            enc(&NetEventRegisterArgs { event_id: 0, net: None }),
            enc(&NetLeasesArgs { net: net.clone(), mac: None, need_results: 1, flags: 0 }),
            enc(&NetUpdateArgs { net, command: 3, section: 4, parent_index: -1, xml: "<host/>".into(), flags: 0 }),
        ]
    }

    /// The read-only rule has one source, the table's access column: the
    /// frontend checks the procedure's row, the broker the row its decoded
    /// call names (`Call::procedure`). Every served procedure must decode
    /// to a call naming its own row, so that the two checks are one.
    #[test]
    fn the_tables_access_column_and_call_mutates_agree() {
        for &p in RemoteProc::ALL {
            let reached = candidate_payloads().into_iter().find_map(|payload| {
                let mut s = Session { opened: true, ..Session::default() };
                match dispatch(&mut s, &FACTS, &call_header(p as i32, 1), &payload) {
                    Action::Forward(call) => Some(Some(call)),
                    Action::Send(bytes) | Action::SendAndClose(bytes) => {
                        let (h, _, _) = frame::split(&bytes).unwrap().unwrap();
                        let failed = h.status == Status::Error as i32;
                        let decode = failed
                            && decode_error(&bytes).1.message.as_deref() == Some("Unable to decode message payload");
                        (!decode).then_some(None)
                    }
                    _ => None,
                }
            });
            match reached {
                Some(Some(call)) => {
                    // The call names its procedure's row (or, for a call that
                    // a flag-less and a flags procedure share, its sibling's),
                    // and the broker's rule is that row's access column.
                    let q = call.procedure().unwrap_or_else(|| panic!("{p:?}: {call:?} names no procedure"));
                    let stem = |p: RemoteProc| p.api().trim_end_matches("Flags").trim_end_matches("With").to_owned();
                    assert_eq!(stem(q), stem(p), "{p:?} decodes to a call of {q:?}");
                    assert_eq!(q.access(), p.access(), "{p:?}: {call:?}");
                    assert_eq!(call.mutates(), p.access() == Access::ReadWrite, "{p:?}: {call:?}");
                }
                // Answered by the frontend itself: never a change.
                Some(None) => assert_eq!(p.access(), Access::ReadOnly, "{p:?}"),
                None => panic!("{p:?}: no candidate payload decodes; add its argument shape"),
            }
        }
    }

    #[test]
    fn keepalive_pings_are_answered_with_pongs() {
        let mut s = Session::default();
        let ping =
            Header { prog: KEEPALIVE_PROGRAM, vers: 1, proc_: PING, kind: MessageType::Message, serial: 0, status: 0 };
        let pong = [0, 0, 0, 0x1c, 0x6b, 0x65, 0x65, 0x70, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(dispatch(&mut s, &FACTS, &ping, &[]), Action::Send(pong.to_vec()));
    }

    #[test]
    fn garbage_arguments_are_a_decode_error() {
        let mut s = Session { opened: true, ..Session::default() };
        let Action::Send(bytes) = dispatch(&mut s, &FACTS, &call_header(23, 1), &[0xff, 0xff, 0xff, 0xff]) else {
            panic!()
        };
        assert_eq!(decode_error(&bytes).1.message.as_deref(), Some("Unable to decode message payload"));
    }

    #[test]
    fn secure_xml_is_refused_read_only() {
        let mut s = Session { opened: true, readonly: true, ..Session::default() };
        let dom = NonnullDomain { name: "a".into(), uuid: xdr::FixedOpaque([1; 16]), id: -1 };
        let payload = xdr::to_bytes(&DomainFlagsArgs { dom, flags: 1 }).unwrap();
        let Action::Denied(bytes) = dispatch(&mut s, &FACTS, &call_header(14, 1), &payload) else { panic!() };
        assert_eq!(
            decode_error(&bytes).1.message.as_deref(),
            Some("operation forbidden: virDomainGetXMLDesc with secure flag")
        );
    }
}
