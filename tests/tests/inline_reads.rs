//! Reads that the shard's readiness task makes for a connection whose
//! reader waits: it routes PUBLISH packets itself and leaves every other
//! packet, and any step that must wait, to the connection's task. These
//! tests send mixed packets in one write and check that they are handled
//! in the order they came.

use std::time::Duration;

use coremq_tests::packets::{self, publish, unsubscribe};
use coremq_tests::{Broker, Packet, Protocol, QoS, RawClient, RecvError};
use tempfile::TempDir;

/// How long a client waits for each packet it expects.
const WAIT: Duration = Duration::from_secs(5);

/// Reads packets until a PINGRESP and returns their names, with the topic
/// of each PUBLISH and the packet id of each PUBACK.
fn packets_until_pingresp(client: &mut RawClient) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let packet = match client.read_packet_within(WAIT) {
            Ok(packet) => packet,
            Err(RecvError::Timeout) => panic!("no PINGRESP within {WAIT:?}; saw {seen:?}"),
            Err(error) => panic!("client failed after {seen:?}: {error}"),
        };
        match packet {
            Packet::PingResp => {
                seen.push("PINGRESP".to_string());
                return seen;
            }
            Packet::Publish(message) => seen.push(format!("PUBLISH {}", message.topic)),
            Packet::PubAck(ack) => seen.push(format!("PUBACK {}", ack.packet_id)),
            Packet::UnsubAck(_) => seen.push("UNSUBACK".to_string()),
            other => seen.push(other.name().to_string()),
        }
    }
}

fn encode_all(packets: &[Packet]) -> Vec<u8> {
    packets
        .iter()
        .flat_map(|packet| packets::encode_packet(packet, Protocol::V5))
        .collect()
}

#[test]
fn unsubscribe_between_publishes_takes_effect_in_order() {
    for shards in ["1", "2"] {
        let broker = Broker::start(&["--shards", shards]);
        let (mut client, _) = RawClient::connect_v5(broker.addr(), "self");
        client.subscribe("mine/#", QoS::AtMostOnce);
        // The reader waits now, so the readiness task reads the write
        // below. The first PUBLISH reaches the client, the second comes
        // after the UNSUBSCRIBE and must not.
        client.send_bytes(&encode_all(&[
            Packet::Publish(publish("mine/1", QoS::AtMostOnce, 0, b"before")),
            Packet::Unsubscribe(unsubscribe(7, &["mine/#"])),
            Packet::Publish(publish("mine/2", QoS::AtMostOnce, 0, b"after")),
            Packet::PingReq,
        ]));
        assert_eq!(
            packets_until_pingresp(&mut client),
            vec!["PUBLISH mine/1", "UNSUBACK", "PINGRESP"],
            "with {shards} shard(s)"
        );
    }
}

#[test]
fn stored_publish_finishes_before_later_packets() {
    // With a durable store, a QoS 1 PUBLISH waits for its log append: the
    // readiness task hands that step to the connection's task, which must
    // finish it before the PINGREQ and the next PUBLISH.
    let dir = TempDir::new().expect("temporary directory");
    let data_dir = dir.path().to_str().expect("UTF-8 temporary path");
    let broker = Broker::start(&["--shards", "1", "--data-dir", data_dir]);
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "sub");
    subscriber.subscribe("p/#", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "pub");
    publisher.send_bytes(&encode_all(&[
        Packet::Publish(publish("p/1", QoS::AtLeastOnce, 1, b"one")),
        Packet::Publish(publish("p/2", QoS::AtMostOnce, 0, b"two")),
        Packet::PingReq,
        Packet::Publish(publish("p/3", QoS::AtLeastOnce, 2, b"three")),
        Packet::PingReq,
    ]));
    assert_eq!(
        packets_until_pingresp(&mut publisher),
        vec!["PUBACK 1", "PINGRESP"]
    );
    assert_eq!(
        packets_until_pingresp(&mut publisher),
        vec!["PUBACK 2", "PINGRESP"]
    );

    let topics: Vec<String> = subscriber
        .drain_publishes(Duration::from_millis(500))
        .into_iter()
        .map(|message| message.topic)
        .collect();
    assert_eq!(topics, vec!["p/1", "p/2", "p/3"]);
}

#[test]
fn publish_split_over_two_writes_arrives_whole() {
    let broker = Broker::start(&["--shards", "1"]);
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "sub");
    subscriber.subscribe("split/#", QoS::AtMostOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "pub");
    let bytes = encode_all(&[Packet::Publish(publish(
        "split/t",
        QoS::AtMostOnce,
        0,
        &[7u8; 300],
    ))]);
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    publisher.send_bytes(first);
    // Long enough for the first half to be read on its own.
    std::thread::sleep(Duration::from_millis(200));
    subscriber.expect_silence(Duration::from_millis(100));
    publisher.send_bytes(rest);
    let message = subscriber.expect_publish_within(WAIT);
    assert_eq!(message.topic, "split/t");
    assert_eq!(&message.payload[..], &[7u8; 300][..]);
}

