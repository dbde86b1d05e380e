//! XDR decoder, bounded by the input it is given.

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::{FIXED_OPAQUE, XdrError};

/// Decodes exactly one `T` from `input`; leftover bytes are an error.
pub fn from_bytes<'de, T: Deserialize<'de>>(input: &'de [u8]) -> Result<T, XdrError> {
    let mut d = Decoder { input };
    let value = T::deserialize(&mut d)?;
    match d.input.len() {
        0 => Ok(value),
        n => Err(XdrError::Trailing(n)),
    }
}

struct Decoder<'de> {
    input: &'de [u8],
}

impl<'de> Decoder<'de> {
    fn take(&mut self, n: usize) -> Result<&'de [u8], XdrError> {
        if n > self.input.len() {
            return Err(XdrError::Eof);
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    fn word(&mut self) -> Result<u32, XdrError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn hyper(&mut self) -> Result<u64, XdrError> {
        let hi = u64::from(self.word()?);
        Ok(hi << 32 | u64::from(self.word()?))
    }

    /// A count that must fit in what is left, `unit` bytes per item at least.
    fn count(&mut self, unit: usize) -> Result<usize, XdrError> {
        let n = self.word()? as usize;
        if n.saturating_mul(unit) > self.input.len() {
            return Err(XdrError::TooLong(n as u64));
        }
        Ok(n)
    }

    /// `n` bytes followed by their zero padding.
    fn padded(&mut self, n: usize) -> Result<&'de [u8], XdrError> {
        let padded = n.checked_add(3).ok_or(XdrError::TooLong(n as u64))? & !3;
        if padded > self.input.len() {
            return Err(XdrError::TooLong(n as u64));
        }
        Ok(&self.take(padded)?[..n])
    }

    fn discriminant(&mut self) -> Result<bool, XdrError> {
        match self.word()? {
            0 => Ok(false),
            1 => Ok(true),
            n => Err(XdrError::BadDiscriminant(n)),
        }
    }
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = XdrError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, XdrError> {
        Err(XdrError::Unsupported("self-describing value"))
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_bool(self.discriminant()?)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_i8(self.word()? as i8)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_i16(self.word()? as i16)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_i32(self.word()? as i32)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_i64(self.hyper()? as i64)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_u8(self.word()? as u8)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_u16(self.word()? as u16)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_u32(self.word()?)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_u64(self.hyper()?)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_f32(f32::from_bits(self.word()?))
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_f64(f64::from_bits(self.hyper()?))
    }
    fn deserialize_char<V: Visitor<'de>>(self, _: V) -> Result<V::Value, XdrError> {
        Err(XdrError::Unsupported("char"))
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        let n = self.count(1)?;
        let bytes = self.padded(n)?;
        v.visit_borrowed_str(std::str::from_utf8(bytes).map_err(|_| XdrError::NotUtf8)?)
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        self.deserialize_str(v)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        let n = self.count(1)?;
        v.visit_borrowed_bytes(self.padded(n)?)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        self.deserialize_bytes(v)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        if self.discriminant()? { v.visit_some(self) } else { v.visit_none() }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, XdrError> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, v: V) -> Result<V::Value, XdrError> {
        match name.strip_prefix(FIXED_OPAQUE) {
            Some(n) => {
                let n: usize = n.parse().map_err(|_| XdrError::Unsupported("fixed opaque size"))?;
                v.visit_borrowed_bytes(self.padded(n)?)
            }
            None => v.visit_newtype_struct(self),
        }
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, XdrError> {
        let n = self.count(4)?;
        v.visit_seq(Items { d: self, left: n })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, XdrError> {
        v.visit_seq(Items { d: self, left: len })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, XdrError> {
        v.visit_seq(Items { d: self, left: len })
    }
    fn deserialize_map<V: Visitor<'de>>(self, _: V) -> Result<V::Value, XdrError> {
        Err(XdrError::Unsupported("map"))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, XdrError> {
        v.visit_seq(Items { d: self, left: fields.len() })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, XdrError> {
        v.visit_enum(self)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, XdrError> {
        Err(XdrError::Unsupported("identifier"))
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, XdrError> {
        Err(XdrError::Unsupported("ignored value"))
    }
}

struct Items<'a, 'de> {
    d: &'a mut Decoder<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = XdrError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, XdrError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.d).map(Some)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// Enums are discriminated unions: a 4-byte arm index, then the arm.
impl<'de> de::EnumAccess<'de> for &mut Decoder<'de> {
    type Error = XdrError;
    type Variant = Self;
    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self), XdrError> {
        let index = self.word()?;
        let v = seed.deserialize(index.into_deserializer())?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Decoder<'de> {
    type Error = XdrError;
    fn unit_variant(self) -> Result<(), XdrError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, XdrError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, XdrError> {
        v.visit_seq(Items { d: self, left: len })
    }
    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], v: V) -> Result<V::Value, XdrError> {
        v.visit_seq(Items { d: self, left: fields.len() })
    }
}
