// checkpoint_config.cpp: reading config.json's model_type and whole numbers with simdjson.
#include "checkpoint_config.h"

#include "json_reader.h"

#include <cerrno>

#include <simdjson.h>

namespace shardshift {

Result<std::string> read_config_model_type(const std::filesystem::path& path) {
  simdjson::padded_string text;
  errno = 0;
  if (simdjson::padded_string::load(path.string()).get(text) != simdjson::SUCCESS) {
    const int err = errno;
    return Status(Errc::io, path.string() + ": cannot read: " +
                                (err ? errno_text(err) : std::string("I/O error")) +
                                "; it is copied into the output as a side file");
  }
  // The same depth cap as every reader (json_reader.h): a clear error instead of a parse that
  // quietly finds no model_type.
  if (json::nesting_depth(std::string_view(text)) > json::MAX_JSON_DEPTH)
    return Status(Errc::format,
                  path.string() + ": " + std::string(json::describe(json::Precheck::too_deep)));
  simdjson::dom::parser parser;
  simdjson::dom::element config;
  std::string_view type;
  if (parser.parse(text).get(config) == simdjson::SUCCESS && config.is_object() &&
      config["model_type"].get_string().get(type) == simdjson::SUCCESS)
    return std::string(type);
  return std::string();
}

std::map<std::string, uint64_t, std::less<>> read_config_counts(const std::filesystem::path& path) {
  std::map<std::string, uint64_t, std::less<>> counts;
  simdjson::padded_string text;
  if (simdjson::padded_string::load(path.string()).get(text) != simdjson::SUCCESS ||
      json::nesting_depth(std::string_view(text)) > json::MAX_JSON_DEPTH)
    return counts;
  simdjson::dom::parser parser;
  simdjson::dom::object config;
  if (parser.parse(text).get(config) != simdjson::SUCCESS)
    return counts;
  for (auto [key, value] : config) {
    uint64_t n = 0;
    if (value.get_uint64().get(n) == simdjson::SUCCESS)
      counts.emplace(std::string(key), n);
  }
  return counts;
}

} // namespace shardshift
