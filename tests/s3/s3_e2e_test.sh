#!/usr/bin/env bash
# s3_e2e_test.sh: `convert --pipe-to` and the README's hand loop against a real S3-compatible server
# on loopback (s3rver 3.7.1 from npm, installed into tests/s3/node_modules by scripts/setup.sh)
# with the real AWS CLI and rclone. Each case starts its own server on a free 127.0.0.1 port with
# a temporary data directory, makes the bucket `bucket`, and reads back through the S3 API.
#
# Usage: s3_e2e_test.sh SHARDSHIFT FIXTURE_DIR aws|rclone CASE
#   FIXTURE_DIR holds the synthetic inputs and local reference conversions, made once (under a
#   lock) and remade when SHARDSHIFT is newer. Exit 0 pass, 1 fail, 77 skip (s3rver, the AWS CLI
#   or rclone missing: scripts/setup.sh installs them).
# Environment: SHARDSHIFT_TEST_AWS (default /usr/bin/aws, Debian's awscli 2.x, rather than a pyenv
#   shim that may come first on PATH), SHARDSHIFT_TEST_S3RVER (default node_modules/.bin/s3rver).
#
# The commands are the README's, word for word: `aws` and `shardshift` on PATH are a wrapper that
# adds --endpoint-url and a link to the binary under test; rclone's remote `remote` is configured
# through RCLONE_CONFIG_REMOTE_* variables.
#
# How a case knows that it interrupts an upload mid-stream: it waits until the server holds some
# tens of MB of multipart parts (s3rver keeps them under BUCKET/._S3rver_uploads until the upload
# completes), stops shardshift (SIGSTOP), checks through the S3 API that no object exists yet,
# then acts (a signal, a truncated input) and lets it go on (SIGCONT).
# The interrupted files are above rclone's multipart cutoff (200 MiB): s3rver writes a single PUT
# straight into the object as it arrives, so an interrupted single-part upload shows there as a
# partial object (real S3 stores nothing for an incomplete PUT). aws uses multipart above 8 MiB.
set -uo pipefail

BIN=$(realpath "$1")
FIXTURE=$2
UPLOADER=$3
CASE=$4
HERE=$(cd "$(dirname "$0")" && pwd)
README="$HERE/../../README.md"

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*" >&2; exit 77; }
note() { echo "--- $*" >&2; }

# --- tools -----------------------------------------------------------------------------------
S3RVER=${SHARDSHIFT_TEST_S3RVER:-$HERE/node_modules/.bin/s3rver}
[ -x "$S3RVER" ] || skip "s3rver not installed at $S3RVER (scripts/setup.sh runs npm ci in tests/s3; npm unreachable?)"
command -v node >/dev/null || skip "node not installed"
AWS=${SHARDSHIFT_TEST_AWS:-}
if [ -z "$AWS" ]; then
  if [ -x /usr/bin/aws ]; then AWS=/usr/bin/aws; else AWS=$(command -v aws || true); fi
fi
[ -n "$AWS" ] && [ -x "$AWS" ] || skip "the AWS CLI is not installed (apt-get install awscli)"
RCLONE=$(command -v rclone || true)
[ -n "$RCLONE" ] || skip "rclone is not installed (apt-get install rclone)"

# --- fixture: inputs and local reference conversions, shared by every case --------------------
# small: 2 layers at 1/8 size (43 MB); `small-native` is its conversion with --max-shard-size 20MB
#   --checksums, `small-default` with default flags (what the README's loop produces).
# big: 1 layer at 1/2 size (611 MB, one input shard); with --max-shard-size 230MB its output is
#   three shards of 369, 369 and 226 MB (all above rclone's multipart cutoff); `big.SHA256SUMS`
#   holds their digests (the shards themselves are not kept).
make_fixture() {
  mkdir -p "$FIXTURE"
  exec 9>"$FIXTURE/lock"
  flock 9
  if [ ! -e "$FIXTURE/ready" ] || [ "$BIN" -nt "$FIXTURE/ready" ]; then
    note "making the fixture in $FIXTURE"
    rm -rf "$FIXTURE/small" "$FIXTURE/small-native" "$FIXTURE/small-default" "$FIXTURE/big" \
           "$FIXTURE/big-native" "$FIXTURE/big.SHA256SUMS" "$FIXTURE/ready"
    "$BIN" synth "$FIXTURE/small" --layers 2 --scale 8 --max-shard-size 20MB -q &&
    "$BIN" synth "$FIXTURE/big" --layers 1 --scale 2 -q &&
    "$BIN" convert "$FIXTURE/small" "$FIXTURE/small-native" --max-shard-size 20MB --checksums \
        --no-sync -q &&
    "$BIN" convert "$FIXTURE/small" "$FIXTURE/small-default" --no-sync -q &&
    "$BIN" convert "$FIXTURE/big" "$FIXTURE/big-native" --max-shard-size 230MB --checksums \
        --no-sync -q &&
    cp "$FIXTURE/big-native/SHA256SUMS" "$FIXTURE/big.SHA256SUMS" &&
    rm -rf "$FIXTURE/big-native" && touch "$FIXTURE/ready" || fail "cannot make the fixture"
  fi
  exec 9>&-
}
make_fixture
BIG_SHARDS=(model-00001-of-00003.safetensors model-00002-of-00003.safetensors
            model-00003-of-00003.safetensors)
