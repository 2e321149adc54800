//! Conformance tests that every `Store` backend must pass.
//!
//! Each case is a function over a [`Fixture`], which opens stores on one
//! isolated namespace (a temporary directory, table prefix or key prefix).
//! `conformance_suite!` instantiates every case for a backend. MySQL and
//! Redis need running servers: `eval "$(tests/services.sh)"` starts them and
//! exports `COREMQ_TEST_MYSQL_URL` and `COREMQ_TEST_REDIS_URL`; the tests
//! fail when those variables are unset.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coremq_wal::{
    HandleConfig, Message, PurgeReport, QoS, QueueBatch, SessionRecord, Store, StoreHandle,
    StoreResult,
};
use futures_lite::future::block_on;

/// Opens stores on one namespace that no other test uses.
trait Fixture {
    /// Opens the store; a second call after the first store was dropped
    /// reopens the same data.
    fn open(&self) -> Arc<dyn Store>;
}

fn message(topic: &str, payload: &str) -> Message {
    Message {
        offset: 0,
        topic: topic.to_owned(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Bytes::from_static(b"\x01\x01"),
        publisher: "publisher-1".to_owned(),
        expires_at: None,
    }
}

fn messages(topic: &str, count: usize) -> Vec<Message> {
    (0..count)
        .map(|index| message(topic, &format!("payload-{index}")))
        .collect()
}

fn offsets(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|message| message.offset).collect()
}

fn session(client_id: &str, expires_at: Option<u64>) -> SessionRecord {
    SessionRecord {
        client_id: client_id.to_owned(),
        expires_at,
        subscriptions: Bytes::from(format!("subscriptions of {client_id}")),
        will: Some(Bytes::from_static(b"will")),
        acked_offsets: vec![("queue-a".to_owned(), 3), ("queue-b".to_owned(), 9)],
        inflight: Bytes::from_static(b"\x00\x01inflight"),
    }
}

/// Wraps a store to slow down appends and count reads, so tests can force
/// group commits and detect polling.
struct InstrumentedStore {
    inner: Arc<dyn Store>,
    append_delay: Duration,
    reads: AtomicUsize,
}

impl InstrumentedStore {
    fn new(inner: Arc<dyn Store>, append_delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner,
            append_delay,
            reads: AtomicUsize::new(0),
        })
    }
}

impl Store for InstrumentedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn append_many(&self, batches: &[QueueBatch<'_>]) -> StoreResult<Vec<Range<u64>>> {
        thread::sleep(self.append_delay);
        self.inner.append_many(batches)
    }
    fn read_by_offset(&self, queue: &str, offset: u64, limit: usize) -> StoreResult<Vec<Message>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_by_offset(queue, offset, limit)
    }
    fn delete_by_offset(&self, queue: &str, offset: u64) -> StoreResult<()> {
        self.inner.delete_by_offset(queue, offset)
    }
    fn first_offset(&self, queue: &str) -> StoreResult<Option<u64>> {
        self.inner.first_offset(queue)
    }
    fn last_offset(&self, queue: &str) -> StoreResult<Option<u64>> {
        self.inner.last_offset(queue)
    }
    fn put_session(&self, record: &SessionRecord) -> StoreResult<()> {
        self.inner.put_session(record)
    }
    fn get_session(&self, client_id: &str) -> StoreResult<Option<SessionRecord>> {
        self.inner.get_session(client_id)
    }
    fn delete_session(&self, client_id: &str) -> StoreResult<()> {
        self.inner.delete_session(client_id)
    }
    fn list_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        self.inner.list_sessions()
    }
    fn put_retained(&self, message: &Message) -> StoreResult<()> {
        self.inner.put_retained(message)
    }
    fn delete_retained(&self, topic: &str) -> StoreResult<()> {
        self.inner.delete_retained(topic)
    }
    fn list_retained(&self) -> StoreResult<Vec<Message>> {
        self.inner.list_retained()
    }
    fn purge_expired(&self, now_ms: u64) -> StoreResult<PurgeReport> {
        self.inner.purge_expired(now_ms)
    }
}

mod cases {
    use super::*;

