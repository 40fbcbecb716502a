// temp_name.h: the part of a final name that its temporary names (".NAME.shardshift-tmp-PID-N",
// a file being written, a staging directory, a trace) begin with. A file name may be 255 bytes
// long (NAME_MAX), and the marker, process id and random part add about 45: a long name keeps
// only its first bytes and a hash of the rest, so that the temporary name is still a valid name.
#pragma once

#include "sha256.h"

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

namespace shardshift {

/// `name`, or, when it is longer than TEMP_STEM_MAX bytes, its first bytes (never cutting a UTF-8
/// character), "~" and the first 16 hex digits of the whole name's SHA-256: two long names that
/// begin alike still get stems of their own, so that a run never takes another output's
/// temporary names (its staging directory) for its own; the same on every machine, as the ranks
/// of one job need.
inline std::string temp_name_stem(std::string_view name) {
  constexpr size_t TEMP_STEM_MAX = 160, HASH_PART = 17; // "~" and 16 hex digits
  if (name.size() <= TEMP_STEM_MAX)
    return std::string(name);
  size_t end = TEMP_STEM_MAX - HASH_PART;
  while (end > 0 && (static_cast<unsigned char>(name[end]) & 0xC0) == 0x80)
    --end; // name[end] continues a character: cut before its first byte
  std::string stem(name.substr(0, end));
  stem += '~';
  stem += sha256_hex(std::as_bytes(std::span(name))).substr(0, HASH_PART - 1);
  return stem;
}

/// How every temporary name made from `name` begins: ".NAME.shardshift-WHAT-" ("tmp" for what
/// is being written, "old" for an output --force moves aside), the process id and a unique part
/// to follow.
inline std::string temp_name_prefix(std::string_view name, std::string_view what = "tmp") {
  std::string prefix = "."; // appended, not "." + ...: GCC 12 warns falsely on that (-Wrestrict)
  prefix += temp_name_stem(name);
  prefix += ".shardshift-";
  prefix += what;
  prefix += '-';
  return prefix;
}

} // namespace shardshift
