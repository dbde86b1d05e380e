//! The storage calls (libvirt's storage pools and volumes) the frontend
//! forwards to the broker, their results, events and typed failures.
//!
//! The frontend decodes a client's XDR into a [`StorageCall`]; the broker
//! carries it out (`broker/storage.rs`) and answers a [`StorageValue`] or a
//! [`StorageError`], which `rpc/error.rs` maps to libvirt's storage errors.

use serde::{Deserialize, Serialize};

use crate::rpc::remote::{Access, RemoteProc};

/// A pool handle as it travels (`remote_nonnull_storage_pool`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRef {
    /// Name.
    pub name: String,
    /// Raw UUID.
    pub uuid: [u8; 16],
}

/// A volume handle as it travels (`remote_nonnull_storage_vol`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolRef {
    /// Its pool's name.
    pub pool: String,
    /// Its name in the pool.
    pub name: String,
    /// Its key (the path, as libvirt's directory pools use).
    pub key: String,
}

/// A storage call, each one libvirt API (or a family of them with one shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageCall {
    /// `virConnectListAllStoragePools` (`need_results` false: count only).
    ListPools {
        /// `virConnectListAllStoragePoolsFlags`.
        flags: u32,
        /// Whether the pools themselves are wanted.
        need_results: bool,
    },
    /// `virConnectNumOf(Defined)StoragePools` / `virConnectList(Defined)StoragePools`.
    PoolNames {
        /// Active pools (true) or inactive ones.
        active: bool,
        /// Most names (`None`: only the count).
        max: Option<i32>,
    },
    /// `virStoragePoolLookupByName`.
    PoolByName(String),
    /// `virStoragePoolLookupByUUID`.
    PoolByUuid([u8; 16]),
    /// `virStoragePoolLookupByTargetPath` (compared, never opened).
    PoolByPath(String),
    /// `virStoragePoolLookupByVolume`.
    PoolOfVolume(VolRef),
    /// `virStoragePoolDefineXML`.
    DefinePool {
        /// The pool XML.
        xml: String,
        /// `virStoragePoolDefineFlags`.
        flags: u32,
    },
    /// `virStoragePoolCreateXML`: a transient pool, started.
    CreatePoolXml {
        /// The pool XML.
        xml: String,
        /// `virStoragePoolCreateFlags`.
        flags: u32,
    },
    /// A change to one pool.
    Pool {
        /// The pool.
        pool: PoolRef,
        /// What to do.
        op: PoolOp,
    },
    /// A read-only question about one pool.
    PoolQuery {
        /// The pool.
        pool: PoolRef,
        /// The question.
        query: PoolQuery,
    },
    /// `virStorageVolCreateXML` (`from: None`) and `virStorageVolCreateXMLFrom`.
    CreateVol {
        /// The pool to create it in.
        pool: PoolRef,
        /// The volume XML.
        xml: String,
        /// The volume to copy, for `CreateXMLFrom`.
        from: Option<VolRef>,
        /// `virStorageVolCreateFlags`.
        flags: u32,
    },
    /// `virStorageVolLookupByName`.
    VolByName {
        /// The pool.
        pool: PoolRef,
        /// The volume's name.
        name: String,
    },
    /// `virStorageVolLookupByPath` (compared, never opened).
    VolByPath(String),
    /// `virStorageVolLookupByKey` (a volume's key is its path).
    VolByKey(String),
    /// A change to one volume.
    Vol {
        /// The volume.
        vol: VolRef,
        /// What to do.
        op: VolOp,
    },
    /// A read-only question about one volume.
    VolQuery {
        /// The volume.
        vol: VolRef,
        /// The question.
        query: VolQuery,
    },
    /// `virConnectGetStoragePoolCapabilities`.
    Capabilities {
        /// Must be 0.
        flags: u32,
    },
}