[ "$(grep -c safetensors "$FIXTURE/big.SHA256SUMS")" = 4 ] ||
  fail "the big fixture is not 3 shards and an index: $(cat "$FIXTURE/big.SHA256SUMS")"

# --- server, environment, cleanup ----------------------------------------------------------------
T=$(mktemp -d "${TMPDIR:-/tmp}/shardshift-s3.XXXXXX")
RUN_ID="$T"
S3RVER_PID=
# Processes this case started through MARKED (shardshift, its uploaders and their guards,
# the README loop): they inherit SHARDSHIFT_S3_TEST_RUN; this shell and s3rver do not.
our_pids() {
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    grep -qzx "SHARDSHIFT_S3_TEST_RUN=$RUN_ID" "$f" 2>/dev/null && echo "$pid"
  done
}
cleanup() {
  local p
  for p in $(our_pids); do kill -KILL "$p" 2>/dev/null; done
  [ -n "$S3RVER_PID" ] && kill "$S3RVER_PID" 2>/dev/null && wait "$S3RVER_PID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
# A command, not a function: `"${MARKED[@]}" shardshift ... &` makes $! shardshift's own pid.
MARKED=(env SHARDSHIFT_S3_TEST_RUN="$RUN_ID")

mkdir -p "$T/s3" "$T/bin" "$T/run"
"$S3RVER" -d "$T/s3" -a 127.0.0.1 -p 0 --silent > "$T/s3rver.out" 2>&1 &
S3RVER_PID=$!
PORT=
for _ in $(seq 200); do
  PORT=$(sed -n 's/^S3rver listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$T/s3rver.out")
  [ -n "$PORT" ] && break
  kill -0 "$S3RVER_PID" 2>/dev/null || fail "s3rver did not start: $(cat "$T/s3rver.out")"
  sleep 0.05
done
[ -n "$PORT" ] || fail "s3rver did not say its port: $(cat "$T/s3rver.out")"
ENDPOINT="http://127.0.0.1:$PORT"

# Credentials and configuration from the environment only (no ~/.aws, no rclone.conf). A CA
# bundle in the environment makes rclone 1.60 fail even for plain http (LoadCustomCABundleError).
unset AWS_CA_BUNDLE AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_PAGER="" AWS_CONFIG_FILE="$T/no-aws-config"
export AWS_SHARED_CREDENTIALS_FILE="$T/no-aws-credentials"
export RCLONE_CONFIG=/dev/null RCLONE_CONFIG_REMOTE_TYPE=s3
export RCLONE_CONFIG_REMOTE_PROVIDER=Other RCLONE_CONFIG_REMOTE_ENDPOINT="$ENDPOINT"
export RCLONE_CONFIG_REMOTE_ACCESS_KEY_ID=S3RVER RCLONE_CONFIG_REMOTE_SECRET_ACCESS_KEY=S3RVER
export RCLONE_CONFIG_REMOTE_REGION=us-east-1
printf '#!/bin/sh\nexec %s --endpoint-url %s "$@"\n' "$AWS" "$ENDPOINT" > "$T/bin/aws"
chmod +x "$T/bin/aws"
ln -s "$BIN" "$T/bin/shardshift"
ln -s "$RCLONE" "$T/bin/rclone"
export PATH="$T/bin:$PATH"
note "s3rver $("$S3RVER" --version) on $ENDPOINT; $("$AWS" --version 2>&1); $(rclone version | head -1)"
aws s3 mb s3://bucket >/dev/null || fail "cannot make the bucket"

case $UPLOADER in
  aws) PIPE_TO='aws s3 cp - s3://bucket/native/{name} --expected-size {size}' ;;
  rclone) PIPE_TO='rclone rcat --size {size} remote:bucket/native/{name}' ;;
  *) fail "unknown uploader $UPLOADER" ;;
esac

