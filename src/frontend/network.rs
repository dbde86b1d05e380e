//! The network procedures in the frontend: decoding their arguments into
//! [`NetCall`]s, shaping the broker's [`NetValue`]s into replies, and the
//! network event registrations of a connection. The read-only rule has
//! already been applied by `dispatch` from the procedure table.

use serde::de::DeserializeOwned;

use super::packets::ok_reply;
use super::session::{Action, MAX_CALLBACKS, Session};
use crate::privsep::network::{NetCall, NetEvent, NetRef, NetValue};
use crate::privsep::{Call, CallValue};
use crate::rpc::error::RpcError;
use crate::rpc::frame::{self, Header, MessageType, REMOTE_PROGRAM, Status};
use crate::rpc::network::*;
use crate::rpc::remote::{IntArg, NonnullNetwork, RemoteProc, StringArg, StringListRet, XmlFlagsArgs};
use crate::rpc::xdr;

/// `REMOTE_NETWORK_LIST_MAX`.
const NETWORK_LIST_MAX: i32 = 16_384;
/// `VIR_NETWORK_EVENT_ID_LIFECYCLE`, the only network event.
const EVENT_ID_LIFECYCLE: i32 = 0;
/// `VIR_CONNECT_LIST_NETWORKS_INACTIVE` / `_ACTIVE`.
const INACTIVE: u32 = 1;
const ACTIVE: u32 = 2;

fn args<T: DeserializeOwned>(payload: &[u8]) -> Result<T, RpcError> {
    xdr::from_bytes(payload).map_err(|_| RpcError::Decode)
}

fn fwd(c: NetCall) -> Result<Action, RpcError> {
    Ok(Action::Forward(Call::Network(c)))
}

fn uuid(payload: &[u8]) -> Result<[u8; 16], RpcError> {
    Ok(args::<NetArg>(payload)?.net.uuid.0)
}

fn max_names(payload: &[u8]) -> Result<u32, RpcError> {
    let max = args::<IntArg>(payload)?.value;
    if !(0..=NETWORK_LIST_MAX).contains(&max) {
        return Err(RpcError::Decode);
    }
    Ok(max as u32)
}