/// What a pool call changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolOp {
    /// `virStoragePoolCreate`: start it.
    Start {
        /// `virStoragePoolCreateFlags`.
        flags: u32,
    },
    /// `virStoragePoolBuild`.
    Build {
        /// `virStoragePoolBuildFlags`.
        flags: u32,
    },
    /// `virStoragePoolDestroy`.
    Stop,
    /// `virStoragePoolDelete`: remove its directory.
    Delete {
        /// `virStoragePoolDeleteFlags`.
        flags: u32,
    },
    /// `virStoragePoolUndefine`.
    Undefine,
    /// `virStoragePoolRefresh`.
    Refresh {
        /// Must be 0.
        flags: u32,
    },
    /// `virStoragePoolSetAutostart`.
    SetAutostart(bool),
}

/// What a question asks of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolQuery {
    /// `virStoragePoolGetInfo`.
    Info,
    /// `virStoragePoolGetXMLDesc`.
    XmlDesc {
        /// `VIR_STORAGE_XML_INACTIVE` only.
        flags: u32,
    },
    /// `virStoragePoolGetAutostart`.
    Autostart,
    /// `virStoragePoolIsActive`.
    IsActive,
    /// `virStoragePoolIsPersistent`.
    IsPersistent,
    /// `virStoragePoolNumOfVolumes`.
    NumVolumes,
    /// `virStoragePoolListVolumes`.
    VolumeNames {
        /// Most names.
        max: i32,
    },
    /// `virStoragePoolListAllVolumes`.
    Volumes {
        /// Whether the volumes themselves are wanted.
        need_results: bool,
        /// Must be 0.
        flags: u32,
    },
}

/// What a volume call changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolOp {
    /// `virStorageVolDelete`.
    Delete {
        /// `virStorageVolDeleteFlags`.
        flags: u32,
    },
    /// `virStorageVolWipe(Pattern)`.
    Wipe {
        /// `virStorageVolWipeAlgorithm` for `virStorageVolWipePattern`;
        /// `None` for `virStorageVolWipe` (zeroes).
        algorithm: Option<u32>,
        /// Must be 0.
        flags: u32,
    },
    /// `virStorageVolResize`.
    Resize {
        /// The new capacity (or delta, with DELTA).
        capacity: u64,
        /// `virStorageVolResizeFlags`.
        flags: u32,
    },
    /// `virStorageVolUpload`: the file's fd comes back with the answer.
    Upload {
        /// Where writing starts.
        offset: u64,
        /// Most bytes (0: to the end).
        length: u64,
        /// Must be 0.
        flags: u32,
    },
    /// `virStorageVolDownload`: the file's fd comes back with the answer.
    Download {
        /// Where reading starts.
        offset: u64,
        /// Most bytes (0: to the end).
        length: u64,
        /// `VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM` is refused.
        flags: u32,
    },
}

/// What a question asks of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolQuery {
    /// `virStorageVolGetInfo(Flags)`.
    Info {
        /// `VIR_STORAGE_VOL_GET_PHYSICAL` only.
        flags: u32,
    },
    /// `virStorageVolGetXMLDesc`.
    XmlDesc {
        /// Must be 0.
        flags: u32,
    },
    /// `virStorageVolGetPath`.
    Path,
}

