//! Builders for the packets tests send, with the usual defaults filled in.

use bytes::{Bytes, BytesMut};
use coremq_codec::{
    encode, Connect, Packet, PacketId, Properties, Protocol, PubResponse, Publish, QoS, ReasonCode,
    Subscribe, SubscriptionOptions, Unsubscribe, Will,
};

/// Keep alive of the baseline CONNECT, in seconds.
pub const BASELINE_KEEP_ALIVE: u16 = 60;

/// The baseline MQTT 5 CONNECT: Clean Start, keep alive 60 s, no
/// properties, no Will. For `t1` it encodes to
/// `10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 74 31`.
pub fn connect_v5(client_id: &str) -> Connect {
    Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: BASELINE_KEEP_ALIVE,
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

/// The MQTT 3.1.1 form of [`connect_v5`].
pub fn connect_v311(client_id: &str, clean_session: bool) -> Connect {
    Connect {
        protocol: Protocol::V311,
        clean_start: clean_session,
        ..connect_v5(client_id)
    }
}

/// A CONNECT that keeps its session `session_expiry` seconds after the
/// connection ends, with Clean Start as given.
pub fn connect_persistent(client_id: &str, clean_start: bool, session_expiry: u32) -> Connect {
    let mut connect = connect_v5(client_id);
    connect.clean_start = clean_start;
    connect.properties.session_expiry_interval = Some(session_expiry);
    connect
}

/// A Will on `topic` with `payload`, QoS 0, not retained, no properties.
pub fn will(topic: &str, payload: &[u8]) -> Will {
    Will {
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    }
}

/// A PUBLISH of `payload` to `topic`. QoS 1 and 2 get `packet_id`; QoS 0
/// ignores it.
pub fn publish(topic: &str, qos: QoS, packet_id: PacketId, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_string(),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A retained [`publish`].
pub fn retained(topic: &str, qos: QoS, packet_id: PacketId, payload: &[u8]) -> Publish {
    Publish {
        retain: true,
        ..publish(topic, qos, packet_id, payload)
    }
}

/// A SUBSCRIBE with `packet_id` and one entry per filter.
pub fn subscribe(packet_id: PacketId, filters: &[(&str, SubscriptionOptions)]) -> Subscribe {
    Subscribe {
        packet_id,
        properties: Properties::default(),
        filters: filters
            .iter()
            .map(|(filter, options)| (filter.to_string(), *options))
            .collect(),
    }
}

/// A SUBSCRIBE to one filter at `qos` carrying Subscription Identifier `id`.
pub fn subscribe_with_id(packet_id: PacketId, filter: &str, qos: QoS, id: u32) -> Subscribe {
    let mut packet = subscribe(packet_id, &[(filter, SubscriptionOptions::with_qos(qos))]);
    packet.properties.subscription_identifiers = vec![id];
    packet
}

/// An UNSUBSCRIBE with `packet_id` for `filters`.
pub fn unsubscribe(packet_id: PacketId, filters: &[&str]) -> Unsubscribe {
    Unsubscribe {
        packet_id,
        properties: Properties::default(),
        filters: filters.iter().map(|filter| filter.to_string()).collect(),
    }
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP body with Success.
pub fn pub_response(packet_id: PacketId) -> PubResponse {
    pub_response_with(packet_id, ReasonCode::SUCCESS)
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP body with `reason`.
pub fn pub_response_with(packet_id: PacketId, reason: ReasonCode) -> PubResponse {
    PubResponse {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

/// Encodes `packet` in `protocol`.
pub fn encode_packet(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    out.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::from_hex;

    #[test]
    fn baseline_connect_matches_reference_bytes() {
        let bytes = encode_packet(&Packet::Connect(Box::new(connect_v5("t1"))), Protocol::V5);
        assert_eq!(
            bytes,
            from_hex("10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 74 31")
        );
    }

    #[test]
    fn will_connect_matches_reference_bytes() {
        let mut connect = connect_v5("t1");
        connect.will = Some(will("w/t", b"bye"));
        let bytes = encode_packet(&Packet::Connect(Box::new(connect)), Protocol::V5);
        assert_eq!(
            bytes,
            from_hex(
                "10 1a 00 04 4d 51 54 54 05 06 00 3c 00 00 02 74 31 00 00 03 77 2f 74 00 03 62 79 65"
            )
        );
    }
}
