//! Packet encoding, and in-place packet identifier patching for PUBLISH
//! frames that are encoded once and sent to many subscribers.
//!
//! Every encoder computes the Remaining Length first and writes straight
//! into the output buffer, with no intermediate buffer per field.

use bytes::{BufMut, BytesMut};

use crate::packet::{
    ConnAck, Connect, Packet, Protocol, PubResponse, Publish, QoS, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::properties::Properties;
use crate::property_codec::{encode_properties, property_section_len};
use crate::reason::ReasonCode;
use crate::wire::{parse_varint, put_binary, put_string, put_varint, varint_len};

/// Appends `packet` to `out` in the wire format of `protocol`.
///
/// CONNECT is written in the version its own `protocol` field names, the
/// same rule the decoder follows. For MQTT 3.1.1, properties are dropped and
/// reason codes become return codes: CONNACK 0x84 becomes 1, 0x85 becomes 2,
/// 0x88 and 0x89 become 3, 0x86 becomes 4, and any other error becomes 5
/// (not authorized). A SUBACK error code becomes 0x80. AUTH has no 3.1.1
/// form, so nothing is written for it.
///
/// MQTT 5.0 acknowledgements use the short forms when allowed: PUBACK,
/// PUBREC, PUBREL and PUBCOMP with Success and no properties have a
/// Remaining Length of 2, and DISCONNECT and AUTH with Success and no
/// properties a Remaining Length of 0.
///
/// A QoS 1 or QoS 2 PUBLISH whose `packet_id` is `None` gets identifier 0
/// as a placeholder for [`patch_packet_id`].
///
/// The caller keeps strings, properties and the packet within the limits
/// of the format (65,535 bytes per string, 268,435,455 bytes per packet).
/// Debug builds assert them.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) {
    if matches!(packet, Packet::Auth(_)) && protocol == Protocol::V311 {
        return;
    }
    let remaining_length = body_len(packet, protocol);
    out.reserve(1 + varint_len(remaining_length) + remaining_length);

    match packet {
        Packet::Connect(connect) => {
            out.put_u8(0x10);
            put_varint(out, remaining_length);
            encode_connect(connect, out);
        }
        Packet::ConnAck(connack) => {
            out.put_u8(0x20);
            put_varint(out, remaining_length);
            encode_connack(connack, protocol, out);
        }
        Packet::Publish(publish) => {
            out.put_u8(publish_first_byte(publish));
            put_varint(out, remaining_length);
            encode_publish(publish, protocol, out);
        }
        Packet::PubAck(response) => encode_pub_response(0x40, response, protocol, out),
        Packet::PubRec(response) => encode_pub_response(0x50, response, protocol, out),
        Packet::PubRel(response) => encode_pub_response(0x62, response, protocol, out),
        Packet::PubComp(response) => encode_pub_response(0x70, response, protocol, out),
        Packet::Subscribe(subscribe) => {
            out.put_u8(0x82);
            put_varint(out, remaining_length);
            encode_subscribe(subscribe, protocol, out);
        }
        Packet::SubAck(suback) => {
            out.put_u8(0x90);
            put_varint(out, remaining_length);
            encode_suback(suback, protocol, out);
        }
        Packet::Unsubscribe(unsubscribe) => {
            out.put_u8(0xA2);
            put_varint(out, remaining_length);
            encode_unsubscribe(unsubscribe, protocol, out);
        }
        Packet::UnsubAck(unsuback) => {
            out.put_u8(0xB0);
            put_varint(out, remaining_length);
            encode_unsuback(unsuback, protocol, out);
        }
        Packet::PingReq => {
            out.put_u8(0xC0);
            out.put_u8(0);
        }
        Packet::PingResp => {
            out.put_u8(0xD0);
            out.put_u8(0);
        }
        Packet::Disconnect(disconnect) => {
            out.put_u8(0xE0);
            put_varint(out, remaining_length);
            encode_reason_and_properties(disconnect.reason, &disconnect.properties, protocol, out);
        }
        Packet::Auth(auth) => {
            out.put_u8(0xF0);
            put_varint(out, remaining_length);
            encode_reason_and_properties(auth.reason, &auth.properties, protocol, out);
        }
    }
}

