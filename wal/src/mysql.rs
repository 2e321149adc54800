//! MySQL/MariaDB backend through the `mysql` crate's blocking connection pool.
//!
//! Tables (names start with [`MysqlConfig::table_prefix`]), created at open
//! with `CREATE TABLE IF NOT EXISTS`:
//! - `queues (queue, next_offset)`: the offset the next append gets, locked
//!   with `SELECT ... FOR UPDATE` so several brokers can share a queue.
//! - `messages (queue, msg_offset, body)`: the log, primary key
//!   `(queue, msg_offset)`; `body` is the message encoded without its offset.
//! - `sessions (client_id, expires_at, record)` and
//!   `retained (topic, expires_at, message)`: encoded records, with the expiry
//!   in its own indexed column for purging.
//! - `appenders (appender, last_sequence, last_ranges, updated_at)`: one row
//!   per open store with the sequence number and offsets of its last group
//!   commit, written in the commit's transaction, so that a commit whose
//!   reply was lost can be retried without storing it twice. `open` deletes
//!   rows not updated for [`STALE_APPENDER_AGE`].
//!
//! Keys are `VARBINARY`, so names compare byte for byte whatever the server's
//! default collation.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{
    DriverError, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, PooledConn, TxOpts,
    Value,
};

use crate::codec::{self, DecodeError};
use crate::error::SourceError;
use crate::retry::{
    connection_error, new_appender_id, with_backoff, with_backoff_deduplicated,
    DEFAULT_RETRY_TIMEOUT,
};
use crate::{
    Durability, Message, PurgeReport, QueueBatch, SessionRecord, Store, StoreError, StoreResult,
};

const BACKEND: &str = "mysql";

/// Maximum queue name and client id length, from the `VARBINARY(1024)` key
/// columns.
const MAX_NAME_BYTES: usize = 1024;

/// Maximum retained topic length, from InnoDB's 3072-byte index key limit.
const MAX_TOPIC_BYTES: usize = 3072;

/// Rows per multi-row INSERT. Each row has 3 placeholders, far below the
/// protocol's 65,535, and batching rows saves one round trip per message.
const MAX_ROWS_PER_INSERT: usize = 500;

/// Bytes of message bodies per multi-row INSERT, well under the 16 MiB
/// default `max_allowed_packet` of MariaDB 10.11 and MySQL 8.
const MAX_BYTES_PER_INSERT: usize = 4 << 20;

/// Server error codes after which the transaction was rolled back and may be
/// retried: 1205 lock wait timeout, 1213 deadlock.
const RETRYABLE_SERVER_ERRORS: [u16; 2] = [1205, 1213];

/// Server error codes that end or refuse the connection, so the request
/// failed with it: 1040 too many connections, 1053 server shutdown in
/// progress, 1317 query interrupted, 1927 connection killed (MariaDB). They
/// are handled like a lost connection.
const CONNECTION_ENDED_SERVER_ERRORS: [u16; 4] = [1040, 1053, 1317, 1927];

/// Connections the pool keeps open at least and at most.
const POOL_MIN_CONNECTIONS: usize = 1;
const POOL_MAX_CONNECTIONS: usize = 8;

/// Age after which `open` deletes the appender row of a store that has not
/// committed since. Such a store has stopped, or it has no retry pending and
/// recreates its row at its next commit.
const STALE_APPENDER_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Time to wait for a TCP connection and for each read or write on it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings for [`MysqlStore::open`].
#[derive(Debug, Clone)]
pub struct MysqlConfig {
    /// Server URL, for example `mysql://user:password@127.0.0.1:3306/coremq`.
    pub url: String,
    /// Prefix of every table name; ASCII letters, digits and `_` only.
    /// Default `coremq_`.
    pub table_prefix: String,
    /// Expected durability. The server's own settings decide it: under
    /// [`Durability::Fsync`], `open` logs a warning when
    /// `innodb_flush_log_at_trx_commit` is not 1.
    pub durability: Durability,
    /// How long a request keeps retrying while the server is unreachable,
    /// counted from its first attempt. Default [`DEFAULT_RETRY_TIMEOUT`].
    pub retry_timeout: Duration,
}

impl MysqlConfig {
    /// Creates a config for `url` with the default table prefix,
    /// [`Durability::Fsync`] and the default retry timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            table_prefix: "coremq_".to_owned(),
            durability: Durability::Fsync,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
        }
    }
}

