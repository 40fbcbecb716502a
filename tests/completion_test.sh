#!/usr/bin/env bash
# The completion test (ctest label e2e): the generated bash completion offers every command of
# `shardshift --help`, every flag of each `shardshift CMD --help` (both spellings of -q/--quiet...),
# the model names after --model/--adapter, and files for positional arguments. The flags are read
# here from the help with grep, independently of cmake/completion.cmake, so the two cannot drift
# together. Usage: completion_test.sh SHARDSHIFT COMPLETION_FILE
set -euo pipefail
shardshift=$1
# shellcheck source=/dev/null
source "$2"

fail=0
# Completes the words "$@" (the last one being completed) and prints the offers, one per line.
complete_words() {
  COMP_WORDS=("$@")
  COMP_CWORD=$(($# - 1))
  COMPREPLY=()
  _shardshift shardshift "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
  printf '%s\n' "${COMPREPLY[@]}"
}
expect_offer() { # WORD OFFERS... (the offers of complete_words, in $offers' order)
  # A loop, not `printf | grep -q`: grep -q exits at the first match, and under pipefail the
  # SIGPIPE that printf may then get would fail the pipeline now and then.
  local word=$1 offer
  shift
  for offer in "$@"; do
    [ "$offer" = "$word" ] && return 0
  done
  echo "completion: '$word' not offered ($context); offered: $*" >&2
  fail=1
}

commands=$("$shardshift" --help | sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p')
[ -n "$commands" ] || { echo "completion: no commands in --help" >&2; exit 1; }
context="shardshift"
mapfile -t offers < <(complete_words shardshift "")
for command in $commands --version --help; do
  expect_offer "$command" "${offers[@]}"
done

for command in $commands; do
  context="shardshift $command -"
  mapfile -t offers < <(complete_words shardshift "$command" -)
  flags=$("$shardshift" "$command" --help | grep -oE '^  (-[a-zA-Z], )?--[a-z0-9-]+|^      --[a-z0-9-]+' |
          grep -oE -- '-[a-zA-Z]\b|--[a-z0-9-]+')
  [ -n "$flags" ] || { echo "completion: no flags in '$command --help'" >&2; exit 1; }
  for flag in $flags; do
    expect_offer "$flag" "${offers[@]}"
  done
done

models=$("$shardshift" --version | sed -n 's/^models: //p')
context="synth --model"
mapfile -t offers < <(complete_words shardshift synth out --model "")
for model in $models; do expect_offer "$model" "${offers[@]}"; done
context="convert --adapter"
mapfile -t offers < <(complete_words shardshift convert in out --adapter "")
for model in $models; do expect_offer "$model" "${offers[@]}"; done
context="convert --direction"
mapfile -t offers < <(complete_words shardshift convert in out --direction "")
expect_offer to_hf "${offers[@]}"
# A value that is a number offers nothing (not flags, not files).
mapfile -t offers < <(complete_words shardshift synth out --layers "")
[ ${#offers[@]} -eq 0 ] || [ -z "${offers[0]}" ] || { echo "completion: offers after --layers: ${offers[*]}" >&2; fail=1; }
# Positional arguments complete file names.
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir "$dir/demo-hf"
context="inspect PATH"
mapfile -t offers < <(complete_words shardshift inspect "$dir/demo")
expect_offer "$dir/demo-hf" "${offers[@]}"
exit $fail
