//! `StoreHandle`: async access to a blocking [`Store`] from any executor.
//!
//! The store runs on threads this module starts, never on the caller's
//! executor. Requests travel over crossbeam channels, and results come back
//! through `futures-channel` oneshots, whose wakers may be woken from any
//! thread (glommio queues such foreign wake-ups to the owning executor).
//! Sending a request never blocks the caller because the channels are
//! unbounded, so a caller that outpaces the store grows the queue without
//! limit.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use futures_channel::oneshot;

use crate::{Message, PurgeReport, QueueBatch, SessionRecord, Store, StoreError, StoreResult};

/// Default number of threads that run reads and record updates.
pub const DEFAULT_READ_THREADS: usize = 2;

/// Default cap on messages written in one group commit. It bounds the size of
/// one backend write (one RocksDB WriteBatch, SQL transaction or Lua call)
/// while still taking thousands of messages per fsync.
pub const DEFAULT_MAX_GROUP_MESSAGES: usize = 4096;

/// Settings for [`StoreHandle::spawn`].
#[derive(Debug, Clone)]
pub struct HandleConfig {
    /// Threads that run reads, truncation and session/retained updates.
    /// Default [`DEFAULT_READ_THREADS`]; 0 is treated as 1.
    pub read_threads: usize,
    /// Cap on messages per group commit. Default
    /// [`DEFAULT_MAX_GROUP_MESSAGES`]; one request larger than the cap is
    /// still written whole, as its own group.
    pub max_group_messages: usize,
}

impl Default for HandleConfig {
    fn default() -> Self {
        Self {
            read_threads: DEFAULT_READ_THREADS,
            max_group_messages: DEFAULT_MAX_GROUP_MESSAGES,
        }
    }
}

/// Counters of the group-commit writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandleStats {
    /// Append requests completed, successfully or not.
    pub appends: u64,
    /// Backend writes (group commits) made for them.
    pub commits: u64,
    /// Group commits that failed.
    pub failed_commits: u64,
}

struct AppendRequest {
    queue: String,
    messages: Vec<Message>,
    reply: oneshot::Sender<StoreResult<Range<u64>>>,
}

type Operation = Box<dyn FnOnce(&dyn Store) + Send>;

#[derive(Default)]
struct Counters {
    // Ordering: Relaxed everywhere, because the counters are statistics and
    // order nothing else.
    appends: AtomicU64,
    commits: AtomicU64,
    failed_commits: AtomicU64,
}

struct Inner {
    backend: &'static str,
    append_tx: Option<Sender<AppendRequest>>,
    operation_tx: Option<Sender<Operation>>,
    notifier: Arc<Notifier>,
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channels ends the worker loops once they finish the
        // requests already queued. Joining them means the store itself is
        // dropped (files closed, locks released) with the last handle.
        self.append_tx.take();
        self.operation_tx.take();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!(backend = self.backend, "store worker thread panicked");
            }
        }
    }
}

/// Async, cloneable access to a [`Store`] running on its own threads.
///
/// One writer thread group-commits appends: it takes every queued append
/// request (up to [`HandleConfig::max_group_messages`]), writes them with one
/// [`Store::append_many`] call, so one fsync under [`Durability::Fsync`](crate::Durability::Fsync),
/// and then completes every waiter. A pool of reader threads runs all other
/// operations.
///
/// Dropping the last clone waits for queued requests to finish.
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<Inner>,
}