/// Table names with the configured prefix.
struct Tables {
    queues: String,
    messages: String,
    sessions: String,
    retained: String,
    appenders: String,
}

/// A [`Store`] backed by MySQL or MariaDB (InnoDB).
pub struct MysqlStore {
    pool: Pool,
    tables: Tables,
    retry_timeout: Duration,
    /// This store's row in the appenders table.
    appender: String,
    /// Sequence number of the last append started. The lock also makes
    /// appends through this store run one at a time, which the check of the
    /// last applied sequence number in `append_once` relies on.
    append_sequence: Mutex<u64>,
}

impl MysqlStore {
    /// Connects to `config.url` and creates the tables when missing.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::InvalidInput`] for a bad URL or table prefix,
    /// and [`StoreError::Unavailable`] when the server cannot be reached
    /// within [`MysqlConfig::retry_timeout`].
    pub fn open(config: &MysqlConfig) -> StoreResult<Self> {
        let prefix = &config.table_prefix;
        let prefix_is_valid = prefix
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
        if !prefix_is_valid {
            return Err(invalid(
                "open",
                prefix,
                "table prefix may contain only ASCII letters, digits and '_'",
            ));
        }
        let opts = Opts::from_url(&config.url)
            .map_err(|error| invalid("open", "url", &format!("invalid MySQL URL: {error}")))?;
        let constraints = PoolConstraints::new(POOL_MIN_CONNECTIONS, POOL_MAX_CONNECTIONS)
            .expect("minimum connections is not above the maximum");
        let opts = OptsBuilder::from_opts(opts)
            .pool_opts(PoolOpts::default().with_constraints(constraints))
            .tcp_connect_timeout(Some(CONNECT_TIMEOUT))
            .read_timeout(Some(crate::retry::io_timeout(
                config.retry_timeout,
                IO_TIMEOUT,
            )))
            .write_timeout(Some(crate::retry::io_timeout(
                config.retry_timeout,
                IO_TIMEOUT,
            )));

        let pool = with_backoff(config.retry_timeout, || {
            Pool::new(opts.clone())
                .map_err(|error| classify("open", "", error, RequestState::NotSent))
        })?;
        let store = Self {
            pool,
            tables: Tables {
                queues: format!("{prefix}queues"),
                messages: format!("{prefix}messages"),
                sessions: format!("{prefix}sessions"),
                retained: format!("{prefix}retained"),
                appenders: format!("{prefix}appenders"),
            },
            retry_timeout: config.retry_timeout,
            appender: new_appender_id(),
            append_sequence: Mutex::new(0),
        };
        store.create_tables()?;
        store.register_appender()?;
        store.check_durability(config.durability)?;
        tracing::info!(table_prefix = %prefix, "mysql store opened");
        Ok(store)
    }

