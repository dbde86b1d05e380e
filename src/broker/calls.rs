//! Carrying out the hypervisor calls the frontend forwards.
//!
//! The broker re-checks what the frontend already checked (a mutating call on
//! a read-only connection is refused here too), validates content again, and
//! audits every change and every refused change with the client's identity.

use std::collections::HashMap;

use super::audit::{Auditor, Value, client_fields};
use super::domains::Domains;
use super::guests::{Launcher, Running};
use super::{agent, host, hostpages, hoststats, metadata, sched, stats};
use crate::domain::uuid_string;
use crate::privsep::helper::{HelperCommand, StopReason};
use crate::privsep::{Call, CallError, CallValue, DomainEvent, DomainRef, EventKind, PeerIdentity, Query};

/// Most domains or names returned by the legacy list calls.
const LIST_MAX: i32 = 16_384;

/// The state calls work on.
pub struct Ctx {
    /// The domain table.
    pub domains: Domains,
    /// Host UUID for capabilities.
    pub host_uuid: String,
    /// Running guests by UUID.
    pub guests: HashMap<[u8; 16], Running>,
    /// How guests are started.
    pub launcher: Launcher,
    /// The next domain id.
    pub next_id: i32,
    /// Guests being reset by a client: they come back whatever `on_reboot` says.
    pub resetting: std::collections::HashSet<[u8; 16]>,
    /// Recent restarts each guest caused itself, to end reset loops.
    pub restarts: super::restarts::Restarts,
    /// Lifecycle events for clients, sent by the event loop after each call.
    pub events: Vec<DomainEvent>,
    /// Which client holds each guest's console.
    pub consoles: HashMap<[u8; 16], u64>,
    /// Consoles taken with FORCE, whose previous streams must end.
    pub consoles_taken: Vec<[u8; 16]>,
    /// Requests sent to helpers and not yet answered, at most one per
    /// guest; the event loop settles them.
    pub awaiting: HashMap<[u8; 16], Awaiting>,
}

/// What re-attaching found of one guest, for the audit trail.
pub struct Reattachment {
    /// The domain's name.
    pub name: String,
    /// Its uuid.
    pub uuid: [u8; 16],
    /// The helper's pid (as recorded).
    pub pid: i32,
    /// It runs and this daemon manages it.
    pub running: bool,
    /// It runs, but its helper speaks another protocol: why.
    pub unmanageable: Option<String>,
}

/// A request sent to a guest's helper whose answer arrives through the event
/// loop: the broker settles it when the helper answers, the guest stops or
/// the deadline passes, and serves everyone else meanwhile, so a slow or
/// wedged helper stalls only whoever asked it.
pub struct Awaiting {
    /// The helper event that settles it.
    pub wait: Wait,
    /// The audit operation (`start`, `create`, `suspend`, ...).
    pub op: &'static str,
    /// Who asked.
    pub asker: Asker,
    /// The helper's pid, for the audit record after it is gone.
    pub pid: i32,
    /// The domain's name, likewise (a transient domain may be gone).
    pub name: String,
    /// When to give up on the helper.
    pub deadline: std::time::Instant,
}

/// What an [`Awaiting`] request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A new helper's `Started`; with `paused` it is then asked to pause
    /// (START_PAUSED). `fresh` is false for a restart in place (reboot),
    /// which keeps its id and is no new start for clients.
    Started { paused: bool, fresh: bool },
    /// `Paused` after a START_PAUSED start.
    StartPaused,
    /// `Paused` (virDomainSuspend).
    Paused,
    /// `Resumed` (virDomainResume).
    Resumed,
    /// `Stopped` (a graceful destroy).
    Stopped,
}

impl Wait {
    /// Whether this is part of a start: failing it stops the guest.
    pub fn starting(self) -> bool {
        matches!(self, Wait::Started { .. } | Wait::StartPaused)
    }

    /// How long the helper gets.
    pub fn timeout(self) -> std::time::Duration {
        let ms = if matches!(self, Wait::Started { .. }) { START_TIMEOUT_MS } else { ASK_TIMEOUT_MS };
        std::time::Duration::from_millis(ms)
    }

    /// The error for a helper that let the deadline pass.
    pub fn overdue(self, name: &str) -> CallError {
        let secs = self.timeout().as_secs();
        CallError::OperationFailed(match self {
            Wait::Started { .. } => format!("guest '{name}' did not start within {secs} s"),
            Wait::Stopped => {
                format!("guest '{name}' did not stop within {secs} s and a graceful destroy does not kill it")
            }
            _ => format!("guest '{name}' did not answer within {secs} s"),
        })
    }
}

