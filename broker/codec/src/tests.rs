//! Decoder and encoder tests on literal byte vectors.

use bytes::{Bytes, BytesMut};

use crate::{
    decode, encode, encoded_len, patch_packet_id, publish_packet_id_offset, Auth, ConnAck, Connect,
    DecodeContext, DecodeError, Disconnect, Packet, Properties, Protocol, PubResponse, Publish,
    QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
    Will,
};

fn context(protocol: Protocol) -> DecodeContext {
    DecodeContext {
        protocol,
        max_packet_size: crate::MAX_PACKET_SIZE,
        topic_alias_max: 10,
    }
}

const V5: Protocol = Protocol::V5;
const V311: Protocol = Protocol::V311;

/// Parses space-separated hex bytes such as "30 04 00 00".
fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("test vector is hex"))
        .collect()
}

fn decode_bytes(bytes: &[u8], ctx: &DecodeContext) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, ctx)
}

/// Decodes exactly one complete packet and checks nothing is left over.
fn decode_one(bytes: &[u8], protocol: Protocol) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, &context(protocol))
        .expect("packet is valid")
        .expect("packet is complete");
    assert!(buf.is_empty(), "{} bytes left after the packet", buf.len());
    packet
}

fn decode_error(bytes: &[u8], protocol: Protocol) -> DecodeError {
    decode_bytes(bytes, &context(protocol)).expect_err("packet must be rejected")
}

fn encode_to_vec(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    assert_eq!(
        out.len(),
        encoded_len(packet, protocol),
        "encoded_len disagrees with encode for {packet:?}"
    );
    out.to_vec()
}

fn assert_malformed(bytes: &[u8], protocol: Protocol) {
    let error = decode_error(bytes, protocol);
    assert!(matches!(error, DecodeError::Malformed(_)), "{error:?}");
    assert_eq!(error.reason_code(), ReasonCode::MALFORMED_PACKET);
}

fn assert_protocol_error(bytes: &[u8], protocol: Protocol) {
    let error = decode_error(bytes, protocol);
    assert!(matches!(error, DecodeError::Protocol(_)), "{error:?}");
    assert_eq!(error.reason_code(), ReasonCode::PROTOCOL_ERROR);
}

// ---- CONNECT ----

const BASELINE_CONNECT: &str = "10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 74 31";

#[test]
fn connect_baseline_v5() {
    let packet = decode_one(&hex(BASELINE_CONNECT), V311);
    let Packet::Connect(connect) = &packet else {
        panic!("expected CONNECT, got {packet:?}");
    };
    assert_eq!(connect.protocol, V5);
    assert!(connect.clean_start);
    assert_eq!(connect.keep_alive, 60);
    assert_eq!(connect.client_id, "t1");
    assert!(connect.will.is_none());
    assert!(connect.username.is_none());
    assert!(connect.password.is_none());
    assert!(connect.properties.is_empty());
    assert_eq!(encode_to_vec(&packet, V311), hex(BASELINE_CONNECT));
}

#[test]
fn connect_with_will_v5() {
    let bytes =
        hex("10 1a 00 04 4d 51 54 54 05 06 00 3c 00 00 02 74 31 00 00 03 77 2f 74 00 03 62 79 65");
    let packet = decode_one(&bytes, V5);
    let Packet::Connect(connect) = &packet else {
        panic!("expected CONNECT, got {packet:?}");
    };
    let will = connect.will.as_ref().expect("will flag is set");
    assert_eq!(will.topic, "w/t");
    assert_eq!(&will.payload[..], b"bye");
    assert_eq!(will.qos, QoS::AtMostOnce);
    assert!(!will.retain);
    assert_eq!(encode_to_vec(&packet, V5), bytes);
}

#[test]
fn connect_v311_with_credentials() {
    // Level 4 with user name, password and clean session set, keep alive 10.
    let bytes = hex("10 15 00 04 4d 51 54 54 04 c2 00 0a 00 01 63 00 01 75 00 03 70 77 64");
    let packet = decode_one(&bytes, V5);
    let Packet::Connect(connect) = &packet else {
        panic!("expected CONNECT, got {packet:?}");
    };
    assert_eq!(connect.protocol, V311);
    assert_eq!(connect.client_id, "c");
    assert_eq!(connect.username.as_deref(), Some("u"));
    assert_eq!(connect.password.as_deref(), Some(&b"pwd"[..]));
    assert_eq!(encode_to_vec(&packet, V5), bytes);
}

#[test]
fn connect_password_without_username() {
    // 3.1.1 forbids it.
    assert_malformed(
        &hex("10 0f 00 04 4d 51 54 54 04 42 00 0a 00 01 63 00 00"),
        V311,
    );
    // 5.0 allows it.
    let packet = decode_one(
        &hex("10 10 00 04 4d 51 54 54 05 42 00 0a 00 00 01 63 00 00"),
        V5,
    );
    let Packet::Connect(connect) = packet else {
        panic!("expected CONNECT");
    };
    assert_eq!(connect.password.as_deref(), Some(&b""[..]));
    assert!(connect.username.is_none());
}