    fn create_tables(&self) -> StoreResult<()> {
        let Tables {
            queues,
            messages,
            sessions,
            retained,
            appenders,
        } = &self.tables;
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS {queues} (
                    queue VARBINARY({MAX_NAME_BYTES}) NOT NULL PRIMARY KEY,
                    next_offset BIGINT UNSIGNED NOT NULL
                ) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {messages} (
                    queue VARBINARY({MAX_NAME_BYTES}) NOT NULL,
                    msg_offset BIGINT UNSIGNED NOT NULL,
                    body LONGBLOB NOT NULL,
                    PRIMARY KEY (queue, msg_offset)
                ) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {sessions} (
                    client_id VARBINARY({MAX_NAME_BYTES}) NOT NULL PRIMARY KEY,
                    expires_at BIGINT UNSIGNED NULL,
                    record LONGBLOB NOT NULL,
                    KEY expires_at (expires_at)
                ) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {retained} (
                    topic VARBINARY({MAX_TOPIC_BYTES}) NOT NULL PRIMARY KEY,
                    expires_at BIGINT UNSIGNED NULL,
                    message LONGBLOB NOT NULL,
                    KEY expires_at (expires_at)
                ) ENGINE=InnoDB"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {appenders} (
                    appender VARBINARY(64) NOT NULL PRIMARY KEY,
                    last_sequence BIGINT UNSIGNED NOT NULL,
                    last_ranges LONGBLOB NOT NULL,
                    updated_at BIGINT UNSIGNED NOT NULL,
                    KEY updated_at (updated_at)
                ) ENGINE=InnoDB"
            ),
        ];
        self.with_conn("create tables", "", |conn| {
            for statement in &statements {
                conn.query_drop(statement)?;
            }
            Ok(())
        })
    }

    /// Inserts this store's appender row, so that appends lock an existing
    /// row, and deletes the rows of stores that stopped long ago.
    fn register_appender(&self) -> StoreResult<()> {
        let appenders = &self.tables.appenders;
        let now = crate::unix_time_ms();
        let stale_before = now.saturating_sub(STALE_APPENDER_AGE.as_millis() as u64);
        let delete_stale = format!("DELETE FROM {appenders} WHERE updated_at < ?");
        let insert = format!(
            "INSERT IGNORE INTO {appenders} (appender, last_sequence, last_ranges, updated_at) \
             VALUES (?, 0, '', ?)"
        );
        self.with_conn("register appender", &self.appender, |conn| {
            conn.exec_drop(&delete_stale, (stale_before,))?;
            conn.exec_drop(&insert, (self.appender.as_bytes(), now))
        })
    }

    fn check_durability(&self, durability: Durability) -> StoreResult<()> {
        if durability != Durability::Fsync {
            return Ok(());
        }
        let flush: Option<u64> = self.with_conn("check durability", "", |conn| {
            conn.query_first("SELECT @@innodb_flush_log_at_trx_commit")
        })?;
        if flush != Some(1) {
            tracing::warn!(
                innodb_flush_log_at_trx_commit = ?flush,
                "durability is fsync but the server does not flush the InnoDB log at each \
                 commit; set innodb_flush_log_at_trx_commit=1"
            );
        }
        Ok(())
    }

    /// Runs an idempotent request on a pooled connection, retrying lost
    /// connections with backoff.
    fn with_conn<T>(
        &self,
        operation: &'static str,
        key: &str,
        mut request: impl FnMut(&mut PooledConn) -> mysql::Result<T>,
    ) -> StoreResult<T> {
        with_backoff(self.retry_timeout, || {
            let mut conn = self
                .pool
                .get_conn()
                .map_err(|error| classify(operation, key, error, RequestState::NotSent))?;
            request(&mut conn)
                .map_err(|error| classify(operation, key, error, RequestState::Idempotent))
        })
    }

    /// Drops the five tables and everything in them.
    ///
    /// # Errors
    ///
    /// Returns the server's error, after retries when it is unreachable.
    pub fn drop_tables(&self) -> StoreResult<()> {
        let Tables {
            queues,
            messages,
            sessions,
            retained,
            appenders,
        } = &self.tables;
        let statement = format!(
            "DROP TABLE IF EXISTS {queues}, {messages}, {sessions}, {retained}, {appenders}"
        );
        self.with_conn("drop tables", "", |conn| conn.query_drop(&statement))
    }

    /// Writes one group commit in one transaction, unless this appender's
    /// row shows that an earlier attempt committed `sequence`; then returns
    /// the offsets that attempt assigned.
    fn append_once(
        &self,
        batches: &[QueueBatch<'_>],
        sequence: u64,
    ) -> StoreResult<Vec<Range<u64>>> {
        let key = batches.first().map_or("", |batch| batch.queue);
        let not_committed = |error| classify("append", key, error, RequestState::NotSent);

        let mut conn = self.pool.get_conn().map_err(not_committed)?;
        let mut transaction = conn
            .start_transaction(TxOpts::default())
            .map_err(not_committed)?;

        // The row lock also waits for an earlier attempt whose transaction
        // the server has not yet ended, so its outcome is known here.
        let lock_appender = format!(
            "SELECT last_sequence, last_ranges FROM {} WHERE appender = ? FOR UPDATE",
            self.tables.appenders
        );
        let last: Option<(u64, Vec<u8>)> = transaction
            .exec_first(&lock_appender, (self.appender.as_bytes(),))
            .map_err(not_committed)?;
        if let Some((last_sequence, last_ranges)) = last {
            if last_sequence == sequence {
                return decode_ranges(&last_ranges)
                    .ok_or_else(|| corrupt_ranges(key, last_ranges.len()));
            }
            if last_sequence > sequence {
                return Err(StoreError::Corrupt {
                    backend: BACKEND,
                    operation: "append",
                    key: key.to_owned(),
                    detail: format!(
                        "appender {} last committed sequence {last_sequence}, above this \
                         append's {sequence}",
                        self.appender
                    ),
                });
            }
        }

        // Lock each queue's counter row in name order, so concurrent appends
        // to the same queues take their locks in one order. A deadlock that
        // still occurs (error 1213) rolls back and is retried.
        let mut next_offsets: BTreeMap<&str, u64> = BTreeMap::new();
        for batch in batches {
            next_offsets.insert(batch.queue, 0);
        }
        let insert_queue = format!(
            "INSERT IGNORE INTO {} (queue, next_offset) VALUES (?, 1)",
            self.tables.queues
        );
        let lock_queue = format!(
            "SELECT next_offset FROM {} WHERE queue = ? FOR UPDATE",
            self.tables.queues
        );
        for (queue, next) in next_offsets.iter_mut() {
            transaction
                .exec_drop(&insert_queue, (queue.as_bytes(),))
                .map_err(not_committed)?;
            let stored: Option<u64> = transaction
                .exec_first(&lock_queue, (queue.as_bytes(),))
                .map_err(not_committed)?;
            *next = stored.expect("the counter row was inserted above in this transaction");
        }

        let mut ranges = Vec::with_capacity(batches.len());
        let mut rows: Vec<(&str, u64, Vec<u8>)> = Vec::new();
        for batch in batches {
            let next = next_offsets
                .get_mut(batch.queue)
                .expect("every queue of the group was locked above");
            let start = *next;
            for message in batch.messages {
                rows.push((batch.queue, *next, codec::encode_message_body(message)));
                *next += 1;
            }
            ranges.push(start..*next);
        }
        self.insert_messages(&mut transaction, rows)
            .map_err(not_committed)?;

        let update_queue = format!(
            "UPDATE {} SET next_offset = ? WHERE queue = ?",
            self.tables.queues
        );
        for (queue, next) in &next_offsets {
            transaction
                .exec_drop(&update_queue, (*next, queue.as_bytes()))
                .map_err(not_committed)?;
        }

        // An upsert, because `open` of another store may have deleted this
        // row after a week without commits.
        let record_append = format!(
            "INSERT INTO {} (appender, last_sequence, last_ranges, updated_at) \
             VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE last_sequence = ?, last_ranges = ?, updated_at = ?",
            self.tables.appenders
        );
        let encoded_ranges = encode_ranges(&ranges);
        let now = crate::unix_time_ms();
        transaction
            .exec_drop(
                &record_append,
                (
                    self.appender.as_bytes(),
                    sequence,
                    encoded_ranges.as_slice(),
                    now,
                    sequence,
                    encoded_ranges.as_slice(),
                    now,
                ),
            )
            .map_err(not_committed)?;

        transaction
            .commit()
            .map_err(|error| classify("append", key, error, RequestState::MaybeApplied))?;
        Ok(ranges)
    }

    /// Inserts rows with multi-row INSERT statements, chunked by row count
    /// and bytes.
    fn insert_messages(
        &self,
        transaction: &mut mysql::Transaction<'_>,
        rows: Vec<(&str, u64, Vec<u8>)>,
    ) -> mysql::Result<()> {
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let mut values: Vec<Value> = Vec::new();
            let mut row_count = 0;
            let mut byte_count = 0;
            while row_count < MAX_ROWS_PER_INSERT && byte_count < MAX_BYTES_PER_INSERT {
                let Some((queue, offset, body)) = rows.next() else {
                    break;
                };
                byte_count += body.len();
                row_count += 1;
                values.push(Value::Bytes(queue.as_bytes().to_vec()));
                values.push(Value::UInt(offset));
                values.push(Value::Bytes(body));
            }
            let placeholders = vec!["(?, ?, ?)"; row_count].join(", ");
            let statement = format!(
                "INSERT INTO {} (queue, msg_offset, body) VALUES {placeholders}",
                self.tables.messages
            );
            transaction.exec_drop(statement, Params::Positional(values))?;
        }
        Ok(())
    }
}

