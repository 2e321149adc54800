//! MQTT 5.0 edge cases that brokers commonly get wrong, each checked
//! against a real `coremq` process over raw sockets: the exact reason code
//! the specification names, the close that follows, and that nothing leaks
//! to a subscriber.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use coremq_tests::packets::{self, connect_persistent, connect_v5, publish, retained};
use coremq_tests::{
    AckKind, Broker, Packet, Protocol, Publish, QoS, RawClient, ReasonCode, RecvError,
    RetainHandling, SubscriptionOptions,
};

/// How long a check that "nothing arrives" waits.
const QUIET: Duration = Duration::from_secs(2);

/// How long the broker has to close a connection after a violation.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// Starts a subscriber `client_id` on `filter` at `qos`.
fn subscriber(broker: &Broker, client_id: &str, filter: &str, qos: QoS) -> RawClient {
    let (mut client, _) = RawClient::connect_v5(broker.addr(), client_id);
    client.subscribe(filter, qos);
    client
}

/// Connects a raw publisher and returns it with the Topic Alias Maximum
/// from its CONNACK (0 when absent).
fn publisher(broker: &Broker, client_id: &str) -> (RawClient, u16) {
    let (client, connack) = RawClient::connect_v5(broker.addr(), client_id);
    let topic_alias_max = connack.properties.topic_alias_maximum.unwrap_or(0);
    (client, topic_alias_max)
}

/// A QoS 0 PUBLISH to `topic` (may be empty) with Topic Alias `alias`.
fn aliased(topic: &str, alias: u16, payload: &[u8]) -> Packet {
    let mut packet = publish(topic, QoS::AtMostOnce, 0, payload);
    packet.properties.topic_alias = Some(alias);
    Packet::Publish(packet)
}

/// Checks that a connection whose CONNECT is invalid gets no CONNACK other
/// than one with a reason code in `allowed`, and is closed within 2 s.
#[track_caller]
fn expect_connect_rejected(client: &mut RawClient, allowed: &[ReasonCode]) {
    match client.read_packet_within(CLOSE_WITHIN) {
        Err(error) if error.is_closed() => return,
        Ok(Packet::ConnAck(connack)) => assert!(
            allowed.contains(&connack.reason),
            "CONNACK reason 0x{:02X} is not one of {allowed:02X?}",
            connack.reason.0
        ),
        Ok(other) => panic!("expected a rejecting CONNACK or a close, got {other:?}"),
        Err(error) => panic!("expected a rejecting CONNACK or a close: {error}"),
    }
    match client.read_packet_within(CLOSE_WITHIN) {
        Err(error) if error.is_closed() => {}
        Ok(other) => panic!("expected the close after the CONNACK, got {other:?}"),
        Err(error) => panic!("expected the close after the CONNACK: {error}"),
    }
}

/// Checks that the connection is closed within 2 s, and that a DISCONNECT
/// sent before the close, if any, carries one of `allowed`.
#[track_caller]
fn expect_closed_with_optional(client: &mut RawClient, allowed: &[ReasonCode]) {
    if let Some(disconnect) = client.expect_closed_within(CLOSE_WITHIN) {
        assert!(
            allowed.contains(&disconnect.reason),
            "DISCONNECT reason 0x{:02X} is not one of {allowed:02X?}",
            disconnect.reason.0
        );
    }
}

/// Payloads of the PUBLISH packets `client` receives until it is quiet.
fn received_payloads(client: &mut RawClient) -> Vec<Vec<u8>> {
    client
        .drain_publishes(QUIET)
        .into_iter()
        .map(|publish| publish.payload.to_vec())
        .collect()
}

// ---------------------------------------------------------------------------
// Topic Alias: 0 and values above the maximum are invalid (0x94). An empty
// topic needs a mapped alias (0x82), and mappings end with the connection.
// The broker sends only the aliases a client allowed.
// ---------------------------------------------------------------------------

#[test]
fn topic_alias_zero_rejected() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "a/b", QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    publisher.send_hex("30 0a 00 03 61 2f 62 03 23 00 00 78");

    publisher.expect_disconnect(ReasonCode::TOPIC_ALIAS_INVALID);
    sub.expect_silence(QUIET);
}

#[test]
fn topic_alias_above_maximum_rejected() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "a/b", QoS::AtMostOnce);
    let (mut publisher, topic_alias_max) = publisher(&broker, "p");

    let alias = topic_alias_max.checked_add(1).expect("maximum below 65535");
    publisher.send(&aliased("a/b", alias, b"x"));

    publisher.expect_disconnect(ReasonCode::TOPIC_ALIAS_INVALID);
    sub.expect_silence(QUIET);
}

#[test]
fn topic_alias_above_configured_maximum_rejected() {
    let broker = Broker::start(&["--topic-alias-maximum", "3"]);
    let mut sub = subscriber(&broker, "s", "a/b", QoS::AtMostOnce);
    let (mut publisher, topic_alias_max) = publisher(&broker, "p");
    assert_eq!(topic_alias_max, 3, "CONNACK Topic Alias Maximum");

    publisher.send(&aliased("a/b", 3, b"ok"));
    publisher.send(&aliased("a/b", 4, b"x"));

    publisher.expect_disconnect(ReasonCode::TOPIC_ALIAS_INVALID);
    assert_eq!(received_payloads(&mut sub), vec![b"ok".to_vec()]);
}

#[test]
fn empty_topic_without_alias_rejected() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "#", QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    publisher.send_hex("30 04 00 00 00 78");

    publisher.expect_disconnect(ReasonCode::PROTOCOL_ERROR);
    sub.expect_silence(QUIET);
}

