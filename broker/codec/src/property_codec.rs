//! Wire form of MQTT 5.0 properties: which packet may carry which property,
//! value checks, and the encoder's length computation.

use bytes::{BufMut, BytesMut};

use crate::error::DecodeError;
use crate::properties::Properties;
use crate::wire::{put_binary, put_string, put_varint, varint_len, Reader};
use crate::MAX_VARIABLE_BYTE_INTEGER;

/// The property section being read or written. Each variant is one bit, so a
/// property's allowed places fit in one mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub(crate) enum PropertyContext {
    Connect = 1 << 0,
    ConnAck = 1 << 1,
    Publish = 1 << 2,
    Will = 1 << 3,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    PubResponse = 1 << 4,
    Subscribe = 1 << 5,
    SubAck = 1 << 6,
    Unsubscribe = 1 << 7,
    UnsubAck = 1 << 8,
    Disconnect = 1 << 9,
    Auth = 1 << 10,
}

const CONNECT: u16 = PropertyContext::Connect as u16;
const CONNACK: u16 = PropertyContext::ConnAck as u16;
const PUBLISH: u16 = PropertyContext::Publish as u16;
const WILL: u16 = PropertyContext::Will as u16;
const PUB_RESPONSE: u16 = PropertyContext::PubResponse as u16;
const SUBSCRIBE: u16 = PropertyContext::Subscribe as u16;
const SUBACK: u16 = PropertyContext::SubAck as u16;
const UNSUBSCRIBE: u16 = PropertyContext::Unsubscribe as u16;
const UNSUBACK: u16 = PropertyContext::UnsubAck as u16;
const DISCONNECT: u16 = PropertyContext::Disconnect as u16;
const AUTH: u16 = PropertyContext::Auth as u16;
const EVERY_CONTEXT: u16 = CONNECT
    | CONNACK
    | PUBLISH
    | WILL
    | PUB_RESPONSE
    | SUBSCRIBE
    | SUBACK
    | UNSUBSCRIBE
    | UNSUBACK
    | DISCONNECT
    | AUTH;

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// Packets (as a context mask) that may carry property `id`, from the
/// property table of MQTT 5.0 section 2.2.2.2, or `None` for an identifier
/// the specification does not define.
fn allowed_contexts(id: u8) -> Option<u16> {
    let mask = match id {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => PUBLISH | WILL,
        SUBSCRIPTION_IDENTIFIER => PUBLISH | SUBSCRIBE,
        SESSION_EXPIRY_INTERVAL => CONNECT | CONNACK | DISCONNECT,
        ASSIGNED_CLIENT_IDENTIFIER | SERVER_KEEP_ALIVE | RESPONSE_INFORMATION => CONNACK,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => CONNECT | CONNACK | AUTH,
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => CONNECT,
        WILL_DELAY_INTERVAL => WILL,
        SERVER_REFERENCE => CONNACK | DISCONNECT,
        REASON_STRING => CONNACK | PUB_RESPONSE | SUBACK | UNSUBACK | DISCONNECT | AUTH,
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => CONNECT | CONNACK,
        TOPIC_ALIAS => PUBLISH,
        MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => CONNACK,
        USER_PROPERTY => EVERY_CONTEXT,
        _ => return None,
    };
    Some(mask)
}

fn protocol_error(reader: &Reader, message: String) -> DecodeError {
    DecodeError::Protocol(format!("{}: {message}", reader.packet()))
}

fn read_bool(reader: &mut Reader, name: &str) -> Result<bool, DecodeError> {
    match reader.read_u8(name)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(protocol_error(
            reader,
            format!("{name} is {other}, but only 0 and 1 are valid"),
        )),
    }
}

