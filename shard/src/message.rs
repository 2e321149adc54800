//! Messages as they travel between connections, sessions and shards.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use coremq_codec::{Properties, QoS};

/// One accepted PUBLISH, shared by reference between every shard and every
/// session that receives it. It is `Send + Sync` so that one allocation
/// crosses the shard mesh however many subscribers it has.
#[derive(Debug)]
pub struct Publication {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Properties forwarded to subscribers unchanged: payload format
    /// indicator, content type, response topic, correlation data and user
    /// properties. Topic alias, subscription identifiers and message expiry
    /// are cleared here and set per delivery.
    pub properties: Properties,
    /// When the Message Expiry Interval runs out, if the publisher set one.
    pub expires_at: Option<Instant>,
    /// Client identifier of the publisher, for the No Local option; `None`
    /// for messages the broker makes itself (wills use the client's id).
    pub publisher: Option<Arc<str>>,
    /// Offset of the message in the durable log, when it was written there.
    pub log_offset: Option<u64>,
}

impl Publication {
    /// Seconds left before expiry, rounded up, or `None` when the message
    /// does not expire. Returns `Some(0)` once expired.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        let deadline = self.expires_at?;
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Some(0);
        }
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Some(secs.min(u64::from(u32::MAX)) as u32)
    }

    /// Returns true when the message has a Message Expiry Interval that ran out.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|deadline| deadline <= now)
    }
}

/// A publication on its way to one session, with what the matching
/// subscriptions decided.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub publication: Arc<Publication>,
    /// The lower of the publication's QoS and the subscription's.
    pub qos: QoS,
    /// RETAIN flag of the outgoing PUBLISH.
    pub retain: bool,
    /// Identifiers of every subscription of the session that matched.
    pub subscription_ids: Vec<u32>,
    /// The shared subscription (`$share/group/filter`) that chose this
    /// session, so that the message can go to another member when the
    /// session ends before acknowledging it.
    pub share: Option<Arc<str>>,
}
