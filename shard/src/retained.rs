//! The shard's replica of the retained messages.

use std::sync::Arc;
use std::time::Instant;

use crate::message::Publication;
use crate::trie::TopicTrie;

/// Retained messages by topic. Every shard keeps a full replica, updated
/// through the mesh, so a subscribe never waits on another shard.
#[derive(Default)]
pub struct RetainedStore {
    topics: TopicTrie<Arc<Publication>>,
}

impl RetainedStore {
    /// Stores `publication`, or clears its topic when the payload is empty.
    pub fn apply(&mut self, publication: Arc<Publication>) {
        if publication.payload.is_empty() {
            self.topics.remove(&publication.topic);
        } else {
            let topic = publication.topic.clone();
            self.topics.insert(&topic, publication);
        }
    }

    /// Returns the unexpired retained messages whose topic matches `filter`.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Publication>> {
        let mut found = Vec::new();
        self.topics.for_each_match(filter, |publication| {
            if !publication.is_expired(now) {
                found.push(publication.clone());
            }
        });
        found
    }
}
