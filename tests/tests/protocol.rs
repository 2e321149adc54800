//! Broker features over raw bytes and the rumqttc v5 client, in MQTT 5.0
//! and, where the feature exists there, MQTT 3.1.1.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coremq_tests::packets::{
    self, connect_persistent, connect_v311, connect_v5, encode_packet, publish, retained,
    subscribe_with_id, unsubscribe, will,
};
use coremq_tests::real_client::{self, RealClient, RealQoS};
use coremq_tests::{
    from_hex, AckKind, Broker, Packet, Protocol, QoS, RawClient, ReasonCode, RecvError,
    SubscriptionOptions,
};
use rumqttc::v5::mqttbytes::v5::PublishProperties;

/// How long a check that "nothing arrives" waits.
const QUIET: Duration = Duration::from_secs(2);

/// How long the broker has to close a connection it should close.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

fn subscriber(broker: &Broker, client_id: &str, filter: &str, qos: QoS) -> RawClient {
    let (mut client, _) = RawClient::connect_v5(broker.addr(), client_id);
    client.subscribe(filter, qos);
    client
}

/// Connects `client_id` and returns it with the shard the broker logged
/// for it.
fn connect_with_shard(broker: &Broker, client_id: &str) -> (RawClient, u32) {
    let (client, _) = RawClient::connect_v5(broker.addr(), client_id);
    let shard = broker
        .shard_of(client_id)
        .unwrap_or_else(|| panic!("no `connected client_id={client_id} shard=N` log line"));
    (client, shard)
}

/// Connects clients named `{prefix}0`, `{prefix}1`, ... until one sits on
/// shard 0 and one on shard 1, and returns those two in that order.
fn clients_on_both_shards(broker: &Broker, prefix: &str) -> [(RawClient, String); 2] {
    let mut on_shard: [Option<(RawClient, String)>; 2] = [None, None];
    for index in 0..32 {
        let client_id = format!("{prefix}{index}");
        let (client, shard) = connect_with_shard(broker, &client_id);
        let slot = &mut on_shard[shard as usize];
        if slot.is_none() {
            *slot = Some((client, client_id));
        }
        if on_shard.iter().all(Option::is_some) {
            return on_shard.map(|slot| slot.expect("both shards are filled"));
        }
    }
    panic!("32 client ids with prefix {prefix:?} all landed on one shard");
}

// ---------------------------------------------------------------------------
// CONNECT: protocol version, client identifier, keep alive.
// ---------------------------------------------------------------------------

/// Builds a CONNECT with protocol `name` and `level`, Clean Start, keep
/// alive 60 s and client id `v`. Level 5 gets an empty property section.
fn connect_bytes(name: &str, level: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    body.push(level);
    body.push(0x02);
    body.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&[0x00, 0x01, b'v']);
    let mut bytes = vec![0x10, body.len() as u8];
    bytes.extend_from_slice(&body);
    bytes
}

/// Checks that an unsupported protocol version gets CONNACK with 3.1.1
/// return code 1 or MQTT 5.0 reason code 0x84, and then a close.
#[track_caller]
fn check_version_rejected(name: &str, level: u8) {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());

    client.send_bytes(&connect_bytes(name, level));

    let frame = client
        .read_frame_within(CLOSE_WITHIN)
        .unwrap_or_else(|error| panic!("expected CONNACK for level {level}: {error}"));
    let return_code_1 = frame == [0x20, 0x02, 0x00, 0x01];
    let reason_0x84 = frame.len() >= 4 && frame[0] == 0x20 && frame[3] == 0x84;
    assert!(
        return_code_1 || reason_0x84,
        "CONNACK for protocol {name:?} level {level} is {frame:02x?}, expected return code 1 \
         or reason code 0x84"
    );
    match client.read_frame_within(CLOSE_WITHIN) {
        Err(error) if error.is_closed() => {}
        other => panic!("expected a close after the CONNACK, got {other:?}"),
    }
}

#[test]
fn connect_level_3_rejected() {
    check_version_rejected("MQIsdp", 3);
}

#[test]
fn connect_level_6_rejected() {
    check_version_rejected("MQTT", 6);
}

#[test]
fn connect_levels_4_and_5_accepted() {
    let broker = Broker::start(&[]);
    for (level, expected) in [(4u8, vec![0x20, 0x02, 0x00, 0x00]), (5, vec![])] {
        let mut client = RawClient::connect(broker.addr());
        client.send_bytes(&connect_bytes("MQTT", level));
        let frame = client
            .read_frame_within(CLOSE_WITHIN)
            .expect("CONNACK for a supported level");
        if level == 4 {
            assert_eq!(frame, expected, "3.1.1 CONNACK");
        } else {
            assert_eq!(frame[0], 0x20, "packet type of {frame:02x?}");
            assert_eq!(frame[3], 0x00, "reason code of {frame:02x?}");
        }
    }
}

#[test]
fn empty_client_id_gets_assigned_id() {
    let broker = Broker::start(&[]);
    let mut first = RawClient::connect(broker.addr());
    let mut second = RawClient::connect(broker.addr());

    let first_ack = first.connect_with(connect_v5(""));
    let second_ack = second.connect_with(connect_v5(""));

    assert_eq!(first_ack.reason, ReasonCode::SUCCESS);
    assert_eq!(second_ack.reason, ReasonCode::SUCCESS);
    let first_id = first_ack
        .properties
        .assigned_client_identifier
        .expect("CONNACK carries an Assigned Client Identifier");
    let second_id = second_ack
        .properties
        .assigned_client_identifier
        .expect("CONNACK carries an Assigned Client Identifier");
    assert!(!first_id.is_empty(), "assigned id is empty");
    assert_ne!(first_id, second_id, "two clients got the same assigned id");
    first.ping();
    second.ping();
}

#[test]
fn empty_client_id_v311_clean_accepted() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());

    let connack = client.connect_with(connect_v311("", true));

    assert_eq!(connack.reason, ReasonCode::SUCCESS, "3.1.1 return code");
    assert!(
        connack.properties.is_empty(),
        "3.1.1 CONNACK has no properties"
    );
    client.ping();
}

