//! The durable store seen from outside: the broker is killed with SIGKILL
//! and started again on the same data directory, and clients check that
//! every message it acknowledged, every retained message and every
//! subscription came back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use coremq_tests::broker::field_value;
use coremq_tests::packets::{self, connect_persistent, publish, retained, unsubscribe};
use coremq_tests::{Broker, Packet, Protocol, QoS, RawClient, ReasonCode, RecvError};
use rand::Rng;
use tempfile::TempDir;

/// Session expiry of the subscribers, long enough to outlive every test.
const EXPIRY: u32 = 3600;

/// How long a reading client waits for more before it decides the broker
/// has sent everything.
const DRAIN_QUIET: Duration = Duration::from_secs(2);

fn start_durable(dir: &TempDir) -> Broker {
    let data_dir = dir.path().to_str().expect("UTF-8 temporary path");
    // The queue bound would drop the oldest messages of a long offline
    // period by design; these tests check the store, so the bound is lifted.
    Broker::start(&["--data-dir", data_dir, "--max-queued-messages", "1000000"])
}

/// Connects `client_id` with clean start 0 and returns the client and the
/// Session Present flag.
fn resume(broker: &Broker, client_id: &str) -> (RawClient, bool) {
    let mut client = RawClient::connect(broker.addr());
    let connack = client.connect_with(connect_persistent(client_id, false, EXPIRY));
    assert_eq!(
        connack.reason,
        ReasonCode::SUCCESS,
        "CONNACK of {client_id}"
    );
    (client, connack.session_present)
}

/// Sequence numbers the broker acknowledged, per QoS.
#[derive(Default)]
struct Acknowledged {
    qos1: Vec<u32>,
    qos2: Vec<u32>,
}

/// Publishes numbered QoS 1 messages on `crash/q1` and QoS 2 messages on
/// `crash/q2`, alternating, starting at `next`, until the broker goes
/// away or `stop` is set. Records a number once its PUBACK or PUBREC
/// arrives; returns the next unused number.
fn publish_until_cut(
    addr: SocketAddr,
    mut next: u32,
    acked: &Mutex<Acknowledged>,
    stop: &AtomicBool,
) -> u32 {
    let mut client = RawClient::connect(addr);
    let connack = client.connect_with(packets::connect_v5("crash-publisher"));
    assert_eq!(connack.reason, ReasonCode::SUCCESS);
    let mut packet_id: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        let qos = if next.is_multiple_of(2) {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let topic = if qos == QoS::AtLeastOnce {
            "crash/q1"
        } else {
            "crash/q2"
        };
        packet_id = packet_id % 60_000 + 1;
        let message = publish(topic, qos, packet_id, next.to_string().as_bytes());
        let bytes = packets::encode_packet(&Packet::Publish(message), Protocol::V5);
        if client.try_send_bytes(&bytes).is_err() {
            return next + 1;
        }
        let reply = match client.read_packet_within(Duration::from_secs(5)) {
            Ok(packet) => packet,
            Err(_) => return next + 1,
        };
        match reply {
            Packet::PubAck(ack) => {
                assert_eq!(ack.packet_id, packet_id);
                assert_eq!(ack.reason, ReasonCode::SUCCESS, "PUBACK of {next}");
                acked.lock().expect("lock").qos1.push(next);
            }
            Packet::PubRec(rec) => {
                assert_eq!(rec.packet_id, packet_id);
                assert_eq!(rec.reason, ReasonCode::SUCCESS, "PUBREC of {next}");
                acked.lock().expect("lock").qos2.push(next);
                let release = Packet::PubRel(packets::pub_response(packet_id));
                let bytes = packets::encode_packet(&release, Protocol::V5);
                if client.try_send_bytes(&bytes).is_err() {
                    return next + 1;
                }
                match client.read_packet_within(Duration::from_secs(5)) {
                    Ok(Packet::PubComp(_)) => {}
                    Ok(other) => panic!("expected PUBCOMP, got {other:?}"),
                    Err(_) => return next + 1,
                }
            }
            other => panic!("expected PUBACK or PUBREC, got {other:?}"),
        }
        next += 1;
    }
    next
}

/// What a subscriber received on one topic, in arrival order.
#[derive(Default, Debug)]
struct Received {
    qos1: Vec<u32>,
    qos2: Vec<u32>,
}

