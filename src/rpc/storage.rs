//! The argument and return structs of the storage procedures the daemon
//! serves, as `remote_protocol.x` lays them out.

use serde::{Deserialize, Serialize};

use super::remote::Uuid;

/// `REMOTE_STORAGE_POOL_LIST_MAX` and `REMOTE_STORAGE_VOL_LIST_MAX`.
pub const STORAGE_LIST_MAX: usize = 16_384;
/// The MESSAGE procedure carrying pool lifecycle events.
pub const STORAGE_POOL_EVENT_LIFECYCLE: i32 = 370;
/// The MESSAGE procedure carrying pool refresh events.
pub const STORAGE_POOL_EVENT_REFRESH: i32 = 373;

/// `remote_nonnull_storage_pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonnullPool {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: Uuid,
}

/// `remote_nonnull_storage_vol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonnullVol {
    /// The pool's name.
    pub pool: String,
    /// Name.
    pub name: String,
    /// Key.
    pub key: String,
}

/// One pool handle (`remote_storage_pool_destroy_args`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolArg {
    /// The pool.
    pub pool: NonnullPool,
}

/// A pool handle and flags (`remote_storage_pool_build_args`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolFlagsArgs {
    /// The pool.
    pub pool: NonnullPool,
    /// Flags.
    pub flags: u32,
}

/// A pool handle and an int (`set_autostart`, `list_volumes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolIntArgs {
    /// The pool.
    pub pool: NonnullPool,
    /// autostart or maxnames.
    pub value: i32,
}

/// `remote_storage_pool_list_all_volumes_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAllVolumesArgs {
    /// The pool.
    pub pool: NonnullPool,
    /// 0: only count.
    pub need_results: i32,
    /// Flags.
    pub flags: u32,
}

/// `remote_storage_vol_create_xml_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolCreateXmlArgs {
    /// The pool.
    pub pool: NonnullPool,
    /// Volume XML.
    pub xml: String,
    /// Flags.
    pub flags: u32,
}

/// `remote_storage_vol_create_xml_from_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolCreateXmlFromArgs {
    /// The pool.
    pub pool: NonnullPool,
    /// Volume XML.
    pub xml: String,
    /// The volume to copy.
    pub clonevol: NonnullVol,
    /// Flags.
    pub flags: u32,
}

/// `remote_storage_vol_lookup_by_name_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolLookupByNameArgs {
    /// The pool.
    pub pool: NonnullPool,
    /// The volume's name.
    pub name: String,
}

/// One volume handle (`remote_storage_vol_get_info_args`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolArg {
    /// The volume.
    pub vol: NonnullVol,
}

/// A volume handle and flags (`delete`, `get_xml_desc`, `wipe`, `get_info_flags`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolFlagsArgs {
    /// The volume.
    pub vol: NonnullVol,
    /// Flags.
    pub flags: u32,
}

/// `remote_storage_vol_wipe_pattern_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolWipePatternArgs {
    /// The volume.
    pub vol: NonnullVol,
    /// `virStorageVolWipeAlgorithm`.
    pub algorithm: u32,
    /// Flags.
    pub flags: u32,
}

/// `remote_storage_vol_resize_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolResizeArgs {
    /// The volume.
    pub vol: NonnullVol,
    /// Bytes.
    pub capacity: u64,
    /// Flags.
    pub flags: u32,
}

/// `remote_storage_vol_upload_args` and `_download_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolStreamArgs {
    /// The volume.
    pub vol: NonnullVol,
    /// Where to start.
    pub offset: u64,
    /// Most bytes (0: all).
    pub length: u64,
    /// Flags.
    pub flags: u32,
}

/// `remote_connect_list_all_storage_pools_args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAllPoolsArgs {
    /// 0: only count.
    pub need_results: i32,
    /// Flags.
    pub flags: u32,
}

/// `remote_connect_storage_pool_event_register_any_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolEventRegisterArgs {
    /// `virStoragePoolEventID`.
    pub event_id: i32,
    /// Only this pool, if given.
    pub pool: Option<NonnullPool>,
}

/// `remote_storage_pool_get_info_ret` (`unsigned char state` travels as 4 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfoRet {
    /// `virStoragePoolState`.
    pub state: u32,
    /// Bytes.
    pub capacity: u64,
    /// Bytes.
    pub allocation: u64,
    /// Bytes.
    pub available: u64,
}

/// `remote_storage_vol_get_info_ret` (`char type` travels as 4 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolInfoRet {
    /// `virStorageVolType`.
    pub kind: i32,
    /// Bytes.
    pub capacity: u64,
    /// Bytes.
    pub allocation: u64,
}

/// `remote_connect_list_all_storage_pools_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAllPoolsRet {
    /// The pools.
    pub pools: Vec<NonnullPool>,
    /// How many matched.
    pub ret: u32,
}

/// `remote_storage_pool_list_all_volumes_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAllVolumesRet {
    /// The volumes.
    pub vols: Vec<NonnullVol>,
    /// How many there are.
    pub ret: u32,
}

/// `remote_storage_pool_event_lifecycle_msg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolLifecycleMsg {
    /// The client's registration.
    pub callback_id: i32,
    /// The pool.
    pub pool: NonnullPool,
    /// `virStoragePoolEventLifecycleType`.
    pub event: i32,
    /// Its detail.
    pub detail: i32,
}

/// `remote_storage_pool_event_refresh_msg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRefreshMsg {
    /// The client's registration.
    pub callback_id: i32,
    /// The pool.
    pub pool: NonnullPool,
}
