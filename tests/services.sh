#!/usr/bin/env bash
# Starts the MariaDB and Redis servers that the coremq-wal conformance tests
# use, on loopback only, with their own data under /tmp/coremq-services.
#
# Usage:
#   eval "$(tests/services.sh)"    # install if missing, start, print exports
#   tests/services.sh stop         # stop the servers this script started
#
# Safe to run again: running servers are reused, and the database and user
# are created only when missing. Runs without systemd, so it works in CI
# containers. Needs root for apt-get when a server package is missing.
# Progress goes to stderr; stdout carries only the export lines.
set -euo pipefail

BASE_DIR=/tmp/coremq-services
MARIADB_DIR=$BASE_DIR/mariadb
REDIS_DIR=$BASE_DIR/redis
MARIADB_PORT=13306
REDIS_PORT=16379
MARIADB_SOCKET=$MARIADB_DIR/mysqld.sock
MARIADB_PID=$MARIADB_DIR/mysqld.pid
REDIS_PID=$REDIS_DIR/redis.pid
TEST_DATABASE=coremq_test
TEST_USER=coremq
TEST_PASSWORD=coremq
# Seconds to wait for a server to answer after starting it.
START_TIMEOUT=60

log() { echo "services.sh: $*" >&2; }

fail() {
    log "error: $*"
    exit 1
}

stop_from_pid_file() {
    local name=$1 pid_file=$2
    if [[ -s $pid_file ]]; then
        local pid
        pid=$(cat "$pid_file")
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping $name (pid $pid)"
            kill "$pid"
            for _ in $(seq 1 "$START_TIMEOUT"); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 1
            done
        fi
        rm -f "$pid_file"
    fi
}

if [[ ${1:-} == stop ]]; then
    stop_from_pid_file redis "$REDIS_PID"
    stop_from_pid_file mariadb "$MARIADB_PID"
    exit 0
fi

install_missing_packages() {
    local missing=()
    command -v mariadbd >/dev/null 2>&1 || missing+=(mariadb-server)
    command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    if ((${#missing[@]} == 0)); then
        return
    fi
    [[ $(id -u) -eq 0 ]] || fail "missing packages ${missing[*]}; run as root or install them"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    # policy-rc.d stops the packages' maintainer scripts from starting the
    # system-wide services, which need systemd or would take the default ports.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
    if ((created_policy)); then
        rm -f "$policy"
    fi
}

mariadb_answers() {
    mariadb-admin --no-defaults --socket="$MARIADB_SOCKET" --user=root \
        --connect-timeout=2 ping >/dev/null 2>&1
}

start_mariadb() {
    if mariadb_answers; then
        log "mariadb already running on 127.0.0.1:$MARIADB_PORT"
        return
    fi
    mkdir -p "$MARIADB_DIR"
    if [[ ! -d $MARIADB_DIR/data/mysql ]]; then
        log "initializing mariadb data directory $MARIADB_DIR/data"
        rm -rf "$MARIADB_DIR/data"
        mariadb-install-db --no-defaults --user=root --datadir="$MARIADB_DIR/data" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$MARIADB_DIR/install.log" 2>&1 ||
            fail "mariadb-install-db failed; see $MARIADB_DIR/install.log"
    fi
    log "starting mariadb on 127.0.0.1:$MARIADB_PORT"
    # --user=root because CI runs as root; mariadbd refuses root otherwise.
    setsid mariadbd --no-defaults --user=root \
        --datadir="$MARIADB_DIR/data" \
        --socket="$MARIADB_SOCKET" \
        --pid-file="$MARIADB_PID" \
        --port="$MARIADB_PORT" \
        --bind-address=127.0.0.1 \
        --skip-name-resolve \
        --innodb-flush-log-at-trx-commit=1 \
        --log-error="$MARIADB_DIR/error.log" \
        </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 "$START_TIMEOUT"); do
        mariadb_answers && return
        sleep 1
    done
    fail "mariadb did not answer within ${START_TIMEOUT}s; see $MARIADB_DIR/error.log"
}

create_test_database() {
    mariadb --no-defaults --socket="$MARIADB_SOCKET" --user=root <<SQL
CREATE DATABASE IF NOT EXISTS $TEST_DATABASE;
CREATE USER IF NOT EXISTS '$TEST_USER'@'127.0.0.1' IDENTIFIED BY '$TEST_PASSWORD';
CREATE USER IF NOT EXISTS '$TEST_USER'@'localhost' IDENTIFIED BY '$TEST_PASSWORD';
GRANT ALL PRIVILEGES ON $TEST_DATABASE.* TO '$TEST_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON $TEST_DATABASE.* TO '$TEST_USER'@'localhost';
SQL
}

redis_answers() {
    [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
}

start_redis() {
    if redis_answers; then
        log "redis already running on 127.0.0.1:$REDIS_PORT"
        return
    fi
    mkdir -p "$REDIS_DIR"
    log "starting redis on 127.0.0.1:$REDIS_PORT"
    # appendfsync always: each write is fsynced before Redis replies, which
    # is what Durability::Fsync promises.
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
        --dir "$REDIS_DIR" --daemonize yes --pidfile "$REDIS_PID" \
        --logfile "$REDIS_DIR/redis.log" \
        --appendonly yes --appendfsync always --save "" >&2
    for _ in $(seq 1 "$START_TIMEOUT"); do
        redis_answers && return
        sleep 1
    done
    fail "redis did not answer within ${START_TIMEOUT}s; see $REDIS_DIR/redis.log"
}

install_missing_packages
start_mariadb
create_test_database
start_redis

echo "export COREMQ_TEST_MYSQL_URL=mysql://$TEST_USER:$TEST_PASSWORD@127.0.0.1:$MARIADB_PORT/$TEST_DATABASE"
echo "export COREMQ_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
