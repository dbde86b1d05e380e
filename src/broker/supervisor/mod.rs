//! The supervisor of running guests: it owns each guest's helper link, the
//! requests in flight to it (several per guest, [`pending`]), who holds its
//! console, and the lifecycle events its changes cause. Calls hand it a
//! request and return at once; the event loop hands it the helper's
//! answers, and it settles what waited for them.

pub mod pending;
mod reattach;

use std::collections::{HashMap, HashSet};

pub use pending::{Asker, Awaiting, Pending, Wait};

use super::guests::{Launcher, Running};
use super::lifecycle::{DomainState, PausedReason, RunningReason, ShutoffReason, event};
use super::restarts::Restarts;
use super::state::Ctx;
use crate::domain::Uuid;
use crate::privsep::helper::HelperCommand;
use crate::privsep::{CallError, ConnId, DomainEvent, DomainRef};

/// The running guests and everything in flight with them.
pub struct Supervisor {
    /// Running guests by UUID.
    running: HashMap<Uuid, Running>,
    /// How guests are started.
    pub launcher: Launcher,
    /// The next domain id.
    pub next_id: i32,
    /// Guests being reset by a client: they come back whatever `on_reboot` says.
    pub resetting: HashSet<Uuid>,
    /// Recent restarts each guest caused itself, to end reset loops.
    pub restarts: Restarts,
    /// Lifecycle events for clients, sent by the event loop after each call.
    pub events: Vec<DomainEvent>,
    /// Which client holds each guest's console.
    pub consoles: HashMap<Uuid, ConnId>,
    /// Consoles taken with FORCE, whose previous streams must end.
    pub consoles_taken: Vec<Uuid>,
    /// Requests sent to helpers and not yet answered; the event loop
    /// settles them.
    pub pending: Pending,
    /// What guests restarting in place (reboot, reset, libvirt's fake
    /// reboot) bring to the helper that runs them on.
    pub carried: HashMap<Uuid, Carried>,
}

/// What a guest restarting in place keeps, as it would in QEMU's one
/// process: the time the guest set (as a PC's RTC does), its console (a
/// client's stream goes on, as with QEMU's chardev), and whether it
/// panicked (libvirt's fake reboot of a crashed domain leaves it running,
/// crashed, and resumed).
#[derive(Debug)]
pub struct Carried {
    /// Its clock.
    pub clock: super::rtc::LiveClock,
    /// Its console, both ends.
    pub console: super::guests::Console,
    /// It restarts after a panic (`on_crash` restart).
    pub crashed: bool,
}

impl Supervisor {
    /// A supervisor with no guests yet.
    pub fn new(launcher: Launcher) -> Supervisor {
        Supervisor {
            running: HashMap::new(),
            launcher,
            next_id: 1,
            resetting: HashSet::new(),
            restarts: Restarts::default(),
            events: Vec::new(),
            consoles: HashMap::new(),
            consoles_taken: Vec::new(),
            pending: Pending::default(),
            carried: HashMap::new(),
        }
    }

    /// Guest `uuid`'s helper, if it runs.
    pub fn get(&self, uuid: &Uuid) -> Option<&Running> {
        self.running.get(uuid)
    }

    /// The same, to change.
    pub fn get_mut(&mut self, uuid: &Uuid) -> Option<&mut Running> {
        self.running.get_mut(uuid)
    }

    /// Whether guest `uuid` runs.
    pub fn contains_key(&self, uuid: &Uuid) -> bool {
        self.running.contains_key(uuid)
    }

    /// Whether no guest runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Every running guest.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &Running)> {
        self.running.iter()
    }

    /// Takes guest `uuid`'s helper out: it has ended or is being ended.
    pub fn remove(&mut self, uuid: &Uuid) -> Option<Running> {
        self.running.remove(uuid)
    }

    fn insert(&mut self, uuid: Uuid, running: Running) {
        self.running.insert(uuid, running);
    }
}

impl Asker {
    /// The client making `caller`'s call.
    pub fn of(caller: &super::calls::Caller) -> Asker {
        Asker::Client { conn: caller.conn, peer: caller.peer.clone(), reply_to: Some(caller.request) }
    }
}

