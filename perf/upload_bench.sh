#!/usr/bin/env bash
# upload_bench.sh: issue 11's first target, measured. Uploading a conversion through
# `convert --pipe-to` against converting to a local directory and then uploading that directory
# (`aws s3 sync`, `rclone copy`), into a real S3-compatible server on loopback (s3rver 3.7.1 from
# tests/s3/node_modules, started as tests/s3/s3_e2e_test.sh starts it), with the real AWS CLI
# (Debian's /usr/bin/aws) and rclone, configured from the environment only.
#
# Usage: perf/upload_bench.sh [options]
#   --bin PATH          shardshift binary (default build/shardshift)
#   --layers N          decoder layers of the synthetic checkpoint (default 2)
#   --scale K           synth --scale (default 1: real dimensions, ~1.8 GB per layer)
#   --max-shard-size S  input and output shard size (default 1GB: several files, so --uploads
#                       and the uploaders' own parallelism both have work)
#   --scratch DIR       input, reference output, local outputs and the server's data directory,
#                       all on the disk of DIR (default /var/tmp/shardshift-upload-bench)
#   --runs N            runs per case, the cases alternating within each round (default 3)
#   --cases LIST        which cases (default: all, in this order):
#                         pipe-aws-u1 pipe-aws-u4 pipe-rclone-u1 pipe-rclone-u4
#                         disk+aws-sync disk+rclone-copy aws-sync-only rclone-copy-only
#   --aws-config FILE   an AWS CLI config file for every aws command (s3 max_concurrent_requests,
#                       multipart_chunksize, ...; default: none, the CLI's defaults)
#   --rclone-flags STR  extra flags for every rclone command (e.g. "--s3-upload-concurrency 8")
#
# The cases (K = --uploads):
#   pipe-aws-uK       convert IN --pipe-to 'aws s3 cp - s3://bucket/a/{name} --expected-size {size}' --uploads K
#   pipe-rclone-uK    convert IN --pipe-to 'rclone rcat --size {size} remote:bucket/b/{name}' --uploads K
#   disk+aws-sync     convert IN OUT (fsync, the default), then aws s3 sync OUT s3://bucket/c/
#   disk+rclone-copy  convert IN OUT, then rclone copy OUT remote:bucket/d/
#   aws-sync-only     aws s3 sync of an already converted directory (the floor)
#   rclone-copy-only  rclone copy of an already converted directory
# Before every run the page cache holds the input (it is read once), the bucket is empty and no
# local output exists. While a run goes, the bytes under the local-output directory (where OUT is
# made, the commands' working directory and TMPDIR) are sampled every 0.1 s: the peak local disk.
# After every run each object is checked against the reference conversion: the listing (names
# and sizes) through the S3 API and the bytes of every object as the server stores them (cmp);
# on the first round the objects of every case but the floors are also downloaded through the S3
# API and compared.
#
# Each run's line also gives the CPU seconds (user + system) of the run's commands (shardshift
# and the uploaders) and of s3rver: on a machine with few cores, what the upload costs in CPU.
# Output: one line per run, then one line per case: `case : seconds  MB/s  ratio to (b)`, the
# median of the runs (min-max after it), MB/s being the conversion's output bytes (decimal MB)
# per second, (b) being disk+aws-sync for the aws cases and disk+rclone-copy for the rclone ones.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BIN=build/shardshift
LAYERS=2
SCALE=1
SHARD=1GB
SCRATCH=/var/tmp/shardshift-upload-bench
RUNS=3
CASES="pipe-aws-u1 pipe-aws-u4 pipe-rclone-u1 pipe-rclone-u4 disk+aws-sync disk+rclone-copy aws-sync-only rclone-copy-only"
AWS_CFG=""
RCLONE_FLAGS=""
while [ $# -gt 0 ]; do
  case "$1" in
  --bin) BIN=$2; shift 2 ;;
  --layers) LAYERS=$2; shift 2 ;;
  --scale) SCALE=$2; shift 2 ;;
  --max-shard-size) SHARD=$2; shift 2 ;;
  --scratch) SCRATCH=$2; shift 2 ;;
  --runs) RUNS=$2; shift 2 ;;
  --cases) CASES=$2; shift 2 ;;
  --aws-config) AWS_CFG=$(realpath "$2"); shift 2 ;;
  --rclone-flags) RCLONE_FLAGS=$2; shift 2 ;;
  *) echo "upload_bench.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
