"""Limits that keep one client from hurting others: connections per listener, connection
rate per source address, in-flight windows and slow consumers.

Each test runs the broker with one shard, so the offending client and the well-behaved
client share the shard, and it checks that the well-behaved client keeps a short round trip.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from conftest import Broker, tail
from mqtt_raw import (
    CONNACK,
    DISCONNECT_TYPE,
    PINGREQ,
    PINGRESP_TYPE,
    PUBACK,
    PUBLISH,
    SUBACK,
    RawClient,
    encode_connect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    parse_connack,
    parse_publish,
    parse_reason_and_properties,
)

QUOTA_EXCEEDED = 0x97
CONNECTION_RATE_EXCEEDED = 0x9F
RECEIVE_MAXIMUM_EXCEEDED = 0x93
V311_SERVER_UNAVAILABLE = 3

# Upper bound for one round trip of the well-behaved client while another client breaks a
# limit. Loopback round trips of a debug build take milliseconds; a stalled shard would
# take seconds.
MAX_ROUND_TRIP_SECONDS = 0.5

ALL_LISTENERS = re.compile(r'listening protocol=tcp addr="?([0-9.]+):(\d+)')


class Prober:
    """A well-behaved MQTT 5 client that measures round trips through the broker."""

    def __init__(self, broker: Broker, client_id: str, source_address: str | None = None):
        self.raw = RawClient(broker.host, broker.port, source_address=source_address)
        self.raw.send(encode_connect(client_id))
        assert parse_connack(self.raw.expect(CONNACK))[1] == 0
        self.topic = f"probe/{client_id}"
        self.raw.send(encode_subscribe(1, [(self.topic, 0)]))
        self.raw.expect(SUBACK)
        self.round_trips: list[float] = []

    def round_trip(self) -> float:
        """Publish to its own topic, wait for the message, and return the seconds it took."""
        started = time.monotonic()
        self.raw.send(encode_publish(self.topic, 0, None, b"ping"))
        while True:
            packet_type, flags, body = self.raw.read_packet(timeout=5.0)
            if packet_type == PUBLISH and parse_publish(flags, body)[0] == self.topic:
                break
        elapsed = time.monotonic() - started
        self.round_trips.append(elapsed)
        return elapsed

    def assert_fast(self) -> None:
        assert self.round_trips, "no round trip was measured"
        slowest = max(self.round_trips)
        assert slowest < MAX_ROUND_TRIP_SECONDS, (
            f"slowest round trip {slowest:.3f} s over {len(self.round_trips)} probes"
        )


def connack_reason(broker: Broker, version: int = 5, source_address: str | None = None,
                   port: int | None = None) -> int:
    raw = RawClient(broker.host, port or broker.port, source_address=source_address)
    try:
        raw.send(encode_connect(f"c{time.monotonic_ns()}", version=version))
        return parse_connack(raw.expect(CONNACK), version)[1]
    finally:
        raw.close()


@pytest.fixture
def config_broker(tmp_path, coremq_binary, request):
    """Start coremq with a config file only, so listener settings apply, and return
    (broker, ports) with the port of each listener in config order."""
    started: list[subprocess.Popen] = []

    def start(config_text: str) -> tuple[Broker, list[int]]:
        config = tmp_path / "coremq.toml"
        config.write_text(config_text)
        log_path = tmp_path / "coremq-config.log"
        args = [str(coremq_binary), "--config", str(config), "--storage", "memory"]
        env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_file,
                                       stderr=subprocess.STDOUT, env=env)
        started.append(process)
        broker = Broker(process, log_path, args)
        deadline = time.monotonic() + 10
        expected = config_text.count("[[listeners]]")
        while True:
            ports = [int(port) for _, port in ALL_LISTENERS.findall(broker.log_text())]
            if len(ports) == expected:
                broker.port = ports[0]
                return broker, ports
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"coremq did not start: {' '.join(args)}\n{tail(broker.log_text())}",
                            pytrace=False)
            time.sleep(0.05)

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=5)


def test_listener_max_connections(config_broker):
    broker, (limited, unlimited) = config_broker(
        "shards = 1\n"
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nmax-connections = 2\n"
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n"
    )
    prober = Prober(broker, "prober")
    second = RawClient(broker.host, limited)
    second.send(encode_connect("second"))
    assert parse_connack(second.expect(CONNACK))[1] == 0

    assert connack_reason(broker, 5, port=limited) == QUOTA_EXCEEDED
    assert connack_reason(broker, 311, port=limited) == V311_SERVER_UNAVAILABLE
    assert connack_reason(broker, 5, port=unlimited) == 0, "the other listener is not limited"
    for _ in range(5):
        prober.round_trip()
    prober.assert_fast()


def test_connection_rate_per_source(broker_factory):
    broker = broker_factory("--max-connection-rate", "5", shards=1)
    prober = Prober(broker, "prober", source_address="127.0.0.1")

    reasons = []
    for _ in range(12):
        reasons.append(connack_reason(broker, 5, source_address="127.0.0.2"))
        prober.round_trip()
    assert reasons.count(0) <= 5 * 2, f"too many accepted: {reasons}"
    assert CONNECTION_RATE_EXCEEDED in reasons, f"no 0x9F: {reasons}"
    assert connack_reason(broker, 311, source_address="127.0.0.2") == V311_SERVER_UNAVAILABLE
    assert connack_reason(broker, 5, source_address="127.0.0.1") == 0, "other sources unaffected"
    prober.assert_fast()


def test_max_inflight_caps_window(broker_factory):
    broker = broker_factory("--max-inflight", "3", shards=1)
    subscriber = RawClient(broker.host, broker.port)
    # No Receive Maximum in CONNECT, so the client allows 65,535 messages in flight.
    subscriber.send(encode_connect("slow-acker"))
    assert parse_connack(subscriber.expect(CONNACK))[1] == 0
    subscriber.send(encode_subscribe(1, [("inflight/t", 1)]))
    subscriber.expect(SUBACK)

    publisher = RawClient(broker.host, broker.port)
    publisher.send(encode_connect("publisher"))
    publisher.expect(CONNACK)
    for packet_id in range(1, 11):
        publisher.send(encode_publish("inflight/t", 1, packet_id, b"m"))

    def read_publishes(window: float) -> list[int]:
        ids = []
        while True:
            try:
                packet_type, flags, body = subscriber.read_packet(window)
            except AssertionError:
                return ids
            if packet_type == PUBLISH:
                ids.append(parse_publish(flags, body)[1])

    first = read_publishes(0.5)
    assert len(first) == 3, f"received {len(first)} messages with max-inflight 3"
    subscriber.send(encode_puback(first[0]))
    more = read_publishes(0.5)
    assert len(more) == 1, f"one PUBACK released {len(more)} messages"


def test_receive_maximum_exceeded(broker_factory):
    broker = broker_factory("--receive-maximum", "2", shards=1)
    prober = Prober(broker, "prober")
    offender = RawClient(broker.host, broker.port)
    offender.send(encode_connect("offender"))
    offender.expect(CONNACK)
    # QoS 2 messages stay unacknowledged until PUBREL, which the offender never sends.
    for packet_id in range(1, 4):
        offender.send(encode_publish("rm/t", 2, packet_id, b"x"))
    while True:
        packet_type, _, body = offender.read_packet()
        if packet_type == DISCONNECT_TYPE:
            break
    assert parse_reason_and_properties(body)[0] == RECEIVE_MAXIMUM_EXCEEDED
    for _ in range(5):
        prober.round_trip()
    prober.assert_fast()


def test_slow_consumer_disconnected(broker_factory):
    broker = broker_factory(
        "--max-output-buffer", "65536",
        "--slow-consumer-timeout", "1",
        shards=1,
    )
    prober = Prober(broker, "prober")
    # A small receive buffer closes the TCP window quickly; the client never reads.
    slow = stalled_subscriber(broker, "slow", "flood/#", 0)
    publisher = connected_client(broker, "flooder")
    payload = b"x" * 10_000
    deadline = time.monotonic() + 15
    disconnected = False
    while time.monotonic() < deadline:
        for _ in range(20):
            publisher.send(encode_publish("flood/t", 0, None, payload))
        prober.round_trip()
        if "slow consumer" in broker.log_text():
            disconnected = True
            break
        time.sleep(0.02)
    assert disconnected, "no slow consumer disconnect within 15 s"
    assert slow.is_closed(timeout=5), "the slow consumer's socket is still open"
    for _ in range(5):
        prober.round_trip()
    prober.assert_fast()


def stalled_subscriber(broker: Broker, client_id: str, topic: str, qos: int) -> RawClient:
    """Connect a subscriber to topic with a 4 KiB receive buffer, which fills at once while
    it does not read."""
    client = RawClient(broker.host, broker.port, receive_buffer=4096)
    client.send(encode_connect(client_id))
    client.expect(CONNACK)
    client.send(encode_subscribe(1, [(topic, qos)]))
    client.expect(SUBACK)
    return client


def connected_client(broker: Broker, client_id: str) -> RawClient:
    """Connect an MQTT 5 client that reads what it is sent."""
    client = RawClient(broker.host, broker.port)
    client.send(encode_connect(client_id))
    client.expect(CONNACK)
    return client


def resident_kib(pid: int) -> int:
    """Return the VmRSS of process pid in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no VmRSS line")


