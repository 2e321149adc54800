#!/usr/bin/env bash
# Installs the Debian packages CoreMQ needs to build: a C toolchain and
# clang/libclang for the RocksDB bindings. Run as root, or with sudo
# available; skips packages already installed.
set -euo pipefail

packages=(build-essential clang libclang-dev pkg-config)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
