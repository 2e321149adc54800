"""MQTT over WebSocket: paho-mqtt with transport="websockets", raw frames, and bad upgrades.

Each broker listens on TCP and on ws://127.0.0.1:0/mqtt. Bad-input tests also check that a
client on the same broker keeps working while the bad connection is served.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from conftest import HANDOFF_LOG_FILTER, assert_handed_over
from mqtt_clients import BOTH_VERSIONS
from mqtt_packets import (
    CONNACK,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBLISH_QOS0,
    SUBACK,
    encode_connect,
    encode_publish_qos0,
    encode_remaining_length,
    encode_subscribe,
)
from ws_raw import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWebSocket,
    encode_frame,
)

WS_LISTEN = ("--listen", "ws://127.0.0.1:0/mqtt")

# Close codes of RFC 6455 section 7.4.1.
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_MESSAGE_TOO_BIG = 1009

# Handshake timeout the bad-input tests start the broker with, in seconds.
SHORT_HANDSHAKE_TIMEOUT = 1


def ws_broker(broker_factory, *extra_args: str):
    broker = broker_factory(*WS_LISTEN, *extra_args)
    return broker, broker.listener("ws")


def parse_packets(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split data into complete (first byte, body) packets and the incomplete rest."""
    packets = []
    offset = 0
    while True:
        start = offset
        if offset >= len(data):
            return packets, b""
        offset += 1
        length = 0
        multiplier = 1
        while True:
            if offset >= len(data):
                return packets, data[start:]
            byte = data[offset]
            offset += 1
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if not byte & 0x80:
                break
        if offset + length > len(data):
            return packets, data[start:]
        packets.append((data[start], data[offset : offset + length]))
        offset += length


def read_packets(ws: RawWebSocket, count: int) -> list[tuple[int, bytes]]:
    """Read binary frames until count whole MQTT packets have arrived, skipping control frames other than close."""
    data = b""
    while True:
        packets, _ = parse_packets(data)
        if len(packets) >= count:
            return packets[:count]
        frame = ws.read_frame()
        if frame.opcode == OP_CLOSE:
            raise AssertionError(f"broker closed the WebSocket (code {frame.close_code()})")
        if frame.opcode in (OP_BINARY, OP_CONTINUATION):
            data += frame.payload


def assert_tcp_client_works(broker, mqtt, name: str) -> None:
    """Fail unless a fresh TCP client can subscribe and receive its own publish."""
    client = mqtt(broker, f"{name}-bystander", 5)
    client.connect()
    client.subscribe(f"{name}/bystander", qos=1)
    client.publish(f"{name}/bystander", "still served", qos=1)
    assert client.next_message().payload == b"still served"


# Real clients


@pytest.mark.parametrize("version", BOTH_VERSIONS)
def test_paho_websocket_pubsub_across_shards(broker_factory, mqtt, monkeypatch, version):
    monkeypatch.setenv("RUST_LOG", HANDOFF_LOG_FILTER)
    broker, ws = ws_broker(broker_factory)
    # With 12 clients, the chance that the kernel accepts every one on its owner shard,
    # so that no WebSocket connection is handed over, is 1 in 4096.
    subscriber_ids = [f"ws-sub-{version}-{index}" for index in range(11)]
    subscribers = []
    for client_id in subscriber_ids:
        subscriber = mqtt(ws, client_id, version, transport="websockets", ws_path=ws.path)
        subscriber.connect()
        assert subscriber.subscribe("ws/fanout", qos=1) == [1]
        subscribers.append(subscriber)
    publisher_id = f"ws-pub-{version}"
    publisher = mqtt(ws, publisher_id, version, transport="websockets", ws_path=ws.path)
    publisher.connect()

    for index in range(20):
        publisher.publish("ws/fanout", f"m{index}", qos=1)

    expected = [f"m{index}".encode() for index in range(20)]
    for subscriber in subscribers:
        payloads = [message.payload for message in subscriber.collect(20)]
        assert payloads == expected, f"{subscriber.client_id} lost or reordered messages"
    shards = broker.wait_for_client_shards(subscriber_ids + [publisher_id])
    assert set(shards.values()) == {0, 1}, f"all clients on one shard: {shards}"

    def probe(index: int) -> None:
        client = mqtt(ws, f"ws-probe-{version}-{index}", version, transport="websockets", ws_path=ws.path)
        client.connect()
        assert client.subscribe("ws/probe", qos=1) == [1]
        client.publish("ws/probe", f"probe {index}", qos=1)
        assert client.next_message().payload == f"probe {index}".encode()

    assert_handed_over(broker, probe)


