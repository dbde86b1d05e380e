//! Which `CONNECT_OPEN` names reach this daemon's driver.
//!
//! libvirt parses the name as an RFC 3986 URI and picks the driver by scheme
//! and path alone: `qemu:///system`, `qemu:/system` (the same URI with the
//! empty authority dropped, as URI libraries write it), `qemu:///system/` and
//! `qemu:///%73ystem` all open the same connection. A host in the authority
//! (`qemu://system`, `qemu://host/system`) is not a local driver's URI, and
//! a name that is not a hierarchical URI at all names no driver.

/// Whether `requested` names the driver and path of `ours` (`qemu:///system`
/// or `qemu:///session`); the client has already stripped the transport and
/// its own query parameters.
pub(super) fn names_us(requested: &str, ours: &str) -> bool {
    match (parse(requested), parse(ours)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The parts of a local driver URI that pick the driver: scheme and path,
/// without trailing slashes and with percent escapes decoded.
#[derive(Debug, PartialEq, Eq)]
struct Local {
    scheme: String,
    path: String,
}

fn parse(uri: &str) -> Option<Local> {
    let (scheme, rest) = uri.split_once(':')?;
    let first = scheme.chars().next()?;
    if !first.is_ascii_alphabetic() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return None;
    }
    // The fragment and the query say nothing about the driver.
    let rest = rest.split('#').next().unwrap_or_default();
    let rest = rest.split('?').next().unwrap_or_default();
    let path = match rest.strip_prefix("//") {
        Some(after) => {
            let end = after.find('/').unwrap_or(after.len());
            if !after[..end].is_empty() {
                return None; // a server: not a local driver's URI
            }
            &after[end..]
        }
        None => rest,
    };
    if !path.starts_with('/') {
        return None; // opaque (`qemu:system`) or empty
    }
    let path = decode(path)?;
    let trimmed = path.trim_end_matches('/');
    let path = if trimmed.is_empty() { "/" } else { trimmed };
    Some(Local { scheme: scheme.to_owned(), path: path.to_owned() })
}

/// Decodes `%XX` escapes; a broken escape or a result that is not UTF-8 is no URI.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::names_us;

    const OURS: &str = "qemu:///system";

    #[test]
    fn every_spelling_of_the_same_scheme_and_path_is_ours() {
        for uri in [
            "qemu:///system",
            "qemu:/system",
            "qemu:///system/",
            "qemu:/system//",
            "qemu:///system?foo=bar",
            "qemu:///system#frag",
            "qemu:///%73ystem",
        ] {
            assert!(names_us(uri, OURS), "{uri}");
        }
    }

    #[test]
    fn other_drivers_paths_hosts_and_non_uris_are_not() {
        for uri in [
            "qemu:///session",
            "qemu://system",
            "qemu://host/system",
            "qemu:system",
            "qemu:",
            "xen:///system",
            "qemu:///sys%7",
            "/system",
            "qemu:///systemd",
        ] {
            assert!(!names_us(uri, OURS), "{uri}");
        }
    }
}
