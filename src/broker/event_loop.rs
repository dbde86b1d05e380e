//! The broker's event loop: signals, the frontend channel, restarts, the idle timeout.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::audit::{Auditor, Value};
use super::calls::{self, Caller, Ctx, Wait};
use super::link::{Client, FrontendLink, Restart, describe};
use super::listen::Listeners;
use super::permit::{Phase, permitted};
use super::pidfile::PidFile;
use super::readiness::Readiness;
use super::{StartError, apply_verbosity, spawn};
use crate::cli::Cli;
use crate::config::{Config, DefaultPaths, Mode};
use crate::domain::LifecycleAction;
use crate::logging::{self, LogState};
use crate::privsep::helper::{HelperEvent, StopReason};
use crate::privsep::{
    BrokerError, BrokerReply, CallValue, ChannelError, Envelope, FrontendConfig, FrontendRequest, ListenerKind,
    PROTOCOL_VERSION,
};
use crate::sandbox;
use std::collections::HashMap;
use std::io::Read;

const SIGNALS: Token = Token(0);
const FRONTEND: Token = Token(1);
const SIGN: Token = Token(2);
/// Guest channels and consoles get tokens from here up.
const FIRST_GUEST: usize = 1000;

/// Which of a guest's fds a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuestFd {
    Channel,
    Console,
}
/// How long a stopping frontend gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Everything `start` prepared.
pub struct Setup {
    pub cli: Cli,
    pub mode: Mode,
    pub paths: DefaultPaths,
    pub config_path: PathBuf,
    pub config: Config,
    pub listeners: Listeners,
    pub auditor: Auditor,
    pub _pidfile: PidFile,
    pub ctx: Ctx,
    /// The TLS files, when a TLS socket listens; the key never leaves here.
    pub tls: Option<crate::tls::files::TlsFiles>,
}

/// The running broker.
pub struct Broker {
    setup: Setup,
    poll: Poll,
    signals: SignalFd,
    link: Option<FrontendLink>,
    restart: Restart,
    ever_ready: bool,
    idle_since: Option<Instant>,
    exit: Option<ExitCode>,
    /// Registered guest fds: token to (domain, helper pid, which fd).
    guest_tokens: HashMap<Token, ([u8; 16], Pid, GuestFd)>,
    next_guest_token: usize,
}

