//! `<disk>`: virtio disks on raw files, block devices and qcow2 images.
//!
//! What the helper can give a guest is modelled (a file or block device as a
//! virtio-blk disk on a PCI slot of bus 0, raw or qcow2, with libvirt's cache,
//! discard, read-only, shareable and serial settings); every other disk shape
//! (a CD-ROM, a floppy, a LUN, another bus, a network or volume source, an
//! `io=` backend we do not have) is refused naming it, with libvirt's
//! unsupported-configuration error. Counts and lengths are bounded here, before
//! the broker opens anything a definition names.

use super::DomainError;
use super::xml::Element;

/// Most disks a domain may have: one per PCI slot the allocator hands out
/// (`pci.rs`) leaves room for other devices.
pub const MAX_DISKS: usize = 26;
/// Longest `<serial>` accepted, in bytes (virtio-blk's ID is the first 20).
pub const MAX_SERIAL_BYTES: usize = 128;
/// Longest target name (`vdaa...`).
const MAX_TARGET_BYTES: usize = 32;
/// Longest source path, in bytes (`PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Characters QEMU accepts in a drive serial (libvirt checks the same set).
const SERIAL_CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.+";

/// Where a disk's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// A regular file.
    File,
    /// A block device.
    Block,
}

/// The image format (`<driver type=...>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Bytes as the guest sees them.
    Raw,
    /// A qcow2 image, possibly over backing files.
    Qcow2,
}

impl DiskFormat {
    /// The XML word.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// `<driver cache=...>`; `None` in [`Disk::cache`] is QEMU's default, writeback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskCache {
    /// O_DIRECT.
    None,
    /// The page cache, guest flushes honoured.
    Writeback,
    /// Every write durable (O_DSYNC).
    Writethrough,
    /// O_DIRECT and O_DSYNC.
    Directsync,
    /// Guest flushes ignored.
    Unsafe,
}

impl DiskCache {
    /// The XML word.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskCache::None => "none",
            DiskCache::Writeback => "writeback",
            DiskCache::Writethrough => "writethrough",
            DiskCache::Directsync => "directsync",
            DiskCache::Unsafe => "unsafe",
        }
    }

    fn parse(s: &str) -> Option<DiskCache> {
        [DiskCache::None, DiskCache::Writeback, DiskCache::Writethrough, DiskCache::Directsync, DiskCache::Unsafe]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// A virtio disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `file` or `block`.
    pub kind: DiskKind,
    /// Source path (absolute).
    pub path: String,
    /// Image format.
    pub format: DiskFormat,
    /// `<driver cache=...>`, if given.
    pub cache: Option<DiskCache>,
    /// `<driver discard=...>`: `Some(true)` for `unmap`, `Some(false)` for `ignore`.
    pub discard: Option<bool>,
    /// `<driver io='threads'>` was given (the helper's disks run on threads).
    pub io_threads: bool,
    /// `<driver error_policy='report'>` was given: the only policy the
    /// helper has (the guest gets the I/O error and runs on; the broker
    /// sends libvirt's I/O error events), so the others are refused.
    pub error_policy_report: bool,
    /// Target device name (`vda`).
    pub target: String,
    /// Read-only.
    pub readonly: bool,
    /// Shareable (other guests may write it too: raw only).
    pub shareable: bool,
    /// `<serial>`.
    pub serial: Option<String>,
    /// `<boot order=...>`.
    pub boot_order: Option<u32>,
    /// The PCI slot on bus 0, assigned at define when not given (`pci.rs`).
    pub pci_slot: Option<u8>,
    /// `<disk model=...>` as given: `virtio` or `virtio-non-transitional`,
    /// both the helper's modern-only device (a transitional one is refused).
    pub model: Option<&'static str>,
}

impl Disk {
    /// The device alias libvirt's QEMU driver gives a virtio disk:
    /// `virtio-disk` and the target's index (vda 0, vdb 1, ..., vdaa 26).
    pub fn alias(&self) -> String {
        format!("virtio-disk{}", target_index(&self.target).unwrap_or(0))
    }

    /// The target name's index, as libvirt's `virDiskNameToIndex` counts
    /// (`vda` 0, `vdz` 25, `vdaa` 26).
    pub fn index(&self) -> u32 {
        target_index(&self.target).unwrap_or(0)
    }
}

/// `vdX` to its index; `None` for a name that is not `vd` and letters.
fn target_index(target: &str) -> Option<u32> {
    let letters = target.strip_prefix("vd")?;
    if letters.is_empty() || letters.len() > 6 || !letters.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let mut idx: u32 = 0;
    for (i, b) in letters.bytes().enumerate() {
        let v = u32::from(b - b'a');
        idx = if i == 0 { v } else { (idx + 1) * 26 + v };
    }
    Some(idx)
}

