//! XDR (RFC 4506) as a serde data format, so every protocol struct is a
//! plain `#[derive(Serialize, Deserialize)]` type.
//!
//! Mapping: integers of 32 bits or fewer (including `char`, `short` and `bool`)
//! take one 4-byte big-endian unit; 64-bit ones two; strings and `Vec<T>` are a
//! count then the content; `Option<T>` is a 0/1 word then `T`; structs and
//! tuples are their fields in order; `()` is nothing. Opaque bytes need the
//! [`Opaque`] (variable) and [`FixedOpaque`] (fixed) wrappers, since serde
//! would otherwise widen each byte to 4 bytes like an XDR `char`.
//!
//! Decoding is bounded: every count is checked against the bytes left before
//! anything is allocated, strings must be UTF-8, and trailing bytes are an error.

mod de;
mod ser;

pub use de::from_bytes;
pub use ser::{to_bytes, to_writer};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdrError {
    /// The input ended inside a value.
    #[error("unexpected end of XDR data")]
    Eof,
    /// Bytes were left after the value.
    #[error("{0} trailing bytes after XDR value")]
    Trailing(usize),
    /// A count or length exceeds what is left or what is allowed.
    #[error("XDR length {0} too large")]
    TooLong(u64),
    /// A boolean or option discriminant was not 0 or 1.
    #[error("invalid XDR discriminant {0}")]
    BadDiscriminant(u32),
    /// A string was not UTF-8.
    #[error("XDR string is not UTF-8")]
    NotUtf8,
    /// A serde type XDR cannot express (maps, untagged enums...).
    #[error("type not representable in XDR: {0}")]
    Unsupported(&'static str),
    /// A message from serde itself.
    #[error("{0}")]
    Custom(String),
}

impl serde::ser::Error for XdrError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        XdrError::Custom(msg.to_string())
    }
}

impl serde::de::Error for XdrError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        XdrError::Custom(msg.to_string())
    }
}

/// Name prefix that tells the format a newtype holds fixed-length opaque bytes.
const FIXED_OPAQUE: &str = "__xdr_fixed_opaque_";

/// Variable-length opaque data (`opaque name<N>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opaque(pub Vec<u8>);

impl Serialize for Opaque {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Opaque {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Opaque;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("opaque bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Opaque, E> {
                Ok(Opaque(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Opaque, E> {
                Ok(Opaque(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Fixed-length opaque data (`opaque name[N]`), e.g. a 16-byte UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FixedOpaque<const N: usize>(pub [u8; N]);

/// The newtype names carrying the length, one per supported size.
fn fixed_name(n: usize) -> &'static str {
    match n {
        16 => "__xdr_fixed_opaque_16",
        _ => "__xdr_fixed_opaque_unsupported",
    }
}

impl<const N: usize> Serialize for FixedOpaque<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Raw<'a>(&'a [u8]);
        impl Serialize for Raw<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        s.serialize_newtype_struct(fixed_name(N), &Raw(&self.0))
    }
}

impl<'de, const N: usize> Deserialize<'de> for FixedOpaque<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<'de, const N: usize> serde::de::Visitor<'de> for V<N> {
            type Value = FixedOpaque<N>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "{N} opaque bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<FixedOpaque<N>, E> {
                v.try_into().map(FixedOpaque).map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_newtype_struct(fixed_name(N), V::<N>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Domain {
        name: String,
        uuid: FixedOpaque<16>,
        id: i32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Mixed {
        flag: bool,
        small: u8,
        model: [i8; 4],
        maybe: Option<String>,
        list: Vec<u32>,
        blob: Opaque,
        big: u64,
        neg: i64,
        unit: (),
    }

    #[test]
    fn the_spec_worked_example_encodes_byte_for_byte() {
        let uuid = [0x4d, 0xea, 0x22, 0xb3, 0x1d, 0x52, 0x4f, 0x86, 0x80, 0xbb, 0x2a, 0x6a, 0x7a, 0x1d, 0x3d, 0x6f];
        let d = Domain { name: "vm1".into(), uuid: FixedOpaque(uuid), id: -1 };
        let bytes = to_bytes(&d).unwrap();
        let mut want = vec![0, 0, 0, 3, b'v', b'm', b'1', 0];
        want.extend_from_slice(&uuid);
        want.extend_from_slice(&[0xff; 4]);
        assert_eq!(bytes, want);
        assert_eq!(from_bytes::<Domain>(&bytes).unwrap(), d);
    }

    #[test]
    fn every_shape_round_trips_with_four_byte_units() {
        let m = Mixed {
            flag: true,
            small: 0xc3,
            model: [b'x' as i8, -61, 0, 0],
            maybe: Some("ab".into()),
            list: vec![1, 2],
            blob: Opaque(vec![9, 8, 7, 6, 5]),
            big: 7_002_000,
            neg: -2,
            unit: (),
        };
        let bytes = to_bytes(&m).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[4..8], &[0, 0, 0, 0xc3]);
        assert_eq!(&bytes[12..16], &[0xff, 0xff, 0xff, 0xc3], "char sign-extends as glibc does");
        assert_eq!(from_bytes::<Mixed>(&bytes).unwrap(), m);
    }

    #[test]
    fn absent_options_are_one_zero_word() {
        assert_eq!(to_bytes(&Option::<String>::None).unwrap(), vec![0, 0, 0, 0]);
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocation() {
        let huge_string = [0x7f, 0xff, 0xff, 0xff, b'a', 0, 0, 0];
        assert!(matches!(from_bytes::<String>(&huge_string), Err(XdrError::TooLong(_))));
        let huge_list = [0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(from_bytes::<Vec<u64>>(&huge_list), Err(XdrError::TooLong(_))));
        assert!(matches!(from_bytes::<Opaque>(&huge_list), Err(XdrError::TooLong(_))));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(from_bytes::<u32>(&[0, 0]), Err(XdrError::Eof));
        assert_eq!(from_bytes::<u32>(&[0, 0, 0, 1, 0, 0, 0, 0]), Err(XdrError::Trailing(4)));
        assert_eq!(from_bytes::<bool>(&[0, 0, 0, 2]), Err(XdrError::BadDiscriminant(2)));
        assert_eq!(from_bytes::<Option<u32>>(&[0, 0, 0, 7]), Err(XdrError::BadDiscriminant(7)));
        assert_eq!(from_bytes::<String>(&[0, 0, 0, 1, 0xff, 0, 0, 0]), Err(XdrError::NotUtf8));
    }
}
