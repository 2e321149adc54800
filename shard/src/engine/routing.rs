//! Routing: retained updates, local delivery, shared subscriptions and
//! forwarding to other shards.

use super::*;
use crate::mesh::Ack;
use crate::session::OutboundState;

/// Publications per run sent to another shard. The mesh channels bound
/// their backlog in messages, so this bounds the publications waiting in
/// one channel to this many times its capacity.
const MAX_MESH_RUN: usize = 16;

impl ShardState {
    /// Routes a publication: stores it if retained, delivers it to local
    /// sessions, and queues it for every other interested shard. Returns
    /// whether any subscriber anywhere matched.
    pub(super) fn route(
        &mut self,
        publication: &Arc<Publication>,
        await_retain: bool,
        now: Instant,
        outbox: &mut Outbox,
    ) -> bool {
        if publication.retain {
            self.retained.apply(publication.clone());
            if self.persistence.is_some() {
                let op = if publication.payload.is_empty() {
                    StoreOp::DeleteRetained(publication.topic.clone())
                } else {
                    StoreOp::PutRetained(persist::records::message_from_publication(
                        publication,
                        now,
                    ))
                };
                outbox.store.push(op);
            }
            for shard in (0..self.shards).filter(|s| *s != self.id) {
                let ack = await_retain.then(|| outbox.ack());
                outbox.send(
                    shard,
                    ShardMsg::Retain {
                        publication: publication.clone(),
                        ack,
                    },
                );
            }
        }

        self.route_run(std::slice::from_ref(publication), now, outbox)
    }

    /// Routes a run of publications from one client, in order: several
    /// that share their topic and QoS and are neither retained nor logged,
    /// or any single one. Matching happens once for the run, and each
    /// subscriber takes the run in one pass (see
    /// [`ShardState::deliver_local_run`]). Returns whether any subscriber
    /// anywhere matched, which is the same for every publication of the run.
    pub(super) fn route_run(
        &mut self,
        run: &[Arc<Publication>],
        now: Instant,
        outbox: &mut Outbox,
    ) -> bool {
        let topic = &run[0].topic;
        // With one shard, the interest trie contains the same filters as the
        // subscriptions, so matching while delivering gives the result.
        let matched = if self.shards == 1 {
            self.deliver_local_run(run, now)
        } else {
            let mut targets: u64 = 0;
            self.interest.for_each_match(topic, |shard, _| {
                targets |= 1 << shard;
            });
            for shard in 0..self.shards {
                if targets & (1 << shard) == 0 {
                    continue;
                }
                if shard == self.id {
                    self.deliver_local_run(run, now);
                } else {
                    for chunk in run.chunks(MAX_MESH_RUN) {
                        let msg = match chunk {
                            [publication] => ShardMsg::Publish(publication.clone()),
                            _ => ShardMsg::PublishRun(chunk.to_vec()),
                        };
                        outbox.send(shard, msg);
                    }
                }
            }
            targets != 0
        };
        let mut shared = false;
        if !self.shared_interest.is_empty() {
            for publication in run {
                shared |= self.route_shared(publication, now, outbox);
            }
        }
        matched || shared
    }

