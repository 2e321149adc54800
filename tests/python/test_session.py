"""Sessions with paho-mqtt: clean start, session present, offline queues, takeover, expiry."""

import time

import pytest

from mqtt_clients import BOTH_VERSIONS, PacketTypes, make_properties

VERSIONS = pytest.mark.parametrize("version", BOTH_VERSIONS, ids=["v5", "v311"])

SESSION_TAKEN_OVER = 0x8E

# paho closes its socket right after sending DISCONNECT, without waiting for the
# broker. The broker reads the old connection's DISCONNECT and the new
# connection's CONNECT on two sockets, in either order, and a CONNECT read first
# takes the still-open session over and reports it present. Tests that expect
# the session gone wait this long, in seconds, before they reconnect.
DISCONNECT_SETTLE = 0.3


def connect_persistent(client, clean_start=False):
    """Connect with a session that outlives the connection.

    MQTT 5 sends Session Expiry 60 s. MQTT 3.1.1 always sends Clean Session 0, because
    Clean Session 1 also discards the session at disconnect. Each test uses fresh client
    ids, so its first connection finds no old session in either version.
    """
    if client.version == 5:
        return client.connect(clean_start=clean_start, session_expiry=60)
    return client.connect(clean_start=False)


@VERSIONS
def test_clean_start_has_no_session(broker, mqtt, version):
    client = mqtt(broker, f"clean-{version}", version)

    connack = client.connect(clean_start=True)

    assert connack.reason_code == 0
    assert connack.session_present is False


@VERSIONS
def test_session_present_after_reconnect(broker, mqtt, version):
    client = mqtt(broker, f"resume-{version}", version)
    publisher = mqtt(broker, f"resume-pub-{version}", version)
    publisher.connect()
    first = connect_persistent(client, clean_start=True)
    assert first.session_present is False
    client.subscribe("resume/t", qos=1)
    client.disconnect()

    second = connect_persistent(client, clean_start=False)
    publisher.publish("resume/t", "kept subscription", qos=1)

    assert second.session_present is True
    message = client.next_message()
    assert message.payload == b"kept subscription"


@VERSIONS
def test_clean_start_discards_session(broker, mqtt, version):
    client = mqtt(broker, f"discard-{version}", version)
    publisher = mqtt(broker, f"discard-pub-{version}", version)
    publisher.connect()
    connect_persistent(client, clean_start=True)
    client.subscribe("discard/old", qos=1)
    client.disconnect()

    connack = client.connect(clean_start=True)
    client.subscribe("discard/marker", qos=1)
    publisher.publish("discard/old", "stale subscription", qos=1)
    publisher.publish("discard/marker", "marker", qos=1)

    assert connack.session_present is False
    message = client.next_message()
    assert message.topic == "discard/marker"


def test_zero_session_expiry_ends_session_v5(broker, mqtt):
    client = mqtt(broker, "no-expiry", 5)
    client.connect(clean_start=True)
    client.subscribe("noexpiry/t", qos=1)
    client.disconnect()
    time.sleep(DISCONNECT_SETTLE)

    connack = client.connect(clean_start=False)

    assert connack.session_present is False


def test_session_expires_after_interval_v5(broker, mqtt):
    client = mqtt(broker, "short-expiry", 5)
    client.connect(clean_start=True, session_expiry=1)
    client.subscribe("expiry/t", qos=1)
    client.disconnect()

    time.sleep(2.5)  # Let the 1 s session expiry pass with margin for timer granularity.
    connack = client.connect(clean_start=False, session_expiry=1)

    assert connack.session_present is False


