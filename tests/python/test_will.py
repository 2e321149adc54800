"""Will messages with paho-mqtt: abnormal close, normal disconnect, will delay, properties."""

import time

import pytest

from mqtt_clients import BOTH_VERSIONS, PacketTypes, make_properties

VERSIONS = pytest.mark.parametrize("version", BOTH_VERSIONS, ids=["v5", "v311"])

DISCONNECT_WITH_WILL_MESSAGE = 0x04


def watch(broker, mqtt, topic, version=5):
    watcher = mqtt(broker, f"watcher-{topic.replace('/', '-')}", version)
    watcher.connect()
    watcher.subscribe(topic, qos=1)
    return watcher


@VERSIONS
def test_will_sent_on_abnormal_close(broker, mqtt, version):
    watcher = watch(broker, mqtt, "will/abnormal", version)
    client = mqtt(broker, f"dies-{version}", version)
    client.connect(will={"topic": "will/abnormal", "payload": "gone", "qos": 1})

    client.drop()

    will = watcher.next_message()
    assert will.topic == "will/abnormal"
    assert will.payload == b"gone"
    assert will.qos == 1


@VERSIONS
def test_no_will_on_normal_disconnect(broker, mqtt, version):
    watcher = watch(broker, mqtt, "will/normal", version)
    client = mqtt(broker, f"leaves-{version}", version)
    client.connect(will={"topic": "will/normal", "payload": "gone", "qos": 1})

    client.disconnect()

    watcher.assert_no_message(1.0)


def test_will_sent_on_disconnect_reason_0x04(broker, mqtt):
    watcher = watch(broker, mqtt, "will/reason")
    client = mqtt(broker, "leaves-with-will", 5)
    client.connect(will={"topic": "will/reason", "payload": "asked for", "qos": 1})

    client.disconnect(reason_code=DISCONNECT_WITH_WILL_MESSAGE)

    will = watcher.next_message()
    assert will.payload == b"asked for"


def test_will_delay_postpones_will(broker, mqtt):
    watcher = watch(broker, mqtt, "will/delayed")
    client = mqtt(broker, "dies-delayed", 5)
    will_properties = make_properties(PacketTypes.WILLMESSAGE, WillDelayInterval=2)
    client.connect(
        session_expiry=30,
        will={"topic": "will/delayed", "payload": "late", "qos": 1, "properties": will_properties},
    )

    client.drop()
    dropped_at = time.monotonic()
    will = watcher.next_message(timeout=8)
    elapsed = time.monotonic() - dropped_at

    assert will.payload == b"late"
    assert elapsed >= 1.8, f"will arrived {elapsed:.2f} s after the close, before its 2 s delay"


def test_will_delay_cancelled_by_reconnect(broker, mqtt):
    watcher = watch(broker, mqtt, "will/cancelled")
    client = mqtt(broker, "comes-back", 5)
    will_properties = make_properties(PacketTypes.WILLMESSAGE, WillDelayInterval=2)
    will = {"topic": "will/cancelled", "payload": "late", "qos": 1, "properties": will_properties}
    client.connect(session_expiry=30, will=will)

    client.drop()
    connack = client.connect(clean_start=False, session_expiry=30)

    assert connack.session_present is True
    # The first will's delay ends 2 s after the close, so watch past it with margin.
    watcher.assert_no_message(3.5)


def test_will_sent_when_session_expires_first(broker, mqtt):
    # The will goes out when the will delay passes or the session ends, whichever is first.
    watcher = watch(broker, mqtt, "will/expiry")
    client = mqtt(broker, "expires-first", 5)
    will_properties = make_properties(PacketTypes.WILLMESSAGE, WillDelayInterval=60)
    client.connect(
        session_expiry=1,
        will={"topic": "will/expiry", "payload": "session over", "qos": 1, "properties": will_properties},
    )

    client.drop()
    will = watcher.next_message(timeout=6)

    assert will.payload == b"session over"


@VERSIONS
def test_retained_will_reaches_later_subscriber(broker, mqtt, version):
    client = mqtt(broker, f"dies-retained-{version}", version)
    client.connect(will={"topic": "will/retained", "payload": "offline", "qos": 1, "retain": True})
    watcher = watch(broker, mqtt, "will/retained", version)
    client.drop()
    assert watcher.next_message().payload == b"offline"

    late = mqtt(broker, f"late-{version}", version)
    late.connect()
    late.subscribe("will/retained", qos=1)

    retained = late.next_message()
    assert retained.payload == b"offline"
    assert retained.retain is True


def test_will_properties_forwarded(broker, mqtt):
    watcher = watch(broker, mqtt, "will/props")
    client = mqtt(broker, "dies-with-props", 5)
    will_properties = make_properties(
        PacketTypes.WILLMESSAGE,
        ContentType="text/plain",
        PayloadFormatIndicator=1,
        ResponseTopic="will/reply",
        CorrelationData=b"\x00\x01",
        UserProperty=[("host", "a"), ("host", "b")],
    )
    client.connect(
        will={"topic": "will/props", "payload": "bye", "qos": 1, "properties": will_properties}
    )

    client.drop()
    will = watcher.next_message()

    assert will.properties.ContentType == "text/plain"
    assert will.properties.PayloadFormatIndicator == 1
    assert will.properties.ResponseTopic == "will/reply"
    assert will.properties.CorrelationData == b"\x00\x01"
    assert will.properties.UserProperty == [("host", "a"), ("host", "b")]
