//! The state the broker's calls work on: the domain table, the host's
//! identity, and the supervisor of the running guests.

use super::domains::Domains;
use super::supervisor::Supervisor;
use crate::domain::Uuid;
use crate::privsep::{DomainEvent, DomainRef, EventKind};

/// The state calls work on.
pub struct Ctx {
    /// The domain table.
    pub domains: Domains,
    /// Host UUID for capabilities.
    pub host_uuid: String,
    /// The running guests, their requests in flight, consoles and events.
    pub guests: Supervisor,
    /// Storage pools and volumes.
    pub storage: super::storage::Storage,
    /// The questions out to each running guest's helper, and who waits
    /// for their answers.
    pub helper_asks: super::helper_asks::Asks,
    /// The balloon figures running guests' helpers last reported.
    pub balloons: super::balloon::Balloons,
    /// Bulk statistics calls waiting for their guests' device counters.
    pub samples: super::sampling::Samples,
    /// Replies that wait for a stopped guest's helper to exit.
    pub exits: super::exits::Exits,
    /// The statistics snapshots published to the frontends.
    pub snapshots: super::snapshots::Snapshots,
    /// Virtual networks.
    pub networks: super::networks::Networks,
}

impl Ctx {
    /// Queues a lifecycle event for `dom`.
    pub fn emit(&mut self, dom: DomainRef, event: i32, detail: i32) {
        self.guests.events.push(DomainEvent { dom, kind: EventKind::Lifecycle { event, detail } });
    }

    /// Writes the run-state record of guest `uuid` (for a restarted broker).
    pub fn record(&self, uuid: &Uuid) {
        let (Ok(e), Some(r)) = (self.domains.by_uuid(uuid), self.guests.get(uuid)) else { return };
        let s = super::status::Status {
            id: r.id,
            pid: r.pid.as_raw(),
            uid: r.uid,
            state: e.state,
            persistent: e.persistent,
            nics: r.nics.clone(),
            clock: Some(r.clock),
        };
        if let Err(err) = super::status::save(&self.guests.launcher.state_dir, &e.def, &s) {
            log::error!("cannot record running domain '{}': {err}", e.def.name);
        }
    }

    /// Removes guest `uuid`'s run-state record.
    pub fn unrecord(&self, uuid: &Uuid) {
        if let Ok(e) = self.domains.by_uuid(uuid) {
            super::status::remove(&self.guests.launcher.state_dir, &e.def.name);
        }
    }
}
