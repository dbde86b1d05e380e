//! The hypervisor calls the frontend forwards to the broker, their results and
//! their typed failures. The frontend decodes a client's XDR into a [`Call`];
//! the broker never sees client bytes.

use serde::{Deserialize, Serialize};

use crate::rpc::remote::{DomainInfoRet, NodeInfoRet};

/// A domain handle as it goes back to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRef {
    /// Name.
    pub name: String,
    /// Raw UUID.
    pub uuid: crate::domain::Uuid,
    /// Running id, -1 when inactive.
    pub id: i32,
}

/// A domain event, for clients that registered for its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainEvent {
    /// The domain, as it is after the event.
    pub dom: DomainRef,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of domain event the daemon sends (each a `virDomainEventID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// `VIR_DOMAIN_EVENT_ID_LIFECYCLE`: `virDomainEventType` and detail.
    Lifecycle {
        /// `virDomainEventType`.
        event: i32,
        /// Its detail.
        detail: i32,
    },
    /// `VIR_DOMAIN_EVENT_ID_METADATA_CHANGE`: which metadata changed.
    MetadataChange {
        /// `virDomainMetadataType`.
        kind: i32,
        /// The namespace, for an element.
        uri: Option<String>,
    },
    /// `VIR_DOMAIN_EVENT_ID_REBOOT`: the guest reset and runs on (its own
    /// reboot, or `virDomainReset`), as QEMU's RESET makes libvirt send.
    Reboot,
    /// `VIR_DOMAIN_EVENT_ID_CONTROL_ERROR`: the daemon lost control of the
    /// guest's helper (it died unexpectedly or speaks no protocol of ours).
    ControlError,
    /// `VIR_DOMAIN_EVENT_ID_IO_ERROR` (`reason` `None`) or
    /// `VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON`: a disk's backend failed a
    /// request; the guest got the error status and runs on.
    IoError {
        /// The disk's source path.
        path: String,
        /// Its alias (`virtio-disk0`).
        alias: String,
        /// `virDomainEventIOErrorAction`.
        action: i32,
        /// The backend's error, for the REASON event.
        reason: Option<String>,
    },
    /// `VIR_DOMAIN_EVENT_ID_RTC_CHANGE`: the guest set its clock; `offset`
    /// as libvirt's QEMU driver reports it (see `broker/rtc.rs`).
    RtcChange {
        /// Seconds.
        offset: i64,
    },
}

/// A question about one domain, identified by UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// `virDomainGetInfo`.
    Info,
    /// `virDomainGetState`.
    State {
        /// Must be 0.
        flags: u32,
    },
    /// `virDomainIsActive`.
    IsActive,
    /// `virDomainIsPersistent`.
    IsPersistent,
    /// `virDomainIsUpdated`.
    IsUpdated,
    /// `virDomainGetOSType`.
    OsType,
    /// `virDomainGetMaxMemory`.
    MaxMemory,
    /// `virDomainGetMaxVcpus`.
    MaxVcpus,
    /// `virDomainGetAutostart`.
    Autostart,
    /// `virDomainHasManagedSaveImage`.
    HasManagedSave {
        /// Must be 0.
        flags: u32,
    },
    /// `virDomainGetSecurityLabel`.
    SecurityLabel,
    /// `virDomainGetMessages`.
    Messages {
        /// Message kinds.
        flags: u32,
    },
    /// `virDomainSnapshotNum`.
    SnapshotNum {
        /// Snapshot filter flags.
        flags: u32,
    },
    /// `virDomainGetXMLDesc`.
    XmlDesc {
        /// `virDomainXMLFlags`.
        flags: u32,
    },
    /// `virDomainGetVcpus`: each running vCPU's figures and affinity.
    Vcpus {
        /// Most vCPUs to report.
        maxinfo: i32,
        /// Bytes of affinity map per vCPU.
        maplen: i32,
    },
    /// `virDomainGetVcpusFlags`.
    VcpusFlags {
        /// `virDomainVcpuFlags`.
        flags: u32,
    },
    /// `virDomainGetVcpuPinInfo`.
    VcpuPinInfo {
        /// Most vCPUs to report.
        ncpumaps: i32,
        /// Bytes of map per vCPU.
        maplen: i32,
        /// `virDomainModificationImpact`.
        flags: u32,
    },
    /// `virDomainMemoryStats`.
    MemoryStats {
        /// Most statistics to report.
        max: u32,
        /// Must be 0.
        flags: u32,
    },
    /// `virDomainGetCPUStats`.
    CpuStats {
        /// Parameters per CPU the client has room for (0: how many there are).
        nparams: u32,
        /// First host CPU, or -1 for the total.
        start_cpu: i32,
        /// Host CPUs (0: how many the host has).
        ncpus: u32,
        /// `VIR_TYPED_PARAM_STRING_OKAY` only.
        flags: u32,
    },
    /// `virDomainGetControlInfo`.
    ControlInfo {
        /// Must be 0.
        flags: u32,
    },
    /// `virDomainGetJobInfo`.
    JobInfo,
    /// `virDomainGetSchedulerType`.
    SchedulerType,
    /// `virDomainGetSchedulerParameters(Flags)`.
    SchedulerParams {
        /// Most parameters to report.
        nparams: i32,
        /// `virDomainModificationImpact` and `VIR_TYPED_PARAM_STRING_OKAY`.
        flags: u32,
    },
    /// `virDomainGet{Memory,Blkio}Parameters`.
    TuningParams {
        /// Which parameters.
        kind: TuneKind,
        /// Most parameters to report (0: how many there are).
        nparams: i32,
        /// `virDomainModificationImpact` and `VIR_TYPED_PARAM_STRING_OKAY`.
        flags: u32,
    },
    /// `virDomainGetEmulatorPinInfo`.
    EmulatorPinInfo {
        /// Bytes of map wanted.
        maplen: i32,
        /// `virDomainModificationImpact`.
        flags: u32,
    },
    /// `virDomainGetJobStats`.
    JobStats {
        /// `virDomainGetJobStatsFlags`.
        flags: u32,
    },
}

/// Which resource controls a parameter call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TuneKind {
    /// `<cputune>`: `virDomain{Get,Set}SchedulerParameters`.
    Scheduler,
    /// `<memtune>`: `virDomain{Get,Set}MemoryParameters`.
    Memory,
    /// `<blkiotune>`: `virDomain{Get,Set}BlkioParameters`.
    Blkio,
}

/// Everything a client may ask of the broker through the frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// `virConnectGetHostname`.
    GetHostname,
    /// `virConnectGetCapabilities`.
    GetCapabilities,
    /// `virConnectGetDomainCapabilities`.
    GetDomainCapabilities {
        /// Emulator binary: refused if given (there is none to name).
        emulator: Option<String>,
        /// Architecture.
        arch: Option<String>,
        /// Machine type.
        machine: Option<String>,
        /// Virtualization type.
        virttype: Option<String>,
        /// Must be 0.
        flags: u32,
    },
    /// `virNodeGetInfo`.
    NodeGetInfo,
    /// `virNodeGetFreeMemory`.
    NodeGetFreeMemory,
    /// `virNodeGetCellsFreeMemory`.
    NodeGetCellsFreeMemory {
        /// First cell.
        start: i32,
        /// Most cells.
        max: i32,
    },
    /// `virConnectGetMaxVcpus`.
    GetMaxVcpus {
        /// Hypervisor type, if given.
        kind: Option<String>,
    },
    /// `virConnectGetSysinfo`.
    GetSysinfo {
        /// Must be 0.
        flags: u32,
    },
    /// `virConnectListAllDomains`.
    ListAll {
        /// Filter flags.
        flags: u32,
        /// Whether the domains themselves are wanted.
        need_results: bool,
    },
    /// `virConnectNumOfDomains`.
    NumOfDomains,
    /// `virConnectListDomains`.
    ListDomainIds {
        /// Most ids.
        max: i32,
    },
    /// `virConnectNumOfDefinedDomains`.
    NumOfDefined,
    /// `virConnectListDefinedDomains`.
    ListDefinedNames {
        /// Most names.
        max: i32,
    },
    /// `virDomainLookupByID`.
    LookupById(i32),
    /// `virDomainLookupByName`.
    LookupByName(String),
    /// `virDomainLookupByUUID`.
    LookupByUuid(crate::domain::Uuid),
    /// `virDomainDefineXML(Flags)`.
    Define {
        /// The XML.
        xml: String,
        /// `virDomainDefineFlags`.
        flags: u32,
    },
    /// `virDomainUndefine(Flags)`.
    Undefine {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// `virDomainUndefineFlagsValues`.
        flags: u32,
    },
    /// `virDomainCreate(WithFlags)`: start a defined domain.
    Create {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// `virDomainCreateFlags`.
        flags: u32,
    },
    /// `virDomainCreateXML`: start a transient domain.
    CreateXml {
        /// The XML.
        xml: String,
        /// `virDomainCreateFlags`.
        flags: u32,
    },
    /// `virDomainDestroy(Flags)`: stop a running domain now.
    Destroy {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// `virDomainDestroyFlagsValues`.
        flags: u32,
    },
    /// `virDomainShutdown(Flags)`: ask the guest to power off.
    Shutdown {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// `virDomainShutdownFlagValues`.
        flags: u32,
    },
    /// `virDomainReboot`: ask the guest to reboot.
    Reboot {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// `virDomainRebootFlagValues`.
        flags: u32,
    },
    /// `virDomainReset`: hard reset.
    Reset {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// Must be 0.
        flags: u32,
    },
    /// `virDomainSuspend`: stop every vCPU.
    Suspend {
        /// The domain.
        uuid: crate::domain::Uuid,
    },
    /// `virDomainResume`: let the vCPUs run again.
    Resume {
        /// The domain.
        uuid: crate::domain::Uuid,
    },
    /// `virDomainOpenConsole`: the guest console's fd comes back with the answer.
    OpenConsole {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// `virDomainConsoleFlags` (FORCE takes it from another client).
        flags: u32,
    },
    /// `virDomainSetAutostart`.
    SetAutostart {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// On or off.
        on: bool,
    },
    /// A read-only question about one domain.
    Query {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// The question.
        query: Query,
    },
    /// `virNodeGetCPUStats`.
    NodeCpuStats {
        /// A host CPU, or -1 for all.
        cpu: i32,
        /// Parameters the client has room for (0: how many there are).
        nparams: i32,
        /// Must be 0.
        flags: u32,
    },
    /// `virNodeGetMemoryStats`.
    NodeMemoryStats {
        /// A NUMA cell, or -1 for all.
        cell: i32,
        /// Parameters the client has room for (0: how many there are).
        nparams: i32,
        /// Must be 0.
        flags: u32,
    },
    /// `virNodeGetCPUMap`.
    NodeCpuMap {
        /// The map of online CPUs is wanted.
        map: bool,
        /// Their count is wanted.
        online: bool,
        /// Must be 0.
        flags: u32,
    },
    /// `virConnectGetAllDomainStats` and `virDomainListGetStats`.
    DomainStats {
        /// Only these domains (all when empty); ones gone are skipped.
        doms: Vec<crate::domain::Uuid>,
        /// `virDomainStatsTypes` groups (0: every group the daemon fills).
        stats: u32,
        /// `virConnectGetAllDomainStatsFlags`.
        flags: u32,
    },
    /// `virDomainBlockStats` (`params` `None`) and `virDomainBlockStatsFlags`.
    BlockStats {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// Disk target or path, "" for every disk (a name, never opened).
        path: String,
        /// `nparams` and flags of `virDomainBlockStatsFlags`.
        params: Option<(i32, u32)>,
    },
    /// `virDomainInterfaceStats`.
    InterfaceStats {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// Interface name or MAC (compared, never opened).
        device: String,
    },
    /// `virDomainInterfaceAddresses`.
    InterfaceAddresses {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// `virDomainInterfaceAddressesSource`.
        source: u32,
        /// Must be 0.
        flags: u32,
    },
    /// `virDomainUpdateDeviceFlags` (an interface's link state).
    UpdateDevice {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// The device's XML.
        xml: String,
        /// `virDomainDeviceModifyFlags`.
        flags: u32,
    },
    /// `virNodeGetFreePages`.
    NodeFreePages {
        /// Page sizes, KiB (at most `REMOTE_NODE_MAX_CELLS`).
        pages: Vec<u32>,
        /// First cell.
        start: i32,
        /// Most cells.
        count: u32,
        /// Must be 0.
        flags: u32,
    },
    /// `virConnectGetCPUModelNames`.
    CpuModelNames {
        /// Architecture.
        arch: String,
        /// Must be 0.
        flags: u32,
    },
    /// `virDomainGetTime`: asks the guest agent, so read-write only, as in libvirt.
    GetTime {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// Must be 0.
        flags: u32,
    },
    /// `virDomainGetMetadata`.
    GetMetadata {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// `virDomainMetadataType`.
        kind: i32,
        /// The namespace, for an element.
        uri: Option<String>,
        /// `virDomainModificationImpact`.
        flags: u32,
    },
    /// `virDomainSet{Scheduler,Memory,Blkio}Parameters(Flags)`.
    SetTuning {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// Which parameters.
        kind: TuneKind,
        /// Their new values.
        params: Vec<crate::privsep::admin::Param>,
        /// `virDomainModificationImpact`.
        flags: u32,
    },
    /// `virDomainSetMemoryFlags` and `virDomainSetMaxMemory`.
    SetMemory {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// KiB.
        kib: u64,
        /// `virDomainMemoryModFlags`.
        flags: u32,
    },
    /// `virDomainPinVcpu(Flags)`, and `virDomainPinEmulator` (`vcpu` `None`).
    Pin {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// The vCPU, or the emulator threads.
        vcpu: Option<u32>,
        /// Host CPUs, one bit each.
        cpumap: Vec<u8>,
        /// `virDomainModificationImpact`.
        flags: u32,
    },
    /// `virDomainSetMetadata`.
    SetMetadata {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// `virDomainMetadataType`.
        kind: i32,
        /// The new value; `None` removes it.
        value: Option<String>,
        /// The namespace prefix, for an element.
        key: Option<String>,
        /// The namespace, for an element.
        uri: Option<String>,
        /// `virDomainModificationImpact`.
        flags: u32,
    },
    /// `virConnectCompareCPU`, `virConnectCompareHypervisorCPU`.
    CompareCpu {
        /// The host's CPU, or the one the hypervisor gives guests.
        on: CpuTarget,
        /// The CPU's XML.
        xml: String,
        /// `virConnectCompareCPUFlags`.
        flags: u32,
    },
    /// `virConnectBaselineCPU`, `virConnectBaselineHypervisorCPU`.
    BaselineCpu {
        /// The host's CPU, or the one the hypervisor gives guests.
        on: CpuTarget,
        /// The CPUs' XML (at most `rpc::cpu::BASELINE_MAX`).
        xmls: Vec<String>,
        /// `virConnectBaselineCPUFlags`.
        flags: u32,
    },
    /// `virDomainAttachDevice(Flags)` and `virDomainDetachDevice(Flags)`
    /// (the forms without flags come as `VIR_DOMAIN_AFFECT_LIVE`).
    ChangeDevice {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// The device's XML.
        xml: String,
        /// `virDomainDeviceModifyFlags`.
        flags: u32,
        /// Detach rather than attach.
        detach: bool,
    },
    /// `virDomainDetachDeviceAlias`.
    DetachAlias {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// The device's alias.
        alias: String,
        /// `virDomainDeviceModifyFlags`.
        flags: u32,
    },
    /// `virDomainGetBlockInfo`.
    BlockInfo {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// Disk target or source path (compared with the definition, never opened).
        path: String,
        /// Must be 0.
        flags: u32,
    },
    /// `virDomainGetDiskErrors`.
    DiskErrors {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// Room for this many; 0 asks how many there are.
        maxerrors: u32,
        /// Must be 0.
        flags: u32,
    },
    /// A daemon-administration call from an admin-socket client.
    Admin(super::admin::AdminCall),
    /// A storage pool or volume call.
    Storage(super::storage::StorageCall),
    /// A virtual-network call (libvirt's network driver).
    Network(super::network::NetCall),
    /// `virDomainSetMemoryStatsPeriod`.
    SetMemoryStatsPeriod {
        /// The domain.
        uuid: crate::domain::Uuid,
        /// Seconds; 0 stops the collection, below 0 is refused.
        period: i32,
        /// `virDomainMemoryModFlags`.
        flags: u32,
    },
}

/// Which CPU a comparison or baseline is against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTarget {
    /// The host's (`virConnectCompareCPU`).
    Host,
    /// What the hypervisor offers guests of this kind
    /// (`virConnectCompareHypervisorCPU`); read-write, as in libvirt, since
    /// it names an emulator.
    Hypervisor {
        /// Emulator binary.
        emulator: Option<String>,
        /// Architecture.
        arch: Option<String>,
        /// Machine type.
        machine: Option<String>,
        /// Virtualization type.
        virttype: Option<String>,
    },
}

/// One interface of `virDomainInterfaceAddresses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceAddrs {
    /// Its host-side name (the tap).
    pub name: String,
    /// Its MAC.
    pub hwaddr: Option<String>,
    /// Each address: `virIPAddrType`, the address, its prefix length.
    pub addrs: Vec<(i32, String, u32)>,
}

/// A call's result; the frontend shapes it into the procedure's XDR reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallValue {
    /// No value.
    Unit,
    /// One domain.
    Domain(DomainRef),
    /// Domains and how many matched.
    Domains {
        /// The domains (empty if not asked for).
        list: Vec<DomainRef>,
        /// The number that matched.
        count: u32,
    },
    /// A string.
    Text(String),
    /// Strings.
    Texts(Vec<String>),
    /// A number.
    Int(i64),
    /// Numbers.
    Ints(Vec<i32>),
    /// Unsigned 64-bit numbers.
    U64s(Vec<u64>),
    /// Host facts, already in their wire shape.
    NodeInfo(NodeInfoRet),
    /// Domain facts, already in their wire shape.
    DomainInfo(DomainInfoRet),
    /// State and reason.
    State {
        /// `virDomainState`.
        state: i32,
        /// Reason.
        reason: i32,
    },
    /// The guest console: one fd travels with the reply.
    Console,
    /// Security label.
    Label {
        /// Label text.
        label: String,
        /// Enforced.
        enforcing: bool,
    },
    /// An administration call's result.
    Admin(super::admin::AdminValue),
    /// Named host figures (`virNodeGetCPUStats`, `virNodeGetMemoryStats`),
    /// and how many there are.
    NodeStats {
        /// (field, value), empty when only the count was asked.
        params: Vec<(String, u64)>,
        /// How many fields the host reports.
        count: i32,
    },
    /// `virNodeGetCPUMap`.
    CpuMap {
        /// Online CPUs, one bit each, if asked for.
        map: Option<Vec<u8>>,
        /// How many are online.
        online: u32,
        /// How many are present (the map's size in bits).
        present: i32,
    },
    /// `virDomainGetVcpus`.
    Vcpus {
        /// One per vCPU reported.
        info: Vec<VcpuInfo>,
        /// `maplen` bytes of affinity per vCPU reported.
        cpumaps: Vec<u8>,
    },
    /// `virDomainGetVcpuPinInfo`.
    PinInfo {
        /// `maplen` bytes per vCPU.
        cpumaps: Vec<u8>,
        /// vCPUs reported.
        num: i32,
    },
    /// `virDomainMemoryStats`: (`virDomainMemoryStatTags`, value).
    MemoryStats(Vec<(i32, u64)>),
    /// Typed parameters and the count the call returns
    /// (`virDomainGetCPUStats`).
    Params {
        /// The parameters.
        params: Vec<super::admin::Param>,
        /// The call's return value.
        count: i32,
    },
    /// `virDomainGetControlInfo`.
    ControlInfo {
        /// `virDomainControlState`.
        state: u32,
        /// Its reason.
        details: u32,
        /// Milliseconds in that state (0 when OK).
        time_ms: u64,
    },
    /// `virDomainGetJobInfo` / `virDomainGetJobStats`: no job runs.
    NoJob,
    /// `virConnectGetAllDomainStats`: one record per domain.
    DomainStats(Vec<(DomainRef, Vec<super::admin::Param>)>),
    /// `virDomainGetTime`.
    Time {
        /// Seconds since the epoch.
        seconds: i64,
        /// Nanoseconds.
        nseconds: u32,
    },
    /// `virDomainGetSchedulerType`.
    SchedulerType {
        /// The scheduler's name.
        kind: String,
        /// How many parameters it has.
        nparams: i32,
    },
    /// A fixed row of signed figures (`virDomainBlockStats`, `virDomainInterfaceStats`).
    Figures(Vec<i64>),
    /// `virDomainInterfaceAddresses`: each interface's addresses.
    Interfaces(Vec<IfaceAddrs>),
    /// A storage call's result.
    Storage(super::storage::StorageValue),
    /// `virDomainGetBlockInfo`, bytes.
    BlockInfo {
        /// Taken on the storage.
        allocation: u64,
        /// Seen by the guest.
        capacity: u64,
        /// The file's or device's size.
        physical: u64,
    },
    /// `virDomainGetDiskErrors`: (target, `virDomainDiskErrorCode`), and how many there are.
    DiskErrors {
        /// The disks in error (empty when only the count was asked).
        errors: Vec<(String, i32)>,
        /// How many there are.
        count: i32,
    },
    /// A network call's result.
    Network(super::network::NetValue),
}