impl StoreHandle {
    /// Starts the writer and reader threads for `store`.
    ///
    /// # Errors
    ///
    /// Returns the error from the operating system when a thread cannot be
    /// started.
    pub fn spawn(store: Arc<dyn Store>, config: HandleConfig) -> std::io::Result<Self> {
        let backend = store.backend();
        let notifier = Arc::new(Notifier::default());
        let counters = Arc::new(Counters::default());
        let (append_tx, append_rx) = crossbeam_channel::unbounded();
        let (operation_tx, operation_rx) = crossbeam_channel::unbounded::<Operation>();

        let mut threads = Vec::new();
        let writer = GroupCommitWriter {
            store: Arc::clone(&store),
            requests: append_rx,
            notifier: Arc::clone(&notifier),
            counters: Arc::clone(&counters),
            max_group_messages: config.max_group_messages.max(1),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("coremq-wal-{backend}-writer"))
                .spawn(move || writer.run())?,
        );
        for index in 0..config.read_threads.max(1) {
            let store = Arc::clone(&store);
            let operations = operation_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("coremq-wal-{backend}-reader-{index}"))
                    .spawn(move || {
                        for operation in operations {
                            operation(store.as_ref());
                        }
                    })?,
            );
        }
        tracing::info!(backend, threads = threads.len(), "store handle started");

        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                append_tx: Some(append_tx),
                operation_tx: Some(operation_tx),
                notifier,
                counters,
                threads,
            }),
        })
    }

    /// Returns the backend name of the store.
    pub fn backend(&self) -> &'static str {
        self.inner.backend
    }

    /// Returns the group-commit counters.
    pub fn stats(&self) -> HandleStats {
        let counters = &self.inner.counters;
        HandleStats {
            appends: counters.appends.load(Ordering::Relaxed),
            commits: counters.commits.load(Ordering::Relaxed),
            failed_commits: counters.failed_commits.load(Ordering::Relaxed),
        }
    }

    /// Appends `messages` to `queue`, completing once the group commit that
    /// carries them is stored (and flushed, under `Durability::Fsync`).
    ///
    /// Returns the offsets assigned, in order.
    ///
    /// # Errors
    ///
    /// Returns the backend's error for the whole group commit, or
    /// [`StoreError::Closed`] when the writer thread has stopped.
    pub async fn append(
        &self,
        queue: impl Into<String>,
        messages: Vec<Message>,
    ) -> StoreResult<Range<u64>> {
        let (reply, receiver) = oneshot::channel();
        let request = AppendRequest {
            queue: queue.into(),
            messages,
            reply,
        };
        let sender = self.inner.append_tx.as_ref().ok_or(StoreError::Closed)?;
        sender.send(request).map_err(|_| StoreError::Closed)?;
        receiver.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `operation` on a reader thread and returns its result.
    async fn run<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> StoreResult<T> + Send + 'static,
    {
        let (reply, receiver) = oneshot::channel();
        let job: Operation = Box::new(move |store| {
            // The caller may have dropped its future; then the result is discarded.
            let _ = reply.send(operation(store));
        });
        let sender = self.inner.operation_tx.as_ref().ok_or(StoreError::Closed)?;
        sender.send(job).map_err(|_| StoreError::Closed)?;
        receiver.await.map_err(|_| StoreError::Closed)?
    }

    /// Async [`Store::read_by_offset`].
    pub async fn read_by_offset(
        &self,
        queue: impl Into<String>,
        offset: u64,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let queue = queue.into();
        self.run(move |store| store.read_by_offset(&queue, offset, limit))
            .await
    }

    /// Async [`Store::delete_by_offset`].
    pub async fn delete_by_offset(&self, queue: impl Into<String>, offset: u64) -> StoreResult<()> {
        let queue = queue.into();
        self.run(move |store| store.delete_by_offset(&queue, offset))
            .await
    }

    /// Async [`Store::first_offset`].
    pub async fn first_offset(&self, queue: impl Into<String>) -> StoreResult<Option<u64>> {
        let queue = queue.into();
        self.run(move |store| store.first_offset(&queue)).await
    }

    /// Async [`Store::last_offset`].
    pub async fn last_offset(&self, queue: impl Into<String>) -> StoreResult<Option<u64>> {
        let queue = queue.into();
        self.run(move |store| store.last_offset(&queue)).await
    }

    /// Async [`Store::put_session`].
    pub async fn put_session(&self, record: SessionRecord) -> StoreResult<()> {
        self.run(move |store| store.put_session(&record)).await
    }

    /// Async [`Store::get_session`].
    pub async fn get_session(
        &self,
        client_id: impl Into<String>,
    ) -> StoreResult<Option<SessionRecord>> {
        let client_id = client_id.into();
        self.run(move |store| store.get_session(&client_id)).await
    }

    /// Async [`Store::delete_session`].
    pub async fn delete_session(&self, client_id: impl Into<String>) -> StoreResult<()> {
        let client_id = client_id.into();
        self.run(move |store| store.delete_session(&client_id))
            .await
    }

    /// Async [`Store::list_sessions`].
    pub async fn list_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        self.run(|store| store.list_sessions()).await
    }

    /// Async [`Store::put_retained`].
    pub async fn put_retained(&self, message: Message) -> StoreResult<()> {
        self.run(move |store| store.put_retained(&message)).await
    }

    /// Async [`Store::delete_retained`].
    pub async fn delete_retained(&self, topic: impl Into<String>) -> StoreResult<()> {
        let topic = topic.into();
        self.run(move |store| store.delete_retained(&topic)).await
    }

    /// Async [`Store::list_retained`].
    pub async fn list_retained(&self) -> StoreResult<Vec<Message>> {
        self.run(|store| store.list_retained()).await
    }

    /// Async [`Store::purge_expired`].
    pub async fn purge_expired(&self, now_ms: u64) -> StoreResult<PurgeReport> {
        self.run(move |store| store.purge_expired(now_ms)).await
    }

    /// Creates a reader of `queue` that starts after `acked_offset` (the
    /// session's last acknowledged offset, 0 for none) and returns at most
    /// `batch_limit` messages per batch.
    pub fn reader(
        &self,
        queue: impl Into<String>,
        acked_offset: u64,
        batch_limit: usize,
    ) -> Reader {
        Reader {
            handle: self.clone(),
            queue: queue.into(),
            next_offset: acked_offset.saturating_add(1),
            batch_limit: batch_limit.max(1),
        }
    }
}

