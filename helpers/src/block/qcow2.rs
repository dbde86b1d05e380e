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
            let parent = files[count - 2].try_clone().map_err(at(count - 2))?;
            let header = Qcow2::<imago::file::File>::builder(storage(parent, false, direct).map_err(at(count - 2))?)
                .backing(None)
                .open(deny())
                .map_err(at(count - 2))?;
            let qcow2_bottom = header.implicit_backing_format().map(String::as_str) == Some("qcow2");
            let bottom = files.pop().ok_or((count - 1, io::Error::other("no layer")))?;
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
