#!/usr/bin/env bash
# device_choice_bench.sh: cpu against cuda end to end, as docs/PERFORMANCE.md "Reading the input
# in place, and a writer lane per thread" measured it: for each model, a real-dimension checkpoint
# synthesized into a tmpfs, then `convert ... --no-sync` into the same tmpfs, the process pinned
# to C cores (`taskset -c 0-(C-1)`, `-j C`), devices alternating, wall seconds and peak RSS from
# /usr/bin/time, and what the GPU took from the summary. One warm-up run after each synth is
# not reported (the first run after writing the input was up to 2x slower).
#
# Usage, on the GPU machine, with the binaries and their libraries carried in D:
#   perf/device_choice_bench.sh [options]
#     --bin PATH        shardshift (default .dev/shardshift)
#     --old-bin PATH    another shardshift, run by the device "cuda-old" (before and after)
#     --out DIR         where the output goes (default RAM/out), for another filesystem: say
#                       a tmpfs with huge pages, mounted first (`mount -t tmpfs -o
#                       size=60g,huge=within_size tmpfs /mnt/rh`, then `--out /mnt/rh/out`), as
#                       "Where a lane's time goes" measured it
#     --ram DIR         where to work, in RAM (default /mnt/ram; a tmpfs is mounted there when
#                       it is not on one already)
#     --models LIST     "deepseek_v3 diffusion_gemma" (default both)
#     --cores LIST      "2 4 16" (default)
#     --devices LIST    devices to alternate (default "cpu cuda"); "staged" is cuda with
#                       SHARDSHIFT_CUDA_INPUT=staged (the input copied into pinned memory first);
#                       "cuda-none" and "cuda-all" are cuda with SHARDSHIFT_ROUTER=cpu (the GPU
#                       opened but given no chunk) and =gpu (every chunk it can take);
#                       "cpu-nohelp" and "cuda-nohelp" set SHARDSHIFT_LANES_HELP=no (lanes
#                       out of files do not help with another lane's file);
#                       "cuda-late" is cuda with SHARDSHIFT_GPU_CLOSE=late (the GPU closed
#                       only once no chunk can reach it, not ahead of the end);
#                       "cuda-block" is cuda with SHARDSHIFT_GPU_WAIT=block (a thread sleeps
#                       through its chunk's GPU work rather than running other work);
#                       "cpu-768" is cpu with --max-memory 768MiB (the chunk size cuda gets
#                       from the default 1GiB, its staging slots budgeted for);
#                       "cpu-write", "cuda-write", "cpu-mapped" and "cuda-mapped" set
#                       SHARDSHIFT_FILL=write or =mapped (every file written in order by its
#                       lane, or filled through its mapping, whatever the default would choose)
#     --fixed-order     every round in the order of --devices (the default reverses it in
#                       every second round, so that no device always runs first)
#     --writers LIST    --writers values to sweep (default: none, shardshift's own default)
#     --runs R          rounds (default 2); then one `--device auto` run per core count
#     --scale K         synth --scale K: small inputs, to try this script (figures use 1)
#     --deepseek-layers N, --gemma-layers N
#                       the models' sizes (default 5 and 8 real layers; each layer adds about
#                       2.3 GB in and 3.9 GB out for DeepSeek-V3, 1.8 GB in and 2.0 GB out for
#                       gemma: mind the tmpfs, 100g unless mounted first)
#     --stats           run with --stats and add what the GPU read in place from the mappings
#                       and the lanes' time in `open` (creating the files, reserving their space)
# DeepSeek-V3: `synth --model deepseek_v3 --layers 5 --scale-experts 4 --mtp-layers 0
# --max-shard-size 2GB` (11 GB of FP8 in, 19.4 GB of BF16 out); diffusion_gemma: `synth --layers 8
# --max-shard-size 1GB` (14.6 GB in, 16.0 GB out).
set -uo pipefail
BIN=.dev/shardshift OLD_BIN="" RAM=/mnt/ram OUT="" MODELS="deepseek_v3 diffusion_gemma" CORES="2 4 16"
DEVICES="cpu cuda" ORDER=alternate WRITERS="" RUNS=2 SCALE=1 STATS=() DS_LAYERS=5 GEMMA_LAYERS=8
while [ $# -gt 0 ]; do
  case "$1" in
  --bin) BIN=$2; shift 2 ;;
  --old-bin) OLD_BIN=$2; shift 2 ;;
  --ram) RAM=$2; shift 2 ;;
  --out) OUT=$2; shift 2 ;;
  --models) MODELS=$2; shift 2 ;;
  --cores) CORES=$2; shift 2 ;;
  --devices) DEVICES=$2; shift 2 ;;
  --fixed-order) ORDER=fixed; shift ;;
  --writers) WRITERS=$2; shift 2 ;;
  --runs) RUNS=$2; shift 2 ;;
  --scale) SCALE=$2; shift 2 ;;
  --stats) STATS=(--stats); shift ;;
  --deepseek-layers) DS_LAYERS=$2; shift 2 ;;
  --gemma-layers) GEMMA_LAYERS=$2; shift 2 ;;
  -h | --help) sed -n '2,/^set -uo/{/^set -uo/!p}' "$0"; exit 0 ;;
  *) echo "device_choice_bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$RAM" || exit 1
