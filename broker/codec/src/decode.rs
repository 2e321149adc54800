//! Packet decoding: the fixed header, the size limit, and one function per
//! packet type.
//!
//! The decoder is pure and keeps no state, so it cannot check rules that need
//! the connection's history (a second CONNECT, an unmapped Topic Alias, the
//! Receive Maximum). Those belong to the broker.

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketId, Protocol, PubResponse, Publish, QoS,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use crate::properties::Properties;
use crate::property_codec::{decode_properties, PropertyContext};
use crate::reason::ReasonCode;
use crate::wire::{parse_varint, Reader};

/// What the decoder needs to know about the connection.
#[derive(Clone, Copy, Debug)]
pub struct DecodeContext {
    /// Protocol negotiated by CONNECT; before CONNECT, the CONNECT packet
    /// itself names it and this value is ignored for it.
    pub protocol: Protocol,
    /// Largest whole packet (fixed header included) accepted, in bytes.
    pub max_packet_size: u32,
    /// Topic Alias Maximum this side announced; an inbound PUBLISH with a
    /// Topic Alias of 0 or above it fails with `TopicAliasInvalid`.
    pub topic_alias_max: u16,
}

/// Decodes one packet from the front of `buf`, removing its bytes.
///
/// Returns `Ok(None)` and leaves `buf` untouched when it does not yet hold a
/// whole packet. Payloads are zero-copy slices of `buf`'s storage.
///
/// The first byte and the Remaining Length are checked as soon as they
/// arrive, so a packet with bad header flags, a Remaining Length longer than
/// 4 bytes, or a size above `ctx.max_packet_size` fails without waiting for
/// its body.
///
/// # Errors
///
/// Returns a [`DecodeError`] naming the reason code for a packet that breaks
/// the format or the protocol; the connection should then be closed. After
/// an error, `buf` may have lost the bytes of the failed packet.
pub fn decode(buf: &mut BytesMut, ctx: &DecodeContext) -> Result<Option<Packet>, DecodeError> {
    let Some(&first_byte) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first_byte >> 4;
    let flags = first_byte & 0x0F;
    check_header_flags(packet_type, flags, ctx.protocol)?;

    let Some((remaining_length, length_bytes)) = parse_varint(&buf[1..]).map_err(|_| {
        DecodeError::Malformed("remaining length is longer than 4 bytes".to_string())
    })?
    else {
        return Ok(None);
    };

    let header_len = 1 + length_bytes;
    let total = header_len as u64 + u64::from(remaining_length);
    if total > u64::from(ctx.max_packet_size) {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: ctx.max_packet_size,
        });
    }
    let total = total as usize;
    if buf.len() < total {
        return Ok(None);
    }

    let frame = buf.split_to(total).freeze();
    let body = frame.slice(header_len..);
    decode_body(packet_type, flags, body, ctx).map(Some)
}

/// Checks the four flag bits of the fixed header. Only PUBLISH carries
/// information there. PUBREL, SUBSCRIBE and UNSUBSCRIBE require 0010 and
/// every other packet 0000. Packet type 0 is reserved, and AUTH (15) exists
/// only in MQTT 5.0.
fn check_header_flags(packet_type: u8, flags: u8, protocol: Protocol) -> Result<(), DecodeError> {
    let required = match packet_type {
        0 => {
            return Err(DecodeError::Malformed(
                "packet type 0 is reserved".to_string(),
            ))
        }
        3 => return check_publish_flags(flags),
        6 | 8 | 10 => 0b0010,
        15 if protocol == Protocol::V311 => {
            return Err(DecodeError::Malformed(
                "AUTH (packet type 15) does not exist in MQTT 3.1.1".to_string(),
            ))
        }
        _ => 0b0000,
    };
    if flags != required {
        return Err(DecodeError::Malformed(format!(
            "{}: fixed header flags are {flags:04b}, but they must be {required:04b}",
            packet_name(packet_type)
        )));
    }
    Ok(())
}

fn check_publish_flags(flags: u8) -> Result<(), DecodeError> {
    let qos = (flags >> 1) & 0b11;
    if qos == 3 {
        return Err(DecodeError::Malformed(
            "PUBLISH: QoS is 3, which is not a valid QoS".to_string(),
        ));
    }
    let dup = flags & 0b1000 != 0;
    if dup && qos == 0 {
        return Err(DecodeError::Malformed(
            "PUBLISH: DUP is set on a QoS 0 message".to_string(),
        ));
    }
    Ok(())
}