def test_stalled_subscribers_share_bounded_memory(broker_factory):
    # Each socket may hold 16 MiB, and the shard's budget is 2 MiB, so
    # sockets that stopped reading share half of that: 1 MiB.
    broker = broker_factory(
        "--max-output-buffer", "16777216",
        "--max-shard-output", "2097152",
        shards=1,
    )
    stalled = [stalled_subscriber(broker, f"stalled-{n}", "share/t", 0) for n in range(8)]
    publisher = connected_client(broker, "share-flooder")
    flood = encode_publish("share/t", 0, None, b"b" * 4096) * 2000

    def send_flood() -> None:
        # 8 MiB per subscriber. The PINGRESP comes once the broker has
        # routed every message before it.
        publisher.send(flood + bytes([PINGREQ << 4, 0]))
        publisher.expect(PINGRESP_TYPE, timeout=30)

    send_flood()
    # A socket counts as stalled after a second without draining.
    time.sleep(1.5)
    before = resident_kib(broker.pid)
    send_flood()
    grown_mib = (resident_kib(broker.pid) - before) / 1024
    # Before stalled sockets had a pool of their own, the eight took 76-82
    # MiB more here; with a pool of four times the budget, 15 MiB; with
    # half the budget, 5.5 MiB.
    assert grown_mib < 10, f"broker memory grew by {grown_mib:.1f} MiB for 8 stalled sockets"
    for client in stalled:
        client.close()


