"""MQTT over TLS and WebSocket over TLS, against a CA that each test generates.

Clients: mosquitto_pub/sub with --cafile (and --cert/--key for mutual TLS), paho-mqtt with
an ssl.SSLContext over TCP and over WebSocket, and raw sockets for handshakes that never
finish or are not TLS at all.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import HANDOFF_LOG_FILTER, Broker, assert_handed_over, tail
from mqtt_clients import BOTH_VERSIONS
from tls_certs import Pki, make_test_pki

# Handshake timeout the slow-handshake tests start the broker with, in seconds.
SHORT_HANDSHAKE_TIMEOUT = 1

# CONNACK reason code 0x87 (Not authorized); paho reports 3.1.1's return code 5 as this too.
NOT_AUTHORIZED = 0x87


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_test_pki(tmp_path / "pki")


def tls_args(pki: Pki, *listeners: str, mutual: bool = False, cn_as_username: bool = False):
    args = []
    for listener in listeners:
        args += ["--listen", listener]
    args += ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    if mutual:
        args += ["--tls-client-ca", str(pki.ca_cert), "--tls-require-client-cert"]
    if cn_as_username:
        args += ["--tls-cn-as-username"]
    return args


def client_context(pki: Pki, client: str | None = None) -> ssl.SSLContext:
    """A client SSLContext that trusts the test CA and, if named, presents a client cert."""
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    if client is not None:
        files = pki.clients[client]
        context.load_cert_chain(str(files.cert), str(files.key))
    return context


def mosquitto_tls_args(pki: Pki, client: str | None = None) -> list[str]:
    args = ["--cafile", str(pki.ca_cert)]
    if client is not None:
        files = pki.clients[client]
        args += ["--cert", str(files.cert), "--key", str(files.key)]
    return args


def run_mosquitto_pub(mosquitto, listener, version: int, *extra_args: str):
    """Run mosquitto_pub once and return the finished process, whatever its exit code."""
    command = [
        mosquitto.pub_path,
        "-h", listener.host,
        "-p", str(listener.port),
        "-V", str(version),
        "-t", "tls/refused",
        "-m", "refused",
        *extra_args,
    ]
    return subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
    )


# mosquitto clients


@pytest.mark.parametrize("version", BOTH_VERSIONS)
def test_mosquitto_tls_pubsub(broker_factory, mosquitto, pki, version):
    broker = broker_factory(*tls_args(pki, "tls://127.0.0.1:0"))
    tls = broker.listener("tls")

    subscriber = mosquitto.subscribe(tls, version, "tls/cli", *mosquitto_tls_args(pki))
    mosquitto.publish(tls, version, "tls/cli", "over tls", "-q", "1", *mosquitto_tls_args(pki))

    assert subscriber.wait_message("over tls") == "over tls"


@pytest.mark.parametrize("version", BOTH_VERSIONS)
def test_mosquitto_client_cert_as_username(broker_factory, mosquitto, pki, version):
    broker = broker_factory(
        *tls_args(pki, "tls://127.0.0.1:0", mutual=True, cn_as_username=True)
    )
    tls = broker.listener("tls")
    alice = mosquitto_tls_args(pki, "alice")

    subscriber = mosquitto.subscribe(tls, version, "tls/mutual", "-i", "alice-sub", *alice)
    mosquitto.publish(tls, version, "tls/mutual", "signed", "-i", "alice-pub", *alice)

    assert subscriber.wait_message("signed") == "signed"
    broker.wait_for_log(
        re.compile(r'user name taken from the client certificate client_id="?alice-sub"? .*username=alice')
    )


def test_mosquitto_without_client_cert_refused(broker_factory, mosquitto, mqtt, pki):
    broker = broker_factory(*tls_args(pki, "tls://127.0.0.1:0", mutual=True))
    tls = broker.listener("tls")

    result = run_mosquitto_pub(mosquitto, tls, 5, *mosquitto_tls_args(pki))

    assert result.returncode != 0, f"mosquitto_pub without a certificate succeeded: {result}"
    broker.wait_for_log(re.compile(r"handshake failed.*protocol=tls.*TLS handshake failed"))
    # A client with a certificate is still served.
    client = mqtt(tls, "tls-cert-bystander", 5, tls_context=client_context(pki, "alice"))
    client.connect()
    client.subscribe("tls/bystander", qos=1)
    client.publish("tls/bystander", "served", qos=1)
    assert client.next_message().payload == b"served"


def test_untrusted_client_cert_refused(broker_factory, mosquitto, pki):
    broker = broker_factory(*tls_args(pki, "tls://127.0.0.1:0", mutual=True))
    tls = broker.listener("tls")

    result = run_mosquitto_pub(mosquitto, tls, 5, *mosquitto_tls_args(pki, "stranger"))

    assert result.returncode != 0, f"mosquitto_pub with an untrusted certificate succeeded: {result}"
    broker.wait_for_log(re.compile(r"handshake failed.*TLS handshake failed"))


# paho over TLS and WebSocket over TLS


def test_paho_tls_pubsub_across_shards(broker_factory, mqtt, monkeypatch, pki):
    monkeypatch.setenv("RUST_LOG", HANDOFF_LOG_FILTER)
    broker = broker_factory(*tls_args(pki, "tls://127.0.0.1:0"))
    tls = broker.listener("tls")
    context = client_context(pki)
    # 12 clients: 1 chance in 4096 that none is handed to another shard.
    client_ids = [f"tls-client-{index}" for index in range(12)]
    clients = [mqtt(tls, client_id, 5, tls_context=context) for client_id in client_ids]
    for client in clients:
        client.connect()
        client.subscribe("tls/fanout", qos=1)

    clients[0].publish("tls/fanout", "to all", qos=1)

    for client in clients:
        assert client.next_message().payload == b"to all"
    shards = broker.wait_for_client_shards(client_ids)
    assert set(shards.values()) == {0, 1}, f"all clients on one shard: {shards}"

    def probe(index: int) -> None:
        client = mqtt(tls, f"tls-probe-{index}", 5, tls_context=context)
        client.connect()
        client.subscribe("tls/probe", qos=1)
        client.publish("tls/probe", f"probe {index}", qos=1)
        assert client.next_message().payload == f"probe {index}".encode()

    assert_handed_over(broker, probe)


@pytest.mark.parametrize("version", BOTH_VERSIONS)
def test_paho_wss_pubsub(broker_factory, mqtt, monkeypatch, pki, version):
    monkeypatch.setenv("RUST_LOG", HANDOFF_LOG_FILTER)
    broker = broker_factory(*tls_args(pki, "wss://127.0.0.1:0/mqtt"))
    wss = broker.listener("wss")
    assert wss.path == "/mqtt"
    context = client_context(pki)
    client_ids = [f"wss-{version}-{index}" for index in range(12)]
    clients = []
    for client_id in client_ids:
        client = mqtt(wss, client_id, version, transport="websockets", tls_context=context)
        client.connect()
        client.subscribe("wss/fanout", qos=1)
        clients.append(client)

    for index in range(10):
        clients[-1].publish("wss/fanout", f"m{index}", qos=1)

    expected = [f"m{index}".encode() for index in range(10)]
    for client in clients:
        assert [message.payload for message in client.collect(10)] == expected
    shards = broker.wait_for_client_shards(client_ids)
    assert set(shards.values()) == {0, 1}, f"all clients on one shard: {shards}"

    def probe(index: int) -> None:
        client = mqtt(wss, f"wss-probe-{version}-{index}", version, transport="websockets", tls_context=context)
        client.connect()
        client.subscribe("wss/probe", qos=1)
        client.publish("wss/probe", f"probe {index}", qos=1)
        assert client.next_message().payload == f"probe {index}".encode()

    assert_handed_over(broker, probe)


@pytest.mark.parametrize("protocol", ["tls", "wss"])
def test_client_cert_as_username_after_handoff(broker_factory, mqtt, monkeypatch, pki, protocol):
    monkeypatch.setenv("RUST_LOG", HANDOFF_LOG_FILTER)
    broker = broker_factory(
        *tls_args(pki, f"{protocol}://127.0.0.1:0", mutual=True, cn_as_username=True)
    )
    listener = broker.listener(protocol)
    transport = "websockets" if protocol == "wss" else "tcp"
    context = client_context(pki, "alice")
    # 12 clients: 1 chance in 4096 that none is handed to another shard, where the owner
    # shard must read the Common Name from the TLS session it received.
    client_ids = [f"{protocol}-alice-{index}" for index in range(12)]
    for client_id in client_ids:
        mqtt(listener, client_id, 5, transport=transport, tls_context=context).connect()

    for client_id in client_ids:
        broker.wait_for_log(re.compile(rf'client_id="?{client_id}"?[^\n]*username=alice'))

    def probe(index: int) -> None:
        client_id = f"{protocol}-alice-probe-{index}"
        mqtt(listener, client_id, 5, transport=transport, tls_context=context).connect()
        broker.wait_for_log(re.compile(rf'client_id="?{client_id}"?[^\n]*username=alice'))

    assert_handed_over(broker, probe)


@pytest.mark.parametrize("version", BOTH_VERSIONS)
def test_cert_without_common_name_not_authorized(broker_factory, mqtt, pki, version):
    broker = broker_factory(
        *tls_args(pki, "tls://127.0.0.1:0", mutual=True, cn_as_username=True)
    )
    tls = broker.listener("tls")
    client = mqtt(tls, f"no-cn-{version}", version, tls_context=client_context(pki, "no-cn"))

    connack = client.connect(expect_success=False)

    assert connack.reason_code == NOT_AUTHORIZED
    broker.wait_for_log(re.compile(r"client certificate has no Common Name"))


def test_tls_and_tcp_clients_exchange(broker_factory, mqtt, pki):
    broker = broker_factory(*tls_args(pki, "tls://127.0.0.1:0", "wss://127.0.0.1:0/mqtt"))
    context = client_context(pki)
    tls_client = mqtt(broker.listener("tls"), "mixed-tls", 5, tls_context=context)
    wss_client = mqtt(
        broker.listener("wss"), "mixed-wss", 311, transport="websockets", tls_context=context
    )
    tcp_client = mqtt(broker, "mixed-tcp", 5)
    for client in (tls_client, wss_client, tcp_client):
        client.connect()
        client.subscribe("mixed/all", qos=1)

    tcp_client.publish("mixed/all", "from tcp", qos=1)

    for client in (tls_client, wss_client, tcp_client):
        assert client.next_message().payload == b"from tcp"


# Bad input


def test_unfinished_tls_handshake_times_out(broker_factory, mqtt, pki):
    broker = broker_factory(
        *tls_args(pki, "tls://127.0.0.1:0"), "--handshake-timeout", str(SHORT_HANDSHAKE_TIMEOUT)
    )
    tls = broker.listener("tls")
    silent = socket.create_connection((tls.host, tls.port), timeout=5)
    # The start of a TLS record header, then nothing.
    silent.sendall(b"\x16\x03\x01")

    bystander = mqtt(tls, "tls-timeout-bystander", 5, tls_context=client_context(pki))
    bystander.connect()
    bystander.subscribe("timeout/bystander", qos=1)
    bystander.publish("timeout/bystander", "served", qos=1)
    assert bystander.next_message().payload == b"served"

    waited = wait_socket_closed(silent, SHORT_HANDSHAKE_TIMEOUT + 4)
    assert waited < SHORT_HANDSHAKE_TIMEOUT + 3
    broker.wait_for_log(re.compile(r"handshake failed.*TLS handshake timed out"))
    assert bystander.is_connected()


def test_plain_mqtt_on_tls_port_refused(broker_factory, mqtt, pki):
    broker = broker_factory(*tls_args(pki, "tls://127.0.0.1:0"))
    tls = broker.listener("tls")
    plain = mqtt(tls, "plain-on-tls", 5)

    with pytest.raises(AssertionError):
        plain.connect(timeout=3)

    broker.wait_for_log(re.compile(r"handshake failed.*TLS handshake failed"))
    assert_tls_client_works(tls, mqtt, pki, "plain-on-tls")


def test_many_stalled_handshakes_do_not_block_others(broker_factory, mqtt, pki):
    broker = broker_factory(
        *tls_args(pki, "tls://127.0.0.1:0"), "--handshake-timeout", str(SHORT_HANDSHAKE_TIMEOUT)
    )
    tls = broker.listener("tls")
    stalled = [socket.create_connection((tls.host, tls.port), timeout=5) for _ in range(50)]

    started = time.monotonic()
    assert_tls_client_works(tls, mqtt, pki, "stalled")
    assert time.monotonic() - started < SHORT_HANDSHAKE_TIMEOUT, "served only after the timeout"

    for sock in stalled:
        wait_socket_closed(sock, SHORT_HANDSHAKE_TIMEOUT + 4)
    deadline = time.monotonic() + 5
    while broker.log_text().count("TLS handshake timed out") < len(stalled):
        assert time.monotonic() < deadline, "not every stalled handshake was logged"
        time.sleep(0.05)


# Configuration errors


def test_missing_certificate_file_stops_start(coremq_binary, tmp_path):
    missing = tmp_path / "missing.pem"
    result = run_coremq(
        coremq_binary,
        "--listen", "tls://127.0.0.1:0",
        "--tls-cert", str(missing),
        "--tls-key", str(missing),
    )

    assert result.returncode != 0
    assert f"cannot read certificate file {missing}" in result.stderr, result.stderr


def test_tls_listener_without_certificate_rejected(coremq_binary):
    result = run_coremq(coremq_binary, "--listen", "tls://127.0.0.1:0")

    assert result.returncode == 2
    assert "needs a certificate and its key" in result.stderr, result.stderr
    assert "--tls-cert" in result.stderr, result.stderr


def test_cn_as_username_needs_required_cert(coremq_binary, pki):
    result = run_coremq(
        coremq_binary,
        "--listen", "tls://127.0.0.1:0",
        "--tls-cert", str(pki.server.cert),
        "--tls-key", str(pki.server.key),
        "--tls-cn-as-username",
    )

    assert result.returncode == 2
    assert "use-cn-as-username" in result.stderr, result.stderr


def test_config_file_listeners(coremq_binary, mqtt, pki, tmp_path):
    config = tmp_path / "coremq.toml"
    config.write_text(
        f"""
