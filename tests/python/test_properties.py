"""MQTT 5 properties and limits with paho-mqtt: CONNACK limits, subscription identifiers,
no local, message expiry, request/response, topic aliases, flow control, packet size."""

import time

from mqtt_clients import PacketTypes, SubscribeOptions, make_properties
from mqtt_packets import (
    DISCONNECT,
    PUBREC,
    encode_publish_qos2_v5,
    read_until_closed,
    split_packets,
)

RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
PROTOCOL_ERROR = 0x82


def connected(broker, mqtt, client_id, **connect_options):
    client = mqtt(broker, client_id, 5)
    client.connect(**connect_options)
    return client


def subscription_ids(message):
    return list(getattr(message.properties, "SubscriptionIdentifier", []))


# CONNACK limits


def test_connack_reports_default_limits(broker, mqtt):
    client = mqtt(broker, "limits-default", 5)

    properties = client.connect().properties

    assert properties.ReceiveMaximum == 1024
    assert properties.TopicAliasMaximum == 64
    assert properties.MaximumPacketSize == 1024 * 1024
    # An absent "available" property means available, and a present one must be 1.
    for name in (
        "RetainAvailable",
        "WildcardSubscriptionAvailable",
        "SubscriptionIdentifierAvailable",
        "SharedSubscriptionAvailable",
    ):
        assert getattr(properties, name, 1) == 1, name


def test_connack_reports_configured_limits(broker_factory, mqtt):
    broker = broker_factory(
        "--receive-maximum", "10", "--topic-alias-maximum", "5", "--max-packet-size", "20000"
    )
    client = mqtt(broker, "limits-configured", 5)

    properties = client.connect().properties

    assert properties.ReceiveMaximum == 10
    assert properties.TopicAliasMaximum == 5
    assert properties.MaximumPacketSize == 20000


# Subscription identifiers and no local


def test_subscription_identifiers_in_publish(broker, mqtt):
    subscriber = connected(broker, mqtt, "sid-sub")
    subscriber.subscribe(
        "sid/a/+", qos=1, properties=make_properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7)
    )
    # 300 needs a two-byte variable byte integer.
    subscriber.subscribe(
        "sid/#", qos=1, properties=make_properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=300)
    )
    subscriber.subscribe("nosid/t", qos=1)
    publisher = connected(broker, mqtt, "sid-pub")

    publisher.publish("sid/a/x", "two matches", qos=1)
    overlapping = [subscriber.next_message()] + subscriber.collect_for(0.3)
    publisher.publish("sid/b", "one match", qos=1)
    single_match = subscriber.next_message()
    publisher.publish("nosid/t", "no identifier", qos=1)
    unidentified = subscriber.next_message()

    # Overlapping subscriptions may give one message with both identifiers or one each.
    overlapping_ids = sorted(
        identifier for message in overlapping for identifier in subscription_ids(message)
    )
    assert overlapping_ids == [7, 300]
    assert subscription_ids(single_match) == [300]
    assert subscription_ids(unidentified) == []


def test_subscription_identifier_on_retained(broker, mqtt):
    publisher = connected(broker, mqtt, "sid-retained-pub")
    publisher.publish("sidret/t", "stored", qos=1, retain=True)
    subscriber = connected(broker, mqtt, "sid-retained-sub")

    subscriber.subscribe(
        "sidret/t", qos=1, properties=make_properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42)
    )
    message = subscriber.next_message()

    assert message.retain is True
    assert subscription_ids(message) == [42]


def test_no_local_skips_own_messages(broker, mqtt):
    client = connected(broker, mqtt, "nolocal-self")
    client.subscribe("nolocal/t", options=SubscribeOptions(qos=1, noLocal=True))
    client.subscribe("nolocal/marker", qos=1)
    other = connected(broker, mqtt, "nolocal-other")

    client.publish("nolocal/t", "own", qos=1)
    client.publish("nolocal/marker", "marker", qos=1)
    # The marker comes from the same client, so an own message would arrive before it.
    first = client.next_message()
    other.publish("nolocal/t", "from other", qos=1)
    second = client.next_message()

    assert first.topic == "nolocal/marker"
    assert second.payload == b"from other"


# Message expiry