def publish_qos1(publisher: RawClient, topic: str, count: int, payload: bytes) -> None:
    """Publish count QoS 1 messages, 100 at a time, each window waiting for its PUBACKs."""
    for start in range(0, count, 100):
        window = range(start, min(start + 100, count))
        publisher.send(b"".join(encode_publish(topic, 1, n + 1, payload) for n in window))
        for _ in window:
            publisher.expect(PUBACK, timeout=30)


def test_qos1_stalled_subscribers_bounded_memory(broker_factory):
    # QoS 1 copies past a socket's 1 MiB output limit wait in the session as
    # references to the shared message, not as an encoded copy per socket.
    broker = broker_factory("--max-shard-output", "2097152", shards=1)
    stalled = [stalled_subscriber(broker, f"stalled-qos1-{n}", "q1/t", 1) for n in range(20)]
    publisher = connected_client(broker, "qos1-flooder")
    before = resident_kib(broker.pid)
    # 8 MiB to each of the 20 subscribers, 160 MiB of copies in all.
    publish_qos1(publisher, "q1/t", 2000, b"q" * 4096)
    grown_mib = (resident_kib(broker.pid) - before) / 1024
    # Before QoS 1 copies waited in the session, the broker kept them all.
    assert grown_mib < 80, f"broker memory grew by {grown_mib:.1f} MiB for 20 stalled QoS 1 sockets"
    for client in stalled:
        client.close()


def test_qos1_held_back_until_socket_drains(broker_factory):
    # With a 64 KiB output limit, most of 3,000 messages of 4 KiB (12 MiB,
    # more than the kernel's socket buffers take) wait in the session while
    # the subscriber does not read. It never sends PUBACK, so only its
    # socket draining can release them.
    broker = broker_factory(
        "--max-output-buffer", "65536",
        "--max-queued-messages", "5000",
        shards=1,
    )
    # It reads only once everything is published.
    subscriber = stalled_subscriber(broker, "held-back", "held/t", 1)
    publisher = connected_client(broker, "held-back-publisher")
    publish_qos1(publisher, "held/t", 3000, b"h" * 4096)

    received = []
    while len(received) < 3000:
        packet_type, flags, body = subscriber.read_packet(timeout=10)
        assert packet_type == PUBLISH, f"unexpected packet type {packet_type}"
        received.append(parse_publish(flags, body)[1])
    # Each copy gets its own packet id, in the order the messages came.
    assert len(set(received)) == 3000