BIN=$(realpath "$BIN")
S3RVER=${SHARDSHIFT_TEST_S3RVER:-$HERE/../tests/s3/node_modules/.bin/s3rver}
AWS=${SHARDSHIFT_TEST_AWS:-/usr/bin/aws}
RCLONE=$(command -v rclone || true)
[ -x "$S3RVER" ] || { echo "s3rver not installed at $S3RVER (scripts/setup.sh)" >&2; exit 1; }
[ -x "$AWS" ] || { echo "no AWS CLI at $AWS (apt-get install awscli)" >&2; exit 1; }
[ -n "$RCLONE" ] || { echo "rclone not installed (apt-get install rclone)" >&2; exit 1; }

now() { date +%s.%N; }
IN=$SCRATCH/in-$LAYERS-$SCALE-$SHARD
REF=$SCRATCH/ref-$LAYERS-$SCALE-$SHARD
T=$SCRATCH/run.$$
LOCAL=$T/local      # OUT, the working directory and TMPDIR of every command
DATA=$T/s3          # the server's data directory
mkdir -p "$SCRATCH" "$LOCAL/tmp" "$DATA" "$T/bin"

# --- input and reference conversion, made once ---------------------------------------------
if [ ! -f "$IN/model.safetensors.index.json" ]; then
  rm -rf "$IN"
  "$BIN" synth "$IN" --layers "$LAYERS" --scale "$SCALE" --max-shard-size "$SHARD"
fi
if [ ! -f "$REF/model.safetensors.index.json" ] || [ "$BIN" -nt "$REF/model.safetensors.index.json" ]; then
  rm -rf "$REF"
  "$BIN" convert "$IN" "$REF" --max-shard-size "$SHARD" -q
fi
# name size of every file a --pipe-to run delivers (the directory's files less its marker)
(cd "$REF" && find . -type f ! -name .shardshift-output -printf '%P %s\n' | sort) > "$T/want-pipe"
(cd "$REF" && find . -type f -printf '%P %s\n' | sort) > "$T/want-dir"
OUT_BYTES=$(awk '{ s += $2 } END { printf "%.0f", s }' "$T/want-pipe")

