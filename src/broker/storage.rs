//! libvirt's storage driver for directory pools: the pool table, its
//! persistence as libvirt lays it out (`storage/NAME.xml`,
//! `storage/autostart/NAME.xml` links, active pools in the run directory's
//! `storage/`), autostart, and every storage call (volumes in `volumes.rs`).
//!
//! A client's pool names, paths and XML are checked here again, whatever the
//! frontend did; every change is audited with the client's identity.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::audit::{Auditor, Value, client_fields};
use super::calls::{Answer, Caller};
use super::volumes::{self, Source};
use crate::privsep::storage::{
    PoolEvent, PoolInfo, PoolOp, PoolQuery, PoolRef, StorageCall, StorageError, StorageValue, VolOp, VolQuery, VolRef,
    pool_event,
};
use crate::privsep::{CallError, CallValue};
use crate::storage::pool::{Perms, PoolDef, PoolSizes, normalise};
use crate::storage::volume::VolRequest;

/// Most pools the daemon keeps.
const MAX_POOLS: usize = 4_096;
/// Most names returned by the legacy list calls.
const LIST_MAX: i32 = 16_384;
/// `virStoragePoolState`: INACTIVE, RUNNING.
const STATE_INACTIVE: i32 = 0;
const STATE_RUNNING: i32 = 2;
/// Mode of a directory pool-build creates without `<permissions>` (libvirt's 0711).
const DEFAULT_DIR_MODE: u32 = 0o711;

/// One pool.
struct Pool {
    def: PoolDef,
    /// A definition saved while the pool ran: it applies from the next start, as in libvirt.
    next: Option<PoolDef>,
    active: bool,
    persistent: bool,
    autostart: bool,
}

impl Pool {
    fn handle(&self) -> PoolRef {
        PoolRef { name: self.def.name.clone(), uuid: self.def.uuid }
    }
}

/// The storage driver's state.
pub struct Storage {
    /// Persistent definitions (`storage/`).
    config_dir: PathBuf,
    /// Records of active pools, so a restarted daemon knows them.
    state_dir: PathBuf,
    pools: BTreeMap<String, Pool>,
    /// Pool events for clients, sent by the event loop after each call.
    pub events: Vec<PoolEvent>,
    /// A volume's file opened for the stream the last call asked for; the
    /// event loop sends it with the reply, so its bytes never pass here.
    pub stream_fd: Option<OwnedFd>,
    /// Volume copies running in child processes, by pid, each with the
    /// client waiting for it.
    copies: BTreeMap<i32, Copying>,
}

/// Most volume copies running at once.
pub const MAX_COPIES: usize = 8;

/// A copy under way and who asked for it.
struct Copying {
    copy: volumes::PendingCopy,
    vol: VolRef,
    conn: u64,
    request: u32,
    peer: crate::privsep::PeerIdentity,
}

/// A copy that ended: the answer its client waits for.
pub struct CopyDone {
    /// The client's connection.
    pub conn: u64,
    /// Its request.
    pub request: u32,
    /// The answer.
    pub result: Result<CallValue, CallError>,
}

fn sys(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_owned();
    StorageError::System(format!("{what} '{}': {s}", path.display()))
}

fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<(), StorageError> {
    let tmp = dir.join(format!(".{name}.xml.new"));
    let path = dir.join(format!("{name}.xml"));
    super::atomic::write(&path, &tmp, text.as_bytes()).map_err(|e| sys(e.what, &e.path, e.source))?;
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// The definitions in `dir` that parse, with their file's stem; others are logged and skipped.
fn load_dir(dir: &Path) -> Vec<PoolDef> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten().take(MAX_POOLS) {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "xml") || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let parsed = super::store::read_bounded(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| PoolDef::parse(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(def) if path.file_stem().and_then(|s| s.to_str()) == Some(def.name.as_str()) => out.push(def),
            Ok(def) => log::error!("skipping pool definition {}: names pool '{}'", path.display(), def.name),
            Err(e) => log::error!("skipping pool definition {}: {e}", path.display()),
        }
    }
    out
}

fn no_pool_uuid(uuid: &[u8; 16], name: &str) -> StorageError {
    StorageError::NoPool(format!("no storage pool with matching uuid '{}' ({name})", uuid::Uuid::from_bytes(*uuid)))
}

fn not_active(name: &str) -> StorageError {
    StorageError::Invalid(format!("storage pool '{name}' is not active"))
}

fn flags_in(flags: u32, allowed: u32, function: &str) -> Result<(), StorageError> {
    if flags & !allowed != 0 {
        return Err(StorageError::Flags { flags, function: function.into() });
    }
    Ok(())
}

fn sizes(dir: &Path) -> PoolSizes {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            let frsize = s.fragment_size();
            PoolSizes {
                capacity: s.blocks().saturating_mul(frsize),
                allocation: s.blocks().saturating_sub(s.blocks_free()).saturating_mul(frsize),
                available: s.blocks_available().saturating_mul(frsize),
            }
        }
        Err(_) => PoolSizes::default(),
    }
}

