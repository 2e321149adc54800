//! Durability of sessions, retained messages and the message log.
//!
//! Every QoS 1/2 message is appended once to one log queue, before the
//! publisher's PUBACK or PUBREC; sessions store the offset below which they
//! have completed every message, plus the offsets of their in-flight
//! exchanges and packet ids. After a restart each session replays the log
//! from its offset, keeping the messages its subscriptions match.
//!
//! Session records are written by a per-shard flusher shortly after they
//! change, and at once (before the reply) where a lost update would break
//! QoS 2: a new inbound packet id before PUBREC, its release before PUBCOMP,
//! and an outbound PUBREC before PUBREL.

pub mod records;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use coremq_wal::{SessionRecord, StoreHandle};

use crate::session::{OutboundState, Session};
use records::{encode_session_state, encode_subscriptions, encode_will, unix_ms, SessionState};

/// Name of the log queue every shard appends to.
pub const LOG_QUEUE: &str = "messages";

/// Messages read from the log per request while replaying.
pub const REPLAY_BATCH: usize = 1024;

/// The store, and the log positions the shards share.
#[derive(Clone)]
pub struct Persistence {
    pub store: StoreHandle,
    /// Highest offset appended so far by any shard.
    // Ordering: a monotonic high-water mark read for a starting point only;
    // Relaxed with fetch_max suffices.
    pub last_offset: Arc<AtomicU64>,
    /// Per shard: the lowest log offset one of its sessions still needs.
    // Ordering: each slot is written by its shard and read by shard 0 for
    // truncation; a stale value only delays truncation. Relaxed.
    pub needed: Arc<Vec<AtomicU64>>,
}

impl Persistence {
    pub fn new(store: StoreHandle, last_offset: u64, shards: usize) -> Persistence {
        Persistence {
            store,
            last_offset: Arc::new(AtomicU64::new(last_offset)),
            needed: Arc::new((0..shards).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    /// Records that offsets up to `offset` exist in the log.
    pub fn advance(&self, offset: u64) {
        self.last_offset.fetch_max(offset, Ordering::Relaxed);
    }

    pub fn last_offset(&self) -> u64 {
        self.last_offset.load(Ordering::Relaxed)
    }

    /// Lowest offset any shard still needs, or `None` before every shard
    /// has reported.
    pub fn lowest_needed(&self) -> Option<u64> {
        let mut lowest = u64::MAX;
        for slot in self.needed.iter() {
            let needed = slot.load(Ordering::Relaxed);
            if needed == 0 {
                return None;
            }
            lowest = lowest.min(needed);
        }
        Some(lowest)
    }
}

/// Builds the stored record of `session`. A connected session never
/// expires; a disconnected one expires its interval after `now`.
pub fn session_record(session: &mut Session) -> SessionRecord {
    session.dirty = false;
    let acked = session.log_acked();
    let expires_at = if session.conn.is_some() || session.expiry_interval == u32::MAX {
        None
    } else {
        Some(unix_ms() + u64::from(session.expiry_interval) * 1000)
    };
    let mut incoming_qos2: Vec<u16> = session.incoming_qos2.iter().copied().collect();
    incoming_qos2.sort_unstable();
    let inflight = session
        .inflight
        .iter()
        .filter_map(|(packet_id, outbound)| {
            let offset = outbound.delivery.publication.log_offset?;
            let released = outbound.state == OutboundState::AwaitingPubComp;
            Some((offset, *packet_id, released))
        })
        .collect();
    let state = SessionState {
        protocol: session.protocol,
        expiry_interval: session.expiry_interval,
        incoming_qos2,
        done_above: session.log_done.iter().copied().collect(),
        inflight,
        shared_pending: session
            .log_shared
            .iter()
            .map(|(offset, share)| (*offset, share.to_string()))
            .collect(),
    };
    SessionRecord {
        client_id: session.client_id.to_string(),
        expires_at,
        subscriptions: encode_subscriptions(&session.subscriptions),
        will: session.will.as_deref().map(encode_will),
        acked_offsets: vec![(LOG_QUEUE.to_owned(), acked)],
        inflight: encode_session_state(&state),
    }
}

/// Lowest log offset the given sessions still need: one above the
/// acknowledged prefix of the least advanced persistent session. A session
/// with nothing pending needs nothing up to `settled`, the last offset whose
/// routing is known to be over, so an idle session does not hold the log.
///
/// NOTE: "known to be over" rests on timing: `settled` is the last offset of
/// the previous maintenance round, and a message is routed long before the
/// next one unless a shard stalls for the whole interval.
pub fn lowest_needed<'a>(
    sessions: impl Iterator<Item = &'a mut Session>,
    settled: u64,
    last_offset: u64,
) -> u64 {
    let mut lowest = last_offset + 1;
    for session in sessions {
        if session.expiry_interval > 0 {
            let acked = session.log_acked();
            let needed = if session.log_pending.is_empty() {
                acked.max(settled) + 1
            } else {
                acked + 1
            };
            lowest = lowest.min(needed);
        }
    }
    lowest
}

/// Client ids that appear in a journal more than once are written once.
pub fn dedup(ids: Vec<Arc<str>>) -> Vec<Arc<str>> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// Time since `start`, for log lines about restore and flush durations.
pub fn elapsed_ms(start: Instant) -> u128 {
    start.elapsed().as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use coremq_codec::Protocol;

    fn persistent(id: &str, seen: u64, pending: &[u64]) -> Session {
        let mut session = Session::new(id.into(), Protocol::V5);
        session.expiry_interval = 60;
        session.log_seen = seen;
        session.log_pending = pending.iter().copied().collect();
        session
    }

    #[test]
    fn idle_session_skips_settled_offsets() {
        let mut sessions = [persistent("idle", 3, &[])];
        assert_eq!(lowest_needed(sessions.iter_mut(), 40, 50), 41);
        // Before a round has settled anything, its own position counts.
        assert_eq!(lowest_needed(sessions.iter_mut(), 0, 50), 4);
    }

    #[test]
    fn pending_message_holds_the_log() {
        let mut sessions = [
            persistent("idle", 3, &[]),
            persistent("busy", 30, &[12, 30]),
        ];
        assert_eq!(lowest_needed(sessions.iter_mut(), 40, 50), 12);
    }

    #[test]
    fn non_persistent_sessions_are_ignored() {
        let mut session = persistent("clean", 0, &[5]);
        session.expiry_interval = 0;
        assert_eq!(lowest_needed(std::iter::once(&mut session), 40, 50), 51);
    }
}
