#include "shardshift/units.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <string>
#include <system_error>
#include <utility>

namespace shardshift {

namespace {

// Bytes in one of a unit (a lowercase suffix: "", "b", "kb" ... "tb", "kib" ... "tib"); 0 when
// it is none of them.
uint64_t unit_bytes(std::string_view suffix) {
  constexpr std::pair<std::string_view, uint64_t> UNITS[] = {{"", 1},
                                                             {"b", 1},
                                                             {"kb", 1'000},
                                                             {"mb", 1'000'000},
                                                             {"gb", 1'000'000'000},
                                                             {"tb", 1'000'000'000'000},
                                                             {"kib", uint64_t{1} << 10},
                                                             {"mib", uint64_t{1} << 20},
                                                             {"gib", uint64_t{1} << 30},
                                                             {"tib", uint64_t{1} << 40}};
  for (auto [name, bytes] : UNITS)
    if (suffix == name)
      return bytes;
  return 0;
}

} // namespace

Result<uint64_t> parse_size(std::string_view text) {
  auto bad = [&] {
    return Status(Errc::invalid_argument,
                  "invalid size '" + std::string(text) + "' (examples: 4096, 64MiB, 1GiB, 5GB)");
  };
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  if (i == 0)
    return bad();
  double number = 0;
  {
    std::string num(text.substr(0, i));
    char* end = nullptr;
    number = std::strtod(num.c_str(), &end);
    if (end != num.c_str() + num.size())
      return bad();
  }
  std::string suffix;
  for (char c : text.substr(i))
    suffix += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  // Spellings that others read otherwise are refused rather than guessed: Hugging Face reads a
  // lowercase b after a decimal unit as bits ("5Gb" is 625 MB there), and dd or sort read a bare
  // K, M, G or T as a power of 1024.
  const char unit = suffix.empty()
                        ? '\0'
                        : static_cast<char>(std::toupper(static_cast<unsigned char>(suffix[0])));
  const bool unit_letter =
      unit != '\0' && std::string_view("KMGT").find(unit) != std::string_view::npos;
  auto refuse = [&](const std::string& why) {
    const std::string number(text.substr(0, i));
    return Status(Errc::invalid_argument, "size '" + std::string(text) + "'" + why + "; write " +
                                              number + unit + "B (decimal) or " + number + unit +
                                              "iB (binary)");
  };
  if (unit_letter && suffix.size() == 2 && suffix[1] == 'b' && text.back() == 'b')
    return refuse(": a lowercase b after the unit means bits to Hugging Face");
  if (unit_letter && suffix.size() == 1)
    return refuse(" is ambiguous (dd and sort read " + std::string(1, unit) +
                  " as a power of 1024)");
  const uint64_t mult = unit_bytes(suffix);
  if (mult == 0)
    return bad();
  // A well-formed size past the largest one is too large, not invalid: the user wrote what was
  // meant, and needs to hear the limit.
  auto too_large = [&] {
    return Status(Errc::invalid_argument, "size '" + std::string(text) +
                                              "' is too large (at most " +
                                              std::to_string(MAX_SIZE) + " bytes)");
  };
  const std::string_view digits = text.substr(0, i);
  if (digits.find('.') == std::string_view::npos) {
    // Whole numbers exactly: a double would round a count of bytes past 2^53.
    uint64_t count = 0, bytes = 0;
    if (std::from_chars(digits.data(), digits.data() + digits.size(), count).ec != std::errc() ||
        __builtin_mul_overflow(count, mult, &bytes) || bytes > MAX_SIZE)
      return too_large();
    return bytes;
  }
  const double value = number * static_cast<double>(mult);
  if (!std::isfinite(value) || value >= 0x1p63) // MAX_SIZE + 1, which a double holds exactly
    return too_large();
  return static_cast<uint64_t>(std::llround(value));
}

std::string format_bytes(uint64_t bytes) {
  static const char* const UNITS[] = {"B", "kB", "MB", "GB", "TB", "PB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1000 && u < 5) {
    v /= 1000;
    ++u;
  }
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else
    std::snprintf(buf, sizeof buf,
                  v < 10    ? "%.2f %s"
                  : v < 100 ? "%.1f %s"
                            : "%.0f %s",
                  v, UNITS[u]);
  return buf;
}

std::string format_rate(double bytes_per_second) {
  if (!(bytes_per_second >= 0) || !std::isfinite(bytes_per_second))
    return "- B/s";
  return format_bytes(static_cast<uint64_t>(bytes_per_second)) + "/s";
}

} // namespace shardshift
