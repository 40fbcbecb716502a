#!/usr/bin/env bash
# Builds the tests whose own threads share shardshift's objects (std::thread, not oneTBB tasks)
# with ThreadSanitizer into build-tsan/ (GCC, CUDA, MPI and perf off) and runs them: the lanes
# cutting one file at once (Emitter, FileQueue), threads filling one file (ShardWriter), the
# stream writer, the mapping's release and guard, the profiler and the GPU handle's opener.
# A report fails the run. scripts/test.sh runs this after scripts/sanitize.sh.
# Usage: scripts/tsan.sh   (after scripts/setup.sh has installed the packages)
#
# Why only these: Debian's libtbb is not built with ThreadSanitizer, so TSan cannot see the
# ordering oneTBB's scheduler gives (a task's writes before the tasks it spawns or joins) and
# reports every pipeline hand-off as a race. scripts/tsan_tbb.supp therefore drops every report
# with a oneTBB frame in either stack; what is left is what threads of our own do, and these
# tests are the ones that run such threads. Also left out: the SIGBUS death test (TSan takes the
# signal for its own crash) and gpu_wait_test (oneTBB's suspended tasks switch stacks, which
# TSan cannot follow).
set -euo pipefail
cd "$(dirname "$0")/.."
TESTS=(shard_writer_test shard_writer_stream_test mapped_file_test profiler_test gpu_handle_test
       convert_writers_test)
cmake -S . -B build-tsan -DSHARDSHIFT_CUDA=OFF -DSHARDSHIFT_PERF=OFF -DSHARDSHIFT_MPI=OFF \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS="-fsanitize=thread" \
      -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" >/dev/null
cmake --build build-tsan -j"$(nproc)" --target "${TESTS[@]}"
export TSAN_OPTIONS="halt_on_error=1:abort_on_error=0:exitcode=66:suppressions=$PWD/scripts/tsan_tbb.supp"
failed=0
for t in "${TESTS[@]}"; do
  filter='*'
  case $t in
  mapped_file_test) filter='-GuardMappedAccessDeathTest.*' ;;
  convert_writers_test) filter='SeveralFilesTest.LanesCutting*:SeveralFilesTest.ALane*' ;;
  esac
  # Without address-space randomization: GCC 12's TSan stops with "unexpected memory mapping"
  # on kernels that randomize more bits than it expects.
  if setarch "$(uname -m)" -R build-tsan/tests/$t --gtest_filter="$filter" --gtest_brief=1 \
    >build-tsan/$t.log 2>&1; then
    echo "tsan: $t: $(grep -E '^\[  PASSED' build-tsan/$t.log)"
  else
    echo "tsan: $t FAILED:"; tail -60 build-tsan/$t.log; failed=1
  fi
done
exit $failed