impl CallValue {
    /// Whether one fd travels with this result (a console or a volume's file).
    pub fn carries_fd(&self) -> bool {
        matches!(self, CallValue::Console | CallValue::Storage(super::storage::StorageValue::Stream))
    }
}

/// One vCPU as `virDomainGetVcpus` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuInfo {
    /// Its index.
    pub number: u32,
    /// `virVcpuState`.
    pub state: i32,
    /// CPU time, ns.
    pub cpu_time: u64,
    /// The host CPU it last ran on, or -1 (offline).
    pub cpu: i32,
}

/// Why a call failed, in terms the frontend maps to a libvirt error (in
/// `rpc::error`, the one place codes are chosen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CallError {
    /// Lookup by name found nothing.
    #[error("no domain with matching name '{0}'")]
    NoDomainName(String),
    /// Lookup by UUID found nothing.
    #[error("no domain with matching uuid '{0}'")]
    NoDomainUuid(String),
    /// Lookup by id found nothing.
    #[error("no domain with matching id {0}")]
    NoDomainId(i32),
    /// A define reused a name held by another UUID.
    #[error("domain '{name}' already exists with uuid {uuid}")]
    NameTaken {
        /// The name.
        name: String,
        /// The UUID that holds it.
        uuid: String,
    },
    /// A define reused a UUID held by another name.
    #[error("domain '{name}' is already defined with uuid {uuid}")]
    UuidTaken {
        /// The name that holds the UUID.
        name: String,
        /// The UUID.
        uuid: String,
    },
    /// The XML is not well formed.
    #[error("(domain_definition):{line}: {detail}")]
    XmlSyntax {
        /// Line of the error.
        line: u32,
        /// The parser's message.
        detail: String,
    },
    /// The XML is well formed but not a valid domain.
    #[error("{0}")]
    XmlInvalid(String),
    /// `VIR_DOMAIN_DEFINE_VALIDATE` found something outside the schema we accept.
    #[error("{0}")]
    XmlSchema(String),
    /// Valid XML asking for something this daemon cannot run.
    #[error("{0}")]
    ConfigUnsupported(String),
    /// A bad argument.
    #[error("{0}")]
    InvalidArg(String),
    /// Flags the call does not know.
    #[error("unsupported flags (0x{flags:x}) in function {function}")]
    UnsupportedFlags {
        /// The flags given.
        flags: u32,
        /// Our function's name.
        function: String,
    },
    /// Not valid in the domain's current state.
    #[error("{0}")]
    OperationInvalid(String),
    /// The generic "domain is not running" check.
    #[error("domain is not running")]
    NotRunning,
    /// The operation failed.
    #[error("{0}")]
    OperationFailed(String),
    /// The connection is read-only (the broker's own check).
    #[error("read only access prevents {0}")]
    ReadOnly(String),
    /// Something went wrong inside the daemon.
    #[error("{0}")]
    Internal(String),
    /// A CPU comparison asked to fail on an incompatible CPU found one
    /// (`VIR_ERR_CPU_INCOMPATIBLE`).
    #[error("{0}")]
    CpuIncompatible(String),
    /// An admin call named a server the daemon does not have.
    #[error("no server with matching name '{0}' found")]
    NoServer(String),
    /// An admin call named a client that is not connected.
    #[error("No client with matching ID '{0}'")]
    NoClient(u64),
    /// The daemon cannot do this at all (admin calls we do not support).
    #[error("{0}")]
    Unsupported(String),
    /// An argument asks for something this daemon does not provide
    /// (`VIR_ERR_ARGUMENT_UNSUPPORTED`).
    #[error("{0}")]
    ArgumentUnsupported(String),
    /// The operation cannot be done in this daemon's mode
    /// (`VIR_ERR_OPERATION_UNSUPPORTED`).
    #[error("{0}")]
    OperationUnsupported(String),
    /// The metadata asked for is not there (`VIR_ERR_NO_DOMAIN_METADATA`).
    #[error("{0}")]
    NoMetadata(String),
    /// A storage call failed.
    #[error(transparent)]
    Storage(super::storage::StorageError),
    /// The device named is not the domain's (`VIR_ERR_DEVICE_MISSING`).
    #[error("{0}")]
    DeviceMissing(String),
    /// A network call failed.
    #[error("{0}")]
    Network(super::network::NetError),
    /// A metadata element given to `virDomainSetMetadata` is not well formed.
    #[error("(metadata_xml):{line}: {detail}")]
    MetadataSyntax {
        /// Line of the error.
        line: u32,
        /// The parser's message.
        detail: String,
    },
}

