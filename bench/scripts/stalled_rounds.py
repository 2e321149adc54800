#!/usr/bin/env python3
"""Check whether memory held for stalled QoS 1 subscribers comes back.

Starts a broker (the binary given as the first argument) on 127.0.0.1 with one
shard and in-memory storage, then runs ROUNDS rounds (4 by default). In each
round 20 subscribers with a 4 KiB receive buffer subscribe at QoS 1 and never
read, one publisher sends 2,000 QoS 1 messages of 4 KiB and waits for every
PUBACK, and then all of them close. The broker's RSS is printed at its peak
and 3 s after the clients closed.

A leak grows the figure after each round. Memory that the allocator keeps for
reuse stays level from round to round.

Usage: stalled_rounds.py BROKER_BINARY [ROUNDS]
"""

import socket
import struct
import subprocess
import sys
import time

PORT = 18851
SUBSCRIBERS = 20
BATCHES = 20
BATCH_SIZE = 100
PAYLOAD = b"b" * 4096


def remaining_length(length: int) -> bytes:
    encoded = b""
    while True:
        byte, length = length % 128, length // 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            return encoded


def utf8(text: bytes) -> bytes:
    return struct.pack(">H", len(text)) + text


def connect(client_id: str, receive_buffer: int | None = None) -> socket.socket:
    """Open an MQTT 5.0 connection with clean start and wait for its CONNACK."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", PORT))
    body = utf8(b"MQTT") + bytes([5, 2]) + struct.pack(">H", 60) + b"\x00" + utf8(client_id.encode())
    sock.sendall(b"\x10" + remaining_length(len(body)) + body)
    sock.recv(100)
    return sock


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    raise RuntimeError(f"VmRSS not found in /proc/{pid}/status")


def publish_all(publisher: socket.socket) -> None:
    """Send every batch and wait for all of its PUBACKs before the next."""
    packet_id = 1
    pending = b""
    publisher.settimeout(10)
    for _ in range(BATCHES):
        packets = b""
        for _ in range(BATCH_SIZE):
            body = utf8(b"q/t") + struct.pack(">H", packet_id) + b"\x00" + PAYLOAD
            packets += b"\x32" + remaining_length(len(body)) + body
            packet_id = packet_id % 60000 + 1
        publisher.sendall(packets)
        acknowledged = 0
        while acknowledged < BATCH_SIZE:
            pending += publisher.recv(65536)
            # PUBACKs are short, so their remaining length fits in one byte.
            while len(pending) >= 2 and len(pending) >= 2 + pending[1]:
                if pending[0] >> 4 == 4:
                    acknowledged += 1
                pending = pending[2 + pending[1]:]


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    broker = subprocess.Popen(
        [sys.argv[1], "--listen", f"127.0.0.1:{PORT}", "--shards", "1", "--storage", "memory"],
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        print(f"start: {rss_mib(broker.pid)} MiB", flush=True)
        for round_index in range(rounds):
            subscribers = []
            for index in range(SUBSCRIBERS):
                subscriber = connect(f"stalled-{index}", receive_buffer=4096)
                body = struct.pack(">H", 1) + b"\x00" + utf8(b"q/t") + b"\x01"
                subscriber.sendall(b"\x82" + remaining_length(len(body)) + body)
                subscriber.recv(100)
                subscribers.append(subscriber)
            publisher = connect("publisher")
            publish_all(publisher)
            peak = rss_mib(broker.pid)
            for subscriber in subscribers:
                subscriber.close()
            publisher.close()
            time.sleep(3)
            print(f"round {round_index}: peak {peak} MiB, after close {rss_mib(broker.pid)} MiB", flush=True)
    finally:
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    main()
