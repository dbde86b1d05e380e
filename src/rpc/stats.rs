//! The argument and return structs of the monitoring procedures (host and
//! domain statistics), as `remote_protocol.x` lays them out, and the limits
//! libvirt's own dispatcher puts on them.

use serde::{Deserialize, Serialize};

use super::admin::TypedParam;
use super::remote::NonnullDomain;
use super::xdr::Opaque;

/// `REMOTE_NODE_CPU_STATS_MAX` (also the most parameters per CPU of
/// `virDomainGetCPUStats`).
pub const NODE_CPU_STATS_MAX: i32 = 16;
/// `REMOTE_NODE_MEMORY_STATS_MAX`.
pub const NODE_MEMORY_STATS_MAX: i32 = 16;
/// `REMOTE_VCPUINFO_MAX`.
pub const VCPUINFO_MAX: i32 = 16_384;
/// `REMOTE_CPUMAPS_MAX`: bytes of affinity maps in one reply.
pub const CPUMAPS_MAX: i64 = 8_388_608;
/// `REMOTE_DOMAIN_MEMORY_STATS_MAX`.
pub const DOMAIN_MEMORY_STATS_MAX: u32 = 1024;
/// `REMOTE_DOMAIN_GET_CPU_STATS_NCPUS_MAX`.
pub const GET_CPU_STATS_NCPUS_MAX: u32 = 128;
/// `REMOTE_DOMAIN_LIST_MAX`: domains named in one stats call.
pub const DOMAIN_LIST_MAX: usize = 16_384;

/// `remote_node_get_cpu_stats_args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeGetCpuStatsArgs {
    /// A CPU, or -1 (`VIR_NODE_CPU_STATS_ALL_CPUS`).
    pub cpu_num: i32,
    /// Room for this many fields; 0 asks how many there are.
    pub nparams: i32,
    /// Must be 0.
    pub flags: u32,
}

/// `remote_node_get_memory_stats_args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeGetMemoryStatsArgs {
    /// Room for this many fields; 0 asks how many there are.
    pub nparams: i32,
    /// A NUMA cell, or -1 (`VIR_NODE_MEMORY_STATS_ALL_CELLS`).
    pub cell_num: i32,
    /// Must be 0.
    pub flags: u32,
}

/// `remote_node_get_cpu_stats` / `remote_node_get_memory_stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStat {
    /// Field name ("user", "total", ...).
    pub field: String,
    /// Its value (ns, or KiB).
    pub value: u64,
}

/// `remote_node_get_cpu_stats_ret` / `remote_node_get_memory_stats_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatsRet {
    /// The fields (none when only the count was asked).
    pub params: Vec<NodeStat>,
    /// How many fields there are.
    pub nparams: i32,
}

/// `remote_node_get_cpu_map_args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeGetCpuMapArgs {
    /// Non-zero: send the map.
    pub need_map: i32,
    /// Non-zero: send the online count.
    pub need_online: i32,
    /// Must be 0.
    pub flags: u32,
}

/// `remote_node_get_cpu_map_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeGetCpuMapRet {
    /// Online CPUs, one bit each.
    pub cpumap: Opaque,
    /// How many are online.
    pub online: u32,
    /// How many are present.
    pub ret: i32,
}

/// `remote_domain_get_vcpus_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainGetVcpusArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Most vCPUs.
    pub maxinfo: i32,
    /// Bytes of map per vCPU.
    pub maplen: i32,
}

/// `remote_vcpu_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuInfoWire {
    /// Index.
    pub number: u32,
    /// `virVcpuState`.
    pub state: i32,
    /// ns.
    pub cpu_time: u64,
    /// Host CPU.
    pub cpu: i32,
}

/// `remote_domain_get_vcpus_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainGetVcpusRet {
    /// One per vCPU.
    pub info: Vec<VcpuInfoWire>,
    /// `maplen` bytes per vCPU.
    pub cpumaps: Opaque,
}

/// `remote_domain_get_vcpu_pin_info_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainGetVcpuPinInfoArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Most vCPUs.
    pub ncpumaps: i32,
    /// Bytes per map.
    pub maplen: i32,
    /// `virDomainModificationImpact`.
    pub flags: u32,
}

/// `remote_domain_get_vcpu_pin_info_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainGetVcpuPinInfoRet {
    /// `maplen` bytes per vCPU.
    pub cpumaps: Opaque,
    /// vCPUs reported.
    pub num: i32,
}

/// `remote_domain_memory_stats_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainMemoryStatsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Most statistics.
    pub max_stats: u32,
    /// Must be 0.
    pub flags: u32,
}

/// `remote_domain_memory_stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStat {
    /// `virDomainMemoryStatTags`.
    pub tag: i32,
    /// KiB (or a count).
    pub val: u64,
}

/// `remote_domain_memory_stats_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainMemoryStatsRet {
    /// The statistics.
    pub stats: Vec<MemoryStat>,
}

