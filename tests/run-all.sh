#!/usr/bin/env bash
# Installs what the tests need, starts the servers they use, builds
# CoreMQ and runs every test: Rust unit and black-box tests, then the
# Python suite with paho-mqtt and the mosquitto command-line clients.
#
# Works as root on a fresh Debian machine that has only Rust; run it again
# and it skips what is already installed or running.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

apt_packages=(clang libclang-dev mosquitto mosquitto-clients mariadb-server redis-server python3-pip
    chromium chromium-driver)
missing=()
for package in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Node.js and npm for the browser test, from Debian unless a Node.js with npm
# (such as a NodeSource build, which conflicts with Debian's npm) is there.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "installing Debian packages: nodejs npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nodejs npm >/dev/null
fi

# Debian's own Python marks itself externally managed (PEP 668); the test
# clients go into it anyway, as this script runs on a test machine.
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q -r tests/python/requirements.txt

# MariaDB and Redis on loopback for the storage backends' tests.
eval "$(bash tests/services.sh)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
cargo build --workspace --all-targets --all-features
export COREMQ_BIN="$CARGO_TARGET_DIR/debug/coremq"

cargo test --workspace --all-features

# The codec's fuzz target: built and run briefly so that it keeps compiling
# and the decoder meets a few million inputs on every run.
# RUSTC_BOOTSTRAP=1 lets the stable toolchain take cargo-fuzz's -Z flags.
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked
(cd broker/codec && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none decode -- -max_total_time=20)

# MQTT.js and playwright-core for the browser test, which pytest runs.
(cd tests/browser && npm ci --no-audit --no-fund)

python3 -m pytest -q tests/python