#[test]
fn connect_unsupported_protocol() {
    let error = decode_error(
        &hex("10 0f 00 04 4d 51 54 54 03 02 00 3c 00 00 02 74 31"),
        V5,
    );
    assert_eq!(
        error,
        DecodeError::UnsupportedProtocol {
            name: "MQTT".to_string(),
            level: 3
        }
    );
    assert_eq!(
        error.reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );

    let error = decode_error(
        &hex("10 10 00 06 4d 51 49 73 64 70 03 02 00 3c 00 02 74 31"),
        V5,
    );
    assert_eq!(
        error,
        DecodeError::UnsupportedProtocol {
            name: "MQIsdp".to_string(),
            level: 3
        }
    );
}

#[test]
fn connect_reserved_flag() {
    assert_malformed(
        &hex("10 0f 00 04 4d 51 54 54 05 03 00 3c 00 00 02 74 31"),
        V5,
    );
}

#[test]
fn connect_will_qos_3() {
    let bytes =
        hex("10 1a 00 04 4d 51 54 54 05 1e 00 3c 00 00 02 74 31 00 00 03 77 2f 74 00 03 62 79 65");
    assert_malformed(&bytes, V5);
}

#[test]
fn connect_will_bits_without_will_flag() {
    // Will QoS 1 without the will flag.
    assert_malformed(
        &hex("10 0f 00 04 4d 51 54 54 05 0a 00 3c 00 00 02 74 31"),
        V5,
    );
    // Will retain without the will flag.
    assert_malformed(
        &hex("10 0f 00 04 4d 51 54 54 05 22 00 3c 00 00 02 74 31"),
        V5,
    );
}

#[test]
fn connect_trailing_byte() {
    assert_malformed(
        &hex("10 10 00 04 4d 51 54 54 05 02 00 3c 00 00 02 74 31 ff"),
        V5,
    );
}

#[test]
fn connect_truncated_fields() {
    // Remaining Length covers the header fields but not the client id.
    assert_malformed(&hex("10 0b 00 04 4d 51 54 54 05 02 00 3c 00"), V5);
}

#[test]
fn connect_client_id_invalid_utf8() {
    assert_malformed(
        &hex("10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 c3 28"),
        V5,
    );
    assert_malformed(
        &hex("10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 74 00"),
        V5,
    );
}

#[test]
fn connect_duplicate_request_response() {
    let bytes = hex("10 13 00 04 4d 51 54 54 05 02 00 3c 04 19 01 19 01 00 02 74 31");
    assert_protocol_error(&bytes, V5);
}

#[test]
fn connect_receive_maximum_zero() {
    let bytes = hex("10 12 00 04 4d 51 54 54 05 02 00 3c 03 21 00 00 00 02 74 31");
    assert_protocol_error(&bytes, V5);
}

#[test]
fn connect_property_values() {
    let receive_maximum = hex("10 12 00 04 4d 51 54 54 05 02 00 3c 03 21 00 02 00 02 74 31");
    let Packet::Connect(connect) = decode_one(&receive_maximum, V5) else {
        panic!("expected CONNECT");
    };
    assert_eq!(connect.properties.receive_maximum, Some(2));

    let max_packet = hex("10 14 00 04 4d 51 54 54 05 02 00 3c 05 27 00 00 00 40 00 02 74 31");
    let Packet::Connect(connect) = decode_one(&max_packet, V5) else {
        panic!("expected CONNECT");
    };
    assert_eq!(connect.properties.maximum_packet_size, Some(64));

    // Maximum Packet Size 0.
    let zero = hex("10 14 00 04 4d 51 54 54 05 02 00 3c 05 27 00 00 00 00 00 02 74 31");
    assert_protocol_error(&zero, V5);
    // Request Problem Information 2 is not a boolean.
    let not_bool = hex("10 11 00 04 4d 51 54 54 05 02 00 3c 02 17 02 00 02 74 31");
    assert_protocol_error(&not_bool, V5);
}

#[test]
fn connect_auth_data_without_method() {
    let bytes = hex("10 12 00 04 4d 51 54 54 05 02 00 3c 05 16 00 02 01 02 00 00");
    assert_protocol_error(&bytes, V5);
    // With a method first, the same data is accepted.
    let bytes = hex("10 15 00 04 4d 51 54 54 05 02 00 3c 08 15 00 01 58 16 00 01 01 00 00");
    let Packet::Connect(connect) = decode_one(&bytes, V5) else {
        panic!("expected CONNECT");
    };
    assert_eq!(
        connect.properties.authentication_method.as_deref(),
        Some("X")
    );
    assert_eq!(
        connect.properties.authentication_data.as_deref(),
        Some(&b"\x01"[..])
    );
}

#[test]
fn connect_property_not_allowed() {
    // Topic Alias (0x23) belongs to PUBLISH only.
    let bytes = hex("10 12 00 04 4d 51 54 54 05 02 00 3c 03 23 00 01 00 02 74 31");
    assert_malformed(&bytes, V5);
}

