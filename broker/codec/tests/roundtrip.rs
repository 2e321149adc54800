//! Property tests: every valid packet survives `decode(encode(p))` in both
//! protocol versions, `encoded_len` matches `encode`, every prefix of an
//! encoded packet is incomplete, and arbitrary bytes never make the decoder
//! panic.

use bytes::{Bytes, BytesMut};
use coremq_codec::{
    decode, encode, encoded_len, patch_packet_id, publish_packet_id_offset, Auth, ConnAck, Connect,
    DecodeContext, Disconnect, Packet, Properties, Protocol, PubResponse, Publish, QoS, ReasonCode,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
    MAX_PACKET_SIZE,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn context(protocol: Protocol) -> DecodeContext {
    DecodeContext {
        protocol,
        max_packet_size: MAX_PACKET_SIZE,
        topic_alias_max: u16::MAX,
    }
}

// ---- field strategies ----

/// Short UTF-8 strings without U+0000, including multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _.\\-é€😀]{0,12}"
}

/// Valid Topic Names: one to four levels, no wildcards, levels may be empty.
fn topic_name() -> impl Strategy<Value = String> {
    vec("[a-z0-9$é]{0,5}", 1..4)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a topic name is not empty", |name| !name.is_empty())
}

/// Topic Filters, wildcards included. The decoder keeps any UTF-8 filter,
/// so these need not be valid.
fn topic_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9/+#$]{1,16}",
        "\\$share/[a-z+]{0,3}/[a-z0-9/+#]{0,8}",
    ]
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn subscription_identifier() -> impl Strategy<Value = u32> {
    1..=268_435_455u32
}

fn user_properties() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..3)
}

fn reason() -> impl Strategy<Value = ReasonCode> {
    any::<u8>().prop_map(ReasonCode)
}

// ---- property strategies, one per property section ----