/// Who is waiting on an [`Awaiting`] request.
pub enum Asker {
    /// A client: its call is answered when the request settles.
    Client {
        /// Its connection.
        conn: u64,
        /// Its identity.
        peer: PeerIdentity,
        /// The frontend request to answer; `None` once the frontend that
        /// sent it is gone (a new one numbers its requests afresh).
        reply_to: Option<u32>,
    },
    /// The daemon itself (autostart, an `on_*` restart), for this reason.
    Daemon(&'static str),
}

impl Asker {
    fn of(caller: &Caller) -> Asker {
        Asker::Client { conn: caller.conn, peer: caller.peer.clone(), reply_to: Some(caller.request) }
    }
}

/// `virDomainEventType` values and their details.
pub mod event {
    /// DEFINED: ADDED 0, UPDATED 1.
    pub const DEFINED: i32 = 0;
    /// UNDEFINED: REMOVED 0.
    pub const UNDEFINED: i32 = 1;
    /// STARTED: BOOTED 0.
    pub const STARTED: i32 = 2;
    /// SUSPENDED: PAUSED 0.
    pub const SUSPENDED: i32 = 3;
    /// RESUMED: UNPAUSED 0.
    pub const RESUMED: i32 = 4;
    /// STOPPED: SHUTDOWN 0, DESTROYED 1, CRASHED 2, FAILED 5.
    pub const STOPPED: i32 = 5;
    /// SHUTDOWN: FINISHED 0.
    pub const SHUTDOWN: i32 = 6;
}

/// `VIR_DOMAIN_RUNNING_BOOTED`.
const RUNNING_BOOTED: (i32, i32) = (1, 1);
/// `VIR_DOMAIN_RUNNING_UNPAUSED`.
const RUNNING_UNPAUSED: (i32, i32) = (1, 5);
/// `VIR_DOMAIN_PAUSED`.
const STATE_PAUSED: i32 = 3;
/// `VIR_DOMAIN_PAUSED_USER`.
const PAUSED_USER: i32 = 1;
/// `VIR_DOMAIN_START_PAUSED`.
const START_PAUSED: u32 = 1;
/// `VIR_DOMAIN_START_VALIDATE`.
const START_VALIDATE: u32 = 16;
/// `VIR_DOMAIN_DESTROY_GRACEFUL`.
const DESTROY_GRACEFUL: u32 = 1;
/// How long a helper may take to answer a pause, resume or stop, in ms.
const ASK_TIMEOUT_MS: u64 = 5_000;
/// How long a new helper may take to report `Started`, in ms.
const START_TIMEOUT_MS: u64 = 10_000;
/// `VIR_DOMAIN_PAUSED_STARTING_UP`: a guest whose helper is starting.
const PAUSED_STARTING_UP: i32 = 11;
/// `VIR_DOMAIN_SHUTOFF_SHUTDOWN`.
const SHUTOFF_SHUTDOWN: i32 = 1;
/// `VIR_DOMAIN_SHUTOFF_DESTROYED`.
const SHUTOFF_DESTROYED: i32 = 2;
/// `VIR_DOMAIN_SHUTOFF_CRASHED`.
const SHUTOFF_CRASHED: i32 = 3;
/// `VIR_DOMAIN_SHUTOFF_FAILED`.
const SHUTOFF_FAILED: i32 = 6;

/// The `virDomainShutoffReason` a domain gets when its helper ends for `reason`.
pub fn shutoff_reason(reason: StopReason) -> i32 {
    match reason {
        StopReason::PowerOff | StopReason::Reset => SHUTOFF_SHUTDOWN,
        StopReason::Destroyed => SHUTOFF_DESTROYED,
        StopReason::Crash => SHUTOFF_CRASHED,
        StopReason::Failed => SHUTOFF_FAILED,
    }
}

impl Ctx {
    /// Writes the run-state record of guest `uuid` (for a restarted broker).
    pub fn record(&self, uuid: &[u8; 16]) {
        let (Ok(e), Some(r)) = (self.domains.by_uuid(uuid), self.guests.get(uuid)) else { return };
        let s = super::status::Status {
            id: r.id,
            pid: r.pid.as_raw(),
            uid: r.uid,
            state: e.state,
            persistent: e.persistent,
        };
        if let Err(err) = super::status::save(&self.launcher.state_dir, &e.def, &s) {
            log::error!("cannot record running domain '{}': {err}", e.def.name);
        }
    }

    /// Removes guest `uuid`'s run-state record.
    pub fn unrecord(&self, uuid: &[u8; 16]) {
        if let Ok(e) = self.domains.by_uuid(uuid) {
            super::status::remove(&self.launcher.state_dir, &e.def.name);
        }
    }

    /// Re-attaches to the guests a previous broker left running; records of
    /// guests that are gone become shut-off domains (transient ones vanish).
    /// A guest whose helper speaks another protocol version stays running
    /// but unmanageable (see [`super::guests::Reattached`]). Returns, for
    /// the audit trail, each guest's name, uuid, helper pid, whether it is
    /// managed and running, and why not when it runs unmanaged.
    pub fn reattach(&mut self) -> Vec<Reattachment> {
        use super::guests::Reattached;
        let mut found = Vec::new();
        for (s, def) in super::status::load_all(&self.launcher.state_dir) {
            let uuid = def.uuid;
            let name = def.name.clone();
            if self.domains.by_uuid(&uuid).is_err() {
                if s.persistent {
                    log::warn!("domain '{name}' runs but is no longer defined; keeping it as transient");
                }
                self.domains.insert_transient(def.clone());
            }
            self.next_id = self.next_id.max(s.id + 1);
            // A start the previous broker did not see through: the helper
            // that still answers went on to run its guest.
            let recorded = match s.state {
                (STATE_PAUSED, PAUSED_STARTING_UP) => RUNNING_BOOTED,
                other => other,
            };
            let mut seen = Reattachment { name: name.clone(), uuid, pid: s.pid, running: false, unmanageable: None };
            match self.launcher.reattach(&def, s.id, s.pid, s.uid) {
                Reattached::Attached(running, paused) => {
                    // Where the helper says otherwise, a pause or resume
                    // happened that the record missed.
                    let state = match (paused, recorded.0 == STATE_PAUSED) {
                        (Some(true), false) => (STATE_PAUSED, PAUSED_USER),
                        (Some(false), true) => RUNNING_UNPAUSED,
                        _ => recorded,
                    };
                    self.domains.set_running(&uuid, s.id, running.pid, state);
                    self.guests.insert(uuid, running);
                    log::info!("re-attached to domain '{name}' (id {}, helper pid {})", s.id, s.pid);
                    seen.running = true;
                }
                Reattached::Unmanageable(running, why) => {
                    // Running, as far as anyone can tell; the record stays
                    // for a daemon that speaks its helper's version.
                    self.domains.set_running(&uuid, s.id, running.pid, recorded);
                    let e = super::guests::unmanageable(&name, running.pid, &why);
                    log::error!("domain '{name}' (id {}): {e}", s.id);
                    self.guests.insert(uuid, running);
                    seen.unmanageable = Some(format!("unmanageable: {why}"));
                }
                outcome => {
                    // A helper that is gone took its reason with it.
                    let reason = match outcome {
                        Reattached::Stopped(why) => shutoff_reason(why),
                        _ => super::domains::SHUTOFF_UNKNOWN,
                    };
                    log::info!("domain '{name}' stopped while the daemon was away");
                    super::status::remove(&self.launcher.state_dir, &name);
                    self.domains.set_shutoff(&uuid, reason);
                }
            }
            found.push(seen);
        }
        found
    }

