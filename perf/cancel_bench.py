#!/usr/bin/env python3
"""cancel_bench.py: how long `shardshift convert` takes to stop after Ctrl-C (SIGINT), at random
moments of a real-size conversion, into a directory, with --resume, to stdout and into commands.

For each mode, an uninterrupted run is timed first; then each trial starts the same run, sends
SIGINT at a uniformly random moment between 10% and 90% of that time, and measures the time from
the signal to the process's exit. Every trial must exit 130 and leave nothing beside the input
but what the mode keeps (--resume: its staging directory, removed after the trial). One line per
mode: `mode : n trials, exit after SIGINT min / median / p90 / max ms`.

Usage: perf/cancel_bench.py [--bin build/shardshift] [--layers 4] [--scratch /var/tmp]
                            [--dest DIR] [--trials 10] [--seed 1] [--sync]
Standard library only (runs on the GPU machine too).
"""
import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/shardshift")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--scratch", default="/var/tmp")
    ap.add_argument("--dest", default="")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sync", action="store_true", help="keep fsync (default --no-sync)")
    a = ap.parse_args()
    binary = os.path.realpath(a.bin)
    src = os.path.join(a.scratch, f"cancel-bench-in-{a.layers}")
    dest = a.dest or os.path.join(a.scratch, "cancel-bench-out")
    os.makedirs(dest, exist_ok=True)
    if not os.path.exists(os.path.join(src, "model.safetensors.index.json")):
        subprocess.run([binary, "synth", src, "--layers", str(a.layers), "-q",
                        "--max-shard-size", "1GB"], check=True)
    sync = [] if a.sync else ["--no-sync"]
    out = os.path.join(dest, "out")
    listing = subprocess.run([binary, "plan", src, "--max-shard-size", "1GB", "--print-size"],
                             check=True, capture_output=True, text=True).stdout
    shard = listing.split()[1]  # the first output shard (lines: size, name)
    modes = {
        "dir": ([binary, "convert", src, out, "-q", "--max-shard-size", "1GB"] + sync, None),
        "dir --resume": ([binary, "convert", src, out, "-q", "--max-shard-size", "1GB",
                          "--resume"] + sync, None),
        "stdout --only": ([binary, "convert", src, "-", "--only", shard, "-q",
                           "--max-shard-size", "1GB"], os.path.join(dest, "one.safetensors")),
        "--pipe-to": ([binary, "convert", src, "-q", "--max-shard-size", "1GB", "--pipe-to",
                       "cat > " + os.path.join(dest, "{name}")], None),
    }
    rng = random.Random(a.seed)
    print(f"# cancel_bench: {a.layers} layers, {a.trials} trials per mode, seed {a.seed}, "
          f"dest {dest}, {time.strftime('%Y-%m-%d')}")
    for mode, (cmd, stdout_file) in modes.items():
        def start():
            sink = open(stdout_file, "wb") if stdout_file else subprocess.DEVNULL
            return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE), sink

        def clean():
            for name in os.listdir(dest):
                path = os.path.join(dest, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

        clean()
        t0 = time.perf_counter()
        p, sink = start()
        _, err = p.communicate()
        whole = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"{mode}: the uninterrupted run failed: {err.decode()}")
        waits, finished = [], 0
        for _ in range(a.trials):
            clean()
            p, sink = start()
            time.sleep(rng.uniform(0.1, 0.9) * whole)
            t1 = time.perf_counter()
            p.send_signal(signal.SIGINT)
            _, err = p.communicate()
            if p.returncode == 0:  # finished before the signal came
                finished += 1
                continue
            waits.append((time.perf_counter() - t1) * 1000)
            if p.returncode != 130:
                sys.exit(f"{mode}: exit {p.returncode}: {err.decode()}")
            left = [n for n in os.listdir(dest)
                    if not (mode == "dir --resume" and ".shardshift-tmp-" in n)
                    and not (stdout_file and n == os.path.basename(stdout_file))
                    and not (mode == "--pipe-to")]
            if p.returncode == 130 and left:
                sys.exit(f"{mode}: left behind after SIGINT: {left}")
        if not waits:
            sys.exit(f"{mode}: every run finished before its signal")
        waits.sort()
        p90 = waits[min(len(waits) - 1, int(0.9 * len(waits)))]
        print(f"{mode:14s}: {len(waits)} trials of a {whole:.2f} s run, exit after SIGINT "
              f"min {waits[0]:.0f} / median {statistics.median(waits):.0f} / p90 {p90:.0f} / "
              f"max {waits[-1]:.0f} ms ({finished} finished before the signal)")
        clean()


if __name__ == "__main__":
    main()
