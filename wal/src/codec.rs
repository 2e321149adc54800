//! Binary encoding of messages and session records for the key-value
//! backends (RocksDB, Redis, and the blob columns of MySQL).
//!
//! Every record starts with a format version byte, so a later format can be
//! detected. Integers are big-endian; byte strings and UTF-8 strings are
//! prefixed with their length as a big-endian u32.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Message, QoS, SessionRecord};

const FORMAT_VERSION: u8 = 1;

const FLAG_RETAIN: u8 = 0b01;
const FLAG_EXPIRES: u8 = 0b10;

/// Decoding failure of a stored record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("record ends early while reading {0}")]
    Truncated(&'static str),
    #[error("unknown record format version {0}")]
    Version(u8),
    #[error("invalid QoS {0}")]
    QoS(u8),
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("{0} unread bytes after the record")]
    Trailing(usize),
}

/// Encodes `message` without its offset, which the backends keep in the key.
pub(crate) fn encode_message_body(message: &Message) -> Vec<u8> {
    let capacity = 16
        + message.topic.len()
        + message.payload.len()
        + message.properties.len()
        + message.publisher.len()
        + 4 * 4;
    let mut out = BytesMut::with_capacity(capacity);
    out.put_u8(FORMAT_VERSION);
    out.put_u8(message.qos as u8);
    let mut flags = 0;
    if message.retain {
        flags |= FLAG_RETAIN;
    }
    if message.expires_at.is_some() {
        flags |= FLAG_EXPIRES;
    }
    out.put_u8(flags);
    if let Some(expires_at) = message.expires_at {
        out.put_u64(expires_at);
    }
    put_bytes(&mut out, message.topic.as_bytes());
    put_bytes(&mut out, &message.payload);
    put_bytes(&mut out, &message.properties);
    put_bytes(&mut out, message.publisher.as_bytes());
    out.to_vec()
}

/// Decodes a body written by [`encode_message_body`], giving it `offset`.
pub(crate) fn decode_message_body(offset: u64, body: &[u8]) -> Result<Message, DecodeError> {
    let mut input = body;
    check_version(&mut input)?;
    let qos_byte = get_u8(&mut input, "qos")?;
    let qos = QoS::try_from(qos_byte).map_err(DecodeError::QoS)?;
    let flags = get_u8(&mut input, "flags")?;
    let expires_at = if flags & FLAG_EXPIRES != 0 {
        Some(get_u64(&mut input, "expires_at")?)
    } else {
        None
    };
    let topic = get_string(&mut input, "topic")?;
    let payload = get_bytes(&mut input, "payload")?;
    let properties = get_bytes(&mut input, "properties")?;
    let publisher = get_string(&mut input, "publisher")?;
    check_end(input)?;
    Ok(Message {
        offset,
        topic,
        payload,
        qos,
        retain: flags & FLAG_RETAIN != 0,
        properties,
        publisher,
        expires_at,
    })
}

/// Encodes `message` with its offset as an 8-byte big-endian prefix.
pub(crate) fn encode_message_with_offset(message: &Message) -> Vec<u8> {
    let body = encode_message_body(message);
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&message.offset.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a record written by [`encode_message_with_offset`].
pub(crate) fn decode_message_with_offset(record: &[u8]) -> Result<Message, DecodeError> {
    let mut input = record;
    let offset = get_u64(&mut input, "offset")?;
    decode_message_body(offset, input)
}

/// Encodes a session record.
pub(crate) fn encode_session(record: &SessionRecord) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(FORMAT_VERSION);
    put_option_u64(&mut out, record.expires_at);
    put_bytes(&mut out, record.client_id.as_bytes());
    put_bytes(&mut out, &record.subscriptions);
    match &record.will {
        Some(will) => {
            out.put_u8(1);
            put_bytes(&mut out, will);
        }
        None => out.put_u8(0),
    }
    let count = u32::try_from(record.acked_offsets.len()).expect("fewer than 2^32 queues");
    out.put_u32(count);
    for (queue, offset) in &record.acked_offsets {
        put_bytes(&mut out, queue.as_bytes());
        out.put_u64(*offset);
    }
    put_bytes(&mut out, &record.inflight);
    out.to_vec()
}

/// Decodes a record written by [`encode_session`].
pub(crate) fn decode_session(record: &[u8]) -> Result<SessionRecord, DecodeError> {
    let mut input = record;
    check_version(&mut input)?;
    let expires_at = get_option_u64(&mut input, "expires_at")?;
    let client_id = get_string(&mut input, "client_id")?;
    let subscriptions = get_bytes(&mut input, "subscriptions")?;
    let will = match get_u8(&mut input, "will flag")? {
        0 => None,
        _ => Some(get_bytes(&mut input, "will")?),
    };
    let count = get_u32(&mut input, "acked offset count")?;
    // The count comes from stored bytes, so the capacity is bounded by what
    // the input could hold (each entry is at least 12 bytes).
    let mut acked_offsets = Vec::with_capacity((count as usize).min(input.len() / 12));
    for _ in 0..count {
        let queue = get_string(&mut input, "acked offset queue")?;
        let offset = get_u64(&mut input, "acked offset")?;
        acked_offsets.push((queue, offset));
    }
    let inflight = get_bytes(&mut input, "inflight")?;
    check_end(input)?;
    Ok(SessionRecord {
        client_id,
        expires_at,
        subscriptions,
        will,
        acked_offsets,
        inflight,
    })
}

