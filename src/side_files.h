// side_files.h: the files of a checkpoint that are not tensors (config.json, tokenizer files,
// original/...), delivered through any OutputTarget as a stream: in pieces of at most a chunk,
// zero-copy where the kernel can (copy_file_range to a file, splice to a pipe), the input pages
// released after each piece. A side file can be many gigabytes (Meta's original/*.pth), so it is
// never read whole into memory: it stays within the memory budget like a shard.
// Thread-safety: one call per file at a time.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/io.h"
#include "shardshift/plan.h"

#include "write_stage.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardshift {

/// Delivers side file `name` of `input` (a path relative to its directory) through `target`:
/// open, the bytes, finish; abandon on failure. With `digest`, its SHA-256 (hex) is computed from
/// the same pieces. `written` (optional) is increased by the file's size once delivered.
/// `cancel` (optional): once set, the writes stop (Errc::interrupted), waits for a full stream too.
Status deliver_side_file(OutputTarget& target, Io& io, const Checkpoint& input,
                         const std::string& name, uint64_t chunk, std::string* digest,
                         uint64_t* written = nullptr, const std::atomic<bool>* cancel = nullptr);

/// What follows the shards of every output kind, in the order that keeps each prefix of the
/// output consistent: the side files (streamed through `target`), then SHA256SUMS (when
/// `shard_digests` is given: one digest per plan file, the side files' and the index's added) and
/// the index last, both handed to `deliver_small` as text. `sums` receives every file's digest;
/// `written` counts the bytes delivered. Stops with Errc::interrupted when `cancel` is set.
Status deliver_after_shards(
    OutputTarget& target, Io& io, const Checkpoint& input, const Plan& plan, uint64_t chunk,
    const std::vector<std::string>* shard_digests, const std::atomic<bool>* cancel,
    const std::function<Status(const std::string& name, std::string_view bytes)>& deliver_small,
    std::vector<std::pair<std::string, std::string>>* sums, uint64_t* written);

} // namespace shardshift
