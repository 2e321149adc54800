//! RocksDB backend: an embedded store in one directory.
//!
//! Column families, one per record kind:
//! - `messages`: key = queue name length (u16 BE) + queue name + offset
//!   (u64 BE), so a queue's messages are contiguous and in offset order;
//!   value = message body without the offset.
//! - `meta`: key = `next_offset/` + queue name, value = the offset the next
//!   append gets (u64 BE). It survives truncation, so offsets are never reused.
//! - `sessions`: key = client id, value = encoded session record.
//! - `retained`: key = topic, value = message with its offset.
//!
//! Each group commit is one WriteBatch written with `sync` set under
//! [`Durability::Fsync`].

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, ErrorKind, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};

use crate::codec::{self, DecodeError};
use crate::error::SourceError;
use crate::{
    Durability, Message, PurgeReport, QueueBatch, SessionRecord, Store, StoreError, StoreResult,
};

const BACKEND: &str = "rocksdb";

const CF_MESSAGES: &str = "messages";
const CF_META: &str = "meta";
const CF_SESSIONS: &str = "sessions";
const CF_RETAINED: &str = "retained";
const COLUMN_FAMILIES: [&str; 4] = [CF_MESSAGES, CF_META, CF_SESSIONS, CF_RETAINED];

const NEXT_OFFSET_PREFIX: &[u8] = b"next_offset/";

/// Settings for [`RocksStore::open`].
#[derive(Debug, Clone)]
pub struct RocksConfig {
    /// Directory of the database; created when missing.
    pub data_dir: PathBuf,
    /// Whether each write is fsynced before it completes.
    pub durability: Durability,
}

impl RocksConfig {
    /// Creates a config for `data_dir` with [`Durability::Fsync`].
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            durability: Durability::Fsync,
        }
    }
}

/// A [`Store`] backed by an embedded RocksDB database.
pub struct RocksStore {
    db: DB,
    write_options: WriteOptions,
    /// Next offset per queue, loaded from `meta` on first use. The mutex also
    /// serializes appends, so two appends never take the same offsets.
    next_offsets: Mutex<HashMap<String, u64>>,
    /// Serializes session and retained writes with `purge_expired`, so a
    /// purge never deletes a record replaced after its scan.
    records_lock: Mutex<()>,
}

impl RocksStore {
    /// Opens or creates the database in `config.data_dir`.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Backend`] when RocksDB cannot open the directory,
    /// for example because another process holds its lock.
    pub fn open(config: &RocksConfig) -> StoreResult<Self> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let descriptors = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let path = config.data_dir.display().to_string();
        let db = DB::open_cf_descriptors(&options, &config.data_dir, descriptors)
            .map_err(|error| backend_error("open", &path, error))?;

        let mut write_options = WriteOptions::default();
        write_options.set_sync(config.durability == Durability::Fsync);
        tracing::info!(data_dir = %path, durability = ?config.durability, "rocksdb store opened");
        Ok(Self {
            db,
            write_options,
            next_offsets: Mutex::new(HashMap::new()),
            records_lock: Mutex::new(()),
        })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created by open")
    }

    fn lock_offsets(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        // The map is only a cache of `meta`, written after each successful
        // batch, so a poisoned map is still correct.
        self.next_offsets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the next offset of `queue` from `meta`, 1 for a new queue.
    fn load_next_offset(&self, queue: &str) -> StoreResult<u64> {
        let key = next_offset_key(queue);
        let value = self
            .db
            .get_cf(self.cf(CF_META), &key)
            .map_err(|error| backend_error("load next offset", queue, error))?;
        match value {
            None => Ok(1),
            Some(bytes) => {
                let array: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    corrupt("load next offset", queue, "next offset is not 8 bytes")
                })?;
                Ok(u64::from_be_bytes(array))
            }
        }
    }

    fn lock_records(&self) -> MutexGuard<'_, ()> {
        self.records_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, operation: &'static str, key: &str, batch: WriteBatch) -> StoreResult<()> {
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(|error| backend_error(operation, key, error))
    }
}

