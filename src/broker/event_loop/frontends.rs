//! The broker's side of its frontends: starting one per trust class,
//! their channels (with back-pressure), the permit check, client admission
//! from facts the broker reads itself, authentication and signing.
//!
//! Every request names the slot whose channel it came on; a client belongs
//! to the slot whose frontend reported it, and a frontend naming a client
//! of another slot has broken the protocol. A client's rights come from its
//! slot's class (which listener it came through, known because that
//! listener's fd went to that process only) and the credentials the broker
//! reads from the client's own fd.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::Interest;
use mio::unix::SourceFd;
use nix::sys::socket::{SockType, SockaddrStorage, getpeername, getsockname, getsockopt, sockopt};

use super::{Broker, Readiness, StartError, channel_token, sign_token};
use crate::broker::audit::Value;
use crate::broker::call_audit;
use crate::broker::calls::{self, Answer, Caller};
use crate::broker::link::{Client, FrontendLink};
use crate::broker::permit::{self, Phase};
use crate::broker::spawn;
use crate::config::Mode;
use crate::logging;
use crate::privsep::{
    BrokerError, BrokerReply, CallError, CallValue, ChannelError, ConnId, Envelope, FrontendConfig, FrontendRequest,
    ListenerKind, MAX_MESSAGE, PROTOCOL_VERSION, PeerIdentity,
};
use crate::sandbox;

/// Queued bytes to a frontend above which the broker stops reading its
/// requests: a frontend that does not take its answers gets no more work,
/// and the queue stays within this plus one largest reply.
const HIGH_WATER: usize = 4 * 1024 * 1024;
/// Most requests taken from one frontend before the event loop turns to
/// the rest: a busy read-only frontend cannot starve the others, signals or
/// deadlines.
const FAIR_SHARE: usize = 64;
/// Queued bytes above which unsolicited messages (events) to a frontend
/// that does not read are dropped rather than held.
pub(super) const EVENT_CEILING: usize = 2 * MAX_MESSAGE;

impl Broker {
    pub(super) fn start_frontend(&mut self, slot: usize, readiness: &mut Readiness) {
        match spawn::frontend(self.frontends[slot].class) {
            Ok(sp) => {
                let raw = sp.channel.raw_fd();
                let interest = Interest::READABLE | Interest::WRITABLE;
                if let Err(e) = self.poll.registry().register(&mut SourceFd(&raw), channel_token(slot), interest) {
                    log::error!("cannot watch the frontend channel: {e}");
                }
                log::debug!("started the {} frontend, pid {}", self.frontends[slot].class.name(), sp.pid);
                self.frontends[slot].link = Some(FrontendLink {
                    pid: sp.pid,
                    channel: sp.channel,
                    phase: Phase::AwaitHello,
                    started: Instant::now(),
                    sign: None,
                });
            }
            Err(e) => self.startup_or_retry(slot, readiness, format!("cannot start the frontend: {e}")),
        }
    }

    /// Before every class's first frontend was ready, a failure ends the
    /// daemon; afterwards, it is retried with backoff.
    pub(super) fn startup_or_retry(&mut self, slot: usize, readiness: &mut Readiness, why: String) {
        if self.ever_ready {
            let restart = &mut self.frontends[slot].restart;
            restart.schedule(Duration::ZERO, Instant::now());
            log::error!("{why}; retrying in {:?}", restart.delay());
        } else {
            super::super::report_start_failure(&self.setup.cli, readiness, &StartError::Frontend(why).to_string());
            self.exit = Some(std::process::ExitCode::FAILURE);
        }
    }

