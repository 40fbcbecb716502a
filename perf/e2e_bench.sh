#!/usr/bin/env bash
# e2e_bench.sh: end-to-end `shardshift convert` against `cp -r`, the physical floor, on a synthetic
# diffusion_gemma checkpoint with the real dimensions (H 2816, I 704, E 128; no --scale).
#
# Usage:
#   perf/e2e_bench.sh [options] [LAYERS [SCRATCH]]
#   perf/e2e_bench.sh --rss-sweep "2 4 8" [options] [SCRATCH]
#
# Options:
#   --layers N         decoder layers of the checkpoint (default 4)
#   --scratch DIR      where the checkpoint and the outputs go (default $TMPDIR, else /var/tmp);
#                      must be a real disk: the input is ~1.63 GB per layer + 1.6 GB
#   --bin PATH         shardshift binary (default build-bench/shardshift, then build/shardshift)
#   --old-bin PATH     instead of the comparison: a same-minute A/B of --bin against another
#                      binary (an earlier build), both --device cpu, with `cp -r` + fsync in each
#                      round; the order of the two alternates from round to round (the first run
#                      after a removal was the slower on the 2-core VM's disk). Reports the median
#                      of each and both ratios to `cp -r` + fsync: whether the code, rather than
#                      the disk's mood, moved the ratio. Use --runs 6 or more
#   --runs R           runs per case (default 2): with 1 or 2 the last is reported, with 3 or
#                      more the median; the page cache is warm before every run
#   --max-memory SIZE  --max-memory of shardshift (default: its own default, 1GiB)
#   --rss-sweep LIST   instead of the comparison: convert checkpoints of each layer count in LIST
#                      with --device cpu --max-memory SIZE and print the peak RSS of each, to show
#                      it stays flat and within max-memory + 200 MB
#   --wait-idle S      before each timed run wait up to S seconds (default 600) until no compiler
#                      runs on the machine, polling every 30 s
#   --keep             keep the generated checkpoint
#   --scale K          shrink the checkpoint (synth --scale) for a quick smoke test of this script;
#                      the published figures use real dimensions (the default, 1)
#
# Each case runs under /usr/bin/time -v (peak RSS) with the wall time taken around it. Outputs
# are removed and `sync` runs between runs. `cp -r` does not fsync while shardshift does, so the
# copy is also reported with an fsync of its files ("cp -r + fsync", measured right after the
# copy); the ratios are against that floor, at equal durability. GB/s is input bytes / seconds.
set -euo pipefail

LAYERS=4
SCRATCH="${TMPDIR:-/var/tmp}"
BIN=""
OLD_BIN=""
RUNS=2
MAX_MEMORY=""
SWEEP=""
WAIT_IDLE=600
KEEP=0
SCALE=1
POSITIONAL=()

die() { echo "e2e_bench: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/!p}' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while (($#)); do
  case "$1" in
    --layers) LAYERS="$2"; shift 2 ;;
    --scratch) SCRATCH="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --old-bin) OLD_BIN="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --max-memory) MAX_MEMORY="$2"; shift 2 ;;
    --rss-sweep) SWEEP="$2"; shift 2 ;;
    --wait-idle) WAIT_IDLE="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --scale) SCALE="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    -*) echo "e2e_bench: unknown option $1" >&2; usage 2 ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
