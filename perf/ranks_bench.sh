#!/usr/bin/env bash
# ranks_bench.sh: one conversion split over N processes on this machine, against N. Shows what
# ranks cost on one node (docs/SCALING.md, "Measured"). The ranks are started by hand
# (--rank R --world-size N, coordinated through marker files), or with --mpirun by Open MPI's
# `mpirun --oversubscribe -np N` (coordinated through MPI in a build with MPI).
#
# Usage: perf/ranks_bench.sh [--bin build/shardshift] [--layers 8] [--scale S] [--scratch /var/tmp]
#                            [--dest DIR] [--ranks "1 2 4 8 16"] [--sync] [--mpirun] [--repeat R]
# One line per case: `N=.. -j ..: median seconds (of R runs: all of them); files`. The input is
# synthesized once (real dimensions, or divided by --scale) and read once before the runs, so the
# page cache holds it.
set -euo pipefail
BIN=build/shardshift; LAYERS=8; SCALE=""; SCRATCH=/var/tmp; DEST=""; RANKS="1 2 4 8 16"
SYNC="--no-sync"; MPIRUN=""; REPEAT=1
while [ $# -gt 0 ]; do
  case "$1" in
  --bin) BIN=$2; shift 2 ;;
  --layers) LAYERS=$2; shift 2 ;;
  --scale) SCALE=$2; shift 2 ;;
  --scratch) SCRATCH=$2; shift 2 ;;
  --dest) DEST=$2; shift 2 ;;
  --ranks) RANKS=$2; shift 2 ;;
  --sync) SYNC=""; shift ;;
  --mpirun) MPIRUN=1; shift ;;
  --repeat) REPEAT=$2; shift 2 ;;
  *) echo "ranks_bench.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
BIN=$(realpath "$BIN"); DEST=${DEST:-$SCRATCH/ranks-bench-out}
IN=$SCRATCH/ranks-bench-in-$LAYERS${SCALE:+-scale$SCALE}
CORES=$(nproc)
mkdir -p "$DEST"
[ -f "$IN/model.safetensors.index.json" ] ||
  "$BIN" synth "$IN" --layers "$LAYERS" ${SCALE:+--scale "$SCALE"} --max-shard-size 1GB -q
cat "$IN"/* > /dev/null
# mpirun as root needs these two; --oversubscribe lets N exceed the cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "# ranks_bench: $LAYERS layers${SCALE:+ / $SCALE}, $(du -sh "$IN" | cut -f1) in," \
     "$CORES cores, dest $DEST ${SYNC:-(fsync)}, ${MPIRUN:+mpirun, }$(date -u +%F)"
for n in $RANKS; do
  j=$((CORES / n)); [ "$j" -lt 1 ] && j=1
  times=()
  for _ in $(seq "$REPEAT"); do
    rm -rf "$DEST/out" "$DEST"/.out.*
    t0=$(date +%s.%N)
    if [ -n "$MPIRUN" ]; then
      mpirun --oversubscribe -np "$n" "$BIN" convert "$IN" "$DEST/out" $SYNC -q --device cpu \
        -j "$j" --max-shard-size 1GB
    else
      pids=()
      for r in $(seq 0 $((n - 1))); do
        "$BIN" convert "$IN" "$DEST/out" $SYNC -q --device cpu -j "$j" --max-shard-size 1GB \
          --rank "$r" --world-size "$n" &
        pids+=($!)
      done
      for p in "${pids[@]}"; do wait "$p"; done
    fi
    t1=$(date +%s.%N)
    times+=("$(python3 -c "print(round($t1-$t0,2))")")
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "N=$n -j $j: $median s (of $REPEAT: ${times[*]}); $(ls "$DEST/out" | wc -l) files"
done
rm -rf "$DEST/out"