# --- reading the bucket back ---------------------------------------------------------------------
# "NAME SIZE" of every object under native/, sorted.
objects() {
  aws s3api list-objects-v2 --bucket bucket --prefix native/ --query 'Contents[].[Key,Size]' \
      --output text | awk '$1 != "None" { sub(/^native\//, "", $1); print $1, $2 }' | sort
}
download_all() { # into $1
  mkdir -p "$1" && aws s3 cp --recursive --quiet s3://bucket/native/ "$1/" || fail "download failed"
}
# Every object present is whole (its SHA-256 is the one in $1, a SHA256SUMS of the expected
# files) and the index is not there.
expect_nothing_truncated() {
  local sums=$1 name size want got
  objects > "$T/objects" || fail "cannot list the bucket"
  note "objects after the run: $(tr '\n' ';' < "$T/objects"); parts of unfinished uploads left on the server: $(du -sb "$T/s3/bucket/._S3rver_uploads" 2>/dev/null | cut -f1) bytes"
  ! grep -q '^model.safetensors.index.json ' "$T/objects" ||
    fail "the index was uploaded although the run failed"
  download_all "$T/dl-check"
  while read -r name size; do
    want=$(awk -v n="$name" '$2 == n { print $1 }' "$sums")
    [ -n "$want" ] || [ "$name" = config.json ] || fail "unexpected object $name"
    got=$(sha256sum < "$T/dl-check/$name" | cut -d' ' -f1)
    if [ "$name" = config.json ]; then
      cmp -s "$T/dl-check/$name" "$FIXTURE/big/config.json" || fail "config.json differs"
    elif [ "$got" != "$want" ]; then
      fail "object $name is not the file it names: $size bytes, SHA-256 $got, expected $want"
    fi
  done < "$T/objects"
}
# Waits (at most 60 s) until the server holds at least $1 bytes of uncommitted multipart parts,
# while process $2 still runs.
wait_for_parts() {
  local min=$1 pid=$2 n deadline=$((SECONDS + 60))
  while :; do
    n=$(du -sb "$T/s3/bucket/._S3rver_uploads" 2>/dev/null | cut -f1)
    [ "${n:-0}" -ge "$min" ] && return 0
    kill -0 "$pid" 2>/dev/null || fail "the run ended before $min bytes were in flight: $(cat "$T/err" 2>/dev/null)"
    [ $SECONDS -lt $deadline ] || fail "no upload in flight after 60 s (${n:-0} bytes of parts)"
    sleep 0.05
  done
}
# Stops $1 while its upload is in flight and checks that nothing is committed yet.
stop_mid_stream() {
  wait_for_parts $((32 << 20)) "$1"
  kill -STOP "$1"
  local held
  held=$(du -sb "$T/s3/bucket/._S3rver_uploads" | cut -f1)
  [ -z "$(objects)" ] || fail "an object was already complete, not mid-stream: $(objects)"
  note "stopped mid-stream: $held bytes of parts on the server, no object"
}
# After the run: its uploaders and their guards end by themselves (at most 30 s).
expect_no_process_left() {
  local deadline=$((SECONDS + 30))
  while [ -n "$(our_pids)" ]; do
    [ $SECONDS -lt $deadline ] ||
      fail "processes left 30 s after the run: $(for p in $(our_pids); do tr '\0' ' ' < /proc/$p/cmdline; echo; done)"
    sleep 0.1
  done
}
expect_rc() { # want got what
  [ "$2" = "$1" ] || fail "$3: exit status $2, expected $1; stderr: $(cat "$T/err")"
}
expect_in_err() {
  grep -qF -- "$1" "$T/err" || fail "stderr lacks '$1': $(cat "$T/err")"
}
# The summary lists every file of the big conversion, the first in-flight shard as failed and the
# index as not delivered.
expect_big_summary() {
  local f
  for f in "${BIG_SHARDS[@]}" config.json model.safetensors.index.json; do
    grep -qE "^shardshift:   $f: (delivered|failed|not started)" "$T/err" ||
      fail "the summary does not list $f: $(cat "$T/err")"
  done
  grep -qE "^shardshift:   model.safetensors.index.json: not started" "$T/err" ||
    fail "the index is not reported as not started: $(cat "$T/err")"
  grep -qE "^shardshift:   ${BIG_SHARDS[0]}: failed" "$T/err" ||
    fail "the in-flight shard is not reported as failed: $(cat "$T/err")"
}