    pub fn offsets_start_at_one(fixture: &dyn Fixture) {
        let store = fixture.open();
        assert_eq!(store.last_offset("q").unwrap(), None);
        assert_eq!(store.first_offset("q").unwrap(), None);

        let mut expired = message("t/2", "second");
        expired.expires_at = Some(1_234);
        expired.qos = QoS::ExactlyOnce;
        expired.retain = true;
        let batch = vec![
            message("t/1", "first"),
            expired.clone(),
            message("t/3", "third"),
        ];
        assert_eq!(store.append("q", &batch).unwrap(), 1..4);
        assert_eq!(store.append("q", &messages("t/4", 2)).unwrap(), 4..6);
        assert_eq!(store.append("q", &[]).unwrap(), 6..6);
        assert_eq!(store.first_offset("q").unwrap(), Some(1));
        assert_eq!(store.last_offset("q").unwrap(), Some(5));

        let stored = store.read_by_offset("q", 1, 100).unwrap();
        assert_eq!(offsets(&stored), vec![1, 2, 3, 4, 5]);
        let payloads: Vec<&[u8]> = stored.iter().map(|m| m.payload.as_ref()).collect();
        assert_eq!(
            payloads,
            vec![
                &b"first"[..],
                b"second",
                b"third",
                b"payload-0",
                b"payload-1"
            ]
        );
        assert_eq!(
            stored[1],
            Message {
                offset: 2,
                ..expired
            }
        );
        assert_eq!(stored[0].properties, Bytes::from_static(b"\x01\x01"));
        assert_eq!(stored[0].publisher, "publisher-1");
        assert_eq!(stored[0].qos, QoS::AtLeastOnce);
    }

    pub fn append_many_across_queues(fixture: &dyn Fixture) {
        let store = fixture.open();
        let first = messages("a", 2);
        let second = messages("b", 1);
        let third = messages("a", 1);
        let ranges = store
            .append_many(&[
                QueueBatch {
                    queue: "a",
                    messages: &first,
                },
                QueueBatch {
                    queue: "b",
                    messages: &second,
                },
                QueueBatch {
                    queue: "a",
                    messages: &third,
                },
            ])
            .unwrap();
        assert_eq!(ranges, vec![1..3, 1..2, 3..4]);
        assert_eq!(
            offsets(&store.read_by_offset("a", 0, 10).unwrap()),
            vec![1, 2, 3]
        );
        assert_eq!(offsets(&store.read_by_offset("b", 0, 10).unwrap()), vec![1]);
        assert_eq!(store.last_offset("a").unwrap(), Some(3));
        assert_eq!(store.last_offset("b").unwrap(), Some(1));
    }

    pub fn read_by_offset_limits(fixture: &dyn Fixture) {
        let store = fixture.open();
        store.append("q", &messages("t", 10)).unwrap();
        assert_eq!(
            offsets(&store.read_by_offset("q", 1, 3).unwrap()),
            vec![1, 2, 3]
        );
        assert_eq!(
            offsets(&store.read_by_offset("q", 4, 100).unwrap()),
            (4..=10).collect::<Vec<_>>()
        );
        assert_eq!(
            offsets(&store.read_by_offset("q", 0, 2).unwrap()),
            vec![1, 2]
        );
        assert!(store.read_by_offset("q", 11, 5).unwrap().is_empty());
        assert!(store.read_by_offset("q", 5, 0).unwrap().is_empty());
        assert!(store.read_by_offset("missing", 0, 5).unwrap().is_empty());
    }

    pub fn delete_by_offset_truncates(fixture: &dyn Fixture) {
        let store = fixture.open();
        store.append("q", &messages("t", 10)).unwrap();
        store.append("other", &messages("t", 3)).unwrap();

        store.delete_by_offset("q", 4).unwrap();
        assert_eq!(store.first_offset("q").unwrap(), Some(4));
        assert_eq!(store.last_offset("q").unwrap(), Some(10));
        assert_eq!(
            offsets(&store.read_by_offset("q", 1, 100).unwrap()),
            (4..=10).collect::<Vec<_>>()
        );

        store.delete_by_offset("q", 4).unwrap();
        assert_eq!(store.first_offset("q").unwrap(), Some(4));

        store.delete_by_offset("q", 100).unwrap();
        assert_eq!(store.first_offset("q").unwrap(), None);
        assert_eq!(store.last_offset("q").unwrap(), Some(10));
        assert!(store.read_by_offset("q", 0, 100).unwrap().is_empty());
        assert_eq!(store.append("q", &messages("t", 1)).unwrap(), 11..12);

        assert_eq!(store.first_offset("other").unwrap(), Some(1));
        assert_eq!(store.read_by_offset("other", 0, 100).unwrap().len(), 3);
    }