    /// Queues a lifecycle event for `dom`.
    pub fn emit(&mut self, dom: DomainRef, event: i32, detail: i32) {
        self.events.push(DomainEvent { dom, kind: EventKind::Lifecycle { event, detail } });
    }

    /// Starts the defined domain `uuid` in a new helper, as domain `id` (a
    /// new one if `None`). The domain is paused (starting up) until the
    /// helper reports `Started` through the event loop, which settles the
    /// start for `asker`.
    pub fn start(
        &mut self,
        uuid: &[u8; 16],
        id: Option<i32>,
        paused: bool,
        op: &'static str,
        asker: Asker,
    ) -> Result<DomainRef, CallError> {
        let entry = self.domains.by_uuid(uuid)?;
        if entry.id.is_some() {
            return Err(CallError::OperationInvalid("domain is already running".into()));
        }
        let running = match self.launcher.start(&entry.def, id.unwrap_or(self.next_id), &self.guests) {
            Ok(r) => r,
            Err(e) => {
                // As libvirt does: a start that failed leaves the domain shut off (failed).
                self.domains.set_shutoff(uuid, SHUTOFF_FAILED);
                return Err(e);
            }
        };
        // A restart in place (reboot, reset) keeps the id and is no new start.
        let fresh = id.is_none();
        if fresh {
            self.next_id += 1;
        }
        let pid = running.pid;
        self.domains.set_running(uuid, running.id, pid, (STATE_PAUSED, PAUSED_STARTING_UP));
        self.guests.insert(*uuid, running);
        // Recorded at once: a broker restarted mid-start finds the helper.
        self.record(uuid);
        self.expect(uuid, Wait::Started { paused, fresh }, op, asker, pid.as_raw());
        Ok(self.domains.by_uuid(uuid)?.handle())
    }

    /// Whether the frontend request `id` waits for a helper's answer.
    pub fn awaits_request(&self, conn: u64, id: u32) -> bool {
        // Request ids are each frontend's own: the connection tells them apart.
        self.awaiting
            .values()
            .any(|a| matches!(a.asker, Asker::Client { conn: c, reply_to: Some(r), .. } if r == id && c == conn))
    }

    /// The frontend that sent the waiting requests of the clients `gone`
    /// picks is gone: their answers have nobody to go to (a new frontend
    /// numbers its requests afresh), but are still audited.
    pub fn orphan_requests(&mut self, gone: impl Fn(u64) -> bool) {
        for a in self.awaiting.values_mut() {
            if let Asker::Client { conn, reply_to, .. } = &mut a.asker
                && gone(*conn)
            {
                *reply_to = None;
            }
        }
    }

    /// Registers what the helper of guest `uuid` was just asked.
    fn expect(&mut self, uuid: &[u8; 16], wait: Wait, op: &'static str, asker: Asker, pid: i32) {
        let deadline = std::time::Instant::now() + wait.timeout();
        let name = self.domains.by_uuid(uuid).map(|e| e.def.name.clone()).unwrap_or_default();
        self.awaiting.insert(*uuid, Awaiting { wait, op, asker, pid, name, deadline });
    }

