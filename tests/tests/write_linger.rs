//! Write batching (`--write-linger-us`): deliveries to a socket that was
//! written to moments ago wait to leave together, while replies and the
//! first delivery after a quiet spell leave at once.
//!
//! The broker runs with a long linger (100 ms) so that the effects are far
//! larger than scheduling noise on a loaded machine.

use std::thread;
use std::time::{Duration, Instant};

use coremq_tests::packets::publish;
use coremq_tests::{Broker, Packet, QoS, RawClient, ReasonCode};

const LINGER: Duration = Duration::from_millis(100);

fn start(linger: Duration) -> Broker {
    let micros = linger.as_micros().to_string();
    Broker::start(&["--write-linger-us", &micros])
}

/// Publishes `count` messages at `qos` on `topic`, `gap` apart, from a
/// thread. A QoS 1 message waits for its PUBACK.
fn publish_spaced(broker: &Broker, topic: &'static str, qos: QoS, count: usize, gap: Duration) {
    let addr = broker.addr();
    thread::spawn(move || {
        let (mut publisher, _) = RawClient::connect_v5(addr, "spaced-pub");
        for number in 0..count {
            let payload = number.to_string();
            if qos == QoS::AtMostOnce {
                publisher.send(&Packet::Publish(publish(topic, qos, 0, payload.as_bytes())));
            } else {
                let packet_id = u16::try_from(number + 1).expect("small packet id");
                let message = publish(topic, qos, packet_id, payload.as_bytes());
                assert_eq!(publisher.publish(message), ReasonCode::SUCCESS);
            }
            thread::sleep(gap);
        }
        publisher.ping();
    });
}

/// Reads `count` PUBLISH packets and returns their arrival times.
fn arrivals(subscriber: &mut RawClient, count: usize) -> Vec<Instant> {
    (0..count)
        .map(|_| {
            subscriber.expect_publish_within(Duration::from_secs(5));
            Instant::now()
        })
        .collect()
}

/// Number of groups of arrivals separated by more than `gap`.
fn bursts(times: &[Instant], gap: Duration) -> usize {
    1 + times
        .windows(2)
        .filter(|pair| pair[1].duration_since(pair[0]) > gap)
        .count()
}

#[test]
fn steady_deliveries_leave_in_batches() {
    let broker = start(LINGER);
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "batched-sub");
    subscriber.subscribe("linger/steady", QoS::AtMostOnce);

    // 40 messages 10 ms apart span 400 ms. Held for 100 ms after each
    // write, they arrive in about 4 to 8 groups instead of 40.
    publish_spaced(
        &broker,
        "linger/steady",
        QoS::AtMostOnce,
        40,
        Duration::from_millis(10),
    );
    let times = arrivals(&mut subscriber, 40);
    let groups = bursts(&times, Duration::from_millis(5));
    assert!(
        groups <= 12,
        "40 steady messages arrived in {groups} groups; a 100 ms linger should batch them"
    );
}

#[test]
fn acknowledging_subscriber_still_batched() {
    let broker = start(LINGER);
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "acking-sub");
    subscriber.subscribe("linger/acked", QoS::AtLeastOnce);

    // A PUBACK acknowledges a delivery, so unlike a PUBLISH it does not make
    // the next delivery leave at once.
    publish_spaced(
        &broker,
        "linger/acked",
        QoS::AtLeastOnce,
        40,
        Duration::from_millis(10),
    );
    let times: Vec<Instant> = (0..40)
        .map(|_| {
            let delivery = subscriber.expect_publish_within(Duration::from_secs(5));
            subscriber.acknowledge(&delivery);
            Instant::now()
        })
        .collect();
    let groups = bursts(&times, Duration::from_millis(5));
    assert!(
        groups <= 12,
        "40 steady messages to a QoS 1 subscriber arrived in {groups} groups"
    );
}

