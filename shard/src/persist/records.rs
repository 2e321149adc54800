//! Conversion between the engine's types and the store's records.
//!
//! The store keeps subscriptions, wills, session state and MQTT properties
//! as opaque bytes, and this module defines their format. Each starts with
//! a version byte, followed by fixed-width big-endian integers and
//! length-prefixed strings.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use coremq_codec::{Properties, Protocol, QoS, RetainHandling, SubscriptionOptions, Will};
use coremq_wal::Message;
use thiserror::Error;

use crate::message::Publication;
use crate::session::Subscription;

/// Version byte at the start of every encoded blob.
const FORMAT_VERSION: u8 = 1;

#[derive(Debug, Error)]
#[error("stored record is corrupt: {0}")]
pub struct RecordError(&'static str);

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Turns a monotonic deadline into unix milliseconds.
pub fn instant_to_unix_ms(at: Instant, now: Instant) -> u64 {
    let now_ms = unix_ms();
    match at.checked_duration_since(now) {
        Some(ahead) => now_ms + ahead.as_millis() as u64,
        None => now_ms.saturating_sub(now.duration_since(at).as_millis() as u64),
    }
}

/// Turns unix milliseconds into a monotonic deadline.
pub fn unix_ms_to_instant(at_ms: u64, now: Instant) -> Instant {
    let now_ms = unix_ms();
    if at_ms >= now_ms {
        now + Duration::from_millis(at_ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - at_ms))
            .unwrap_or(now)
    }
}

fn wal_qos(qos: QoS) -> coremq_wal::QoS {
    match qos {
        QoS::AtMostOnce => coremq_wal::QoS::AtMostOnce,
        QoS::AtLeastOnce => coremq_wal::QoS::AtLeastOnce,
        QoS::ExactlyOnce => coremq_wal::QoS::ExactlyOnce,
    }
}

fn mqtt_qos(qos: coremq_wal::QoS) -> QoS {
    match qos {
        coremq_wal::QoS::AtMostOnce => QoS::AtMostOnce,
        coremq_wal::QoS::AtLeastOnce => QoS::AtLeastOnce,
        coremq_wal::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Converts a publication to the store's message record.
pub fn message_from_publication(publication: &Publication, now: Instant) -> Message {
    Message {
        offset: 0,
        topic: publication.topic.clone(),
        payload: publication.payload.clone(),
        qos: wal_qos(publication.qos),
        retain: publication.retain,
        properties: encode_properties(&publication.properties),
        publisher: publication
            .publisher
            .as_deref()
            .unwrap_or_default()
            .to_owned(),
        expires_at: publication.expires_at.map(|at| instant_to_unix_ms(at, now)),
    }
}

/// Rebuilds a publication from the store.
///
/// # Errors
///
/// Returns an error when the stored property block is corrupt.
pub fn publication_from_message(
    message: Message,
    now: Instant,
) -> Result<Publication, RecordError> {
    Ok(Publication {
        topic: message.topic,
        payload: message.payload,
        qos: mqtt_qos(message.qos),
        retain: message.retain,
        properties: decode_properties(&message.properties)?,
        expires_at: message.expires_at.map(|at| unix_ms_to_instant(at, now)),
        publisher: (!message.publisher.is_empty()).then(|| message.publisher.as_str().into()),
        log_offset: (message.offset > 0).then_some(message.offset),
    })
}

/// Encodes the properties a publication forwards to subscribers.
pub fn encode_properties(properties: &Properties) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(FORMAT_VERSION);
    out.put_u8(properties.payload_format_indicator.unwrap_or(u8::MAX));
    put_opt_str(&mut out, properties.content_type.as_deref());
    put_opt_str(&mut out, properties.response_topic.as_deref());
    put_opt_bytes(&mut out, properties.correlation_data.as_deref());
    out.put_u32(properties.user_properties.len() as u32);
    for (key, value) in &properties.user_properties {
        put_str(&mut out, key);
        put_str(&mut out, value);
    }
    out.freeze()
}

/// Decodes what [`encode_properties`] wrote.
///
/// # Errors
///
/// Returns an error when the bytes are truncated or of another version.
pub fn decode_properties(bytes: &[u8]) -> Result<Properties, RecordError> {
    let mut input = Reader::new(bytes)?;
    let mut properties = Properties::default();
    let indicator = input.u8()?;
    properties.payload_format_indicator = (indicator != u8::MAX).then_some(indicator);
    properties.content_type = input.opt_str()?;
    properties.response_topic = input.opt_str()?;
    properties.correlation_data = input.opt_bytes()?.map(Bytes::from);
    let count = input.u32()?;
    for _ in 0..count {
        let key = input.str()?;
        let value = input.str()?;
        properties.user_properties.push((key, value));
    }
    Ok(properties)
}

/// Encodes a session's subscriptions.
pub fn encode_subscriptions(subscriptions: &HashMap<String, Subscription>) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(FORMAT_VERSION);
    out.put_u32(subscriptions.len() as u32);
    for (filter, subscription) in subscriptions {
        put_str(&mut out, filter);
        let options = subscription.options;
        out.put_u8(
            options.qos as u8
                | u8::from(options.no_local) << 2
                | u8::from(options.retain_as_published) << 3
                | (options.retain_handling as u8) << 4,
        );
        out.put_u32(subscription.identifier.unwrap_or(0));
    }
    out.freeze()
}