impl Store for MysqlStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn append_many(&self, batches: &[QueueBatch<'_>]) -> StoreResult<Vec<Range<u64>>> {
        for batch in batches {
            check_length("append", batch.queue, MAX_NAME_BYTES)?;
        }
        let mut sequence = self
            .append_sequence
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *sequence += 1;
        // A failure before COMMIT was sent rolls the transaction back. A
        // failure after it is retried too, because `append_once` commits
        // each sequence number at most once.
        with_backoff_deduplicated(self.retry_timeout, || self.append_once(batches, *sequence))
    }

    fn read_by_offset(&self, queue: &str, offset: u64, limit: usize) -> StoreResult<Vec<Message>> {
        check_length("read_by_offset", queue, MAX_NAME_BYTES)?;
        let statement = format!(
            "SELECT msg_offset, body FROM {} WHERE queue = ? AND msg_offset >= ? \
             ORDER BY msg_offset LIMIT ?",
            self.tables.messages
        );
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let rows: Vec<(u64, Vec<u8>)> = self.with_conn("read_by_offset", queue, |conn| {
            conn.exec(&statement, (queue.as_bytes(), offset, limit))
        })?;
        rows.into_iter()
            .map(|(offset, body)| {
                codec::decode_message_body(offset, &body)
                    .map_err(|error| decode_failed("read_by_offset", queue, error))
            })
            .collect()
    }

    fn delete_by_offset(&self, queue: &str, offset: u64) -> StoreResult<()> {
        check_length("delete_by_offset", queue, MAX_NAME_BYTES)?;
        let statement = format!(
            "DELETE FROM {} WHERE queue = ? AND msg_offset < ?",
            self.tables.messages
        );
        self.with_conn("delete_by_offset", queue, |conn| {
            conn.exec_drop(&statement, (queue.as_bytes(), offset))
        })
    }

    fn first_offset(&self, queue: &str) -> StoreResult<Option<u64>> {
        check_length("first_offset", queue, MAX_NAME_BYTES)?;
        let statement = format!(
            "SELECT MIN(msg_offset) FROM {} WHERE queue = ?",
            self.tables.messages
        );
        let first: Option<Option<u64>> = self.with_conn("first_offset", queue, |conn| {
            conn.exec_first(&statement, (queue.as_bytes(),))
        })?;
        Ok(first.flatten())
    }

    fn last_offset(&self, queue: &str) -> StoreResult<Option<u64>> {
        check_length("last_offset", queue, MAX_NAME_BYTES)?;
        let statement = format!(
            "SELECT next_offset FROM {} WHERE queue = ?",
            self.tables.queues
        );
        let next: Option<u64> = self.with_conn("last_offset", queue, |conn| {
            conn.exec_first(&statement, (queue.as_bytes(),))
        })?;
        Ok(next.map(|next| next - 1).filter(|&last| last > 0))
    }

    fn put_session(&self, record: &SessionRecord) -> StoreResult<()> {
        let client_id = &record.client_id;
        check_length("put_session", client_id, MAX_NAME_BYTES)?;
        let statement = format!(
            "REPLACE INTO {} (client_id, expires_at, record) VALUES (?, ?, ?)",
            self.tables.sessions
        );
        let encoded = codec::encode_session(record);
        self.with_conn("put_session", client_id, |conn| {
            conn.exec_drop(
                &statement,
                (client_id.as_bytes(), record.expires_at, encoded.as_slice()),
            )
        })
    }

    fn get_session(&self, client_id: &str) -> StoreResult<Option<SessionRecord>> {
        check_length("get_session", client_id, MAX_NAME_BYTES)?;
        let statement = format!(
            "SELECT record FROM {} WHERE client_id = ?",
            self.tables.sessions
        );
        let record: Option<Vec<u8>> = self.with_conn("get_session", client_id, |conn| {
            conn.exec_first(&statement, (client_id.as_bytes(),))
        })?;
        record
            .map(|bytes| {
                codec::decode_session(&bytes)
                    .map_err(|error| decode_failed("get_session", client_id, error))
            })
            .transpose()
    }

    fn delete_session(&self, client_id: &str) -> StoreResult<()> {
        check_length("delete_session", client_id, MAX_NAME_BYTES)?;
        let statement = format!("DELETE FROM {} WHERE client_id = ?", self.tables.sessions);
        self.with_conn("delete_session", client_id, |conn| {
            conn.exec_drop(&statement, (client_id.as_bytes(),))
        })
    }

    fn list_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        let statement = format!("SELECT client_id, record FROM {}", self.tables.sessions);
        let rows: Vec<(Vec<u8>, Vec<u8>)> =
            self.with_conn("list_sessions", "", |conn| conn.query(&statement))?;
        rows.into_iter()
            .map(|(client_id, record)| {
                codec::decode_session(&record).map_err(|error| {
                    decode_failed("list_sessions", &String::from_utf8_lossy(&client_id), error)
                })
            })
            .collect()
    }

    fn put_retained(&self, message: &Message) -> StoreResult<()> {
        let topic = &message.topic;
        check_length("put_retained", topic, MAX_TOPIC_BYTES)?;
        let statement = format!(
            "REPLACE INTO {} (topic, expires_at, message) VALUES (?, ?, ?)",
            self.tables.retained
        );
        let encoded = codec::encode_message_with_offset(message);
        self.with_conn("put_retained", topic, |conn| {
            conn.exec_drop(
                &statement,
                (topic.as_bytes(), message.expires_at, encoded.as_slice()),
            )
        })
    }

    fn delete_retained(&self, topic: &str) -> StoreResult<()> {
        check_length("delete_retained", topic, MAX_TOPIC_BYTES)?;
        let statement = format!("DELETE FROM {} WHERE topic = ?", self.tables.retained);
        self.with_conn("delete_retained", topic, |conn| {
            conn.exec_drop(&statement, (topic.as_bytes(),))
        })
    }

    fn list_retained(&self) -> StoreResult<Vec<Message>> {
        let statement = format!("SELECT topic, message FROM {}", self.tables.retained);
        let rows: Vec<(Vec<u8>, Vec<u8>)> =
            self.with_conn("list_retained", "", |conn| conn.query(&statement))?;
        rows.into_iter()
            .map(|(topic, message)| {
                codec::decode_message_with_offset(&message).map_err(|error| {
                    decode_failed("list_retained", &String::from_utf8_lossy(&topic), error)
                })
            })
            .collect()
    }

    fn purge_expired(&self, now_ms: u64) -> StoreResult<PurgeReport> {
        let delete_sessions = format!(
            "DELETE FROM {} WHERE expires_at IS NOT NULL AND expires_at <= ?",
            self.tables.sessions
        );
        let delete_retained = format!(
            "DELETE FROM {} WHERE expires_at IS NOT NULL AND expires_at <= ?",
            self.tables.retained
        );
        self.with_conn("purge_expired", "", |conn| {
            conn.exec_drop(&delete_sessions, (now_ms,))?;
            let sessions = conn.affected_rows();
            conn.exec_drop(&delete_retained, (now_ms,))?;
            let retained = conn.affected_rows();
            Ok(PurgeReport {
                sessions: usize::try_from(sessions).unwrap_or(usize::MAX),
                retained: usize::try_from(retained).unwrap_or(usize::MAX),
            })
        })
    }
}

