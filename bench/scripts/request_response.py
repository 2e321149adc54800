#!/usr/bin/env python3
"""Measure request/response round trips through a running broker.

A requester publishes on rr/request and waits until the responder's reply
arrives on rr/response, ROUNDS times (200 by default), at QoS QOS (0, 1 or
2). Both are paho-mqtt 2.x clients over MQTT 5.0 with Nagle's algorithm off,
as paho leaves it on. Prints the median and the slowest round trip.

A broker that delays deliveries to batch writes adds that delay to every round
trip here, because each request waits for the previous response.

Usage: request_response.py PORT QOS [ROUNDS]
"""

import socket
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def connect(client_id: str, port: int) -> mqtt.Client:
    """Connect a client to 127.0.0.1:port with TCP_NODELAY set."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    port = int(sys.argv[1])
    qos = int(sys.argv[2])
    rounds = int(sys.argv[3]) if len(sys.argv) == 4 else 200
    if qos not in (0, 1, 2) or rounds < 1:
        sys.exit(f"invalid QOS {qos} or ROUNDS {rounds}: expected QOS 0, 1 or 2 and ROUNDS of 1 or more")

    requester = connect("rr-requester", port)
    responder = connect("rr-responder", port)
    answered = threading.Event()
    responder.on_message = lambda client, _data, message: client.publish(
        "rr/response", message.payload, qos=qos
    )
    requester.on_message = lambda _client, _data, _message: answered.set()
    requester.loop_start()
    responder.loop_start()
    responder.subscribe("rr/request", qos)
    requester.subscribe("rr/response", qos)
    # Both SUBACKs arrive well within this on loopback.
    time.sleep(0.5)

    times = []
    for number in range(rounds):
        answered.clear()
        started = time.perf_counter()
        requester.publish("rr/request", str(number).encode(), qos=qos)
        if not answered.wait(5):
            sys.exit(f"round {number}: no response within 5 s")
        times.append(time.perf_counter() - started)
    requester.loop_stop()
    responder.loop_stop()

    times.sort()
    print(
        f"QoS {qos}, {rounds} round trips: median {times[len(times) // 2] * 1e3:.2f} ms, "
        f"slowest {times[-1] * 1e3:.2f} ms, total {sum(times):.3f} s"
    )


if __name__ == "__main__":
    main()
