// json_text.h: writing JSON string literals. Every JSON shardshift writes (headers, --json output,
// traces) escapes names through here: quotes, backslashes and control characters are escaped,
// other bytes (UTF-8 text) pass through.
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>

namespace shardshift {

/// Appends `text` to `out` as a JSON string literal, quotes included. With `ascii_only`, every
/// character outside printable ASCII becomes \uXXXX (surrogate pairs above U+FFFF), as Python's
/// json.dumps writes by default; REQUIRES then: `text` is valid UTF-8.
void append_json_string(std::string& out, std::string_view text, bool ascii_only = false);
/// `text` as a JSON string literal.
std::string json_string(std::string_view text);

} // namespace shardshift