shards = 2

[tls]
cert-file = "{pki.server.cert}"
key-file = "{pki.server.key}"

[storage]
backend = "memory"

[[listeners]]
address = "127.0.0.1:0"

[[listeners]]
address = "127.0.0.1:0"
protocol = "ws"
path = "/ws"

[[listeners]]
address = "127.0.0.1:0"
protocol = "tls"

[[listeners]]
address = "127.0.0.1:0"
protocol = "wss"
"""
    )
    log_path = tmp_path / "coremq-config.log"
    broker = start_without_listen(coremq_binary, ["--config", str(config)], log_path)
    try:
        listeners = {listener.protocol: listener for listener in wait_listeners(broker, 4)}
        assert set(listeners) == {"tcp", "ws", "tls", "wss"}
        assert listeners["ws"].path == "/ws"
        assert listeners["wss"].path == "/mqtt"

        context = client_context(pki)
        clients = [
            mqtt(listeners["tcp"], "file-tcp", 5),
            mqtt(listeners["ws"], "file-ws", 5, transport="websockets", ws_path="/ws"),
            mqtt(listeners["tls"], "file-tls", 5, tls_context=context),
            mqtt(listeners["wss"], "file-wss", 5, transport="websockets", tls_context=context),
        ]
        for client in clients:
            client.connect()
            client.subscribe("file/all", qos=1)
        clients[0].publish("file/all", "hello", qos=1)
        for client in clients:
            assert client.next_message().payload == b"hello"
    except BaseException:
        print(tail(broker.log_text()))
        raise
    finally:
        broker.stop()


# Helpers


def assert_tls_client_works(tls, mqtt, pki: Pki, name: str) -> None:
    client = mqtt(tls, f"{name}-bystander", 5, tls_context=client_context(pki))
    client.connect()
    client.subscribe(f"{name}/bystander", qos=1)
    client.publish(f"{name}/bystander", "still served", qos=1)
    assert client.next_message().payload == b"still served"


def wait_socket_closed(sock: socket.socket, timeout: float) -> float:
    """Wait until the broker closes sock; return the seconds it took. Fails after timeout."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"broker kept the connection open for {timeout} s")
        sock.settimeout(remaining)
        try:
            if not sock.recv(4096):
                return time.monotonic() - start
        except socket.timeout:
            continue
        except ConnectionResetError:
            return time.monotonic() - start


def run_coremq(binary: Path, *args: str) -> subprocess.CompletedProcess:
    """Run coremq with args, for start-up errors; kill it if it is still running after 10 s."""
    env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
    return subprocess.run(
        [str(binary), "--storage", "memory", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
        env=env,
    )


def start_without_listen(binary: Path, args: list[str], log_path: Path) -> Broker:
    """Start coremq with args only, so the config file's listeners apply."""
    env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
    command = [str(binary), *args]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    return Broker(process, log_path, command)


def wait_listeners(broker: Broker, count: int, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        listeners = broker.listeners()
        if len(listeners) >= count:
            return listeners
        if broker.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"coremq named {len(listeners)} of {count} listeners:\n{tail(broker.log_text())}"
            )
        time.sleep(0.05)
