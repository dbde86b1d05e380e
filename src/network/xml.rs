//! Network XML (libvirt's `<network>`): what we model, what we refuse, and
//! the canonical form written back. Parsed bounded (the domain XML parser's
//! limits on size, depth and nodes), then checked: forward modes other than
//! `nat`, `route`, `open` and isolated, and elements we do not act on, are
//! refused naming them rather than silently dropped.

use std::net::IpAddr;

use crate::domain::xml::{self, Element};
use crate::domain::{parse_uuid, uuid_string};

/// Largest network XML accepted, in bytes.
pub const MAX_NETWORK_XML: usize = 256 * 1024;
/// Most `<ip>` elements in one network.
const MAX_IPS: usize = 16;
/// Most `<host>` entries in one `<dhcp>`.
pub const MAX_HOSTS: usize = 4096;
/// Most `<range>` entries in one `<dhcp>`.
const MAX_RANGES: usize = 64;
/// Longest network name (its files and the bridge must fit).
const MAX_NAME: usize = 200;

/// How traffic leaves the network (`<forward mode=...>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// No `<forward>`: guests reach each other and the host only.
    Isolated,
    /// Masqueraded to the host's addresses.
    Nat,
    /// Routed, without NAT.
    Route,
    /// Routed, with no firewall rules at all.
    Open,
}

impl Forward {
    fn name(self) -> Option<&'static str> {
        match self {
            Forward::Isolated => None,
            Forward::Nat => Some("nat"),
            Forward::Route => Some("route"),
            Forward::Open => Some("open"),
        }
    }
}

/// One `<host>` of a `<dhcp>`: a fixed address for a MAC (or client id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpHost {
    /// MAC address, lower case.
    pub mac: Option<String>,
    /// DHCPv6 client id.
    pub id: Option<String>,
    /// Host name.
    pub name: Option<String>,
    /// The address it gets.
    pub ip: Option<IpAddr>,
}

/// One `<ip>` of a network: the bridge's address and its DHCP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpDef {
    /// The bridge's address.
    pub address: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// Written as `netmask=` (IPv4, as given) rather than `prefix=`.
    pub netmask_form: bool,
    /// DHCP ranges (start, end).
    pub ranges: Vec<(IpAddr, IpAddr)>,
    /// Fixed DHCP hosts.
    pub hosts: Vec<DhcpHost>,
    /// A `<dhcp>` element was given (even empty).
    pub dhcp: bool,
}

impl IpDef {
    /// Whether `a` lies in this address's subnet.
    pub fn contains(&self, a: &IpAddr) -> bool {
        same_subnet(&self.address, a, self.prefix)
    }

    /// The subnet in CIDR form (`192.168.122.0/24`).
    pub fn subnet(&self) -> String {
        format!("{}/{}", network_address(&self.address, self.prefix), self.prefix)
    }
}

/// A network definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: [u8; 16],
    /// Forward mode.
    pub forward: Forward,
    /// `<forward dev=...>`: the host interface traffic leaves by.
    pub forward_dev: Option<String>,
    /// Bridge name (`virbrN` chosen at define when absent).
    pub bridge: Option<String>,
    /// Spanning tree on the bridge.
    pub stp: bool,
    /// Forward delay, seconds.
    pub delay: u32,
    /// The bridge's MAC (generated at define when absent).
    pub mac: Option<String>,
    /// The bridge's MTU.
    pub mtu: Option<u32>,
    /// DNS domain handed to DHCP clients.
    pub domain: Option<String>,
    /// Addresses and DHCP.
    pub ips: Vec<IpDef>,
}

/// Why a network XML was refused: `Xml` is malformed or invalid,
/// `Unsupported` is valid but beyond this daemon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetXmlError {
    /// Not well formed, or not a valid network.
    #[error("{0}")]
    Invalid(String),
    /// Valid, but not supported here.
    #[error("{0}")]
    Unsupported(String),
}

fn invalid<T>(s: impl Into<String>) -> Result<T, NetXmlError> {
    Err(NetXmlError::Invalid(s.into()))
}

