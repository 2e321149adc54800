//! SUBSCRIBE, UNSUBSCRIBE and the interest table shared with other shards.

use super::*;

impl ShardState {
    pub(super) fn apply_interest(&mut self, filter: &Arc<str>, shard: ShardId, add: bool) {
        match topic::parse_shared(filter) {
            Some((_, inner)) => {
                let key = (filter.clone(), shard);
                if add {
                    self.shared_interest.insert(inner, key, ());
                } else {
                    self.shared_interest.remove(inner, &key);
                }
            }
            None => {
                if add {
                    self.interest.insert(filter, shard, ());
                } else {
                    self.interest.remove(filter, &shard);
                }
            }
        }
    }

    /// Counts a local subscriber on `filter` and announces the shard's
    /// interest to every shard when it is the first.
    pub(super) fn add_local_filter(&mut self, filter: &Arc<str>, outbox: &mut Outbox) {
        let count = self.local_filters.entry(filter.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.apply_interest(filter, self.id, true);
            for shard in (0..self.shards).filter(|s| *s != self.id) {
                let ack = Some(outbox.ack());
                outbox.send(
                    shard,
                    ShardMsg::Interest {
                        filter: filter.clone(),
                        shard: self.id,
                        add: true,
                        ack,
                    },
                );
            }
        }
    }

    pub(super) fn remove_local_filter(&mut self, filter: &str, outbox: &mut Outbox) {
        let Some(count) = self.local_filters.get_mut(filter) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        let (filter, _) = self
            .local_filters
            .remove_entry(filter)
            .expect("the entry was found above");
        self.apply_interest(&filter, self.id, false);
        for shard in (0..self.shards).filter(|s| *s != self.id) {
            outbox.send(
                shard,
                ShardMsg::Interest {
                    filter: filter.clone(),
                    shard: self.id,
                    add: false,
                    ack: None,
                },
            );
        }
    }

    /// Handles SUBSCRIBE; returns the SUBACK and the retained messages to
    /// send after it.
    #[allow(clippy::type_complexity)]
    pub(super) fn subscribe(
        &mut self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        subscribe: Subscribe,
        outbox: &mut Outbox,
    ) -> Result<Option<(Packet, Vec<Delivery>)>, CloseRequest> {
        let now = Instant::now();
        let user = self.session_mut(client_id, conn)?.username.clone();
        let identifier = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();

        for (filter, options) in subscribe.filters {
            if topic::validate_topic_filter(&filter).is_err() {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            if !self.authorize(user.as_deref(), client_id, Access::Subscribe, &filter, now) {
                // The codec sends 0x80 (Failure) to MQTT 3.1.1 clients.
                reasons.push(ReasonCode::NOT_AUTHORIZED);
                continue;
            }
            let shared = topic::parse_shared(&filter).map(|(_, inner)| inner.to_owned());
            if shared.is_some() && options.no_local {
                return Err(close_with(ReasonCode::PROTOCOL_ERROR));
            }
            let subscription = Subscription {
                options,
                identifier,
            };
            let filter: Arc<str> = filter.into();
            let session = self
                .sessions
                .get_mut(client_id)
                .expect("checked by session_mut");
            let existed = session
                .subscriptions
                .insert(filter.to_string(), subscription.clone())
                .is_some();
            session.mark_dirty();

            if existed {
                if shared.is_none() {
                    // Replace the options of the existing subscription.
                    self.subscriptions
                        .insert(&filter, client_id.clone(), Route::new(subscription));
                }
            } else {
                self.attach_subscription(client_id, filter.clone(), subscription, outbox);
            }

            // Shared subscriptions never receive retained messages at subscribe time.
            let send_retained = shared.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for publication in self.retained.matching(&filter, now) {
                    retained.push(Delivery {
                        qos: options.qos.min(publication.qos),
                        retain: true,
                        subscription_ids: identifier.into_iter().collect(),
                        share: None,
                        publication,
                    });
                }
            }
            reasons.push(granted(options.qos));
        }

        let suback = Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            properties: Properties::default(),
            reasons,
        });
        Ok(Some((suback, retained)))
    }

    /// Removes the filters of `unsubscribe` from the session and returns
    /// the UNSUBACK, or `None` when the connection no longer owns the
    /// session.
    pub(super) fn unsubscribe(
        &mut self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        unsubscribe: Unsubscribe,
        outbox: &mut Outbox,
    ) -> Option<Packet> {
        if self.session_mut(client_id, conn).is_err() {
            return None;
        }
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let session = self
                .sessions
                .get_mut(client_id)
                .expect("checked by session_mut");
            if session.subscriptions.remove(filter).is_some() {
                session.mark_dirty();
                self.remove_subscription(client_id, filter, outbox);
                reasons.push(ReasonCode::SUCCESS);
            } else {
                reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
            }
        }
        Some(Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            properties: Properties::default(),
            reasons: if conn.protocol == Protocol::V5 {
                reasons
            } else {
                Vec::new()
            },
        }))
    }

    /// Removes one subscription of `client_id` from the shard's tables
    /// (the session's own map is updated by the caller).
    /// Enters a new subscription of a local session into the shard's
    /// tables (the subscription trie or a shared group) and the interest
    /// table. The session's own map is updated by the caller.
    pub(super) fn attach_subscription(
        &mut self,
        client_id: &Arc<str>,
        filter: Arc<str>,
        subscription: Subscription,
        outbox: &mut Outbox,
    ) {
        if topic::parse_shared(&filter).is_some() {
            let group = self.shared_groups.entry(filter.clone()).or_default();
            group.members.push(client_id.clone());
        } else {
            self.subscriptions
                .insert(&filter, client_id.clone(), Route::new(subscription));
        }
        self.add_local_filter(&filter, outbox);
    }

    pub(super) fn remove_subscription(
        &mut self,
        client_id: &Arc<str>,
        filter: &str,
        outbox: &mut Outbox,
    ) {
        if topic::parse_shared(filter).is_some() {
            if let Some(group) = self.shared_groups.get_mut(filter) {
                group.members.retain(|member| member != client_id);
                if group.members.is_empty() {
                    self.shared_groups.remove(filter);
                }
            }
        } else {
            self.subscriptions.remove(filter, client_id);
        }
        self.remove_local_filter(filter, outbox);
    }

    pub(super) fn drop_subscriptions(&mut self, session: &Session, outbox: &mut Outbox) {
        for filter in session.subscriptions.keys() {
            self.remove_subscription(&session.client_id, filter, outbox);
        }
    }
}
