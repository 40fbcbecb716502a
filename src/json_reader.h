// json_reader.h: small helpers shared by the two hardened JSON readers (safetensors headers and
// model.safetensors.index.json) on top of simdjson On-Demand: the checks before and after a
// document is parsed, walking an object's fields with duplicate-key detection, and plain-integer
// tokens.
//
// On-Demand validates only what it visits and keeps duplicate keys, so both readers visit every
// value, keep a set of unescaped keys per object, and read integers from their raw token text so
// that "1e3", "1.0" and "-1" can be told apart from plain integers.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <simdjson.h>

namespace shardshift::json {

/// "object", "array", "string", "number", "boolean" or "null".
std::string_view type_name(simdjson::ondemand::json_type type);

/// The token without the JSON whitespace simdjson's raw_json_token() leaves after it.
std::string_view trim_space(std::string_view token);

enum class UintToken { ok, negative, fraction, exponent, too_large, malformed };

/// Reads a JSON number token as an unsigned 64-bit integer; anything but plain decimal digits
/// (no sign, fraction, exponent or leading zero) that fit in 64 bits is refused with the reason.
UintToken parse_uint_token(std::string_view token, uint64_t& value);
/// "is negative", "has a fraction", ... for messages; `token` is quoted in the text.
std::string describe_uint_problem(UintToken problem, std::string_view token);

/// How deep arrays and objects may nest in any JSON shardshift reads (headers, the index,
/// config.json). Real files nest a few levels; the cap keeps every reader's recursion (ours in
/// visit_compact, simdjson's DOM) far from the stack's end, whatever the input holds.
inline constexpr unsigned MAX_JSON_DEPTH = 64;

enum class Precheck { ok, starts_with_nul, starts_with_bom, not_utf8, too_deep };

/// What makes `text` unreadable before any parsing: a leading NUL byte or UTF-8 byte-order mark
/// (neither is JSON, and simdjson would misreport them), invalid UTF-8 anywhere, or arrays and
/// objects nested deeper than MAX_JSON_DEPTH (counted in one pass, outside strings).
Precheck precheck(std::string_view text);
/// "starts with a NUL byte", "starts with a UTF-8 byte-order mark", "is not valid UTF-8", "has
/// nesting deeper than 64 levels", to follow the document's name in a message.
std::string_view describe(Precheck problem);

/// The deepest nesting of arrays and objects in `text`, counting no further than `limit` + 1
/// (brackets inside strings are not counted). Malformed text gives some number; the parser that
/// follows reports the malformation.
unsigned nesting_depth(std::string_view text, unsigned limit = MAX_JSON_DEPTH);

/// True when every token of `doc` was consumed, i.e. nothing follows the top-level value.
bool at_end(simdjson::ondemand::document& doc);

/// True when `json` opens with one complete, valid JSON object and something other than JSON
/// whitespace follows it. simdjson refuses most such texts before a reader can walk to the end of
/// the object and see what follows (On-Demand takes a root object only when the text's last token
/// closes it; a string opened after it and never closed fails the whole text), with a message
/// about an unfinished object or string. A reader asks this on such an error to say what is
/// really wrong. Parses `json` again: for error paths only.
bool object_then_more(const simdjson::padded_string& json);

/// Reads one field of an object being iterated: its unescaped key (copied: the view dies with
/// the next token) and its value. `duplicate` is set when an earlier field of the same object had
/// the same key (keys are compared after unescaping; `seen` holds them and must be one set per
/// object). Returns a simdjson error when the JSON itself is malformed. for_each_field's step.
simdjson::error_code read_field(simdjson::simdjson_result<simdjson::ondemand::field> field_result,
                                std::set<std::string, std::less<>>& seen, std::string& key,
                                simdjson::ondemand::value& value, bool& duplicate);

/// Calls `visit(key, value, duplicate)` for every field of `object`, in order: the unescaped key
/// (a std::string the callback may move from), the value, and whether an earlier field of this
/// object had the same key. A value the callback leaves unvisited is skipped. `visit` returns
/// either a bool (false stops the walk) or a simdjson error code (anything but SUCCESS stops it).
/// Returns the error that stopped the walk: a malformed field, found before `visit` sees it, or
/// the code `visit` returned; SUCCESS when every field was visited or `visit` returned false.
template <class Visit>
simdjson::error_code for_each_field(simdjson::ondemand::object& object, Visit&& visit) {
  std::set<std::string, std::less<>> seen;
  for (auto field_result : object) {
    std::string key;
    simdjson::ondemand::value value;
    bool duplicate;
    if (auto ec = read_field(std::move(field_result), seen, key, value, duplicate))
      return ec;
    if constexpr (std::is_same_v<decltype(visit(key, value, duplicate)), bool>) {
      if (!visit(key, value, duplicate))
        return simdjson::SUCCESS;
    } else {
      if (auto ec = visit(key, value, duplicate))
        return ec;
    }
  }
  return simdjson::SUCCESS;
}

/// Visits `value` completely (so simdjson validates all of it) and appends its compact JSON text to
/// `out`. Duplicate keys at any depth are appended to `problems` as "duplicate key 'k'".
/// Returns a simdjson error when the JSON itself is malformed, and simdjson::DEPTH_ERROR below
/// MAX_JSON_DEPTH levels (precheck() refuses such text first; this guards the recursion itself).
simdjson::error_code visit_compact(simdjson::ondemand::value value, std::string& out,
                                   std::vector<std::string>& problems, unsigned depth = 0);

} // namespace shardshift::json
