//! The ADMIN program for admin-socket clients (`virt-admin`): decodes each
//! call into an [`AdminCall`] for the broker, which owns what they change,
//! and shapes the broker's answers. Only the server names and the library
//! version are answered here.

use super::packets::ok_reply;
use super::session::{Action, LIB_VERSION, Session};
use crate::privsep::admin::{AdminCall, AdminValue, ClientSummary, Param, ParamValue, SERVERS};
use crate::privsep::{Call, CallError, CallValue};
use crate::rpc::admin::{self as wire, AdminProc};
use crate::rpc::error::RpcError;
use crate::rpc::frame::Header;
use crate::rpc::xdr;

/// Handles one ADMIN call.
pub fn call(s: &mut Session, h: &Header, payload: &[u8]) -> Result<Action, RpcError> {
    use AdminProc as P;
    let proc_ = AdminProc::from_number(h.proc_).ok_or(RpcError::UnknownProcedure(h.proc_))?;
    if !s.opened && proc_ != P::ConnectOpen {
        return Err(RpcError::NotOpen);
    }
    let fwd = |c: AdminCall| Ok(Action::Forward(Call::Admin(c)));
    match proc_ {
        P::ConnectOpen => {
            no_flags(args::<wire::FlagsArgs>(payload)?.flags, "adminConnectOpen")?;
            if s.opened {
                return Err(RpcError::AlreadyOpen);
            }
            s.opened = true;
            Ok(Action::Send(ok_reply(h, &())?))
        }
        P::ConnectClose => {
            args::<()>(payload)?;
            Ok(Action::SendAndClose(ok_reply(h, &())?))
        }
        P::ConnectGetLibVersion => Ok(Action::Send(ok_reply(h, &LIB_VERSION)?)),
        P::ConnectListServers => {
            let a: wire::ListServersArgs = args(payload)?;
            no_flags(a.flags, "adminConnectListServers")?;
            let servers = match a.need_results {
                0 => Vec::new(),
                _ => SERVERS.iter().map(|n| wire::Server { name: (*n).into() }).collect(),
            };
            Ok(Action::Send(ok_reply(h, &wire::ListServersRet { servers, ret: SERVERS.len() as u32 })?))
        }
        P::ConnectLookupServer => {
            let a: wire::LookupServerArgs = args(payload)?;
            no_flags(a.flags, "adminConnectLookupServer")?;
            if !SERVERS.contains(&a.name.as_str()) {
                return Err(CallError::NoServer(a.name).into());
            }
            Ok(Action::Send(ok_reply(h, &wire::Server { name: a.name })?))
        }
        P::ServerGetThreadpoolParameters => {
            let a: wire::ServerArgs = args(payload)?;
            no_flags(a.flags, "adminServerGetThreadPoolParameters")?;
            fwd(AdminCall::Threadpool { server: a.srv.name })
        }
        P::ServerSetThreadpoolParameters => {
            let a: wire::ServerSetArgs = args(payload)?;
            no_flags(a.flags, "adminServerSetThreadPoolParameters")?;
            fwd(AdminCall::SetThreadpool { server: a.srv.name, params: params_in(a.params)? })
        }
        P::ServerListClients => {
            let a: wire::ListClientsArgs = args(payload)?;
            no_flags(a.flags, "adminServerListClients")?;
            fwd(AdminCall::ListClients { server: a.srv.name, need_results: a.need_results != 0 })
        }
        P::ServerLookupClient => {
            let a: wire::LookupClientArgs = args(payload)?;
            no_flags(a.flags, "adminServerLookupClient")?;
            fwd(AdminCall::LookupClient { server: a.srv.name, id: a.id })
        }
        P::ClientGetInfo => {
            let a: wire::ClientArgs = args(payload)?;
            no_flags(a.flags, "adminClientGetInfo")?;
            fwd(AdminCall::ClientInfo { server: a.clnt.srv.name, id: a.clnt.id })
        }
        P::ClientClose => {
            let a: wire::ClientArgs = args(payload)?;
            no_flags(a.flags, "adminClientClose")?;
            fwd(AdminCall::CloseClient { server: a.clnt.srv.name, id: a.clnt.id })
        }
        P::ServerGetClientLimits => {
            let a: wire::ServerArgs = args(payload)?;
            no_flags(a.flags, "adminServerGetClientLimits")?;
            fwd(AdminCall::ClientLimits { server: a.srv.name })
        }
        P::ServerSetClientLimits => {
            let a: wire::ServerSetArgs = args(payload)?;
            no_flags(a.flags, "adminServerSetClientLimits")?;
            fwd(AdminCall::SetClientLimits { server: a.srv.name, params: params_in(a.params)? })
        }
        P::ConnectGetLoggingOutputs => {
            no_flags(args::<wire::FlagsArgs>(payload)?.flags, "adminConnectGetLoggingOutputs")?;
            fwd(AdminCall::LogOutputs)
        }
        P::ConnectGetLoggingFilters => {
            no_flags(args::<wire::FlagsArgs>(payload)?.flags, "adminConnectGetLoggingFilters")?;
            fwd(AdminCall::LogFilters)
        }
        P::ConnectSetLoggingOutputs => {
            let a: wire::SetLoggingArgs = args(payload)?;
            no_flags(a.flags, "adminConnectSetLoggingOutputs")?;
            fwd(AdminCall::SetLogOutputs(a.value))
        }
        P::ConnectSetLoggingFilters => {
            let a: wire::SetLoggingArgs = args(payload)?;
            no_flags(a.flags, "adminConnectSetLoggingFilters")?;
            fwd(AdminCall::SetLogFilters(a.value))
        }
        P::ServerUpdateTlsFiles => {
            let a: wire::ServerArgs = args(payload)?;
            no_flags(a.flags, "adminServerUpdateTlsFiles")?;
            fwd(AdminCall::UpdateTls { server: a.srv.name })
        }
        P::ConnectSetDaemonTimeout => {
            let a: wire::SetTimeoutArgs = args(payload)?;
            no_flags(a.flags, "adminConnectSetDaemonTimeout")?;
            fwd(AdminCall::SetTimeout(a.timeout))
        }
    }
}