impl Store for RocksStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn append_many(&self, batches: &[QueueBatch<'_>]) -> StoreResult<Vec<Range<u64>>> {
        let mut next_offsets = self.lock_offsets();

        // Offsets are assigned in a copy, so a failed write leaves the cache
        // as it was.
        let mut pending: HashMap<&str, u64> = HashMap::new();
        let mut write_batch = WriteBatch::default();
        let mut ranges = Vec::with_capacity(batches.len());
        let messages_cf = self.cf(CF_MESSAGES);
        for batch in batches {
            check_name_length("append", batch.queue)?;
            let next = match pending.get(batch.queue) {
                Some(next) => *next,
                None => match next_offsets.get(batch.queue) {
                    Some(next) => *next,
                    None => self.load_next_offset(batch.queue)?,
                },
            };
            let start = next;
            for (index, message) in batch.messages.iter().enumerate() {
                let offset = start + index as u64;
                write_batch.put_cf(
                    messages_cf,
                    message_key(batch.queue, offset),
                    codec::encode_message_body(message),
                );
            }
            let end = start + batch.messages.len() as u64;
            pending.insert(batch.queue, end);
            ranges.push(start..end);
        }
        for (queue, next) in &pending {
            write_batch.put_cf(self.cf(CF_META), next_offset_key(queue), next.to_be_bytes());
        }

        let first_queue = batches.first().map_or("", |batch| batch.queue);
        self.write("append", first_queue, write_batch)?;
        for (queue, next) in pending {
            next_offsets.insert(queue.to_owned(), next);
        }
        Ok(ranges)
    }

    fn read_by_offset(&self, queue: &str, offset: u64, limit: usize) -> StoreResult<Vec<Message>> {
        check_name_length("read_by_offset", queue)?;
        let prefix = queue_prefix(queue);
        let start = message_key(queue, offset);
        let iterator = self.db.iterator_cf(
            self.cf(CF_MESSAGES),
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut messages = Vec::new();
        for item in iterator {
            if messages.len() >= limit {
                break;
            }
            let (key, value) =
                item.map_err(|error| backend_error("read_by_offset", queue, error))?;
            let Some(offset_bytes) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let offset = decode_offset(offset_bytes)
                .ok_or_else(|| corrupt("read_by_offset", queue, "message key has no offset"))?;
            let message = codec::decode_message_body(offset, &value)
                .map_err(|error| decode_failed("read_by_offset", queue, error))?;
            messages.push(message);
        }
        Ok(messages)
    }

    fn delete_by_offset(&self, queue: &str, offset: u64) -> StoreResult<()> {
        check_name_length("delete_by_offset", queue)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_MESSAGES),
            message_key(queue, 0),
            message_key(queue, offset),
        );
        self.write("delete_by_offset", queue, batch)
    }

    fn first_offset(&self, queue: &str) -> StoreResult<Option<u64>> {
        let messages = self.read_by_offset(queue, 0, 1)?;
        Ok(messages.first().map(|message| message.offset))
    }

    fn last_offset(&self, queue: &str) -> StoreResult<Option<u64>> {
        check_name_length("last_offset", queue)?;
        let cached = self.lock_offsets().get(queue).copied();
        let next = match cached {
            Some(next) => next,
            None => self.load_next_offset(queue)?,
        };
        Ok(next.checked_sub(1).filter(|&last| last > 0))
    }

    fn put_session(&self, record: &SessionRecord) -> StoreResult<()> {
        let _records = self.lock_records();
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(CF_SESSIONS),
            record.client_id.as_bytes(),
            codec::encode_session(record),
        );
        self.write("put_session", &record.client_id, batch)
    }

    fn get_session(&self, client_id: &str) -> StoreResult<Option<SessionRecord>> {
        let value = self
            .db
            .get_cf(self.cf(CF_SESSIONS), client_id.as_bytes())
            .map_err(|error| backend_error("get_session", client_id, error))?;
        value
            .map(|bytes| {
                codec::decode_session(&bytes)
                    .map_err(|error| decode_failed("get_session", client_id, error))
            })
            .transpose()
    }

    fn delete_session(&self, client_id: &str) -> StoreResult<()> {
        let _records = self.lock_records();
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_SESSIONS), client_id.as_bytes());
        self.write("delete_session", client_id, batch)
    }

    fn list_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        let mut records = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_SESSIONS), IteratorMode::Start)
        {
            let (key, value) = item.map_err(|error| backend_error("list_sessions", "", error))?;
            let record = codec::decode_session(&value).map_err(|error| {
                decode_failed("list_sessions", &String::from_utf8_lossy(&key), error)
            })?;
            records.push(record);
        }
        Ok(records)
    }

    fn put_retained(&self, message: &Message) -> StoreResult<()> {
        let _records = self.lock_records();
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(CF_RETAINED),
            message.topic.as_bytes(),
            codec::encode_message_with_offset(message),
        );
        self.write("put_retained", &message.topic, batch)
    }

    fn delete_retained(&self, topic: &str) -> StoreResult<()> {
        let _records = self.lock_records();
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_RETAINED), topic.as_bytes());
        self.write("delete_retained", topic, batch)
    }

    fn list_retained(&self) -> StoreResult<Vec<Message>> {
        let mut messages = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_RETAINED), IteratorMode::Start)
        {
            let (key, value) = item.map_err(|error| backend_error("list_retained", "", error))?;
            let message = codec::decode_message_with_offset(&value).map_err(|error| {
                decode_failed("list_retained", &String::from_utf8_lossy(&key), error)
            })?;
            messages.push(message);
        }
        Ok(messages)
    }

    fn purge_expired(&self, now_ms: u64) -> StoreResult<PurgeReport> {
        let _records = self.lock_records();
        let mut report = PurgeReport::default();
        let mut batch = WriteBatch::default();

        let sessions_cf = self.cf(CF_SESSIONS);
        for item in self.db.iterator_cf(sessions_cf, IteratorMode::Start) {
            let (key, value) = item.map_err(|error| backend_error("purge_expired", "", error))?;
            let expires_at = codec::session_expires_at(&value).map_err(|error| {
                decode_failed("purge_expired", &String::from_utf8_lossy(&key), error)
            })?;
            if expires_at.is_some_and(|at| at <= now_ms) {
                batch.delete_cf(sessions_cf, &key);
                report.sessions += 1;
            }
        }

        let retained_cf = self.cf(CF_RETAINED);
        for item in self.db.iterator_cf(retained_cf, IteratorMode::Start) {
            let (key, value) = item.map_err(|error| backend_error("purge_expired", "", error))?;
            let message = codec::decode_message_with_offset(&value).map_err(|error| {
                decode_failed("purge_expired", &String::from_utf8_lossy(&key), error)
            })?;
            if message.is_expired(now_ms) {
                batch.delete_cf(retained_cf, &key);
                report.retained += 1;
            }
        }

        self.write("purge_expired", "", batch)?;
        Ok(report)
    }
}