#[test]
fn empty_topic_unmapped_alias_rejected() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "#", QoS::AtMostOnce);
    let (mut publisher, topic_alias_max) = publisher(&broker, "p");
    assert!(
        topic_alias_max >= 5,
        "the default Topic Alias Maximum should allow alias 5, got {topic_alias_max}"
    );

    publisher.send_hex("30 07 00 00 03 23 00 05 78");

    publisher.expect_disconnect(ReasonCode::PROTOCOL_ERROR);
    sub.expect_silence(QUIET);
}

#[test]
fn topic_alias_maps_and_remaps() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "a/#", QoS::AtMostOnce);
    let (mut publisher, topic_alias_max) = publisher(&broker, "p");
    assert!(
        topic_alias_max >= 1,
        "the broker announces no Topic Alias Maximum"
    );

    publisher.send(&aliased("a/b", 1, b"p1"));
    publisher.send(&aliased("", 1, b"p2"));
    publisher.send(&aliased("a/c", 1, b"p3"));
    publisher.send(&aliased("", 1, b"p4"));
    publisher.ping();

    let received: Vec<(String, Vec<u8>)> = sub
        .drain_publishes(QUIET)
        .into_iter()
        .map(|publish| (publish.topic, publish.payload.to_vec()))
        .collect();
    let expected = vec![
        ("a/b".to_string(), b"p1".to_vec()),
        ("a/b".to_string(), b"p2".to_vec()),
        ("a/c".to_string(), b"p3".to_vec()),
        ("a/c".to_string(), b"p4".to_vec()),
    ];
    assert_eq!(received, expected);
}

#[test]
fn topic_alias_forgotten_after_reconnect() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "a/b", QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");
    publisher.send(&aliased("a/b", 1, b"first"));
    publisher.ping();
    publisher.disconnect(ReasonCode::NORMAL_DISCONNECTION);

    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");
    publisher.send_hex("30 07 00 00 03 23 00 01 78");

    publisher.expect_disconnect(ReasonCode::PROTOCOL_ERROR);
    assert_eq!(received_payloads(&mut sub), vec![b"first".to_vec()]);
}

#[test]
fn outbound_alias_needs_client_maximum() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "ta/#", QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    for round in 0..3 {
        for topic in ["ta/1", "ta/2", "ta/3"] {
            let payload = format!("{topic}#{round}");
            publisher.send(&Packet::Publish(publish(
                topic,
                QoS::AtMostOnce,
                0,
                payload.as_bytes(),
            )));
        }
    }

    let received = sub.drain_publishes(QUIET);
    assert_eq!(received.len(), 9, "messages received");
    for publish in &received {
        assert_eq!(
            publish.properties.topic_alias, None,
            "a client that sent no Topic Alias Maximum got an alias (MQTT-3.1.2-27)"
        );
        assert!(
            !publish.topic.is_empty(),
            "PUBLISH with an empty topic name"
        );
    }
}

#[test]
fn outbound_alias_within_client_maximum() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient::connect(broker.addr());
    let mut connect = connect_v5("s");
    connect.properties.topic_alias_maximum = Some(2);
    let connack = sub.connect_with(connect);
    assert_eq!(connack.reason, ReasonCode::SUCCESS, "CONNACK");
    sub.subscribe("ta/#", QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    let topics = ["ta/1", "ta/2", "ta/3", "ta/4", "ta/5"];
    let mut sent = Vec::new();
    for round in 0..3 {
        for topic in topics {
            let payload = format!("{round}");
            publisher.send(&Packet::Publish(publish(
                topic,
                QoS::AtMostOnce,
                0,
                payload.as_bytes(),
            )));
            sent.push((topic.to_string(), payload.into_bytes()));
        }
    }

    let received = sub.drain_publishes(QUIET);
    let mut aliases: HashMap<u16, String> = HashMap::new();
    let mut resolved = Vec::new();
    for publish in received {
        let topic = match publish.properties.topic_alias {
            Some(alias) => {
                assert!(
                    (1..=2).contains(&alias),
                    "alias {alias} exceeds the client's Topic Alias Maximum of 2 (MQTT-3.1.2-26)"
                );
                if !publish.topic.is_empty() {
                    aliases.insert(alias, publish.topic.clone());
                }
                aliases
                    .get(&alias)
                    .unwrap_or_else(|| panic!("alias {alias} used before it was mapped"))
                    .clone()
            }
            None => {
                assert!(
                    !publish.topic.is_empty(),
                    "empty topic name without an alias"
                );
                publish.topic.clone()
            }
        };
        resolved.push((topic, publish.payload.to_vec()));
    }
    assert_eq!(resolved, sent, "topics after resolving aliases");
}

// ---------------------------------------------------------------------------
// Wildcards: `+` matches one level, empty levels included, and `#` matches
// the parent level too. Topics are not normalised. Invalid filters are not
// granted, and a Topic Name may not contain a wildcard.
// ---------------------------------------------------------------------------

/// Topics published by the wildcard tests.
const WILDCARD_TOPICS: [&str; 7] = [
    "sport",
    "sport/",
    "sport/tennis",
    "/finance",
    "finance",
    "a//c",
    "a/b/c",
];

/// Subscribes one client to `filter`, publishes every topic in
/// [`WILDCARD_TOPICS`] with the topic as the payload, and checks that
/// exactly `expected` arrive.
#[track_caller]
fn check_filter_matches(filter: &str, expected: &[&str]) {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", filter, QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    for topic in WILDCARD_TOPICS {
        publisher.send(&Packet::Publish(publish(
            topic,
            QoS::AtMostOnce,
            0,
            topic.as_bytes(),
        )));
    }

    let mut received: Vec<String> = sub
        .drain_publishes(QUIET)
        .into_iter()
        .map(|publish| publish.topic)
        .collect();
    received.sort();
    let mut expected: Vec<String> = expected.iter().map(|topic| topic.to_string()).collect();
    expected.sort();
    assert_eq!(received, expected, "topics matched by {filter:?}");
}