impl Storage {
    /// Loads the pools under `config_dir` (and the active records in
    /// `state_dir`), then starts the autostart pools that are not active.
    pub fn load(config_dir: &Path, state_dir: &Path) -> Storage {
        for d in [config_dir.join("autostart"), state_dir.to_owned()] {
            if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d) {
                log::error!("cannot create {}: {e}", d.display());
            }
        }
        let mut s = Storage {
            config_dir: config_dir.to_owned(),
            state_dir: state_dir.to_owned(),
            pools: BTreeMap::new(),
            events: Vec::new(),
            stream_fd: None,
            copies: BTreeMap::new(),
        };
        for def in load_dir(config_dir) {
            let autostart = config_dir.join("autostart").join(format!("{}.xml", def.name)).symlink_metadata().is_ok();
            s.pools.insert(def.name.clone(), Pool { def, next: None, active: false, persistent: true, autostart });
        }
        // Active records: pools a previous daemon had running (transient ones too).
        for def in load_dir(state_dir) {
            let name = def.name.clone();
            let running = def.target.is_dir();
            match s.pools.get_mut(&name) {
                Some(p) if p.def.uuid == def.uuid => {
                    p.active = running;
                    // It ran with the recorded definition; a newer saved one waits for its next start.
                    if running && p.def != def {
                        p.next = Some(std::mem::replace(&mut p.def, def));
                    }
                }
                Some(_) => log::error!("ignoring the active record of pool '{name}': another pool has its name"),
                None if running => {
                    s.pools.insert(
                        name.clone(),
                        Pool { def, next: None, active: true, persistent: false, autostart: false },
                    );
                }
                None => {}
            }
            if !running {
                let _ = std::fs::remove_file(state_dir.join(format!("{name}.xml")));
            }
        }
        let pending: Vec<String> =
            s.pools.values().filter(|p| p.autostart && !p.active).map(|p| p.def.name.clone()).collect();
        for name in pending {
            match s.start(&name) {
                Ok(()) => log::info!("autostarted storage pool '{name}'"),
                Err(e) => log::error!("cannot autostart storage pool '{name}': {e}"),
            }
        }
        s.events.clear();
        s
    }

    fn by_uuid(&self, r: &PoolRef) -> Result<&Pool, StorageError> {
        self.pools.values().find(|p| p.def.uuid == r.uuid).ok_or_else(|| no_pool_uuid(&r.uuid, &r.name))
    }

    fn by_name(&self, name: &str) -> Result<&Pool, StorageError> {
        self.pools.get(name).ok_or_else(|| StorageError::NoPool(format!("no storage pool with matching name '{name}'")))
    }

    /// The active pool a volume handle names, and the volume's name.
    fn vol_pool(&self, v: &VolRef) -> Result<&Pool, StorageError> {
        let p = self.by_name(&v.pool)?;
        if !p.active {
            return Err(not_active(&p.def.name));
        }
        if !volumes::exists(&p.def.target, &v.name) {
            return Err(StorageError::NoVol(format!("no storage vol with matching name '{}'", v.name)));
        }
        Ok(p)
    }

    fn vol_ref(pool: &Pool, name: &str) -> VolRef {
        let key = pool.def.target.join(name).display().to_string();
        VolRef { pool: pool.def.name.clone(), name: name.to_owned(), key }
    }

    fn event(&mut self, pool: PoolRef, event: i32) {
        self.events.push(PoolEvent { pool, lifecycle: Some((event, 0)) });
    }

    fn save_state(&self, p: &Pool) -> Result<(), StorageError> {
        write_atomic(&self.state_dir, &p.def.name, &p.def.to_xml(None))
    }

    fn start(&mut self, name: &str) -> Result<(), StorageError> {
        let p = self.by_name(name)?;
        if p.active {
            return Err(StorageError::Invalid(format!("storage pool '{name}' is already active")));
        }
        let target = &p.def.target;
        std::fs::read_dir(target).map_err(|e| sys("cannot open directory", target, e))?;
        self.save_state(p)?;
        let handle = p.handle();
        if let Some(p) = self.pools.get_mut(name) {
            p.active = true;
        }
        self.event(handle, pool_event::STARTED);
        Ok(())
    }

    fn build(def: &PoolDef, flags: u32) -> Result<(), StorageError> {
        // NEW (0), NO_OVERWRITE (4), OVERWRITE (8): the same for a directory.
        flags_in(flags, 4 | 8, "virStorageBackendFileSystemBuild")?;
        if flags & 12 == 12 {
            return Err(StorageError::InvalidArg("overwrite and no_overwrite are mutually exclusive".into()));
        }
        let t = &def.target;
        let mode = def.perms.mode.unwrap_or(DEFAULT_DIR_MODE);
        std::fs::DirBuilder::new().recursive(true).mode(mode).create(t).map_err(|e| sys("cannot create path", t, e))?;
        if let Some(m) = def.perms.mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(t, std::fs::Permissions::from_mode(m))
                .map_err(|e| sys("cannot set mode of", t, e))?;
        }
        if def.perms.owner.is_some() || def.perms.group.is_some() {
            std::os::unix::fs::chown(t, def.perms.owner, def.perms.group).map_err(|e| sys("cannot chown", t, e))?;
        }
        Ok(())
    }

    /// Refuses a definition whose name, UUID or directory another pool holds.
    fn check_duplicate(&self, def: &PoolDef, creating: bool) -> Result<(), StorageError> {
        if let Some(p) = self.pools.get(&def.name) {
            if p.def.uuid != def.uuid {
                let u = uuid::Uuid::from_bytes(p.def.uuid);
                return Err(StorageError::Failed(format!("pool '{}' already exists with uuid {u}", def.name)));
            }
            if creating && p.active {
                return Err(StorageError::Failed(format!("pool is already active as '{}'", def.name)));
            }
        }
        if let Some(p) = self.pools.values().find(|p| p.def.uuid == def.uuid && p.def.name != def.name) {
            let u = uuid::Uuid::from_bytes(def.uuid);
            return Err(StorageError::Failed(format!("pool '{}' is already defined with uuid {u}", p.def.name)));
        }
        if let Some(p) = self.pools.values().find(|p| p.def.target == def.target && p.def.name != def.name) {
            return Err(StorageError::Failed(format!("Storage source conflict with pool: '{}'", p.def.name)));
        }
        if !self.pools.contains_key(&def.name) && self.pools.len() >= MAX_POOLS {
            return Err(StorageError::Failed(format!("too many storage pools (at most {MAX_POOLS})")));
        }
        Ok(())
    }

    fn define(&mut self, xml: &str, flags: u32) -> Result<PoolRef, StorageError> {
        // VIR_STORAGE_POOL_DEFINE_VALIDATE (1): the parser is the schema here.
        flags_in(flags, 1, "storagePoolDefineXML")?;
        let def = PoolDef::parse(xml)?;
        self.check_duplicate(&def, false)?;
        write_atomic(&self.config_dir, &def.name, &def.to_xml(None))?;
        let handle = PoolRef { name: def.name.clone(), uuid: def.uuid };
        match self.pools.get_mut(&def.name) {
            Some(p) if p.active => {
                p.next = Some(def);
                p.persistent = true;
            }
            Some(p) => {
                p.def = def;
                p.persistent = true;
            }
            None => {
                self.pools.insert(
                    def.name.clone(),
                    Pool { def, next: None, active: false, persistent: true, autostart: false },
                );
            }
        }
        self.event(handle.clone(), pool_event::DEFINED);
        Ok(handle)
    }

    fn create_xml(&mut self, xml: &str, flags: u32) -> Result<PoolRef, StorageError> {
        // BUILD (1), BUILD_OVERWRITE (2), BUILD_NO_OVERWRITE (4).
        flags_in(flags, 7, "storagePoolCreateXML")?;
        let def = PoolDef::parse(xml)?;
        self.check_duplicate(&def, true)?;
        if self.pools.contains_key(&def.name) {
            return Err(StorageError::Failed(format!("pool '{}' already exists", def.name)));
        }
        if flags & 7 != 0 {
            Self::build(&def, 0)?;
        }
        let name = def.name.clone();
        self.pools.insert(name.clone(), Pool { def, next: None, active: false, persistent: false, autostart: false });
        if let Err(e) = self.start(&name) {
            self.pools.remove(&name);
            return Err(e);
        }
        Ok(self.by_name(&name)?.handle())
    }

    fn pool_op(&mut self, r: &PoolRef, op: PoolOp) -> Result<(), StorageError> {
        let p = self.by_uuid(r)?;
        let name = p.def.name.clone();
        let handle = p.handle();
        match op {
            PoolOp::Start { flags } => {
                flags_in(flags, 7, "storagePoolCreate")?;
                if p.active {
                    return Err(StorageError::Invalid(format!("storage pool '{name}' is already active")));
                }
                if flags & 7 != 0 {
                    Self::build(&p.def, 0)?;
                }
                self.start(&name)
            }
            PoolOp::Build { flags } => {
                if p.active {
                    return Err(StorageError::Invalid(format!("storage pool '{name}' is already active")));
                }
                Self::build(&p.def, flags)?;
                self.event(handle, pool_event::CREATED);
                Ok(())
            }
            PoolOp::Stop => {
                if !p.active {
                    return Err(not_active(&name));
                }
                let _ = std::fs::remove_file(self.state_dir.join(format!("{name}.xml")));
                let persistent = p.persistent;
                if persistent {
                    if let Some(p) = self.pools.get_mut(&name) {
                        p.active = false;
                        if let Some(next) = p.next.take() {
                            p.def = next;
                        }
                    }
                } else {
                    self.pools.remove(&name);
                }
                self.event(handle, pool_event::STOPPED);
                Ok(())
            }
            PoolOp::Delete { flags } => {
                flags_in(flags, 0, "virStorageBackendFileSystemDelete")?;
                if p.active {
                    return Err(StorageError::Invalid(format!("storage pool '{name}' is still active")));
                }
                let t = p.def.target.clone();
                std::fs::remove_dir(&t).map_err(|e| sys("failed to remove pool", &t, e))?;
                self.event(handle, pool_event::DELETED);
                Ok(())
            }
            PoolOp::Undefine => {
                if p.active {
                    return Err(StorageError::Invalid(format!("storage pool '{name}' is still active")));
                }
                let _ = std::fs::remove_file(self.config_dir.join("autostart").join(format!("{name}.xml")));
                let file = self.config_dir.join(format!("{name}.xml"));
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(sys("cannot remove config file", &file, e)),
                }
                self.pools.remove(&name);
                self.event(handle, pool_event::UNDEFINED);
                Ok(())
            }
            PoolOp::Refresh { flags } => {
                flags_in(flags, 0, "storagePoolRefresh")?;
                if !p.active {
                    return Err(not_active(&name));
                }
                // Volumes are read from the directory on every call: nothing is cached.
                self.events.push(PoolEvent { pool: handle, lifecycle: None });
                Ok(())
            }
            PoolOp::SetAutostart(on) => {
                if !p.persistent {
                    return Err(StorageError::Invalid("cannot set autostart for transient pool".into()));
                }
                let link = self.config_dir.join("autostart").join(format!("{name}.xml"));
                let _ = std::fs::remove_file(&link);
                if on {
                    std::os::unix::fs::symlink(self.config_dir.join(format!("{name}.xml")), &link)
                        .map_err(|e| sys("Failed to create symlink", &link, e))?;
                }
                if let Some(p) = self.pools.get_mut(&name) {
                    p.autostart = on;
                }
                Ok(())
            }
        }
    }

    fn pool_query(&self, r: &PoolRef, q: PoolQuery) -> Result<StorageValue, StorageError> {
        let p = self.by_uuid(r)?;
        let active_dir = || if p.active { Ok(&p.def.target) } else { Err(not_active(&p.def.name)) };
        Ok(match q {
            PoolQuery::Info => {
                let s = if p.active { sizes(&p.def.target) } else { PoolSizes::default() };
                let state = if p.active { STATE_RUNNING } else { STATE_INACTIVE };
                StorageValue::PoolInfo(PoolInfo {
                    state,
                    capacity: s.capacity,
                    allocation: s.allocation,
                    available: s.available,
                })
            }
            PoolQuery::XmlDesc { flags } => {
                flags_in(flags, 1, "storagePoolGetXMLDesc")?;
                let live = p.active && flags & 1 == 0;
                let def = if flags & 1 != 0 { p.next.as_ref().unwrap_or(&p.def) } else { &p.def };
                if !live {
                    return Ok(StorageValue::Text(def.to_xml(None)));
                }
                // A running pool shows its directory as it is, as libvirt's refresh records it.
                let mut shown = def.clone();
                if let Ok(m) = std::fs::metadata(&def.target) {
                    use std::os::unix::fs::MetadataExt;
                    shown.perms = Perms { mode: Some(m.mode() & 0o777), owner: Some(m.uid()), group: Some(m.gid()) };
                }
                StorageValue::Text(shown.to_xml(Some(sizes(&def.target))))
            }
            PoolQuery::Autostart => StorageValue::Int(p.autostart.into()),
            PoolQuery::IsActive => StorageValue::Int(p.active.into()),
            PoolQuery::IsPersistent => StorageValue::Int(p.persistent.into()),
            PoolQuery::NumVolumes => StorageValue::Int(volumes::list(active_dir()?)?.len() as i32),
            PoolQuery::VolumeNames { max } => {
                let max = bound(max)?;
                StorageValue::Names(volumes::list(active_dir()?)?.into_iter().take(max).collect())
            }
            PoolQuery::Volumes { need_results, flags } => {
                flags_in(flags, 0, "storagePoolListAllVolumes")?;
                let names = volumes::list(active_dir()?)?;
                let count = names.len() as u32;
                let list = if need_results { names.iter().map(|n| Self::vol_ref(p, n)).collect() } else { Vec::new() };
                StorageValue::Vols { list, count }
            }
        })
    }

    fn list_pools(&self, flags: u32, need_results: bool) -> Result<StorageValue, StorageError> {
        // INACTIVE 1, ACTIVE 2, PERSISTENT 4, TRANSIENT 8, AUTOSTART 16,
        // NO_AUTOSTART 32, then one bit per pool type from 64 (DIR) up.
        flags_in(flags, (1 << 20) - 1, "virConnectListAllStoragePools")?;
        let pair =
            |f: u32, yes: u32, no: u32, v: bool| f & (yes | no) == 0 || (v && f & yes != 0) || (!v && f & no != 0);
        let types = flags & !63;
        let list: Vec<PoolRef> = self
            .pools
            .values()
            .filter(|p| pair(flags, 2, 1, p.active))
            .filter(|p| pair(flags, 4, 8, p.persistent))
            .filter(|p| pair(flags, 16, 32, p.autostart))
            .filter(|_| types == 0 || types & 64 != 0)
            .map(Pool::handle)
            .collect();
        let count = list.len() as u32;
        Ok(StorageValue::Pools { list: if need_results { list } else { Vec::new() }, count })
    }

    fn create_vol(
        &mut self,
        r: &PoolRef,
        xml: &str,
        from: Option<&VolRef>,
        flags: u32,
    ) -> Result<VolRef, StorageError> {
        let p = self.by_uuid(r)?;
        if !p.active {
            return Err(not_active(&p.def.name));
        }
        let req = VolRequest::parse(xml)?;
        if volumes::exists(&p.def.target, &req.name) {
            return Err(StorageError::VolExists(req.name));
        }
        let source_path;
        let source = match from {
            Some(v) => {
                let sp = self.vol_pool(v)?;
                source_path = volumes::path_in(&sp.def.target, &v.name)?;
                Source::Copy(&source_path)
            }
            None => Source::Fresh,
        };
        volumes::create(&p.def.target, &req, source, flags)?;
        Ok(Self::vol_ref(p, &req.name))
    }

    /// Starts `vol-create-from`'s copy in a child process.
    fn start_copy(&mut self, call: &StorageCall, caller: &Caller) -> Result<(), StorageError> {
        let StorageCall::CreateVol { pool, xml, from: Some(from), flags } = call else {
            return Err(StorageError::Internal("not a volume copy".into()));
        };
        if self.copies.len() >= MAX_COPIES {
            return Err(StorageError::Failed(format!("{MAX_COPIES} volume copies are under way; try again later")));
        }
        let p = self.by_uuid(pool)?;
        if !p.active {
            return Err(not_active(&p.def.name));
        }
        let req = VolRequest::parse(xml)?;
        if volumes::exists(&p.def.target, &req.name) {
            return Err(StorageError::VolExists(req.name));
        }
        let (target, vol) = (p.def.target.clone(), Self::vol_ref(p, &req.name));
        let source = volumes::path_in(&self.vol_pool(from)?.def.target, &from.name)?;
        let copy = volumes::start_copy(&target, &req, &source, *flags)?;
        let peer = caller.peer.clone();
        self.copies.insert(copy.pid, Copying { copy, vol, conn: caller.conn, request: caller.request, peer });
        Ok(())
    }

    /// Child `pid` ended; if it was a copy, its client's answer (audited).
    pub fn copy_ended(&mut self, auditor: &mut Auditor, pid: i32, success: bool) -> Option<CopyDone> {
        let c = self.copies.remove(&pid)?;
        let result = c.copy.finish(success).map_err(StorageError::clipped);
        let caller = Caller { conn: c.conn, peer: &c.peer, readonly: false, request: c.request };
        let reason = result.as_ref().err().map(ToString::to_string);
        audit(auditor, &caller, "vol-clone", Some(&c.vol.pool), reason.as_deref());
        let result = result.map(|()| CallValue::Storage(StorageValue::Vol(c.vol))).map_err(CallError::Storage);
        Some(CopyDone { conn: c.conn, request: c.request, result })
    }

    /// Stops every copy under way (the daemon is stopping).
    pub fn abandon_copies(&mut self) {
        for (_, c) in std::mem::take(&mut self.copies) {
            c.copy.abandon();
        }
    }

    fn vol_op(&mut self, v: &VolRef, op: VolOp) -> Result<(), StorageError> {
        let dir = self.vol_pool(v)?.def.target.clone();
        match op {
            VolOp::Delete { flags } => volumes::delete(&dir, &v.name, flags),
            VolOp::Wipe { algorithm, flags } => volumes::wipe(&dir, &v.name, algorithm.unwrap_or(0), flags),
            VolOp::Resize { capacity, flags } => volumes::resize(&dir, &v.name, capacity, flags),
            VolOp::Upload { offset, flags, .. } => {
                flags_in(flags, 0, "storageVolUpload")?;
                self.stream_fd = Some(volumes::open_stream(&dir, &v.name, true, offset)?);
                Ok(())
            }
            VolOp::Download { offset, flags, .. } => {
                // VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM (1) needs holes on the wire.
                flags_in(flags, 0, "storageVolDownload")?;
                self.stream_fd = Some(volumes::open_stream(&dir, &v.name, false, offset)?);
                Ok(())
            }
        }
    }

    fn vol_query(&self, v: &VolRef, q: VolQuery) -> Result<StorageValue, StorageError> {
        let dir = &self.vol_pool(v)?.def.target;
        Ok(match q {
            VolQuery::Info { flags } => {
                // VIR_STORAGE_VOL_GET_PHYSICAL (1): the file's length as allocation.
                flags_in(flags, 1, "storageVolGetInfoFlags")?;
                let d = volumes::describe(dir, &v.name)?;
                let allocation = if flags & 1 != 0 { d.physical } else { d.allocation };
                StorageValue::VolInfo { kind: 0, capacity: d.capacity, allocation }
            }
            VolQuery::XmlDesc { flags } => {
                flags_in(flags, 0, "storageVolGetXMLDesc")?;
                StorageValue::Text(volumes::describe(dir, &v.name)?.to_xml())
            }
            VolQuery::Path => StorageValue::Text(volumes::path_in(dir, &v.name)?.display().to_string()),
        })
    }

    fn vol_by_path(&self, path: &str) -> Result<VolRef, StorageError> {
        let missing = || StorageError::NoVol(format!("no storage vol with matching path '{path}'"));
        let (dir, name) = volumes::split_path(path).ok_or_else(missing)?;
        let p = self.pools.values().find(|p| p.active && p.def.target == dir).ok_or_else(missing)?;
        if !volumes::exists(dir.as_path(), &name) {
            return Err(missing());
        }
        Ok(Self::vol_ref(p, &name))
    }

    /// Carries out one storage call.
    fn carry_out(&mut self, call: &StorageCall) -> Result<StorageValue, StorageError> {
        Ok(match call {
            StorageCall::ListPools { flags, need_results } => self.list_pools(*flags, *need_results)?,
            StorageCall::PoolNames { active, max } => {
                let names: Vec<String> =
                    self.pools.values().filter(|p| p.active == *active).map(|p| p.def.name.clone()).collect();
                match max {
                    None => StorageValue::Int(names.len() as i32),
                    Some(m) => StorageValue::Names(names.into_iter().take(bound(*m)?).collect()),
                }
            }
            StorageCall::PoolByName(n) => StorageValue::Pool(self.by_name(n)?.handle()),
            StorageCall::PoolByUuid(u) => StorageValue::Pool(
                self.pools.values().find(|p| p.def.uuid == *u).map(Pool::handle).ok_or_else(|| {
                    StorageError::NoPool(format!("no storage pool with matching uuid '{}'", uuid::Uuid::from_bytes(*u)))
                })?,
            ),
            StorageCall::PoolByPath(path) => {
                let want = normalise(path).ok();
                let p = self.pools.values().find(|p| p.active && Some(&p.def.target) == want.as_ref());
                StorageValue::Pool(p.map(Pool::handle).ok_or_else(|| {
                    StorageError::NoPool(format!("no storage pool with matching target path '{path}'"))
                })?)
            }
            StorageCall::PoolOfVolume(v) => StorageValue::Pool(self.by_name(&v.pool)?.handle()),
            StorageCall::DefinePool { xml, flags } => StorageValue::Pool(self.define(xml, *flags)?),
            StorageCall::CreatePoolXml { xml, flags } => StorageValue::Pool(self.create_xml(xml, *flags)?),
            StorageCall::Pool { pool, op } => {
                self.pool_op(pool, *op)?;
                StorageValue::Unit
            }
            StorageCall::PoolQuery { pool, query } => self.pool_query(pool, *query)?,
            StorageCall::CreateVol { pool, xml, from, flags } => {
                StorageValue::Vol(self.create_vol(pool, xml, from.as_ref(), *flags)?)
            }
            StorageCall::VolByName { pool, name } => {
                let p = self.by_uuid(pool)?;
                if !p.active {
                    return Err(not_active(&p.def.name));
                }
                if !volumes::exists(&p.def.target, name) {
                    return Err(StorageError::NoVol(format!("no storage vol with matching name '{name}'")));
                }
                StorageValue::Vol(Self::vol_ref(p, name))
            }
            StorageCall::VolByPath(path) | StorageCall::VolByKey(path) => StorageValue::Vol(self.vol_by_path(path)?),
            StorageCall::Vol { vol, op } => {
                self.vol_op(vol, *op)?;
                if matches!(op, VolOp::Upload { .. } | VolOp::Download { .. }) {
                    StorageValue::Stream
                } else {
                    StorageValue::Unit
                }
            }
            StorageCall::VolQuery { vol, query } => self.vol_query(vol, *query)?,
            StorageCall::Capabilities { flags } => {
                flags_in(*flags, 0, "storageConnectGetStoragePoolCapabilities")?;
                StorageValue::Text(capabilities())
            }
        })
    }
}

