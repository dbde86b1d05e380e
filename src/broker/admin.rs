//! Daemon administration (`virt-admin`): the client table, connection
//! limits, logging and the idle timeout, changed while the daemon runs.
//!
//! Only admin-socket clients reach this (the event loop checks), and every
//! call is audited by the caller with the outcome.

use std::collections::HashMap;

use super::link::Client;
use crate::config::Config;
use crate::logging::{Filter, Output, OutputKind, parse_filters, parse_outputs};
use crate::privsep::admin::{ADMIN_SERVER, AdminCall, AdminValue, ClientSummary, MAIN_SERVER, Param, ParamValue};
use crate::privsep::{CallError, ConnId, ListenerKind};

/// What the event loop must do after an admin call succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing more.
    None,
    /// Close this client's connection.
    Disconnect(ConnId),
    /// Limits changed: send the frontend its new configuration.
    Reconfigure,
    /// Logging changed: reopen the outputs, then reconfigure the frontend.
    Relog,
    /// Re-read the TLS certificates, key, CA, CRL and allowed DNs.
    ReloadTls,
}

/// What an admin call may read and change.
pub struct Admin<'a> {
    /// Connected clients.
    pub clients: &'a HashMap<ConnId, Client>,
    /// The running configuration.
    pub config: &'a mut Config,
    /// `--timeout`, in seconds.
    pub timeout: &'a mut Option<u32>,
    /// Requests waiting for a guest helper (the job queue).
    pub waiting: usize,
    /// Whether a TLS socket is listening.
    pub tls: bool,
}

/// Which server a client belongs to.
fn server_of(c: &Client) -> &'static str {
    c.peer.socket.server()
}

/// `virNetServerClient` transports: 0 unix, 1 tcp, 2 tls.
fn transport(kind: ListenerKind) -> u32 {
    match kind {
        ListenerKind::Tcp => 1,
        ListenerKind::Tls => 2,
        _ => 0,
    }
}

fn server(name: &str) -> Result<&'static str, CallError> {
    [MAIN_SERVER, ADMIN_SERVER].into_iter().find(|s| *s == name).ok_or_else(|| CallError::NoServer(name.into()))
}

fn uint(field: &str, v: u32) -> Param {
    Param { field: field.into(), value: ParamValue::UInt(v) }
}

fn text(field: &str, v: String) -> Param {
    Param { field: field.into(), value: ParamValue::Text(v) }
}