def test_disconnect_sets_session_expiry_zero_v5(broker, mqtt):
    client = mqtt(broker, "expiry-on-disconnect", 5)
    client.connect(clean_start=True, session_expiry=60)
    client.subscribe("expiry/disconnect", qos=1)
    client.disconnect(properties=make_properties(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    time.sleep(DISCONNECT_SETTLE)

    connack = client.connect(clean_start=False, session_expiry=60)

    assert connack.session_present is False


@VERSIONS
def test_offline_messages_delivered_on_reconnect(broker, mqtt, version):
    subscriber = mqtt(broker, f"offline-{version}", version)
    publisher = mqtt(broker, f"offline-pub-{version}", version)
    publisher.connect()
    connect_persistent(subscriber, clean_start=True)
    subscriber.subscribe("offline/t", qos=2)
    subscriber.disconnect()

    publisher.publish("offline/t", "qos1 while offline", qos=1)
    publisher.publish("offline/t", "qos2 while offline", qos=2)
    connack = connect_persistent(subscriber, clean_start=False)

    assert connack.session_present is True
    first, second = subscriber.collect(2)
    assert first.payload == b"qos1 while offline"
    assert first.qos == 1
    assert second.payload == b"qos2 while offline"
    assert second.qos == 2
    subscriber.assert_no_message(0.3)


@VERSIONS
def test_offline_queue_survives_second_reconnect(broker, mqtt, version):
    # Messages acknowledged on the first reconnect must not come again on the next one.
    subscriber = mqtt(broker, f"offline-twice-{version}", version)
    publisher = mqtt(broker, f"offline-twice-pub-{version}", version)
    publisher.connect()
    connect_persistent(subscriber, clean_start=True)
    subscriber.subscribe("twice/t", qos=1)
    subscriber.disconnect()
    publisher.publish("twice/t", "first batch", qos=1)
    connect_persistent(subscriber)
    assert subscriber.next_message().payload == b"first batch"
    subscriber.disconnect()

    publisher.publish("twice/t", "second batch", qos=1)
    connect_persistent(subscriber)

    message = subscriber.next_message()
    assert message.payload == b"second batch"
    subscriber.assert_no_message(0.3)


def test_max_queued_messages_bounds_offline_queue(broker_factory, mqtt):
    broker = broker_factory("--max-queued-messages", "5")
    subscriber = mqtt(broker, "bounded-queue", 5)
    publisher = mqtt(broker, "bounded-queue-pub", 5)
    publisher.connect()
    subscriber.connect(clean_start=True, session_expiry=60)
    subscriber.subscribe("bounded/t", qos=1)
    subscriber.disconnect()

    for index in range(12):
        publisher.publish("bounded/t", str(index), qos=1)
    subscriber.connect(clean_start=False, session_expiry=60)

    queued = subscriber.collect_for(1.0)
    assert 1 <= len(queued) <= 5, f"expected 1 to 5 queued messages, got {len(queued)}"


def test_takeover_disconnects_first_v5(broker, mqtt):
    first = mqtt(broker, "takeover", 5)
    second = mqtt(broker, "takeover", 5)
    publisher = mqtt(broker, "takeover-pub", 5)
    publisher.connect()
    first.connect()

    second.connect(clean_start=True)

    assert first.wait_disconnected() == SESSION_TAKEN_OVER
    assert first.disconnect_from_server is True
    second.subscribe("takeover/t", qos=1)
    publisher.publish("takeover/t", "to second", qos=1)
    assert second.next_message().payload == b"to second"
    assert second.is_connected()


def test_takeover_keeps_persistent_session_v5(broker, mqtt):
    first = mqtt(broker, "takeover-session", 5)
    second = mqtt(broker, "takeover-session", 5)
    publisher = mqtt(broker, "takeover-session-pub", 5)
    publisher.connect()
    first.connect(clean_start=True, session_expiry=60)
    first.subscribe("takeover/session", qos=1)

    connack = second.connect(clean_start=False, session_expiry=60)
    publisher.publish("takeover/session", "after takeover", qos=1)

    assert connack.session_present is True
    assert first.wait_disconnected() == SESSION_TAKEN_OVER
    assert second.next_message().payload == b"after takeover"
    first.assert_no_message(0.3)


def test_takeover_closes_first_v311(broker, mqtt):
    first = mqtt(broker, "takeover-311", 311)
    second = mqtt(broker, "takeover-311", 311)
    first.connect(clean_start=False)
    first.subscribe("takeover311/t", qos=1)

    connack = second.connect(clean_start=False)

    first.wait_disconnected()
    assert connack.session_present is True
    assert second.is_connected()


@VERSIONS
def test_unacked_qos1_redelivered_with_dup(broker, mqtt, version):
    subscriber = mqtt(broker, f"redeliver-{version}", version)
    publisher = mqtt(broker, f"redeliver-pub-{version}", version)
    publisher.connect()
    if version == 5:
        subscriber.connect(clean_start=True, session_expiry=60, manual_ack=True)
    else:
        subscriber.connect(clean_start=False, manual_ack=True)
    subscriber.subscribe("redeliver/t", qos=1)
    publisher.publish("redeliver/t", "unacknowledged", qos=1)
    first = subscriber.next_message()
    assert first.dup is False

    subscriber.drop()
    connect_persistent(subscriber)
    again = subscriber.next_message()

    assert again.payload == b"unacknowledged"
    assert again.qos == 1
    assert again.dup is True


def test_qos2_resumes_at_pubrel_v5(broker, mqtt):
    # After PUBREC the broker owes PUBREL, not the PUBLISH, so the message must not be
    # delivered a second time on reconnect.
    subscriber = mqtt(broker, "qos2-resume", 5)
    publisher = mqtt(broker, "qos2-resume-pub", 5)
    publisher.connect()
    subscriber.connect(clean_start=True, session_expiry=60, manual_ack=True)
    subscriber.subscribe("resume2/t", qos=2)
    publisher.publish("resume2/t", "exactly once", qos=2)
    # Paho passes a QoS 2 message on after PUBREL and delays PUBCOMP until ack().
    assert subscriber.next_message().payload == b"exactly once"

    subscriber.drop()
    subscriber.connect(clean_start=False, session_expiry=60, paho_acks=True)
    publisher.publish("resume2/t", "next", qos=2)

    message = subscriber.next_message()
    assert message.payload == b"next"
    subscriber.assert_no_message(0.3)


def test_repeated_takeover_chain(broker, mqtt):
    # Each new TCP connection may be accepted on either shard, so a chain of takeovers
    # exercises the hand-off to the session's owner shard from both sides.
    publisher = mqtt(broker, "chain-pub", 5)
    publisher.connect()
    previous = None
    for round_number in range(6):
        current = mqtt(broker, "chain", 5)
        connack = current.connect(clean_start=False, session_expiry=60)
        if previous is None:
            current.subscribe("chain/t", qos=1)
        else:
            assert connack.session_present is True, f"round {round_number}"
            assert previous.wait_disconnected() == SESSION_TAKEN_OVER, f"round {round_number}"
        previous = current

    publisher.publish("chain/t", "to the last", qos=1)
    assert previous.next_message().payload == b"to the last"


def test_v5_takes_over_v311_session(broker, mqtt):
    old = mqtt(broker, "cross-version", 311)
    old.connect(clean_start=False)
    old.subscribe("crossversion/t", qos=1)
    publisher = mqtt(broker, "cross-version-pub", 5)
    publisher.connect()

    new = mqtt(broker, "cross-version", 5)
    connack = new.connect(clean_start=False, session_expiry=60)
    old.wait_disconnected()
    publisher.publish("crossversion/t", "kept across versions", qos=1)

    assert connack.session_present is True
    assert new.next_message().payload == b"kept across versions"
