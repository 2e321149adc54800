"""Raw MQTT packet bytes, for the few checks that paho cannot express.

Tests use these on a paho connection whose network thread they have stopped, so the
broker receives only the bytes that the test writes.
"""

from __future__ import annotations

import socket
import time

import pytest

# First bytes of the fixed header: packet type in the high nibble, flags in the low one.
CONNECT = 0x10
CONNACK = 0x20
PUBLISH_QOS0 = 0x30
PUBLISH_QOS2 = 0x34
PUBREC = 0x50
DISCONNECT = 0xE0
SUBSCRIBE = 0x82
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0

# Protocol level byte of CONNECT for each version as the tests name them.
PROTOCOL_LEVELS = {5: 5, 311: 4}


def encode_remaining_length(length: int) -> bytes:
    encoded = bytearray()
    while True:
        byte = length % 128
        length //= 128
        if length:
            byte |= 0x80
        encoded.append(byte)
        if not length:
            return bytes(encoded)


def encode_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def encode_connect(client_id: str, version: int = 5, keep_alive: int = 60) -> bytes:
    """Encode a clean-start CONNECT with no will, user name or properties."""
    body = (
        encode_string("MQTT")
        + bytes([PROTOCOL_LEVELS[version], 0x02])  # level, Clean Start flag
        + keep_alive.to_bytes(2, "big")
        + (b"\x00" if version == 5 else b"")  # property length
        + encode_string(client_id)
    )
    return bytes([CONNECT]) + encode_remaining_length(len(body)) + body


def encode_subscribe(packet_id: int, topic_filter: str, version: int = 5) -> bytes:
    """Encode a SUBSCRIBE of one filter at QoS 0."""
    body = (
        packet_id.to_bytes(2, "big")
        + (b"\x00" if version == 5 else b"")
        + encode_string(topic_filter)
        + b"\x00"  # options: QoS 0
    )
    return bytes([SUBSCRIBE]) + encode_remaining_length(len(body)) + body


def encode_publish_qos0(topic: str, payload: bytes, version: int = 5) -> bytes:
    body = encode_string(topic) + (b"\x00" if version == 5 else b"") + payload
    return bytes([PUBLISH_QOS0]) + encode_remaining_length(len(body)) + body


def encode_publish_qos2_v5(topic: str, packet_id: int, payload: bytes) -> bytes:
    """Encode an MQTT 5 QoS 2 PUBLISH without properties."""
    topic_bytes = topic.encode()
    body = (
        len(topic_bytes).to_bytes(2, "big")
        + topic_bytes
        + packet_id.to_bytes(2, "big")
        + b"\x00"  # property length
        + payload
    )
    return bytes([PUBLISH_QOS2]) + encode_remaining_length(len(body)) + body


def split_packets(data: bytes) -> list[tuple[int, bytes]]:
    """Split a byte stream into (first byte, body) pairs. Fails the test on a truncated packet."""
    packets = []
    offset = 0
    while offset < len(data):
        first_byte = data[offset]
        offset += 1
        length = 0
        multiplier = 1
        while True:
            if offset >= len(data):
                pytest.fail(f"truncated remaining length in {data!r}")
            byte = data[offset]
            offset += 1
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if not byte & 0x80:
                break
        if offset + length > len(data):
            pytest.fail(f"truncated packet body in {data!r}")
        packets.append((first_byte, data[offset : offset + length]))
        offset += length
    return packets


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Read from sock until the peer closes it and return the bytes. Fails after timeout."""
    deadline = time.monotonic() + timeout
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"broker kept the connection open for {timeout} s; read {received!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
