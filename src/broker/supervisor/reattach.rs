//! Finding the guests a previous broker left running, after a restart or
//! an upgrade.

use super::super::guests::{self, Reattached};
use super::super::lifecycle::{DomainState, PausedReason, RunningReason, ShutoffReason};
use super::super::state::Ctx;
use super::super::status;
use crate::domain::Uuid;

/// What re-attaching found of one guest, for the audit trail.
pub struct Reattachment {
    /// The domain's name.
    pub name: String,
    /// Its uuid.
    pub uuid: Uuid,
    /// The helper's pid (as recorded).
    pub pid: i32,
    /// It runs and this daemon manages it.
    pub running: bool,
    /// It runs, but its helper speaks another protocol: why.
    pub unmanageable: Option<String>,
}

impl Ctx {
    /// Re-attaches to the guests a previous broker left running; records of
    /// guests that are gone become shut-off domains (transient ones vanish).
    /// A guest whose helper speaks another protocol version stays running
    /// but unmanageable (see [`Reattached`]). Returns, for the audit trail,
    /// each guest's name, uuid, helper pid, whether it is managed and
    /// running, and why not when it runs unmanaged.
    pub fn reattach(&mut self) -> Vec<Reattachment> {
        let mut found = Vec::new();
        for (s, def) in status::load_all(&self.guests.launcher.state_dir) {
            let uuid = def.uuid;
            let name = def.name.clone();
            if self.domains.by_uuid(&uuid).is_err() {
                if s.persistent {
                    log::warn!("domain '{name}' runs but is no longer defined; keeping it as transient");
                }
                self.domains.insert_transient(def.clone());
            }
            self.guests.next_id = self.guests.next_id.max(s.id + 1);
            // A start the previous broker did not see through: the helper
            // that still answers went on to run its guest.
            let recorded = match s.state {
                DomainState::Paused(PausedReason::StartingUp) => DomainState::Running(RunningReason::Booted),
                other => other,
            };
            let mut seen = Reattachment { name: name.clone(), uuid, pid: s.pid, running: false, unmanageable: None };
            match self.guests.launcher.reattach(&def, s.id, s.pid, s.uid) {
                Reattached::Attached(mut running, paused) => {
                    running.nics = s.nics.clone();
                    running.clock = s.clock.unwrap_or(running.clock);
                    // Where the helper says otherwise, a pause or resume
                    // happened that the record missed.
                    let state = match (paused, recorded.is_paused()) {
                        (Some(true), false) => DomainState::Paused(PausedReason::User),
                        (Some(false), true) => DomainState::Running(RunningReason::Unpaused),
                        _ => recorded,
                    };
                    self.domains.set_running(&uuid, s.id, running.pid, state);
                    self.guests.insert(uuid, running);
                    log::info!("re-attached to domain '{name}' (id {}, helper pid {})", s.id, s.pid);
                    seen.running = true;
                }
                Reattached::Unmanageable(mut running, why) => {
                    running.nics = s.nics.clone();
                    running.clock = s.clock.unwrap_or(running.clock);
                    // Running, as far as anyone can tell; the record stays
                    // for a daemon that speaks its helper's version.
                    self.domains.set_running(&uuid, s.id, running.pid, recorded);
                    let e = guests::unmanageable(&name, running.pid, &why);
                    log::error!("domain '{name}' (id {}): {e}", s.id);
                    self.guests.insert(uuid, running);
                    seen.unmanageable = Some(format!("unmanageable: {why}"));
                }
                outcome => {
                    // A helper that is gone took its reason with it.
                    let reason = match outcome {
                        Reattached::Stopped(why) => ShutoffReason::from(why),
                        _ => ShutoffReason::Unknown,
                    };
                    log::info!("domain '{name}' stopped while the daemon was away");
                    super::super::nics::release(&s.nics);
                    status::remove(&self.guests.launcher.state_dir, &name);
                    self.domains.set_shutoff(&uuid, reason);
                }
            }
            found.push(seen);
        }
        found
    }
}