/// Reads every PUBLISH until the broker has been quiet for `DRAIN_QUIET`,
/// acknowledging each one in full when `acknowledge` is set.
fn drain(client: &mut RawClient, acknowledge: bool) -> Received {
    let mut received = Received::default();
    loop {
        let packet = match client.read_packet_within(DRAIN_QUIET) {
            Ok(packet) => packet,
            Err(RecvError::Timeout) => return received,
            Err(error) => panic!("subscriber connection failed: {error}"),
        };
        let Packet::Publish(message) = packet else {
            if let Packet::PubRel(release) = packet {
                client.send(&Packet::PubComp(packets::pub_response(release.packet_id)));
                continue;
            }
            panic!("expected PUBLISH or PUBREL, got {packet:?}");
        };
        let number: u32 = std::str::from_utf8(&message.payload)
            .expect("ASCII payload")
            .parse()
            .expect("numeric payload");
        match message.topic.as_str() {
            "crash/q1" => received.qos1.push(number),
            "crash/q2" => received.qos2.push(number),
            other => panic!("unexpected topic {other}"),
        }
        if !acknowledge {
            continue;
        }
        let packet_id = message.packet_id.expect("QoS 1 or 2");
        match message.qos {
            QoS::AtLeastOnce => client.send(&Packet::PubAck(packets::pub_response(packet_id))),
            QoS::ExactlyOnce => client.send(&Packet::PubRec(packets::pub_response(packet_id))),
            QoS::AtMostOnce => panic!("QoS 0 on a QoS 1/2 subscription"),
        }
    }
}

/// Checks that every acknowledged number arrived, QoS 2 ones exactly once,
/// and that first arrivals keep publishing order.
fn check_delivery(acked: &Acknowledged, received: &Received) {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for number in &received.qos2 {
        *counts.entry(*number).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        duplicated.is_empty(),
        "QoS 2 messages delivered more than once (number, times): {duplicated:?}"
    );
    for (topic, sent, got) in [
        ("crash/q1", &acked.qos1, &received.qos1),
        ("crash/q2", &acked.qos2, &received.qos2),
    ] {
        let missing: Vec<_> = sent.iter().filter(|n| !got.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "{topic}: {} of {} acknowledged messages lost, first: {:?}",
            missing.len(),
            sent.len(),
            &missing[..missing.len().min(10)]
        );
        let mut first_seen = Vec::new();
        for number in got {
            if !first_seen.contains(number) {
                first_seen.push(*number);
            }
        }
        assert!(
            first_seen.windows(2).all(|pair| pair[0] < pair[1]),
            "{topic}: first arrivals out of publishing order: {first_seen:?}"
        );
    }
}

/// Runs the publisher against the broker, kills the broker at a random
/// moment while it publishes, restarts it, and does that `rounds` times.
fn publish_through_crashes(broker: &mut Broker, rounds: usize) -> Acknowledged {
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let mut next = 0;
    let mut rng = rand::thread_rng();
    for _ in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (acked, stop) = (acked.clone(), stop.clone());
            let addr = broker.addr();
            thread::spawn(move || publish_until_cut(addr, next, &acked, &stop))
        };
        thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
        broker.kill_and_restart();
        next = publisher.join().expect("publisher thread");
        stop.store(true, Ordering::Relaxed);
    }
    let acked = Arc::try_unwrap(acked)
        .ok()
        .expect("publisher threads ended")
        .into_inner()
        .expect("lock");
    assert!(
        acked.qos1.len() > 10 && acked.qos2.len() > 10,
        "the load acknowledged only {} QoS 1 and {} QoS 2 messages before the kills",
        acked.qos1.len(),
        acked.qos2.len()
    );
    acked
}

fn subscribe_persistent(broker: &Broker, client_id: &str) -> RawClient {
    let (mut client, _) = resume(broker, client_id);
    client.subscribe("crash/q1", QoS::AtLeastOnce);
    client.subscribe("crash/q2", QoS::ExactlyOnce);
    client
}

