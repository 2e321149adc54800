"""Retained messages with paho-mqtt: set, replace, clear, retain handling, retain as published."""

import pytest

from mqtt_clients import BOTH_VERSIONS, SubscribeOptions

VERSIONS = pytest.mark.parametrize("version", BOTH_VERSIONS, ids=["v5", "v311"])


def connected(broker, mqtt, client_id, version=5):
    client = mqtt(broker, client_id, version)
    client.connect()
    return client


@VERSIONS
def test_retained_reaches_later_subscriber(broker, mqtt, version):
    publisher = connected(broker, mqtt, f"pub-{version}", version)
    publisher.publish("retain/set", "stored", qos=1, retain=True)

    subscriber = connected(broker, mqtt, f"sub-{version}", version)
    subscriber.subscribe("retain/set", qos=1)
    message = subscriber.next_message()

    assert message.topic == "retain/set"
    assert message.payload == b"stored"
    assert message.retain is True
    assert message.qos == 1


@VERSIONS
def test_retained_qos_capped_by_subscription(broker, mqtt, version):
    publisher = connected(broker, mqtt, f"pub-{version}", version)
    publisher.publish("retain/qos", "stored at 2", qos=2, retain=True)

    subscriber = connected(broker, mqtt, f"sub-{version}", version)
    subscriber.subscribe("retain/qos", qos=0)
    message = subscriber.next_message()

    assert message.payload == b"stored at 2"
    assert message.qos == 0


@VERSIONS
def test_retained_replaced_by_newer(broker, mqtt, version):
    publisher = connected(broker, mqtt, f"pub-{version}", version)
    publisher.publish("retain/replace", "old", qos=1, retain=True)
    publisher.publish("retain/replace", "new", qos=1, retain=True)

    subscriber = connected(broker, mqtt, f"sub-{version}", version)
    subscriber.subscribe("retain/replace", qos=1)

    assert subscriber.next_message().payload == b"new"
    subscriber.assert_no_message(0.5)


@VERSIONS
def test_empty_payload_clears_retained(broker, mqtt, version):
    publisher = connected(broker, mqtt, f"pub-{version}", version)
    publisher.publish("retain/clear", "stored", qos=1, retain=True)
    publisher.publish("retain/clear", b"", qos=1, retain=True)

    subscriber = connected(broker, mqtt, f"sub-{version}", version)
    subscriber.subscribe("retain/clear", qos=1)

    subscriber.assert_no_message(0.5)


@VERSIONS
def test_wildcard_gets_every_retained(broker, mqtt, version):
    publisher = connected(broker, mqtt, f"pub-{version}", version)
    topics = ["retain/many/a", "retain/many/b", "retain/many/c/d"]
    for topic in topics:
        publisher.publish(topic, topic, qos=1, retain=True)
    publisher.publish("retain/other", "not matched", qos=1, retain=True)

    subscriber = connected(broker, mqtt, f"sub-{version}", version)
    subscriber.subscribe("retain/many/#", qos=1)
    received = subscriber.collect(len(topics))

    # Retained messages for one subscription may arrive in any order.
    assert sorted(message.topic for message in received) == topics
    assert all(message.retain for message in received)
    subscriber.assert_no_message(0.3)


@VERSIONS
def test_live_delivery_of_retained_publish(broker, mqtt, version):
    # A retained publish that matches an existing subscription is forwarded with RETAIN 0
    # (MQTT 3.1.1 always, MQTT 5 unless Retain As Published is set).
    subscriber = connected(broker, mqtt, f"sub-{version}", version)
    subscriber.subscribe("retain/live", qos=1)
    publisher = connected(broker, mqtt, f"pub-{version}", version)

    publisher.publish("retain/live", "live", qos=1, retain=True)
    message = subscriber.next_message()

    assert message.payload == b"live"
    assert message.retain is False


def test_retained_reaches_every_shard(broker, mqtt):
    publisher = connected(broker, mqtt, "retain-shards-pub")
    publisher.publish("retain/shards", "everywhere", qos=1, retain=True)
    subscriber_ids = [f"retain-shards-{index}" for index in range(8)]

    for client_id in subscriber_ids:
        subscriber = connected(broker, mqtt, client_id)
        subscriber.subscribe("retain/shards", qos=1)
        message = subscriber.next_message()
        assert message.payload == b"everywhere", client_id
        assert message.retain is True, client_id

    shards = broker.wait_for_client_shards(subscriber_ids)
    assert set(shards.values()) == {0, 1}


def test_retain_handling_0_sends_every_subscribe(broker, mqtt):
    publisher = connected(broker, mqtt, "rh0-pub")
    publisher.publish("retain/rh0", "stored", qos=1, retain=True)
    subscriber = connected(broker, mqtt, "rh0-sub")
    options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)

    subscriber.subscribe("retain/rh0", options=options)
    first = subscriber.next_message()
    subscriber.subscribe("retain/rh0", options=options)
    second = subscriber.next_message()

    assert first.payload == b"stored"
    assert second.payload == b"stored"
    assert second.retain is True


def test_retain_handling_1_sends_only_new(broker, mqtt):
    publisher = connected(broker, mqtt, "rh1-pub")
    publisher.publish("retain/rh1", "stored", qos=1, retain=True)
    subscriber = connected(broker, mqtt, "rh1-sub")
    options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)

    subscriber.subscribe("retain/rh1", options=options)
    first = subscriber.next_message()
    subscriber.subscribe("retain/rh1", options=options)

    assert first.payload == b"stored"
    assert first.retain is True
    subscriber.assert_no_message(0.5)


def test_retain_handling_2_sends_none(broker, mqtt):
    publisher = connected(broker, mqtt, "rh2-pub")
    publisher.publish("retain/rh2", "stored", qos=1, retain=True)
    subscriber = connected(broker, mqtt, "rh2-sub")
    options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)

    subscriber.subscribe("retain/rh2", options=options)
    publisher.publish("retain/rh2", "live", qos=1)

    # The live publish is not retained, so it is the only message the subscriber may see.
    message = subscriber.next_message()
    assert message.payload == b"live"
    subscriber.assert_no_message(0.3)


def test_retain_as_published_keeps_flag(broker, mqtt):
    rap_on = connected(broker, mqtt, "rap-on")
    rap_off = connected(broker, mqtt, "rap-off")
    rap_on.subscribe("retain/rap", options=SubscribeOptions(qos=1, retainAsPublished=True))
    rap_off.subscribe("retain/rap", options=SubscribeOptions(qos=1, retainAsPublished=False))
    publisher = connected(broker, mqtt, "rap-pub")

    publisher.publish("retain/rap", "flagged", qos=1, retain=True)
    publisher.publish("retain/rap", "plain", qos=1, retain=False)

    rap_on_flags = [message.retain for message in rap_on.collect(2)]
    rap_off_flags = [message.retain for message in rap_off.collect(2)]
    assert rap_on_flags == [True, False]
    assert rap_off_flags == [False, False]
