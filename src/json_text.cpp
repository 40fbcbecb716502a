#include "shardshift/json_text.h"

#include <cstdint>

namespace shardshift {

namespace {

void append_hex4(std::string& out, unsigned value) {
  static constexpr char HEX[] = "0123456789abcdef";
  out += "\\u";
  for (int shift = 12; shift >= 0; shift -= 4)
    out += HEX[(value >> shift) & 0xF];
}

} // namespace

void append_json_string(std::string& out, std::string_view text, bool ascii_only) {
  out += '"';
  size_t i = 0;
  while (i < text.size()) {
    auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80 && ascii_only) {
      // Decode one UTF-8 sequence (the caller guarantees it is valid).
      int extra = (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : 3;
      uint32_t cp = c & (extra == 1 ? 0x1F : extra == 2 ? 0x0F : 0x07);
      for (int k = 1; k <= extra; ++k)
        cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
      i += extra + 1;
      if (cp >= 0x10000) {
        cp -= 0x10000;
        append_hex4(out, 0xD800 + (cp >> 10));
        append_hex4(out, 0xDC00 + (cp & 0x3FF));
      } else {
        append_hex4(out, cp);
      }
      continue;
    }
    ++i;
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
      if (c < 0x20 || c == 0x7f)
        append_hex4(out, c);
      else
        out += static_cast<char>(c);
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