#[test]
fn connect_unknown_property() {
    let bytes = hex("10 11 00 04 4d 51 54 54 05 02 00 3c 02 7f 00 00 02 74 31");
    assert_malformed(&bytes, V5);
}

#[test]
fn connect_property_length_overruns() {
    // Property Length 9 with only 4 bytes after it.
    let bytes = hex("10 0f 00 04 4d 51 54 54 05 02 00 3c 09 00 02 74 31");
    assert_malformed(&bytes, V5);
}

// ---- CONNACK ----

#[test]
fn connack_v311_return_codes() {
    let expected = [
        (0, ReasonCode::SUCCESS),
        (1, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        (2, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
        (3, ReasonCode::SERVER_UNAVAILABLE),
        (4, ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        (5, ReasonCode::NOT_AUTHORIZED),
    ];
    for (return_code, reason) in expected {
        let bytes = [0x20, 0x02, 0x00, return_code];
        let packet = decode_one(&bytes, V311);
        assert_eq!(
            packet,
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason,
                properties: Properties::default()
            }),
            "return code {return_code}"
        );
        assert_eq!(
            encode_to_vec(&packet, V311),
            bytes,
            "return code {return_code}"
        );
    }
    assert_malformed(&[0x20, 0x02, 0x00, 0x06], V311);
}

#[test]
fn connack_v311_encode_maps_errors() {
    let cases = [
        (ReasonCode::SERVER_BUSY, 3),
        (ReasonCode::BANNED, 5),
        (ReasonCode::UNSPECIFIED_ERROR, 5),
    ];
    for (reason, return_code) in cases {
        let packet = Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Properties::default(),
        });
        assert_eq!(
            encode_to_vec(&packet, V311),
            [0x20, 0x02, 0x00, return_code]
        );
    }
}

#[test]
fn connack_v5_with_properties() {
    let packet = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::SUCCESS,
        properties: Properties {
            topic_alias_maximum: Some(10),
            maximum_qos: Some(1),
            ..Properties::default()
        },
    });
    let bytes = encode_to_vec(&packet, V5);
    assert_eq!(bytes, hex("20 08 01 00 05 22 00 0a 24 01"));
    assert_eq!(decode_one(&bytes, V5), packet);
}

#[test]
fn connack_reserved_flags() {
    assert_malformed(&hex("20 03 02 00 00"), V5);
}

#[test]
fn connack_maximum_qos_2() {
    assert_protocol_error(&hex("20 05 00 00 02 24 02"), V5);
}

// ---- PUBLISH ----

#[test]
fn publish_qos0_v311() {
    let bytes = hex("30 07 00 03 61 2f 62 68 69");
    let packet = decode_one(&bytes, V311);
    assert_eq!(
        packet,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "a/b".to_string(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from_static(b"hi"),
        })
    );
    assert_eq!(encode_to_vec(&packet, V311), bytes);
}

#[test]
fn publish_qos1_v5_user_properties_order() {
    let packet = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b".to_string(),
        packet_id: Some(7),
        properties: Properties {
            user_properties: vec![
                ("k".to_string(), "1".to_string()),
                ("k".to_string(), "2".to_string()),
            ],
            ..Properties::default()
        },
        payload: Bytes::from_static(b"x"),
    });
    let bytes = encode_to_vec(&packet, V5);
    assert_eq!(bytes[0], 0x3B);
    assert_eq!(decode_one(&bytes, V5), packet);
}

#[test]
fn publish_payload_is_zero_copy() {
    let mut buf = BytesMut::from(&hex("30 08 00 03 61 2f 62 00 68 69")[..]);
    let storage = buf.as_ptr() as usize;
    let packet = decode(&mut buf, &context(V5))
        .expect("valid")
        .expect("complete");
    let Packet::Publish(publish) = packet else {
        panic!("expected PUBLISH");
    };
    let payload_at = publish.payload.as_ptr() as usize;
    assert_eq!(
        payload_at,
        storage + 8,
        "payload must point into the input buffer"
    );
}

#[test]
fn publish_empty_payload() {
    let packet = decode_one(&hex("30 05 00 03 61 2f 62"), V311);
    let Packet::Publish(publish) = packet else {
        panic!("expected PUBLISH");
    };
    assert!(publish.payload.is_empty());
}

#[test]
fn publish_qos3_is_malformed() {
    assert_malformed(&hex("36 09 00 03 61 2f 62 00 03 00 78"), V5);
}

#[test]
fn publish_qos3_fails_on_first_byte() {
    // Only the first byte has arrived: the flags alone are enough.
    assert_malformed(&[0x36], V5);
}

#[test]
fn publish_dup_on_qos0() {
    assert_malformed(&hex("38 06 00 03 61 2f 62 00"), V5);
}

#[test]
fn publish_packet_id_zero() {
    assert_protocol_error(&hex("32 08 00 03 61 2f 62 00 00 00"), V5);
    assert_protocol_error(&hex("32 07 00 03 61 2f 62 00 00"), V311);
}

