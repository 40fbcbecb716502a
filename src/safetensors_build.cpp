// safetensors_build.cpp: building a safetensors header (the length prefix and the JSON text)
// for tensors laid out back to back in the given order.
//
// The text is compact, keys in the given order, and padded with spaces so the data section
// starts where the caller wants it (docs/format.md, "What shardshift writes"). Names are checked
// here rather than trusted: a header that is not valid UTF-8, repeats a name or overflows an
// offset would be rejected by every reader, so it is better refused before any byte is written.
#include "shardshift/json_text.h"
#include "shardshift/problems.h"
#include "shardshift/safetensors.h"

#include <set>
#include <string_view>

#include <simdjson.h>

namespace shardshift {

namespace {

/// `"__metadata__":{...}`, keys in the given order.
Status append_metadata(std::string& json, const Metadata& metadata) {
  std::set<std::string_view> keys;
  json += "\"__metadata__\":{";
  for (const auto& [key, value] : metadata) {
    if (!keys.insert(key).second)
      return error(Errc::invalid_argument,
                   "header: duplicate metadata key '" + printable(key) + "'");
    if (!simdjson::validate_utf8(key) || !simdjson::validate_utf8(value))
      return error(Errc::invalid_argument,
                   "header: metadata key '" + printable(key) + "': not valid UTF-8");
    if (keys.size() > 1)
      json += ',';
    append_json_string(json, key);
    json += ':';
    append_json_string(json, value);
  }
  json += '}';
  return {};
}

/// `"name":{"dtype":...,"shape":[...],"data_offsets":[offset,end]}`; `offset` moves to the end.
/// `names` holds the names before it.
Status append_tensor(std::string& json, const PlannedTensor& t, std::set<std::string_view>& names,
                     uint64_t& offset) {
  if (t.name == "__metadata__")
    return error(Errc::invalid_argument,
                 "header: tensor '__metadata__': the name is reserved by the format");
  if (!simdjson::validate_utf8(t.name))
    return error(Errc::invalid_argument,
                 "header: tensor '" + printable(t.name) + "': name is not valid UTF-8");
  if (!names.insert(t.name).second)
    return error(Errc::invalid_argument,
                 "header: tensor '" + printable(t.name) + "': duplicate name");
  auto size = tensor_byte_size(t.dtype, t.shape);
  if (!size)
    return error(Errc::invalid_argument,
                 "header: tensor '" + printable(t.name) +
                     "': size overflows 64 bits or is not a whole number of bytes");
  if (offset > UINT64_MAX - *size)
    return error(Errc::invalid_argument,
                 "header: tensor '" + printable(t.name) + "': data offsets overflow 64 bits");
  append_json_string(json, t.name);
  json += ":{\"dtype\":\"";
  json += dtype_name(t.dtype);
  json += "\",\"shape\":" + shape_text(t.shape, ",");
  json +=
      ",\"data_offsets\":[" + std::to_string(offset) + ',' + std::to_string(offset + *size) + "]}";
  offset += *size;
  return {};
}

} // namespace

Result<std::string> build_header(std::span<const PlannedTensor> tensors,
                                 const HeaderOptions& options) {
  if (options.data_start_mod_4096 && *options.data_start_mod_4096 >= 4096)
    return error(Errc::invalid_argument, "header: data_start_mod_4096 must be below 4096, got " +
                                             std::to_string(*options.data_start_mod_4096));
  std::string json = "{";
  if (!options.metadata.empty())
    if (Status s = append_metadata(json, options.metadata); !s.ok())
      return s;
  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (json.size() > 1)
      json += ',';
    if (Status s = append_tensor(json, t, names, offset); !s.ok())
      return s;
    // Fail early rather than build a gigantic string for a header that cannot be written anyway.
    if (json.size() > MAX_HEADER_BYTES)
      break;
  }
  json += '}';

  // Pad with spaces (JSON whitespace, which readers accept) so the data section lands where asked:
  // 8-byte alignment by default, the reference writer's convention.
  uint64_t unpadded_end = 8 + json.size();
  uint64_t pad = options.data_start_mod_4096
                     ? (*options.data_start_mod_4096 + 4096 - unpadded_end % 4096) % 4096
                     : (8 - unpadded_end % 8) % 8;
  json.append(pad, ' ');
  if (json.size() > MAX_HEADER_BYTES)
    return error(Errc::invalid_argument, "header: " + std::to_string(json.size()) +
                                             " bytes exceeds the format's limit of " +
                                             std::to_string(MAX_HEADER_BYTES));

  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  out += json;
  return out;
}

} // namespace shardshift
