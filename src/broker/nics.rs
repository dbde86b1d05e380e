//! A guest's network interfaces on the host: the taps the broker makes at
//! start (`network/tap.rs`), attached to a running network's bridge, to a
//! host bridge, or left unattached and up (`type='ethernet'`), and removed
//! when the guest stops.
//!
//! The taps are not persistent: the helper holds their fds, so a helper
//! that dies takes them with it. The broker still removes what lingers
//! when a guest stops (a destroy kills the helper without waiting for it,
//! and a tap with a fixed name must be free for the next start), but only
//! an interface that still has the index it had when made: a `vnetN` name
//! the kernel gave to another guest since is never touched. The names and
//! indexes are in the guest's run-state record, so a restarted broker
//! knows them too.

use std::os::fd::OwnedFd;

use super::networks::Networks;
use crate::domain::{DomainDef, Interface, LiveNic, nic_alias};
use crate::network::{bridge, tap};
use crate::privsep::CallError;
use crate::privsep::helper::NicConfig;

/// One interface of a running guest, as the host has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNic {
    /// Its tap and the bridge of its network, for the live XML.
    pub live: LiveNic,
    /// The tap's interface index when it was made.
    pub ifindex: u32,
}

/// The taps made for a guest about to start: their fds for the helper, in
/// interface order, what the helper builds on them and what the broker
/// keeps. Dropping it before the helper has the fds removes the taps.
pub struct OpenNics {
    /// The taps' fds.
    pub fds: Vec<OwnedFd>,
    /// The helper's view of each.
    pub configs: Vec<NicConfig>,
    /// The broker's.
    pub nics: Vec<GuestNic>,
}

/// Where one interface's tap goes.
pub enum Port {
    /// Onto this bridge; `true` when it is a network's (shown in the live XML).
    Bridge(String, bool),
    /// Nowhere (`type='ethernet'`).
    Unattached,
}

/// Where each interface of `def` goes, checked before anything is made:
/// a network that is missing or not active fails the start with libvirt's
/// error, a host bridge that does not exist with one naming it.
pub fn ports(def: &DomainDef, networks: &Networks) -> Result<Vec<Port>, CallError> {
    def.interfaces
        .iter()
        .map(|nic| match (nic.kind.as_str(), nic.source.as_deref()) {
            ("network", Some(net)) => Ok(Port::Bridge(networks.bridge_of(net).map_err(CallError::Network)?, true)),
            ("bridge", Some(br)) => {
                if !is_bridge(br) {
                    return Err(CallError::OperationFailed(format!(
                        "cannot attach interface '{}' to bridge '{br}': no such bridge on the host",
                        nic.mac_string()
                    )));
                }
                Ok(Port::Bridge(br.to_owned(), false))
            }
            ("ethernet", _) => Ok(Port::Unattached),
            // parse.rs admits no other kind, and gives these a source.
            (kind, _) => Err(CallError::ConfigUnsupported(format!("interface type '{kind}' is not supported"))),
        })
        .collect()
}

/// Whether `name` is a bridge of this network namespace.
fn is_bridge(name: &str) -> bool {
    !name.contains('/') && std::path::Path::new("/sys/class/net").join(name).join("bridge").is_dir()
}

/// The MTU of interface `name`, if it can be read.
fn mtu_of(name: &str) -> Option<u32> {
    if name.contains('/') {
        return None;
    }
    std::fs::read_to_string(std::path::Path::new("/sys/class/net").join(name).join("mtu")).ok()?.trim().parse().ok()
}

