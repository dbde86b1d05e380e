//! The broker's event loop: polling, signals and deadlines. What each
//! source means is elsewhere: the frontends in [`frontends`], the guests'
//! helpers in [`guests`], SIGHUP in [`reload`]; the calls themselves in
//! `broker/calls.rs` and the running guests' supervisor in
//! `broker/supervisor/`.

mod frontends;
mod guests;
mod publishing;
mod reload;

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

use super::StartError;
use super::audit::Auditor;
use super::link::{Client, Slot, describe};
use super::listen::Listeners;
use super::pidfile::PidFile;
use super::readiness::Readiness;
use super::state::Ctx;
use crate::cli::Cli;
use crate::config::{Config, DefaultPaths, Mode};
use crate::privsep::ConnId;
use std::collections::HashMap;

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
    guest_tokens: HashMap<Token, (crate::domain::Uuid, Pid, GuestFd)>,
    next_guest_token: usize,
    /// The domain table as the frontends last got it (`publish.rs`).
    published: super::publish::Published,
}

impl Broker {
    /// Blocks the signals we take through signalfd and sets up the poller.
    pub fn new(mut setup: Setup) -> Result<Broker, StartError> {
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
        // Helpers that are not our children are watched for their exit here.
        setup.ctx.exits.watch_with(poll.registry().try_clone().map_err(|e| err("epoll", &e))?);
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
            published: Default::default(),
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
                    // A helper that is not our child exited: settled below.
                    super::exits::Exits::TOKEN => {}
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
            self.fail_awaiting(|a| a.deadline <= now);
            self.settle_exits(now);
        }
        self.shutdown();
        self.exit.take().unwrap_or(ExitCode::SUCCESS)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let idle = match (self.idle_since, self.setup.cli.timeout) {
            (Some(since), Some(secs)) => Some(since + Duration::from_secs(secs.into())),
            _ => None,
        };
        let awaiting = self.setup.ctx.guests.pending.deadline();
        let ctx = &self.setup.ctx;
        let awaiting = awaiting
            .into_iter()
            .chain(super::helper_asks::next_deadline(ctx))
            .chain(super::sampling::next_deadline(ctx))
            .chain(ctx.exits.next_deadline())
            .min();
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
            // A helper exited: what waited for it is settled this turn.
            if let Some(p) = pid {
                self.setup.ctx.exits.reaped(p);
            }
            let slot = self.frontends.iter().position(|s| s.link.as_ref().map(|l| l.pid) == pid);
            if let (Some(slot), Some(_)) = (slot, pid) {
                self.frontend_gone(slot, describe(status));
            }
            // A volume copy ended: its client's answer.
            let success = matches!(status, Ok(WaitStatus::Exited(_, 0)));
            let storage = &mut self.setup.ctx.storage;
            if let Some(done) = pid.and_then(|p| storage.copy_ended(&mut self.setup.auditor, p.as_raw(), success)) {
                self.answer_client(done.conn, done.request, done.result);
                self.flush_events();
            }
        }
    }

    /// Stops the frontends (SIGTERM, then SIGKILL after a grace period); the
    /// sockets and PID file go when `setup` drops.
    fn shutdown(&mut self) {
        self.setup.ctx.storage.abandon_copies();
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
