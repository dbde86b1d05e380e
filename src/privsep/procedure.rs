//! Which REMOTE procedure each hypervisor call carries out, so that a
//! call's access rule and API name come from its row of
//! `policy/procedures.tsv` and nowhere else: the frontend refuses a
//! read-write procedure on a read-only connection by the table, and the
//! broker refuses the same call by the same row. A new [`Call`] variant
//! does not compile until it names its procedure here.

use super::calls::{Call, CpuTarget, Query, TuneKind};
use crate::rpc::remote::{Access, RemoteProc};

impl Call {
    /// The procedure this call carries out; `None` for an admin call,
    /// which is the ADMIN program's (`policy/admin_procedures.tsv`).
    pub fn procedure(&self) -> Option<RemoteProc> {
        use RemoteProc as P;
        Some(match self {
            Call::GetHostname => P::ConnectGetHostname,
            Call::GetCapabilities => P::ConnectGetCapabilities,
            Call::GetDomainCapabilities { .. } => P::ConnectGetDomainCapabilities,
            Call::NodeGetInfo => P::NodeGetInfo,
            Call::NodeGetFreeMemory => P::NodeGetFreeMemory,
            Call::NodeGetCellsFreeMemory { .. } => P::NodeGetCellsFreeMemory,
            Call::GetMaxVcpus { .. } => P::ConnectGetMaxVcpus,
            Call::GetSysinfo { .. } => P::ConnectGetSysinfo,
            Call::ListAll { .. } => P::ConnectListAllDomains,
            Call::NumOfDomains => P::ConnectNumOfDomains,
            Call::ListDomainIds { .. } => P::ConnectListDomains,
            Call::NumOfDefined => P::ConnectNumOfDefinedDomains,
            Call::ListDefinedNames { .. } => P::ConnectListDefinedDomains,
            Call::LookupById(_) => P::DomainLookupById,
            Call::LookupByName(_) => P::DomainLookupByName,
            Call::LookupByUuid(_) => P::DomainLookupByUuid,
            Call::Define { flags: 0, .. } => P::DomainDefineXml,
            Call::Define { .. } => P::DomainDefineXmlFlags,
            Call::Undefine { .. } => P::DomainUndefineFlags,
            Call::Create { flags: 0, .. } => P::DomainCreate,
            Call::Create { .. } => P::DomainCreateWithFlags,
            Call::CreateXml { .. } => P::DomainCreateXml,
            Call::Destroy { flags: 0, .. } => P::DomainDestroy,
            Call::Destroy { .. } => P::DomainDestroyFlags,
            Call::Shutdown { flags: 0, .. } => P::DomainShutdown,
            Call::Shutdown { .. } => P::DomainShutdownFlags,
            Call::Reboot { .. } => P::DomainReboot,
            Call::Reset { .. } => P::DomainReset,
            Call::Suspend { .. } => P::DomainSuspend,
            Call::Resume { .. } => P::DomainResume,
            Call::OpenConsole { .. } => P::DomainOpenConsole,
            Call::SetAutostart { .. } => P::DomainSetAutostart,
            Call::Query { query, .. } => query.procedure(),
            Call::NodeCpuStats { .. } => P::NodeGetCpuStats,
            Call::NodeMemoryStats { .. } => P::NodeGetMemoryStats,
            Call::NodeCpuMap { .. } => P::NodeGetCpuMap,
            Call::DomainStats { .. } => P::ConnectGetAllDomainStats,
            Call::BlockStats { params: None, .. } => P::DomainBlockStats,
            Call::BlockStats { .. } => P::DomainBlockStatsFlags,
            Call::InterfaceStats { .. } => P::DomainInterfaceStats,
            Call::InterfaceAddresses { .. } => P::DomainInterfaceAddresses,
            Call::UpdateDevice { .. } => P::DomainUpdateDeviceFlags,
            Call::NodeFreePages { .. } => P::NodeGetFreePages,
            Call::CpuModelNames { .. } => P::ConnectGetCpuModelNames,
            Call::GetTime { .. } => P::DomainGetTime,
            Call::GetMetadata { .. } => P::DomainGetMetadata,
            Call::SetMetadata { .. } => P::DomainSetMetadata,
            Call::Storage(c) => c.procedure(),
            Call::SetTuning { kind: TuneKind::Scheduler, .. } => P::DomainSetSchedulerParametersFlags,
            Call::SetTuning { kind: TuneKind::Memory, .. } => P::DomainSetMemoryParameters,
            Call::SetTuning { kind: TuneKind::Blkio, .. } => P::DomainSetBlkioParameters,
            // virDomainSetMaxMemory is the flags form with VIR_DOMAIN_MEM_MAXIMUM alone.
            Call::SetMemory { flags: 4, .. } => P::DomainSetMaxMemory,
            Call::SetMemory { .. } => P::DomainSetMemoryFlags,
            Call::SetMemoryStatsPeriod { .. } => P::DomainSetMemoryStatsPeriod,
            Call::Pin { vcpu: Some(_), .. } => P::DomainPinVcpuFlags,
            Call::Pin { vcpu: None, .. } => P::DomainPinEmulator,
            Call::Network(n) => n.procedure(),
            Call::ChangeDevice { detach: false, .. } => P::DomainAttachDeviceFlags,
            Call::ChangeDevice { detach: true, .. } => P::DomainDetachDeviceFlags,
            Call::DetachAlias { .. } => P::DomainDetachDeviceAlias,
            Call::BlockInfo { .. } => P::DomainGetBlockInfo,
            Call::DiskErrors { .. } => P::DomainGetDiskErrors,
            Call::CompareCpu { on: CpuTarget::Host, .. } => P::ConnectCompareCpu,
            Call::CompareCpu { .. } => P::ConnectCompareHypervisorCpu,
            Call::BaselineCpu { on: CpuTarget::Host, .. } => P::ConnectBaselineCpu,
            Call::BaselineCpu { .. } => P::ConnectBaselineHypervisorCpu,
            Call::Admin(_) => return None,
        })
    }