if [ "$(stat -f -c %T "$RAM")" != tmpfs ]; then # not in RAM yet: make it so
  mount -t tmpfs -o size=100g tmpfs "$RAM" || exit 1
fi
IN=$RAM/in OUT=${OUT:-$RAM/out}

run() { # cores device [writers]
  local dev=$2 env=() extra=() bin=$BIN
  case "$dev" in
  cuda-old) dev=cuda bin=$OLD_BIN ;;
  cuda-block) dev=cuda env=(SHARDSHIFT_GPU_WAIT=block) ;;
  cuda-late) dev=cuda env=(SHARDSHIFT_GPU_CLOSE=late) ;;
  cpu-768) dev=cpu extra=(--max-memory 768MiB) ;;
  staged) dev=cuda env=(SHARDSHIFT_CUDA_INPUT=staged) ;;
  cuda-none) dev=cuda env=(SHARDSHIFT_ROUTER=cpu) ;;
  cuda-all) dev=cuda env=(SHARDSHIFT_ROUTER=gpu) ;;
  *-nohelp) dev=${2%-*} env=(SHARDSHIFT_LANES_HELP=no) ;;
  *-write | *-mapped) dev=${2%-*} env=(SHARDSHIFT_FILL=${2##*-}) ;;
  esac
  [ -n "${3:-}" ] && extra+=(--writers "$3")
  rm -rf "$OUT"
  env "${env[@]}" /usr/bin/time -f "%e s (%U user, %S sys), peak %M KB" taskset -c "0-$(($1 - 1))" \
    "$bin" convert "$IN" "$OUT" --no-sync -j "$1" --device "$dev" "${extra[@]}" "${STATS[@]}" \
    >/dev/null 2>/tmp/device_choice.err || { tail -3 /tmp/device_choice.err; return; }
  printf '  cores %-2s %-9s %-4s %s | %s %s %s\n' "$1" "$2" "${3:+w=$3}" "$(tail -1 /tmp/device_choice.err)" \
    "$(grep -o 'transformed [0-9.]* [GM]B on [^;]*' /tmp/device_choice.err | head -1)" \
    "$(grep -o '^gpu input: [0-9.]* [GMk]*B' /tmp/device_choice.err | sed 's/^gpu input: /in place /')" \
    "$(awk '$1 == "open" {print "open " $5}' /tmp/device_choice.err)"
}

for model in $MODELS; do
  rm -rf "$IN" "$OUT"
  case "$model" in
  deepseek_v3) scale=(--scale-experts 4)
    [ "$SCALE" != 1 ] && scale=(--scale "$SCALE")
    "$BIN" synth "$IN" --model deepseek_v3 --layers "$DS_LAYERS" "${scale[@]}" --mtp-layers 0 \
      --max-shard-size 2GB -q || exit 1 ;;
  *) "$BIN" synth "$IN" --model "$model" --layers "$GEMMA_LAYERS" --scale "$SCALE" --max-shard-size 1GB -q \
    || exit 1 ;;
  esac
  echo "== $model ($(du -sh "$IN" | cut -f1) in, $(date -u +%H:%M:%S))"
  run "${CORES%% *}" cpu >/dev/null # warm-up
  for c in $CORES; do
    for r in $(seq "$RUNS"); do
      order=$DEVICES
      # Every other round in the opposite order (A B, B A, ...): a device's place in its round
      # (after which run's output was removed, on a warmer or fuller host) weighs on all alike.
      [ "$ORDER" = alternate ] && [ $((r % 2)) = 0 ] && order=$(printf '%s\n' $DEVICES | tac | xargs)
      for d in $order; do
        if [ -z "$WRITERS" ]; then run "$c" "$d"; else for w in $WRITERS; do run "$c" "$d" "$w"; done; fi
      done
    done
    run "$c" auto
  done
done
rm -rf "$IN" "$OUT"