/// Decodes network procedure `p`: forwarded to the broker, except event
/// registrations, which are the connection's own.
pub(super) fn call(s: &mut Session, h: &Header, p: RemoteProc, payload: &[u8]) -> Result<Action, RpcError> {
    use RemoteProc as P;
    match p {
        P::ConnectListAllNetworks => {
            let a: ListAllNetworksArgs = args(payload)?;
            fwd(NetCall::ListAll { flags: a.flags })
        }
        P::ConnectNumOfNetworks => fwd(NetCall::ListNames { flags: ACTIVE, max: NETWORK_LIST_MAX as u32, count: true }),
        P::ConnectNumOfDefinedNetworks => {
            fwd(NetCall::ListNames { flags: INACTIVE, max: NETWORK_LIST_MAX as u32, count: true })
        }
        P::ConnectListNetworks => fwd(NetCall::ListNames { flags: ACTIVE, max: max_names(payload)?, count: false }),
        P::ConnectListDefinedNetworks => {
            fwd(NetCall::ListNames { flags: INACTIVE, max: max_names(payload)?, count: false })
        }
        P::NetworkLookupByName => fwd(NetCall::LookupByName(args::<StringArg>(payload)?.value)),
        P::NetworkLookupByUuid => fwd(NetCall::LookupByUuid(args::<NetUuidArg>(payload)?.uuid.0)),
        P::NetworkDefineXml => fwd(NetCall::Define { xml: args::<StringArg>(payload)?.value, flags: 0 }),
        P::NetworkDefineXmlFlags => {
            let a: XmlFlagsArgs = args(payload)?;
            fwd(NetCall::Define { xml: a.xml, flags: a.flags })
        }
        P::NetworkCreateXml => fwd(NetCall::CreateXml { xml: args::<StringArg>(payload)?.value, flags: 0 }),
        P::NetworkCreateXmlFlags => {
            let a: XmlFlagsArgs = args(payload)?;
            fwd(NetCall::CreateXml { xml: a.xml, flags: a.flags })
        }
        P::NetworkUndefine => fwd(NetCall::Undefine(uuid(payload)?)),
        P::NetworkCreate => fwd(NetCall::Start(uuid(payload)?)),
        P::NetworkDestroy => fwd(NetCall::Destroy(uuid(payload)?)),
        P::NetworkSetAutostart => {
            let a: NetSetAutostartArgs = args(payload)?;
            fwd(NetCall::SetAutostart { uuid: a.net.uuid.0, on: a.autostart != 0 })
        }
        P::NetworkGetXmlDesc => {
            let a: NetFlagsArgs = args(payload)?;
            fwd(NetCall::XmlDesc { uuid: a.net.uuid.0, flags: a.flags })
        }
        P::NetworkGetBridgeName => fwd(NetCall::BridgeName(uuid(payload)?)),
        P::NetworkGetAutostart => fwd(NetCall::Autostart(uuid(payload)?)),
        P::NetworkIsActive => fwd(NetCall::IsActive(uuid(payload)?)),
        P::NetworkIsPersistent => fwd(NetCall::IsPersistent(uuid(payload)?)),
        P::NetworkUpdate => {
            let a: NetUpdateArgs = args(payload)?;
            fwd(NetCall::Update {
                uuid: a.net.uuid.0,
                command: a.command,
                section: a.section,
                parent_index: a.parent_index,
                xml: a.xml,
                flags: a.flags,
            })
        }
        P::NetworkGetDhcpLeases => {
            let a: NetLeasesArgs = args(payload)?;
            fwd(NetCall::Leases { uuid: a.net.uuid.0, mac: a.mac, flags: a.flags })
        }
        P::ConnectNetworkEventRegisterAny => {
            let a: NetEventRegisterArgs = args(payload)?;
            if s.callbacks.len() + s.net_callbacks.len() >= MAX_CALLBACKS {
                return Err(RpcError::TooManyCallbacks(MAX_CALLBACKS));
            }
            let id = s.next_callback;
            s.next_callback += 1;
            s.net_callbacks.push((id, a.event_id, a.net.map(|n| n.uuid.0)));
            Ok(Action::Send(ok_reply(h, &id)?))
        }
        P::ConnectNetworkEventDeregisterAny => {
            let id = args::<IntArg>(payload)?.value;
            let before = s.net_callbacks.len();
            s.net_callbacks.retain(|(c, _, _)| *c != id);
            if s.net_callbacks.len() == before {
                return Err(RpcError::NoCallback(id));
            }
            Ok(Action::Send(ok_reply(h, &())?))
        }
        _ => Err(RpcError::Internal("not a network procedure")),
    }
}

fn wire(n: NetRef) -> NonnullNetwork {
    NonnullNetwork { name: n.name, uuid: xdr::FixedOpaque(n.uuid) }
}

/// Shapes the broker's answer to network procedure `p`.
pub(super) fn shape(h: &Header, p: RemoteProc, v: NetValue) -> Result<Vec<u8>, RpcError> {
    use RemoteProc as P;
    let mismatch = RpcError::Internal(p.name());
    match (p, v) {
        // These return nothing; the client keeps its handle.
        (P::NetworkUndefine | P::NetworkCreate | P::NetworkDestroy | P::NetworkSetAutostart | P::NetworkUpdate, _) => {
            ok_reply(h, &())
        }
        (_, NetValue::Unit) => ok_reply(h, &()),
        (_, NetValue::Net(n)) => ok_reply(h, &NetRet { net: wire(n) }),
        (P::ConnectListAllNetworks, NetValue::Nets(list)) => {
            let ret = list.len() as u32;
            ok_reply(h, &ListAllNetworksRet { nets: list.into_iter().map(wire).collect(), ret })
        }
        (P::ConnectNumOfNetworks | P::ConnectNumOfDefinedNetworks, NetValue::Names(n)) => {
            ok_reply(h, &(n.len() as i32))
        }
        (_, NetValue::Names(values)) => ok_reply(h, &StringListRet { values }),
        (_, NetValue::Text(t)) => ok_reply(h, &t),
        (_, NetValue::Int(i)) => ok_reply(h, &i),
        (P::NetworkGetDhcpLeases, NetValue::Leases(l)) => {
            let leases: Vec<DhcpLeaseWire> = l
                .into_iter()
                .take(DHCP_LEASES_MAX)
                .map(|l| DhcpLeaseWire {
                    iface: l.iface,
                    expirytime: l.expiry,
                    kind: l.kind,
                    mac: l.mac,
                    iaid: l.iaid,
                    ipaddr: l.ip,
                    prefix: l.prefix,
                    hostname: l.hostname,
                    clientid: l.client_id,
                })
                .collect();
            let ret = leases.len() as u32;
            ok_reply(h, &NetLeasesRet { leases, ret })
        }
        _ => Err(mismatch),
    }
}