# --- the cases ---------------------------------------------------------------------------------
case_upload() {
  # Every file of a multi-shard conversion, with --checksums: byte for byte the local conversion,
  # SHA256SUMS among them, and `sha256sum -c` passes on the download.
  cd "$T/run"
  "${MARKED[@]}" shardshift convert "$FIXTURE/small" --max-shard-size 20MB --checksums \
      --pipe-to "$PIPE_TO" > "$T/out" 2> "$T/err"
  expect_rc 0 $? "convert --pipe-to"
  cat "$T/err" >&2
  (cd "$FIXTURE/small-native" && find . -type f ! -name .shardshift-output | sed 's|^\./||' |
     sort) > "$T/want"
  [ "$(wc -l < "$T/want")" -ge 6 ] || fail "the reference has too few files: $(cat "$T/want")"
  grep -qx SHA256SUMS "$T/want" || fail "the reference has no SHA256SUMS"
  objects | cut -d' ' -f1 > "$T/got"
  diff "$T/want" "$T/got" >&2 || fail "the bucket's objects are not the local conversion's files"
  download_all "$T/dl"
  local f
  while read -r f; do
    cmp "$FIXTURE/small-native/$f" "$T/dl/$f" || fail "$f differs from the local conversion"
    expect_in_err "$f: delivered"
  done < "$T/want"
  (cd "$T/dl" && sha256sum -c --strict SHA256SUMS >&2) || fail "sha256sum -c failed"
  [ "$(grep -c . "$T/dl/SHA256SUMS")" = "$(($(wc -l < "$T/want") - 1))" ] ||
    fail "SHA256SUMS does not list every other file: $(cat "$T/dl/SHA256SUMS")"
  note "$(wc -l < "$T/want") objects, byte-identical; sha256sum -c passes"
}

# SIGINT or SIGTERM ($1) to shardshift while its first shards are mid-stream.
case_signal() {
  cd "$T/run"
  "${MARKED[@]}" shardshift convert "$FIXTURE/big" --max-shard-size 230MB --pipe-to "$PIPE_TO" \
      > "$T/out" 2> "$T/err" &
  local pid=$!
  stop_mid_stream $pid
  kill -"$1" $pid
  kill -CONT $pid
  wait $pid
  expect_rc 130 $? "convert after SIG$1"
  cat "$T/err" >&2
  expect_big_summary
  expect_no_process_left
  expect_nothing_truncated "$FIXTURE/big.SHA256SUMS"
  ! grep -q "^${BIG_SHARDS[0]} " "$T/objects" || fail "the interrupted shard was committed"
}

# kill -9: shardshift cannot act, the guard of each uploader interrupts it.
case_kill9() {
  cd "$T/run"
  "${MARKED[@]}" shardshift convert "$FIXTURE/big" --max-shard-size 230MB --pipe-to "$PIPE_TO" \
      > "$T/out" 2> "$T/err" &
  local pid=$!
  stop_mid_stream $pid
  kill -KILL $pid
  wait $pid
  expect_rc 137 $? "convert after SIGKILL"
  expect_no_process_left
  expect_nothing_truncated "$FIXTURE/big.SHA256SUMS"
  ! grep -q "^${BIG_SHARDS[0]} " "$T/objects" || fail "the interrupted shard was committed"
}

# The input shard is truncated while the first shards are mid-stream.
case_input_error() {
  mkdir -p "$T/in"
  cp "$FIXTURE/big/model.safetensors" "$T/in/" && ln -s "$FIXTURE/big/config.json" "$T/in/" ||
    fail "cannot copy the input"
  cd "$T/run"
  "${MARKED[@]}" shardshift convert "$T/in" --max-shard-size 230MB --pipe-to "$PIPE_TO" \
      > "$T/out" 2> "$T/err" &
  local pid=$!
  stop_mid_stream $pid
  truncate -s 1MiB "$T/in/model.safetensors"
  kill -CONT $pid
  wait $pid
  expect_rc 1 $? "convert of an input truncated mid-stream"
  cat "$T/err" >&2
  expect_in_err "$T/in/model.safetensors: file changed while reading"
  expect_big_summary
  expect_no_process_left
  expect_nothing_truncated "$FIXTURE/big.SHA256SUMS"
  ! grep -q "^${BIG_SHARDS[0]} " "$T/objects" || fail "the failed shard was committed"
}

