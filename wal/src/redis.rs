//! Redis backend through the `redis` crate's blocking connections.
//!
//! Keys (all start with [`RedisConfig::key_prefix`]):
//! - `queue:<name>:next`: the newest offset appended (INCRBY counter); it
//!   survives truncation, so offsets are never reused.
//! - `queue:<name>:log`: sorted set of the queue's messages, score = offset,
//!   member = offset (8 bytes, big-endian) + message body. Scores are
//!   doubles, so offsets are exact up to 2^53.
//! - `sessions` and `retained`: hashes of encoded records by client id and
//!   by topic, plus `sessions:expiry` and `retained:expiry`, sorted sets of
//!   expiry times that [`Store::purge_expired`] reads.
//! - `appender:<id>`: sequence number and offsets of the last group commit
//!   of one open store, so that a commit whose reply was lost can be retried
//!   without storing it twice. It expires a day after the last commit.
//!
//! A group commit is one Lua script call, which Redis runs without
//! interleaving other commands. Durability is the server's: each write is
//! on disk before the reply only with `appendonly yes` and
//! `appendfsync always`. Under [`Durability::Fsync`], `open` warns when the
//! server runs otherwise.

use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use redis::{Client, Connection, RedisError, Script};

use crate::codec::{self, DecodeError};
use crate::error::SourceError;
use crate::retry::{
    connection_error, new_appender_id, with_backoff, with_backoff_deduplicated,
    DEFAULT_RETRY_TIMEOUT,
};
use crate::{
    Durability, Message, PurgeReport, QueueBatch, SessionRecord, Store, StoreError, StoreResult,
};

const BACKEND: &str = "redis";

/// Time to wait for a TCP connection and for each reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections kept open between requests; more are opened under load and
/// closed when returned to a full pool.
const MAX_IDLE_CONNECTIONS: usize = 8;

/// Server error codes after which the command was not run and may be
/// repeated.
const RETRYABLE_SERVER_CODES: [&str; 4] = ["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN"];

/// Appends batches once per sequence number. KEYS[1] is the appender key,
/// followed by one (counter, log) pair per batch. ARGV[1] is the append's
/// sequence number and ARGV[2] the appender key's lifetime in seconds,
/// followed per batch by the message count and the message bodies. Returns
/// the first offset of each batch.
///
/// The appender key contains `<sequence>:<start>,<start>,...` of the last
/// append applied. When the sequence number equals it, the append was
/// applied by an attempt whose reply was lost, so the script returns the
/// stored starts and writes nothing. A lower sequence number is a delayed
/// duplicate of an append that was already acknowledged, and is rejected.
///
/// Each member is prefixed with its offset as 8 big-endian bytes, built
/// with string.char because Redis's Lua 5.1 has no integer packing.
///
/// NOTE: Redis does not roll back a script that fails midway (for example
/// on an out-of-memory error), so such a failure can leave part of a group
/// stored.
const APPEND_SCRIPT: &str = r"
local sequence = tonumber(ARGV[1])
local previous = redis.call('GET', KEYS[1])
if previous then
  local separator = string.find(previous, ':', 1, true)
  local last_sequence = tonumber(string.sub(previous, 1, separator - 1))
  if last_sequence == sequence then
    local stored = {}
    for start in string.gmatch(string.sub(previous, separator + 1), '%d+') do
      stored[#stored + 1] = tonumber(start)
    end
    return stored
  end
  if last_sequence > sequence then
    return redis.error_reply('STALE append ' .. ARGV[1] .. ' is older than the last applied append ' .. last_sequence)
  end
end
local starts = {}
local encoded = {}
local arg_index = 3
for key_index = 2, #KEYS, 2 do
  local count = tonumber(ARGV[arg_index])
  arg_index = arg_index + 1
  local last = redis.call('INCRBY', KEYS[key_index], count)
  local start = last - count + 1
  for position = 0, count - 1 do
    local offset = start + position
    local prefix = ''
    local rest = offset
    for _ = 1, 8 do
      prefix = string.char(rest % 256) .. prefix
      rest = math.floor(rest / 256)
    end
    redis.call('ZADD', KEYS[key_index + 1], offset, prefix .. ARGV[arg_index])
    arg_index = arg_index + 1
  end
  starts[#starts + 1] = start
  encoded[#encoded + 1] = string.format('%d', start)
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. table.concat(encoded, ','), 'EX', ARGV[2])
return starts
";

/// Lifetime of an appender key, in seconds, renewed by each append. Far
/// longer than any retry, so the key outlives every repeat of its last
/// append, and short enough that the keys of stopped brokers go away.
const APPENDER_KEY_LIFETIME_SECS: u64 = 24 * 60 * 60;

/// Removes entries of the hash KEYS[2] whose expiry in the sorted set
/// KEYS[1] is at or before ARGV[1]; returns how many were removed.
const PURGE_SCRIPT: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, field in ipairs(expired) do
  redis.call('HDEL', KEYS[2], field)
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
return #expired
";

/// Settings for [`RedisStore::open`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Server URL, for example `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Prefix of every key. Default `coremq:`.
    pub key_prefix: String,
    /// Expected durability; see the module docs.
    pub durability: Durability,
    /// How long a request keeps retrying while the server is unreachable,
    /// counted from its first attempt. Default [`DEFAULT_RETRY_TIMEOUT`].
    pub retry_timeout: Duration,
}

impl RedisConfig {
    /// Creates a config for `url` with the default key prefix,
    /// [`Durability::Fsync`] and the default retry timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "coremq:".to_owned(),
            durability: Durability::Fsync,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
        }
    }
}

