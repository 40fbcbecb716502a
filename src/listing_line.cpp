// listing_line.cpp: names in line-per-file listings, escaped as GNU sha256sum escapes them.
#include "listing_line.h"

namespace shardshift {

std::string listing_line(std::string_view fields, std::string_view separator,
                         std::string_view name) {
  std::string out;
  if (name.find_first_of("\\\n\r") == std::string_view::npos) {
    out.append(fields).append(separator).append(name) += '\n';
    return out;
  }
  out.append("\\").append(fields).append(separator);
  for (const char c : name)
    out += c == '\\' ? "\\\\" : c == '\n' ? "\\n" : c == '\r' ? "\\r" : std::string(1, c);
  out += '\n';
  return out;
}

std::optional<std::string> listing_name_unescape(std::string_view name) {
  std::string out;
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] != '\\') {
      out += name[i];
      continue;
    }
    if (++i == name.size())
      return std::nullopt;
    switch (name[i]) {
    case '\\':
      out += '\\';
      break;
    case 'n':
      out += '\n';
      break;
    case 'r':
      out += '\r';
      break;
    default:
      return std::nullopt;
    }
  }
  return out;
}

} // namespace shardshift