#[test]
fn hash_matches_parent_level() {
    check_filter_matches("sport/#", &["sport", "sport/", "sport/tennis"]);
}

#[test]
fn plus_matches_empty_last_level() {
    check_filter_matches("sport/+", &["sport/", "sport/tennis"]);
}

#[test]
fn plus_plus_matches_leading_slash() {
    check_filter_matches("+/+", &["sport/", "sport/tennis", "/finance"]);
}

#[test]
fn slash_plus_matches_leading_slash() {
    check_filter_matches("/+", &["/finance"]);
}

#[test]
fn single_plus_matches_one_level() {
    check_filter_matches("+", &["sport", "finance"]);
}

#[test]
fn plus_matches_empty_middle_level() {
    check_filter_matches("a/+/c", &["a//c", "a/b/c"]);
}

#[test]
fn hash_alone_matches_everything() {
    check_filter_matches("#", &WILDCARD_TOPICS);
}

/// Checks that `filter` is not granted: either SUBACK 0x8F, or a close
/// with an optional DISCONNECT 0x81 or 0x82. When granted 0x8F, checks
/// that `probe_topic` is not delivered.
#[track_caller]
fn check_filter_rejected(filter: &str, probe_topic: &str) {
    let broker = Broker::start(&[]);
    let (mut sub, _) = RawClient::connect_v5(broker.addr(), "s");
    sub.send(&Packet::Subscribe(packets::subscribe(
        1,
        &[(filter, SubscriptionOptions::with_qos(QoS::AtMostOnce))],
    )));

    match sub.read_packet() {
        Ok(Packet::SubAck(suback)) => {
            assert_eq!(
                suback.reasons,
                vec![ReasonCode::TOPIC_FILTER_INVALID],
                "SUBACK for invalid filter {filter:?}"
            );
        }
        Ok(Packet::Disconnect(disconnect)) => {
            assert!(
                [ReasonCode::MALFORMED_PACKET, ReasonCode::PROTOCOL_ERROR]
                    .contains(&disconnect.reason),
                "DISCONNECT reason for invalid filter {filter:?}: 0x{:02X}",
                disconnect.reason.0
            );
            sub.expect_closed_within(CLOSE_WITHIN);
            return;
        }
        Err(error) if error.is_closed() => return,
        other => panic!("expected SUBACK 0x8F or a close for {filter:?}, got {other:?}"),
    }

    let (mut publisher, _) = publisher(&broker, "p");
    publisher.send(&Packet::Publish(publish(
        probe_topic,
        QoS::AtMostOnce,
        0,
        b"x",
    )));
    sub.expect_silence(QUIET);
}

#[test]
fn filter_hash_after_text_rejected() {
    check_filter_rejected("sport/tennis#", "sport/tennis");
}

#[test]
fn filter_hash_not_last_rejected() {
    check_filter_rejected("sport/#/x", "sport/a/x");
}

#[test]
fn filter_plus_inside_level_rejected() {
    check_filter_rejected("sp+rt", "sport");
}

#[test]
fn plus_in_topic_name_rejected() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "a/#", QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    publisher.send_hex("30 07 00 03 61 2f 2b 00 78");

    let disconnect = publisher.expect_closed_within(CLOSE_WITHIN);
    let reason = disconnect.map(|packet| packet.reason);
    assert!(
        matches!(
            reason,
            Some(ReasonCode::TOPIC_NAME_INVALID) | Some(ReasonCode::PROTOCOL_ERROR)
        ),
        "expected DISCONNECT 0x90 or 0x82, got {reason:?}"
    );
    sub.expect_silence(QUIET);
}

#[test]
fn hash_in_topic_name_rejected() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "a/#", QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    // PUBLISH QoS 0 to `a/#`, payload `x`.
    publisher.send_hex("30 07 00 03 61 2f 23 00 78");

    let disconnect = publisher.expect_closed_within(CLOSE_WITHIN);
    let reason = disconnect.map(|packet| packet.reason);
    assert!(
        matches!(
            reason,
            Some(ReasonCode::TOPIC_NAME_INVALID) | Some(ReasonCode::PROTOCOL_ERROR)
        ),
        "expected DISCONNECT 0x90 or 0x82, got {reason:?}"
    );
    sub.expect_silence(QUIET);
}

// ---------------------------------------------------------------------------
// Will: only DISCONNECT with reason 0x00 deletes it (MQTT-3.1.2-8,
// MQTT-3.14.4-3). Reason 0x04, any error code and an unlisted code keep it.
// ---------------------------------------------------------------------------

/// The Will CONNECT as `t1`: Will on `w/t` with payload `bye`, Will Delay 0,
/// Session Expiry 0.
const WILL_CONNECT: &str =
    "10 1a 00 04 4d 51 54 54 05 06 00 3c 00 00 02 74 31 00 00 03 77 2f 74 00 03 62 79 65";