#[test]
fn publish_topic_alias_zero() {
    let error = decode_error(&hex("30 0a 00 03 61 2f 62 03 23 00 00 78"), V5);
    assert_eq!(error, DecodeError::TopicAliasInvalid { alias: 0, max: 10 });
    assert_eq!(error.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);
}

#[test]
fn publish_topic_alias_above_maximum() {
    let ctx = DecodeContext {
        topic_alias_max: 0,
        ..context(V5)
    };
    let error = decode_bytes(&hex("30 0a 00 03 61 2f 62 03 23 00 01 78"), &ctx)
        .expect_err("alias 1 above maximum 0");
    assert_eq!(error, DecodeError::TopicAliasInvalid { alias: 1, max: 0 });
    assert_eq!(error.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);

    let error = decode_error(&hex("30 0a 00 03 61 2f 62 03 23 00 0b 78"), V5);
    assert_eq!(error, DecodeError::TopicAliasInvalid { alias: 11, max: 10 });
}

#[test]
fn publish_empty_topic_without_alias() {
    assert_protocol_error(&hex("30 04 00 00 00 78"), V5);
    assert_protocol_error(&hex("30 03 00 00 78"), V311);
}

#[test]
fn publish_empty_topic_with_alias() {
    let packet = decode_one(&hex("30 07 00 00 03 23 00 05 78"), V5);
    let Packet::Publish(publish) = packet else {
        panic!("expected PUBLISH");
    };
    assert_eq!(publish.topic, "");
    assert_eq!(publish.properties.topic_alias, Some(5));
    assert_eq!(&publish.payload[..], b"x");
}

#[test]
fn publish_wildcard_topic() {
    let error = decode_error(&hex("30 07 00 03 61 2f 2b 00 78"), V5);
    assert!(
        matches!(error, DecodeError::TopicNameInvalid(_)),
        "{error:?}"
    );
    assert_eq!(error.reason_code(), ReasonCode::TOPIC_NAME_INVALID);

    let error = decode_error(&hex("30 06 00 03 61 2f 23 78"), V311);
    assert!(
        matches!(error, DecodeError::TopicNameInvalid(_)),
        "{error:?}"
    );
}

#[test]
fn publish_duplicate_payload_format() {
    assert_protocol_error(&hex("32 0d 00 03 61 2f 62 00 01 04 01 01 01 01 78"), V5);
}

#[test]
fn publish_payload_format_invalid_value() {
    assert_protocol_error(&hex("30 08 00 03 61 2f 62 02 01 02"), V5);
}

#[test]
fn publish_subscription_identifier_kept() {
    // Legal for the decoder: a server sends it to clients. The broker
    // rejects it from clients.
    let packet = decode_one(&hex("32 0b 00 03 61 2f 62 00 02 02 0b 01 78"), V5);
    let Packet::Publish(publish) = packet else {
        panic!("expected PUBLISH");
    };
    assert_eq!(publish.properties.subscription_identifiers, vec![1]);
}

#[test]
fn publish_repeated_subscription_identifiers() {
    let bytes = hex("30 0c 00 03 61 2f 62 06 0b 01 0b 02 0b 7f");
    let packet = decode_one(&bytes, V5);
    let Packet::Publish(publish) = &packet else {
        panic!("expected PUBLISH");
    };
    assert_eq!(publish.properties.subscription_identifiers, vec![1, 2, 127]);
    assert_eq!(encode_to_vec(&packet, V5), bytes);
}

#[test]
fn publish_subscription_identifier_zero() {
    assert_protocol_error(&hex("30 08 00 03 61 2f 62 02 0b 00"), V5);
}

#[test]
fn publish_session_expiry_not_allowed() {
    assert_malformed(&hex("30 0a 00 03 61 2f 62 05 11 00 00 00 01"), V5);
}

#[test]
fn publish_response_topic_wildcard() {
    assert_protocol_error(&hex("30 0c 00 03 61 2f 62 06 08 00 03 61 2f 23"), V5);
}

// ---- acknowledgements ----

#[test]
fn puback_short_forms_v5() {
    let success = decode_one(&hex("40 02 00 07"), V5);
    assert_eq!(
        success,
        Packet::PubAck(PubResponse {
            packet_id: 7,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default()
        })
    );
    assert_eq!(encode_to_vec(&success, V5), hex("40 02 00 07"));

    let reason_only = decode_one(&hex("40 03 00 07 10"), V5);
    assert_eq!(
        reason_only,
        Packet::PubAck(PubResponse {
            packet_id: 7,
            reason: ReasonCode::NO_MATCHING_SUBSCRIBERS,
            properties: Properties::default()
        })
    );
    assert_eq!(encode_to_vec(&reason_only, V5), hex("40 03 00 07 10"));

    let with_empty_properties = decode_one(&hex("40 04 00 07 00 00"), V5);
    assert_eq!(with_empty_properties, success);
}

#[test]
fn puback_reason_string() {
    let packet = Packet::PubRec(PubResponse {
        packet_id: 9,
        reason: ReasonCode::QUOTA_EXCEEDED,
        properties: Properties {
            reason_string: Some("full".to_string()),
            ..Properties::default()
        },
    });
    let bytes = encode_to_vec(&packet, V5);
    assert_eq!(bytes, hex("50 0b 00 09 97 07 1f 00 04 66 75 6c 6c"));
    assert_eq!(decode_one(&bytes, V5), packet);
}