    /// The channel became readable or writable: send what waits, then read
    /// requests while the frontend takes its answers.
    pub(super) fn on_frontend(&mut self, slot: usize, readiness: &mut Readiness) {
        self.frontends[slot].more = false;
        for _ in 0..FAIR_SHARE {
            let Some(link) = &self.frontends[slot].link else { return };
            if let Err(e) = link.channel.flush() {
                let status = link.reap();
                return self.frontend_gone(slot, format!("went away ({e}); {status}"));
            }
            // Back-pressure: it gets no more work until it reads.
            if link.channel.queued() > HIGH_WATER {
                return;
            }
            match link.channel.recv::<Envelope<FrontendRequest>>(|e| e.body.fd_count()) {
                Ok((env, fds)) => self.handle(slot, env, fds, readiness),
                Err(ChannelError::WouldBlock) => return,
                Err(ChannelError::Closed) => {
                    let status = link.reap();
                    self.frontend_gone(slot, status);
                }
                Err(e) => self.violation(slot, &format!("malformed message: {e}")),
            }
            if !self.ever_ready && self.frontends[slot].link.is_none() {
                self.startup_or_retry(slot, readiness, "it exited before serving".into());
                return;
            }
        }
        // Its fair share is used: the others (and signals, deadlines) come
        // first, then the event loop calls again without waiting.
        self.frontends[slot].more = true;
    }

    /// The OpenSSH-monitor rule: anything outside the permit table ends that frontend.
    pub(super) fn violation(&mut self, slot: usize, what: &str) {
        let Some(link) = &self.frontends[slot].link else { return };
        let class = self.frontends[slot].class.name();
        log::error!("{class} frontend pid {} violated the broker protocol: {what}; restarting it", link.pid);
        let pid = link.pid.as_raw().into();
        self.setup.auditor.record(
            "frontend-violation",
            &[("pid", Value::Num(pid)), ("class", Value::Text(class)), ("reason", Value::Text(what))],
            false,
        );
        let status = link.reap();
        self.frontend_gone(slot, status);
    }

    /// Forgets a frontend (its clients are gone with it) and schedules the next.
    pub(super) fn frontend_gone(&mut self, slot: usize, status: String) {
        let Some(link) = self.frontends[slot].link.take() else { return };
        let gone: Vec<ConnId> = self.clients.iter().filter(|(_, c)| c.slot == slot).map(|(k, _)| *k).collect();
        // Its clients are gone, and with them every console they held;
        // the answers its clients wait for have nobody to go to.
        self.release_consoles(|owner| gone.contains(&owner));
        self.setup.ctx.guests.pending.orphan(|conn| gone.contains(&conn));
        let _ = self.poll.registry().deregister(&mut SourceFd(&link.channel.raw_fd()));
        if let Some(sign) = &link.sign {
            let _ = self.poll.registry().deregister(&mut SourceFd(&sign.raw_fd()));
        }
        for conn in gone {
            if let Some(client) = self.clients.remove(&conn) {
                self.setup.auditor.client("client-close", conn, &client.peer, Some("frontend-exit"), true);
            }
        }
        if self.exit.is_some() {
            return;
        }
        let class = self.frontends[slot].class.name();
        let restart = &mut self.frontends[slot].restart;
        restart.schedule(link.started.elapsed(), Instant::now());
        if self.ever_ready {
            log::error!("{class} frontend pid {} {status}; starting a new one in {:?}", link.pid, restart.delay());
        } else {
            log::error!("{class} frontend pid {} {status}", link.pid);
        }
    }