#[test]
fn acknowledged_messages_survive_kill_for_offline_session() {
    let dir = TempDir::new().expect("temporary directory");
    let mut broker = start_durable(&dir);
    subscribe_persistent(&broker, "offline-sub").disconnect(ReasonCode::NORMAL_DISCONNECTION);

    let acked = publish_through_crashes(&mut broker, 3);

    let (mut subscriber, present) = resume(&broker, "offline-sub");
    assert!(present, "the session did not survive the kills");
    let received = drain(&mut subscriber, true);
    check_delivery(&acked, &received);
}

#[test]
fn unacknowledged_deliveries_survive_kill_for_online_session() {
    let dir = TempDir::new().expect("temporary directory");
    let mut broker = start_durable(&dir);
    let mut subscriber = subscribe_persistent(&broker, "online-sub");
    let (publisher_done, publisher) = {
        let acked = Arc::new(Mutex::new(Acknowledged::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let addr = broker.addr();
        let (acked_in, stop_in) = (acked.clone(), stop.clone());
        let handle = thread::spawn(move || publish_until_cut(addr, 0, &acked_in, &stop_in));
        ((acked, stop), handle)
    };
    // The subscriber reads what arrives and never acknowledges it.
    let deadline = Instant::now() + Duration::from_millis(800);
    let mut before_kill = Received::default();
    while Instant::now() < deadline {
        if let Ok(Packet::Publish(message)) =
            subscriber.read_packet_within(Duration::from_millis(100))
        {
            let number: u32 = std::str::from_utf8(&message.payload)
                .expect("ASCII")
                .parse()
                .expect("number");
            if message.topic == "crash/q1" {
                before_kill.qos1.push(number);
            } else {
                before_kill.qos2.push(number);
            }
        }
    }
    publisher_done.1.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher thread");
    assert!(
        !before_kill.qos1.is_empty() && !before_kill.qos2.is_empty(),
        "the subscriber received nothing before the kill"
    );
    broker.kill_and_restart();
    drop(subscriber);

    let (mut subscriber, present) = resume(&broker, "online-sub");
    assert!(present, "the session did not survive the kill");
    let received = drain(&mut subscriber, true);
    let acked = publisher_done.0.lock().expect("lock");
    check_delivery(&acked, &received);
}

#[test]
fn subscription_survives_kill_after_suback() {
    // Session records are otherwise written every 20 ms. A SUBACK of a
    // persistent session waits for its record, so a kill right after it
    // keeps the subscription.
    let dir = TempDir::new().expect("temporary directory");
    let mut broker = start_durable(&dir);
    let (mut subscriber, _) = resume(&broker, "acked-sub");
    subscriber.subscribe("acked/t", QoS::AtLeastOnce);
    broker.kill_and_restart();

    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "acked-pub");
    let reason = publisher.publish(publish("acked/t", QoS::AtLeastOnce, 1, b"kept"));
    assert_eq!(reason, ReasonCode::SUCCESS);
    let (mut subscriber, present) = resume(&broker, "acked-sub");
    assert!(present, "the session did not survive the kill");
    let message = subscriber.expect_publish();
    assert_eq!(message.topic, "acked/t");
    assert_eq!(&message.payload[..], b"kept");
}

#[test]
fn unsubscribe_survives_kill_after_unsuback() {
    let dir = TempDir::new().expect("temporary directory");
    let mut broker = start_durable(&dir);
    let (mut subscriber, _) = resume(&broker, "dropped-sub");
    subscriber.subscribe("dropped/t", QoS::AtLeastOnce);
    subscriber.subscribe("dropped/kept", QoS::AtLeastOnce);
    // Let the periodic writer store both subscriptions first.
    thread::sleep(Duration::from_millis(200));
    subscriber.unsubscribe_with(unsubscribe(2, &["dropped/t"]));
    broker.kill_and_restart();

    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "dropped-pub");
    // With the unsubscribe kept, dropped/t has no subscriber left.
    let reason = publisher.publish(publish("dropped/t", QoS::AtLeastOnce, 1, b"after"));
    assert_eq!(reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    let reason = publisher.publish(publish("dropped/kept", QoS::AtLeastOnce, 2, b"after"));
    assert_eq!(reason, ReasonCode::SUCCESS);
    let (mut subscriber, present) = resume(&broker, "dropped-sub");
    assert!(present, "the session did not survive the kill");
    let received = subscriber.drain_publishes(Duration::from_millis(500));
    let topics: Vec<&str> = received
        .iter()
        .map(|message| message.topic.as_str())
        .collect();
    assert_eq!(
        topics,
        ["dropped/kept"],
        "topics delivered after the restart"
    );
}

#[test]
fn retained_messages_and_subscriptions_survive_restart() {
    let dir = TempDir::new().expect("temporary directory");
    let mut broker = start_durable(&dir);
    let (mut subscriber, _) = resume(&broker, "keeps-subs");
    subscriber.subscribe("kept/+", QoS::AtLeastOnce);
    subscriber.disconnect(ReasonCode::NORMAL_DISCONNECTION);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "retainer");
    for (topic, payload) in [("kept/a", "alpha"), ("kept/b", "beta"), ("kept/c", "gamma")] {
        let reason = publisher.publish(retained(topic, QoS::AtLeastOnce, 1, payload.as_bytes()));
        assert_eq!(reason, ReasonCode::SUCCESS);
    }
    // An empty retained payload clears kept/c: it must stay cleared.
    let reason = publisher.publish(retained("kept/c", QoS::AtLeastOnce, 2, b""));
    assert_eq!(reason, ReasonCode::SUCCESS);
    drop(publisher);
    // Drain the queued copies so that only the restart is tested below.
    let (mut subscriber, _) = resume(&broker, "keeps-subs");
    let queued = subscriber.drain_publishes(Duration::from_secs(1));
    for message in &queued {
        subscriber.acknowledge(message);
    }
    subscriber.ping();
    subscriber.disconnect(ReasonCode::NORMAL_DISCONNECTION);

    broker.kill_and_restart();

    // The subscription came back: a new message reaches the session
    // without a new SUBSCRIBE.
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "after-restart");
    let reason = publisher.publish(publish("kept/z", QoS::AtLeastOnce, 1, b"zeta"));
    assert_eq!(reason, ReasonCode::SUCCESS);
    let (mut subscriber, present) = resume(&broker, "keeps-subs");
    assert!(present, "the session did not survive the restart");
    let message = subscriber.expect_publish();
    assert_eq!(message.topic, "kept/z");
    assert_eq!(&message.payload[..], b"zeta");
    subscriber.acknowledge(&message);

    // The retained messages came back, and the cleared one stayed cleared.
    let (mut fresh, _) = RawClient::connect_v5(broker.addr(), "fresh");
    fresh.subscribe("kept/#", QoS::AtMostOnce);
    let mut got: Vec<(String, Vec<u8>)> = fresh
        .drain_publishes(Duration::from_secs(1))
        .into_iter()
        .map(|message| {
            assert!(message.retain, "a retained copy without RETAIN");
            (message.topic, message.payload.to_vec())
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("kept/a".to_string(), b"alpha".to_vec()),
            ("kept/b".to_string(), b"beta".to_vec()),
        ]
    );
}

