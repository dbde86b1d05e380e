//! The storage procedures: decoded into [`StorageCall`]s for the broker,
//! their results shaped into replies, pool event registrations kept per
//! connection and pool events turned into MESSAGE packets.
//!
//! The read-only rule has already been applied by `dispatch.rs` from the
//! procedure table before anything here runs.

use serde::de::DeserializeOwned;

use super::packets::{ErasedRet, ok_reply};
use super::session::{Action, MAX_CALLBACKS, Session};
use crate::privsep::Call;
use crate::privsep::storage::{
    PoolEvent, PoolOp, PoolQuery, PoolRef, StorageCall, StorageValue, VolOp, VolQuery, VolRef,
};
use crate::rpc::error::RpcError;
use crate::rpc::frame::{self, Header, MessageType, REMOTE_PROGRAM, Status};
use crate::rpc::remote::{FlagsArgs, IntArg, RemoteProc, StringArg, StringListRet, UuidArg};
use crate::rpc::storage::*;
use crate::rpc::xdr;

fn args<T: DeserializeOwned>(payload: &[u8]) -> Result<T, RpcError> {
    xdr::from_bytes(payload).map_err(|_| RpcError::Decode)
}

fn pool(p: NonnullPool) -> PoolRef {
    PoolRef { name: p.name, uuid: p.uuid.0 }
}

fn vol(v: NonnullVol) -> VolRef {
    VolRef { pool: v.pool, name: v.name, key: v.key }
}

fn pool_out(p: PoolRef) -> NonnullPool {
    NonnullPool { name: p.name, uuid: xdr::FixedOpaque(p.uuid) }
}

fn vol_out(v: VolRef) -> NonnullVol {
    NonnullVol { pool: v.pool, name: v.name, key: v.key }
}

/// `VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE`, `_REFRESH`.
const EVENT_ID_LIFECYCLE: i32 = 0;
const EVENT_ID_REFRESH: i32 = 1;