/// Starts a broker, a subscriber on `w/t`, and a client with a Will.
fn will_setup() -> (Broker, RawClient, RawClient) {
    let broker = Broker::start(&[]);
    let sub = subscriber(&broker, "s", "w/t", QoS::AtMostOnce);
    let mut will_client = RawClient::connect(broker.addr());
    will_client.send_hex(WILL_CONNECT);
    match will_client.read_packet() {
        Ok(Packet::ConnAck(connack)) => {
            assert_eq!(
                connack.reason,
                ReasonCode::SUCCESS,
                "CONNACK to the Will CONNECT"
            )
        }
        other => panic!("expected CONNACK to the Will CONNECT, got {other:?}"),
    }
    (broker, sub, will_client)
}

#[track_caller]
fn expect_will(sub: &mut RawClient, within: Duration) {
    let will = sub.expect_publish_within(within);
    assert_eq!(will.topic, "w/t", "Will topic");
    assert_eq!(&will.payload[..], b"bye", "Will payload");
}

#[test]
fn will_sent_on_connection_abort() {
    let (_broker, mut sub, will_client) = will_setup();

    will_client.abort();

    expect_will(&mut sub, Duration::from_secs(3));
}

#[test]
fn will_dropped_on_normal_disconnect() {
    let (_broker, mut sub, mut will_client) = will_setup();

    will_client.send_hex("e0 00");

    will_client.expect_closed_within(CLOSE_WITHIN);
    sub.expect_silence(Duration::from_secs(3));
}

#[test]
fn will_sent_on_disconnect_with_will() {
    let (_broker, mut sub, mut will_client) = will_setup();

    will_client.send_hex("e0 02 04 00");

    // One second for the broker plus one second of slack.
    expect_will(&mut sub, Duration::from_secs(2));
    will_client.expect_closed_within(CLOSE_WITHIN);
}

#[test]
fn will_sent_on_error_disconnect() {
    let (_broker, mut sub, mut will_client) = will_setup();

    will_client.send_hex("e0 02 80 00");

    expect_will(&mut sub, Duration::from_secs(3));
    will_client.expect_closed_within(CLOSE_WITHIN);
}

#[test]
fn will_sent_on_unlisted_disconnect_reason() {
    let (_broker, mut sub, mut will_client) = will_setup();

    will_client.send_hex("e0 02 ff 00");

    expect_will(&mut sub, Duration::from_secs(3));
    expect_closed_with_optional(
        &mut will_client,
        &[ReasonCode::MALFORMED_PACKET, ReasonCode::PROTOCOL_ERROR],
    );
}

// ---------------------------------------------------------------------------
// Maximum Packet Size: the size is the whole packet, fixed header included.
// Outbound, a packet above the client's limit is dropped and the connection
// goes on (MQTT-3.1.2-24, MQTT-3.1.2-25). Inbound, a packet above the
// broker's limit gets DISCONNECT 0x95.
// ---------------------------------------------------------------------------