/// Decodes what [`encode_subscriptions`] wrote.
///
/// # Errors
///
/// Returns an error when the bytes are truncated or of another version.
pub fn decode_subscriptions(bytes: &[u8]) -> Result<Vec<(String, Subscription)>, RecordError> {
    let mut input = Reader::new(bytes)?;
    let count = input.u32()?;
    let mut subscriptions = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let filter = input.str()?;
        let byte = input.u8()?;
        let identifier = input.u32()?;
        let options = SubscriptionOptions {
            qos: QoS::from_u8(byte & 0b11).ok_or(RecordError("subscription QoS"))?,
            no_local: byte & 0b100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling: match (byte >> 4) & 0b11 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DoNotSend,
            },
        };
        subscriptions.push((
            filter,
            Subscription {
                options,
                identifier: (identifier != 0).then_some(identifier),
            },
        ));
    }
    Ok(subscriptions)
}

/// Encodes a Will Message with its delay interval and expiry.
pub fn encode_will(will: &Will) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(FORMAT_VERSION);
    put_str(&mut out, &will.topic);
    put_bytes(&mut out, &will.payload);
    out.put_u8(will.qos as u8 | u8::from(will.retain) << 2);
    out.put_u32(will.properties.will_delay_interval.unwrap_or(0));
    out.put_u32(will.properties.message_expiry_interval.unwrap_or(u32::MAX));
    put_bytes(&mut out, &encode_properties(&will.properties));
    out.freeze()
}

/// Decodes what [`encode_will`] wrote.
///
/// # Errors
///
/// Returns an error when the bytes are truncated or of another version.
pub fn decode_will(bytes: &[u8]) -> Result<Will, RecordError> {
    let mut input = Reader::new(bytes)?;
    let topic = input.str()?;
    let payload = Bytes::from(input.bytes()?);
    let flags = input.u8()?;
    let delay = input.u32()?;
    let expiry = input.u32()?;
    let mut properties = decode_properties(&input.bytes()?)?;
    properties.will_delay_interval = (delay != 0).then_some(delay);
    properties.message_expiry_interval = (expiry != u32::MAX).then_some(expiry);
    Ok(Will {
        topic,
        payload,
        qos: QoS::from_u8(flags & 0b11).ok_or(RecordError("will QoS"))?,
        retain: flags & 0b100 != 0,
        properties,
    })
}

/// Session fields that have no column of their own in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionState {
    pub protocol: Protocol,
    pub expiry_interval: u32,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub incoming_qos2: Vec<u16>,
    /// Log offsets completed above the acknowledged prefix.
    pub done_above: Vec<u64>,
    /// Outbound exchanges in flight: log offset, packet id, and whether
    /// PUBREL was sent (the client's PUBREC arrived).
    pub inflight: Vec<(u64, u16, bool)>,
    /// Pending log offsets that a shared subscription chose this session
    /// for, with that subscription's filter (`$share/group/filter`).
    pub shared_pending: Vec<(u64, String)>,
}

pub fn encode_session_state(state: &SessionState) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(FORMAT_VERSION);
    out.put_u8(state.protocol.level());
    out.put_u32(state.expiry_interval);
    out.put_u32(state.incoming_qos2.len() as u32);
    for packet_id in &state.incoming_qos2 {
        out.put_u16(*packet_id);
    }
    out.put_u32(state.done_above.len() as u32);
    for offset in &state.done_above {
        out.put_u64(*offset);
    }
    out.put_u32(state.inflight.len() as u32);
    for (offset, packet_id, released) in &state.inflight {
        out.put_u64(*offset);
        out.put_u16(*packet_id);
        out.put_u8(u8::from(*released));
    }
    out.put_u32(state.shared_pending.len() as u32);
    for (offset, share) in &state.shared_pending {
        out.put_u64(*offset);
        put_str(&mut out, share);
    }
    out.freeze()
}

