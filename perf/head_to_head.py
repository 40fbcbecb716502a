#!/usr/bin/env python3
"""head_to_head.py: shardshift against cp and against the Python way, on one checkpoint, in one run.

Cases, each timed with its peak resident memory (/usr/bin/time -v when present, else
getrusage(RUSAGE_CHILDREN) in a fresh helper process so each case is measured alone):

  cp            `cp -r IN OUT` (the physical floor: same filesystem, same bytes moved), and the
                same copy plus an fsync of its files (shardshift fsyncs what it writes, so
                "cp -r + fsync" is the floor at equal durability; ratios are against it)
  cpu           `shardshift convert IN OUT --device cpu`
  cuda          `shardshift convert IN OUT --device cuda` (only where nvidia-smi sees a GPU)
  python        perf/python_convert.py: load_file, PyTorch transformation, save_file

Then the Python output and shardshift's are compared tensor by tensor (names, dtypes, shapes,
bytes; any two NaNs are equal), reading both lazily so memory stays low. Where both cpu and cuda
ran and the disk has room, their output directories are also compared file by file.

The page cache is warmed (the input is read once) before every case; outputs are removed and
`sync` runs between cases. Before each timed run the script waits (up to --wait-idle seconds)
until no compiler runs on the machine, and records the load average it ran under.

Exit status: 0 when the outputs hold identical tensors, 1 when they do not or a case failed,
2 on bad usage.

Examples:
  perf/head_to_head.py --layers 2 --scratch /var/tmp/h2h --json-out h2h.json
  perf/head_to_head.py /data/diffusiongemma-hf --cases cp,cpu,python
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import safetensors_io  # noqa: E402

COMPILERS = ("cc1plus", "cc1", "cicc", "ptxas", "lto1")
# NaN tests on the raw bit patterns: exponent all ones and a non-zero mantissa.
NAN_TESTS = {
    "BF16": ("<u2", 0x7FFF, 0x7F80),
    "F16": ("<u2", 0x7FFF, 0x7C00),
    "F32": ("<u4", 0x7FFFFFFF, 0x7F800000),
    "F64": ("<u8", 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def dir_bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def files_of(path):
    if os.path.isfile(path):
        return [path]
    out = []
    for root, _, files in os.walk(path):
        out += [os.path.join(root, f) for f in sorted(files)]
    return out


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def compilers_running():
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() in COMPILERS:
                    n += 1
        except OSError:
            pass
    return n


def wait_idle(limit_s, poll_s=30):
    """Waits until no compiler runs (at most limit_s); returns (compilers, load average)."""
    start = time.monotonic()
    n = compilers_running()
    while n and time.monotonic() - start < limit_s:
        log(f"  waiting: {n} compiler process(es) running, load {os.getloadavg()[0]:.2f}")
        time.sleep(poll_s)
        n = compilers_running()
    return n, os.getloadavg()


def warm(path):
    """Reads every file of path once so the runs start from a warm page cache."""
    for f in files_of(path):
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def sync_all():
    subprocess.run(["sync"], check=False)


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def measured(cmd, env=None):
    """Runs cmd; returns (wall seconds, peak RSS bytes, exit status, captured stdout, stderr)."""
    time_bin = "/usr/bin/time"
    if os.access(time_bin, os.X_OK):
        with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
            t0 = time.perf_counter()
            p = subprocess.run([time_bin, "-v", "-o", tf.name] + cmd, capture_output=True,
                               text=True, env=env)
            wall = time.perf_counter() - t0
            report = tf.read()
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
        rss = int(m.group(1)) * 1024 if m else 0
        return wall, rss, p.returncode, p.stdout, p.stderr
    # No GNU time: a fresh helper whose RUSAGE_CHILDREN covers only this command.
    helper = ("import resource, subprocess, sys, time, json\n"
              "t0 = time.perf_counter()\n"
              "p = subprocess.run(sys.argv[1:])\n"
              "w = time.perf_counter() - t0\n"
              "r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
              "sys.stderr.write('\\n@@H2H ' + json.dumps([w, r * 1024, p.returncode]) + '\\n')\n"
              "sys.exit(0)\n")
    p = subprocess.run([sys.executable, "-c", helper] + cmd, capture_output=True, text=True, env=env)
    m = re.search(r"@@H2H (\[.*\])", p.stderr)
    wall, rss, rc = json.loads(m.group(1)) if m else (0.0, 0, 1)
    return wall, rss, rc, p.stdout, p.stderr[: m.start()] if m else p.stderr


def timed_fsync(path):
    t0 = time.perf_counter()
    subprocess.run(["sync"] + files_of(path), check=False)
    return time.perf_counter() - t0


def gpu_names():
    try:
        p = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if p.returncode != 0:
        return []
    return [line.split(":", 1)[1].split("(")[0].strip() for line in p.stdout.splitlines()
            if line.startswith("GPU ")]


def machine_info(scratch):
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        m = re.search(r"MemTotal:\s*(\d+) kB", f.read())
        mem = int(m.group(1)) * 1024 if m else 0
    fs = "?"
    p = subprocess.run(["df", "-T", scratch], capture_output=True, text=True)
    if p.returncode == 0 and len(p.stdout.splitlines()) > 1:
        parts = p.stdout.splitlines()[1].split()
        fs = f"{parts[1]} on {parts[0]}"
    gpus = gpu_names()
    return {"cpu": cpu, "nproc": os.cpu_count(), "ram_gb": round(mem / 1e9, 1),
            "scratch_fs": fs, "gpus": gpus, "host": platform.node(),
            "kernel": platform.release()}


# ---------------------------------------------------------------------------------------------
# Identity check


def nan_equal(a, b, dtype):
    """True when two equal-length byte strings differ only where both hold a NaN."""
    if dtype not in NAN_TESTS:
        return False
    import numpy as np

    fmt, mask, inf = NAN_TESTS[dtype]
    x = np.frombuffer(a, dtype=fmt)
    y = np.frombuffer(b, dtype=fmt)
    differ = x != y
    xn = (x[differ] & mask) > inf
    yn = (y[differ] & mask) > inf
    return bool(np.all(xn & yn))


def compare_checkpoints(a_path, b_path, max_report=10):
    """Returns (number of tensors compared, list of differences as text)."""
    a = safetensors_io.RawCheckpoint(a_path)
    b = safetensors_io.RawCheckpoint(b_path)
    diffs = []
    try:
        an, bn = set(a.names()), set(b.names())
        for name in sorted(an - bn)[:max_report]:
            diffs.append(f"only in {a_path}: {name}")
        for name in sorted(bn - an)[:max_report]:
            diffs.append(f"only in {b_path}: {name}")
        common = sorted(an & bn)
        for name in common:
            if len(diffs) >= max_report:
                break
            (ad, ashape), (bd, bshape) = a.info(name), b.info(name)
            if ad != bd or ashape != bshape:
                diffs.append(f"{name}: {ad}{ashape} vs {bd}{bshape}")
                continue
            offset = 0
            for ca, cb in zip(a.chunks(name), b.chunks(name)):
                if ca != cb and (len(ca) != len(cb) or not nan_equal(ca, cb, ad)):
                    diffs.append(f"{name}: bytes differ in the 64 MiB chunk at byte {offset}")
                    break
                offset += len(ca)
        return len(common), diffs
    finally:
        a.close()
        b.close()


def same_files(a, b):
    """Byte-for-byte comparison of two output directories; returns a list of differences."""
    an = sorted(os.path.relpath(f, a) for f in files_of(a))
    bn = sorted(os.path.relpath(f, b) for f in files_of(b))
    if an != bn:
        return [f"file lists differ: {an} vs {bn}"]
    return [f"{n} differs" for n in an if not same_bytes(os.path.join(a, n), os.path.join(b, n))]


def same_bytes(a, b, chunk=64 << 20):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


def annotate(results, in_bytes):
    """Adds GB/s (input bytes per second) and the ratios to both copies to every result."""
    floor = next((r for r in results if r["case"] == "cp -r + fsync"), None)
    plain = next((r for r in results if r["case"] == "cp -r"), None)
    for r in results:
        r["gb_per_s"] = in_bytes / r["seconds"] / 1e9 if r["seconds"] > 0 else 0
        r["ratio_to_cp"] = r["seconds"] / floor["seconds"] if floor and floor["seconds"] else None
        r["ratio_to_plain_cp"] = r["seconds"] / plain["seconds"] if plain and plain["seconds"] else None


# ---------------------------------------------------------------------------------------------


T0 = time.monotonic()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("input", nargs="?", help="checkpoint to convert (default: generate one)")
    ap.add_argument("--layers", type=int, default=2, help="layers of the generated checkpoint")
    ap.add_argument("--scale", type=int, default=1, help="--scale of the generated checkpoint")
    ap.add_argument("--scratch", default=os.environ.get("TMPDIR", "/var/tmp"),
                    help="where inputs and outputs go (a real disk; default $TMPDIR or /var/tmp)")
    ap.add_argument("--bin", default=None, help="shardshift binary (default: build-bench, build)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for python_convert.py")
    ap.add_argument("--cases", default="cp,cpu,cuda,python",
                    help="comma list of cp, cpu, cuda, python (cuda is skipped without a GPU)")
    ap.add_argument("--runs", type=int, default=1,
                    help="timed runs per case; 1-2: the last is reported, 3+: the median")
    ap.add_argument("--python-runs", type=int, default=None, help="runs of the python case")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds this run may take: repeats are skipped once half is spent")
    ap.add_argument("--max-memory", default=None, help="--max-memory for shardshift")
    ap.add_argument("--jobs", default=None, help="-j for shardshift")
    ap.add_argument("--wait-idle", type=float, default=600,
                    help="seconds to wait for running compilers to finish before each run")
    ap.add_argument("--no-compare-devices", action="store_true",
                    help="do not keep the cpu output to compare it with the cuda output")
    ap.add_argument("--keep-input", action="store_true", help="keep a generated input")
    ap.add_argument("--json-out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    bin_path = args.bin
    if bin_path is None:
        root = os.path.dirname(HERE)
        for cand in ("build-bench/shardshift", "build/shardshift", "build-cuda/shardshift"):
            if os.access(os.path.join(root, cand), os.X_OK):
                bin_path = os.path.join(root, cand)
                break
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in ("cp", "cpu", "cuda", "python")]
    if bad:
        ap.error(f"unknown case(s): {', '.join(bad)}")
    if any(c in cases for c in ("cpu", "cuda")) or not args.input:
        if not bin_path or not os.access(bin_path, os.X_OK):
            ap.error("no shardshift binary: build it or pass --bin")
    os.makedirs(args.scratch, exist_ok=True)
    work = tempfile.mkdtemp(prefix="h2h-", dir=args.scratch)
    machine = machine_info(work)
    if "cuda" in cases and not machine["gpus"]:
        log("no GPU (nvidia-smi): skipping the cuda case")
        cases.remove("cuda")

    generated = False
    if args.input:
        src = os.path.abspath(args.input)
        layers, scale = None, None
    else:
        src = os.path.join(work, "in")
        layers, scale = args.layers, args.scale
        # About 1.63 GB per real layer plus 1.6 GB of embedding, vision tower and the rest, over scale^2.
        need = (1.63e9 * layers + 1.7e9) / (scale * scale)
        if free_bytes(work) < need * 2.2 + 1e9:
            sys.exit(f"head_to_head: {work}: {free_bytes(work) / 1e9:.1f} GB free, need about "
                     f"{(need * 2.2 + 1e9) / 1e9:.1f} GB (input, one output, margin)")
        log(f"generating {layers} layer(s) at scale {scale} into {src}")
        t0 = time.perf_counter()
        subprocess.run([bin_path, "synth", src, "--layers", str(layers), "--scale", str(scale)],
                       check=True)
        log(f"  synth took {time.perf_counter() - t0:.1f} s")
        generated = True
    in_bytes = dir_bytes(src)
    config = {}
    try:
        with open(os.path.join(src, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        pass
    if layers is None and isinstance(config.get("num_hidden_layers"), int):
        layers = config["num_hidden_layers"]
    in_files = len([f for f in files_of(src) if f.endswith(".safetensors")])

    results, failures = [], []
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def write_json(summary=None, identity=None, complete=False):
        """Writes what is known so far, so a run cut short still leaves its finished cases."""
        if not args.json_out:
            return
        annotate(results, in_bytes)
        doc = {"date": started, "complete": complete, "machine": machine,
               "command": " ".join(sys.argv), "binary": bin_path,
               "checkpoint": {"path": src, "bytes": in_bytes, "files": in_files, "layers": layers,
                              "scale": scale, "hidden_size": config.get("hidden_size"),
                              "num_experts": config.get("num_experts")},
               "cases": results, "summary": summary or [], "identity": identity,
               "failures": failures}
        tmp = args.json_out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, args.json_out)
    outputs = {}  # case -> output directory kept for the comparisons

    def run_case(name, label, make_cmd, out_dir, runs, keep=None):
        """Times one case; keep: the key under which its output stays in `outputs`."""
        times, rsss, fsyncs, loads = [], [], [], []
        extra = None
        for i in range(runs):
            if i and args.budget and time.monotonic() - T0 > args.budget / 2:
                log(f"  {name}: repeat skipped, half of the {args.budget:.0f} s budget is spent")
                break
            remove(out_dir)
            sync_all()
            warm(src)
            n, load = wait_idle(args.wait_idle)
            loads.append({"load1": round(load[0], 2), "compilers": n})
            need = in_bytes * 1.1 + 2e9
            if free_bytes(work) < need and name == "shardshift cuda" and "cpu" in outputs:
                log("  not enough disk to keep the cpu output for the device comparison: removed")
                remove(outputs.pop("cpu"))
            if free_bytes(work) < need:
                raise SystemExit(f"head_to_head: {work}: {free_bytes(work) / 1e9:.1f} GB free, "
                                 f"case {name} needs about {need / 1e9:.1f} GB")
            wall, rss, rc, out, err = measured(make_cmd(out_dir))
            if rc != 0:
                failures.append(f"{name}: exit {rc}: {err.strip()[-2000:]}")
                log(f"  {name}: FAILED (exit {rc})\n{err.strip()[-2000:]}")
                remove(out_dir)
                return None
            fs = timed_fsync(out_dir)
            times.append(wall)
            rsss.append(rss)
            fsyncs.append(fs)
            log(f"  {name} run {i + 1}/{runs}: {wall:.2f} s (+{fs:.2f} s fsync), "
                f"peak RSS {rss / 1e6:.0f} MB, load {load[0]:.2f}, compilers {n}")
            if out.strip().startswith("{"):
                try:
                    extra = json.loads(out.strip().splitlines()[-1])
                except ValueError:
                    pass
        pick = (lambda v: v[-1]) if len(times) <= 2 else statistics.median
        out_bytes = dir_bytes(out_dir)
        res = {"case": name, "label": label, "seconds": pick(times), "runs": times,
               "fsync_seconds": pick(fsyncs), "peak_rss_bytes": int(pick(rsss)),
               "rss_runs": rsss, "output_bytes": out_bytes, "load": loads}
        if extra:
            res["details"] = extra
        if keep:
            outputs[keep] = out_dir
        else:
            remove(out_dir)
        sync_all()
        return res

    shardshift_common = []
    if args.max_memory:
        shardshift_common += ["--max-memory", args.max_memory]
    if args.jobs:
        shardshift_common += ["-j", str(args.jobs)]
    python_runs = args.python_runs or args.runs

    for case in cases:
        out_dir = os.path.join(work, f"out-{case}")
        log(f"case {case}")
        if case == "cp":
            r = run_case("cp -r", "cp -r", lambda o: ["cp", "-r", src, o], out_dir, args.runs)
            if r:
                results.append(r)
                synced = dict(r, case="cp -r + fsync", label="cp -r + fsync",
                              seconds=r["seconds"] + r["fsync_seconds"])
                results.append(synced)
                write_json()
        elif case in ("cpu", "cuda"):
            keep = case == "cuda" or not ("cuda" in cases and args.no_compare_devices)
            r = run_case(f"shardshift {case}", f"shardshift --device {case}",
                         lambda o, d=case: [bin_path, "convert", src, o, "--device", d, "--json",
                                            "--quiet"] + shardshift_common,
                         out_dir, args.runs, case if keep else None)
            if r:
                results.append(r)
                write_json()
                if case == "cuda" and "cpu" in outputs:
                    diffs = same_files(outputs["cpu"], outputs["cuda"])
                    r["same_files_as_cpu"] = not diffs
                    log(f"  cpu and cuda outputs byte-identical: {'yes' if not diffs else diffs[:5]}")
                    if diffs:
                        failures.append("cpu and cuda outputs differ: " + "; ".join(diffs[:5]))
                    remove(outputs.pop("cpu"))
        elif case == "python":
            # The python output is compared with shardshift's: a second copy must fit.
            probe_label = "python"
            r = run_case("python", probe_label,
                         lambda o: [args.python, os.path.join(HERE, "python_convert.py"), src, o],
                         out_dir, python_runs, "python")
            if r:
                io = (r.get("details") or {}).get("io", "torch + safetensors")
                r["label"] = f"python ({io})"
                r["case"] = r["label"]
                results.append(r)
                write_json()

    # Identity: Python's output against shardshift's (cuda if it ran, else cpu).
    identity = None
    ref_case = "cuda" if "cuda" in outputs else ("cpu" if "cpu" in outputs else None)
    if "python" in outputs and ref_case:
        log(f"comparing tensors: python vs shardshift {ref_case}")
        t0 = time.perf_counter()
        n, diffs = compare_checkpoints(outputs[ref_case], outputs["python"])
        identity = {"against": f"shardshift {ref_case}", "tensors": n, "identical": not diffs,
                    "differences": diffs, "seconds": time.perf_counter() - t0}
    for d in list(outputs.values()):
        remove(d)
    if generated and not args.keep_input:
        remove(src)
        shutil.rmtree(work, ignore_errors=True)

    annotate(results, in_bytes)
    print(f"checkpoint: {src} ({in_bytes / 1e9:.2f} GB in {in_files} file(s)"
          + (f", {layers} layers" if layers is not None else "")
          + (f", hidden {config['hidden_size']}" if config.get("hidden_size") else "")
          + (f", scale {scale}" if scale else "") + ")")
    print(f"machine: {machine['cpu']}, {machine['nproc']} cores, {machine['ram_gb']} GB RAM"
          + (f", {', '.join(machine['gpus'])}" if machine["gpus"] else ", no GPU")
          + f"; scratch {machine['scratch_fs']}")
    for r in results:
        ratio = f"{r['ratio_to_cp']:.2f}x cp" if r["ratio_to_cp"] else "n/a"
        print(f"{r['label']:<38}: {r['seconds']:8.2f} s, {r['gb_per_s']:6.2f} GB/s, "
              f"peak RSS {r['peak_rss_bytes'] / 1e6:8.0f} MB, {ratio}")
    py = next((r for r in results if r["label"].startswith("python")), None)
    summary = []
    for r in results:
        if py and r["case"].startswith("shardshift"):
            speed = py["seconds"] / r["seconds"]
            mem = py["peak_rss_bytes"] / max(r["peak_rss_bytes"], 1)
            line = (f"{r['case']} vs python: {speed:.1f}x faster, {mem:.1f}x less peak memory; "
                    f"{r['ratio_to_cp']:.2f}x the time of cp -r + fsync" if r["ratio_to_cp"] else "")
            summary.append(line)
            print(line)
    if identity:
        if identity["identical"]:
            print(f"identical tensors: yes ({identity['tensors']} tensors, python vs "
                  f"{identity['against']})")
        else:
            print(f"identical tensors: NO (python vs {identity['against']}):")
            for d in identity["differences"]:
                print(f"  {d}")
    for f in failures:
        print(f"FAILED: {f}")

    write_json(summary=summary, identity=identity, complete=True)
    if failures or (identity and not identity["identical"]):
        sys.exit(1)
    if "python" in cases and (identity is None):
        print("identity check not run (python or shardshift case missing)")


if __name__ == "__main__":
    main()
