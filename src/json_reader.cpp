// json_reader.cpp: see json_reader.h.
#include "json_reader.h"

#include "shardshift/json_text.h"
#include "shardshift/problems.h"

#include <algorithm>
#include <set>

namespace shardshift::json {

std::string_view type_name(simdjson::ondemand::json_type type) {
  using simdjson::ondemand::json_type;
  switch (type) {
  case json_type::object:
    return "object";
  case json_type::array:
    return "array";
  case json_type::string:
    return "string";
  case json_type::number:
    return "number";
  case json_type::boolean:
    return "boolean";
  case json_type::null:
    return "null";
  }
  return "unknown";
}

std::string_view trim_space(std::string_view token) {
  while (!token.empty()) {
    char c = token.back();
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
      break;
    token.remove_suffix(1);
  }
  return token;
}

UintToken parse_uint_token(std::string_view token, uint64_t& value) {
  token = trim_space(token);
  if (token.empty())
    return UintToken::malformed;
  if (token.front() == '-')
    return UintToken::negative;
  bool digits_only = true;
  for (char c : token) {
    if (c == '.')
      return UintToken::fraction;
    if (c == 'e' || c == 'E')
      return UintToken::exponent;
    if (c < '0' || c > '9')
      digits_only = false;
  }
  // JSON forbids leading zeros ("01"); "0" itself is fine.
  if (!digits_only || (token.size() > 1 && token.front() == '0'))
    return UintToken::malformed;
  uint64_t v = 0;
  for (char c : token) {
    if (__builtin_mul_overflow(v, uint64_t{10}, &v) ||
        __builtin_add_overflow(v, uint64_t(c - '0'), &v))
      return UintToken::too_large;
  }
  value = v;
  return UintToken::ok;
}

std::string describe_uint_problem(UintToken problem, std::string_view token) {
  std::string quoted = std::string(trim_space(token));
  switch (problem) {
  case UintToken::ok:
    return quoted + " is fine";
  case UintToken::negative:
    return quoted + " is negative";
  case UintToken::fraction:
    return quoted + " has a fraction (integers only)";
  case UintToken::exponent:
    return quoted + " is in exponent form (plain integers only)";
  case UintToken::too_large:
    return quoted + " does not fit in 64 bits";
  case UintToken::malformed:
    return quoted + " is not a plain non-negative integer";
  }
  return quoted;
}

Precheck precheck(std::string_view text) {
  if (!text.empty() && text[0] == '\0')
    return Precheck::starts_with_nul;
  if (text.starts_with("\xEF\xBB\xBF"))
    return Precheck::starts_with_bom;
  if (!simdjson::validate_utf8(text))
    return Precheck::not_utf8;
  if (nesting_depth(text) > MAX_JSON_DEPTH)
    return Precheck::too_deep;
  return Precheck::ok;
}

unsigned nesting_depth(std::string_view text, unsigned limit) {
  unsigned depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i; // the escaped character cannot end the string
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit)
        return deepest;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

std::string_view describe(Precheck problem) {
  switch (problem) {
  case Precheck::ok:
    return "is fine";
  case Precheck::starts_with_nul:
    return "starts with a NUL byte";
  case Precheck::starts_with_bom:
    return "starts with a UTF-8 byte-order mark";
  case Precheck::not_utf8:
    return "is not valid UTF-8";
  case Precheck::too_deep:
    static_assert(MAX_JSON_DEPTH == 64, "the message spells the limit out");
    return "has nesting deeper than 64 levels of arrays and objects";
  }
  return "is unreadable";
}

bool at_end(simdjson::ondemand::document& doc) {
  // simdjson 3.0.1 has no document::at_end(); current_location() is OUT_OF_BOUNDS exactly when
  // every token was consumed, so anything else means text after the top-level value.
  return doc.current_location().error() == simdjson::OUT_OF_BOUNDS;
}

bool object_then_more(const simdjson::padded_string& json) {
  // Whether `root` is an object that simdjson reads through to its closing brace: every value
  // visited, so that a malformed one inside it counts against it.
  auto complete_object = [](simdjson::ondemand::value root) {
    simdjson::ondemand::json_type type;
    if (root.type().get(type) || type != simdjson::ondemand::json_type::object)
      return false;
    std::string compact;
    std::vector<std::string> duplicates; // not this question's concern
    return visit_compact(root, compact, duplicates) == simdjson::SUCCESS;
  };
  simdjson::ondemand::parser parser;
  simdjson::ondemand::document doc;
  if (parser.iterate(json).get(doc) == simdjson::SUCCESS) {
    // Taken as a value, the root object is read as a nested one is, up to its own closing brace,
    // without the check that the text ends there; at_end then says whether anything follows.
    simdjson::ondemand::value root;
    return doc.get_value().get(root) == simdjson::SUCCESS && complete_object(root) && !at_end(doc);
  }
  // The text as a whole failed simdjson's first pass: a string opened after the object and never
  // closed. The pass for a stream of documents sets such a tail aside, so the first document is
  // still read; the object being complete and valid, what failed the whole text follows it.
  simdjson::ondemand::document_stream stream;
  if (parser.iterate_many(json, std::max(json.size(), simdjson::dom::MINIMAL_BATCH_SIZE))
          .get(stream))
    return false;
  auto first = stream.begin();
  if (!(first != stream.end()))
    return false;
  simdjson::ondemand::document_reference first_doc;
  simdjson::ondemand::value root;
  return (*first).get(first_doc) == simdjson::SUCCESS &&
         first_doc.get_value().get(root) == simdjson::SUCCESS && complete_object(root);
}

simdjson::error_code read_field(simdjson::simdjson_result<simdjson::ondemand::field> field_result,
                                std::set<std::string, std::less<>>& seen, std::string& key,
                                simdjson::ondemand::value& value, bool& duplicate) {
  simdjson::ondemand::field field;
  if (auto ec = std::move(field_result).get(field))
    return ec;
  std::string_view key_view;
  if (auto ec = field.unescaped_key().get(key_view))
    return ec;
  key.assign(key_view);
  duplicate = !seen.insert(key).second;
  value = field.value();
  return simdjson::SUCCESS;
}

namespace {

simdjson::error_code compact_object(simdjson::ondemand::value value, std::string& out,
                                    std::vector<std::string>& problems, unsigned depth) {
  simdjson::ondemand::object object;
  if (auto ec = value.get_object().get(object))
    return ec;
  out += '{';
  bool first = true;
  auto ec = for_each_field(
      object, [&](const std::string& key, simdjson::ondemand::value field_value, bool duplicate) {
        if (duplicate)
          problems.push_back("duplicate key '" + shardshift::printable(key) + "'");
        if (!first)
          out += ',';
        first = false;
        append_json_string(out, key);
        out += ':';
        return visit_compact(field_value, out, problems, depth + 1);
      });
  if (ec)
    return ec;
  out += '}';
  return simdjson::SUCCESS;
}

simdjson::error_code compact_array(simdjson::ondemand::value value, std::string& out,
                                   std::vector<std::string>& problems, unsigned depth) {
  simdjson::ondemand::array array;
  if (auto ec = value.get_array().get(array))
    return ec;
  out += '[';
  bool first = true;
  for (auto element : array) {
    simdjson::ondemand::value child;
    if (auto ec = std::move(element).get(child))
      return ec;
    if (!first)
      out += ',';
    first = false;
    if (auto ec = visit_compact(child, out, problems, depth + 1))
      return ec;
  }
  out += ']';
  return simdjson::SUCCESS;
}

/// A string, number, boolean or null, validated and appended as written.
simdjson::error_code compact_scalar(simdjson::ondemand::value value,
                                    simdjson::ondemand::json_type type, std::string& out) {
  using simdjson::ondemand::json_type;
  switch (type) {
  case json_type::string: {
    std::string_view text;
    if (auto ec = value.get_string().get(text))
      return ec;
    append_json_string(out, text);
    return simdjson::SUCCESS;
  }
  case json_type::number: {
    // Parsing validates the token; the text is kept as written (no float round trip).
    double ignored;
    std::string_view token = trim_space(value.raw_json_token());
    if (auto ec = value.get_double().get(ignored))
      return ec;
    out += token;
    return simdjson::SUCCESS;
  }
  case json_type::boolean: {
    bool b;
    if (auto ec = value.get_bool().get(b))
      return ec;
    out += b ? "true" : "false";
    return simdjson::SUCCESS;
  }
  case json_type::null: {
    bool is_null = false;
    if (auto ec = value.is_null().get(is_null))
      return ec;
    if (!is_null)
      return simdjson::INCORRECT_TYPE;
    out += "null";
    return simdjson::SUCCESS;
  }
  default:
    return simdjson::INCORRECT_TYPE;
  }
}

} // namespace

simdjson::error_code visit_compact(simdjson::ondemand::value value, std::string& out,
                                   std::vector<std::string>& problems, unsigned depth) {
  using simdjson::ondemand::json_type;
  if (depth >= MAX_JSON_DEPTH)
    return simdjson::DEPTH_ERROR;
  json_type type;
  if (auto ec = value.type().get(type))
    return ec;
  if (type == json_type::object)
    return compact_object(value, out, problems, depth);
  if (type == json_type::array)
    return compact_array(value, out, problems, depth);
  return compact_scalar(value, type, out);
}

} // namespace shardshift::json