/// Decodes what [`encode_session_state`] wrote.
///
/// # Errors
///
/// Returns an error when the bytes are truncated or of another version.
pub fn decode_session_state(bytes: &[u8]) -> Result<SessionState, RecordError> {
    let mut input = Reader::new(bytes)?;
    let protocol = match input.u8()? {
        4 => Protocol::V311,
        5 => Protocol::V5,
        _ => return Err(RecordError("protocol level")),
    };
    let expiry_interval = input.u32()?;
    let count = input.u32()?;
    let mut incoming_qos2 = Vec::with_capacity(count.min(65_535) as usize);
    for _ in 0..count {
        incoming_qos2.push(input.u16()?);
    }
    let count = input.u32()?;
    let mut done_above = Vec::with_capacity(count.min(65_535) as usize);
    for _ in 0..count {
        done_above.push(input.u64()?);
    }
    let count = input.u32()?;
    let mut inflight = Vec::with_capacity(count.min(65_535) as usize);
    for _ in 0..count {
        inflight.push((input.u64()?, input.u16()?, input.u8()? != 0));
    }
    // Records written before shared offsets were stored end here.
    let mut shared_pending = Vec::new();
    if !input.input.is_empty() {
        let count = input.u32()?;
        shared_pending.reserve(count.min(65_535) as usize);
        for _ in 0..count {
            shared_pending.push((input.u64()?, input.str()?));
        }
    }
    Ok(SessionState {
        protocol,
        expiry_interval,
        incoming_qos2,
        done_above,
        inflight,
        shared_pending,
    })
}

fn put_str(out: &mut BytesMut, value: &str) {
    put_bytes(out, value.as_bytes());
}

fn put_bytes(out: &mut BytesMut, value: &[u8]) {
    out.put_u32(value.len() as u32);
    out.put_slice(value);
}

fn put_opt_str(out: &mut BytesMut, value: Option<&str>) {
    put_opt_bytes(out, value.map(str::as_bytes));
}

fn put_opt_bytes(out: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        Some(value) => {
            out.put_u8(1);
            put_bytes(out, value);
        }
        None => out.put_u8(0),
    }
}

struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8]) -> Result<Self, RecordError> {
        let mut reader = Reader { input };
        if reader.u8()? != FORMAT_VERSION {
            return Err(RecordError("unknown format version"));
        }
        Ok(reader)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], RecordError> {
        if self.input.len() < len {
            return Err(RecordError("truncated"));
        }
        let (head, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(array))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, RecordError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    fn str(&mut self) -> Result<String, RecordError> {
        String::from_utf8(self.bytes()?).map_err(|_| RecordError("string is not UTF-8"))
    }

    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, RecordError> {
        match self.u8()? {
            0 => Ok(None),
            _ => Ok(Some(self.bytes()?)),
        }
    }

    fn opt_str(&mut self) -> Result<Option<String>, RecordError> {
        match self.u8()? {
            0 => Ok(None),
            _ => Ok(Some(self.str()?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip() {
        let properties = Properties {
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/1".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
            ..Default::default()
        };
        let decoded = decode_properties(&encode_properties(&properties)).expect("round trip");
        assert_eq!(decoded, properties);
    }

    #[test]
    fn subscriptions_round_trip() {
        let mut subscriptions = HashMap::new();
        subscriptions.insert(
            "a/+/c".to_string(),
            Subscription {
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                identifier: Some(42),
            },
        );
        let decoded =
            decode_subscriptions(&encode_subscriptions(&subscriptions)).expect("round trip");
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].0, "a/+/c");
        assert_eq!(decoded[0].1.identifier, Some(42));
        assert_eq!(decoded[0].1.options, subscriptions["a/+/c"].options);
    }

    #[test]
    fn will_round_trip() {
        let will = Will {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(5),
                message_expiry_interval: Some(60),
                ..Default::default()
            },
        };
        assert_eq!(decode_will(&encode_will(&will)).expect("round trip"), will);
    }

    #[test]
    fn truncated_record_rejected() {
        let bytes = encode_session_state(&SessionState {
            protocol: Protocol::V5,
            expiry_interval: 60,
            incoming_qos2: vec![1, 7],
            done_above: vec![12],
            inflight: vec![(10, 3, true)],
            shared_pending: vec![(11, "$share/g/a/#".into())],
        });
        assert!(decode_session_state(&bytes[..bytes.len() - 1]).is_err());
        let state = decode_session_state(&bytes).expect("whole record");
        assert_eq!(state.incoming_qos2, vec![1, 7]);
        assert_eq!(state.done_above, vec![12]);
        assert_eq!(state.inflight, vec![(10, 3, true)]);
        assert_eq!(state.shared_pending, vec![(11, "$share/g/a/#".to_string())]);
    }

    #[test]
    fn record_without_shared_offsets_decodes() {
        // Records written before the shared offsets were added end after
        // the in-flight list.
        let bytes = encode_session_state(&SessionState {
            protocol: Protocol::V311,
            expiry_interval: 60,
            incoming_qos2: Vec::new(),
            done_above: Vec::new(),
            inflight: vec![(10, 3, false)],
            shared_pending: Vec::new(),
        });
        let older = &bytes[..bytes.len() - 4];
        let state = decode_session_state(older).expect("record without the shared list");
        assert_eq!(state.inflight, vec![(10, 3, false)]);
        assert!(state.shared_pending.is_empty());
    }
}
