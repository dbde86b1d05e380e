//! libvirt's storage model for directory pools: pool and volume XML (parsed
//! bounded, written as libvirt writes it), sizes with units, and what an
//! image file's header says (format, virtual size, backing file).
//!
//! Pure: no file is opened here; `broker/storage.rs` does the I/O.

#![deny(missing_docs)]

pub mod pool;
pub mod probe;
pub mod volume;

use crate::privsep::storage::StorageError;

/// Largest pool or volume XML accepted, in bytes.
pub const MAX_XML_BYTES: usize = 64 * 1024;
/// Longest pool or volume name, in bytes: `.NAME.xml.new` still fits a file name.
pub const MAX_NAME_BYTES: usize = 246;
/// Longest path accepted (`PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4095;

/// Parses storage XML with the domain parser's bounds plus a smaller size cap.
pub(crate) fn parse_xml(text: &str, what: &str) -> Result<crate::domain::xml::Element, StorageError> {
    if text.len() > MAX_XML_BYTES {
        return Err(StorageError::Xml(format!("{what} XML of {} bytes exceeds {MAX_XML_BYTES}", text.len())));
    }
    crate::domain::xml::parse(text).map_err(|e| match e {
        crate::domain::DomainError::Syntax { line, detail } => {
            StorageError::XmlSyntax(format!("({what}_definition):{line}: {detail}"))
        }
        other => StorageError::Xml(other.to_string()),
    })
}

/// A size in `unit` (libvirt's `virScaleInteger`: bytes by default), in bytes.
pub fn scale(value: &str, unit: Option<&str>) -> Result<u64, StorageError> {
    let n: u64 = value.trim().parse().map_err(|_| StorageError::Xml(format!("malformed size '{}'", value.trim())))?;
    let per: u64 = match unit.unwrap_or("bytes") {
        "b" | "B" | "byte" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "m" | "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "PB" => 1_000_000_000_000_000,
        "p" | "P" | "PiB" => 1 << 50,
        "EB" => 1_000_000_000_000_000_000,
        "e" | "E" | "EiB" => 1 << 60,
        other => return Err(StorageError::InvalidArg(format!("unknown suffix '{other}'"))),
    };
    n.checked_mul(per).ok_or_else(|| StorageError::InvalidArg(format!("value too large: {n}{}", unit.unwrap_or(""))))
}

/// Checks a pool or volume name: not empty, bounded, no '/', not '.' or '..'.
pub fn check_name(name: &str, what: &str) -> Result<(), StorageError> {
    if name.is_empty() {
        return Err(StorageError::Xml(format!("missing {what} name element")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(StorageError::InvalidArg(format!("{what} name is longer than {MAX_NAME_BYTES} bytes")));
    }
    if name.contains('/') {
        return Err(StorageError::InvalidArg(format!("{what} name '{name}' cannot contain '/'")));
    }
    if name == "." || name == ".." || name.contains('\0') || name.chars().any(char::is_control) {
        return Err(StorageError::InvalidArg(format!("{what} name '{name}' is not allowed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_scale_by_libvirts_units() {
        assert_eq!(scale("1", Some("G")).unwrap(), 1 << 30);
        assert_eq!(scale("1", Some("GB")).unwrap(), 1_000_000_000);
        assert_eq!(scale("512", None).unwrap(), 512);
        assert!(scale("1", Some("furlong")).is_err());
        assert!(scale("99999999", Some("EiB")).is_err());
        assert!(scale("-1", None).is_err());
    }

    #[test]
    fn names_with_a_slash_or_dots_are_refused() {
        assert!(check_name("disk.qcow2", "volume").is_ok());
        for bad in ["", "a/b", ".", "..", "../x", "x\n"] {
            assert!(check_name(bad, "volume").is_err(), "{bad:?}");
        }
        assert!(check_name(&"n".repeat(MAX_NAME_BYTES + 1), "volume").is_err());
    }
}
