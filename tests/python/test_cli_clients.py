"""mosquitto_pub and mosquitto_sub (MQTT 5 and 3.1.1) against coremq."""

import pytest

VERSIONS = pytest.mark.parametrize("version", [5, 311], ids=["v5", "v311"])


@VERSIONS
def test_wildcard_sub_gets_qos2_publish(broker, mosquitto, version):
    subscriber = mosquitto.subscribe(broker, version, "a/#", "-v")

    mosquitto.publish(broker, version, "a/b", "hi", "-q", "2")

    assert subscriber.wait_message("a/b hi") == "a/b hi"


@VERSIONS
def test_qos1_publish_reaches_qos1_sub(broker, mosquitto, version):
    subscriber = mosquitto.subscribe(broker, version, "cli/q1", "-q", "1", "-F", "%q %t %p")

    mosquitto.publish(broker, version, "cli/q1", "one", "-q", "1")

    assert subscriber.wait_message("1 cli/q1 one") == "1 cli/q1 one"


@VERSIONS
def test_qos0_sub_downgrades_qos2_publish(broker, mosquitto, version):
    subscriber = mosquitto.subscribe(broker, version, "cli/q0", "-q", "0", "-F", "%q %t %p")

    mosquitto.publish(broker, version, "cli/q0", "down", "-q", "2")

    assert subscriber.wait_message("0 cli/q0 down") == "0 cli/q0 down"


@VERSIONS
def test_retained_publish_reaches_later_sub(broker, mosquitto, version):
    mosquitto.publish(broker, version, "cli/retained", "kept", "-r", "-q", "1")

    subscriber = mosquitto.subscribe(broker, version, "cli/#", "-F", "%r %t %p")

    assert subscriber.wait_message("1 cli/retained kept") == "1 cli/retained kept"


@VERSIONS
def test_retained_cleared_by_empty_payload(broker, mosquitto, version):
    mosquitto.publish(broker, version, "cli/cleared", "old", "-r", "-q", "1")
    mosquitto.publish(broker, version, "cli/cleared", "", "-r", "-q", "1")
    mosquitto.publish(broker, version, "cli/marker", "present", "-r", "-q", "1")

    # Retained messages for one subscription may arrive in any order, so the marker only
    # proves that retained delivery has started.
    subscriber = mosquitto.subscribe(broker, version, "cli/#", "-F", "%r %t %p")
    subscriber.wait_message("1 cli/marker present")

    subscriber.assert_no_line(lambda line: "cli/cleared" in line, "for the cleared topic")


def test_user_property_forwarded_v5(broker, mosquitto):
    subscriber = mosquitto.subscribe(broker, 5, "cli/props", "-F", "%t %p %P")

    mosquitto.publish(broker, 5, "cli/props", "with", "-D", "publish", "user-property", "k", "v")

    assert subscriber.wait_message("cli/props with k:v") == "cli/props with k:v"


def test_v5_publish_reaches_v311_sub(broker, mosquitto):
    subscriber = mosquitto.subscribe(broker, 311, "mix/#", "-v")

    mosquitto.publish(broker, 5, "mix/from5", "hello", "-q", "1")

    assert subscriber.wait_message("mix/from5 hello") == "mix/from5 hello"


def test_v311_publish_reaches_v5_sub(broker, mosquitto):
    subscriber = mosquitto.subscribe(broker, 5, "mix/#", "-v")

    mosquitto.publish(broker, 311, "mix/from311", "hello", "-q", "2")

    assert subscriber.wait_message("mix/from311 hello") == "mix/from311 hello"
