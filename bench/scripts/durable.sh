#!/bin/sh
# Measures persistent QoS 1 delivery: CoreMQ on RocksDB with fsync group
# commit, CoreMQ on RocksDB without fsync, CoreMQ in memory, and Mosquitto
# with `persistence true`. Each broker runs alone, pinned to CPU 0, with the
# bench on CPU 1. Beside publish-to-delivery latency, each summary line
# shows the publish-to-PUBACK p99. For CoreMQ on RocksDB that includes the
# log write, and its fsync with `--durability fsync`. Besides the bench's
# figures it reads the broker's
# /proc/PID/io write_bytes before and after the run, for disk bytes written
# per delivered message.
#
# Usage: bench/scripts/durable.sh OUT_DIR
# Needs: release builds of coremq and coremq-bench (or COREMQ_BIN and
# BENCH_BIN), Debian's mosquitto, util-linux (taskset) and python3.
set -eu

out_dir=${1:?usage: durable.sh OUT_DIR}
target_dir=${CARGO_TARGET_DIR:-target}
bench=${BENCH_BIN:-$target_dir/release/coremq-bench}
coremq=${COREMQ_BIN:-$target_dir/release/coremq}
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
duration=${DURATION:-10}
# 50 publisher/subscriber pairs, each subscriber with a persistent session,
# so that many publishers share each group commit.
scenario=${SCENARIO:-p2p -N 50}
port=18830

mkdir -p "$out_dir"

wait_for_port() {
    for _ in $(seq 1 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" \
            2>/dev/null && return 0
        sleep 0.1
    done
    echo "broker did not listen on 127.0.0.1:$port" >&2
    return 1
}

write_bytes() {
    awk '/^write_bytes:/ { print $2 }' "/proc/$1/io"
}

run() {
    name=$1
    shift
    rm -rf "$out_dir/$name.data"
    mkdir -p "$out_dir/$name.data"
    taskset -c 0 "$@" >"$out_dir/$name.log" 2>&1 &
    pid=$!
    wait_for_port
    before=$(write_bytes "$pid")
    taskset -c 1 "$bench" $scenario -q 1 --port "$port" --broker-pid "$pid" --cpus 1 \
        --protocol 311 --duration "$duration" --warmup 2 --quiet \
        --json "$out_dir/$name.json" >"$out_dir/$name.txt" 2>"$out_dir/$name.err" ||
        echo "   $name: bench exit status $?" >&2
    after=$(write_bytes "$pid")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    python3 - "$out_dir/$name.json" "$before" "$after" "$name" <<'EOF'
import json, sys
path, before, after, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
report = json.load(open(path))
# write_bytes covers warm-up and drain too, so divide by every message sent.
sent = report["sent"]["msgs"] or 1
delivered = report["delivered"]
latency = report.get("latency") or {}
ack = report.get("ack_latency")
if ack is None:
    sys.exit(f"no ack_latency in {path}: this coremq-bench does not time acks; rebuild it")
broker = report.get("broker_process") or {}
print(
    f"{name:16} delivered/s {delivered['msgs_per_sec']:>10,.0f}"
    f"  p50 {latency.get('p50_us', 0) / 1000:7.2f} ms"
    f"  p99 {latency.get('p99_us', 0) / 1000:7.2f} ms"
    f"  PUBACK p99 {ack['p99_us'] / 1000:7.2f} ms"
    f"  CPU-s/M {broker.get('cpu_secs_per_million_delivered') or 0:7.2f}"
    f"  disk bytes/msg (all run) {(after - before) / sent:8.1f}"
)
EOF
}

data=$out_dir
run coremq-fsync "$coremq" --listen "127.0.0.1:$port" --shards 1 \
    --data-dir "$data/coremq-fsync.data" --durability fsync
run coremq-nofsync "$coremq" --listen "127.0.0.1:$port" --shards 1 \
    --data-dir "$data/coremq-nofsync.data" --durability none
run coremq-memory "$coremq" --listen "127.0.0.1:$port" --shards 1 --storage memory
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n' \
    "$port" "$data/mosquitto.data" >"$out_dir/mosquitto.conf"
run mosquitto "$mosquitto" -c "$out_dir/mosquitto.conf"
