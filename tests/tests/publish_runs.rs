//! PUBLISH packets that arrive in one read on one topic are routed as a
//! run: the shard matches the topic once, and each subscriber with one
//! plain QoS 0 subscription takes the whole run with one append. Other
//! subscribers get one offer per message. These tests send runs in one
//! write and check that every kind of subscriber gets each message once,
//! in order, as it would from separate reads.

use std::time::Duration;

use coremq_tests::packets::{self, connect_v311, connect_v5, publish, subscribe_with_id};
use coremq_tests::{
    Broker, Packet, Protocol, Publish, QoS, RawClient, ReasonCode, RecvError, SubscriptionOptions,
};

/// Messages in each run.
const RUN: usize = 20;

/// How long a client waits for each packet it expects.
const WAIT: Duration = Duration::from_secs(5);

/// How long a subscriber reads after the last PUBLISH before it stops.
const QUIET: Duration = Duration::from_millis(500);

/// Encodes `publishes` and a PINGREQ as one write.
fn one_write(publishes: &[Publish]) -> Vec<u8> {
    let mut bytes: Vec<u8> = publishes
        .iter()
        .flat_map(|publish| packets::encode_packet(&Packet::Publish(publish.clone()), Protocol::V5))
        .collect();
    bytes.extend(packets::encode_packet(&Packet::PingReq, Protocol::V5));
    bytes
}

/// `RUN` publications on `topic` at `qos`, with payloads `m0`, `m1`...
/// and packet ids from 1.
fn run_on(topic: &str, qos: QoS) -> Vec<Publish> {
    (0..RUN)
        .map(|i| publish(topic, qos, i as u16 + 1, format!("m{i}").as_bytes()))
        .collect()
}

fn payloads(publishes: &[Publish]) -> Vec<String> {
    publishes
        .iter()
        .map(|publish| String::from_utf8_lossy(&publish.payload).into_owned())
        .collect()
}

fn expected_payloads() -> Vec<String> {
    (0..RUN).map(|i| format!("m{i}")).collect()
}

/// Reads the publisher's replies up to its PINGRESP: the reason code of
/// each PUBACK in order. Fails on a PUBLISH.
fn acks_until_pingresp(publisher: &mut RawClient) -> Vec<(u16, ReasonCode)> {
    let mut acks = Vec::new();
    loop {
        match publisher.read_packet_within(WAIT) {
            Ok(Packet::PubAck(ack)) => acks.push((ack.packet_id, ack.reason)),
            Ok(Packet::PingResp) => return acks,
            Ok(other) => panic!("publisher got {other:?} after PUBACKs {acks:?}"),
            Err(RecvError::Timeout) => panic!("no PINGRESP within {WAIT:?}; PUBACKs {acks:?}"),
            Err(error) => panic!("publisher failed after PUBACKs {acks:?}: {error}"),
        }
    }
}

fn no_local(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::with_qos(qos)
    }
}

#[test]
fn run_reaches_every_subscriber_in_order() {
    for shards in ["1", "2"] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let context = format!("{shards} shard(s), run at {qos:?}");
            let broker = Broker::start_with_log_filter(&["--shards", shards], Some("info"));
            let addr = broker.addr();

            let (mut plain, _) = RawClient::connect_v5(addr, "plain");
            plain.subscribe("run/t", QoS::AtMostOnce);
            let mut old = RawClient::connect(addr);
            old.connect_with(connect_v311("old", true));
            old.subscribe("run/+", QoS::AtMostOnce);
            let (mut tagged, _) = RawClient::connect_v5(addr, "tagged");
            tagged.subscribe_with(subscribe_with_id(1, "run/t", QoS::AtMostOnce, 7));
            let (mut twice, _) = RawClient::connect_v5(addr, "twice");
            twice.subscribe_with(subscribe_with_id(1, "run/t", QoS::AtMostOnce, 1));
            twice.subscribe_with(subscribe_with_id(2, "run/#", QoS::AtMostOnce, 2));
            let (mut reliable, _) = RawClient::connect_v5(addr, "reliable");
            reliable.subscribe("run/t", QoS::AtLeastOnce);
            let mut aliased = RawClient::connect(addr);
            let mut connect = connect_v5("aliased");
            connect.properties.topic_alias_maximum = Some(4);
            aliased.connect_with(connect);
            aliased.subscribe("run/t", QoS::AtMostOnce);

            let (mut publisher, _) = RawClient::connect_v5(addr, "publisher");
            publisher.subscribe_with(packets::subscribe(1, &[("run/t", no_local(qos))]));
            // With two shards, part of the run crosses the mesh, in runs of
            // at most 16 publications.
            if shards == "2" {
                let home = broker.shard_of("publisher");
                let names = ["plain", "old", "tagged", "twice", "reliable", "aliased"];
                let elsewhere = names.iter().filter(|name| broker.shard_of(name) != home);
                assert!(
                    elsewhere.count() > 0,
                    "every subscriber is on the publisher's shard {home:?}"
                );
            }
            publisher.send_bytes(&one_write(&run_on("run/t", qos)));
            let acks = acks_until_pingresp(&mut publisher);
            if qos == QoS::AtLeastOnce {
                let expected: Vec<(u16, ReasonCode)> = (1..=RUN as u16)
                    .map(|id| (id, ReasonCode::SUCCESS))
                    .collect();
                assert_eq!(acks, expected, "PUBACKs with {context}");
            } else {
                assert!(acks.is_empty(), "PUBACKs {acks:?} at QoS 0 with {context}");
            }

            let expected = expected_payloads();
            for (name, client) in [
                ("plain", &mut plain),
                ("old", &mut old),
                ("aliased", &mut aliased),
            ] {
                let received = client.drain_publishes(QUIET);
                assert_eq!(payloads(&received), expected, "{name} with {context}");
                assert!(
                    received.iter().all(|p| p.qos == QoS::AtMostOnce),
                    "{name} got a copy above its QoS 0 with {context}"
                );
            }

            let received = tagged.drain_publishes(QUIET);
            assert_eq!(payloads(&received), expected, "tagged with {context}");
            for publish in &received {
                assert_eq!(
                    publish.properties.subscription_identifiers,
                    vec![7],
                    "tagged's identifiers with {context}"
                );
            }

            let received = twice.drain_publishes(QUIET);
            assert_eq!(payloads(&received), expected, "twice with {context}");
            for publish in &received {
                let mut ids = publish.properties.subscription_identifiers.clone();
                ids.sort_unstable();
                assert_eq!(ids, vec![1, 2], "twice's identifiers with {context}");
            }

            let received = reliable.drain_publishes(QUIET);
            assert_eq!(payloads(&received), expected, "reliable with {context}");
            for publish in &received {
                assert_eq!(publish.qos, qos, "reliable's QoS with {context}");
            }

            publisher.expect_silence(QUIET);
        }
    }
}