#[test]
fn empty_client_id_v311_persistent_rejected() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());
    client.send(&Packet::Connect(Box::new(connect_v311("", false))));

    let frame = client
        .read_frame_within(CLOSE_WITHIN)
        .expect("CONNACK with return code 2");

    assert_eq!(
        frame,
        [0x20, 0x02, 0x00, 0x02],
        "CONNACK identifier rejected"
    );
    match client.read_frame_within(CLOSE_WITHIN) {
        Err(error) if error.is_closed() => {}
        other => panic!("expected a close after the CONNACK, got {other:?}"),
    }
}

/// Connects with keep alive 1 s, sends nothing, and returns how long the
/// broker took to close the connection and the DISCONNECT it sent.
fn idle_until_closed(broker: &Broker, protocol: Protocol) -> (Duration, Option<ReasonCode>) {
    let mut client = RawClient::connect(broker.addr());
    let mut connect = match protocol {
        Protocol::V5 => connect_v5("idle"),
        Protocol::V311 => connect_v311("idle", true),
    };
    connect.keep_alive = 1;
    let connack = client.connect_with(connect);
    assert_eq!(connack.reason, ReasonCode::SUCCESS);
    let started = Instant::now();

    let disconnect = client.expect_closed_within(Duration::from_secs(4));

    (started.elapsed(), disconnect.map(|packet| packet.reason))
}

#[test]
fn keep_alive_enforced_v5() {
    let broker = Broker::start(&[]);

    let (elapsed, reason) = idle_until_closed(&broker, Protocol::V5);

    // 1.5 times the keep alive, with the slack a loaded machine needs.
    assert!(
        elapsed >= Duration::from_millis(1000),
        "closed after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(2600),
        "closed after {elapsed:?}"
    );
    assert_eq!(
        reason,
        Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
        "DISCONNECT reason"
    );
}

#[test]
fn keep_alive_enforced_v311() {
    let broker = Broker::start(&[]);

    let (elapsed, reason) = idle_until_closed(&broker, Protocol::V311);

    assert!(
        elapsed >= Duration::from_millis(1000),
        "closed after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(2600),
        "closed after {elapsed:?}"
    );
    assert_eq!(reason, None, "3.1.1 has no DISCONNECT from the server");
}

#[test]
fn keep_alive_watch_closes_silent_client() {
    // The connections of a shard share one Keep Alive watch, checked more
    // often once a client with a short Keep Alive joins. The silent client
    // with 1 s goes in time; the one with 60 s and the one that pings stay.
    let broker = Broker::start(&["--shards", "1"]);
    let mut clients = Vec::new();
    for (id, keep_alive) in [("long", 60), ("short", 1), ("pinging", 1)] {
        let mut client = RawClient::connect(broker.addr());
        let mut connect = connect_v5(id);
        connect.keep_alive = keep_alive;
        assert_eq!(client.connect_with(connect).reason, ReasonCode::SUCCESS);
        clients.push(client);
    }
    let started = Instant::now();
    let mut pinging = clients.pop().expect("three clients");
    let mut short = clients.pop().expect("three clients");
    let mut long = clients.pop().expect("three clients");
    let pinger = std::thread::spawn(move || {
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(500));
            pinging.ping();
        }
    });

    let disconnect = short.expect_closed_within(Duration::from_secs(4));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1000),
        "closed after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(2600),
        "closed after {elapsed:?}"
    );
    assert_eq!(
        disconnect.map(|packet| packet.reason),
        Some(ReasonCode::KEEP_ALIVE_TIMEOUT)
    );
    pinger.join().expect("the pinging client stays connected");
    long.ping();
}

#[test]
fn keep_alive_reset_by_pingreq() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());
    let mut connect = connect_v5("pinger");
    connect.keep_alive = 1;
    client.connect_with(connect);

    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        client.ping();
    }
}

#[test]
fn server_keep_alive_caps_request() {
    let broker = Broker::start(&["--max-keep-alive", "10"]);
    let mut client = RawClient::connect(broker.addr());

    let connack = client.connect_with(connect_v5("long"));

    assert_eq!(connack.properties.server_keep_alive, Some(10));
}

#[test]
fn server_keep_alive_enforced() {
    let broker = Broker::start(&["--max-keep-alive", "1"]);
    let mut client = RawClient::connect(broker.addr());
    let connack = client.connect_with(connect_v5("long"));
    assert_eq!(connack.properties.server_keep_alive, Some(1));
    let started = Instant::now();

    let disconnect = client.expect_closed_within(Duration::from_secs(4));

    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1000),
        "closed after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(2600),
        "closed after {elapsed:?}"
    );
    assert_eq!(
        disconnect.map(|packet| packet.reason),
        Some(ReasonCode::KEEP_ALIVE_TIMEOUT)
    );
}

#[test]
fn max_keep_alive_rejects_v311_above_it() {
    // MQTT 3.1.1 has no Server Keep Alive, so a client that asks for more
    // than the maximum, or for none, cannot be given less: CONNACK 0x02.
    let broker = Broker::start(&["--max-keep-alive", "10"]);
    for keep_alive in [0, 11, 60] {
        let mut client = RawClient::connect(broker.addr());
        client.set_protocol(Protocol::V311);
        let mut connect = connect_v311(&format!("long-{keep_alive}"), true);
        connect.keep_alive = keep_alive;
        let connack = client.connect_with(connect);
        assert_eq!(
            connack.reason,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "Keep Alive {keep_alive}"
        );
        assert_eq!(client.expect_closed_within(CLOSE_WITHIN), None);
    }

    let mut within = RawClient::connect(broker.addr());
    within.set_protocol(Protocol::V311);
    let mut connect = connect_v311("within", true);
    connect.keep_alive = 10;
    assert_eq!(within.connect_with(connect).reason, ReasonCode::SUCCESS);
    within.ping();
}

