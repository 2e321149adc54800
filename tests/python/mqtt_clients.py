"""Paho MQTT client wrapper whose calls wait for the broker's acknowledgement, with timeouts.

Each `MqttClient.connect` opens one network connection with its own paho client and network
thread. Paho's automatic reconnect is off, so a connection that the broker closes stays
closed and a test reconnects explicitly by calling `connect` again.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

try:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError as error:
    raise ImportError(
        f"paho-mqtt 2.x is not importable ({error}): pip install -r tests/python/requirements.txt"
    ) from error

__all__ = [
    "BOTH_VERSIONS",
    "DEFAULT_TIMEOUT",
    "ConnAck",
    "MqttClient",
    "PacketTypes",
    "Properties",
    "SubscribeOptions",
    "make_properties",
]

# Seconds to wait for any single broker reply. Loopback replies take milliseconds, so this
# only bounds how long a broken broker can stall a test.
DEFAULT_TIMEOUT = 5.0

# Protocol versions as mosquitto_pub -V spells them, mapped to paho's protocol constants.
PAHO_PROTOCOLS = {5: paho.MQTTv5, 311: paho.MQTTv311}
BOTH_VERSIONS = (5, 311)


def make_properties(packet_type: int, **values: Any) -> Properties:
    """Build paho Properties for packet_type, e.g. `make_properties(PacketTypes.PUBLISH, ContentType="x")`."""
    properties = Properties(packet_type)
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


def reason_value(reason: ReasonCode | int | None) -> int | None:
    if reason is None:
        return None
    if isinstance(reason, ReasonCode):
        return reason.value
    return int(reason)


@dataclass
class ConnAck:
    """The broker's CONNACK as paho reported it."""

    reason_code: int
    session_present: bool
    properties: Properties | None