    pub fn queue_names_are_distinct(fixture: &dyn Fixture) {
        let store = fixture.open();
        // Names that a case-insensitive or prefix-based key would merge.
        for name in ["Q", "q", "q1", "q/1", "q:1"] {
            store.append(name, &messages(name, 2)).unwrap();
        }
        for name in ["Q", "q", "q1", "q/1", "q:1"] {
            let stored = store.read_by_offset(name, 0, 100).unwrap();
            assert_eq!(offsets(&stored), vec![1, 2], "queue {name}");
            assert!(stored.iter().all(|m| m.topic == name), "queue {name}");
        }
    }

    pub fn sessions_round_trip(fixture: &dyn Fixture) {
        let store = fixture.open();
        assert_eq!(store.get_session("c1").unwrap(), None);

        let first = session("c1", None);
        let second = SessionRecord {
            will: None,
            ..session("c2", Some(99))
        };
        store.put_session(&first).unwrap();
        store.put_session(&second).unwrap();
        assert_eq!(store.get_session("c1").unwrap(), Some(first.clone()));
        assert_eq!(store.get_session("c2").unwrap(), Some(second.clone()));

        let updated = SessionRecord {
            acked_offsets: vec![("queue-a".to_owned(), 42)],
            ..first.clone()
        };
        store.put_session(&updated).unwrap();
        assert_eq!(store.get_session("c1").unwrap(), Some(updated.clone()));

        let mut listed = store.list_sessions().unwrap();
        listed.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        assert_eq!(listed, vec![updated, second]);

        store.delete_session("c1").unwrap();
        store.delete_session("never-stored").unwrap();
        assert_eq!(store.get_session("c1").unwrap(), None);
        assert_eq!(store.list_sessions().unwrap().len(), 1);
    }

    pub fn retained_round_trip(fixture: &dyn Fixture) {
        let store = fixture.open();
        assert!(store.list_retained().unwrap().is_empty());

        let mut first = message("home/kitchen", "on");
        first.retain = true;
        let second = message("home/garage", "closed");
        store.put_retained(&first).unwrap();
        store.put_retained(&second).unwrap();

        let replacement = message("home/kitchen", "off");
        store.put_retained(&replacement).unwrap();

        let mut listed = store.list_retained().unwrap();
        listed.sort_by(|a, b| a.topic.cmp(&b.topic));
        assert_eq!(listed, vec![second.clone(), replacement]);

        store.delete_retained("home/kitchen").unwrap();
        store.delete_retained("never/stored").unwrap();
        assert_eq!(store.list_retained().unwrap(), vec![second]);
    }

    pub fn purge_removes_only_expired(fixture: &dyn Fixture) {
        let store = fixture.open();
        let now = 1_000_000;
        store
            .put_session(&session("expired", Some(now - 1)))
            .unwrap();
        store
            .put_session(&session("expires-now", Some(now)))
            .unwrap();
        store.put_session(&session("later", Some(now + 1))).unwrap();
        store.put_session(&session("never", None)).unwrap();
        // Replacing a record with one that does not expire must cancel the
        // earlier expiry.
        store
            .put_session(&session("renewed", Some(now - 5)))
            .unwrap();
        store.put_session(&session("renewed", None)).unwrap();

        let mut old = message("retained/old", "x");
        old.expires_at = Some(now - 10);
        let mut fresh = message("retained/fresh", "y");
        fresh.expires_at = Some(now + 10);
        let forever = message("retained/forever", "z");
        for retained in [&old, &fresh, &forever] {
            store.put_retained(retained).unwrap();
        }

        let report = store.purge_expired(now).unwrap();
        assert_eq!(
            report,
            PurgeReport {
                sessions: 2,
                retained: 1
            }
        );

        let mut remaining: Vec<String> = store
            .list_sessions()
            .unwrap()
            .into_iter()
            .map(|record| record.client_id)
            .collect();
        remaining.sort();
        assert_eq!(remaining, vec!["later", "never", "renewed"]);
        let mut topics: Vec<String> = store
            .list_retained()
            .unwrap()
            .into_iter()
            .map(|message| message.topic)
            .collect();
        topics.sort();
        assert_eq!(topics, vec!["retained/forever", "retained/fresh"]);

        assert_eq!(store.purge_expired(now).unwrap(), PurgeReport::default());
    }

