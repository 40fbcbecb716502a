"""safetensors_io.py: the small part of the safetensors format the perf scripts need, in pure Python.

The Python baseline (python_convert.py) uses the `safetensors` package when it is importable, as
everybody does. Some machines (the project's dev machine) have PyTorch from the distribution but no
`safetensors`; there the baseline falls back to this module so it can still run. The identity check
of head_to_head.py always reads the raw bytes through RawShard, so "identical" means "same bytes on
disk", independent of any loader's conversions.

Layout (docs/format.md): 8-byte little-endian header length N, N bytes of JSON, then the data;
data_offsets are relative to the first byte after the header.
"""

import json
import os
import struct

# safetensors dtype name -> (torch attribute name, bytes per element). Torch attributes that an
# older torch lacks are skipped when the map is built.
_DTYPES = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
}

MAX_HEADER = 100_000_000


def element_size(dtype):
    """Bytes per element of a safetensors dtype name."""
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype}")
    return _DTYPES[dtype][1]


def _torch_maps():
    import torch

    to_torch, from_torch = {}, {}
    for name, (attr, _) in _DTYPES.items():
        t = getattr(torch, attr, None)
        if t is not None:
            to_torch[name] = t
            from_torch[t] = name
    return to_torch, from_torch


def read_header(path):
    """Returns (header dict without __metadata__, metadata dict, data start offset)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: shorter than 8 bytes")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER:
            raise ValueError(f"{path}: header length {n} above {MAX_HEADER}")
        text = f.read(n)
        if len(text) != n:
            raise ValueError(f"{path}: header runs past the end of the file")
    header = json.loads(text.decode("utf-8"))
    metadata = header.pop("__metadata__", {}) or {}
    return header, metadata, 8 + n


def shard_files(path):
    """The .safetensors files of a checkpoint: a file, or a directory with or without an index."""
    if os.path.isfile(path):
        return [path]
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not files:
        raise ValueError(f"{path}: no .safetensors files")
    return [os.path.join(path, n) for n in files]


def load_file(path):
    """Like safetensors.torch.load_file: every tensor of one file in memory, in file order.

    The whole file is read into one buffer and the tensors are views of it, so the resident
    memory is the file's size, as with the package (which copies each tensor out of a mapping).
    """
    import torch

    to_torch, _ = _torch_maps()
    header, _, start = read_header(path)
    size = os.path.getsize(path) - start
    buf = bytearray(size)
    with open(path, "rb") as f:
        f.seek(start)
        view = memoryview(buf)
        done = 0
        while done < size:
            n = f.readinto(view[done:])
            if not n:
                raise ValueError(f"{path}: file shorter than its header says")
            done += n
    tensors = {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = info["data_offsets"]
        dtype = to_torch.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor '{name}': dtype {info['dtype']} unknown to this torch")
        shape = info["shape"]
        count = (end - begin) // element_size(info["dtype"])
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            tensors[name] = torch.frombuffer(buf, dtype=dtype, count=count, offset=begin).reshape(shape)
    return tensors


def save_file(tensors, path, metadata=None):
    """Like safetensors.torch.save_file: widest dtype first, then by name; header padded to 8.

    Tensor bytes are written straight from the tensors' memory (no extra copy of the data).
    """
    import torch

    _, from_torch = _torch_maps()
    order = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name, t in order:
        n = t.numel() * t.element_size()
        header[name] = {"dtype": from_torch[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, t in order:
            if t.numel() == 0:
                continue
            flat = t.contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(flat.numpy()))
    os.replace(tmp, path)


class RawShard:
    """Reads one file's tensors as raw bytes, one tensor (or one chunk) at a time."""

    def __init__(self, path):
        self.path = path
        self.header, self.metadata, self.start = read_header(path)
        self._file = open(path, "rb")

    def close(self):
        self._file.close()

    def chunks(self, name, chunk_bytes=64 << 20):
        """Yields the stored bytes of tensor `name` in pieces of at most chunk_bytes."""
        begin, end = self.header[name]["data_offsets"]
        pos = self.start + begin
        stop = self.start + end
        while pos < stop:
            n = min(chunk_bytes, stop - pos)
            self._file.seek(pos)
            data = self._file.read(n)
            if len(data) != n:
                raise ValueError(f"{self.path}: tensor '{name}': file shorter than its header says")
            yield data
            pos += n


class RawCheckpoint:
    """All tensors of a checkpoint (file or directory), by name, read lazily as raw bytes."""

    def __init__(self, path):
        self.shards = [RawShard(p) for p in shard_files(path)]
        self.where = {}
        for shard in self.shards:
            for name in shard.header:
                if name in self.where:
                    raise ValueError(f"{shard.path}: tensor '{name}' also in {self.where[name].path}")
                self.where[name] = shard

    def close(self):
        for shard in self.shards:
            shard.close()

    def names(self):
        return sorted(self.where)

    def info(self, name):
        """(dtype name, shape list) of a tensor."""
        entry = self.where[name].header[name]
        return entry["dtype"], list(entry["shape"])

    def chunks(self, name, chunk_bytes=64 << 20):
        return self.where[name].chunks(name, chunk_bytes)
