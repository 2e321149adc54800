//! Packets from a connected client other than SUBSCRIBE and UNSUBSCRIBE.

use super::*;

impl ShardState {
    /// Handles every packet but PUBLISH, SUBSCRIBE and UNSUBSCRIBE. Returns
    /// a reply that must go out only after the session's stored record is
    /// up to date (PUBREL, PUBCOMP), if any.
    pub(super) fn handle_control(
        &mut self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        packet: Packet,
    ) -> Result<Option<Packet>, CloseRequest> {
        let now = Instant::now();
        let protocol_error = close_with(ReasonCode::PROTOCOL_ERROR);
        let max_session_expiry = self.limits.max_session_expiry;
        let session = self.session_mut(client_id, conn)?;
        match packet {
            Packet::PubAck(ack) => {
                if !session.on_puback(ack.packet_id, now) {
                    debug!(client_id = %client_id, packet_id = ack.packet_id, "PUBACK for unknown packet id");
                }
            }
            Packet::PubRec(rec) => match session.on_pubrec(rec.packet_id, rec.reason, now) {
                Some(true) => {
                    return Ok(Some(pubresp(
                        Packet::PubRel,
                        rec.packet_id,
                        ReasonCode::SUCCESS,
                    )));
                }
                Some(false) => {}
                None => {
                    // Tell the client the exchange is unknown so it can stop.
                    conn.send(&pubresp(
                        Packet::PubRel,
                        rec.packet_id,
                        ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                    ));
                }
            },
            Packet::PubRel(rel) => {
                let reason = if session.incoming_qos2.remove(&rel.packet_id) {
                    session.mark_dirty();
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                return Ok(Some(pubresp(Packet::PubComp, rel.packet_id, reason)));
            }
            Packet::PubComp(comp) => {
                if !session.on_pubcomp(comp.packet_id, now) {
                    debug!(client_id = %client_id, packet_id = comp.packet_id, "PUBCOMP for unknown packet id");
                }
            }
            Packet::PingReq => {
                conn.send(&Packet::PingResp);
            }
            Packet::Disconnect(disconnect) => {
                if let Some(expiry) = disconnect.properties.session_expiry_interval {
                    if session.expiry_interval == 0 && expiry != 0 {
                        // A session that was to end at disconnect cannot be
                        // revived by DISCONNECT.
                        return Err(protocol_error);
                    }
                    session.expiry_interval = expiry.min(max_session_expiry);
                }
                if disconnect.reason == ReasonCode::NORMAL_DISCONNECTION {
                    session.will = None;
                }
                session.mark_dirty();
                return Err(CloseRequest { reason: None });
            }
            Packet::Auth(_) => {
                // No authentication method was negotiated at CONNECT.
                return Err(protocol_error);
            }
            Packet::Connect(_) => return Err(protocol_error),
            other => {
                debug!(client_id = %client_id, packet = other.name(), "packet a client must not send");
                return Err(protocol_error);
            }
        }
        Ok(None)
    }

    /// Checks a client's PUBLISH and turns it into a publication to route,
    /// or into an immediate reply (a re-sent QoS 2 packet, an invalid
    /// payload). `now` is when the batch it came in is handled.
    pub(super) fn prepare_publish(
        &mut self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        mut publish: Publish,
        now: Instant,
    ) -> Result<PublishStep, CloseRequest> {
        let receive_maximum = self.limits.receive_maximum;
        let session = self.session_mut(client_id, conn)?;
        if !publish.properties.subscription_identifiers.is_empty() {
            warn!(
                client_id = %client_id,
                peer = %conn.peer,
                topic = %publish.topic,
                "PUBLISH carries a Subscription Identifier, which only a server may send; closing with 0x82 (protocol error)"
            );
            return Err(close_with(ReasonCode::PROTOCOL_ERROR));
        }
        let user = session.username.clone();
        if !self.authorize(
            user.as_deref(),
            client_id,
            Access::Publish,
            &publish.topic,
            now,
        ) {
            return self.deny_publish(conn, client_id, &publish);
        }
        let session = self.session_mut(client_id, conn)?;
        let retain_ack_needed = publish.retain && publish.qos != QoS::AtMostOnce;

        let ack_kind = match publish.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck as fn(_) -> Packet),
            QoS::ExactlyOnce => {
                let packet_id = publish
                    .packet_id
                    .expect("the codec requires a packet id at QoS 2");
                if session.incoming_qos2.contains(&packet_id) {
                    // A re-send before PUBREL: acknowledge again, deliver once.
                    return Ok(PublishStep::Reply(pubresp(
                        Packet::PubRec,
                        packet_id,
                        ReasonCode::SUCCESS,
                    )));
                }
                if session.incoming_qos2.len() >= usize::from(receive_maximum) {
                    return Err(close_with(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
                }
                session.incoming_qos2.insert(packet_id);
                session.mark_dirty();
                Some(Packet::PubRec as fn(_) -> Packet)
            }
        };

        if publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            return match (ack_kind, publish.packet_id) {
                (Some(kind), Some(packet_id)) if conn.protocol == Protocol::V5 => {
                    if publish.qos == QoS::ExactlyOnce {
                        session.incoming_qos2.remove(&packet_id);
                    }
                    Ok(PublishStep::Reply(pubresp(
                        kind,
                        packet_id,
                        ReasonCode::PAYLOAD_FORMAT_INVALID,
                    )))
                }
                _ => {
                    warn!(
                        client_id = %client_id,
                        peer = %conn.peer,
                        topic = %publish.topic,
                        qos = ?publish.qos,
                        "PUBLISH payload is not valid UTF-8 although its Payload Format Indicator is 1; closing with 0x99 (payload format invalid)"
                    );
                    Err(close_with(ReasonCode::PAYLOAD_FORMAT_INVALID))
                }
            };
        }

        let packet_id = publish.packet_id;
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        publish.properties.message_expiry_interval = None;
        publish.properties.topic_alias = None;
        let publication = Publication {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: publish.properties,
            expires_at,
            publisher: Some(client_id.clone()),
            log_offset: None,
        };
        Ok(PublishStep::Route {
            publication,
            ack: ack_kind.zip(packet_id),
            retain_ack_needed,
        })
    }