impl Broker {
    /// Blocks the signals we take through signalfd and sets up the poller.
    pub fn new(setup: Setup) -> Result<Broker, StartError> {
        let err = |what: &str, e: &dyn std::fmt::Display| StartError::Setup(format!("{what}: {e}"));
        let mut mask = SigSet::empty();
        for s in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
            mask.add(s);
        }
        mask.thread_block().map_err(|e| err("blocking signals", &e))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| err("signalfd", &e))?;
        let poll = Poll::new().map_err(|e| err("epoll", &e))?;
        poll.registry()
            .register(&mut SourceFd(&signals.as_fd().as_raw_fd()), SIGNALS, Interest::READABLE)
            .map_err(|e| err("epoll", &e))?;
        let mut restart = Restart::default();
        restart.due = Some(Instant::now());
        Ok(Broker {
            setup,
            poll,
            signals,
            link: None,
            restart,
            ever_ready: false,
            idle_since: None,
            exit: None,
            guest_tokens: HashMap::new(),
            next_guest_token: FIRST_GUEST,
        })
    }

    /// Runs until SIGTERM/SIGINT, the idle timeout, or a fatal start-up failure.
    pub fn run(&mut self, readiness: &mut Readiness) -> ExitCode {
        self.sync_guests();
        let mut events = Events::with_capacity(64);
        while self.exit.is_none() {
            let timeout = self.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("event loop: {e}");
                    self.exit = Some(ExitCode::FAILURE);
                }
                continue;
            }
            for ev in &events {
                match ev.token() {
                    SIGNALS => self.on_signals(),
                    FRONTEND => self.on_frontend(readiness),
                    SIGN => self.on_sign(),
                    token => self.on_guest(token),
                }
            }
            let now = Instant::now();
            if self.restart.due.is_some_and(|d| d <= now) {
                self.restart.due = None;
                self.start_frontend(readiness);
            }
            self.check_idle(now);
            self.fail_awaiting(|_, a| a.deadline <= now);
        }
        self.shutdown();
        self.exit.take().unwrap_or(ExitCode::SUCCESS)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let idle = match (self.idle_since, self.setup.cli.timeout) {
            (Some(since), Some(secs)) => Some(since + Duration::from_secs(secs.into())),
            _ => None,
        };
        let awaiting = self.setup.ctx.awaiting.values().map(|a| a.deadline).min();
        [idle, self.restart.due, awaiting].into_iter().flatten().min()
    }

    /// `--timeout`: exit after that long with no clients and no running guests.
    fn check_idle(&mut self, now: Instant) {
        let Some(secs) = self.setup.cli.timeout else {
            return;
        };
        let busy = self.link.as_ref().is_some_and(|l| !l.clients.is_empty()) || !self.setup.ctx.guests.is_empty();
        if busy || !self.ever_ready {
            self.idle_since = None;
            return;
        }
        let since = *self.idle_since.get_or_insert(now);
        if now.duration_since(since) >= Duration::from_secs(secs.into()) {
            log::info!("no clients and no running domains for {secs} s, exiting (--timeout)");
            self.exit = Some(ExitCode::SUCCESS);
        }
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGHUP) => self.reload(),
                Ok(sig @ (Signal::SIGTERM | Signal::SIGINT)) => {
                    log::info!("received {sig}, shutting down");
                    self.exit = Some(ExitCode::SUCCESS);
                }
                Ok(Signal::SIGCHLD) => self.reap_children(),
                _ => {}
            }
        }
    }

    fn reap_children(&mut self) {
        loop {
            let status = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG));
            let pid = match status {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(ref s) => s.pid(),
            };
            if pid.is_some() && pid == self.link.as_ref().map(|l| l.pid) {
                self.frontend_gone(describe(status));
            }
        }
    }

    fn start_frontend(&mut self, readiness: &mut Readiness) {
        match spawn::frontend() {
            Ok(sp) => {
                let raw = sp.channel.raw_fd();
                if let Err(e) = self.poll.registry().register(&mut SourceFd(&raw), FRONTEND, Interest::READABLE) {
                    log::error!("cannot watch the frontend channel: {e}");
                }
                log::debug!("started frontend pid {}", sp.pid);
                self.link = Some(FrontendLink {
                    pid: sp.pid,
                    channel: sp.channel,
                    phase: Phase::AwaitHello,
                    clients: Default::default(),
                    started: Instant::now(),
                    sign: None,
                });
            }
            Err(e) => self.startup_or_retry(readiness, format!("cannot start the frontend: {e}")),
        }
    }

    /// Before the first frontend was ever ready, a failure ends the daemon;
    /// afterwards, it is retried with backoff.
    fn startup_or_retry(&mut self, readiness: &mut Readiness, why: String) {
        if self.ever_ready {
            log::error!("{why}; retrying in {:?}", self.restart.delay());
            self.restart.schedule(Duration::ZERO, Instant::now());
        } else {
            super::report_start_failure(&self.setup.cli, readiness, &StartError::Frontend(why).to_string());
            self.exit = Some(ExitCode::FAILURE);
        }
    }

    fn on_frontend(&mut self, readiness: &mut Readiness) {
        loop {
            let Some(link) = &self.link else { return };
            match link.channel.recv::<Envelope<FrontendRequest>>(|e| e.body.fd_count()) {
                Ok((env, _)) => self.handle(env, readiness),
                Err(ChannelError::WouldBlock) => return,
                Err(ChannelError::Closed) => {
                    let status = link.reap();
                    self.frontend_gone(status);
                }
                Err(e) => self.violation(&format!("malformed message: {e}")),
            }
            if !self.ever_ready && self.link.is_none() {
                self.startup_or_retry(readiness, "it exited before serving".into());
                return;
            }
        }
    }

    /// The OpenSSH-monitor rule: anything outside the permit table ends that frontend.
    fn violation(&mut self, what: &str) {
        let Some(link) = &self.link else { return };
        log::error!("frontend pid {} violated the broker protocol: {what}; restarting it", link.pid);
        let pid = link.pid.as_raw().into();
        self.setup.auditor.record(
            "frontend-violation",
            &[("pid", Value::Num(pid)), ("reason", Value::Text(what))],
            false,
        );
        let status = link.reap();
        self.frontend_gone(status);
    }

    /// Forgets the frontend (its clients are gone with it) and schedules the next.
    fn frontend_gone(&mut self, status: String) {
        let Some(link) = self.link.take() else { return };
        // Its clients are gone, and with them every console they held;
        // the answers its clients wait for have nobody to go to.
        self.release_consoles(|_| true);
        self.setup.ctx.orphan_requests();
        let _ = self.poll.registry().deregister(&mut SourceFd(&link.channel.raw_fd()));
        if let Some(sign) = &link.sign {
            let _ = self.poll.registry().deregister(&mut SourceFd(&sign.raw_fd()));
        }
        for (conn, client) in &link.clients {
            self.setup.auditor.client("client-close", *conn, &client.peer, Some("frontend-exit"), true);
        }
        if self.exit.is_some() {
            return;
        }
        self.restart.schedule(link.started.elapsed(), Instant::now());
        if self.ever_ready {
            log::error!("frontend pid {} {status}; starting a new one in {:?}", link.pid, self.restart.delay());
        } else {
            log::error!("frontend pid {} {status}", link.pid);
        }
    }

    fn handle(&mut self, env: Envelope<FrontendRequest>, readiness: &mut Readiness) {
        let Some(link) = &self.link else { return };
        if !permitted(link.phase, &env.body) {
            self.violation(&format!("'{}' is not permitted while {:?}", env.body.name(), link.phase));
            return;
        }
        let reply = match env.body {
            FrontendRequest::Hello { version } => return self.welcome(env.id, version),
            FrontendRequest::Ready => return self.ready(readiness),
            FrontendRequest::ClientOpened { conn, peer } => self.client_opened(conn, peer),
            FrontendRequest::ClientClosed { conn } => match self.client_closed(conn) {
                Some(r) => r,
                None => return,
            },
            FrontendRequest::ReadOnly { conn } => match self.client_mut(conn) {
                Some(c) => {
                    c.readonly = true;
                    BrokerReply::Ok
                }
                None => return,
            },
            FrontendRequest::Denied { conn, procedure } => {
                let Some(link) = &self.link else { return };
                let Some(client) = link.clients.get(&conn) else {
                    return self.violation(&format!("denial on connection {conn}, which is not open"));
                };
                let caller = Caller { conn, peer: &client.peer, readonly: client.readonly, request: env.id };
                calls::audit_denial(&mut self.setup.auditor, &caller, procedure);
                BrokerReply::Ok
            }
            FrontendRequest::Authenticated { conn, dn } => self.authenticated(conn, dn),
            FrontendRequest::AuthFailed { conn, reason } => {
                let Some(peer) = self.client_mut(conn).map(|c| c.peer.clone()) else { return };
                self.setup.auditor.client("client-auth", conn, &peer, Some(&reason), false);
                BrokerReply::Ok
            }
            FrontendRequest::ConsoleClosed { conn, uuid } => {
                if self.setup.ctx.consoles.get(&uuid) == Some(&conn) {
                    self.setup.ctx.consoles.remove(&uuid);
                    self.drain_console(&uuid);
                }
                BrokerReply::Ok
            }
            FrontendRequest::Call { conn, call } => {
                let Some(link) = &self.link else { return };
                let Some(client) = link.clients.get(&conn) else {
                    return self.violation(&format!("call on connection {conn}, which is not open"));
                };
                if !client.authenticated {
                    return self.violation(&format!("call on connection {conn}, which has not authenticated"));
                }
                let admin_client = client.peer.socket == ListenerKind::Admin;
                if let crate::privsep::Call::Admin(call) = call {
                    if !admin_client {
                        return self.violation(&format!("admin call from connection {conn}, not an admin client"));
                    }
                    return self.admin(env.id, conn, call);
                }
                if admin_client {
                    return self.violation(&format!("hypervisor call from admin connection {conn}"));
                }
                let caller = Caller { conn, peer: &client.peer, readonly: client.readonly, request: env.id };
                let console_of = match &call {
                    crate::privsep::Call::OpenConsole { uuid, .. } => Some(*uuid),
                    _ => None,
                };
                let value = calls::handle(&mut self.setup.ctx, &mut self.setup.auditor, &caller, call);
                self.sync_guests();
                for uuid in std::mem::take(&mut self.setup.ctx.consoles_taken) {
                    self.reply(0, &BrokerReply::ConsoleTaken(uuid), &[]);
                }
                // The console's fd goes to the frontend with the answer: its
                // bytes then flow between frontend and helper, not through us.
                if let (Ok(CallValue::Console), Some(uuid)) = (&value, console_of) {
                    let fd = self.setup.ctx.guests.get(&uuid).and_then(|r| r.console.try_clone().ok());
                    match fd {
                        Some(fd) => {
                            let fd = std::os::fd::OwnedFd::from(fd);
                            self.reply(env.id, &BrokerReply::Value(value), &[fd.as_fd()]);
                        }
                        None => {
                            self.setup.ctx.consoles.remove(&uuid);
                            let err = crate::privsep::CallError::Internal("cannot share the console".into());
                            self.reply(env.id, &BrokerReply::Value(Err(err)), &[]);
                        }
                    }
                    self.flush_events();
                    return;
                }
                // What waited on a guest this call stopped fails now; a call
                // that asked a helper is answered when the helper answers.
                self.fail_awaiting(|_, _| false);
                if self.setup.ctx.awaits_request(env.id) {
                    self.flush_events();
                    return;
                }
                BrokerReply::Value(value)
            }
        };
        self.reply(env.id, &reply, &[]);
        self.flush_events();
    }

    fn reply(&mut self, id: u32, body: &BrokerReply, fds: &[BorrowedFd<'_>]) {
        let Some(link) = &self.link else { return };
        if let Err(e) = link.channel.send(&Envelope { id, body }, fds) {
            let status = link.reap();
            self.frontend_gone(format!("went away ({e}); {status}"));
        }
    }

    fn welcome(&mut self, id: u32, version: u32) {
        if version != PROTOCOL_VERSION {
            return self.violation(&format!("protocol version {version}, expected {PROTOCOL_VERSION}"));
        }
        let (config, log_fds) = self.frontend_config();
        // TLS handshakes are signed here, on a channel of their own.
        let sign = match self.setup.tls.is_some() {
            true => match crate::privsep::Channel::pair() {
                Ok(pair) => Some(pair),
                Err(e) => return self.violation(&format!("cannot create the sign channel: {e}")),
            },
            false => None,
        };
        let (ours, theirs) = sign.map_or((None, None), |(a, b)| (Some(a), Some(b)));
        if let Some(ours) = &ours
            && let Err(e) = self.poll.registry().register(&mut SourceFd(&ours.raw_fd()), SIGN, Interest::READABLE)
        {
            log::error!("cannot watch the sign channel: {e}");
        }
        let kinds = self.setup.listeners.sockets.iter().map(|(k, _)| *k).collect();
        let mut fds: Vec<BorrowedFd<'_>> = self.setup.listeners.sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
        fds.extend(log_fds.iter().map(|f| f.as_fd()));
        fds.extend(theirs.as_ref().map(|t| t.fd()));
        let body = BrokerReply::Welcome {
            broker_pid: std::process::id() as i32,
            config,
            listeners: kinds,
            sign_channel: theirs.is_some(),
        };
        let Some(link) = &mut self.link else { return };
        link.phase = Phase::AwaitReady;
        link.sign = ours;
        if let Err(e) = link.channel.send(&Envelope { id, body: &body }, &fds) {
            drop(fds);
            let status = self.link.as_ref().map(|l| l.reap()).unwrap_or_default();
            self.frontend_gone(format!("did not take its configuration ({e}); {status}"));
        }
    }

    fn ready(&mut self, readiness: &mut Readiness) {
        let uid = self.frontend_ids().map(|(u, _)| u);
        let Some(link) = &mut self.link else { return };
        if let Err(e) = sandbox::check_process(link.pid.as_raw(), uid) {
            return self.violation(&format!("reported ready but its sandbox does not hold: {e}"));
        }
        link.phase = Phase::Serving;
        let pid = link.pid;
        log::info!("frontend pid {pid} is confined and serving");
        self.setup.auditor.record("frontend-start", &[("pid", Value::Num(pid.as_raw().into()))], true);
        if !self.ever_ready {
            self.ever_ready = true;
            readiness.ok();
        }
    }

    fn client_opened(&mut self, conn: u64, peer: crate::privsep::PeerIdentity) -> BrokerReply {
        let Some(link) = &mut self.link else {
            return BrokerReply::Ok;
        };
        let (max, key) = match peer.socket {
            ListenerKind::Admin => (self.setup.config.admin_max_clients as usize, "admin_max_clients"),
            _ => (self.setup.config.max_clients as usize, "max_clients"),
        };
        let same_server = link.clients.values().filter(|c| c.peer.socket.server() == peer.socket.server()).count();
        let known_socket = self.setup.listeners.sockets.iter().any(|(k, _)| *k == peer.socket);
        let refusal = if link.clients.contains_key(&conn) {
            Some(BrokerError::Invalid(format!("connection {conn} is already open")))
        } else if !known_socket {
            Some(BrokerError::Invalid(format!("no {} socket is listening", peer.socket.name())))
        } else if same_server >= max {
            Some(BrokerError::Limit(format!("{key} ({max}) reached")))
        } else if peer.socket == ListenerKind::Tls
            && self.setup.config.max_anonymous_clients > 0
            && link.clients.values().filter(|c| !c.authenticated).count()
                >= self.setup.config.max_anonymous_clients as usize
        {
            let max = self.setup.config.max_anonymous_clients;
            Some(BrokerError::Limit(format!("max_anonymous_clients ({max}) reached")))
        } else {
            None
        };
        let reason = refusal.as_ref().map(ToString::to_string);
        self.setup.auditor.client("client-open", conn, &peer, reason.as_deref(), refusal.is_none());
        match refusal {
            Some(e) => BrokerReply::Refused(e),
            None => {
                log::debug!("client {conn} connected through {} ({:?})", peer.socket.name(), peer);
                let readonly = peer.socket == ListenerKind::ReadOnly;
                let since = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                // A TLS client proves who it is with its certificate, later.
                let authenticated = peer.socket != ListenerKind::Tls;
                link.clients.insert(conn, Client { peer, readonly, since, authenticated });
                BrokerReply::Ok
            }
        }
    }

    /// The client `conn`; a frontend naming a connection that is not open has
    /// broken the protocol.
    fn client_mut(&mut self, conn: u64) -> Option<&mut Client> {
        if self.link.as_ref().is_some_and(|l| l.clients.contains_key(&conn)) {
            return self.link.as_mut()?.clients.get_mut(&conn);
        }
        self.violation(&format!("connection {conn} is not open"));
        None
    }

    fn client_closed(&mut self, conn: u64) -> Option<BrokerReply> {
        let client = self.link.as_mut()?.clients.remove(&conn);
        let Some(Client { peer, .. }) = client else {
            self.violation(&format!("closed connection {conn}, which is not open"));
            return None;
        };
        self.setup.auditor.client("client-close", conn, &peer, None, true);
        log::debug!("client {conn} disconnected");
        self.release_consoles(|owner| owner == conn);
        Some(BrokerReply::Ok)
    }

    fn frontend_ids(&self) -> Option<(u32, u32)> {
        (self.setup.mode == Mode::System).then_some((self.setup.config.frontend_uid, self.setup.config.frontend_gid))
    }

    /// The frontend's share of the configuration, with duplicated log fds.
    fn frontend_config(&self) -> (FrontendConfig, Vec<std::os::fd::OwnedFd>) {
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

    /// Watches the channel and console of every running guest, and forgets
    /// the fds of guests that are gone.
    fn sync_guests(&mut self) {
        let guests = &self.setup.ctx.guests;
        self.guest_tokens.retain(|_, (uuid, pid, _)| guests.get(uuid).is_some_and(|r| r.pid == *pid));
        for (uuid, r) in guests {
            if self.guest_tokens.values().any(|(_, pid, _)| *pid == r.pid) {
                continue;
            }
            for (kind, raw) in [(GuestFd::Channel, r.channel.raw_fd()), (GuestFd::Console, r.console.as_raw_fd())] {
                let token = Token(self.next_guest_token);
                self.next_guest_token += 1;
                if let Err(e) = self.poll.registry().register(&mut SourceFd(&raw), token, Interest::READABLE) {
                    log::error!("cannot watch guest {}: {e}", r.id);
                }
                self.guest_tokens.insert(token, (*uuid, r.pid, kind));
            }
        }
    }

    fn on_guest(&mut self, token: Token) {
        let Some(&(uuid, pid, kind)) = self.guest_tokens.get(&token) else { return };
        let Some(running) = self.setup.ctx.guests.get(&uuid).filter(|r| r.pid == pid) else { return };
        match kind {
            // A client holds the console: its bytes are the client's.
            GuestFd::Console if self.setup.ctx.consoles.contains_key(&uuid) => {}
            GuestFd::Console => {
                // Nobody is attached: keep the guest's output flowing, into
                // the serial log file if the domain has one.
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = (&running.console).read(&mut buf) {
                    if let Some(mut log) = running.log.as_ref() {
                        let _ = std::io::Write::write_all(&mut log, &buf[..n]);
                    }
                }
            }
            GuestFd::Channel => loop {
                let Some(running) = self.setup.ctx.guests.get(&uuid).filter(|r| r.pid == pid) else { return };
                match running.channel.recv::<HelperEvent>(HelperEvent::fd_count) {
                    Ok((HelperEvent::Stopped { reason, detail }, _)) => {
                        return self.guest_stopped(uuid, reason, &detail);
                    }
                    Ok((event @ (HelperEvent::Started | HelperEvent::Paused | HelperEvent::Resumed), _)) => {
                        self.helper_answered(uuid, &event)
                    }
                    Ok(_) => {}
                    Err(ChannelError::WouldBlock) => return,
                    Err(e) => return self.guest_stopped(uuid, StopReason::Failed, &format!("helper channel: {e}")),
                }
            },
        }
    }

    /// A helper reported `Started`, `Paused` or `Resumed`: apply it, and
    /// settle what waited for it. A late answer (its asker already got an
    /// error) still updates the state.
    fn helper_answered(&mut self, uuid: [u8; 16], event: &HelperEvent) {
        let ctx = &mut self.setup.ctx;
        let waiting = ctx.awaiting.get(&uuid).map(|a| a.wait);
        let settles = match event {
            // Only a start that waits for it takes a Started.
            HelperEvent::Started if !matches!(waiting, Some(Wait::Started { .. })) => false,
            HelperEvent::Started => match ctx.started(&uuid) {
                Ok(pausing) => !pausing,
                Err(e) => {
                    self.settle(uuid, Err(e));
                    return self.flush_events();
                }
            },
            HelperEvent::Paused => {
                ctx.paused(&uuid, false);
                matches!(waiting, Some(Wait::Paused | Wait::StartPaused))
            }
            HelperEvent::Resumed => {
                ctx.paused(&uuid, true);
                waiting == Some(Wait::Resumed)
            }
            _ => false,
        };
        if settles {
            self.settle(uuid, Ok(()));
        }
        self.flush_events();
    }

    /// Ends the request guest `uuid`'s helper was asked: audits it, answers
    /// the client that asked, and stops a guest whose start failed.
    fn settle(&mut self, uuid: [u8; 16], result: Result<(), crate::privsep::CallError>) {
        let Some(a) = self.setup.ctx.awaiting.remove(&uuid) else { return };
        calls::audit_awaited(&mut self.setup.auditor, &uuid, &a, &result);
        let value = match result {
            Err(e) => {
                // Clients that saw the guest start (or, for a reboot, never
                // saw it stop) hear that it stopped.
                let seen_running = matches!(a.wait, Wait::StartPaused | Wait::Started { fresh: false, .. });
                let dom = self.setup.ctx.domains.by_uuid(&uuid).map(|e| e.stopped_handle());
                if a.wait.starting()
                    && self.setup.ctx.abort_start(&uuid)
                    && seen_running
                    && let Ok(dom) = dom
                {
                    self.setup.ctx.emit(dom, calls::event::STOPPED, 5);
                }
                Err(e)
            }
            Ok(()) if a.wait.starting() => self.setup.ctx.domains.by_uuid(&uuid).map(|e| CallValue::Domain(e.handle())),
            Ok(()) => Ok(CallValue::Unit),
        };
        match (&a.asker, &value) {
            (calls::Asker::Client { reply_to: Some(id), .. }, _) => self.reply(*id, &BrokerReply::Value(value), &[]),
            (calls::Asker::Client { reply_to: None, .. }, _) => {}
            (calls::Asker::Daemon(why), Err(e)) => log::error!("{why}: {e}"),
            (calls::Asker::Daemon(_), Ok(_)) => {}
        }
    }

    /// Fails the requests to helpers that `give_up` picks, and those whose
    /// guest is no longer running (a graceful destroy whose guest stopped
    /// succeeded).
    fn fail_awaiting(&mut self, give_up: impl Fn(&[u8; 16], &calls::Awaiting) -> bool) {
        let ctx = &self.setup.ctx;
        let ended: Vec<([u8; 16], Result<(), crate::privsep::CallError>)> = ctx
            .awaiting
            .iter()
            .filter_map(|(u, a)| {
                let name = || ctx.domains.by_uuid(u).map(|e| e.def.name.clone()).unwrap_or_default();
                match (ctx.guests.contains_key(u), a.wait) {
                    (false, calls::Wait::Stopped) => Some((*u, Ok(()))),
                    (false, _) => Some((*u, Err(crate::privsep::CallError::NotRunning))),
                    (true, wait) if give_up(u, a) => Some((*u, Err(wait.overdue(&name())))),
                    (true, _) => None,
                }
            })
            .collect();
        for (uuid, result) in ended {
            self.settle(uuid, result);
        }
    }

    /// Frees the consoles whose holder matches, and catches up on their output.
    fn release_consoles(&mut self, held_by: impl Fn(u64) -> bool) {
        let freed: Vec<[u8; 16]> =
            self.setup.ctx.consoles.iter().filter(|(_, owner)| held_by(**owner)).map(|(u, _)| *u).collect();
        for uuid in freed {
            self.setup.ctx.consoles.remove(&uuid);
            self.drain_console(&uuid);
        }
    }

    /// Reads what the guest wrote while a client held its console.
    fn drain_console(&mut self, uuid: &[u8; 16]) {
        let Some(running) = self.setup.ctx.guests.get(uuid) else { return };
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = (&running.console).read(&mut buf) {
            if let Some(mut log) = running.log.as_ref() {
                let _ = std::io::Write::write_all(&mut log, &buf[..n]);
            }
        }
    }

    /// A guest ended by itself: record why, and start it again where its
    /// `on_poweroff`/`on_reboot`/`on_crash` says so.
    fn guest_stopped(&mut self, uuid: [u8; 16], reason: StopReason, detail: &str) {
        let ctx = &mut self.setup.ctx;
        let Some(running) = ctx.guests.remove(&uuid) else { return };
        if ctx.awaiting.get(&uuid).is_some_and(|a| a.wait.starting()) {
            // The helper ended before the guest ran: the start failed
            // (settling it shuts the domain off).
            drop(running);
            let why = crate::privsep::CallError::OperationFailed(format!("guest failed to start: {detail}"));
            self.settle(uuid, Err(why));
            return self.flush_events();
        }
        let Ok(entry) = ctx.domains.by_uuid(&uuid) else { return };
        let (name, def) = (entry.def.name.clone(), &entry.def);
        let (action, op) = match reason {
            StopReason::PowerOff => (def.on_poweroff, "shutdown"),
            StopReason::Reset if ctx.resetting.remove(&uuid) => (LifecycleAction::Restart, "reset"),
            StopReason::Reset => (def.on_reboot, "reboot"),
            StopReason::Crash => (def.on_crash, "crash"),
            StopReason::Destroyed => (LifecycleAction::Destroy, "destroy"),
            StopReason::Failed => (LifecycleAction::Destroy, "failed"),
        };
        log::info!("domain '{name}' (id {}): {op} ({detail})", running.id);
        calls::audit_guest(&mut self.setup.auditor, "stop", (&name, &uuid), running.pid.as_raw(), Some(op), true);
        let id = running.id;
        drop(running);
        let dom = self.setup.ctx.domains.by_uuid(&uuid).map(|e| e.stopped_handle());
        self.setup.ctx.unrecord(&uuid);
        if action == LifecycleAction::Restart {
            self.setup.ctx.domains.set_restarting(&uuid, calls::shutoff_reason(reason));
        } else {
            self.setup.ctx.domains.set_shutoff(&uuid, calls::shutoff_reason(reason));
        }
        self.fail_awaiting(|_, _| false);
        let in_place = matches!(reason, StopReason::Reset) && action == LifecycleAction::Restart;
        if let (Ok(dom), false) = (dom, in_place) {
            let ctx = &mut self.setup.ctx;
            match reason {
                StopReason::PowerOff => {
                    ctx.emit(dom.clone(), calls::event::SHUTDOWN, 0);
                    ctx.emit(dom, calls::event::STOPPED, 0);
                }
                StopReason::Crash => ctx.emit(dom, calls::event::STOPPED, 2),
                StopReason::Destroyed => ctx.emit(dom, calls::event::STOPPED, 1),
                StopReason::Failed => ctx.emit(dom, calls::event::STOPPED, 5),
                StopReason::Reset => ctx.emit(dom, calls::event::STOPPED, 0),
            }
        }
        if action == LifecycleAction::Restart {
            // A reboot keeps the domain running under its id; any other
            // restart is a new start.
            match self.setup.ctx.start(&uuid, in_place.then_some(id), false, "start", calls::Asker::Daemon(op)) {
                Ok(_) => log::info!("domain '{name}' restarting ({op})"),
                Err(e) => {
                    log::error!("domain '{name}' could not be restarted: {e}");
                    calls::audit_guest(&mut self.setup.auditor, "start", (&name, &uuid), -1, Some(op), false);
                    // A reboot's stop was not announced; this one is.
                    if let (true, Ok(dom)) =
                        (in_place, self.setup.ctx.domains.by_uuid(&uuid).map(|e| e.stopped_handle()))
                    {
                        self.setup.ctx.emit(dom, calls::event::STOPPED, 5);
                    }
                }
            }
        }
        self.sync_guests();
        self.flush_events();
    }

    /// Sends queued lifecycle events to the frontend, which routes them to
    /// the clients that registered.
    fn flush_events(&mut self) {
        let events = std::mem::take(&mut self.setup.ctx.events);
        if !self.link.as_ref().is_some_and(|l| l.phase == Phase::Serving) {
            return;
        }
        for event in events {
            self.reply(0, &BrokerReply::Event(event), &[]);
        }
    }

    /// SIGHUP: re-read the file; a broken one keeps the running configuration.
    fn reload(&mut self) {
        let path = self.setup.config_path.clone();
        let loaded = match Config::load(&path, &self.setup.paths) {
            Err(crate::config::ConfigError::Read { source, .. })
                if self.setup.cli.config.is_none() && source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok((Config::defaults(&self.setup.paths), Vec::new()))
            }
            other => other,
        };
        let (mut new, warnings) = match loaded {
            Ok(c) => c,
            Err(e) => {
                log::error!("failed to reload configuration: {e}; keeping the previous one");
                return;
            }
        };
        for w in warnings {
            log::warn!("{w}");
        }
        apply_verbosity(&mut new, self.setup.cli.verbose);
        for key in self.setup.config.apply_reload(new) {
            log::warn!("configuration key '{key}' changed; the change takes effect when the daemon restarts");
        }
        self.reopen_logs();
        let c = &self.setup.config;
        self.setup.auditor = Auditor::new(&c.syslog_socket, c.audit_level, c.audit_logging);
        let _ = self.reload_tls();
        log::info!("configuration reloaded from {}", path.display());
        self.push_config();
    }

    /// A TLS client's handshake and certificate check succeeded in the
    /// frontend: check its DN against the allow-list and admit it, or not.
    fn authenticated(&mut self, conn: u64, dn: Option<String>) -> BrokerReply {
        let allowed_dns = self.setup.config.tls_allowed_dn_list.clone();
        let verify = !self.setup.config.tls_no_verify_certificate;
        let Some(client) = self.client_mut(conn) else { return BrokerReply::Ok };
        if client.peer.socket != ListenerKind::Tls || client.authenticated {
            let why = format!("connection {conn} cannot authenticate now");
            self.violation(&why);
            return BrokerReply::Refused(BrokerError::Invalid(why));
        }
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

    /// Signs what the frontend's TLS handshakes ask for.
    fn on_sign(&mut self) {
        loop {
            let Some(link) = &self.link else { return };
            let Some(sign) = &link.sign else { return };
            let request = match sign.recv::<crate::privsep::SignRequest>(|_| 0) {
                Ok((r, _)) => r,
                Err(ChannelError::WouldBlock) => return,
                Err(e) => {
                    log::warn!("sign channel: {e}");
                    let raw = sign.raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
                    if let Some(l) = &mut self.link {
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

    /// Re-reads the TLS files; broken ones leave the current ones in use.
    /// Returns whether the new files are in use.
    fn reload_tls(&mut self) -> Result<(), String> {
        if self.setup.tls.is_none() {
            return Ok(());
        }
        match crate::tls::files::TlsFiles::load(&self.setup.config) {
            Ok(files) => {
                self.setup.tls = Some(files);
                log::info!("TLS certificates, key, CA, CRL and allowed DNs reloaded");
                Ok(())
            }
            Err(e) => {
                log::error!("cannot reload TLS files: {e}; keeping the previous ones");
                Err(e.to_string())
            }
        }
    }

    /// Opens the log outputs the configuration names, replacing the current ones.
    fn reopen_logs(&mut self) {
        let c = &self.setup.config;
        let (state, log_warnings) = LogState::open(&c.log, self.setup.cli.daemon, &c.syslog_socket);
        logging::install(state);
        for w in log_warnings {
            log::warn!("{w}");
        }
    }

    /// Sends a serving frontend its share of the current configuration.
    fn push_config(&mut self) {
        if self.link.as_ref().is_some_and(|l| l.phase == Phase::Serving) {
            let (config, fds) = self.frontend_config();
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            self.reply(0, &BrokerReply::Reconfigure(config), &borrowed);
        }
    }

    /// Carries out an admin-socket client's call, audits it, and answers.
    fn admin(&mut self, id: u32, conn: u64, call: crate::privsep::admin::AdminCall) {
        let Some(link) = &self.link else { return };
        let Some(client) = link.clients.get(&conn) else { return };
        let peer = client.peer.clone();
        let mut admin = super::admin::Admin {
            clients: &link.clients,
            config: &mut self.setup.config,
            timeout: &mut self.setup.cli.timeout,
            waiting: self.setup.ctx.awaiting.len(),
            tls: self.setup.listeners.sockets.iter().any(|(k, _)| *k == ListenerKind::Tls),
        };
        let mut result = admin.handle(&call);
        // A TLS reload that fails is the caller's error, not only a log line.
        if let Ok((_, super::admin::Effect::ReloadTls)) = &result
            && let Err(e) = self.reload_tls()
        {
            result = Err(crate::privsep::CallError::OperationFailed(format!("cannot reload TLS files: {e}")));
        }
        let caller = Caller { conn, peer: &peer, readonly: false, request: id };
        calls::audit_admin(&mut self.setup.auditor, &caller, &call, result.as_ref().map(|_| ()).map_err(Clone::clone));
        let (value, effect) = match result {
            Ok((v, effect)) => (Ok(CallValue::Admin(v)), effect),
            Err(e) => (Err(e), super::admin::Effect::None),
        };
        self.reply(id, &BrokerReply::Value(value), &[]);
        match effect {
            super::admin::Effect::None => {}
            super::admin::Effect::Disconnect(victim) => self.reply(0, &BrokerReply::Disconnect(victim), &[]),
            super::admin::Effect::Reconfigure => self.push_config(),
            super::admin::Effect::Relog => {
                self.reopen_logs();
                self.push_config();
            }
            super::admin::Effect::ReloadTls => self.push_config(),
        }
    }

    /// Stops the frontend (SIGTERM, then SIGKILL after a grace period); the
    /// sockets and PID file go when `setup` drops.
    fn shutdown(&mut self) {
        if let Some(link) = self.link.take() {
            let _ = kill(link.pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                match waitpid(link.pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
                    _ => break,
                }
            }
            link.reap();
        }
    }
}