#[test]
fn outbound_oversized_message_dropped() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient::connect(broker.addr());
    // Client id `t1`, Maximum Packet Size 64.
    sub.send_hex("10 14 00 04 4d 51 54 54 05 02 00 3c 05 27 00 00 00 40 00 02 74 31");
    match sub.read_packet() {
        Ok(Packet::ConnAck(connack)) => assert_eq!(connack.reason, ReasonCode::SUCCESS),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    sub.subscribe("m/t", QoS::AtLeastOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    publisher.publish(publish("m/t", QoS::AtLeastOnce, 1, &[b'c'; 10]));
    let (packet, size) = sub
        .read_sized_packet_within(Duration::from_secs(3))
        .expect("calibration message");
    let Packet::Publish(calibration) = packet else {
        panic!("expected the calibration PUBLISH, got {packet:?}");
    };
    sub.acknowledge(&calibration);
    let overhead = size - 10;
    assert!(overhead < 54, "overhead of {overhead} bytes leaves no room");

    let fitting = vec![b'f'; 64 - overhead];
    publisher.publish(publish("m/t", QoS::AtLeastOnce, 2, &fitting));
    let (packet, size) = sub
        .read_sized_packet_within(Duration::from_secs(3))
        .expect("the message of exactly 64 bytes");
    let Packet::Publish(fitting_publish) = packet else {
        panic!("expected PUBLISH, got {packet:?}");
    };
    assert_eq!(size, 64, "size of the fitting PUBLISH");
    assert_eq!(fitting_publish.payload.len(), fitting.len());
    sub.acknowledge(&fitting_publish);

    let oversized = vec![b'o'; 65 - overhead];
    publisher.publish(publish("m/t", QoS::AtLeastOnce, 3, &oversized));
    match sub.read_sized_packet_within(QUIET) {
        Err(RecvError::Timeout) => {}
        Ok((packet, size)) => {
            panic!("received a {size}-byte packet above the 64-byte limit: {packet:?}")
        }
        Err(error) => panic!("the subscriber lost its connection: {error}"),
    }
    sub.ping();

    publisher.publish(publish("m/t", QoS::AtLeastOnce, 4, b"small"));
    let after = sub.expect_publish();
    assert_eq!(
        &after.payload[..],
        b"small",
        "message after the dropped one"
    );
}

/// A QoS 0 PUBLISH to `m/t` whose encoded size is exactly `total` bytes.
fn publish_of_total_size(total: usize) -> Vec<u8> {
    let mut payload_len = total.saturating_sub(10);
    loop {
        let packet = Packet::Publish(publish("m/t", QoS::AtMostOnce, 0, &vec![b'z'; payload_len]));
        let bytes = packets::encode_packet(&packet, Protocol::V5);
        match bytes.len().cmp(&total) {
            std::cmp::Ordering::Equal => return bytes,
            std::cmp::Ordering::Less => payload_len += 1,
            std::cmp::Ordering::Greater => payload_len -= 1,
        }
    }
}

#[test]
fn inbound_packet_at_limit_accepted() {
    let broker = Broker::start(&["--max-packet-size", "200"]);
    let mut sub = subscriber(&broker, "s", "m/t", QoS::AtMostOnce);
    let (mut publisher, connack) = RawClient::connect_v5(broker.addr(), "p");
    let limit = connack
        .properties
        .maximum_packet_size
        .expect("CONNACK carries Maximum Packet Size");
    assert_eq!(limit, 200, "CONNACK Maximum Packet Size");

    publisher.send_bytes(&publish_of_total_size(limit as usize));
    publisher.ping();

    let received = sub.expect_publish();
    assert_eq!(received.topic, "m/t");
}

#[test]
fn inbound_packet_over_limit_rejected() {
    let broker = Broker::start(&["--max-packet-size", "200"]);
    let mut sub = subscriber(&broker, "s", "m/t", QoS::AtMostOnce);
    let (mut publisher, connack) = RawClient::connect_v5(broker.addr(), "p");
    let limit = connack
        .properties
        .maximum_packet_size
        .expect("CONNACK carries Maximum Packet Size");

    publisher.send_bytes(&publish_of_total_size(limit as usize + 1));

    publisher.expect_disconnect(ReasonCode::PACKET_TOO_LARGE);
    sub.expect_silence(QUIET);
}

#[test]
fn inbound_limit_counts_fixed_header() {
    // Remaining Length 199 plus a 1-byte type and a 2-byte length is 202.
    let broker = Broker::start(&["--max-packet-size", "200"]);
    let mut sub = subscriber(&broker, "s", "m/t", QoS::AtMostOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");
    let bytes = publish_of_total_size(202);
    assert_eq!(bytes[1..3], [0xC7, 0x01], "Remaining Length 199");

    publisher.send_bytes(&bytes);

    publisher.expect_disconnect(ReasonCode::PACKET_TOO_LARGE);
    sub.expect_silence(QUIET);
}

// ---------------------------------------------------------------------------
// Receive Maximum: more unacknowledged QoS 1/2 PUBLISH packets than the
// broker allows get DISCONNECT 0x93, never a PUBREC 0x93 (MQTT-3.5.2-1).
// Outbound, the broker keeps within the client's Receive Maximum
// (MQTT-3.3.4-9) while PINGRESP and QoS 0 keep flowing.
// ---------------------------------------------------------------------------

#[test]
fn receive_maximum_exceeded_disconnects() {
    let broker = Broker::start(&["--receive-maximum", "3"]);
    let (mut publisher, connack) = RawClient::connect_v5(broker.addr(), "p");
    let receive_maximum = connack
        .properties
        .receive_maximum
        .expect("CONNACK carries Receive Maximum");
    assert_eq!(receive_maximum, 3, "CONNACK Receive Maximum");

    for packet_id in 1..=receive_maximum {
        publisher.send(&Packet::Publish(publish(
            "rm/in",
            QoS::ExactlyOnce,
            packet_id,
            b"x",
        )));
        // 0x10 (No matching subscribers) is a success code too.
        let reason = publisher.expect_ack(packet_id, AckKind::PubRec);
        assert!(
            !reason.is_error(),
            "PUBREC reason for packet id {packet_id}: {reason:?}"
        );
    }
    publisher.send(&Packet::Publish(publish(
        "rm/in",
        QoS::ExactlyOnce,
        receive_maximum + 1,
        b"x",
    )));

    publisher.expect_disconnect(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
}

#[test]
fn outbound_receive_maximum_respected() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient::connect(broker.addr());
    // Client id `t1`, Receive Maximum 2.
    sub.send_hex("10 12 00 04 4d 51 54 54 05 02 00 3c 03 21 00 02 00 02 74 31");
    match sub.read_packet() {
        Ok(Packet::ConnAck(connack)) => assert_eq!(connack.reason, ReasonCode::SUCCESS),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    sub.subscribe("rm/t", QoS::AtLeastOnce);
    sub.subscribe("rm/q0", QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    for packet_id in 1..=5 {
        let payload = format!("m{packet_id}");
        publisher.publish(publish(
            "rm/t",
            QoS::AtLeastOnce,
            packet_id,
            payload.as_bytes(),
        ));
    }
    let mut in_flight = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sub.read_packet_within(left) {
            Ok(Packet::Publish(publish)) => in_flight.push(publish),
            Ok(other) => panic!("expected PUBLISH, got {other:?}"),
            Err(RecvError::Timeout) => break,
            Err(error) => panic!("subscriber connection failed: {error}"),
        }
    }
    assert_eq!(
        in_flight.len(),
        2,
        "unacknowledged QoS 1 messages in flight"
    );

    sub.ping();

    publisher.publish(publish("rm/q0", QoS::AtMostOnce, 0, b"q0"));
    let qos0 = sub.expect_publish();
    assert_eq!(
        qos0.topic, "rm/q0",
        "QoS 0 message while the quota is used up"
    );

    sub.acknowledge(&in_flight[0]);
    let next = sub.expect_publish();
    assert_eq!(next.qos, QoS::AtLeastOnce);
    sub.expect_silence(QUIET);
}

// ---------------------------------------------------------------------------
// QoS 2 receiver: a re-sent PUBLISH before PUBREL gets PUBREC again and is
// not delivered twice (MQTT-4.3.3-10). PUBREL gets PUBCOMP (MQTT-4.3.3-11).
// A packet id is reusable after PUBCOMP (MQTT-4.3.3-12), and after PUBACK
// for QoS 1 (MQTT-4.3.2-5).
// ---------------------------------------------------------------------------

#[test]
fn qos2_resent_publish_gets_pubrec() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "q2/t", QoS::ExactlyOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    let mut first = publish("q2/t", QoS::ExactlyOnce, 7, b"one");
    publisher.send(&Packet::Publish(first.clone()));
    assert_eq!(
        publisher.expect_ack(7, AckKind::PubRec),
        ReasonCode::SUCCESS
    );
    first.dup = true;
    for attempt in 1..=3 {
        publisher.send(&Packet::Publish(first.clone()));
        let reason = publisher.expect_ack(7, AckKind::PubRec);
        assert!(
            !reason.is_error(),
            "PUBREC reason on re-send {attempt}: {reason:?}"
        );
    }
    publisher.send_hex("62 02 00 07");
    assert_eq!(
        publisher.expect_ack(7, AckKind::PubComp),
        ReasonCode::SUCCESS,
        "PUBCOMP reason"
    );

    assert_eq!(received_payloads(&mut sub), vec![b"one".to_vec()]);
}

#[test]
fn pubrel_unknown_id_gets_pubcomp() {
    let broker = Broker::start(&[]);
    let (mut publisher, _) = publisher(&broker, "p");
    publisher.publish(publish("q2/t", QoS::ExactlyOnce, 7, b"one"));

    publisher.send_hex("62 02 00 07");

    let reason = publisher.expect_ack(7, AckKind::PubComp);
    assert!(
        reason == ReasonCode::PACKET_IDENTIFIER_NOT_FOUND || reason == ReasonCode::SUCCESS,
        "PUBCOMP reason for an unknown packet id: 0x{:02X} (0x92 expected)",
        reason.0
    );
    publisher.ping();
}

#[test]
fn qos2_packet_id_reusable_after_pubcomp() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "q2/t", QoS::ExactlyOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    publisher.publish(publish("q2/t", QoS::ExactlyOnce, 7, b"one"));
    publisher.publish(publish("q2/t", QoS::ExactlyOnce, 7, b"two"));

    assert_eq!(
        received_payloads(&mut sub),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
}

#[test]
fn qos1_packet_id_reusable_after_puback() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "q1/t", QoS::AtLeastOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    publisher.publish(publish("q1/t", QoS::AtLeastOnce, 9, b"a"));
    publisher.publish(publish("q1/t", QoS::AtLeastOnce, 9, b"b"));

    assert_eq!(
        received_payloads(&mut sub),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
}

// ---------------------------------------------------------------------------
// Session takeover: the old connection gets DISCONNECT 0x8E and is closed
// (MQTT-3.1.4-3). Clean Start 0 resumes the session with Session Present 1
// (MQTT-3.2.2-3), and Clean Start 1 discards it (MQTT-3.1.2-4, MQTT-3.2.2-2).
// ---------------------------------------------------------------------------

/// Connects `tk1` with Clean Start 0 and Session Expiry 60, subscribed to
/// `tk/t` at QoS 1, and checks Session Present is 0.
fn first_session(broker: &Broker) -> RawClient {
    let mut client = RawClient::connect(broker.addr());
    let connack = client.connect_with(connect_persistent("tk1", false, 60));
    assert_eq!(connack.reason, ReasonCode::SUCCESS, "first CONNACK");
    assert!(
        !connack.session_present,
        "Session Present on a fresh broker"
    );
    client.subscribe("tk/t", QoS::AtLeastOnce);
    client
}

#[test]
fn takeover_disconnects_old_connection() {
    let broker = Broker::start(&[]);
    let mut first = first_session(&broker);

    let mut second = RawClient::connect(broker.addr());
    let connack = second.connect_with(connect_persistent("tk1", false, 60));

    assert_eq!(connack.reason, ReasonCode::SUCCESS, "second CONNACK");
    assert!(connack.session_present, "Session Present after takeover");
    first.expect_disconnect(ReasonCode::SESSION_TAKEN_OVER);
}

#[test]
fn takeover_keeps_subscription() {
    let broker = Broker::start(&[]);
    let mut first = first_session(&broker);
    let mut second = RawClient::connect(broker.addr());
    second.connect_with(connect_persistent("tk1", false, 60));
    first.expect_disconnect(ReasonCode::SESSION_TAKEN_OVER);
    let (mut publisher, _) = publisher(&broker, "p");

    publisher.publish(publish("tk/t", QoS::AtLeastOnce, 1, b"after takeover"));

    let received = second.expect_publish();
    assert_eq!(&received.payload[..], b"after takeover");
}

#[test]
fn takeover_with_clean_start_discards_session() {
    let broker = Broker::start(&[]);
    let mut first = first_session(&broker);
    let mut second = RawClient::connect(broker.addr());
    second.connect_with(connect_persistent("tk1", false, 60));
    first.expect_disconnect(ReasonCode::SESSION_TAKEN_OVER);

    let mut third = RawClient::connect(broker.addr());
    let connack = third.connect_with(connect_persistent("tk1", true, 60));

    assert_eq!(connack.reason, ReasonCode::SUCCESS, "third CONNACK");
    assert!(
        !connack.session_present,
        "Session Present with Clean Start 1"
    );
    second.expect_disconnect(ReasonCode::SESSION_TAKEN_OVER);
    let (mut publisher, _) = publisher(&broker, "p");
    publisher.publish(publish("tk/t", QoS::AtLeastOnce, 1, b"x"));
    third.expect_silence(QUIET);
}

// ---------------------------------------------------------------------------
// Properties: a repeated property other than User Property is a Protocol
// Error, and so are a Subscription Identifier in a client's PUBLISH
// (MQTT-3.3.4-6), Subscription Identifier 0 and Receive Maximum 0.
// ---------------------------------------------------------------------------

#[test]
fn duplicate_publish_property_rejected() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "a/b", QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    // QoS 1 to `a/b`, pid 1, Payload Format Indicator twice.
    publisher.send_hex("32 0d 00 03 61 2f 62 00 01 04 01 01 01 01 78");

    publisher.expect_disconnect(ReasonCode::PROTOCOL_ERROR);
    sub.expect_silence(QUIET);
}

#[test]
fn client_subscription_id_rejected() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "a/b", QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");

    // QoS 1 to `a/b`, pid 2, Subscription Identifier 1.
    publisher.send_hex("32 0b 00 03 61 2f 62 00 02 02 0b 01 78");

    publisher.expect_disconnect(ReasonCode::PROTOCOL_ERROR);
    sub.expect_silence(QUIET);
}