/// Shapes the broker's answer to ADMIN call `h`.
pub fn shape(h: &Header, v: AdminValue) -> Result<Vec<u8>, RpcError> {
    use AdminProc as P;
    let proc_ = AdminProc::from_number(h.proc_).ok_or(RpcError::Internal("admin procedure"))?;
    match (proc_, v) {
        (_, AdminValue::Unit) => ok_reply(h, &()),
        (P::ServerListClients, AdminValue::Clients { list, count }) => {
            ok_reply(h, &wire::ListClientsRet { clients: list.into_iter().map(client_out).collect(), ret: count })
        }
        (P::ServerLookupClient, AdminValue::Client(c)) => ok_reply(h, &client_out(c)),
        (_, AdminValue::Params(params)) => {
            ok_reply(h, &wire::ParamsRet { params: params.into_iter().map(param_out).collect() })
        }
        (P::ConnectGetLoggingOutputs, AdminValue::Logging { value, count }) => {
            ok_reply(h, &wire::LoggingOutputsRet { value, count })
        }
        (P::ConnectGetLoggingFilters, AdminValue::Logging { value, count }) => {
            ok_reply(h, &wire::LoggingRet { value: Some(value).filter(|v| !v.is_empty()), count })
        }
        _ => Err(RpcError::Internal("admin result")),
    }
}

/// The broker's answer as a CallValue, for [`shape`].
pub fn shape_value(h: &Header, v: CallValue) -> Result<Vec<u8>, RpcError> {
    match v {
        CallValue::Admin(a) => shape(h, a),
        CallValue::Unit => ok_reply(h, &()),
        _ => Err(RpcError::Internal("admin result")),
    }
}

fn client_out(c: ClientSummary) -> wire::Client {
    wire::Client { srv: wire::Server { name: c.server }, id: c.id, timestamp: c.since, transport: c.transport }
}

/// A typed parameter in its wire shape (the REMOTE program's is the same).
pub(super) fn param_out(p: Param) -> wire::TypedParam {
    let value = match p.value {
        ParamValue::Int(v) => wire::ParamValue::Int(v),
        ParamValue::UInt(v) => wire::ParamValue::UInt(v),
        ParamValue::LLong(v) => wire::ParamValue::LLong(v),
        ParamValue::ULLong(v) => wire::ParamValue::ULLong(v),
        ParamValue::Bool(v) => wire::ParamValue::Boolean(v.into()),
        ParamValue::Text(v) => wire::ParamValue::String(v),
    };
    wire::TypedParam { field: p.field, value }
}