/// Size in bytes of `packet` once encoded, fixed header included. Always
/// equal to the number of bytes [`encode`] appends.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    if matches!(packet, Packet::Auth(_)) && protocol == Protocol::V311 {
        return 0;
    }
    let remaining_length = body_len(packet, protocol);
    1 + varint_len(remaining_length) + remaining_length
}

/// Returns the offset of the packet identifier inside an encoded QoS 1 or
/// QoS 2 PUBLISH frame, or `None` when `frame` is not such a frame or ends
/// before the identifier.
///
/// The identifier sits right after the fixed header and the topic name.
pub fn publish_packet_id_offset(frame: &[u8]) -> Option<usize> {
    let first_byte = *frame.first()?;
    let qos = (first_byte >> 1) & 0b11;
    if first_byte >> 4 != 3 || qos == 0 || qos == 3 {
        return None;
    }
    let (_, length_bytes) = parse_varint(frame.get(1..)?).ok()??;
    let topic_at = 1 + length_bytes;
    let topic_len = u16::from_be_bytes([*frame.get(topic_at)?, *frame.get(topic_at + 1)?]);
    let offset = topic_at + 2 + usize::from(topic_len);
    if offset + 2 > frame.len() {
        return None;
    }
    Some(offset)
}

/// Rewrites the packet identifier of an encoded QoS 1 or QoS 2 PUBLISH frame
/// in place, so that one encoded frame can go to many subscribers.
///
/// # Panics
///
/// Panics when `frame` is not a complete QoS 1 or QoS 2 PUBLISH frame or
/// `packet_id` is 0, because sending such a frame would break the session.
pub fn patch_packet_id(frame: &mut [u8], packet_id: u16) {
    assert!(packet_id != 0, "packet identifier 0 is not valid");
    let offset = publish_packet_id_offset(frame)
        .expect("patch_packet_id needs an encoded QoS 1 or QoS 2 PUBLISH frame");
    frame[offset..offset + 2].copy_from_slice(&packet_id.to_be_bytes());
}

/// Remaining Length of `packet`: everything after the fixed header.
fn body_len(packet: &Packet, protocol: Protocol) -> usize {
    let length = match packet {
        Packet::Connect(connect) => connect_body_len(connect),
        Packet::ConnAck(connack) => 2 + properties_len_if_v5(&connack.properties, protocol),
        Packet::Publish(publish) => publish_body_len(publish, protocol),
        Packet::PubAck(response)
        | Packet::PubRec(response)
        | Packet::PubRel(response)
        | Packet::PubComp(response) => {
            2 + reason_and_properties_len(response.reason, &response.properties, protocol)
        }
        Packet::Subscribe(subscribe) => {
            let filters: usize = subscribe
                .filters
                .iter()
                .map(|(filter, _)| 2 + filter.len() + 1)
                .sum();
            2 + properties_len_if_v5(&subscribe.properties, protocol) + filters
        }
        Packet::SubAck(suback) => {
            2 + properties_len_if_v5(&suback.properties, protocol) + suback.reasons.len()
        }
        Packet::Unsubscribe(unsubscribe) => {
            let filters: usize = unsubscribe
                .filters
                .iter()
                .map(|filter| 2 + filter.len())
                .sum();
            2 + properties_len_if_v5(&unsubscribe.properties, protocol) + filters
        }
        Packet::UnsubAck(unsuback) => match protocol {
            Protocol::V5 => 2 + property_section_len(&unsuback.properties) + unsuback.reasons.len(),
            Protocol::V311 => 2,
        },
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(disconnect) => {
            reason_and_properties_len(disconnect.reason, &disconnect.properties, protocol)
        }
        Packet::Auth(auth) => reason_and_properties_len(auth.reason, &auth.properties, protocol),
    };
    debug_assert!(
        length <= crate::MAX_VARIABLE_BYTE_INTEGER as usize,
        "{} of {length} bytes exceeds the maximum remaining length",
        packet.name()
    );
    length
}

