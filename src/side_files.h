// side_files.h: the files of a checkpoint that are not tensors (config.json, tokenizer files,
// original/...), delivered through any OutputTarget as a stream: in pieces of at most a chunk,
// zero-copy where the kernel can (copy_file_range to a file, splice to a pipe), the input pages
// released after each piece. A side file can be many gigabytes (Meta's original/*.pth), so it is
// never read whole into memory: it stays within the memory budget like a shard.
// Thread-safety: one call per file at a time.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/io.h"

#include "write_stage.h"

#include <cstdint>
#include <string>

namespace shardshift {

/// Delivers side file `name` of `input` (a path relative to its directory) through `target`:
/// open, the bytes, finish; abandon on failure. With `digest`, its SHA-256 (hex) is computed from
/// the same pieces. `written` (optional) is increased by the file's size once delivered.
Status deliver_side_file(OutputTarget& target, Io& io, const Checkpoint& input,
                         const std::string& name, uint64_t chunk, std::string* digest,
                         uint64_t* written = nullptr);

} // namespace shardshift