def test_message_expiry_in_offline_queue(broker, mqtt):
    subscriber = mqtt(broker, "expiry-sub", 5)
    subscriber.connect(clean_start=True, session_expiry=60)
    subscriber.subscribe("expiry/t", qos=1)
    subscriber.disconnect()
    publisher = connected(broker, mqtt, "expiry-pub")

    short = make_properties(PacketTypes.PUBLISH, MessageExpiryInterval=1)
    long = make_properties(PacketTypes.PUBLISH, MessageExpiryInterval=60)
    publisher.publish("expiry/t", "expires", qos=1, properties=short)
    publisher.publish("expiry/t", "stays", qos=1, properties=long)
    publisher.publish("expiry/t", "no expiry", qos=1)
    time.sleep(2.2)  # Let the 1 s message expire while its session is offline.
    subscriber.connect(clean_start=False, session_expiry=60)

    stays, no_expiry = subscriber.collect(2)
    assert stays.payload == b"stays"
    remaining = stays.properties.MessageExpiryInterval
    assert 1 <= remaining <= 58, f"expected the 60 s interval minus the 2 s offline, got {remaining}"
    assert no_expiry.payload == b"no expiry"
    assert not hasattr(no_expiry.properties, "MessageExpiryInterval")
    subscriber.assert_no_message(0.3)


def test_message_expiry_forwarded_online(broker, mqtt):
    subscriber = connected(broker, mqtt, "expiry-online-sub")
    subscriber.subscribe("expiry/online", qos=1)
    publisher = connected(broker, mqtt, "expiry-online-pub")

    properties = make_properties(PacketTypes.PUBLISH, MessageExpiryInterval=30)
    publisher.publish("expiry/online", "soon", qos=1, properties=properties)
    message = subscriber.next_message()

    assert 1 <= message.properties.MessageExpiryInterval <= 30


def test_expired_retained_not_sent(broker, mqtt):
    publisher = connected(broker, mqtt, "expiry-retained-pub")
    properties = make_properties(PacketTypes.PUBLISH, MessageExpiryInterval=1)
    publisher.publish("expiry/retained", "short-lived", qos=1, retain=True, properties=properties)
    time.sleep(2.2)  # Let the retained message's 1 s expiry pass.

    subscriber = connected(broker, mqtt, "expiry-retained-sub")
    subscriber.subscribe("expiry/retained", qos=1)

    subscriber.assert_no_message(0.5)


# Request/response


def test_request_response_properties(broker, mqtt):
    responder = connected(broker, mqtt, "responder")
    responder.subscribe("service/request", qos=1)
    requester = connected(broker, mqtt, "requester")
    requester.subscribe("service/reply/requester", qos=1)
    user_properties = [("b", "2"), ("a", "1"), ("b", "3")]
    request_properties = make_properties(
        PacketTypes.PUBLISH,
        ResponseTopic="service/reply/requester",
        CorrelationData=b"\x00\x01corr",
        ContentType="application/json",
        PayloadFormatIndicator=1,
        UserProperty=user_properties,
    )

    requester.publish("service/request", '{"op": "sum"}', qos=1, properties=request_properties)
    request = responder.next_message()

    assert request.payload == b'{"op": "sum"}'
    assert request.properties.ResponseTopic == "service/reply/requester"
    assert request.properties.CorrelationData == b"\x00\x01corr"
    assert request.properties.ContentType == "application/json"
    assert request.properties.PayloadFormatIndicator == 1
    assert request.properties.UserProperty == user_properties

    response_properties = make_properties(
        PacketTypes.PUBLISH, CorrelationData=request.properties.CorrelationData
    )
    responder.publish(
        request.properties.ResponseTopic, "42", qos=1, properties=response_properties
    )
    response = requester.next_message()

    assert response.topic == "service/reply/requester"
    assert response.payload == b"42"
    assert response.properties.CorrelationData == b"\x00\x01corr"


# Topic aliases from the client


def test_client_topic_alias_resolved(broker, mqtt):
    subscriber = connected(broker, mqtt, "alias-sub")
    subscriber.subscribe("alias/#", qos=1)
    publisher = connected(broker, mqtt, "alias-pub")

    def alias(number):
        return make_properties(PacketTypes.PUBLISH, TopicAlias=number)

    publisher.publish("alias/first", "set", qos=1, properties=alias(1))
    publisher.publish("", "by alias", qos=1, properties=alias(1))
    publisher.publish("", "by alias at qos 0", qos=0, properties=alias(1))
    publisher.publish("alias/second", "remap", qos=1, properties=alias(1))
    publisher.publish("", "after remap", qos=1, properties=alias(1))

    received = [(message.topic, message.payload) for message in subscriber.collect(5)]
    assert received == [
        ("alias/first", b"set"),
        ("alias/first", b"by alias"),
        ("alias/first", b"by alias at qos 0"),
        ("alias/second", b"remap"),
        ("alias/second", b"after remap"),
    ]