def test_websocket_and_tcp_clients_exchange(broker_factory, mqtt):
    broker, ws = ws_broker(broker_factory)
    ws_client = mqtt(ws, "ws-mixed", 5, transport="websockets", ws_path=ws.path)
    ws_client.connect()
    ws_client.subscribe("mixed/to-ws", qos=1)
    tcp_client = mqtt(broker, "tcp-mixed", 311)
    tcp_client.connect()
    tcp_client.subscribe("mixed/to-tcp", qos=1)

    tcp_client.publish("mixed/to-ws", "from tcp", qos=1)
    ws_client.publish("mixed/to-tcp", "from ws", qos=1)

    assert ws_client.next_message().payload == b"from tcp"
    assert tcp_client.next_message().payload == b"from ws"


def test_large_publish_over_websocket(broker_factory, mqtt):
    _, ws = ws_broker(broker_factory)
    subscriber = mqtt(ws, "ws-large-sub", 5, transport="websockets", ws_path=ws.path)
    subscriber.connect()
    subscriber.subscribe("ws/large", qos=1)
    publisher = mqtt(ws, "ws-large-pub", 5, transport="websockets", ws_path=ws.path)
    publisher.connect()

    payload = bytes(range(256)) * 2048  # 512 KiB
    publisher.publish("ws/large", payload, qos=1)

    assert subscriber.next_message(timeout=10).payload == payload


# Framing, with a raw WebSocket client


@pytest.mark.parametrize("version", BOTH_VERSIONS)
def test_packet_split_over_frames(broker_factory, version):
    _, ws_listener = ws_broker(broker_factory)
    ws, response = RawWebSocket.connect(ws_listener.host, ws_listener.port)
    assert response.status == 101
    assert response.headers.get("sec-websocket-protocol") == "mqtt"

    connect = encode_connect(f"ws-split-{version}", version)
    # One fragmented message of three frames: the CONNECT's fixed header, then its middle,
    # then its end.
    ws.send_frame(OP_BINARY, connect[:1], fin=False)
    ws.send_frame(OP_CONTINUATION, connect[1:5], fin=False)
    ws.send_frame(OP_CONTINUATION, connect[5:], fin=True)
    [(first_byte, body)] = read_packets(ws, 1)
    assert first_byte == CONNACK
    assert body[1] == 0, f"CONNACK reason code {body[1]:#x}"

    # One packet across two separate binary messages.
    subscribe = encode_subscribe(7, "split/topic", version)
    ws.send_frame(OP_BINARY, subscribe[:3])
    time.sleep(0.05)
    ws.send_frame(OP_BINARY, subscribe[3:])
    [(first_byte, body)] = read_packets(ws, 1)
    assert first_byte == SUBACK
    assert body[:2] == (7).to_bytes(2, "big")
    ws.close()


