#!/usr/bin/env bash
# family_memory_bench.sh: peak RSS of qwen3_moe and deepseek_v3 conversions at real dimensions
# (every expert), at growing layer counts: DeepSeek-V3 2 and 4 layers (FP8 in, BF16 out) into a
# tmpfs and as a tar stream into a pipe; Qwen3-30B-A3B 2, 4 and 8 layers into a tmpfs
# (docs/PERFORMANCE.md, "qwen3_moe and deepseek_v3 at real dimensions").
# Usage: perf/family_memory_bench.sh [BIN]   (as root: mounts a tmpfs at /mnt/ram; needs ~30 GB
# of RAM for it and ~16 GB of disk under /var/tmp)
set -uo pipefail
B=${1:-build/shardshift}
mkdir -p /mnt/ram && (mountpoint -q /mnt/ram || mount -t tmpfs -o size=100g tmpfs /mnt/ram)
date -u; df -h /var/tmp | tail -1
rss() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e s %M KB" "$@" > /dev/null 2> /tmp/e; echo "$label: $(tail -1 /tmp/e)"
}
for L in 2 4; do
  rm -rf /var/tmp/ds$L; $B synth /var/tmp/ds$L --model deepseek_v3 --layers $L --mtp-layers 0 -q
  echo "deepseek_v3 $L layers: $(du -sh /var/tmp/ds$L | cut -f1) in"
  rm -rf /mnt/ram/o; rss "  to tmpfs (--no-sync)" $B convert /var/tmp/ds$L /mnt/ram/o --no-sync
  du -sh /mnt/ram/o | cut -f1; rm -rf /mnt/ram/o
  rss "  tar stream to a pipe" sh -c "$B convert /var/tmp/ds$L - --format tar | cat > /dev/null"
  rm -rf /var/tmp/ds$L
done
for L in 2 4 8; do
  rm -rf /var/tmp/q$L; $B synth /var/tmp/q$L --model qwen3_moe --layers $L -q
  echo "qwen3_moe $L layers: $(du -sh /var/tmp/q$L | cut -f1) in"
  rm -rf /mnt/ram/o; rss "  to tmpfs (--no-sync)" $B convert /var/tmp/q$L /mnt/ram/o --no-sync
  rm -rf /mnt/ram/o /var/tmp/q$L
done
