#!/usr/bin/env python3
"""thread_states.py: where a process's threads are, sampled from /proc while it runs.

Usage: thread_states.py [--hz N] [--timeline FILE] -- COMMAND [ARGS...]

Runs COMMAND and, every 1/N seconds until it exits, reads each of its threads' state from
/proc/PID/task/TID/{stat,wchan} (and the kernel stack, where root may read it). At the end it
prints to stderr how the samples fell: per thread name, the share running (R), asleep (S) and
in uninterruptible waits (D), with the kernel function each sleep was in. --timeline writes one
line per sample: seconds since start, threads running, threads in D. It also prints the command's wall
time, CPU time and peak RSS, and returns its exit code. The command should be the process to
watch itself (a `taskset` in front is fine: it becomes the command). A poor man's off-CPU profile: it says whether idle cores are threads with nothing to
do, threads waiting on a lock, or threads stuck in the kernel.
"""
import collections
import os
import subprocess
import sys
import time


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def kernel_frames(pid, tid):
    text = read(f"/proc/{pid}/task/{tid}/stack")
    if not text:
        return ""
    names = []
    for line in text.splitlines():
        part = line.split("] ", 1)[-1].split("+", 1)[0].strip()
        if part and not part.startswith(("entry_SYSCALL", "do_syscall", "__x64_sys", "x64_sys")):
            names.append(part)
    return "<".join(names[:4])


def main():
    args = sys.argv[1:]
    hz, timeline = 500.0, None
    while args and args[0] != "--":
        if args[0] == "--hz":
            hz = float(args[1]); args = args[2:]
        elif args[0] == "--timeline":
            timeline = args[1]; args = args[2:]
        else:
            sys.exit(__doc__)
    if not args or len(args) < 2:
        sys.exit(__doc__)
    child = subprocess.Popen(args[1:])
    pid, start = child.pid, time.monotonic()
    states = collections.Counter()  # (name, state, where) -> samples
    per_name = collections.Counter()
    lines = []
    samples = 0
    status = usage = None
    while status is None:
        waited, st, ru = os.wait4(pid, os.WNOHANG)
        if waited == pid:
            status, usage = st, ru
            break
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            break
        running = blocked = 0
        for tid in tids:
            stat = read(f"/proc/{pid}/task/{tid}/stat")
            if not stat:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            state = stat[stat.rindex(")") + 2]
            where = ""
            if state != "R":
                where = kernel_frames(pid, tid) or (read(f"/proc/{pid}/task/{tid}/wchan") or "")
            running += state == "R"
            blocked += state == "D"
            states[(name, state, where)] += 1
            per_name[name] += 1
        samples += 1
        lines.append(f"{time.monotonic() - start:.4f} {running} {blocked}")
        time.sleep(1.0 / hz)
    wall = time.monotonic() - start
    child.returncode = rc = os.waitstatus_to_exitcode(status)
    out = sys.stderr
    print(f"thread_states: {wall:.2f} s wall, {usage.ru_utime:.2f} s user, {usage.ru_stime:.2f} s "
          f"system, peak RSS {usage.ru_maxrss // 1024} MB; {samples} samples", file=out)
    for name, total in per_name.most_common():
        print(f"  {name}: {total} thread-samples", file=out)
        rows = [(k, v) for k, v in states.items() if k[0] == name]
        for (n, state, where), v in sorted(rows, key=lambda kv: -kv[1])[:12]:
            print(f"    {100.0 * v / total:5.1f}%  {state}  {where}", file=out)
    if timeline:
        with open(timeline, "w") as f:
            f.write("\n".join(lines) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
