//! Opening a domain's disks at start: each image and every backing file its
//! qcow2 header names, as root, checked and locked, for the helper (which
//! opens no path).
//!
//! - Each path is first opened `O_PATH` and checked with `fstat` (as
//!   `files.rs` does for kernels): only a regular file or a block device is
//!   then opened for real, through `/proc/self/fd`, so a FIFO, socket,
//!   character device or directory is refused without ever being opened and
//!   nothing waits.
//! - Flags follow `<driver cache=...>` as QEMU maps it (`O_DIRECT` for none
//!   and directsync, `O_DSYNC` for writethrough and directsync); the image is
//!   opened read-only for `<readonly/>`, backing layers always.
//! - A qcow2 header's backing name is resolved against the image's own
//!   directory when relative, as QEMU does; its format must be named in the
//!   header (libvirt refuses to probe it); a chain is at most
//!   [`MAX_CHAIN`] layers and may not loop.
//! - Every layer is locked as QEMU locks it (`imagelock.rs`), so a second
//!   guest (ours or QEMU's) cannot write an image in use, nor use one that
//!   another writes.
//!
//! The fds live in [`OpenDisk`]s that the guest's `Running` keeps: dropping
//! them releases the locks. The helper holds copies of the same open file
//! descriptions, which keep the locks while the guest runs, across daemon
//! restarts, until the helper exits.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::imagelock::{self, LockError, Perms};
use super::qcow2::{self, HeaderError};
use crate::domain::{BackingLayer, Disk, DiskCache, DiskFormat, DiskKind, DomainDef, LiveDisk};
use crate::privsep::helper::{CacheMode, DiskConfig, DiskDevice, ImageFormat};

/// Most layers in one disk's chain, the image included.
pub const MAX_CHAIN: usize = 16;
/// virtio-blk's ID string is at most this many bytes.
const VIRTIO_BLK_ID_BYTES: usize = 20;

/// Why a disk could not be opened; every variant names the disk's target
/// and the path.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The path could not be opened or inspected.
    #[error("cannot open disk '{target}' image '{path}': {source}")]
    Open {
        /// The disk's target.
        target: String,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something other than a regular file or block device.
    #[error("disk '{target}': '{path}' is a {kind}, not a regular file or block device")]
    NotImage {
        /// The disk's target.
        target: String,
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A qcow2 header that cannot be used.
    #[error("disk '{target}': image '{path}': {source}")]
    Header {
        /// The disk's target.
        target: String,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: HeaderError,
    },
    /// The image's backing format is not named in its header.
    #[error(
        "disk '{target}': format of backing image '{backing}' of image '{path}' was not specified in the image \
         metadata (See https://libvirt.org/kbase/backing_chains.html for troubleshooting)"
    )]
    NoBackingFormat {
        /// The disk's target.
        target: String,
        /// The image.
        path: PathBuf,
        /// Its backing file.
        backing: String,
    },
    /// A backing format the helper cannot read.
    #[error("disk '{target}': backing format '{format}' of image '{path}' is not supported, only 'raw' and 'qcow2'")]
    BackingFormat {
        /// The disk's target.
        target: String,
        /// The image.
        path: PathBuf,
        /// The format named.
        format: String,
    },
    /// The chain is deeper than [`MAX_CHAIN`].
    #[error("disk '{target}': the backing chain of '{path}' is deeper than {MAX_CHAIN} images")]
    TooDeep {
        /// The disk's target.
        target: String,
        /// The top image.
        path: PathBuf,
    },
    /// A layer names one above it.
    #[error("disk '{target}': the backing chain loops: '{path}' is already in it")]
    Loop {
        /// The disk's target.
        target: String,
        /// The layer seen twice.
        path: PathBuf,
    },
    /// `<driver type='raw'>` on a qcow2 image would give the guest its
    /// metadata to overwrite; libvirt lets it pass, QEMU warns. Refused.
    #[error("disk '{target}': image '{path}' is a qcow2 image but the disk says type='raw'")]
    RawIsQcow2 {
        /// The disk's target.
        target: String,
        /// The path.
        path: PathBuf,
    },
    /// Another user of the image stands in the way.
    #[error("disk '{target}': {source} on '{path}': is another process using the image?")]
    Locked {
        /// The disk's target.
        target: String,
        /// The path.
        path: PathBuf,
        /// QEMU's words for the conflict.
        #[source]
        source: LockError,
    },
}

