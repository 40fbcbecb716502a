// json_text.h: writing JSON string literals. Every JSON shardshift writes (headers, --json output,
// traces) escapes names through here: quotes, backslashes and control characters are escaped,
// other bytes (UTF-8 text) pass through.
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>

namespace shardshift {

/// Appends `text` to `out` as a JSON string literal, quotes included.
void append_json_string(std::string& out, std::string_view text);
/// `text` as a JSON string literal.
std::string json_string(std::string_view text);

} // namespace shardshift
