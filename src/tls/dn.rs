//! A client certificate's subject distinguished name, as libvirt prints it
//! (`C=GB,O=Example,CN=client`, in the certificate's own order), and
//! `tls_allowed_dn_list` glob matching.
//!
//! The DER is walked with explicit bounds; the certificate has already been
//! verified against the CA by the time it is read here, but a malformed one
//! is still only an error, never a panic.

/// Most RDN attributes read from one subject.
const MAX_ATTRIBUTES: usize = 64;

/// One DER element: tag, contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n if n < 0x80 => (usize::from(n), rest),
        0x81..=0x84 => {
            let count = usize::from(first & 0x7f);
            if rest.len() < count {
                return None;
            }
            let len = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[count..])
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The contents of the element with `tag` at the start of `input`, and the rest.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, inner, rest) = element(input)?;
    (t == tag).then_some((inner, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// Dotted form of a DER OID body.
fn oid_string(body: &[u8]) -> Option<String> {
    let (&first, rest) = body.split_first()?;
    let mut parts = vec![u64::from(first / 40), u64::from(first % 40)];
    let mut acc: u64 = 0;
    for &b in rest {
        acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            parts.push(acc);
            acc = 0;
        }
    }
    // An arc cut off in the middle is no OID.
    if rest.last().is_some_and(|b| b & 0x80 != 0) {
        return None;
    }
    Some(parts.iter().map(u64::to_string).collect::<Vec<_>>().join("."))
}

/// GnuTLS's short names for the usual attribute types.
fn attribute_name(oid: &str) -> String {
    match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.5" => "serialNumber",
        "1.2.840.113549.1.9.1" => "EMAIL",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        other => other,
    }
    .to_owned()
}

/// An attribute value with RFC 4514's special characters escaped, and
/// control characters as `\XX` (the DN goes into logs and audit records).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        if c.is_control() {
            for b in c.to_string().bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
            continue;
        }
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i + 1 == value.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The subject DN of the DER certificate `cert`.
pub fn subject_dn(cert: &[u8]) -> Option<String> {
    let (certificate, _) = expect(cert, SEQUENCE)?;
    let (mut tbs, _) = expect(certificate, SEQUENCE)?;
    // [0] version is optional.
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2;
    }
    let (_, _, rest) = element(tbs)?; // serialNumber
    let (_, _, rest) = element(rest)?; // signature algorithm
    let (_, _, rest) = element(rest)?; // issuer
    let (_, _, rest) = element(rest)?; // validity
    let (mut subject, _) = expect(rest, SEQUENCE)?;
    let mut parts = Vec::new();
    while !subject.is_empty() {
        let (mut rdn, next) = expect(subject, SET)?;
        subject = next;
        let mut values = Vec::new();
        while !rdn.is_empty() {
            let (attr, next) = expect(rdn, SEQUENCE)?;
            rdn = next;
            let (oid, value) = expect(attr, OID)?;
            let (_, raw, _) = element(value)?;
            let text = String::from_utf8_lossy(raw);
            values.push(format!("{}={}", attribute_name(&oid_string(oid)?), escape(&text)));
            if parts.len() + values.len() > MAX_ATTRIBUTES {
                return None;
            }
        }
        parts.push(values.join("+"));
    }
    Some(parts.join(","))
}

/// Shell-style glob matching (`*` any run, `?` one character), as
/// `tls_allowed_dn_list` entries use it.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether `dn` may connect: an empty list allows every verified client.
pub fn allowed(list: &[String], dn: &str) -> bool {
    list.is_empty() || list.iter().any(|p| glob_matches(p, dn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_fnmatch() {
        assert!(glob_matches("C=GB,O=Example,CN=*", "C=GB,O=Example,CN=client one"));
        assert!(!glob_matches("C=GB,O=Example,CN=*", "C=GB,O=Other,CN=client"));
        assert!(glob_matches("CN=a?c", "CN=abc"));
        assert!(!glob_matches("CN=a?c", "CN=abbc"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*CN=x*", "O=y,CN=x,OU=z"));
        assert!(allowed(&[], "anything"));
        assert!(!allowed(&["CN=admin".into()], "CN=admin2"));
    }

    #[test]
    fn truncated_or_garbage_certificates_are_no_dn() {
        assert_eq!(subject_dn(&[]), None);
        assert_eq!(subject_dn(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_dn(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }

    #[test]
    fn special_characters_are_escaped() {
        assert_eq!(escape("a,b"), "a\\,b");
        assert_eq!(escape(" x "), "\\ x\\ ");
        assert_eq!(escape("a\nb\0"), "a\\0Ab\\00");
        assert_eq!(oid_string(&[0x55, 0x04, 0x03]).as_deref(), Some("2.5.4.3"));
        assert_eq!(oid_string(&[0x55, 0x04, 0x03, 0x81]), None);
    }
}
