// upload.h: a conversion delivered to commands instead of a directory (`--pipe-to`). Every output
// file is streamed into its own command (ProcessTarget), the shards up to `uploads` at once, then
// the side files, SHA256SUMS (with --checksums) and, last, the index, and only when every shard
// was delivered: a reader of the destination never finds an index that names a missing or partial
// shard. A failure reports every file's state (delivered, failed and why, not started).
// Thread-safety: one call per conversion.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/plan.h"

#include "pipeline.h"

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace shardshift {

struct UploadResult {
  PipelineResult moved;
  std::vector<FileDelivery> files; ///< every output file in delivery order, with its state
  std::vector<std::pair<std::string, std::string>> checksums; ///< name, SHA-256 (with digests)
  uint64_t kept_files = 0, kept_bytes = 0; ///< --resume: files an earlier run had finished
};

/// Delivers every output file of `plan` through `command` (see process_target.h for {name} and
/// {size}). With config.digests set, SHA-256 sums are computed and delivered as SHA256SUMS before
/// the index. On failure the Status lists every file's state, one per line.
/// `command_stdout_to_stderr`: see ProcessTarget.
/// `delivered` (may be empty) gets every file's state at the end, on success or failure.
Result<UploadResult>
upload_outputs(const std::string& command, bool command_stdout_to_stderr, const Checkpoint& input,
               const Plan& plan, const PipelineConfig& config, Io& io, Profiler& profiler,
               const std::function<void(const std::vector<FileDelivery>&)>& delivered = {});

} // namespace shardshift
