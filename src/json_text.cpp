#include "shardshift/json_text.h"

#include <algorithm>
#include <cassert>
#include <charconv>
#include <cmath>
#include <cstdint>

namespace shardshift {

namespace {

void append_hex4(std::string& out, unsigned value) {
  static constexpr char HEX[] = "0123456789abcdef";
  out += "\\u";
  for (int shift = 12; shift >= 0; shift -= 4)
    out += HEX[(value >> shift) & 0xF];
}

// std::to_chars: locale-free, and exact for every 64-bit value.
template <class Integer> void append_integer(std::string& out, Integer number) {
  char buf[24];
  out.append(buf, std::to_chars(buf, buf + sizeof buf, number).ptr);
}

// The length of the valid UTF-8 sequence at the start of `text` (which starts with a byte of
// 0x80 or more) and its code point, or 0 when it is not one: a stray continuation byte, a
// sequence cut short, an overlong form, a surrogate or a value beyond U+10FFFF.
size_t utf8_sequence(std::string_view text, uint32_t* cp) {
  const auto c = static_cast<unsigned char>(text[0]);
  const size_t extra = (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : 0;
  if (extra == 0 || text.size() <= extra)
    return 0;
  uint32_t value = c & (extra == 1 ? 0x1F : extra == 2 ? 0x0F : 0x07);
  for (size_t k = 1; k <= extra; ++k) {
    const auto next = static_cast<unsigned char>(text[k]);
    if ((next & 0xC0) != 0x80)
      return 0;
    value = (value << 6) | (next & 0x3F);
  }
  static constexpr uint32_t SMALLEST[] = {0, 0x80, 0x800, 0x10000};
  if (value < SMALLEST[extra] || value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF))
    return 0;
  *cp = value;
  return extra + 1;
}

} // namespace

void append_json_string(std::string& out, std::string_view text, bool ascii_only) {
  out += '"';
  size_t i = 0;
  while (i < text.size()) {
    auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      // JSON text is Unicode: a byte that starts no valid UTF-8 sequence (a file name in another
      // encoding) becomes U+FFFD, the replacement character, so the document stays valid.
      uint32_t cp = 0;
      const size_t length = utf8_sequence(text.substr(i), &cp);
      if (length == 0) {
        append_hex4(out, 0xFFFD);
        ++i;
        continue;
      }
      if (!ascii_only) {
        out.append(text.substr(i, length));
        i += length;
        continue;
      }
      i += length;
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

// JsonWriter. Only the separators differ between the styles; everything else is shared so that
// compact and spaced documents hold the same tokens.

void JsonWriter::write_separator() {
  Level& top = stack_.back();
  if (!top.empty)
    out_ += ',';
  if (break_pending_) {
    out_ += '\n';
    if (style_ == JsonStyle::spaced) // compact documents are for programs: no indentation
      out_.append(2 * stack_.size(), ' ');
    break_pending_ = false;
  } else if (!top.empty && style_ == JsonStyle::spaced) {
    out_ += ' ';
  }
  top.empty = false;
}

void JsonWriter::before_value() {
  if (stack_.empty()) {
    assert(!started_ && "a JSON document has one top-level value");
    started_ = true;
    return;
  }
  Level& top = stack_.back();
  if (top.object) {
    assert(!top.key_due && "an object member needs key() first");
    top.key_due = true;
    return;
  }
  write_separator();
}

JsonWriter& JsonWriter::open_container(bool object) {
  before_value();
  out_ += object ? '{' : '[';
  stack_.push_back({.object = object});
  return *this;
}

JsonWriter& JsonWriter::close_container(bool object) {
  assert(!stack_.empty() && stack_.back().object == object && "closing what is not open");
  assert((!object || stack_.back().key_due) && "a key without its value");
  stack_.pop_back();
  out_ += object ? '}' : ']';
  break_pending_ = false; // a closing bracket stays on the line of the last element
  return *this;
}

JsonWriter& JsonWriter::key(std::string_view name) {
  assert(!stack_.empty() && stack_.back().object && stack_.back().key_due);
  write_separator();
  append_json_string(out_, name);
  out_ += style_ == JsonStyle::spaced ? ": " : ":";
  stack_.back().key_due = false;
  return *this;
}

JsonWriter& JsonWriter::value(std::string_view text) {
  before_value();
  append_json_string(out_, text);
  return *this;
}

JsonWriter& JsonWriter::value(bool b) {
  before_value();
  out_ += b ? "true" : "false";
  return *this;
}

JsonWriter& JsonWriter::unsigned_value(uint64_t number) {
  before_value();
  append_integer(out_, number);
  return *this;
}

JsonWriter& JsonWriter::signed_value(int64_t number) {
  before_value();
  append_integer(out_, number);
  return *this;
}

JsonWriter& JsonWriter::value(double number) {
  if (!std::isfinite(number))
    return null(); // JSON has no NaN or Infinity
  before_value();
  // std::to_chars without a format is locale-free and round-trips (shortest representation).
  char buf[32];
  auto end = std::to_chars(buf, buf + sizeof buf, number).ptr;
  out_.append(buf, end);
  return *this;
}

JsonWriter& JsonWriter::fixed(double number, int decimals) {
  if (!std::isfinite(number))
    return null();
  // 309 integer digits of DBL_MAX, a sign, a point and the decimals fit.
  char buf[400];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, number, std::chars_format::fixed,
                                 std::clamp(decimals, 0, 30));
  if (ec != std::errc())
    return value(number);
  before_value();
  out_.append(buf, end);
  return *this;
}

JsonWriter& JsonWriter::null() {
  before_value();
  out_ += "null";
  return *this;
}

JsonWriter& JsonWriter::line_break() {
  break_pending_ = true;
  return *this;
}

std::string JsonWriter::take() {
  std::string text = std::move(out_);
  out_.clear();
  return text;
}

} // namespace shardshift