/// Elements of libvirt's network schema that this daemon does not act on;
/// refused by name so that nothing a user wrote is silently lost.
const REFUSED: &[&str] =
    &["dns", "route", "portgroup", "bandwidth", "virtualport", "vlan", "port", "tftp", "bootp", "metadata"];

/// Parses a network XML document.
pub fn parse(text: &str) -> Result<NetworkDef, NetXmlError> {
    if text.len() > MAX_NETWORK_XML {
        return invalid(format!("network XML is larger than {MAX_NETWORK_XML} bytes"));
    }
    let root = xml::parse(text).map_err(|e| NetXmlError::Invalid(e.to_string()))?;
    if root.name != "network" {
        return invalid(format!("unexpected root element <{}>, expecting <network>", root.name));
    }
    from_element(&root)
}

fn from_element(root: &Element) -> Result<NetworkDef, NetXmlError> {
    let name = root.find("name").map(|n| n.text.clone()).unwrap_or_default();
    check_name(&name)?;
    let uuid = match root.find("uuid") {
        Some(u) => {
            parse_uuid(&u.text).ok_or_else(|| NetXmlError::Invalid(format!("malformed uuid element '{}'", u.text)))?.0
        }
        None => *uuid::Uuid::new_v4().as_bytes(),
    };
    for c in &root.children {
        if REFUSED.contains(&c.name.as_str()) {
            return Err(NetXmlError::Unsupported(format!("network element <{}> is not supported", c.name)));
        }
    }
    let (forward, forward_dev) = match root.find("forward") {
        None => (Forward::Isolated, None),
        Some(f) => {
            let mode = f.get("mode").unwrap_or("nat");
            let forward = match mode {
                "nat" => Forward::Nat,
                "route" => Forward::Route,
                "open" => Forward::Open,
                "bridge" | "private" | "vepa" | "passthrough" | "hostdev" => {
                    return Err(NetXmlError::Unsupported(format!("forward mode '{mode}' is not supported")));
                }
                other => return invalid(format!("unknown forwarding type '{other}'")),
            };
            if let Some(c) = f.children.iter().find(|c| c.name != "nat") {
                return Err(NetXmlError::Unsupported(format!("forward element <{}> is not supported", c.name)));
            }
            (forward, f.get("dev").map(str::to_owned))
        }
    };
    let bridge_el = root.find("bridge");
    let bridge = bridge_el.and_then(|b| b.get("name")).map(str::to_owned);
    if let Some(b) = &bridge {
        check_ifname(b)?;
    }
    let stp = bridge_el.and_then(|b| b.get("stp")).is_none_or(|s| s != "off");
    let delay = match bridge_el.and_then(|b| b.get("delay")) {
        Some(d) => d.parse().map_err(|_| NetXmlError::Invalid(format!("Invalid delay value in network '{name}'")))?,
        None => 0,
    };
    let mac = match root.find("mac").and_then(|m| m.get("address")) {
        Some(m) => Some(check_mac(m)?),
        None => None,
    };
    let mtu = match root.find("mtu").and_then(|m| m.get("size")) {
        Some(m) => Some(
            m.parse::<u32>()
                .ok()
                .filter(|v| (68..=65535).contains(v))
                .ok_or_else(|| NetXmlError::Invalid(format!("Malformed mtu size '{m}' in network '{name}'")))?,
        ),
        None => None,
    };
    let domain = root.find("domain").and_then(|d| d.get("name")).map(str::to_owned);
    if let Some(d) = &domain
        && !d.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return invalid(format!("invalid domain name '{d}'"));
    }
    let ip_els: Vec<&Element> = root.children.iter().filter(|c| c.name == "ip").collect();
    if ip_els.len() > MAX_IPS {
        return invalid(format!("a network has at most {MAX_IPS} <ip> elements"));
    }
    let mut ips = Vec::new();
    for el in ip_els {
        ips.push(parse_ip(el, &name)?);
    }
    if ips.iter().filter(|i| i.dhcp && i.address.is_ipv4()).count() > 1 {
        return Err(NetXmlError::Unsupported(format!(
            "Multiple IPv4 dhcp sections found -- dhcp is supported only for a single IPv4 address on each network '{name}'"
        )));
    }
    if matches!(forward, Forward::Nat)
        && ips.iter().any(|i| !i.address.is_ipv4())
        && !ips.iter().any(|i| i.address.is_ipv4())
    {
        return invalid(format!("network '{name}' in nat mode needs an IPv4 address"));
    }
    Ok(NetworkDef { name, uuid, forward, forward_dev, bridge, stp, delay, mac, mtu, domain, ips })
}

