"""Helpers for the authentication tests: `coremq passwd` runs and a SCRAM-SHA-256 client.

The SCRAM client follows RFC 5802 with the SHA-256 hash of RFC 7677, and it carries its
messages in the Authentication Data of MQTT 5 CONNECT and AUTH packets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
from pathlib import Path

from mqtt_raw import (
    AUTH,
    CONNACK,
    RawClient,
    encode_auth,
    encode_connect,
    parse_connack,
    parse_reason_and_properties,
)

SCRAM_METHOD = "SCRAM-SHA-256"
CONTINUE_AUTHENTICATION = 0x18
REAUTHENTICATE = 0x19

# Seconds one `coremq passwd` run may take. Hashing costs well under a second.
PASSWD_TIMEOUT_SECONDS = 30.0


def run_passwd(binary: Path, password_file: Path, user: str, password: str) -> subprocess.CompletedProcess:
    """Run `coremq passwd FILE USER` with the password as one line on stdin."""
    return subprocess.run(
        [str(binary), "passwd", str(password_file), user],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=PASSWD_TIMEOUT_SECONDS,
    )


def add_user(binary: Path, password_file: Path, user: str, password: str) -> None:
    """Add user to password_file with `coremq passwd`, failing the test if it fails."""
    result = run_passwd(binary, password_file, user, password)
    assert result.returncode == 0, (
        f"coremq passwd {password_file} {user} exited with {result.returncode}: {result.stderr}"
    )


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


class ScramClient:
    """Client side of one SCRAM-SHA-256 exchange, without channel binding."""

    def __init__(self, user: str, password: str, nonce: str | None = None):
        self.user = user
        self.password = password
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self.client_first_bare = f"n={user},r={self.nonce}"
        self.server_signature: bytes | None = None

    def client_first(self) -> bytes:
        return f"n,,{self.client_first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        """Compute the client-final message from the server-first message."""
        fields = dict(part.split("=", 1) for part in server_first.decode().split(","))
        combined_nonce = fields["r"]
        assert combined_nonce.startswith(self.nonce), (
            f"server nonce {combined_nonce!r} does not start with the client nonce"
        )
        salt = base64.b64decode(fields["s"])
        iterations = int(fields["i"])

        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={combined_nonce}"
        auth_message = f"{self.client_first_bare},{server_first.decode()},{without_proof}".encode()
        client_signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature))
        server_key = _hmac(salted, b"Server Key")
        self.server_signature = _hmac(server_key, auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server_final(self, server_final: bytes) -> bool:
        """Return True when server_final carries the signature that proves the server's key."""
        text = server_final.decode()
        if not text.startswith("v="):
            return False
        return hmac.compare_digest(base64.b64decode(text[2:]), self.server_signature)


def scram_connect(
    raw: RawClient, client_id: str, scram: ScramClient
) -> tuple[int, dict, bytes | None]:
    """Run the SCRAM exchange of a CONNECT on raw.

    Returns (CONNACK reason code, CONNACK properties, server-first message). The
    server-first message is None when the broker replied to the CONNECT with CONNACK.
    """
    raw.send(
        encode_connect(
            client_id,
            properties={
                "authentication_method": SCRAM_METHOD,
                "authentication_data": scram.client_first(),
            },
        )
    )
    packet_type, _, body = raw.read_packet()
    if packet_type == CONNACK:
        _, reason, properties = parse_connack(body)
        return reason, properties, None
    assert packet_type == AUTH, f"expected AUTH or CONNACK, got packet type {packet_type}"
    reason, properties = parse_reason_and_properties(body)
    assert reason == CONTINUE_AUTHENTICATION, f"AUTH reason 0x{reason:02X}, expected 0x18"
    assert properties.get("authentication_method") == SCRAM_METHOD
    server_first = properties["authentication_data"]

    raw.send(
        encode_auth(
            CONTINUE_AUTHENTICATION,
            {
                "authentication_method": SCRAM_METHOD,
                "authentication_data": scram.client_final(server_first),
            },
        )
    )
    _, reason, properties = parse_connack(raw.expect(CONNACK))
    return reason, properties, server_first
