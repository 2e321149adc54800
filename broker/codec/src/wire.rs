//! Primitive wire types shared by the decoder and the encoder: Variable Byte
//! Integers, Two Byte Integers, UTF-8 strings and binary data.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::MAX_VARIABLE_BYTE_INTEGER;

/// Parses a Variable Byte Integer from the front of `bytes`.
///
/// Returns `Ok(None)` when `bytes` ends before the last byte of the integer,
/// and `Ok(Some((value, length)))` otherwise. A fourth byte with the
/// continuation bit set fails at once, without waiting for a fifth, because
/// the format allows at most four bytes.
pub(crate) fn parse_varint(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
        if index == 3 {
            return Err(DecodeError::Malformed(
                "variable byte integer is longer than 4 bytes".to_string(),
            ));
        }
    }
    Ok(None)
}

/// Number of bytes the Variable Byte Integer encoding of `value` takes.
pub(crate) fn varint_len(value: usize) -> usize {
    debug_assert!(value <= MAX_VARIABLE_BYTE_INTEGER as usize);
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `value` as a Variable Byte Integer.
pub(crate) fn put_varint(out: &mut BytesMut, value: usize) {
    debug_assert!(value <= MAX_VARIABLE_BYTE_INTEGER as usize);
    let mut remaining = value;
    loop {
        let mut byte = (remaining & 0x7F) as u8;
        remaining >>= 7;
        if remaining > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if remaining == 0 {
            break;
        }
    }
}

/// Appends a UTF-8 string with its Two Byte Integer length prefix.
pub(crate) fn put_string(out: &mut BytesMut, value: &str) {
    put_binary(out, value.as_bytes());
}

/// Appends binary data with its Two Byte Integer length prefix.
pub(crate) fn put_binary(out: &mut BytesMut, value: &[u8]) {
    debug_assert!(value.len() <= usize::from(u16::MAX));
    out.put_u16(value.len() as u16);
    out.put_slice(value);
}

/// Cursor over the body of one packet, which is already complete in memory.
///
/// Running past the end is a Malformed Packet, because the Remaining Length
/// (or a property length) promised bytes that are not there.
pub(crate) struct Reader {
    bytes: Bytes,
    position: usize,
    /// Packet name used in error messages, such as "PUBLISH".
    packet: &'static str,
}

impl Reader {
    /// Creates a reader over `bytes`, naming `packet` in errors.
    pub(crate) fn new(bytes: Bytes, packet: &'static str) -> Self {
        Reader {
            bytes,
            position: 0,
            packet,
        }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    /// Packet name used in error messages.
    pub(crate) fn packet(&self) -> &'static str {
        self.packet
    }

    fn truncated(&self, field: &str, needed: usize) -> DecodeError {
        DecodeError::Malformed(format!(
            "{}: {field} needs {needed} bytes but only {} remain",
            self.packet,
            self.remaining()
        ))
    }

    /// Reads one byte.
    pub(crate) fn read_u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        if self.remaining() < 1 {
            return Err(self.truncated(field, 1));
        }
        let value = self.bytes[self.position];
        self.position += 1;
        Ok(value)
    }

    /// Reads a big-endian Two Byte Integer.
    pub(crate) fn read_u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        if self.remaining() < 2 {
            return Err(self.truncated(field, 2));
        }
        let at = self.position;
        let value = u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]);
        self.position += 2;
        Ok(value)
    }

    /// Reads a big-endian Four Byte Integer.
    pub(crate) fn read_u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        if self.remaining() < 4 {
            return Err(self.truncated(field, 4));
        }
        let at = self.position;
        let value = u32::from_be_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ]);
        self.position += 4;
        Ok(value)
    }

    /// Reads a Variable Byte Integer that must end inside the packet.
    pub(crate) fn read_varint(&mut self, field: &str) -> Result<u32, DecodeError> {
        match parse_varint(&self.bytes[self.position..]) {
            Ok(Some((value, length))) => {
                self.position += length;
                Ok(value)
            }
            Ok(None) => Err(DecodeError::Malformed(format!(
                "{}: {field} variable byte integer runs past the end of the packet",
                self.packet
            ))),
            Err(_) => Err(DecodeError::Malformed(format!(
                "{}: {field} variable byte integer is longer than 4 bytes",
                self.packet
            ))),
        }
    }

    /// Reads `length` bytes as a zero-copy slice of the packet.
    pub(crate) fn read_bytes(&mut self, length: usize, field: &str) -> Result<Bytes, DecodeError> {
        if self.remaining() < length {
            return Err(self.truncated(field, length));
        }
        let slice = self.bytes.slice(self.position..self.position + length);
        self.position += length;
        Ok(slice)
    }

    /// Reads Binary Data: a Two Byte Integer length, then that many bytes.
    pub(crate) fn read_binary(&mut self, field: &str) -> Result<Bytes, DecodeError> {
        let length = usize::from(self.read_u16(field)?);
        self.read_bytes(length, field)
    }

    /// Reads a UTF-8 Encoded String and rejects invalid UTF-8 and U+0000,
    /// both of which make the packet malformed.
    pub(crate) fn read_string(&mut self, field: &str) -> Result<String, DecodeError> {
        let length = usize::from(self.read_u16(field)?);
        if self.remaining() < length {
            return Err(self.truncated(field, length));
        }
        let raw = &self.bytes[self.position..self.position + length];
        let text = std::str::from_utf8(raw).map_err(|error| {
            DecodeError::Malformed(format!(
                "{}: {field} is not valid UTF-8: {error}",
                self.packet
            ))
        })?;
        if text.contains('\0') {
            return Err(DecodeError::Malformed(format!(
                "{}: {field} contains the null character U+0000",
                self.packet
            )));
        }
        let owned = text.to_owned();
        self.position += length;
        Ok(owned)
    }

    /// Takes every byte not yet read, zero-copy.
    pub(crate) fn read_rest(&mut self) -> Bytes {
        let rest = self.bytes.slice(self.position..);
        self.position = self.bytes.len();
        rest
    }

    /// Splits off the next `length` bytes as a reader of their own, so that a
    /// property section cannot read past its declared length.
    pub(crate) fn sub_reader(&mut self, length: usize, field: &str) -> Result<Reader, DecodeError> {
        let bytes = self.read_bytes(length, field)?;
        Ok(Reader::new(bytes, self.packet))
    }

    /// Fails with Malformed Packet when bytes are left that the format does
    /// not allow.
    pub(crate) fn expect_end(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::Malformed(format!(
                "{}: {} unexpected bytes after the last field",
                self.packet,
                self.remaining()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_round_trip() {
        for value in [
            0,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "length of {value}");
            let parsed = parse_varint(&out).expect("valid varint");
            assert_eq!(parsed, Some((value as u32, out.len())), "value {value}");
        }
    }

    #[test]
    fn varint_fifth_byte_fails_early() {
        let error = parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF]).expect_err("4 continuation bytes");
        assert!(matches!(error, DecodeError::Malformed(_)), "{error:?}");
    }

    #[test]
    fn varint_incomplete_is_none() {
        assert_eq!(parse_varint(&[]).expect("empty"), None);
        assert_eq!(parse_varint(&[0x80, 0x80]).expect("two bytes"), None);
    }

    #[test]
    fn string_rejects_null_and_bad_utf8() {
        let mut reader = Reader::new(Bytes::from_static(&[0, 2, b'a', 0]), "TEST");
        let error = reader.read_string("name").expect_err("U+0000");
        assert!(matches!(error, DecodeError::Malformed(_)), "{error:?}");

        let mut reader = Reader::new(Bytes::from_static(&[0, 2, 0xC3, 0x28]), "TEST");
        let error = reader.read_string("name").expect_err("invalid UTF-8");
        assert!(matches!(error, DecodeError::Malformed(_)), "{error:?}");

        let mut reader = Reader::new(Bytes::from_static(&[0, 5, b'a']), "TEST");
        let error = reader.read_string("name").expect_err("length past the end");
        assert!(matches!(error, DecodeError::Malformed(_)), "{error:?}");
    }
}
