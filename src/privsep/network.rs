//! The virtual-network calls (libvirt's network driver) the frontend
//! forwards to the broker, their results, events and typed failures. One
//! [`super::Call::Network`] variant carries them, so the domain calls and
//! these grow apart.

use serde::{Deserialize, Serialize};

use crate::rpc::remote::{Access, RemoteProc};

/// A network handle as it goes back to the client (`remote_nonnull_network`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRef {
    /// Name.
    pub name: String,
    /// Raw UUID.
    pub uuid: [u8; 16],
}

/// A network lifecycle event (`VIR_NETWORK_EVENT_ID_LIFECYCLE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetEvent {
    /// The network.
    pub net: NetRef,
    /// `virNetworkEventLifecycleType`: DEFINED 0, UNDEFINED 1, STARTED 2, STOPPED 3.
    pub event: i32,
}

/// One DHCP lease (`virNetworkDHCPLease`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The network's bridge.
    pub iface: String,
    /// Seconds since the epoch when it expires (0: never).
    pub expiry: i64,
    /// `virIPAddrType`: IPv4 0, IPv6 1.
    pub kind: i32,
    /// The client's MAC.
    pub mac: Option<String>,
    /// DHCPv6 IAID.
    pub iaid: Option<String>,
    /// The address.
    pub ip: String,
    /// Its prefix length on the network.
    pub prefix: u32,
    /// The client's host name.
    pub hostname: Option<String>,
    /// The client id.
    pub client_id: Option<String>,
}

/// Everything a client may ask of the network driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetCall {
    /// `virConnectListAllNetworks` (and the legacy list/count calls).
    ListAll {
        /// `virConnectListAllNetworksFlags`.
        flags: u32,
    },
    /// `virConnectListNetworks` / `ListDefinedNetworks` (and their counts):
    /// names of the networks `flags` picks, at most `max`.
    ListNames {
        /// `virConnectListAllNetworksFlags`.
        flags: u32,
        /// Most names.
        max: u32,
        /// Only how many (`virConnectNumOf(Defined)Networks`).
        count: bool,
    },
    /// `virNetworkLookupByName`.
    LookupByName(String),
    /// `virNetworkLookupByUUID`.
    LookupByUuid([u8; 16]),
    /// `virNetworkDefineXML(Flags)`.
    Define {
        /// The XML.
        xml: String,
        /// `virNetworkDefineFlags` (VALIDATE).
        flags: u32,
    },
    /// `virNetworkCreateXML(Flags)`: a transient network, started.
    CreateXml {
        /// The XML.
        xml: String,
        /// `virNetworkCreateFlags` (VALIDATE).
        flags: u32,
    },
    /// `virNetworkUndefine`.
    Undefine([u8; 16]),
    /// `virNetworkCreate`: start a defined network.
    Start([u8; 16]),
    /// `virNetworkDestroy`.
    Destroy([u8; 16]),
    /// `virNetworkSetAutostart`.
    SetAutostart {
        /// The network.
        uuid: [u8; 16],
        /// On or off.
        on: bool,
    },
    /// `virNetworkGetXMLDesc`.
    XmlDesc {
        /// The network.
        uuid: [u8; 16],
        /// `VIR_NETWORK_XML_INACTIVE`.
        flags: u32,
    },
    /// `virNetworkGetBridgeName`.
    BridgeName([u8; 16]),
    /// `virNetworkGetAutostart`.
    Autostart([u8; 16]),
    /// `virNetworkIsActive`.
    IsActive([u8; 16]),
    /// `virNetworkIsPersistent`.
    IsPersistent([u8; 16]),
    /// `virNetworkUpdate`.
    Update {
        /// The network.
        uuid: [u8; 16],
        /// `virNetworkUpdateCommand`.
        command: u32,
        /// `virNetworkUpdateSection`.
        section: u32,
        /// Index of the `<ip>` element, -1 for the first.
        parent_index: i32,
        /// The element to add, delete or modify.
        xml: String,
        /// `virNetworkUpdateFlags`.
        flags: u32,
    },
    /// `virNetworkGetDHCPLeases`.
    Leases {
        /// The network.
        uuid: [u8; 16],
        /// Only this MAC's leases.
        mac: Option<String>,
        /// Must be 0.
        flags: u32,
    },
}

impl NetCall {
    /// The procedure this call carries out, so that its access rule comes
    /// from its row of `policy/procedures.tsv` (`privsep/procedure.rs`),
    /// told from the call's own contents.
    pub fn procedure(&self) -> RemoteProc {
        use RemoteProc as P;
        const ACTIVE: u32 = 2;
        match self {
            NetCall::ListAll { .. } => P::ConnectListAllNetworks,
            NetCall::ListNames { flags, count: true, .. } if flags & ACTIVE != 0 => P::ConnectNumOfNetworks,
            NetCall::ListNames { count: true, .. } => P::ConnectNumOfDefinedNetworks,
            NetCall::ListNames { flags, .. } if flags & ACTIVE != 0 => P::ConnectListNetworks,
            NetCall::ListNames { .. } => P::ConnectListDefinedNetworks,
            NetCall::LookupByName(_) => P::NetworkLookupByName,
            NetCall::LookupByUuid(_) => P::NetworkLookupByUuid,
            NetCall::Define { .. } => P::NetworkDefineXmlFlags,
            NetCall::CreateXml { .. } => P::NetworkCreateXmlFlags,
            NetCall::Undefine(_) => P::NetworkUndefine,
            NetCall::Start(_) => P::NetworkCreate,
            NetCall::Destroy(_) => P::NetworkDestroy,
            NetCall::SetAutostart { .. } => P::NetworkSetAutostart,
            NetCall::XmlDesc { .. } => P::NetworkGetXmlDesc,
            NetCall::BridgeName(_) => P::NetworkGetBridgeName,
            NetCall::Autostart(_) => P::NetworkGetAutostart,
            NetCall::IsActive(_) => P::NetworkIsActive,
            NetCall::IsPersistent(_) => P::NetworkIsPersistent,
            NetCall::Update { .. } => P::NetworkUpdate,
            NetCall::Leases { .. } => P::NetworkGetDhcpLeases,
        }
    }

