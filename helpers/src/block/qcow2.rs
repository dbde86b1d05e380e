//! qcow2 images and their backing chains through the `imago` crate (its
//! synchronous build), over fds the broker opened: imago takes an open
//! `std::fs::File` (`imago::file::File::from_open_file`) and an explicitly
//! opened backing image (`Qcow2OpenBuilder::backing`), and the
//! [`DenyImplicitOpenGate`] refuses every path an image header names (a
//! backing file name, an external data file), so no header can make the
//! helper open anything.
//!
//! The chain is built bottom up: the lowest layer is raw or qcow2 as its
//! parent's header says (`backing_fmt`; no format named means raw, never a
//! guess from the content); every layer above it has a backing image, so
//! it is qcow2. Only the top layer is opened writable.

use std::fs::File;
use std::io;

use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, StorageOpenOptions};

use super::Backend;

type Image = FormatAccess<imago::file::File>;

/// An image imago reads: qcow2 over its chain, or raw with O_DIRECT.
pub struct Imago {
    image: Image,
}

/// QEMU's bounds on what a qcow2 header may make a reader allocate at
/// open: the L1 table (32 MiB) and the refcount table (8 MiB); and on the
/// backing file name it holds (1023 bytes).
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const MAX_BACKING_NAME: u32 = 1023;

/// Checks the header fields that size allocations before imago trusts
/// them (imago bounds the cluster size, not the tables).
pub fn check_header(file: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut h = [0u8; 72];
    file.read_exact_at(&mut h, 0)?;
    let be32 = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let bad = |why: String| Err(io::Error::new(io::ErrorKind::InvalidData, why));
    if h[..4] != *b"QFI\xfb" {
        return bad("not a qcow2 image".into());
    }
    if !(2..=3).contains(&be32(4)) {
        return bad(format!("qcow2 version {} is not supported", be32(4)));
    }
    if be32(16) > MAX_BACKING_NAME {
        return bad(format!("backing file name of {} bytes", be32(16)));
    }
    let cluster_bits = be32(20);
    if !(9..=21).contains(&cluster_bits) {
        return bad(format!("cluster size 2^{cluster_bits}"));
    }
    if u64::from(be32(36)) * 8 > MAX_L1_BYTES {
        return bad(format!("an L1 table of {} entries", be32(36)));
    }
    if u64::from(be32(56)) << cluster_bits > MAX_REFTABLE_BYTES {
        return bad(format!("a refcount table of {} clusters", be32(56)));
    }
    Ok(())
}

fn storage(file: File, writable: bool, direct: bool) -> io::Result<imago::file::File> {
    imago::file::File::from_open_file(file, StorageOpenOptions::new().write(writable).direct(direct))
}

impl Imago {
    /// A raw image through imago (which handles O_DIRECT alignment).
    pub fn raw(file: File, writable: bool, direct: bool) -> io::Result<Imago> {
        let raw =
            Raw::builder(storage(file, writable, direct)?).write(writable).open(DenyImplicitOpenGate::default())?;
        Ok(Imago { image: FormatAccess::new(raw) })
    }

    /// A qcow2 image over its backing `files`, top first; the error names the layer.
    pub fn chain(mut files: Vec<File>, writable: bool, direct: bool) -> Result<Imago, (usize, io::Error)> {
        let count = files.len();
        let deny = DenyImplicitOpenGate::default;
        let mut below: Option<Image> = None;
        if count > 1 {
            let at = |layer: usize| move |e: io::Error| (layer, e);
            check_header(&files[count - 2]).map_err(at(count - 2))?;
            let parent = files[count - 2].try_clone().map_err(at(count - 2))?;
            let header = Qcow2::<imago::file::File>::builder(storage(parent, false, direct).map_err(at(count - 2))?)
                .backing(None)
                .open(deny())
                .map_err(at(count - 2))?;
            let qcow2_bottom = header.implicit_backing_format().map(String::as_str) == Some("qcow2");
            let bottom = files.pop().ok_or((count - 1, io::Error::other("no layer")))?;
            if qcow2_bottom {
                check_header(&bottom).map_err(at(count - 1))?;
            }
            let s = storage(bottom, false, direct).map_err(at(count - 1))?;
            below = Some(if qcow2_bottom {
                let image = Qcow2::<imago::file::File>::builder(s).backing(None).open(deny()).map_err(at(count - 1))?;
                if image.implicit_backing_file().is_some() {
                    return Err((count - 1, io::Error::other("names a backing file, but no layer below it was given")));
                }
                FormatAccess::new(image)
            } else {
                FormatAccess::new(Raw::builder(s).open(deny()).map_err(at(count - 1))?)
            });
        }
        for (layer, file) in files.into_iter().enumerate().rev() {
            let at = |e: io::Error| (layer, e);
            check_header(&file).map_err(at)?;
            let write = layer == 0 && writable;
            let has_below = below.is_some();
            let builder = Qcow2::<imago::file::File>::builder(storage(file, write, direct).map_err(at)?);
            let image = builder.write(write).backing(below.take()).open(deny()).map_err(at)?;
            if image.implicit_backing_file().is_some() != has_below {
                let why = if has_below {
                    "has no backing file, but a layer below it was given"
                } else {
                    "names a backing file, but no layer below it was given"
                };
                return Err((layer, io::Error::other(why)));
            }
            below = Some(FormatAccess::new(image));
        }
        below.map(|image| Imago { image }).ok_or((0, io::Error::other("no image")))
    }
}

impl Backend for Imago {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image.read(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.image.write(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.image.flush()?;
        self.image.sync()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.image.discard_to_any(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.image.write_zeroes(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn header(edit: impl FnOnce(&mut [u8; 72])) -> File {
        let mut h = [0u8; 72];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[36..40].copy_from_slice(&8u32.to_be_bytes());
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        edit(&mut h);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&h).unwrap();
        f
    }

    #[test]
    fn header_fields_that_size_allocations_are_bounded() {
        assert!(check_header(&header(|_| {})).is_ok());
        let too_big_l1 = header(|h| h[36..40].copy_from_slice(&u32::MAX.to_be_bytes()));
        assert!(check_header(&too_big_l1).unwrap_err().to_string().contains("L1"));
        let big_reftable = header(|h| h[56..60].copy_from_slice(&1000u32.to_be_bytes()));
        assert!(check_header(&big_reftable).unwrap_err().to_string().contains("refcount"));
        let clusters = header(|h| h[20..24].copy_from_slice(&30u32.to_be_bytes()));
        assert!(check_header(&clusters).is_err());
        let raw = header(|h| h[..4].copy_from_slice(b"\0\0\0\0"));
        assert!(check_header(&raw).unwrap_err().to_string().contains("not a qcow2"));
        let name = header(|h| h[16..20].copy_from_slice(&4096u32.to_be_bytes()));
        assert!(check_header(&name).is_err());
    }
}
