//! libvirt's network driver in the broker: the table of virtual networks,
//! their definitions on disk (`<domain_config_dir>/networks/NAME.xml` and
//! `networks/autostart/`, as libvirt lays out `qemu/networks`), their
//! run state (`<state>/network/NAME.xml`, the live definition, beside
//! dnsmasq's files), and starting and stopping them: bridge, nftables
//! table, dnsmasq.
//!
//! Networks outlive the daemon, as in libvirt: stopping the daemon leaves
//! them running; a restarted broker finds each recorded network whose
//! bridge still exists, re-attaches to its dnsmasq (starting it again only
//! if it died; its lease file is kept) and re-applies the table.

use std::path::{Path, PathBuf};

use super::audit::{Auditor, Value, client_fields};
use super::calls::Caller;
use super::store::read_bounded;
use crate::domain::uuid_string;
use crate::network::xml::{self, Forward, NetXmlError, NetworkDef};
use crate::network::{bridge, dnsmasq, nft, update};
use crate::privsep::network::{Lease, NetCall, NetError, NetEvent, NetRef, NetValue};

/// Most networks the daemon keeps.
const MAX_NETWORKS: usize = 1024;
/// `virNetworkEventLifecycleType`.
mod event {
    pub const DEFINED: i32 = 0;
    pub const UNDEFINED: i32 = 1;
    pub const STARTED: i32 = 2;
    pub const STOPPED: i32 = 3;
}
/// `VIR_NETWORK_XML_INACTIVE`.
const XML_INACTIVE: u32 = 1;
/// `VIR_NETWORK_UPDATE_AFFECT_LIVE` / `_CONFIG`.
const AFFECT_LIVE: u32 = 1;
const AFFECT_CONFIG: u32 = 2;
/// `VIR_NETWORK_SECTION_IP_DHCP_HOST`.
const SECTION_IP_DHCP_HOST: u32 = 4;

/// A running network.
struct Live {
    /// The definition it runs with (bridge name filled in).
    def: NetworkDef,
    /// Its dnsmasq, if it has one.
    dnsmasq: Option<i32>,
}

/// One network.
struct Net {
    /// The persistent definition; `None` for a transient network.
    config: Option<NetworkDef>,
    /// Set while it runs.
    live: Option<Live>,
    /// Autostart link present.
    autostart: bool,
}

impl Net {
    /// The definition clients see by default: live if running.
    fn current(&self) -> &NetworkDef {
        match (&self.live, &self.config) {
            (Some(l), _) => &l.def,
            (None, Some(c)) => c,
            // A network is either persistent or running.
            (None, None) => unreachable!("a network with neither definition"),
        }
    }

    fn handle(&self) -> NetRef {
        let d = self.current();
        NetRef { name: d.name.clone(), uuid: d.uuid }
    }
}

/// The network table.
pub struct Networks {
    config_dir: PathBuf,
    state_dir: PathBuf,
    nets: Vec<Net>,
    /// Lifecycle events for clients, sent by the event loop after each call.
    pub events: Vec<NetEvent>,
}

fn xml_err(e: NetXmlError) -> NetError {
    match e {
        NetXmlError::Invalid(s) => NetError::Xml(s),
        NetXmlError::Unsupported(s) => NetError::Unsupported(s),
    }
}

fn mkdir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
}

/// Writes `text` to `path` atomically.
fn save(path: &Path, text: &str) -> Result<(), NetError> {
    let tmp = path.with_extension("xml.new");
    super::atomic::write(path, &tmp, text.as_bytes()).map_err(|e| NetError::Internal(e.to_string()))
}

fn load_dir(dir: &Path) -> Vec<NetworkDef> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten().take(MAX_NETWORKS * 2) {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "xml") || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let parsed =
            read_bounded(&path).map_err(|e| e.to_string()).and_then(|t| xml::parse(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(def) if path.file_stem().and_then(|s| s.to_str()) == Some(def.name.as_str()) => out.push(def),
            Ok(def) => log::error!(
                "skipping network definition {}: file name does not match network '{}'",
                path.display(),
                def.name
            ),
            Err(e) => log::error!("skipping network definition {}: {e}", path.display()),
        }
    }
    out
}

