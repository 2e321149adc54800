"""Private Redis and MariaDB servers for tests that stop and restart them.

Each server runs from the test's own temporary folder on a free loopback port, so a test
may kill it without touching the shared servers that tests/services.sh starts. A missing
server binary fails the test with the name of the Debian package that provides it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

# Seconds to wait for a server to accept requests after it starts, and to exit after a
# signal. The bounds only catch a server that hangs.
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0

# Debian's server binaries live in sbin folders, which a non-root PATH often lacks.
SBIN_FOLDERS = ("/usr/sbin", "/usr/local/sbin", "/sbin")

MYSQL_DATABASE = "coremq_outage"
MYSQL_USER = "coremq"
MYSQL_PASSWORD = "coremq"


def find_binary(name: str, package: str) -> str:
    """Return the path of name from PATH or an sbin folder, or fail naming the package."""
    path = shutil.which(name)
    if path is None:
        path = shutil.which(name, path=os.pathsep.join(SBIN_FOLDERS))
    if path is None:
        pytest.fail(
            f"{name} not found on PATH or in {', '.join(SBIN_FOLDERS)}: install the Debian "
            f"package {package}",
            pytrace=False,
        )
    return path


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """One server process that the test starts, signals and restarts by its pid."""

    name = "server"

    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.output_path = directory / "output.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def log_text(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def start(self) -> None:
        """Start the server and wait until it accepts requests."""
        assert self.process is None or self.process.poll() is not None, f"{self.name} is running"
        with open(self.output_path, "ab") as output:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.is_ready():
            exit_code = self.process.poll()
            if exit_code is not None:
                raise AssertionError(
                    f"{self.name} exited with code {exit_code} at start:\n{self.log_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not answer within {START_TIMEOUT_SECONDS} s:\n"
                    f"{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)

    def signal_and_wait(self, signum: int) -> None:
        """Send signum to the server's pid and wait until the process has exited."""
        is_running = self.process is not None and self.process.poll() is None
        assert is_running, f"{self.name} is not running"
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running {STOP_TIMEOUT_SECONDS} s after signal {signum}"
            ) from None

    def kill(self) -> None:
        """End the server with SIGKILL if it runs, at test teardown."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)


class RedisServer(ServerProcess):
    """redis-server with an append-only file fsynced on every write, so that data survives a
    SIGKILL, as the broker's fsync durability expects."""

    name = "redis-server"

    def __init__(self, directory: Path):
        super().__init__(directory)
        self.binary = find_binary("redis-server", "redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class MariadbServer(ServerProcess):
    """mariadbd with its own data folder, socket and port, and the database and user that
    the broker's MySQL URL names. InnoDB flushes its log at each commit."""

    name = "mariadbd"

    def __init__(self, directory: Path):
        super().__init__(directory)
        self.binary = find_binary("mariadbd", "mariadb-server")
        self.install_binary = find_binary("mariadb-install-db", "mariadb-server")
        self.client_binary = find_binary("mariadb", "mariadb-client")
        self.admin_binary = find_binary("mariadb-admin", "mariadb-client")
        self.data_dir = directory / "data"
        # A Unix socket path may hold at most 107 bytes; pytest's tmp_path can be longer.
        self.socket_path = Path(f"/tmp/coremq-outage-{os.getpid()}-{self.port}.sock")
        # mariadbd rejects running as root without --user=root.
        self.user_args = ["--user=root"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"mysql://{MYSQL_USER}:{MYSQL_PASSWORD}@127.0.0.1:{self.port}/{MYSQL_DATABASE}"

    def install(self) -> None:
        """Create the data folder with mariadb-install-db."""
        result = subprocess.run(
            [
                self.install_binary,
                "--no-defaults",
                *self.user_args,
                f"--datadir={self.data_dir}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"mariadb-install-db failed:\n{result.stdout}{result.stderr}"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--no-defaults",
            *self.user_args,
            f"--datadir={self.data_dir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.directory / 'mariadbd.pid'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--innodb-flush-log-at-trx-commit=1",
            "--innodb-buffer-pool-size=32M",
            f"--log-error={self.directory / 'error.log'}",
        ]

    def log_text(self) -> str:
        error_log = self.directory / "error.log"
        text = super().log_text()
        if error_log.exists():
            text += error_log.read_text(errors="replace")
        return text

    def is_ready(self) -> bool:
        result = subprocess.run(
            [
                self.admin_binary,
                "--no-defaults",
                f"--socket={self.socket_path}",
                "--user=root",
                "--connect-timeout=1",
                "ping",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    def create_database(self) -> None:
        """Create the database and the user of `url`, allowed from 127.0.0.1."""
        sql = (
            f"CREATE DATABASE IF NOT EXISTS {MYSQL_DATABASE};"
            f"CREATE USER IF NOT EXISTS '{MYSQL_USER}'@'127.0.0.1' "
            f"IDENTIFIED BY '{MYSQL_PASSWORD}';"
            f"GRANT ALL PRIVILEGES ON {MYSQL_DATABASE}.* TO '{MYSQL_USER}'@'127.0.0.1';"
        )
        result = subprocess.run(
            [self.client_binary, "--no-defaults", f"--socket={self.socket_path}", "--user=root"],
            input=sql,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"creating the test database failed: {result.stderr}"

    def kill(self) -> None:
        super().kill()
        self.socket_path.unlink(missing_ok=True)