fn check_name(name: &str) -> Result<(), NetXmlError> {
    if name.is_empty() {
        return invalid("missing name element");
    }
    if name.len() > MAX_NAME || name.contains('/') || name.starts_with('.') || name.chars().any(char::is_control) {
        return invalid(format!("name '{name}' cannot contain '/', start with '.' or be longer than {MAX_NAME} bytes"));
    }
    Ok(())
}

/// A Linux interface name: 1 to 15 bytes, no '/', ':' or whitespace.
pub fn check_ifname(n: &str) -> Result<(), NetXmlError> {
    if n.is_empty() || n.len() > 15 || n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
        return invalid(format!("invalid bridge name '{n}'"));
    }
    Ok(())
}

/// A MAC address, normalised to lower case.
pub fn check_mac(m: &str) -> Result<String, NetXmlError> {
    let parts: Vec<&str> = m.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return invalid(format!("Invalid MAC address '{m}'"));
    }
    Ok(m.to_ascii_lowercase())
}

fn parse_ip(el: &Element, net: &str) -> Result<IpDef, NetXmlError> {
    let addr_text =
        el.get("address").ok_or_else(|| NetXmlError::Invalid(format!("Missing IP address in network '{net}'")))?;
    let address: IpAddr = addr_text
        .parse()
        .map_err(|_| NetXmlError::Invalid(format!("Invalid address '{addr_text}' in network '{net}'")))?;
    let family_v6 = match el.get("family") {
        None => address.is_ipv6(),
        Some("ipv4") => false,
        Some("ipv6") => true,
        Some(f) => return invalid(format!("Unrecognized family '{f}' in network '{net}'")),
    };
    if family_v6 != address.is_ipv6() {
        return invalid(format!(
            "family of address '{addr_text}' does not match the family attribute in network '{net}'"
        ));
    }
    let (prefix, netmask_form) = match (el.get("prefix"), el.get("netmask")) {
        (Some(_), Some(_)) => {
            return invalid(format!("Network '{net}' IP address cannot have both a prefix and a netmask"));
        }
        (Some(p), None) => {
            let max = if address.is_ipv4() { 32 } else { 128 };
            let p: u8 = p
                .parse()
                .ok()
                .filter(|v| *v <= max)
                .ok_or_else(|| NetXmlError::Invalid(format!("Invalid prefix '{p}' in network '{net}'")))?;
            (p, false)
        }
        (None, Some(m)) => {
            let m: std::net::Ipv4Addr =
                m.parse().map_err(|_| NetXmlError::Invalid(format!("Invalid netmask '{m}' in network '{net}'")))?;
            if address.is_ipv6() {
                return invalid(format!("netmask specified without IPv4 address in network '{net}'"));
            }
            let bits = u32::from(m);
            if bits.leading_ones() + bits.trailing_zeros() != 32 {
                return invalid(format!("Invalid netmask '{m}' in network '{net}'"));
            }
            (bits.leading_ones() as u8, true)
        }
        (None, None) => (if address.is_ipv4() { default_prefix_v4(&address) } else { 64 }, false),
    };
    let mut ip = IpDef { address, prefix, netmask_form, ranges: Vec::new(), hosts: Vec::new(), dhcp: false };
    for c in &el.children {
        match c.name.as_str() {
            "dhcp" => ip.dhcp = true,
            "tftp" => return Err(NetXmlError::Unsupported("network element <tftp> is not supported".into())),
            other => return invalid(format!("unexpected element <{other}> in <ip> of network '{net}'")),
        }
    }
    if let Some(dhcp) = el.find("dhcp") {
        for c in &dhcp.children {
            match c.name.as_str() {
                "range" => {
                    if ip.ranges.len() >= MAX_RANGES {
                        return invalid(format!("at most {MAX_RANGES} DHCP ranges in network '{net}'"));
                    }
                    let get = |k: &str| -> Result<IpAddr, NetXmlError> {
                        let v = c.get(k).unwrap_or("");
                        v.parse().map_err(|_| {
                            NetXmlError::Invalid(format!("Invalid dhcp range {k} '{v}' in network '{net}'"))
                        })
                    };
                    let (start, end) = (get("start")?, get("end")?);
                    if !ip.contains(&start) || !ip.contains(&end) || ord(&start) > ord(&end) {
                        return invalid(format!(
                            "Range '{start}' to '{end}' is not entirely within network {} of network '{net}'",
                            ip.subnet()
                        ));
                    }
                    ip.ranges.push((start, end));
                }
                "host" => {
                    if ip.hosts.len() >= MAX_HOSTS {
                        return invalid(format!("at most {MAX_HOSTS} DHCP hosts in network '{net}'"));
                    }
                    let h = parse_host(c, &ip, net, false)?;
                    ip.hosts.push(h);
                }
                "bootp" => return Err(NetXmlError::Unsupported("network element <bootp> is not supported".into())),
                other => return invalid(format!("unexpected element <{other}> in <dhcp> of network '{net}'")),
            }
        }
    }
    Ok(ip)
}