/// `remote_domain_get_cpu_stats_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainGetCpuStatsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Parameters per CPU (0: how many there are).
    pub nparams: u32,
    /// First CPU, or -1 for the total.
    pub start_cpu: i32,
    /// CPUs (0: how many the host has).
    pub ncpus: u32,
    /// `VIR_TYPED_PARAM_STRING_OKAY`.
    pub flags: u32,
}

/// `remote_domain_get_cpu_stats_ret`, and `remote_..._parameters_ret`s of the same shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamsCountRet {
    /// The parameters.
    pub params: Vec<TypedParam>,
    /// The call's return value.
    pub nparams: i32,
}

/// `remote_domain_get_control_info_ret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainGetControlInfoRet {
    /// `virDomainControlState`.
    pub state: u32,
    /// Its reason.
    pub details: u32,
    /// ms in that state.
    pub state_time: u64,
}

/// `remote_domain_get_job_info_ret`: the type, then ten figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainGetJobInfoRet {
    /// `virDomainJobType`.
    pub kind: i32,
    /// timeElapsed, timeRemaining, data/mem/file Total, Processed, Remaining.
    pub figures: [u64; 11],
}

/// `remote_domain_get_job_stats_ret`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainGetJobStatsRet {
    /// `virDomainJobType`.
    pub kind: i32,
    /// Its figures.
    pub params: Vec<TypedParam>,
}

/// `remote_connect_get_all_domain_stats_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetAllDomainStatsArgs {
    /// Only these domains (`virDomainListGetStats`); all when empty.
    pub doms: Vec<NonnullDomain>,
    /// `virDomainStatsTypes`.
    pub stats: u32,
    /// `virConnectGetAllDomainStatsFlags`.
    pub flags: u32,
}

/// `remote_domain_stats_record`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainStatsRecord {
    /// The domain.
    pub dom: NonnullDomain,
    /// Its statistics.
    pub params: Vec<TypedParam>,
}

/// `remote_connect_get_all_domain_stats_ret`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetAllDomainStatsRet {
    /// One record per domain.
    pub ret_stats: Vec<DomainStatsRecord>,
}

/// `remote_domain_block_stats_args` and `remote_domain_interface_stats_args`:
/// a domain and one of its devices, by name (compared, never opened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainDeviceArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Disk target or path, interface name or MAC; "" is every disk.
    pub device: String,
}

/// `remote_domain_block_stats_flags_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStatsFlagsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Disk target or path; "" is every disk.
    pub path: String,
    /// Room for this many fields; 0 asks how many there are.
    pub nparams: i32,
    /// `VIR_TYPED_PARAM_STRING_OKAY`.
    pub flags: u32,
}

/// `remote_domain_block_stats_ret`: rd_req, rd_bytes, wr_req, wr_bytes, errs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStatsRet {
    /// The figures, in the struct's order.
    pub values: [i64; 5],
}

/// `remote_domain_interface_stats_ret`: rx bytes, packets, errs, drop, then tx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatsRet {
    /// The figures, in the struct's order.
    pub values: [i64; 8],
}

/// `remote_domain_interface_addresses_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceAddressesArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// `virDomainInterfaceAddressesSource`.
    pub source: u32,
    /// Must be 0.
    pub flags: u32,
}

/// `remote_domain_ip_addr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAddrWire {
    /// `virIPAddrType`.
    pub kind: i32,
    /// The address.
    pub addr: String,
    /// Its prefix length.
    pub prefix: u32,
}

/// `remote_domain_interface`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInterfaceWire {
    /// The interface's host-side name.
    pub name: String,
    /// Its MAC.
    pub hwaddr: Option<String>,
    /// Its addresses (at most [`IP_ADDR_MAX`]).
    pub addrs: Vec<IpAddrWire>,
}

/// `remote_domain_interface_addresses_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceAddressesRet {
    /// The interfaces (at most [`INTERFACE_MAX`]).
    pub ifaces: Vec<DomainInterfaceWire>,
}

/// `REMOTE_DOMAIN_INTERFACE_MAX`.
pub const INTERFACE_MAX: usize = 2048;
/// `REMOTE_DOMAIN_IP_ADDR_MAX`.
pub const IP_ADDR_MAX: usize = 2048;

/// `REMOTE_DOMAIN_BLOCK_STATS_PARAMETERS_MAX`.
pub const BLOCK_STATS_PARAMETERS_MAX: i32 = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::xdr::to_bytes;

    #[test]
    fn job_info_is_a_type_and_eleven_hypers() {
        let ret = DomainGetJobInfoRet { kind: 0, figures: [0; 11] };
        assert_eq!(to_bytes(&ret).unwrap().len(), 4 + 11 * 8);
    }

    #[test]
    fn vcpu_info_is_twenty_bytes() {
        let v = VcpuInfoWire { number: 1, state: 1, cpu_time: 2, cpu: 3 };
        assert_eq!(to_bytes(&v).unwrap(), [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3]);
    }
}
