//! Packets from a connected client other than SUBSCRIBE and UNSUBSCRIBE.

use super::*;

impl ShardState {
    pub(super) fn handle_control(
        &mut self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        packet: Packet,
    ) -> HandleResult {
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
            Packet::PubRec(rec) => {
                if !session.on_pubrec(rec.packet_id, rec.reason, now) {
                    // Tell the client the exchange is unknown so it can stop.
                    conn.send(&pubresp(
                        Packet::PubRel,
                        rec.packet_id,
                        ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                    ));
                }
            }
            Packet::PubRel(rel) => {
                let reason = if session.incoming_qos2.remove(&rel.packet_id) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                conn.send(&pubresp(Packet::PubComp, rel.packet_id, reason));
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
        Ok(())
    }

    /// Handles a client's PUBLISH up to routing; returns the PUBACK/PUBREC
    /// to send once the routing messages are out.
    pub(super) fn publish_from_client(
        &mut self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        mut publish: Publish,
        outbox: &mut Outbox,
    ) -> Result<Option<Packet>, CloseRequest> {
        let now = Instant::now();
        let receive_maximum = self.limits.receive_maximum;
        let session = self.session_mut(client_id, conn)?;
        if !publish.properties.subscription_identifiers.is_empty() {
            return Err(close_with(ReasonCode::PROTOCOL_ERROR));
        }
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
                    return Ok(Some(pubresp(
                        Packet::PubRec,
                        packet_id,
                        ReasonCode::SUCCESS,
                    )));
                }
                if session.incoming_qos2.len() >= usize::from(receive_maximum) {
                    return Err(close_with(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
                }
                session.incoming_qos2.insert(packet_id);
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
                    Ok(Some(pubresp(
                        kind,
                        packet_id,
                        ReasonCode::PAYLOAD_FORMAT_INVALID,
                    )))
                }
                _ => Err(close_with(ReasonCode::PAYLOAD_FORMAT_INVALID)),
            };
        }

        let packet_id = publish.packet_id;
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        publish.properties.message_expiry_interval = None;
        publish.properties.topic_alias = None;
        let publication = Arc::new(Publication {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: publish.properties,
            expires_at,
            publisher: Some(client_id.clone()),
        });
        let matched = self.route(&publication, retain_ack_needed, now, outbox);

        Ok(ack_kind.zip(packet_id).map(|(kind, packet_id)| {
            let reason = if matched || conn.protocol == Protocol::V311 {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_MATCHING_SUBSCRIBERS
            };
            pubresp(kind, packet_id, reason)
        }))
    }
}
