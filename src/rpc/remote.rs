//! The REMOTE program's procedures and the argument and return structs of
//! those the daemon serves, as `remote_protocol.x` lays them out.

use serde::{Deserialize, Serialize};

use super::xdr::FixedOpaque;

include!(concat!(env!("OUT_DIR"), "/procedures.rs"));

/// Who may call a procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any connection, read-only ones included.
    ReadOnly,
    /// Read-write connections only.
    ReadWrite,
}

/// What the daemon does with a procedure of libvirt's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcStatus {
    /// Dispatched here (a [`RemoteProc`]).
    Served,
    /// Answered `VIR_ERR_NO_SUPPORT` naming its API, so that clients fall back.
    Unsupported,
    /// A server-to-client message: libvirtd itself has no handler for it.
    Event,
    /// A SASL or polkit step, for auth types this daemon does not offer.
    Auth,
}

/// The libvirt source file (`src/libvirt-<family>.c`) a procedure's API
/// lives in: its errors carry that file's error domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFamily {
    /// `libvirt-domain.c`.
    Domain,
    /// `libvirt-host.c`.
    Host,
    /// `libvirt-storage.c`.
    Storage,
    /// `libvirt-network.c`.
    Network,
    /// `libvirt-nodedev.c`.
    Nodedev,
    /// `libvirt-interface.c`.
    Interface,
    /// `libvirt-domain-snapshot.c`.
    Snapshot,
    /// `libvirt-nwfilter.c`.
    Nwfilter,
    /// `libvirt-secret.c`.
    Secret,
    /// `libvirt-domain-checkpoint.c`.
    Checkpoint,
    /// `libvirt.c`.
    Libvirt,
    /// No API: the daemon's own RPC layer (events, authentication).
    Daemon,
}

/// One procedure of libvirt's REMOTE program, as `policy/procedures.tsv` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEntry {
    /// `REMOTE_PROC_` number.
    pub number: i32,
    /// `REMOTE_PROC_` name without the prefix.
    pub name: &'static str,
    /// Who may call it.
    pub access: Access,
    /// The public C API it reaches, as errors name it ("-" for none).
    pub api: &'static str,
    /// Where that API lives, for the error domain.
    pub family: ApiFamily,
    /// What the daemon does with it.
    pub status: ProcStatus,
}

/// The procedure numbered `n` in libvirt 9.0's REMOTE program, if any.
pub fn libvirt_proc(n: i32) -> Option<&'static ProcEntry> {
    LIBVIRT_PROCS.binary_search_by_key(&n, |e| e.number).ok().map(|i| &LIBVIRT_PROCS[i])
}

impl RemoteProc {
    /// Its access class.
    pub fn access(self) -> Access {
        self.entry().access
    }

    /// The public C API it implements, as denial messages name it.
    pub fn api(self) -> &'static str {
        self.entry().api
    }

    /// `REMOTE_PROC_` name without the prefix.
    pub fn name(self) -> &'static str {
        self.entry().name
    }
}

/// A domain's UUID, raw (`remote_uuid`).
pub type Uuid = FixedOpaque<16>;

/// `remote_nonnull_domain`: how a domain handle travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonnullDomain {
    /// Name (informational; the server resolves by UUID).
    pub name: String,
    /// UUID.
    pub uuid: Uuid,
    /// Running id, -1 when inactive.
    pub id: i32,
}

/// `remote_nonnull_network`, only ever absent in error replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonnullNetwork {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: Uuid,
}

/// `remote_error`: the payload of every error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// `virErrorNumber`.
    pub code: i32,
    /// `virErrorDomain`.
    pub domain: i32,
    /// The full message users see.
    pub message: Option<String>,
    /// 2 = error.
    pub level: i32,
    /// Unused.
    pub dom: Option<NonnullDomain>,
    /// The message template.
    pub str1: Option<String>,
    /// The detail substituted into the template.
    pub str2: Option<String>,
    /// Unused.
    pub str3: Option<String>,
    /// -1.
    pub int1: i32,
    /// -1.
    pub int2: i32,
    /// Unused.
    pub net: Option<NonnullNetwork>,
}