#[test]
fn puback_v311_strict_length() {
    let packet = decode_one(&hex("40 02 00 07"), V311);
    assert!(matches!(packet, Packet::PubAck(_)), "{packet:?}");
    assert_malformed(&hex("40 03 00 07 00"), V311);
    // A 3.1.1 acknowledgement drops the reason code.
    let failed = Packet::PubAck(PubResponse {
        packet_id: 7,
        reason: ReasonCode::UNSPECIFIED_ERROR,
        properties: Properties::default(),
    });
    assert_eq!(encode_to_vec(&failed, V311), hex("40 02 00 07"));
}

#[test]
fn pubrel_flags() {
    let packet = decode_one(&hex("62 02 00 07"), V5);
    assert!(matches!(packet, Packet::PubRel(_)), "{packet:?}");
    assert_eq!(encode_to_vec(&packet, V5), hex("62 02 00 07"));
    assert_malformed(&hex("60 02 00 01"), V5);
    assert_malformed(&hex("60 02 00 01"), V311);
}

#[test]
fn pub_responses_reserved_flags() {
    assert_malformed(&hex("42 02 00 01"), V5);
    assert_malformed(&hex("52 02 00 01"), V5);
    assert_malformed(&hex("72 02 00 01"), V5);
}

#[test]
fn pub_response_packet_id_zero() {
    assert_protocol_error(&hex("40 02 00 00"), V5);
    assert_protocol_error(&hex("70 02 00 00"), V311);
}

#[test]
fn pub_response_truncated() {
    assert_malformed(&hex("40 01 00"), V5);
    assert_malformed(&hex("40 00"), V5);
}

#[test]
fn pub_response_property_not_allowed() {
    // Topic Alias in a PUBACK.
    assert_malformed(&hex("40 07 00 01 00 03 23 00 01"), V5);
}

// ---- SUBSCRIBE and UNSUBSCRIBE ----

#[test]
fn subscribe_v5_options() {
    // QoS 1, No Local, Retain As Published, Retain Handling 2.
    let bytes = hex("82 09 00 01 00 00 03 61 2f 62 2d");
    let packet = decode_one(&bytes, V5);
    assert_eq!(
        packet,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                "a/b".to_string(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                }
            )],
        })
    );
    assert_eq!(encode_to_vec(&packet, V5), bytes);
}

#[test]
fn subscribe_v311() {
    let bytes = hex("82 0e 00 05 00 03 61 2f 62 02 00 03 63 2f 23 00");
    let packet = decode_one(&bytes, V311);
    let Packet::Subscribe(subscribe) = &packet else {
        panic!("expected SUBSCRIBE");
    };
    assert_eq!(subscribe.packet_id, 5);
    assert_eq!(subscribe.filters.len(), 2);
    assert_eq!(
        subscribe.filters[0].1,
        SubscriptionOptions::with_qos(QoS::ExactlyOnce)
    );
    assert_eq!(subscribe.filters[1].0, "c/#");
    assert_eq!(encode_to_vec(&packet, V311), bytes);
    // 3.1.1 has only the QoS bits: No Local is reserved there.
    assert_malformed(&hex("82 08 00 05 00 03 61 2f 62 04"), V311);
}

#[test]
fn subscribe_reserved_option_bits() {
    assert_malformed(&hex("82 09 00 01 00 00 03 61 2f 62 c0"), V5);
    assert_malformed(&hex("82 09 00 01 00 00 03 61 2f 62 40"), V5);
}

#[test]
fn subscribe_qos_3() {
    assert_malformed(&hex("82 09 00 01 00 00 03 61 2f 62 03"), V5);
    assert_malformed(&hex("82 08 00 01 00 03 61 2f 62 03"), V311);
}

#[test]
fn subscribe_retain_handling_3() {
    assert_protocol_error(&hex("82 09 00 01 00 00 03 61 2f 62 30"), V5);
}

#[test]
fn subscribe_header_flags() {
    assert_malformed(&hex("80 09 00 01 00 00 03 61 2f 62 00"), V5);
    assert_malformed(&hex("80 08 00 01 00 03 61 2f 62 00"), V311);
}

#[test]
fn subscribe_without_filters() {
    assert_protocol_error(&hex("82 03 00 01 00"), V5);
    assert_protocol_error(&hex("82 02 00 01"), V311);
}

#[test]
fn subscribe_subscription_identifier() {
    let bytes = hex("82 0b 00 01 02 0b 05 00 03 61 2f 62 00");
    let Packet::Subscribe(subscribe) = decode_one(&bytes, V5) else {
        panic!("expected SUBSCRIBE");
    };
    assert_eq!(subscribe.properties.subscription_identifiers, vec![5]);

    // Identifier 0.
    assert_protocol_error(&hex("82 0b 00 01 02 0b 00 00 03 61 2f 62 00"), V5);
    // Two identifiers.
    assert_protocol_error(&hex("82 0d 00 01 04 0b 01 0b 02 00 03 61 2f 62 00"), V5);
}