fn invalid(msg: impl Into<String>) -> DomainError {
    DomainError::Invalid(msg.into())
}

fn unsupported(msg: impl Into<String>) -> DomainError {
    DomainError::Unsupported(msg.into())
}

/// Disk children that change what the guest sees and that the helper cannot
/// provide: refused rather than dropped.
const UNSUPPORTED_CHILDREN: &[&str] =
    &["iotune", "blockio", "geometry", "encryption", "transient", "wwn", "vendor", "product", "mirror", "auth"];
/// Disk children modelled or accepted: `backingStore` is what the daemon
/// finds itself at start (as libvirt's QEMU driver does), `alias` is the
/// daemon's own.
const KNOWN_CHILDREN: &[&str] =
    &["driver", "source", "target", "readonly", "shareable", "serial", "boot", "address", "alias", "backingStore"];

/// Parses one `<disk>`; `unknown` is called for each child we do not know
/// (dropped, or refused under validation).
pub fn parse(d: &Element, unknown: &mut dyn FnMut(&Element) -> Result<(), DomainError>) -> Result<Disk, DomainError> {
    let kind = match d.get("type").unwrap_or("file") {
        "file" => DiskKind::File,
        "block" => DiskKind::Block,
        t => return Err(unsupported(format!("disk type '{t}' is not supported, only 'file' and 'block'"))),
    };
    match d.get("device").unwrap_or("disk") {
        "disk" => {}
        dev => return Err(unsupported(format!("disk device '{dev}' is not supported, only 'disk'"))),
    }
    let model = match d.get("model") {
        None => None,
        Some("virtio") => Some("virtio"),
        Some("virtio-non-transitional") => Some("virtio-non-transitional"),
        Some(m @ "virtio-transitional") => {
            return Err(unsupported(format!("disk model '{m}' is not supported, the device is virtio 1.x only")));
        }
        Some(m) => return Err(invalid(format!("unknown disk model '{m}'"))),
    };
    if let Some(s) = d.get("snapshot").filter(|s| *s != "no" && *s != "internal") {
        return Err(unsupported(format!("disk snapshot mode '{s}' is not supported")));
    }
    let mut format = DiskFormat::Raw;
    let (mut cache, mut discard, mut io_threads, mut error_policy_report) = (None, None, false, false);
    if let Some(driver) = d.find("driver") {
        for (k, v) in &driver.attrs {
            match (k.as_str(), v.as_str()) {
                ("name", "qemu") => {}
                ("name", n) => return Err(unsupported(format!("disk driver '{n}' is not supported"))),
                ("type", "raw") => format = DiskFormat::Raw,
                ("type", "qcow2") => format = DiskFormat::Qcow2,
                ("type", f) => {
                    return Err(unsupported(format!("disk format '{f}' is not supported, only 'raw' and 'qcow2'")));
                }
                ("cache", c) => {
                    cache = Some(DiskCache::parse(c).ok_or_else(|| invalid(format!("unknown disk cache mode '{c}'")))?)
                }
                ("discard", "unmap") => discard = Some(true),
                ("discard", "ignore") => discard = Some(false),
                ("discard", x) => return Err(invalid(format!("unknown disk discard mode '{x}'"))),
                ("io", "threads") => io_threads = true,
                ("io", io @ ("native" | "io_uring")) => {
                    return Err(unsupported(format!("disk io mode '{io}' is not supported, only 'threads'")));
                }
                ("io", io) => return Err(invalid(format!("unknown disk io mode '{io}'"))),
                ("error_policy", "report") => error_policy_report = true,
                ("error_policy", p @ ("stop" | "ignore" | "enospace")) => {
                    return Err(unsupported(format!(
                        "disk error policy '{p}' is not supported, only 'report': the guest gets the I/O error and \
                         runs on"
                    )));
                }
                ("error_policy", p) => return Err(invalid(format!("unknown disk error policy '{p}'"))),
                (attr, _) => return Err(unsupported(format!("disk driver attribute '{attr}' is not supported"))),
            }
        }
    }
    let attr = if kind == DiskKind::File { "file" } else { "dev" };
    let path = d
        .find("source")
        .and_then(|s| s.get(attr))
        .ok_or_else(|| invalid(format!("disk has no <source {attr}='...'/>")))?;
    if !path.starts_with('/') || path.len() > MAX_PATH_BYTES || path.contains('\0') {
        return Err(invalid(format!("disk source path '{path}' must be absolute")));
    }
    let (target, bus) = {
        let t = d.find("target").ok_or_else(|| invalid("missing target information for device"))?;
        (t.get("dev").ok_or_else(|| invalid("missing target information for device"))?, t.get("bus"))
    };
    if target.is_empty() || target.len() > MAX_TARGET_BYTES || !target.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid(format!("invalid disk target '{target}'")));
    }
    // libvirt infers the bus from the target's prefix when none is given.
    let bus = bus.unwrap_or(match &target[..2.min(target.len())] {
        "sd" => "scsi",
        "hd" => "ide",
        "fd" => "fdc",
        "xv" => "xen",
        "ub" => "usb",
        _ => "virtio",
    });
    if bus != "virtio" {
        return Err(unsupported(format!("disk bus '{bus}' is not supported, only 'virtio'")));
    }
    if target_index(target).is_none() {
        return Err(invalid(format!("invalid disk target '{target}': a virtio disk is named vd and letters")));
    }
    for c in &d.children {
        let n = c.name.as_str();
        if UNSUPPORTED_CHILDREN.contains(&n) {
            return Err(unsupported(format!("disk <{n}> is not supported by this daemon")));
        }
        if !KNOWN_CHILDREN.contains(&n) {
            unknown(c)?;
        }
    }
    let serial = d.find("serial").map(|s| s.text.clone());
    if let Some(s) = &serial {
        if s.len() > MAX_SERIAL_BYTES {
            return Err(invalid(format!("disk serial is {} bytes long, at most {MAX_SERIAL_BYTES}", s.len())));
        }
        if !s.chars().all(|c| SERIAL_CHARS.contains(c)) {
            return Err(invalid(format!("driver serial '{s}' contains illegal characters")));
        }
    }
    let readonly = d.find("readonly").is_some();
    let shareable = d.find("shareable").is_some();
    if shareable && !readonly && format != DiskFormat::Raw {
        return Err(unsupported(format!("shared access for disk '{target}' requires use of supported storage format")));
    }
    let boot_order = match d.find("boot").map(|b| b.get("order")) {
        None => None,
        Some(o) => Some(
            o.and_then(|o| o.parse::<u32>().ok())
                .filter(|o| *o > 0)
                .ok_or_else(|| invalid("incorrect boot order, expecting positive integer"))?,
        ),
    };
    let pci_slot = d.find("address").map(super::pci::parse_address).transpose()?;
    Ok(Disk {
        kind,
        path: path.to_owned(),
        format,
        cache,
        discard,
        io_threads,
        error_policy_report,
        target: target.to_owned(),
        readonly,
        shareable,
        serial,
        boot_order,
        pci_slot,
        model,
    })
}