/// Reads the first and last offsets of the broker's message log from a
/// stopped broker's RocksDB directory.
fn log_bounds(dir: &TempDir) -> (Option<u64>, Option<u64>) {
    use coremq_wal::{RocksConfig, RocksStore, Store};
    let store = RocksStore::open(&RocksConfig::new(dir.path())).expect("open the broker's RocksDB");
    (
        store.first_offset("messages").expect("first offset"),
        store.last_offset("messages").expect("last offset"),
    )
}

#[test]
fn idle_persistent_session_does_not_hold_log_truncation() {
    let dir = TempDir::new().expect("temporary directory");
    let broker = start_durable(&dir);
    // A persistent session whose filter matches nothing that is published.
    let (mut idle, _) = resume(&broker, "idle-sub");
    idle.subscribe("idle/#", QoS::AtLeastOnce);
    idle.disconnect(ReasonCode::NORMAL_DISCONNECTION);
    // A persistent session that receives and acknowledges everything.
    let (mut busy, _) = resume(&broker, "busy-sub");
    busy.subscribe("busy/t", QoS::AtLeastOnce);

    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "busy-pub");
    const COUNT: u16 = 20;
    for packet_id in 1..=COUNT {
        let reason = publisher.publish(publish("busy/t", QoS::AtLeastOnce, packet_id, b"x"));
        assert_eq!(reason, ReasonCode::SUCCESS);
    }
    let delivered = busy.drain_publishes(Duration::from_secs(1));
    assert_eq!(delivered.len(), usize::from(COUNT));
    for message in &delivered {
        busy.acknowledge(message);
    }
    busy.ping();

    // Shard 0 truncates every 5 s, below what every shard reported in its
    // previous round, so this takes two to four rounds.
    let truncated = broker.wait_for_log(Duration::from_secs(30), |line| {
        line.contains("truncated the message log")
            && field_value(line, "offset").and_then(|offset| offset.parse::<u64>().ok())
                > Some(u64::from(COUNT))
    });
    drop(broker);
    let (first, last) = log_bounds(&dir);
    assert_eq!(last, Some(u64::from(COUNT)), "log end");
    assert_eq!(
        first, None,
        "the log still holds offsets from {first:?}: the idle session kept it from truncation"
    );
    assert!(truncated.is_some(), "no truncation was logged");

    // The idle session still works after a restart.
    let broker = start_durable(&dir);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "idle-pub");
    let reason = publisher.publish(publish("idle/x", QoS::AtLeastOnce, 1, b"late"));
    assert_eq!(reason, ReasonCode::SUCCESS);
    let (mut idle, present) = resume(&broker, "idle-sub");
    assert!(present, "the idle session did not survive the restart");
    let message = idle.expect_publish();
    assert_eq!(
        (message.topic.as_str(), &message.payload[..]),
        ("idle/x", &b"late"[..])
    );
    let (mut busy, _) = resume(&broker, "busy-sub");
    let again = busy.drain_publishes(Duration::from_secs(1));
    assert!(
        again.is_empty(),
        "acknowledged messages came back: {again:?}"
    );
}

