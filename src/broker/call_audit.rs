//! What the audit trail records of calls: a client's change to a domain,
//! the daemon's own doings with a guest, how a request that waited on a
//! helper ended, admin calls and refusals. Every record names who asked.

use super::audit::{Auditor, Value, client_fields};
use super::calls::Caller;
use super::supervisor::{Asker, Awaiting};
use crate::domain::{Uuid, uuid_string};
use crate::privsep::CallError;

/// Audits what the daemon did to or saw of a guest by itself, with no
/// client asking: the guest's name, uuid and helper pid, and why.
pub fn audit_guest(
    auditor: &mut Auditor,
    op: &str,
    (name, uuid): (&str, &Uuid),
    pid: i32,
    reason: Option<&str>,
    ok: bool,
) {
    let u = uuid_string(uuid);
    let mut fields = vec![("vm", Value::Text(name)), ("uuid", Value::Text(&u)), ("vm-pid", Value::Num(pid.into()))];
    fields.extend(reason.map(|r| ("reason", Value::Text(r))));
    auditor.record(op, &fields, ok);
}

/// Audits how a request that waited for a helper ended.
pub fn audit_awaited(auditor: &mut Auditor, uuid: &Uuid, a: &Awaiting, result: &Result<(), CallError>) {
    let name = a.name.clone();
    match &a.asker {
        Asker::Client { conn, peer, reply_to } => {
            let caller = Caller { conn: *conn, peer, readonly: false, request: reply_to.unwrap_or(0) };
            let named = result.clone().map(|()| name);
            audit_change(auditor, &caller, a.op, uuid, &named, &[("vm-pid", Value::Num(a.pid.into()))]);
        }
        Asker::Daemon(why) => audit_guest(auditor, a.op, (&name, uuid), a.pid, Some(why), result.is_ok()),
    }
}

/// Audits a change to the domain `uuid`: its name and `extra` on success,
/// the reason on failure.
pub fn audit_change(
    auditor: &mut Auditor,
    caller: &Caller,
    op: &str,
    uuid: &Uuid,
    result: &Result<String, CallError>,
    extra: &[(&str, Value<'_>)],
) {
    let u = uuid_string(uuid);
    match result {
        Ok(name) => {
            let mut fields = vec![("vm", Value::Text(name)), ("uuid", Value::Text(&u))];
            fields.extend(extra.iter().cloned());
            audit(auditor, caller, op, &fields, true);
        }
        Err(e) => {
            let reason = e.to_string();
            audit(auditor, caller, op, &[("uuid", Value::Text(&u)), ("reason", Value::Text(&reason))], false);
        }
    }
}

/// Audits an admin-socket client's call: what it asked and whether it worked.
pub fn audit_admin(
    auditor: &mut Auditor,
    caller: &Caller,
    call: &crate::privsep::admin::AdminCall,
    result: Result<(), CallError>,
) {
    use crate::privsep::admin::AdminCall as A;
    let mut fields: Vec<(&str, Value<'_>)> = Vec::new();
    let (server, client) = match call {
        A::Threadpool { server } | A::SetThreadpool { server, .. } | A::ListClients { server, .. } => {
            (Some(server), None)
        }
        A::ClientLimits { server } | A::SetClientLimits { server, .. } | A::UpdateTls { server } => {
            (Some(server), None)
        }
        A::LookupClient { server, id } | A::ClientInfo { server, id } | A::CloseClient { server, id } => {
            (Some(server), Some(*id))
        }
        _ => (None, None),
    };
    fields.extend(server.map(|s| ("server", Value::Text(s))));
    fields.extend(client.map(|id| ("client", Value::Num(id as i64))));
    let setting = match call {
        A::SetLogOutputs(v) | A::SetLogFilters(v) => v.clone(),
        A::SetTimeout(t) => Some(t.to_string()),
        A::SetClientLimits { params, .. } | A::SetThreadpool { params, .. } => {
            Some(params.iter().map(|p| format!("{}={}", p.field, p.value)).collect::<Vec<_>>().join(","))
        }
        _ => None,
    };
    fields.extend(setting.as_deref().map(|s| ("value", Value::Text(s))));
    let reason = result.as_ref().err().map(ToString::to_string);
    fields.extend(reason.as_deref().map(|r| ("reason", Value::Text(r))));
    audit(auditor, caller, call.op(), &fields, result.is_ok());
}

/// Audits a call the frontend refused on a read-only connection.
pub fn audit_denial(auditor: &mut Auditor, caller: &Caller, procedure: i32) {
    let api = crate::rpc::remote::libvirt_proc(procedure).map_or("unknown", |e| e.api);
    let fields =
        [("api", Value::Text(api)), ("proc", Value::Num(procedure.into())), ("reason", Value::Text("read-only"))];
    audit(auditor, caller, "denied", &fields, false);
}

/// Audits `caller`'s call `op`, with its identity and `extra`.
pub fn audit(auditor: &mut Auditor, caller: &Caller, op: &str, extra: &[(&str, Value<'_>)], ok: bool) {
    let mut fields = client_fields(caller.conn, caller.peer);
    fields.extend(extra.iter().cloned());
    auditor.record(op, &fields, ok);
}
