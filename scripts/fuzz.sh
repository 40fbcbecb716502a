#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ into build-fuzz/ (clang, ASan and UBSan, CUDA off) and runs
# each for a bounded time, as many at once as there are cores, on a scratch copy of its seed corpus
# (fuzz/corpus/ is never modified). Prints one line per target; fails when any target finds a
# crash, a sanitizer report, a leak or an input slower than 20 s, and keeps that input in
# build-fuzz/artifacts/ with the command that replays it.
# Usage: scripts/fuzz.sh [seconds-per-target [target...]]   (default: 60 s, every target)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(header_fuzz index_fuzz config_fuzz planner_fuzz)

CC=clang CXX=clang++ cmake -S . -B build-fuzz -DSHARDSHIFT_FUZZ=ON -DSHARDSHIFT_CUDA=OFF \
  -DSHARDSHIFT_TESTS=OFF -DSHARDSHIFT_PERF=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz

export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
work=$(mktemp -d "${TMPDIR:-/tmp}/shardshift-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
artifacts=$PWD/build-fuzz/artifacts
mkdir -p "$artifacts"

run_target() {
  local t=$1 dict=fuzz/dict/json.dict
  [ "$t" = planner_fuzz ] && dict=fuzz/dict/planner.dict
  mkdir -p "$work/$t"
  cp fuzz/corpus/"$t"/* "$work/$t/"
  build-fuzz/fuzz/"$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
    -dict="$dict" -artifact_prefix="$artifacts/$t-" -print_final_stats=1 \
    "$work/$t" >"$work/$t.log" 2>&1
}

declare -A pid_of
for t in "${targets[@]}"; do
  [ -x build-fuzz/fuzz/"$t" ] || { echo "fuzz: no target $t" >&2; exit 2; }
  while [ "$(jobs -rp | wc -l)" -ge "$(nproc)" ]; do wait -n || true; done
  run_target "$t" &
  pid_of[$t]=$!
done

failed=0
for t in "${targets[@]}"; do
  rc=0
  wait "${pid_of[$t]}" || rc=$?
  log=$work/$t.log
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(ls "$work/$t" | wc -l)
  if [ "$rc" -eq 0 ]; then
    printf 'fuzz: %-13s %9s runs in %4s s, coverage %5s, corpus %s -> %s inputs\n' \
      "$t" "${runs:-?}" "${secs:-?}" "${cov:-?}" "$(ls fuzz/corpus/"$t" | wc -l)" "$corpus"
  else
    failed=1
    echo "fuzz: $t FAILED (exit $rc); the end of its log:"
    grep -v '^#' "$log" | tail -n 40 | sed 's/^/  /'
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    [ -n "$artifact" ] && echo "  replay: build-fuzz/fuzz/$t $artifact"
  fi
done
exit $failed
