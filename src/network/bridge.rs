//! A network's bridge, made over rtnetlink (`netlink-packet-route` on a
//! synchronous `netlink-sys` socket, no shell commands): created with its
//! MAC, MTU, STP and forward delay, given its addresses, brought up, and
//! deleted. Each request waits for the kernel's acknowledgement, so a
//! failure is reported with the kernel's errno.

use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    BridgeStpState, InfoBridge, InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Why a bridge operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The netlink socket could not be used.
    #[error("netlink: {0}")]
    Socket(std::io::Error),
    /// The kernel refused a request.
    #[error("cannot {what} '{name}': {source}")]
    Kernel {
        /// What was asked.
        what: &'static str,
        /// The interface.
        name: String,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// The interface does not exist.
    #[error("no interface '{0}'")]
    Missing(String),
}

/// What a new bridge looks like.
#[derive(Debug, Clone)]
pub struct BridgeSpec<'a> {
    /// Name.
    pub name: &'a str,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Spanning tree.
    pub stp: bool,
    /// Forward delay, seconds.
    pub delay: u32,
}

/// The index of interface `name`, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Sends one request and waits for its acknowledgement.
fn request(msg: RouteNetlinkMessage, flags: u16, what: &'static str, name: &str) -> Result<(), BridgeError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(BridgeError::Socket)?;
    socket.bind_auto().map_err(BridgeError::Socket)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(BridgeError::Socket)?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(BridgeError::Socket)?;
    let mut rx: Vec<u8> = Vec::with_capacity(8192);
    loop {
        rx.clear();
        let n = socket.recv(&mut rx, 0).map_err(BridgeError::Socket)?;
        let mut off = 0;
        while off < n.min(rx.len()) {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..])
                .map_err(|e| BridgeError::Socket(std::io::Error::other(e.to_string())))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(BridgeError::Kernel { what, name: name.to_owned(), source: e.to_io() }),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(()),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// Creates bridge `spec` (down, without addresses).
pub fn create(spec: &BridgeSpec) -> Result<(), BridgeError> {
    let mut m = LinkMessage::default();
    let stp = if spec.stp { BridgeStpState::KernelStp } else { BridgeStpState::Disabled };
    // The kernel counts forward delay in centiseconds.
    let bridge = vec![InfoBridge::StpState(stp), InfoBridge::ForwardDelay(spec.delay.saturating_mul(100))];
    m.attributes.push(LinkAttribute::IfName(spec.name.to_owned()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Bridge),
        LinkInfo::Data(InfoData::Bridge(bridge)),
    ]));
    if let Some(mac) = spec.mac {
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    if let Some(mtu) = spec.mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL, "create bridge", spec.name)
}

/// Adds address `addr/prefix` to interface `name`.
pub fn add_address(name: &str, addr: IpAddr, prefix: u8) -> Result<(), BridgeError> {
    let index = ifindex(name).ok_or_else(|| BridgeError::Missing(name.to_owned()))?;
    let mut m = AddressMessage::default();
    m.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(addr));
    m.attributes.push(AddressAttribute::Address(addr));
    if let IpAddr::V4(v4) = addr
        && prefix < 31
    {
        let host_bits = 32 - u32::from(prefix);
        let bcast = u32::from(v4) | ((1u32 << host_bits) - 1);
        m.attributes.push(AddressAttribute::Broadcast(bcast.into()));
    }
    request(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL, "add an address to", name)
}

/// Brings interface `name` up.
pub fn set_up(name: &str) -> Result<(), BridgeError> {
    let index = ifindex(name).ok_or_else(|| BridgeError::Missing(name.to_owned()))?;
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    request(RouteNetlinkMessage::SetLink(m), 0, "bring up", name)
}

/// Applies link change `m` to interface `name` (`what` names it in errors).
pub fn set_link(m: LinkMessage, what: &'static str, name: &str) -> Result<(), BridgeError> {
    request(RouteNetlinkMessage::SetLink(m), 0, what, name)
}

/// Deletes interface `name`; one that is already gone is no error.
pub fn delete(name: &str) -> Result<(), BridgeError> {
    let Some(index) = ifindex(name) else { return Ok(()) };
    let mut m = LinkMessage::default();
    m.header.index = index;
    request(RouteNetlinkMessage::DelLink(m), 0, "delete", name)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn mac_bytes(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Whether `a`'s subnet overlaps a route or address the host already has
/// (IPv4 routes from `/proc/net/route`, of this network namespace), other
/// than on `own_bridge`. Returns the interface that has it.
pub fn subnet_in_use(a: &IpAddr, prefix: u8, own_bridge: &str) -> Option<String> {
    let IpAddr::V4(_) = a else { return None };
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    for line in text.lines().skip(1).take(65_536) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [iface, dest, _gw, _flags, _, _, _, mask, ..] = f[..] else { continue };
        if iface == own_bridge {
            continue;
        }
        let (Ok(dest), Ok(mask)) = (u32::from_str_radix(dest, 16), u32::from_str_radix(mask, 16)) else { continue };
        // /proc/net/route prints each address's bytes as a host-order word.
        let (dest, mask) = (u32::from_be_bytes(dest.to_le_bytes()), u32::from_be_bytes(mask.to_le_bytes()));
        // A default route (mask 0) overlaps nothing in particular.
        if mask == 0 {
            continue;
        }
        let other_prefix = mask.leading_ones() as u8;
        let p = other_prefix.min(prefix);
        let other = IpAddr::V4(std::net::Ipv4Addr::from(dest));
        if super::xml::same_subnet(a, &other, p) {
            return Some(iface.to_owned());
        }
    }
    None
}
