#!/usr/bin/env bash
# Regenerates tests/golden/*.sha256 from scenarios.txt with the shardshift binary given as $1.
# Only for an intended change of the output format: the golden files pin the bytes every
# conversion writes, and tests/golden_e2e_test.cpp checks the built binary against them.
#   tests/golden/generate.sh build/shardshift
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
scenarios=$(grep -v '^#' "$here/scenarios.txt" | awk 'NF { print $1 }' | uniq)
for s in $scenarios; do
  mkdir "$work/$s"
  grep -v '^#' "$here/scenarios.txt" | awk -v s="$s" '$1 == s { $1 = ""; print substr($0, 2) }' |
    while read -r args; do
      (cd "$work/$s" && eval "\"$bin\" $args" </dev/null 2>/dev/null) ||
        { echo "failed: $s: $args" >&2; exit 1; }
    done
  (cd "$work/$s" && find . -type f | sed 's|^\./||' | LC_ALL=C sort | xargs -d '\n' sha256sum) \
    >"$here/$s.sha256"
  echo "$s: $(wc -l <"$here/$s.sha256") files"
done