impl StorageCall {
    /// The procedure this call carries out, so that its access rule and
    /// API name come from its row of `policy/procedures.tsv` (see
    /// `privsep/procedure.rs`); a call tells its procedure from its own
    /// contents, never from a label the frontend could choose.
    pub fn procedure(&self) -> RemoteProc {
        use RemoteProc as P;
        match self {
            StorageCall::ListPools { .. } => P::ConnectListAllStoragePools,
            StorageCall::PoolNames { active: true, max: None } => P::ConnectNumOfStoragePools,
            StorageCall::PoolNames { active: true, max: Some(_) } => P::ConnectListStoragePools,
            StorageCall::PoolNames { active: false, max: None } => P::ConnectNumOfDefinedStoragePools,
            StorageCall::PoolNames { active: false, max: Some(_) } => P::ConnectListDefinedStoragePools,
            StorageCall::PoolByName(_) => P::StoragePoolLookupByName,
            StorageCall::PoolByUuid(_) => P::StoragePoolLookupByUuid,
            StorageCall::PoolByPath(_) => P::StoragePoolLookupByTargetPath,
            StorageCall::PoolOfVolume(_) => P::StoragePoolLookupByVolume,
            StorageCall::DefinePool { .. } => P::StoragePoolDefineXml,
            StorageCall::CreatePoolXml { .. } => P::StoragePoolCreateXml,
            StorageCall::Pool { op, .. } => match op {
                PoolOp::Start { .. } => P::StoragePoolCreate,
                PoolOp::Build { .. } => P::StoragePoolBuild,
                PoolOp::Stop => P::StoragePoolDestroy,
                PoolOp::Delete { .. } => P::StoragePoolDelete,
                PoolOp::Undefine => P::StoragePoolUndefine,
                PoolOp::Refresh { .. } => P::StoragePoolRefresh,
                PoolOp::SetAutostart(_) => P::StoragePoolSetAutostart,
            },
            StorageCall::PoolQuery { query, .. } => match query {
                PoolQuery::Info => P::StoragePoolGetInfo,
                PoolQuery::XmlDesc { .. } => P::StoragePoolGetXmlDesc,
                PoolQuery::Autostart => P::StoragePoolGetAutostart,
                PoolQuery::IsActive => P::StoragePoolIsActive,
                PoolQuery::IsPersistent => P::StoragePoolIsPersistent,
                PoolQuery::NumVolumes => P::StoragePoolNumOfVolumes,
                PoolQuery::VolumeNames { .. } => P::StoragePoolListVolumes,
                PoolQuery::Volumes { .. } => P::StoragePoolListAllVolumes,
            },
            StorageCall::CreateVol { from: None, .. } => P::StorageVolCreateXml,
            StorageCall::CreateVol { from: Some(_), .. } => P::StorageVolCreateXmlFrom,
            StorageCall::VolByName { .. } => P::StorageVolLookupByName,
            StorageCall::VolByPath(_) => P::StorageVolLookupByPath,
            StorageCall::VolByKey(_) => P::StorageVolLookupByKey,
            StorageCall::Vol { op, .. } => match op {
                VolOp::Delete { .. } => P::StorageVolDelete,
                VolOp::Wipe { algorithm: None, .. } => P::StorageVolWipe,
                VolOp::Wipe { algorithm: Some(_), .. } => P::StorageVolWipePattern,
                VolOp::Resize { .. } => P::StorageVolResize,
                VolOp::Upload { .. } => P::StorageVolUpload,
                VolOp::Download { .. } => P::StorageVolDownload,
            },
            StorageCall::VolQuery { query, .. } => match query {
                VolQuery::Info { flags: 0 } => P::StorageVolGetInfo,
                VolQuery::Info { .. } => P::StorageVolGetInfoFlags,
                VolQuery::XmlDesc { .. } => P::StorageVolGetXmlDesc,
                VolQuery::Path => P::StorageVolGetPath,
            },
            StorageCall::Capabilities { .. } => P::ConnectGetStoragePoolCapabilities,
        }
    }

    /// Whether the call needs a read-write connection: its procedure's
    /// access class in the table.
    pub fn mutates(&self) -> bool {
        self.procedure().access() == Access::ReadWrite
    }

    /// The stream a call opens, if any: (upload, byte limit; 0 for none).
    pub fn opens_stream(&self) -> Option<(bool, u64)> {
        match self {
            StorageCall::Vol { op: VolOp::Upload { length, .. }, .. } => Some((true, *length)),
            StorageCall::Vol { op: VolOp::Download { length, .. }, .. } => Some((false, *length)),
            _ => None,
        }
    }
}

/// `virStoragePoolGetInfo`'s figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// `virStoragePoolState`.
    pub state: i32,
    /// Bytes.
    pub capacity: u64,
    /// Bytes.
    pub allocation: u64,
    /// Bytes.
    pub available: u64,
}

/// A storage call's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageValue {
    /// No value.
    Unit,
    /// One pool.
    Pool(PoolRef),
    /// Pools and how many matched.
    Pools {
        /// The pools (empty if not asked for).
        list: Vec<PoolRef>,
        /// How many matched.
        count: u32,
    },
    /// One volume.
    Vol(VolRef),
    /// Volumes and how many there are.
    Vols {
        /// The volumes (empty if not asked for).
        list: Vec<VolRef>,
        /// How many there are.
        count: u32,
    },
    /// Names.
    Names(Vec<String>),
    /// A number (count, flag).
    Int(i32),
    /// A string (XML, path).
    Text(String),
    /// `virStoragePoolGetInfo`.
    PoolInfo(PoolInfo),
    /// `virStorageVolGetInfo`: type, capacity, allocation.
    VolInfo {
        /// `virStorageVolType`.
        kind: i32,
        /// Bytes.
        capacity: u64,
        /// Bytes.
        allocation: u64,
    },
    /// A volume's file: one fd travels with the reply.
    Stream,
}