fn bound(max: i32) -> Result<usize, StorageError> {
    if !(0..=LIST_MAX).contains(&max) {
        return Err(StorageError::InvalidArg(format!("count {max} out of range 0-{LIST_MAX}")));
    }
    Ok(max as usize)
}

/// `virConnectGetStoragePoolCapabilities`: directory pools with raw and qcow2 volumes, nothing else.
fn capabilities() -> String {
    let mut out = String::from("<storagepoolCapabilities>\n  <pool type='dir' supported='yes'>\n    <volOptions>\n");
    out.push_str("      <defaultFormat type='raw'/>\n      <enum name='targetFormatType'>\n");
    out.push_str(
        "        <value>raw</value>\n        <value>qcow2</value>\n      </enum>\n    </volOptions>\n  </pool>\n",
    );
    for t in &crate::storage::pool::POOL_TYPES[1..] {
        out.push_str(&format!("  <pool type='{t}' supported='no'/>\n"));
    }
    out.push_str("</storagepoolCapabilities>\n");
    out
}

/// The audit operation of a changing call.
fn op_of(call: &StorageCall) -> &'static str {
    match call {
        StorageCall::DefinePool { .. } => "pool-define",
        StorageCall::CreatePoolXml { .. } => "pool-create",
        StorageCall::Pool { op, .. } => match op {
            PoolOp::Start { .. } => "pool-start",
            PoolOp::Build { .. } => "pool-build",
            PoolOp::Stop => "pool-destroy",
            PoolOp::Delete { .. } => "pool-delete",
            PoolOp::Undefine => "pool-undefine",
            PoolOp::Refresh { .. } => "pool-refresh",
            PoolOp::SetAutostart(_) => "pool-autostart",
        },
        StorageCall::CreateVol { from: None, .. } => "vol-create",
        StorageCall::CreateVol { .. } => "vol-clone",
        StorageCall::Vol { op, .. } => match op {
            VolOp::Delete { .. } => "vol-delete",
            VolOp::Wipe { .. } => "vol-wipe",
            VolOp::Resize { .. } => "vol-resize",
            VolOp::Upload { .. } => "vol-upload",
            VolOp::Download { .. } => "vol-download",
        },
        _ => "storage",
    }
}

