#!/usr/bin/env python3
"""plot_head_to_head.py: draws the JSON of head_to_head.py as a PNG with two bar panels.

Left: wall time per case (seconds), each bar annotated with its ratio to `cp -r + fsync`.
Right: peak resident memory per case (MB); shardshift's bars say how many times less memory than
the Python way they need, the Python bar how many times shardshift's least it needs. The title names
the machine and the checkpoint's size.

Usage: plot_head_to_head.py RESULTS.json OUT.png [--title TEXT]
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"cp": "#9e9e9e", "shardshift": "#1f77b4", "python": "#d62728"}


def color(label):
    for key, c in COLORS.items():
        if label.startswith(key):
            return c
    return "#555555"


def short(label):
    return (label.replace("shardshift --device ", "shardshift\n")
            .replace("python (", "python\n(").replace("cp -r + fsync", "cp -r\n+ fsync"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results")
    ap.add_argument("png")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    with open(args.results) as f:
        doc = json.load(f)
    cases = doc["cases"]
    labels = [c["label"] for c in cases]
    seconds = [c["seconds"] for c in cases]
    rss_mb = [c["peak_rss_bytes"] / 1e6 for c in cases]
    python = next((c for c in cases if c["label"].startswith("python")), None)

    m, ck = doc["machine"], doc["checkpoint"]
    where = ", ".join(m.get("gpus") or []) or "no GPU"
    size = f"{ck['bytes'] / 1e9:.2f} GB"
    if ck.get("layers") is not None:
        size += f", {ck['layers']} layers"
    if ck.get("hidden_size"):
        size += ", real dimensions" if ck["hidden_size"] == 2816 else f", hidden {ck['hidden_size']}"
    elif ck.get("scale"):
        size += ", real dimensions" if ck["scale"] == 1 else f", scale {ck['scale']}"
    title = args.title or (f"diffusion_gemma HF -> native, {size}\n{m['cpu']}, {m['nproc']} cores, "
                           f"{m['ram_gb']:.0f} GB RAM, {where}")

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.5))
    x = range(len(cases))
    bars = ax_t.bar(x, seconds, color=[color(l) for l in labels])
    for b, c in zip(bars, cases):
        note = f"{c['seconds']:.1f} s"
        if c.get("ratio_to_cp"):
            note += f"\n{c['ratio_to_cp']:.2f}x cp"
        # Only shardshift fsyncs what it writes; show what the others left to the page cache.
        if not c["label"].startswith(("shardshift", "cp -r + fsync")) and c.get("fsync_seconds", 0) > 0.5:
            note += f"\n(+{c['fsync_seconds']:.1f} s fsync after)"
        ax_t.annotate(note, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                      va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax_t.set_ylabel("wall time (s), lower is better")
    ax_t.set_title("time (warm page cache)")

    bars = ax_m.bar(x, rss_mb, color=[color(l) for l in labels])
    for b, c in zip(bars, cases):
        note = f"{c['peak_rss_bytes'] / 1e6:.0f} MB"
        if python and c is not python and c["label"].startswith("shardshift"):
            note += f"\n{python['peak_rss_bytes'] / max(c['peak_rss_bytes'], 1):.0f}x less\nthan python"
        if python and c is python:
            ours = [d for d in cases if d["label"].startswith("shardshift")]
            if ours:
                least = min(ours, key=lambda d: d["peak_rss_bytes"])
                note += f"\n{c['peak_rss_bytes'] / max(least['peak_rss_bytes'], 1):.0f}x shardshift"
        ax_m.annotate(note, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                      va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax_m.set_ylabel("peak resident memory (MB), lower is better")
    ax_m.set_title("peak RSS")
    for ax in (ax_t, ax_m):
        ax.set_xticks(list(x))
        ax.set_xticklabels([short(l) for l in labels], fontsize=8)
        ax.margins(y=0.2)
        ax.spines["top"].set_visible(False)
        ax.spines["right"].set_visible(False)
    ident = doc.get("identity")
    foot = f"{doc['date']}"
    if ident:
        foot += (f"; identical tensors: {'yes' if ident['identical'] else 'NO'} "
                 f"({ident['tensors']} tensors, python vs {ident['against']})")
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.01, foot, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))
    fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