/// A client's parameters for a setter, bounded in count.
pub(super) fn params_in(params: Vec<wire::TypedParam>) -> Result<Vec<Param>, RpcError> {
    if params.len() > wire::SERVER_PARAMS_MAX {
        return Err(CallError::InvalidArg(format!("too many parameters (at most {})", wire::SERVER_PARAMS_MAX)).into());
    }
    params
        .into_iter()
        .map(|p| {
            let value = match p.value {
                wire::ParamValue::Int(v) => ParamValue::Int(v),
                wire::ParamValue::UInt(v) => ParamValue::UInt(v),
                wire::ParamValue::LLong(v) => ParamValue::LLong(v),
                wire::ParamValue::ULLong(v) => ParamValue::ULLong(v),
                wire::ParamValue::Boolean(v) => ParamValue::Bool(v != 0),
                wire::ParamValue::String(v) => ParamValue::Text(v),
                wire::ParamValue::Double(_) | wire::ParamValue::Invalid => {
                    return Err(
                        CallError::InvalidArg(format!("parameter '{}' has an unsupported type", p.field)).into()
                    );
                }
            };
            Ok(Param { field: p.field, value })
        })
        .collect()
}

fn no_flags(flags: u32, function: &'static str) -> Result<(), RpcError> {
    if flags != 0 {
        return Err(RpcError::UnsupportedFlags { flags, function });
    }
    Ok(())
}

fn args<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, RpcError> {
    xdr::from_bytes(payload).map_err(|_| RpcError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::frame::{ADMIN_PROGRAM, MessageType};

    fn header(proc_: AdminProc) -> Header {
        Header { prog: ADMIN_PROGRAM, vers: 1, proc_: proc_ as i32, kind: MessageType::Call, serial: 1, status: 0 }
    }

    fn payloads() -> Vec<Vec<u8>> {
        let srv = wire::Server { name: "libvirtd".into() };
        let clnt = wire::Client { srv: srv.clone(), id: 1, timestamp: 0, transport: 0 };
        let enc = |b: Result<Vec<u8>, _>| b.unwrap();
        vec![
            enc(xdr::to_bytes(&())),
            enc(xdr::to_bytes(&wire::FlagsArgs { flags: 0 })),
            enc(xdr::to_bytes(&wire::ListServersArgs { need_results: 1, flags: 0 })),
            enc(xdr::to_bytes(&wire::LookupServerArgs { name: "libvirtd".into(), flags: 0 })),
            enc(xdr::to_bytes(&wire::ServerArgs { srv: srv.clone(), flags: 0 })),
            enc(xdr::to_bytes(&wire::ServerSetArgs { srv: srv.clone(), params: Vec::new(), flags: 0 })),
            enc(xdr::to_bytes(&wire::ListClientsArgs { srv: srv.clone(), need_results: 1, flags: 0 })),
            enc(xdr::to_bytes(&wire::LookupClientArgs { srv, id: 1, flags: 0 })),
            enc(xdr::to_bytes(&wire::ClientArgs { clnt, flags: 0 })),
            enc(xdr::to_bytes(&wire::SetLoggingArgs { value: None, flags: 0 })),
            enc(xdr::to_bytes(&wire::SetTimeoutArgs { timeout: 5, flags: 0 })),
        ]
    }

    /// Where the table says a procedure is answered is where dispatch
    /// answers it: the frontend itself, or the broker (an admin call,
    /// which needs a read-write connection).
    #[test]
    fn the_admin_tables_answered_column_and_dispatch_agree() {
        for p in AdminProc::ALL {
            let reached = payloads().into_iter().find_map(|payload| {
                let mut s = Session { opened: p != AdminProc::ConnectOpen, ..Session::default() };
                match call(&mut s, &header(p), &payload) {
                    Ok(Action::Forward(call)) => Some(Some(call)),
                    Ok(_) => Some(None),
                    Err(_) => None,
                }
            });
            match reached {
                Some(Some(c)) => {
                    assert!(p.forwarded(), "{p:?} reaches the broker: {c:?}");
                    assert!(matches!(c, Call::Admin(_)) && c.mutates(), "{p:?}: {c:?}");
                }
                Some(None) => assert!(!p.forwarded(), "{p:?} is answered by the frontend"),
                None => panic!("{p:?}: no payload decodes; add its argument shape"),
            }
            assert!(p.api().starts_with("virAdm"));
            assert_eq!(AdminProc::from_number(p as i32), Some(p));
        }
        assert_eq!(AdminProc::from_number(20), None);
    }
}