fn packet_name(packet_type: u8) -> &'static str {
    match packet_type {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved packet type",
    }
}

fn decode_body(
    packet_type: u8,
    flags: u8,
    body: Bytes,
    ctx: &DecodeContext,
) -> Result<Packet, DecodeError> {
    let mut reader = Reader::new(body, packet_name(packet_type));
    let protocol = ctx.protocol;
    let packet = match packet_type {
        1 => Packet::Connect(Box::new(decode_connect(&mut reader)?)),
        2 => Packet::ConnAck(decode_connack(&mut reader, protocol)?),
        3 => Packet::Publish(decode_publish(&mut reader, flags, ctx)?),
        4 => Packet::PubAck(decode_pub_response(&mut reader, protocol)?),
        5 => Packet::PubRec(decode_pub_response(&mut reader, protocol)?),
        6 => Packet::PubRel(decode_pub_response(&mut reader, protocol)?),
        7 => Packet::PubComp(decode_pub_response(&mut reader, protocol)?),
        8 => Packet::Subscribe(decode_subscribe(&mut reader, protocol)?),
        9 => Packet::SubAck(decode_suback(&mut reader, protocol)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(&mut reader, protocol)?),
        11 => Packet::UnsubAck(decode_unsuback(&mut reader, protocol)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => {
            let (reason, properties) =
                decode_reason_and_properties(&mut reader, protocol, PropertyContext::Disconnect)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        15 => {
            let (reason, properties) =
                decode_reason_and_properties(&mut reader, protocol, PropertyContext::Auth)?;
            Packet::Auth(Auth { reason, properties })
        }
        _ => unreachable!("check_header_flags rejects packet type {packet_type}"),
    };
    reader.expect_end()?;
    Ok(packet)
}

/// Reads a Packet Identifier, which must not be 0 in any packet.
fn read_packet_id(reader: &mut Reader) -> Result<PacketId, DecodeError> {
    let packet_id = reader.read_u16("packet identifier")?;
    if packet_id == 0 {
        return Err(DecodeError::Protocol(format!(
            "{}: packet identifier is 0, but it must be 1 or more",
            reader.packet()
        )));
    }
    Ok(packet_id)
}

fn read_properties_if_v5(
    reader: &mut Reader,
    protocol: Protocol,
    context: PropertyContext,
) -> Result<Properties, DecodeError> {
    match protocol {
        Protocol::V5 => decode_properties(reader, context),
        Protocol::V311 => Ok(Properties::default()),
    }
}

fn decode_connect(reader: &mut Reader) -> Result<Connect, DecodeError> {
    let name = reader.read_binary("protocol name")?;
    let level = reader.read_u8("protocol level")?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        _ => {
            return Err(DecodeError::UnsupportedProtocol {
                name: String::from_utf8_lossy(&name).into_owned(),
                level,
            })
        }
    };

    let flags = reader.read_u8("connect flags")?;
    if flags & 0b0000_0001 != 0 {
        return Err(DecodeError::Malformed(
            "CONNECT: reserved connect flag (bit 0) is set".to_string(),
        ));
    }
    let clean_start = flags & 0b0000_0010 != 0;
    let will_flag = flags & 0b0000_0100 != 0;
    let will_qos_bits = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    let password_flag = flags & 0b0100_0000 != 0;
    let username_flag = flags & 0b1000_0000 != 0;

    let will_qos = QoS::from_u8(will_qos_bits).ok_or_else(|| {
        DecodeError::Malformed("CONNECT: will QoS is 3, which is not a valid QoS".to_string())
    })?;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "CONNECT: will QoS or will retain is set without the will flag".to_string(),
        ));
    }
    if protocol == Protocol::V311 && password_flag && !username_flag {
        return Err(DecodeError::Malformed(
            "CONNECT: MQTT 3.1.1 forbids a password without a user name".to_string(),
        ));
    }

    let keep_alive = reader.read_u16("keep alive")?;
    let properties = read_properties_if_v5(reader, protocol, PropertyContext::Connect)?;
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "CONNECT: authentication data without an authentication method".to_string(),
        ));
    }
    let client_id = reader.read_string("client identifier")?;

    let will = if will_flag {
        let will_properties = read_properties_if_v5(reader, protocol, PropertyContext::Will)?;
        let topic = reader.read_string("will topic")?;
        if let Err(why) = crate::topic::validate_topic_name(&topic) {
            return Err(DecodeError::TopicNameInvalid(format!(
                "CONNECT: will topic {topic:?} is invalid: {why}"
            )));
        }
        let payload = reader.read_binary("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties: will_properties,
        })
    } else {
        None
    };

    let username = if username_flag {
        Some(reader.read_string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(reader.read_binary("password")?)
    } else {
        None
    };

    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Maps a 3.1.1 CONNACK return code to the MQTT 5.0 reason code that means
/// the same, or `None` for the reserved values 6 to 255.
fn connack_return_code_to_reason(return_code: u8) -> Option<ReasonCode> {
    let reason = match return_code {
        0 => ReasonCode::SUCCESS,
        1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        3 => ReasonCode::SERVER_UNAVAILABLE,
        4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        5 => ReasonCode::NOT_AUTHORIZED,
        _ => return None,
    };
    Some(reason)
}

fn decode_connack(reader: &mut Reader, protocol: Protocol) -> Result<ConnAck, DecodeError> {
    let flags = reader.read_u8("connect acknowledge flags")?;
    if flags & 0b1111_1110 != 0 {
        return Err(DecodeError::Malformed(format!(
            "CONNACK: reserved acknowledge flags are set ({flags:08b})"
        )));
    }
    let session_present = flags & 1 != 0;
    let code = reader.read_u8("reason code")?;
    let reason = match protocol {
        Protocol::V5 => ReasonCode(code),
        Protocol::V311 => connack_return_code_to_reason(code).ok_or_else(|| {
            DecodeError::Malformed(format!("CONNACK: return code {code} is reserved"))
        })?,
    };
    let properties = read_properties_if_v5(reader, protocol, PropertyContext::ConnAck)?;
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

fn decode_publish(
    reader: &mut Reader,
    flags: u8,
    ctx: &DecodeContext,
) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0b11).expect("check_publish_flags rejected QoS 3");
    let retain = flags & 0b0001 != 0;

    let topic = reader.read_string("topic name")?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(read_packet_id(reader)?),
    };
    let properties = read_properties_if_v5(reader, ctx.protocol, PropertyContext::Publish)?;

    if let Some(alias) = properties.topic_alias {
        if alias == 0 || alias > ctx.topic_alias_max {
            return Err(DecodeError::TopicAliasInvalid {
                alias,
                max: ctx.topic_alias_max,
            });
        }
    }
    if topic.is_empty() {
        if properties.topic_alias.is_none() {
            return Err(DecodeError::Protocol(
                "PUBLISH: topic name is empty and there is no topic alias".to_string(),
            ));
        }
    } else if let Err(why) = crate::topic::validate_topic_name(&topic) {
        return Err(DecodeError::TopicNameInvalid(format!(
            "PUBLISH: topic name {topic:?} is invalid: {why}"
        )));
    }

    let payload = reader.read_rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