/// Decodes one storage procedure's call (or answers it here: event registrations).
pub(super) fn call(s: &mut Session, h: &Header, p: RemoteProc, payload: &[u8]) -> Result<Action, RpcError> {
    use RemoteProc as P;
    let fwd = |c: StorageCall| Ok(Action::Forward(Call::Storage(c)));
    let pool_op = |payload: &[u8], op: fn(u32) -> PoolOp| {
        let a: PoolFlagsArgs = args(payload)?;
        fwd(StorageCall::Pool { pool: pool(a.pool), op: op(a.flags) })
    };
    let pool_query = |payload: &[u8], query: PoolQuery| {
        let a: PoolArg = args(payload)?;
        fwd(StorageCall::PoolQuery { pool: pool(a.pool), query })
    };
    match p {
        P::ConnectNumOfStoragePools => fwd(StorageCall::PoolNames { active: true, max: None }),
        P::ConnectNumOfDefinedStoragePools => fwd(StorageCall::PoolNames { active: false, max: None }),
        P::ConnectListStoragePools => {
            fwd(StorageCall::PoolNames { active: true, max: Some(args::<IntArg>(payload)?.value) })
        }
        P::ConnectListDefinedStoragePools => {
            fwd(StorageCall::PoolNames { active: false, max: Some(args::<IntArg>(payload)?.value) })
        }
        P::ConnectListAllStoragePools => {
            let a: ListAllPoolsArgs = args(payload)?;
            fwd(StorageCall::ListPools { flags: a.flags, need_results: a.need_results != 0 })
        }
        P::StoragePoolCreateXml => {
            let a: crate::rpc::remote::XmlFlagsArgs = args(payload)?;
            fwd(StorageCall::CreatePoolXml { xml: a.xml, flags: a.flags })
        }
        P::StoragePoolDefineXml => {
            let a: crate::rpc::remote::XmlFlagsArgs = args(payload)?;
            fwd(StorageCall::DefinePool { xml: a.xml, flags: a.flags })
        }
        P::StoragePoolCreate => pool_op(payload, |flags| PoolOp::Start { flags }),
        P::StoragePoolBuild => pool_op(payload, |flags| PoolOp::Build { flags }),
        P::StoragePoolDelete => pool_op(payload, |flags| PoolOp::Delete { flags }),
        P::StoragePoolRefresh => pool_op(payload, |flags| PoolOp::Refresh { flags }),
        P::StoragePoolDestroy => {
            fwd(StorageCall::Pool { pool: pool(args::<PoolArg>(payload)?.pool), op: PoolOp::Stop })
        }
        P::StoragePoolUndefine => {
            fwd(StorageCall::Pool { pool: pool(args::<PoolArg>(payload)?.pool), op: PoolOp::Undefine })
        }
        P::StoragePoolSetAutostart => {
            let a: PoolIntArgs = args(payload)?;
            fwd(StorageCall::Pool { pool: pool(a.pool), op: PoolOp::SetAutostart(a.value != 0) })
        }
        P::StoragePoolLookupByName => fwd(StorageCall::PoolByName(args::<StringArg>(payload)?.value)),
        P::StoragePoolLookupByUuid => fwd(StorageCall::PoolByUuid(args::<UuidArg>(payload)?.uuid.0)),
        P::StoragePoolLookupByTargetPath => fwd(StorageCall::PoolByPath(args::<StringArg>(payload)?.value)),
        P::StoragePoolLookupByVolume => fwd(StorageCall::PoolOfVolume(vol(args::<VolArg>(payload)?.vol))),
        P::StoragePoolGetInfo => pool_query(payload, PoolQuery::Info),
        P::StoragePoolGetAutostart => pool_query(payload, PoolQuery::Autostart),
        P::StoragePoolIsActive => pool_query(payload, PoolQuery::IsActive),
        P::StoragePoolIsPersistent => pool_query(payload, PoolQuery::IsPersistent),
        P::StoragePoolNumOfVolumes => pool_query(payload, PoolQuery::NumVolumes),
        P::StoragePoolGetXmlDesc => {
            let a: PoolFlagsArgs = args(payload)?;
            fwd(StorageCall::PoolQuery { pool: pool(a.pool), query: PoolQuery::XmlDesc { flags: a.flags } })
        }
        P::StoragePoolListVolumes => {
            let a: PoolIntArgs = args(payload)?;
            fwd(StorageCall::PoolQuery { pool: pool(a.pool), query: PoolQuery::VolumeNames { max: a.value } })
        }
        P::StoragePoolListAllVolumes => {
            let a: ListAllVolumesArgs = args(payload)?;
            let query = PoolQuery::Volumes { need_results: a.need_results != 0, flags: a.flags };
            fwd(StorageCall::PoolQuery { pool: pool(a.pool), query })
        }
        P::StorageVolCreateXml => {
            let a: VolCreateXmlArgs = args(payload)?;
            fwd(StorageCall::CreateVol { pool: pool(a.pool), xml: a.xml, from: None, flags: a.flags })
        }
        P::StorageVolCreateXmlFrom => {
            let a: VolCreateXmlFromArgs = args(payload)?;
            fwd(StorageCall::CreateVol { pool: pool(a.pool), xml: a.xml, from: Some(vol(a.clonevol)), flags: a.flags })
        }
        P::StorageVolLookupByName => {
            let a: VolLookupByNameArgs = args(payload)?;
            fwd(StorageCall::VolByName { pool: pool(a.pool), name: a.name })
        }
        P::StorageVolLookupByKey => fwd(StorageCall::VolByKey(args::<StringArg>(payload)?.value)),
        P::StorageVolLookupByPath => fwd(StorageCall::VolByPath(args::<StringArg>(payload)?.value)),
        P::StorageVolGetInfo => {
            fwd(StorageCall::VolQuery { vol: vol(args::<VolArg>(payload)?.vol), query: VolQuery::Info { flags: 0 } })
        }
        P::StorageVolGetInfoFlags => {
            let a: VolFlagsArgs = args(payload)?;
            fwd(StorageCall::VolQuery { vol: vol(a.vol), query: VolQuery::Info { flags: a.flags } })
        }
        P::StorageVolGetXmlDesc => {
            let a: VolFlagsArgs = args(payload)?;
            fwd(StorageCall::VolQuery { vol: vol(a.vol), query: VolQuery::XmlDesc { flags: a.flags } })
        }
        P::StorageVolGetPath => {
            fwd(StorageCall::VolQuery { vol: vol(args::<VolArg>(payload)?.vol), query: VolQuery::Path })
        }
        P::StorageVolDelete => {
            let a: VolFlagsArgs = args(payload)?;
            fwd(StorageCall::Vol { vol: vol(a.vol), op: VolOp::Delete { flags: a.flags } })
        }
        P::StorageVolWipe => {
            let a: VolFlagsArgs = args(payload)?;
            fwd(StorageCall::Vol { vol: vol(a.vol), op: VolOp::Wipe { algorithm: None, flags: a.flags } })
        }
        P::StorageVolWipePattern => {
            let a: VolWipePatternArgs = args(payload)?;
            fwd(StorageCall::Vol { vol: vol(a.vol), op: VolOp::Wipe { algorithm: Some(a.algorithm), flags: a.flags } })
        }
        P::StorageVolResize => {
            let a: VolResizeArgs = args(payload)?;
            fwd(StorageCall::Vol { vol: vol(a.vol), op: VolOp::Resize { capacity: a.capacity, flags: a.flags } })
        }
        P::StorageVolUpload => {
            let a: VolStreamArgs = args(payload)?;
            let op = VolOp::Upload { offset: a.offset, length: a.length, flags: a.flags };
            fwd(StorageCall::Vol { vol: vol(a.vol), op })
        }
        P::StorageVolDownload => {
            let a: VolStreamArgs = args(payload)?;
            let op = VolOp::Download { offset: a.offset, length: a.length, flags: a.flags };
            fwd(StorageCall::Vol { vol: vol(a.vol), op })
        }
        P::ConnectGetStoragePoolCapabilities => {
            fwd(StorageCall::Capabilities { flags: args::<FlagsArgs>(payload)?.flags })
        }
        P::ConnectStoragePoolEventRegisterAny => {
            let a: PoolEventRegisterArgs = args(payload)?;
            if !matches!(a.event_id, EVENT_ID_LIFECYCLE | EVENT_ID_REFRESH) {
                return Err(RpcError::Call(crate::privsep::CallError::InvalidArg(format!(
                    "unsupported event ID {}",
                    a.event_id
                ))));
            }
            if s.callbacks.len() + s.pool_callbacks.len() >= MAX_CALLBACKS {
                return Err(RpcError::TooManyCallbacks(MAX_CALLBACKS));
            }
            let id = s.next_callback;
            s.next_callback += 1;
            s.pool_callbacks.push((id, a.event_id, a.pool.map(|p| p.uuid.0)));
            Ok(Action::Send(ok_reply(h, &id)?))
        }
        P::ConnectStoragePoolEventDeregisterAny => {
            let id = args::<IntArg>(payload)?.value;
            let before = s.pool_callbacks.len();
            s.pool_callbacks.retain(|(c, _, _)| *c != id);
            if s.pool_callbacks.len() == before {
                return Err(RpcError::NoCallback(id));
            }
            Ok(Action::Send(ok_reply(h, &())?))
        }
        _ => Err(RpcError::Internal("not a storage procedure")),
    }
}