/// A [`Store`] backed by one Redis server.
pub struct RedisStore {
    client: Client,
    idle: Mutex<Vec<Connection>>,
    prefix: String,
    append_script: Script,
    purge_script: Script,
    retry_timeout: Duration,
    /// Key of this store's last applied append; see [`APPEND_SCRIPT`].
    appender_key: String,
    /// Sequence number of the last append started. The lock also makes
    /// appends through this store run one at a time, which the script's
    /// check of the last sequence number relies on.
    append_sequence: Mutex<u64>,
}

/// How far a request got before it failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    /// Repeating the request gives the same result.
    Idempotent,
    /// Repeating the request could store its data twice, so a connection
    /// lost after it was sent leaves its outcome unknown.
    NotIdempotent,
}

impl RedisStore {
    /// Connects to `config.url` and checks the server's persistence settings.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::InvalidInput`] for a bad URL and
    /// [`StoreError::Unavailable`] when the server cannot be reached within
    /// [`RedisConfig::retry_timeout`].
    pub fn open(config: &RedisConfig) -> StoreResult<Self> {
        let client =
            Client::open(config.url.as_str()).map_err(|error| StoreError::InvalidInput {
                backend: BACKEND,
                operation: "open",
                key: "url".to_owned(),
                detail: format!("invalid Redis URL: {error}"),
            })?;
        let store = Self {
            client,
            idle: Mutex::new(Vec::new()),
            prefix: config.key_prefix.clone(),
            append_script: Script::new(APPEND_SCRIPT),
            purge_script: Script::new(PURGE_SCRIPT),
            retry_timeout: config.retry_timeout,
            appender_key: format!("{}appender:{}", config.key_prefix, new_appender_id()),
            append_sequence: Mutex::new(0),
        };
        store.request("open", "", RequestKind::Idempotent, |conn| {
            redis::cmd("PING").query::<String>(conn)
        })?;
        if config.durability == Durability::Fsync {
            store.check_durability();
        }
        tracing::info!(key_prefix = %store.prefix, "redis store opened");
        Ok(store)
    }

