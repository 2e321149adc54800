//! CoreMQ durability: the message log and the [`Store`] trait behind it.
//!
//! # Data model
//!
//! - A **queue** (stream) is an ordered log of [`Message`]s named by a
//!   string and addressed by offset. Offsets start at 1, grow by one per
//!   message and are never reused. A message is written once, however many
//!   sessions read it.
//! - A persistent session keeps, per queue, the last offset it delivered and
//!   had acknowledged ([`SessionRecord::acked_offsets`]). On reconnect it
//!   reads on from there with a [`Reader`].
//! - Truncation is explicit: the broker calls [`Store::delete_by_offset`]
//!   with the lowest offset any session still needs.
//! - Session records and retained messages are keyed by client id and by
//!   topic. [`Store::purge_expired`] removes those whose expiry has passed.
//!   Fields whose format the broker owns (subscriptions, will, in-flight
//!   state, MQTT properties) are opaque bytes here.
//!
//! # Threads
//!
//! [`Store`] is blocking and `Send + Sync`. A glommio shard never calls it
//! directly: it holds a [`StoreHandle`], whose async methods send requests to
//! the handle's own threads and return futures that any executor can await.
//! The handle's writer thread group-commits appends, so many appends share
//! one backend write and one fsync, and no append completes before its group
//! is stored.
//!
//! # Backends
//!
//! - [`MemoryStore`]: always built, no persistence.
//! - `RocksStore` (feature `rocksdb`): embedded, one column family per record
//!   kind.
//! - `MysqlStore` (feature `mysql`): MySQL or MariaDB through a connection
//!   pool.
//! - `RedisStore` (feature `redis`): one Redis server, atomic batches through
//!   a Lua script.
//!
//! The default feature set is empty, so crates that only need the trait do not
//! compile the database clients.

mod codec;
mod error;
mod handle;
mod memory;
mod record;
mod store;

#[cfg(any(feature = "mysql", feature = "redis"))]
mod retry;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "rocksdb")]
mod rocks;

pub use error::{SourceError, StoreError, StoreResult};
pub use handle::{
    unix_time_ms, HandleConfig, HandleStats, Reader, StoreHandle, DEFAULT_MAX_GROUP_MESSAGES,
    DEFAULT_READ_THREADS,
};
pub use memory::MemoryStore;
#[cfg(feature = "mysql")]
pub use mysql::{MysqlConfig, MysqlStore};
pub use record::{Durability, Message, PurgeReport, QoS, SessionRecord};
#[cfg(feature = "redis")]
pub use redis::{RedisConfig, RedisStore};
#[cfg(any(feature = "mysql", feature = "redis"))]
pub use retry::DEFAULT_RETRY_TIMEOUT;
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksConfig, RocksStore};
pub use store::{QueueBatch, Store};