/// Decodes PUBACK, PUBREC, PUBREL or PUBCOMP. In MQTT 5.0 the reason code
/// may be omitted (Remaining Length 2, meaning Success) and so may the
/// properties (Remaining Length 3).
fn decode_pub_response(
    reader: &mut Reader,
    protocol: Protocol,
) -> Result<PubResponse, DecodeError> {
    let packet_id = read_packet_id(reader)?;
    let (reason, properties) =
        decode_reason_and_properties(reader, protocol, PropertyContext::PubResponse)?;
    Ok(PubResponse {
        packet_id,
        reason,
        properties,
    })
}

/// Reads the optional reason code and properties that end PUBACK, PUBREC,
/// PUBREL, PUBCOMP, DISCONNECT and AUTH. MQTT 3.1.1 has neither, so the
/// result is Success with no properties and any byte left is malformed.
fn decode_reason_and_properties(
    reader: &mut Reader,
    protocol: Protocol,
    context: PropertyContext,
) -> Result<(ReasonCode, Properties), DecodeError> {
    if protocol == Protocol::V311 || reader.remaining() == 0 {
        return Ok((ReasonCode::SUCCESS, Properties::default()));
    }
    let reason = ReasonCode(reader.read_u8("reason code")?);
    if reader.remaining() == 0 {
        return Ok((reason, Properties::default()));
    }
    let properties = decode_properties(reader, context)?;
    Ok((reason, properties))
}