    fn handle(&mut self, slot: usize, env: Envelope<FrontendRequest>, fds: Vec<OwnedFd>, readiness: &mut Readiness) {
        let Some(link) = &self.frontends[slot].link else { return };
        // Only this frontend's own clients can be named.
        let named = permit::names(&env.body)
            .and_then(|conn| self.clients.get(&conn))
            .filter(|c| c.slot == slot)
            .map(|c| permit::Named { authenticated: c.authenticated });
        if let Err(why) = permit::permit(link.phase, self.frontends[slot].class, &env.body, named) {
            return self.violation(slot, &why);
        }
        let reply = match env.body {
            FrontendRequest::Hello { version } => return self.welcome(slot, env.id, version),
            FrontendRequest::Ready => return self.ready(slot, readiness),
            FrontendRequest::ClientOpened => self.client_opened(slot, fds),
            FrontendRequest::ClientClosed { conn } => match self.client_closed(slot, conn) {
                Some(r) => r,
                None => return,
            },
            FrontendRequest::ReadOnly { conn } => match self.client_mut(slot, conn) {
                // Only ever lowers a client's rights.
                Some(c) => {
                    c.readonly = true;
                    BrokerReply::Ok
                }
                None => return,
            },
            FrontendRequest::Denied { conn, procedure } => {
                let Some(client) = self.client_mut(slot, conn) else { return };
                let (peer, readonly) = (client.peer.clone(), client.readonly);
                let caller = Caller { conn, peer: &peer, readonly, request: env.id };
                call_audit::audit_denial(&mut self.setup.auditor, &caller, procedure);
                BrokerReply::Ok
            }
            FrontendRequest::Authenticated { conn, dn } => self.authenticated(slot, conn, dn),
            FrontendRequest::AuthFailed { conn, reason } => {
                let Some(peer) = self.client_mut(slot, conn).map(|c| c.peer.clone()) else { return };
                self.setup.auditor.client("client-auth", conn, &peer, Some(&reason), false);
                BrokerReply::Ok
            }
            FrontendRequest::ConsoleClosed { conn, uuid } => {
                if self.client_mut(slot, conn).is_none() {
                    return;
                }
                if self.setup.ctx.guests.consoles.get(&uuid) == Some(&conn) {
                    self.setup.ctx.guests.consoles.remove(&uuid);
                    self.drain_console(&uuid);
                }
                BrokerReply::Ok
            }
            FrontendRequest::Call { conn, call } => return self.call(slot, env.id, conn, call),
        };
        self.reply(slot, env.id, &reply, &[]);
        self.flush_events();
    }

    /// A client's call: admin calls only from the admin class, hypervisor
    /// calls from any other, each with the rights the broker recorded.
    fn call(&mut self, slot: usize, id: u32, conn: ConnId, call: crate::privsep::Call) {
        // `permit` has checked the client and that the call suits the class.
        if let crate::privsep::Call::Admin(call) = call {
            return self.admin(slot, id, conn, call);
        }
        let Some(client) = self.clients.get(&conn) else { return };
        let peer = client.peer.clone();
        let caller = Caller { conn, peer: &peer, readonly: client.readonly, request: id };
        let console_of = match &call {
            crate::privsep::Call::OpenConsole { uuid, .. } => Some(*uuid),
            _ => None,
        };
        let answer = calls::handle(&mut self.setup.ctx, &mut self.setup.auditor, &caller, call);
        self.sync_guests();
        for uuid in std::mem::take(&mut self.setup.ctx.guests.consoles_taken) {
            self.broadcast(&BrokerReply::ConsoleTaken(uuid));
        }
        // The console's fd goes to the frontend with the answer: its
        // bytes then flow between frontend and helper, not through us.
        if let (Answer::Now(value @ Ok(CallValue::Console)), Some(uuid)) = (&answer, console_of) {
            let value = value.clone();
            let fd = self.setup.ctx.guests.get(&uuid).and_then(|r| r.console.try_clone().ok());
            match fd {
                Some(fd) => {
                    let fd = OwnedFd::from(fd);
                    self.reply(slot, id, &BrokerReply::Value(value), &[fd.as_fd()]);
                }
                None => {
                    self.setup.ctx.guests.consoles.remove(&uuid);
                    let err = CallError::Internal("cannot share the console".into());
                    self.reply(slot, id, &BrokerReply::Value(Err(err)), &[]);
                }
            }
            return self.flush_events();
        }
        // A volume's file goes with the answer likewise (vol-upload, vol-download).
        if let Answer::Now(value @ Ok(v)) = &answer
            && v.carries_fd()
            && let Some(fd) = self.setup.ctx.storage.stream_fd.take()
        {
            self.reply(slot, id, &BrokerReply::Value(value.clone()), &[fd.as_fd()]);
            return self.flush_events();
        }
        // What waited on a guest this call stopped fails now; a call
        // that asked a helper is answered when the helper answers.
        self.fail_awaiting(|_| false);
        if let Answer::Now(value) = answer {
            self.reply(slot, id, &BrokerReply::Value(value), &[]);
        }
        self.flush_events();
    }

