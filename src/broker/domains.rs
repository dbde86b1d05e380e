//! The broker's table of domains: definitions, persistence flags, state.
//!
//! Names and UUIDs are unique. Every change to a persistent domain is written
//! to the [`Store`] before it is made visible, so what clients see is what a
//! restarted daemon will load.

use super::lifecycle::{DomainState, ShutoffReason};
use super::store::{Store, StoreError};
use crate::domain::{self, DomainDef, DomainError, uuid_string};
use crate::privsep::{CallError, DomainRef};
use crate::rpc::remote::DomainInfoRet;

use crate::privsep::replica::list;

/// `VIR_DOMAIN_DEFINE_VALIDATE`.
const DEFINE_VALIDATE: u32 = 1;
/// Undefine flags we accept: we keep no managed save, snapshot, NVRAM,
/// checkpoint or TPM state, so there is nothing extra to remove or keep.
const UNDEFINE_KNOWN: u32 = 1 | 2 | 4 | 8 | 16 | 32 | 64;

/// One domain.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its definition.
    pub def: DomainDef,
    /// Defined (has a file), as opposed to transient.
    pub persistent: bool,
    /// Starts with the daemon.
    pub autostart: bool,
    /// Running id; `None` while shut off.
    pub id: Option<i32>,
    /// The helper running it.
    pub pid: Option<nix::unistd::Pid>,
    /// Its state and why.
    pub state: DomainState,
}

/// `VIR_DOMAIN_AFFECT_LIVE`.
pub const AFFECT_LIVE: u32 = 1;
/// `VIR_DOMAIN_AFFECT_CONFIG`.
pub const AFFECT_CONFIG: u32 = 2;

impl Entry {
    /// Which definitions a call with `virDomainModificationImpact` `flags`
    /// works on, (live, config), checked as libvirt's `virDomainObjGetDefs`
    /// checks them: CURRENT is live for a running domain and config
    /// otherwise; live needs a running domain, config a persistent one.
    /// `one` is for getters, which read one definition only.
    pub fn impact(&self, flags: u32, one: bool) -> Result<(bool, bool), CallError> {
        if one && flags & (AFFECT_LIVE | AFFECT_CONFIG) == AFFECT_LIVE | AFFECT_CONFIG {
            return Err(CallError::InvalidArg(
                "Flags 'VIR_DOMAIN_AFFECT_LIVE' and 'VIR_DOMAIN_AFFECT_CONFIG' are mutually exclusive".into(),
            ));
        }
        let active = self.is_active();
        let flags = match flags & (AFFECT_LIVE | AFFECT_CONFIG) {
            0 if active => AFFECT_LIVE,
            0 => AFFECT_CONFIG,
            f => f,
        };
        if flags & AFFECT_LIVE != 0 && !active {
            return Err(CallError::NotRunning);
        }
        if flags & AFFECT_CONFIG != 0 && !self.persistent {
            return Err(CallError::OperationInvalid("transient domains do not have any persistent config".into()));
        }
        Ok((flags & AFFECT_LIVE != 0, flags & AFFECT_CONFIG != 0))
    }

    /// The handle clients get.
    pub fn handle(&self) -> DomainRef {
        DomainRef { name: self.def.name.clone(), uuid: self.def.uuid, id: self.id.unwrap_or(-1) }
    }

    /// The handle a stop event carries: the domain no longer has an id.
    pub fn stopped_handle(&self) -> DomainRef {
        DomainRef { id: -1, ..self.handle() }
    }

    /// `virDomainGetInfo`.
    pub fn info(&self) -> DomainInfoRet {
        DomainInfoRet {
            state: self.state.code() as u8,
            max_mem: self.def.memory_kib,
            memory: self.def.current_memory_kib,
            nr_virt_cpu: self.def.vcpus as u16,
            cpu_time: self.pid.map_or(0, super::guests::cpu_time_ns),
        }
    }

    fn is_active(&self) -> bool {
        self.id.is_some()
    }

    fn matches(&self, flags: u32) -> bool {
        crate::privsep::replica::listed(
            flags,
            self.is_active(),
            self.state.to_libvirt().0,
            self.persistent,
            self.autostart,
        )
    }
}

/// Maps XML failures to the typed errors clients see.
impl From<DomainError> for CallError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Syntax { line, detail } => CallError::XmlSyntax { line, detail },
            DomainError::TooLarge(_) | DomainError::TooDeep(_) | DomainError::Invalid(_) => {
                CallError::XmlInvalid(e.to_string())
            }
            DomainError::Unsupported(m) => CallError::ConfigUnsupported(m),
            DomainError::Schema { .. } => CallError::XmlSchema(e.to_string()),
        }
    }
}

