"""Authentication at CONNECT: password file, anonymous access, SCRAM-SHA-256 and
re-authentication, checked with paho, mosquitto_pub and raw MQTT packets."""

from __future__ import annotations

import stat
import subprocess

import pytest

from auth_tools import (
    CONTINUE_AUTHENTICATION,
    REAUTHENTICATE,
    SCRAM_METHOD,
    ScramClient,
    add_user,
    run_passwd,
    scram_connect,
)
from mqtt_raw import (
    AUTH,
    CONNACK,
    DISCONNECT_TYPE,
    PINGRESP_TYPE,
    RawClient,
    encode_auth,
    encode_connect,
    parse_connack,
    parse_reason_and_properties,
)

SUCCESS = 0x00
BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
PROTOCOL_ERROR = 0x82
BAD_AUTHENTICATION_METHOD = 0x8C
# MQTT 3.1.1 CONNACK return codes.
V311_BAD_USER_NAME_OR_PASSWORD = 4
V311_NOT_AUTHORIZED = 5

PINGREQ_BYTES = b"\xc0\x00"


@pytest.fixture
def password_file(tmp_path, coremq_binary):
    """A password file with users alice (password alice-pw) and carol (carol-pw)."""
    path = tmp_path / "passwd"
    add_user(coremq_binary, path, "alice", "alice-pw")
    add_user(coremq_binary, path, "carol", "carol-pw")
    return path


def raw_connack(broker, version: int, **connect_args) -> int:
    """Send one CONNECT over a raw socket and return the CONNACK's reason or return code."""
    raw = RawClient(broker.host, broker.port)
    try:
        raw.send(encode_connect("raw-client", version=version, **connect_args))
        return parse_connack(raw.expect(CONNACK), version)[1]
    finally:
        raw.close()


def test_passwd_creates_and_changes_user(tmp_path, coremq_binary, broker_factory, mqtt):
    path = tmp_path / "passwd"
    add_user(coremq_binary, path, "alice", "first-pw")
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, f"password file mode is {oct(mode)}"
    lines = path.read_text().splitlines()
    assert len([line for line in lines if line.startswith("alice:")]) == 2, lines

    broker = broker_factory("--password-file", str(path))
    first = mqtt(broker, "p1").connect(username="alice", password="first-pw")
    assert first.reason_code == SUCCESS

    add_user(coremq_binary, path, "alice", "second-pw")
    add_user(coremq_binary, path, "bob", "bob-pw")
    # The broker reads the file only at start-up, so only a new broker uses the change.
    changed = broker_factory("--password-file", str(path))
    old = mqtt(changed, "p2").connect(username="alice", password="first-pw", expect_success=False)
    assert old.reason_code == BAD_USER_NAME_OR_PASSWORD
    new = mqtt(changed, "p3").connect(username="alice", password="second-pw")
    assert new.reason_code == SUCCESS
    bob = mqtt(changed, "p4").connect(username="bob", password="bob-pw")
    assert bob.reason_code == SUCCESS


def test_passwd_rejects_empty_password_and_bad_name(tmp_path, coremq_binary):
    path = tmp_path / "passwd"
    empty = run_passwd(coremq_binary, path, "alice", "")
    assert empty.returncode != 0
    assert "empty" in empty.stderr, empty.stderr
    bad_name = run_passwd(coremq_binary, path, "a:b", "pw")
    assert bad_name.returncode != 0
    assert "invalid user name" in bad_name.stderr, bad_name.stderr
    assert not path.exists(), "a rejected passwd run wrote the file"


def test_password_v5_paho_results(broker_factory, mqtt, password_file):
    broker = broker_factory("--password-file", str(password_file))
    cases = [
        ("right", {"username": "alice", "password": "alice-pw"}, SUCCESS),
        ("wrong", {"username": "alice", "password": "nope"}, BAD_USER_NAME_OR_PASSWORD),
        ("unknown user", {"username": "mallory", "password": "alice-pw"}, BAD_USER_NAME_OR_PASSWORD),
        ("user without password", {"username": "alice"}, BAD_USER_NAME_OR_PASSWORD),
        ("no credentials", {}, NOT_AUTHORIZED),
    ]
    for index, (case, credentials, expected) in enumerate(cases):
        connack = mqtt(broker, f"v5-{index}").connect(expect_success=False, **credentials)
        assert connack.reason_code == expected, f"{case}: 0x{connack.reason_code:02X}"


def test_password_v311_return_codes(broker_factory, password_file):
    broker = broker_factory("--password-file", str(password_file))
    right = raw_connack(broker, 311, username="alice", password=b"alice-pw")
    assert right == 0
    wrong = raw_connack(broker, 311, username="alice", password=b"nope")
    assert wrong == V311_BAD_USER_NAME_OR_PASSWORD
    missing = raw_connack(broker, 311)
    assert missing == V311_NOT_AUTHORIZED


def test_anonymous_switch(broker_factory, mqtt, password_file):
    open_broker = broker_factory("--password-file", str(password_file), "--allow-anonymous", "true")
    anonymous = mqtt(open_broker, "anon-1").connect()
    assert anonymous.reason_code == SUCCESS
    wrong = mqtt(open_broker, "anon-2").connect(username="alice", password="x", expect_success=False)
    assert wrong.reason_code == BAD_USER_NAME_OR_PASSWORD, "a wrong password still fails"

    closed_broker = broker_factory("--allow-anonymous", "false")
    refused = mqtt(closed_broker, "anon-3").connect(expect_success=False)
    assert refused.reason_code == NOT_AUTHORIZED
    no_file = mqtt(closed_broker, "anon-4").connect(username="alice", password="x", expect_success=False)
    assert no_file.reason_code == NOT_AUTHORIZED, "no password file: no user is authorized"