/// Reads a Property Length and the properties it covers.
///
/// # Errors
///
/// Malformed Packet for an unknown identifier, a property the packet may not
/// carry, or a length that does not fit. Protocol Error for a repeated
/// property (User Property may always repeat, and Subscription Identifier
/// may repeat in PUBLISH) and for values the specification forbids, such as
/// Receive Maximum 0.
pub(crate) fn decode_properties(
    reader: &mut Reader,
    context: PropertyContext,
) -> Result<Properties, DecodeError> {
    let length = reader.read_varint("property length")? as usize;
    let mut section = reader.sub_reader(length, "properties")?;
    let mut properties = Properties::default();
    let mut seen: u64 = 0;

    while section.remaining() > 0 {
        let id = section.read_varint("property identifier")?;
        let id = u8::try_from(id).map_err(|_| {
            DecodeError::Malformed(format!(
                "{}: unknown property identifier 0x{id:X}",
                section.packet()
            ))
        })?;
        let allowed = allowed_contexts(id).ok_or_else(|| {
            DecodeError::Malformed(format!(
                "{}: unknown property identifier 0x{id:02X}",
                section.packet()
            ))
        })?;
        if allowed & context as u16 == 0 {
            return Err(DecodeError::Malformed(format!(
                "{}: property 0x{id:02X} is not allowed in {context:?} properties",
                section.packet()
            )));
        }

        let repeatable = id == USER_PROPERTY
            || (id == SUBSCRIPTION_IDENTIFIER && context == PropertyContext::Publish);
        let bit = 1u64 << id;
        if seen & bit != 0 && !repeatable {
            return Err(protocol_error(
                &section,
                format!("property 0x{id:02X} appears more than once"),
            ));
        }
        seen |= bit;

        read_property_value(&mut section, id, &mut properties)?;
    }
    Ok(properties)
}

/// Reads the value of property `id` into `properties`, checking its range.
fn read_property_value(
    reader: &mut Reader,
    id: u8,
    properties: &mut Properties,
) -> Result<(), DecodeError> {
    match id {
        PAYLOAD_FORMAT_INDICATOR => {
            let value = reader.read_u8("payload format indicator")?;
            if value > 1 {
                return Err(protocol_error(
                    reader,
                    format!("payload format indicator is {value}, but only 0 and 1 are valid"),
                ));
            }
            properties.payload_format_indicator = Some(value);
        }
        MESSAGE_EXPIRY_INTERVAL => {
            properties.message_expiry_interval = Some(reader.read_u32("message expiry interval")?)
        }
        CONTENT_TYPE => properties.content_type = Some(reader.read_string("content type")?),
        RESPONSE_TOPIC => {
            let topic = reader.read_string("response topic")?;
            if let Err(why) = crate::topic::validate_topic_name(&topic) {
                return Err(protocol_error(
                    reader,
                    format!("response topic {topic:?} is invalid: {why}"),
                ));
            }
            properties.response_topic = Some(topic);
        }
        CORRELATION_DATA => {
            properties.correlation_data = Some(reader.read_binary("correlation data")?)
        }
        SUBSCRIPTION_IDENTIFIER => {
            let value = reader.read_varint("subscription identifier")?;
            if value == 0 {
                return Err(protocol_error(
                    reader,
                    "subscription identifier is 0, but it must be 1 or more".to_string(),
                ));
            }
            properties.subscription_identifiers.push(value);
        }
        SESSION_EXPIRY_INTERVAL => {
            properties.session_expiry_interval = Some(reader.read_u32("session expiry interval")?)
        }
        ASSIGNED_CLIENT_IDENTIFIER => {
            properties.assigned_client_identifier =
                Some(reader.read_string("assigned client identifier")?)
        }
        SERVER_KEEP_ALIVE => {
            properties.server_keep_alive = Some(reader.read_u16("server keep alive")?)
        }
        AUTHENTICATION_METHOD => {
            properties.authentication_method = Some(reader.read_string("authentication method")?)
        }
        AUTHENTICATION_DATA => {
            properties.authentication_data = Some(reader.read_binary("authentication data")?)
        }
        REQUEST_PROBLEM_INFORMATION => {
            properties.request_problem_information =
                Some(read_bool(reader, "request problem information")?)
        }
        WILL_DELAY_INTERVAL => {
            properties.will_delay_interval = Some(reader.read_u32("will delay interval")?)
        }
        REQUEST_RESPONSE_INFORMATION => {
            properties.request_response_information =
                Some(read_bool(reader, "request response information")?)
        }
        RESPONSE_INFORMATION => {
            properties.response_information = Some(reader.read_string("response information")?)
        }
        SERVER_REFERENCE => {
            properties.server_reference = Some(reader.read_string("server reference")?)
        }
        REASON_STRING => properties.reason_string = Some(reader.read_string("reason string")?),
        RECEIVE_MAXIMUM => {
            let value = reader.read_u16("receive maximum")?;
            if value == 0 {
                return Err(protocol_error(
                    reader,
                    "receive maximum is 0, but it must be 1 or more".to_string(),
                ));
            }
            properties.receive_maximum = Some(value);
        }
        TOPIC_ALIAS_MAXIMUM => {
            properties.topic_alias_maximum = Some(reader.read_u16("topic alias maximum")?)
        }
        TOPIC_ALIAS => {
            // Alias 0 is reported by the PUBLISH decoder as Topic Alias
            // invalid (0x94), which is more precise than Protocol Error.
            properties.topic_alias = Some(reader.read_u16("topic alias")?)
        }
        MAXIMUM_QOS => {
            let value = reader.read_u8("maximum qos")?;
            if value > 1 {
                return Err(protocol_error(
                    reader,
                    format!("maximum qos is {value}, but only 0 and 1 are valid"),
                ));
            }
            properties.maximum_qos = Some(value);
        }
        RETAIN_AVAILABLE => {
            properties.retain_available = Some(read_bool(reader, "retain available")?)
        }
        USER_PROPERTY => {
            let key = reader.read_string("user property name")?;
            let value = reader.read_string("user property value")?;
            properties.user_properties.push((key, value));
        }
        MAXIMUM_PACKET_SIZE => {
            let value = reader.read_u32("maximum packet size")?;
            if value == 0 {
                return Err(protocol_error(
                    reader,
                    "maximum packet size is 0, but it must be 1 or more".to_string(),
                ));
            }
            properties.maximum_packet_size = Some(value);
        }
        WILDCARD_SUBSCRIPTION_AVAILABLE => {
            properties.wildcard_subscription_available =
                Some(read_bool(reader, "wildcard subscription available")?)
        }
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            properties.subscription_identifier_available =
                Some(read_bool(reader, "subscription identifier available")?)
        }
        SHARED_SUBSCRIPTION_AVAILABLE => {
            properties.shared_subscription_available =
                Some(read_bool(reader, "shared subscription available")?)
        }
        _ => unreachable!("allowed_contexts accepted an unknown property 0x{id:02X}"),
    }
    Ok(())
}