impl CallError {
    /// The same error with every text cut to [`crate::rpc::error::MAX_MESSAGE_BYTES`].
    ///
    /// Many of these texts quote what a client sent (a name, a type string, a
    /// line of XML). The broker clips them before replying, so an error's size
    /// never depends on the client: the client would see them cut at the RPC
    /// boundary anyway, and a reply stays far below the channel's message cap.
    pub fn clipped(self) -> CallError {
        let max = crate::rpc::error::MAX_MESSAGE_BYTES;
        let c = |s: String| match crate::rpc::error::clip(&s, max) {
            std::borrow::Cow::Borrowed(_) => s,
            std::borrow::Cow::Owned(cut) => cut,
        };
        match self {
            CallError::NoDomainName(s) => CallError::NoDomainName(c(s)),
            CallError::NoDomainUuid(s) => CallError::NoDomainUuid(c(s)),
            CallError::NameTaken { name, uuid } => CallError::NameTaken { name: c(name), uuid: c(uuid) },
            CallError::UuidTaken { name, uuid } => CallError::UuidTaken { name: c(name), uuid: c(uuid) },
            CallError::XmlSyntax { line, detail } => CallError::XmlSyntax { line, detail: c(detail) },
            CallError::XmlInvalid(s) => CallError::XmlInvalid(c(s)),
            CallError::XmlSchema(s) => CallError::XmlSchema(c(s)),
            CallError::ConfigUnsupported(s) => CallError::ConfigUnsupported(c(s)),
            CallError::InvalidArg(s) => CallError::InvalidArg(c(s)),
            CallError::UnsupportedFlags { flags, function } => {
                CallError::UnsupportedFlags { flags, function: c(function) }
            }
            CallError::OperationInvalid(s) => CallError::OperationInvalid(c(s)),
            CallError::OperationFailed(s) => CallError::OperationFailed(c(s)),
            CallError::ReadOnly(s) => CallError::ReadOnly(c(s)),
            CallError::Internal(s) => CallError::Internal(c(s)),
            CallError::CpuIncompatible(s) => CallError::CpuIncompatible(c(s)),
            CallError::NoServer(s) => CallError::NoServer(c(s)),
            CallError::Unsupported(s) => CallError::Unsupported(c(s)),
            CallError::ArgumentUnsupported(s) => CallError::ArgumentUnsupported(c(s)),
            CallError::NoMetadata(s) => CallError::NoMetadata(c(s)),
            CallError::DeviceMissing(s) => CallError::DeviceMissing(c(s)),
            CallError::OperationUnsupported(s) => CallError::OperationUnsupported(c(s)),
            CallError::MetadataSyntax { line, detail } => CallError::MetadataSyntax { line, detail: c(detail) },
            CallError::Storage(e) => CallError::Storage(e.clipped()),
            CallError::Network(e) => CallError::Network(e.clipped()),
            e @ (CallError::NoDomainId(_) | CallError::NotRunning | CallError::NoClient(_)) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_errors_quote_at_most_the_message_cap() {
        let long = "n".repeat(70_000);
        let cut = CallError::NoDomainName(long.clone()).clipped().to_string();
        assert!(cut.len() <= crate::rpc::error::MAX_MESSAGE_BYTES + 40, "{} bytes", cut.len());
        assert!(cut.contains("nnn...'"));
        let e = CallError::XmlSyntax { line: 3, detail: long }.clipped();
        assert!(matches!(&e, CallError::XmlSyntax { line: 3, detail } if detail.len() <= 1024));
        assert_eq!(CallError::NoDomainName("vm".into()).clipped(), CallError::NoDomainName("vm".into()));
        assert_eq!(CallError::NoDomainId(7).clipped(), CallError::NoDomainId(7));
    }
}