/// Checks a domain's disks together: their number, unique targets (as
/// libvirt words a clash), and per-device boot orders beside `<os><boot>`.
pub fn check_all(disks: &[Disk], os_boot: bool) -> Result<(), DomainError> {
    if disks.len() > MAX_DISKS {
        return Err(unsupported(format!("a domain may have at most {MAX_DISKS} disks, not {}", disks.len())));
    }
    for (i, d) in disks.iter().enumerate() {
        if let Some(o) = disks[..i].iter().find(|o| o.target == d.target) {
            return Err(invalid(format!(
                "target '{}' duplicated for disk sources '{}' and '{}'",
                d.target, o.path, d.path
            )));
        }
        if let Some(b) = d.boot_order
            && disks[..i].iter().any(|o| o.boot_order == Some(b))
        {
            return Err(invalid(format!("boot order '{b}' used for more than one device")));
        }
    }
    if os_boot && disks.iter().any(|d| d.boot_order.is_some()) {
        return Err(invalid("per-device boot elements cannot be used together with os/boot elements"));
    }
    Ok(())
}

/// One layer below a disk's image, as the broker found it at start
/// (`<backingStore>` in the live XML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingLayer {
    /// A file or a block device.
    pub kind: DiskKind,
    /// Its path, as resolved.
    pub path: String,
    /// Its format, as its parent's header says.
    pub format: DiskFormat,
}

/// What a running guest shows of one disk beyond its definition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveDisk {
    /// The layers below the image, top first.
    pub backing: Vec<BackingLayer>,
}

fn source(kind: DiskKind, path: &str, index: Option<u32>) -> Element {
    let attr = if kind == DiskKind::File { "file" } else { "dev" };
    let mut e = Element::new("source").attr(attr, path);
    if let Some(i) = index {
        e = e.attr("index", i.to_string());
    }
    e
}