#[test]
fn connack_announces_defaults() {
    let broker = Broker::start(&[]);

    let (_client, connack) = RawClient::connect_v5(broker.addr(), "c");

    let properties = &connack.properties;
    assert_eq!(properties.receive_maximum, Some(1024), "Receive Maximum");
    assert_eq!(
        properties.topic_alias_maximum,
        Some(64),
        "Topic Alias Maximum"
    );
    assert_eq!(
        properties.maximum_packet_size,
        Some(1 << 20),
        "Maximum Packet Size"
    );
    assert_ne!(properties.retain_available, Some(false), "Retain Available");
    assert_ne!(
        properties.wildcard_subscription_available,
        Some(false),
        "Wildcard Subscription Available"
    );
    assert_ne!(
        properties.subscription_identifier_available,
        Some(false),
        "Subscription Identifier Available"
    );
    assert_ne!(
        properties.shared_subscription_available,
        Some(false),
        "Shared Subscription Available"
    );
}

// ---------------------------------------------------------------------------
// QoS 1 and 2 flows in both directions, with packet ids.
// ---------------------------------------------------------------------------

/// Publishes at `qos` from one client and checks the full exchange on
/// both sides, in `protocol`.
fn check_qos_flow(protocol: Protocol, qos: QoS) {
    let broker = Broker::start(&[]);
    let connect = |client_id: &str| match protocol {
        Protocol::V5 => connect_v5(client_id),
        Protocol::V311 => connect_v311(client_id, true),
    };
    let mut sub = RawClient::connect(broker.addr());
    sub.connect_with(connect("s"));
    sub.subscribe("flow/t", qos);
    let mut publisher = RawClient::connect(broker.addr());
    publisher.connect_with(connect("p"));

    let reason = publisher.publish(publish("flow/t", qos, 321, b"payload"));
    assert!(!reason.is_error(), "acknowledgement reason {reason:?}");

    let received = sub.expect_publish();
    assert_eq!(received.qos, qos, "delivered QoS");
    assert_eq!(received.topic, "flow/t");
    assert_eq!(&received.payload[..], b"payload");
    let packet_id = received
        .packet_id
        .expect("QoS 1 and 2 deliveries carry a packet id");
    assert_ne!(packet_id, 0);
    match qos {
        QoS::AtLeastOnce => sub.send(&Packet::PubAck(packets::pub_response(packet_id))),
        QoS::ExactlyOnce => {
            sub.send(&Packet::PubRec(packets::pub_response(packet_id)));
            let release = sub.expect_ack(packet_id, AckKind::PubRel);
            assert_eq!(release, ReasonCode::SUCCESS, "PUBREL reason");
            sub.send(&Packet::PubComp(packets::pub_response(packet_id)));
        }
        QoS::AtMostOnce => unreachable!("QoS 0 has no flow"),
    }
    sub.expect_silence(QUIET);
}

#[test]
fn qos1_flow_v5() {
    check_qos_flow(Protocol::V5, QoS::AtLeastOnce);
}

#[test]
fn qos2_flow_v5() {
    check_qos_flow(Protocol::V5, QoS::ExactlyOnce);
}

#[test]
fn qos1_flow_v311() {
    check_qos_flow(Protocol::V311, QoS::AtLeastOnce);
}

#[test]
fn qos2_flow_v311() {
    check_qos_flow(Protocol::V311, QoS::ExactlyOnce);
}

#[test]
fn delivery_qos_is_minimum() {
    let broker = Broker::start(&[]);
    let mut sub0 = subscriber(&broker, "s0", "min/t", QoS::AtMostOnce);
    let mut sub1 = subscriber(&broker, "s1", "min/t", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");

    publisher.publish(publish("min/t", QoS::ExactlyOnce, 1, b"x"));

    let at_zero = sub0.expect_publish();
    assert_eq!(at_zero.qos, QoS::AtMostOnce, "QoS for a QoS 0 subscription");
    assert_eq!(at_zero.packet_id, None);
    let at_one = sub1.expect_publish();
    assert_eq!(at_one.qos, QoS::AtLeastOnce, "QoS for a QoS 1 subscription");
}

#[test]
fn qos1_unacked_redelivered_on_resume() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient::connect(broker.addr());
    sub.connect_with(connect_persistent("s", true, 60));
    sub.subscribe("redo/t", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");
    publisher.publish(publish("redo/t", QoS::AtLeastOnce, 1, b"once"));
    let first = sub.expect_publish();
    sub.abort();

    let mut resumed = RawClient::connect(broker.addr());
    let connack = resumed.connect_with(connect_persistent("s", false, 60));

    assert!(connack.session_present, "Session Present on resume");
    let again = resumed.expect_publish();
    assert_eq!(&again.payload[..], b"once");
    assert!(again.dup, "DUP on a re-sent PUBLISH (MQTT-4.4.0-1)");
    assert_eq!(
        again.packet_id, first.packet_id,
        "packet id of the re-sent PUBLISH"
    );
}

// ---------------------------------------------------------------------------
// Subscription options and identifiers.
// ---------------------------------------------------------------------------

#[test]
fn overlapping_subscription_ids_delivered() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = RawClient::connect_v5(broker.addr(), "s");
    let first = sub.subscribe_with(subscribe_with_id(1, "si/#", QoS::AtMostOnce, 1));
    let second = sub.subscribe_with(subscribe_with_id(2, "si/+", QoS::AtMostOnce, 2));
    assert_eq!(first.reasons, vec![ReasonCode::GRANTED_QOS_0]);
    assert_eq!(second.reasons, vec![ReasonCode::GRANTED_QOS_0]);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");

    publisher.publish(publish("si/x", QoS::AtMostOnce, 0, b"both"));
    publisher.publish(publish("si/x/y", QoS::AtMostOnce, 0, b"deep"));

    // The broker may send one copy with both ids or one copy per
    // subscription (MQTT 5.0 section 3.3.4).
    let received = sub.drain_publishes(QUIET);
    let mut both_ids = BTreeSet::new();
    let mut deep_ids = BTreeSet::new();
    for publish in &received {
        let ids = match &publish.payload[..] {
            b"both" => &mut both_ids,
            b"deep" => &mut deep_ids,
            other => panic!("unexpected payload {other:?}"),
        };
        assert!(
            !publish.properties.subscription_identifiers.is_empty(),
            "delivery without a Subscription Identifier: {publish:?}"
        );
        for id in &publish.properties.subscription_identifiers {
            assert!(ids.insert(*id), "id {id} sent twice for one message");
        }
    }
    assert_eq!(both_ids, BTreeSet::from([1, 2]), "ids for si/x");
    assert_eq!(deep_ids, BTreeSet::from([1]), "ids for si/x/y");
}