/// Size of a string or binary field: a 2-byte length plus the bytes.
fn field_len(bytes: usize) -> usize {
    2 + bytes
}

/// Length of the encoded properties, without the Property Length prefix.
pub(crate) fn properties_len(properties: &Properties) -> usize {
    let mut length = 0;
    let id = 1;
    let byte = id + 1;
    let two_bytes = id + 2;
    let four_bytes = id + 4;

    if properties.payload_format_indicator.is_some() {
        length += byte;
    }
    if properties.message_expiry_interval.is_some() {
        length += four_bytes;
    }
    if let Some(value) = &properties.content_type {
        length += id + field_len(value.len());
    }
    if let Some(value) = &properties.response_topic {
        length += id + field_len(value.len());
    }
    if let Some(value) = &properties.correlation_data {
        length += id + field_len(value.len());
    }
    for &value in &properties.subscription_identifiers {
        length += id + varint_len(value as usize);
    }
    if properties.session_expiry_interval.is_some() {
        length += four_bytes;
    }
    if let Some(value) = &properties.assigned_client_identifier {
        length += id + field_len(value.len());
    }
    if properties.server_keep_alive.is_some() {
        length += two_bytes;
    }
    if let Some(value) = &properties.authentication_method {
        length += id + field_len(value.len());
    }
    if let Some(value) = &properties.authentication_data {
        length += id + field_len(value.len());
    }
    if properties.request_problem_information.is_some() {
        length += byte;
    }
    if properties.will_delay_interval.is_some() {
        length += four_bytes;
    }
    if properties.request_response_information.is_some() {
        length += byte;
    }
    if let Some(value) = &properties.response_information {
        length += id + field_len(value.len());
    }
    if let Some(value) = &properties.server_reference {
        length += id + field_len(value.len());
    }
    if let Some(value) = &properties.reason_string {
        length += id + field_len(value.len());
    }
    if properties.receive_maximum.is_some() {
        length += two_bytes;
    }
    if properties.topic_alias_maximum.is_some() {
        length += two_bytes;
    }
    if properties.topic_alias.is_some() {
        length += two_bytes;
    }
    if properties.maximum_qos.is_some() {
        length += byte;
    }
    if properties.retain_available.is_some() {
        length += byte;
    }
    for (key, value) in &properties.user_properties {
        length += id + field_len(key.len()) + field_len(value.len());
    }
    if properties.maximum_packet_size.is_some() {
        length += four_bytes;
    }
    if properties.wildcard_subscription_available.is_some() {
        length += byte;
    }
    if properties.subscription_identifier_available.is_some() {
        length += byte;
    }
    if properties.shared_subscription_available.is_some() {
        length += byte;
    }
    length
}

/// Length of the property section as sent: Property Length plus properties.
pub(crate) fn property_section_len(properties: &Properties) -> usize {
    let length = properties_len(properties);
    varint_len(length) + length
}

