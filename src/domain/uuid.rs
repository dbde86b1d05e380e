//! A domain's UUID as one type, so that a UUID is never confused with any
//! other 16 bytes and is written one way (libvirt's hyphenated text).

use serde::{Deserialize, Serialize};

/// A domain UUID: the raw 16 bytes libvirt's wire protocol carries. On
/// every channel it encodes exactly as the bare bytes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A new random (version 4) UUID, for a definition that names none.
    pub fn random() -> Uuid {
        Uuid(*uuid::Uuid::new_v4().as_bytes())
    }

    /// Parses either text form (with or without dashes).
    pub fn parse(s: &str) -> Option<Uuid> {
        let hex: String = s.trim().chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 {
            return None;
        }
        ::uuid::Uuid::try_parse(&hex).ok().map(|u| Uuid(*u.as_bytes()))
    }

    /// The raw bytes.
    pub fn bytes(&self) -> [u8; 16] {
        self.0
    }
}

impl From<[u8; 16]> for Uuid {
    fn from(b: [u8; 16]) -> Uuid {
        Uuid(b)
    }
}

impl From<Uuid> for [u8; 16] {
    fn from(u: Uuid) -> [u8; 16] {
        u.0
    }
}

/// libvirt's text form: lower-case, hyphenated.
impl std::fmt::Display for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        ::uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_text_forms_parse_and_the_hyphenated_one_is_written() {
        let u = Uuid::parse("BCDDDA922BD442EAB525077265D27C4C").unwrap();
        assert_eq!(u.to_string(), "bcddda92-2bd4-42ea-b525-077265d27c4c");
        assert_eq!(Uuid::parse(&u.to_string()), Some(u));
        assert_eq!(Uuid::parse("bcddda92-2bd4"), None);
        assert_ne!(Uuid::random(), Uuid::random());
    }

    #[test]
    fn it_encodes_as_the_bare_bytes() {
        let u = Uuid([7; 16]);
        assert_eq!(postcard::to_allocvec(&u).unwrap(), postcard::to_allocvec(&[7u8; 16]).unwrap());
    }
}