#[test]
fn no_local_skips_own_messages() {
    let broker = Broker::start(&[]);
    let (mut client, _) = RawClient::connect_v5(broker.addr(), "self");
    let options = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::with_qos(QoS::AtLeastOnce)
    };
    client.subscribe_with(packets::subscribe(1, &[("nl/t", options)]));
    let (mut other, _) = RawClient::connect_v5(broker.addr(), "other");

    client.publish(publish("nl/t", QoS::AtLeastOnce, 1, b"mine"));
    other.publish(publish("nl/t", QoS::AtLeastOnce, 1, b"theirs"));

    let received = client.drain_publishes(QUIET);
    let payloads: Vec<&[u8]> = received.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, vec![&b"theirs"[..]]);
}

#[test]
fn retain_as_published_keeps_flag() {
    let broker = Broker::start(&[]);
    let (mut keeping, _) = RawClient::connect_v5(broker.addr(), "keep");
    let keep_options = SubscriptionOptions {
        retain_as_published: true,
        ..SubscriptionOptions::with_qos(QoS::AtMostOnce)
    };
    keeping.subscribe_with(packets::subscribe(1, &[("rap/t", keep_options)]));
    let mut clearing = subscriber(&broker, "clear", "rap/t", QoS::AtMostOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");

    publisher.publish(retained("rap/t", QoS::AtLeastOnce, 1, b"live"));

    let kept = keeping.expect_publish();
    assert!(
        kept.retain,
        "RETAIN with Retain As Published (MQTT-3.3.1-13)"
    );
    let cleared = clearing.expect_publish();
    assert!(
        !cleared.retain,
        "RETAIN without Retain As Published (MQTT-3.3.1-12)"
    );
}

#[test]
fn retained_cleared_by_empty_payload() {
    let broker = Broker::start(&[]);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");
    publisher.publish(retained("clr/t", QoS::AtLeastOnce, 1, b"stored"));
    let mut first = subscriber(&broker, "s1", "clr/t", QoS::AtMostOnce);
    let stored = first.expect_publish();
    assert_eq!(&stored.payload[..], b"stored");
    assert!(stored.retain);

    publisher.publish(retained("clr/t", QoS::AtLeastOnce, 2, b""));

    let mut second = subscriber(&broker, "s2", "clr/t", QoS::AtMostOnce);
    second.expect_silence(QUIET);
}

#[test]
fn retained_message_v311() {
    let broker = Broker::start(&[]);
    let mut publisher = RawClient::connect(broker.addr());
    publisher.connect_with(connect_v311("p", true));
    publisher.publish(retained("r311/t", QoS::AtLeastOnce, 1, b"kept"));

    let mut sub = RawClient::connect(broker.addr());
    sub.connect_with(connect_v311("s", true));
    sub.subscribe("r311/#", QoS::AtLeastOnce);

    let received = sub.expect_publish();
    assert_eq!(received.topic, "r311/t");
    assert_eq!(&received.payload[..], b"kept");
    assert!(received.retain);
}

// ---------------------------------------------------------------------------
// Message expiry, Will delay, session expiry and the offline queue.
// ---------------------------------------------------------------------------

/// Creates session `client_id` with Session Expiry 60, subscribed to
/// `filter` at QoS 1, and ends its connection with DISCONNECT 0x00.
fn park_session(broker: &Broker, client_id: &str, filter: &str) {
    let mut client = RawClient::connect(broker.addr());
    client.connect_with(connect_persistent(client_id, true, 60));
    client.subscribe(filter, QoS::AtLeastOnce);
    client.disconnect(ReasonCode::NORMAL_DISCONNECTION);
}

/// Resumes session `client_id` and checks Session Present.
fn resume_session(broker: &Broker, client_id: &str) -> RawClient {
    let mut client = RawClient::connect(broker.addr());
    let connack = client.connect_with(connect_persistent(client_id, false, 60));
    assert!(connack.session_present, "Session Present for {client_id}");
    client
}

#[test]
fn message_expiry_counts_offline_time() {
    let broker = Broker::start(&[]);
    park_session(&broker, "s", "me/t");
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");
    let mut lasting = publish("me/t", QoS::AtLeastOnce, 1, b"lasting");
    lasting.properties.message_expiry_interval = Some(10);
    let mut brief = publish("me/t", QoS::AtLeastOnce, 2, b"brief");
    brief.properties.message_expiry_interval = Some(1);
    publisher.publish(lasting);
    publisher.publish(brief);

    std::thread::sleep(Duration::from_millis(2500));
    let mut sub = resume_session(&broker, "s");

    let received = sub.drain_publishes(QUIET);
    let payloads: Vec<&[u8]> = received.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(
        payloads,
        vec![&b"lasting"[..]],
        "expired messages are dropped"
    );
    let left = received[0]
        .properties
        .message_expiry_interval
        .expect("Message Expiry Interval is forwarded (MQTT-3.3.2-6)");
    assert!(
        (6..=8).contains(&left),
        "expiry interval after 2.5 s offline is {left}, expected about 7-8"
    );
}

/// Connects `w` with Session Expiry `session_expiry` and a Will on `wd/t`
/// delayed by `delay` seconds.
fn connect_delayed_will(broker: &Broker, delay: u32, session_expiry: u32) -> RawClient {
    let mut connect = connect_persistent("w", true, session_expiry);
    let mut delayed = will("wd/t", b"late");
    delayed.properties.will_delay_interval = Some(delay);
    connect.will = Some(delayed);
    let mut client = RawClient::connect(broker.addr());
    let connack = client.connect_with(connect);
    assert_eq!(connack.reason, ReasonCode::SUCCESS);
    client
}

#[test]
fn will_sent_after_delay() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "wd/t", QoS::AtMostOnce);
    let will_client = connect_delayed_will(&broker, 2, 30);

    will_client.abort();
    let started = Instant::now();

    let received = sub.expect_publish_within(Duration::from_secs(4));
    let elapsed = started.elapsed();
    assert_eq!(&received.payload[..], b"late");
    assert!(
        elapsed >= Duration::from_millis(1500),
        "Will sent after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(3500),
        "Will sent after {elapsed:?}"
    );
}

