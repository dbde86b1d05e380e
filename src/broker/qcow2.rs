//! Just enough of a qcow2 header to find an image's backing file: its
//! magic, version, size, encryption, external data file bit, backing file
//! name and the backing format extension.
//!
//! The broker opens every layer of a disk's chain for the helper (which opens
//! no path), so it must know the chain; the helper, not the broker, reads and
//! writes qcow2 data. A header is untrusted input (a guest may have written
//! the image), so every read is bounded: the header and its extensions are
//! read from the first cluster, at most [`MAX_HEADER_READ`] bytes, and the
//! backing name is at most 1023 bytes, QEMU's own limit.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// `QFI\xfb`.
const MAGIC: u32 = 0x5146_49fb;
/// Most bytes read for the header and its extensions.
pub const MAX_HEADER_READ: usize = 64 * 1024;
/// QEMU's limit on a backing file name.
const MAX_BACKING_NAME: u32 = 1023;
/// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Incompatible feature bit: the data lives in another file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;

/// What the broker needs of a qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// The guest-visible size in bytes.
    pub size: u64,
    /// The backing file name as stored (maybe relative), if any.
    pub backing: Option<String>,
    /// The backing format the header names, if it names one.
    pub backing_format: Option<String>,
}

/// Why a header cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not a qcow2 image at all.
    #[error("not a qcow2 image (bad magic)")]
    Magic,
    /// Shorter than its header says.
    #[error("the qcow2 header is truncated")]
    Truncated,
    /// A version we do not know.
    #[error("qcow2 version {0} is not supported")]
    Version(u32),
    /// Encrypted images need a secret the daemon does not handle.
    #[error("encrypted qcow2 images are not supported")]
    Encrypted,
    /// The data lives in a second file the domain does not name.
    #[error("qcow2 images with an external data file are not supported")]
    DataFile,
    /// Out-of-range header fields.
    #[error("invalid qcow2 header: {0}")]
    Invalid(&'static str),
    /// The backing name is not usable as a path.
    #[error("backing file name is not a local path: '{0}'")]
    NotLocal(String),
    /// The file could not be read.
    #[error("cannot read the qcow2 header: {0}")]
    Io(String),
}