impl Ctx {
    /// Starts the defined domain `uuid` in a new helper, as domain `id` (a
    /// new one if `None`). The domain is paused (starting up) until the
    /// helper reports `Started` through the event loop, which settles the
    /// start for `asker`.
    pub fn start(
        &mut self,
        uuid: &Uuid,
        id: Option<i32>,
        paused: bool,
        op: &'static str,
        asker: Asker,
    ) -> Result<DomainRef, CallError> {
        let entry = self.domains.by_uuid(uuid)?;
        if entry.id.is_some() {
            return Err(CallError::OperationInvalid("domain is already running".into()));
        }
        let g = &mut self.guests;
        // Only a restart in place runs on with what the guest had.
        let carried = g.carried.remove(uuid).filter(|_| id.is_some());
        let crashed = carried.as_ref().is_some_and(|c| c.crashed);
        let (clock, console) = carried.map(|c| (c.clock, c.console)).unzip();
        let next = id.unwrap_or(g.next_id);
        let running = match g.launcher.start(&entry.def, next, &g.running, &self.networks, clock, console) {
            Ok(r) => r,
            Err(e) => {
                // As libvirt does: a start that failed leaves the domain shut off (failed).
                self.domains.set_shutoff(uuid, ShutoffReason::Failed);
                return Err(e);
            }
        };
        // A restart in place (reboot, reset) keeps the id and is no new start.
        let fresh = id.is_none();
        if fresh {
            g.next_id += 1;
        }
        let pid = running.pid;
        self.domains.set_running(uuid, running.id, pid, DomainState::Paused(PausedReason::StartingUp));
        self.guests.insert(*uuid, running);
        // Recorded at once: a broker restarted mid-start finds the helper.
        self.record(uuid);
        self.expect(uuid, Wait::Started { paused, fresh, crashed }, op, asker, pid.as_raw());
        Ok(self.domains.by_uuid(uuid)?.handle())
    }

    /// Registers what the helper of guest `uuid` was just asked.
    fn expect(&mut self, uuid: &Uuid, wait: Wait, op: &'static str, asker: Asker, pid: i32) {
        let name = self.domains.by_uuid(uuid).map(|e| e.def.name.clone()).unwrap_or_default();
        self.guests.pending.add(*uuid, wait, op, asker, pid, name);
    }

    /// The helper of guest `uuid` reported `Started` (its start is
    /// pending): the guest runs. Returns whether the start goes on to
    /// pause it (START_PAUSED), or why that cannot be asked.
    pub fn started(&mut self, uuid: &Uuid) -> Result<bool, CallError> {
        let started = |a: &Awaiting| matches!(a.wait, Wait::Started { .. });
        let Some(&Awaiting { wait: Wait::Started { paused, fresh, crashed }, .. }) =
            self.guests.pending.find(uuid, started)
        else {
            return Ok(false);
        };
        let entry = self.domains.by_uuid(uuid)?;
        let (Some(id), Some(pid)) = (entry.id, entry.pid) else { return Err(CallError::NotRunning) };
        let name = entry.def.name.clone();
        let (vcpus, cputune) = (entry.def.vcpus, entry.def.tuning().cpu);
        if let Some(running) = self.guests.get(uuid) {
            super::pinning::place(pid, vcpus, &cputune, running.cgroup.as_ref())
                .map_err(|e| CallError::OperationFailed(format!("guest '{name}' cannot be placed: {e}")))?;
        }
        let reason = if crashed { RunningReason::Crashed } else { RunningReason::Booted };
        self.domains.set_running(uuid, id, pid, DomainState::Running(reason));
        self.record(uuid);
        if let (true, Ok(dom)) = (fresh || crashed, self.domains.by_uuid(uuid).map(|e| e.handle())) {
            match fresh {
                true => self.emit(dom, event::STARTED, 0),
                false => self.emit(dom, event::RESUMED, 0),
            }
        }
        if !paused {
            return Ok(false);
        }
        let running = self.guests.get(uuid).ok_or(CallError::NotRunning)?;
        running
            .channel
            .send(&HelperCommand::Pause, &[])
            .map_err(|e| CallError::OperationFailed(format!("guest '{name}' cannot be paused: {e}")))?;
        if let Some(a) = self.guests.pending.find_mut(uuid, started) {
            a.wait = Wait::StartPaused;
            a.deadline = std::time::Instant::now() + a.wait.timeout();
        }
        Ok(true)
    }

    /// Shuts off a guest whose start failed (stopping its helper if it
    /// still runs), unless something else shut it off already. Returns
    /// whether it did.
    pub fn abort_start(&mut self, uuid: &Uuid) -> bool {
        if let Some(mut running) = self.guests.remove(uuid) {
            running.kill();
            running.remove_cgroup();
            running.remove_taps();
        }
        if !self.domains.by_uuid(uuid).is_ok_and(|e| e.id.is_some()) {
            return false;
        }
        self.unrecord(uuid);
        self.domains.set_shutoff(uuid, ShutoffReason::Failed);
        true
    }

