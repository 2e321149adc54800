#!/bin/sh
# Runs the loads of bench/RESULTS.md against CoreMQ, Mosquitto and, when
# it is on PATH (or RUMQTTD_BIN names it), rumqttd, with `coremq-bench
# compare`: each broker pinned to CPU 0 (CPUs 0-1 for two shards), the
# bench to CPU 1. Writes one JSON and one text file per load into OUT_DIR.
#
# Usage: bench/scripts/targets.sh OUT_DIR [SHARDS]
# Needs: target/release/coremq-bench and coremq (or COREMQ_BIN), Debian's
# mosquitto and util-linux (taskset) packages. rumqttd 0.20 comes from
# `cargo install rumqttd --version 0.20.0`. It rejects clients without a
# Keep Alive, so every client here sends one of 60 s.
set -eu

out_dir=${1:?usage: targets.sh OUT_DIR [SHARDS]}
shards=${2:-1}
target_dir=${CARGO_TARGET_DIR:-target}
bench=${BENCH_BIN:-$target_dir/release/coremq-bench}
coremq=${COREMQ_BIN:-$target_dir/release/coremq}
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
rumqttd=${RUMQTTD_BIN:-$(command -v rumqttd || true)}
duration=${DURATION:-10}

if [ "$shards" = 1 ]; then broker_cpus=0; else broker_cpus=0-$((shards - 1)); fi
mkdir -p "$out_dir"

# Mosquitto writes its config into the scratch folder first, so the command
# carries its own `exec`.
mosquitto_cmd="mosquitto=printf 'listener {port} 127.0.0.1\\nallow_anonymous true\\npersistence false\\n' > {dir}/m.conf; exec $mosquitto -c {dir}/m.conf"
coremq_cmd="coremq=$coremq --listen 127.0.0.1:{port} --shards $shards --storage memory"
# rumqttd serves MQTT 3.1.1 on a [v4.*] listener. Its router keeps up to
# max_segment_size * max_segment_count bytes of messages a subscriber has
# not read yet, so its RSS grows with a fast publisher.
rumqttd_cmd="rumqttd=printf 'id = 0\n[router]\nid = 0\nmax_connections = 100010\nmax_outgoing_packet_count = 200\nmax_segment_size = 104857600\nmax_segment_count = 10\n[v4.1]\nname = \"v4-1\"\nlisten = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 1\n[v4.1.connections]\nconnection_timeout_ms = 60000\nmax_payload_size = 1048576\nmax_inflight_count = 100\n' > {dir}/r.toml; exec $rumqttd --quiet --config {dir}/r.toml"

run() {
    name=$1
    scenario=$2
    echo "== $name: $scenario" >&2
    "$bench" compare --broker-cpus "$broker_cpus" \
        --scenario "$scenario --cpus 1 --protocol 311 --keep-alive 60 --duration $duration --warmup 2 --quiet" \
        --json "$out_dir/$name.json" -- "$coremq_cmd" "$mosquitto_cmd" ${rumqttd:+"$rumqttd_cmd"} \
        > "$out_dir/$name.txt" 2> "$out_dir/$name.err" || echo "   exit status $?" >&2
}

run fanout-100 "fanout -S 100"
run fanout-1000 "fanout -S 1000"
run fanout-100-rate "fanout -S 100 --rate 1000"
run fanin-1000 "fanin -P 1000 -S 1 --rate 100"
run fanin-1000-max "fanin -P 1000 -S 1"
run p2p-500 "p2p -N 500"
run fanout-100-qos1 "fanout -S 100 -q 1"
run idle-15000 "idle -N 15000 -C 256 --source-addrs 127.0.0.1-127.0.0.4"
