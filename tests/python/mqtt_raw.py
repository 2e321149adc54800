"""Raw MQTT packets over a plain socket, for the authentication, ACL and limit checks:
CONNECT with credentials and properties, AUTH, and parsers for the broker's replies.
"""

from __future__ import annotations

import socket
import time

from mqtt_packets import encode_remaining_length

# Packet types (high nibble of the first byte).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC_TYPE = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP_TYPE = 13
DISCONNECT_TYPE = 14
AUTH = 15

# MQTT 5 property identifiers with their value types, as the specification lists them.
PROPERTY_TYPES = {
    0x01: ("payload_format_indicator", "byte"),
    0x02: ("message_expiry_interval", "u32"),
    0x03: ("content_type", "string"),
    0x08: ("response_topic", "string"),
    0x09: ("correlation_data", "binary"),
    0x0B: ("subscription_identifier", "varint"),
    0x11: ("session_expiry_interval", "u32"),
    0x12: ("assigned_client_identifier", "string"),
    0x13: ("server_keep_alive", "u16"),
    0x15: ("authentication_method", "string"),
    0x16: ("authentication_data", "binary"),
    0x17: ("request_problem_information", "byte"),
    0x18: ("will_delay_interval", "u32"),
    0x19: ("request_response_information", "byte"),
    0x1A: ("response_information", "string"),
    0x1C: ("server_reference", "string"),
    0x1F: ("reason_string", "string"),
    0x21: ("receive_maximum", "u16"),
    0x22: ("topic_alias_maximum", "u16"),
    0x23: ("topic_alias", "u16"),
    0x24: ("maximum_qos", "byte"),
    0x25: ("retain_available", "byte"),
    0x26: ("user_property", "pair"),
    0x27: ("maximum_packet_size", "u32"),
    0x28: ("wildcard_subscription_available", "byte"),
    0x29: ("subscription_identifier_available", "byte"),
    0x2A: ("shared_subscription_available", "byte"),
}
PROPERTY_IDS = {name: (identifier, kind) for identifier, (name, kind) in PROPERTY_TYPES.items()}


def encode_string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return len(data).to_bytes(2, "big") + data


def encode_properties(properties: dict | None) -> bytes:
    """Encode an MQTT 5 property list from {name: value}, names as in PROPERTY_TYPES."""
    encoded = b""
    for name, value in (properties or {}).items():
        identifier, kind = PROPERTY_IDS[name]
        encoded += encode_remaining_length(identifier)
        if kind == "byte":
            encoded += bytes([value])
        elif kind == "u16":
            encoded += value.to_bytes(2, "big")
        elif kind == "u32":
            encoded += value.to_bytes(4, "big")
        elif kind == "varint":
            encoded += encode_remaining_length(value)
        elif kind in ("string", "binary"):
            encoded += encode_string(value)
        else:
            raise ValueError(f"cannot encode property {name} of type {kind}")
    return encode_remaining_length(len(encoded)) + encoded


def decode_varint(data: bytes, offset: int) -> tuple[int, int]:
    """Decode a variable byte integer at offset and return (value, offset after it)."""
    value = 0
    multiplier = 1
    while True:
        byte = data[offset]
        offset += 1
        value += (byte & 0x7F) * multiplier
        multiplier *= 128
        if not byte & 0x80:
            return value, offset


def decode_properties(data: bytes, offset: int) -> tuple[dict, int]:
    """Decode an MQTT 5 property list at offset and return ({name: value}, offset after it)."""
    length, offset = decode_varint(data, offset)
    end = offset + length
    properties: dict = {}
    while offset < end:
        identifier, offset = decode_varint(data, offset)
        name, kind = PROPERTY_TYPES[identifier]
        if kind == "byte":
            value = data[offset]
            offset += 1
        elif kind == "u16":
            value = int.from_bytes(data[offset : offset + 2], "big")
            offset += 2
        elif kind == "u32":
            value = int.from_bytes(data[offset : offset + 4], "big")
            offset += 4
        elif kind == "varint":
            value, offset = decode_varint(data, offset)
        elif kind in ("string", "binary"):
            size = int.from_bytes(data[offset : offset + 2], "big")
            raw = data[offset + 2 : offset + 2 + size]
            value = raw.decode() if kind == "string" else raw
            offset += 2 + size
        else:
            key_size = int.from_bytes(data[offset : offset + 2], "big")
            key = data[offset + 2 : offset + 2 + key_size].decode()
            offset += 2 + key_size
            value_size = int.from_bytes(data[offset : offset + 2], "big")
            value = (key, data[offset + 2 : offset + 2 + value_size].decode())
            offset += 2 + value_size
        properties[name] = value
    return properties, end


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_remaining_length(len(body)) + body