    /// The helper of guest `uuid` reported `Started` (its start waits in
    /// `awaiting`): the guest runs. Returns whether the start goes on to
    /// pause it (START_PAUSED), or why that cannot be asked.
    pub fn started(&mut self, uuid: &[u8; 16]) -> Result<bool, CallError> {
        let Some(&Awaiting { wait: Wait::Started { paused, fresh }, .. }) = self.awaiting.get(uuid) else {
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
        self.domains.set_running(uuid, id, pid, RUNNING_BOOTED);
        self.record(uuid);
        if fresh && let Ok(dom) = self.domains.by_uuid(uuid).map(|e| e.handle()) {
            self.emit(dom, event::STARTED, 0);
        }
        if !paused {
            return Ok(false);
        }
        let running = self.guests.get(uuid).ok_or(CallError::NotRunning)?;
        running
            .channel
            .send(&HelperCommand::Pause, &[])
            .map_err(|e| CallError::OperationFailed(format!("guest '{name}' cannot be paused: {e}")))?;
        if let Some(a) = self.awaiting.get_mut(uuid) {
            a.wait = Wait::StartPaused;
            a.deadline = std::time::Instant::now() + a.wait.timeout();
        }
        Ok(true)
    }

    /// Shuts off a guest whose start failed (stopping its helper if it
    /// still runs), unless something else shut it off already. Returns
    /// whether it did.
    pub fn abort_start(&mut self, uuid: &[u8; 16]) -> bool {
        if let Some(mut running) = self.guests.remove(uuid) {
            running.kill();
            running.remove_cgroup();
        }
        if !self.domains.by_uuid(uuid).is_ok_and(|e| e.id.is_some()) {
            return false;
        }
        self.unrecord(uuid);
        self.domains.set_shutoff(uuid, SHUTOFF_FAILED);
        true
    }

    /// Guest `uuid`'s name and helper pid, refusing while its helper has an
    /// earlier request to answer.
    fn idle_guest(&self, uuid: &[u8; 16]) -> Result<(String, &Running), CallError> {
        let name = self.domains.by_uuid(uuid)?.def.name.clone();
        let running = self.guests.get(uuid).ok_or(CallError::NotRunning)?;
        running.manageable(&name)?;
        if let Some(a) = self.awaiting.get(uuid) {
            return Err(CallError::OperationFailed(format!("guest '{name}' has not finished its {} yet", a.op)));
        }
        Ok((name, running))
    }

    /// Sends a command the helper does not answer (its effect arrives as an
    /// event); `hard_reset` makes a guest that resets come back regardless
    /// of `on_reboot`.
    pub fn request(
        &mut self,
        uuid: &[u8; 16],
        command: HelperCommand,
        hard_reset: bool,
    ) -> Result<(String, i32), CallError> {
        let (name, running) = self.idle_guest(uuid)?;
        running.channel.send(&command, &[]).map_err(|e| CallError::OperationFailed(format!("guest helper: {e}")))?;
        let pid = running.pid.as_raw();
        if hard_reset {
            self.resetting.insert(*uuid);
        }
        Ok((name, pid))
    }

    /// Sends `command` to the helper of guest `uuid`; its answer (`wait`)
    /// settles the call through the event loop.
    fn ask(
        &mut self,
        uuid: &[u8; 16],
        command: HelperCommand,
        wait: Wait,
        op: &'static str,
        caller: &Caller,
    ) -> Result<(), CallError> {
        let (name, running) = self.idle_guest(uuid)?;
        running
            .channel
            .send(&command, &[])
            .map_err(|e| CallError::OperationFailed(format!("guest '{name}' did not answer: {e}")))?;
        let pid = running.pid.as_raw();
        self.expect(uuid, wait, op, Asker::of(caller), pid);
        Ok(())
    }

    /// `virDomainSuspend` / `virDomainResume`.
    fn pause(&mut self, uuid: &[u8; 16], resume: bool, caller: &Caller) -> Result<(), CallError> {
        if resume && self.domains.by_uuid(uuid)?.state.0 != STATE_PAUSED {
            return Err(CallError::OperationInvalid("domain is already running".into()));
        }
        match resume {
            true => self.ask(uuid, HelperCommand::Resume, Wait::Resumed, "resume", caller),
            false => self.ask(uuid, HelperCommand::Pause, Wait::Paused, "suspend", caller),
        }
    }

    /// The helper paused (or resumed) guest `uuid`: record it and tell clients.
    pub fn paused(&mut self, uuid: &[u8; 16], resumed: bool) {
        let Ok(entry) = self.domains.by_uuid(uuid) else { return };
        let (Some(id), Some(pid)) = (entry.id, entry.pid) else { return };
        let was_paused = entry.state.0 == STATE_PAUSED;
        if was_paused != resumed {
            return;
        }
        let (state, kind) =
            if resumed { (RUNNING_UNPAUSED, event::RESUMED) } else { ((STATE_PAUSED, PAUSED_USER), event::SUSPENDED) };
        self.domains.set_running(uuid, id, pid, state);
        if let Ok(dom) = self.domains.by_uuid(uuid).map(|e| e.handle()) {
            self.emit(dom, kind, 0);
        }
        self.record(uuid);
    }

    /// Stops guest `uuid` at once: the helper holds nothing that needs a
    /// clean exit, so it is killed without waiting (whatever else it was
    /// asked fails). Returns the helper's pid.
    pub fn destroy(&mut self, uuid: &[u8; 16]) -> Result<i32, CallError> {
        let mut running = self.guests.remove(uuid).ok_or(CallError::NotRunning)?;
        running.kill();
        running.remove_cgroup();
        let dom = self.domains.by_uuid(uuid).map(|e| e.stopped_handle());
        self.unrecord(uuid);
        self.domains.set_shutoff(uuid, SHUTOFF_DESTROYED);
        if let Ok(dom) = dom {
            self.emit(dom, event::STOPPED, 1);
        }
        Ok(running.pid.as_raw())
    }
}

/// One client's call, with who made it and how it is connected.
pub struct Caller<'a> {
    /// Frontend connection number.
    pub conn: u64,
    /// Identity.
    pub peer: &'a PeerIdentity,
    /// Read-only connection.
    pub readonly: bool,
    /// The frontend request carrying the call: a call that waits for its
    /// helper ([`Awaiting`]) is answered to it later.
    pub request: u32,
}

/// Carries out `call` for `caller`; a failure's texts are clipped
/// ([`CallError::clipped`]), as they may quote the client's arguments.
pub fn handle(ctx: &mut Ctx, auditor: &mut Auditor, caller: &Caller, call: Call) -> Result<CallValue, CallError> {
    carry_out(ctx, auditor, caller, call).map_err(CallError::clipped)
}

fn carry_out(ctx: &mut Ctx, auditor: &mut Auditor, caller: &Caller, call: Call) -> Result<CallValue, CallError> {
    if call.mutates() && caller.readonly {
        let api = api_of(&call);
        audit(auditor, caller, op_of(&call), &[("reason", Value::Text("read-only"))], false);
        return Err(CallError::ReadOnly(api.into()));
    }
    match call {
        Call::GetHostname => host::hostname().map(CallValue::Text),
        Call::GetCapabilities => host::capabilities(&ctx.host_uuid).map(CallValue::Text),
        Call::GetDomainCapabilities { emulator, arch, machine, virttype, flags } => {
            let asked = host::DomainCapabilitiesQuery {
                emulator: emulator.as_deref(),
                arch: arch.as_deref(),
                machine: machine.as_deref(),
                virttype: virttype.as_deref(),
            };
            host::domain_capabilities(&asked, flags).map(CallValue::Text)
        }
        Call::NodeGetInfo => host::node_info().map(|n| CallValue::NodeInfo(n.to_wire())),
        Call::NodeGetFreeMemory => host::free_memory().map(|m| CallValue::Int(m as i64)),
        Call::NodeGetCellsFreeMemory { start, max } => host::cells_free_memory(start, max).map(CallValue::U64s),
        Call::GetMaxVcpus { kind } => host::max_vcpus(kind.as_deref()).map(|n| CallValue::Int(n.into())),
        Call::GetSysinfo { flags } => host::sysinfo(flags).map(CallValue::Text),
        Call::NodeCpuStats { cpu, nparams, flags } => {
            hoststats::node_cpu_stats(cpu, nparams, flags).map(|(params, count)| CallValue::NodeStats { params, count })
        }
        Call::NodeMemoryStats { cell, nparams, flags } => hoststats::node_memory_stats(cell, nparams, flags)
            .map(|(params, count)| CallValue::NodeStats { params, count }),
        Call::NodeCpuMap { map, online, flags } => hoststats::cpu_map(map, online, flags)
            .map(|(map, online, present)| CallValue::CpuMap { map, online, present }),
        Call::DomainStats { doms, stats: groups, flags } => stats::domain_stats(ctx, &doms, groups, flags),
        Call::BlockStats { uuid, path, params } => stats::block_stats(ctx.domains.by_uuid(&uuid)?, &path, params),
        Call::InterfaceStats { uuid, device } => stats::interface_stats(ctx.domains.by_uuid(&uuid)?, &device),
        Call::ListAll { flags, need_results } => {
            let list = ctx.domains.list(flags)?;
            let count = list.len() as u32;
            Ok(CallValue::Domains { list: if need_results { list } else { Vec::new() }, count })
        }
        Call::NumOfDomains => Ok(CallValue::Int(ctx.domains.list(1)?.len() as i64)),
        Call::ListDomainIds { max } => {
            let ids = ctx.domains.list(1)?.into_iter().map(|h| h.id).take(bound(max)?).collect();
            Ok(CallValue::Ints(ids))
        }
        Call::NumOfDefined => Ok(CallValue::Int(ctx.domains.list(2 | 4)?.len() as i64)),
        Call::ListDefinedNames { max } => {
            let names = ctx.domains.list(2 | 4)?.into_iter().map(|h| h.name).take(bound(max)?).collect();
            Ok(CallValue::Texts(names))
        }
        Call::LookupById(id) => ctx.domains.by_id(id).map(|e| CallValue::Domain(e.handle())),
        Call::LookupByName(name) => ctx.domains.by_name(&name).map(|e| CallValue::Domain(e.handle())),
        Call::LookupByUuid(uuid) => ctx.domains.by_uuid(&uuid).map(|e| CallValue::Domain(e.handle())),
        Call::Define { xml, flags } => {
            let result = ctx.domains.define(&xml, flags);
            match &result {
                Ok(d) => {
                    if !d.dropped.is_empty() {
                        log::warn!("domain '{}': ignored unknown XML {}", d.handle.name, d.dropped.join(", "));
                    }
                    let uuid = uuid_string(&d.handle.uuid);
                    let fields = [("vm", Value::Text(&d.handle.name)), ("uuid", Value::Text(&uuid))];
                    audit(auditor, caller, if d.updated { "redefine" } else { "define" }, &fields, true);
                    ctx.emit(d.handle.clone(), event::DEFINED, d.updated.into());
                }
                Err(e) => audit(auditor, caller, "define", &[("reason", Value::Text(&e.to_string()))], false),
            }
            result.map(|d| CallValue::Domain(d.handle))
        }
        Call::Undefine { uuid, flags } => {
            let handle = ctx.domains.by_uuid(&uuid).map(|e| e.handle());
            let result = ctx.domains.undefine(&uuid, flags);
            if result.is_ok() {
                ctx.restarts.forget(&uuid);
            }
            audit_change(auditor, caller, "undefine", &uuid, &result, &[]);
            if let (Ok(_), Ok(dom)) = (&result, handle) {
                ctx.emit(dom, event::UNDEFINED, 0);
            }
            result.map(|_| CallValue::Unit)
        }
        Call::SetAutostart { uuid, on } => {
            let result = ctx.domains.set_autostart(&uuid, on);
            audit_change(auditor, caller, "autostart", &uuid, &result, &[("on", Value::Num(on.into()))]);
            result.map(|_| CallValue::Unit)
        }
        Call::Query { uuid, query } => query_domain(ctx, &uuid, query, caller.readonly),
        Call::NodeFreePages { pages, start, count, flags } => {
            hostpages::free_pages(&pages, start, count, flags).map(CallValue::U64s)
        }
        Call::CpuModelNames { arch, flags } => host::cpu_model_names(&arch, flags).map(CallValue::Texts),
        Call::GetTime { uuid, flags } => agent::get_time(ctx.domains.by_uuid(&uuid)?, flags)
            .map(|(seconds, nseconds)| CallValue::Time { seconds, nseconds }),
        Call::GetMetadata { uuid, kind, uri, flags } => {
            let e = ctx.domains.by_uuid(&uuid)?;
            metadata::check_impact(e, flags, false)?;
            metadata::get(&e.def, kind, uri.as_deref()).map(CallValue::Text)
        }
        Call::SetTuning { uuid, kind, params, flags } => {
            let cgroup = ctx.guests.get(&uuid).and_then(|r| r.cgroup.as_ref());
            let result = ctx.domains.by_uuid(&uuid).and_then(|e| super::tuning::set(e, cgroup, kind, &params, flags));
            let result = result.and_then(|def| ctx.domains.replace_def(&uuid, def));
            let what = match kind {
                crate::privsep::TuneKind::Scheduler => "cputune",
                crate::privsep::TuneKind::Memory => "memtune",
                crate::privsep::TuneKind::Blkio => "blkiotune",
            };
            audit_change(auditor, caller, "tune", &uuid, &result, &[("what", Value::Text(what))]);
            result?;
            if ctx.guests.contains_key(&uuid) {
                ctx.record(&uuid);
            }
            Ok(CallValue::Unit)
        }
        Call::SetMemory { uuid, kib, flags } => {
            let result = ctx.domains.by_uuid(&uuid).and_then(|e| super::memsize::set(e, kib, flags));
            let result = result.and_then(|def| ctx.domains.replace_def(&uuid, def));
            let what = if flags & super::memsize::MEM_MAXIMUM != 0 { "maximum" } else { "current" };
            audit_change(auditor, caller, "memory", &uuid, &result, &[("what", Value::Text(what))]);
            result?;
            Ok(CallValue::Unit)
        }
        Call::Pin { uuid, vcpu, cpumap, flags } => {
            let cgroup = ctx.guests.get(&uuid).and_then(|r| r.cgroup.as_ref());
            let result = ctx.domains.by_uuid(&uuid).and_then(|e| super::tuning::pin(e, cgroup, vcpu, &cpumap, flags));
            let result = result.and_then(|def| ctx.domains.replace_def(&uuid, def));
            let what = if vcpu.is_some() { "vcpupin" } else { "emulatorpin" };
            audit_change(auditor, caller, "pin", &uuid, &result, &[("what", Value::Text(what))]);
            result?;
            if ctx.guests.contains_key(&uuid) {
                ctx.record(&uuid);
            }
            Ok(CallValue::Unit)
        }
        Call::SetMetadata { uuid, kind, value, key, uri, flags } => {
            let result = ctx.domains.by_uuid(&uuid).and_then(|e| {
                metadata::check_impact(e, flags, true)?;
                let def = metadata::set(&e.def, kind, value.as_deref(), key.as_deref(), uri.as_deref())?;
                Ok((e.handle(), def))
            });
            let result = result.and_then(|(dom, def)| ctx.domains.replace_def(&uuid, def).map(|name| (dom, name)));
            let named = result.as_ref().map(|(_, n)| n.clone()).map_err(Clone::clone);
            audit_change(auditor, caller, "metadata", &uuid, &named, &[("type", Value::Num(kind.into()))]);
            let (dom, _) = result?;
            // A running guest's record carries its definition.
            if ctx.guests.contains_key(&uuid) {
                ctx.record(&uuid);
            }
            let uri = if kind == metadata::ELEMENT { uri } else { None };
            ctx.events.push(DomainEvent { dom, kind: EventKind::MetadataChange { kind, uri } });
            Ok(CallValue::Unit)
        }
        Call::Create { uuid, flags } => {
            // START_PAUSED (1); START_VALIDATE (16) is accepted: definitions are always validated.
            if flags & !(START_PAUSED | START_VALIDATE) != 0 {
                return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainCreateWithFlags".into() });
            }
            // Answered and audited when the helper has started the guest.
            let result = ctx.start(&uuid, None, flags & START_PAUSED != 0, "start", Asker::of(caller));
            if let Err(e) = &result {
                audit_change(auditor, caller, "start", &uuid, &Err(e.clone()), &[]);
            }
            result.map(CallValue::Domain)
        }
        Call::CreateXml { xml, flags } => {
            if flags & !(START_PAUSED | START_VALIDATE) != 0 {
                return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainCreateXML".into() });
            }
            let paused = flags & START_PAUSED != 0;
            let result = ctx.domains.add_transient(&xml, flags & START_VALIDATE != 0).and_then(|uuid| {
                ctx.start(&uuid, None, paused, "create", Asker::of(caller)).inspect_err(|_| ctx.domains.forget(&uuid))
            });
            // Success is answered and audited when the helper has started the guest.
            if let Err(e) = &result {
                audit(auditor, caller, "create", &[("reason", Value::Text(&e.to_string()))], false);
            }
            result.map(CallValue::Domain)
        }
        Call::Shutdown { uuid, flags } | Call::Reboot { uuid, flags } | Call::Reset { uuid, flags } => {
            let (op, command, function) = match call {
                Call::Shutdown { .. } => ("shutdown", HelperCommand::CtrlAltDel, "qemuDomainShutdownFlags"),
                Call::Reboot { .. } => ("reboot", HelperCommand::Reset, "qemuDomainReboot"),
                _ => ("reset", HelperCommand::Reset, "qemuDomainReset"),
            };
            // Only the default mode: the guest is asked through its i8042
            // (ctrl-alt-del) or reset; ACPI power button, agent, initctl,
            // signal and paravirt modes are not available.
            if flags != 0 {
                return Err(CallError::UnsupportedFlags { flags, function: function.into() });
            }
            let result = ctx.request(&uuid, command, op == "reset");
            let named = result.as_ref().map(|(n, _)| n.clone()).map_err(Clone::clone);
            let pid = result.as_ref().map_or(-1, |(_, p)| *p);
            audit_change(auditor, caller, op, &uuid, &named, &[("vm-pid", Value::Num(pid.into()))]);
            result.map(|_| CallValue::Unit)
        }
        Call::Suspend { uuid } | Call::Resume { uuid } => {
            let resume = matches!(call, Call::Resume { .. });
            // Answered and audited when the helper answers.
            let result = ctx.pause(&uuid, resume, caller);
            if let Err(e) = &result {
                audit_change(auditor, caller, op_of(&call), &uuid, &Err(e.clone()), &[]);
            }
            result.map(|()| CallValue::Unit)
        }
        Call::OpenConsole { uuid, flags } => {
            // FORCE (1) takes the console from its current client; SAFE (2)
            // is what we do anyway (one client at a time).
            if flags & !3 != 0 {
                return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainOpenConsole".into() });
            }
            let name = ctx.domains.by_uuid(&uuid)?.def.name.clone();
            // Its helper never got this daemon's end of a console.
            ctx.guests.get(&uuid).ok_or(CallError::NotRunning)?.manageable(&name)?;
            match ctx.consoles.get(&uuid) {
                Some(&owner) if owner != caller.conn && flags & 1 == 0 => {
                    return Err(CallError::OperationFailed("Active console session exists for this domain".into()));
                }
                Some(&owner) if owner != caller.conn => ctx.consoles_taken.push(uuid),
                _ => {}
            }
            ctx.consoles.insert(uuid, caller.conn);
            audit_change(auditor, caller, "console", &uuid, &Ok(name), &[]);
            Ok(CallValue::Console)
        }
        // The event loop hands these to the admin module, for admin-socket clients only.
        Call::Admin(_) => Err(CallError::Internal("an admin call outside the admin server".into())),
        Call::Destroy { uuid, flags } => {
            // GRACEFUL (1) never kills; REMOVE_LOGS (2) is accepted, there are no logs to remove.
            if flags & !3 != 0 {
                return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainDestroyFlags".into() });
            }
            if flags & DESTROY_GRACEFUL != 0 {
                // Answered and audited when the helper has stopped the guest.
                let result = ctx.ask(&uuid, HelperCommand::Stop, Wait::Stopped, "destroy", caller);
                if let Err(e) = &result {
                    audit_change(auditor, caller, "destroy", &uuid, &Err(e.clone()), &[]);
                }
                return result.map(|()| CallValue::Unit);
            }
            let name = ctx.domains.by_uuid(&uuid).map(|e| e.def.name.clone());
            let result = name.and_then(|n| ctx.destroy(&uuid).map(|pid| (n, pid)));
            let pid = result.as_ref().map_or(-1, |(_, p)| *p);
            let named = result.as_ref().map(|(n, _)| n.clone()).map_err(Clone::clone);
            audit_change(auditor, caller, "destroy", &uuid, &named, &[("vm-pid", Value::Num(pid.into()))]);
            result.map(|_| CallValue::Unit)
        }
    }
}

fn bound(max: i32) -> Result<usize, CallError> {
    if !(0..=LIST_MAX).contains(&max) {
        return Err(CallError::InvalidArg(format!("count {max} out of range 0-{LIST_MAX}")));
    }
    Ok(max as usize)
}

fn no_flags(flags: u32, function: &str) -> Result<(), CallError> {
    if flags != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: function.into() });
    }
    Ok(())
}

