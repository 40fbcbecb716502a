#!/usr/bin/env bash
# gpu_pack.sh: packs what the GPU machine needs to test and measure a build made here: the
# shardshift binary, the test programs that exercise the GPU, and the Debian libraries they load
# (that machine has CUDA's driver but none of our packages; the CUDA runtime is linked
# statically), into one compressed archive, small enough to travel with the working tree.
# scripts/gpu_check.sh unpacks and runs it there.
#
# Usage: scripts/gpu_pack.sh [BUILD_DIR [DEST]]   (default build-dev and .dev, which git ignores)
# Example: cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90
#          ninja -C build-dev && scripts/gpu_pack.sh     # then, there: scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-dev} DEST=${2:-.dev}
# The programs with tests that open the GPU (label `cuda`, and those whose tests open it when
# one is there: the GPU handle, the waits, the device choice, the stage, the driver's files and
# the writer lanes that hand chunks to it).
TESTS="cuda_convert_test cuda_dequant_test cuda_transform_test gpu_handle_test gpu_wait_test
       device_choice_test transform_stage_test driver_files_test convert_writers_test"
if ! "$BUILD/shardshift" --version | grep -q '^cuda: on'; then
  echo "gpu_pack.sh: $BUILD/shardshift was built without CUDA (configure with SHARDSHIFT_CUDA=ON)" >&2
  exit 1
fi
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/lib" "$DEST"
cp "$BUILD/shardshift" "$work/bin/"
for t in $TESTS; do cp "$BUILD/tests/$t" "$work/bin/"; done
# The CUDA stage's own benchmark, where it was built (gpu_check.sh --cuda-bench runs it).
[ -x "$BUILD/perf/cuda_bench" ] && cp "$BUILD/perf/cuda_bench" "$work/bin/"
strip "$work"/bin/*
# Every library the programs load, but the C and C++ runtimes the other machine has its own of.
ldd "$work"/bin/* 2>/dev/null | awk '/=> \//{print $3}' | sort -u |
  grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|ld-linux[^/]*|libpthread|libdl|librt)\.so' |
  xargs -r -I{} cp -L {} "$work/lib/"
# The source directory the tests were built in: they find the binary under it.
echo "$PWD" >"$work/source_dir"
echo "$BUILD" >"$work/build_dir"
tar -C "$work" -cJf "$DEST/gpu_pack.tar.xz" bin lib source_dir build_dir
echo "gpu_pack.sh: $DEST/gpu_pack.tar.xz ($(du -h "$DEST/gpu_pack.tar.xz" | cut -f1)): shardshift," \
  "$(echo $TESTS | wc -w) test programs, $(ls "$work/lib" | wc -l) libraries"
