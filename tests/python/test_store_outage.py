"""The broker while its MariaDB or Redis server is stopped and restarted under load.

Each test starts its own server (see store_servers.py) and a broker that stores in it, then
stops the server with SIGTERM or SIGKILL while a publisher sends numbered QoS 1 messages to a
persistent session, one at a time. The broker must keep retrying, must send no PUBACK for a
message it could not store, and must deliver every message it acknowledged. When the outage
outlasts the retry timeout, the broker disconnects the publisher with reason 0x80 and stays
open to other clients.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest

from mqtt_clients import wait_until
from mqtt_raw import (
    CONNACK,
    DISCONNECT_TYPE,
    PUBACK,
    RawClient,
    encode_connect,
    encode_publish,
    parse_connack,
    parse_pub_response,
    parse_reason_and_properties,
)
from store_servers import MariadbServer, RedisServer

UNSPECIFIED_ERROR = 0x80

# Seconds the server stays down in the short-outage tests, well inside the default retry
# timeout of 30 s.
SHORT_OUTAGE_SECONDS = 2.0

# Retry timeout given to the broker in the long-outage test, and how long that outage lasts.
SHORT_RETRY_TIMEOUT_SECONDS = 3
LONG_OUTAGE_SECONDS = 6.0

# Upper bound on the wait for one PUBACK: the default retry timeout plus the time of one
# attempt. Only a broker that hangs comes near it.
PUBACK_TIMEOUT_SECONDS = 40.0

# Acknowledged messages to collect before and after the outage.
ACKS_BEFORE_OUTAGE = 20
ACKS_AFTER_RESTART = 20

RETRY_LINE = re.compile(r"store request failed, retrying.*backend=\"?(\w+)")
APPEND_FAILED_LINE = re.compile(r"cannot append to the message log; disconnecting the publisher")


@dataclass
class Ack:
    """A message the broker acknowledged, with monotonic send and PUBACK times."""

    number: int
    sent_at: float
    acked_at: float


@dataclass
class Disconnect:
    """A connection the broker ended while a message was in flight."""

    number: int
    reason: int | None
    at: float


@dataclass
class Outage:
    """Monotonic times of a server outage: process exited and restart begun."""

    exited_at: float = 0.0
    restarted_at: float = 0.0


class NumberedPublisher(threading.Thread):
    """Publishes m0, m1, ... at QoS 1 over a raw MQTT 5 connection, each after the PUBACK of
    the one before. When the broker closes the connection, it records the reason code,
    reconnects and sends the unacknowledged message again."""

    def __init__(self, broker, client_id: str, topic: str):
        super().__init__(daemon=True)
        self.broker = broker
        self.client_id = client_id
        self.topic = topic
        self.acks: list[Ack] = []
        self.disconnects: list[Disconnect] = []
        self.error: BaseException | None = None
        self.stop_requested = threading.Event()
        self.raw: RawClient | None = None
        self._lock = threading.Lock()

    def ack_count(self, after: float = 0.0) -> int:
        with self._lock:
            return sum(1 for ack in self.acks if ack.acked_at > after)

    def connect(self) -> None:
        self.raw = RawClient(self.broker.host, self.broker.port)
        self.raw.send(encode_connect(self.client_id))
        _, reason, _ = parse_connack(self.raw.expect(CONNACK))
        assert reason == 0, f"{self.client_id}: CONNACK reason 0x{reason:02X}"

    def run(self) -> None:
        try:
            self.connect()
            number = 0
            while not self.stop_requested.is_set():
                packet_id = number % 65535 + 1
                sent_at = time.monotonic()
                self.raw.send(encode_publish(self.topic, 1, packet_id, f"m{number}".encode()))
                try:
                    packet_type, _, body = self.raw.read_packet(PUBACK_TIMEOUT_SECONDS)
                except EOFError:
                    self._record_disconnect(number, None)
                    continue
                if packet_type == DISCONNECT_TYPE:
                    reason, _ = parse_reason_and_properties(body)
                    self._record_disconnect(number, reason)
                    continue
                assert packet_type == PUBACK, f"expected PUBACK, got packet type {packet_type}"
                acked_id, reason = parse_pub_response(body)
                assert acked_id == packet_id, f"PUBACK for {acked_id}, expected {packet_id}"
                assert reason == 0, f"PUBACK reason 0x{reason:02X} for m{number}"
                with self._lock:
                    self.acks.append(Ack(number, sent_at, time.monotonic()))
                number += 1
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            self.error = error
        finally:
            if self.raw is not None:
                self.raw.close()

    def _record_disconnect(self, number: int, reason: int | None) -> None:
        with self._lock:
            self.disconnects.append(Disconnect(number, reason, time.monotonic()))
        self.raw.close()
        self.connect()

    def finish(self) -> None:
        """Stop after the message in flight and re-raise any error of the thread."""
        self.stop_requested.set()
        self.join(PUBACK_TIMEOUT_SECONDS + 5)
        assert not self.is_alive(), f"{self.client_id}: publisher thread did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def store_server(request, tmp_path):
    """Start the backend's server named by the test's `backend` parameter, and stop it at
    the end."""
    backend = request.param
    if backend == "redis":
        server = RedisServer(tmp_path / "redis")
        server.start()
    else:
        server = MariadbServer(tmp_path / "mariadb")
        server.install()
        server.start()
        server.create_database()
    yield backend, server
    server.kill()


def start_broker(broker_factory, backend: str, server, *extra: str):
    return broker_factory("--storage", backend, "--storage-url", server.url, *extra)


def start_short_retry_broker(broker_factory, backend: str, server):
    return start_broker(
        broker_factory, backend, server, "--storage-retry-timeout", str(SHORT_RETRY_TIMEOUT_SECONDS)
    )


def connect_publisher(broker, client_id: str) -> RawClient:
    """Connect a raw MQTT 5 client that waits up to PUBACK_TIMEOUT_SECONDS per reply."""
    publisher = RawClient(broker.host, broker.port, timeout=PUBACK_TIMEOUT_SECONDS)
    publisher.send(encode_connect(client_id))
    assert parse_connack(publisher.expect(CONNACK))[1] == 0
    return publisher


def outage(server, signum: int, seconds: float) -> Outage:
    """Stop the server with signum, keep it down for seconds, and start it again."""
    times = Outage()
    server.signal_and_wait(signum)
    times.exited_at = time.monotonic()
    time.sleep(seconds)
    times.restarted_at = time.monotonic()
    server.start()
    return times


def payload_numbers(messages) -> set[int]:
    return {int(message.payload.decode()[1:]) for message in messages}


def assert_nothing_acked_while_down(publisher: NumberedPublisher, down: Outage) -> None:
    # A PUBACK that the broker sent just before the server died may be read a moment after
    # the test saw the process exit, so the window starts 0.2 s later.
    window_start = down.exited_at + 0.2
    during = [ack for ack in publisher.acks if window_start < ack.acked_at < down.restarted_at]
    assert during == [], f"PUBACKs arrived while the server was down: {during}"


@pytest.mark.parametrize("store_server", ["redis", "mysql"], indirect=True)
@pytest.mark.parametrize(
    ("stop_signal", "subscriber_online"),
    [(signal.SIGTERM, True), (signal.SIGKILL, False)],
    ids=["sigterm-online", "sigkill-offline"],
)
def test_short_outage_ridden_out(
    broker_factory, mqtt, store_server, stop_signal, subscriber_online
):
    backend, server = store_server
    broker = start_broker(broker_factory, backend, server)
    run = uuid.uuid4().hex[:8]
    topic = f"outage/{run}"

    subscriber = mqtt(broker, f"sub-{run}")
    subscriber.connect(clean_start=True, session_expiry=600)
    subscriber.subscribe(topic, qos=1)
    if not subscriber_online:
        subscriber.disconnect()

    publisher = NumberedPublisher(broker, f"pub-{run}", topic)
    publisher.start()
    wait_until(
        lambda: publisher.ack_count() >= ACKS_BEFORE_OUTAGE or publisher.error is not None,
        10,
        f"{ACKS_BEFORE_OUTAGE} PUBACKs before the outage",
    )
    down = outage(server, stop_signal, SHORT_OUTAGE_SECONDS)
    wait_until(
        lambda: publisher.ack_count(after=down.restarted_at) >= ACKS_AFTER_RESTART
        or publisher.error is not None
        or not publisher.is_alive(),
        PUBACK_TIMEOUT_SECONDS,
        f"{ACKS_AFTER_RESTART} PUBACKs after the {backend} server restarted",
    )
    publisher.finish()

    assert broker.process.poll() is None, "the broker exited during the outage"
    assert_nothing_acked_while_down(publisher, down)
    waited_for_server = [
        ack
        for ack in publisher.acks
        if ack.sent_at < down.restarted_at and ack.acked_at > down.restarted_at
    ]
    assert waited_for_server, "no PUBLISH waited for the server: the outage missed the load"
    assert publisher.disconnects == [], "the broker dropped the publisher during a short outage"
    retried_backends = RETRY_LINE.findall(broker.log_text())
    assert backend in retried_backends, "the broker log has no retry warning for the backend"

    if not subscriber_online:
        connack = subscriber.connect(clean_start=False, session_expiry=600)
        assert connack.session_present is True
    acked = {ack.number for ack in publisher.acks}
    received: set[int] = set()

    def all_received() -> bool:
        received.update(payload_numbers(subscriber.drain()))
        return acked <= received

    wait_until(all_received, 15, f"{len(acked)} acknowledged messages at the subscriber")
    assert acked - received == set()


@pytest.mark.parametrize("store_server", ["redis", "mysql"], indirect=True)
def test_long_outage_disconnects_publisher(broker_factory, mqtt, store_server):
    backend, server = store_server
    broker = start_short_retry_broker(broker_factory, backend, server)
    run = uuid.uuid4().hex[:8]
    topic = f"outage/{run}"

    subscriber = mqtt(broker, f"sub-{run}")
    subscriber.connect(clean_start=True, session_expiry=600)
    subscriber.subscribe(topic, qos=1)

    publisher = connect_publisher(broker, f"pub-{run}")
    for number in range(5):
        publisher.send(encode_publish(topic, 1, number + 1, f"m{number}".encode()))
        assert parse_pub_response(publisher.expect(PUBACK)) == (number + 1, 0)

    server.signal_and_wait(signal.SIGKILL)
    down_at = time.monotonic()
    publisher.send(encode_publish(topic, 1, 6, b"m5"))
    packet_type, _, body = publisher.read_packet(SHORT_RETRY_TIMEOUT_SECONDS + 15)
    disconnected_at = time.monotonic()
    assert packet_type == DISCONNECT_TYPE, f"expected DISCONNECT, got packet type {packet_type}"
    assert parse_reason_and_properties(body)[0] == UNSPECIFIED_ERROR
    assert disconnected_at - down_at >= SHORT_RETRY_TIMEOUT_SECONDS - 0.5, (
        f"disconnected {disconnected_at - down_at:.1f} s after the publish, before the "
        f"{SHORT_RETRY_TIMEOUT_SECONDS} s retry timeout"
    )
    assert publisher.is_closed(), "the connection stayed open after DISCONNECT"
    publisher.close()
    broker.wait_for_log(APPEND_FAILED_LINE)

    # The broker still serves other clients while the server is down.
    other = RawClient(broker.host, broker.port)
    other.send(encode_connect(f"other-{run}"))
    assert parse_connack(other.expect(CONNACK))[1] == 0
    other.close()
    assert broker.process.poll() is None, "the broker exited during the outage"

    time.sleep(max(0.0, LONG_OUTAGE_SECONDS - (time.monotonic() - down_at)))
    server.start()

    publisher = connect_publisher(broker, f"pub-{run}")
    for number in range(5, 10):
        publisher.send(encode_publish(topic, 1, number + 1, f"m{number}".encode()))
        assert parse_pub_response(publisher.expect(PUBACK)) == (number + 1, 0)
    publisher.close()

    received: set[int] = set()

    def all_received() -> bool:
        received.update(payload_numbers(subscriber.drain()))
        return set(range(10)) <= received

    wait_until(all_received, 15, "m0 to m9 at the subscriber")
    assert set(range(10)) - received == set()


@pytest.mark.parametrize("store_server", ["redis"], indirect=True)
def test_unstored_retained_message_is_not_acknowledged(broker_factory, mqtt, store_server):
    """A retained QoS 1 message with no subscriber is only stored as retained. When that
    write fails for good, the broker must withhold its PUBACK too."""
    backend, server = store_server
    broker = start_short_retry_broker(broker_factory, backend, server)
    run = uuid.uuid4().hex[:8]
    topic = f"outage/retained/{run}"

    server.signal_and_wait(signal.SIGKILL)
    publisher = connect_publisher(broker, f"pub-{run}")
    publisher.send(encode_publish(topic, 1, 1, b"kept", retain=True))
    packet_type, _, body = publisher.read_packet(SHORT_RETRY_TIMEOUT_SECONDS + 15)
    assert packet_type == DISCONNECT_TYPE, (
        f"expected DISCONNECT for an unstored retained message, got packet type {packet_type}"
    )
    assert parse_reason_and_properties(body)[0] == UNSPECIFIED_ERROR
    publisher.close()

    server.start()
    publisher = connect_publisher(broker, f"pub-{run}")
    publisher.send(encode_publish(topic, 1, 1, b"kept", retain=True))
    assert parse_pub_response(publisher.expect(PUBACK))[0] == 1
    publisher.close()

    # The re-sent message is retained, in the store as well as in memory: it survives a
    # restart of the broker on the same server.
    broker.expect_exit = True
    broker.stop()
    broker = start_broker(broker_factory, backend, server)
    subscriber = mqtt(broker, f"sub-{run}")
    subscriber.connect(clean_start=True)
    subscriber.subscribe(topic, qos=1)

    retained: list = []

    def got_retained() -> bool:
        retained.extend(subscriber.drain())
        return bool(retained)

    wait_until(got_retained, 10, "the retained message after the restart")
    assert retained[0].payload == b"kept"
    assert retained[0].retain


@pytest.mark.parametrize("store_server", ["redis"], indirect=True)
def test_hung_server_bounded_by_retry_timeout(broker_factory, mqtt, store_server):
    """A server that keeps its connections open but stops replying (SIGSTOP) must not hold a
    publisher longer than the retry timeout plus one request's socket timeout."""
    backend, server = store_server
    broker = start_short_retry_broker(broker_factory, backend, server)
    run = uuid.uuid4().hex[:8]
    topic = f"outage/hung/{run}"
    subscriber = mqtt(broker, f"sub-{run}")
    subscriber.connect(clean_start=True, session_expiry=600)
    subscriber.subscribe(topic, qos=1)

    publisher = connect_publisher(broker, f"pub-{run}")
    publisher.send(encode_publish(topic, 1, 1, b"m0"))
    assert parse_pub_response(publisher.expect(PUBACK)) == (1, 0)

    server.process.send_signal(signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        publisher.send(encode_publish(topic, 1, 2, b"m1"))
        packet_type, _, body = publisher.read_packet(SHORT_RETRY_TIMEOUT_SECONDS * 3 + 10)
        waited = time.monotonic() - stopped_at
    finally:
        server.process.send_signal(signal.SIGCONT)
    assert packet_type == DISCONNECT_TYPE, f"expected DISCONNECT, got packet type {packet_type}"
    assert parse_reason_and_properties(body)[0] == UNSPECIFIED_ERROR
    # The retry timeout bounds both the retries and each request's socket timeout.
    assert waited < SHORT_RETRY_TIMEOUT_SECONDS * 3 + 2, (
        f"the publisher waited {waited:.1f} s with a {SHORT_RETRY_TIMEOUT_SECONDS} s retry timeout"
    )
    publisher.close()


@pytest.mark.parametrize("store_server", ["redis"], indirect=True)
def test_port_closed_until_store_opens(coremq_binary, tmp_path, store_server):
    """While the broker cannot open its store, its port must reject connections. A client
    that connects then finds a broker that can store its messages."""
    backend, server = store_server
    server.signal_and_wait(signal.SIGKILL)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path / "coremq.log"
    args = [
        str(coremq_binary),
        "--listen", f"127.0.0.1:{port}",
        "--shards", "1",
        "--storage", backend,
        "--storage-url", server.url,
        "--storage-retry-timeout", "20",
    ]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: RETRY_LINE.search(log_path.read_text()) is not None,
            10,
            "the broker to retry opening its store",
        )
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()

        server.start()
        wait_until(
            lambda: "listening" in log_path.read_text(), 20, "the broker to open its store"
        )
        client = RawClient("127.0.0.1", port, timeout=5)
        client.send(encode_connect(f"after-open-{uuid.uuid4().hex[:8]}"))
        assert parse_connack(client.expect(CONNACK))[1] == 0
    finally:
        process.terminate()
        process.wait(10)
