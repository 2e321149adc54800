//! Session lifecycle: CONNECT, takeover, disconnect, wills and expiry.

use super::*;

impl ShardState {
    pub(super) fn connect(
        &mut self,
        conn: Rc<Conn>,
        connect: Connect,
        client_id: Arc<str>,
        assigned: bool,
        outbox: &mut Outbox,
    ) -> ConnectOutcome {
        let now = Instant::now();
        let v5 = connect.protocol == Protocol::V5;
        let fail = |reason| ConnectOutcome {
            reason,
            session_present: false,
            keep_alive: 0,
        };

        if let Some(will) = &connect.will {
            if topic::validate_topic_name(&will.topic).is_err() {
                return self.reject(&conn, fail(ReasonCode::TOPIC_NAME_INVALID));
            }
            let user = connect.username.as_deref();
            if !self.authorize(user, &client_id, Access::Publish, &will.topic, now) {
                return self.reject(&conn, fail(ReasonCode::NOT_AUTHORIZED));
            }
        }

        // MQTT 3.1.1 has no Server Keep Alive to give a client a lower limit,
        // so a 3.1.1 client that asks for more than the maximum, or for none
        // (0), is rejected, as Mosquitto does with `max_keepalive`.
        let max_keep_alive = self.limits.max_keep_alive;
        if !v5
            && max_keep_alive != u16::MAX
            && (connect.keep_alive == 0 || connect.keep_alive > max_keep_alive)
        {
            warn!(
                client_id = %client_id,
                keep_alive = connect.keep_alive,
                max_keep_alive,
                "MQTT 3.1.1 CONNECT rejected (identifier rejected): its Keep Alive is 0 or above the maximum, which only MQTT 5 can lower; connect with a Keep Alive of 1 to {max_keep_alive} s"
            );
            return self.reject(&conn, fail(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));
        }

        let expiry = if v5 {
            connect
                .properties
                .session_expiry_interval
                .unwrap_or(0)
                .min(self.limits.max_session_expiry)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };

        // An existing session: take over its connection, then resume it or
        // discard it as Clean Start asks.
        let mut session_present = false;
        let mut resumed = None;
        if let Some(mut old) = self.sessions.remove(&client_id) {
            if let Some(old_conn) = old.conn.take() {
                old_conn.request_close(close_with(ReasonCode::SESSION_TAKEN_OVER));
                info!(client_id = %client_id, old_peer = %old_conn.peer, "session taken over");
                // The old connection closed without DISCONNECT 0x00, so its
                // Will is due unless the session continues and the Will has a delay.
                let will_delay = old.will.as_deref().map_or(0, will_delay);
                if connect.clean_start || will_delay == 0 {
                    if let Some(will) = old.will.take() {
                        self.publish_will(&old.client_id, will, now, outbox);
                    }
                }
            }
            if connect.clean_start {
                if let Some(will) = old.will.take() {
                    self.publish_will(&old.client_id, will, now, outbox);
                }
                self.drop_subscriptions(&old, outbox);
                self.redispatch_shared(&old, now, outbox);
            } else {
                session_present = true;
                resumed = Some(old);
            }
        }

        let mut session =
            resumed.unwrap_or_else(|| self.new_session(client_id.clone(), connect.protocol));
        session.protocol = connect.protocol;
        session.generation += 1;
        session.expiry_interval = expiry;
        session.will = connect.will.map(Box::new);
        session.client_receive_maximum = connect
            .properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(self.limits.max_inflight);
        session.username = connect.username.as_deref().map(Arc::from);
        session.conn = Some(conn.clone());

        let keep_alive = if connect.keep_alive == 0 || connect.keep_alive > max_keep_alive {
            if max_keep_alive == u16::MAX {
                connect.keep_alive
            } else {
                max_keep_alive
            }
        } else {
            connect.keep_alive
        };

        let mut properties = Properties::default();
        if v5 {
            properties.receive_maximum = Some(self.limits.receive_maximum);
            properties.topic_alias_maximum = Some(self.limits.topic_alias_maximum);
            properties.maximum_packet_size = Some(self.limits.max_packet_size);
            if assigned {
                properties.assigned_client_identifier = Some(client_id.to_string());
            }
            if keep_alive != connect.keep_alive {
                properties.server_keep_alive = Some(keep_alive);
            }
            if connect.properties.session_expiry_interval.unwrap_or(0) != expiry {
                properties.session_expiry_interval = Some(expiry);
            }
            // The broker finishes enhanced authentication before it calls
            // connect, and leaves the server's last message (SCRAM's
            // server-final) as the Authentication Data that CONNACK returns.
            properties.authentication_method = connect.properties.authentication_method.clone();
            properties.authentication_data = connect.properties.authentication_data.clone();
        }
        conn.send(&Packet::ConnAck(ConnAck {
            session_present,
            reason: ReasonCode::SUCCESS,
            properties,
        }));

        session.resend_inflight(now);
        session.pump(now);
        info!(
            client_id = %client_id,
            peer = %conn.peer,
            shard = self.id,
            protocol = conn.protocol.level(),
            clean_start = connect.clean_start,
            session_present,
            "connected"
        );
        session.mark_dirty();
        self.sessions.insert(client_id, session);
        ConnectOutcome {
            reason: ReasonCode::SUCCESS,
            session_present,
            keep_alive,
        }
    }