# --- server and environment (as tests/s3/s3_e2e_test.sh) -----------------------------------
S3RVER_PID=
SAMPLER_PID=
cleanup() {
  set +e
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
  [ -n "$S3RVER_PID" ] && kill "$S3RVER_PID" 2>/dev/null && wait "$S3RVER_PID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$S3RVER" -d "$DATA" -a 127.0.0.1 -p 0 --silent > "$T/s3rver.out" 2>&1 &
S3RVER_PID=$!
PORT=
for _ in $(seq 200); do
  PORT=$(sed -n 's/^S3rver listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$T/s3rver.out")
  [ -n "$PORT" ] && break
  kill -0 "$S3RVER_PID" 2>/dev/null || { echo "s3rver did not start: $(cat "$T/s3rver.out")" >&2; exit 1; }
  sleep 0.05
done
[ -n "$PORT" ] || { echo "s3rver did not say its port" >&2; exit 1; }
ENDPOINT="http://127.0.0.1:$PORT"
unset AWS_CA_BUNDLE AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_PAGER="" AWS_CONFIG_FILE="${AWS_CFG:-$T/no-aws-config}"
export AWS_SHARED_CREDENTIALS_FILE="$T/no-aws-credentials"
export RCLONE_CONFIG=/dev/null RCLONE_CONFIG_REMOTE_TYPE=s3
export RCLONE_CONFIG_REMOTE_PROVIDER=Other RCLONE_CONFIG_REMOTE_ENDPOINT="$ENDPOINT"
export RCLONE_CONFIG_REMOTE_ACCESS_KEY_ID=S3RVER RCLONE_CONFIG_REMOTE_SECRET_ACCESS_KEY=S3RVER
export RCLONE_CONFIG_REMOTE_REGION=us-east-1
printf '#!/bin/sh\nexec %s --endpoint-url %s "$@"\n' "$AWS" "$ENDPOINT" > "$T/bin/aws"
printf '#!/bin/sh\nexec %s %s "$@"\n' "$RCLONE" "$RCLONE_FLAGS" > "$T/bin/rclone"
chmod +x "$T/bin/aws" "$T/bin/rclone"
ln -s "$BIN" "$T/bin/shardshift"
export PATH="$T/bin:$PATH" TMPDIR="$LOCAL/tmp"
aws s3 mb s3://bucket > /dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem/{print $2}') GiB RAM; $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "scratch $SCRATCH on $(df --output=source,fstype "$SCRATCH" | tail -1 | xargs) (input, local output and s3rver's data)"
echo "tools: s3rver $("$S3RVER" --version) on $ENDPOINT; $("$AWS" --version 2>&1); $("$RCLONE" version | head -1)${AWS_CFG:+; aws config $AWS_CFG: $(tr '\n' ' ' < "$AWS_CFG")}${RCLONE_FLAGS:+; rclone $RCLONE_FLAGS}"
echo "input: synth --layers $LAYERS --scale $SCALE --max-shard-size $SHARD, $(du -sb "$IN" | cut -f1) bytes in $(ls "$IN"/*.safetensors | wc -l) shards; output $OUT_BYTES bytes in $(wc -l < "$T/want-pipe") files"
echo "uptime before: $(uptime)"

# --- one run ----------------------------------------------------------------------------------
# The peak of the bytes under $LOCAL while the run goes, sampled every 0.1 s, into $T/peak.
start_sampler() {
  (peak=0
   while :; do
     b=$(du -sb "$LOCAL" 2>/dev/null | cut -f1)
     [ "${b:-0}" -gt "$peak" ] && peak=$b && echo "$peak" > "$T/peak"
     sleep 0.1
   done) &
  SAMPLER_PID=$!
}
stop_sampler() { kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=; }

# CPU seconds (user + system) s3rver has used so far.
server_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$S3RVER_PID/stat"
}

prefix_of() {
  case $1 in
  pipe-aws-*) echo a ;; pipe-rclone-*) echo b ;;
  disk+aws-sync|aws-sync-only) echo c ;; disk+rclone-copy|rclone-copy-only) echo d ;;
  esac
}

run_case() { # case
  local c=$1 p
  p=$(prefix_of "$c")
  case $c in
  pipe-aws-u*)
    shardshift convert "$IN" --max-shard-size "$SHARD" --uploads "${c##*-u}" -q \
        --pipe-to 'aws s3 cp - s3://bucket/a/{name} --expected-size {size}' ;;
  pipe-rclone-u*)
    shardshift convert "$IN" --max-shard-size "$SHARD" --uploads "${c##*-u}" -q \
        --pipe-to 'rclone rcat --size {size} remote:bucket/b/{name}' ;;
  disk+aws-sync)
    shardshift convert "$IN" "$LOCAL/out" --max-shard-size "$SHARD" -q &&
      aws s3 sync "$LOCAL/out" s3://bucket/c/ ;;
  disk+rclone-copy)
    shardshift convert "$IN" "$LOCAL/out" --max-shard-size "$SHARD" -q &&
      rclone copy "$LOCAL/out" remote:bucket/d/ ;;
  aws-sync-only) aws s3 sync "$REF" s3://bucket/c/ ;;
  rclone-copy-only) rclone copy "$REF" remote:bucket/d/ ;;
  *) echo "unknown case $c" >&2; return 2 ;;
  esac
}

# Every object under the case's prefix is the reference's file of its name: names and sizes
# through the API, bytes as the server stores them; with $2 = 1 also downloaded and compared.
verify_case() { # case download
  local c=$1 p want name size
  p=$(prefix_of "$c")
  case $c in pipe-*) want=$T/want-pipe ;; *) want=$T/want-dir ;; esac
  aws s3api list-objects-v2 --bucket bucket --prefix "$p/" --query 'Contents[].[Key,Size]' \
      --output text | awk -v p="$p/" '$1 != "None" { sub("^" p, "", $1); print $1, $2 }' |
      sort > "$T/got"
  diff "$want" "$T/got" > "$T/diff" ||
    { echo "VERIFY FAILED: $c: the bucket's objects are not the reference's files:" >&2; cat "$T/diff" >&2; return 1; }
  while read -r name size; do
    cmp -s "$REF/$name" "$DATA/bucket/$p/$name._S3rver_object" ||
      { echo "VERIFY FAILED: $c: object $p/$name differs from the reference" >&2; return 1; }
  done < "$want"
  if [ "$2" = 1 ]; then
    rm -rf "$T/dl" && aws s3 cp --recursive --only-show-errors "s3://bucket/$p/" "$T/dl/"
    while read -r name size; do
      cmp -s "$REF/$name" "$T/dl/$name" ||
        { echo "VERIFY FAILED: $c: download of $p/$name differs from the reference" >&2; return 1; }
    done < "$want"
    rm -rf "$T/dl"
  fi
}

