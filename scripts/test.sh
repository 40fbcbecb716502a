#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (unit, e2e; cuda tests skip without a GPU); then
# the unit and e2e tests again under ASan and UBSan (scripts/sanitize.sh, build-asan/), the tests
# that run threads of their own under ThreadSanitizer (scripts/tsan.sh, build-tsan/), and every
# fuzz target for SHARDSHIFT_FUZZ_SECONDS each (default 60; scripts/fuzz.sh, build-fuzz/).
# SHARDSHIFT_QUICK=1 stops after the first part. Arguments go to the first ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
(cd build && ctest --output-on-failure -j"$(nproc)" --timeout 900 "$@")
[ "${SHARDSHIFT_QUICK:-0}" = 1 ] && exit 0
scripts/sanitize.sh
scripts/tsan.sh
scripts/fuzz.sh "${SHARDSHIFT_FUZZ_SECONDS:-60}"