fn connect_properties() -> impl Strategy<Value = Properties> {
    (
        option::of(any::<u32>()),
        option::of(text()),
        option::of(binary()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(1..=u16::MAX),
        option::of(any::<u16>()),
        option::of(1..=u32::MAX),
        user_properties(),
    )
        .prop_map(
            |(
                session_expiry_interval,
                authentication_method,
                authentication_data,
                request_problem_information,
                request_response_information,
                receive_maximum,
                topic_alias_maximum,
                maximum_packet_size,
                user_properties,
            )| Properties {
                session_expiry_interval,
                // CONNECT may carry Authentication Data only with a method.
                authentication_data: authentication_data
                    .filter(|_| authentication_method.is_some()),
                authentication_method,
                request_problem_information,
                request_response_information,
                receive_maximum,
                topic_alias_maximum,
                maximum_packet_size,
                user_properties,
                ..Properties::default()
            },
        )
}

fn connack_properties() -> impl Strategy<Value = Properties> {
    let first = (
        option::of(any::<u32>()),
        option::of(text()),
        option::of(any::<u16>()),
        option::of(text()),
        option::of(binary()),
        option::of(text()),
        option::of(text()),
        option::of(text()),
    );
    let second = (
        option::of(1..=u16::MAX),
        option::of(any::<u16>()),
        option::of(0..=1u8),
        option::of(any::<bool>()),
        option::of(1..=u32::MAX),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        user_properties(),
    );
    (first, second).prop_map(
        |(
            (
                session_expiry_interval,
                assigned_client_identifier,
                server_keep_alive,
                authentication_method,
                authentication_data,
                response_information,
                server_reference,
                reason_string,
            ),
            (
                receive_maximum,
                topic_alias_maximum,
                maximum_qos,
                retain_available,
                maximum_packet_size,
                wildcard_subscription_available,
                subscription_identifier_available,
                shared_subscription_available,
                user_properties,
            ),
        )| Properties {
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
            authentication_data,
            response_information,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            maximum_qos,
            retain_available,
            maximum_packet_size,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available,
            user_properties,
            ..Properties::default()
        },
    )
}

/// Properties shared by PUBLISH and the Will.
fn message_properties() -> impl Strategy<Value = Properties> {
    (
        option::of(0..=1u8),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
    )
        .prop_map(
            |(
                payload_format_indicator,
                message_expiry_interval,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            )| Properties {
                payload_format_indicator,
                message_expiry_interval,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
                ..Properties::default()
            },
        )
}

fn will_properties() -> impl Strategy<Value = Properties> {
    (message_properties(), option::of(any::<u32>())).prop_map(|(mut properties, delay)| {
        properties.will_delay_interval = delay;
        properties
    })
}

fn publish_properties() -> impl Strategy<Value = Properties> {
    (
        message_properties(),
        vec(subscription_identifier(), 0..3),
        option::of(1..=u16::MAX),
    )
        .prop_map(|(mut properties, identifiers, alias)| {
            properties.subscription_identifiers = identifiers;
            properties.topic_alias = alias;
            properties
        })
}

/// Reason String and User Properties: the whole set allowed in PUBACK,
/// PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
fn reason_properties() -> impl Strategy<Value = Properties> {
    (option::of(text()), user_properties()).prop_map(|(reason_string, user_properties)| {
        Properties {
            reason_string,
            user_properties,
            ..Properties::default()
        }
    })
}

fn disconnect_properties() -> impl Strategy<Value = Properties> {
    (
        reason_properties(),
        option::of(any::<u32>()),
        option::of(text()),
    )
        .prop_map(|(mut properties, session_expiry, server_reference)| {
            properties.session_expiry_interval = session_expiry;
            properties.server_reference = server_reference;
            properties
        })
}

fn auth_properties() -> impl Strategy<Value = Properties> {
    (
        reason_properties(),
        option::of(text()),
        option::of(binary()),
    )
        .prop_map(|(mut properties, method, data)| {
            properties.authentication_method = method;
            properties.authentication_data = data;
            properties
        })
}

fn subscribe_properties() -> impl Strategy<Value = Properties> {
    (option::of(subscription_identifier()), user_properties()).prop_map(
        |(identifier, user_properties)| Properties {
            subscription_identifiers: identifier.into_iter().collect(),
            user_properties,
            ..Properties::default()
        },
    )
}

fn user_properties_only() -> impl Strategy<Value = Properties> {
    user_properties().prop_map(|user_properties| Properties {
        user_properties,
        ..Properties::default()
    })
}

/// `properties` in MQTT 5.0, nothing in 3.1.1, which has no properties.
fn for_version(
    protocol: Protocol,
    properties: impl Strategy<Value = Properties>,
) -> impl Strategy<Value = Properties> {
    properties.prop_map(move |properties| match protocol {
        Protocol::V5 => properties,
        Protocol::V311 => Properties::default(),
    })
}

// ---- packet strategies ----

fn connect(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let will = option::of((
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        for_version(protocol, will_properties()),
    ));
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        will,
        option::of(text()),
        option::of(binary()),
        for_version(protocol, connect_properties()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // MQTT 3.1.1 forbids a password without a user name.
                let password = match protocol {
                    Protocol::V311 if username.is_none() => None,
                    _ => password,
                };
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will: will.map(|(topic, payload, qos, retain, properties)| Will {
                        topic,
                        payload,
                        qos,
                        retain,
                        properties,
                    }),
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let reason = match protocol {
        Protocol::V5 => reason().boxed(),
        Protocol::V311 => prop_oneof![
            Just(ReasonCode::SUCCESS),
            Just(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
            Just(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
            Just(ReasonCode::SERVER_UNAVAILABLE),
            Just(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
            Just(ReasonCode::NOT_AUTHORIZED),
        ]
        .boxed(),
    };
    (
        any::<bool>(),
        reason,
        for_version(protocol, connack_properties()),
    )
        .prop_map(|(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason,
                properties,
            })
        })
}

fn publish(protocol: Protocol) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        for_version(protocol, publish_properties()),
        vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
        .prop_map(
            |(dup, qos, retain, topic, packet_id, properties, payload, drop_topic)| {
                let qos_above_0 = qos != QoS::AtMostOnce;
                // With a Topic Alias the topic may be empty.
                let topic = if drop_topic && properties.topic_alias.is_some() {
                    String::new()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && qos_above_0,
                    qos,
                    retain,
                    topic,
                    packet_id: qos_above_0.then_some(packet_id),
                    properties,
                    payload: Bytes::from(payload),
                })
            },
        )
}

fn pub_response(protocol: Protocol) -> impl Strategy<Value = PubResponse> {
    (
        packet_id(),
        reason(),
        for_version(protocol, reason_properties()),
    )
        .prop_map(move |(packet_id, reason, properties)| PubResponse {
            packet_id,
            // 3.1.1 carries no reason code, so it decodes as Success.
            reason: match protocol {
                Protocol::V5 => reason,
                Protocol::V311 => ReasonCode::SUCCESS,
            },
            properties,
        })
}

fn subscription_options(protocol: Protocol) -> impl Strategy<Value = SubscriptionOptions> {
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    (qos(), any::<bool>(), any::<bool>(), retain_handling).prop_map(
        move |(qos, no_local, retain_as_published, retain_handling)| match protocol {
            Protocol::V5 => SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
            Protocol::V311 => SubscriptionOptions::with_qos(qos),
        },
    )
}

fn subscribe(protocol: Protocol) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        for_version(protocol, subscribe_properties()),
        vec((topic_filter(), subscription_options(protocol)), 1..4),
    )
        .prop_map(|(packet_id, properties, mut filters)| {
            // No Local on a shared subscription is a Protocol Error.
            for (filter, options) in &mut filters {
                if filter.starts_with("$share/") {
                    options.no_local = false;
                }
            }
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn suback(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let code = match protocol {
        Protocol::V5 => reason().boxed(),
        Protocol::V311 => prop_oneof![
            Just(ReasonCode::GRANTED_QOS_0),
            Just(ReasonCode::GRANTED_QOS_1),
            Just(ReasonCode::GRANTED_QOS_2),
            Just(ReasonCode::UNSPECIFIED_ERROR),
        ]
        .boxed(),
    };
    (
        packet_id(),
        for_version(protocol, reason_properties()),
        vec(code, 1..4),
    )
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reasons,
            })
        })
}

