// json_text.h: writing JSON. Every JSON shardshift writes (headers, --json output, traces) escapes
// names through here: quotes, backslashes and control characters are escaped, other bytes (UTF-8
// text) pass through. JsonWriter builds whole documents with one deterministic layout, so the
// apps never assemble JSON by hand.
// Thread-safety: the free functions are pure; a JsonWriter is used by one thread at a time.
#pragma once

#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace shardshift {

/// Appends `text` to `out` as a JSON string literal, quotes included. With `ascii_only`, every
/// character outside printable ASCII becomes \uXXXX (surrogate pairs above U+FFFF), as Python's
/// json.dumps writes by default. A byte that starts no valid UTF-8 sequence (a file name in
/// another encoding) is written as \ufffd, so the literal is always valid JSON.
void append_json_string(std::string& out, std::string_view text, bool ascii_only = false);
/// `text` as a JSON string literal.
std::string json_string(std::string_view text);

/// How a JsonWriter separates tokens.
enum class JsonStyle {
  compact, ///< `{"a":1,"b":[1,2]}`: for files read by programs (traces)
  spaced,  ///< `{"a": 1, "b": [1, 2]}`: Python's json.dumps default, for --json output
};

/// Builds one JSON document into a string, token by token:
///
///     JsonWriter w;
///     w.begin_object().key("name").value("x").key("shape").begin_array();
///     for (uint64_t d : shape) w.value(d);
///     w.end_array().end_object();
///     std::cout << w.text() << "\n";
///
/// The same calls always give the same bytes. Object keys are written in call order (callers that
/// want sorted keys iterate sorted containers). line_break() puts the next element on a line of
/// its own (in the spaced style indented two spaces per open container), for long arrays that
/// a person reads or greps line by line.
/// A large document can be streamed: take() hands over the text built so far and the writer
/// carries on from there.
///
/// Misuse (a value where a key is due, closing what is not open) is a programming error, caught
/// by assertions in debug builds.
class JsonWriter {
public:
  explicit JsonWriter(JsonStyle style = JsonStyle::spaced) : style_(style) {}

  JsonWriter& begin_object() { return open_container(true); }
  JsonWriter& end_object() { return close_container(true); }
  JsonWriter& begin_array() { return open_container(false); }
  JsonWriter& end_array() { return close_container(false); }
  /// The next member's name. REQUIRES: inside an object, where a key is due.
  JsonWriter& key(std::string_view name);

  JsonWriter& value(std::string_view text);
  /// (Without this overload a string literal would convert to bool.)
  JsonWriter& value(const char* text) { return value(std::string_view(text)); }
  JsonWriter& value(bool b);
  template <std::integral T>
  requires(!std::same_as<T, bool>) JsonWriter& value(T number) {
    if constexpr (std::is_signed_v<T>)
      return signed_value(static_cast<int64_t>(number));
    else
      return unsigned_value(static_cast<uint64_t>(number));
  }
  /// The shortest text that reads back as the same double; NaN and infinities become null.
  JsonWriter& value(double number);
  /// Fixed notation with `decimals` digits after the point (trace timestamps: microseconds with
  /// nanosecond digits); NaN and infinities become null.
  JsonWriter& fixed(double number, int decimals);
  JsonWriter& null();

  /// Starts the next element (or key) on a new line.
  JsonWriter& line_break();

  /// The text so far.
  const std::string& text() const { return out_; }
  /// Moves the text so far out of the writer (for streaming); later calls append after it.
  std::string take();
  /// True once the top-level value is closed.
  bool complete() const { return stack_.empty() && started_; }

private:
  struct Level {
    bool object;
    bool empty = true;
    bool key_due = true; ///< objects: the next token is a key
  };
  void before_value();
  void write_separator();
  JsonWriter& open_container(bool object);
  JsonWriter& close_container(bool object);
  JsonWriter& unsigned_value(uint64_t number);
  JsonWriter& signed_value(int64_t number);

  JsonStyle style_;
  std::string out_;
  std::vector<Level> stack_;
  bool started_ = false;
  bool break_pending_ = false;
};

} // namespace shardshift
