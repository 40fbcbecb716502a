#!/usr/bin/env bash
# gpu_check.sh: on the GPU machine, in a copy of this repository with the archive that
# scripts/gpu_pack.sh made here: unpacks it, puts the binary where the tests look for it, runs
# every test program it holds, and prints one line per program. Exit status 1 when a test
# failed. Then, with --bench, runs perf/device_choice_bench.sh with the arguments after it;
# --no-tests skips the tests (a second bench in the same call); --cuda-bench "ARGS" runs the
# packed perf/cuda_bench with ARGS first (say "--contention /mnt/ram").
#
# Usage: scripts/gpu_check.sh [--pack FILE] [--no-tests] [--cuda-bench ARGS] [--bench BENCH_ARGS...]
# Example (the device tool's command, carrying .dev):
#   scripts/gpu_check.sh --bench --cores 16 --runs 5
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=.dev/gpu_pack.tar.xz
[ "${1:-}" = --pack ] && { PACK=$2; shift 2; }
TESTS=1
[ "${1:-}" = --no-tests ] && { TESTS=0; shift; }
CUDA_BENCH=""
[ "${1:-}" = --cuda-bench ] && { CUDA_BENCH=$2; shift 2; }
D=$(mktemp -d /tmp/gpu_check.XXXXXX) && trap 'rm -rf "$D"' EXIT
tar -C "$D" -xJf "$PACK" || exit 1
export LD_LIBRARY_PATH="$D/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The tests run the binary by the path it had where it was built.
src=$(cat "$D/source_dir") build=$(cat "$D/build_dir")
if [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"; fi
mkdir -p "$src/$build" && cp "$D/bin/shardshift" "$src/$build/shardshift"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L | head -4; else echo "no nvidia-smi: the CUDA tests will skip"; fi
echo "cores: $(nproc), $(date -u '+%F %T') UTC"
failed=0
for t in "$D"/bin/*_test; do
  [ $TESTS = 1 ] || break
  log=$("$t" 2>&1); rc=$?
  printf '%-24s %s\n' "$(basename "$t")" \
    "$(echo "$log" | grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ tests?[,.]' | sed 's/, listed below://' | tr '\n' ' ')"
  [ $rc -ne 0 ] && { failed=1; echo "$log" | grep -E '^\[  FAILED|Failure' | head -20; }
done
if [ -n "$CUDA_BENCH" ]; then
  for dir in $CUDA_BENCH; do # a directory it names must exist, in RAM as the benches want
    case "$dir" in /mnt/*) mkdir -p "$dir"
      [ "$(stat -f -c %T "$dir")" = tmpfs ] || mount -t tmpfs -o size=100g tmpfs "$dir" ;; esac
  done
  # shellcheck disable=SC2086 # ARGS are words
  "$D/bin/cuda_bench" $CUDA_BENCH || failed=1
fi
if [ "${1:-}" = --bench ]; then
  shift
  perf/device_choice_bench.sh --bin "$src/$build/shardshift" "$@"
fi
exit $failed