#[test]
fn subscribe_keeps_invalid_filter() {
    // `sp+rt` breaks the wildcard rules, so the broker sends SUBACK 0x8F for it.
    let bytes = hex("82 0b 00 01 00 00 05 73 70 2b 72 74 00");
    let Packet::Subscribe(subscribe) = decode_one(&bytes, V5) else {
        panic!("expected SUBSCRIBE");
    };
    assert_eq!(subscribe.filters[0].0, "sp+rt");
}

#[test]
fn subscribe_shared_no_local() {
    // `$share/g/a` with No Local set.
    assert_protocol_error(
        &hex("82 10 00 01 00 00 0a 24 73 68 61 72 65 2f 67 2f 61 04"),
        V5,
    );
    // Without No Local it is accepted.
    let bytes = hex("82 10 00 01 00 00 0a 24 73 68 61 72 65 2f 67 2f 61 01");
    let Packet::Subscribe(subscribe) = decode_one(&bytes, V5) else {
        panic!("expected SUBSCRIBE");
    };
    assert_eq!(subscribe.filters[0].0, "$share/g/a");
}

#[test]
fn subscribe_missing_options_byte() {
    assert_malformed(&hex("82 08 00 01 00 00 03 61 2f 62"), V5);
}

#[test]
fn unsubscribe_round_trip() {
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: 3,
        properties: Properties::default(),
        filters: vec!["a/b".to_string(), "c/+".to_string()],
    });
    let v5 = encode_to_vec(&packet, V5);
    assert_eq!(v5, hex("a2 0d 00 03 00 00 03 61 2f 62 00 03 63 2f 2b"));
    assert_eq!(decode_one(&v5, V5), packet);
    let v311 = encode_to_vec(&packet, V311);
    assert_eq!(v311, hex("a2 0c 00 03 00 03 61 2f 62 00 03 63 2f 2b"));
    assert_eq!(decode_one(&v311, V311), packet);
}

#[test]
fn unsubscribe_errors() {
    assert_protocol_error(&hex("a2 03 00 01 00"), V5);
    assert_malformed(&hex("a0 07 00 01 00 00 03 61 2f"), V5);
    assert_protocol_error(&hex("a2 07 00 00 00 00 03 61 2f 62"), V5);
}

// ---- SUBACK and UNSUBACK ----

#[test]
fn suback_v311_mapping() {
    let packet = Packet::SubAck(SubAck {
        packet_id: 4,
        properties: Properties::default(),
        reasons: vec![
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::UNSPECIFIED_ERROR,
        ],
    });
    let bytes = encode_to_vec(&packet, V311);
    assert_eq!(bytes, hex("90 05 00 04 01 80 80"));
    let Packet::SubAck(decoded) = decode_one(&bytes, V311) else {
        panic!("expected SUBACK");
    };
    assert_eq!(
        decoded.reasons,
        vec![
            ReasonCode::GRANTED_QOS_1,
            ReasonCode(0x80),
            ReasonCode(0x80)
        ]
    );
    assert_malformed(&hex("90 03 00 04 03"), V311);
}

#[test]
fn suback_v5_keeps_codes() {
    let packet = Packet::SubAck(SubAck {
        packet_id: 4,
        properties: Properties::default(),
        reasons: vec![ReasonCode::GRANTED_QOS_2, ReasonCode::TOPIC_FILTER_INVALID],
    });
    let bytes = encode_to_vec(&packet, V5);
    assert_eq!(bytes, hex("90 05 00 04 00 02 8f"));
    assert_eq!(decode_one(&bytes, V5), packet);
}

#[test]
fn unsuback_versions() {
    let packet = Packet::UnsubAck(UnsubAck {
        packet_id: 6,
        properties: Properties::default(),
        reasons: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
    });
    let v5 = encode_to_vec(&packet, V5);
    assert_eq!(v5, hex("b0 05 00 06 00 00 11"));
    assert_eq!(decode_one(&v5, V5), packet);

    let v311 = encode_to_vec(&packet, V311);
    assert_eq!(v311, hex("b0 02 00 06"));
    let Packet::UnsubAck(decoded) = decode_one(&v311, V311) else {
        panic!("expected UNSUBACK");
    };
    assert!(decoded.reasons.is_empty());
    assert_malformed(&hex("b0 03 00 06 00"), V311);
}

// ---- PINGREQ, PINGRESP, DISCONNECT, AUTH ----

#[test]
fn ping_packets() {
    assert_eq!(decode_one(&hex("c0 00"), V5), Packet::PingReq);
    assert_eq!(decode_one(&hex("d0 00"), V311), Packet::PingResp);
    assert_eq!(encode_to_vec(&Packet::PingReq, V5), hex("c0 00"));
    assert_eq!(encode_to_vec(&Packet::PingResp, V311), hex("d0 00"));
    assert_malformed(&hex("c0 01 00"), V5);
    assert_malformed(&hex("c1 00"), V5);
}

