#!/usr/bin/env bash
# ranks_bench.sh: one conversion split over N processes on this machine (--rank R --world-size N,
# -j CORES/N each), against N. Shows what ranks cost on one node (docs/SCALING.md, "Measured").
#
# Usage: perf/ranks_bench.sh [--bin build/shardshift] [--layers 8] [--scratch /var/tmp]
#                            [--dest DIR] [--ranks "1 2 4 8 16"] [--sync]
# One line per case: `dest N=.. -j ..: seconds; files`. The input is synthesized once (real
# dimensions) and read once before the runs, so the page cache holds it.
set -euo pipefail
BIN=build/shardshift; LAYERS=8; SCRATCH=/var/tmp; DEST=""; RANKS="1 2 4 8 16"; SYNC="--no-sync"
while [ $# -gt 0 ]; do
  case "$1" in
  --bin) BIN=$2; shift 2 ;;
  --layers) LAYERS=$2; shift 2 ;;
  --scratch) SCRATCH=$2; shift 2 ;;
  --dest) DEST=$2; shift 2 ;;
  --ranks) RANKS=$2; shift 2 ;;
  --sync) SYNC=""; shift ;;
  *) echo "ranks_bench.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
BIN=$(realpath "$BIN"); DEST=${DEST:-$SCRATCH/ranks-bench-out}; IN=$SCRATCH/ranks-bench-in-$LAYERS
CORES=$(nproc)
mkdir -p "$DEST"
[ -f "$IN/model.safetensors.index.json" ] || "$BIN" synth "$IN" --layers "$LAYERS" --max-shard-size 1GB -q
cat "$IN"/* > /dev/null
echo "# ranks_bench: $LAYERS layers, $CORES cores, dest $DEST ${SYNC:-(fsync)}, $(date -u +%F)"
for n in $RANKS; do
  rm -rf "$DEST/out" "$DEST"/.out.*
  j=$((CORES / n)); [ "$j" -lt 1 ] && j=1
  t0=$(date +%s.%N)
  pids=()
  for r in $(seq 0 $((n - 1))); do
    "$BIN" convert "$IN" "$DEST/out" $SYNC -q --device cpu -j "$j" --max-shard-size 1GB \
      --rank "$r" --world-size "$n" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  t1=$(date +%s.%N)
  echo "N=$n -j $j: $(python3 -c "print(round($t1-$t0,2))") s; $(ls "$DEST/out" | wc -l) files"
done
rm -rf "$DEST/out"
