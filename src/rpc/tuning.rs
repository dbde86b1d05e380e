//! The REMOTE structures of the resource-control calls: scheduler, memory
//! and block I/O parameters (typed parameters, set and get), and vCPU and
//! emulator pinning (CPU bitmaps).

use serde::{Deserialize, Serialize};

use super::admin::TypedParam;
use super::remote::NonnullDomain;
use super::xdr::Opaque;

/// `remote_domain_set_scheduler_parameters_args`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetParamsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// The parameters to set.
    pub params: Vec<TypedParam>,
}

/// `remote_domain_set_{scheduler_parameters_flags,memory_parameters,blkio_parameters}_args`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetParamsFlagsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// The parameters to set.
    pub params: Vec<TypedParam>,
    /// `virDomainModificationImpact`.
    pub flags: u32,
}

/// `remote_domain_get_{memory,blkio}_parameters_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetParamsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Most parameters wanted (0: how many there are).
    pub nparams: i32,
    /// `virDomainModificationImpact` and `VIR_TYPED_PARAM_STRING_OKAY`.
    pub flags: u32,
}

/// `remote_domain_pin_vcpu_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinVcpuArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// The vCPU.
    pub vcpu: u32,
    /// Host CPUs, one bit each.
    pub cpumap: Opaque,
}

/// `remote_domain_pin_vcpu_flags_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinVcpuFlagsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// The vCPU.
    pub vcpu: u32,
    /// Host CPUs, one bit each.
    pub cpumap: Opaque,
    /// `virDomainModificationImpact`.
    pub flags: u32,
}

/// `remote_domain_pin_emulator_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinEmulatorArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Host CPUs, one bit each.
    pub cpumap: Opaque,
    /// `virDomainModificationImpact`.
    pub flags: u32,
}

/// `remote_domain_get_emulator_pin_info_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetEmulatorPinInfoArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Bytes of map wanted.
    pub maplen: i32,
    /// `virDomainModificationImpact`.
    pub flags: u32,
}

/// `remote_domain_get_emulator_pin_info_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetEmulatorPinInfoRet {
    /// The emulator's host CPUs.
    pub cpumaps: Opaque,
    /// 1: one map.
    pub ret: i32,
}

/// `remote_domain_set_max_memory_args` (and `remote_domain_set_memory_args`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMemoryArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// KiB.
    pub memory: u64,
}

/// `remote_domain_set_memory_stats_period_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMemoryStatsPeriodArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Seconds (0 stops the collection).
    pub period: i32,
    /// `virDomainMemoryModFlags`.
    pub flags: u32,
}

/// `remote_domain_set_memory_flags_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMemoryFlagsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// KiB.
    pub memory: u64,
    /// `virDomainMemoryModFlags`.
    pub flags: u32,
}
