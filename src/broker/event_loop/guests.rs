//! The broker's side of its guests' helpers: watching their channels and
//! consoles, reading their answers and events, settling the requests the
//! supervisor has in flight, and a guest's end (with its `on_*` action).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::unistd::Pid;

use super::{Broker, GuestFd};
use crate::broker::guests::Protocol;
use crate::broker::helper_asks::{self, Answer};
use crate::broker::lifecycle::{ShutoffReason, event};
use crate::broker::restarts::Outcome;
use crate::broker::supervisor::{Asker, Awaiting, Carried, Wait};
use crate::broker::{call_audit, io_errors};
use crate::domain::{LifecycleAction, Uuid};
use crate::privsep::helper::{HelperEvent, ProtocolMismatch, StopReason, check_version};
use crate::privsep::{CallError, CallValue, ChannelError, DomainRef};

impl Broker {
    /// Watches the channel and console of every running guest, and forgets
    /// the fds of guests that are gone.
    pub(super) fn sync_guests(&mut self) {
        let guests = &self.setup.ctx.guests;
        self.guest_tokens.retain(|_, (uuid, pid, _)| guests.get(uuid).is_some_and(|r| r.pid == *pid));
        for (uuid, r) in guests.iter() {
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

    pub(super) fn on_guest(&mut self, token: Token) {
        let Some(&(uuid, pid, kind)) = self.guest_tokens.get(&token) else { return };
        let Some(running) = self.setup.ctx.guests.get(&uuid).filter(|r| r.pid == pid) else { return };
        match kind {
            // A client holds the console: its bytes are the client's.
            GuestFd::Console if self.setup.ctx.guests.consoles.contains_key(&uuid) => {}
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
            // Its guest stopped; only its exit is awaited (`exits.rs`).
            GuestFd::Channel if self.setup.ctx.exits.is_stopping(pid) => {}
            GuestFd::Channel => loop {
                let Some(running) = self.setup.ctx.guests.get(&uuid).filter(|r| r.pid == pid) else { return };
                if let Protocol::Unmanageable(why) = &running.protocol {
                    // Never parsed: only its end matters.
                    match running.channel.skip() {
                        Ok(()) => continue,
                        Err(ChannelError::WouldBlock) => return,
                        Err(_) => {
                            let detail = format!("the helper ended; {why}");
                            return self.guest_stopped(uuid, StopReason::Failed, &detail, false);
                        }
                    }
                }
                let awaiting = running.protocol == Protocol::Awaiting;
                match running.channel.recv::<HelperEvent>(HelperEvent::fd_count) {
                    Ok((HelperEvent::Hello { version }, _)) if awaiting => self.greeted(uuid, check_version(version)),
                    // Anything before the greeting is a protocol this daemon cannot read.
                    Ok(_) if awaiting => self.greeted(uuid, Err(ProtocolMismatch::Garbled)),
                    Ok((HelperEvent::Stopped { reason, detail }, _)) => {
                        // Its end waits for its exit: until then its open
                        // files hold the guest's image locks.
                        if let Some((_, _, reason, detail)) = self.setup.ctx.exits.after_stop(uuid, pid, reason, detail)
                        {
                            self.guest_stopped(uuid, reason, &detail, true);
                        }
                        return;
                    }
                    Ok((
                        event @ (HelperEvent::Started
                        | HelperEvent::Paused
                        | HelperEvent::Resumed
                        | HelperEvent::PauseFailed { .. }),
                        _,
                    )) => self.helper_answered(uuid, &event),
                    Ok((HelperEvent::DiskStats(counters), _)) => {
                        self.helper_reported(uuid, pid, Answer::Disks(counters))
                    }
                    Ok((HelperEvent::NetStats(counters), _)) => self.helper_reported(uuid, pid, Answer::Nics(counters)),
                    Ok((HelperEvent::Balloon(figures), _)) => self.helper_reported(uuid, pid, Answer::Balloon(figures)),
                    Ok((HelperEvent::IoError { alias, detail }, _)) => {
                        io_errors::raise(&mut self.setup.ctx, &uuid, &alias, &detail);
                        self.flush_events();
                    }
                    Ok((HelperEvent::RtcChange { offset_secs }, _)) => {
                        crate::broker::rtc::raise(&mut self.setup.ctx, &uuid, offset_secs);
                        self.flush_events();
                    }
                    Ok(_) => {}
                    Err(ChannelError::WouldBlock) => return,
                    Err(ChannelError::Closed) if awaiting => {
                        let detail = "its helper ended without greeting (is libvirt-helper from the same build as \
                                      libvirtd?)";
                        return self.guest_stopped(uuid, StopReason::Failed, detail, false);
                    }
                    Err(e) => {
                        // A helper the kernel killed over its memory limit: a crash, said so.
                        let limit =
                            self.setup.ctx.domains.by_uuid(&uuid).ok().and_then(|e| e.def.tuning().memory.hard_limit);
                        let oom = running.cgroup.as_ref().and_then(|c| c.out_of_memory(limit));
                        return match oom {
                            Some(detail) => self.guest_stopped(uuid, StopReason::Crash, &detail, false),
                            None => {
                                self.guest_stopped(uuid, StopReason::Failed, &format!("helper channel: {e}"), false)
                            }
                        };
                    }
                }
            },
        }
    }

    /// Guest `uuid`'s helper `pid` answered one of the questions out to it
    /// (`helper_asks.rs`): whoever waited for it is answered.
    fn helper_reported(&mut self, uuid: Uuid, pid: Pid, answer: Answer) {
        for (conn, id, value) in helper_asks::answered(&mut self.setup.ctx, &uuid, pid, answer) {
            self.answer_client(conn, id, value);
        }
    }

    /// A new helper's greeting arrived: one of this build's protocol is
    /// spoken to from now on; any other fails its start, naming both
    /// versions.
    fn greeted(&mut self, uuid: Uuid, version: Result<(), ProtocolMismatch>) {
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
        if ctx.guests.pending.starting(&uuid).is_some() {
            let e = CallError::OperationFailed(format!("guest '{name}' failed to start: {why}"));
            self.settle(uuid, |a| a.wait.starting(), Err(e));
        } else {
            // A running guest found again after a restart, out of reach.
            ctx.emit_control_error(&uuid);
        }
        self.flush_events();
    }

    /// A helper reported `Started`, `Paused`, `Resumed` or `PauseFailed`:
    /// apply it, and settle the oldest request that waited for it. A late
    /// answer (its asker already got an error) still updates the state.
    fn helper_answered(&mut self, uuid: Uuid, answer: &HelperEvent) {
        let ctx = &mut self.setup.ctx;
        let started = |a: &Awaiting| matches!(a.wait, Wait::Started { .. });
        let pausing = |a: &Awaiting| a.wait.pausing();
        match answer {
            // Only a start that waits for it takes a Started.
            HelperEvent::Started if ctx.guests.pending.find(&uuid, started).is_none() => {}
            HelperEvent::Started => match ctx.started(&uuid) {
                Ok(true) => {}
                Ok(false) => self.settle(uuid, started, Ok(())),
                Err(e) => self.settle(uuid, started, Err(e)),
            },
            HelperEvent::Paused => {
                ctx.paused(&uuid, false);
                self.settle(uuid, pausing, Ok(()));
            }
            HelperEvent::Resumed => {
                ctx.paused(&uuid, true);
                self.settle(uuid, |a| a.wait == Wait::Resumed, Ok(()));
            }
            // The helper's bound passed with a vCPU still running: the guest
            // runs on, and whoever asked hears why.
            HelperEvent::PauseFailed { detail } => {
                let name = ctx.domains.by_uuid(&uuid).map(|e| e.def.name.clone()).unwrap_or_default();
                let e = CallError::OperationFailed(format!("guest '{name}' could not be paused: {detail}"));
                self.settle(uuid, pausing, Err(e));
            }
            _ => {}
        }
        self.flush_events();
    }

    /// Ends guest `uuid`'s oldest request that `which` picks: audits it,
    /// answers the client that asked, and stops a guest whose start failed.
    fn settle(&mut self, uuid: Uuid, which: impl Fn(&Awaiting) -> bool, result: Result<(), CallError>) {
        let Some(a) = self.setup.ctx.guests.pending.take(&uuid, which) else { return };
        call_audit::audit_awaited(&mut self.setup.auditor, &uuid, &a, &result);
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
                    self.setup.ctx.emit(dom, event::STOPPED, 5);
                }
                Err(e)
            }
            Ok(()) if a.wait.starting() => self.setup.ctx.domains.by_uuid(&uuid).map(|e| CallValue::Domain(e.handle())),
            Ok(()) => Ok(CallValue::Unit),
        };
        match (&a.asker, &value) {
            // A guest stopped for a graceful destroy: answered once its
            // helper has exited and released its images (`exits.rs`).
            (Asker::Client { conn, reply_to: Some(id), .. }, Ok(_)) if a.wait == Wait::Stopped => {
                let reply = (*conn, *id, value);
                if let Some((conn, id, value)) = self.setup.ctx.exits.after_exit(Pid::from_raw(a.pid), reply) {
                    self.answer_client(conn, id, value);
                }
            }
            (Asker::Client { conn, reply_to: Some(id), .. }, _) => self.answer_client(*conn, *id, value),
            (Asker::Client { reply_to: None, .. }, _) => {}
            (Asker::Daemon(why), Err(e)) => log::error!("{why}: {e}"),
            (Asker::Daemon(_), Ok(_)) => {}
        }
    }

    /// Fails the requests to helpers that `give_up` picks, and those whose
    /// guest is no longer running (a graceful destroy whose guest stopped
    /// succeeded).
    pub(super) fn fail_awaiting(&mut self, give_up: impl Fn(&Awaiting) -> bool) {
        let now = Instant::now();
        let replies = helper_asks::overdue(&mut self.setup.ctx, now);
        for (conn, id, value) in replies {
            self.answer_client(conn, id, value);
        }
        let ctx = &self.setup.ctx;
        let ended: Vec<(Uuid, u64, Result<(), CallError>)> = ctx
            .guests
            .pending
            .iter()
            .filter_map(|(u, a)| {
                let result = match (ctx.guests.contains_key(u), a.wait) {
                    (false, Wait::Stopped) => Ok(()),
                    (false, _) => Err(CallError::NotRunning),
                    (true, wait) if give_up(a) => Err(wait.overdue(&a.name)),
                    (true, _) => return None,
                };
                Some((*u, a.seq, result))
            })
            .collect();
        for (uuid, seq, result) in ended {
            self.settle(uuid, |a| a.seq == seq, result);
        }
    }

    /// Answers the destroys whose helper has exited, and ends the guests
    /// whose helper has exited after reporting them stopped.
    pub(super) fn settle_exits(&mut self, now: Instant) {
        for (conn, id, value) in self.setup.ctx.exits.due(now) {
            self.answer_client(conn, id, value);
        }
        for (uuid, pid, reason, detail) in self.setup.ctx.exits.stopped(now) {
            // Unless it was destroyed meanwhile (and perhaps started again).
            if self.setup.ctx.guests.get(&uuid).is_some_and(|r| r.pid == pid) {
                self.guest_stopped(uuid, reason, &detail, true);
            }
        }
    }

    /// Frees the consoles whose holder matches, and catches up on their output.
    pub(super) fn release_consoles(&mut self, held_by: impl Fn(u64) -> bool) {
        let consoles = &self.setup.ctx.guests.consoles;
        let freed: Vec<Uuid> = consoles.iter().filter(|(_, owner)| held_by(**owner)).map(|(u, _)| *u).collect();
        for uuid in freed {
            self.setup.ctx.guests.consoles.remove(&uuid);
            self.drain_console(&uuid);
        }
    }

    /// Reads what the guest wrote while a client held its console.
    pub(super) fn drain_console(&mut self, uuid: &Uuid) {
        let Some(running) = self.setup.ctx.guests.get(uuid) else { return };
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = (&running.console).read(&mut buf) {
            if let Some(mut log) = running.log.as_ref() {
                let _ = std::io::Write::write_all(&mut log, &buf[..n]);
            }
        }
    }

    /// A guest ended by itself: record why, and start it again where its
    /// `on_poweroff`/`on_reboot`/`on_crash` says so. `reported`: its helper
    /// said why (a helper the kernel killed did not).
    ///
    /// A restart the guest caused runs on in place, as with QEMU: a reset
    /// (QEMU resets the machine in its process) and, for `on_poweroff` and
    /// (pvpanic) `on_crash` set to `restart`, libvirt's "fake reboot" (the
    /// stopped QEMU is reset and resumed). The domain keeps its id, its
    /// clock and an open console; clients hear what libvirt sends then:
    /// the reboot event, after a crash between CRASHED (panicked) and
    /// RESUMED, and no SHUTDOWN, STOPPED or STARTED.
    fn guest_stopped(&mut self, uuid: Uuid, reason: StopReason, detail: &str, reported: bool) {
        let ctx = &mut self.setup.ctx;
        let Some(mut running) = ctx.guests.remove(&uuid) else { return };
        running.remove_cgroup();
        running.remove_taps();
        if ctx.guests.pending.starting(&uuid).is_some() {
            // The helper ended before the guest ran: the start failed
            // (settling it shuts the domain off).
            drop(running);
            let why = CallError::OperationFailed(format!("guest failed to start: {detail}"));
            self.settle(uuid, |a| a.wait.starting(), Err(why));
            // Whatever else it was asked fails with it.
            self.fail_awaiting(|_| false);
            return self.flush_events();
        }
        if matches!(reason, StopReason::Failed) {
            ctx.emit_control_error(&uuid);
        }
        let Ok(entry) = ctx.domains.by_uuid(&uuid) else { return };
        let (name, def) = (entry.def.name.clone(), &entry.def);
        let g = &mut ctx.guests;
        let requested = matches!(reason, StopReason::Reset) && g.resetting.contains(&uuid);
        let (action, op) = match reason {
            StopReason::PowerOff => (def.on_poweroff, "shutdown"),
            StopReason::Reset if g.resetting.remove(&uuid) => (LifecycleAction::Restart, "reset"),
            StopReason::Reset => (def.on_reboot, "reboot"),
            StopReason::Crash => (def.on_crash, "crash"),
            StopReason::Destroyed => (LifecycleAction::Destroy, "destroy"),
            StopReason::Failed => (LifecycleAction::Destroy, "failed"),
        };
        // A guest restarting itself in a loop ends as crashed (restarts.rs).
        // The guest itself said it panicked (pvpanic), as QEMU's GUEST_PANICKED does.
        let panicked = reported && matches!(reason, StopReason::Crash);
        let planned = Outcome { reason, action, op };
        let Outcome { reason, action, op } = g.restarts.judge(uuid, Instant::now(), planned, requested, def.on_crash);
        log::info!("domain '{name}' (id {}): {op} ({detail})", running.id);
        call_audit::audit_guest(&mut self.setup.auditor, "stop", (&name, &uuid), running.pid.as_raw(), Some(op), true);
        let id = running.id;
        let in_place = action == LifecycleAction::Restart
            && match reason {
                StopReason::Reset | StopReason::PowerOff => true,
                StopReason::Crash => reported,
                StopReason::Destroyed | StopReason::Failed => false,
            };
        let crashed_in_place = in_place && panicked;
        if in_place {
            // The console goes on with the next helper: its end, watched
            // again under that helper, and with it any client's stream.
            let _ = self.poll.registry().deregister(&mut SourceFd(&running.console.as_raw_fd()));
            let carried = Carried { clock: running.clock, console: running.into_console(), crashed: crashed_in_place };
            self.setup.ctx.guests.carried.insert(uuid, carried);
        } else {
            drop(running);
        }
        let dom = self.setup.ctx.domains.by_uuid(&uuid).map(|e| e.stopped_handle());
        self.setup.ctx.unrecord(&uuid);
        if action == LifecycleAction::Restart {
            self.setup.ctx.domains.set_restarting(&uuid, ShutoffReason::from(reason));
        } else {
            self.setup.ctx.domains.set_shutoff(&uuid, ShutoffReason::from(reason));
        }
        self.fail_awaiting(|_| false);
        if let (Ok(dom), true) = (&dom, crashed_in_place) {
            // The guest panicked: libvirt says so (of the domain, which
            // keeps its id) before it fake-reboots.
            self.setup.ctx.emit(DomainRef { id, ..dom.clone() }, event::CRASHED, 0);
        }
        if let (Ok(dom), false) = (dom, in_place) {
            let ctx = &mut self.setup.ctx;
            match reason {
                StopReason::PowerOff => {
                    ctx.emit(dom.clone(), event::SHUTDOWN, 0);
                    ctx.emit(dom, event::STOPPED, 0);
                }
                StopReason::Crash => {
                    // libvirt reports the panic before the stop.
                    if panicked {
                        ctx.emit(DomainRef { id, ..dom.clone() }, event::CRASHED, 0);
                    }
                    ctx.emit(dom, event::STOPPED, 2);
                }
                StopReason::Destroyed => ctx.emit(dom, event::STOPPED, 1),
                StopReason::Failed => ctx.emit(dom, event::STOPPED, 5),
                StopReason::Reset => ctx.emit(dom, event::STOPPED, 0),
            }
        }
        if action == LifecycleAction::Restart {
            // A reboot keeps the domain running under its id; any other
            // restart is a new start.
            match self.setup.ctx.start(&uuid, in_place.then_some(id), false, "start", Asker::Daemon(op)) {
                Ok(_) => {
                    log::info!("domain '{name}' restarting ({op})");
                    if in_place {
                        self.setup.ctx.emit_reboot(&uuid);
                    }
                }
                Err(e) => {
                    log::error!("domain '{name}' could not be restarted: {e}");
                    // What it kept for the next helper (its console) ends here.
                    self.setup.ctx.guests.carried.remove(&uuid);
                    call_audit::audit_guest(&mut self.setup.auditor, "start", (&name, &uuid), -1, Some(op), false);
                    // A reboot's stop was not announced; this one is.
                    if let (true, Ok(dom)) =
                        (in_place, self.setup.ctx.domains.by_uuid(&uuid).map(|e| e.stopped_handle()))
                    {
                        self.setup.ctx.emit(dom, event::STOPPED, 5);
                    }
                }
            }
        }
        self.sync_guests();
        self.flush_events();
    }
}