def run_mosquitto_pub(mosquitto, broker, version: int, *credentials: str) -> subprocess.CompletedProcess:
    command = [
        mosquitto.pub_path,
        "-h", broker.host,
        "-p", str(broker.port),
        "-V", str(version),
        "-t", "auth/test",
        "-m", "hello",
        *credentials,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("version", [5, 311])
def test_mosquitto_pub_credentials(broker_factory, mosquitto, password_file, version):
    broker = broker_factory("--password-file", str(password_file))
    right = run_mosquitto_pub(mosquitto, broker, version, "-u", "alice", "-P", "alice-pw")
    assert right.returncode == 0, right.stderr
    wrong = run_mosquitto_pub(mosquitto, broker, version, "-u", "alice", "-P", "nope")
    assert wrong.returncode != 0
    assert "password" in wrong.stderr.lower(), wrong.stderr
    missing = run_mosquitto_pub(mosquitto, broker, version)
    assert missing.returncode != 0
    assert "authori" in missing.stderr.lower(), missing.stderr


def test_scram_success_verifies_server(broker_factory, password_file):
    broker = broker_factory("--password-file", str(password_file))
    raw = RawClient(broker.host, broker.port)
    scram = ScramClient("carol", "carol-pw")
    reason, properties, server_first = scram_connect(raw, "scram-ok", scram)
    assert reason == SUCCESS, f"CONNACK 0x{reason:02X}"
    assert server_first is not None, "the broker skipped the AUTH exchange"
    assert properties.get("authentication_method") == SCRAM_METHOD
    server_final = properties.get("authentication_data")
    assert server_final is not None, "CONNACK carries no server-final message"
    assert scram.verify_server_final(server_final), f"bad server signature: {server_final!r}"

    raw.send(PINGREQ_BYTES)
    raw.expect(PINGRESP_TYPE)
    raw.close()


def test_scram_wrong_proof(broker_factory, password_file):
    broker = broker_factory("--password-file", str(password_file))
    for index, user in enumerate(["carol", "mallory"]):
        raw = RawClient(broker.host, broker.port)
        reason, _, server_first = scram_connect(raw, f"scram-bad-{index}", ScramClient(user, "wrong"))
        assert server_first is not None, f"{user}: no AUTH exchange"
        assert reason == NOT_AUTHORIZED, f"{user}: CONNACK 0x{reason:02X}"
        assert raw.is_closed(), f"{user}: connection left open after a failed login"
        raw.close()


def test_scram_unknown_method(broker_factory, password_file):
    broker = broker_factory("--password-file", str(password_file))
    reason = raw_connack(
        broker,
        5,
        properties={"authentication_method": "GS2-KRB5", "authentication_data": b"x"},
    )
    assert reason == BAD_AUTHENTICATION_METHOD


def test_scram_reauthentication(broker_factory, password_file):
    broker = broker_factory("--password-file", str(password_file))
    raw = RawClient(broker.host, broker.port)
    reason, _, _ = scram_connect(raw, "reauth", ScramClient("carol", "carol-pw"))
    assert reason == SUCCESS

    again = ScramClient("carol", "carol-pw")
    raw.send(
        encode_auth(
            REAUTHENTICATE,
            {"authentication_method": SCRAM_METHOD, "authentication_data": again.client_first()},
        )
    )
    reason, properties = parse_reason_and_properties(raw.expect(AUTH))
    assert reason == CONTINUE_AUTHENTICATION
    final = again.client_final(properties["authentication_data"])
    raw.send(
        encode_auth(
            CONTINUE_AUTHENTICATION,
            {"authentication_method": SCRAM_METHOD, "authentication_data": final},
        )
    )
    reason, properties = parse_reason_and_properties(raw.expect(AUTH))
    assert reason == SUCCESS, f"AUTH 0x{reason:02X} after re-authentication"
    assert again.verify_server_final(properties["authentication_data"])
    raw.send(PINGREQ_BYTES)
    raw.expect(PINGRESP_TYPE)

    wrong = ScramClient("carol", "wrong")
    raw.send(
        encode_auth(
            REAUTHENTICATE,
            {"authentication_method": SCRAM_METHOD, "authentication_data": wrong.client_first()},
        )
    )
    _, properties = parse_reason_and_properties(raw.expect(AUTH))
    raw.send(
        encode_auth(
            CONTINUE_AUTHENTICATION,
            {
                "authentication_method": SCRAM_METHOD,
                "authentication_data": wrong.client_final(properties["authentication_data"]),
            },
        )
    )
    reason, _ = parse_reason_and_properties(raw.expect(DISCONNECT_TYPE))
    assert reason == NOT_AUTHORIZED, f"DISCONNECT 0x{reason:02X} after a failed re-authentication"
    assert raw.is_closed()
    raw.close()


def test_auth_without_enhanced_login(broker_factory, password_file):
    broker = broker_factory("--password-file", str(password_file))
    raw = RawClient(broker.host, broker.port)
    raw.send(encode_connect("plain", username="alice", password=b"alice-pw"))
    assert parse_connack(raw.expect(CONNACK))[1] == SUCCESS
    raw.send(
        encode_auth(
            REAUTHENTICATE,
            {"authentication_method": SCRAM_METHOD, "authentication_data": b"n,,n=alice,r=abc"},
        )
    )
    reason, _ = parse_reason_and_properties(raw.expect(DISCONNECT_TYPE))
    assert reason == PROTOCOL_ERROR
    raw.close()
