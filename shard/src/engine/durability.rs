//! The shard's background work for the store: writing changed session
//! records, truncating the log, purging expired records, and rebuilding
//! sessions and retained messages at start-up.

use std::collections::HashMap;

use coremq_wal::{Message, SessionRecord};

use super::*;
use crate::persist::records::{self, decode_session_state, decode_subscriptions, decode_will};
use crate::persist::{session_record, REPLAY_BATCH};
use crate::session::{Outbound, OutboundState};

/// How long a changed session record may wait before it is written. Short,
/// because until then a crash can replay messages the session completed.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// How often shard 0 truncates the log and purges expired records.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

impl Shard {
    /// Runs the shard's store tasks: the session flusher on every shard,
    /// and truncation and purging on shard 0. Returns at once when the
    /// broker runs without a store.
    pub fn start_persistence(&self) {
        let Some(persistence) = self.state.borrow().persistence.clone() else {
            return;
        };
        let shard = self.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(FLUSH_INTERVAL).await;
                shard.flush_sessions(&persistence).await;
            }
        })
        .detach();

        let shard = self.clone();
        glommio::spawn_local(async move { shard.maintain().await }).detach();
    }

    /// Writes or deletes the records of every session on the journal.
    async fn flush_sessions(&self, persistence: &Persistence) {
        let ids = std::mem::take(&mut *self.state.borrow().journal.borrow_mut());
        for client_id in persist::dedup(ids) {
            // The record is built under the permit, so no older record of
            // this session can be written after it.
            let _permit = self.session_writes.acquire_permit(1).await;
            let write = {
                let mut state = self.state.borrow_mut();
                match state.sessions.get_mut(&client_id) {
                    Some(session) if session.expiry_interval > 0 => {
                        session.dirty.then(|| Some(session_record(session)))
                    }
                    Some(session) => {
                        session.dirty = false;
                        Some(None)
                    }
                    None => Some(None),
                }
            };
            let result = match write {
                Some(Some(record)) => persistence.store.put_session(record).await,
                Some(None) => {
                    persistence
                        .store
                        .delete_session(client_id.to_string())
                        .await
                }
                None => Ok(()),
            };
            if let Err(error) = result {
                error!(client_id = %client_id, %error, "cannot store session; will retry");
                if let Some(session) = self.state.borrow_mut().sessions.get_mut(&client_id) {
                    session.mark_dirty();
                }
            }
        }
    }

    /// Publishes this shard's lowest needed log offset and, on shard 0,
    /// truncates the log below the lowest over all shards and purges
    /// expired records.
    async fn maintain(&self) {
        // The last log offset seen one round earlier. Every message up to
        // it was appended a whole interval ago, and so has been routed to
        // every session it matches (routing happens before the PUBACK).
        let mut settled = 0;
        // Offset below which shard 0 last truncated, to log only progress.
        let mut truncated = 0;
        loop {
            glommio::timer::sleep(MAINTENANCE_INTERVAL).await;
            let (persistence, id) = {
                let mut state = self.state.borrow_mut();
                let Some(persistence) = state.persistence.clone() else {
                    return;
                };
                let last = persistence.last_offset();
                let needed = persist::lowest_needed(
                    state.sessions.values_mut().map(|session| &mut **session),
                    settled,
                    last,
                );
                settled = last;
                persistence.needed[state.id].store(needed, std::sync::atomic::Ordering::Relaxed);
                (persistence, state.id)
            };
            if id != 0 {
                continue;
            }
            if let Some(lowest) = persistence.lowest_needed() {
                match persistence
                    .store
                    .delete_by_offset(persist::LOG_QUEUE, lowest)
                    .await
                {
                    Ok(()) if lowest > truncated => {
                        info!(offset = lowest, "truncated the message log below offset");
                        truncated = lowest;
                    }
                    Ok(()) => {}
                    Err(error) => {
                        warn!(%error, offset = lowest, "cannot truncate the message log")
                    }
                }
            }
            match persistence.store.purge_expired(records::unix_ms()).await {
                Ok(report) if report.sessions + report.retained > 0 => {
                    debug!(
                        sessions = report.sessions,
                        retained = report.retained,
                        "purged expired records"
                    );
                }
                Ok(_) => {}
                Err(error) => warn!(%error, "cannot purge expired records"),
            }
        }
    }

    /// Rebuilds this shard's sessions and its replica of the retained
    /// messages from the store, replaying the log for each session. Call
    /// after the mesh receivers run and before the listeners accept.
    pub async fn restore(&self, sessions: Vec<SessionRecord>, retained: Vec<Message>) {
        let Some(persistence) = self.state.borrow().persistence.clone() else {
            return;
        };
        let started = Instant::now();
        let now = Instant::now();
        {
            let mut state = self.state.borrow_mut();
            for message in retained {
                match records::publication_from_message(message, now) {
                    Ok(publication) if !publication.is_expired(now) => {
                        state.retained.apply(Arc::new(publication))
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%error, "skipping a corrupt retained message"),
                }
            }
        }

        let count = sessions.len();
        for record in sessions {
            let client_id: Arc<str> = record.client_id.as_str().into();
            match self.restore_session(&persistence, record, now).await {
                Ok(()) => {}
                Err(error) => {
                    warn!(client_id = %client_id, %error, "skipping a corrupt session record")
                }
            }
        }
        info!(
            sessions = count,
            elapsed_ms = persist::elapsed_ms(started) as u64,
            "restored sessions"
        );
    }

    async fn restore_session(
        &self,
        persistence: &Persistence,
        record: SessionRecord,
        now: Instant,
    ) -> Result<(), records::RecordError> {
        if record.is_expired(records::unix_ms()) {
            return Ok(());
        }
        let client_id: Arc<str> = record.client_id.as_str().into();
        let state = decode_session_state(&record.inflight)?;
        let subscriptions = decode_subscriptions(&record.subscriptions)?;
        let will = record.will.as_deref().map(decode_will).transpose()?;

        let mut outbox = Outbox::default();
        {
            let mut shard = self.state.borrow_mut();
            let mut session = shard.new_session(client_id.clone(), state.protocol);
            session.expiry_interval = state.expiry_interval;
            session.will = will.map(Box::new);
            session.incoming_qos2 = state.incoming_qos2.iter().copied().collect();
            session.log_seen = record.acked_offset(persist::LOG_QUEUE);
            for (filter, subscription) in &subscriptions {
                session
                    .subscriptions
                    .insert(filter.clone(), subscription.clone());
            }
            for (filter, subscription) in subscriptions {
                shard.attach_subscription(&client_id, filter.into(), subscription, &mut outbox);
            }
            shard.sessions.insert(client_id.clone(), session);
        }
        self.flush(outbox).await;

        // Replay the log above the acknowledged offset.
        let done: std::collections::HashSet<u64> = state.done_above.into_iter().collect();
        let inflight: HashMap<u64, (u16, bool)> = state
            .inflight
            .into_iter()
            .map(|(offset, packet_id, released)| (offset, (packet_id, released)))
            .collect();
        let shared: HashMap<u64, Arc<str>> = state
            .shared_pending
            .into_iter()
            .map(|(offset, share)| (offset, share.into()))
            .collect();
        let mut next = record.acked_offset(persist::LOG_QUEUE) + 1;
        loop {
            let batch = match persistence
                .store
                .read_by_offset(persist::LOG_QUEUE, next, REPLAY_BATCH)
                .await
            {
                Ok(batch) => batch,
                Err(error) => {
                    error!(client_id = %client_id, %error, "cannot read the message log; the session misses what it held");
                    break;
                }
            };
            let Some(last) = batch.last() else { break };
            next = last.offset + 1;
            let mut shard = self.state.borrow_mut();
            let limits = shard.limits.clone();
            let Some(session) = shard.sessions.get_mut(&client_id) else {
                break;
            };
            for message in batch {
                let offset = message.offset;
                if done.contains(&offset) {
                    continue;
                }
                let publication = Arc::new(records::publication_from_message(message, now)?);
                // A message that a shared subscription chose this session
                // for comes back through it. It takes the in-flight slot,
                // because the record does not say which copy was in flight.
                // The record was written before the publisher's PUBACK (see
                // `ShardState::deliver_shared`).
                let chosen = shared
                    .get(&offset)
                    .and_then(|share| routing::shared_delivery(session, share, &publication));
                let plain = replay_delivery(session, &publication);
                let (delivery, also) = match (chosen, plain) {
                    (Some(chosen), plain) => (chosen, plain),
                    (None, Some(plain)) => (plain, None),
                    (None, None) => continue,
                };
                if let Some(also) = also {
                    session.offer(also, &limits, now, &mut FrameCache::default());
                }
                match inflight.get(&offset) {
                    Some((packet_id, released)) => {
                        let state = match (released, delivery.qos) {
                            (true, _) => OutboundState::AwaitingPubComp,
                            (false, QoS::ExactlyOnce) => OutboundState::AwaitingPubRec,
                            (false, _) => OutboundState::AwaitingPubAck,
                        };
                        session.restore_inflight(*packet_id, Outbound { delivery, state });
                    }
                    None => {
                        session.offer(delivery, &limits, now, &mut FrameCache::default());
                    }
                }
            }
        }

        // The session is offline until its client returns.
        let mut shard = self.state.borrow_mut();
        if let Some(session) = shard.sessions.get_mut(&client_id) {
            session.mark_dirty();
            let generation = session.generation;
            let expiry = session.expiry_interval;
            if expiry != u32::MAX {
                let remaining_ms = record.expires_at.map_or(u64::from(expiry) * 1000, |at| {
                    at.saturating_sub(records::unix_ms())
                });
                shard.arm_expiry_timer_ms(client_id, generation, remaining_ms);
            }
        }
        Ok(())
    }
}

/// Builds the copy of a replayed publication that `session` would have
/// received. Returns `None` when none of its non-shared subscriptions
/// matches.
fn replay_delivery(session: &Session, publication: &Arc<Publication>) -> Option<Delivery> {
    let mut delivery: Option<Delivery> = None;
    for (filter, subscription) in &session.subscriptions {
        if topic::parse_shared(filter).is_some() || !topic::matches(filter, &publication.topic) {
            continue;
        }
        let options = subscription.options;
        if options.no_local && publication.publisher.as_deref() == Some(&*session.client_id) {
            continue;
        }
        let qos = options.qos.min(publication.qos);
        let retain = options.retain_as_published && publication.retain;
        match &mut delivery {
            Some(existing) => {
                existing.qos = existing.qos.max(qos);
                existing.retain |= retain;
                existing.subscription_ids.extend(subscription.identifier);
            }
            None => {
                delivery = Some(Delivery {
                    publication: publication.clone(),
                    qos,
                    retain,
                    subscription_ids: subscription.identifier.into_iter().collect(),
                    share: None,
                })
            }
        }
    }
    delivery
}
