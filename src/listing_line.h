// listing_line.h: one line of a text listing that ends in a file name (SHA256SUMS, plan
// --print-size), escaped the way GNU coreutils' sha256sum escapes names, so that a name holding a
// line break still takes one line and reads back exactly.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace shardshift {

/// `fields + separator + name + "\n"`. A name holding a backslash, line feed or carriage return is
/// written as sha256sum writes it: the line starts with a backslash, and those bytes are written
/// \\, \n and \r.
std::string listing_line(std::string_view fields, std::string_view separator,
                         std::string_view name);

/// The name of an escaped line (one that starts with a backslash), its escapes undone; nullopt
/// for an escape listing_line does not write.
std::optional<std::string> listing_name_unescape(std::string_view name);

} // namespace shardshift