# The second shard's uploader fails (a bucket name S3 refuses: uppercase and "_"; rclone would create a
# missing bucket with a valid name); the first is in flight beside it.
case_bad_bucket() {
  local bad="${BIG_SHARDS[1]}"
  local command="b=bucket; if [ {name} = $bad ]; then b=Bad_Bucket; fi; "
  case $UPLOADER in
    aws) command+='aws s3 cp - "s3://$b/native/"{name} --expected-size {size}' ;;
    rclone) command+='rclone rcat --size {size} "remote:$b/native/"{name}' ;;
  esac
  cd "$T/run"
  "${MARKED[@]}" shardshift convert "$FIXTURE/big" --max-shard-size 230MB --pipe-to "$command" \
      > "$T/out" 2> "$T/err"
  expect_rc 1 $? "convert with a failing uploader"
  cat "$T/err" >&2
  grep -qE "^shardshift:   $bad: failed: the command exited with status [1-9]" "$T/err" ||
    fail "the summary does not report $bad's uploader as failed: $(cat "$T/err")"
  local f
  for f in "${BIG_SHARDS[@]}" config.json model.safetensors.index.json; do
    grep -qE "^shardshift:   $f: (delivered|failed|not started)" "$T/err" ||
      fail "the summary does not list $f"
  done
  grep -qE "^shardshift:   model.safetensors.index.json: not started" "$T/err" ||
    fail "the index is not reported as not started"
  expect_no_process_left
  expect_nothing_truncated "$FIXTURE/big.SHA256SUMS"
  ! grep -q "^$bad " "$T/objects" || fail "$bad is in the bucket"
}

# The README's hand loop (the block with `shardshift plan hf --print-size | while`), run as
# written, in a directory where `hf` is the input.
readme_loop() {
  awk '/^ *```sh$/ { inblock = 1; text = ""; next }
       inblock && /^ *```$/ { inblock = 0; if (text ~ /--print-size \| while/) print text; next }
       inblock { sub(/^  /, ""); text = text $0 "\n" }' "$README" > "$T/loop.sh"
  grep -q 'shardshift convert hf - --only' "$T/loop.sh" ||
    fail "README.md has no hand loop with --only to run"
  note "the README's loop:"
  cat "$T/loop.sh" >&2
}

case_readme_loop() {
  readme_loop
  ln -s "$FIXTURE/small" "$T/run/hf"
  cd "$T/run"
  "${MARKED[@]}" bash "$T/loop.sh" > "$T/out" 2> "$T/err"
  expect_rc 0 $? "the README's loop"
  shardshift plan hf --print-size | awk '{ print $2, $1 }' | sort > "$T/want"
  objects > "$T/got"
  diff "$T/want" "$T/got" >&2 || fail "the bucket does not hold plan --print-size's files and sizes"
  download_all "$T/dl"
  local name size
  while read -r name size; do
    cmp "$FIXTURE/small-default/$name" "$T/dl/$name" || fail "$name differs from a local conversion"
  done < "$T/want"
  note "$(wc -l < "$T/want") objects, byte-identical"
}

case_readme_loop_failure() {
  readme_loop
  mkdir -p "$T/run/hf"
  cp "$FIXTURE/big/model.safetensors" "$T/run/hf/" && ln -s "$FIXTURE/big/config.json" "$T/run/hf/" ||
    fail "cannot copy the input"
  cd "$T/run"
  "${MARKED[@]}" bash "$T/loop.sh" > "$T/out" 2> "$T/err" &
  local loop=$! pid= p
  wait_for_parts $((32 << 20)) $loop
  for p in $(our_pids); do
    tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q "^shardshift convert hf - --only" && pid=$p
  done
  [ -n "$pid" ] || fail "no shardshift convert in the loop"
  stop_mid_stream "$pid"
  truncate -s 1MiB hf/model.safetensors
  kill -CONT "$pid"
  wait $loop
  expect_rc 1 $? "the README's loop with an input truncated mid-stream"
  cat "$T/err" >&2
  expect_in_err "hf/model.safetensors: file changed while reading"
  grep -qF "delete: s3://bucket/native/model.safetensors" "$T/out" ||
    fail "the loop did not remove the failed object: $(cat "$T/out")"
  expect_no_process_left
  objects > "$T/objects"
  [ ! -s "$T/objects" ] || fail "objects left after the loop failed: $(cat "$T/objects")"
}

SECONDS=0
case $CASE in
  UploadsEveryFileByteForByte) case_upload ;;
  SigintMidStreamCommitsNothingTruncated) case_signal INT ;;
  SigtermMidStreamCommitsNothingTruncated) case_signal TERM ;;
  Kill9MidStreamCommitsNothingTruncated) case_kill9 ;;
  InputErrorMidStreamCommitsNothingTruncated) case_input_error ;;
  FailingUploaderFailsTheRunAndDeliversNoIndex) case_bad_bucket ;;
  ReadmeLoopUploadsEveryFile) case_readme_loop ;;
  ReadmeLoopRemovesAFailedObject) case_readme_loop_failure ;;
  *) fail "unknown case $CASE" ;;
esac
echo "PASS: $UPLOADER $CASE (${SECONDS}s)"