/// Parses one `<host>` element of a `<dhcp>` that belongs to `ip`.
/// With `partial` (a delete), the address may be left out.
pub fn parse_host(c: &Element, ip: &IpDef, net: &str, partial: bool) -> Result<DhcpHost, NetXmlError> {
    if c.name != "host" {
        return invalid(format!("unexpected element <{}>, expecting <host>", c.name));
    }
    let mac = match c.get("mac") {
        Some(m) => Some(check_mac(m)?),
        None => None,
    };
    let ipaddr = match c.get("ip") {
        Some(v) => {
            let a: IpAddr = v.parse().map_err(|_| {
                NetXmlError::Invalid(format!("Invalid IP address in static host definition for network '{net}'"))
            })?;
            if !ip.contains(&a) {
                return invalid(format!("IP address '{a}' is not within network {} of network '{net}'", ip.subnet()));
            }
            Some(a)
        }
        None => None,
    };
    let name = c.get("name").map(str::to_owned);
    if let Some(n) = &name
        && !n.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.' || ch == '_')
    {
        return invalid(format!("Invalid host name '{n}' in network '{net}'"));
    }
    let id = c.get("id").map(str::to_owned);
    if let Some(i) = &id
        && !i.chars().all(|ch| ch.is_ascii_hexdigit() || ch == ':')
    {
        return invalid(format!("Invalid client id '{i}' in network '{net}'"));
    }
    if mac.is_none() && id.is_none() && name.is_none() {
        return invalid(format!("Static host definition in network '{net}' must have mac or name attribute specified"));
    }
    if ipaddr.is_none() && ip.address.is_ipv4() && !partial {
        return invalid(format!("Missing IP address in static host definition for network '{net}'"));
    }
    Ok(DhcpHost { mac, id, name, ip: ipaddr })
}

/// Parses a `<host>` element given alone (net-update).
pub fn parse_host_xml(text: &str, ip: &IpDef, net: &str, partial: bool) -> Result<DhcpHost, NetXmlError> {
    if text.len() > 64 * 1024 {
        return invalid("host XML is larger than 64 KiB");
    }
    let el = xml::parse(text).map_err(|e| NetXmlError::Invalid(e.to_string()))?;
    parse_host(&el, ip, net, partial)
}

fn default_prefix_v4(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(v) if v.octets()[0] < 128 => 8,
        IpAddr::V4(v) if v.octets()[0] < 192 => 16,
        _ => 24,
    }
}

