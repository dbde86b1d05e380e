//! The broker's event loop: signals, the frontend channels, guests,
//! restarts, the idle timeout. What concerns the frontends is in
//! [`frontends`].

mod frontends;

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::audit::Auditor;
use super::calls::{self, Ctx, Wait};
use super::guests::Protocol;
use super::link::{Client, Slot, describe};
use super::listen::Listeners;
use super::pidfile::PidFile;
use super::readiness::Readiness;
use super::{StartError, apply_verbosity};
use crate::cli::Cli;
use crate::config::{Config, DefaultPaths, Mode};
use crate::domain::LifecycleAction;
use crate::logging::{self, LogState};
use crate::privsep::helper::{HelperEvent, ProtocolMismatch, StopReason, check_version};
use crate::privsep::{CallValue, ChannelError, ConnId};
use std::collections::HashMap;
use std::io::Read;

const SIGNALS: Token = Token(0);
/// Frontend slot N's channel is token `FIRST_FRONTEND + 2N`, its sign channel the next.
const FIRST_FRONTEND: usize = 10;
/// Guest channels and consoles get tokens from here up.
const FIRST_GUEST: usize = 1000;

fn channel_token(slot: usize) -> Token {
    Token(FIRST_FRONTEND + 2 * slot)
}

fn sign_token(slot: usize) -> Token {
    Token(FIRST_FRONTEND + 2 * slot + 1)
}

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
    /// One frontend per trust class.
    frontends: Vec<Slot>,
    /// Every client of every frontend, by the number the broker gave it.
    clients: HashMap<ConnId, Client>,
    next_conn: ConnId,
    /// Every class's frontend has been ready once: failures are retried
    /// from now on, not fatal.
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
        let frontends = Slot::for_listeners(setup.listeners.sockets.iter().map(|(k, _)| *k), Instant::now());
        Ok(Broker {
            setup,
            poll,
            signals,
            frontends,
            clients: HashMap::new(),
            next_conn: 1,
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
        if self.frontends.is_empty() {
            // Nothing to serve but the guests (socket activation gave no sockets).
            self.ever_ready = true;
            readiness.ok();
        }
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
                    Token(t) if (FIRST_FRONTEND..FIRST_GUEST).contains(&t) => {
                        let slot = (t - FIRST_FRONTEND) / 2;
                        match (t - FIRST_FRONTEND) % 2 {
                            0 => self.on_frontend(slot, readiness),
                            _ => self.on_sign(slot),
                        }
                    }
                    token => self.on_guest(token),
                }
            }
            for slot in 0..self.frontends.len() {
                if self.frontends[slot].more {
                    self.on_frontend(slot, readiness);
                }
            }
            let now = Instant::now();
            for slot in 0..self.frontends.len() {
                if self.frontends[slot].restart.due.is_some_and(|d| d <= now) {
                    self.frontends[slot].restart.due = None;
                    self.start_frontend(slot, readiness);
                }
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
        let restart = self.frontends.iter().filter_map(|s| s.restart.due).min();
        // A frontend with requests left over is served again at once.
        let more = self.frontends.iter().any(|s| s.more).then(Instant::now);
        [idle, restart, awaiting, more].into_iter().flatten().min()
    }

    /// `--timeout`: exit after that long with no clients and no running guests.
    fn check_idle(&mut self, now: Instant) {
        let Some(secs) = self.setup.cli.timeout else {
            return;
        };
        let busy = !self.clients.is_empty() || !self.setup.ctx.guests.is_empty();
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
            let slot = self.frontends.iter().position(|s| s.link.as_ref().map(|l| l.pid) == pid);
            if let (Some(slot), Some(_)) = (slot, pid) {
                self.frontend_gone(slot, describe(status));
            }
        }
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
                if let Protocol::Unmanageable(why) = &running.protocol {
                    // Never parsed: only its end matters.
                    match running.channel.skip() {
                        Ok(()) => continue,
                        Err(ChannelError::WouldBlock) => return,
                        Err(_) => {
                            let detail = format!("the helper ended; {why}");
                            return self.guest_stopped(uuid, StopReason::Failed, &detail);
                        }
                    }
                }
                let awaiting = running.protocol == Protocol::Awaiting;
                match running.channel.recv::<HelperEvent>(HelperEvent::fd_count) {
                    Ok((HelperEvent::Hello { version }, _)) if awaiting => self.greeted(uuid, check_version(version)),
                    // Anything before the greeting is a protocol this daemon cannot read.
                    Ok(_) if awaiting => self.greeted(uuid, Err(ProtocolMismatch::Garbled)),
                    Ok((HelperEvent::Stopped { reason, detail }, _)) => {
                        return self.guest_stopped(uuid, reason, &detail);
                    }
                    Ok((
                        event @ (HelperEvent::Started
                        | HelperEvent::Paused
                        | HelperEvent::Resumed
                        | HelperEvent::PauseFailed { .. }),
                        _,
                    )) => self.helper_answered(uuid, &event),
                    Ok(_) => {}
                    Err(ChannelError::WouldBlock) => return,
                    Err(ChannelError::Closed) if awaiting => {
                        let detail = "its helper ended without greeting (is libvirt-helper from the same build as \
                                      libvirtd?)";
                        return self.guest_stopped(uuid, StopReason::Failed, detail);
                    }
                    Err(e) => {
                        // A helper the kernel killed over its memory limit: a crash, said so.
                        let limit =
                            self.setup.ctx.domains.by_uuid(&uuid).ok().and_then(|e| e.def.tuning().memory.hard_limit);
                        let oom = running.cgroup.as_ref().and_then(|c| c.out_of_memory(limit));
                        return match oom {
                            Some(detail) => self.guest_stopped(uuid, StopReason::Crash, &detail),
                            None => self.guest_stopped(uuid, StopReason::Failed, &format!("helper channel: {e}")),
                        };
                    }
                }
            },
        }
    }

    /// A new helper's greeting arrived: one of this build's protocol is
    /// spoken to from now on; any other fails its start, naming both
    /// versions.
    fn greeted(&mut self, uuid: [u8; 16], version: Result<(), ProtocolMismatch>) {
        let ctx = &mut self.setup.ctx;
        let Some(running) = ctx.guests.get_mut(&uuid) else { return };
        let why = match version {
            Ok(()) => {
                running.protocol = Protocol::Spoken;
                return;
            }
            Err(why) => why,
        };
        running.protocol = Protocol::Unmanageable(why.clone());
        let name = ctx.domains.by_uuid(&uuid).map(|e| e.def.name.clone()).unwrap_or_default();
        log::error!("guest '{name}': {why}");
        if ctx.awaiting.get(&uuid).is_some_and(|a| a.wait.starting()) {
            let e = crate::privsep::CallError::OperationFailed(format!("guest '{name}' failed to start: {why}"));
            self.settle(uuid, Err(e));
            self.flush_events();
        }
    }

    /// A helper reported `Started`, `Paused`, `Resumed` or `PauseFailed`:
    /// apply it, and settle what waited for it. A late answer (its asker
    /// already got an error) still updates the state.
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
            // The helper's bound passed with a vCPU still running: the guest
            // runs on, and whoever asked hears why.
            HelperEvent::PauseFailed { detail } if matches!(waiting, Some(Wait::Paused | Wait::StartPaused)) => {
                let name = ctx.domains.by_uuid(&uuid).map(|e| e.def.name.clone()).unwrap_or_default();
                let e =
                    crate::privsep::CallError::OperationFailed(format!("guest '{name}' could not be paused: {detail}"));
                self.settle(uuid, Err(e));
                return self.flush_events();
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
            (calls::Asker::Client { conn, reply_to: Some(id), .. }, _) => self.answer_client(*conn, *id, value),
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
        let Some(mut running) = ctx.guests.remove(&uuid) else { return };
        running.remove_cgroup();
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
        let requested = matches!(reason, StopReason::Reset) && ctx.resetting.contains(&uuid);
        let (action, op) = match reason {
            StopReason::PowerOff => (def.on_poweroff, "shutdown"),
            StopReason::Reset if ctx.resetting.remove(&uuid) => (LifecycleAction::Restart, "reset"),
            StopReason::Reset => (def.on_reboot, "reboot"),
            StopReason::Crash => (def.on_crash, "crash"),
            StopReason::Destroyed => (LifecycleAction::Destroy, "destroy"),
            StopReason::Failed => (LifecycleAction::Destroy, "failed"),
        };
        // A guest restarting itself in a loop ends as crashed (restarts.rs).
        let planned = super::restarts::Outcome { reason, action, op };
        let super::restarts::Outcome { reason, action, op } =
            ctx.restarts.judge(uuid, Instant::now(), planned, requested, def.on_crash);
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

    /// Stops the frontends (SIGTERM, then SIGKILL after a grace period); the
    /// sockets and PID file go when `setup` drops.
    fn shutdown(&mut self) {
        let links: Vec<_> = self.frontends.iter_mut().filter_map(|s| s.link.take()).collect();
        for link in &links {
            let _ = kill(link.pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for link in links {
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
