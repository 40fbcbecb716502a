// checkpoint_config.h: what shardshift reads from a checkpoint's config.json when it opens it.
// "model_type" (it names the adapter), the top-level whole numbers (an adapter may check the
// tensors against one) and the model's dtype; the file itself is copied verbatim as a side file.
// Thread-safety: pure function.
#pragma once

#include "shardshift/status.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace shardshift {

/// What shardshift reads from one config.json.
struct ConfigFacts {
  std::string model_type; ///< empty when not JSON or no string "model_type" (keys decide then)
  /// The top-level whole numbers ("num_experts": 128), which an adapter may check the tensors
  /// against; empty when the file is not a JSON object.
  std::map<std::string, uint64_t, std::less<>> counts;
  /// The other top-level keys, whose value is no whole number, with that value's JSON text (cut
  /// at 40 bytes): an adapter that needs a count from one of them refuses rather than guess.
  std::map<std::string, std::string, std::less<>> not_counts;
  /// "torch_dtype" and "dtype" when present and not null, and the same of the "text_config"
  /// object as "text_config.torch_dtype" and "text_config.dtype" (Checkpoint::config_dtypes).
  std::map<std::string, std::string, std::less<>> dtypes;
  std::vector<std::string> dtype_not_string; ///< keys of `dtypes` whose value is no string
  bool has_text_config = false; ///< the last "text_config" is a JSON object
  /// The top level, or the last "text_config" where it is neither an object nor null, as JSON
  /// text (cut at 40 bytes), when it is no JSON object; empty otherwise.
  std::string not_object, text_config_not_object;
  /// Why the file could not be read as JSON (simdjson's words); empty when it was. Python's json
  /// takes some files simdjson does not (NaN, integers beyond 64 bits, lone surrogates): an
  /// adapter that needs a value from the file refuses then rather than guess.
  std::string error;
};

/// config.json at `path`, read and parsed once. A file that cannot be read at all is an error now,
/// not after the conversion has been written (it is also a side file to copy).
Result<ConfigFacts> read_config(const std::filesystem::path& path);

/// read_config(path)'s model_type alone.
Result<std::string> read_config_model_type(const std::filesystem::path& path);

} // namespace shardshift