#[test]
fn subscription_id_zero_rejected() {
    let broker = Broker::start(&[]);
    let (mut client, _) = publisher(&broker, "c");

    client.send_hex("82 0b 00 01 02 0b 00 00 03 61 2f 62 00");

    client.expect_disconnect(ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn duplicate_connect_property_rejected() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());

    // Request Response Information twice.
    client.send_hex("10 13 00 04 4d 51 54 54 05 02 00 3c 04 19 01 19 01 00 02 74 31");

    expect_connect_rejected(&mut client, &[ReasonCode::PROTOCOL_ERROR]);
}

#[test]
fn receive_maximum_zero_rejected() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());

    client.send_hex("10 12 00 04 4d 51 54 54 05 02 00 3c 03 21 00 00 00 02 74 31");

    expect_connect_rejected(&mut client, &[ReasonCode::PROTOCOL_ERROR]);
}

#[test]
fn repeated_user_property_forwarded() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "a/b", QoS::AtMostOnce);
    let (mut publisher, _) = publisher(&broker, "p");
    let mut message = publish("a/b", QoS::AtLeastOnce, 1, b"x");
    message.properties.user_properties = vec![
        ("k".to_string(), "1".to_string()),
        ("k".to_string(), "2".to_string()),
    ];

    let reason = publisher.publish(message);

    assert!(!reason.is_error(), "PUBACK reason {reason:?}");
    let received = sub.expect_publish();
    assert_eq!(
        received.properties.user_properties,
        vec![
            ("k".to_string(), "1".to_string()),
            ("k".to_string(), "2".to_string()),
        ]
    );
}

