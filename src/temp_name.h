// temp_name.h: the part of a final name that its temporary names (".NAME.shardshift-tmp-PID-N",
// a file being written, a staging directory, a trace) begin with. A file name may be 255 bytes
// long (NAME_MAX), and the marker, process id and random part add about 45: a long name keeps
// only its first bytes, so that the temporary name is still a valid name.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace shardshift {

/// `name`, or its first TEMP_STEM_MAX bytes when it is longer, never cutting a UTF-8 character.
inline std::string temp_name_stem(std::string_view name) {
  constexpr size_t TEMP_STEM_MAX = 160;
  if (name.size() <= TEMP_STEM_MAX)
    return std::string(name);
  size_t end = TEMP_STEM_MAX;
  while (end > 0 && (static_cast<unsigned char>(name[end]) & 0xC0) == 0x80)
    --end; // name[end] continues a character: cut before its first byte
  return std::string(name.substr(0, end));
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