fn ord(a: &IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(*v).into(),
        IpAddr::V6(v) => u128::from(*v),
    }
}

fn mask_bits(a: &IpAddr, prefix: u8) -> u128 {
    let width: u32 = if a.is_ipv4() { 32 } else { 128 };
    let p = u32::from(prefix).min(width);
    if p == 0 {
        return 0;
    }
    (u128::MAX << (128 - p)) >> (128 - width)
}

/// Whether `a` and `b` share the first `prefix` bits (and a family).
pub fn same_subnet(a: &IpAddr, b: &IpAddr, prefix: u8) -> bool {
    a.is_ipv4() == b.is_ipv4() && ord(a) & mask_bits(a, prefix) == ord(b) & mask_bits(a, prefix)
}

/// The first address of `a`'s subnet.
pub fn network_address(a: &IpAddr, prefix: u8) -> IpAddr {
    let n = ord(a) & mask_bits(a, prefix);
    match a {
        IpAddr::V4(_) => IpAddr::V4((n as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(n.into()),
    }
}

fn v4_netmask(prefix: u8) -> std::net::Ipv4Addr {
    let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    bits.into()
}

fn host_element(h: &DhcpHost) -> Element {
    let mut e = Element::new("host");
    if let Some(m) = &h.mac {
        e = e.attr("mac", m.clone());
    }
    if let Some(i) = &h.id {
        e = e.attr("id", i.clone());
    }
    if let Some(n) = &h.name {
        e = e.attr("name", n.clone());
    }
    if let Some(a) = &h.ip {
        e = e.attr("ip", a.to_string());
    }
    e
}

impl NetworkDef {
    /// The canonical XML, as `virsh net-dumpxml` shows it.
    pub fn to_xml(&self) -> String {
        let mut root = Element::new("network")
            .child(Element::new("name").with_text(self.name.clone()))
            .child(Element::new("uuid").with_text(uuid_string(&crate::domain::Uuid(self.uuid))));
        if let Some(mode) = self.forward.name() {
            let mut f = Element::new("forward");
            if let Some(d) = &self.forward_dev {
                f = f.attr("dev", d.clone());
            }
            f = f.attr("mode", mode);
            if self.forward == Forward::Nat {
                f = f.child(Element::new("nat").child(Element::new("port").attr("start", "1024").attr("end", "65535")));
            }
            root = root.child(f);
        }
        // A bridge not named yet (one is picked at start) still keeps its
        // STP and delay settings.
        if self.bridge.is_some() || !self.stp || self.delay != 0 {
            let mut e = Element::new("bridge");
            if let Some(b) = &self.bridge {
                e = e.attr("name", b.clone());
            }
            let stp = if self.stp { "on" } else { "off" };
            root = root.child(e.attr("stp", stp).attr("delay", self.delay.to_string()));
        }
        if let Some(m) = self.mtu {
            root = root.child(Element::new("mtu").attr("size", m.to_string()));
        }
        if let Some(m) = &self.mac {
            root = root.child(Element::new("mac").attr("address", m.clone()));
        }
        if let Some(d) = &self.domain {
            root = root.child(Element::new("domain").attr("name", d.clone()));
        }
        for ip in &self.ips {
            let mut e = Element::new("ip");
            if ip.address.is_ipv6() {
                e = e.attr("family", "ipv6");
            }
            e = e.attr("address", ip.address.to_string());
            e = if ip.netmask_form {
                e.attr("netmask", v4_netmask(ip.prefix).to_string())
            } else {
                e.attr("prefix", ip.prefix.to_string())
            };
            if ip.dhcp || !ip.ranges.is_empty() || !ip.hosts.is_empty() {
                let mut d = Element::new("dhcp");
                for (s, end) in &ip.ranges {
                    d = d.child(Element::new("range").attr("start", s.to_string()).attr("end", end.to_string()));
                }
                for h in &ip.hosts {
                    d = d.child(host_element(h));
                }
                e = e.child(d);
            }
            root = root.child(e);
        }
        root.to_xml()
    }

    /// The `<ip>` DHCP is served on for `family_v6`, if any.
    pub fn dhcp_ip(&self, v6: bool) -> Option<&IpDef> {
        self.ips.iter().find(|i| i.address.is_ipv6() == v6 && (i.dhcp || !i.ranges.is_empty() || !i.hosts.is_empty()))
    }

    /// Whether this network needs dnsmasq (it has an address: DNS at least).
    pub fn needs_dnsmasq(&self) -> bool {
        !self.ips.is_empty()
    }
}

/// The XML of the `default` network of a fresh libvirt install.
pub fn default_network_xml() -> String {
    let uuid = uuid_string(&crate::domain::Uuid(*uuid::Uuid::new_v4().as_bytes()));
    format!(
        "<network>\n  <name>default</name>\n  <uuid>{uuid}</uuid>\n  <forward mode='nat'/>\n  <bridge name='virbr0' stp='on' delay='0'/>\n  <ip address='192.168.122.1' netmask='255.255.255.0'>\n    <dhcp>\n      <range start='192.168.122.2' end='192.168.122.254'/>\n    </dhcp>\n  </ip>\n</network>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the network_xml fuzz target: a bridge element without a
    /// name, with STP and a delay, must write back what it read.
    #[test]
    fn a_nameless_bridge_with_stp_and_delay_round_trips() {
        let xml = "<network><name>n</name><uuid>9a05da11-e96b-47f3-8253-a3a482e445f5</uuid>\
                   <forward mode='nat'/><bridge stp='on' delay='1'/>\
                   <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>\
                   <host mac='52:54:00:00:00:07' name='w.b' ip='192.168.122.7'/></dhcp></ip></network>";
        let def = parse(xml).unwrap();
        let again = parse(&def.to_xml()).unwrap();
        assert_eq!(again, def, "{}", def.to_xml());
    }

    #[test]
    fn the_default_network_parses_and_round_trips() {
        let d = parse(&default_network_xml()).unwrap();
        assert_eq!((d.name.as_str(), d.forward, d.bridge.as_deref()), ("default", Forward::Nat, Some("virbr0")));
        assert_eq!(d.ips[0].prefix, 24);
        assert_eq!(d.ips[0].subnet(), "192.168.122.0/24");
        assert_eq!(d.ips[0].ranges.len(), 1);
        let again = parse(&d.to_xml()).unwrap();
        assert_eq!(again, d);
        assert!(d.to_xml().contains("<ip address='192.168.122.1' netmask='255.255.255.0'>"));
    }

    #[test]
    fn unsupported_forward_modes_are_refused_naming_them() {
        let x = "<network><name>n</name><forward mode='bridge'/></network>";
        assert_eq!(parse(x).unwrap_err(), NetXmlError::Unsupported("forward mode 'bridge' is not supported".into()));
        let x = "<network><name>n</name><dns><host ip='1.2.3.4'/></dns></network>";
        assert!(matches!(parse(x), Err(NetXmlError::Unsupported(m)) if m.contains("<dns>")));
    }

    #[test]
    fn a_range_outside_the_subnet_is_invalid() {
        let x = "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.1.2' end='10.0.1.9'/></dhcp></ip></network>";
        assert!(matches!(parse(x), Err(NetXmlError::Invalid(m)) if m.contains("not entirely within")));
    }

    #[test]
    fn ipv6_and_hosts_are_kept() {
        let x = "<network><name>n</name><forward mode='route'/><ip family='ipv6' address='fd00::1' prefix='64'><dhcp><range start='fd00::10' end='fd00::ff'/></dhcp></ip><ip address='10.1.0.1' prefix='16'><dhcp><host mac='52:54:00:AA:bb:cc' ip='10.1.0.5' name='h'/></dhcp></ip></network>";
        let d = parse(x).unwrap();
        assert_eq!(d.ips[1].hosts[0].mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(d.ips[0].subnet(), "fd00::/64");
        assert_eq!(parse(&d.to_xml()).unwrap(), d);
    }
}
