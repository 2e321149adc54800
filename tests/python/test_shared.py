"""Shared subscriptions ($share/group/filter) with paho-mqtt over MQTT 5."""

import time
from collections import Counter


def connect_members(broker, mqtt, prefix, count, share_filter):
    members = []
    for index in range(count):
        member = mqtt(broker, f"{prefix}-{index}", 5)
        member.connect()
        member.subscribe(share_filter, qos=1)
        members.append(member)
    return members


def publish_numbered(broker, mqtt, client_id, topic, count):
    publisher = mqtt(broker, client_id, 5)
    publisher.connect()
    infos = [publisher.publish(topic, str(index), qos=1, wait=False) for index in range(count)]
    for info in infos:
        publisher.wait_published(info)
    return [str(index).encode() for index in range(count)]


def collect_group(members, expected_total, timeout=5.0, quiet_window=0.5):
    """Collect each member's messages until the group has expected_total, then a quiet window.

    The quiet window gives a duplicate delivery time to arrive, so a check for duplicates
    can fail.
    """
    per_member = {member.client_id: [] for member in members}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for member in members:
            per_member[member.client_id].extend(member.drain())
        if sum(len(received) for received in per_member.values()) >= expected_total:
            break
        time.sleep(0.02)

    time.sleep(quiet_window)
    for member in members:
        per_member[member.client_id].extend(member.drain())
    return per_member


def all_payloads(per_member):
    return [message.payload for received in per_member.values() for message in received]


def test_shared_group_delivers_each_once(broker, mqtt):
    members = connect_members(broker, mqtt, "shared-member", 3, "$share/g/shared/t")

    expected = publish_numbered(broker, mqtt, "shared-pub", "shared/t", 30)
    per_member = collect_group(members, len(expected))

    payloads = all_payloads(per_member)
    duplicates = [payload for payload, count in Counter(payloads).items() if count > 1]
    assert duplicates == []
    assert sorted(payloads) == sorted(expected)
    for client_id, received in per_member.items():
        assert received, f"{client_id} received none of the 30 messages"
        assert all(message.topic == "shared/t" for message in received)


def test_shared_and_plain_subscribers(broker, mqtt):
    members = connect_members(broker, mqtt, "mixed-member", 2, "$share/g/mixed/t")
    plain = mqtt(broker, "mixed-plain", 5)
    plain.connect()
    plain.subscribe("mixed/t", qos=1)

    expected = publish_numbered(broker, mqtt, "mixed-pub", "mixed/t", 20)
    per_member = collect_group(members, len(expected))

    assert sorted(all_payloads(per_member)) == sorted(expected)
    assert [message.payload for message in plain.collect(len(expected))] == expected


def test_two_groups_each_get_all(broker, mqtt):
    group_a = connect_members(broker, mqtt, "group-a", 2, "$share/a/groups/t")
    group_b = connect_members(broker, mqtt, "group-b", 2, "$share/b/groups/t")

    expected = publish_numbered(broker, mqtt, "groups-pub", "groups/t", 20)

    for group in (group_a, group_b):
        per_member = collect_group(group, len(expected))
        assert sorted(all_payloads(per_member)) == sorted(expected)


def test_shared_wildcard_filter(broker, mqtt):
    members = connect_members(broker, mqtt, "wild-member", 2, "$share/g/wild/+/t")

    publisher = mqtt(broker, "wild-pub", 5)
    publisher.connect()
    topics = [f"wild/{index}/t" for index in range(10)]
    for topic in topics:
        publisher.publish(topic, topic, qos=1)
    publisher.publish("wild/x/other", "not matched", qos=1)
    per_member = collect_group(members, len(topics))

    received_topics = [message.topic for received in per_member.values() for message in received]
    assert sorted(received_topics) == sorted(topics)


def test_unsubscribed_member_gets_nothing(broker, mqtt):
    members = connect_members(broker, mqtt, "leaving-member", 3, "$share/g/leaving/t")
    leaving = members[0]
    leaving.unsubscribe("$share/g/leaving/t")

    expected = publish_numbered(broker, mqtt, "leaving-pub", "leaving/t", 20)
    per_member = collect_group(members[1:], len(expected))

    assert sorted(all_payloads(per_member)) == sorted(expected)
    leaving.assert_no_message(0.3)


def test_shared_subscribe_gets_no_retained(broker, mqtt):
    publisher = mqtt(broker, "shared-retained-pub", 5)
    publisher.connect()
    publisher.publish("sharedret/t", "stored", qos=1, retain=True)

    member = mqtt(broker, "shared-retained-member", 5)
    member.connect()
    member.subscribe("$share/g/sharedret/t", qos=1)
    publisher.publish("sharedret/t", "live", qos=1)

    # MQTT 5.0 section 3.3.1.3 sends retained messages only when a non-shared subscription
    # is made, so the live publish must be the first message.
    message = member.next_message()
    assert message.payload == b"live"
    member.assert_no_message(0.3)


def test_shared_group_spans_shards(broker, mqtt):
    members = connect_members(broker, mqtt, "span-member", 8, "$share/g/span/t")
    shards = broker.wait_for_client_shards([member.client_id for member in members])
    assert set(shards.values()) == {0, 1}

    expected = publish_numbered(broker, mqtt, "span-pub", "span/t", 40)
    per_member = collect_group(members, len(expected))

    # Members sit on both shards, so a broker where each shard picked its own member would
    # deliver duplicates.
    assert sorted(all_payloads(per_member)) == sorted(expected)
