//! Disk image backends: what virtio-blk reads and writes through, over the
//! fds the broker opened (the helper opens no path). [`raw`] is pread and
//! pwrite on a file or block device; [`qcow2`] is the `imago` crate over
//! the same fds, a backing chain given layer by layer.
//!
//! **Cache modes** (`<driver cache=...>`, as QEMU maps them): the broker
//! opens each image with O_DIRECT (`none`, `directsync`) and O_DSYNC
//! (`writethrough`, `directsync`); here a guest flush becomes an
//! `fdatasync` in every mode but `unsafe`, where it is answered at once.
//! O_DIRECT needs aligned memory and offsets: virtio-blk copies through a
//! page-aligned bounce buffer, and a raw image opened with O_DIRECT goes
//! through imago's raw driver, which probes the file's alignment and
//! widens an unaligned request itself.

pub mod qcow2;
pub mod raw;

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use libvirtd::privsep::helper::{CacheMode, ImageFormat};

/// A disk image as the guest sees it: bytes at offsets.
pub trait Backend: Send {
    /// The image's size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset` (inside [`Backend::size`]).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes what was written durable.
    fn flush(&self) -> io::Result<()>;
    /// Lets the image drop `len` bytes at `offset` (they may read as anything).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zeros.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The image or a layer could not be read or is not what it claims.
    #[error("disk {disk}: layer {layer}: {source}")]
    Layer {
        /// The disk's target.
        disk: String,
        /// Layer index (0 = top).
        layer: usize,
        /// Why.
        source: io::Error,
    },
    /// A raw image cannot have a backing chain.
    #[error("disk {0}: a raw image has no backing file, but {1} layers were given")]
    RawChain(String, usize),
}

/// Whether the broker opened the image with O_DIRECT.
pub fn direct(cache: CacheMode) -> bool {
    matches!(cache, CacheMode::None | CacheMode::Directsync)
}

/// Opens disk `target`'s image from its layers (top first) as `format`.
pub fn open(
    target: &str,
    format: ImageFormat,
    layers: Vec<OwnedFd>,
    writable: bool,
    cache: CacheMode,
) -> Result<Box<dyn Backend>, OpenError> {
    let layer_err = |layer: usize| move |source: io::Error| OpenError::Layer { disk: target.into(), layer, source };
    match format {
        ImageFormat::Raw if layers.len() != 1 => Err(OpenError::RawChain(target.into(), layers.len())),
        ImageFormat::Raw => {
            let file = File::from(layers.into_iter().next().expect("one layer, checked above"));
            if direct(cache) {
                Ok(Box::new(qcow2::Imago::raw(file, writable, true).map_err(layer_err(0))?))
            } else {
                Ok(Box::new(raw::Raw::new(file).map_err(layer_err(0))?))
            }
        }
        ImageFormat::Qcow2 => {
            let files = layers.into_iter().map(File::from).collect();
            qcow2::Imago::chain(files, writable, direct(cache))
                .map(|b| Box::new(b) as Box<dyn Backend>)
                .map_err(|(layer, source)| OpenError::Layer { disk: target.into(), layer, source })
        }
    }
}