    /// Guest `uuid`'s name and helper, refusing while its helper is still
    /// starting (a start excludes every other request; anything else may
    /// be in flight beside what is asked now).
    fn ready_guest(&self, uuid: &Uuid) -> Result<(String, &Running), CallError> {
        let name = self.domains.by_uuid(uuid)?.def.name.clone();
        let running = self.guests.get(uuid).ok_or(CallError::NotRunning)?;
        running.manageable(&name)?;
        if let Some(a) = self.guests.pending.starting(uuid) {
            return Err(CallError::OperationFailed(format!("guest '{name}' has not finished its {} yet", a.op)));
        }
        Ok((name, running))
    }

    /// Sends a command the helper does not answer (its effect arrives as an
    /// event); `hard_reset` makes a guest that resets come back regardless
    /// of `on_reboot`.
    pub fn request(
        &mut self,
        uuid: &Uuid,
        command: HelperCommand,
        hard_reset: bool,
    ) -> Result<(String, i32), CallError> {
        let (name, running) = self.ready_guest(uuid)?;
        running.channel.send(&command, &[]).map_err(|e| CallError::OperationFailed(format!("guest helper: {e}")))?;
        let pid = running.pid.as_raw();
        if hard_reset {
            self.guests.resetting.insert(*uuid);
        }
        Ok((name, pid))
    }

    /// Sends `command` to the helper of guest `uuid`; its answer (`wait`)
    /// settles the call through the event loop.
    pub fn ask(
        &mut self,
        uuid: &Uuid,
        command: HelperCommand,
        wait: Wait,
        op: &'static str,
        asker: Asker,
    ) -> Result<(), CallError> {
        let (name, running) = self.ready_guest(uuid)?;
        running
            .channel
            .send(&command, &[])
            .map_err(|e| CallError::OperationFailed(format!("guest '{name}' did not answer: {e}")))?;
        let pid = running.pid.as_raw();
        self.expect(uuid, wait, op, asker, pid);
        Ok(())
    }

    /// `virDomainSuspend` / `virDomainResume`.
    pub fn pause(&mut self, uuid: &Uuid, resume: bool, asker: Asker) -> Result<(), CallError> {
        if resume && !self.domains.by_uuid(uuid)?.state.is_paused() {
            return Err(CallError::OperationInvalid("domain is already running".into()));
        }
        match resume {
            true => self.ask(uuid, HelperCommand::Resume, Wait::Resumed, "resume", asker),
            false => self.ask(uuid, HelperCommand::Pause, Wait::Paused, "suspend", asker),
        }
    }

    /// The helper paused (or resumed) guest `uuid`: record it and tell clients.
    pub fn paused(&mut self, uuid: &Uuid, resumed: bool) {
        let Ok(entry) = self.domains.by_uuid(uuid) else { return };
        let (Some(id), Some(pid)) = (entry.id, entry.pid) else { return };
        if entry.state.is_paused() != resumed {
            return;
        }
        let (state, kind) = match resumed {
            true => (DomainState::Running(RunningReason::Unpaused), event::RESUMED),
            false => (DomainState::Paused(PausedReason::User), event::SUSPENDED),
        };
        self.domains.set_running(uuid, id, pid, state);
        if let Ok(dom) = self.domains.by_uuid(uuid).map(|e| e.handle()) {
            self.emit(dom, kind, 0);
        }
        self.record(uuid);
    }

    /// Stops guest `uuid` at once: the helper holds nothing that needs a
    /// clean exit, so it is killed without waiting (whatever else it was
    /// asked fails). Returns the helper's pid.
    pub fn destroy(&mut self, uuid: &Uuid) -> Result<i32, CallError> {
        let mut running = self.guests.remove(uuid).ok_or(CallError::NotRunning)?;
        running.kill();
        running.remove_cgroup();
        running.remove_taps();
        let dom = self.domains.by_uuid(uuid).map(|e| e.stopped_handle());
        self.unrecord(uuid);
        self.domains.set_shutoff(uuid, ShutoffReason::Destroyed);
        if let Ok(dom) = dom {
            self.emit(dom, event::STOPPED, 1);
        }
        Ok(running.pid.as_raw())
    }
}
