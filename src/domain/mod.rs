//! Domain XML: parsing and emitting libvirt's domain format for the subset
//! this daemon runs.
//!
//! Pure code. Every element falls in one of four classes (see `parse.rs`):
//! modelled (parsed into [`DomainDef`]), kept (written back as given: host-side
//! settings, and descriptions of the guest's platform that `platform.rs`
//! checks against what the helper gives every guest), unsupported (it would
//! change what the guest sees and we cannot run it: refused naming it), or
//! unknown (dropped, as libvirt does, or refused under
//! `VIR_DOMAIN_DEFINE_VALIDATE`). `caps.rs` answers "what may a domain ask
//! for" (domain capabilities) from the same rules.

#![deny(missing_docs)]

pub mod backing;
pub mod balloon;
mod caps;
pub mod clock;
pub mod disk;
mod emit;
pub mod nsxml;
mod parse;
pub mod pci;
pub mod platform;
pub mod tuning;
mod units;
mod uuid;
pub mod xml;

pub use caps::domain_capabilities;
pub use disk::{BackingLayer, Disk, DiskCache, DiskFormat, DiskKind, LiveDisk};
pub use parse::{MAX_NAME_BYTES, MAX_VCPUS, interface as parse_interface, parse, parse_with};
pub use units::to_kib;
pub use uuid::Uuid;

use xml::Element;

/// Order in which kept top-level elements are written (libvirt's order).
const KEPT_ORDER: &[&str] = &[
    "metadata",
    "blkiotune",
    "memtune",
    "memoryBacking",
    "cputune",
    "resource",
    "features",
    "cpu",
    "clock",
    "pm",
    "seclabel",
];
/// Order in which kept devices are written, around the modelled ones.
const KEPT_DEVICE_ORDER: &[&str] = &["emulator", "controller", "input", "audio", "video", "memballoon"];

fn rank(order: &[&str], name: &str) -> usize {
    order.iter().position(|n| *n == name).unwrap_or(order.len())
}

/// Why a domain XML was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Not well-formed XML.
    #[error("line {line}: {detail}")]
    Syntax {
        /// Line of the error.
        line: u32,
        /// The parser's words.
        detail: String,
    },
    /// Larger than allowed.
    #[error("domain XML of {0} bytes is larger than {max} bytes", max = xml::MAX_XML_BYTES)]
    TooLarge(usize),
    /// Nested deeper than allowed.
    #[error("domain XML nests deeper than {0} elements")]
    TooDeep(usize),
    /// Well-formed, but not a valid domain description.
    #[error("{0}")]
    Invalid(String),
    /// Valid, but asks for something this daemon cannot run.
    #[error("{0}")]
    Unsupported(String),
    /// An element outside what we accept, under `VIR_DOMAIN_DEFINE_VALIDATE`.
    #[error("Extra element {element} in {parent}")]
    Schema {
        /// The element.
        element: String,
        /// Its parent.
        parent: String,
    },
}

/// What the guest does on power-off, reboot or crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleAction {
    /// Stop the domain.
    Destroy,
    /// Start it again.
    Restart,
    /// Keep it in its state for inspection.
    Preserve,
}

impl LifecycleAction {
    /// The XML word.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleAction::Destroy => "destroy",
            LifecycleAction::Restart => "restart",
            LifecycleAction::Preserve => "preserve",
        }
    }
}

/// `<os>`: direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsDef {
    /// `arch` of `<type>` (always x86_64 here).
    pub arch: String,
    /// `machine` of `<type>`, kept for round-trips; our platform is our own.
    pub machine: Option<String>,
    /// Kernel image path.
    pub kernel: String,
    /// Initrd path.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// `<boot dev=...>` entries, kept.
    pub boot: Vec<String>,
}

/// A virtio network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// `network`, `bridge` or `ethernet`.
    pub kind: String,
    /// The network or bridge name, when the kind has one.
    pub source: Option<String>,
    /// MAC address.
    pub mac: [u8; 6],
    /// Host-side device name.
    pub target: Option<String>,
    /// `<link state='down'>`: the guest sees no carrier.
    pub link_down: bool,
    /// `<mtu size=...>`.
    pub mtu: Option<u32>,
    /// The PCI slot on bus 0, assigned at define when not given (`pci.rs`).
    pub pci_slot: Option<u8>,
}

impl Interface {
    /// The MAC in libvirt's text form.
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// The alias libvirt gives the `index`th interface of a running guest.
pub fn nic_alias(index: usize) -> String {
    format!("net{index}")
}

/// What a running guest's interface has that its definition does not: the
/// tap made for it and, on a network, the network's bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveNic {
    /// The tap's name (`vnetN`, or the `<target dev>` asked for).
    pub tap: String,
    /// The bridge of the network it is on (`type='network'` only).
    pub bridge: Option<String>,
    /// The link state set on the running guest (`domif-setlink`), where it
    /// differs from the definition's: `Some(true)` down.
    pub link_down: Option<bool>,
}

/// Where a serial port or console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CharSource {
    /// A pseudo-terminal (what `virsh console` attaches to).
    Pty,
    /// Appended to a file.
    File(String),
    /// Discarded.
    Null,
}