// ---------------------------------------------------------------------------
// Retain Handling: 0 sends retained messages on every SUBSCRIBE, including
// a repeated one (MQTT-3.3.1-9, MQTT-3.8.4-4). 1 sends them only for a new
// subscription (MQTT-3.3.1-10), 2 never does (MQTT-3.3.1-11), and 3 is a
// Protocol Error. Retained messages sent at subscribe time have RETAIN set.
// ---------------------------------------------------------------------------

/// Starts a broker with `v1` retained on `rh/t` and a connected subscriber
/// that has not subscribed yet.
fn retain_setup() -> (Broker, RawClient) {
    let broker = Broker::start(&[]);
    let (mut publisher, _) = publisher(&broker, "p");
    publisher.publish(retained("rh/t", QoS::AtLeastOnce, 1, b"v1"));
    let (sub, _) = RawClient::connect_v5(broker.addr(), "s");
    (broker, sub)
}

fn subscribe_with_handling(
    sub: &mut RawClient,
    packet_id: u16,
    filter: &str,
    handling: RetainHandling,
) {
    let options = SubscriptionOptions {
        retain_handling: handling,
        ..SubscriptionOptions::with_qos(QoS::AtLeastOnce)
    };
    let suback = sub.subscribe_with(packets::subscribe(packet_id, &[(filter, options)]));
    assert_eq!(
        suback.reasons,
        vec![ReasonCode::GRANTED_QOS_1],
        "SUBACK for {filter:?}"
    );
}

fn unsubscribe(sub: &mut RawClient, packet_id: u16, filter: &str) {
    let unsuback = sub.unsubscribe_with(packets::unsubscribe(packet_id, &[filter]));
    assert_eq!(
        unsuback.reasons,
        vec![ReasonCode::SUCCESS],
        "UNSUBACK for {filter:?}"
    );
}

#[track_caller]
fn expect_retained_v1(sub: &mut RawClient) {
    let received: Vec<Publish> = sub.drain_publishes(QUIET);
    assert_eq!(
        received.len(),
        1,
        "retained messages received: {received:?}"
    );
    assert_eq!(received[0].topic, "rh/t");
    assert_eq!(&received[0].payload[..], b"v1");
    assert!(
        received[0].retain,
        "RETAIN flag on a retained message sent at subscribe"
    );
}

#[test]
fn retain_handling_0_sends_retained() {
    let (_broker, mut sub) = retain_setup();

    subscribe_with_handling(&mut sub, 1, "rh/t", RetainHandling::SendAtSubscribe);

    expect_retained_v1(&mut sub);
}

#[test]
fn retain_handling_0_resends_on_resubscribe() {
    let (_broker, mut sub) = retain_setup();
    subscribe_with_handling(&mut sub, 1, "rh/t", RetainHandling::SendAtSubscribe);
    expect_retained_v1(&mut sub);

    subscribe_with_handling(&mut sub, 2, "rh/t", RetainHandling::SendAtSubscribe);

    expect_retained_v1(&mut sub);
}

#[test]
fn retain_handling_1_skips_existing_subscription() {
    let (_broker, mut sub) = retain_setup();
    subscribe_with_handling(&mut sub, 1, "rh/t", RetainHandling::SendAtSubscribe);
    expect_retained_v1(&mut sub);

    subscribe_with_handling(&mut sub, 2, "rh/t", RetainHandling::SendIfNew);

    sub.expect_silence(QUIET);
}