/// Makes, attaches and brings up a tap for each of `def`'s interfaces,
/// where [`ports`] says. On any failure nothing is left: the taps made so
/// far go with their fds, and the error names the interface.
pub fn open_all(def: &DomainDef, ports: Vec<Port>) -> Result<OpenNics, CallError> {
    let mut open = OpenNics { fds: Vec::new(), configs: Vec::new(), nics: Vec::new() };
    for (i, (nic, port)) in def.interfaces.iter().zip(ports).enumerate() {
        let fail = |e: &dyn std::fmt::Display| {
            let target = nic.target.as_deref().map(|t| format!(" (target '{t}')")).unwrap_or_default();
            CallError::OperationFailed(format!("cannot set up interface '{}'{target}: {e}", nic.mac_string()))
        };
        let (fd, name) = tap::create(nic.target.as_deref()).map_err(|e| fail(&e))?;
        let ifindex = bridge::ifindex(&name).ok_or_else(|| fail(&"the tap vanished"))?;
        let bridge = match &port {
            Port::Bridge(br, _) => {
                tap::attach(&name, br, nic.mtu.or_else(|| mtu_of(br))).map_err(|e| fail(&e))?;
                Some(br.clone())
            }
            Port::Unattached => {
                tap::up(&name, nic.mtu).map_err(|e| fail(&e))?;
                None
            }
        };
        open.configs.push(config(nic, i).map_err(|e| fail(&e))?);
        let shown = matches!(port, Port::Bridge(_, true)).then_some(bridge).flatten();
        open.nics.push(GuestNic { live: LiveNic { tap: name, bridge: shown, link_down: None }, ifindex });
        open.fds.push(fd);
    }
    Ok(open)
}

/// What the helper builds for interface `index`.
fn config(nic: &Interface, index: usize) -> Result<NicConfig, String> {
    Ok(NicConfig {
        alias: nic_alias(index),
        mac: nic.mac,
        pci_slot: nic.pci_slot.ok_or("it has no PCI slot")?,
        link_up: !nic.link_down,
        // parse.rs bounds <mtu> to 68..=65535.
        mtu: nic.mtu.map(|m| u16::try_from(m).map_err(|_| format!("MTU {m} is too large"))).transpose()?,
    })
}

/// Removes the taps of a stopped guest that are still there with the index
/// they had when made (see the module's comment).
pub fn release(nics: &[GuestNic]) {
    for n in nics {
        if bridge::ifindex(&n.live.tap) == Some(n.ifindex)
            && let Err(e) = bridge::delete(&n.live.tap)
        {
            log::warn!("cannot remove tap '{}': {e}", n.live.tap);
        }
    }
}

/// One record line (`tap ifindex bridge|- [up|down]`) of a running
/// guest's interface; the last field is a link state set live.
pub fn record_line(n: &GuestNic) -> String {
    let link = match n.live.link_down {
        Some(true) => " down",
        Some(false) => " up",
        None => "",
    };
    format!("{} {} {}{link}", n.live.tap, n.ifindex, n.live.bridge.as_deref().unwrap_or("-"))
}

/// Reads back a [`record_line`].
pub fn parse_record_line(line: &str) -> Option<GuestNic> {
    let mut f = line.split(' ');
    let (tap, ifindex, bridge) = (f.next()?, f.next()?.parse().ok()?, f.next()?);
    let link_down = match f.next() {
        None => None,
        Some("down") => Some(true),
        Some("up") => Some(false),
        Some(_) => return None,
    };
    if f.next().is_some() || tap.is_empty() || tap.len() >= libc::IFNAMSIZ {
        return None;
    }
    let bridge = (bridge != "-").then(|| bridge.to_owned());
    Some(GuestNic { live: LiveNic { tap: tap.to_owned(), bridge, link_down }, ifindex })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_round_trip_and_bad_ones_are_refused() {
        let live = LiveNic { tap: "vnet3".into(), bridge: Some("virbr0".into()), link_down: None };
        let n = GuestNic { live, ifindex: 17 };
        assert_eq!(parse_record_line(&record_line(&n)), Some(n));
        let e = GuestNic { live: LiveNic { tap: "tap-a".into(), bridge: None, link_down: Some(true) }, ifindex: 4 };
        assert_eq!(record_line(&e), "tap-a 4 - down");
        assert_eq!(parse_record_line(&record_line(&e)), Some(e));
        for bad in ["", "vnet0", "vnet0 x -", "vnet0 1 - extra", "vnet0 1 - up more", "averyveryverylongname 1 -"] {
            assert_eq!(parse_record_line(bad), None, "{bad}");
        }
    }
}