/// One disk, open and locked for the guest.
#[derive(Debug)]
pub struct OpenDisk {
    /// Its layers, the image first, then its backing files; each holds its locks.
    pub layers: Vec<File>,
    /// What the live XML shows beyond the definition.
    pub live: LiveDisk,
    /// What the helper is told about it.
    pub config: DiskConfig,
}

fn cache_mode(c: Option<DiskCache>) -> CacheMode {
    match c {
        Some(DiskCache::None) => CacheMode::None,
        None | Some(DiskCache::Writeback) => CacheMode::Writeback,
        Some(DiskCache::Writethrough) => CacheMode::Writethrough,
        Some(DiskCache::Directsync) => CacheMode::Directsync,
        Some(DiskCache::Unsafe) => CacheMode::Unsafe,
    }
}

/// The open(2) flags beyond the access mode, for a cache mode.
fn cache_flags(c: CacheMode) -> i32 {
    match c {
        CacheMode::None => libc::O_DIRECT,
        CacheMode::Writethrough => libc::O_DSYNC,
        CacheMode::Directsync => libc::O_DIRECT | libc::O_DSYNC,
        CacheMode::Writeback | CacheMode::Unsafe => 0,
    }
}

/// One layer, opened.
struct Layer {
    file: File,
    kind: DiskKind,
    id: (u64, u64),
}

/// Opens `path` if it is a regular file or block device, never opening
/// anything else (a FIFO's open would wait).
fn open_layer(target: &str, path: &Path, write: bool, flags: i32) -> Result<Layer, DiskError> {
    let open_err = |source| DiskError::Open { target: target.to_owned(), path: path.to_owned(), source };
    let handle = OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path).map_err(open_err)?;
    let meta = handle.metadata().map_err(open_err)?;
    let t = meta.file_type();
    let kind = match (t.is_file(), t.is_block_device()) {
        (true, _) => DiskKind::File,
        (_, true) => DiskKind::Block,
        _ => {
            return Err(DiskError::NotImage {
                target: target.to_owned(),
                path: path.to_owned(),
                kind: super::files::kind_of(t),
            });
        }
    };
    let via = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | flags)
        .open(via)
        .map_err(open_err)?;
    Ok(Layer { file, kind, id: (meta.dev(), meta.ino()) })
}

/// Where a backing name leads: an absolute one as is, a relative one from
/// the directory of the image that names it (QEMU's rule).
fn resolve(image: &Path, backing: &str) -> PathBuf {
    let b = Path::new(backing);
    if b.is_absolute() { b.to_owned() } else { image.parent().unwrap_or(Path::new("/")).join(b) }
}

