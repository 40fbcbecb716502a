#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (unit, e2e; cuda tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cd build
ctest --output-on-failure -j"$(nproc)" --timeout 900 "$@"