def test_topic_alias_above_maximum_rejected(broker_factory, mqtt):
    broker = broker_factory("--topic-alias-maximum", "2")
    publisher = connected(broker, mqtt, "alias-too-high")

    properties = make_properties(PacketTypes.PUBLISH, TopicAlias=3)
    publisher.publish("alias/high", "x", qos=0, properties=properties, wait=False)

    assert publisher.wait_disconnected() == TOPIC_ALIAS_INVALID
    assert publisher.disconnect_from_server is True


def test_unknown_topic_alias_rejected(broker, mqtt):
    publisher = connected(broker, mqtt, "alias-unknown")

    properties = make_properties(PacketTypes.PUBLISH, TopicAlias=2)
    publisher.publish("", "no topic", qos=0, properties=properties, wait=False)

    # An alias with no topic mapped yet is a Protocol Error (0x82). Some brokers send Topic
    # Alias invalid (0x94) instead, which the test accepts too.
    assert publisher.wait_disconnected() in (PROTOCOL_ERROR, TOPIC_ALIAS_INVALID)


# Flow control


def test_many_inflight_qos1_within_receive_maximum(broker_factory, mqtt):
    broker = broker_factory("--receive-maximum", "10")
    subscriber = connected(broker, mqtt, "flow-sub")
    subscriber.subscribe("flow/t", qos=1)
    publisher = mqtt(broker, "flow-pub", 5)
    connack = publisher.connect(max_inflight=10)
    assert connack.properties.ReceiveMaximum == 10

    infos = [publisher.publish("flow/t", str(index), qos=1, wait=False) for index in range(300)]
    reason_codes = [publisher.wait_published(info, timeout=10) for info in infos]

    assert set(reason_codes) == {0}
    payloads = [message.payload for message in subscriber.collect(300, timeout=10)]
    assert payloads == [str(index).encode() for index in range(300)]


def test_client_receive_maximum_limits_inflight(broker, mqtt):
    subscriber = mqtt(broker, "flow-client-sub", 5)
    subscriber.connect(
        manual_ack=True, properties=make_properties(PacketTypes.CONNECT, ReceiveMaximum=5)
    )
    subscriber.subscribe("flowclient/t", qos=1)
    publisher = connected(broker, mqtt, "flow-client-pub")

    for index in range(20):
        publisher.publish("flowclient/t", str(index), qos=1)

    received = []
    while len(received) < 20:
        window = subscriber.collect(5)
        # With 5 unacknowledged messages the broker must wait for a PUBACK.
        subscriber.assert_no_message(0.3)
        received.extend(window)
        for message in window:
            subscriber.ack(message)
    assert [message.payload for message in received] == [str(index).encode() for index in range(20)]


def test_exceeding_receive_maximum_disconnects(broker_factory, mqtt):
    broker = broker_factory("--receive-maximum", "2")
    publisher = mqtt(broker, "flow-exceed", 5)
    assert publisher.connect().properties.ReceiveMaximum == 2
    # With paho's network thread stopped, no PUBREL goes out, so all three QoS 2 messages
    # stay unacknowledged and the third exceeds the limit. Raw bytes keep paho from
    # writing after the broker has closed, which could turn the close into a reset that
    # discards the DISCONNECT.
    publisher.paho.loop_stop()
    sock = publisher.paho.socket()

    burst = b"".join(encode_publish_qos2_v5("flow/exceed", packet_id, b"x") for packet_id in (1, 2, 3))
    sock.sendall(burst)
    packets = split_packets(read_until_closed(sock, timeout=5.0))

    first_bytes = [first_byte for first_byte, _ in packets]
    assert first_bytes == [PUBREC, PUBREC, DISCONNECT], f"got {packets!r}"
    assert packets[-1][1][:1] == bytes([RECEIVE_MAXIMUM_EXCEEDED])


# Packet size


def test_packet_above_broker_maximum_rejected(broker_factory, mqtt):
    broker = broker_factory("--max-packet-size", "10000")
    publisher = connected(broker, mqtt, "too-large-pub")

    publisher.publish("large/rejected", b"x" * 20000, qos=1, wait=False)

    assert publisher.wait_disconnected() == PACKET_TOO_LARGE


def test_client_maximum_packet_size_respected(broker, mqtt):
    subscriber = mqtt(broker, "small-packets-sub", 5)
    subscriber.connect(properties=make_properties(PacketTypes.CONNECT, MaximumPacketSize=2000))
    subscriber.subscribe("small/t", qos=1)
    publisher = connected(broker, mqtt, "small-packets-pub")

    publisher.publish("small/t", b"x" * 5000, qos=1)
    publisher.publish("small/t", "fits", qos=1)

    # The broker must drop a message that exceeds the client's limit and keep the connection.
    message = subscriber.next_message()
    assert message.payload == b"fits"
    assert subscriber.is_connected()