@pytest.mark.parametrize("version", BOTH_VERSIONS)
def test_several_packets_in_one_frame(broker_factory, version):
    _, ws_listener = ws_broker(broker_factory)
    ws, response = RawWebSocket.connect(ws_listener.host, ws_listener.port)
    assert response.status == 101

    batch = (
        encode_connect(f"ws-batch-{version}", version)
        + encode_subscribe(1, "batch/topic", version)
        + encode_publish_qos0("batch/topic", b"one", version)
        + encode_publish_qos0("batch/topic", b"two", version)
        + bytes([PINGREQ, 0])
    )
    ws.send_frame(OP_BINARY, batch)

    packets = read_packets(ws, 5)
    kinds = [first_byte for first_byte, _ in packets]
    assert kinds[0] == CONNACK
    assert kinds[1] == SUBACK
    publishes = [body for first_byte, body in packets if first_byte & 0xF0 == PUBLISH_QOS0]
    assert len(publishes) == 2, f"packets: {packets}"
    assert publishes[0].endswith(b"one")
    assert publishes[1].endswith(b"two")
    assert PINGRESP in kinds
    ws.close()


def test_old_subprotocol_name_accepted(broker_factory):
    _, ws_listener = ws_broker(broker_factory)
    ws, response = RawWebSocket.connect(ws_listener.host, ws_listener.port, subprotocol="mqttv3.1")
    assert response.status == 101
    assert response.headers.get("sec-websocket-protocol") == "mqttv3.1"

    ws.send_frame(OP_BINARY, encode_connect("ws-old-name", 311))
    [(first_byte, body)] = read_packets(ws, 1)
    assert first_byte == CONNACK
    assert body == b"\x00\x00"
    ws.close()


def test_ping_frame_answered_mid_session(broker_factory):
    _, ws_listener = ws_broker(broker_factory)
    ws, _ = RawWebSocket.connect(ws_listener.host, ws_listener.port)
    ws.send_frame(OP_BINARY, encode_connect("ws-ping", 5))
    read_packets(ws, 1)

    ws.send_frame(OP_PING, b"are you there")
    frame = ws.read_frame()
    assert frame.opcode == OP_PONG
    assert frame.payload == b"are you there"

    ws.send_frame(OP_BINARY, bytes([PINGREQ, 0]))
    [(first_byte, _)] = read_packets(ws, 1)
    assert first_byte == PINGRESP
    ws.close()


def test_close_frame_ends_session(broker_factory):
    broker, ws_listener = ws_broker(broker_factory)
    ws, _ = RawWebSocket.connect(ws_listener.host, ws_listener.port)
    ws.send_frame(OP_BINARY, encode_connect("ws-close", 5))
    read_packets(ws, 1)

    ws.send_frame(OP_CLOSE, (1000).to_bytes(2, "big"))

    reply = ws.read_until_close()
    assert reply.close_code() == 1000
    ws.wait_closed()
    broker.wait_for_log(re.compile(r'disconnected client_id="?ws-close"?.*ending=Eof'))


def test_close_behind_publish_ends_session(broker_factory):
    # The FIN arrives right behind the PUBLISH, so one readiness event can
    # report both, and the broker must read on to the end of the stream.
    broker, ws_listener = ws_broker(broker_factory)
    for trial in range(5):
        client_id = f"ws-eof-{trial}"
        ws, _ = RawWebSocket.connect(ws_listener.host, ws_listener.port)
        ws.send_frame(OP_BINARY, encode_connect(client_id, 5, keep_alive=0))
        read_packets(ws, 1)

        ws.send_frame(OP_BINARY, encode_publish_qos0("eof/topic", b"last", 5))
        ws.close()
        broker.wait_for_log(re.compile(rf'disconnected client_id="?{client_id}"?.*ending=Eof'))


# Bad input


def test_wrong_subprotocol_rejected(broker_factory, mqtt):
    broker, ws_listener = ws_broker(broker_factory)
    ws, response = RawWebSocket.connect(ws_listener.host, ws_listener.port, subprotocol="wamp")

    assert response.status == 400
    assert b"unsupported WebSocket subprotocol wamp" in response.body
    assert b"accepted: mqtt, mqttv3.1" in response.body
    ws.wait_closed()
    broker.wait_for_log(re.compile(r"handshake failed.*HTTP 400"))
    assert_tcp_client_works(broker, mqtt, "ws-subprotocol")