/// Shapes a value that came back for a network call (see `dispatch::shape`).
pub(super) fn shape_value(h: &Header, p: RemoteProc, v: CallValue) -> Result<Vec<u8>, RpcError> {
    match v {
        CallValue::Network(n) => shape(h, p, n),
        _ => Err(RpcError::Internal(p.name())),
    }
}

/// The MESSAGE packets that deliver `event` to this connection's network
/// registrations.
pub fn event_messages(s: &Session, event: &NetEvent) -> Vec<u8> {
    let mut out = Vec::new();
    for (callback_id, _, _) in s
        .net_callbacks
        .iter()
        .filter(|(_, id, filter)| *id == EVENT_ID_LIFECYCLE && filter.is_none_or(|u| u == event.net.uuid))
    {
        let msg =
            NetLifecycleMsg { callback_id: *callback_id, net: wire(event.net.clone()), event: event.event, detail: 0 };
        let h = Header {
            prog: REMOTE_PROGRAM,
            vers: frame::PROTOCOL_VERSION,
            proc_: NETWORK_EVENT_LIFECYCLE,
            kind: MessageType::Message,
            serial: 1,
            status: Status::Ok as i32,
        };
        if let Ok(payload) = xdr::to_bytes(&msg) {
            let _ = frame::encode(&mut out, &h, &payload);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(proc_: i32) -> Header {
        Header { prog: REMOTE_PROGRAM, vers: 1, proc_, kind: MessageType::Call, serial: 1, status: 0 }
    }

    #[test]
    fn events_reach_only_the_registrations_that_match_their_network() {
        let mut s = Session { opened: true, ..Session::default() };
        let net = |u: u8| NonnullNetwork { name: "n".into(), uuid: xdr::FixedOpaque([u; 16]) };
        for filter in [None, Some(net(9)), Some(net(7))] {
            let payload = xdr::to_bytes(&NetEventRegisterArgs { event_id: 0, net: filter }).unwrap();
            let action = call(&mut s, &header(313), RemoteProc::ConnectNetworkEventRegisterAny, &payload).unwrap();
            assert!(matches!(action, Action::Send(_)));
        }
        assert_eq!(s.net_callbacks.len(), 3);
        let event = NetEvent { net: NetRef { name: "n".into(), uuid: [7; 16] }, event: 2 };
        let bytes = event_messages(&s, &event);
        // Two frames: the unfiltered registration and the one for this network.
        let (first, rest) = {
            let (h, payload, used) = frame::split(&bytes).unwrap().unwrap();
            assert_eq!((h.proc_, h.kind), (NETWORK_EVENT_LIFECYCLE, MessageType::Message));
            let msg: NetLifecycleMsg = xdr::from_bytes(&bytes[payload]).unwrap();
            (msg, bytes[used..].to_vec())
        };
        assert_eq!((first.callback_id, first.event, first.net.uuid.0), (s.net_callbacks[0].0, 2, [7; 16]));
        let (_, payload, used) = frame::split(&rest).unwrap().unwrap();
        let second: NetLifecycleMsg = xdr::from_bytes(&rest[payload]).unwrap();
        assert_eq!(second.callback_id, s.net_callbacks[2].0);
        assert_eq!(used, rest.len(), "no message for the other network's registration");
        // Deregistering an unknown id is an error; a known one removes it.
        let unknown = xdr::to_bytes(&IntArg { value: 999 }).unwrap();
        let unknown = call(&mut s, &header(314), RemoteProc::ConnectNetworkEventDeregisterAny, &unknown);
        assert!(matches!(unknown, Err(RpcError::NoCallback(999))));
        let id = xdr::to_bytes(&IntArg { value: s.net_callbacks[0].0 }).unwrap();
        call(&mut s, &header(314), RemoteProc::ConnectNetworkEventDeregisterAny, &id).unwrap();
        assert_eq!(s.net_callbacks.len(), 2);
    }
}