fn store_err(e: StoreError) -> CallError {
    CallError::OperationFailed(e.to_string())
}

/// All domains.
pub struct Domains {
    store: Store,
    entries: Vec<Entry>,
}

/// What a successful define did.
pub struct Defined {
    /// The domain's handle.
    pub handle: DomainRef,
    /// Elements dropped from the XML (unknown to us).
    pub dropped: Vec<String>,
    /// Whether it replaced an existing definition.
    pub updated: bool,
}

impl Domains {
    /// Loads every stored definition.
    pub fn load(store: Store) -> Domains {
        let mut entries: Vec<Entry> = Vec::new();
        for s in store.load_all() {
            if entries.iter().any(|e| e.def.uuid == s.def.uuid || e.def.name == s.def.name) {
                log::error!("skipping domain '{}': its name or UUID is already taken", s.def.name);
                continue;
            }
            entries.push(Entry {
                def: s.def,
                persistent: true,
                autostart: s.autostart,
                id: None,
                pid: None,
                state: DomainState::DEFINED,
            });
        }
        log::info!("loaded {} domain definition(s)", entries.len());
        Domains { store, entries }
    }

    /// By UUID, or the libvirt "no domain" error.
    pub fn by_uuid(&self, uuid: &crate::domain::Uuid) -> Result<&Entry, CallError> {
        self.entries.iter().find(|e| &e.def.uuid == uuid).ok_or_else(|| CallError::NoDomainUuid(uuid_string(uuid)))
    }

    /// Every domain, in table order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// By name.
    pub fn by_name(&self, name: &str) -> Result<&Entry, CallError> {
        self.entries.iter().find(|e| e.def.name == name).ok_or_else(|| CallError::NoDomainName(name.to_owned()))
    }

    /// By running id.
    pub fn by_id(&self, id: i32) -> Result<&Entry, CallError> {
        self.entries.iter().find(|e| e.id == Some(id)).ok_or(CallError::NoDomainId(id))
    }

    /// `virConnectListAllDomains`.
    pub fn list(&self, flags: u32) -> Result<Vec<DomainRef>, CallError> {
        if flags & !list::ALL != 0 {
            return Err(CallError::UnsupportedFlags { flags, function: "virConnectListAllDomains".into() });
        }
        Ok(self.entries.iter().filter(|e| e.matches(flags)).map(Entry::handle).collect())
    }

    /// `virDomainDefineXMLFlags`: new, or an update of the same name and UUID.
    pub fn define(&mut self, xml: &str, flags: u32) -> Result<Defined, CallError> {
        if flags & !DEFINE_VALIDATE != 0 {
            return Err(CallError::UnsupportedFlags { flags, function: "domainDefineXMLFlags".into() });
        }
        let validate = flags & DEFINE_VALIDATE != 0;
        let (mut def, mut dropped) = domain::parse(xml, validate)?;
        // A redefine keeps the PCI slots its disks had (domain/pci.rs).
        if let Some(old) = self.entries.iter().find(|e| e.def.name == def.name && !e.def.disks.is_empty()) {
            (def, dropped) = domain::parse_with(xml, validate, Some(&old.def))?;
        }
        let by_name = self.slot_for(&def)?;
        self.store.save(&def).map_err(store_err)?;
        let updated = by_name.is_some();
        let entry = match by_name {
            Some(i) => {
                let e = &mut self.entries[i];
                e.def = def;
                e.persistent = true;
                e
            }
            None => {
                self.entries.push(Entry {
                    def,
                    persistent: true,
                    autostart: false,
                    id: None,
                    pid: None,
                    state: DomainState::DEFINED,
                });
                self.entries.last_mut().ok_or_else(|| CallError::Internal("domain table".into()))?
            }
        };
        Ok(Defined { handle: entry.handle(), dropped, updated })
    }

    /// Where a new definition goes: `None` for a new domain, or the entry
    /// with the same name and UUID it replaces. A name or UUID that belongs
    /// to another domain is refused, so both stay unique.
    fn slot_for(&self, def: &DomainDef) -> Result<Option<usize>, CallError> {
        let by_name = self.entries.iter().position(|e| e.def.name == def.name);
        let by_uuid = self.entries.iter().position(|e| e.def.uuid == def.uuid);
        match (by_name, by_uuid) {
            (Some(n), u) if u != Some(n) => {
                let other = &self.entries[n].def;
                Err(CallError::NameTaken { name: other.name.clone(), uuid: uuid_string(&other.uuid) })
            }
            (None, Some(u)) => {
                let other = &self.entries[u].def;
                Err(CallError::UuidTaken { name: other.name.clone(), uuid: uuid_string(&other.uuid) })
            }
            (by_name, _) => Ok(by_name),
        }
    }