/// How far a request got before it failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RequestState {
    /// Not sent, or sent inside a transaction that was not committed.
    NotSent,
    /// Sent, and repeating it gives the same result.
    Idempotent,
    /// A commit was sent and may have been applied.
    MaybeApplied,
}

fn classify(
    operation: &'static str,
    key: &str,
    error: mysql::Error,
    state: RequestState,
) -> StoreError {
    let maybe_applied = state == RequestState::MaybeApplied;
    let connection_failed = match &error {
        mysql::Error::MySqlError(server_error) => {
            CONNECTION_ENDED_SERVER_ERRORS.contains(&server_error.code)
        }
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => true,
        // The other driver errors come from the request or the settings and
        // fail the same way when repeated.
        mysql::Error::DriverError(driver_error) => matches!(
            driver_error,
            DriverError::ConnectTimeout
                | DriverError::CouldNotConnect(_)
                | DriverError::PacketOutOfSync
                | DriverError::UnexpectedPacket
                | DriverError::Timeout
        ),
        _ => false,
    };
    if connection_failed {
        return connection_error(
            BACKEND,
            operation,
            key,
            maybe_applied,
            SourceError::new(error),
        );
    }
    let retryable = match &error {
        mysql::Error::MySqlError(server_error) => {
            RETRYABLE_SERVER_ERRORS.contains(&server_error.code)
        }
        _ => false,
    };
    StoreError::Backend {
        backend: BACKEND,
        operation,
        key: key.to_owned(),
        retryable,
        source: SourceError::new(error),
    }
}

