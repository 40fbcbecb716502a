#!/usr/bin/env bash
# h200_open_targets.sh: in one call of the lent H200 machine (device time is short), every
# measurement that the open targets of issues 9-12 wait for, each figure printed with what it is
# compared against (docs/PERFORMANCE.md keeps the results):
#   1. the CUDA tests (bit-exactness on the GPU) of the binaries carried;
#   2. cuda_bench --dequant: the FP8 kernel against the device copy and the read-1-write-2 floor;
#   3. Ctrl-C to exit onto the machine's disk with fsync, and into RAM (perf/cancel_bench.py);
#   4. DeepSeek-V3 FP8 -> BF16 end to end, cpu against cuda at 2, 4 and 16 cores
#      (perf/dequant_e2e_bench.sh);
#   5. --checksums against none, 8 real layers into RAM, --no-sync (the SHA-256 share);
#   6. a chunk of a mapping to the GPU, copied or page-locked in place (cuda_bench --register),
#      and cpu against cuda against auto for both plans at 2, 4 and 16 cores
#      (perf/device_choice_bench.sh);
#   7. the GPU's fixed cost: opening and closing it (cuda_bench --init, --init-leave), results
#      downloaded into the output file's pages (--register-out), the GPU opened but given no
#      chunk or every chunk, five rounds of cpu against cuda, and the cpu at the smaller chunks
#      that the GPU slots' share of the budget leaves cuda at 16 threads (--max-memory 768MiB
#      against 1GiB: DeepSeek-V3, where cuda stays 0.3 s behind within the run);
#   8. a thread free while the GPU works and the GPU closed beside the end: cpu, cuda, the same
#      with a sleeping wait (cuda-block) and, when D holds shardshift-old (an earlier build),
#      that build (cuda-old), one round at 2 and 16 cores, then five rounds at 2, 4 and 16;
#   9. what an open CUDA context costs the host's page-table work (cuda_bench --host-cost: faults
#      and MADV_DONTNEED before any CUDA call, while a child process holds a context, with one of
#      its own, with a conversion's chunk buffers page-locked, after its reset), and the GPU
#      opened but given no chunk against cpu and cuda at 16 cores, with each run's system time
#      (2026-12-05: a context makes that work no dearer; docs/PERFORMANCE.md, "What an open GPU
#      costs the host").
#
# Usage, from the repository root on the H200 machine, with the binaries of a build for sm_90
# and the shared libraries they need carried in D (default .dev: shardshift, cuda_bench,
# cuda_*_test, lib/*.so):  perf/h200_open_targets.sh [D [SCRATCH]]
# SCRATCH (default /var/tmp) is on the disk; a tmpfs is mounted at /mnt/ram for the RAM cases.
set -uo pipefail
D=$(realpath "${1:-.dev}")
SCRATCH=${2:-/var/tmp}
export LD_LIBRARY_PATH=$D/lib
B=$D/shardshift
mkdir -p /mnt/ram && (mountpoint -q /mnt/ram || mount -t tmpfs -o size=100g tmpfs /mnt/ram)
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
grep -m1 'model name' /proc/cpuinfo; nproc
findmnt -no SOURCE,FSTYPE,OPTIONS --target "$SCRATCH"

step "1. CUDA tests"
for t in "$D"/cuda_*_test; do
  [ -x "$t" ] && { "$t" --gtest_brief=1 2>&1 | tail -3; }
done

step "2. FP8 dequantization kernel (GB/s read + written, ratio to the device copy)"
"$D"/cuda_bench --dequant

step "3. Ctrl-C to exit, disk with fsync, then RAM"
python3 perf/cancel_bench.py --bin "$B" --layers 2 --scratch "$SCRATCH" --dest "$SCRATCH/cb" \
  --trials 12 --sync
python3 perf/cancel_bench.py --bin "$B" --layers 2 --scratch "$SCRATCH" --dest /mnt/ram/cb \
  --trials 8
rm -rf "$SCRATCH/cb" /mnt/ram/cb

step "4. DeepSeek-V3 end to end, cpu against cuda"
perf/dequant_e2e_bench.sh "$B" "$SCRATCH/ds" /mnt/ram/out
rm -rf /mnt/ram/out

step "5. --checksums against none (8 real layers into RAM, --no-sync, two runs each)"
IN8=$SCRATCH/in8
[ -d "$IN8" ] || "$B" synth "$IN8" --layers 8 -q || exit 1
cat "$IN8"/* >/dev/null
for rep in 1 2; do
  for flags in "" "--checksums"; do
    rm -rf /mnt/ram/out
    /usr/bin/time -f "   ${flags:-plain}: %e s, peak %M KB" "$B" convert "$IN8" /mnt/ram/out \
      --no-sync -q $flags
  done
done
rm -rf /mnt/ram/out
python3 -c "import hashlib,time; b=bytes(1<<30); t=time.time(); hashlib.sha256(b); \
print('   one core SHA-256 (the per-file floor): %.2f GB/s' % ((1<<30)/(time.time()-t)/1e9))"

step "6. reading the input in place; cpu against cuda against auto"
"$D"/cuda_bench --register /mnt/ram
perf/device_choice_bench.sh --bin "$B" --ram /mnt/ram

step "7. the GPU's fixed cost"
for mode in --init --init-leave; do
  start=$(date +%s%N)
  "$D"/cuda_bench $mode
  echo "   $mode: the process took $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
"$D"/cuda_bench --register-out /mnt/ram
perf/device_choice_bench.sh --bin "$B" --ram /mnt/ram --cores "16 2" \
  --devices "cpu cuda cuda-none cuda-all"
perf/device_choice_bench.sh --bin "$B" --ram /mnt/ram --cores "2 4 16" --runs 5
IN=/mnt/ram/ds
"$B" synth "$IN" --model deepseek_v3 --layers 5 --scale-experts 4 --mtp-layers 0 \
  --max-shard-size 2GB -q || exit 1
for rep in 0 1 2 3 4; do
  for mem in 1GiB 768MiB; do
    rm -rf /mnt/ram/out
    /usr/bin/time -f "   cpu --max-memory $mem: %e s, peak %M KB" taskset -c 0-15 "$B" convert "$IN" \
      /mnt/ram/out --no-sync -j 16 --device cpu --max-memory "$mem" -q
    [ "$rep" = 0 ] && break # the first run after synth warms the input up
  done
done
rm -rf "$IN" /mnt/ram/out

step "8. a thread free while the GPU works, the GPU closed beside the end"
OLD=()
[ -x "$D/shardshift-old" ] && OLD=(--old-bin "$D/shardshift-old")
old_dev=${OLD:+cuda-old}
perf/device_choice_bench.sh --bin "$B" "${OLD[@]}" --ram /mnt/ram --cores "2 16" \
  --devices "cpu $old_dev cuda cuda-block cpu-768" --runs 1
perf/device_choice_bench.sh --bin "$B" "${OLD[@]}" --ram /mnt/ram --cores "2 4 16" \
  --devices "cpu cuda $old_dev" --runs 5

step "9. the GPU's cost to the host's page-table work"
"$D"/cuda_bench --host-cost /mnt/ram
perf/device_choice_bench.sh --bin "$B" --ram /mnt/ram --cores 16 --devices "cpu cuda-none cuda" \
  --runs 4