fn unsubscribe(protocol: Protocol) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        for_version(protocol, user_properties_only()),
        vec(topic_filter(), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn unsuback(protocol: Protocol) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        for_version(protocol, reason_properties()),
        vec(reason(), 1..4),
    )
        .prop_map(move |(packet_id, properties, reasons)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reasons: match protocol {
                    Protocol::V5 => reasons,
                    Protocol::V311 => Vec::new(),
                },
            })
        })
}

fn disconnect(protocol: Protocol) -> impl Strategy<Value = Packet> {
    (reason(), for_version(protocol, disconnect_properties())).prop_map(
        move |(reason, properties)| {
            Packet::Disconnect(Disconnect {
                reason: match protocol {
                    Protocol::V5 => reason,
                    Protocol::V311 => ReasonCode::SUCCESS,
                },
                properties,
            })
        },
    )
}

fn auth() -> impl Strategy<Value = Packet> {
    (reason(), auth_properties())
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
}

fn any_packet(protocol: Protocol) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(protocol),
        connack(protocol),
        publish(protocol),
        pub_response(protocol).prop_map(Packet::PubAck),
        pub_response(protocol).prop_map(Packet::PubRec),
        pub_response(protocol).prop_map(Packet::PubRel),
        pub_response(protocol).prop_map(Packet::PubComp),
        subscribe(protocol),
        suback(protocol),
        unsubscribe(protocol),
        unsuback(protocol),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(protocol),
    ];
    match protocol {
        Protocol::V5 => prop_oneof![14 => common, 1 => auth()].boxed(),
        Protocol::V311 => common.boxed(),
    }
}

fn any_protocol_and_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    prop_oneof![
        any_packet(Protocol::V311).prop_map(|packet| (Protocol::V311, packet)),
        any_packet(Protocol::V5).prop_map(|packet| (Protocol::V5, packet)),
    ]
}

fn encode_to_bytes(packet: &Packet, protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn round_trip((protocol, packet) in any_protocol_and_packet()) {
        let mut buf = encode_to_bytes(&packet, protocol);
        prop_assert_eq!(buf.len(), encoded_len(&packet, protocol));

        let decoded = decode(&mut buf, &context(protocol));
        prop_assert_eq!(decoded, Ok(Some(packet)));
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    }

    #[test]
    fn prefixes_are_incomplete((protocol, packet) in any_protocol_and_packet()) {
        let whole = encode_to_bytes(&packet, protocol);
        let ctx = context(protocol);
        for end in 0..whole.len() {
            let mut prefix = BytesMut::from(&whole[..end]);
            prop_assert_eq!(decode(&mut prefix, &ctx), Ok(None), "prefix of {} bytes", end);
            prop_assert_eq!(prefix.len(), end);
        }
    }

    #[test]
    fn concatenated_packets_decode_in_order(
        (protocol, packets) in prop_oneof![
            vec(any_packet(Protocol::V311), 1..5).prop_map(|p| (Protocol::V311, p)),
            vec(any_packet(Protocol::V5), 1..5).prop_map(|p| (Protocol::V5, p)),
        ]
    ) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            encode(packet, protocol, &mut buf);
        }
        let ctx = context(protocol);
        for packet in packets {
            prop_assert_eq!(decode(&mut buf, &ctx), Ok(Some(packet)));
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn patched_packet_id_decodes(
        packet in publish(Protocol::V5),
        new_id in packet_id(),
    ) {
        let mut frame = encode_to_bytes(&packet, Protocol::V5);
        let Packet::Publish(original) = packet else {
            unreachable!("the strategy yields PUBLISH");
        };
        if original.qos == QoS::AtMostOnce {
            prop_assert_eq!(publish_packet_id_offset(&frame), None);
            return Ok(());
        }
        patch_packet_id(&mut frame, new_id);
        let decoded = decode(&mut frame, &context(Protocol::V5));
        let expected = Publish { packet_id: Some(new_id), ..original };
        prop_assert_eq!(decoded, Ok(Some(Packet::Publish(expected))));
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        for protocol in [Protocol::V311, Protocol::V5] {
            let ctx = DecodeContext {
                protocol,
                max_packet_size: 200,
                topic_alias_max: 5,
            };
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf, &ctx) {}
        }
    }

    /// Random bodies behind a Remaining Length that matches them reach the
    /// body decoders, which fully random input rarely does.
    #[test]
    fn random_bodies_never_panic(
        first_byte in any::<u8>(),
        body in vec(any::<u8>(), 0..120),
    ) {
        let mut bytes = vec![first_byte, body.len() as u8];
        bytes.extend_from_slice(&body);
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(packet)) = decode(&mut buf, &context(protocol)) {
                // Whatever decodes must encode to something that decodes
                // to the same packet.
                let mut again = encode_to_bytes(&packet, protocol);
                let protocol = match &packet {
                    Packet::Connect(connect) => connect.protocol,
                    _ => protocol,
                };
                prop_assert_eq!(decode(&mut again, &context(protocol)), Ok(Some(packet)));
            }
        }
    }
}