/// Encodes offset ranges as pairs of big-endian u64 (start, end).
fn encode_ranges(ranges: &[Range<u64>]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ranges.len() * 16);
    for range in ranges {
        bytes.extend_from_slice(&range.start.to_be_bytes());
        bytes.extend_from_slice(&range.end.to_be_bytes());
    }
    bytes
}

/// Decodes [`encode_ranges`] output; `None` when the length is not a
/// multiple of 16.
fn decode_ranges(bytes: &[u8]) -> Option<Vec<Range<u64>>> {
    let pairs = bytes.chunks_exact(16);
    if !pairs.remainder().is_empty() {
        return None;
    }
    let ranges = pairs
        .map(|pair| {
            let (start, end) = pair.split_at(8);
            let start = u64::from_be_bytes(start.try_into().expect("8 bytes"));
            let end = u64::from_be_bytes(end.try_into().expect("8 bytes"));
            start..end
        })
        .collect();
    Some(ranges)
}

fn corrupt_ranges(key: &str, length: usize) -> StoreError {
    StoreError::Corrupt {
        backend: BACKEND,
        operation: "append",
        key: key.to_owned(),
        detail: format!(
            "stored offsets of the last append are {length} bytes, not a multiple of 16"
        ),
    }
}

fn check_length(operation: &'static str, key: &str, max_bytes: usize) -> StoreResult<()> {
    if key.len() > max_bytes {
        let shown: String = key.chars().take(64).collect();
        return Err(invalid(
            operation,
            &shown,
            &format!("{} bytes long, the maximum is {max_bytes}", key.len()),
        ));
    }
    Ok(())
}

