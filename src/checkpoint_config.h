// checkpoint_config.h: what shardshift reads from a checkpoint's config.json when it opens it.
// Only "model_type" (it names the adapter); the file itself is copied verbatim as a side file.
// Thread-safety: pure function.
#pragma once

#include "shardshift/status.h"

#include <filesystem>
#include <string>

namespace shardshift {

/// config.json's "model_type" at `path`: empty when the file is not JSON or has no string
/// "model_type" (the key names decide the model then). A file that cannot be read at all is an
/// error now, not after the conversion has been written (it is also a side file to copy).
Result<std::string> read_config_model_type(const std::filesystem::path& path);

} // namespace shardshift