    pub fn concurrent_readers_see_prefix(fixture: &dyn Fixture) {
        const TOTAL: usize = 200;
        const BATCH: usize = 10;
        let store = fixture.open();

        let readers: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut seen = Vec::new();
                    while seen.len() < TOTAL {
                        assert!(Instant::now() < deadline, "reader saw only {}", seen.len());
                        let next = seen.len() as u64 + 1;
                        let batch = store.read_by_offset("q", next, 7).unwrap();
                        if batch.is_empty() {
                            thread::sleep(Duration::from_millis(1));
                        }
                        seen.extend(batch);
                    }
                    seen
                })
            })
            .collect();

        for batch_index in 0..TOTAL / BATCH {
            let batch: Vec<Message> = (0..BATCH)
                .map(|index| message("t", &format!("{}", batch_index * BATCH + index + 1)))
                .collect();
            store.append("q", &batch).unwrap();
        }

        for reader in readers {
            let seen = reader.join().expect("reader thread panicked");
            assert_eq!(offsets(&seen), (1..=TOTAL as u64).collect::<Vec<_>>());
            for message in &seen {
                assert_eq!(message.payload, Bytes::from(message.offset.to_string()));
            }
        }
    }

    pub fn group_commit_concurrent_appends(fixture: &dyn Fixture) {
        const THREADS: usize = 8;
        const APPENDS_PER_THREAD: usize = 25;
        // Each backend write takes at least this long, so appends queue up
        // behind it and the writer must group them.
        let slow = InstrumentedStore::new(fixture.open(), Duration::from_millis(20));
        let handle = StoreHandle::spawn(slow, HandleConfig::default()).unwrap();

        let workers: Vec<_> = (0..THREADS)
            .map(|thread_index| {
                let handle = handle.clone();
                thread::spawn(move || {
                    let mut assigned = Vec::new();
                    for index in 0..APPENDS_PER_THREAD {
                        let payload = format!("{thread_index}-{index}");
                        let range = block_on(handle.append("q", vec![message("t", &payload)]))
                            .expect("append failed");
                        assert_eq!(range.end - range.start, 1);
                        assigned.push((range.start, payload));
                    }
                    assigned
                })
            })
            .collect();

        let mut all = Vec::new();
        for worker in workers {
            let assigned = worker.join().expect("append thread panicked");
            let thread_offsets: Vec<u64> = assigned.iter().map(|(offset, _)| *offset).collect();
            assert!(
                thread_offsets.windows(2).all(|pair| pair[0] < pair[1]),
                "one thread's offsets are not increasing: {thread_offsets:?}"
            );
            all.extend(assigned);
        }

        let total = (THREADS * APPENDS_PER_THREAD) as u64;
        let unique: HashSet<u64> = all.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(unique.len() as u64, total, "offsets were assigned twice");
        assert_eq!(unique, (1..=total).collect::<HashSet<_>>());

        let stored = block_on(handle.read_by_offset("q", 1, 1000)).unwrap();
        assert_eq!(stored.len() as u64, total);
        for (offset, payload) in &all {
            let message = &stored[(*offset - 1) as usize];
            assert_eq!(
                message.payload,
                Bytes::from(payload.clone()),
                "offset {offset}"
            );
        }

        let stats = handle.stats();
        assert_eq!(stats.appends, total);
        assert_eq!(stats.failed_commits, 0);
        assert!(
            stats.commits * 2 <= stats.appends,
            "appends were not grouped: {} commits for {} appends",
            stats.commits,
            stats.appends
        );
    }

    pub fn reader_wakes_on_append(fixture: &dyn Fixture) {
        let counted = InstrumentedStore::new(fixture.open(), Duration::ZERO);
        let handle = StoreHandle::spawn(counted.clone(), HandleConfig::default()).unwrap();
        let mut reader = handle.reader("q", 0, 10);

        let (sender, receiver) = mpsc::channel();
        let waiting = thread::spawn(move || {
            let batch = block_on(reader.next_batch()).expect("next_batch failed");
            sender.send(batch).expect("test thread is waiting");
            reader
        });

        thread::sleep(Duration::from_millis(300));
        assert!(
            receiver.try_recv().is_err(),
            "reader returned before any append"
        );
        let idle_reads = counted.reads.load(Ordering::SeqCst);
        assert!(
            idle_reads <= 1,
            "reader polled the store {idle_reads} times while idle"
        );

        block_on(handle.append("other", vec![message("t", "elsewhere")])).unwrap();
        block_on(handle.append("q", vec![message("t", "hello")])).unwrap();
        let batch = receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("reader did not wake after the append");
        assert_eq!(offsets(&batch), vec![1]);
        assert_eq!(batch[0].payload, Bytes::from_static(b"hello"));

        let reader = waiting.join().expect("reader thread panicked");
        assert_eq!(reader.next_offset(), 2);
    }

    pub fn reader_resumes_after_acked(fixture: &dyn Fixture) {
        let handle = StoreHandle::spawn(fixture.open(), HandleConfig::default()).unwrap();
        block_on(handle.append("q", messages("t", 5))).unwrap();

        let mut reader = handle.reader("q", 3, 10);
        let batch = block_on(reader.next_batch()).unwrap();
        assert_eq!(offsets(&batch), vec![4, 5]);

        let mut small = handle.reader("q", 0, 2);
        assert_eq!(offsets(&block_on(small.next_batch()).unwrap()), vec![1, 2]);
        assert_eq!(offsets(&block_on(small.next_batch()).unwrap()), vec![3, 4]);
        assert_eq!(offsets(&block_on(small.next_batch()).unwrap()), vec![5]);
    }

    pub fn reader_skips_expired(fixture: &dyn Fixture) {
        let handle = StoreHandle::spawn(fixture.open(), HandleConfig::default()).unwrap();
        let mut expired = message("t", "expired");
        expired.expires_at = Some(1);
        let mut later = message("t", "later");
        later.expires_at = Some(u64::MAX);
        block_on(handle.append("q", vec![expired.clone(), expired, later])).unwrap();

        let mut reader = handle.reader("q", 0, 2);
        let batch = block_on(reader.next_batch()).unwrap();
        assert_eq!(offsets(&batch), vec![3]);
        assert_eq!(batch[0].payload, Bytes::from_static(b"later"));
    }

    pub fn handle_sessions_and_retained(fixture: &dyn Fixture) {
        let handle = StoreHandle::spawn(fixture.open(), HandleConfig::default()).unwrap();
        let record = session("c1", Some(10));
        block_on(handle.put_session(record.clone())).unwrap();
        assert_eq!(block_on(handle.get_session("c1")).unwrap(), Some(record));
        block_on(handle.put_retained(message("r", "x"))).unwrap();
        assert_eq!(block_on(handle.list_retained()).unwrap().len(), 1);

        let report = block_on(handle.purge_expired(10)).unwrap();
        assert_eq!(report.sessions, 1);
        assert!(block_on(handle.list_sessions()).unwrap().is_empty());
        block_on(handle.delete_retained("r")).unwrap();
        assert!(block_on(handle.list_retained()).unwrap().is_empty());
    }

    pub fn reopen_keeps_data(fixture: &dyn Fixture) {
        {
            let handle = StoreHandle::spawn(fixture.open(), HandleConfig::default()).unwrap();
            block_on(handle.append("q", messages("t", 3))).unwrap();
            block_on(handle.delete_by_offset("q", 2)).unwrap();
            block_on(handle.put_session(session("c1", None))).unwrap();
            block_on(handle.put_retained(message("r", "kept"))).unwrap();
            // Dropping the last handle joins its threads and drops the store.
        }

        let store = fixture.open();
        assert_eq!(store.first_offset("q").unwrap(), Some(2));
        assert_eq!(store.last_offset("q").unwrap(), Some(3));
        assert_eq!(
            offsets(&store.read_by_offset("q", 0, 10).unwrap()),
            vec![2, 3]
        );
        assert_eq!(store.get_session("c1").unwrap(), Some(session("c1", None)));
        assert_eq!(store.list_retained().unwrap(), vec![message("r", "kept")]);
        assert_eq!(store.append("q", &messages("t", 1)).unwrap(), 4..5);
    }
}