/// A storage pool event (`virStoragePoolEventID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolEvent {
    /// The pool.
    pub pool: PoolRef,
    /// `None`: a refresh event; otherwise the lifecycle event and detail.
    pub lifecycle: Option<(i32, i32)>,
}

/// `virStoragePoolEventLifecycleType` values.
pub mod pool_event {
    /// DEFINED.
    pub const DEFINED: i32 = 0;
    /// UNDEFINED.
    pub const UNDEFINED: i32 = 1;
    /// STARTED.
    pub const STARTED: i32 = 2;
    /// STOPPED.
    pub const STOPPED: i32 = 3;
    /// CREATED (built).
    pub const CREATED: i32 = 4;
    /// DELETED.
    pub const DELETED: i32 = 5;
}

/// Why a storage call failed, mapped to libvirt's storage errors in `rpc::error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StorageError {
    /// `VIR_ERR_NO_STORAGE_POOL`.
    #[error("{0}")]
    NoPool(String),
    /// `VIR_ERR_NO_STORAGE_VOL`.
    #[error("{0}")]
    NoVol(String),
    /// `VIR_ERR_STORAGE_VOL_EXIST`.
    #[error("'{0}'")]
    VolExists(String),
    /// `VIR_ERR_OPERATION_FAILED` (a duplicate pool, a failed tool).
    #[error("{0}")]
    Failed(String),
    /// `VIR_ERR_OPERATION_INVALID` (the pool's state forbids it).
    #[error("{0}")]
    Invalid(String),
    /// `VIR_ERR_INVALID_ARG`.
    #[error("{0}")]
    InvalidArg(String),
    /// `VIR_ERR_XML_ERROR`: well-formed XML that is no valid pool or volume.
    #[error("{0}")]
    Xml(String),
    /// `VIR_ERR_XML_DETAIL`: XML that does not parse.
    #[error("{0}")]
    XmlSyntax(String),
    /// `VIR_ERR_INTERNAL_ERROR` (a pool type with no backend here, ...).
    #[error("{0}")]
    Internal(String),
    /// `VIR_ERR_SYSTEM_ERROR`: a file operation failed.
    #[error("{0}")]
    System(String),
    /// `VIR_ERR_NO_SUPPORT`.
    #[error("{0}")]
    NoSupport(String),
    /// `VIR_ERR_INVALID_ARG` for flags the call does not know.
    #[error("unsupported flags (0x{flags:x}) in function {function}")]
    Flags {
        /// The flags.
        flags: u32,
        /// The driver function.
        function: String,
    },
}

impl StorageError {
    /// The same error with its text cut to the message cap.
    pub fn clipped(self) -> StorageError {
        let c = |s: String| crate::rpc::error::clip(&s, crate::rpc::error::MAX_MESSAGE_BYTES).into_owned();
        match self {
            StorageError::NoPool(s) => StorageError::NoPool(c(s)),
            StorageError::NoVol(s) => StorageError::NoVol(c(s)),
            StorageError::VolExists(s) => StorageError::VolExists(c(s)),
            StorageError::Failed(s) => StorageError::Failed(c(s)),
            StorageError::Invalid(s) => StorageError::Invalid(c(s)),
            StorageError::InvalidArg(s) => StorageError::InvalidArg(c(s)),
            StorageError::Xml(s) => StorageError::Xml(c(s)),
            StorageError::XmlSyntax(s) => StorageError::XmlSyntax(c(s)),
            StorageError::Internal(s) => StorageError::Internal(c(s)),
            StorageError::System(s) => StorageError::System(c(s)),
            StorageError::NoSupport(s) => StorageError::NoSupport(c(s)),
            StorageError::Flags { flags, function } => StorageError::Flags { flags, function: c(function) },
        }
    }
}