    /// Creates an empty session that starts reading the log at its end.
    pub(super) fn new_session(&self, client_id: Arc<str>, protocol: Protocol) -> Box<Session> {
        let mut session = Box::new(Session::new(client_id, protocol));
        if let Some(persistence) = &self.persistence {
            session.journal = Some(self.journal.clone());
            session.log_seen = persistence.last_offset();
        }
        session
    }

    /// Queues the deletion of a removed session's stored record.
    pub(super) fn forget_session(&self, client_id: &Arc<str>) {
        if self.persistence.is_some() {
            self.journal.borrow_mut().push(client_id.clone());
        }
    }

    pub(super) fn reject(&self, conn: &Conn, outcome: ConnectOutcome) -> ConnectOutcome {
        conn.send(&Packet::ConnAck(ConnAck {
            session_present: false,
            reason: outcome.reason,
            properties: Properties::default(),
        }));
        outcome
    }

    pub(super) fn session_mut(
        &mut self,
        client_id: &Arc<str>,
        conn: &Rc<Conn>,
    ) -> Result<&mut Session, CloseRequest> {
        match self.sessions.get_mut_hinted(client_id, &conn.session_hint) {
            Some(session) if session.conn.as_ref().is_some_and(|c| Rc::ptr_eq(c, conn)) => {
                Ok(session)
            }
            // The session was taken over; this connection is closing.
            _ => Err(CloseRequest { reason: None }),
        }
    }

    pub(super) fn disconnected(
        &mut self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        publish_will: bool,
        outbox: &mut Outbox,
    ) {
        let now = Instant::now();
        let Some(session) = self.sessions.get_mut(client_id) else {
            return;
        };
        if !session.conn.as_ref().is_some_and(|c| Rc::ptr_eq(c, conn)) {
            // Taken over: the new connection owns the session now.
            return;
        }
        session.conn = None;
        session.mark_dirty();
        let generation = session.generation;
        let expiry = session.expiry_interval;
        let will = if publish_will {
            session.will.take()
        } else {
            None
        };
        session.will = None;

        if expiry == 0 {
            let session = self.sessions.remove(client_id).expect("found above");
            self.forget_session(client_id);
            self.drop_subscriptions(&session, outbox);
            self.redispatch_shared(&session, now, outbox);
            if let Some(will) = will {
                self.publish_will(client_id, will, now, outbox);
            }
            return;
        }

        if let Some(will) = will {
            let delay = will_delay(&will);
            if delay == 0 {
                self.publish_will(client_id, will, now, outbox);
            } else if delay >= expiry {
                // The session ends first; its end publishes the Will.
                self.sessions.get_mut(client_id).expect("found above").will = Some(will);
            } else {
                self.arm_will_timer(client_id.clone(), generation, will, delay);
            }
        }
        if expiry != u32::MAX {
            self.arm_expiry_timer(client_id.clone(), generation, expiry);
        }
    }

    pub(super) fn arm_will_timer(
        &self,
        client_id: Arc<str>,
        generation: u64,
        will: Box<Will>,
        delay: u32,
    ) {
        let this = self.this.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_secs(u64::from(delay))).await;
            let Some(state) = this.upgrade() else { return };
            let mut outbox = Outbox::default();
            {
                let mut state = state.borrow_mut();
                let current = state
                    .sessions
                    .get(&client_id)
                    .map(|s| (s.generation, s.conn.is_some()));
                // Due only if the client has not come back since.
                let due = match current {
                    Some((g, connected)) => g == generation && !connected,
                    None => true,
                };
                if due {
                    state.publish_will(&client_id, will, Instant::now(), &mut outbox);
                }
            }
            send_outbox(outbox).await;
        })
        .detach();
    }

    pub(super) fn arm_expiry_timer(&self, client_id: Arc<str>, generation: u64, expiry: u32) {
        self.arm_expiry_timer_ms(client_id, generation, u64::from(expiry) * 1000);
    }

    /// Ends the session `expiry_ms` milliseconds from now unless its client
    /// has come back (which bumps the generation).
    pub(super) fn arm_expiry_timer_ms(&self, client_id: Arc<str>, generation: u64, expiry_ms: u64) {
        let this = self.this.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(expiry_ms)).await;
            let Some(state) = this.upgrade() else { return };
            let mut outbox = Outbox::default();
            {
                let mut state = state.borrow_mut();
                let expired = state
                    .sessions
                    .get(&client_id)
                    .is_some_and(|s| s.generation == generation && s.conn.is_none());
                if expired {
                    let mut session = state.sessions.remove(&client_id).expect("checked above");
                    state.forget_session(&client_id);
                    debug!(client_id = %client_id, "session expired");
                    let now = Instant::now();
                    state.drop_subscriptions(&session, &mut outbox);
                    state.redispatch_shared(&session, now, &mut outbox);
                    if let Some(will) = session.will.take() {
                        state.publish_will(&client_id, will, now, &mut outbox);
                    }
                }
            }
            send_outbox(outbox).await;
        })
        .detach();
    }

    pub(super) fn publish_will(
        &mut self,
        client_id: &Arc<str>,
        will: Box<Will>,
        now: Instant,
        outbox: &mut Outbox,
    ) {
        let mut properties = will.properties;
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        properties.will_delay_interval = None;
        let publication = Arc::new(Publication {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            expires_at,
            publisher: Some(client_id.clone()),
            log_offset: None,
        });
        debug!(client_id = %client_id, topic = %publication.topic, "publishing will");
        self.route(&publication, false, now, outbox);
    }
}