    /// Sends a frontend a message. A reply too large for the channel fails
    /// its call, not the frontend; only a dead channel ends the frontend.
    pub(super) fn reply(&mut self, slot: usize, id: u32, body: &BrokerReply, fds: &[BorrowedFd<'_>]) {
        if let BrokerReply::Value(_) = body {
            self.publish();
        }
        let Some(link) = &self.frontends[slot].link else { return };
        match link.channel.send(&Envelope { id, body }, fds) {
            Ok(()) => {}
            Err(ChannelError::Oversized) => {
                log::warn!("a reply to the {} frontend is larger than {MAX_MESSAGE} bytes", link.pid);
                if let BrokerReply::Value(_) = body {
                    let why = format!("the reply is larger than the {MAX_MESSAGE}-byte message limit");
                    let failed = BrokerReply::Value(Err(CallError::Internal(why)));
                    self.reply(slot, id, &failed, &[]);
                }
            }
            Err(e) => {
                let status = link.reap();
                self.frontend_gone(slot, format!("went away ({e}); {status}"));
            }
        }
    }

    /// Sends an unsolicited message to every serving frontend whose class
    /// serves hypervisor clients; one that has stopped reading misses it.
    pub(super) fn broadcast(&mut self, body: &BrokerReply) {
        for slot in 0..self.frontends.len() {
            let s = &self.frontends[slot];
            let Some(link) = s.serving() else { continue };
            if s.class == ListenerKind::Admin {
                continue;
            }
            if link.channel.queued() > EVENT_CEILING {
                log::warn!("the {} frontend is not reading; dropping a {:?}", s.class.name(), body);
                continue;
            }
            self.reply(slot, 0, body, &[]);
        }
    }

    /// Sends queued lifecycle events to the frontends, which route them to
    /// the clients that registered.
    pub(super) fn flush_events(&mut self) {
        self.publish();
        for event in std::mem::take(&mut self.setup.ctx.guests.events) {
            self.broadcast(&BrokerReply::Event(event));
        }
        for event in std::mem::take(&mut self.setup.ctx.storage.events) {
            self.broadcast(&BrokerReply::PoolEvent(event));
        }
        for event in std::mem::take(&mut self.setup.ctx.networks.events) {
            self.broadcast(&BrokerReply::NetEvent(event));
        }
    }

    fn welcome(&mut self, slot: usize, id: u32, version: u32) {
        if version != PROTOCOL_VERSION {
            return self.violation(slot, &format!("protocol version {version}, expected {PROTOCOL_VERSION}"));
        }
        let (config, log_fds) = self.frontend_config();
        let class = self.frontends[slot].class;
        // TLS handshakes are signed here, on a channel of their own, for the
        // TLS frontend only.
        let sign = match (class, self.setup.tls.is_some()) {
            (ListenerKind::Tls, true) => match crate::privsep::Channel::pair() {
                Ok(pair) => Some(pair),
                Err(e) => return self.violation(slot, &format!("cannot create the sign channel: {e}")),
            },
            _ => None,
        };
        let (ours, theirs) = sign.map_or((None, None), |(a, b)| (Some(a), Some(b)));
        if let Some(ours) = &ours
            && let Err(e) =
                self.poll.registry().register(&mut SourceFd(&ours.raw_fd()), sign_token(slot), Interest::READABLE)
        {
            log::error!("cannot watch the sign channel: {e}");
        }
        let mine = &self.frontends[slot].listeners;
        let sockets: Vec<_> = mine.iter().filter_map(|i| self.setup.listeners.sockets.get(*i)).collect();
        let kinds = sockets.iter().map(|(k, _)| *k).collect();
        let mut fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
        fds.extend(log_fds.iter().map(|f| f.as_fd()));
        fds.extend(theirs.as_ref().map(|t| t.fd()));
        let body = BrokerReply::Welcome {
            broker_pid: std::process::id() as i32,
            config,
            listeners: kinds,
            sign_channel: theirs.is_some(),
        };
        let Some(link) = &mut self.frontends[slot].link else { return };
        link.phase = Phase::AwaitReady;
        link.sign = ours;
        if let Err(e) = link.channel.send(&Envelope { id, body: &body }, &fds) {
            drop(fds);
            let status = self.frontends[slot].link.as_ref().map(|l| l.reap()).unwrap_or_default();
            self.frontend_gone(slot, format!("did not take its configuration ({e}); {status}"));
        }
    }

    fn ready(&mut self, slot: usize, readiness: &mut Readiness) {
        let uid = self.frontend_ids().map(|(u, _)| u);
        let Some(link) = &mut self.frontends[slot].link else { return };
        if let Err(e) = sandbox::check_process(link.pid.as_raw(), uid) {
            return self.violation(slot, &format!("reported ready but its sandbox does not hold: {e}"));
        }
        link.phase = Phase::Serving;
        let pid = link.pid;
        let class = self.frontends[slot].class.name();
        self.frontends[slot].ready_once = true;
        self.publish_to(slot);
        log::info!("{class} frontend pid {pid} is confined and serving");
        let fields = [("pid", Value::Num(pid.as_raw().into())), ("class", Value::Text(class))];
        self.setup.auditor.record("frontend-start", &fields, true);
        if !self.ever_ready && self.frontends.iter().all(|s| s.ready_once) {
            self.ever_ready = true;
            readiness.ok();
        }
    }

    /// Admits a client whose connection fd the frontend passed: who it is
    /// and which listener it came through are read from that fd here.
    fn client_opened(&mut self, slot: usize, fds: Vec<OwnedFd>) -> BrokerReply {
        let class = self.frontends[slot].class;
        let Some(fd) = fds.into_iter().next() else {
            return BrokerReply::Refused(BrokerError::Invalid("no connection fd".into()));
        };
        let (peer, inode) = match self.identify(slot, class, fd.as_fd()) {
            Ok(found) => found,
            Err(Admit::Gone(why)) => return BrokerReply::Refused(BrokerError::Invalid(why)),
            Err(Admit::Forged(why)) => {
                self.violation(slot, &why);
                return BrokerReply::Refused(BrokerError::Invalid(why));
            }
        };
        drop(fd);
        let conn = self.next_conn;
        self.next_conn += 1;
        let (max, key) = match class {
            ListenerKind::Admin => (self.setup.config.admin_max_clients as usize, "admin_max_clients"),
            _ => (self.setup.config.max_clients as usize, "max_clients"),
        };
        let same_server = self.clients.values().filter(|c| c.peer.socket.server() == class.server()).count();
        let anonymous = self.clients.values().filter(|c| !c.authenticated).count();
        let max_anonymous = self.setup.config.max_anonymous_clients as usize;
        let refusal = if same_server >= max {
            Some(BrokerError::Limit(format!("{key} ({max}) reached")))
        } else if class == ListenerKind::Tls && max_anonymous > 0 && anonymous >= max_anonymous {
            Some(BrokerError::Limit(format!("max_anonymous_clients ({max_anonymous}) reached")))
        } else {
            None
        };
        let reason = refusal.as_ref().map(ToString::to_string);
        self.setup.auditor.client("client-open", conn, &peer, reason.as_deref(), refusal.is_none());
        if let Some(e) = refusal {
            return BrokerReply::Refused(e);
        }
        log::debug!("client {conn} connected through {} ({:?})", class.name(), peer);
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        // A TLS client proves who it is with its certificate, later.
        let authenticated = class != ListenerKind::Tls;
        let readonly = class == ListenerKind::ReadOnly;
        self.clients.insert(conn, Client { peer, readonly, since, authenticated, slot, inode });
        BrokerReply::Admitted(conn)
    }

    /// The kernel's word on a connection: it must be a connected stream
    /// (not a listener, whose peer credentials would be the broker's own),
    /// not one already admitted, and its local address must be one of this
    /// class's listeners (a frontend cannot pass off a socket of its own
    /// making); its peer gives the credentials or address.
    fn identify(&self, slot: usize, class: ListenerKind, fd: BorrowedFd<'_>) -> Result<(PeerIdentity, u64), Admit> {
        let forged = |why: String| Admit::Forged(why);
        let stream = getsockopt(&fd, sockopt::SockType).map_err(|e| forged(format!("client fd: {e}")))?;
        let listening = getsockopt(&fd, sockopt::AcceptConn).map_err(|e| forged(format!("client fd: {e}")))?;
        if stream != SockType::Stream || listening {
            return Err(forged("a client fd that is not a connected stream".into()));
        }
        let inode = nix::sys::stat::fstat(fd).map_err(|e| forged(format!("client fd: {e}")))?.st_ino;
        if self.clients.values().any(|c| c.inode == inode) {
            return Err(forged("a client fd that is already a client".into()));
        }
        let local = getsockname::<SockaddrStorage>(fd.as_raw_fd()).map_err(|e| forged(format!("client fd: {e}")))?;
        let ours = self.frontends[slot].listeners.iter().filter_map(|i| self.setup.listeners.sockets.get(*i));
        let known = ours
            .filter_map(|(_, l)| getsockname::<SockaddrStorage>(l.as_raw_fd()).ok())
            .any(|addr| same_address(&addr, &local));
        if !known {
            return Err(forged(format!("a client fd that did not come through a {} listener", class.name())));
        }
        // A peer that has already hung up (a TCP reset before we looked) is
        // no fault of the frontend's: that client is just gone.
        let gone = |e: nix::errno::Errno| Admit::Gone(format!("the client went away ({e})"));
        let mut peer = PeerIdentity { socket: class, uid: None, gid: None, pid: None, addr: None, dn: None };
        match class {
            ListenerKind::Tcp | ListenerKind::Tls => {
                let addr = getpeername::<SockaddrStorage>(fd.as_raw_fd()).map_err(gone)?;
                peer.addr = Some(addr.to_string());
            }
            _ => {
                let cred = getsockopt(&fd, sockopt::PeerCredentials).map_err(gone)?;
                peer.uid = Some(cred.uid());
                peer.gid = Some(cred.gid());
                peer.pid = Some(cred.pid());
            }
        }
        Ok((peer, inode))
    }

    /// The client `conn` of this slot; a frontend naming a connection that
    /// is not open, or that another frontend serves, has broken the protocol.
    pub(super) fn client_mut(&mut self, slot: usize, conn: ConnId) -> Option<&mut Client> {
        if self.clients.get(&conn).is_some_and(|c| c.slot == slot) {
            return self.clients.get_mut(&conn);
        }
        self.violation(slot, &format!("connection {conn} is not open"));
        None
    }

    fn client_closed(&mut self, slot: usize, conn: ConnId) -> Option<BrokerReply> {
        self.client_mut(slot, conn)?;
        let Client { peer, .. } = self.clients.remove(&conn)?;
        self.setup.auditor.client("client-close", conn, &peer, None, true);
        log::debug!("client {conn} disconnected");
        self.release_consoles(|owner| owner == conn);
        Some(BrokerReply::Ok)
    }

    pub(super) fn frontend_ids(&self) -> Option<(u32, u32)> {
        (self.setup.mode == Mode::System).then_some((self.setup.config.frontend_uid, self.setup.config.frontend_gid))
    }

    /// A frontend's share of the configuration, with duplicated log fds.
    pub(super) fn frontend_config(&self) -> (FrontendConfig, Vec<OwnedFd>) {
        let c = &self.setup.config;
        let (log, log_sinks, fds) = logging::with_state(|s| s.handoff()).unwrap_or_default();
        let ids = self.frontend_ids();
        let config = FrontendConfig {
            uid: ids.map(|(u, _)| u),
            gid: ids.map(|(_, g)| g),
            max_clients: c.max_clients,
            admin_max_clients: c.admin_max_clients,
            max_anonymous_clients: c.max_anonymous_clients,
            max_client_requests: c.max_client_requests,
            keepalive_interval: c.keepalive_interval,
            keepalive_count: c.keepalive_count,
            uri: match self.setup.mode {
                Mode::System => "qemu:///system".into(),
                Mode::Session => "qemu:///session".into(),
            },
            log,
            log_sinks,
            tls: self.setup.tls.as_ref().map(|t| t.material.clone()),
        };
        (config, fds)
    }

    /// A TLS client's handshake and certificate check succeeded in the
    /// frontend: check its DN against the allow-list and admit it, or not.
    fn authenticated(&mut self, slot: usize, conn: ConnId, dn: Option<String>) -> BrokerReply {
        let allowed_dns = self.setup.config.tls_allowed_dn_list.clone();
        let verify = !self.setup.config.tls_no_verify_certificate;
        // `permit` has checked that this TLS client is still to authenticate.
        let Some(client) = self.client_mut(slot, conn) else { return BrokerReply::Ok };
        let refusal = match &dn {
            None if verify => Some("no client certificate".to_owned()),
            Some(dn) if verify && !crate::tls::dn::allowed(&allowed_dns, dn) => {
                Some("certificate DN not in tls_allowed_dn_list".to_owned())
            }
            _ => None,
        };
        client.peer.dn = dn;
        client.authenticated = refusal.is_none();
        let peer = client.peer.clone();
        self.setup.auditor.client("client-auth", conn, &peer, refusal.as_deref(), refusal.is_none());
        match refusal {
            Some(r) => BrokerReply::Refused(BrokerError::Forbidden(r)),
            None => BrokerReply::Ok,
        }
    }

    /// Signs what the TLS frontend's handshakes ask for.
    pub(super) fn on_sign(&mut self, slot: usize) {
        loop {
            let Some(link) = &self.frontends[slot].link else { return };
            let Some(sign) = &link.sign else { return };
            let request = match sign.recv::<crate::privsep::SignRequest>(|_| 0) {
                Ok((r, _)) => r,
                Err(ChannelError::WouldBlock) => return,
                Err(e) => {
                    log::warn!("sign channel: {e}");
                    let raw = sign.raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
                    if let Some(l) = &mut self.frontends[slot].link {
                        l.sign = None;
                    }
                    return;
                }
            };
            let signature = match (link.phase, &self.setup.tls) {
                (Phase::Serving, Some(tls)) => tls.sign(request.scheme, &request.message),
                _ => Err("no TLS service".into()),
            };
            if let Err(e) = &signature {
                log::warn!("refused to sign for the frontend: {e}");
            }
            let reply = crate::privsep::SignReply { id: request.id, signature };
            if let Err(e) = sign.send(&reply, &[]) {
                log::warn!("sign channel: {e}");
            }
        }
    }

    /// Sends every serving frontend its share of the current configuration.
    pub(super) fn push_config(&mut self) {
        for slot in 0..self.frontends.len() {
            if self.frontends[slot].serving().is_none() {
                continue;
            }
            let (config, fds) = self.frontend_config();
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            self.reply(slot, 0, &BrokerReply::Reconfigure(config), &borrowed);
        }
    }

    /// Carries out an admin-socket client's call, audits it, and answers.
    fn admin(&mut self, slot: usize, id: u32, conn: ConnId, call: crate::privsep::admin::AdminCall) {
        let Some(client) = self.clients.get(&conn) else { return };
        let peer = client.peer.clone();
        let mut admin = crate::broker::admin::Admin {
            clients: &self.clients,
            config: &mut self.setup.config,
            timeout: &mut self.setup.cli.timeout,
            waiting: self.setup.ctx.guests.pending.len(),
            tls: self.setup.listeners.sockets.iter().any(|(k, _)| *k == ListenerKind::Tls),
        };
        let mut result = admin.handle(&call);
        // A TLS reload that fails is the caller's error, not only a log line.
        if let Ok((_, crate::broker::admin::Effect::ReloadTls)) = &result
            && let Err(e) = self.reload_tls()
        {
            result = Err(CallError::OperationFailed(format!("cannot reload TLS files: {e}")));
        }
        let caller = Caller { conn, peer: &peer, readonly: false, request: id };
        call_audit::audit_admin(
            &mut self.setup.auditor,
            &caller,
            &call,
            result.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        let (value, effect) = match result {
            Ok((v, effect)) => (Ok(CallValue::Admin(v)), effect),
            Err(e) => (Err(e), crate::broker::admin::Effect::None),
        };
        self.reply(slot, id, &BrokerReply::Value(value), &[]);
        match effect {
            crate::broker::admin::Effect::None => {}
            crate::broker::admin::Effect::Disconnect(victim) => {
                if let Some(victim_slot) = self.clients.get(&victim).map(|c| c.slot) {
                    self.reply(victim_slot, 0, &BrokerReply::Disconnect(victim), &[]);
                }
            }
            crate::broker::admin::Effect::Reconfigure => self.push_config(),
            crate::broker::admin::Effect::Relog => {
                self.reopen_logs();
                self.push_config();
            }
            crate::broker::admin::Effect::ReloadTls => self.push_config(),
        }
    }

    /// Answers a client whose call waited on a helper, through the frontend
    /// that serves it now (none if it has gone).
    pub(super) fn answer_client(&mut self, conn: ConnId, id: u32, value: Result<CallValue, CallError>) {
        if let Some(slot) = self.clients.get(&conn).map(|c| c.slot) {
            self.reply(slot, id, &BrokerReply::Value(value), &[]);
        }
    }
}

/// Why a connection a frontend reported is not admitted.
enum Admit {
    /// Not a connection of this frontend's listener: the frontend broke the rules.
    Forged(String),
    /// The client hung up before the broker looked: refused, nobody's fault.
    Gone(String),
}

/// A connection's local address `conn` belongs to listener `listener`: the
/// same path for Unix sockets; for TCP the same port, and the same address
/// unless the listener took every address.
fn same_address(listener: &SockaddrStorage, conn: &SockaddrStorage) -> bool {
    if let (Some(x), Some(y)) = (listener.as_unix_addr(), conn.as_unix_addr()) {
        return x.path().is_some() && x.path() == y.path();
    }
    let inet = |a: &SockaddrStorage| -> Option<std::net::SocketAddr> {
        match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
            (Some(v4), _) => Some(std::net::SocketAddr::V4((*v4).into())),
            (_, Some(v6)) => Some(std::net::SocketAddr::V6((*v6).into())),
            _ => None,
        }
    };
    match (inet(listener), inet(conn)) {
        (Some(l), Some(c)) => l.port() == c.port() && (l.ip().is_unspecified() || l.ip() == c.ip().to_canonical()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(s: &str) -> SockaddrStorage {
        let a: std::net::SocketAddr = s.parse().unwrap();
        SockaddrStorage::from(a)
    }

    #[test]
    fn connections_match_the_listener_they_came_through() {
        assert!(same_address(&inet("0.0.0.0:16514"), &inet("127.0.0.1:16514")));
        assert!(same_address(&inet("[::]:16514"), &inet("[::ffff:127.0.0.1]:16514")));
        assert!(same_address(&inet("127.0.0.1:16514"), &inet("127.0.0.1:16514")));
        assert!(!same_address(&inet("0.0.0.0:16514"), &inet("127.0.0.1:16509")));
        assert!(!same_address(&inet("127.0.0.2:16514"), &inet("127.0.0.1:16514")));
    }

    #[test]
    fn an_accepted_unix_connection_names_its_listener_and_a_socketpair_none() {
        let dir = tempfile::tempdir().unwrap();
        let rw = std::os::unix::net::UnixListener::bind(dir.path().join("libvirt-sock")).unwrap();
        let ro = std::os::unix::net::UnixListener::bind(dir.path().join("libvirt-sock-ro")).unwrap();
        let _client = std::os::unix::net::UnixStream::connect(dir.path().join("libvirt-sock")).unwrap();
        let (accepted, _) = rw.accept().unwrap();
        let name = |fd: std::os::fd::RawFd| getsockname::<SockaddrStorage>(fd).unwrap();
        let conn = name(accepted.as_raw_fd());
        assert!(same_address(&name(rw.as_raw_fd()), &conn));
        assert!(!same_address(&name(ro.as_raw_fd()), &conn));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!same_address(&name(rw.as_raw_fd()), &name(a.as_raw_fd())));
        assert!(!same_address(&name(rw.as_raw_fd()), &inet("127.0.0.1:1")));
    }
}
