//! `virNetworkUpdate` of an `<ip>`'s DHCP `<host>` entries, on a copy of
//! the definition: add (first or last), delete, modify, with libvirt's
//! refusals, so a refused update leaves the network as it was.

use super::xml::{self, NetXmlError, NetworkDef};
use crate::privsep::network::NetError;

fn xml_err(e: NetXmlError) -> NetError {
    match e {
        NetXmlError::Invalid(s) => NetError::Xml(s),
        NetXmlError::Unsupported(s) => NetError::Unsupported(s),
    }
}

/// `def` with its DHCP hosts edited by a `virNetworkUpdate` command
/// (MODIFY 1, DELETE 2, ADD_LAST 3, ADD_FIRST 4).
pub fn edit_hosts(def: &NetworkDef, command: u32, parent: i32, text: &str) -> Result<NetworkDef, NetError> {
    let mut def = def.clone();
    let net = def.name.clone();
    // The <ip> the host belongs to: the one indexed, or else the first with
    // DHCP of the host's family (IPv4 unless it names an IPv6 address).
    let probe = crate::domain::xml::parse(text).map_err(|e| NetError::Xml(e.to_string()))?;
    let v6 = probe.get("ip").is_some_and(|a| a.contains(':')) || probe.get("id").is_some();
    let idx = if parent >= 0 {
        let p = parent as usize;
        if p >= def.ips.len() {
            return Err(NetError::InvalidArg(format!(
                "couldn't update dhcp host entry - no <ip> element found at index {parent} in network '{net}'"
            )));
        }
        p
    } else {
        def.ips
            .iter()
            .position(|i| i.address.is_ipv6() == v6 && (i.dhcp || !i.ranges.is_empty() || !i.hosts.is_empty()))
            .or_else(|| def.ips.iter().position(|i| i.address.is_ipv6() == v6))
            .ok_or_else(|| {
                NetError::Invalid(format!(
                    "can't update 'ip-dhcp-host' section of network '{net}' - no IPv{} dhcp range is defined",
                    if v6 { 6 } else { 4 }
                ))
            })?
    };
    let host = xml::parse_host_xml(text, &def.ips[idx], &net, command == 2).map_err(xml_err)?;
    let ip = &mut def.ips[idx];
    let describe = || text.trim().to_owned();
    let same = |h: &xml::DhcpHost| {
        (host.mac.is_some() && h.mac == host.mac)
            || (host.id.is_some() && h.id == host.id)
            || (host.mac.is_none() && host.id.is_none() && h.name == host.name)
    };
    match command {
        1 => {
            let at = ip.hosts.iter().position(same).ok_or_else(|| {
                NetError::Invalid(format!(
                    "couldn't locate an existing dhcp host entry with \"{}\" in network '{net}'",
                    describe()
                ))
            })?;
            ip.hosts[at] = host;
        }
        2 => {
            let at = ip.hosts.iter().position(|h| *h == host || same(h)).ok_or_else(|| {
                NetError::Invalid(format!("couldn't locate a matching dhcp host entry in network '{net}'"))
            })?;
            ip.hosts.remove(at);
        }
        3 | 4 => {
            if ip.hosts.iter().any(|h| same(h) || (host.ip.is_some() && h.ip == host.ip)) {
                return Err(NetError::Invalid(format!(
                    "there is an existing dhcp host entry in network '{net}' that matches \"{}\"",
                    describe()
                )));
            }
            if ip.hosts.len() >= xml::MAX_HOSTS {
                return Err(NetError::Failed(format!("network '{net}' has {} DHCP hosts already", xml::MAX_HOSTS)));
            }
            if command == 3 {
                ip.hosts.push(host);
            } else {
                ip.hosts.insert(0, host);
            }
            ip.dhcp = true;
        }
        other => return Err(NetError::InvalidArg(format!("unrecognized network update command code {other}"))),
    }
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetworkDef {
        xml::parse(&xml::default_network_xml()).unwrap()
    }

    #[test]
    fn dhcp_hosts_are_added_refused_twice_modified_and_deleted() {
        let h = "<host mac='52:54:00:00:00:09' name='a' ip='192.168.122.9'/>";
        let added = edit_hosts(&net(), 3, -1, h).unwrap();
        assert_eq!(added.ips[0].hosts.len(), 1);
        assert!(matches!(edit_hosts(&added, 3, -1, h), Err(NetError::Invalid(m)) if m.contains("existing dhcp host")));
        let modified =
            edit_hosts(&added, 1, -1, "<host mac='52:54:00:00:00:09' name='b' ip='192.168.122.10'/>").unwrap();
        assert_eq!(modified.ips[0].hosts[0].name.as_deref(), Some("b"));
        let deleted = edit_hosts(&modified, 2, -1, "<host mac='52:54:00:00:00:09'/>").unwrap_or_else(|e| panic!("{e}"));
        assert!(deleted.ips[0].hosts.is_empty());
        assert!(matches!(
            edit_hosts(&net(), 3, -1, "<host mac='52:54:00:00:00:09' ip='10.0.0.1'/>"),
            Err(NetError::Xml(_))
        ));
    }
}
