//! Argument and return structs of the disk procedures (attach and detach,
//! block info, disk errors), as `remote_protocol.x` lays them out.

use serde::{Deserialize, Serialize};

use super::remote::NonnullDomain;

/// `REMOTE_DOMAIN_DISK_ERRORS_MAX`.
pub const DISK_ERRORS_MAX: u32 = 256;

/// `remote_domain_attach_device_args` and `remote_domain_detach_device_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// The device's XML.
    pub xml: String,
}

/// `remote_domain_attach_device_flags_args` and `..._detach_device_flags_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFlagsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// The device's XML.
    pub xml: String,
    /// `virDomainDeviceModifyFlags`.
    pub flags: u32,
}

/// `remote_domain_detach_device_alias_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachAliasArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// The device's alias.
    pub alias: String,
    /// `virDomainDeviceModifyFlags`.
    pub flags: u32,
}

/// `remote_domain_get_block_info_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfoArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Disk target or source path (compared, never opened).
    pub path: String,
    /// Must be 0.
    pub flags: u32,
}

/// `remote_domain_get_block_info_ret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfoRet {
    /// Bytes the image takes on its storage.
    pub allocation: u64,
    /// The size the guest sees.
    pub capacity: u64,
    /// The size of the file or device.
    pub physical: u64,
}

/// `remote_domain_get_disk_errors_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskErrorsArgs {
    /// The domain.
    pub dom: NonnullDomain,
    /// Room for this many; 0 asks how many there are.
    pub maxerrors: u32,
    /// Must be 0.
    pub flags: u32,
}

/// `remote_domain_disk_error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskErrorWire {
    /// The disk's target.
    pub disk: String,
    /// `virDomainDiskErrorCode`.
    pub error: i32,
}

/// `remote_domain_get_disk_errors_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskErrorsRet {
    /// The disks in error.
    pub errors: Vec<DiskErrorWire>,
    /// How many there are.
    pub nerrors: i32,
}