fn properties_len_if_v5(properties: &Properties, protocol: Protocol) -> usize {
    match protocol {
        Protocol::V5 => property_section_len(properties),
        Protocol::V311 => 0,
    }
}

/// Length of the optional reason code and properties that end PUBACK,
/// PUBREC, PUBREL, PUBCOMP, DISCONNECT and AUTH, using the short forms.
fn reason_and_properties_len(
    reason: ReasonCode,
    properties: &Properties,
    protocol: Protocol,
) -> usize {
    if protocol == Protocol::V311 {
        return 0;
    }
    if !properties.is_empty() {
        return 1 + property_section_len(properties);
    }
    if reason == ReasonCode::SUCCESS {
        0
    } else {
        1
    }
}

fn encode_reason_and_properties(
    reason: ReasonCode,
    properties: &Properties,
    protocol: Protocol,
    out: &mut BytesMut,
) {
    if protocol == Protocol::V311 {
        return;
    }
    if !properties.is_empty() {
        out.put_u8(reason.0);
        encode_properties(properties, out);
    } else if reason != ReasonCode::SUCCESS {
        out.put_u8(reason.0);
    }
}

fn encode_properties_if_v5(properties: &Properties, protocol: Protocol, out: &mut BytesMut) {
    if protocol == Protocol::V5 {
        encode_properties(properties, out);
    }
}

fn connect_body_len(connect: &Connect) -> usize {
    let protocol = connect.protocol;
    // Protocol name "MQTT" with its length, level, flags and keep alive.
    let mut length = 6 + 1 + 1 + 2;
    length += properties_len_if_v5(&connect.properties, protocol);
    length += 2 + connect.client_id.len();
    if let Some(will) = &connect.will {
        length += properties_len_if_v5(&will.properties, protocol);
        length += 2 + will.topic.len();
        length += 2 + will.payload.len();
    }
    if let Some(username) = &connect.username {
        length += 2 + username.len();
    }
    if let Some(password) = &connect.password {
        length += 2 + password.len();
    }
    length
}

fn encode_connect(connect: &Connect, out: &mut BytesMut) {
    let protocol = connect.protocol;
    put_string(out, "MQTT");
    out.put_u8(protocol.level());

    let mut flags = 0u8;
    if connect.clean_start {
        flags |= 0b0000_0010;
    }
    if let Some(will) = &connect.will {
        flags |= 0b0000_0100;
        flags |= (will.qos as u8) << 3;
        if will.retain {
            flags |= 0b0010_0000;
        }
    }
    if connect.password.is_some() {
        flags |= 0b0100_0000;
    }
    if connect.username.is_some() {
        flags |= 0b1000_0000;
    }
    out.put_u8(flags);
    out.put_u16(connect.keep_alive);
    encode_properties_if_v5(&connect.properties, protocol, out);

    put_string(out, &connect.client_id);
    if let Some(will) = &connect.will {
        encode_properties_if_v5(&will.properties, protocol, out);
        put_string(out, &will.topic);
        put_binary(out, &will.payload);
    }
    if let Some(username) = &connect.username {
        put_string(out, username);
    }
    if let Some(password) = &connect.password {
        put_binary(out, password);
    }
}

/// Maps an MQTT 5.0 CONNACK reason code to the nearest 3.1.1 return code.
fn connack_return_code(reason: ReasonCode) -> u8 {
    match reason {
        ReasonCode::SUCCESS => 0,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => 1,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => 2,
        ReasonCode::SERVER_UNAVAILABLE
        | ReasonCode::SERVER_BUSY
        | ReasonCode::QUOTA_EXCEEDED
        | ReasonCode::CONNECTION_RATE_EXCEEDED => 3,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD => 4,
        _ => 5,
    }
}

