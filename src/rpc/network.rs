//! The argument and return structs of the network procedures, as
//! `remote_protocol.x` lays them out.

use serde::{Deserialize, Serialize};

use super::remote::{NonnullNetwork, Uuid};

/// `REMOTE_PROC_NETWORK_EVENT_LIFECYCLE`, the event message's number.
pub const NETWORK_EVENT_LIFECYCLE: i32 = 315;
/// `REMOTE_NETWORK_DHCP_LEASES_MAX`.
pub const DHCP_LEASES_MAX: usize = 65_536;

/// Arguments that are one network (`remote_network_create_args`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetArg {
    /// The network.
    pub net: NonnullNetwork,
}

/// `remote_network_get_xml_desc_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetFlagsArgs {
    /// The network.
    pub net: NonnullNetwork,
    /// Flags.
    pub flags: u32,
}

/// `remote_network_set_autostart_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSetAutostartArgs {
    /// The network.
    pub net: NonnullNetwork,
    /// 0 or 1.
    pub autostart: i32,
}

/// `remote_network_lookup_by_uuid_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetUuidArg {
    /// The UUID.
    pub uuid: Uuid,
}

/// `remote_network_lookup_by_name_ret` (and define, create): one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRet {
    /// The network.
    pub net: NonnullNetwork,
}

/// `remote_connect_list_all_networks_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAllNetworksArgs {
    /// Whether the networks are wanted or only their count.
    pub need_results: i32,
    /// `virConnectListAllNetworksFlags`.
    pub flags: u32,
}

/// `remote_connect_list_all_networks_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAllNetworksRet {
    /// The networks.
    pub nets: Vec<NonnullNetwork>,
    /// How many.
    pub ret: u32,
}

/// `remote_network_update_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetUpdateArgs {
    /// The network.
    pub net: NonnullNetwork,
    /// `virNetworkUpdateCommand`. In this order because the daemon
    /// announces `VIR_DRV_FEATURE_NETWORK_UPDATE_HAS_CORRECT_ORDER` (16);
    /// clients of a daemon without it send the two words swapped.
    pub command: u32,
    /// `virNetworkUpdateSection`.
    pub section: u32,
    /// `<ip>` index, -1 for any.
    pub parent_index: i32,
    /// The element.
    pub xml: String,
    /// `virNetworkUpdateFlags`.
    pub flags: u32,
}

/// `remote_connect_network_event_register_any_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetEventRegisterArgs {
    /// `virNetworkEventID`.
    pub event_id: i32,
    /// Only this network, if given.
    pub net: Option<NonnullNetwork>,
}

/// `remote_network_event_lifecycle_msg`, sent as a MESSAGE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetLifecycleMsg {
    /// The client's registration.
    pub callback_id: i32,
    /// The network.
    pub net: NonnullNetwork,
    /// `virNetworkEventLifecycleType`.
    pub event: i32,
    /// Its detail (0).
    pub detail: i32,
}

/// `remote_network_get_dhcp_leases_args`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetLeasesArgs {
    /// The network.
    pub net: NonnullNetwork,
    /// Only this MAC.
    pub mac: Option<String>,
    /// Whether the leases are wanted or only their count.
    pub need_results: i32,
    /// Must be 0.
    pub flags: u32,
}

/// `remote_network_dhcp_lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpLeaseWire {
    /// The bridge.
    pub iface: String,
    /// Expiry, seconds since the epoch.
    pub expirytime: i64,
    /// `virIPAddrType`.
    pub kind: i32,
    /// MAC.
    pub mac: Option<String>,
    /// IAID.
    pub iaid: Option<String>,
    /// Address.
    pub ipaddr: String,
    /// Prefix length.
    pub prefix: u32,
    /// Host name.
    pub hostname: Option<String>,
    /// Client id.
    pub clientid: Option<String>,
}

/// `remote_network_get_dhcp_leases_ret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetLeasesRet {
    /// The leases.
    pub leases: Vec<DhcpLeaseWire>,
    /// How many.
    pub ret: u32,
}