#[test]
fn disconnect_forms() {
    let normal = decode_one(&hex("e0 00"), V5);
    assert_eq!(
        normal,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties: Properties::default()
        })
    );
    assert_eq!(encode_to_vec(&normal, V5), hex("e0 00"));

    let with_will = decode_one(&hex("e0 02 04 00"), V5);
    let Packet::Disconnect(disconnect) = &with_will else {
        panic!("expected DISCONNECT");
    };
    assert_eq!(disconnect.reason, ReasonCode::DISCONNECT_WITH_WILL);
    assert_eq!(encode_to_vec(&with_will, V5), hex("e0 01 04"));

    // A reason code the specification does not list is kept for the broker.
    let unlisted = decode_one(&hex("e0 01 ff"), V5);
    let Packet::Disconnect(disconnect) = unlisted else {
        panic!("expected DISCONNECT");
    };
    assert_eq!(disconnect.reason, ReasonCode(0xFF));

    assert_eq!(encode_to_vec(&with_will, V311), hex("e0 00"));
    assert_malformed(&hex("e0 01 04"), V311);
}

#[test]
fn disconnect_session_expiry() {
    let packet = Packet::Disconnect(Disconnect {
        reason: ReasonCode::SUCCESS,
        properties: Properties {
            session_expiry_interval: Some(30),
            ..Properties::default()
        },
    });
    let bytes = encode_to_vec(&packet, V5);
    assert_eq!(bytes, hex("e0 07 00 05 11 00 00 00 1e"));
    assert_eq!(decode_one(&bytes, V5), packet);
}

#[test]
fn auth_forms() {
    let packet = Packet::Auth(Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: Some("X".to_string()),
            authentication_data: Some(Bytes::from_static(b"\x01")),
            ..Properties::default()
        },
    });
    let bytes = encode_to_vec(&packet, V5);
    assert_eq!(bytes, hex("f0 0a 18 08 15 00 01 58 16 00 01 01"));
    assert_eq!(decode_one(&bytes, V5), packet);
    assert_eq!(
        decode_one(&hex("f0 00"), V5),
        Packet::Auth(Auth {
            reason: ReasonCode::SUCCESS,
            properties: Properties::default()
        })
    );
    // AUTH does not exist in 3.1.1, so it is neither decoded nor encoded.
    assert_malformed(&hex("f0 00"), V311);
    assert_eq!(encode_to_vec(&packet, V311), Vec::<u8>::new());
}

// ---- framing ----

#[test]
fn reserved_packet_type_zero() {
    assert_malformed(&hex("00 00"), V5);
}

#[test]
fn remaining_length_five_bytes() {
    // Fails as soon as the fourth length byte shows a continuation bit.
    assert_malformed(&hex("30 ff ff ff ff 7f"), V5);
    assert_malformed(&hex("30 ff ff ff ff"), V5);
}

#[test]
fn remaining_length_incomplete() {
    assert_eq!(decode_bytes(&hex("30 ff ff ff"), &context(V5)), Ok(None));
}

#[test]
fn packet_too_large_counts_header() {
    // A 9-byte PUBLISH: 1 header byte, 1 length byte, 7 body bytes.
    let bytes = hex("30 07 00 03 61 2f 62 68 69");
    let exact = DecodeContext {
        max_packet_size: 9,
        ..context(V311)
    };
    assert!(matches!(
        decode_bytes(&bytes, &exact),
        Ok(Some(Packet::Publish(_)))
    ));

    let smaller = DecodeContext {
        max_packet_size: 8,
        ..context(V311)
    };
    let error = decode_bytes(&bytes, &smaller).expect_err("9 bytes above 8");
    assert_eq!(error, DecodeError::PacketTooLarge { size: 9, max: 8 });
    assert_eq!(error.reason_code(), ReasonCode::PACKET_TOO_LARGE);
}

#[test]
fn packet_too_large_before_body() {
    let ctx = DecodeContext {
        max_packet_size: 1024,
        ..context(V5)
    };
    // Only the fixed header of a 1,000,000-byte body has arrived.
    let error = decode_bytes(&hex("30 c0 84 3d"), &ctx).expect_err("too large");
    assert_eq!(
        error,
        DecodeError::PacketTooLarge {
            size: 1_000_004,
            max: 1024
        }
    );
}

#[test]
fn decode_two_packets_in_sequence() {
    let mut buf = BytesMut::from(&hex("c0 00 40 02 00 07 d0")[..]);
    let ctx = context(V5);
    assert_eq!(decode(&mut buf, &ctx), Ok(Some(Packet::PingReq)));
    assert!(matches!(
        decode(&mut buf, &ctx),
        Ok(Some(Packet::PubAck(_)))
    ));
    assert_eq!(decode(&mut buf, &ctx), Ok(None));
    assert_eq!(&buf[..], &[0xD0]);
}