/// Defines one `#[test]` per listed case. `$fixture` is an expression that
/// returns a fresh `impl Fixture`, evaluated once per test.
macro_rules! conformance_suite {
    ($fixture:expr, $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let fixture = $fixture;
                super::cases::$case(&fixture);
            }
        )*
    };
}

macro_rules! common_cases {
    ($fixture:expr) => {
        conformance_suite!(
            $fixture,
            offsets_start_at_one,
            append_many_across_queues,
            read_by_offset_limits,
            delete_by_offset_truncates,
            queue_names_are_distinct,
            sessions_round_trip,
            retained_round_trip,
            purge_removes_only_expired,
            concurrent_readers_see_prefix,
            group_commit_concurrent_appends,
            reader_wakes_on_append,
            reader_resumes_after_acked,
            reader_skips_expired,
            handle_sessions_and_retained,
        );
    };
}

/// Returns a namespace name no other test in this run or an earlier run uses.
#[allow(dead_code)]
fn unique_namespace() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "t{}_{}_{}_",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Reads a server URL from the environment, failing with the fix when unset.
#[allow(dead_code)]
fn required_url(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!(
            "{variable} is not set; start the test servers with \
             `eval \"$(tests/services.sh)\"` from the repository root"
        )
    })
}

mod memory {
    use super::*;
    use coremq_wal::MemoryStore;