def test_wrong_path_rejected(broker_factory, mqtt):
    broker, ws_listener = ws_broker(broker_factory)
    ws, response = RawWebSocket.connect(ws_listener.host, ws_listener.port, path="/other")

    assert response.status == 404
    assert b"path /other not found" in response.body
    assert b"served at /mqtt" in response.body
    ws.wait_closed()
    broker.wait_for_log(re.compile(r"handshake failed.*HTTP 404"))
    assert_tcp_client_works(broker, mqtt, "ws-path")


def test_custom_path_served(broker_factory, mqtt):
    broker = broker_factory("--listen", "ws://127.0.0.1:0/custom/mqtt")
    ws = broker.listener("ws")
    assert ws.path == "/custom/mqtt"

    client = mqtt(ws, "ws-custom-path", 5, transport="websockets", ws_path="/custom/mqtt")
    client.connect()
    client.subscribe("custom/path", qos=1)
    client.publish("custom/path", "ok", qos=1)
    assert client.next_message().payload == b"ok"

    _, response = RawWebSocket.connect(ws.host, ws.port, path="/mqtt")
    assert response.status == 404


def test_plain_http_request_rejected(broker_factory):
    _, ws_listener = ws_broker(broker_factory)
    raw = RawWebSocket.open_socket(ws_listener.host, ws_listener.port)
    raw.send_raw(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    response = raw.read_http_response()
    assert response.status == 400
    raw.wait_closed()


def test_endless_header_rejected(broker_factory, mqtt):
    broker, ws_listener = ws_broker(broker_factory)
    raw = RawWebSocket.open_socket(ws_listener.host, ws_listener.port)
    raw.send_raw(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    # Header lines that never end the request head, far past the 8 KiB limit. The broker
    # answers and closes early, so the later sends may fail.
    try:
        for index in range(64):
            raw.send_raw(f"X-Filler-{index}: {'a' * 1000}\r\n".encode())
    except (BrokenPipeError, ConnectionResetError):
        pass

    response = raw.read_http_response()
    assert response.status == 431
    assert b"exceeds the limit of 8192 bytes" in response.body
    broker.wait_for_log(re.compile(r"handshake failed.*HTTP 431"))
    assert_tcp_client_works(broker, mqtt, "ws-header")


def test_unfinished_upgrade_times_out(broker_factory, mqtt):
    broker, ws_listener = ws_broker(
        broker_factory, "--handshake-timeout", str(SHORT_HANDSHAKE_TIMEOUT)
    )
    raw = RawWebSocket.open_socket(ws_listener.host, ws_listener.port)
    raw.send_raw(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    # Meanwhile another WebSocket client connects and is served.
    bystander = mqtt(ws_listener, "ws-timeout-bystander", 5, transport="websockets")
    bystander.connect()
    bystander.subscribe("timeout/bystander", qos=1)
    bystander.publish("timeout/bystander", "served", qos=1)
    assert bystander.next_message().payload == b"served"

    waited = raw.wait_closed(timeout=SHORT_HANDSHAKE_TIMEOUT + 4)
    assert waited < SHORT_HANDSHAKE_TIMEOUT + 3
    broker.wait_for_log(re.compile(r"handshake failed.*WebSocket handshake timed out"))
    assert bystander.is_connected()


def test_huge_frame_closed_with_1009(broker_factory, mqtt):
    broker, ws_listener = ws_broker(broker_factory)
    ws, _ = RawWebSocket.connect(ws_listener.host, ws_listener.port)
    ws.send_frame(OP_BINARY, encode_connect("ws-huge", 5))
    read_packets(ws, 1)

    # A header that announces 4 GiB of payload, followed by a few bytes of it.
    ws.send_raw(encode_frame(OP_BINARY, b"\x30" * 16, length=4 << 30)[:14] + b"x" * 16)

    reply = ws.read_until_close()
    assert reply.close_code() == CLOSE_MESSAGE_TOO_BIG
    ws.wait_closed()
    broker.wait_for_log(re.compile(r"invalid transport data.*exceeds the maximum frame size"))
    assert_tcp_client_works(broker, mqtt, "ws-huge")


def test_huge_frame_before_connect_closed(broker_factory, mqtt):
    broker, ws_listener = ws_broker(broker_factory)
    ws, _ = RawWebSocket.connect(ws_listener.host, ws_listener.port)

    ws.send_raw(encode_frame(OP_BINARY, b"", length=1 << 40)[:14])

    reply = ws.read_until_close()
    assert reply.close_code() == CLOSE_MESSAGE_TOO_BIG
    ws.wait_closed()
    broker.wait_for_log(re.compile(r"invalid data before CONNECT.*maximum frame size"))
    assert_tcp_client_works(broker, mqtt, "ws-huge-early")


def test_text_frame_closed_with_1003(broker_factory):
    broker, ws_listener = ws_broker(broker_factory)
    ws, _ = RawWebSocket.connect(ws_listener.host, ws_listener.port)
    ws.send_frame(OP_BINARY, encode_connect("ws-text", 5))
    read_packets(ws, 1)

    ws.send_frame(OP_TEXT, b"hello")

    reply = ws.read_until_close()
    assert reply.close_code() == CLOSE_UNSUPPORTED_DATA
    ws.wait_closed()
    broker.wait_for_log(re.compile(r"invalid transport data.*text frames are not supported"))


def test_mqtt_error_over_websocket_gets_disconnect(broker_factory):
    """A second CONNECT inside valid frames gets DISCONNECT 0x82, then a normal close frame."""
    _, ws_listener = ws_broker(broker_factory)
    ws, _ = RawWebSocket.connect(ws_listener.host, ws_listener.port)
    ws.send_frame(OP_BINARY, encode_connect("ws-malformed", 5))
    read_packets(ws, 1)

    # A second CONNECT is a protocol error (MQTT 5.0 section 3.1).
    ws.send_frame(OP_BINARY, encode_connect("ws-malformed", 5))

    [(first_byte, body)] = read_packets(ws, 1)
    assert first_byte == DISCONNECT
    assert body[0] == 0x82, f"DISCONNECT reason code {body[0]:#x}"
    assert ws.read_until_close().close_code() == 1000
    ws.wait_closed()


def test_websocket_port_refuses_raw_mqtt(broker_factory, mqtt):
    """Plain MQTT bytes on the WebSocket port are not an upgrade request: 400, then close."""
    broker, ws_listener = ws_broker(broker_factory)
    sock = socket.create_connection((ws_listener.host, ws_listener.port), timeout=5)
    sock.sendall(encode_connect("raw-on-ws", 5) + b"\r\n\r\n")

    raw = RawWebSocket(sock)
    response = raw.read_http_response()
    assert response.status == 400
    raw.wait_closed()
    assert_tcp_client_works(broker, mqtt, "ws-raw-mqtt")


def test_publish_split_mid_remaining_length(broker_factory):
    """A PUBLISH whose remaining length bytes straddle two frames still decodes."""
    _, ws_listener = ws_broker(broker_factory)
    ws, _ = RawWebSocket.connect(ws_listener.host, ws_listener.port)
    ws.send_frame(OP_BINARY, encode_connect("ws-straddle", 5) + encode_subscribe(1, "s/t", 5))
    read_packets(ws, 2)

    payload = b"p" * 300  # needs two remaining-length bytes
    body = b"\x00\x03s/t\x00" + payload
    publish = bytes([PUBLISH_QOS0]) + encode_remaining_length(len(body)) + body
    ws.send_frame(OP_BINARY, publish[:2])
    ws.send_frame(OP_BINARY, publish[2:])

    [(first_byte, received)] = read_packets(ws, 1)
    assert first_byte & 0xF0 == PUBLISH_QOS0
    assert received.endswith(payload)
    ws.close()