/// A serial port or console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharDev {
    /// Backend.
    pub source: CharSource,
    /// Port number.
    pub port: u32,
}

/// A domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDef {
    /// Name, unique on the host.
    pub name: String,
    /// UUID, unique on the host.
    pub uuid: Uuid,
    /// Short title.
    pub title: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Maximum memory in KiB.
    pub memory_kib: u64,
    /// Current memory in KiB.
    pub current_memory_kib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Boot.
    pub os: OsDef,
    /// On guest power-off.
    pub on_poweroff: LifecycleAction,
    /// On guest reboot.
    pub on_reboot: LifecycleAction,
    /// On guest crash.
    pub on_crash: LifecycleAction,
    /// Disks.
    pub disks: Vec<Disk>,
    /// Network interfaces.
    pub interfaces: Vec<Interface>,
    /// Serial ports.
    pub serials: Vec<CharDev>,
    /// Consoles.
    pub consoles: Vec<CharDev>,
    /// Top-level elements kept as written: host-side settings, and the
    /// platform descriptions `platform` accepted (features, cpu, clock, pm).
    pub kept: Vec<Element>,
    /// Devices kept as written: the emulator path, controllers `platform`
    /// accepted, and the devices of type none (memballoon, video, audio).
    pub kept_devices: Vec<Element>,
}

impl DomainDef {
    /// The canonical XML, as dumpxml shows it and as it is stored.
    pub fn to_xml(&self) -> String {
        emit::domain(self, None).to_xml()
    }

    /// The XML of the running guest: as [`DomainDef::to_xml`], with each
    /// disk's alias, source index and the backing chain found at start
    /// (`live` in `disks` order; a disk beyond it shows no chain).
    /// Each interface shows its tap and alias (`nics` in `interfaces` order).
    pub fn to_live_xml(&self, live: &[LiveDisk], nics: &[LiveNic]) -> String {
        emit::domain(self, Some((live, nics))).to_xml()
    }

    /// Whether `<features>` asks for `name` (e.g. `acpi`).
    pub fn has_feature(&self, name: &str) -> bool {
        self.kept.iter().any(|e| e.name == "features" && e.find(name).is_some())
    }

    /// The guest's `<cputune>`, `<memtune>` and `<blkiotune>` (checked at
    /// parse time, so a kept element always reads back).
    pub fn tuning(&self) -> tuning::Tuning {
        let find = |name: &str| self.kept.iter().find(|e| e.name == name);
        tuning::Tuning {
            cpu: find("cputune").and_then(|e| tuning::cputune(e, self.vcpus).ok()).unwrap_or_default(),
            memory: find("memtune").and_then(|e| tuning::memtune(e).ok()).unwrap_or_default(),
            blkio: find("blkiotune").and_then(|e| tuning::blkiotune(e).ok()).unwrap_or_default(),
        }
    }

    /// The guest RAM's backing (`<memoryBacking>`, checked at parse time).
    pub fn backing(&self) -> backing::Backing {
        self.kept.iter().find(|e| e.name == "memoryBacking").and_then(|e| backing::parse(e).ok()).unwrap_or_default()
    }

    /// Replaces the tuning elements with `t`'s, in canonical form.
    pub fn set_tuning(&mut self, t: &tuning::Tuning) {
        self.kept.retain(|e| !matches!(e.name.as_str(), "cputune" | "memtune" | "blkiotune"));
        self.kept.extend(tuning::emit_cputune(&t.cpu));
        self.kept.extend(tuning::emit_memtune(&t.memory));
        self.kept.extend(tuning::emit_blkiotune(&t.blkio));
        self.kept.sort_by_key(|e| rank(KEPT_ORDER, &e.name));
    }

    /// The guest's `<clock>` (checked at parse time, so a kept element
    /// always reads back); UTC without one.
    pub fn clock(&self) -> clock::Clock {
        self.kept.iter().find(|e| e.name == "clock").and_then(|e| clock::parse(e).ok()).unwrap_or_default()
    }

    /// Replaces `<clock>` with `c`, in canonical form.
    pub fn set_clock(&mut self, c: &clock::Clock) {
        self.kept.retain(|e| e.name != "clock");
        self.kept.push(clock::emit(c));
        self.kept.sort_by_key(|e| rank(KEPT_ORDER, &e.name));
    }

    /// Whether the guest's CPUID shows the host's invariant TSC: hidden for
    /// `<cpu mode='host-passthrough'>` unless `migratable='off'`, as QEMU's
    /// migratable host CPU hides it; shown without `<cpu>`, where the guest
    /// gets the host CPU as KVM offers it, whole.
    pub fn invariant_tsc(&self) -> bool {
        match self.kept.iter().find(|e| e.name == "cpu").map(platform::cpu) {
            Some(Ok(cpu)) => !cpu.migratable,
            // A kept <cpu> passed this check at parse time.
            Some(Err(_)) | None => true,
        }
    }
}

/// The UUID in libvirt's text form.
pub fn uuid_string(u: &Uuid) -> String {
    u.to_string()
}

/// Parses a UUID in either text form (with or without dashes).
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    Uuid::parse(s)
}