/// Opens, checks and locks every layer of `disk`, and says what the helper
/// needs to know of it.
pub fn open(disk: &Disk) -> Result<OpenDisk, DiskError> {
    let target = disk.target.as_str();
    let cache = cache_mode(disk.cache);
    let flags = cache_flags(cache);
    let top_path = PathBuf::from(&disk.path);
    let top = open_layer(target, &top_path, !disk.readonly, flags)?;
    let qcow2 = disk.format == DiskFormat::Qcow2;
    if !qcow2 && qcow2::is_qcow2(&top.file) {
        return Err(DiskError::RawIsQcow2 { target: target.to_owned(), path: top_path });
    }
    let locked = |file: &File, path: &Path, perms| {
        imagelock::lock(file, perms).map_err(|source| DiskError::Locked {
            target: target.to_owned(),
            path: path.to_owned(),
            source,
        })
    };
    locked(&top.file, &top_path, Perms::image(qcow2, disk.readonly, disk.shareable))?;
    let mut ids = vec![top.id];
    let mut layers = vec![top.file];
    let mut backing = Vec::new();
    // Walk the chain while the current layer is qcow2.
    let (mut path, mut is_qcow2) = (top_path.clone(), qcow2);
    while is_qcow2 {
        let current = layers.last().ok_or(DiskError::TooDeep { target: target.to_owned(), path: top_path.clone() })?;
        let header = qcow2::read(current).map_err(|source| DiskError::Header {
            target: target.to_owned(),
            path: path.clone(),
            source,
        })?;
        let Some(name) = header.backing else { break };
        let format = match header.backing_format.as_deref() {
            None => {
                return Err(DiskError::NoBackingFormat { target: target.to_owned(), path, backing: name });
            }
            Some("raw") => DiskFormat::Raw,
            Some("qcow2") => DiskFormat::Qcow2,
            Some(other) => {
                return Err(DiskError::BackingFormat { target: target.to_owned(), path, format: other.to_owned() });
            }
        };
        if layers.len() >= MAX_CHAIN {
            return Err(DiskError::TooDeep { target: target.to_owned(), path: top_path });
        }
        let next = resolve(&path, &name);
        let layer = open_layer(target, &next, false, flags & libc::O_DIRECT)?;
        if ids.contains(&layer.id) {
            return Err(DiskError::Loop { target: target.to_owned(), path: next });
        }
        locked(&layer.file, &next, Perms::BACKING)?;
        ids.push(layer.id);
        backing.push(BackingLayer { kind: layer.kind, path: next.display().to_string(), format });
        layers.push(layer.file);
        (path, is_qcow2) = (next, format == DiskFormat::Qcow2);
    }
    let serial = disk.serial.as_ref().map(|s| s.chars().take(VIRTIO_BLK_ID_BYTES).collect());
    let config = DiskConfig {
        alias: disk.alias(),
        target: disk.target.clone(),
        device: DiskDevice::VirtioBlk,
        pci_slot: disk.pci_slot.unwrap_or(0),
        format: if qcow2 { ImageFormat::Qcow2 } else { ImageFormat::Raw },
        layers: layers.len() as u8,
        read_only: disk.readonly,
        serial,
        cache,
        discard: disk.discard == Some(true),
    };
    Ok(OpenDisk { layers, live: LiveDisk { backing }, config })
}

/// Opens every disk of `def`, or none: on the first failure the ones opened
/// are closed again (releasing their locks).
pub fn open_all(def: &DomainDef) -> Result<Vec<OpenDisk>, DiskError> {
    def.disks.iter().map(open).collect()
}

/// `virDomainGetBlockInfo`'s figures for `disk`, from its image without
/// locking it: (allocation, capacity, physical) in bytes. A file's
/// allocation is the blocks it takes, its physical size its length; a block
/// device is its size throughout; capacity is what the guest sees (a qcow2
/// image's virtual size).
pub fn block_info(disk: &Disk) -> Result<(u64, u64, u64), DiskError> {
    let path = Path::new(&disk.path);
    let layer = open_layer(&disk.target, path, false, 0)?;
    let io_err = |source| DiskError::Open { target: disk.target.clone(), path: path.to_owned(), source };
    let meta = layer.file.metadata().map_err(io_err)?;
    let (allocation, physical) = match layer.kind {
        DiskKind::File => (meta.blocks().saturating_mul(512), meta.len()),
        DiskKind::Block => {
            let size = std::io::Seek::seek(&mut &layer.file, std::io::SeekFrom::End(0)).map_err(io_err)?;
            (size, size)
        }
    };
    let capacity = match disk.format {
        DiskFormat::Qcow2 => {
            qcow2::read(&layer.file)
                .map_err(|source| DiskError::Header { target: disk.target.clone(), path: path.to_owned(), source })?
                .size
        }
        DiskFormat::Raw => physical,
    };
    Ok((allocation, capacity, physical))
}

/// `VIR_DOMAIN_XML_INACTIVE`.
const XML_INACTIVE: u32 = 2;