    /// Whether the call needs a read-write connection (its procedure's
    /// access class; every admin call does); refused on read-only ones
    /// by the frontend first, and by the broker again.
    pub fn mutates(&self) -> bool {
        self.procedure().is_none_or(|p| p.access() == Access::ReadWrite)
    }

    /// The public C API the call implements, as a refusal names it.
    pub fn api(&self) -> &'static str {
        self.procedure().map_or("this call", RemoteProc::api)
    }
}

impl Query {
    /// The procedure this query answers.
    pub fn procedure(&self) -> RemoteProc {
        use RemoteProc as P;
        match self {
            Query::Info => P::DomainGetInfo,
            Query::State { .. } => P::DomainGetState,
            Query::IsActive => P::DomainIsActive,
            Query::IsPersistent => P::DomainIsPersistent,
            Query::IsUpdated => P::DomainIsUpdated,
            Query::OsType => P::DomainGetOsType,
            Query::MaxMemory => P::DomainGetMaxMemory,
            Query::MaxVcpus => P::DomainGetMaxVcpus,
            Query::Autostart => P::DomainGetAutostart,
            Query::HasManagedSave { .. } => P::DomainHasManagedSaveImage,
            Query::SecurityLabel => P::DomainGetSecurityLabel,
            Query::Messages { .. } => P::DomainGetMessages,
            Query::SnapshotNum { .. } => P::DomainSnapshotNum,
            Query::XmlDesc { .. } => P::DomainGetXmlDesc,
            Query::Vcpus { .. } => P::DomainGetVcpus,
            Query::VcpusFlags { .. } => P::DomainGetVcpusFlags,
            Query::VcpuPinInfo { .. } => P::DomainGetVcpuPinInfo,
            Query::MemoryStats { .. } => P::DomainMemoryStats,
            Query::CpuStats { .. } => P::DomainGetCpuStats,
            Query::ControlInfo { .. } => P::DomainGetControlInfo,
            Query::JobInfo => P::DomainGetJobInfo,
            Query::SchedulerType => P::DomainGetSchedulerType,
            Query::SchedulerParams { flags: 0, .. } => P::DomainGetSchedulerParameters,
            Query::SchedulerParams { .. } => P::DomainGetSchedulerParametersFlags,
            Query::JobStats { .. } => P::DomainGetJobStats,
            Query::TuningParams { kind: TuneKind::Memory, .. } => P::DomainGetMemoryParameters,
            Query::TuningParams { kind: TuneKind::Blkio, .. } => P::DomainGetBlkioParameters,
            Query::TuningParams { kind: TuneKind::Scheduler, .. } => P::DomainGetSchedulerParametersFlags,
            Query::EmulatorPinInfo { .. } => P::DomainGetEmulatorPinInfo,
        }
    }
}