#[test]
fn run_without_subscribers_reports_no_match() {
    let broker = Broker::start(&["--shards", "1"]);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "publisher");
    publisher.send_bytes(&one_write(&run_on("nobody/t", QoS::AtLeastOnce)));
    let expected: Vec<(u16, ReasonCode)> = (1..=RUN as u16)
        .map(|id| (id, ReasonCode::NO_MATCHING_SUBSCRIBERS))
        .collect();
    assert_eq!(acks_until_pingresp(&mut publisher), expected);

    // A subscriber that arrives later turns the same run into successes.
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "late");
    subscriber.subscribe("nobody/#", QoS::AtMostOnce);
    publisher.send_bytes(&one_write(&run_on("nobody/t", QoS::AtLeastOnce)));
    let expected: Vec<(u16, ReasonCode)> = (1..=RUN as u16)
        .map(|id| (id, ReasonCode::SUCCESS))
        .collect();
    assert_eq!(acks_until_pingresp(&mut publisher), expected);
    assert_eq!(
        payloads(&subscriber.drain_publishes(QUIET)),
        expected_payloads()
    );
}

#[test]
fn run_skips_oversized_frames() {
    let broker = Broker::start(&["--shards", "1"]);
    let addr = broker.addr();
    let mut small = RawClient::connect(addr);
    let mut connect = connect_v5("small");
    connect.properties.maximum_packet_size = Some(100);
    small.connect_with(connect);
    small.subscribe("size/t", QoS::AtMostOnce);
    let (mut large, _) = RawClient::connect_v5(addr, "large");
    large.subscribe("size/t", QoS::AtMostOnce);

    // Every third message is 300 bytes long, over the small client's
    // limit, and the others fit.
    let run: Vec<Publish> = (0..RUN)
        .map(|i| {
            let payload = if i % 3 == 2 {
                format!("m{i}-{}", "x".repeat(300))
            } else {
                format!("m{i}")
            };
            publish("size/t", QoS::AtMostOnce, 0, payload.as_bytes())
        })
        .collect();
    let (mut publisher, _) = RawClient::connect_v5(addr, "publisher");
    publisher.send_bytes(&one_write(&run));
    acks_until_pingresp(&mut publisher);

    assert_eq!(payloads(&large.drain_publishes(QUIET)), payloads(&run));
    let fitting: Vec<String> = payloads(&run)
        .into_iter()
        .filter(|payload| payload.len() < 100)
        .collect();
    assert_eq!(payloads(&small.drain_publishes(QUIET)), fitting);
}

#[test]
fn run_carries_each_message_expiry() {
    let broker = Broker::start(&["--shards", "1"]);
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "sub");
    subscriber.subscribe("expiry/t", QoS::AtMostOnce);
    let mut run = run_on("expiry/t", QoS::AtMostOnce);
    for (i, publish) in run.iter_mut().enumerate() {
        if i % 2 == 0 {
            publish.properties.message_expiry_interval = Some(600 + i as u32);
        }
    }
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "publisher");
    publisher.send_bytes(&one_write(&run));
    acks_until_pingresp(&mut publisher);

    let received = subscriber.drain_publishes(QUIET);
    assert_eq!(payloads(&received), expected_payloads());
    for (i, publish) in received.iter().enumerate() {
        let expiry = publish.properties.message_expiry_interval;
        if i % 2 == 0 {
            let sent = 600 + i as u32;
            assert!(
                matches!(expiry, Some(left) if left + 2 >= sent && left <= sent),
                "message {i}: expiry {expiry:?}, sent with {sent}"
            );
        } else {
            assert_eq!(expiry, None, "message {i} was sent without expiry");
        }
    }
}
