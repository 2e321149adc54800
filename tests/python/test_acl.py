"""ACL rules on PUBLISH and SUBSCRIBE: %u and %c substitution, publish and subscribe rules
kept apart, SUBACK and PUBACK/PUBREC 0x87, and denied QoS 0 messages dropped."""

from __future__ import annotations

import re

import pytest

from auth_tools import ScramClient, add_user, scram_connect
from mqtt_raw import (
    CONNACK,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC_TYPE,
    SUBACK,
    RawClient,
    encode_connect,
    encode_publish,
    encode_pubrel,
    encode_subscribe,
    parse_connack,
    parse_pub_response,
    parse_publish,
    parse_suback,
)

NOT_AUTHORIZED = 0x87
V311_SUBSCRIBE_FAILURE = 0x80
NO_MATCHING_SUBSCRIBERS = 0x10

# Rules apply in file order and the first one that matches decides. No match: deny.
ACL_RULES = """\
user watcher
allow subscribe #
all
allow pubsub users/%u/#
allow publish clients/%c/#
allow publish only/pub
allow subscribe only/sub
deny subscribe public/secret/#
allow pubsub public/#
"""

DENIED_LINE = re.compile(r"denied by ACL")


@pytest.fixture
def acl_broker(tmp_path, coremq_binary, broker_factory):
    """A broker with ACL_RULES, users alice, bob and watcher, and anonymous access on."""
    passwords = tmp_path / "passwd"
    for user in ("alice", "bob", "watcher"):
        add_user(coremq_binary, passwords, user, f"{user}-pw")
    acl = tmp_path / "acl"
    acl.write_text(ACL_RULES)
    return broker_factory(
        "--password-file", str(passwords),
        "--acl-file", str(acl),
        "--allow-anonymous", "true",
        shards=1,
    )


def connect_raw(broker, client_id: str, version: int = 5, user: str | None = None) -> RawClient:
    raw = RawClient(broker.host, broker.port)
    password = f"{user}-pw".encode() if user else None
    raw.send(encode_connect(client_id, version=version, username=user, password=password))
    reason = parse_connack(raw.expect(CONNACK), version)[1]
    assert reason == 0, f"{client_id}: CONNACK 0x{reason:02X}"
    return raw


def subscribe(raw: RawClient, filters: list[str], version: int = 5, qos: int = 1) -> list[int]:
    raw.send(encode_subscribe(1, [(topic_filter, qos) for topic_filter in filters], version))
    return parse_suback(raw.expect(SUBACK), version)[1]


def publish_qos1(raw: RawClient, topic: str, packet_id: int, version: int = 5) -> int:
    """Publish at QoS 1 and return the PUBACK reason code, skipping deliveries to raw."""
    raw.send(encode_publish(topic, 1, packet_id, b"payload", version))
    while True:
        packet_type, _, body = raw.read_packet()
        if packet_type == PUBACK:
            break
        assert packet_type == PUBLISH, f"expected PUBACK, got packet type {packet_type}"
    acked_id, reason = parse_pub_response(body)
    assert acked_id == packet_id
    return reason


def received_topics(raw: RawClient, window: float = 0.5) -> list[str]:
    """Read PUBLISH packets for window seconds and return their topics."""
    topics = []
    while True:
        try:
            packet_type, flags, body = raw.read_packet(window)
        except AssertionError:
            return topics
        if packet_type == PUBLISH:
            topics.append(parse_publish(flags, body)[0])


def test_user_substitution(acl_broker):
    alice = connect_raw(acl_broker, "alice-1", user="alice")
    assert subscribe(alice, ["users/alice/#", "users/bob/#"]) == [1, NOT_AUTHORIZED]
    assert publish_qos1(alice, "users/alice/x", 1) == 0
    assert publish_qos1(alice, "users/bob/x", 2) == NOT_AUTHORIZED

    anonymous = connect_raw(acl_broker, "anon-1")
    assert subscribe(anonymous, ["users/alice/#"]) == [NOT_AUTHORIZED], "%u needs a user name"