/// `remote_connect_open_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectOpenArgs {
    /// URI, transport and client-side parameters stripped.
    pub name: Option<String>,
    /// Bit 0: read-only.
    pub flags: u32,
}

/// Arguments that are one flags word (`remote_connect_get_sysinfo_args`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagsArgs {
    /// Flags.
    pub flags: u32,
}

/// One signed int (`feature`, `maxids`, `id`, `supported`, `num`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntArg {
    /// The value.
    pub value: i32,
}

/// One optional string (`remote_connect_get_max_vcpus_args`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptStringArg {
    /// The value.
    pub value: Option<String>,
}

/// One string (`name`, `xml`, `type`, `hostname`, `uri`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StringArg {
    /// The value.
    pub value: String,
}

/// `remote_domain_define_xml_flags_args` (and `create_xml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XmlFlagsArgs {
    /// Domain XML.
    pub xml: String,
    /// Flags.
    pub flags: u32,
}

/// `remote_connect_get_domain_capabilities_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainCapabilitiesArgs {
    /// An emulator binary (a host path: this daemon has none to offer).
    pub emulatorbin: Option<String>,
    /// Guest architecture.
    pub arch: Option<String>,
    /// Machine type.
    pub machine: Option<String>,
    /// Virtualization type (`kvm`).
    pub virttype: Option<String>,
    /// Flags.
    pub flags: u32,
}

/// One domain handle (`remote_domain_get_info_args`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainArg {
    /// The domain.
    pub dom: NonnullDomain,
}

/// A domain handle and flags (`remote_domain_get_xml_desc_args`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainFlagsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Flags.
    pub flags: u32,
}

/// `remote_domain_set_autostart_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSetAutostartArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// 0 or 1.
    pub autostart: i32,
}

/// `remote_domain_lookup_by_uuid_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UuidArg {
    /// The UUID.
    pub uuid: Uuid,
}

/// `remote_connect_list_all_domains_args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAllDomainsArgs {
    /// 0: only count.
    pub need_results: i32,
    /// `virConnectListAllDomainsFlags`.
    pub flags: u32,
}

/// `remote_node_get_cells_free_memory_args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellsFreeMemoryArgs {
    /// First cell.
    pub start_cell: i32,
    /// Most cells.
    pub maxcells: i32,
}

/// `remote_connect_domain_event_callback_register_any_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRegisterArgs {
    /// `virDomainEventID`.
    pub event_id: i32,
    /// Only this domain, if given.
    pub dom: Option<NonnullDomain>,
}

/// `remote_domain_event_callback_lifecycle_msg`, sent as a MESSAGE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEventMsg {
    /// The client's registration.
    pub callback_id: i32,
    /// The domain.
    pub dom: NonnullDomain,
    /// `virDomainEventType`.
    pub event: i32,
    /// Its detail.
    pub detail: i32,
}

/// The MESSAGE procedure carrying lifecycle events to callback-style clients.
pub const DOMAIN_EVENT_CALLBACK_LIFECYCLE: i32 = 318;

/// `remote_domain_event_callback_metadata_change_msg`, sent as a MESSAGE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataChangeEventMsg {
    /// The client's registration.
    pub callback_id: i32,
    /// The domain.
    pub dom: NonnullDomain,
    /// `virDomainMetadataType`.
    pub kind: i32,
    /// The namespace, for an element.
    pub nsuri: Option<String>,
}

/// The MESSAGE procedure carrying metadata-change events.
pub const DOMAIN_EVENT_CALLBACK_METADATA_CHANGE: i32 = 379;

/// `remote_domain_get_scheduler_type_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerTypeRet {
    /// The scheduler.
    pub kind: String,
    /// How many parameters it has.
    pub nparams: i32,
}