#[test]
fn close_after_publish_sends_the_will() {
    // The socket closes without DISCONNECT while the reader waits, so the
    // readiness task is the one that reads the end of the stream: a FIN
    // (the read returns 0) or an RST (the read fails).
    for reset in [false, true] {
        let broker = Broker::start(&["--shards", "1"]);
        let (mut watcher, _) = RawClient::connect_v5(broker.addr(), "watcher");
        watcher.subscribe("gone/#", QoS::AtMostOnce);
        let mut client = RawClient::connect(broker.addr());
        let mut connect = packets::connect_v5("leaver");
        connect.will = Some(packets::will("gone/leaver", b"will"));
        client.connect_with(connect);
        client.send(&Packet::Publish(publish(
            "gone/note",
            QoS::AtMostOnce,
            0,
            b"x",
        )));
        assert_eq!(watcher.expect_publish_within(WAIT).topic, "gone/note");
        if reset {
            client.abort();
        } else {
            drop(client);
        }
        let will = watcher.expect_publish_within(WAIT);
        assert_eq!(
            (will.topic.as_str(), &will.payload[..]),
            ("gone/leaver", &b"will"[..]),
            "after {}",
            if reset { "RST" } else { "FIN" }
        );
    }
}

#[test]
fn close_behind_publishes_sends_the_will() {
    // The FIN arrives with the data, so one edge-triggered event reports
    // both. The broker must read on after a read that does not fill its
    // buffer, because no later event reports the end of the stream.
    for shards in ["1", "2"] {
        let broker = Broker::start(&["--shards", shards]);
        let (mut watcher, _) = RawClient::connect_v5(broker.addr(), "watcher");
        watcher.subscribe("gone/#", QoS::AtMostOnce);
        for (trial, publishes) in [1, 1, 1, 100, 100, 100].into_iter().enumerate() {
            let client_id = format!("leaver{trial}");
            let mut client = RawClient::connect(broker.addr());
            let mut connect = packets::connect_v5(&client_id);
            connect.keep_alive = 0;
            connect.will = Some(packets::will(&format!("gone/{client_id}"), b"will"));
            client.connect_with(connect);
            let batch: Vec<Packet> = (0..publishes)
                .map(|_| Packet::Publish(publish("note", QoS::AtMostOnce, 0, b"x")))
                .collect();
            client.send_bytes(&encode_all(&batch));
            drop(client);
            let will = watcher.expect_publish_within(WAIT);
            assert_eq!(
                will.topic,
                format!("gone/{client_id}"),
                "Will after {publishes} PUBLISH and a FIN, {shards} shard(s)"
            );
        }
    }
}

#[test]
fn longest_read_pause_loses_nothing() {
    // Sixteen publishers at once make busy passes, after which the shard
    // waits 10 ms before it reads again. Every message must still arrive,
    // in each publisher's order.
    const PUBLISHERS: usize = 16;
    const MESSAGES: usize = 100;

    let broker = Broker::start(&["--shards", "1", "--read-pause-us", "10000"]);
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "sub");
    subscriber.subscribe("many/+", QoS::AtLeastOnce);

    let addr = broker.addr();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|number| {
            std::thread::spawn(move || {
                let (mut publisher, _) = RawClient::connect_v5(addr, &format!("pub-{number}"));
                let topic = format!("many/{number}");
                for sequence in 0..MESSAGES {
                    let payload = sequence.to_string();
                    publisher.send(&Packet::Publish(publish(
                        &topic,
                        QoS::AtMostOnce,
                        0,
                        payload.as_bytes(),
                    )));
                    std::thread::sleep(Duration::from_millis(1));
                }
                // The PINGRESP comes after every PUBLISH was handled.
                publisher.ping();
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().expect("publisher thread");
    }

    // The next sequence number expected from each publisher.
    let mut next = vec![0usize; PUBLISHERS];
    for message in subscriber.drain_publishes(Duration::from_secs(1)) {
        let number: usize = message.topic["many/".len()..]
            .parse()
            .expect("topic number");
        let sequence: usize = std::str::from_utf8(&message.payload)
            .expect("UTF-8")
            .parse()
            .expect("sequence number");
        assert_eq!(sequence, next[number], "order of publisher {number}");
        next[number] += 1;
    }
    assert_eq!(next, vec![MESSAGES; PUBLISHERS], "messages per publisher");
}