/// Shapes a storage call's result into its reply.
pub(super) fn shape(h: &Header, p: RemoteProc, v: StorageValue) -> Result<Vec<u8>, RpcError> {
    use RemoteProc as P;
    let ok = |v: &dyn ErasedRet| ok_reply(h, v);
    match (p, v) {
        (_, StorageValue::Unit | StorageValue::Stream) => ok(&()),
        (_, StorageValue::Pool(pl)) => ok(&PoolArg { pool: pool_out(pl) }),
        (_, StorageValue::Vol(v)) => ok(&VolArg { vol: vol_out(v) }),
        (_, StorageValue::Pools { list, count }) => {
            ok(&ListAllPoolsRet { pools: list.into_iter().map(pool_out).collect(), ret: count })
        }
        (_, StorageValue::Vols { list, count }) => {
            ok(&ListAllVolumesRet { vols: list.into_iter().map(vol_out).collect(), ret: count })
        }
        (_, StorageValue::Names(values)) => ok(&StringListRet { values }),
        (_, StorageValue::Int(n)) => ok(&n),
        (_, StorageValue::Text(t)) => ok(&t),
        (_, StorageValue::PoolInfo(i)) => ok(&PoolInfoRet {
            state: i.state as u32,
            capacity: i.capacity,
            allocation: i.allocation,
            available: i.available,
        }),
        (P::StorageVolGetInfo | P::StorageVolGetInfoFlags, StorageValue::VolInfo { kind, capacity, allocation }) => {
            ok(&VolInfoRet { kind, capacity, allocation })
        }
        (_, StorageValue::VolInfo { .. }) => Err(RpcError::Internal(p.name())),
    }
}

/// A stream error packet for a volume stream whose file failed (libvirt's
/// STREAM message with status ERROR and a `remote_error`).
pub(super) fn stream_error(call: &Header, e: &std::io::Error) -> Vec<u8> {
    let err = RpcError::Call(crate::privsep::CallError::Storage(crate::privsep::storage::StorageError::System(
        format!("cannot write to the volume: {e}"),
    )));
    let payload = xdr::to_bytes(&crate::rpc::error::to_remote(&err)).unwrap_or_default();
    super::packets::stream_packet(call, Status::Error, &payload)
}

/// The MESSAGE packets that deliver `event` to this connection's pool registrations.
pub(super) fn event_messages(s: &Session, event: &PoolEvent) -> Vec<u8> {
    let (event_id, proc_) = match event.lifecycle {
        Some(_) => (EVENT_ID_LIFECYCLE, STORAGE_POOL_EVENT_LIFECYCLE),
        None => (EVENT_ID_REFRESH, STORAGE_POOL_EVENT_REFRESH),
    };
    let mut out = Vec::new();
    for (callback_id, _, _) in
        s.pool_callbacks.iter().filter(|(_, id, f)| *id == event_id && f.is_none_or(|u| u == event.pool.uuid))
    {
        let pool = pool_out(event.pool.clone());
        let payload = match event.lifecycle {
            Some((ev, detail)) => {
                xdr::to_bytes(&PoolLifecycleMsg { callback_id: *callback_id, pool, event: ev, detail })
            }
            None => xdr::to_bytes(&PoolRefreshMsg { callback_id: *callback_id, pool }),
        };
        let h = Header {
            prog: REMOTE_PROGRAM,
            vers: frame::PROTOCOL_VERSION,
            proc_,
            kind: MessageType::Message,
            serial: 1,
            status: Status::Ok as i32,
        };
        if let Ok(payload) = payload {
            let _ = frame::encode(&mut out, &h, &payload);
        }
    }
    out
}