/// The public API a changing call reaches, as read-only refusals name it.
fn api_of(call: &StorageCall) -> &'static str {
    match call {
        StorageCall::DefinePool { .. } => "virStoragePoolDefineXML",
        StorageCall::CreatePoolXml { .. } => "virStoragePoolCreateXML",
        StorageCall::CreateVol { from: None, .. } => "virStorageVolCreateXML",
        StorageCall::CreateVol { .. } => "virStorageVolCreateXMLFrom",
        StorageCall::Pool { .. } => "virStoragePool",
        StorageCall::Vol { .. } => "virStorageVol",
        _ => "this call",
    }
}

/// Carries out a storage call for `caller`, auditing every change.
pub fn handle(
    storage: &mut Storage,
    auditor: &mut Auditor,
    caller: &Caller,
    call: StorageCall,
) -> Result<CallValue, CallError> {
    let mutates = call.mutates();
    if mutates && caller.readonly {
        audit(auditor, caller, op_of(&call), None, Some("read-only"));
        return Err(CallError::ReadOnly(api_of(&call).into()));
    }
    storage.stream_fd = None;
    let result = storage.carry_out(&call).map_err(StorageError::clipped);
    if mutates {
        let subject = match (&call, &result) {
            (StorageCall::Pool { pool, .. }, _) | (StorageCall::CreateVol { pool, .. }, _) => Some(pool.name.clone()),
            (StorageCall::Vol { vol, .. }, _) => Some(format!("{}/{}", vol.pool, vol.name)),
            (_, Ok(StorageValue::Pool(p))) => Some(p.name.clone()),
            _ => None,
        };
        let reason = result.as_ref().err().map(ToString::to_string);
        audit(auditor, caller, op_of(&call), subject.as_deref(), reason.as_deref());
    }
    result.map(CallValue::Storage).map_err(CallError::Storage)
}

