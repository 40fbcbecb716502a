// safetensors_index.cpp: the text of model.safetensors.index.json, read and written.
//
// The reader is as strict as the header parser (docs/format.md, "The index"): the index decides
// which shard each tensor is read from, so an ambiguous one (a duplicate key, a name that is not
// a string) is refused rather than interpreted. The writer reproduces transformers' text exactly.
#include "shardshift/json_text.h"
#include "shardshift/problems.h"
#include "shardshift/safetensors.h"

#include "json_reader.h"

#include <algorithm>

#include <simdjson.h>

namespace shardshift {

namespace {

// Every problem goes to `problems`; returns false when there was any (the index cannot be used).
// Reads one index document into an Index, recording every problem with its content (a malformed
// JSON text stops the walk; a wrong value is recorded and the walk goes on, so all are reported).
class IndexReader {
public:
  IndexReader(std::string_view path, Index& index, ProblemList& problems)
      : path_(path), index_(index), problems_(problems) {}

  bool read(std::string_view text) {
    if (auto bad = json::precheck(text); bad != json::Precheck::ok)
      return fail("index " + std::string(json::describe(bad)));
    // simdjson reads up to SIMDJSON_PADDING bytes past its input, so it gets a padded copy.
    const simdjson::padded_string json(text);
    json_ = &json;
    struct Forget { // json_error may look at the text only while it lives
      const simdjson::padded_string*& json;
      ~Forget() { json = nullptr; }
    } forget{json_};
    simdjson::ondemand::parser parser;
    simdjson::ondemand::document doc;
    if (auto ec = parser.iterate(json).get(doc))
      return json_error(ec);
    json_type type;
    if (auto ec = doc.type().get(type))
      return json_error(ec);
    if (type != json_type::object)
      return fail("index must be one JSON object, found " + std::string(json::type_name(type)));
    simdjson::ondemand::object root;
    if (auto ec = doc.get_object().get(root))
      return json_error(ec);
    if (auto ec = json::for_each_field(root, [&](const std::string& key, value_t value, bool dup) {
          return top_level(key, value, dup);
        }))
      return json_error(ec);
    if (!json::at_end(doc))
      return content_after_object();
    if (!have_weight_map_)
      return fail("index has no 'weight_map' object");
    std::sort(index_.metadata.begin(), index_.metadata.end());
    return usable_;
  }

private:
  using json_type = simdjson::ondemand::json_type;
  using value_t = simdjson::ondemand::value;

  bool fail(std::string what) {
    problems_.add(Errc::format, std::string(path_), {}, std::move(what));
    return false;
  }
  bool content_after_object() {
    return fail("index has content after its JSON object (exactly one object is allowed)");
  }
  // simdjson refuses a complete object followed by other text with a message about an unfinished
  // object or string, so that case is told apart first.
  bool json_error(simdjson::error_code ec) {
    if (json_ && json::object_then_more(*json_))
      return content_after_object();
    return fail(std::string("index is not valid JSON: ") + simdjson::error_message(ec));
  }
  // A problem with the content: recorded, the index is unusable, the walk goes on.
  simdjson::error_code problem(std::string what) {
    fail(std::move(what));
    usable_ = false;
    return simdjson::SUCCESS;
  }

  simdjson::error_code top_level(const std::string& key, value_t value, bool duplicate) {
    if (duplicate)
      return problem("duplicate key '" + printable(key) + "'");
    json_type type;
    if (auto ec = value.type().get(type))
      return ec;
    if (key != "weight_map" && key != "metadata") {
      // Other top-level keys are not ours to interpret, but they must still be valid JSON.
      std::string ignored;
      std::vector<std::string> nested;
      if (auto ec = json::visit_compact(value, ignored, nested))
        return ec;
      // Appended rather than `"'" + ...`, on which GCC 12 warns falsely (-Wrestrict).
      for (const auto& n : nested)
        problem(std::string("'").append(printable(key)).append("': ").append(n));
      return simdjson::SUCCESS;
    }
    if (type != json_type::object)
      return problem("'" + key + "' must be an object, found " +
                     std::string(json::type_name(type)));
    simdjson::ondemand::object object;
    if (auto ec = value.get_object().get(object))
      return ec;
    if (auto ec = json::for_each_field(object, [&](std::string& name, value_t v, bool dup) {
          return entry(key, name, v, dup);
        }))
      return ec;
    have_weight_map_ |= key == "weight_map";
    return simdjson::SUCCESS;
  }

  // One entry of weight_map (tensor -> shard file name) or metadata (name -> value as text).
  simdjson::error_code entry(const std::string& section, std::string& name, value_t v,
                             bool duplicate) {
    if (duplicate)
      return problem(section + ": duplicate key '" + printable(name) + "'");
    json_type type;
    if (auto ec = v.type().get(type))
      return ec;
    const bool weights = section == "weight_map";
    std::string stored;
    if (type == json_type::string) {
      std::string_view text;
      if (auto ec = v.get_string().get(text))
        return ec;
      stored = std::string(text);
    } else if (weights) {
      return problem("weight_map: tensor '" + printable(name) +
                     "': the shard file name must be a string, found " +
                     std::string(json::type_name(type)));
    } else {
      // Metadata values other than strings (total_size is a number) are kept as JSON text.
      std::vector<std::string> nested;
      if (auto ec = json::visit_compact(v, stored, nested))
        return ec;
      for (const auto& n : nested)
        problem("metadata: '" + printable(name) + "': " + n);
    }
    (weights ? index_.weight_map : index_.metadata)
        .emplace_back(std::move(name), std::move(stored));
    return simdjson::SUCCESS;
  }

  std::string_view path_;
  Index& index_;
  ProblemList& problems_;
  const simdjson::padded_string* json_ = nullptr; ///< the text, while read() parses it
  bool have_weight_map_ = false, usable_ = true;
};

bool read_index(std::string_view path, std::string_view text, Index& index, ProblemList& problems) {
  return IndexReader(path, index, problems).read(text);
}

} // namespace

Result<Index> parse_index(std::string_view path, std::string_view text) {
  Index index;
  ProblemList problems;
  if (!read_index(path, text, index, problems))
    return problems.status();
  return index;
}

Result<std::string> index_json(uint64_t total_size,
                               const std::map<std::string, std::string>& weight_map) {
  // Byte for byte what transformers writes: json.dumps(index, indent=2, sort_keys=True) + "\n".
  // std::map orders UTF-8 keys bytewise, which is code-point order, as Python sorts str keys.
  std::string text = "{\n  \"metadata\": {\n    \"total_size\": " + std::to_string(total_size) +
                     "\n  },\n  \"weight_map\": {";
  bool first = true;
  for (const auto& [name, file] : weight_map) {
    if (!simdjson::validate_utf8(name) || !simdjson::validate_utf8(file))
      return error(Errc::invalid_argument, std::string(INDEX_FILE_NAME) + ": tensor '" +
                                               printable(name) +
                                               "': name or file is not valid UTF-8");
    text += first ? "\n    " : ",\n    ";
    first = false;
    append_json_string(text, name, /*ascii_only=*/true);
    text += ": ";
    append_json_string(text, file, /*ascii_only=*/true);
  }
  text += weight_map.empty() ? "}\n}\n" : "\n  }\n}\n";
  return text;
}

} // namespace shardshift