fn encode_connack(connack: &ConnAck, protocol: Protocol, out: &mut BytesMut) {
    out.put_u8(u8::from(connack.session_present));
    match protocol {
        Protocol::V5 => {
            out.put_u8(connack.reason.0);
            encode_properties(&connack.properties, out);
        }
        Protocol::V311 => out.put_u8(connack_return_code(connack.reason)),
    }
}

fn publish_first_byte(publish: &Publish) -> u8 {
    let mut byte = 0x30 | ((publish.qos as u8) << 1);
    if publish.dup {
        byte |= 0b1000;
    }
    if publish.retain {
        byte |= 0b0001;
    }
    byte
}

fn publish_body_len(publish: &Publish, protocol: Protocol) -> usize {
    let packet_id_len = if publish.qos == QoS::AtMostOnce { 0 } else { 2 };
    2 + publish.topic.len()
        + packet_id_len
        + properties_len_if_v5(&publish.properties, protocol)
        + publish.payload.len()
}

fn encode_publish(publish: &Publish, protocol: Protocol, out: &mut BytesMut) {
    put_string(out, &publish.topic);
    if publish.qos != QoS::AtMostOnce {
        // Without an identifier, 0 is written as a placeholder that
        // `patch_packet_id` fills in later.
        out.put_u16(publish.packet_id.unwrap_or(0));
    }
    encode_properties_if_v5(&publish.properties, protocol, out);
    out.put_slice(&publish.payload);
}

fn encode_pub_response(
    first_byte: u8,
    response: &PubResponse,
    protocol: Protocol,
    out: &mut BytesMut,
) {
    let remaining_length =
        2 + reason_and_properties_len(response.reason, &response.properties, protocol);
    out.put_u8(first_byte);
    put_varint(out, remaining_length);
    out.put_u16(response.packet_id);
    encode_reason_and_properties(response.reason, &response.properties, protocol, out);
}

fn subscription_options_byte(options: &SubscriptionOptions, protocol: Protocol) -> u8 {
    let mut byte = options.qos as u8;
    if protocol == Protocol::V5 {
        if options.no_local {
            byte |= 0b0000_0100;
        }
        if options.retain_as_published {
            byte |= 0b0000_1000;
        }
        byte |= (options.retain_handling as u8) << 4;
    }
    byte
}

fn encode_subscribe(subscribe: &Subscribe, protocol: Protocol, out: &mut BytesMut) {
    out.put_u16(subscribe.packet_id);
    encode_properties_if_v5(&subscribe.properties, protocol, out);
    for (filter, options) in &subscribe.filters {
        put_string(out, filter);
        out.put_u8(subscription_options_byte(options, protocol));
    }
}

fn encode_suback(suback: &SubAck, protocol: Protocol, out: &mut BytesMut) {
    out.put_u16(suback.packet_id);
    encode_properties_if_v5(&suback.properties, protocol, out);
    for reason in &suback.reasons {
        let code = match protocol {
            Protocol::V5 => reason.0,
            Protocol::V311 if reason.0 <= 2 => reason.0,
            Protocol::V311 => 0x80,
        };
        out.put_u8(code);
    }
}

fn encode_unsubscribe(unsubscribe: &Unsubscribe, protocol: Protocol, out: &mut BytesMut) {
    out.put_u16(unsubscribe.packet_id);
    encode_properties_if_v5(&unsubscribe.properties, protocol, out);
    for filter in &unsubscribe.filters {
        put_string(out, filter);
    }
}

fn encode_unsuback(unsuback: &UnsubAck, protocol: Protocol, out: &mut BytesMut) {
    out.put_u16(unsuback.packet_id);
    if protocol == Protocol::V5 {
        encode_properties(&unsuback.properties, out);
        for reason in &unsuback.reasons {
            out.put_u8(reason.0);
        }
    }
}