fn random_mac() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// Turns on IPv4 (and IPv6) forwarding in this network namespace, as a
/// routed or NAT network needs.
fn enable_forwarding(def: &NetworkDef) -> Result<(), NetError> {
    if !matches!(def.forward, Forward::Nat | Forward::Route | Forward::Open) {
        return Ok(());
    }
    let mut knobs = vec!["/proc/sys/net/ipv4/ip_forward"];
    if def.ips.iter().any(|i| i.address.is_ipv6()) {
        knobs.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for k in knobs {
        std::fs::write(k, "1\n").map_err(|e| NetError::Internal(format!("cannot enable forwarding ({k}): {e}")))?;
    }
    Ok(())
}

impl Networks {
    /// Loads the definitions and the networks a previous broker left
    /// running; on a first start (no `networks` directory yet) writes the
    /// `default` network if `default_network`.
    pub fn load(domain_config_dir: &Path, domain_state_dir: &Path, default_network: bool) -> Networks {
        let config_dir = domain_config_dir.join("networks");
        let state_dir = domain_state_dir.parent().unwrap_or(domain_state_dir).join("network");
        let first_start = !config_dir.exists();
        for (dir, mode) in [(config_dir.join("autostart"), 0o700), (state_dir.clone(), 0o755)] {
            if let Err(e) = mkdir(&dir, mode) {
                log::error!("cannot create '{}': {e}", dir.display());
            }
        }
        let mut me = Networks { config_dir, state_dir, nets: Vec::new(), events: Vec::new() };
        if first_start && default_network {
            match xml::parse(&xml::default_network_xml()).map_err(xml_err).and_then(|d| me.admit(d)) {
                Ok(def) => {
                    let ok = save(&me.config_file(&def.name), &def.to_xml())
                        .and_then(|()| me.link_autostart(&def.name, true));
                    match ok {
                        Ok(()) => log::info!("wrote the default network (virbr0, 192.168.122.0/24, NAT), to autostart"),
                        Err(e) => log::error!("cannot write the default network: {e}"),
                    }
                }
                Err(e) => log::error!("the default network does not parse: {e}"),
            }
        }
        for def in load_dir(&me.config_dir).into_iter().take(MAX_NETWORKS) {
            let autostart = me.autostart_link(&def.name).symlink_metadata().is_ok();
            me.nets.push(Net { config: Some(def), live: None, autostart });
        }
        me.reattach();
        me
    }

    fn config_file(&self, name: &str) -> PathBuf {
        self.config_dir.join(format!("{name}.xml"))
    }

    fn autostart_link(&self, name: &str) -> PathBuf {
        self.config_dir.join("autostart").join(format!("{name}.xml"))
    }

    fn status_file(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.xml"))
    }

    fn files(&self, name: &str) -> dnsmasq::Files {
        dnsmasq::Files::new(&self.state_dir, name)
    }

    fn link_autostart(&self, name: &str, on: bool) -> Result<(), NetError> {
        let link = self.autostart_link(name);
        let _ = std::fs::remove_file(&link);
        if on {
            std::os::unix::fs::symlink(self.config_file(name), &link)
                .map_err(|e| NetError::Internal(format!("cannot create '{}': {e}", link.display())))?;
        }
        Ok(())
    }

    /// Finds the networks a previous broker left running.
    fn reattach(&mut self) {
        let recorded = load_dir(&self.state_dir);
        // With no record, no table of ours can be wanted and nft is not run.
        let any = !recorded.is_empty();
        for live in recorded {
            let name = live.name.clone();
            let files = self.files(&name);
            let bridge = live.bridge.clone().unwrap_or_default();
            if bridge::ifindex(&bridge).is_none() {
                log::info!("network '{name}' stopped while the daemon was away (no bridge '{bridge}')");
                if let Some(pid) = dnsmasq::read_pid(&files.pid) {
                    dnsmasq::stop(pid, &files);
                }
                let _ = std::fs::remove_file(self.status_file(&name));
                continue;
            }
            let mut pid = dnsmasq::read_pid(&files.pid).filter(|p| dnsmasq::is_ours(*p, &files));
            if pid.is_none() && live.needs_dnsmasq() {
                log::warn!("network '{name}': dnsmasq is gone; starting it again");
                pid = dnsmasq::write_files(&live, &bridge, &files)
                    .and_then(|()| dnsmasq::start(&files))
                    .inspect_err(|e| log::error!("network '{name}': {e}"))
                    .ok();
            }
            log::info!("re-attached to network '{name}' (bridge {bridge}, dnsmasq pid {})", pid.unwrap_or(-1));
            let l = Live { def: live, dnsmasq: pid };
            match self.nets.iter_mut().find(|n| n.config.as_ref().is_some_and(|c| c.uuid == l.def.uuid)) {
                Some(n) => n.live = Some(l),
                None => self.nets.push(Net { config: None, live: Some(l), autostart: false }),
            }
        }
        if any && let Err(e) = self.apply_rules() {
            log::error!("cannot restore the networks' firewall rules: {e}");
        }
    }

    /// Starts the autostart networks that are not running; a failure (such
    /// as the default network's subnet already in use) is logged and leaves
    /// the network stopped.
    pub fn autostart(&mut self) {
        let pending: Vec<[u8; 16]> =
            self.nets.iter().filter(|n| n.autostart && n.live.is_none()).map(|n| n.current().uuid).collect();
        for uuid in pending {
            if let Err(e) = self.start(&uuid) {
                let name = self.by_uuid(&uuid).map(|n| n.current().name.clone()).unwrap_or_default();
                log::error!("autostart of network '{name}' failed, it stays stopped: {e}");
            }
        }
    }

    fn by_uuid(&self, uuid: &[u8; 16]) -> Result<&Net, NetError> {
        self.nets
            .iter()
            .find(|n| n.current().uuid == *uuid)
            .ok_or_else(|| NetError::NoUuid(uuid_string(&crate::domain::Uuid(*uuid))))
    }

    fn index(&self, uuid: &[u8; 16]) -> Result<usize, NetError> {
        self.nets
            .iter()
            .position(|n| n.current().uuid == *uuid)
            .ok_or_else(|| NetError::NoUuid(uuid_string(&crate::domain::Uuid(*uuid))))
    }

    /// Checks `def` against the other networks and fills in what libvirt
    /// fills in at define: a free `virbrN` bridge and a MAC.
    fn admit(&self, mut def: NetworkDef) -> Result<NetworkDef, NetError> {
        for n in &self.nets {
            let other = n.current();
            if other.name == def.name && other.uuid != def.uuid {
                return Err(NetError::Failed(format!(
                    "network '{}' already exists with uuid {}",
                    def.name,
                    uuid_string(&crate::domain::Uuid(other.uuid))
                )));
            }
            if other.uuid == def.uuid && other.name != def.name {
                return Err(NetError::Failed(format!(
                    "network '{}' is already defined with uuid {}",
                    other.name,
                    uuid_string(&crate::domain::Uuid(def.uuid))
                )));
            }
        }
        let bridges_of_others = || {
            self.nets
                .iter()
                .filter(move |n| n.current().uuid != def.uuid)
                .flat_map(|n| [n.config.as_ref(), n.live.as_ref().map(|l| &l.def)])
                .flatten()
                .filter_map(|d| d.bridge.clone())
        };
        match &def.bridge {
            Some(b) => {
                if bridges_of_others().any(|o| &o == b) {
                    return Err(NetError::Failed(format!("bridge name '{b}' already in use.")));
                }
            }
            None => {
                let taken: Vec<String> = bridges_of_others().collect();
                let free = (0..1024)
                    .map(|i| format!("virbr{i}"))
                    .find(|n| !taken.contains(n) && bridge::ifindex(n).is_none())
                    .ok_or_else(|| NetError::Failed("no free bridge name virbrN".into()))?;
                def.bridge = Some(free);
            }
        }
        if def.mac.is_none() {
            def.mac = Some(random_mac());
        }
        Ok(def)
    }

    /// `virNetworkDefineXML`.
    fn define(&mut self, text: &str) -> Result<NetRef, NetError> {
        let def = self.admit(xml::parse(text).map_err(xml_err)?)?;
        if self.nets.len() >= MAX_NETWORKS && self.by_uuid(&def.uuid).is_err() {
            return Err(NetError::Failed(format!("at most {MAX_NETWORKS} networks")));
        }
        save(&self.config_file(&def.name), &def.to_xml())?;
        let handle = NetRef { name: def.name.clone(), uuid: def.uuid };
        match self.nets.iter_mut().find(|n| n.current().uuid == def.uuid) {
            Some(n) => n.config = Some(def),
            None => self.nets.push(Net { config: Some(def), live: None, autostart: false }),
        }
        self.events.push(NetEvent { net: handle.clone(), event: event::DEFINED });
        Ok(handle)
    }

    /// `virNetworkCreateXML`: a transient network, started.
    fn create_xml(&mut self, text: &str) -> Result<NetRef, NetError> {
        let def = self.admit(xml::parse(text).map_err(xml_err)?)?;
        if self.nets.iter().any(|n| n.current().uuid == def.uuid) {
            return Err(NetError::Failed(format!("network '{}' already exists", def.name)));
        }
        let uuid = def.uuid;
        // Started from a definition that is dropped once it runs: a
        // transient network exists only while it runs.
        self.nets.push(Net { config: Some(def), live: None, autostart: false });
        let result = self.start(&uuid);
        let i = self.index(&uuid)?;
        self.nets[i].config = None;
        match result {
            Ok(()) => Ok(self.nets[i].handle()),
            Err(e) => {
                // Never started, so it never existed for clients.
                self.nets.remove(i);
                Err(e)
            }
        }
    }

    /// Brings network `uuid` up from its persistent definition.
    fn start(&mut self, uuid: &[u8; 16]) -> Result<(), NetError> {
        let i = self.index(uuid)?;
        if self.nets[i].live.is_some() {
            return Err(NetError::Invalid("network is already active".into()));
        }
        let def = self.nets[i].config.clone().ok_or_else(|| NetError::Internal("no definition to start".into()))?;
        let br = def.bridge.clone().ok_or_else(|| NetError::Internal("network has no bridge name".into()))?;
        if bridge::ifindex(&br).is_some() {
            return Err(NetError::Failed(format!(
                "bridge '{br}' already exists: network '{}' cannot use it",
                def.name
            )));
        }
        for ip in def.ips.iter().filter(|i| i.address.is_ipv4()) {
            if let Some(dev) = bridge::subnet_in_use(&ip.address, ip.prefix, &br) {
                return Err(NetError::Failed(format!(
                    "Network is already in use by interface {dev}: subnet {} of network '{}' overlaps a route the host has",
                    ip.subnet(),
                    def.name
                )));
            }
        }
        let mut live = Live { def, dnsmasq: None };
        if let Err(e) = self.bring_up(&mut live, &br) {
            self.tear_down(&live, &br);
            return Err(e);
        }
        let status = live.def.to_xml();
        self.nets[i].live = Some(live);
        if let Err(e) = save(&self.status_file(&self.nets[i].current().name), &status) {
            log::error!("{e}");
        }
        self.events.push(NetEvent { net: self.nets[i].handle(), event: event::STARTED });
        Ok(())
    }

    fn bring_up(&mut self, live: &mut Live, br: &str) -> Result<(), NetError> {
        let def = &live.def;
        let host = |e: bridge::BridgeError| NetError::Internal(e.to_string());
        let mac = def.mac.as_deref().and_then(bridge::mac_bytes);
        bridge::create(&bridge::BridgeSpec { name: br, mac, mtu: def.mtu, stp: def.stp, delay: def.delay })
            .map_err(host)?;
        for ip in &def.ips {
            bridge::add_address(br, ip.address, ip.prefix).map_err(host)?;
        }
        bridge::set_up(br).map_err(host)?;
        enable_forwarding(def)?;
        let mut active: Vec<(&NetworkDef, &str)> = self.active_rules();
        active.push((def, br));
        nft::apply(&nft::script(nft::table(&active).as_deref())).map_err(|e| NetError::Internal(e.to_string()))?;
        if def.needs_dnsmasq() {
            let files = self.files(&def.name);
            let pid = dnsmasq::write_files(def, br, &files)
                .and_then(|()| dnsmasq::start(&files))
                .map_err(|e| NetError::Internal(e.to_string()))?;
            live.dnsmasq = Some(pid);
        }
        Ok(())
    }

    /// Removes what `bring_up` made of `live`; each step is tried whatever
    /// the others did.
    fn tear_down(&mut self, live: &Live, br: &str) {
        let files = self.files(&live.def.name);
        if let Some(pid) = live.dnsmasq.or_else(|| dnsmasq::read_pid(&files.pid)) {
            dnsmasq::stop(pid, &files);
        }
        if let Err(e) = bridge::delete(br) {
            log::error!("network '{}': {e}", live.def.name);
        }
        if let Err(e) = self.apply_rules() {
            log::error!("network '{}': {e}", live.def.name);
        }
        for f in [&files.conf, &files.hosts, &files.addnhosts] {
            let _ = std::fs::remove_file(f);
        }
    }

    /// The (definition, bridge) of every running network.
    fn active_rules(&self) -> Vec<(&NetworkDef, &str)> {
        self.nets
            .iter()
            .filter_map(|n| n.live.as_ref())
            .filter_map(|l| Some((&l.def, l.def.bridge.as_deref()?)))
            .collect()
    }

    /// Rebuilds our nftables table from the running networks.
    fn apply_rules(&self) -> Result<(), NetError> {
        let active = self.active_rules();
        let table = nft::table(&active);
        nft::apply(&nft::script(table.as_deref())).map_err(|e| NetError::Internal(e.to_string()))
    }

    /// `virNetworkDestroy`.
    fn destroy(&mut self, uuid: &[u8; 16]) -> Result<NetRef, NetError> {
        let i = self.index(uuid)?;
        let name = self.nets[i].current().name.clone();
        let live =
            self.nets[i].live.take().ok_or_else(|| NetError::Invalid(format!("network '{name}' is not active")))?;
        let handle = NetRef { name: name.clone(), uuid: *uuid };
        let br = live.def.bridge.clone().unwrap_or_default();
        self.tear_down(&live, &br);
        let _ = std::fs::remove_file(self.status_file(&name));
        if self.nets[i].config.is_none() {
            self.nets.remove(i);
        }
        self.events.push(NetEvent { net: handle.clone(), event: event::STOPPED });
        Ok(handle)
    }

    /// `virNetworkUndefine`.
    fn undefine(&mut self, uuid: &[u8; 16]) -> Result<NetRef, NetError> {
        let i = self.index(uuid)?;
        let handle = self.nets[i].handle();
        if self.nets[i].config.is_none() {
            return Err(NetError::Invalid("network is not persistent".into()));
        }
        let _ = std::fs::remove_file(self.autostart_link(&handle.name));
        let path = self.config_file(&handle.name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NetError::Internal(format!("cannot remove '{}': {e}", path.display()))),
        }
        self.nets[i].config = None;
        self.nets[i].autostart = false;
        if self.nets[i].live.is_none() {
            self.nets.remove(i);
        }
        self.events.push(NetEvent { net: handle.clone(), event: event::UNDEFINED });
        Ok(handle)
    }

    fn set_autostart(&mut self, uuid: &[u8; 16], on: bool) -> Result<NetRef, NetError> {
        let i = self.index(uuid)?;
        let name = self.nets[i].current().name.clone();
        if self.nets[i].config.is_none() {
            return Err(NetError::Invalid("cannot set autostart for transient network".into()));
        }
        self.link_autostart(&name, on)?;
        self.nets[i].autostart = on;
        Ok(self.nets[i].handle())
    }

    fn list(&self, flags: u32) -> Result<Vec<NetRef>, NetError> {
        if flags & !0x3f != 0 {
            return Err(NetError::Flags { flags, function: "networkConnectListAllNetworks".into() });
        }
        let pick = |on: u32, off: u32, yes: bool| {
            let (a, b) = (flags & on != 0, flags & off != 0);
            a == b || (a && yes) || (b && !yes)
        };
        let mut out: Vec<NetRef> = self
            .nets
            .iter()
            .filter(|n| pick(2, 1, n.live.is_some()))
            .filter(|n| pick(4, 8, n.config.is_some()))
            .filter(|n| pick(16, 32, n.autostart))
            .map(Net::handle)
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `virNetworkUpdate` for `<host>` entries of an `<ip>`'s `<dhcp>`.
    fn update(
        &mut self,
        uuid: &[u8; 16],
        command: u32,
        section: u32,
        parent: i32,
        text: &str,
        flags: u32,
    ) -> Result<NetRef, NetError> {
        if flags & !(AFFECT_LIVE | AFFECT_CONFIG) != 0 {
            return Err(NetError::Flags { flags, function: "networkUpdate".into() });
        }
        let i = self.index(uuid)?;
        let name = self.nets[i].current().name.clone();
        if section != SECTION_IP_DHCP_HOST {
            let what = match section {
                1 => "bridge",
                2 => "domain",
                3 => "ip",
                5 => "ip-dhcp-range",
                6 => "forward",
                7 => "forward-interface",
                8 => "forward-pf",
                9 => "portgroup",
                10 => "dns-host",
                11 => "dns-txt",
                12 => "dns-srv",
                _ => "unknown",
            };
            return Err(NetError::Unsupported(format!("can't update '{what}' section of network '{name}'")));
        }
        let active = self.nets[i].live.is_some();
        let (live, config) = match flags {
            0 => (active, !active),
            f => (f & AFFECT_LIVE != 0, f & AFFECT_CONFIG != 0),
        };
        if live && !active {
            return Err(NetError::Invalid(format!(
                "network '{name}' is not active, so its live state can't be modified"
            )));
        }
        if config && self.nets[i].config.is_none() {
            return Err(NetError::Invalid(format!("cannot change persistent config of a transient network '{name}'")));
        }
        // Each side is edited on a copy, so a refusal leaves both as they were.
        let mut edited_live = None;
        if live && let Some(l) = &self.nets[i].live {
            edited_live = Some(update::edit_hosts(&l.def, command, parent, text)?);
        }
        let mut edited_config = None;
        if config && let Some(c) = &self.nets[i].config {
            edited_config = Some(update::edit_hosts(c, command, parent, text)?);
        }
        if let Some(c) = edited_config {
            save(&self.config_file(&name), &c.to_xml())?;
            self.nets[i].config = Some(c);
        }
        if let Some(d) = edited_live {
            let status = self.status_file(&name);
            let files = self.files(&name);
            if let Some(l) = &mut self.nets[i].live {
                if let Some(pid) = l.dnsmasq {
                    dnsmasq::update_hosts(&d, &files, pid).map_err(|e| NetError::Internal(e.to_string()))?;
                }
                save(&status, &d.to_xml())?;
                l.def = d;
            }
        }
        Ok(self.nets[i].handle())
    }

    /// The bridge of running network `name`, for a guest interface on it;
    /// libvirt's errors for a network that is missing or not active.
    pub fn bridge_of(&self, name: &str) -> Result<String, NetError> {
        let n = self.nets.iter().find(|n| n.current().name == name).ok_or_else(|| NetError::NoName(name.into()))?;
        let live = n.live.as_ref().ok_or_else(|| NetError::Invalid(format!("network '{name}' is not active")))?;
        live.def.bridge.clone().ok_or_else(|| NetError::Internal(format!("network '{name}' has no bridge")))
    }

    /// The current leases of running network `name` for MAC `mac`
    /// (`virDomainInterfaceAddresses` from the lease source); none when the
    /// network is missing or stopped.
    pub fn leases_for(&self, name: &str, mac: &str) -> Vec<Lease> {
        match self.nets.iter().find(|n| n.current().name == name) {
            Some(n) => self.leases(&n.current().uuid, Some(mac), 0).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    fn leases(&self, uuid: &[u8; 16], mac: Option<&str>, flags: u32) -> Result<Vec<Lease>, NetError> {
        if flags != 0 {
            return Err(NetError::Flags { flags, function: "networkGetDHCPLeases".into() });
        }
        let n = self.by_uuid(uuid)?;
        let Some(live) = &n.live else { return Ok(Vec::new()) };
        let br = live.def.bridge.clone().unwrap_or_default();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let mac = mac.map(str::to_ascii_lowercase);
        Ok(dnsmasq::leases(&self.files(&live.def.name).leases, &live.def, &br)
            .into_iter()
            .filter(|l| l.expiry == 0 || l.expiry > now)
            .filter(|l| mac.is_none() || l.mac.as_deref().map(str::to_ascii_lowercase) == mac)
            .collect())
    }

    /// Carries out `call` for `caller`, auditing every change.
    pub fn handle(&mut self, auditor: &mut Auditor, caller: &Caller, call: NetCall) -> Result<NetValue, NetError> {
        if call.mutates() && caller.readonly {
            return Err(NetError::ReadOnly(call.api().into()));
        }
        let op = match &call {
            NetCall::Define { .. } => "net-define",
            NetCall::CreateXml { .. } => "net-create",
            NetCall::Undefine(_) => "net-undefine",
            NetCall::Start(_) => "net-start",
            NetCall::Destroy(_) => "net-destroy",
            NetCall::SetAutostart { .. } => "net-autostart",
            NetCall::Update { .. } => "net-update",
            _ => return self.query(call).map_err(NetError::clipped),
        };
        let result = self.change(call);
        let mut fields = client_fields(caller.conn, caller.peer);
        let (name, uuid, reason) = match &result {
            Ok(h) => (h.name.clone(), uuid_string(&crate::domain::Uuid(h.uuid)), None),
            Err(e) => (String::new(), String::new(), Some(e.to_string())),
        };
        if result.is_ok() {
            fields.push(("net", Value::Text(&name)));
            fields.push(("uuid", Value::Text(&uuid)));
        }
        if let Some(r) = &reason {
            fields.push(("reason", Value::Text(r)));
        }
        auditor.record(op, &fields, result.is_ok());
        result.map(NetValue::Net).map_err(NetError::clipped)
    }

    fn change(&mut self, call: NetCall) -> Result<NetRef, NetError> {
        match call {
            NetCall::Define { xml, flags } => {
                check_validate_flag(flags, "networkDefineXMLFlags")?;
                self.define(&xml)
            }
            NetCall::CreateXml { xml, flags } => {
                check_validate_flag(flags, "networkCreateXMLFlags")?;
                self.create_xml(&xml)
            }
            NetCall::Undefine(uuid) => self.undefine(&uuid),
            NetCall::Start(uuid) => self.start(&uuid).and_then(|()| Ok(self.by_uuid(&uuid)?.handle())),
            NetCall::Destroy(uuid) => self.destroy(&uuid),
            NetCall::SetAutostart { uuid, on } => self.set_autostart(&uuid, on),
            NetCall::Update { uuid, command, section, parent_index, xml, flags } => {
                self.update(&uuid, command, section, parent_index, &xml, flags)
            }
            _ => Err(NetError::Internal("not a change".into())),
        }
    }

    fn query(&self, call: NetCall) -> Result<NetValue, NetError> {
        Ok(match call {
            NetCall::ListAll { flags } => NetValue::Nets(self.list(flags)?),
            NetCall::ListNames { flags, max, .. } => {
                NetValue::Names(self.list(flags)?.into_iter().map(|n| n.name).take(max as usize).collect())
            }
            NetCall::LookupByName(name) => NetValue::Net(
                self.nets.iter().find(|n| n.current().name == name).map(Net::handle).ok_or(NetError::NoName(name))?,
            ),
            NetCall::LookupByUuid(uuid) => NetValue::Net(self.by_uuid(&uuid)?.handle()),
            NetCall::XmlDesc { uuid, flags } => {
                if flags & !XML_INACTIVE != 0 {
                    return Err(NetError::Flags { flags, function: "networkGetXMLDesc".into() });
                }
                let n = self.by_uuid(&uuid)?;
                let def = match (flags & XML_INACTIVE != 0, &n.config) {
                    (true, Some(c)) => c,
                    _ => n.current(),
                };
                NetValue::Text(def.to_xml())
            }
            NetCall::BridgeName(uuid) => {
                let n = self.by_uuid(&uuid)?;
                let b = n.current().bridge.clone().ok_or_else(|| {
                    NetError::Internal(format!("network '{}' does not have a bridge name.", n.current().name))
                })?;
                NetValue::Text(b)
            }
            NetCall::Autostart(uuid) => NetValue::Int(self.by_uuid(&uuid)?.autostart.into()),
            NetCall::IsActive(uuid) => NetValue::Int(self.by_uuid(&uuid)?.live.is_some().into()),
            NetCall::IsPersistent(uuid) => NetValue::Int(self.by_uuid(&uuid)?.config.is_some().into()),
            NetCall::Leases { uuid, mac, flags } => NetValue::Leases(self.leases(&uuid, mac.as_deref(), flags)?),
            other => return Err(NetError::Internal(format!("{} is a change", other.api()))),
        })
    }
}

fn check_validate_flag(flags: u32, function: &str) -> Result<(), NetError> {
    // VIR_NETWORK_DEFINE_VALIDATE / VIR_NETWORK_CREATE_VALIDATE: definitions are always checked.
    if flags & !1 != 0 {
        return Err(NetError::Flags { flags, function: function.into() });
    }
    Ok(())
}