    /// Whether the call changes anything (refused on read-only
    /// connections): its procedure's access class in the table.
    pub fn mutates(&self) -> bool {
        self.procedure().access() == Access::ReadWrite
    }

    /// The public API it implements, as errors name it.
    pub fn api(&self) -> &'static str {
        match self {
            NetCall::ListAll { .. } => "virConnectListAllNetworks",
            NetCall::ListNames { .. } => "virConnectListNetworks",
            NetCall::LookupByName(_) => "virNetworkLookupByName",
            NetCall::LookupByUuid(_) => "virNetworkLookupByUUID",
            NetCall::Define { .. } => "virNetworkDefineXML",
            NetCall::CreateXml { .. } => "virNetworkCreateXML",
            NetCall::Undefine(_) => "virNetworkUndefine",
            NetCall::Start(_) => "virNetworkCreate",
            NetCall::Destroy(_) => "virNetworkDestroy",
            NetCall::SetAutostart { .. } => "virNetworkSetAutostart",
            NetCall::XmlDesc { .. } => "virNetworkGetXMLDesc",
            NetCall::BridgeName(_) => "virNetworkGetBridgeName",
            NetCall::Autostart(_) => "virNetworkGetAutostart",
            NetCall::IsActive(_) => "virNetworkIsActive",
            NetCall::IsPersistent(_) => "virNetworkIsPersistent",
            NetCall::Update { .. } => "virNetworkUpdate",
            NetCall::Leases { .. } => "virNetworkGetDHCPLeases",
        }
    }
}

/// A network call's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetValue {
    /// No value.
    Unit,
    /// One network.
    Net(NetRef),
    /// Networks.
    Nets(Vec<NetRef>),
    /// Network names.
    Names(Vec<String>),
    /// A string.
    Text(String),
    /// A number (booleans as 0/1).
    Int(i32),
    /// DHCP leases.
    Leases(Vec<Lease>),
}

/// Why a network call failed; `rpc::error` maps each to libvirt's code, in
/// the network error domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NetError {
    /// `VIR_ERR_NO_NETWORK` by name.
    #[error("no network with matching name '{0}'")]
    NoName(String),
    /// `VIR_ERR_NO_NETWORK` by UUID.
    #[error("no network with matching uuid '{0}'")]
    NoUuid(String),
    /// The XML is not well formed or not a network (`VIR_ERR_XML_ERROR`).
    #[error("{0}")]
    Xml(String),
    /// Valid but asks for what this daemon cannot do (`VIR_ERR_CONFIG_UNSUPPORTED`).
    #[error("{0}")]
    Unsupported(String),
    /// Not possible in the network's state (`VIR_ERR_OPERATION_INVALID`).
    #[error("{0}")]
    Invalid(String),
    /// It was tried and failed (`VIR_ERR_OPERATION_FAILED`).
    #[error("{0}")]
    Failed(String),
    /// A bad argument (`VIR_ERR_INVALID_ARG`).
    #[error("{0}")]
    InvalidArg(String),
    /// Flags the call does not know.
    #[error("unsupported flags (0x{flags:x}) in function {function}")]
    Flags {
        /// The flags given.
        flags: u32,
        /// Our function's name.
        function: String,
    },
    /// A host operation failed (`VIR_ERR_INTERNAL_ERROR`).
    #[error("{0}")]
    Internal(String),
    /// The connection is read-only (the broker's own check).
    #[error("read only access prevents {0}")]
    ReadOnly(String),
}

impl NetError {
    /// The same error with its text cut to the message cap.
    pub fn clipped(self) -> NetError {
        let max = crate::rpc::error::MAX_MESSAGE_BYTES;
        let c = |s: String| crate::rpc::error::clip(&s, max).into_owned();
        match self {
            NetError::NoName(s) => NetError::NoName(c(s)),
            NetError::NoUuid(s) => NetError::NoUuid(c(s)),
            NetError::Xml(s) => NetError::Xml(c(s)),
            NetError::Unsupported(s) => NetError::Unsupported(c(s)),
            NetError::Invalid(s) => NetError::Invalid(c(s)),
            NetError::Failed(s) => NetError::Failed(c(s)),
            NetError::InvalidArg(s) => NetError::InvalidArg(c(s)),
            NetError::Flags { flags, function } => NetError::Flags { flags, function: c(function) },
            NetError::Internal(s) => NetError::Internal(c(s)),
            NetError::ReadOnly(s) => NetError::ReadOnly(c(s)),
        }
    }
}
