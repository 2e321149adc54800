//! The blocking `Store` trait that every backend implements.

use std::ops::Range;

use crate::{Message, PurgeReport, SessionRecord, StoreResult};

/// Messages to append to one queue, as part of a group commit.
#[derive(Debug, Clone, Copy)]
pub struct QueueBatch<'a> {
    /// Queue (stream) name.
    pub queue: &'a str,
    /// Messages in append order; their `offset` fields are ignored.
    pub messages: &'a [Message],
}

/// Blocking storage for the message log, session records and retained
/// messages.
///
/// Every method may block on disk or network I/O, so a glommio shard must
/// never call it directly: it goes through a [`StoreHandle`](crate::StoreHandle),
/// which runs the store on its own threads.
///
/// Offsets within a queue start at 1, grow by one per message, and are never
/// reused, even after every message below them was deleted.
pub trait Store: Send + Sync + 'static {
    /// Returns the backend name used in errors and logs, for example `"rocksdb"`.
    fn backend(&self) -> &'static str;

    /// Appends several batches, possibly to different queues, in one atomic
    /// and (per the backend's durability setting) durable write.
    ///
    /// Returns the offsets assigned to each batch, in the order given. A
    /// queue may appear more than once; its batches get consecutive offsets
    /// in that order. An empty batch gets an empty range.
    ///
    /// # Errors
    ///
    /// Returns an error when the write failed; then none of the batches was
    /// stored, except for [`StoreError::OutcomeUnknown`](crate::StoreError::OutcomeUnknown).
    fn append_many(&self, batches: &[QueueBatch<'_>]) -> StoreResult<Vec<Range<u64>>>;

    /// Appends `messages` to `queue` and returns the offsets assigned.
    ///
    /// # Errors
    ///
    /// As for [`Store::append_many`].
    fn append(&self, queue: &str, messages: &[Message]) -> StoreResult<Range<u64>> {
        let mut ranges = self.append_many(&[QueueBatch { queue, messages }])?;
        Ok(ranges
            .pop()
            .expect("append_many returns one range per batch"))
    }

    /// Reads up to `limit` messages of `queue` with offsets at or above
    /// `offset`, in offset order. Offsets below the first stored one are
    /// skipped, so reading from 0 starts at the oldest message.
    fn read_by_offset(&self, queue: &str, offset: u64, limit: usize) -> StoreResult<Vec<Message>>;

    /// Deletes every message of `queue` with an offset below `offset`.
    fn delete_by_offset(&self, queue: &str, offset: u64) -> StoreResult<()>;

    /// Returns the offset of the oldest stored message of `queue`, or `None`
    /// when it stores none.
    fn first_offset(&self, queue: &str) -> StoreResult<Option<u64>>;

    /// Returns the offset of the newest message ever appended to `queue`,
    /// or `None` when nothing was appended. Truncation does not lower it.
    fn last_offset(&self, queue: &str) -> StoreResult<Option<u64>>;

    /// Inserts or replaces the session record keyed by its client id.
    fn put_session(&self, record: &SessionRecord) -> StoreResult<()>;

    /// Returns the session record of `client_id`, if stored.
    fn get_session(&self, client_id: &str) -> StoreResult<Option<SessionRecord>>;

    /// Deletes the session record of `client_id`; deleting a missing record
    /// is not an error.
    fn delete_session(&self, client_id: &str) -> StoreResult<()>;

    /// Returns every stored session record, in no particular order.
    fn list_sessions(&self) -> StoreResult<Vec<SessionRecord>>;

    /// Inserts or replaces the retained message for `message.topic`.
    fn put_retained(&self, message: &Message) -> StoreResult<()>;

    /// Deletes the retained message of `topic`; deleting a missing one is
    /// not an error.
    fn delete_retained(&self, topic: &str) -> StoreResult<()>;

    /// Returns every retained message, in no particular order.
    fn list_retained(&self) -> StoreResult<Vec<Message>>;

    /// Removes sessions and retained messages whose expiry time is at or
    /// before `now_ms` (unix milliseconds). Log messages are removed by
    /// [`Store::delete_by_offset`] instead.
    fn purge_expired(&self, now_ms: u64) -> StoreResult<PurgeReport>;
}
