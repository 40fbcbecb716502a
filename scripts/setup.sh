#!/usr/bin/env bash
# Installs the Debian 12 packages shardshift builds with (when missing) and builds it into build/.
# Usage: scripts/setup.sh [extra cmake args...]   (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake pkg-config libsimdjson-dev libtbb-dev libboost-program-options-dev
          libboost-iostreams-dev libgtest-dev libgmock-dev libbenchmark-dev libssl-dev libpcre2-dev
          xfsprogs help2man file)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)"
