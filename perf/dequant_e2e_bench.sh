#!/usr/bin/env bash
# dequant_e2e_bench.sh: DeepSeek-V3 FP8 -> BF16 end to end, --device cpu against --device cuda
# (and auto) at C cores, the CPU kernel at its best SIMD level and capped at AVX2
# (docs/PERFORMANCE.md, "FP8 dequantization on the GPU").
#
# Usage: perf/dequant_e2e_bench.sh [BIN [SCRATCH [DEST]]]
#   BIN      the shardshift binary (default build/shardshift)
#   SCRATCH  where the input is made once (default /var/tmp/ds): real dimensions, 3 dense and
#            2 MoE layers of 64 experts, 11 GB of FP8
#   DEST     output directory, on the storage to measure (default /mnt/ram/out: mount a tmpfs)
# Each line: cores, device, wall seconds and peak RSS (/usr/bin/time), and the summary's rate and
# device. Runs alternate their order between the two rounds.
set -uo pipefail
B=${1:-build/shardshift}
IN=${2:-/var/tmp/ds}
OUT=${3:-/mnt/ram/out}
[ -d "$IN" ] || "$B" synth "$IN" --model deepseek_v3 --layers 5 --scale-experts 4 --mtp-layers 0 \
  --max-shard-size 2GB -q || exit 1
cat "$IN"/* >/dev/null # page cache: the runs measure conversion, not the input disk
run() { # cores device
  rm -rf "$OUT"
  /usr/bin/time -f "%e s %M KB" taskset -c "0-$(($1 - 1))" "$B" convert "$IN" "$OUT" --no-sync \
    -j "$1" --device "$2" >/dev/null 2>/tmp/dequant_e2e.err
  echo "SIMD=${SHARDSHIFT_SIMD:-best} cores=$1 device=$2: $(tail -1 /tmp/dequant_e2e.err) |" \
    "$(grep -o 'in [0-9.]*s ([0-9.]* [GM]B/s).*on [^;]*' /tmp/dequant_e2e.err | head -1)"
}
for simd in best avx2; do
  if [ "$simd" = avx2 ]; then export SHARDSHIFT_SIMD=avx2; else unset SHARDSHIFT_SIMD; fi
  for rep in 1 2; do
    for c in 2 4 16; do
      if [ "$rep" = 1 ]; then run "$c" cpu; run "$c" cuda; else run "$c" cuda; run "$c" cpu; fi
      run "$c" auto
    done
  done
done
rm -rf "$OUT"