/// Reads only the expiry time of an encoded session, for purging.
#[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
pub(crate) fn session_expires_at(record: &[u8]) -> Result<Option<u64>, DecodeError> {
    let mut input = record;
    check_version(&mut input)?;
    get_option_u64(&mut input, "expires_at")
}

fn put_bytes(out: &mut BytesMut, value: &[u8]) {
    let len = u32::try_from(value.len()).expect("record fields are smaller than 4 GiB");
    out.put_u32(len);
    out.put_slice(value);
}

fn put_option_u64(out: &mut BytesMut, value: Option<u64>) {
    match value {
        Some(value) => {
            out.put_u8(1);
            out.put_u64(value);
        }
        None => out.put_u8(0),
    }
}

fn check_version(input: &mut &[u8]) -> Result<(), DecodeError> {
    match get_u8(input, "format version")? {
        FORMAT_VERSION => Ok(()),
        other => Err(DecodeError::Version(other)),
    }
}

fn check_end(input: &[u8]) -> Result<(), DecodeError> {
    if input.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::Trailing(input.len()))
    }
}

fn get_u8(input: &mut &[u8], field: &'static str) -> Result<u8, DecodeError> {
    if input.remaining() < 1 {
        return Err(DecodeError::Truncated(field));
    }
    Ok(input.get_u8())
}

fn get_u32(input: &mut &[u8], field: &'static str) -> Result<u32, DecodeError> {
    if input.remaining() < 4 {
        return Err(DecodeError::Truncated(field));
    }
    Ok(input.get_u32())
}

fn get_u64(input: &mut &[u8], field: &'static str) -> Result<u64, DecodeError> {
    if input.remaining() < 8 {
        return Err(DecodeError::Truncated(field));
    }
    Ok(input.get_u64())
}

fn get_option_u64(input: &mut &[u8], field: &'static str) -> Result<Option<u64>, DecodeError> {
    match get_u8(input, field)? {
        0 => Ok(None),
        _ => get_u64(input, field).map(Some),
    }
}

fn get_bytes(input: &mut &[u8], field: &'static str) -> Result<Bytes, DecodeError> {
    let len = get_u32(input, field)? as usize;
    if input.remaining() < len {
        return Err(DecodeError::Truncated(field));
    }
    let value = Bytes::copy_from_slice(&input[..len]);
    input.advance(len);
    Ok(value)
}

fn get_string(input: &mut &[u8], field: &'static str) -> Result<String, DecodeError> {
    let bytes = get_bytes(input, field)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_message() -> Message {
        Message {
            offset: 42,
            topic: "sensors/a/temp".into(),
            payload: Bytes::from_static(b"\x00\x01payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Bytes::from_static(b"\x02\x00\x00\x00\x3c"),
            publisher: "pub-1".into(),
            expires_at: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn message_round_trip() {
        let message = sample_message();
        let encoded = encode_message_with_offset(&message);
        assert_eq!(decode_message_with_offset(&encoded), Ok(message));
    }

    #[test]
    fn message_without_expiry_round_trip() {
        let message = Message {
            expires_at: None,
            retain: false,
            ..sample_message()
        };
        let body = encode_message_body(&message);
        assert_eq!(decode_message_body(42, &body), Ok(message));
    }

    #[test]
    fn truncated_message_rejected() {
        let encoded = encode_message_with_offset(&sample_message());
        for len in 0..encoded.len() {
            assert!(
                decode_message_with_offset(&encoded[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut encoded = encode_message_body(&sample_message());
        encoded.push(0);
        assert_eq!(
            decode_message_body(1, &encoded),
            Err(DecodeError::Trailing(1))
        );
    }

    #[test]
    fn unknown_version_rejected() {
        let mut encoded = encode_message_body(&sample_message());
        encoded[0] = 99;
        assert_eq!(
            decode_message_body(1, &encoded),
            Err(DecodeError::Version(99))
        );
    }

    #[test]
    fn session_round_trip() {
        let record = SessionRecord {
            client_id: "client-1".into(),
            expires_at: Some(5),
            subscriptions: Bytes::from_static(b"subs"),
            will: Some(Bytes::from_static(b"will")),
            acked_offsets: vec![("q1".into(), 7), ("q2".into(), 0)],
            inflight: Bytes::from_static(b"inflight"),
        };
        let encoded = encode_session(&record);
        assert_eq!(session_expires_at(&encoded), Ok(Some(5)));
        assert_eq!(decode_session(&encoded), Ok(record));
    }

    #[test]
    fn session_without_will_round_trip() {
        let record = SessionRecord {
            client_id: "c".into(),
            ..SessionRecord::default()
        };
        let encoded = encode_session(&record);
        assert_eq!(session_expires_at(&encoded), Ok(None));
        assert_eq!(decode_session(&encoded), Ok(record));
    }
}
