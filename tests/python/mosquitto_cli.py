"""Runners for the mosquitto_pub and mosquitto_sub command-line clients (mosquitto-clients)."""

from __future__ import annotations

import queue
import subprocess
import threading
import time

# Seconds that one mosquitto_pub run or one awaited mosquitto_sub line may take.
TOOL_TIMEOUT_SECONDS = 10.0

# mosquitto_sub -d prints this once the broker has acknowledged the subscription.
SUBACK_MARKER = "received SUBACK"


class Subscriber:
    """A running mosquitto_sub process whose output lines are read on a background thread."""

    def __init__(self, process: subprocess.Popen, command: list[str]):
        self.process = process
        self.command = command
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for_line(self, predicate, description: str, timeout: float = TOOL_TIMEOUT_SECONDS) -> str:
        """Return the first new output line for which predicate is true."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0))
            except queue.Empty:
                raise AssertionError(
                    f"mosquitto_sub printed no line {description} within {timeout} s; "
                    f"output so far:\n" + "\n".join(self.output)
                ) from None
            if line is None:
                raise AssertionError(
                    f"mosquitto_sub exited with code {self.process.wait()} before it printed a "
                    f"line {description}; output:\n" + "\n".join(self.output)
                )
            self.output.append(line)
            if predicate(line):
                return line

    def assert_no_line(self, predicate, description: str, window: float = 0.5) -> None:
        """Fail if a line seen so far, or one printed within window seconds, matches predicate."""
        deadline = time.monotonic() + window
        while True:
            matching = [line for line in self.output if predicate(line)]
            if matching:
                raise AssertionError(f"mosquitto_sub printed a line {description}: {matching[0]!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                return
            if line is None:
                return
            self.output.append(line)

    def wait_subscribed(self) -> None:
        self.wait_for_line(lambda line: SUBACK_MARKER in line, f"containing {SUBACK_MARKER!r}")

    def wait_message(self, expected: str) -> str:
        """Wait for the output line of one received message, which -d logging surrounds.

        A line printed before SUBACK counts too, because a broker may send matching
        PUBLISH packets, retained ones included, before the SUBACK.
        """
        if expected in self.output:
            return expected
        return self.wait_for_line(lambda line: line == expected, f"equal to {expected!r}")

    def message_lines(self) -> list[str]:
        """Return the lines printed so far that are not -d debug lines."""
        return [
            line
            for line in self.output
            if not line.startswith("Client ") and not line.startswith("Subscribed (mid")
        ]

    def stop(self) -> None:
        """Kill the process by its pid and wait for it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=TOOL_TIMEOUT_SECONDS)


class MosquittoTools:
    """The installed mosquitto_pub and mosquitto_sub, plus the subscribers started through them."""

    def __init__(self, pub_path: str, sub_path: str, stdbuf_path: str):
        self.pub_path = pub_path
        self.sub_path = sub_path
        self.stdbuf_path = stdbuf_path
        self.subscribers: list[Subscriber] = []

    def subscribe(self, broker, version: int, topic: str, *extra_args: str) -> Subscriber:
        """Start mosquitto_sub -d on topic and wait until the broker has sent SUBACK."""
        # mosquitto_sub flushes stdout after each message but not after -d lines, so
        # stdbuf makes stdout line-buffered or the SUBACK line could stay in its buffer.
        command = [
            self.stdbuf_path,
            "-oL",
            self.sub_path,
            "-h", broker.host,
            "-p", str(broker.port),
            "-V", str(version),
            "-t", topic,
            "-d",
            *extra_args,
        ]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        subscriber = Subscriber(process, command)
        self.subscribers.append(subscriber)
        subscriber.wait_subscribed()
        return subscriber

    def publish(self, broker, version: int, topic: str, message: str, *extra_args: str) -> None:
        """Run mosquitto_pub once and fail unless it exits with code 0."""
        command = [
            self.pub_path,
            "-h", broker.host,
            "-p", str(broker.port),
            "-V", str(version),
            "-t", topic,
            "-m", message,
            *extra_args,
        ]
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TOOL_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired as error:
            raise AssertionError(
                f"mosquitto_pub did not exit within {TOOL_TIMEOUT_SECONDS} s: {' '.join(command)}"
            ) from error
        if result.returncode != 0:
            raise AssertionError(
                f"mosquitto_pub exited with code {result.returncode}: {' '.join(command)}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )

    def stop_all(self) -> None:
        for subscriber in self.subscribers:
            subscriber.stop()