fn invalid(operation: &'static str, key: &str, detail: &str) -> StoreError {
    StoreError::InvalidInput {
        backend: BACKEND,
        operation,
        key: key.to_owned(),
        detail: detail.to_owned(),
    }
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

    /// Opens a store under a fresh table prefix on the server that
    /// `tests/services.sh` starts.
    fn open_test_store() -> MysqlStore {
        let url = std::env::var("COREMQ_TEST_MYSQL_URL").unwrap_or_else(|_| {
            panic!(
                "COREMQ_TEST_MYSQL_URL is not set; start the test servers with \
                 `eval \"$(tests/services.sh)\"` from the repository root"
            )
        });
        let mut config = MysqlConfig::new(url);
        config.table_prefix = format!("t{}_", &new_appender_id()[..16]);
        MysqlStore::open(&config).expect("open mysql")
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
        let ranges = store.append_once(&batches, 1).expect("first attempt");
        let repeated = store.append_once(&batches, 1).expect("repeated attempt");
        let stored = store.read_by_offset("q", 0, 10).expect("read");
        let next = store.append_once(&batches, 2).expect("next append");
        let stale = store.append_once(&batches, 1);
        store.drop_tables().expect("drop test tables");

        assert_eq!(ranges, vec![1..3]);
        assert_eq!(repeated, ranges);
        assert_eq!(stored.len(), 2);
        assert_eq!(next, vec![3..5]);
        assert!(
            matches!(stale, Err(StoreError::Corrupt { .. })),
            "{stale:?}"
        );
    }

    #[test]
    fn full_group_of_batches_recorded() {
        let store = open_test_store();
        let single = [message("a")];
        let queues: Vec<String> = (0..crate::DEFAULT_MAX_GROUP_MESSAGES)
            .map(|index| format!("q{}", index % 4))
            .collect();
        let batches: Vec<QueueBatch<'_>> = queues
            .iter()
            .map(|queue| QueueBatch {
                queue,
                messages: &single,
            })
            .collect();
        let ranges = store.append_once(&batches, 1);
        let repeated = store.append_once(&batches, 1);
        store.drop_tables().expect("drop test tables");

        let ranges = ranges.expect("append one group of single-message batches");
        assert_eq!(ranges.len(), crate::DEFAULT_MAX_GROUP_MESSAGES);
        assert_eq!(repeated.expect("repeated attempt"), ranges);
    }

    #[test]
    fn ranges_round_trip() {
        let ranges = vec![1..3, 7..7, u64::MAX - 1..u64::MAX];
        assert_eq!(decode_ranges(&encode_ranges(&ranges)), Some(ranges));
        assert_eq!(decode_ranges(&[0; 15]), None);
    }
}
