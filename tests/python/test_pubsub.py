"""Publish and subscribe with paho-mqtt over MQTT 5 and 3.1.1."""

import itertools

import pytest

from mqtt_clients import BOTH_VERSIONS

VERSIONS = pytest.mark.parametrize("version", BOTH_VERSIONS, ids=["v5", "v311"])


@VERSIONS
def test_qos_matrix_delivers_min_qos(broker, mqtt, version):
    publisher = mqtt(broker, f"pub-{version}", version)
    subscriber = mqtt(broker, f"sub-{version}", version)
    publisher.connect()
    subscriber.connect()
    for sub_qos in (0, 1, 2):
        granted = subscriber.subscribe(f"matrix/sub{sub_qos}/#", qos=sub_qos)
        assert granted == [sub_qos]

    for pub_qos, sub_qos in itertools.product((0, 1, 2), repeat=2):
        topic = f"matrix/sub{sub_qos}/pub{pub_qos}"
        payload = f"pub {pub_qos} sub {sub_qos}".encode()
        publisher.publish(topic, payload, qos=pub_qos)

        message = subscriber.next_message()

        assert message.topic == topic
        assert message.payload == payload
        assert message.qos == min(pub_qos, sub_qos)
        assert message.retain is False


@VERSIONS
def test_subscriber_publishes_back(broker, mqtt, version):
    # Each client both publishes and subscribes, so QoS 2 runs PUBREC/PUBREL/PUBCOMP in
    # both directions on the same connection.
    left = mqtt(broker, f"left-{version}", version)
    right = mqtt(broker, f"right-{version}", version)
    left.connect()
    right.connect()
    left.subscribe("duplex/to-left", qos=2)
    right.subscribe("duplex/to-right", qos=2)

    for qos in (0, 1, 2):
        left.publish("duplex/to-right", f"ping {qos}", qos=qos)
        ping = right.next_message()
        assert ping.payload == f"ping {qos}".encode()
        assert ping.qos == qos

        right.publish("duplex/to-left", f"pong {qos}", qos=qos)
        pong = left.next_message()
        assert pong.payload == f"pong {qos}".encode()
        assert pong.qos == qos


@VERSIONS
def test_unsubscribe_stops_delivery(broker, mqtt, version):
    publisher = mqtt(broker, f"pub-{version}", version)
    subscriber = mqtt(broker, f"sub-{version}", version)
    publisher.connect()
    subscriber.connect()
    subscriber.subscribe("unsub/dropped", qos=1)
    subscriber.subscribe("unsub/kept", qos=1)
    publisher.publish("unsub/dropped", "before", qos=1)
    assert subscriber.next_message().payload == b"before"

    reason_codes = subscriber.unsubscribe("unsub/dropped")
    if version == 5:
        assert reason_codes == [0]
    publisher.publish("unsub/dropped", "after", qos=1)
    publisher.publish("unsub/kept", "marker", qos=1)

    # Both publishes come from one client, so the marker arrives after anything that the
    # broker still routed to the dropped subscription.
    message = subscriber.next_message()
    assert message.topic == "unsub/kept"
    assert message.payload == b"marker"
    subscriber.assert_no_message(0.3)


def test_unsubscribe_unknown_filter_v5(broker, mqtt):
    client = mqtt(broker, "unsub-unknown", 5)
    client.connect()

    reason_codes = client.unsubscribe("never/subscribed")

    assert reason_codes == [0x11]  # No subscription existed


@VERSIONS
def test_dollar_topics_not_matched_by_wildcard(broker, mqtt, version):
    publisher = mqtt(broker, f"pub-{version}", version)
    wildcard = mqtt(broker, f"wildcard-{version}", version)
    dollar = mqtt(broker, f"dollar-{version}", version)
    publisher.connect()
    wildcard.connect()
    dollar.connect()
    wildcard.subscribe("#", qos=1)
    wildcard.subscribe("+/status", qos=1)
    dollar.subscribe("$test/#", qos=1)

    publisher.publish("$test/status", "hidden", qos=1)
    publisher.publish("plain/status", "visible", qos=1)

    seen = dollar.next_message()
    assert seen.topic == "$test/status"
    assert seen.payload == b"hidden"
    # The broker may send one copy per matching subscription (`#` and `+/status`).
    first = wildcard.next_message()
    assert first.topic == "plain/status"
    later_topics = {message.topic for message in wildcard.collect_for(0.3)}
    assert later_topics <= {"plain/status"}


@VERSIONS
def test_large_payload_roundtrip(broker, mqtt, version):
    publisher = mqtt(broker, f"pub-{version}", version)
    subscriber = mqtt(broker, f"sub-{version}", version)
    publisher.connect()
    subscriber.connect()
    subscriber.subscribe("large/payload", qos=1)
    payload = bytes(range(256)) * 2000  # 512,000 bytes, under the 1 MiB packet limit

    publisher.publish("large/payload", payload, qos=1, timeout=10)
    message = subscriber.next_message(timeout=10)

    assert len(message.payload) == len(payload)
    assert message.payload == payload


@VERSIONS
def test_wildcard_filters_match(broker, mqtt, version):
    publisher = mqtt(broker, f"pub-{version}", version)
    subscriber = mqtt(broker, f"sub-{version}", version)
    publisher.connect()
    subscriber.connect()
    subscriber.subscribe("wild/+/leaf", qos=1)
    subscriber.subscribe("deep/#", qos=1)
    cases = [
        ("wild/a/leaf", True),
        ("wild/a/b/leaf", False),
        ("wild//leaf", True),
        ("wild/a/leaf/more", False),
        ("deep", True),  # `#` also matches the parent level
        ("deep/x/y/z", True),
        ("deeper/x", False),
    ]

    for topic, _ in cases:
        publisher.publish(topic, topic, qos=1)
    publisher.publish("deep/end", "end", qos=1)

    expected = [topic for topic, matches in cases if matches] + ["deep/end"]
    received = [message.topic for message in subscriber.collect(len(expected))]
    assert received == expected
    subscriber.assert_no_message(0.3)


def test_many_clients_across_shards(broker, mqtt):
    subscriber_ids = [f"fanout-sub-{index}" for index in range(20)]
    subscribers = [mqtt(broker, client_id, 5) for client_id in subscriber_ids]
    for subscriber in subscribers:
        subscriber.connect()
        subscriber.subscribe("fanout/seq", qos=1)
    publisher = mqtt(broker, "fanout-pub", 5)
    publisher.connect()

    infos = [publisher.publish("fanout/seq", str(index), qos=1, wait=False) for index in range(100)]
    for info in infos:
        publisher.wait_published(info, timeout=10)

    expected = [str(index).encode() for index in range(100)]
    for subscriber in subscribers:
        payloads = [message.payload for message in subscriber.collect(100, timeout=10)]
        assert payloads == expected, f"{subscriber.client_id} received out of order or lost"
    shards = broker.wait_for_client_shards(subscriber_ids + ["fanout-pub"])
    assert set(shards.values()) == {0, 1}