#[test]
fn retain_handling_1_sends_after_unsubscribe() {
    let (_broker, mut sub) = retain_setup();
    subscribe_with_handling(&mut sub, 1, "rh/t", RetainHandling::SendAtSubscribe);
    expect_retained_v1(&mut sub);
    unsubscribe(&mut sub, 2, "rh/t");

    subscribe_with_handling(&mut sub, 3, "rh/t", RetainHandling::SendIfNew);

    expect_retained_v1(&mut sub);
}

#[test]
fn retain_handling_2_sends_nothing() {
    let (_broker, mut sub) = retain_setup();
    subscribe_with_handling(&mut sub, 1, "rh/t", RetainHandling::SendAtSubscribe);
    expect_retained_v1(&mut sub);
    unsubscribe(&mut sub, 2, "rh/t");

    subscribe_with_handling(&mut sub, 3, "rh/t", RetainHandling::DoNotSend);

    sub.expect_silence(QUIET);
}

#[test]
fn retain_handling_2_new_filter_sends_nothing() {
    let (_broker, mut sub) = retain_setup();

    subscribe_with_handling(&mut sub, 1, "rh/#", RetainHandling::DoNotSend);

    sub.expect_silence(QUIET);
}

#[test]
fn retain_handling_3_rejected() {
    let (_broker, mut sub) = retain_setup();

    sub.send_hex("82 09 00 01 00 00 03 61 2f 62 30");

    let disconnect = sub.expect_closed_within(CLOSE_WITHIN);
    let reason = disconnect.map(|packet| packet.reason);
    assert!(
        matches!(
            reason,
            Some(ReasonCode::PROTOCOL_ERROR) | Some(ReasonCode::MALFORMED_PACKET)
        ),
        "expected DISCONNECT 0x82 (or 0x81), got {reason:?}"
    );
}

// ---------------------------------------------------------------------------
// Framing: reserved header flags and option bits (MQTT-2.1.3-1,
// MQTT-3.8.3-5), QoS 3 (MQTT-3.3.1-4), a Remaining Length over 4 bytes, and
// the CONNECT rules (MQTT-3.1.0-1, MQTT-3.1.0-2, MQTT-3.1.2-3, Will QoS 3).
// ---------------------------------------------------------------------------

/// Reason codes a DISCONNECT for a malformed packet may carry.
const MALFORMED_ONLY: [ReasonCode; 1] = [ReasonCode::MALFORMED_PACKET];

#[test]
fn subscribe_option_reserved_bits_rejected() {
    let broker = Broker::start(&[]);
    let (mut client, _) = publisher(&broker, "c");

    client.send_hex("82 09 00 01 00 00 03 61 2f 62 c0");

    expect_closed_with_optional(&mut client, &MALFORMED_ONLY);
}

#[test]
fn subscribe_header_flags_0000_rejected() {
    let broker = Broker::start(&[]);
    let (mut client, _) = publisher(&broker, "c");

    client.send_hex("80 09 00 01 00 00 03 61 2f 62 00");

    expect_closed_with_optional(&mut client, &MALFORMED_ONLY);
}

#[test]
fn pubrel_header_flags_0000_rejected() {
    let broker = Broker::start(&[]);
    let (mut client, _) = publisher(&broker, "c");
    client.send(&Packet::Publish(publish("a/b", QoS::ExactlyOnce, 1, b"x")));
    let reason = client.expect_ack(1, AckKind::PubRec);
    assert!(!reason.is_error(), "PUBREC reason {reason:?}");

    client.send_hex("60 02 00 01");

    expect_closed_with_optional(&mut client, &MALFORMED_ONLY);
}

#[test]
fn publish_qos_3_rejected() {
    let broker = Broker::start(&[]);
    let (mut client, _) = publisher(&broker, "c");

    client.send_hex("36 09 00 03 61 2f 62 00 03 00 78");

    client.expect_disconnect(ReasonCode::MALFORMED_PACKET);
}

#[test]
fn remaining_length_five_bytes_rejected() {
    let broker = Broker::start(&[]);
    let (mut client, _) = publisher(&broker, "c");

    client.send_hex("30 ff ff ff ff 7f");

    expect_closed_with_optional(&mut client, &MALFORMED_ONLY);
}

#[test]
fn second_connect_rejected() {
    let broker = Broker::start(&[]);
    let (mut client, _) = publisher(&broker, "t1");

    client.send_hex("10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 74 31");

    expect_closed_with_optional(&mut client, &[ReasonCode::PROTOCOL_ERROR]);
}

#[test]
fn first_packet_not_connect_rejected() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());

    client.send_hex("c0 00");

    match client.read_packet_within(CLOSE_WITHIN) {
        Err(error) if error.is_closed() => {}
        Ok(packet) => panic!("expected a close without any packet, got {packet:?}"),
        Err(error) => panic!("expected a close: {error}"),
    }
}

#[test]
fn connect_reserved_flag_rejected() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());

    client.send_hex("10 0f 00 04 4d 51 54 54 05 03 00 3c 00 00 02 74 31");

    expect_connect_rejected(&mut client, &MALFORMED_ONLY);
}

#[test]
fn will_qos_3_rejected() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());

    client.send_hex(
        "10 1a 00 04 4d 51 54 54 05 1e 00 3c 00 00 02 74 31 00 00 03 77 2f 74 00 03 62 79 65",
    );

    expect_connect_rejected(&mut client, &MALFORMED_ONLY);
}
