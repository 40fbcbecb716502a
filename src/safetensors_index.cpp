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
bool read_index(std::string_view path, std::string_view text, Index& index, ProblemList& problems) {
  auto fail = [&](std::string what) {
    problems.add(Errc::format, std::string(path), {}, std::move(what));
    return false;
  };
  auto json_error = [&](simdjson::error_code ec) {
    return fail(std::string("index is not valid JSON: ") + simdjson::error_message(ec));
  };
  if (auto bad = json::precheck(text); bad != json::Precheck::ok)
    return fail("index " + std::string(json::describe(bad)));

  using simdjson::ondemand::json_type;
  // simdjson reads up to SIMDJSON_PADDING bytes past its input, so it gets a padded copy.
  const simdjson::padded_string json(text);
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

  // Every callback below returns a simdjson error only for malformed JSON; a problem with the
  // index's content is recorded and the walk goes on, so that all of them are reported.
  bool have_weight_map = false, usable = true;
  auto ec = json::for_each_field(
      root, [&](const std::string& key, simdjson::ondemand::value value, bool duplicate) {
        if (duplicate) {
          fail("duplicate key '" + printable(key) + "'");
          usable = false;
          return simdjson::SUCCESS;
        }
        json_type vtype;
        if (auto ec = value.type().get(vtype))
          return ec;

        if (key == "weight_map" || key == "metadata") {
          if (vtype != json_type::object) {
            fail("'" + key + "' must be an object, found " + std::string(json::type_name(vtype)));
            usable = false;
            return simdjson::SUCCESS;
          }
          simdjson::ondemand::object object;
          if (auto ec = value.get_object().get(object))
            return ec;
          auto entries_ec = json::for_each_field(
              object, [&](std::string& name, simdjson::ondemand::value v, bool duplicate) {
                if (duplicate) {
                  fail(key + ": duplicate key '" + printable(name) + "'");
                  usable = false;
                  return simdjson::SUCCESS;
                }
                json_type etype;
                if (auto ec = v.type().get(etype))
                  return ec;
                std::string stored;
                if (etype == json_type::string) {
                  std::string_view s;
                  if (auto ec = v.get_string().get(s))
                    return ec;
                  stored = std::string(s);
                } else if (key == "weight_map") {
                  fail("weight_map: tensor '" + printable(name) +
                       "': the shard file name must be a string, found " +
                       std::string(json::type_name(etype)));
                  usable = false;
                  return simdjson::SUCCESS;
                } else {
                  // Metadata values other than strings (total_size is a number) are kept as JSON
                  // text.
                  std::vector<std::string> nested;
                  if (auto ec = json::visit_compact(v, stored, nested))
                    return ec;
                  for (const auto& n : nested)
                    fail("metadata: '" + printable(name) + "': " + n);
                  if (!nested.empty())
                    usable = false;
                }
                if (key == "weight_map")
                  index.weight_map.emplace_back(std::move(name), std::move(stored));
                else
                  index.metadata.emplace_back(std::move(name), std::move(stored));
                return simdjson::SUCCESS;
              });
          if (entries_ec)
            return entries_ec;
          if (key == "weight_map")
            have_weight_map = true;
        } else {
          // Other top-level keys are not ours to interpret, but they must still be valid JSON.
          std::string ignored;
          std::vector<std::string> nested;
          if (auto ec = json::visit_compact(value, ignored, nested))
            return ec;
          // Appended rather than `"'" + ...`, on which GCC 12 warns falsely (-Wrestrict).
          for (const auto& n : nested)
            fail(std::string("'").append(printable(key)).append("': ").append(n));
          if (!nested.empty())
            usable = false;
        }
        return simdjson::SUCCESS;
      });
  if (ec)
    return json_error(ec);
  if (!json::at_end(doc))
    return fail("index has content after its JSON object (exactly one object is allowed)");
  if (!have_weight_map)
    return fail("index has no 'weight_map' object");
  std::sort(index.metadata.begin(), index.metadata.end());
  return usable;
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