    /// `virDomainCreateXML`: a transient domain, forgotten when it stops.
    /// Returns its UUID; the caller starts it (and calls `forget` if that fails).
    pub fn add_transient(&mut self, xml: &str, validate: bool) -> Result<crate::domain::Uuid, CallError> {
        let (def, _) = domain::parse(xml, validate)?;
        if let Some(i) = self.slot_for(&def)? {
            let e = &self.entries[i];
            return Err(if e.id.is_some() {
                CallError::NameTaken { name: e.def.name.clone(), uuid: uuid_string(&e.def.uuid) }
            } else {
                CallError::OperationInvalid(format!("domain '{}' is defined: start it instead", e.def.name))
            });
        }
        Ok(self.insert_transient(def))
    }

    /// Adds a transient domain without checks (a re-attached one whose
    /// definition only its run-state record holds).
    pub fn insert_transient(&mut self, def: DomainDef) -> crate::domain::Uuid {
        let uuid = def.uuid;
        self.entries.push(Entry {
            def,
            persistent: false,
            autostart: false,
            id: None,
            pid: None,
            state: DomainState::DEFINED,
        });
        uuid
    }

    /// Domains marked autostart and not running.
    pub fn autostart_pending(&self) -> Vec<crate::domain::Uuid> {
        self.entries.iter().filter(|e| e.autostart && e.id.is_none()).map(|e| e.def.uuid).collect()
    }

    /// Drops a transient domain that never ran.
    pub fn forget(&mut self, uuid: &crate::domain::Uuid) {
        self.entries.retain(|e| e.persistent || &e.def.uuid != uuid || e.id.is_some());
    }

    /// `virDomainUndefineFlags`. A running persistent domain becomes transient.
    pub fn undefine(&mut self, uuid: &crate::domain::Uuid, flags: u32) -> Result<String, CallError> {
        if flags & !UNDEFINE_KNOWN != 0 {
            return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainUndefineFlags".into() });
        }
        let i = self
            .entries
            .iter()
            .position(|e| &e.def.uuid == uuid)
            .ok_or_else(|| CallError::NoDomainUuid(uuid_string(uuid)))?;
        if !self.entries[i].persistent {
            return Err(CallError::OperationInvalid("cannot undefine transient domain".into()));
        }
        let name = self.entries[i].def.name.clone();
        self.store.remove(&name).map_err(store_err)?;
        if self.entries[i].is_active() {
            let e = &mut self.entries[i];
            e.persistent = false;
            e.autostart = false;
        } else {
            self.entries.remove(i);
        }
        Ok(name)
    }

    /// Marks the domain running as `id` in helper `pid` (state and reason).
    pub fn set_running(&mut self, uuid: &crate::domain::Uuid, id: i32, pid: nix::unistd::Pid, state: DomainState) {
        if let Some(e) = self.entries.iter_mut().find(|e| &e.def.uuid == uuid) {
            e.id = Some(id);
            e.pid = Some(pid);
            e.state = state;
        }
    }

    /// Marks the domain shut off for `reason`; a transient one is forgotten.
    pub fn set_shutoff(&mut self, uuid: &crate::domain::Uuid, reason: ShutoffReason) {
        self.stop(uuid, reason, false);
    }

    /// A guest stopped and is about to start again (a reboot, or an
    /// `on_*` action of `restart`): shut off, but kept even when transient,
    /// so that it comes back under the same name and UUID. If the restart
    /// fails, [`Domains::set_shutoff`] removes a transient one.
    pub fn set_restarting(&mut self, uuid: &crate::domain::Uuid, reason: ShutoffReason) {
        self.stop(uuid, reason, true);
    }

    fn stop(&mut self, uuid: &crate::domain::Uuid, reason: ShutoffReason, keep: bool) {
        if let Some(i) = self.entries.iter().position(|e| &e.def.uuid == uuid) {
            if !self.entries[i].persistent && !keep {
                self.entries.remove(i);
                return;
            }
            let e = &mut self.entries[i];
            e.id = None;
            e.pid = None;
            e.state = DomainState::Shutoff(reason);
        }
    }

