"""Fixtures that start the real coremq binary and the real MQTT clients that drive it.

The binary is taken from $COREMQ_BIN, else $CARGO_TARGET_DIR/debug/coremq, else
<repo>/target/debug/coremq. Every broker listens on a free loopback port, writes its log
to a file under the test's tmp_path and is stopped by its pid when the test ends. The log
of every broker that a failed test started is attached to the failure report.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from mosquitto_cli import MosquittoTools

REPO_ROOT = Path(__file__).resolve().parents[2]

# A debug build logs its listeners within a second of start, so this bounds only a broker
# that hangs at start-up.
STARTUP_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0

# Lines kept from the end of a broker log when it is attached to a failure report.
MAX_REPORTED_LOG_LINES = 400

LISTENING_LINE = re.compile(r'listening protocol=tcp addr="?([0-9.]+):(\d+)')
# Every listener: protocol, IPv4 host, port and, for ws and wss, the request path.
ANY_LISTENING_LINE = re.compile(
    r'listening protocol=(\w+) addr="?([0-9.]+):(\d+)"?(?: path="?([^"\s]+))?'
)
# Other fields, such as peer=, may stand between client_id= and shard=.
CONNECTED_LINE = re.compile(r'\bconnected client_id="?([^"\s]+)"?[^\n]*?\sshard=(\d+)')

# RUST_LOG filter that adds the debug line the accepting shard logs when it hands a
# connection to its owner shard, and that line.
HANDOFF_LOG_FILTER = "info,coremq::connection=debug"
HANDOFF_LINE = re.compile(r"handing the connection to its owner shard")

# Largest number of extra clients a test connects when none of its own was handed over.
MAX_HANDOFF_PROBES = 20


def assert_handed_over(broker, connect_probe) -> None:
    """Fail unless the broker handed at least one connection to its owner shard.

    SO_REUSEPORT picks the accepting shard by a hash of each connection's addresses,
    which acts at random, so all 12 clients of a test land on their owner shards in
    about one run in 4,096. Before failing, this calls connect_probe(index) for up
    to MAX_HANDOFF_PROBES more clients. Each probe must connect a new client on the
    same listener and check that it works.
    """
    for index in range(MAX_HANDOFF_PROBES + 1):
        if HANDOFF_LINE.search(broker.log_text()):
            return
        if index < MAX_HANDOFF_PROBES:
            connect_probe(index)
    raise AssertionError(f"no connection was handed over, after {MAX_HANDOFF_PROBES} extra clients")

BROKERS_KEY = pytest.StashKey[list]()


@dataclass
class Listener:
    """One listening socket of a broker, as its `listening` log line names it."""

    protocol: str
    host: str
    port: int
    path: str | None

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}{self.path or ''}"


class Broker:
    """A running coremq process and the loopback address that it listens on."""

    def __init__(self, process: subprocess.Popen, log_path: Path, args: list[str]):
        self.process = process
        self.log_path = log_path
        self.args = args
        self.host = "127.0.0.1"
        self.port = 0
        # Set by a test that ends the process itself, such as a SIGKILL crash test.
        self.expect_exit = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: re.Pattern, timeout: float = 5.0) -> re.Match:
        """Wait until the log contains a line that matches pattern, and return the match."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.log_text())
            if match is not None:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"coremq log has no line matching {pattern.pattern!r} after {timeout} s"
                )
            time.sleep(0.05)

    def listeners(self) -> list[Listener]:
        """Return every listener that the log names, in start-up order."""
        return [
            Listener(match.group(1), match.group(2), int(match.group(3)), match.group(4))
            for match in ANY_LISTENING_LINE.finditer(self.log_text())
        ]

    def listener(self, protocol: str) -> Listener:
        """Return the first listener of protocol (tcp, tls, ws or wss); fail if there is none."""
        for listener in self.listeners():
            if listener.protocol == protocol:
                return listener
        raise AssertionError(
            f"coremq log has no `listening protocol={protocol}` line; started with "
            f"{' '.join(self.args)}"
        )

    def client_shards(self) -> dict[str, int]:
        """Parse the owner shard of each client id from the `connected` log lines."""
        return {
            match.group(1): int(match.group(2))
            for match in CONNECTED_LINE.finditer(self.log_text())
        }

    def wait_for_client_shards(self, client_ids: list[str], timeout: float = 5.0) -> dict[str, int]:
        """Wait until the log names the owner shard of every client id in client_ids."""
        deadline = time.monotonic() + timeout
        while True:
            shards = self.client_shards()
            missing = [client_id for client_id in client_ids if client_id not in shards]
            if not missing:
                return {client_id: shards[client_id] for client_id in client_ids}
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"coremq log has no `connected client_id=... shard=N` line for {missing}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Send SIGTERM to the broker's pid, then SIGKILL if it has not exited in time."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)


