"""Connection limits with paho-mqtt: keep alive, assigned client ids, max connections."""

import time

from mqtt_clients import wait_until
from mqtt_packets import DISCONNECT, PINGRESP, read_until_closed, split_packets
from mqtt_raw import (
    CONNACK,
    PUBACK,
    SUBACK,
    RawClient,
    encode_connect,
    encode_publish,
    encode_subscribe,
)

KEEP_ALIVE_TIMEOUT = 0x8D

def test_silent_client_closed_after_keep_alive(broker, mqtt):
    client = mqtt(broker, "silent", 5)
    client.connect(keepalive=1)
    sock = client.paho.socket()

    # Stop paho's network thread but keep the socket open, so no PINGREQ goes out.
    client.paho.loop_stop()
    silent_since = time.monotonic()
    received = read_until_closed(sock, timeout=6.0)
    elapsed = time.monotonic() - silent_since

    # A PINGRESP to paho's last PINGREQ may still arrive before the close.
    packets = [packet for packet in split_packets(received) if packet[0] != PINGRESP]
    # The broker may send DISCONNECT 0x8D (Keep Alive timeout) before it closes.
    if packets:
        assert len(packets) == 1, f"expected at most one DISCONNECT, got {received!r}"
        first_byte, body = packets[0]
        assert first_byte == DISCONNECT, f"expected DISCONNECT or EOF, got {received!r}"
        assert body[:1] == bytes([KEEP_ALIVE_TIMEOUT])
    # MQTT allows 1.5 times the keep alive after the last packet from the client.
    assert elapsed <= 3.5, f"closed {elapsed:.2f} s after the client went silent"


def test_keep_alive_ends_client_whose_socket_is_full(broker, mqtt):
    """A client that stops reading while QoS 1 messages fill its socket is still cut off at
    1.5 times its keep alive, and its Will is published, although the broker cannot write
    the DISCONNECT to it."""
    watcher = mqtt(broker, "full-watcher", 5)
    watcher.connect()
    watcher.subscribe("full/will", qos=0)

    stuck = RawClient(broker.host, broker.port, receive_buffer=4096)
    stuck.send(encode_connect("full-stuck", keep_alive=2, will=("full/will", b"gone")))
    stuck.expect(CONNACK)
    stuck.send(encode_subscribe(1, [("full/#", 1)]))
    stuck.expect(SUBACK)
    went_silent = time.monotonic()

    # 2,000 QoS 1 messages of 4,000 bytes, 50 per write, far more than the socket takes.
    publisher = RawClient(broker.host, broker.port)
    publisher.send(encode_connect("full-publisher"))
    publisher.expect(CONNACK)
    for burst in range(40):
        publisher.send(
            b"".join(
                encode_publish("full/data", 1, burst * 50 + index + 1, b"y" * 4000)
                for index in range(50)
            )
        )
        for _ in range(50):
            publisher.expect(PUBACK)

    def will_arrived() -> bool:
        return any(message.topic == "full/will" for message in watcher.drain())

    wait_until(will_arrived, 10, "the Will of the client with a full socket")
    elapsed = time.monotonic() - went_silent
    # 1.5 x 2 s, plus the time the broker gives a close to flush, plus slack.
    assert elapsed < 8.0, f"the Will came {elapsed:.1f} s after the client went silent"
    stuck.close()


def test_pinging_client_stays_connected(broker, mqtt):
    client = mqtt(broker, "pinging", 5)
    client.connect(keepalive=1)
    publisher = mqtt(broker, "pinging-pub", 5)
    publisher.connect()
    client.subscribe("ping/t", qos=1)

    time.sleep(3.0)  # Three keep-alive periods, each bridged only by paho's PINGREQ.
    publisher.publish("ping/t", "still here", qos=1)

    assert client.is_connected()
    assert client.next_message().payload == b"still here"


def test_max_keep_alive_in_connack(broker_factory, mqtt):
    broker = broker_factory("--max-keep-alive", "5")
    client = mqtt(broker, "keepalive-capped", 5)

    connack = client.connect(keepalive=60)

    assert connack.properties.ServerKeepAlive == 5


def test_empty_client_id_assigned_v5(broker, mqtt):
    client = mqtt(broker, "", 5)

    connack = client.connect(clean_start=True)

    assert connack.reason_code == 0
    assigned = connack.properties.AssignedClientIdentifier
    assert assigned, "CONNACK has no Assigned Client Identifier for an empty client id"


def test_empty_client_id_accepted_v311(broker, mqtt):
    client = mqtt(broker, "", 311)

    connack = client.connect(clean_start=True)

    assert connack.reason_code == 0


def test_max_connections_rejects_extra(broker_factory, mqtt):
    broker = broker_factory("--max-connections", "3")
    clients = [mqtt(broker, f"limited-{index}", 5) for index in range(3)]
    for client in clients:
        client.connect()

    extra = mqtt(broker, "limited-extra", 5)
    rejected = extra.connect(expect_success=False)

    # A CONNACK error (0x97 Quota exceeded, for example) and a closed socket both reject.
    assert rejected.reason_code >= 0x80
    clients[0].disconnect()

    replacement = mqtt(broker, "limited-replacement", 5)

    def replacement_connects():
        return replacement.connect(expect_success=False).reason_code == 0

    wait_until(replacement_connects, 3.0, "a connection after one of 3 closed")
