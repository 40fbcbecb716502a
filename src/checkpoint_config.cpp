// checkpoint_config.cpp: reading config.json's model_type, whole numbers and dtype with simdjson.
#include "checkpoint_config.h"

#include "json_reader.h"

#include <cerrno>

#include <simdjson.h>

namespace shardshift {

namespace {

// JSON text cut at 40 bytes, for messages.
std::string shown(simdjson::dom::element value) {
  std::string text = simdjson::minify(value);
  if (text.size() > 40)
    text = text.substr(0, 37) + "...";
  return text;
}

// k ("dtype", "text_config.torch_dtype", ...) names a dtype: its value replaces any before.
void dtype_key(ConfigFacts& facts, std::string k, simdjson::dom::element value) {
  std::erase(facts.dtype_not_string, k);
  facts.dtypes.erase(k);
  std::string_view name;
  if (value.is_null())
    return;
  if (value.get_string().get(name) == simdjson::SUCCESS) {
    facts.dtypes.emplace(std::move(k), std::string(name));
  } else {
    facts.dtypes.emplace(k, simdjson::minify(value));
    facts.dtype_not_string.push_back(std::move(k));
  }
}

// A composite config's language model, which the gemma families' model classes build their
// adapter from. A repeated one replaces the one before, as in Python.
void read_text_config(ConfigFacts& facts, simdjson::dom::element value) {
  std::erase_if(facts.dtype_not_string,
                [](const std::string& k) { return k.starts_with("text_config."); });
  std::erase_if(facts.dtypes, [](const auto& kv) { return kv.first.starts_with("text_config."); });
  facts.has_text_config = false;
  facts.text_config_not_object.clear();
  simdjson::dom::object text;
  if (value.get(text) != simdjson::SUCCESS) {
    if (!value.is_null())
      facts.text_config_not_object = shown(value);
    return;
  }
  facts.has_text_config = true;
  for (auto [inner, inner_value] : text)
    if (inner == "torch_dtype" || inner == "dtype")
      dtype_key(facts, "text_config." + std::string(inner), inner_value);
}

} // namespace

Result<ConfigFacts> read_config(const std::filesystem::path& path) {
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
  ConfigFacts facts;
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (auto e = parser.parse(text).get(root); e != simdjson::SUCCESS) {
    facts.error = simdjson::error_message(e);
    return facts;
  }
  simdjson::dom::object config;
  if (root.get(config) != simdjson::SUCCESS) {
    facts.not_object = shown(root);
    return facts;
  }
  // A repeated key counts as its last, as Python's json (which transformers reads it with) keeps.
  for (auto [key, value] : config) {
    std::string_view type;
    uint64_t n = 0;
    if (key == "model_type") {
      facts.model_type.clear();
      if (value.get_string().get(type) == simdjson::SUCCESS)
        facts.model_type = std::string(type);
    } else if (key == "torch_dtype" || key == "dtype") {
      dtype_key(facts, std::string(key), value);
    } else if (key == "text_config") {
      read_text_config(facts, value);
    } else if (value.get_uint64().get(n) == simdjson::SUCCESS) {
      facts.counts.insert_or_assign(std::string(key), n);
      facts.not_counts.erase(std::string(key));
    } else {
      facts.counts.erase(std::string(key));
      facts.not_counts.insert_or_assign(std::string(key), shown(value));
    }
  }
  return facts;
}

Result<std::string> read_config_model_type(const std::filesystem::path& path) {
  auto facts = read_config(path);
  if (!facts)
    return facts.status();
  return std::move(facts->model_type);
}

} // namespace shardshift