fn query_domain(ctx: &Ctx, uuid: &[u8; 16], query: Query, readonly: bool) -> Result<CallValue, CallError> {
    let e = ctx.domains.by_uuid(uuid)?;
    let cgroup = ctx.guests.get(uuid).and_then(|r| r.cgroup.as_ref());
    Ok(match query {
        Query::Info => CallValue::DomainInfo(e.info()),
        Query::State { flags } => {
            no_flags(flags, "qemuDomainGetState")?;
            CallValue::State { state: e.state.0, reason: e.state.1 }
        }
        Query::IsActive => CallValue::Int(e.id.is_some().into()),
        Query::IsPersistent => CallValue::Int(e.persistent.into()),
        Query::IsUpdated => CallValue::Int(0),
        Query::OsType => CallValue::Text("hvm".into()),
        Query::MaxMemory => CallValue::Int(e.def.memory_kib as i64),
        Query::MaxVcpus => CallValue::Int(e.def.vcpus.into()),
        Query::Autostart => CallValue::Int(e.autostart.into()),
        Query::HasManagedSave { flags } => {
            no_flags(flags, "qemuDomainHasManagedSaveImage")?;
            CallValue::Int(0)
        }
        Query::SecurityLabel => CallValue::Label { label: String::new(), enforcing: false },
        Query::Messages { flags } => {
            if flags & !3 != 0 {
                return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainGetMessages".into() });
            }
            CallValue::Texts(Vec::new())
        }
        Query::SnapshotNum { flags } => {
            if flags & !0x7ff != 0 {
                return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainSnapshotNum".into() });
            }
            CallValue::Int(0)
        }
        Query::XmlDesc { flags } => {
            // SECURE | INACTIVE | UPDATE_CPU | MIGRATABLE; SECURE and
            // MIGRATABLE would reveal secrets, so a read-only caller cannot.
            if flags & !0xf != 0 {
                return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainGetXMLDesc".into() });
            }
            if readonly && flags & (1 | 8) != 0 {
                return Err(CallError::ReadOnly("virDomainGetXMLDesc with secure flag".into()));
            }
            CallValue::Text(e.def.to_xml())
        }
        Query::Vcpus { maxinfo, maplen } => stats::vcpus(e, maxinfo, maplen)?,
        Query::VcpusFlags { flags } => {
            // VIR_DOMAIN_VCPU_GUEST asks the guest agent: a change, not a read.
            if readonly && flags & 8 != 0 {
                return Err(CallError::ReadOnly("virDomainGetVcpusFlags".into()));
            }
            stats::vcpus_flags(e, flags)?
        }
        Query::VcpuPinInfo { ncpumaps, maplen, flags } => stats::vcpu_pin_info(e, ncpumaps, maplen, flags)?,
        Query::MemoryStats { max, flags } => stats::memory_stats(e, max, flags)?,
        Query::CpuStats { nparams, start_cpu, ncpus, flags } => stats::cpu_stats(e, nparams, start_cpu, ncpus, flags)?,
        Query::ControlInfo { flags } => stats::control_info(ctx, e, flags)?,
        Query::JobInfo => stats::job_info(e)?,
        Query::SchedulerType => {
            let (kind, nparams) = sched::scheduler_type(e, cgroup)?;
            CallValue::SchedulerType { kind, nparams }
        }
        Query::SchedulerParams { nparams, flags } => {
            let params = sched::scheduler_params(e, cgroup, nparams, flags)?;
            CallValue::Params { count: params.len() as i32, params }
        }
        Query::TuningParams { kind, nparams, flags } => {
            let all = super::tuning::params(e, cgroup, kind, nparams, flags)?;
            // Asked with no room: how many there are.
            match nparams {
                0 => CallValue::Params { count: all.len() as i32, params: Vec::new() },
                _ => CallValue::Params { count: all.len() as i32, params: all },
            }
        }
        Query::EmulatorPinInfo { maplen, flags } => {
            CallValue::PinInfo { cpumaps: super::tuning::emulator_pin_info(e, maplen, flags)?, num: 1 }
        }
        Query::JobStats { flags } => stats::job_stats(e, flags)?,
    })
}

