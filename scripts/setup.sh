#!/usr/bin/env bash
# Installs the Debian 12 packages shardshift builds with (when missing) and builds it into build/.
# Usage: scripts/setup.sh [extra cmake args...]   (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake pkg-config libsimdjson-dev libtbb-dev libboost-program-options-dev
          libboost-iostreams-dev libgtest-dev libgmock-dev libbenchmark-dev libssl-dev libpcre2-dev
          xfsprogs help2man file
          python3 # a test reads a failed tar stream with Python's tarfile (tests/tar_target_test.cpp)
          awscli rclone # the uploaders of the S3 tests (tests/s3)
          openmpi-bin libopenmpi-dev # mpirun and MPI, for jobs of several ranks (src/mpi_coordinator.cpp)
          clang libclang-rt-14-dev) # libFuzzer and clang's sanitizers (scripts/fuzz.sh)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm for the S3 tests' server (any Node.js with npm will do, e.g. NodeSource's)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The S3 tests' server, s3rver (version pinned by tests/s3/package-lock.json), into
# tests/s3/node_modules. Without the npm registry the S3 tests skip; nothing else needs it.
if [ ! tests/s3/node_modules/.package-lock.json -nt tests/s3/package-lock.json ]; then
  (cd tests/s3 && npm ci --no-audit --no-fund --fetch-retries=1 --loglevel=error >/dev/null) ||
    echo "setup: npm ci in tests/s3 failed: the S3 tests will be skipped" >&2
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)"