def encode_connect(
    client_id: str,
    version: int = 5,
    username: str | None = None,
    password: bytes | None = None,
    properties: dict | None = None,
    keep_alive: int = 60,
    clean_start: bool = True,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    """Encode a CONNECT for MQTT 5 (version 5) or 3.1.1 (version 311). `will` is a QoS 0
    Will as (topic, payload)."""
    level = 5 if version == 5 else 4
    flags = 0x02 if clean_start else 0
    if will is not None:
        flags |= 0x04
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = encode_string("MQTT") + bytes([level, flags]) + keep_alive.to_bytes(2, "big")
    if version == 5:
        body += encode_properties(properties)
    body += encode_string(client_id)
    if will is not None:
        if version == 5:
            body += encode_properties(None)
        body += encode_string(will[0]) + len(will[1]).to_bytes(2, "big") + will[1]
    if username is not None:
        body += encode_string(username)
    if password is not None:
        body += encode_string(password)
    return packet(CONNECT << 4, body)


def encode_auth(reason: int, properties: dict) -> bytes:
    return packet(AUTH << 4, bytes([reason]) + encode_properties(properties))


def encode_publish(
    topic: str,
    qos: int,
    packet_id: int | None,
    payload: bytes,
    version: int = 5,
    retain: bool = False,
) -> bytes:
    body = encode_string(topic)
    if qos > 0:
        body += packet_id.to_bytes(2, "big")
    if version == 5:
        body += encode_properties(None)
    return packet((PUBLISH << 4) | (qos << 1) | int(retain), body + payload)


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]], version: int = 5) -> bytes:
    body = packet_id.to_bytes(2, "big")
    if version == 5:
        body += encode_properties(None)
    for topic_filter, qos in filters:
        body += encode_string(topic_filter) + bytes([qos])
    return packet((SUBSCRIBE << 4) | 0x02, body)


def encode_pubrel(packet_id: int) -> bytes:
    return packet((PUBREL << 4) | 0x02, packet_id.to_bytes(2, "big"))


def encode_puback(packet_id: int) -> bytes:
    return packet(PUBACK << 4, packet_id.to_bytes(2, "big"))


class RawClient:
    """A TCP connection that writes packet bytes and reads whole packets, for broker checks
    that paho cannot express (AUTH exchanges, exact reason codes, clients that stop reading).
    """

    def __init__(
        self,
        host: str,
        port: int,
        source_address: str | None = None,
        receive_buffer: int | None = None,
        timeout: float = 5.0,
    ):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            # Set before connect so that the TCP window starts small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if source_address is not None:
            self.sock.bind((source_address, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.timeout = timeout
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_packet(self, timeout: float | None = None) -> tuple[int, int, bytes]:
        """Read one packet and return (packet type, flags, body).

        Raises AssertionError when no whole packet arrives within timeout, and EOFError when
        the broker closes the connection first.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            parsed = self._take_packet()
            if parsed is not None:
                return parsed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no whole packet within the timeout; buffered {self.buffer!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise EOFError(f"broker closed the connection; buffered {self.buffer!r}")
            self.buffer += chunk

    def expect(self, packet_type: int, timeout: float | None = None) -> bytes:
        """Read one packet, fail unless it has packet_type, and return its body."""
        received_type, _, body = self.read_packet(timeout)
        assert received_type == packet_type, (
            f"expected packet type {packet_type}, got {received_type} with body {body!r}"
        )
        return body

    def _take_packet(self) -> tuple[int, int, bytes] | None:
        if len(self.buffer) < 2:
            return None
        length = 0
        multiplier = 1
        offset = 1
        while True:
            if offset >= len(self.buffer):
                return None
            byte = self.buffer[offset]
            offset += 1
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if not byte & 0x80:
                break
        if len(self.buffer) < offset + length:
            return None
        first = self.buffer[0]
        body = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return first >> 4, first & 0x0F, body

    def is_closed(self, timeout: float = 2.0) -> bool:
        """Read and discard packets until the broker closes the connection or timeout passes."""
        try:
            while True:
                self.read_packet(timeout)
        except EOFError:
            return True
        except AssertionError:
            return False

    def close(self) -> None:
        self.sock.close()


def parse_connack(body: bytes, version: int = 5) -> tuple[bool, int, dict]:
    """Return (session present, reason or return code, properties) of a CONNACK body."""
    properties = decode_properties(body, 2)[0] if version == 5 and len(body) > 2 else {}
    return bool(body[0] & 1), body[1], properties


def parse_reason_and_properties(body: bytes) -> tuple[int, dict]:
    """Return (reason code, properties) of an AUTH or DISCONNECT body."""
    if not body:
        return 0, {}
    if len(body) == 1:
        return body[0], {}
    return body[0], decode_properties(body, 1)[0]


def parse_suback(body: bytes, version: int = 5) -> tuple[int, list[int]]:
    """Return (packet id, reason codes) of a SUBACK body."""
    packet_id = int.from_bytes(body[:2], "big")
    offset = decode_properties(body, 2)[1] if version == 5 else 2
    return packet_id, list(body[offset:])


def parse_pub_response(body: bytes) -> tuple[int, int]:
    """Return (packet id, reason code) of a PUBACK, PUBREC, PUBREL or PUBCOMP body."""
    packet_id = int.from_bytes(body[:2], "big")
    reason = body[2] if len(body) > 2 else 0
    return packet_id, reason


def parse_publish(first_flags: int, body: bytes, version: int = 5) -> tuple[str, int, bytes]:
    """Return (topic, packet id or 0, payload) of a PUBLISH body."""
    topic_length = int.from_bytes(body[:2], "big")
    topic = body[2 : 2 + topic_length].decode()
    offset = 2 + topic_length
    packet_id = 0
    if (first_flags >> 1) & 0x03:
        packet_id = int.from_bytes(body[offset : offset + 2], "big")
        offset += 2
    if version == 5:
        offset = decode_properties(body, offset)[1]
    return topic, packet_id, body[offset:]