/// Appends the Property Length and every property that is set, in
/// identifier order. `properties_len` must agree with what this writes.
pub(crate) fn encode_properties(properties: &Properties, out: &mut BytesMut) {
    let length = properties_len(properties);
    put_varint(out, length);
    if length == 0 {
        return;
    }

    if let Some(value) = properties.payload_format_indicator {
        out.put_u8(PAYLOAD_FORMAT_INDICATOR);
        out.put_u8(value);
    }
    if let Some(value) = properties.message_expiry_interval {
        out.put_u8(MESSAGE_EXPIRY_INTERVAL);
        out.put_u32(value);
    }
    if let Some(value) = &properties.content_type {
        out.put_u8(CONTENT_TYPE);
        put_string(out, value);
    }
    if let Some(value) = &properties.response_topic {
        out.put_u8(RESPONSE_TOPIC);
        put_string(out, value);
    }
    if let Some(value) = &properties.correlation_data {
        out.put_u8(CORRELATION_DATA);
        put_binary(out, value);
    }
    for &value in &properties.subscription_identifiers {
        debug_assert!(value <= MAX_VARIABLE_BYTE_INTEGER);
        out.put_u8(SUBSCRIPTION_IDENTIFIER);
        put_varint(out, value as usize);
    }
    if let Some(value) = properties.session_expiry_interval {
        out.put_u8(SESSION_EXPIRY_INTERVAL);
        out.put_u32(value);
    }
    if let Some(value) = &properties.assigned_client_identifier {
        out.put_u8(ASSIGNED_CLIENT_IDENTIFIER);
        put_string(out, value);
    }
    if let Some(value) = properties.server_keep_alive {
        out.put_u8(SERVER_KEEP_ALIVE);
        out.put_u16(value);
    }
    if let Some(value) = &properties.authentication_method {
        out.put_u8(AUTHENTICATION_METHOD);
        put_string(out, value);
    }
    if let Some(value) = &properties.authentication_data {
        out.put_u8(AUTHENTICATION_DATA);
        put_binary(out, value);
    }
    if let Some(value) = properties.request_problem_information {
        out.put_u8(REQUEST_PROBLEM_INFORMATION);
        out.put_u8(u8::from(value));
    }
    if let Some(value) = properties.will_delay_interval {
        out.put_u8(WILL_DELAY_INTERVAL);
        out.put_u32(value);
    }
    if let Some(value) = properties.request_response_information {
        out.put_u8(REQUEST_RESPONSE_INFORMATION);
        out.put_u8(u8::from(value));
    }
    if let Some(value) = &properties.response_information {
        out.put_u8(RESPONSE_INFORMATION);
        put_string(out, value);
    }
    if let Some(value) = &properties.server_reference {
        out.put_u8(SERVER_REFERENCE);
        put_string(out, value);
    }
    if let Some(value) = &properties.reason_string {
        out.put_u8(REASON_STRING);
        put_string(out, value);
    }
    if let Some(value) = properties.receive_maximum {
        out.put_u8(RECEIVE_MAXIMUM);
        out.put_u16(value);
    }
    if let Some(value) = properties.topic_alias_maximum {
        out.put_u8(TOPIC_ALIAS_MAXIMUM);
        out.put_u16(value);
    }
    if let Some(value) = properties.topic_alias {
        out.put_u8(TOPIC_ALIAS);
        out.put_u16(value);
    }
    if let Some(value) = properties.maximum_qos {
        out.put_u8(MAXIMUM_QOS);
        out.put_u8(value);
    }
    if let Some(value) = properties.retain_available {
        out.put_u8(RETAIN_AVAILABLE);
        out.put_u8(u8::from(value));
    }
    for (key, value) in &properties.user_properties {
        out.put_u8(USER_PROPERTY);
        put_string(out, key);
        put_string(out, value);
    }
    if let Some(value) = properties.maximum_packet_size {
        out.put_u8(MAXIMUM_PACKET_SIZE);
        out.put_u32(value);
    }
    if let Some(value) = properties.wildcard_subscription_available {
        out.put_u8(WILDCARD_SUBSCRIPTION_AVAILABLE);
        out.put_u8(u8::from(value));
    }
    if let Some(value) = properties.subscription_identifier_available {
        out.put_u8(SUBSCRIPTION_IDENTIFIER_AVAILABLE);
        out.put_u8(u8::from(value));
    }
    if let Some(value) = properties.shared_subscription_available {
        out.put_u8(SHARED_SUBSCRIPTION_AVAILABLE);
        out.put_u8(u8::from(value));
    }
}