/// Every storage argument shape, for the dispatcher's table test.
#[cfg(test)]
pub(super) fn candidate_payloads() -> Vec<Vec<u8>> {
    let p = NonnullPool { name: "p".into(), uuid: xdr::FixedOpaque([7; 16]) };
    let v = NonnullVol { pool: "p".into(), name: "v".into(), key: "/p/v".into() };
    let enc = |x: &dyn ErasedRet| x.encode().unwrap_or_default();
    vec![
        enc(&PoolArg { pool: p.clone() }),
        enc(&PoolFlagsArgs { pool: p.clone(), flags: 0 }),
        enc(&ListAllVolumesArgs { pool: p.clone(), need_results: 1, flags: 0 }),
        enc(&VolCreateXmlArgs { pool: p.clone(), xml: "<volume/>".into(), flags: 0 }),
        enc(&VolCreateXmlFromArgs { pool: p.clone(), xml: "<volume/>".into(), clonevol: v.clone(), flags: 0 }),
        enc(&VolLookupByNameArgs { pool: p.clone(), name: "v".into() }),
        enc(&VolArg { vol: v.clone() }),
        enc(&VolFlagsArgs { vol: v.clone(), flags: 0 }),
        enc(&VolWipePatternArgs { vol: v.clone(), algorithm: 0, flags: 0 }),
        enc(&VolResizeArgs { vol: v.clone(), capacity: 1, flags: 0 }),
        enc(&VolStreamArgs { vol: v, offset: 0, length: 0, flags: 0 }),
        enc(&ListAllPoolsArgs { need_results: 1, flags: 0 }),
        enc(&PoolEventRegisterArgs { event_id: 0, pool: Some(p) }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(proc_: i32) -> Header {
        Header { prog: REMOTE_PROGRAM, vers: 1, proc_, kind: MessageType::Call, serial: 3, status: 0 }
    }

    #[test]
    fn pool_lifecycle_events_reach_only_matching_registrations() {
        let mut s = Session { opened: true, ..Session::default() };
        let reg = xdr::to_bytes(&PoolEventRegisterArgs { event_id: 0, pool: None }).unwrap();
        let p = RemoteProc::ConnectStoragePoolEventRegisterAny;
        assert!(matches!(call(&mut s, &header(368), p, &reg), Ok(Action::Send(_))));
        let other = xdr::to_bytes(&PoolEventRegisterArgs {
            event_id: 0,
            pool: Some(NonnullPool { name: "x".into(), uuid: xdr::FixedOpaque([9; 16]) }),
        })
        .unwrap();
        assert!(matches!(call(&mut s, &header(368), p, &other), Ok(Action::Send(_))));
        let ev = PoolEvent { pool: PoolRef { name: "default".into(), uuid: [1; 16] }, lifecycle: Some((2, 0)) };
        let bytes = event_messages(&s, &ev);
        let (h, payload, len) = frame::split(&bytes).unwrap().unwrap();
        assert_eq!(len, bytes.len(), "one message, for the unfiltered registration");
        assert_eq!((h.proc_, h.kind), (STORAGE_POOL_EVENT_LIFECYCLE, MessageType::Message));
        let msg: PoolLifecycleMsg = xdr::from_bytes(&bytes[payload]).unwrap();
        assert_eq!((msg.pool.name.as_str(), msg.event), ("default", 2));
        assert!(event_messages(&s, &PoolEvent { lifecycle: None, ..ev }).is_empty());
    }

    #[test]
    fn a_volume_upload_decodes_into_a_stream_opening_call() {
        let mut s = Session { opened: true, ..Session::default() };
        let v = NonnullVol { pool: "p".into(), name: "v".into(), key: "/p/v".into() };
        let payload = xdr::to_bytes(&VolStreamArgs { vol: v, offset: 0, length: 4096, flags: 0 }).unwrap();
        let Ok(Action::Forward(Call::Storage(c))) = call(&mut s, &header(208), RemoteProc::StorageVolUpload, &payload)
        else {
            panic!()
        };
        assert!(c.mutates());
        assert_eq!(c.opens_stream(), Some((true, 4096)));
    }
}
