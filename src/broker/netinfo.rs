//! The calls on a running guest's network interfaces: `virDomainInterfaceStats`
//! and the live link state of `virDomainUpdateDeviceFlags` (`virsh
//! domif-setlink`), answered from its helper's `NetStats`, and
//! `virDomainInterfaceAddresses` from the leases of the networks it is on.
//!
//! The helper answers `NetStats` and `SetLink` alike with a `NetStats`
//! event, in the order it was asked: both go through its one queue of
//! questions (`helper_asks.rs`), which hands each answer to the client that
//! waits for it, or fails the client at the deadline. The broker never
//! waits on a helper.

use std::time::Instant;

use super::calls::{Answer, Caller, Ctx};
use super::domains::Entry;
use super::helper_asks::{self, ASK_TIMEOUT, Question as Asked, Reply};
use crate::domain::{DomainDef, Uuid, nic_alias, xml};
use crate::privsep::helper::NicCounters;
use crate::privsep::{Call, CallError, CallValue};
/// `VIR_DOMAIN_AFFECT_LIVE`, `_CONFIG`, and `VIR_DOMAIN_DEVICE_MODIFY_FORCE`.
const AFFECT_LIVE: u32 = 1;
const AFFECT_CONFIG: u32 = 2;
const MODIFY_FORCE: u32 = 4;
/// `virDomainInterfaceAddressesSource`.
const SRC_LEASE: u32 = 0;
const SRC_AGENT: u32 = 1;
const SRC_ARP: u32 = 2;

/// What a waiting client asked about interface `alias`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// Its counters.
    Stats,
    /// Set its link; the answer shows whether it took.
    SetLink(bool),
}

/// A client waiting for a helper's answer about one of its interfaces.
#[derive(Debug)]
pub struct Waiter {
    /// Its connection.
    pub conn: u64,
    /// The frontend request to answer.
    pub reply_to: u32,
    alias: String,
    question: Question,
}

/// Whether [`handle`] answers `call`.
pub fn handles(call: &Call) -> bool {
    matches!(call, Call::InterfaceStats { .. } | Call::InterfaceAddresses { .. } | Call::UpdateDevice { .. })
}

/// Carries out the interface calls: at once where nothing needs asking,
/// else when the helper answers.
pub fn handle(ctx: &mut Ctx, auditor: &mut super::audit::Auditor, caller: &Caller, call: Call) -> Answer {
    match call {
        Call::InterfaceStats { uuid, device } => match stats_alias(ctx, &uuid, &device) {
            Ok(alias) => Answer::when_settled(ask(ctx, caller, &uuid, alias, Question::Stats)),
            Err(e) => Answer::Now(Err(e)),
        },
        Call::InterfaceAddresses { uuid, source, flags } => Answer::Now(addresses(ctx, &uuid, source, flags)),
        Call::UpdateDevice { uuid, xml, flags } => {
            let result = update(ctx, caller, &uuid, &xml, flags);
            let named = result.as_ref().map(|_| ctx.domains.by_uuid(&uuid).map(|e| e.def.name.clone()));
            let named = named.map_err(Clone::clone).and_then(|n| n);
            super::call_audit::audit_change(auditor, caller, "update", &uuid, &named, &[]);
            match result {
                Ok(true) => Answer::Later,
                Ok(false) => Answer::Now(Ok(CallValue::Unit)),
                Err(e) => Answer::Now(Err(e)),
            }
        }
        _ => Answer::Now(Err(CallError::Internal("not a call on a guest's interfaces".into()))),
    }
}

/// A running domain's entry.
fn running_entry<'a>(ctx: &'a Ctx, uuid: &Uuid) -> Result<&'a Entry, CallError> {
    let e = ctx.domains.by_uuid(uuid)?;
    if e.id.is_none() || !ctx.guests.contains_key(uuid) {
        return Err(CallError::NotRunning);
    }
    Ok(e)
}