if [[ -n "$SWEEP" ]]; then
  ((${#POSITIONAL[@]} <= 1)) || usage 2
  ((${#POSITIONAL[@]} == 1)) && SCRATCH="${POSITIONAL[0]}"
else
  ((${#POSITIONAL[@]} <= 2)) || usage 2
  # A lone positional argument is the layer count when it is a number, else the scratch dir.
  if ((${#POSITIONAL[@]} == 2)); then
    LAYERS="${POSITIONAL[0]}"; SCRATCH="${POSITIONAL[1]}"
  elif ((${#POSITIONAL[@]} == 1)); then
    if [[ "${POSITIONAL[0]}" =~ ^[0-9]+$ ]]; then LAYERS="${POSITIONAL[0]}"; else SCRATCH="${POSITIONAL[0]}"; fi
  fi
fi
[[ "$LAYERS" =~ ^[0-9]+$ ]] || die "LAYERS must be a number, not '$LAYERS'"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive number"
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || die "--scale must be a positive number"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "$BIN" ]]; then
  for cand in "$ROOT/build-bench/shardshift" "$ROOT/build/shardshift"; do
    [[ -x "$cand" ]] && { BIN="$cand"; break; }
  done
fi
[[ -x "$BIN" ]] || die "no shardshift binary; build it or pass --bin"
[[ -z "$OLD_BIN" || -x "$OLD_BIN" ]] || die "--old-bin $OLD_BIN: not an executable"
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed for the peak RSS"
mkdir -p "$SCRATCH"
WORK="$(mktemp -d "$SCRATCH/e2e-bench.XXXXXX")"
cleanup() { [[ $KEEP == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT

GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU=1; fi

# Sizes: each real layer is 1.52 GB of experts plus ~0.1 GB of attention and MLP; the embedding is
# 1.48 GB; synth's stand-in vision tower (two blocks) and the rest are ~0.1 GB. The output drops
# the encoder and adds the tied head, so it is about the input's size plus 1.4 GB.
input_estimate() { awk -v n="$1" -v k="$SCALE" 'BEGIN { printf "%.0f", (1.63e9 * n + 1.7e9) / (k * k) }'; }
free_bytes() { df -P -B1 "$WORK" | awk 'NR == 2 { print $4 }'; }
gb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e9 }'; }
dir_bytes() { du -sb "$1" | awk '{ print $1 }'; }

require_space() { # BYTES WHAT
  local free
  free="$(free_bytes)"
  if ((free < $1)); then
    die "$WORK: $(gb "$free") GB free on $(df -P "$WORK" | awk 'NR == 2 { print $1 }'), $2 needs about $(gb "$1") GB; free space or pass another --scratch"
  fi
}

# One name per pgrep: a pattern longer than 15 characters never matches a process name.
compilers() {
  local total=0 name
  for name in cc1plus cc1 cicc ptxas lto1; do total=$((total + $(pgrep -c -x "$name" || true))); done
  echo "$total"
}
wait_idle() {
  local waited=0 n
  n="$(compilers)"
  while ((n > 0 && waited < WAIT_IDLE)); do
    echo "  waiting: $n compiler process(es) running, $(uptime | sed 's/.*load/load/')" >&2
    sleep 30
    waited=$((waited + 30))
    n="$(compilers)"
  done
  LAST_COMPILERS="$n"
  LAST_LOAD="$(cut -d' ' -f1 /proc/loadavg)"
}

warm() { find "$1" -type f -exec cat {} + >/dev/null; }

# run_timed OUT_DIR CMD...: one run; sets T_WALL (s), T_RSS (kB), T_FSYNC (s). Output is removed first.
run_timed() {
  local out="$1"; shift
  rm -rf "$out"; sync
  wait_idle
  local tf t0 t1 t2
  tf="$(mktemp "$WORK/time.XXXXXX")"
  t0="$(date +%s.%N)"
  if ! /usr/bin/time -v -o "$tf" "$@" >"$WORK/case.log" 2>&1; then
    cat "$WORK/case.log" >&2
    die "failed: $*"
  fi
  t1="$(date +%s.%N)"
  find "$out" -type f -exec sync {} +
  t2="$(date +%s.%N)"
  T_WALL="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
  T_FSYNC="$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.3f", b - a }')"
  T_RSS="$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tf")"
  rm -f "$tf"
}

pick() { # values... -> the last of one or two, the median of three or more
  if (($# <= 2)); then eval "echo \${$#}"; return; fi
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# case NAME OUT_DIR CMD...: RUNS runs; sets C_WALL, C_RSS, C_FSYNC, C_LOADS, C_OUT_BYTES
bench_case() {
  local name="$1" out="$2"; shift 2
  local walls=() rsss=() fsyncs=() loads=""
  for ((r = 1; r <= RUNS; r++)); do
    warm "$IN"
    run_timed "$out" "$@"
    walls+=("$T_WALL"); rsss+=("$T_RSS"); fsyncs+=("$T_FSYNC")
    loads+="${loads:+ }$LAST_LOAD"
    echo "  $name run $r/$RUNS: ${T_WALL} s (+${T_FSYNC} s fsync), peak RSS $((T_RSS / 1024)) MB, load $LAST_LOAD, compilers $LAST_COMPILERS" >&2
  done
  C_WALL="$(pick "${walls[@]}")"
  C_RSS="$(pick "${rsss[@]}")"
  C_FSYNC="$(pick "${fsyncs[@]}")"
  C_LOADS="$loads"
  C_OUT_BYTES="$(dir_bytes "$out")"
  rm -rf "$out"; sync
}

line() { # NAME SECONDS RSS_KB FLOOR_SECONDS
  awk -v n="$1" -v s="$2" -v k="$3" -v f="$4" -v b="$IN_BYTES" 'BEGIN {
    printf "%-26s: %8.2f s, %6.2f GB/s, peak RSS %7.0f MB, %5.2fx cp\n", n, s, b / s / 1e9, k / 1024, s / f }'
}

generate() { # LAYERS DIR
  echo "generating a diffusion_gemma checkpoint (scale $SCALE) of $1 layer(s) in $2" >&2
  local t0; t0="$(date +%s)"
  "$BIN" synth "$2" --layers "$1" --scale "$SCALE" >&2
  echo "  synth took $(($(date +%s) - t0)) s" >&2
}

describe_machine() {
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GB", $2 * 1024 / 1e9 }' /proc/meminfo) RAM$( ((GPU)) && echo ", $(nvidia-smi -L | sed 's/ (UUID.*//' | paste -sd ', ')")"
  echo "scratch: $WORK ($(df -PT "$WORK" | awk 'NR == 2 { print $2 " on " $1 }'), $(gb "$(free_bytes)") GB free)"
  echo "binary: $BIN; date: $(date -u '+%Y-%m-%d %H:%M UTC'); load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

MEM_FLAGS=()
[[ -n "$MAX_MEMORY" ]] && MEM_FLAGS=(--max-memory "$MAX_MEMORY")

if [[ -n "$SWEEP" ]]; then
  SWEEP_MEMORY="${MAX_MEMORY:-1GiB}"
  LIMIT_MB="$(awk -v m="$SWEEP_MEMORY" 'BEGIN {
    u = toupper(m); n = u + 0; f = 1
    if (u ~ /GIB$/) f = 1073741824; else if (u ~ /MIB$/) f = 1048576; else if (u ~ /KIB$/) f = 1024
    else if (u ~ /GB$/) f = 1e9; else if (u ~ /MB$/) f = 1e6
    printf "%.0f", n * f / 1048576 + 200 }')"
  describe_machine
  echo "peak RSS of 'shardshift convert --device cpu --max-memory $SWEEP_MEMORY' (limit max-memory + 200 MB = $LIMIT_MB MB):"
  status=0
  for n in $SWEEP; do
    [[ "$n" =~ ^[0-9]+$ ]] || die "--rss-sweep: '$n' is not a layer count"
    est="$(input_estimate "$n")"
    require_space "$(awk -v e="$est" 'BEGIN { printf "%.0f", 2.1 * e + 2e9 }')" "$n layers (input and output)"
    IN="$WORK/in-$n"
    generate "$n" "$IN"
    IN_BYTES="$(dir_bytes "$IN")"
    warm "$IN"
    run_timed "$WORK/out" "$BIN" convert "$IN" "$WORK/out" --device cpu --max-memory "$SWEEP_MEMORY" -q
    rm -rf "$WORK/out" "$IN"; sync
    verdict="$(awk -v k="$T_RSS" -v l="$LIMIT_MB" 'BEGIN { print (k / 1024 <= l) ? "within" : "ABOVE" }')"
    [[ $verdict == within ]] || status=1
    awk -v n="$n" -v b="$IN_BYTES" -v k="$T_RSS" -v s="$T_WALL" -v v="$verdict" -v l="$LIMIT_MB" -v ld="$LAST_LOAD" 'BEGIN {
      printf "layers %3d (%6.2f GB) : peak RSS %5.0f MB, %7.2f s, %5.2f GB/s, %s the %d MB limit (load %s)\n",
             n, b / 1e9, k / 1024, s, b / s / 1e9, v, l, ld }'
  done
  exit "$status"
fi

est="$(input_estimate "$LAYERS")"
require_space "$(awk -v e="$est" 'BEGIN { printf "%.0f", 2.1 * e + 2e9 }')" "the $LAYERS-layer input and one output at a time"
describe_machine
IN="$WORK/in"
generate "$LAYERS" "$IN"
IN_BYTES="$(dir_bytes "$IN")"
echo "checkpoint: $LAYERS layers, $( ((SCALE == 1)) && echo "real dimensions" || echo "scale $SCALE"), $(gb "$IN_BYTES") GB in $(find "$IN" -name '*.safetensors' | wc -l) file(s); $RUNS run(s) per case$( ((RUNS >= 3)) && echo ", median" || echo ", last reported")"

if [[ -n "$OLD_BIN" ]]; then
  echo "old binary: $OLD_BIN"
  NEW_WALLS=() OLD_WALLS=() CP_FLOORS=() NEW_RSSS=() OLD_RSSS=() CP_RSSS=()
  for ((r = 1; r <= RUNS; r++)); do
    order="old new cp"
    ((r % 2)) || order="new old cp"
    for v in $order; do
      warm "$IN"
      case "$v" in
        old) run_timed "$WORK/out" "$OLD_BIN" convert "$IN" "$WORK/out" --device cpu -q "${MEM_FLAGS[@]}"
             OLD_WALLS+=("$T_WALL"); OLD_RSSS+=("$T_RSS") ;;
        new) run_timed "$WORK/out" "$BIN" convert "$IN" "$WORK/out" --device cpu -q "${MEM_FLAGS[@]}"
             NEW_WALLS+=("$T_WALL"); NEW_RSSS+=("$T_RSS") ;;
        cp) run_timed "$WORK/out" cp -r "$IN" "$WORK/out"
            CP_FLOORS+=("$(awk -v a="$T_WALL" -v b="$T_FSYNC" 'BEGIN { printf "%.3f", a + b }')")
            CP_RSSS+=("$T_RSS") ;;
      esac
      echo "  round $r/$RUNS $v: ${T_WALL} s (+${T_FSYNC} s fsync), peak RSS $((T_RSS / 1024)) MB, load $LAST_LOAD" >&2
      rm -rf "$WORK/out"; sync
    done
  done
  FLOOR="$(pick "${CP_FLOORS[@]}")"
  NEW_WALL="$(pick "${NEW_WALLS[@]}")"; OLD_WALL="$(pick "${OLD_WALLS[@]}")"
  echo "rounds: $RUNS, the order of the two binaries alternating; medians (the last with 1 or 2 rounds)"
  echo "cp -r + fsync             : ${CP_FLOORS[*]}"
  echo "shardshift (--bin)        : ${NEW_WALLS[*]}"
  echo "shardshift (--old-bin)    : ${OLD_WALLS[*]}"
  line "cp -r + fsync" "$FLOOR" "$(pick "${CP_RSSS[@]}")" "$FLOOR"
  line "shardshift (--bin)" "$NEW_WALL" "$(pick "${NEW_RSSS[@]}")" "$FLOOR"
  line "shardshift (--old-bin)" "$OLD_WALL" "$(pick "${OLD_RSSS[@]}")" "$FLOOR"
  awk -v n="$NEW_WALL" -v o="$OLD_WALL" 'BEGIN { printf "--bin against --old-bin: %.2fx as fast\n", o / n }'
  exit 0
fi

echo "case cp" >&2
bench_case "cp -r" "$WORK/out" cp -r "$IN" "$WORK/out"
CP_WALL="$C_WALL"; CP_RSS="$C_RSS"; CP_FSYNC="$C_FSYNC"; CP_LOADS="$C_LOADS"
FLOOR="$(awk -v a="$CP_WALL" -v b="$CP_FSYNC" 'BEGIN { printf "%.3f", a + b }')"

echo "case shardshift cpu" >&2
bench_case "shardshift cpu" "$WORK/out" "$BIN" convert "$IN" "$WORK/out" --device cpu -q "${MEM_FLAGS[@]}"
CPU_WALL="$C_WALL"; CPU_RSS="$C_RSS"; CPU_LOADS="$C_LOADS"; OUT_BYTES="$C_OUT_BYTES"

if ((GPU)); then
  echo "case shardshift cuda" >&2
  bench_case "shardshift cuda" "$WORK/out" "$BIN" convert "$IN" "$WORK/out" --device cuda -q "${MEM_FLAGS[@]}"
  CUDA_WALL="$C_WALL"; CUDA_RSS="$C_RSS"; CUDA_LOADS="$C_LOADS"
fi

echo "output: $(gb "$OUT_BYTES") GB; GB/s below = input bytes / seconds; ratios against cp -r + fsync"
line "cp -r" "$CP_WALL" "$CP_RSS" "$FLOOR"
line "cp -r + fsync" "$FLOOR" "$CP_RSS" "$FLOOR"
line "shardshift --device cpu" "$CPU_WALL" "$CPU_RSS" "$FLOOR"
((GPU)) && line "shardshift --device cuda" "$CUDA_WALL" "$CUDA_RSS" "$FLOOR"
echo "load average at each run: cp [$CP_LOADS], cpu [$CPU_LOADS]$( ((GPU)) && echo ", cuda [$CUDA_LOADS]")"