def test_scram_user_substitution(acl_broker):
    raw = RawClient(acl_broker.host, acl_broker.port)
    reason, _, _ = scram_connect(raw, "scram-bob", ScramClient("bob", "bob-pw"))
    assert reason == 0
    assert subscribe(raw, ["users/bob/#", "users/alice/#"]) == [1, NOT_AUTHORIZED]


def test_client_id_substitution(acl_broker):
    device = connect_raw(acl_broker, "dev1")
    assert publish_qos1(device, "clients/dev1/out", 1) in (0, NO_MATCHING_SUBSCRIBERS)
    assert publish_qos1(device, "clients/dev2/out", 2) == NOT_AUTHORIZED


def test_publish_and_subscribe_rules_apart(acl_broker):
    client = connect_raw(acl_broker, "apart")
    assert subscribe(client, ["only/pub", "only/sub"]) == [NOT_AUTHORIZED, 1]
    assert publish_qos1(client, "only/pub", 1) in (0, NO_MATCHING_SUBSCRIBERS)
    assert publish_qos1(client, "only/sub", 2) == NOT_AUTHORIZED


def test_deny_rule_blocks_wider_filter(acl_broker):
    client = connect_raw(acl_broker, "wide")
    assert subscribe(client, ["public/news", "public/#", "public/secret/x"]) == [
        1,
        NOT_AUTHORIZED,
        NOT_AUTHORIZED,
    ]


def test_denied_qos2_gets_pubrec_0x87(acl_broker):
    client = connect_raw(acl_broker, "q2")
    client.send(encode_publish("only/sub", 2, 7, b"x"))
    packet_id, reason = parse_pub_response(client.expect(PUBREC_TYPE))
    assert packet_id == 7
    assert reason == NOT_AUTHORIZED


def test_denied_qos0_dropped_and_logged(acl_broker):
    watcher = connect_raw(acl_broker, "watcher-1", user="watcher")
    assert subscribe(watcher, ["#"], qos=0) == [0]
    publisher = connect_raw(acl_broker, "pub0")
    for _ in range(50):
        publisher.send(encode_publish("only/sub", 0, None, b"denied"))
    publisher.send(encode_publish("public/ok", 0, None, b"allowed"))

    topics = received_topics(watcher)
    assert topics == ["public/ok"], f"watcher received {topics}"
    denied_lines = DENIED_LINE.findall(acl_broker.log_text())
    assert 1 <= len(denied_lines) <= 3, f"{len(denied_lines)} log lines for 50 denials"


def test_v311_denials(acl_broker):
    watcher = connect_raw(acl_broker, "watcher-2", user="watcher")
    assert subscribe(watcher, ["#"], qos=1) == [1]
    client = connect_raw(acl_broker, "old", version=311)
    assert subscribe(client, ["only/pub", "only/sub"], version=311, qos=1) == [
        V311_SUBSCRIBE_FAILURE,
        1,
    ]
    # MQTT 3.1.1 has no error code in PUBACK, so the broker acknowledges and drops.
    assert publish_qos1(client, "only/sub", 3, version=311) == 0
    client.send(encode_publish("only/sub", 2, 4, b"x", version=311))
    assert parse_pub_response(client.expect(PUBREC_TYPE)) == (4, 0)
    client.send(encode_pubrel(4))
    assert parse_pub_response(client.expect(PUBCOMP)) == (4, 0)
    assert received_topics(watcher) == [], "a denied 3.1.1 message was delivered"


def test_will_on_denied_topic_rejected(acl_broker):
    raw = RawClient(acl_broker.host, acl_broker.port)
    # A 3.1.1 CONNECT with Clean Session and a Will on a topic that the ACL denies for
    # publishing. encode_connect has no Will fields, so the bytes are spelled out.
    body = (
        b"\x00\x04MQTT\x04"
        + bytes([0x02 | 0x04])
        + b"\x00\x3c"
        + b"\x00\x0bwill-client"
        + b"\x00\x08only/sub"
        + b"\x00\x01x"
    )
    connect = bytes([0x10, len(body)]) + body
    raw.send(connect)
    assert parse_connack(raw.expect(CONNACK), 311)[1] == 5