class MqttClient:
    """One MQTT client id, driven through paho-mqtt 2.x."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        version: int = 5,
        transport: str = "tcp",
        ws_path: str = "/mqtt",
        tls_context: ssl.SSLContext | None = None,
    ):
        """transport is "tcp" or "websockets"; tls_context turns on TLS over either."""
        if version not in PAHO_PROTOCOLS:
            raise ValueError(f"unsupported MQTT version {version}: expected 5 or 311")
        if transport not in ("tcp", "websockets"):
            raise ValueError(f"unsupported transport {transport!r}: expected tcp or websockets")
        self.transport = transport
        self.ws_path = ws_path
        self.tls_context = tls_context
        self.host = host
        self.port = port
        self.client_id = client_id
        self.version = version
        self.paho: paho.Client | None = None
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connack: ConnAck | None = None
        self.disconnect_reason: int | None = None
        self.disconnect_from_server = False
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._acks = threading.Condition()
        self._subacks: dict[int, list[int]] = {}
        self._unsubacks: dict[int, list[int]] = {}
        self._pubacks: dict[int, int] = {}
        self._wrapper_acks = True

    # Connection

    def connect(
        self,
        clean_start: bool = True,
        session_expiry: int | None = None,
        properties: Properties | None = None,
        will: dict[str, Any] | None = None,
        manual_ack: bool = False,
        paho_acks: bool = False,
        max_inflight: int | None = None,
        keepalive: int = 60,
        expect_success: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        username: str | None = None,
        password: str | None = None,
    ) -> ConnAck:
        """Connect, wait for CONNACK and return it.

        For MQTT 3.1.1, clean_start is sent as the Clean Session flag. session_expiry adds
        the MQTT 5 Session Expiry Interval property. Both it and keepalive are in seconds.
        username and password go into the CONNECT's User Name and Password fields.
        will contains the keyword arguments of paho's `will_set`. paho_acks lets paho send
        PUBACK and PUBCOMP itself after on_message returns. Only that mode completes a PUBREL
        that a previous connection's QoS 2 message left open, but a DISCONNECT sent right
        after a message arrives may then overtake its acknowledgement. Raises AssertionError
        when no CONNACK arrives, or when expect_success is set and the CONNACK carries an
        error reason code.
        """
        self._reset_connection_state()
        if manual_ack and paho_acks:
            raise ValueError("manual_ack and paho_acks cannot both be set")
        self._wrapper_acks = not (manual_ack or paho_acks)
        is_v5 = self.version == 5
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if is_v5 else clean_start,
            protocol=PAHO_PROTOCOLS[self.version],
            reconnect_on_failure=False,
            # Unless paho_acks is set, the wrapper sends every acknowledgement (see _on_message).
            manual_ack=not paho_acks,
            transport=self.transport,
        )
        if self.transport == "websockets":
            client.ws_set_options(path=self.ws_path)
        if self.tls_context is not None:
            client.tls_set_context(self.tls_context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_publish = self._on_publish
        if max_inflight is not None:
            client.max_inflight_messages_set(max_inflight)
        if will is not None:
            client.will_set(**will)
        if username is not None:
            client.username_pw_set(username, password)
        self.paho = client

        if is_v5:
            if session_expiry is not None:
                if properties is None:
                    properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = session_expiry
            client.connect(
                self.host,
                self.port,
                keepalive=keepalive,
                clean_start=clean_start,
                properties=properties,
            )
        else:
            if session_expiry is not None or properties is not None:
                raise ValueError("MQTT 3.1.1 has no CONNECT properties")
            client.connect(self.host, self.port, keepalive=keepalive)
        client.loop_start()

        if not self._connected.wait(timeout):
            raise AssertionError(f"{self.client_id}: no CONNACK within {timeout} s")
        if expect_success and self.connack.reason_code >= 0x80:
            raise AssertionError(
                f"{self.client_id}: CONNACK reason code 0x{self.connack.reason_code:02X}"
            )
        return self.connack

    def disconnect(
        self,
        reason_code: int = 0,
        properties: Properties | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Send DISCONNECT with reason_code (MQTT 5 only) and wait for the socket to close."""
        reason = None
        if self.version == 5 and reason_code != 0:
            reason = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code)
        self.paho.disconnect(reasoncode=reason, properties=properties)
        self.wait_disconnected(timeout)
        self.paho.loop_stop()

    def drop(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Close the TCP connection without DISCONNECT, as a crashed client would."""
        sock = self.paho.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                # The broker may have closed the connection already.
                pass
        self.wait_disconnected(timeout)
        self.paho.loop_stop()

    def wait_disconnected(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Wait until the connection is closed and return the reason code paho reported."""
        if not self._disconnected.wait(timeout):
            raise AssertionError(f"{self.client_id}: still connected after {timeout} s")
        return self.disconnect_reason

    def is_connected(self) -> bool:
        return self._connected.is_set() and not self._disconnected.is_set()

    def close(self) -> None:
        """Disconnect if still connected and stop the network thread, at test teardown."""
        if self.paho is None:
            return
        if self.is_connected():
            self.paho.disconnect()
            if not self._disconnected.wait(2.0):
                sock = self.paho.socket()
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self._disconnected.wait(2.0)
        if self._disconnected.is_set() or not self._connected.is_set():
            self.paho.loop_stop()

    # Subscribe and publish

    def subscribe(
        self,
        topic: str | list[tuple[str, Any]],
        qos: int = 0,
        options: SubscribeOptions | None = None,
        properties: Properties | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[int]:
        """Subscribe, wait for SUBACK and return its reason codes (granted QoS on success).

        topic is one filter, or a list of (filter, qos or SubscribeOptions) pairs.
        """
        if options is not None:
            result, mid = self.paho.subscribe(topic, options=options, properties=properties)
        else:
            result, mid = self.paho.subscribe(topic, qos=qos, properties=properties)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise AssertionError(f"{self.client_id}: paho could not send SUBSCRIBE: {result}")
        return self._wait_for_ack(self._subacks, mid, "SUBACK", timeout)

    def unsubscribe(self, topic: str | list[str], timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        """Unsubscribe, wait for UNSUBACK and return its reason codes (empty for MQTT 3.1.1)."""
        result, mid = self.paho.unsubscribe(topic)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise AssertionError(f"{self.client_id}: paho could not send UNSUBSCRIBE: {result}")
        return self._wait_for_ack(self._unsubacks, mid, "UNSUBACK", timeout)

    def publish(
        self,
        topic: str,
        payload: bytes | str | None = None,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        wait: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> paho.MQTTMessageInfo:
        """Publish, and with wait, block until PUBACK or PUBCOMP (QoS 1, 2) or until sent (QoS 0)."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise AssertionError(f"{self.client_id}: paho could not send PUBLISH: {info.rc}")
        if wait:
            self.wait_published(info, timeout)
        return info

    def ack(self, message: paho.MQTTMessage) -> None:
        """Send PUBACK or PUBCOMP for a message received on a `manual_ack` connection."""
        self.paho.ack(message.mid, message.qos)

    def wait_published(self, info: paho.MQTTMessageInfo, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the acknowledgement of one publish and return its reason code."""
        return self._wait_for_ack(self._pubacks, info.mid, "PUBACK/PUBCOMP", timeout)

    # Received messages

    def next_message(self, timeout: float = DEFAULT_TIMEOUT) -> paho.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout} s") from None

    def collect(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[paho.MQTTMessage]:
        """Return the next count messages, failing if they do not all arrive within timeout."""
        deadline = time.monotonic() + timeout
        received = []
        while len(received) < count:
            remaining = deadline - time.monotonic()
            try:
                received.append(self.messages.get(timeout=max(remaining, 0)))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id}: received {len(received)} of {count} messages "
                    f"within {timeout} s"
                ) from None
        return received

    def assert_no_message(self, window: float = 0.5) -> None:
        """Fail if any message arrives within window seconds."""
        try:
            message = self.messages.get(timeout=window)
        except queue.Empty:
            return
        raise AssertionError(
            f"{self.client_id}: unexpected message on {message.topic!r}: {message.payload!r}"
        )

    def collect_for(self, window: float) -> list[paho.MQTTMessage]:
        """Return every message that arrives within window seconds."""
        deadline = time.monotonic() + window
        received = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return received
            try:
                received.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                return received

    def drain(self) -> list[paho.MQTTMessage]:
        """Remove and return the messages received so far without waiting."""
        drained = []
        while True:
            try:
                drained.append(self.messages.get_nowait())
            except queue.Empty:
                return drained

    # Paho callbacks, run on the network thread

    def _reset_connection_state(self) -> None:
        self.messages = queue.Queue()
        self.connack = None
        self.disconnect_reason = None
        self.disconnect_from_server = False
        self._connected = threading.Event()
        self._disconnected = threading.Event()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack = ConnAck(
            reason_code=reason_value(reason_code),
            session_present=bool(flags.session_present),
            properties=properties,
        )
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnect_reason = reason_value(reason_code)
        self.disconnect_from_server = bool(flags.is_disconnect_packet_from_server)
        # A refused CONNECT also ends here; wake a waiter in connect().
        self._connected.set()
        if self.connack is None:
            self.connack = ConnAck(self.disconnect_reason or 0x80, False, properties)
        self._disconnected.set()
        with self._acks:
            self._acks.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        # Queue the PUBACK or PUBCOMP before the test can see the message, so a DISCONNECT
        # that the test sends next cannot overtake it and make the broker resend.
        if self._wrapper_acks and message.qos > 0:
            client.ack(message.mid, message.qos)
        self.messages.put(message)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._record_ack(self._subacks, mid, [reason_value(code) for code in reason_codes])

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._record_ack(self._unsubacks, mid, [reason_value(code) for code in reason_codes])

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._record_ack(self._pubacks, mid, reason_value(reason_code))

    def _record_ack(self, acks: dict, mid: int, value: Any) -> None:
        with self._acks:
            acks[mid] = value
            self._acks.notify_all()

    def _wait_for_ack(self, acks: dict, mid: int, name: str, timeout: float) -> Any:
        with self._acks:
            arrived = self._acks.wait_for(
                lambda: mid in acks or self._disconnected.is_set(), timeout
            )
            if mid in acks:
                return acks.pop(mid)
        if arrived:
            raise AssertionError(
                f"{self.client_id}: connection closed before {name} for packet id {mid} "
                f"(reason code {self.disconnect_reason})"
            )
        raise AssertionError(f"{self.client_id}: no {name} for packet id {mid} within {timeout} s")


def wait_until(condition: Callable[[], bool], timeout: float, description: str) -> None:
    """Poll condition every 20 ms until it is true; fail with description after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {description}")
        time.sleep(0.02)