    /// Delivers a run of publications (see [`ShardState::route_run`]) to
    /// every local session with a matching subscription, in order. A
    /// session with one plain QoS 0 subscription takes the whole run with
    /// one append. Other sessions get one offer per message. Returns true
    /// when a subscription matched.
    pub(super) fn deliver_local_run(&mut self, run: &[Arc<Publication>], now: Instant) -> bool {
        let ShardState {
            subscriptions,
            sessions,
            limits,
            ..
        } = self;
        let first = &run[0];
        let mut run_frames = RunFrames::new(run, now);
        let mut frames: Vec<FrameCache> = Vec::new();
        // A session with several subscriptions may match more than once, so
        // its copies are merged here and sent after the others. Every
        // publication of the run matches the same subscriptions.
        let mut merged: HashMap<&Arc<str>, Delivery> = HashMap::new();
        let mut matched = false;

        subscriptions.for_each_match(&first.topic, |client_id, route| {
            matched = true;
            let subscription = &route.subscription;
            let options = subscription.options;
            if options.no_local && first.publisher.as_deref() == Some(&**client_id) {
                return;
            }
            let Some(session) = sessions.get_mut_hinted(client_id, &route.session) else {
                return;
            };
            let delivery = Delivery {
                publication: first.clone(),
                qos: options.qos.min(first.qos),
                retain: options.retain_as_published && first.retain,
                subscription_ids: subscription.identifier.into_iter().collect(),
                share: None,
            };
            if session.subscriptions.len() != 1 {
                match merged.get_mut(client_id) {
                    Some(existing) => {
                        existing.qos = existing.qos.max(delivery.qos);
                        existing.retain |= delivery.retain;
                        existing.subscription_ids.extend(delivery.subscription_ids);
                    }
                    None => {
                        merged.insert(client_id, delivery);
                    }
                }
                return;
            }

            let whole_run = delivery.qos == QoS::AtMostOnce
                && delivery.subscription_ids.is_empty()
                && !delivery.retain
                && first.log_offset.is_none();
            if whole_run
                && session
                    .offer_run_qos0(&mut run_frames, limits, now)
                    .is_some()
            {
                return;
            }
            if frames.is_empty() {
                frames.resize_with(run.len(), FrameCache::default);
            }
            offer_each(session, run, &delivery, limits, now, &mut frames);
        });

        if !merged.is_empty() && frames.is_empty() {
            frames.resize_with(run.len(), FrameCache::default);
        }
        for (client_id, delivery) in merged {
            if let Some(session) = sessions.get_mut(client_id) {
                offer_each(session, run, &delivery, limits, now, &mut frames);
            }
        }
        matched
    }

    /// Picks one shard per matching shared subscription, round-robin over
    /// members, and sends the publication there.
    pub(super) fn route_shared(
        &mut self,
        publication: &Arc<Publication>,
        now: Instant,
        outbox: &mut Outbox,
    ) -> bool {
        let mut shares: Vec<(Arc<str>, Vec<ShardId>)> = Vec::new();
        self.shared_interest
            .for_each_match(&publication.topic, |(share, shard), _| {
                match shares.iter_mut().find(|(s, _)| s == share) {
                    Some((_, shards)) => shards.push(*shard),
                    None => shares.push((share.clone(), vec![*shard])),
                }
            });
        let matched = !shares.is_empty();
        for (share, mut shards) in shares {
            shards.sort_unstable();
            let cursor = self.shared_cursor.entry(share.clone()).or_insert(0);
            let shard = shards[*cursor % shards.len()];
            *cursor = cursor.wrapping_add(1);
            if shard == self.id {
                self.deliver_shared(publication, &share, 0, None, now, outbox);
            } else {
                let ack = publication.log_offset.map(|_| outbox.ack());
                outbox.send(
                    shard,
                    ShardMsg::SharedPublish {
                        publication: publication.clone(),
                        share,
                        hops: 0,
                        ack,
                    },
                );
            }
        }
        matched
    }

    /// Delivers to every local session with a matching (non-shared)
    /// subscription, one copy per session. Returns true when a subscription
    /// matched, even one that `no_local` kept from getting the message.
    pub(super) fn deliver_local(&mut self, publication: &Arc<Publication>, now: Instant) -> bool {
        self.deliver_local_run(std::slice::from_ref(publication), now)
    }