def find_coremq_binary() -> Path:
    """Return the coremq binary path, or fail the test with the command that builds it."""
    candidates = []
    if os.environ.get("COREMQ_BIN"):
        candidates.append(Path(os.environ["COREMQ_BIN"]))
    else:
        if os.environ.get("CARGO_TARGET_DIR"):
            candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "coremq")
        candidates.append(REPO_ROOT / "target" / "debug" / "coremq")

    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate

    searched = ", ".join(str(candidate) for candidate in candidates)
    pytest.fail(
        f"coremq binary not found (searched {searched}): run `cargo build -p coremq` "
        "or set COREMQ_BIN",
        pytrace=False,
    )


def tail(text: str, max_lines: int = MAX_REPORTED_LOG_LINES) -> str:
    lines = text.splitlines()
    if len(lines) <= max_lines:
        return text
    skipped = len(lines) - max_lines
    return f"[{skipped} earlier lines omitted]\n" + "\n".join(lines[-max_lines:])


def start_broker(binary: Path, extra_args: list[str], log_path: Path, shards: int) -> Broker:
    """Start coremq on 127.0.0.1:0 and wait for the log line that names its port."""
    args = [str(binary), "--listen", "127.0.0.1:0", "--shards", str(shards)]
    if "--storage" not in extra_args and "--data-dir" not in extra_args:
        # Parallel brokers would share ./data; tests that need the store pass their own.
        args += ["--storage", "memory"]
    args += extra_args
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    env.setdefault("NO_COLOR", "1")

    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    broker = Broker(process, log_path, args)

    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while True:
        match = LISTENING_LINE.search(broker.log_text())
        if match is not None:
            broker.host = match.group(1)
            broker.port = int(match.group(2))
            return broker

        exit_code = process.poll()
        if exit_code is not None:
            pytest.fail(
                f"coremq exited with code {exit_code} before it listened: {' '.join(args)}\n"
                f"--- coremq log ---\n{tail(broker.log_text())}",
                pytrace=False,
            )
        if time.monotonic() > deadline:
            broker.stop()
            pytest.fail(
                f"coremq logged no `listening protocol=tcp addr=...` line within "
                f"{STARTUP_TIMEOUT_SECONDS} s: {' '.join(args)}\n"
                f"--- coremq log ---\n{tail(broker.log_text())}",
                pytrace=False,
            )
        time.sleep(0.05)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed:
        for broker in item.stash.get(BROKERS_KEY, []):
            title = f"coremq log (pid {broker.pid}, port {broker.port}, {report.when})"
            report.sections.append((title, tail(broker.log_text())))
    return report


@pytest.fixture(scope="session")
def coremq_binary() -> Path:
    return find_coremq_binary()


@pytest.fixture
def broker_factory(
    request: pytest.FixtureRequest, tmp_path: Path, coremq_binary: Path
) -> Iterator[Callable[..., Broker]]:
    """Start brokers with extra command-line arguments, e.g. `broker_factory("--receive-maximum", "10")`."""
    brokers: list[Broker] = []
    request.node.stash[BROKERS_KEY] = brokers

    def start(*extra_args: str, shards: int = 2) -> Broker:
        log_path = tmp_path / f"coremq-{len(brokers)}.log"
        broker = start_broker(coremq_binary, list(extra_args), log_path, shards)
        brokers.append(broker)
        return broker

    yield start

    # A broker that exited before teardown has crashed, and the test must not pass.
    crashed = [(broker, broker.process.poll()) for broker in brokers if not broker.expect_exit]
    for broker in brokers:
        broker.stop()
    for broker, exit_code in crashed:
        if exit_code is not None:
            pytest.fail(
                f"coremq (pid {broker.pid}) exited with code {exit_code} during the test\n"
                f"--- coremq log ---\n{tail(broker.log_text())}",
                pytrace=False,
            )


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    """A coremq broker with default settings and 2 shards."""
    return broker_factory()


@pytest.fixture
def mosquitto() -> Iterator[MosquittoTools]:
    """The mosquitto_pub and mosquitto_sub tools. The test fails if they or stdbuf are missing."""
    packages = {
        "mosquitto_pub": "mosquitto-clients",
        "mosquitto_sub": "mosquitto-clients",
        "stdbuf": "coreutils",
    }
    paths = {}
    for tool, package in packages.items():
        path = shutil.which(tool)
        if path is None:
            pytest.fail(
                f"{tool} not found on PATH: install the Debian package {package}",
                pytrace=False,
            )
        paths[tool] = path

    tools = MosquittoTools(paths["mosquitto_pub"], paths["mosquitto_sub"], paths["stdbuf"])
    yield tools
    tools.stop_all()


@pytest.fixture
def mqtt() -> Iterator[Callable[..., "MqttClient"]]:  # noqa: F821
    """Create paho clients that are closed when the test ends: `mqtt(broker, "id", version)`.

    The first argument may also be a `Listener`; keyword arguments such as `transport` and
    `tls_context` go to `MqttClient`.
    """
    try:
        from mqtt_clients import MqttClient
    except ImportError as error:
        pytest.fail(str(error), pytrace=False)

    clients: list[MqttClient] = []

    def create(
        broker: Broker | Listener, client_id: str, version: int = 5, **options
    ) -> MqttClient:
        client = MqttClient(broker.host, broker.port, client_id, version, **options)
        clients.append(client)
        return client

    yield create

    for client in clients:
        client.close()
