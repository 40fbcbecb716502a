#!/usr/bin/env bash
# writers_bench.sh: `shardshift convert` with 1..N writer lanes against the physical floor of the
# same machine: the same input files copied by N parallel `cp` (`ls | xargs -P N cp`), into the
# same destination. Real dimensions (synth, no --scale), input in 1 GB shards.
#
# Usage: perf/writers_bench.sh [options]
#   --bin PATH        shardshift binary (default build/shardshift)
#   --layers N        decoder layers of the checkpoint (default 8)
#   --scratch DIR     a real disk: the input is made here once (~1.8 GB per layer) (default /var/tmp)
#   --dest DIR        where outputs go; a RAM filesystem (tmpfs) shows the writer itself, a disk
#                     shows the disk (default: DIR/dest on the scratch disk)
#   --writers LIST    writer lanes to try (default "1 2 4 8 16")
#   --devices LIST    devices to try (default "cpu")
#   --cores LIST      also run the default writer count pinned to C cores (taskset -c 0..C-1,
#                     -j C), per device (default: none)
#   --max-shard-size S  output shard size (default 1GB: several files, so lanes have work)
#   --sync            keep fsync (default: --no-sync, like plain cp)
#   --pipe            also stream the first output shard to a pipe (peak RSS of that path)
#
# One line per case: `case : seconds  GB/s  ratio-to-best-cp  peak-RSS`; GB/s is output bytes per
# second; the page cache holds the input before every run (it is read once first). The ratio is
# against the fastest `cp -P N` of the same run.
set -euo pipefail

BIN=build/shardshift
LAYERS=8
SCRATCH=/var/tmp
DEST=""
WRITERS="1 2 4 8 16"
DEVICES="cpu"
CORES=""
SYNC="--no-sync"
PIPE=0
SHARD=1GB
while [ $# -gt 0 ]; do
  case "$1" in
  --bin) BIN=$2; shift 2 ;;
  --layers) LAYERS=$2; shift 2 ;;
  --scratch) SCRATCH=$2; shift 2 ;;
  --dest) DEST=$2; shift 2 ;;
  --writers) WRITERS=$2; shift 2 ;;
  --devices) DEVICES=$2; shift 2 ;;
  --cores) CORES=$2; shift 2 ;;
  --sync) SYNC=""; shift ;;
  --pipe) PIPE=1; shift ;;
  --max-shard-size) SHARD=$2; shift 2 ;;
  *) echo "writers_bench.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
DEST=${DEST:-$SCRATCH/dest}
BIN=$(realpath "$BIN")
IN=$SCRATCH/writers-bench-in-$LAYERS
mkdir -p "$DEST"

now() { date +%s.%N; }
rate() { python3 -c "import sys; b,s=float(sys.argv[1]),float(sys.argv[2]); print(f'{s:7.2f} s {b/s/1e9:6.2f} GB/s')" "$@"; }

if [ ! -f "$IN/model.safetensors.index.json" ]; then
  t0=$(now)
  "$BIN" synth "$IN" --layers "$LAYERS" --max-shard-size 1GB -q
  echo "synth: $LAYERS layers, $(du -sb "$IN" | cut -f1) bytes in $(ls "$IN"/*.safetensors | wc -l) shards, $(python3 -c "print(f'{$(now)-$t0:.1f}')") s"
fi
cat "$IN"/* > /dev/null
IN_BYTES=$(du -sb --apparent-size "$IN" | cut -f1)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem/{print $2}') GiB; dest $(df -T "$DEST" | awk 'NR==2{print $2}')"

best=0
for n in $WRITERS; do
  rm -rf "$DEST/cp" && mkdir "$DEST/cp"
  t0=$(now)
  (cd "$IN" && ls | xargs -P "$n" -I{} cp {} "$DEST/cp/")
  [ -z "$SYNC" ] && sync -f "$DEST/cp"
  t=$(python3 -c "print($(now)-$t0)")
  echo "cp -P $n : $(rate "$IN_BYTES" "$t")"
  best=$(python3 -c "print(max($best, $IN_BYTES/$t))")
  rm -rf "$DEST/cp"
done

convert_case() { # name, cores (0: all), convert options...
  local name=$1 cores=$2; shift 2
  local pin=()
  [ "$cores" != 0 ] && pin=(taskset -c "0-$((cores - 1))")
  rm -rf "$DEST/out"
  local json
  json=$("${pin[@]}" "$BIN" convert "$IN" "$DEST/out" $SYNC --max-shard-size "$SHARD" --json -q "$@" 2>&1) ||
    { echo "$name : FAILED: $json"; return; }
  python3 - "$name" "$best" "$json" <<'EOF'
import json, sys
name, best, s = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
r = s["output_bytes"] / s["seconds"]
ratio = f"{r / best:5.2f}x best cp" if best else ""
print(f"{name} : {s['seconds']:7.2f} s {r/1e9:6.2f} GB/s  {ratio}  peak RSS {s['peak_rss']/1e6:7.1f} MB"
      f"  ({s['device']}, {s['writers']} writers x {s['tokens']} tokens x {s['chunk_bytes']>>20} MiB)")
EOF
  rm -rf "$DEST/out"
}

for dev in $DEVICES; do
  for w in $WRITERS; do
    convert_case "convert $dev --writers $w" 0 --device "$dev" --writers "$w"
  done
  for c in $CORES; do
    convert_case "convert $dev $c cores" "$c" --device "$dev" -j "$c"
  done
  if [ "$PIPE" = 1 ]; then
    first=$("$BIN" plan "$IN" --max-shard-size "$SHARD" --print-size | head -1 | cut -f2)
    err=$("$BIN" convert "$IN" - --only "$first" --max-shard-size "$SHARD" --device "$dev" 2>&1 >/dev/null | tail -1)
    echo "pipe $dev ($first) : ${err##*; }"
  fi
done