empty_bucket() {
  aws s3 rm --recursive --only-show-errors s3://bucket/
  rm -rf "$DATA/bucket/._S3rver_uploads" # parts of any unfinished upload (none expected)
  rm -rf "$LOCAL/out" "$LOCAL/tmp" && mkdir -p "$LOCAL/tmp"
}

declare -A TIMES PEAKS
for round in $(seq "$RUNS"); do
  for c in $CASES; do
    empty_bucket
    case $c in *-only) cat "$REF"/* > /dev/null ;; *) cat "$IN"/* > /dev/null ;; esac
    sync
    echo 0 > "$T/peak"
    start_sampler
    t0=$(now)
    srv0=$(server_cpu)
    (cd "$LOCAL" && run_case "$c" && times > "$T/times.out") > "$T/case.out" 2>&1 ||
      { stop_sampler; echo "$c : FAILED: $(tail -5 "$T/case.out")" >&2; exit 1; }
    t1=$(now)
    stop_sampler
    srv=$(python3 -c "print(f'{$(server_cpu) - $srv0:.0f}')")
    # `times`' second line: the user and system time of the run's commands (all descendants)
    cli=$(python3 - "$T/times.out" <<'EOF'
import re, sys
t = [float(m[0]) * 60 + float(m[1]) for m in re.findall(r"(\d+)m([\d.]+)s", open(sys.argv[1]).read().splitlines()[1])]
print(f"{sum(t):.0f}")
EOF
)
    s=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    peak=$(cat "$T/peak")
    dl=0
    case $c in *-only) ;; *) [ "$round" = 1 ] && dl=1 ;; esac
    verify_case "$c" "$dl"
    TIMES[$c]+="$s "
    PEAKS[$c]=$(( ${PEAKS[$c]:-0} > peak ? ${PEAKS[$c]:-0} : peak ))
    printf '%-18s run %d: %7.2f s  %7.1f MB/s  peak local disk %6.1f MB  CPU s: commands %s, s3rver %s  load %s  (objects verified)\n' \
        "$c" "$round" "$s" "$(python3 -c "print($OUT_BYTES / $s / 1e6)")" \
        "$(python3 -c "print($peak / 1e6)")" "$cli" "$srv" "$(cut -d' ' -f1 /proc/loadavg)"
  done
done
empty_bucket
echo "uptime after: $(uptime)"

echo "--- median of $RUNS runs (min-max); ratio to (b) = time / time of disk+aws-sync (aws) or disk+rclone-copy (rclone)"
for c in $CASES; do echo "$c ${TIMES[$c]}"; done > "$T/times"
for c in $CASES; do echo "$c ${PEAKS[$c]}"; done > "$T/peaks"
python3 - "$T/times" "$T/peaks" "$OUT_BYTES" <<'EOF'
import statistics, sys
times = {l.split()[0]: [float(x) for x in l.split()[1:]] for l in open(sys.argv[1])}
peaks = {l.split()[0]: int(l.split()[1]) for l in open(sys.argv[2])}
out = int(sys.argv[3])
med = {c: statistics.median(v) for c, v in times.items()}
for c, v in times.items():
    b = "disk+rclone-copy" if "rclone" in c else "disk+aws-sync"
    ratio = f"{med[c] / med[b]:5.2f}x" if b in med else "  -  "
    print(f"{c:18s}: {med[c]:7.2f} s  {out / med[c] / 1e6:6.1f} MB/s  {ratio} of (b)"
          f"   ({min(v):.2f}-{max(v):.2f} s; peak local disk {peaks[c] / 1e6:.1f} MB)")
EOF