fn be32(b: &[u8], at: usize) -> Result<u32, HeaderError> {
    let bytes = b.get(at..at + 4).ok_or(HeaderError::Truncated)?;
    Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn be64(b: &[u8], at: usize) -> Result<u64, HeaderError> {
    Ok((u64::from(be32(b, at)?) << 32) | u64::from(be32(b, at + 4)?))
}

/// Reads up to `len` bytes at `offset`.
fn read_at(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, HeaderError> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HeaderError::Io(e.to_string())),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Whether `file` starts with the qcow2 magic.
pub fn is_qcow2(file: &File) -> bool {
    read_at(file, 0, 4).is_ok_and(|b| b == MAGIC.to_be_bytes())
}

/// Reads the header of the qcow2 image `file`.
pub fn read(file: &File) -> Result<Header, HeaderError> {
    let buf = read_at(file, 0, MAX_HEADER_READ)?;
    if be32(&buf, 0)? != MAGIC {
        return Err(HeaderError::Magic);
    }
    let version = be32(&buf, 4)?;
    if !(2..=3).contains(&version) {
        return Err(HeaderError::Version(version));
    }
    let backing_offset = be64(&buf, 8)?;
    let backing_size = be32(&buf, 16)?;
    let cluster_bits = be32(&buf, 20)?;
    if !(9..=21).contains(&cluster_bits) {
        return Err(HeaderError::Invalid("cluster size"));
    }
    let cluster = 1usize << cluster_bits;
    let size = be64(&buf, 24)?;
    if be32(&buf, 32)? != 0 {
        return Err(HeaderError::Encrypted);
    }
    let header_len = if version == 3 {
        if be64(&buf, 72)? & INCOMPAT_DATA_FILE != 0 {
            return Err(HeaderError::DataFile);
        }
        be32(&buf, 100)? as usize
    } else {
        72
    };
    if header_len < 72 || header_len > cluster.min(MAX_HEADER_READ) {
        return Err(HeaderError::Invalid("header length"));
    }
    // Extensions follow the header, within the first cluster.
    let end = cluster.min(buf.len());
    let mut at = header_len;
    let mut backing_format = None;
    loop {
        if at + 8 > end {
            return Err(HeaderError::Invalid("header extensions run past the first cluster"));
        }
        let (kind, len) = (be32(&buf, at)?, be32(&buf, at + 4)? as usize);
        if kind == EXT_END {
            break;
        }
        let data = buf.get(at + 8..at + 8 + len).filter(|_| at + 8 + len <= end);
        let data = data.ok_or(HeaderError::Invalid("header extension runs past the first cluster"))?;
        if kind == EXT_BACKING_FORMAT {
            let name = std::str::from_utf8(data).map_err(|_| HeaderError::Invalid("backing format name"))?;
            backing_format = Some(name.trim_end_matches('\0').to_owned());
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    let backing = match (backing_offset, backing_size) {
        (0, _) | (_, 0) => None,
        (_, n) if n > MAX_BACKING_NAME => return Err(HeaderError::Invalid("backing file name too long")),
        (off, _) if off > cluster as u64 => return Err(HeaderError::Invalid("backing file offset")),
        (off, n) => {
            let raw = read_at(file, off, n as usize)?;
            if raw.len() != n as usize {
                return Err(HeaderError::Truncated);
            }
            let name = String::from_utf8(raw).map_err(|_| HeaderError::Invalid("backing file name is not UTF-8"))?;
            if name.contains('\0') || name.starts_with("json:") || name.contains("://") {
                return Err(HeaderError::NotLocal(name));
            }
            Some(name)
        }
    };
    Ok(Header { version, size, backing, backing_format })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A qcow2 v3 header with 64 KiB clusters, `size` bytes, and the given
    /// backing name and format extension: enough for the chain tests.
    pub fn image(size: u64, backing: Option<&str>, format: Option<&str>) -> Vec<u8> {
        let mut h = vec![0u8; 104];
        h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        if let Some(f) = format {
            h.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
            h.extend_from_slice(&(f.len() as u32).to_be_bytes());
            h.extend_from_slice(f.as_bytes());
            h.resize(h.len().div_ceil(8) * 8, 0);
        }
        h.extend_from_slice(&[0; 8]);
        if let Some(b) = backing {
            let off = h.len() as u64;
            h[8..16].copy_from_slice(&off.to_be_bytes());
            h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
            h.extend_from_slice(b.as_bytes());
        }
        h
    }

    fn header_of(bytes: &[u8]) -> Result<Header, HeaderError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, bytes).unwrap();
        read(&File::open(&p).unwrap())
    }

    #[test]
    fn a_header_gives_its_size_backing_name_and_format() {
        let h = header_of(&image(1 << 30, Some("base.raw"), Some("raw"))).unwrap();
        assert_eq!(
            h,
            Header { version: 3, size: 1 << 30, backing: Some("base.raw".into()), backing_format: Some("raw".into()) }
        );
        let plain = header_of(&image(4096, None, None)).unwrap();
        assert_eq!((plain.backing, plain.backing_format), (None, None));
    }

    #[test]
    fn hostile_headers_are_refused_not_trusted() {
        let good = image(4096, Some("b"), Some("raw"));
        assert_eq!(header_of(b"QFI"), Err(HeaderError::Truncated));
        assert_eq!(header_of(&[0u8; 200]), Err(HeaderError::Magic));
        let mut v = good.clone();
        v[4..8].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(header_of(&v), Err(HeaderError::Version(9)));
        let mut long = good.clone();
        long[16..20].copy_from_slice(&5000u32.to_be_bytes());
        assert!(matches!(header_of(&long), Err(HeaderError::Invalid(_))));
        let mut far = good.clone();
        far[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(header_of(&far), Err(HeaderError::Invalid(_))));
        let mut ext = good.clone();
        ext[108..112].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        assert!(matches!(header_of(&ext), Err(HeaderError::Invalid(_))));
        let mut enc = good.clone();
        enc[32..36].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(header_of(&enc), Err(HeaderError::Encrypted));
        let mut data = good.clone();
        data[72..80].copy_from_slice(&INCOMPAT_DATA_FILE.to_be_bytes());
        assert_eq!(header_of(&data), Err(HeaderError::DataFile));
        let mut hl = good;
        hl[100..104].copy_from_slice(&1_000_000u32.to_be_bytes());
        assert!(matches!(header_of(&hl), Err(HeaderError::Invalid(_))));
        assert!(matches!(header_of(&image(1, Some("nbd://h/x"), Some("raw"))), Err(HeaderError::NotLocal(_))));
        // Truncated name: the header promises more bytes than the file has.
        let mut cut = image(1, Some("base"), None);
        cut.truncate(cut.len() - 2);
        assert_eq!(header_of(&cut), Err(HeaderError::Truncated));
    }
}
