#!/usr/bin/env python3
"""python_convert.py: the diffusion_gemma HF -> native conversion done "the way it is done today".

This is the baseline of perf/head_to_head.py: load every shard into memory with
safetensors.torch.load_file, apply the state-dict adapter's from_hf transformation with PyTorch
operations (as docs/semantics.md sections 1 and 1.1 describe it), and save the result with
safetensors.torch.save_file in greedy 5 GB shards plus model.safetensors.index.json, as Hugging
Face's save_pretrained does. The whole input state dict stays alive while the output is built and
saved, as it does when a caller holds it; that is why this way needs about twice the model in RAM.

When the `safetensors` package is missing, the pure-Python reader/writer in safetensors_io.py is
used instead and the output line says so.

Usage: python_convert.py IN OUT [--max-shard-size 5GB] [--io auto|package|own] [--threads N]
"""

import argparse
import json
import os
import re
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

ROUTER = re.compile(r"(layers\.\d+)\.router\.(proj\.weight|scale|per_expert_scale)$")
EXPERTS = re.compile(r"(layers\.\d+)\.experts\.(gate_up_proj|down_proj)$")


def parse_size(text):
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in units:
        raise argparse.ArgumentTypeError(f"bad size '{text}'")
    return int(float(m.group(1)) * units[m.group(2).upper()])


def pick_io(choice):
    """Returns (load_file, save_file, label)."""
    if choice in ("auto", "package"):
        try:
            from safetensors.torch import load_file, save_file

            return load_file, save_file, "torch + safetensors"
        except ImportError:
            if choice == "package":
                raise
    return safetensors_io.load_file, safetensors_io.save_file, "torch, own safetensors I/O"


def from_hf(state):
    """diffusion_gemma HF -> native, as the adapter does it: returns (new state dict, dropped)."""
    renamed, dropped = {}, 0
    for key, tensor in state.items():
        if key.startswith("model.encoder."):
            dropped += 1
            continue
        if key.startswith("model.decoder."):
            key = "model." + key[len("model.decoder."):]
        renamed[key] = tensor

    scales = {}
    for key, tensor in renamed.items():
        m = ROUTER.search(key)
        if m and m.group(2) == "per_expert_scale":
            scales[m.group(1)] = tensor

    out = {}
    for key, tensor in renamed.items():
        m = ROUTER.search(key)
        if m:
            layer, what = m.groups()
            if what == "per_expert_scale":
                continue  # folded into down_projs below
            out[key[: m.start()] + f"{layer}.moe.gate.{what}"] = tensor
            continue
        m = EXPERTS.search(key)
        if m:
            layer, what = m.groups()
            if layer not in scales:
                raise KeyError(f"{layer}: experts without router.per_expert_scale")
            if what == "gate_up_proj":
                out[f"model.{layer}.moe.experts.gate_and_up_projs"] = tensor.transpose(-2, -1).contiguous()
            else:
                folded = tensor.transpose(-2, -1) * scales[layer][:, None, None]
                out[f"model.{layer}.moe.experts.down_projs"] = folded.contiguous()
            continue
        out[key] = tensor

    if "lm_head.weight" not in out and not any(".lora_" in k for k in out):
        if "model.embed_tokens.weight" not in out:
            raise KeyError("tied lm_head: model.embed_tokens.weight is missing")
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out, dropped


def split_shards(state, max_shard_size):
    """Greedy in dict order, like huggingface_hub: a new shard when the next tensor would not fit;
    a tensor larger than the limit gets a shard of its own."""
    shards, current, size = [], {}, 0
    for key, tensor in state.items():
        n = tensor.numel() * tensor.element_size()
        if current and size + n > max_shard_size:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensor
        size += n
    if current:
        shards.append(current)
    return shards


def save(state, out_dir, max_shard_size, save_file):
    os.makedirs(out_dir, exist_ok=True)
    shards = split_shards(state, max_shard_size)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = ("model.safetensors" if len(shards) == 1
                else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
        # save_file refuses tensors that share memory (the tied head and the embedding): give the
        # second one its own copy, as save_pretrained does after it detects the tie.
        seen, own = set(), {}
        for key, tensor in shard.items():
            ptr = tensor.untyped_storage().data_ptr() if hasattr(tensor, "untyped_storage") \
                else tensor.storage().data_ptr()
            own[key] = tensor.clone() if ptr in seen and tensor.numel() else tensor
            seen.add(ptr)
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
        save_file(own, os.path.join(out_dir, name), metadata={"format": "pt"})
        del own
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
    return len(shards), total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--max-shard-size", type=parse_size, default=5 * 10**9)
    ap.add_argument("--io", choices=["auto", "package", "own"], default="auto")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="torch intra-op threads (default: all cores; some builds start with 1)")
    args = ap.parse_args()

    torch.set_num_threads(max(1, args.threads))
    load_file, save_file, label = pick_io(args.io)
    if os.path.exists(args.output):
        sys.exit(f"python_convert: {args.output} exists")

    t0 = time.perf_counter()
    state = {}
    for path in safetensors_io.shard_files(args.input):
        state.update(load_file(path))
    t1 = time.perf_counter()
    out, dropped = from_hf(state)
    t2 = time.perf_counter()
    files, total = save(out, args.output, args.max_shard_size, save_file)
    if os.path.isdir(args.input):
        for side in sorted(os.listdir(args.input)):
            src = os.path.join(args.input, side)
            if os.path.isfile(src) and not side.endswith(".safetensors") \
                    and side != "model.safetensors.index.json":
                shutil.copyfile(src, os.path.join(args.output, side))
    t3 = time.perf_counter()
    print(f"python ({label}): {len(out)} tensors in {files} file(s), {total / 1e9:.2f} GB, "
          f"{dropped} dropped; load {t1 - t0:.1f}s, convert {t2 - t1:.1f}s, save {t3 - t2:.1f}s; "
          f"{torch.get_num_threads()} threads", file=sys.stderr)
    print(json.dumps({"io": label, "tensors": len(out), "files": files, "bytes": total,
                      "load_s": t1 - t0, "convert_s": t2 - t1, "save_s": t3 - t2,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