#[test]
fn batch_acked_in_order_until_bad_packet() {
    let dir = TempDir::new().expect("temporary directory");
    let broker = start_durable(&dir);
    let (mut subscriber, _) = resume(&broker, "batch-sub");
    subscriber.subscribe("batch/+", QoS::ExactlyOnce);

    // Ten good QoS 1 and QoS 2 PUBLISH packets, then one with an empty
    // topic and no alias (a protocol error), then one more, in one write.
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "batch-pub");
    let mut bytes = Vec::new();
    for packet_id in 1..=10u16 {
        let qos = if packet_id % 2 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        let payload = packet_id.to_string();
        let packet = Packet::Publish(publish("batch/a", qos, packet_id, payload.as_bytes()));
        bytes.extend(packets::encode_packet(&packet, Protocol::V5));
    }
    let bad = Packet::Publish(publish("", QoS::AtLeastOnce, 11, b"bad"));
    bytes.extend(packets::encode_packet(&bad, Protocol::V5));
    let after = Packet::Publish(publish("batch/a", QoS::AtLeastOnce, 12, b"12"));
    bytes.extend(packets::encode_packet(&after, Protocol::V5));
    publisher.send_bytes(&bytes);

    let mut acknowledged = Vec::new();
    let disconnect = loop {
        match publisher.read_packet_within(Duration::from_secs(5)) {
            Ok(Packet::PubAck(ack)) => acknowledged.push((ack.packet_id, ack.reason)),
            Ok(Packet::PubRec(rec)) => acknowledged.push((rec.packet_id, rec.reason)),
            Ok(Packet::Disconnect(disconnect)) => break disconnect,
            other => panic!("expected PUBACK, PUBREC or DISCONNECT, got {other:?}"),
        }
    };
    let expected: Vec<_> = (1..=10u16).map(|id| (id, ReasonCode::SUCCESS)).collect();
    assert_eq!(acknowledged, expected, "acknowledgements, in order");
    assert_eq!(disconnect.reason, ReasonCode::PROTOCOL_ERROR);

    let mut numbers = Vec::new();
    loop {
        match subscriber.read_packet_within(Duration::from_secs(1)) {
            Ok(Packet::Publish(message)) => {
                numbers.push(String::from_utf8(message.payload.to_vec()).expect("UTF-8"));
                subscriber.acknowledge(&message);
            }
            Ok(Packet::PubRel(release)) => {
                subscriber.send(&Packet::PubComp(packets::pub_response(release.packet_id)))
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(RecvError::Timeout) => break,
            Err(error) => panic!("subscriber failed: {error}"),
        }
    }
    let expected: Vec<String> = (1..=10).map(|n: u32| n.to_string()).collect();
    assert_eq!(numbers, expected, "delivered messages, in order");
}

