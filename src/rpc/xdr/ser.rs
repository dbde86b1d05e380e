//! XDR encoder.

use serde::Serialize;
use serde::ser::{self, Impossible};

use super::{FIXED_OPAQUE, XdrError};

/// Encodes `value` to a new buffer.
pub fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, XdrError> {
    let mut out = Vec::new();
    to_writer(&mut out, value)?;
    Ok(out)
}

/// Appends the encoding of `value` to `out`.
pub fn to_writer<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), XdrError> {
    value.serialize(&mut Encoder { out, fixed: false })
}

struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    /// The next `serialize_bytes` is fixed-length: no count.
    fixed: bool,
}

impl Encoder<'_> {
    fn word(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    fn len(&mut self, n: usize) -> Result<(), XdrError> {
        let n = u32::try_from(n).map_err(|_| XdrError::TooLong(n as u64))?;
        self.word(n);
        Ok(())
    }

    fn padded(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        let pad = (4 - bytes.len() % 4) % 4;
        self.out.extend_from_slice(&[0u8; 3][..pad]);
    }
}

impl<'a, 'b> ser::Serializer for &'a mut Encoder<'b> {
    type Ok = ();
    type Error = XdrError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Impossible<(), XdrError>;
    type SerializeMap = Impossible<(), XdrError>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), XdrError>;

    fn serialize_bool(self, v: bool) -> Result<(), XdrError> {
        self.word(u32::from(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), XdrError> {
        self.serialize_i32(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), XdrError> {
        self.serialize_i32(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), XdrError> {
        self.word(v as u32);
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), XdrError> {
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), XdrError> {
        self.word(v.into());
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), XdrError> {
        self.word(v.into());
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), XdrError> {
        self.word(v);
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), XdrError> {
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), XdrError> {
        self.word(v.to_bits());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), XdrError> {
        self.serialize_u64(v.to_bits())
    }
    fn serialize_char(self, _: char) -> Result<(), XdrError> {
        Err(XdrError::Unsupported("char"))
    }
    fn serialize_str(self, v: &str) -> Result<(), XdrError> {
        self.len(v.len())?;
        self.padded(v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), XdrError> {
        if !std::mem::take(&mut self.fixed) {
            self.len(v.len())?;
        }
        self.padded(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), XdrError> {
        self.word(0);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), XdrError> {
        self.word(1);
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), XdrError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), XdrError> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Result<(), XdrError> {
        self.word(index);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, v: &T) -> Result<(), XdrError> {
        self.fixed = name.starts_with(FIXED_OPAQUE);
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), XdrError> {
        self.word(index);
        v.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, XdrError> {
        self.len(len.ok_or(XdrError::Unsupported("sequence of unknown length"))?)?;
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, XdrError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, XdrError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, XdrError> {
        Err(XdrError::Unsupported("tuple variant"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, XdrError> {
        Err(XdrError::Unsupported("map"))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, XdrError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, XdrError> {
        Err(XdrError::Unsupported("struct variant"))
    }
}

/// Sequences, tuples and tuple structs are their elements in order.
macro_rules! elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for &mut Encoder<'_> {
            type Ok = ();
            type Error = XdrError;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), XdrError> {
                v.serialize(&mut **self)
            }
            fn end(self) -> Result<(), XdrError> {
                Ok(())
            }
        }
    )*};
}

elements!(SerializeSeq::serialize_element, SerializeTuple::serialize_element, SerializeTupleStruct::serialize_field);

impl ser::SerializeStruct for &mut Encoder<'_> {
    type Ok = ();
    type Error = XdrError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, v: &T) -> Result<(), XdrError> {
        v.serialize(&mut **self)
    }
    fn end(self) -> Result<(), XdrError> {
        Ok(())
    }
}