#[test]
fn will_cancelled_by_reconnect() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "wd/t", QoS::AtMostOnce);
    let will_client = connect_delayed_will(&broker, 2, 30);
    will_client.abort();

    let mut back = RawClient::connect(broker.addr());
    let connack = back.connect_with(connect_persistent("w", false, 30));

    assert!(connack.session_present, "Session Present on reconnect");
    sub.expect_silence(Duration::from_secs(4));
}

#[test]
fn will_sent_when_session_ends_first() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "wd/t", QoS::AtMostOnce);
    let will_client = connect_delayed_will(&broker, 30, 1);

    will_client.abort();
    let started = Instant::now();

    let received = sub.expect_publish_within(Duration::from_secs(4));
    assert_eq!(&received.payload[..], b"late");
    let elapsed = started.elapsed();
    assert!(
        elapsed <= Duration::from_millis(2500),
        "Will sent after {elapsed:?}"
    );
}

#[test]
fn session_kept_within_expiry() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());
    client.connect_with(connect_persistent("s", true, 3));
    client.subscribe("se/t", QoS::AtLeastOnce);
    client.disconnect(ReasonCode::NORMAL_DISCONNECTION);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");
    publisher.publish(publish("se/t", QoS::AtLeastOnce, 1, b"queued"));

    let mut resumed = RawClient::connect(broker.addr());
    let connack = resumed.connect_with(connect_persistent("s", false, 3));

    assert!(connack.session_present, "Session Present within the expiry");
    let received = resumed.expect_publish();
    assert_eq!(&received.payload[..], b"queued");
}

#[test]
fn session_gone_after_expiry() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());
    client.connect_with(connect_persistent("s", true, 1));
    client.subscribe("se/t", QoS::AtLeastOnce);
    client.disconnect(ReasonCode::NORMAL_DISCONNECTION);

    std::thread::sleep(Duration::from_millis(2500));
    let mut resumed = RawClient::connect(broker.addr());
    let connack = resumed.connect_with(connect_persistent("s", false, 1));

    assert!(!connack.session_present, "Session Present after the expiry");
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");
    publisher.publish(publish("se/t", QoS::AtLeastOnce, 1, b"x"));
    resumed.expect_silence(QUIET);
}

#[test]
fn session_ends_at_zero_expiry() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());
    client.connect_with(connect_v5("s"));
    client.subscribe("se/t", QoS::AtLeastOnce);
    client.disconnect_and_wait(ReasonCode::NORMAL_DISCONNECTION);

    let mut again = RawClient::connect(broker.addr());
    let mut connect = connect_v5("s");
    connect.clean_start = false;
    let connack = again.connect_with(connect);

    assert!(
        !connack.session_present,
        "a session with expiry 0 outlived its connection"
    );
}

#[test]
fn offline_queue_bounded() {
    let broker = Broker::start(&["--max-queued-messages", "5"]);
    park_session(&broker, "s", "oq/t");
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");

    for index in 1..=20u16 {
        let payload = format!("{index}");
        publisher.publish(publish("oq/t", QoS::AtLeastOnce, index, payload.as_bytes()));
    }
    let mut sub = resume_session(&broker, "s");

    let received: Vec<u32> = sub
        .drain_publishes(QUIET)
        .iter()
        .map(|p| {
            std::str::from_utf8(&p.payload)
                .expect("UTF-8 payload")
                .parse()
                .expect("numeric payload")
        })
        .collect();
    assert!(!received.is_empty(), "the offline queue delivered nothing");
    assert!(
        received.len() <= 5,
        "{} messages delivered from a queue bounded at 5: {received:?}",
        received.len()
    );
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "order: {received:?}"
    );
    assert_eq!(
        received.last(),
        Some(&20),
        "drop-oldest keeps the newest message"
    );
}

// ---------------------------------------------------------------------------
// Request/response and other PUBLISH properties are forwarded unchanged.
// ---------------------------------------------------------------------------

#[test]
fn publish_properties_forwarded_raw() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "req/t", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");
    let mut message = publish("req/t", QoS::AtLeastOnce, 1, "héllo".as_bytes());
    message.properties.response_topic = Some("resp/t".to_string());
    message.properties.correlation_data = Some(Bytes::from_static(&[0, 1, 2, 0xff]));
    message.properties.content_type = Some("text/plain".to_string());
    message.properties.payload_format_indicator = Some(1);
    message.properties.user_properties = vec![
        ("b".to_string(), "1".to_string()),
        ("a".to_string(), "2".to_string()),
        ("b".to_string(), "3".to_string()),
    ];
    let sent = message.properties.clone();

    publisher.publish(message);

    let received = sub.expect_publish();
    let properties = received.properties;
    assert_eq!(properties.response_topic, sent.response_topic);
    assert_eq!(properties.correlation_data, sent.correlation_data);
    assert_eq!(properties.content_type, sent.content_type);
    assert_eq!(
        properties.payload_format_indicator,
        sent.payload_format_indicator
    );
    assert_eq!(properties.user_properties, sent.user_properties);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_forwarded_rumqttc() {
    let broker = Broker::start(&[]);
    let mut sub = RealClient::connect(real_client::options(broker.addr(), "s")).await;
    sub.client
        .subscribe("req/real", RealQoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    sub.expect_suback(Duration::from_secs(3)).await;
    let publisher = RealClient::connect(real_client::options(broker.addr(), "p")).await;
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("resp/real".to_string()),
        correlation_data: Some(Bytes::from_static(b"corr-42")),
        user_properties: vec![
            ("z".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string()),
        ],
        content_type: Some("application/json".to_string()),
        ..Default::default()
    };

    publisher
        .client
        .publish_with_properties("req/real", RealQoS::AtLeastOnce, false, "{}", sent.clone())
        .await
        .expect("queue PUBLISH");

    let received = sub
        .next_publish(Duration::from_secs(3))
        .await
        .expect("PUBLISH with properties");
    let properties = received.properties.expect("forwarded properties");
    assert_eq!(properties.payload_format_indicator, Some(1));
    assert_eq!(properties.response_topic, sent.response_topic);
    assert_eq!(properties.correlation_data, sent.correlation_data);
    assert_eq!(properties.content_type, sent.content_type);
    assert_eq!(properties.user_properties, sent.user_properties);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_all_qos_levels_delivered() {
    let broker = Broker::start(&[]);
    let mut sub = RealClient::connect(real_client::options(broker.addr(), "s")).await;
    sub.client
        .subscribe("real/#", RealQoS::ExactlyOnce)
        .await
        .expect("queue SUBSCRIBE");
    sub.expect_suback(Duration::from_secs(3)).await;
    let publisher = RealClient::connect(real_client::options(broker.addr(), "p")).await;

    for (index, qos) in [
        RealQoS::AtMostOnce,
        RealQoS::AtLeastOnce,
        RealQoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        publisher
            .client
            .publish(format!("real/{index}"), qos, false, format!("m{index}"))
            .await
            .expect("queue PUBLISH");
    }

    let received = sub.drain_publishes(QUIET).await;
    let mut seen: Vec<(String, RealQoS)> = received
        .iter()
        .map(|p| (String::from_utf8_lossy(&p.topic).into_owned(), p.qos))
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            ("real/0".to_string(), RealQoS::AtMostOnce),
            ("real/1".to_string(), RealQoS::AtLeastOnce),
            ("real/2".to_string(), RealQoS::ExactlyOnce),
        ]
    );
}

