//! CoreMQ's per-core engine.
//!
//! One [`Shard`] runs on each pinned glommio executor and owns, with no
//! locks, the sessions of the clients hashed to it, the trie of their
//! subscriptions, a replica of the retained messages, and a replica of the
//! interest table (which shards have subscribers for which filters). Shards
//! exchange [`ShardMsg`]s over glommio's lock-free channel mesh: a publish is
//! sent once to each interested shard as one reference-counted
//! [`Publication`], and the receiving shard delivers it to its own sessions.
//!
//! The engine is sans-I/O toward clients: the broker crate reads packets from
//! sockets and passes them to [`Shard::handle_packet`]; sessions write encoded
//! packets into each connection's [`Conn`] buffer, which the broker's writer
//! task flushes. The one exception: a full buffer on a plain TCP socket is
//! written with a non-blocking `send` here (see [`Conn::write_through`]).
//! Nothing here blocks, and no shard touches another shard's state except
//! through the mesh.

use std::time::Duration;

mod authorize;
mod conn;
mod engine;
mod mesh;
mod message;
pub mod persist;
mod retained;
mod session;
pub mod trie;

pub use authorize::{Access, Authorizer};
pub use conn::{CloseRequest, Conn, ConnId, OutputBudget};
pub use engine::{ConnectOutcome, PublishNow, Shard};
pub use mesh::{Handoff, ShardId, ShardMsg};
pub use message::{Delivery, Publication};
pub use persist::Persistence;

/// What the broker does when an offline session's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropPolicy {
    /// Discard the oldest queued message to make room.
    DropOldest,
    /// Discard the new message.
    DropNew,
}

/// Default of [`Limits::write_linger`], in microseconds. It adds at most
/// 2.5 ms to a delivery on a busy socket, in exchange for fewer writes.
pub const DEFAULT_WRITE_LINGER_US: u64 = 2500;

/// Default of [`Limits::read_pause`], in microseconds.
pub const DEFAULT_READ_PAUSE_US: u64 = 250;

/// Per-client limits the broker enforces and announces in CONNACK.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Receive Maximum the broker announces: QoS 1/2 PUBLISH packets a client
    /// may have unacknowledged toward the broker.
    pub receive_maximum: u16,
    /// Topic Alias Maximum the broker announces for inbound PUBLISH.
    pub topic_alias_maximum: u16,
    /// Largest packet the broker accepts, in bytes, fixed header included.
    pub max_packet_size: u32,
    /// Messages queued per session beyond its in-flight window.
    pub max_queued_messages: usize,
    pub queue_drop_policy: DropPolicy,
    /// Largest keep alive the broker allows, in seconds; a client asking for
    /// more (or for 0) gets this value as Server Keep Alive (MQTT 5.0).
    pub max_keep_alive: u16,
    /// Largest Session Expiry Interval granted, in seconds.
    pub max_session_expiry: u32,
    /// Bytes buffered for one socket beyond which QoS 0 messages to it are
    /// dropped instead of buffered.
    pub max_output_buffer: usize,
    /// Bytes of output buffers over all of a shard's sockets beyond which
    /// QoS 0 messages to sockets holding more than their share are
    /// dropped. Stalled sockets count apart, against half as much (see
    /// [`OutputBudget`]).
    pub max_shard_output: usize,
    /// Largest number of outbound QoS 1/2 messages in flight per session,
    /// whatever Receive Maximum the client announces.
    pub max_inflight: u16,
    /// Time without write progress after which a client whose messages are
    /// being dropped (full queue or full output buffer) is disconnected as a
    /// slow consumer.
    pub slow_consumer_timeout: Duration,
    /// Time a writer keeps deliveries to a socket it wrote to less than
    /// this long ago, to send them in one write. Zero writes at once.
    pub write_linger: Duration,
    /// Time a shard waits after a pass over its readable sockets that
    /// found 4 or more, so that the next pass reads more of them at once.
    /// Zero looks again as soon as the shard is idle.
    pub read_pause: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            max_packet_size: 1024 * 1024,
            max_queued_messages: 1000,
            queue_drop_policy: DropPolicy::DropOldest,
            max_keep_alive: u16::MAX,
            max_session_expiry: u32::MAX,
            max_output_buffer: 1024 * 1024,
            max_shard_output: 16 * 1024 * 1024,
            max_inflight: u16::MAX,
            slow_consumer_timeout: Duration::from_secs(10),
            write_linger: Duration::from_micros(DEFAULT_WRITE_LINGER_US),
            read_pause: Duration::from_micros(DEFAULT_READ_PAUSE_US),
        }
    }
}

/// Returns the shard that owns the session of `client_id` among `shards`.
///
/// xxh3 is stable across processes and versions, so every node of a future
/// cluster computes the same owner.
pub fn owner_shard(client_id: &str, shards: usize) -> ShardId {
    (xxhash_rust::xxh3::xxh3_64(client_id.as_bytes()) % shards as u64) as ShardId
}