    /// Warns when the server does not fsync each write before replying.
    fn check_durability(&self) {
        let settings = self.request("check durability", "", RequestKind::Idempotent, |conn| {
            let appendonly: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("appendonly")
                .query(conn)?;
            let appendfsync: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("appendfsync")
                .query(conn)?;
            Ok((appendonly, appendfsync))
        });
        match settings {
            Ok((appendonly, appendfsync)) => {
                let appendonly = appendonly.get(1).map(String::as_str);
                let appendfsync = appendfsync.get(1).map(String::as_str);
                if appendonly != Some("yes") || appendfsync != Some("always") {
                    tracing::warn!(
                        ?appendonly,
                        ?appendfsync,
                        "durability is fsync but the server does not fsync each write; \
                         set appendonly yes and appendfsync always"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not read the server's persistence settings");
            }
        }
    }

    /// Deletes every key that starts with the configured prefix.
    ///
    /// # Errors
    ///
    /// Returns the server's error, after retries when it is unreachable.
    pub fn delete_keys(&self) -> StoreResult<usize> {
        let pattern = format!("{}*", escape_glob(&self.prefix));
        self.request(
            "delete keys",
            &self.prefix,
            RequestKind::Idempotent,
            |conn| {
                let keys: Vec<Vec<u8>> = redis::cmd("SCAN")
                    .cursor_arg(0)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .clone()
                    .iter(conn)?
                    .collect::<redis::RedisResult<Vec<_>>>()?;
                for chunk in keys.chunks(500) {
                    redis::cmd("DEL").arg(chunk).query::<()>(conn)?;
                }
                Ok(keys.len())
            },
        )
    }

    /// Appends `batches` as this store's append number `sequence`, or
    /// returns the offsets stored for it when an earlier attempt applied it.
    /// The caller holds the `append_sequence` lock.
    fn append_sequenced(
        &self,
        batches: &[QueueBatch<'_>],
        sequence: u64,
    ) -> StoreResult<Vec<Range<u64>>> {
        let key = batches.first().map_or("", |batch| batch.queue);
        let mut invocation = self.append_script.prepare_invoke();
        invocation
            .key(&self.appender_key)
            .arg(sequence)
            .arg(APPENDER_KEY_LIFETIME_SECS);
        for batch in batches {
            invocation
                .key(self.counter_key(batch.queue))
                .key(self.log_key(batch.queue))
                .arg(batch.messages.len());
            for message in batch.messages {
                invocation.arg(codec::encode_message_body(message));
            }
        }
        // The script is applied at most once per sequence number, so a
        // connection lost after it was sent is retried; see APPEND_SCRIPT.
        let starts: Vec<u64> = with_backoff_deduplicated(self.retry_timeout, || {
            self.request_once("append", key, RequestKind::NotIdempotent, &mut |conn| {
                invocation.invoke(conn)
            })
        })?;
        if starts.len() != batches.len() {
            return Err(StoreError::Corrupt {
                backend: BACKEND,
                operation: "append",
                key: key.to_owned(),
                detail: format!(
                    "append script returned {} offsets for {} batches",
                    starts.len(),
                    batches.len()
                ),
            });
        }
        let ranges = starts
            .into_iter()
            .zip(batches)
            .map(|(start, batch)| start..start + batch.messages.len() as u64)
            .collect();
        Ok(ranges)
    }

    fn counter_key(&self, queue: &str) -> String {
        format!("{}queue:{queue}:next", self.prefix)
    }

    fn log_key(&self, queue: &str) -> String {
        format!("{}queue:{queue}:log", self.prefix)
    }

    fn hash_key(&self, kind: &str) -> String {
        format!("{}{kind}", self.prefix)
    }

    fn expiry_key(&self, kind: &str) -> String {
        format!("{}{kind}:expiry", self.prefix)
    }

    /// Runs `request` on a pooled connection with retries.
    fn request<T>(
        &self,
        operation: &'static str,
        key: &str,
        kind: RequestKind,
        mut request: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> StoreResult<T> {
        with_backoff(self.retry_timeout, || {
            self.request_once(operation, key, kind, &mut request)
        })
    }

    /// Runs `request` once on a pooled connection. A connection that failed
    /// is dropped, not returned to the pool. After a lost connection the
    /// idle ones are dropped too, because a server restart has closed them
    /// all, and a write sent on one would fail only after it was sent.
    fn request_once<T>(
        &self,
        operation: &'static str,
        key: &str,
        kind: RequestKind,
        request: &mut impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> StoreResult<T> {
        let mut conn = self.take_connection(operation, key)?;
        match request(&mut conn) {
            Ok(value) => {
                self.return_connection(conn);
                Ok(value)
            }
            Err(error) => {
                let error = classify(operation, key, error, kind);
                if matches!(
                    error,
                    StoreError::Unavailable { .. } | StoreError::OutcomeUnknown { .. }
                ) {
                    self.idle_connections().clear();
                }
                Err(error)
            }
        }
    }

    fn idle_connections(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take_connection(&self, operation: &'static str, key: &str) -> StoreResult<Connection> {
        let idle = self.idle_connections().pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let unavailable = |error: RedisError| StoreError::Unavailable {
            backend: BACKEND,
            operation,
            key: key.to_owned(),
            source: SourceError::new(error),
        };
        let conn = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(unavailable)?;
        let io_timeout = crate::retry::io_timeout(self.retry_timeout, IO_TIMEOUT);
        conn.set_read_timeout(Some(io_timeout))
            .map_err(unavailable)?;
        conn.set_write_timeout(Some(io_timeout))
            .map_err(unavailable)?;
        Ok(conn)
    }

    fn return_connection(&self, conn: Connection) {
        let mut idle = self.idle_connections();
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(conn);
        }
    }

    fn put_record(
        &self,
        operation: &'static str,
        kind: &str,
        field: &str,
        expires_at: Option<u64>,
        record: Vec<u8>,
    ) -> StoreResult<()> {
        let hash = self.hash_key(kind);
        let expiry = self.expiry_key(kind);
        self.request(operation, field, RequestKind::Idempotent, |conn| {
            let mut pipe = redis::pipe();
            pipe.atomic().hset(&hash, field, record.as_slice()).ignore();
            match expires_at {
                Some(at) => pipe.zadd(&expiry, field, at).ignore(),
                None => pipe.zrem(&expiry, field).ignore(),
            };
            pipe.query::<()>(conn)
        })
    }

    fn delete_record(&self, operation: &'static str, kind: &str, field: &str) -> StoreResult<()> {
        let hash = self.hash_key(kind);
        let expiry = self.expiry_key(kind);
        self.request(operation, field, RequestKind::Idempotent, |conn| {
            redis::pipe()
                .atomic()
                .hdel(&hash, field)
                .ignore()
                .zrem(&expiry, field)
                .ignore()
                .query::<()>(conn)
        })
    }

    fn list_records(
        &self,
        operation: &'static str,
        kind: &str,
    ) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let hash = self.hash_key(kind);
        // NOTE: HGETALL returns the whole hash in one reply; millions of
        // sessions would need HSCAN instead.
        self.request(operation, "", RequestKind::Idempotent, |conn| {
            redis::cmd("HGETALL").arg(&hash).query(conn)
        })
    }

    fn purge(&self, kind: &str, now_ms: u64) -> StoreResult<usize> {
        let hash = self.hash_key(kind);
        let expiry = self.expiry_key(kind);
        self.request("purge_expired", kind, RequestKind::Idempotent, |conn| {
            self.purge_script
                .key(&expiry)
                .key(&hash)
                .arg(now_ms)
                .invoke::<usize>(conn)
        })
    }
}

impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn append_many(&self, batches: &[QueueBatch<'_>]) -> StoreResult<Vec<Range<u64>>> {
        let mut sequence = self
            .append_sequence
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *sequence += 1;
        self.append_sequenced(batches, *sequence)
    }

    fn read_by_offset(&self, queue: &str, offset: u64, limit: usize) -> StoreResult<Vec<Message>> {
        let log = self.log_key(queue);
        let limit = isize::try_from(limit).unwrap_or(isize::MAX);
        let members: Vec<Vec<u8>> =
            self.request("read_by_offset", queue, RequestKind::Idempotent, |conn| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&log)
                    .arg(offset)
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query(conn)
            })?;
        members
            .iter()
            .map(|member| {
                codec::decode_message_with_offset(member)
                    .map_err(|error| decode_failed("read_by_offset", queue, error))
            })
            .collect()
    }

    fn delete_by_offset(&self, queue: &str, offset: u64) -> StoreResult<()> {
        let log = self.log_key(queue);
        self.request("delete_by_offset", queue, RequestKind::Idempotent, |conn| {
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(&log)
                .arg("-inf")
                .arg(format!("({offset}"))
                .query::<()>(conn)
        })
    }

    fn first_offset(&self, queue: &str) -> StoreResult<Option<u64>> {
        let messages = self.read_by_offset(queue, 0, 1)?;
        Ok(messages.first().map(|message| message.offset))
    }

    fn last_offset(&self, queue: &str) -> StoreResult<Option<u64>> {
        let counter = self.counter_key(queue);
        let last: Option<u64> =
            self.request("last_offset", queue, RequestKind::Idempotent, |conn| {
                redis::cmd("GET").arg(&counter).query(conn)
            })?;
        Ok(last.filter(|&last| last > 0))
    }

    fn put_session(&self, record: &SessionRecord) -> StoreResult<()> {
        self.put_record(
            "put_session",
            "sessions",
            &record.client_id,
            record.expires_at,
            codec::encode_session(record),
        )
    }

    fn get_session(&self, client_id: &str) -> StoreResult<Option<SessionRecord>> {
        let hash = self.hash_key("sessions");
        let record: Option<Vec<u8>> =
            self.request("get_session", client_id, RequestKind::Idempotent, |conn| {
                redis::cmd("HGET").arg(&hash).arg(client_id).query(conn)
            })?;
        record
            .map(|bytes| {
                codec::decode_session(&bytes)
                    .map_err(|error| decode_failed("get_session", client_id, error))
            })
            .transpose()
    }

    fn delete_session(&self, client_id: &str) -> StoreResult<()> {
        self.delete_record("delete_session", "sessions", client_id)
    }

    fn list_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        self.list_records("list_sessions", "sessions")?
            .into_iter()
            .map(|(client_id, record)| {
                codec::decode_session(&record)
                    .map_err(|error| decode_failed("list_sessions", &client_id, error))
            })
            .collect()
    }

    fn put_retained(&self, message: &Message) -> StoreResult<()> {
        self.put_record(
            "put_retained",
            "retained",
            &message.topic,
            message.expires_at,
            codec::encode_message_with_offset(message),
        )
    }

    fn delete_retained(&self, topic: &str) -> StoreResult<()> {
        self.delete_record("delete_retained", "retained", topic)
    }

    fn list_retained(&self) -> StoreResult<Vec<Message>> {
        self.list_records("list_retained", "retained")?
            .into_iter()
            .map(|(topic, message)| {
                codec::decode_message_with_offset(&message)
                    .map_err(|error| decode_failed("list_retained", &topic, error))
            })
            .collect()
    }

    fn purge_expired(&self, now_ms: u64) -> StoreResult<PurgeReport> {
        Ok(PurgeReport {
            sessions: self.purge("sessions", now_ms)?,
            retained: self.purge("retained", now_ms)?,
        })
    }
}

fn classify(
    operation: &'static str,
    key: &str,
    error: RedisError,
    kind: RequestKind,
) -> StoreError {
    let connection_failed = error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout();
    if connection_failed {
        let maybe_applied = kind == RequestKind::NotIdempotent;
        return connection_error(
            BACKEND,
            operation,
            key,
            maybe_applied,
            SourceError::new(error),
        );
    }
    let retryable = error
        .code()
        .is_some_and(|code| RETRYABLE_SERVER_CODES.contains(&code));
    StoreError::Backend {
        backend: BACKEND,
        operation,
        key: key.to_owned(),
        retryable,
        source: SourceError::new(error),
    }
}

/// Escapes the glob characters of a key prefix for SCAN MATCH.
fn escape_glob(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for character in prefix.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

fn decode_failed(operation: &'static str, key: &str, error: DecodeError) -> StoreError {
    StoreError::Corrupt {
        backend: BACKEND,
        operation,
        key: key.to_owned(),
        detail: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens a store under a fresh key prefix on the server that
    /// `tests/services.sh` starts.
    fn open_test_store() -> RedisStore {
        let url = std::env::var("COREMQ_TEST_REDIS_URL").unwrap_or_else(|_| {
            panic!(
                "COREMQ_TEST_REDIS_URL is not set; start the test servers with \
                 `eval \"$(tests/services.sh)\"` from the repository root"
            )
        });
        let mut config = RedisConfig::new(url);
        config.key_prefix = format!("coremq-test:{}:", new_appender_id());
        RedisStore::open(&config).expect("open redis")
    }

    fn message(payload: &str) -> Message {
        Message {
            topic: "t".to_owned(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            ..Message::default()
        }
    }

    #[test]
    fn repeated_sequence_stored_once() {
        let store = open_test_store();
        let first = [message("a"), message("b")];
        let batches = [QueueBatch {
            queue: "q",
            messages: &first,
        }];
        let ranges = store.append_sequenced(&batches, 1).expect("first attempt");
        let repeated = store
            .append_sequenced(&batches, 1)
            .expect("repeated attempt");
        let stored = store.read_by_offset("q", 0, 10).expect("read");
        let next = store.append_sequenced(&batches, 2).expect("next append");
        let stale = store.append_sequenced(&batches, 1);
        store.delete_keys().expect("delete test keys");

        assert_eq!(ranges, vec![1..3]);
        assert_eq!(repeated, ranges);
        assert_eq!(stored.len(), 2);
        assert_eq!(next, vec![3..5]);
        assert!(
            matches!(
                stale,
                Err(StoreError::Backend {
                    retryable: false,
                    ..
                })
            ),
            "{stale:?}"
        );
    }
}