#[test]
fn v5_properties_stripped_for_v311() {
    let broker = Broker::start(&[]);
    let mut sub = RawClient::connect(broker.addr());
    sub.connect_with(connect_v311("old", true));
    sub.subscribe("mix/t", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");
    let mut message = publish("mix/t", QoS::AtLeastOnce, 1, b"to 3.1.1");
    message.properties.user_properties = vec![("k".to_string(), "v".to_string())];
    message.properties.content_type = Some("text/plain".to_string());

    publisher.publish(message);

    // The 3.1.1 decoder rejects any byte a 5.0 property section would add
    // before the payload, so a clean decode with the same payload shows none.
    let received = sub.expect_publish();
    assert_eq!(&received.payload[..], b"to 3.1.1");
    assert_eq!(received.topic, "mix/t");
}

// ---------------------------------------------------------------------------
// Shared subscriptions and cross-shard delivery.
// ---------------------------------------------------------------------------

#[test]
fn shared_subscription_spreads_messages() {
    let broker = Broker::start(&[]);
    let [(mut member0, _), (mut member1, _)] = clients_on_both_shards(&broker, "member");
    member0.subscribe("$share/g/sh/t", QoS::AtLeastOnce);
    member1.subscribe("$share/g/sh/t", QoS::AtLeastOnce);
    // Publishers on both shards, so a broker that prefers members on the
    // publisher's shard still has to use both members.
    let [(mut publisher0, _), (mut publisher1, _)] = clients_on_both_shards(&broker, "pub");

    for index in 0..20u16 {
        let payload = format!("{index}");
        let publisher = if index % 2 == 0 {
            &mut publisher0
        } else {
            &mut publisher1
        };
        publisher.publish(publish(
            "sh/t",
            QoS::AtLeastOnce,
            index + 1,
            payload.as_bytes(),
        ));
    }

    let first: Vec<String> = payload_strings(&mut member0);
    let second: Vec<String> = payload_strings(&mut member1);
    assert!(!first.is_empty(), "member on shard 0 got nothing");
    assert!(!second.is_empty(), "member on shard 1 got nothing");
    let mut all: Vec<u32> = first
        .iter()
        .chain(second.iter())
        .map(|payload| payload.parse().expect("numeric payload"))
        .collect();
    all.sort();
    assert_eq!(
        all,
        (0..20).collect::<Vec<u32>>(),
        "each message to exactly one member"
    );
}

/// A member that ends its session holding messages of the group (two in
/// flight, unacknowledged, and the rest queued behind its Receive Maximum)
/// hands them to the other members: each acknowledged message still
/// reaches the group once.
#[test]
fn shared_member_leaving_hands_messages_on() {
    const MESSAGES: u16 = 30;
    let broker = Broker::start(&[]);
    let mut leaver = RawClient::connect(broker.addr());
    let mut connect = connect_v5("leaver");
    connect.properties.receive_maximum = Some(2);
    leaver.connect_with(connect);
    leaver.subscribe("$share/g/leave/t", QoS::AtLeastOnce);
    let [(mut member0, _), (mut member1, _)] = clients_on_both_shards(&broker, "stayer");
    member0.subscribe("$share/g/leave/t", QoS::AtLeastOnce);
    member1.subscribe("$share/g/leave/t", QoS::AtLeastOnce);

    let mut publisher = RawClient::connect(broker.addr());
    publisher.baseline_connect("leave-pub");
    for index in 0..MESSAGES {
        let reason = publisher.publish(publish(
            "leave/t",
            QoS::AtLeastOnce,
            index + 1,
            index.to_string().as_bytes(),
        ));
        assert_eq!(reason, ReasonCode::SUCCESS, "PUBACK of message {index}");
    }

    // The leaver reads its two messages in flight, acknowledges neither,
    // and ends its session (expiry 0) with a normal DISCONNECT.
    let in_flight = leaver.expect_publish();
    assert_eq!(in_flight.qos, QoS::AtLeastOnce);
    leaver.disconnect(ReasonCode::SUCCESS);

    let mut received: Vec<u32> = payload_strings(&mut member0)
        .iter()
        .chain(payload_strings(&mut member1).iter())
        .map(|payload| payload.parse().expect("numeric payload"))
        .collect();
    received.sort();
    assert_eq!(
        received,
        (0..u32::from(MESSAGES)).collect::<Vec<u32>>(),
        "each message to exactly one remaining member"
    );
}

fn payload_strings(client: &mut RawClient) -> Vec<String> {
    client
        .drain_publishes(QUIET)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

#[test]
fn shared_and_plain_subscriptions_both_deliver() {
    let broker = Broker::start(&[]);
    let mut member = subscriber(&broker, "member", "$share/g/mixed/t", QoS::AtMostOnce);
    let mut plain = subscriber(&broker, "plain", "mixed/t", QoS::AtMostOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");

    publisher.publish(publish("mixed/t", QoS::AtMostOnce, 0, b"x"));

    let shared_copy = member.expect_publish();
    assert_eq!(
        shared_copy.topic, "mixed/t",
        "topic seen by the shared member"
    );
    let plain_copy = plain.expect_publish();
    assert_eq!(plain_copy.topic, "mixed/t");
}

/// Sends 100 messages at `qos` from a publisher on one shard to a
/// subscriber on the other and checks they arrive complete and in order.
fn check_cross_shard_order(qos: QoS) {
    let broker = Broker::start(&[]);
    let [(mut on_zero, _), (mut on_one, _)] = clients_on_both_shards(&broker, "c");
    on_one.subscribe("xs/t", qos);
    let publisher = &mut on_zero;

    for index in 0..100u16 {
        let payload = format!("{index}");
        publisher.publish(publish("xs/t", qos, index + 1, payload.as_bytes()));
    }

    let received: Vec<u32> = on_one
        .drain_publishes(QUIET)
        .iter()
        .map(|p| {
            std::str::from_utf8(&p.payload)
                .expect("UTF-8 payload")
                .parse()
                .expect("numeric payload")
        })
        .collect();
    assert_eq!(received, (0..100).collect::<Vec<u32>>());
}

#[test]
fn cross_shard_qos0_in_order() {
    check_cross_shard_order(QoS::AtMostOnce);
}

#[test]
fn cross_shard_qos1_in_order() {
    check_cross_shard_order(QoS::AtLeastOnce);
}

#[test]
fn cross_shard_qos2_in_order() {
    check_cross_shard_order(QoS::ExactlyOnce);
}

// ---------------------------------------------------------------------------
// Topic rules, UNSUBACK and SUBACK codes.
// ---------------------------------------------------------------------------

#[test]
fn dollar_topics_skip_wildcards() {
    let broker = Broker::start(&[]);
    let mut hash = subscriber(&broker, "hash", "#", QoS::AtMostOnce);
    let mut plus = subscriber(&broker, "plus", "+/x", QoS::AtMostOnce);
    let mut explicit = subscriber(&broker, "explicit", "$app/x", QoS::AtMostOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");

    publisher.publish(publish("$app/x", QoS::AtMostOnce, 0, b"dollar"));
    publisher.ping();

    // MQTT-4.7.2-1: filters starting with a wildcard do not match `$` topics.
    hash.expect_silence(QUIET);
    plus.expect_silence(Duration::from_millis(200));
    // A broker may keep clients from publishing to `$` topics. When it
    // delivers the message, the explicit subscriber is the one that gets it.
    match explicit.read_packet_within(Duration::from_millis(200)) {
        Ok(Packet::Publish(publish)) => assert_eq!(publish.topic, "$app/x"),
        Ok(other) => panic!("expected PUBLISH or nothing, got {other:?}"),
        Err(RecvError::Timeout) => {}
        Err(error) => panic!("subscriber connection failed: {error}"),
    }
}

#[test]
fn unsubscribe_unknown_filter_0x11() {
    let broker = Broker::start(&[]);
    let mut client = subscriber(&broker, "c", "known/t", QoS::AtMostOnce);

    let unsuback = client.unsubscribe_with(unsubscribe(2, &["known/t", "never/t"]));

    assert_eq!(
        unsuback.reasons,
        vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
}

#[test]
fn unsubscribe_stops_delivery() {
    let broker = Broker::start(&[]);
    let mut client = subscriber(&broker, "c", "stop/t", QoS::AtMostOnce);
    client.unsubscribe_with(unsubscribe(2, &["stop/t"]));
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");

    publisher.publish(publish("stop/t", QoS::AtLeastOnce, 1, b"x"));

    client.expect_silence(QUIET);
}

#[test]
fn suback_codes_per_filter() {
    let broker = Broker::start(&[]);
    let (mut client, _) = RawClient::connect_v5(broker.addr(), "c");
    let qos1 = SubscriptionOptions::with_qos(QoS::AtLeastOnce);

    let suback = client.subscribe_with(packets::subscribe(
        1,
        &[
            ("good/t", qos1),
            ("bad#", qos1),
            ("a/+/b", qos1),
            ("x/#/y", qos1),
            ("$share/g/ok/t", qos1),
            ("$share/g+/t", qos1),
        ],
    ));

    assert_eq!(
        suback.reasons,
        vec![
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::TOPIC_FILTER_INVALID,
        ]
    );
}

#[test]
fn suback_invalid_filter_v311_0x80() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());
    client.connect_with(connect_v311("c", true));

    let suback = client.subscribe_with(packets::subscribe(
        1,
        &[
            ("ok/t", SubscriptionOptions::with_qos(QoS::AtMostOnce)),
            ("bad#", SubscriptionOptions::with_qos(QoS::AtMostOnce)),
        ],
    ));

    assert_eq!(
        suback.reasons,
        vec![ReasonCode::GRANTED_QOS_0, ReasonCode(0x80)]
    );
}

// ---------------------------------------------------------------------------
// DISCONNECT from the server and connection limits.
// ---------------------------------------------------------------------------

#[test]
fn shutdown_sends_server_shutting_down() {
    let broker = Broker::start(&[]);
    let (mut client, _) = RawClient::connect_v5(broker.addr(), "c");

    let status = Command::new("kill")
        .args(["-TERM", &broker.pid().to_string()])
        .status()
        .expect("run kill(1) from procps");
    assert!(status.success(), "kill -TERM failed");

    let disconnect = client.expect_closed_within(Duration::from_secs(5));
    assert_eq!(
        disconnect.map(|packet| packet.reason),
        Some(ReasonCode::SERVER_SHUTTING_DOWN),
        "DISCONNECT reason on shutdown"
    );
}

#[test]
fn max_connections_rejects_extra() {
    let broker = Broker::start(&["--max-connections", "2"]);
    let (mut first, _) = RawClient::connect_v5(broker.addr(), "one");
    let (mut second, _) = RawClient::connect_v5(broker.addr(), "two");

    let mut third = RawClient::connect(broker.addr());
    let _ = third.try_send_bytes(&from_hex(
        "10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 74 33",
    ));

    match third.read_packet_within(CLOSE_WITHIN) {
        Err(error) if error.is_closed() => {}
        Ok(Packet::ConnAck(connack)) => {
            let allowed = [
                ReasonCode::SERVER_BUSY,
                ReasonCode::QUOTA_EXCEEDED,
                ReasonCode::CONNECTION_RATE_EXCEEDED,
            ];
            assert!(
                allowed.contains(&connack.reason),
                "CONNACK reason for a connection over the limit: {connack:?}"
            );
        }
        other => panic!("expected a rejection of the third connection, got {other:?}"),
    }
    first.ping();
    second.ping();
}

// ---------------------------------------------------------------------------
// MQTT 3.1.1 forms of Will, session and takeover.
// ---------------------------------------------------------------------------

#[test]
fn will_sent_v311() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "w311/t", QoS::AtMostOnce);
    let mut connect = connect_v311("w", true);
    connect.will = Some(will("w311/t", b"gone"));
    let mut will_client = RawClient::connect(broker.addr());
    let connack = will_client.connect_with(connect);
    assert_eq!(connack.reason, ReasonCode::SUCCESS);

    will_client.abort();

    let received = sub.expect_publish_within(Duration::from_secs(3));
    assert_eq!(&received.payload[..], b"gone");
}

#[test]
fn will_dropped_on_disconnect_v311() {
    let broker = Broker::start(&[]);
    let mut sub = subscriber(&broker, "s", "w311/t", QoS::AtMostOnce);
    let mut connect = connect_v311("w", true);
    connect.will = Some(will("w311/t", b"gone"));
    let mut will_client = RawClient::connect(broker.addr());
    will_client.connect_with(connect);

    will_client.disconnect(ReasonCode::NORMAL_DISCONNECTION);

    sub.expect_silence(Duration::from_secs(3));
}

#[test]
fn session_resumed_v311() {
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());
    let first = client.connect_with(connect_v311("s", false));
    assert!(!first.session_present, "Session Present on a fresh broker");
    client.subscribe("s311/t", QoS::AtLeastOnce);
    client.disconnect(ReasonCode::NORMAL_DISCONNECTION);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "p");
    publisher.publish(publish("s311/t", QoS::AtLeastOnce, 1, b"stored"));

    let mut resumed = RawClient::connect(broker.addr());
    let connack = resumed.connect_with(connect_v311("s", false));

    assert!(
        connack.session_present,
        "Session Present with clean session 0"
    );
    let received = resumed.expect_publish();
    assert_eq!(&received.payload[..], b"stored");
}