/// The alias of the interface `device` names, by its tap's name or its MAC,
/// as libvirt finds it.
fn stats_alias(ctx: &Ctx, uuid: &Uuid, device: &str) -> Result<String, CallError> {
    let e = running_entry(ctx, uuid)?;
    let taps = ctx.guests.get(uuid).map(|r| r.nics.as_slice()).unwrap_or_default();
    let wanted = device.to_ascii_lowercase();
    e.def
        .interfaces
        .iter()
        .enumerate()
        .position(|(i, n)| n.mac_string() == wanted || taps.get(i).is_some_and(|t| t.live.tap == device))
        .map(nic_alias)
        .ok_or_else(|| CallError::InvalidArg(format!("'{device}' is not a known interface")))
}

/// Sends `question` about `alias` to guest `uuid`'s helper and queues
/// `caller` for its answer.
fn ask(ctx: &mut Ctx, caller: &Caller, uuid: &Uuid, alias: String, question: Question) -> Result<(), CallError> {
    let asked = match question {
        Question::Stats => Asked::NetStats,
        Question::SetLink(up) => Asked::SetLink { alias: alias.clone(), up },
    };
    let waiter = Waiter { conn: caller.conn, reply_to: caller.request, alias, question };
    helper_asks::ask(ctx, uuid, asked, Some(helper_asks::Waiter::Net(waiter)), Instant::now() + ASK_TIMEOUT)
}

/// Guest `uuid`'s helper reported its interfaces' `counters`: the answer
/// for waiter `w` (a link change is recorded once the helper shows it).
pub fn settle(ctx: &mut Ctx, uuid: &Uuid, w: Waiter, counters: &[NicCounters]) -> Reply {
    let name = ctx.domains.by_uuid(uuid).map(|e| e.def.name.clone()).unwrap_or_default();
    let found = counters.iter().find(|c| c.alias == w.alias);
    let result = match (&w.question, found) {
        (_, None) => Err(CallError::OperationFailed(format!(
            "guest '{name}' has no network device '{}' (its helper did not report it)",
            w.alias
        ))),
        (Question::Stats, Some(c)) => Ok(CallValue::Figures(
            [c.rx_bytes, c.rx_packets, c.rx_errs, c.rx_drop, c.tx_bytes, c.tx_packets, c.tx_errs, c.tx_drop]
                .iter()
                .map(|v| i64::try_from(*v).unwrap_or(i64::MAX))
                .collect(),
        )),
        (Question::SetLink(up), Some(c)) if c.link_up != *up => {
            Err(CallError::OperationFailed(format!("guest '{name}': the link of '{}' did not change", w.alias)))
        }
        (Question::SetLink(up), Some(_)) => {
            set_live_link(ctx, uuid, &w.alias, *up);
            Ok(CallValue::Unit)
        }
    };
    (w.conn, w.reply_to, result)
}

/// Records the live link state of interface `alias` (shown by the live
/// XML, kept in the run-state record).
fn set_live_link(ctx: &mut Ctx, uuid: &Uuid, alias: &str, up: bool) {
    let Some(r) = ctx.guests.get_mut(uuid) else { return };
    if let Some(n) = (0..r.nics.len()).find(|i| nic_alias(*i) == alias).and_then(|i| r.nics.get_mut(i)) {
        n.live.link_down = Some(!up);
    }
    ctx.record(uuid);
}

/// `virDomainUpdateDeviceFlags` for an `<interface>`: only its link state
/// may change. Live, the helper is asked (returns `true`: answered later);
/// in the definition of a domain that is not running, it is written at once.
fn update(ctx: &mut Ctx, caller: &Caller, uuid: &Uuid, text: &str, flags: u32) -> Result<bool, CallError> {
    if flags & !(AFFECT_LIVE | AFFECT_CONFIG | MODIFY_FORCE) != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainUpdateDeviceFlags".into() });
    }
    let e = ctx.domains.by_uuid(uuid)?;
    let (live, config) = e.impact(flags & (AFFECT_LIVE | AFFECT_CONFIG), false)?;
    let element = xml::parse(text)?;
    if element.name != "interface" {
        return Err(CallError::OperationUnsupported(format!(
            "updating device type '{}' is not supported, only <interface> link state",
            element.name
        )));
    }
    let asked = crate::domain::parse_interface(&element)?;
    let index = matching(&e.def, &asked)?;
    if live && config {
        return Err(CallError::OperationUnsupported(
            "changing the persistent definition of a running domain is not supported: the daemon keeps one \
             definition per domain; stop the domain first"
                .into(),
        ));
    }
    if live {
        return ask(ctx, caller, uuid, nic_alias(index), Question::SetLink(!asked.link_down)).map(|()| true);
    }
    let mut def = e.def.clone();
    def.interfaces[index].link_down = asked.link_down;
    ctx.domains.replace_def(uuid, def)?;
    Ok(false)
}

