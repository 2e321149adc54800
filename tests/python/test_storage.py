"""Each storage backend behind a real broker: sessions, queued QoS 1/2 messages and retained
messages survive a SIGKILL and a restart on RocksDB, MariaDB and Redis.

MariaDB and Redis are the servers that tests/services.sh starts on loopback; it prints the
COREMQ_TEST_MYSQL_URL and COREMQ_TEST_REDIS_URL that these tests read.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest

BACKENDS = ["rocksdb", "mysql", "redis"]

URL_VARIABLES = {
    "mysql": ("COREMQ_TEST_MYSQL_URL", "mariadb-server"),
    "redis": ("COREMQ_TEST_REDIS_URL", "redis-server"),
}


def storage_args(backend: str, tmp_path) -> list[str]:
    """Command-line options that put the broker's data in `backend`."""
    if backend == "rocksdb":
        return ["--storage", "rocksdb", "--data-dir", str(tmp_path / "data")]
    variable, package = URL_VARIABLES[backend]
    url = os.environ.get(variable)
    if not url:
        pytest.fail(
            f"{variable} is not set: run `eval \"$(bash tests/services.sh)\"`, which installs "
            f"the Debian package {package} and starts the server on loopback",
            pytrace=False,
        )
    return ["--storage", backend, "--storage-url", url]


def kill(broker) -> None:
    """End the broker with SIGKILL, as a crash would, and reap it."""
    os.kill(broker.pid, signal.SIGKILL)
    broker.process.wait(timeout=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_session_survives_kill(broker_factory, mqtt, tmp_path, backend):
    # Fresh names, so records that an earlier run left in a shared server do not interfere.
    run = uuid.uuid4().hex[:8]
    topic = f"store/{run}/t"
    args = storage_args(backend, tmp_path)
    broker = broker_factory(*args)
    subscriber = mqtt(broker, f"sub-{run}")
    subscriber.connect(clean_start=True, session_expiry=600)
    subscriber.subscribe(topic, qos=2)
    subscriber.disconnect()
    publisher = mqtt(broker, f"pub-{run}")
    publisher.connect()
    for index in range(20):
        qos = 1 if index % 2 == 0 else 2
        publisher.publish(topic, f"m{index}", qos=qos)
    publisher.close()

    kill(broker)
    broker = broker_factory(*args)

    subscriber = mqtt(broker, f"sub-{run}")
    connack = subscriber.connect(clean_start=False, session_expiry=600)
    assert connack.session_present is True
    messages = subscriber.collect(20)
    assert [message.payload.decode() for message in messages] == [f"m{i}" for i in range(20)]
    assert subscriber.collect_for(1.0) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_retained_survives_kill(broker_factory, mqtt, tmp_path, backend):
    run = uuid.uuid4().hex[:8]
    args = storage_args(backend, tmp_path)
    broker = broker_factory(*args)
    publisher = mqtt(broker, f"retainer-{run}")
    publisher.connect()
    publisher.publish(f"kept/{run}/a", "alpha", qos=1, retain=True)
    publisher.publish(f"kept/{run}/b", "beta", qos=1, retain=True)
    publisher.publish(f"kept/{run}/b", "", qos=1, retain=True)
    publisher.close()

    kill(broker)
    broker = broker_factory(*args)

    reader = mqtt(broker, f"reader-{run}")
    reader.connect()
    reader.subscribe(f"kept/{run}/#", qos=1)
    messages = reader.collect_for(1.5)
    assert [(message.topic, message.payload) for message in messages] == [
        (f"kept/{run}/a", b"alpha")
    ]
    assert messages[0].retain is True
