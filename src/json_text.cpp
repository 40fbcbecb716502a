#include "shardshift/json_text.h"

namespace shardshift {

void append_json_string(std::string& out, std::string_view text) {
  static const char* const HEX = "0123456789abcdef";
  out += '"';
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    case '\b':
      out += "\\b";
      break;
    case '\f':
      out += "\\f";
      break;
    default:
      if (c < 0x20 || c == 0x7f) {
        out += "\\u00";
        out += HEX[c >> 4];
        out += HEX[c & 15];
      } else {
        out += ch;
      }
    }
  }
  out += '"';
}

std::string json_string(std::string_view text) {
  std::string s;
  append_json_string(s, text);
  return s;
}

} // namespace shardshift