#[test]
fn without_linger_each_delivery_leaves_alone() {
    let broker = start(Duration::ZERO);
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "unbatched-sub");
    subscriber.subscribe("linger/off", QoS::AtMostOnce);

    publish_spaced(
        &broker,
        "linger/off",
        QoS::AtMostOnce,
        40,
        Duration::from_millis(10),
    );
    let times = arrivals(&mut subscriber, 40);
    let groups = bursts(&times, Duration::from_millis(5));
    assert!(
        groups >= 25,
        "with --write-linger-us 0, 40 messages 10 ms apart arrived in only {groups} groups"
    );
}

#[test]
fn first_delivery_after_quiet_spell_is_not_held() {
    let broker = start(LINGER);
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "quiet-sub");
    subscriber.subscribe("linger/quiet", QoS::AtMostOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "quiet-pub");

    for round in 0..5 {
        // Longer than the linger since the last write to this socket.
        thread::sleep(LINGER + Duration::from_millis(50));
        let sent = Instant::now();
        publisher.send(&Packet::Publish(publish(
            "linger/quiet",
            QoS::AtMostOnce,
            0,
            b"ping",
        )));
        subscriber.expect_publish_within(Duration::from_secs(5));
        let waited = sent.elapsed();
        assert!(
            waited < LINGER / 2,
            "round {round}: a delivery to a quiet socket took {waited:?}; it was held"
        );
    }
}

#[test]
fn acknowledgements_are_never_held() {
    let broker = start(LINGER);
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "acks-sub");
    subscriber.subscribe("linger/acks", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "acks-pub");

    // Each PUBLISH waits for its PUBACK. Held replies would cost about
    // 100 ms each, 3 s in all.
    let started = Instant::now();
    for packet_id in 1..=30u16 {
        let reason = publisher.publish(publish("linger/acks", QoS::AtLeastOnce, packet_id, b"x"));
        assert_eq!(reason, ReasonCode::SUCCESS);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1500),
        "30 QoS 1 round trips took {elapsed:?}; PUBACKs were held back"
    );
    assert_eq!(
        subscriber.drain_publishes(Duration::from_millis(500)).len(),
        30
    );
}

#[test]
fn deliveries_to_talking_client_not_held() {
    let broker = start(LINGER);
    // The client publishes on its own topic, and sends the next message
    // only once the last came back, as a request waits for its response.
    // Each delivery follows a PUBLISH from the client, so none is held,
    // although the socket was written to moments before.
    let (mut client, _) = RawClient::connect_v5(broker.addr(), "echo-client");
    client.subscribe("linger/echo", QoS::AtMostOnce);
    let started = Instant::now();
    for _ in 0..10 {
        client.send(&Packet::Publish(publish(
            "linger/echo",
            QoS::AtMostOnce,
            0,
            b"ping",
        )));
        client.expect_publish_within(Duration::from_secs(5));
    }
    // Held deliveries would cost about 100 ms each after the first.
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(500),
        "10 echo round trips took {elapsed:?}; deliveries were held"
    );
}

#[test]
fn qos1_request_response_not_held() {
    let broker = start(LINGER);
    let (mut requester, _) = RawClient::connect_v5(broker.addr(), "requester");
    requester.subscribe("linger/response", QoS::AtLeastOnce);
    let (mut responder, _) = RawClient::connect_v5(broker.addr(), "responder");
    responder.subscribe("linger/request", QoS::AtLeastOnce);

    // Each client gets a PUBACK for its PUBLISH and then a delivery. The
    // PUBACK's write must not leave the delivery after it to be held.
    let started = Instant::now();
    for packet_id in 1..=10u16 {
        let request = publish("linger/request", QoS::AtLeastOnce, packet_id, b"q");
        assert_eq!(requester.publish(request), ReasonCode::SUCCESS);
        let delivered = responder.expect_publish_within(Duration::from_secs(5));
        responder.acknowledge(&delivered);
        let response = publish("linger/response", QoS::AtLeastOnce, packet_id, b"r");
        assert_eq!(responder.publish(response), ReasonCode::SUCCESS);
        let answered = requester.expect_publish_within(Duration::from_secs(5));
        requester.acknowledge(&answered);
    }
    // Held deliveries would cost about 100 ms each, 2 s in all.
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(700),
        "10 QoS 1 requests and responses took {elapsed:?}; deliveries were held"
    );
}