    /// The memory store cannot be reopened, so every `open` returns the same
    /// store and `reopen_keeps_data` is not run for it.
    struct MemoryFixture(Arc<MemoryStore>);

    impl Fixture for MemoryFixture {
        fn open(&self) -> Arc<dyn Store> {
            self.0.clone()
        }
    }

    common_cases!(MemoryFixture(Arc::new(MemoryStore::new())));
}

#[cfg(feature = "rocksdb")]
mod rocksdb {
    use super::*;
    use coremq_wal::{RocksConfig, RocksStore};

    struct RocksFixture(tempfile::TempDir);

    impl Fixture for RocksFixture {
        fn open(&self) -> Arc<dyn Store> {
            Arc::new(RocksStore::open(&RocksConfig::new(self.0.path())).expect("open rocksdb"))
        }
    }

    fn fixture() -> RocksFixture {
        RocksFixture(tempfile::tempdir().expect("create temporary directory"))
    }

    common_cases!(fixture());
    conformance_suite!(fixture(), reopen_keeps_data);
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use coremq_wal::{MysqlConfig, MysqlStore};

    struct MysqlFixture(MysqlConfig);

    impl Fixture for MysqlFixture {
        fn open(&self) -> Arc<dyn Store> {
            Arc::new(MysqlStore::open(&self.0).expect("open mysql"))
        }
    }

    impl Drop for MysqlFixture {
        fn drop(&mut self) {
            if let Ok(store) = MysqlStore::open(&self.0) {
                let _ = store.drop_tables();
            }
        }
    }

    fn fixture() -> MysqlFixture {
        let mut config = MysqlConfig::new(required_url("COREMQ_TEST_MYSQL_URL"));
        config.table_prefix = unique_namespace();
        MysqlFixture(config)
    }

    common_cases!(fixture());
    conformance_suite!(fixture(), reopen_keeps_data);
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use coremq_wal::{RedisConfig, RedisStore};

    struct RedisFixture(RedisConfig);

    impl Fixture for RedisFixture {
        fn open(&self) -> Arc<dyn Store> {
            Arc::new(RedisStore::open(&self.0).expect("open redis"))
        }
    }

    impl Drop for RedisFixture {
        fn drop(&mut self) {
            if let Ok(store) = RedisStore::open(&self.0) {
                let _ = store.delete_keys();
            }
        }
    }

    fn fixture() -> RedisFixture {
        let mut config = RedisConfig::new(required_url("COREMQ_TEST_REDIS_URL"));
        config.key_prefix = format!("coremq-test:{}", unique_namespace());
        RedisFixture(config)
    }

    common_cases!(fixture());
    conformance_suite!(fixture(), reopen_keeps_data);
}
