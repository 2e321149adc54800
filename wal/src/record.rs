//! Records the store keeps: log messages, session records and the QoS level.

use bytes::Bytes;

/// MQTT delivery guarantee of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// QoS 0: delivered at most once, never acknowledged.
    #[default]
    AtMostOnce = 0,
    /// QoS 1: delivered at least once, acknowledged with PUBACK.
    AtLeastOnce = 1,
    /// QoS 2: delivered exactly once, acknowledged with PUBREC/PUBREL/PUBCOMP.
    ExactlyOnce = 2,
}

impl TryFrom<u8> for QoS {
    type Error = u8;

    /// Converts the wire value; returns the value back when it is not 0, 1 or 2.
    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(other),
        }
    }
}

/// One message in a queue, or one retained message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Position in its queue. The store assigns it on append and ignores the
    /// value the caller passes. Offsets start at 1, so an acknowledged
    /// offset of 0 means nothing has been acknowledged yet.
    pub offset: u64,
    /// Topic name the message was published to.
    pub topic: String,
    /// Application payload.
    pub payload: Bytes,
    /// QoS the message was published with.
    pub qos: QoS,
    /// RETAIN flag of the PUBLISH.
    pub retain: bool,
    /// Encoded MQTT 5 property block, stored as given.
    pub properties: Bytes,
    /// Client id of the publisher.
    pub publisher: String,
    /// Expiry time in unix milliseconds, from the Message Expiry Interval;
    /// `None` when the message does not expire.
    pub expires_at: Option<u64>,
}

impl Message {
    /// Returns true when the message has an expiry time at or before `now_ms`
    /// (unix milliseconds).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_ms)
    }
}

/// The stored state of a persistent MQTT session.
///
/// The broker owns the encoding of `subscriptions`, `will` and `inflight`;
/// the store keeps them as opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRecord {
    /// MQTT client identifier; the record's key.
    pub client_id: String,
    /// Time in unix milliseconds after which the session may be discarded;
    /// `None` while the session must be kept (for example while connected).
    pub expires_at: Option<u64>,
    /// Encoded subscription list.
    pub subscriptions: Bytes,
    /// Encoded will message; `None` when the session has no will.
    pub will: Option<Bytes>,
    /// Last offset delivered and acknowledged, per queue name.
    pub acked_offsets: Vec<(String, u64)>,
    /// Encoded in-flight QoS 1/2 state (packet ids and their messages).
    pub inflight: Bytes,
}

impl SessionRecord {
    /// Returns true when the record has an expiry time at or before `now_ms`
    /// (unix milliseconds).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_ms)
    }

    /// Returns the acknowledged offset for `queue`, or 0 when none is stored.
    pub fn acked_offset(&self, queue: &str) -> u64 {
        self.acked_offsets
            .iter()
            .find(|(name, _)| name == queue)
            .map_or(0, |(_, offset)| *offset)
    }
}

/// Counts of records removed by [`Store::purge_expired`](crate::Store::purge_expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeReport {
    /// Number of session records removed.
    pub sessions: usize,
    /// Number of retained messages removed.
    pub retained: usize,
}

/// How far an append must reach before it is reported as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Each group commit is flushed to stable storage (fsync) before any of
    /// its appends completes.
    #[default]
    Fsync,
    /// Appends complete once the backend has accepted the write, which may
    /// still be in the operating system's page cache.
    None,
}