    /// Delivers to one local member of `share`, preferring connected ones;
    /// passes the message on when no member is left here.
    ///
    /// Replay finds which member a logged message went to only in that
    /// member's stored record. So a persistent member's record joins
    /// `outbox`, to be written before the publisher's acknowledgement, and
    /// `ack`, from the shard that routed the message, is sent once it is.
    pub(super) fn deliver_shared(
        &mut self,
        publication: &Arc<Publication>,
        share: &Arc<str>,
        hops: u8,
        ack: Option<Ack>,
        now: Instant,
        outbox: &mut Outbox,
    ) {
        let Some(group) = self.shared_groups.get_mut(share) else {
            if hops < MAX_SHARED_HOPS {
                let mut other = None;
                self.shared_interest
                    .for_each_match(&publication.topic, |(s, shard), _| {
                        if s == share && *shard != self.id {
                            other = Some(*shard);
                        }
                    });
                if let Some(shard) = other {
                    outbox.send(
                        shard,
                        ShardMsg::SharedPublish {
                            publication: publication.clone(),
                            share: share.clone(),
                            hops: hops + 1,
                            ack,
                        },
                    );
                }
            }
            return;
        };
        let count = group.members.len();
        let mut chosen = None;
        for step in 0..count {
            let member = &group.members[(group.next + step) % count];
            let connected = self.sessions.get(member).is_some_and(|s| s.conn.is_some());
            if connected {
                chosen = Some(member.clone());
                group.next = (group.next + step + 1) % count;
                break;
            }
        }
        let member = match chosen {
            Some(member) => member,
            None => {
                let member = group.members[group.next % count].clone();
                group.next = (group.next + 1) % count;
                member
            }
        };
        let Some(session) = self.sessions.get_mut(&member) else {
            return;
        };
        let Some(delivery) = shared_delivery(session, share, publication) else {
            return;
        };
        session.offer(delivery, &self.limits, now, &mut FrameCache::default());
        if publication.log_offset.is_some() && session.expiry_interval > 0 {
            outbox.records.push(member);
        }
        outbox.done.extend(ack);
    }
}

impl ShardState {
    /// Hands the QoS 1 and 2 messages that shared subscriptions gave to
    /// `session`, which ended without acknowledging them, to other members
    /// of their groups. The session must have left its groups already. A
    /// QoS 2 message whose PUBREC arrived stays with it: the client has it.
    pub(super) fn redispatch_shared(
        &mut self,
        session: &Session,
        now: Instant,
        outbox: &mut Outbox,
    ) {
        let unacknowledged = session
            .inflight
            .values()
            .filter(|outbound| outbound.state != OutboundState::AwaitingPubComp)
            .map(|outbound| &outbound.delivery);
        // The ended session is no longer in the table, so `self` is free to
        // deliver while its messages are read.
        for delivery in unacknowledged.chain(session.queue.iter()) {
            if delivery.qos == QoS::AtMostOnce {
                continue;
            }
            if let Some(share) = &delivery.share {
                self.deliver_shared(&delivery.publication, share, 0, None, now, outbox);
            }
        }
    }
}

/// Builds the copy of `publication` that the shared subscription `share`
/// (`$share/group/filter`) of `session` takes. Returns `None` when the
/// session does not have that subscription.
pub(super) fn shared_delivery(
    session: &Session,
    share: &Arc<str>,
    publication: &Arc<Publication>,
) -> Option<Delivery> {
    let subscription = session.subscriptions.get(&**share)?;
    let options = subscription.options;
    Some(Delivery {
        publication: publication.clone(),
        qos: options.qos.min(publication.qos),
        retain: options.retain_as_published && publication.retain,
        subscription_ids: subscription.identifier.into_iter().collect(),
        share: Some(share.clone()),
    })
}

/// Offers each publication of `run` to `session` in order, with what
/// `delivery` sets for the run (QoS, RETAIN flag and subscription
/// identifiers). `frames` has one cache per publication.
fn offer_each(
    session: &mut Session,
    run: &[Arc<Publication>],
    delivery: &Delivery,
    limits: &Limits,
    now: Instant,
    frames: &mut [FrameCache],
) {
    let plain = delivery.qos == QoS::AtMostOnce && delivery.subscription_ids.is_empty();
    for (publication, frames) in run.iter().zip(frames.iter_mut()) {
        if plain
            && session
                .offer_cached_qos0(publication, delivery.retain, limits, now, frames)
                .is_some()
        {
            continue;
        }
        let delivery = Delivery {
            publication: publication.clone(),
            ..delivery.clone()
        };
        session.offer(delivery, limits, now, frames);
    }
}