fn api_of(call: &Call) -> &'static str {
    match call {
        Call::Define { flags: 0, .. } => "virDomainDefineXML",
        Call::Define { .. } => "virDomainDefineXMLFlags",
        Call::Undefine { .. } => "virDomainUndefineFlags",
        Call::Create { flags: 0, .. } => "virDomainCreate",
        Call::Create { .. } => "virDomainCreateWithFlags",
        Call::CreateXml { .. } => "virDomainCreateXML",
        Call::Destroy { flags: 0, .. } => "virDomainDestroy",
        Call::Shutdown { flags: 0, .. } => "virDomainShutdown",
        Call::Shutdown { .. } => "virDomainShutdownFlags",
        Call::Reboot { .. } => "virDomainReboot",
        Call::Reset { .. } => "virDomainReset",
        Call::Suspend { .. } => "virDomainSuspend",
        Call::Resume { .. } => "virDomainResume",
        Call::OpenConsole { .. } => "virDomainOpenConsole",
        Call::Destroy { .. } => "virDomainDestroyFlags",
        Call::SetAutostart { .. } => "virDomainSetAutostart",
        Call::SetMetadata { .. } => "virDomainSetMetadata",
        Call::SetTuning { .. } => "virDomainSetParameters",
        Call::SetMemory { .. } => "virDomainSetMemoryFlags",
        Call::Pin { vcpu: Some(_), .. } => "virDomainPinVcpuFlags",
        Call::Pin { vcpu: None, .. } => "virDomainPinEmulator",
        Call::GetTime { .. } => "virDomainGetTime",
        Call::GetDomainCapabilities { .. } => "virConnectGetDomainCapabilities",
        _ => "this call",
    }
}