fn decode_subscribe(reader: &mut Reader, protocol: Protocol) -> Result<Subscribe, DecodeError> {
    let packet_id = read_packet_id(reader)?;
    let properties = read_properties_if_v5(reader, protocol, PropertyContext::Subscribe)?;

    let mut filters = Vec::new();
    while reader.remaining() > 0 {
        // A filter that breaks the wildcard rules is kept as sent, because
        // the broker rejects it with SUBACK 0x8F instead of closing.
        let filter = reader.read_string("topic filter")?;
        let options =
            decode_subscription_options(reader.read_u8("subscription options")?, protocol)?;
        if options.no_local && crate::topic::parse_shared(&filter).is_some() {
            return Err(DecodeError::Protocol(format!(
                "SUBSCRIBE: No Local is set on the shared subscription {filter:?}"
            )));
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol(
            "SUBSCRIBE: the packet contains no topic filter".to_string(),
        ));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

fn decode_subscription_options(
    byte: u8,
    protocol: Protocol,
) -> Result<SubscriptionOptions, DecodeError> {
    let reserved_mask = match protocol {
        Protocol::V5 => 0b1100_0000,
        Protocol::V311 => 0b1111_1100,
    };
    if byte & reserved_mask != 0 {
        return Err(DecodeError::Malformed(format!(
            "SUBSCRIBE: reserved bits are set in subscription options {byte:08b}"
        )));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or_else(|| {
        DecodeError::Malformed(
            "SUBSCRIBE: requested QoS is 3, which is not a valid QoS".to_string(),
        )
    })?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => {
            return Err(DecodeError::Protocol(
                "SUBSCRIBE: retain handling is 3, which is not a valid value".to_string(),
            ))
        }
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0000_0100 != 0,
        retain_as_published: byte & 0b0000_1000 != 0,
        retain_handling,
    })
}

fn decode_suback(reader: &mut Reader, protocol: Protocol) -> Result<SubAck, DecodeError> {
    let packet_id = read_packet_id(reader)?;
    let properties = read_properties_if_v5(reader, protocol, PropertyContext::SubAck)?;

    let mut reasons = Vec::with_capacity(reader.remaining());
    while reader.remaining() > 0 {
        let code = reader.read_u8("reason code")?;
        if protocol == Protocol::V311 && !matches!(code, 0 | 1 | 2 | 0x80) {
            return Err(DecodeError::Malformed(format!(
                "SUBACK: return code 0x{code:02X} is not 0, 1, 2 or 0x80"
            )));
        }
        reasons.push(ReasonCode(code));
    }
    if reasons.is_empty() {
        return Err(DecodeError::Protocol(
            "SUBACK: the packet contains no reason code".to_string(),
        ));
    }
    Ok(SubAck {
        packet_id,
        properties,
        reasons,
    })
}

fn decode_unsubscribe(reader: &mut Reader, protocol: Protocol) -> Result<Unsubscribe, DecodeError> {
    let packet_id = read_packet_id(reader)?;
    let properties = read_properties_if_v5(reader, protocol, PropertyContext::Unsubscribe)?;

    let mut filters = Vec::new();
    while reader.remaining() > 0 {
        filters.push(reader.read_string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol(
            "UNSUBSCRIBE: the packet contains no topic filter".to_string(),
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

fn decode_unsuback(reader: &mut Reader, protocol: Protocol) -> Result<UnsubAck, DecodeError> {
    let packet_id = read_packet_id(reader)?;
    if protocol == Protocol::V311 {
        return Ok(UnsubAck {
            packet_id,
            properties: Properties::default(),
            reasons: Vec::new(),
        });
    }

    let properties = decode_properties(reader, PropertyContext::UnsubAck)?;
    let mut reasons = Vec::with_capacity(reader.remaining());
    while reader.remaining() > 0 {
        reasons.push(ReasonCode(reader.read_u8("reason code")?));
    }
    if reasons.is_empty() {
        return Err(DecodeError::Protocol(
            "UNSUBACK: the packet contains no reason code".to_string(),
        ));
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        reasons,
    })
}