/// Valid packets of every type, as bytes, for the prefix test.
fn sample_frames() -> Vec<(Protocol, Vec<u8>)> {
    vec![
        (V5, hex(BASELINE_CONNECT)),
        (
            V5,
            hex("10 1a 00 04 4d 51 54 54 05 06 00 3c 00 00 02 74 31 00 00 03 77 2f 74 00 03 62 79 65"),
        ),
        (V5, hex("20 08 01 00 05 22 00 0a 24 01")),
        (V311, hex("20 02 00 00")),
        (V5, hex("32 0b 00 03 61 2f 62 00 02 02 0b 01 78")),
        (V311, hex("30 07 00 03 61 2f 62 68 69")),
        (V5, hex("40 02 00 07")),
        (V5, hex("50 0b 00 09 97 07 1f 00 04 66 75 6c 6c")),
        (V5, hex("62 02 00 07")),
        (V5, hex("70 03 00 07 92")),
        (V5, hex("82 0b 00 01 02 0b 05 00 03 61 2f 62 00")),
        (V5, hex("90 05 00 04 00 02 8f")),
        (V5, hex("a2 0d 00 03 00 00 03 61 2f 62 00 03 63 2f 2b")),
        (V5, hex("b0 05 00 06 00 00 11")),
        (V5, hex("c0 00")),
        (V5, hex("d0 00")),
        (V5, hex("e0 07 00 05 11 00 00 00 1e")),
        (V5, hex("f0 0a 18 08 15 00 01 58 16 00 01 01")),
    ]
}

#[test]
fn every_prefix_is_incomplete() {
    for (protocol, frame) in sample_frames() {
        let ctx = context(protocol);
        for end in 0..frame.len() {
            let mut buf = BytesMut::from(&frame[..end]);
            assert_eq!(
                decode(&mut buf, &ctx),
                Ok(None),
                "prefix of {end} bytes of {frame:02x?}"
            );
            assert_eq!(
                buf.len(),
                end,
                "prefix of {end} bytes must stay in the buffer"
            );
        }
        let mut whole = BytesMut::from(&frame[..]);
        let packet = decode(&mut whole, &ctx);
        assert!(matches!(packet, Ok(Some(_))), "{frame:02x?}: {packet:?}");
    }
}

#[test]
fn large_publish_four_byte_length() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "big".to_string(),
        packet_id: Some(1),
        properties: Properties::default(),
        payload: Bytes::from(vec![0xAB; 2_100_000]),
    });
    let bytes = encode_to_vec(&packet, V5);
    assert_eq!(
        bytes[1..5].iter().filter(|byte| **byte & 0x80 != 0).count(),
        3
    );
    assert_eq!(decode_one(&bytes, V5), packet);
}

// ---- packet identifier patching ----

#[test]
fn patch_packet_id_rewrites_in_place() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t/x".to_string(),
        packet_id: Some(1),
        properties: Properties {
            message_expiry_interval: Some(5),
            ..Properties::default()
        },
        payload: Bytes::from_static(b"payload"),
    });
    let mut frame = encode_to_vec(&packet, V5);
    assert_eq!(publish_packet_id_offset(&frame), Some(7));

    patch_packet_id(&mut frame, 0xBEEF);
    let Packet::Publish(patched) = decode_one(&frame, V5) else {
        panic!("expected PUBLISH");
    };
    assert_eq!(patched.packet_id, Some(0xBEEF));
    assert_eq!(&patched.payload[..], b"payload");
    assert_eq!(patched.properties.message_expiry_interval, Some(5));
}

#[test]
fn packet_id_offset_rejects_others() {
    assert_eq!(
        publish_packet_id_offset(&hex("30 07 00 03 61 2f 62 68 69")),
        None
    );
    assert_eq!(publish_packet_id_offset(&hex("40 02 00 07")), None);
    assert_eq!(publish_packet_id_offset(&hex("32 05 00 03 61 2f 62")), None);
    assert_eq!(publish_packet_id_offset(&[]), None);
}

#[test]
#[should_panic(expected = "QoS 1 or QoS 2 PUBLISH")]
fn patch_packet_id_panics_on_qos0() {
    let mut frame = hex("30 07 00 03 61 2f 62 68 69");
    patch_packet_id(&mut frame, 1);
}

// ---- full CONNECT round trip in both versions ----

#[test]
fn connect_round_trip_full() {
    for protocol in [V311, V5] {
        let properties = if protocol == V5 {
            Properties {
                session_expiry_interval: Some(60),
                receive_maximum: Some(20),
                user_properties: vec![("a".to_string(), "b".to_string())],
                ..Properties::default()
            }
        } else {
            Properties::default()
        };
        let will_properties = if protocol == V5 {
            Properties {
                will_delay_interval: Some(5),
                content_type: Some("text/plain".to_string()),
                ..Properties::default()
            }
        } else {
            Properties::default()
        };
        let packet = Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: false,
            keep_alive: 300,
            client_id: "client-1".to_string(),
            will: Some(Will {
                topic: "status/client-1".to_string(),
                payload: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: will_properties,
            }),
            username: Some("user".to_string()),
            password: Some(Bytes::from_static(b"secret")),
            properties,
        }));
        let bytes = encode_to_vec(&packet, protocol);
        assert_eq!(decode_one(&bytes, protocol), packet, "{protocol:?}");
    }
}