fn op_of(call: &Call) -> &'static str {
    match call {
        Call::Define { .. } => "define",
        Call::Undefine { .. } => "undefine",
        Call::SetAutostart { .. } => "autostart",
        Call::SetMetadata { .. } => "metadata",
        Call::SetTuning { .. } => "tune",
        Call::SetMemory { .. } => "memory",
        Call::Pin { .. } => "pin",
        Call::GetTime { .. } => "gettime",
        Call::Create { .. } => "start",
        Call::CreateXml { .. } => "create",
        Call::Destroy { .. } => "destroy",
        Call::Shutdown { .. } => "shutdown",
        Call::Reboot { .. } => "reboot",
        Call::Reset { .. } => "reset",
        Call::Suspend { .. } => "suspend",
        Call::Resume { .. } => "resume",
        Call::OpenConsole { .. } => "console",
        Call::GetDomainCapabilities { .. } => "domcapabilities",
        _ => "call",
    }
}

/// Audits what the daemon did to or saw of a guest by itself, with no
/// client asking: the guest's name, uuid and helper pid, and why.
pub fn audit_guest(
    auditor: &mut Auditor,
    op: &str,
    (name, uuid): (&str, &[u8; 16]),
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
pub fn audit_awaited(auditor: &mut Auditor, uuid: &[u8; 16], a: &Awaiting, result: &Result<(), CallError>) {
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
fn audit_change(
    auditor: &mut Auditor,
    caller: &Caller,
    op: &str,
    uuid: &[u8; 16],
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

fn audit(auditor: &mut Auditor, caller: &Caller, op: &str, extra: &[(&str, Value<'_>)], ok: bool) {
    let mut fields = client_fields(caller.conn, caller.peer);
    fields.extend(extra.iter().cloned());
    auditor.record(op, &fields, ok);
}