/// The group-commit loop on the writer thread.
struct GroupCommitWriter {
    store: Arc<dyn Store>,
    requests: Receiver<AppendRequest>,
    notifier: Arc<Notifier>,
    counters: Arc<Counters>,
    max_group_messages: usize,
}

impl GroupCommitWriter {
    fn run(self) {
        // recv() fails only when every sender is gone, i.e. the handle was
        // dropped and the queue is drained.
        while let Ok(first) = self.requests.recv() {
            let group = self.collect_group(first);
            self.commit(group);
        }
        tracing::debug!(backend = self.store.backend(), "store writer stopped");
    }

    /// Takes `first` plus every request already queued, up to the cap.
    fn collect_group(&self, first: AppendRequest) -> Vec<AppendRequest> {
        let mut message_count = first.messages.len();
        let mut group = vec![first];
        while message_count < self.max_group_messages {
            let Ok(request) = self.requests.try_recv() else {
                break;
            };
            message_count += request.messages.len();
            group.push(request);
        }
        group
    }

    fn commit(&self, group: Vec<AppendRequest>) {
        let batches: Vec<QueueBatch<'_>> = group
            .iter()
            .map(|request| QueueBatch {
                queue: &request.queue,
                messages: &request.messages,
            })
            .collect();
        let result = self.store.append_many(&batches);
        drop(batches);

        // Ordering: Relaxed, statistics only.
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters
            .appends
            .fetch_add(group.len() as u64, Ordering::Relaxed);

        match result {
            Ok(ranges) => {
                for (request, range) in group.into_iter().zip(ranges) {
                    if !range.is_empty() {
                        self.notifier.notify_appended(&request.queue, range.end - 1);
                    }
                    // A dropped receiver means the caller stopped waiting;
                    // the messages are stored all the same.
                    let _ = request.reply.send(Ok(range));
                }
            }
            Err(error) => {
                self.counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    backend = self.store.backend(),
                    requests = group.len(),
                    %error,
                    "group commit failed"
                );
                for request in group {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The newest offset committed through this handle for one queue, and the
/// readers waiting for a newer one.
#[derive(Default)]
struct QueueWatch {
    last_offset: u64,
    waiters: HashMap<u64, Waker>,
}

/// Append notifications per queue, shared by the writer and the readers.
#[derive(Default)]
struct Notifier {
    queues: Mutex<HashMap<String, QueueWatch>>,
    // Ordering: Relaxed, because the ids only need to be unique.
    next_waiter_id: AtomicU64,
}

impl Notifier {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, QueueWatch>> {
        // Every update under this lock is a single insert or remove, so a
        // poisoned map is still consistent.
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify_appended(&self, queue: &str, last_offset: u64) {
        let wakers: Vec<Waker> = {
            let mut queues = self.lock();
            let watch = queues.entry(queue.to_owned()).or_default();
            watch.last_offset = watch.last_offset.max(last_offset);
            watch.waiters.drain().map(|(_, waker)| waker).collect()
        };
        // Woken outside the lock, because a waker may run code of the
        // caller's executor.
        for waker in wakers {
            waker.wake();
        }
    }
}

/// Future that completes once an append through the same handle gives
/// `queue` an offset at or above `offset`.
struct AppendWait<'a> {
    notifier: &'a Notifier,
    queue: &'a str,
    offset: u64,
    waiter_id: Option<u64>,
}

impl Future for AppendWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let notifier = self.notifier;
        let mut queues = notifier.lock();
        let watch = queues.entry(self.queue.to_owned()).or_default();
        if watch.last_offset >= self.offset {
            if let Some(id) = self.waiter_id.take() {
                watch.waiters.remove(&id);
            }
            return Poll::Ready(());
        }
        let id = *self
            .waiter_id
            .get_or_insert_with(|| notifier.next_waiter_id.fetch_add(1, Ordering::Relaxed));
        watch.waiters.insert(id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for AppendWait<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter_id.take() {
            if let Some(watch) = self.notifier.lock().get_mut(self.queue) {
                watch.waiters.remove(&id);
            }
        }
    }
}

/// A session's cursor over one queue.
///
/// [`Reader::next_batch`] reads on from the last offset it returned and,
/// when the queue has nothing newer, waits for an append through the same
/// [`StoreHandle`] instead of polling.
///
/// NOTE: appends made by another process to a shared MySQL or Redis queue
/// do not wake a waiting reader. It reads them only after the next local
/// append to that queue.
pub struct Reader {
    handle: StoreHandle,
    queue: String,
    next_offset: u64,
    batch_limit: usize,
}

impl Reader {
    /// Returns the queue name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Returns the offset the next batch starts at.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Moves the cursor so the next batch starts at `offset`.
    pub fn seek(&mut self, offset: u64) {
        self.next_offset = offset;
    }

    /// Returns the next non-empty batch of unexpired messages, waiting for
    /// an append when the queue has nothing new.
    ///
    /// Messages whose expiry time has passed are skipped. The future is
    /// cancel-safe: dropping it before it completes loses no message.
    ///
    /// # Errors
    ///
    /// Returns the backend's read error; the cursor is then unchanged.
    pub async fn next_batch(&mut self) -> StoreResult<Vec<Message>> {
        loop {
            let messages = self
                .handle
                .read_by_offset(self.queue.clone(), self.next_offset, self.batch_limit)
                .await?;

            let Some(last) = messages.last() else {
                // Nothing at or above next_offset was stored when the read
                // ran. An append committed after it raises the watch to at
                // least next_offset, so this wait cannot miss it.
                AppendWait {
                    notifier: &self.handle.inner.notifier,
                    queue: &self.queue,
                    offset: self.next_offset,
                    waiter_id: None,
                }
                .await;
                continue;
            };

            self.next_offset = last.offset + 1;
            let now_ms = unix_time_ms();
            let live: Vec<Message> = messages
                .into_iter()
                .filter(|message| !message.is_expired(now_ms))
                .collect();
            if !live.is_empty() {
                return Ok(live);
            }
        }
    }
}

/// Returns the current time in unix milliseconds.
pub fn unix_time_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock is set after 1970");
    u64::try_from(since_epoch.as_millis()).expect("unix time in ms fits in u64")
}