fn kind_word(kind: DiskKind) -> &'static str {
    match kind {
        DiskKind::File => "file",
        DiskKind::Block => "block",
    }
}

/// The `<disk>` element; with `live`, as a running guest's XML shows it:
/// source indices, the backing chain the broker found, and the alias.
pub fn emit(disk: &Disk, live: Option<(&LiveDisk, &mut u32)>) -> Element {
    let mut driver = Element::new("driver").attr("name", "qemu").attr("type", disk.format.as_str());
    if let Some(c) = disk.cache {
        driver = driver.attr("cache", c.as_str());
    }
    if disk.error_policy_report {
        driver = driver.attr("error_policy", "report");
    }
    if disk.io_threads {
        driver = driver.attr("io", "threads");
    }
    if let Some(d) = disk.discard {
        driver = driver.attr("discard", if d { "unmap" } else { "ignore" });
    }
    let mut e = Element::new("disk").attr("type", kind_word(disk.kind)).attr("device", "disk");
    if let Some(m) = disk.model {
        e = e.attr("model", m);
    }
    let mut e = e.child(driver);
    let live = live.map(|(l, next)| {
        // libvirt numbers every image of the domain from 1, top layers first.
        let top = *next;
        *next += 1 + l.backing.len() as u32;
        (l, top)
    });
    e = e.child(source(disk.kind, &disk.path, live.map(|(_, i)| i)));
    if let Some((l, top)) = live {
        // Innermost first: each layer wraps the ones below it.
        let mut below = Element::new("backingStore");
        for (n, layer) in l.backing.iter().enumerate().rev() {
            below = Element::new("backingStore")
                .attr("type", kind_word(layer.kind))
                .attr("index", (top + 1 + n as u32).to_string())
                .child(Element::new("format").attr("type", layer.format.as_str()))
                .child(source(layer.kind, &layer.path, None))
                .child(below);
        }
        e = e.child(below);
    }
    e = e.child(Element::new("target").attr("dev", &disk.target).attr("bus", "virtio"));
    if disk.readonly {
        e = e.child(Element::new("readonly"));
    }
    if disk.shareable {
        e = e.child(Element::new("shareable"));
    }
    if let Some(s) = &disk.serial {
        e = e.child(Element::new("serial").with_text(s));
    }
    if let Some(o) = disk.boot_order {
        e = e.child(Element::new("boot").attr("order", o.to_string()));
    }
    if live.is_some() {
        e = e.child(Element::new("alias").attr("name", disk.alias()));
    }
    if let Some(slot) = disk.pci_slot {
        e = e.child(super::pci::address(slot));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::xml;

    fn disk(text: &str) -> Result<Disk, DomainError> {
        parse(&xml::parse(text).unwrap(), &mut |_| Ok(()))
    }

    #[test]
    fn only_the_report_error_policy_is_taken() {
        let with = |p: &str| {
            disk(&format!(
                "<disk><driver name='qemu' error_policy='{p}'/><source file='/a'/><target dev='vda'/></disk>"
            ))
        };
        assert!(with("report").unwrap().error_policy_report);
        let Err(e) = with("stop") else { panic!("stop taken") };
        assert!(e.to_string().contains("disk error policy 'stop' is not supported, only 'report'"), "{e}");
        let Err(e) = with("bogus") else { panic!("bogus taken") };
        assert!(e.to_string().contains("unknown disk error policy 'bogus'"), "{e}");
    }

    #[test]
    fn targets_index_as_libvirt_counts_them() {
        assert_eq!(target_index("vda"), Some(0));
        assert_eq!(target_index("vdz"), Some(25));
        assert_eq!(target_index("vdaa"), Some(26));
        assert_eq!(target_index("vdba"), Some(52));
        assert_eq!(target_index("sda"), None);
        assert_eq!(target_index("vd"), None);
    }

    #[test]
    fn a_qcow2_disk_with_every_setting_round_trips() {
        let text = "<disk type='file' device='disk' model='virtio-non-transitional'><driver name='qemu' type='qcow2' cache='none' error_policy='report' io='threads' \
                    discard='unmap'/><source file='/i/x.qcow2'/><target dev='vdb' bus='virtio'/><readonly/>\
                    <serial>S-1.2</serial><boot order='2'/>\
                    <address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/></disk>";
        let d = disk(text).unwrap();
        assert_eq!(
            (d.format, d.cache, d.discard, d.io_threads),
            (DiskFormat::Qcow2, Some(DiskCache::None), Some(true), true)
        );
        assert_eq!((d.readonly, d.boot_order, d.pci_slot), (true, Some(2), Some(7)));
        assert!(d.error_policy_report);
        assert_eq!(d.alias(), "virtio-disk1");
        assert!(emit(&d, None).to_xml().contains("cache='none' error_policy='report' io='threads'"));
        let again = parse(&emit(&d, None), &mut |_| Ok(())).unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn shapes_we_do_not_run_are_refused_naming_them() {
        for (text, needle) in [
            ("<disk type='file' device='cdrom'><source file='/x'/><target dev='vda'/></disk>", "'cdrom'"),
            (
                "<disk model='virtio-transitional'><source file='/x'/><target dev='vda'/></disk>",
                "'virtio-transitional'",
            ),
            ("<disk type='file' device='floppy'><source file='/x'/><target dev='fda'/></disk>", "'floppy'"),
            ("<disk type='block' device='lun'><source dev='/x'/><target dev='sda'/></disk>", "'lun'"),
            ("<disk type='file'><source file='/x'/><target dev='sda' bus='sata'/></disk>", "'sata'"),
            ("<disk type='file'><source file='/x'/><target dev='sda'/></disk>", "'scsi'"),
            ("<disk type='volume'><source pool='p' volume='v'/><target dev='vda'/></disk>", "'volume'"),
            ("<disk type='nvme'><source/><target dev='vda'/></disk>", "'nvme'"),
            ("<disk type='dir'><source dir='/d'/><target dev='vda'/></disk>", "'dir'"),
            ("<disk><driver name='qemu' io='native'/><source file='/x'/><target dev='vda'/></disk>", "'native'"),
            ("<disk><driver name='qemu' io='io_uring'/><source file='/x'/><target dev='vda'/></disk>", "'io_uring'"),
            ("<disk><driver name='qemu' type='vmdk'/><source file='/x'/><target dev='vda'/></disk>", "'vmdk'"),
            ("<disk><source file='/x'/><target dev='vda'/><iotune/></disk>", "<iotune>"),
            (
                "<disk><driver name='qemu' type='qcow2'/><source file='/x'/><target dev='vda'/><shareable/></disk>",
                "shared access for disk 'vda'",
            ),
            (
                "<disk><source file='/x'/><target dev='vda'/><address type='drive' controller='0'/></disk>",
                "address type 'drive'",
            ),
        ] {
            match disk(text) {
                Err(DomainError::Unsupported(m)) => assert!(m.contains(needle), "{needle}: {m}"),
                other => panic!("{needle}: {other:?}"),
            }
        }
    }

    #[test]
    fn lengths_and_characters_are_bounded() {
        let long = format!("<disk><source file='/x'/><target dev='vda'/><serial>{}</serial></disk>", "a".repeat(200));
        assert!(matches!(disk(&long), Err(DomainError::Invalid(_))));
        let bad = "<disk><source file='/x'/><target dev='vda'/><serial>a;b</serial></disk>";
        assert!(matches!(disk(bad), Err(DomainError::Invalid(m)) if m.contains("illegal characters")));
        let path = format!("<disk><source file='/{}'/><target dev='vda'/></disk>", "p".repeat(5000));
        assert!(matches!(disk(&path), Err(DomainError::Invalid(_))));
        assert!(matches!(disk("<disk><source file='rel'/><target dev='vda'/></disk>"), Err(DomainError::Invalid(_))));
    }

    #[test]
    fn duplicate_targets_are_refused_as_libvirt_words_it() {
        let a = disk("<disk><source file='/a'/><target dev='vda'/></disk>").unwrap();
        let b = disk("<disk><source file='/b'/><target dev='vda'/></disk>").unwrap();
        assert_eq!(
            check_all(&[a.clone(), b], false),
            Err(DomainError::Invalid("target 'vda' duplicated for disk sources '/a' and '/b'".into()))
        );
        assert!(check_all(&vec![a; MAX_DISKS + 1], false).is_err());
    }

    #[test]
    fn the_live_disk_shows_its_chain_and_alias() {
        let d =
            disk("<disk><driver name='qemu' type='qcow2'/><source file='/i/top'/><target dev='vda'/></disk>").unwrap();
        let live = LiveDisk {
            backing: vec![BackingLayer { kind: DiskKind::File, path: "/i/base".into(), format: DiskFormat::Raw }],
        };
        let mut next = 1;
        let text = emit(&d, Some((&live, &mut next))).to_xml();
        assert_eq!(next, 3);
        for needle in [
            "<source file='/i/top' index='1'/>",
            "<backingStore type='file' index='2'>",
            "<format type='raw'/>",
            "<source file='/i/base'/>",
            "<backingStore/>",
            "<alias name='virtio-disk0'/>",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    }
}