/// `vol-create-from` (`vol-clone`): the copy runs in a child process and
/// the client is answered when it ends ([`Storage::copy_ended`]), so the
/// loop serves everyone else meanwhile.
pub fn handle_copy(storage: &mut Storage, auditor: &mut Auditor, caller: &Caller, call: &StorageCall) -> Answer {
    if caller.readonly {
        audit(auditor, caller, op_of(call), None, Some("read-only"));
        return Answer::Now(Err(CallError::ReadOnly(api_of(call).into())));
    }
    match storage.start_copy(call, caller).map_err(StorageError::clipped) {
        Ok(()) => Answer::Later,
        Err(e) => {
            let subject = match call {
                StorageCall::CreateVol { pool, .. } => Some(pool.name.as_str()),
                _ => None,
            };
            audit(auditor, caller, op_of(call), subject, Some(&e.to_string()));
            Answer::Now(Err(CallError::Storage(e)))
        }
    }
}

/// Whether `call` copies a volume (see [`handle_copy`]).
pub fn is_copy(call: &StorageCall) -> bool {
    matches!(call, StorageCall::CreateVol { from: Some(_), .. })
}

fn audit(auditor: &mut Auditor, caller: &Caller, op: &str, subject: Option<&str>, reason: Option<&str>) {
    let mut fields = client_fields(caller.conn, caller.peer);
    fields.extend(subject.map(|s| ("storage", Value::Text(s))));
    fields.extend(reason.map(|r| ("reason", Value::Text(r))));
    auditor.record(op, &fields, reason.is_none());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_xml(name: &str, path: &Path) -> String {
        format!("<pool type='dir'><name>{name}</name><target><path>{}</path></target></pool>", path.display())
    }

    #[test]
    fn pools_persist_start_and_autostart_as_libvirt_lays_them_out() {
        let tree = tempfile::tempdir().unwrap();
        let (cfg, run, images) = (tree.path().join("storage"), tree.path().join("run"), tree.path().join("images"));
        let mut s = Storage::load(&cfg, &run);
        let r = s.define(&pool_xml("default", &images), 0).unwrap();
        assert!(cfg.join("default.xml").is_file());
        assert!(
            matches!(s.pool_op(&r, PoolOp::Start { flags: 0 }), Err(StorageError::System(m)) if m.contains("cannot open directory"))
        );
        s.pool_op(&r, PoolOp::Build { flags: 0 }).unwrap();
        s.pool_op(&r, PoolOp::Start { flags: 0 }).unwrap();
        s.pool_op(&r, PoolOp::SetAutostart(true)).unwrap();
        assert!(cfg.join("autostart/default.xml").symlink_metadata().unwrap().file_type().is_symlink());
        assert!(run.join("default.xml").is_file());
        assert!(matches!(s.pool_op(&r, PoolOp::Undefine), Err(StorageError::Invalid(_))));
        let dup = s.define(&pool_xml("other", &images), 0).unwrap_err();
        assert!(dup.to_string().contains("conflict with pool: 'default'"), "{dup}");
        let events: Vec<_> = s.events.iter().filter_map(|e| e.lifecycle.map(|l| l.0)).collect();
        assert_eq!(events, [pool_event::DEFINED, pool_event::CREATED, pool_event::STARTED]);
        // A new daemon: still active (its record), and autostart kept.
        let again = Storage::load(&cfg, &run);
        let p = again.by_name("default").unwrap();
        assert!(p.active && p.autostart && p.persistent);
        // Stopped, then loaded again: autostart starts it.
        s.pool_op(&r, PoolOp::Stop).unwrap();
        assert!(!run.join("default.xml").exists());
        assert!(Storage::load(&cfg, &run).by_name("default").unwrap().active);
    }

    #[test]
    fn volumes_are_found_by_name_and_path_only_inside_their_pool() {
        let tree = tempfile::tempdir().unwrap();
        let images = tree.path().join("images");
        let mut s = Storage::load(&tree.path().join("storage"), &tree.path().join("run"));
        let r = s.create_xml(&pool_xml("p", &images), 1).unwrap();
        assert!(!s.by_name("p").unwrap().persistent);
        let v = s.create_vol(&r, "<volume><name>a.img</name><capacity>4096</capacity></volume>", None, 0).unwrap();
        assert_eq!(v.key, images.join("a.img").display().to_string());
        assert_eq!(s.vol_by_path(&v.key).unwrap(), v);
        assert!(s.vol_by_path(&format!("{}/../images/a.img", images.display())).is_err());
        assert!(s.create_vol(&r, "<volume><name>../a.img</name><capacity>1</capacity></volume>", None, 0).is_err());
        assert!(matches!(
            s.create_vol(&r, "<volume><name>a.img</name><capacity>1</capacity></volume>", None, 0),
            Err(StorageError::VolExists(_))
        ));
        s.pool_op(&r, PoolOp::Stop).unwrap();
        // A transient pool is gone once stopped.
        assert!(s.by_name("p").is_err());
    }

    #[test]
    fn a_running_pool_redefined_keeps_its_definition_until_it_stops() {
        let tree = tempfile::tempdir().unwrap();
        let (a, b) = (tree.path().join("a"), tree.path().join("b"));
        let mut s = Storage::load(&tree.path().join("storage"), &tree.path().join("run"));
        let r = s.define(&pool_xml("p", &a), 0).unwrap();
        s.pool_op(&r, PoolOp::Build { flags: 0 }).unwrap();
        s.pool_op(&r, PoolOp::Start { flags: 0 }).unwrap();
        let uuid = uuid::Uuid::from_bytes(r.uuid);
        let again = format!(
            "<pool type='dir'><name>p</name><uuid>{uuid}</uuid><target><path>{}</path></target></pool>",
            b.display()
        );
        s.define(&again, 0).unwrap();
        assert_eq!(s.by_name("p").unwrap().def.target, a);
        let Ok(StorageValue::Text(inactive)) = s.pool_query(&r, PoolQuery::XmlDesc { flags: 1 }) else { panic!() };
        assert!(inactive.contains(&b.display().to_string()), "{inactive}");
        s.pool_op(&r, PoolOp::Stop).unwrap();
        assert_eq!(s.by_name("p").unwrap().def.target, b);
    }
}