/// The index of the interface `asked` updates: the one with its MAC, and
/// nothing about it changed but its link state.
fn matching(def: &DomainDef, asked: &crate::domain::Interface) -> Result<usize, CallError> {
    let mac = asked.mac_string();
    let index = def
        .interfaces
        .iter()
        .position(|n| n.mac == asked.mac)
        .ok_or_else(|| CallError::DeviceMissing(format!("no device matching MAC address {mac} found")))?;
    let have = &def.interfaces[index];
    if have.kind != asked.kind || have.source != asked.source || (asked.mtu.is_some() && asked.mtu != have.mtu) {
        return Err(CallError::OperationUnsupported(format!(
            "cannot modify network device '{mac}': only its link state can be updated"
        )));
    }
    Ok(index)
}

/// `virDomainInterfaceAddresses`: from the leases of the networks the
/// guest's interfaces are on; the guest agent and the ARP table are not
/// sources this daemon has.
fn addresses(ctx: &Ctx, uuid: &Uuid, source: u32, flags: u32) -> Result<CallValue, CallError> {
    if flags != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainInterfaceAddresses".into() });
    }
    let e = running_entry(ctx, uuid)?;
    match source {
        SRC_LEASE => {}
        SRC_AGENT => return Err(CallError::ArgumentUnsupported("QEMU guest agent is not configured".into())),
        SRC_ARP => {
            return Err(CallError::ArgumentUnsupported(
                "IP address data source 'arp' is not supported: only 'lease' is".into(),
            ));
        }
        // libvirt's words for a source it does not know.
        other => return Err(CallError::ArgumentUnsupported(format!("Unknown IP address data source {other}"))),
    }
    let taps = ctx.guests.get(uuid).map(|r| r.nics.as_slice()).unwrap_or_default();
    let mut out = Vec::new();
    for (i, nic) in e.def.interfaces.iter().enumerate() {
        let (Some(net), "network") = (nic.source.as_deref(), nic.kind.as_str()) else { continue };
        let mac = nic.mac_string();
        let leases = ctx.networks.leases_for(net, &mac);
        if leases.is_empty() {
            continue;
        }
        let name = taps.get(i).map(|t| t.live.tap.clone()).unwrap_or_default();
        let addrs = leases.into_iter().map(|l| (l.kind, l.ip, l.prefix)).collect();
        out.push(crate::privsep::IfaceAddrs { name, hwaddr: Some(mac), addrs });
    }
    Ok(CallValue::Interfaces(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(nics: &str) -> DomainDef {
        let xml = format!(
            "<domain type='kvm'><name>n</name><memory>65536</memory><os><type>hvm</type><kernel>/k</kernel></os>\
             <devices>{nics}</devices></domain>"
        );
        crate::domain::parse(&xml, false).unwrap().0
    }

    fn nic(text: &str) -> crate::domain::Interface {
        crate::domain::parse_interface(&xml::parse(text).unwrap()).unwrap()
    }

    #[test]
    fn an_update_finds_its_interface_by_mac_and_may_change_only_the_link() {
        let d = def("<interface type='ethernet'><mac address='52:54:00:00:00:01'/></interface>\
                     <interface type='network'><mac address='52:54:00:00:00:02'/><source network='n'/></interface>");
        let down = "<interface type='network'><mac address='52:54:00:00:00:02'/><source network='n'/>\
                    <target dev='vnet3'/><link state='down'/><alias name='net1'/></interface>";
        assert_eq!(matching(&d, &nic(down)), Ok(1));
        let moved = down.replace("network='n'", "network='other'");
        assert!(matches!(matching(&d, &nic(&moved)), Err(CallError::OperationUnsupported(_))));
        let stranger = down.replace(":02'", ":09'");
        assert_eq!(
            matching(&d, &nic(&stranger)),
            Err(CallError::DeviceMissing("no device matching MAC address 52:54:00:00:00:09 found".into()))
        );
    }
}
