//! What an image file's first bytes say: raw or qcow2, the virtual size, the
//! backing file and its format. Every field read from the header is bounded
//! before use (an image is untrusted input: a guest wrote it, or a user
//! uploaded it).

/// How many bytes of a file the probe reads.
pub const HEADER_BYTES: usize = 64 * 1024;
/// Longest backing file name QEMU accepts in a qcow2 header.
const MAX_BACKING_NAME: usize = 1023;
/// Most header extensions looked at.
const MAX_EXTENSIONS: usize = 64;
/// qcow2's magic, "QFI\xfb".
const QCOW2_MAGIC: u32 = 0x5146_49fb;
/// The backing file format extension.
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;

/// An image format this daemon creates and recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Raw bytes.
    Raw,
    /// QEMU's qcow2.
    Qcow2,
}

impl Format {
    /// libvirt's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// The format named `s`, if this daemon handles it.
    pub fn from_name(s: &str) -> Option<Format> {
        match s {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }
}

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format.
    pub format: Format,
    /// The guest-visible size in bytes (a raw file's length).
    pub capacity: u64,
    /// The backing file as written in the header, and its format if recorded.
    pub backing: Option<(String, Option<String>)>,
    /// qcow2: "0.10" (version 2) or "1.1" (version 3).
    pub compat: Option<&'static str>,
    /// qcow2: the cluster size in bytes.
    pub cluster_size: Option<u64>,
    /// qcow2 v3: the lazy refcounts feature.
    pub lazy_refcounts: bool,
}

/// Why a header is not a usable image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// A qcow2 magic with fields out of range.
    #[error("invalid qcow2 header: {0}")]
    BadQcow2(&'static str),
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

/// Probes `head` (the first bytes of a file of `file_len` bytes).
pub fn probe(head: &[u8], file_len: u64) -> Result<ImageInfo, ProbeError> {
    if be32(head, 0) != Some(QCOW2_MAGIC) {
        return Ok(ImageInfo {
            format: Format::Raw,
            capacity: file_len,
            backing: None,
            compat: None,
            cluster_size: None,
            lazy_refcounts: false,
        });
    }
    let bad = ProbeError::BadQcow2;
    let version = be32(head, 4).ok_or(bad("short header"))?;
    let compat = match version {
        2 => "0.10",
        3 => "1.1",
        _ => return Err(bad("unknown version")),
    };
    let backing_offset = be64(head, 8).ok_or(bad("short header"))?;
    let backing_len = be32(head, 16).ok_or(bad("short header"))? as usize;
    let cluster_bits = be32(head, 20).ok_or(bad("short header"))?;
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad("cluster size out of range"));
    }
    let capacity = be64(head, 24).ok_or(bad("short header"))?;
    let (header_len, compatible) = if version == 3 {
        let len = be32(head, 100).ok_or(bad("short header"))? as usize;
        if len < 104 || len > head.len() {
            return Err(bad("header length out of range"));
        }
        (len, be64(head, 80).ok_or(bad("short header"))?)
    } else {
        (72, 0)
    };
    let backing = if backing_offset == 0 {
        None
    } else {
        if backing_len == 0 || backing_len > MAX_BACKING_NAME {
            return Err(bad("backing file name length out of range"));
        }
        let start = usize::try_from(backing_offset).map_err(|_| bad("backing file offset out of range"))?;
        let name = start
            .checked_add(backing_len)
            .and_then(|end| head.get(start..end))
            .ok_or(bad("backing file name beyond the probed header"))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("backing file name is not UTF-8"))?;
        if name.contains('\0') {
            return Err(bad("backing file name contains NUL"));
        }
        Some((name.to_owned(), backing_format(head, header_len)))
    };
    Ok(ImageInfo {
        format: Format::Qcow2,
        capacity,
        backing,
        compat: Some(compat),
        cluster_size: Some(1 << cluster_bits),
        lazy_refcounts: compatible & 1 != 0,
    })
}

/// The backing format extension's value, if present and sane.
fn backing_format(head: &[u8], mut at: usize) -> Option<String> {
    for _ in 0..MAX_EXTENSIONS {
        let kind = be32(head, at)?;
        let len = be32(head, at + 4)? as usize;
        if kind == 0 {
            return None;
        }
        let data = head.get(at + 8..(at + 8).checked_add(len)?)?;
        if kind == EXT_BACKING_FORMAT {
            return std::str::from_utf8(data).ok().filter(|s| s.len() <= 16).map(str::to_owned);
        }
        at = at.checked_add(8 + len.div_ceil(8) * 8)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 v3 header as `qemu-img create -f qcow2 -b base.img -F raw` writes it.
    fn qcow2(backing: Option<(&str, &str)>) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[0..4].copy_from_slice(&QCOW2_MAGIC.to_be_bytes());
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[80..88].copy_from_slice(&1u64.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        if let Some((name, fmt)) = backing {
            // Extension at 112: backing format, padded to 8; then the end marker.
            h[112..116].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
            h[116..120].copy_from_slice(&(fmt.len() as u32).to_be_bytes());
            h[120..120 + fmt.len()].copy_from_slice(fmt.as_bytes());
            let name_at = 512usize;
            h[8..16].copy_from_slice(&(name_at as u64).to_be_bytes());
            h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            h[name_at..name_at + name.len()].copy_from_slice(name.as_bytes());
        }
        h
    }

    #[test]
    fn a_qcow2_header_gives_size_backing_and_format() {
        let info = probe(&qcow2(Some(("/p/base.img", "raw"))), 200_000).unwrap();
        assert_eq!(info.format, Format::Qcow2);
        assert_eq!(info.capacity, 1 << 30);
        assert_eq!(info.backing, Some(("/p/base.img".into(), Some("raw".into()))));
        assert_eq!((info.compat, info.cluster_size, info.lazy_refcounts), (Some("1.1"), Some(65536), true));
        assert_eq!(probe(&qcow2(None), 1).unwrap().backing, None);
    }

    #[test]
    fn anything_else_is_raw_of_its_length() {
        let info = probe(b"hello", 12345).unwrap();
        assert_eq!((info.format, info.capacity), (Format::Raw, 12345));
    }

    #[test]
    fn hostile_headers_are_refused_not_trusted() {
        let mut h = qcow2(Some(("/b", "raw")));
        h[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(probe(&h, 0).is_err());
        let mut h = qcow2(Some(("/b", "raw")));
        h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(probe(&h, 0).is_err());
        let mut h = qcow2(None);
        h[20..24].copy_from_slice(&63u32.to_be_bytes());
        assert!(probe(&h, 0).is_err());
        let mut h = qcow2(None);
        h[100..104].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(probe(&h, 0).is_err());
        assert!(probe(&h[..50], 0).is_err());
        // An extension whose length runs past the header ends the walk.
        let mut h = qcow2(Some(("/b", "raw")));
        h[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(probe(&h, 0).unwrap().backing, Some(("/b".into(), None)));
    }
}
