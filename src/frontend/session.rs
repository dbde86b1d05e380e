//! A client connection's protocol state, and what the dispatcher decides
//! about one packet: shared by the REMOTE dispatcher and the ADMIN one, so
//! that neither imports the other's internals.

use crate::privsep::{Call, DomainRef};
use crate::rpc::frame::{self, Header, MessageType, REMOTE_PROGRAM, Status};
use crate::rpc::remote::*;
use crate::rpc::xdr;

/// libvirt's own protocol version we speak (9.0.0).
pub(super) const LIB_VERSION: u64 = 9_000_000;

/// A client's protocol state.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// CONNECT_OPEN succeeded.
    pub opened: bool,
    /// Read-only (socket or flag).
    pub readonly: bool,
    /// The client negotiated keepalive (feature 10).
    pub keepalive: bool,
    /// A close callback is registered.
    pub close_callback: bool,
    /// The transport is local (Unix socket) or encrypted.
    pub secure: bool,
    /// The client came through the admin socket, which serves only the ADMIN program.
    pub admin: bool,
    /// Event registrations: (callbackID, eventID, domain filter).
    pub callbacks: Vec<(i32, i32, Option<crate::domain::Uuid>)>,
    /// Network event registrations: (callbackID, eventID, network filter).
    pub net_callbacks: Vec<(i32, i32, Option<[u8; 16]>)>,
    /// The next callbackID to hand out.
    pub next_callback: i32,
    /// Storage pool event registrations: (callbackID, eventID, pool filter).
    pub pool_callbacks: Vec<(i32, i32, Option<[u8; 16]>)>,
}

/// Most event registrations one connection may hold (virsh makes 27).
pub(super) const MAX_CALLBACKS: usize = 256;

impl Session {
    /// The MESSAGE packets that deliver `event` to this connection's
    /// registrations for its kind (usually none or one).
    pub fn event_messages(&self, event: &crate::privsep::DomainEvent) -> Vec<u8> {
        use crate::privsep::EventKind;
        use crate::rpc::events::{self as ev, DomainOnlyEventMsg};
        let (event_id, proc_) = match event.kind {
            EventKind::Lifecycle { .. } => (ev::ID_LIFECYCLE, DOMAIN_EVENT_CALLBACK_LIFECYCLE),
            EventKind::MetadataChange { .. } => (ev::ID_METADATA_CHANGE, DOMAIN_EVENT_CALLBACK_METADATA_CHANGE),
            EventKind::Reboot => (ev::ID_REBOOT, ev::CALLBACK_REBOOT),
            EventKind::ControlError => (ev::ID_CONTROL_ERROR, ev::CALLBACK_CONTROL_ERROR),
            EventKind::IoError { reason: None, .. } => (ev::ID_IO_ERROR, ev::CALLBACK_IO_ERROR),
            EventKind::IoError { reason: Some(_), .. } => (ev::ID_IO_ERROR_REASON, ev::CALLBACK_IO_ERROR_REASON),
            EventKind::RtcChange { .. } => (ev::ID_RTC_CHANGE, ev::CALLBACK_RTC_CHANGE),
        };
        let mut out = Vec::new();
        for (callback_id, _, _) in self
            .callbacks
            .iter()
            .filter(|(_, id, filter)| *id == event_id && filter.is_none_or(|u| u == event.dom.uuid))
        {
            let (callback_id, dom) = (*callback_id, nonnull(event.dom.clone()));
            let payload = match &event.kind {
                EventKind::Lifecycle { event, detail } => {
                    xdr::to_bytes(&LifecycleEventMsg { callback_id, dom, event: *event, detail: *detail })
                }
                EventKind::MetadataChange { kind, uri } => {
                    xdr::to_bytes(&MetadataChangeEventMsg { callback_id, dom, kind: *kind, nsuri: uri.clone() })
                }
                EventKind::Reboot | EventKind::ControlError => xdr::to_bytes(&DomainOnlyEventMsg { callback_id, dom }),
                EventKind::RtcChange { offset } => {
                    xdr::to_bytes(&ev::RtcChangeEventMsg { callback_id, dom, offset: *offset })
                }
                EventKind::IoError { path, alias, action, reason: None } => xdr::to_bytes(&ev::IoErrorEventMsg {
                    callback_id,
                    dom,
                    src_path: path.clone(),
                    dev_alias: alias.clone(),
                    action: *action,
                }),
                EventKind::IoError { path, alias, action, reason: Some(r) } => {
                    xdr::to_bytes(&ev::IoErrorReasonEventMsg {
                        callback_id,
                        dom,
                        src_path: path.clone(),
                        dev_alias: alias.clone(),
                        action: *action,
                        reason: r.clone(),
                    })
                }
            };
            let h = Header {
                prog: REMOTE_PROGRAM,
                vers: frame::PROTOCOL_VERSION,
                proc_,
                kind: MessageType::Message,
                // libvirtd sends 1; clients ignore it.
                serial: 1,
                status: Status::Ok as i32,
            };
            if let Ok(payload) = payload {
                let _ = frame::encode(&mut out, &h, &payload);
            }
        }
        out
    }
}

/// What the connection must do about one packet.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send these bytes (a reply or a PONG).
    Send(Vec<u8>),
    /// Send these bytes, then close once everything is flushed.
    SendAndClose(Vec<u8>),
    /// Ask the broker; shape its answer with `dispatch::reply`.
    Forward(Call),
    /// Tell the broker the connection became read-only, then send these bytes.
    BecameReadOnly(Vec<u8>),
    /// A read-only connection was refused a change: send these bytes, and
    /// have the broker audit the refusal (the call itself never reaches it).
    Denied(Vec<u8>),
    /// A stream packet from the client (console input, finish, abort).
    Stream(Header, Vec<u8>),
    /// Nothing to send.
    Nothing,
    /// The peer broke the protocol: close the connection.
    Close(&'static str),
}

/// Values of the daemon the dispatcher reports.
pub struct Facts<'a> {
    /// `qemu:///system` or `qemu:///session`.
    pub uri: &'a str,
}

/// The wire form of a domain reference.
pub(super) fn nonnull(d: DomainRef) -> NonnullDomain {
    NonnullDomain { name: d.name, uuid: xdr::FixedOpaque(d.uuid.0), id: d.id }
}