    /// Replies to a PUBLISH that the ACL denies. MQTT 5.0 clients get PUBACK or
    /// PUBREC 0x87 (Not authorized). MQTT 3.1.1 has no error code for
    /// either, and its spec lets a server acknowledge such a message and
    /// discard it, so 3.1.1 clients get a normal acknowledgement. A QoS 0
    /// message is dropped without an answer.
    fn deny_publish(
        &mut self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        publish: &Publish,
    ) -> Result<PublishStep, CloseRequest> {
        let v5 = conn.protocol == Protocol::V5;
        let (kind, packet_id) = match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(packet_id)) => (Packet::PubAck as fn(_) -> Packet, packet_id),
            (QoS::ExactlyOnce, Some(packet_id)) => {
                if !v5 {
                    // The PUBREL that follows must find the exchange.
                    let session = self.session_mut(client_id, conn)?;
                    session.incoming_qos2.insert(packet_id);
                    session.mark_dirty();
                }
                (Packet::PubRec as fn(_) -> Packet, packet_id)
            }
            _ => return Ok(PublishStep::Drop),
        };
        let reason = if v5 {
            ReasonCode::NOT_AUTHORIZED
        } else {
            ReasonCode::SUCCESS
        };
        Ok(PublishStep::Reply(pubresp(kind, packet_id, reason)))
    }

    /// Undoes the inbound QoS 2 bookkeeping of a PUBLISH that could not be
    /// stored, so the client's re-send after reconnecting is taken as new.
    pub(super) fn forget_incoming(&mut self, client_id: &Arc<str>, ack: PendingAck) {
        if let (Some(session), Some((_, packet_id))) = (self.sessions.get_mut(client_id), ack) {
            session.incoming_qos2.remove(&packet_id);
        }
    }

    /// Returns true when any subscription on any shard matches `topic`.
    pub(super) fn has_subscribers(&self, topic: &str) -> bool {
        self.interest.has_match(topic) || self.shared_interest.has_match(topic)
    }

    /// Routes an accepted publication at `now`; returns the PUBACK or
    /// PUBREC to send once the routing messages are out.
    pub(super) fn finish_publish(
        &mut self,
        protocol: Protocol,
        publication: Arc<Publication>,
        ack: PendingAck,
        retain_ack_needed: bool,
        now: Instant,
        outbox: &mut Outbox,
    ) -> Option<Packet> {
        let matched = self.route(&publication, retain_ack_needed, now, outbox);
        ack_for(protocol, ack, matched)
    }
}

/// Builds the acknowledgement owed for a routed PUBLISH, if any: Success,
/// or No Matching Subscribers to an MQTT 5 client when `matched` is false.
pub(super) fn ack_for(protocol: Protocol, ack: PendingAck, matched: bool) -> Option<Packet> {
    ack.map(|(kind, packet_id)| {
        let reason = if matched || protocol == Protocol::V311 {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        };
        pubresp(kind, packet_id, reason)
    })
}

/// The acknowledgement owed for an accepted PUBLISH: the packet kind
/// (PUBACK or PUBREC) and its packet id; `None` at QoS 0.
pub(super) type PendingAck = Option<(fn(PubResponse) -> Packet, PacketId)>;

/// What to do with a client's PUBLISH after its checks.
pub(super) enum PublishStep {
    /// Answer at once; nothing is routed.
    Reply(Packet),
    /// Discard the message without a reply (a denied QoS 0 PUBLISH).
    Drop,
    /// Route the publication, then send `ack` if any.
    Route {
        publication: Publication,
        ack: PendingAck,
        retain_ack_needed: bool,
    },
}