impl Admin<'_> {
    fn client(&self, srv: &str, id: u64) -> Result<(&Client, &'static str), CallError> {
        let srv = server(srv)?;
        self.clients.get(&id).filter(|c| server_of(c) == srv).map(|c| (c, srv)).ok_or(CallError::NoClient(id))
    }

    fn summary(id: u64, c: &Client) -> ClientSummary {
        ClientSummary { server: server_of(c).into(), id, since: c.since, transport: transport(c.peer.socket) }
    }

    /// (clients, of which not yet authenticated) on server `srv`.
    fn counts(&self, srv: &str) -> (u32, u32) {
        let on = self.clients.values().filter(|c| server_of(c) == srv);
        let (all, unauth) = on.fold((0, 0), |(a, u), c| (a + 1, u + u32::from(!c.authenticated)));
        (all, unauth)
    }

    /// Carries out `call`; a failure's texts are clipped
    /// ([`CallError::clipped`]), as they may quote the caller's arguments.
    pub fn handle(&mut self, call: &AdminCall) -> Result<(AdminValue, Effect), CallError> {
        self.carry_out(call).map_err(CallError::clipped)
    }

    fn carry_out(&mut self, call: &AdminCall) -> Result<(AdminValue, Effect), CallError> {
        let value = |v| Ok((v, Effect::None));
        match call {
            AdminCall::Threadpool { server: s } => {
                server(s)?;
                // One event loop per process serves every client; nothing
                // blocks it, so its one worker is always free.
                value(AdminValue::Params(vec![
                    uint("minWorkers", 1),
                    uint("maxWorkers", 1),
                    uint("nWorkers", 1),
                    uint("freeWorkers", 1),
                    uint("prioWorkers", 0),
                    uint("jobQueueDepth", self.waiting as u32),
                ]))
            }
            AdminCall::SetThreadpool { server: s, .. } => {
                server(s)?;
                Err(CallError::Unsupported(
                    "this daemon serves clients from one event loop per process; it has no worker pool to resize"
                        .into(),
                ))
            }
            AdminCall::ListClients { server: s, need_results } => {
                let srv = server(s)?;
                let mut list: Vec<ClientSummary> = self
                    .clients
                    .iter()
                    .filter(|(_, c)| server_of(c) == srv)
                    .map(|(id, c)| Self::summary(*id, c))
                    .collect();
                list.sort_by_key(|c| c.id);
                let count = list.len() as u32;
                if !need_results {
                    list.clear();
                }
                value(AdminValue::Clients { list, count })
            }
            AdminCall::LookupClient { server: s, id } => {
                let (c, _) = self.client(s, *id)?;
                value(AdminValue::Client(Self::summary(*id, c)))
            }
            AdminCall::ClientInfo { server: s, id } => {
                let (c, _) = self.client(s, *id)?;
                value(AdminValue::Params(client_info(c)))
            }
            AdminCall::CloseClient { server: s, id } => {
                self.client(s, *id)?;
                Ok((AdminValue::Unit, Effect::Disconnect(*id)))
            }
            AdminCall::ClientLimits { server: s } => {
                let srv = server(s)?;
                let (all, unauth) = self.counts(srv);
                let (max, unauth_max) = self.limits(srv);
                value(AdminValue::Params(vec![
                    uint("nclients_max", max),
                    uint("nclients", all),
                    uint("nclients_unauth_max", unauth_max),
                    uint("nclients_unauth", unauth),
                ]))
            }
            AdminCall::SetClientLimits { server: s, params } => {
                let srv = server(s)?;
                let (mut max, mut unauth_max) = self.limits(srv);
                for p in params {
                    let ParamValue::UInt(v) = p.value else {
                        return Err(CallError::InvalidArg(format!("parameter '{}' must be an unsigned int", p.field)));
                    };
                    match p.field.as_str() {
                        "nclients_max" if v >= 1 => max = v,
                        "nclients_max" => return Err(CallError::InvalidArg("nclients_max must be at least 1".into())),
                        "nclients_unauth_max" if srv == MAIN_SERVER => unauth_max = v,
                        f => return Err(CallError::InvalidArg(format!("parameter '{f}' not supported"))),
                    }
                }
                if unauth_max > max {
                    return Err(CallError::InvalidArg(format!(
                        "the maximum of clients waiting for authentication ({unauth_max}) must not exceed the \
                         maximum of clients ({max})"
                    )));
                }
                match srv {
                    ADMIN_SERVER => self.config.admin_max_clients = max,
                    _ => {
                        self.config.max_clients = max;
                        self.config.max_anonymous_clients = unauth_max;
                    }
                }
                Ok((AdminValue::Unit, Effect::Reconfigure))
            }
            AdminCall::LogOutputs => {
                let outputs = self.config.log.effective_outputs(false);
                let value = outputs.iter().map(format_output).collect::<Vec<_>>().join(" ");
                Ok((AdminValue::Logging { value, count: outputs.len() as u32 }, Effect::None))
            }
            AdminCall::LogFilters => {
                let filters = &self.config.log.filters;
                let value = filters.iter().map(format_filter).collect::<Vec<_>>().join(" ");
                Ok((AdminValue::Logging { value, count: filters.len() as u32 }, Effect::None))
            }
            AdminCall::SetLogOutputs(spec) => {
                let spec = spec.as_deref().unwrap_or("");
                self.config.log.outputs = parse_outputs(spec).map_err(CallError::InvalidArg)?;
                Ok((AdminValue::Unit, Effect::Relog))
            }
            AdminCall::SetLogFilters(spec) => {
                let spec = spec.as_deref().unwrap_or("");
                self.config.log.filters = parse_filters(spec).map_err(CallError::InvalidArg)?;
                Ok((AdminValue::Unit, Effect::Relog))
            }
            AdminCall::UpdateTls { server: s } => {
                let srv = server(s)?;
                if srv != MAIN_SERVER || !self.tls {
                    return Err(CallError::OperationInvalid(format!("server '{srv}' has no TLS service")));
                }
                Ok((AdminValue::Unit, Effect::ReloadTls))
            }
            AdminCall::SetTimeout(secs) => {
                *self.timeout = Some(*secs).filter(|s| *s > 0);
                value(AdminValue::Unit)
            }
        }
    }

    /// (nclients_max, nclients_unauth_max) of server `srv`.
    fn limits(&self, srv: &str) -> (u32, u32) {
        match srv {
            ADMIN_SERVER => (self.config.admin_max_clients, 0),
            _ => (self.config.max_clients, self.config.max_anonymous_clients),
        }
    }
}

/// `virt-admin client-info`'s parameters, in libvirt's order.
fn client_info(c: &Client) -> Vec<Param> {
    let p = &c.peer;
    let mut out = vec![Param { field: "readonly".into(), value: ParamValue::Bool(c.readonly) }];
    if let Some(addr) = &p.addr {
        // libvirt writes "address;port".
        let addr = match addr.rsplit_once(':') {
            Some((host, port)) => format!("{};{port}", host.trim_start_matches('[').trim_end_matches(']')),
            None => addr.clone(),
        };
        out.push(text("sock_addr", addr));
    }
    if let Some(dn) = &p.dn {
        out.push(text("tls_x509_dname", dn.clone()));
    }
    if let Some(uid) = p.uid {
        out.push(Param { field: "unix_user_id".into(), value: ParamValue::Int(uid as i32) });
        if let Ok(Some(u)) = nix::unistd::User::from_uid(uid.into()) {
            out.push(text("unix_user_name", u.name));
        }
    }
    if let Some(gid) = p.gid {
        out.push(Param { field: "unix_group_id".into(), value: ParamValue::Int(gid as i32) });
        if let Ok(Some(g)) = nix::unistd::Group::from_gid(gid.into()) {
            out.push(text("unix_group_name", g.name));
        }
    }
    if let Some(pid) = p.pid {
        out.push(Param { field: "unix_process_id".into(), value: ParamValue::Int(pid) });
    }
    out
}

fn format_output(o: &Output) -> String {
    match &o.kind {
        OutputKind::Stderr => format!("{}:stderr", o.priority),
        OutputKind::Syslog(ident) => format!("{}:syslog:{ident}", o.priority),
        OutputKind::File(path) => format!("{}:file:{path}", o.priority),
    }
}

fn format_filter(f: &Filter) -> String {
    format!("{}:{}", f.priority, f.pattern)
}
