//! The state read-only calls need, as the broker publishes it to the
//! frontends so that they answer those calls without a round trip: the
//! domain table (names, UUIDs, ids, states, persistence, autostart).
//!
//! The broker is the only writer: it sends the whole table again whenever it
//! changed, before the reply to the call that changed it and before the
//! event that announces it, so a client that saw either finds the change in
//! every frontend's copy. Tables are small (a few dozen bytes per domain).

use serde::{Deserialize, Serialize};

use super::{CallError, DomainRef};

/// `virConnectListAllDomainsFlags` bits.
pub mod list {
    pub const ACTIVE: u32 = 1;
    pub const INACTIVE: u32 = 2;
    pub const PERSISTENT: u32 = 4;
    pub const TRANSIENT: u32 = 8;
    pub const RUNNING: u32 = 16;
    pub const PAUSED: u32 = 32;
    pub const SHUTOFF: u32 = 64;
    pub const OTHER: u32 = 128;
    pub const MANAGEDSAVE: u32 = 256;
    pub const NO_MANAGEDSAVE: u32 = 512;
    pub const AUTOSTART: u32 = 1024;
    pub const NO_AUTOSTART: u32 = 2048;
    pub const HAS_SNAPSHOT: u32 = 4096;
    pub const NO_SNAPSHOT: u32 = 8192;
    pub const HAS_CHECKPOINT: u32 = 16384;
    pub const NO_CHECKPOINT: u32 = 32768;
    pub const ALL: u32 = 65535;
}

/// `virDomainState` values the list filter names.
const RUNNING: i32 = 1;
const PAUSED: i32 = 3;
const SHUTOFF: i32 = 5;

/// One domain as read-only calls see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRow {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: crate::domain::Uuid,
    /// Running id, -1 while inactive.
    pub id: i32,
    /// `virDomainState` and reason.
    pub state: (i32, i32),
    /// Defined, as opposed to transient.
    pub persistent: bool,
    /// Starts with the daemon.
    pub autostart: bool,
}

impl DomainRow {
    /// The handle clients get.
    pub fn handle(&self) -> DomainRef {
        DomainRef { name: self.name.clone(), uuid: self.uuid, id: self.id }
    }

    /// Whether `virConnectListAllDomains` with `flags` lists it.
    pub fn matches(&self, flags: u32) -> bool {
        listed(flags, self.id >= 0, self.state.0, self.persistent, self.autostart)
    }
}

/// Whether `virConnectListAllDomains` with `flags` lists a domain: each group
/// of flags (active, persistent, state, managed save, autostart, snapshot,
/// checkpoint) filters only when one of its flags is given.
pub fn listed(flags: u32, active: bool, state: i32, persistent: bool, autostart: bool) -> bool {
    let group =
        |yes: u32, no: u32, is: bool| flags & (yes | no) == 0 || (is && flags & yes != 0) || (!is && flags & no != 0);
    let state_bits = list::RUNNING | list::PAUSED | list::SHUTOFF | list::OTHER;
    let state_ok = flags & state_bits == 0
        || (state == RUNNING && flags & list::RUNNING != 0)
        || (state == PAUSED && flags & list::PAUSED != 0)
        || (state == SHUTOFF && flags & list::SHUTOFF != 0)
        || (![RUNNING, PAUSED, SHUTOFF].contains(&state) && flags & list::OTHER != 0);
    group(list::ACTIVE, list::INACTIVE, active)
        && group(list::PERSISTENT, list::TRANSIENT, persistent)
        && state_ok
        && group(list::MANAGEDSAVE, list::NO_MANAGEDSAVE, false)
        && group(list::AUTOSTART, list::NO_AUTOSTART, autostart)
        && group(list::HAS_SNAPSHOT, list::NO_SNAPSHOT, false)
        && group(list::HAS_CHECKPOINT, list::NO_CHECKPOINT, false)
}

/// The domain table, in the broker's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainTable {
    /// Every domain.
    pub rows: Vec<DomainRow>,
}

impl DomainTable {
    /// `virConnectListAllDomains`.
    pub fn list(&self, flags: u32) -> Result<Vec<DomainRef>, CallError> {
        if flags & !list::ALL != 0 {
            return Err(CallError::UnsupportedFlags { flags, function: "virConnectListAllDomains".into() });
        }
        Ok(self.rows.iter().filter(|r| r.matches(flags)).map(DomainRow::handle).collect())
    }

    /// `virDomainLookupByName`.
    pub fn by_name(&self, name: &str) -> Result<&DomainRow, CallError> {
        self.rows.iter().find(|r| r.name == name).ok_or_else(|| CallError::NoDomainName(name.to_owned()))
    }

    /// `virDomainLookupByUUID`.
    pub fn by_uuid(&self, uuid: &crate::domain::Uuid) -> Result<&DomainRow, CallError> {
        self.rows
            .iter()
            .find(|r| &r.uuid == uuid)
            .ok_or_else(|| CallError::NoDomainUuid(crate::domain::uuid_string(uuid)))
    }

    /// `virDomainLookupByID`.
    pub fn by_id(&self, id: i32) -> Result<&DomainRow, CallError> {
        self.rows.iter().find(|r| r.id == id && id >= 0).ok_or(CallError::NoDomainId(id))
    }
}
