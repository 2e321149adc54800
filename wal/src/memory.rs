//! In-memory backend: no persistence, for tests and brokers without durable
//! sessions.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use crate::{Message, PurgeReport, QueueBatch, SessionRecord, Store, StoreResult};

const BACKEND: &str = "memory";

#[derive(Default)]
struct QueueState {
    /// Offset the next appended message gets.
    next_offset: u64,
    messages: BTreeMap<u64, Message>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, QueueState>,
    sessions: HashMap<String, SessionRecord>,
    retained: HashMap<String, Message>,
}

/// A [`Store`] that keeps everything in process memory behind one mutex.
///
/// Data is lost when the store is dropped, whatever the durability setting.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// Creates an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still valid,
        // because every update is a single insert or remove.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn append_many(&self, batches: &[QueueBatch<'_>]) -> StoreResult<Vec<Range<u64>>> {
        let mut state = self.lock();
        let mut ranges = Vec::with_capacity(batches.len());
        for batch in batches {
            let queue = state
                .queues
                .entry(batch.queue.to_owned())
                .or_insert_with(|| QueueState {
                    next_offset: 1,
                    messages: BTreeMap::new(),
                });
            let start = queue.next_offset;
            for message in batch.messages {
                let offset = queue.next_offset;
                queue.messages.insert(
                    offset,
                    Message {
                        offset,
                        ..message.clone()
                    },
                );
                queue.next_offset += 1;
            }
            ranges.push(start..queue.next_offset);
        }
        Ok(ranges)
    }

    fn read_by_offset(&self, queue: &str, offset: u64, limit: usize) -> StoreResult<Vec<Message>> {
        let state = self.lock();
        let Some(queue) = state.queues.get(queue) else {
            return Ok(Vec::new());
        };
        let messages = queue
            .messages
            .range(offset..)
            .take(limit)
            .map(|(_, message)| message.clone())
            .collect();
        Ok(messages)
    }

    fn delete_by_offset(&self, queue: &str, offset: u64) -> StoreResult<()> {
        let mut state = self.lock();
        if let Some(queue) = state.queues.get_mut(queue) {
            queue.messages = queue.messages.split_off(&offset);
        }
        Ok(())
    }

    fn first_offset(&self, queue: &str) -> StoreResult<Option<u64>> {
        let state = self.lock();
        let first = state
            .queues
            .get(queue)
            .and_then(|queue| queue.messages.keys().next().copied());
        Ok(first)
    }

    fn last_offset(&self, queue: &str) -> StoreResult<Option<u64>> {
        let state = self.lock();
        let last = state
            .queues
            .get(queue)
            .map(|queue| queue.next_offset - 1)
            .filter(|&last| last > 0);
        Ok(last)
    }

    fn put_session(&self, record: &SessionRecord) -> StoreResult<()> {
        let mut state = self.lock();
        state
            .sessions
            .insert(record.client_id.clone(), record.clone());
        Ok(())
    }

    fn get_session(&self, client_id: &str) -> StoreResult<Option<SessionRecord>> {
        Ok(self.lock().sessions.get(client_id).cloned())
    }

    fn delete_session(&self, client_id: &str) -> StoreResult<()> {
        self.lock().sessions.remove(client_id);
        Ok(())
    }

    fn list_sessions(&self) -> StoreResult<Vec<SessionRecord>> {
        Ok(self.lock().sessions.values().cloned().collect())
    }

    fn put_retained(&self, message: &Message) -> StoreResult<()> {
        let mut state = self.lock();
        state
            .retained
            .insert(message.topic.clone(), message.clone());
        Ok(())
    }

    fn delete_retained(&self, topic: &str) -> StoreResult<()> {
        self.lock().retained.remove(topic);
        Ok(())
    }

    fn list_retained(&self) -> StoreResult<Vec<Message>> {
        Ok(self.lock().retained.values().cloned().collect())
    }

    fn purge_expired(&self, now_ms: u64) -> StoreResult<PurgeReport> {
        let mut state = self.lock();
        let sessions_before = state.sessions.len();
        let retained_before = state.retained.len();
        state
            .sessions
            .retain(|_, record| !record.is_expired(now_ms));
        state
            .retained
            .retain(|_, message| !message.is_expired(now_ms));
        Ok(PurgeReport {
            sessions: sessions_before - state.sessions.len(),
            retained: retained_before - state.retained.len(),
        })
    }
}