#[test]
fn takeover_closes_old_v311() {
    let broker = Broker::start(&[]);
    let mut first = RawClient::connect(broker.addr());
    first.connect_with(connect_v311("same", true));

    let mut second = RawClient::connect(broker.addr());
    let connack = second.connect_with(connect_v311("same", true));

    assert_eq!(connack.reason, ReasonCode::SUCCESS);
    let disconnect = first.expect_closed_within(CLOSE_WITHIN);
    assert_eq!(disconnect, None, "3.1.1 has no DISCONNECT from the server");
    second.ping();
}

#[test]
fn keep_alive_ends_client_with_full_socket() {
    // A client that stops reading while messages pile up in its socket must
    // still be cut off at 1.5 times its keep alive, and its Will published,
    // although the broker cannot write the DISCONNECT.
    let broker = Broker::start(&[]);
    let (mut watcher, _) = RawClient::connect_v5(broker.addr(), "will-watcher");
    watcher.subscribe("stuck/will", QoS::AtMostOnce);

    let mut stuck = RawClient::connect_with_receive_buffer(broker.addr(), 4096);
    let mut connect = connect_v5("stuck");
    connect.keep_alive = 3;
    connect.will = Some(will("stuck/will", b"gone"));
    assert_eq!(stuck.connect_with(connect).reason, ReasonCode::SUCCESS);
    stuck.subscribe("stuck/data", QoS::AtLeastOnce);
    let last_packet = Instant::now();

    // About 8 MB of QoS 1 messages, which are never dropped as QoS 0 ones
    // are, so they fill the socket and the broker's output buffer.
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "stuck-filler");
    let payload = vec![b'x'; 4000];
    for number in 0..2000u32 {
        let packet_id = (number % 60000 + 1) as u16;
        let reason =
            publisher.publish(publish("stuck/data", QoS::AtLeastOnce, packet_id, &payload));
        assert_eq!(reason, ReasonCode::SUCCESS);
    }
    // The socket must be full before the Keep Alive runs out (4.5 s after
    // the SUBSCRIBE), or the test would not show what it is for.
    let queued = stuck
        .unacked_by_client()
        .expect("broker's socket to the stuck client");
    assert!(
        last_packet.elapsed() < Duration::from_millis(4500),
        "filling the socket took {:?}, past the Keep Alive",
        last_packet.elapsed()
    );
    assert!(
        queued >= 64 * 1024,
        "only {queued} bytes wait in the socket"
    );

    let will = watcher.expect_publish_within(Duration::from_secs(10));
    assert_eq!(will.topic, "stuck/will");
    assert_eq!(&will.payload[..], b"gone");
    drop(stuck);
}

#[test]
fn keep_alive_counts_whole_packets_only() {
    // One byte of a PUBLISH every 300 ms never completes a packet, so the
    // client must be cut off at 1.5 times its keep alive of 1 s.
    let broker = Broker::start(&[]);
    let mut client = RawClient::connect(broker.addr());
    let mut connect = connect_v5("trickle");
    connect.keep_alive = 1;
    assert_eq!(client.connect_with(connect).reason, ReasonCode::SUCCESS);
    let bytes = encode_packet(
        &Packet::Publish(publish("trickle/t", QoS::AtMostOnce, 0, &[b'z'; 200])),
        Protocol::V5,
    );

    let started = Instant::now();
    for byte in &bytes[..20] {
        if client.try_send_bytes(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if started.elapsed() > Duration::from_millis(2600) {
            break;
        }
    }

    let disconnect = client.expect_closed_within(Duration::from_secs(3));
    let elapsed = started.elapsed();
    assert!(
        elapsed <= Duration::from_millis(4000),
        "closed after {elapsed:?}"
    );
    assert_eq!(
        disconnect.map(|packet| packet.reason),
        Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
        "DISCONNECT reason"
    );
}