/// Returns the key prefix shared by every message of `queue`.
fn queue_prefix(queue: &str) -> Vec<u8> {
    let length = u16::try_from(queue.len()).expect("queue name length checked by the caller");
    let mut prefix = Vec::with_capacity(2 + queue.len() + 8);
    prefix.extend_from_slice(&length.to_be_bytes());
    prefix.extend_from_slice(queue.as_bytes());
    prefix
}

fn message_key(queue: &str, offset: u64) -> Vec<u8> {
    let mut key = queue_prefix(queue);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

fn decode_offset(bytes: &[u8]) -> Option<u64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(array))
}

fn next_offset_key(queue: &str) -> Vec<u8> {
    let mut key = NEXT_OFFSET_PREFIX.to_vec();
    key.extend_from_slice(queue.as_bytes());
    key
}

/// Rejects queue names whose length does not fit the u16 key prefix; MQTT
/// topic names are at most 65,535 bytes as well.
fn check_name_length(operation: &'static str, queue: &str) -> StoreResult<()> {
    if queue.len() > usize::from(u16::MAX) {
        return Err(StoreError::InvalidInput {
            backend: BACKEND,
            operation,
            key: queue.chars().take(64).collect(),
            detail: format!("queue name is {} bytes, the maximum is 65535", queue.len()),
        });
    }
    Ok(())
}

fn backend_error(operation: &'static str, key: &str, error: rocksdb::Error) -> StoreError {
    let retryable = matches!(
        error.kind(),
        ErrorKind::Busy | ErrorKind::TryAgain | ErrorKind::TimedOut
    );
    StoreError::Backend {
        backend: BACKEND,
        operation,
        key: key.to_owned(),
        retryable,
        source: SourceError::new(error),
    }
}

fn corrupt(operation: &'static str, key: &str, detail: &str) -> StoreError {
    StoreError::Corrupt {
        backend: BACKEND,
        operation,
        key: key.to_owned(),
        detail: detail.to_owned(),
    }
}

fn decode_failed(operation: &'static str, key: &str, error: DecodeError) -> StoreError {
    corrupt(operation, key, &error.to_string())
}
