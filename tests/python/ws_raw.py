"""A minimal WebSocket client (RFC 6455) over a raw socket, for checks that need control of
every byte: how MQTT packets map to frames, malformed upgrades and oversized frames.

Only what the tests need: the client handshake, masked frames of any opcode and FIN flag,
and reading server frames, which are never masked.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass

# GUID that RFC 6455 section 1.3 appends to Sec-WebSocket-Key before hashing.
ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# Seconds that one read from the broker may take before the test fails.
READ_TIMEOUT = 5.0


@dataclass
class HttpResponse:
    """Status line, headers (lowercase names) and body of an HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Frame:
    opcode: int
    fin: bool
    payload: bytes

    def close_code(self) -> int | None:
        """Return the status code of a close frame, None when it carries none."""
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]


def upgrade_request(host: str, port: int, path: str, subprotocol: str | None, key: str) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def encode_frame(opcode: int, payload: bytes, fin: bool = True, length: int | None = None) -> bytes:
    """Encode a masked client frame. length overrides the header's payload length field."""
    declared = len(payload) if length is None else length
    header = bytearray([(0x80 if fin else 0) | opcode])
    if declared < 126:
        header.append(0x80 | declared)
    elif declared < 1 << 16:
        header.append(0x80 | 126)
        header += struct.pack("!H", declared)
    else:
        header.append(0x80 | 127)
        header += struct.pack("!Q", declared)
    mask = os.urandom(4)
    header += mask
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes(header) + masked


class RawWebSocket:
    """One WebSocket connection to the broker, with the upgrade done or rejected."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    @classmethod
    def open_socket(
        cls, host: str, port: int, tls_context: ssl.SSLContext | None = None
    ) -> "RawWebSocket":
        sock = socket.create_connection((host, port), timeout=READ_TIMEOUT)
        if tls_context is not None:
            sock = tls_context.wrap_socket(sock, server_hostname=host)
        return cls(sock)

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        path: str = "/mqtt",
        subprotocol: str | None = "mqtt",
        tls_context: ssl.SSLContext | None = None,
    ) -> tuple["RawWebSocket", HttpResponse]:
        """Open a connection, send the upgrade request and return the connection and response."""
        connection = cls.open_socket(host, port, tls_context)
        key = base64.b64encode(os.urandom(16)).decode()
        connection.sock.sendall(upgrade_request(host, port, path, subprotocol, key))
        response = connection.read_http_response()
        if response.status == 101:
            expected = base64.b64encode(
                hashlib.sha1((key + ACCEPT_GUID).encode()).digest()
            ).decode()
            accept = response.headers.get("sec-websocket-accept")
            if accept != expected:
                raise AssertionError(
                    f"Sec-WebSocket-Accept is {accept!r}, expected {expected!r} for key {key!r}"
                )
        return connection, response

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # Reading

    def _fill(self, count: int, timeout: float = READ_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while len(self.buffer) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"broker sent {len(self.buffer)} of {count} expected bytes within {timeout} s"
                )
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise ConnectionClosed(self.buffer)
            self.buffer += chunk

    def _take(self, count: int) -> bytes:
        self._fill(count)
        data = self.buffer[:count]
        self.buffer = self.buffer[count:]
        return data

    def read_http_response(self) -> HttpResponse:
        """Read the status line, headers and, when Content-Length is given, the body."""
        while b"\r\n\r\n" not in self.buffer:
            self._fill(len(self.buffer) + 1)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        return HttpResponse(status, headers, body)

    def read_frame(self) -> Frame:
        first, second = self._take(2)
        if second & 0x80:
            raise AssertionError("the broker sent a masked frame; server frames are never masked")
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._take(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._take(8))[0]
        return Frame(opcode=first & 0x0F, fin=bool(first & 0x80), payload=self._take(length))

    def read_until_close(self) -> Frame:
        """Skip data frames until a close frame arrives and return it."""
        while True:
            frame = self.read_frame()
            if frame.opcode == OP_CLOSE:
                return frame

    def wait_closed(self, timeout: float = READ_TIMEOUT) -> float:
        """Wait until the broker closes the TCP connection; return the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"broker kept the connection open for {timeout} s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, ssl.SSLError):
                return time.monotonic() - start
            if not chunk:
                return time.monotonic() - start

    # Writing

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.sock.sendall(encode_frame(opcode, payload, fin))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)


class ConnectionClosed(AssertionError):
    """The broker closed the connection before the expected bytes arrived."""

    def __init__(self, received: bytes):
        super().__init__(f"broker closed the connection; unread bytes: {received!r}")
        self.received = received