/// What `virDomainGetXMLDesc` shows: for a running guest (unless
/// `VIR_DOMAIN_XML_INACTIVE`), each disk's alias and the backing chain
/// found when it started, as libvirt's live XML has them.
pub fn xml_desc(def: &DomainDef, running: Option<&super::guests::Running>, flags: u32) -> String {
    match running {
        Some(r) if flags & XML_INACTIVE == 0 => {
            let live: Vec<LiveDisk> = r.disks.iter().map(|d| d.live.clone()).collect();
            let nics: Vec<_> = r.nics.iter().map(|n| n.live.clone()).collect();
            let mut def = def.clone();
            def.set_clock(&r.clock.live(&def.clock()));
            def.to_live_xml(&live, &nics)
        }
        _ => def.to_xml(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::qcow2::tests::image;
    use super::*;

    fn disk(path: &Path, format: DiskFormat) -> Disk {
        let xml = format!(
            "<disk><driver name='qemu' type='{}'/><source file='{}'/><target dev='vda'/></disk>",
            format.as_str(),
            path.display()
        );
        crate::domain::disk::parse(&crate::domain::xml::parse(&xml).unwrap(), &mut |_| Ok(())).unwrap()
    }

    #[test]
    fn a_relative_chain_is_found_from_each_images_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("base.raw"), [0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("sub/mid.qcow2"), image(4096, Some("../base.raw"), Some("raw"))).unwrap();
        std::fs::write(dir.path().join("sub/top.qcow2"), image(4096, Some("mid.qcow2"), Some("qcow2"))).unwrap();
        let open = open(&disk(&dir.path().join("sub/top.qcow2"), DiskFormat::Qcow2)).unwrap();
        assert_eq!(open.layers.len(), 3);
        assert_eq!(open.config.layers, 3);
        let paths: Vec<&str> = open.live.backing.iter().map(|b| b.path.as_str()).collect();
        let mid = dir.path().join("sub/mid.qcow2");
        let base = dir.path().join("sub/../base.raw");
        assert_eq!(paths, [mid.to_str().unwrap(), base.to_str().unwrap()]);
        assert_eq!(open.live.backing[1].format, DiskFormat::Raw);
        // The chain is locked: the base cannot be opened for writing by a second user.
        let again = disk(&dir.path().join("base.raw"), DiskFormat::Raw);
        assert!(matches!(super::open(&again), Err(DiskError::Locked { .. })));
        drop(open);
        assert!(super::open(&again).is_ok(), "the locks go with the fds");
    }

    #[test]
    fn loops_deep_chains_and_missing_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.qcow2");
        std::fs::write(&a, image(4096, Some("b.qcow2"), Some("qcow2"))).unwrap();
        std::fs::write(dir.path().join("b.qcow2"), image(4096, Some("a.qcow2"), Some("qcow2"))).unwrap();
        assert!(matches!(open(&disk(&a, DiskFormat::Qcow2)), Err(DiskError::Loop { .. })));
        let own = dir.path().join("own.qcow2");
        std::fs::write(&own, image(4096, Some("own.qcow2"), Some("qcow2"))).unwrap();
        assert!(matches!(open(&disk(&own, DiskFormat::Qcow2)), Err(DiskError::Loop { .. })));
        for i in 0..=MAX_CHAIN {
            std::fs::write(dir.path().join(format!("d{i}")), image(4096, Some(&format!("d{}", i + 1)), Some("qcow2")))
                .unwrap();
        }
        let e = open(&disk(&dir.path().join("d0"), DiskFormat::Qcow2)).unwrap_err();
        assert!(matches!(e, DiskError::TooDeep { .. }), "{e}");
        let nofmt = dir.path().join("nofmt.qcow2");
        std::fs::write(&nofmt, image(4096, Some("base"), None)).unwrap();
        let e = open(&disk(&nofmt, DiskFormat::Qcow2)).unwrap_err().to_string();
        assert!(e.contains("was not specified in the image metadata"), "{e}");
        // A qcow2 image given as raw would hand the guest its metadata.
        assert!(matches!(open(&disk(&a, DiskFormat::Raw)), Err(DiskError::RawIsQcow2 { .. })));
    }

    #[test]
    fn non_images_are_refused_without_waiting_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for (path, kind) in
            [(fifo.as_path(), "FIFO"), (Path::new("/dev/null"), "character device"), (dir.path(), "directory")]
        {
            let e = open(&disk(path, DiskFormat::Raw)).unwrap_err();
            assert!(matches!(e, DiskError::NotImage { kind: k, .. } if k == kind), "{e}");
            let text = e.to_string();
            assert!(text.contains("'vda'") && text.contains(&path.display().to_string()), "{text}");
        }
        let missing = dir.path().join("missing");
        let e = open(&disk(&missing, DiskFormat::Raw)).unwrap_err().to_string();
        assert!(e.contains("'vda'") && e.contains("missing") && e.contains("No such file"), "{e}");
    }
}