#[test]
fn shared_members_keep_messages_across_kill() {
    let dir = TempDir::new().expect("temporary directory");
    let mut broker = start_durable(&dir);
    // The group on crash/q1 has one member, which reads and never
    // acknowledges. The group on crash/q2 has one member, which is offline,
    // so its messages wait in the member's queue.
    let (mut reader, _) = resume(&broker, "share-reader");
    reader.subscribe("$share/readers/crash/q1", QoS::AtLeastOnce);
    let (mut away, _) = resume(&broker, "share-away");
    away.subscribe("$share/away/crash/q2", QoS::AtLeastOnce);
    away.disconnect(ReasonCode::NORMAL_DISCONNECTION);

    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "share-publisher");
    let numbers: Vec<u32> = (0..4).collect();
    for &number in &numbers {
        for (topic, packet_id) in [("crash/q1", 1), ("crash/q2", 2)] {
            let payload = number.to_string();
            let message = publish(topic, QoS::AtLeastOnce, packet_id, payload.as_bytes());
            assert_eq!(
                publisher.publish(message),
                ReasonCode::SUCCESS,
                "{topic} {number}"
            );
        }
    }
    let before_kill = drain(&mut reader, false);
    assert_eq!(before_kill.qos1, numbers);
    // Session records are written every 20 ms, so the group's choice may
    // reach the store after the PUBACK.
    thread::sleep(Duration::from_millis(300));
    broker.kill_and_restart();
    drop(reader);

    let (mut reader, present) = resume(&broker, "share-reader");
    assert!(present, "the reader's session did not survive the kill");
    assert_eq!(
        drain(&mut reader, true).qos1,
        numbers,
        "the reader's messages"
    );

    let (mut away, present) = resume(&broker, "share-away");
    assert!(
        present,
        "the offline member's session did not survive the kill"
    );
    assert_eq!(
        drain(&mut away, true).qos2,
        numbers,
        "the offline member's messages"
    );
}

#[test]
fn shared_choice_is_stored_before_puback() {
    let dir = TempDir::new().expect("temporary directory");
    let mut broker = start_durable(&dir);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "choice-publisher");
    let publisher_shard = broker
        .shard_of("choice-publisher")
        .expect("the publisher's shard");
    // Two groups on crash/q1, each with one member, which is offline, so
    // the messages wait in its queue and only its stored record lists them.
    // One member sits on the publisher's shard, the other on the other
    // shard, whose choice comes back through the mesh.
    let mut members: [Option<String>; 2] = [None, None];
    for index in 0..32 {
        let client_id = format!("choice-away{index}");
        let (mut client, _) = resume(&broker, &client_id);
        let shard = broker.shard_of(&client_id).expect("the member's shard");
        let slot = &mut members[usize::from(shard != publisher_shard)];
        if slot.is_none() {
            client.subscribe(&format!("$share/choice{index}/crash/q1"), QoS::AtLeastOnce);
            *slot = Some(client_id);
        }
        client.disconnect(ReasonCode::NORMAL_DISCONNECTION);
        if members.iter().all(Option::is_some) {
            break;
        }
    }
    let members = members.map(|member| member.expect("a member on each shard"));

    let numbers: Vec<u32> = (0..20).collect();
    for &number in &numbers {
        let payload = number.to_string();
        let packet_id = u16::try_from(number + 1).expect("small packet id");
        let message = publish("crash/q1", QoS::AtLeastOnce, packet_id, payload.as_bytes());
        assert_eq!(publisher.publish(message), ReasonCode::SUCCESS, "{number}");
    }
    // No pause: the kill follows the last PUBACK at once, well within the
    // 20 ms after which changed session records are written anyway.
    broker.kill_and_restart();

    for member in &members {
        let (mut away, present) = resume(&broker, member);
        assert!(present, "the session of {member} did not survive the kill");
        assert_eq!(
            drain(&mut away, true).qos1,
            numbers,
            "messages of {member} acknowledged to the publisher"
        );
    }
}