    /// Replaces domain `uuid`'s definition with `def` (same name and UUID,
    /// already validated), storing it first if the domain is persistent, so
    /// that memory and disk never disagree. Returns its name.
    pub fn replace_def(&mut self, uuid: &crate::domain::Uuid, def: DomainDef) -> Result<String, CallError> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| &e.def.uuid == uuid)
            .ok_or_else(|| CallError::NoDomainUuid(uuid_string(uuid)))?;
        if def.uuid != e.def.uuid || def.name != e.def.name {
            return Err(CallError::Internal("a replaced definition must keep its name and uuid".into()));
        }
        if e.persistent {
            self.store.save(&def).map_err(store_err)?;
        }
        e.def = def;
        Ok(e.def.name.clone())
    }

    /// `virDomainSetAutostart`.
    pub fn set_autostart(&mut self, uuid: &crate::domain::Uuid, on: bool) -> Result<String, CallError> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| &e.def.uuid == uuid)
            .ok_or_else(|| CallError::NoDomainUuid(uuid_string(uuid)))?;
        if !e.persistent {
            return Err(CallError::OperationInvalid("cannot set autostart for transient domain".into()));
        }
        self.store.set_autostart(&e.def.name, on).map_err(store_err)?;
        e.autostart = on;
        Ok(e.def.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(name: &str, uuid: Option<&str>) -> String {
        let uuid = uuid.map(|u| format!("<uuid>{u}</uuid>")).unwrap_or_default();
        format!(
            "<domain type='kvm'><name>{name}</name>{uuid}<memory unit='MiB'>64</memory>\
             <os><type>hvm</type><kernel>/k</kernel></os></domain>"
        )
    }

    const U1: &str = "11111111-2222-3333-4444-555555555555";
    const U2: &str = "21111111-2222-3333-4444-555555555555";

    fn table() -> (tempfile::TempDir, Domains) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, Domains::load(store))
    }

    #[test]
    fn definitions_persist_and_reload() {
        let (dir, mut d) = table();
        let h = d.define(&xml("a", Some(U1)), 0).unwrap().handle;
        d.set_autostart(&h.uuid, true).unwrap();
        let again = Domains::load(Store::open(dir.path()).unwrap());
        let e = again.by_name("a").unwrap();
        assert_eq!(e.def.uuid, h.uuid);
        assert!(e.autostart && e.persistent);
        assert_eq!(e.handle().id, -1);
    }

    #[test]
    fn names_and_uuids_are_unique_and_a_redefine_updates() {
        let (_dir, mut d) = table();
        d.define(&xml("a", Some(U1)), 0).unwrap();
        assert!(d.define(&xml("a", Some(U1)), 0).unwrap().updated);
        assert!(matches!(d.define(&xml("a", Some(U2)), 0), Err(CallError::NameTaken { .. })));
        assert!(matches!(d.define(&xml("a", None), 0), Err(CallError::NameTaken { .. })));
        assert!(matches!(d.define(&xml("b", Some(U1)), 0), Err(CallError::UuidTaken { .. })));
        assert_eq!(d.list(0).unwrap().len(), 1);
    }

    #[test]
    fn undefine_removes_file_and_entry() {
        let (dir, mut d) = table();
        let h = d.define(&xml("a", Some(U1)), 0).unwrap().handle;
        assert_eq!(d.undefine(&h.uuid, 0).unwrap(), "a");
        assert!(!dir.path().join("a.xml").exists());
        assert!(matches!(d.undefine(&h.uuid, 0), Err(CallError::NoDomainUuid(_))));
        assert!(matches!(d.undefine(&h.uuid, 1 << 20), Err(CallError::UnsupportedFlags { .. })));
    }

    #[test]
    fn a_corrupt_file_is_skipped_and_kept() {
        let (dir, mut d) = table();
        d.define(&xml("good", Some(U1)), 0).unwrap();
        std::fs::write(dir.path().join("bad.xml"), "<domain").unwrap();
        let again = Domains::load(Store::open(dir.path()).unwrap());
        assert_eq!(again.list(0).unwrap().len(), 1);
        assert!(dir.path().join("bad.xml").exists());
    }

    #[test]
    fn list_filters_follow_libvirt_groups() {
        let (_dir, mut d) = table();
        let a = d.define(&xml("a", Some(U1)), 0).unwrap().handle;
        d.define(&xml("b", Some(U2)), 0).unwrap();
        d.set_autostart(&a.uuid, true).unwrap();
        let names = |f| d.list(f).unwrap().into_iter().map(|h| h.name).collect::<Vec<_>>();
        assert_eq!(names(0).len(), 2);
        assert!(names(list::ACTIVE).is_empty());
        assert_eq!(names(list::ACTIVE | list::INACTIVE).len(), 2);
        assert_eq!(names(list::AUTOSTART), ["a"]);
        assert_eq!(names(list::NO_AUTOSTART), ["b"]);
        assert_eq!(names(list::SHUTOFF | list::PERSISTENT).len(), 2);
        assert!(names(list::TRANSIENT).is_empty());
    }
}
