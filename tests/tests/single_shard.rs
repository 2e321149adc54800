//! Routing on a broker with one shard. The other tests run two shards. With
//! one, the shard routes by its own subscriptions only and skips the table
//! of which shards have subscribers.

use std::time::Duration;

use coremq_tests::packets::{self, publish};
use coremq_tests::{Broker, QoS, RawClient, ReasonCode, SubscriptionOptions};

/// Silence after which a reading client stops waiting for more messages.
const QUIET: Duration = Duration::from_millis(500);

fn one_shard() -> Broker {
    Broker::start(&["--shards", "1"])
}

#[test]
fn puback_reports_whether_matched() {
    let broker = one_shard();
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "sub");
    subscriber.subscribe("one/+", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "pub");

    let reason = publisher.publish(publish("one/a", QoS::AtLeastOnce, 1, b"matched"));
    assert_eq!(reason, ReasonCode::SUCCESS, "PUBACK for a matched topic");
    let reason = publisher.publish(publish("two/a", QoS::AtLeastOnce, 2, b"unmatched"));
    assert_eq!(
        reason,
        ReasonCode::NO_MATCHING_SUBSCRIBERS,
        "PUBACK for a topic nobody subscribed to"
    );

    let received = subscriber.drain_publishes(QUIET);
    let topics: Vec<&str> = received.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, vec!["one/a"]);
}

#[test]
fn shared_group_members_take_turns() {
    let broker = one_shard();
    let mut members: Vec<RawClient> = ["m1", "m2"]
        .iter()
        .map(|id| {
            let (mut member, _) = RawClient::connect_v5(broker.addr(), id);
            member.subscribe("$share/g/shared/#", QoS::AtLeastOnce);
            member
        })
        .collect();
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "pub");

    for packet_id in 1..=4 {
        let reason = publisher.publish(publish("shared/t", QoS::AtLeastOnce, packet_id, b"x"));
        assert_eq!(
            reason,
            ReasonCode::SUCCESS,
            "PUBACK {packet_id}: the group matched"
        );
    }
    let counts: Vec<usize> = members
        .iter_mut()
        .map(|member| member.drain_publishes(QUIET).len())
        .collect();
    assert_eq!(counts, vec![2, 2], "messages per member");
}

#[test]
fn no_local_still_counts_as_match() {
    let broker = one_shard();
    let (mut client, _) = RawClient::connect_v5(broker.addr(), "self");
    let options = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::with_qos(QoS::AtLeastOnce)
    };
    client.subscribe_with(packets::subscribe(1, &[("nl/t", options)]));

    // The subscription matches, as with two shards, but the publisher does
    // not get its own message.
    let reason = client.publish(publish("nl/t", QoS::AtLeastOnce, 1, b"mine"));
    assert_eq!(reason, ReasonCode::SUCCESS);
    client.expect_silence(QUIET);
}