/// `remote_domain_get_scheduler_parameters_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerParamsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Most parameters wanted.
    pub nparams: i32,
}

/// `remote_domain_get_scheduler_parameters_flags_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerParamsFlagsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Most parameters wanted.
    pub nparams: i32,
    /// `virDomainModificationImpact`.
    pub flags: u32,
}

/// `REMOTE_NODE_MAX_CELLS`: most figures (page sizes times cells) one
/// `virNodeGetFreePages` returns, and most page sizes it names.
pub const NODE_MAX_CELLS: usize = 1024;

/// `remote_node_get_free_pages_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeGetFreePagesArgs {
    /// Page sizes, KiB.
    pub pages: Vec<u32>,
    /// First cell.
    pub start_cell: i32,
    /// Most cells.
    pub cell_count: u32,
    /// Flags.
    pub flags: u32,
}

/// `remote_connect_get_cpu_model_names_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuModelNamesArgs {
    /// Architecture.
    pub arch: String,
    /// Whether the names are wanted (else only their count).
    pub need_results: i32,
    /// Flags.
    pub flags: u32,
}

/// `remote_connect_get_cpu_model_names_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuModelNamesRet {
    /// The names.
    pub models: Vec<String>,
    /// How many there are.
    pub ret: i32,
}

/// `remote_domain_get_time_ret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainGetTimeRet {
    /// Seconds since the epoch.
    pub seconds: i64,
    /// Nanoseconds.
    pub nseconds: u32,
}

/// `remote_domain_get_metadata_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainGetMetadataArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// `virDomainMetadataType`.
    pub kind: i32,
    /// The namespace, for an element.
    pub uri: Option<String>,
    /// `virDomainModificationImpact`.
    pub flags: u32,
}

/// `remote_domain_set_metadata_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSetMetadataArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// `virDomainMetadataType`.
    pub kind: i32,
    /// The new value; `None` removes it.
    pub metadata: Option<String>,
    /// The namespace prefix, for an element.
    pub key: Option<String>,
    /// The namespace, for an element.
    pub uri: Option<String>,
    /// `virDomainModificationImpact`.
    pub flags: u32,
}

/// `remote_domain_open_console_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenConsoleArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Device alias; `None` is the first console.
    pub dev_name: Option<String>,
    /// `virDomainConsoleFlags`.
    pub flags: u32,
}

/// `remote_auth_list_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthListRet {
    /// `remote_auth_type` values.
    pub types: Vec<i32>,
}

/// One domain handle returned (`lookup_*_ret`, `define_xml_ret`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRet {
    /// The domain.
    pub dom: NonnullDomain,
}

/// `remote_connect_list_all_domains_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAllDomainsRet {
    /// The domains (empty when not asked for).
    pub domains: Vec<NonnullDomain>,
    /// How many matched.
    pub ret: u32,
}

/// `remote_node_get_info_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfoRet {
    /// CPU model, NUL-padded chars.
    pub model: [i8; 32],
    /// Memory in KiB.
    pub memory: u64,
    /// Active CPUs.
    pub cpus: i32,
    /// MHz.
    pub mhz: i32,
    /// NUMA nodes.
    pub nodes: i32,
    /// Sockets per node.
    pub sockets: i32,
    /// Cores per socket.
    pub cores: i32,
    /// Threads per core.
    pub threads: i32,
}

/// `remote_domain_get_info_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfoRet {
    /// `virDomainState`.
    pub state: u8,
    /// KiB.
    pub max_mem: u64,
    /// KiB.
    pub memory: u64,
    /// vCPUs.
    pub nr_virt_cpu: u16,
    /// Nanoseconds.
    pub cpu_time: u64,
}

/// `remote_domain_get_state_ret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainStateRet {
    /// `virDomainState`.
    pub state: i32,
    /// Reason for it.
    pub reason: i32,
}

/// `remote_node_get_security_model_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityModelRet {
    /// Model name as chars, NUL included.
    pub model: Vec<i8>,
    /// DOI as chars, NUL included.
    pub doi: Vec<i8>,
}

