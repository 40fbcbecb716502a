// checkpoint_config.h: what shardshift reads from a checkpoint's config.json when it opens it.
// "model_type" (it names the adapter) and the top-level whole numbers (an adapter may check the
// tensors against one); the file itself is copied verbatim as a side file.
// Thread-safety: pure function.
#pragma once

#include "shardshift/status.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

namespace shardshift {

/// config.json's "model_type" at `path`: empty when the file is not JSON or has no string
/// "model_type" (the key names decide the model then). A file that cannot be read at all is an
/// error now, not after the conversion has been written (it is also a side file to copy).
Result<std::string> read_config_model_type(const std::filesystem::path& path);

/// config.json's top-level whole numbers at `path` ("num_experts": 128), for the adapters that
/// check tensors against them; empty when the file is not a JSON object. Call after
/// read_config_model_type accepted the file (this one reports nothing).
std::map<std::string, uint64_t, std::less<>> read_config_counts(const std::filesystem::path& path);

} // namespace shardshift