/// `remote_domain_get_security_label_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityLabelRet {
    /// Label as chars, NUL included.
    pub label: Vec<i8>,
    /// Whether it is enforced.
    pub enforcing: i32,
}

/// A list of strings (`list_defined_domains_ret`, `get_messages_ret`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StringListRet {
    /// The strings.
    pub values: Vec<String>,
}

/// A list of ints (`list_domains_ret`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntListRet {
    /// The ints.
    pub values: Vec<i32>,
}

/// A list of u64 (`node_get_cells_free_memory_ret`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct U64ListRet {
    /// The values.
    pub values: Vec<u64>,
}

/// A C string as XDR chars, NUL included, as libvirtd sends security labels.
pub fn c_chars(s: &str) -> Vec<i8> {
    s.bytes().map(|b| b as i8).chain(std::iter::once(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::xdr::{from_bytes, to_bytes};

    #[test]
    fn node_info_model_is_128_bytes() {
        let ret =
            NodeInfoRet { model: [0; 32], memory: 1, cpus: 2, mhz: 3, nodes: 1, sockets: 1, cores: 2, threads: 1 };
        assert_eq!(to_bytes(&ret).unwrap().len(), 128 + 8 + 6 * 4);
    }

    #[test]
    fn security_model_matches_the_observed_reply_size() {
        // libvirtd answered 64 bytes in all (28 of header) for model "none", doi "0".
        let ret = SecurityModelRet { model: c_chars("none"), doi: c_chars("0") };
        assert_eq!(to_bytes(&ret).unwrap().len(), 64 - 28);
    }

    #[test]
    fn the_reference_error_reply_decodes() {
        let mut p = Vec::new();
        p.extend_from_slice(&[0, 0, 0, 0x2a, 0, 0, 0, 0x0a, 0, 0, 0, 1, 0, 0, 0, 0x34]);
        p.extend_from_slice(b"Domain not found: no domain with matching name 'vm2'");
        p.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x14]);
        p.extend_from_slice(b"Domain not found: %s");
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0x22]);
        p.extend_from_slice(b"no domain with matching name 'vm2'\0\0");
        p.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(p.len(), 192 - 28);
        let e: RemoteError = from_bytes(&p).unwrap();
        assert_eq!((e.code, e.domain, e.level), (42, 10, 2));
        assert_eq!(e.str2.as_deref(), Some("no domain with matching name 'vm2'"));
        assert_eq!(to_bytes(&e).unwrap(), p);
    }

    #[test]
    fn every_listed_procedure_round_trips_its_number() {
        for &p in RemoteProc::ALL {
            assert_eq!(RemoteProc::from_number(p as i32), Some(p));
            assert!(p.api().starts_with("vir"), "{p:?}");
            assert_eq!(p.entry().number, p as i32);
            assert_eq!(p.entry().status, ProcStatus::Served);
        }
    }

    #[test]
    fn the_table_is_libvirt_9_0s_whole_remote_program() {
        // REMOTE_PROC_CONNECT_OPEN = 1 ... REMOTE_PROC_DOMAIN_FD_ASSOCIATE = 443, none missing.
        assert_eq!(LIBVIRT_PROCS.len(), 443);
        for (i, e) in LIBVIRT_PROCS.iter().enumerate() {
            assert_eq!(e.number, i as i32 + 1, "{e:?}");
            assert_eq!(libvirt_proc(e.number), Some(e));
            let served = RemoteProc::from_number(e.number).is_some();
            assert_eq!(served, e.status == ProcStatus::Served, "{e:?}");
        }
        assert_eq!(libvirt_proc(0), None);
        assert_eq!(libvirt_proc(444), None);
        let fd_associate = libvirt_proc(443).unwrap();
        assert_eq!((fd_associate.api, fd_associate.access), ("virDomainFDAssociate", Access::ReadWrite));
    }
}
