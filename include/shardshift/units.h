// units.h: byte sizes as users write them ("64MiB", "5GB", "1.5GiB", "4096") and as we print them.
// Thread-safety: pure functions.
#pragma once

#include "shardshift/status.h"

#include <cstdint>
#include <string>
#include <string_view>

namespace shardshift {

/// The largest size parse_size() takes, 2^63 - 1 bytes: file offsets (off_t) are signed 64-bit,
/// so no file, shard or memory budget is larger, and sizes added to it cannot wrap.
inline constexpr uint64_t MAX_SIZE = 9'223'372'036'854'775'807;

/// Parses a size: a number with an optional suffix B, kB/KB, MB, GB, TB (powers of 1000) or KiB,
/// MiB, GiB, TiB (powers of 1024), the unit letter in either case. Errc::invalid_argument when
/// malformed, and for spellings others read otherwise: a lowercase b after a decimal unit (bits
/// to Hugging Face: "5Gb") and a bare K, M, G or T (a power of 1024 to dd), saying what to write;
/// and over MAX_SIZE, saying it is too large and what the largest is.
Result<uint64_t> parse_size(std::string_view text);
/// "1.52 GB"-style decimal rendering with three significant digits.
std::string format_bytes(uint64_t bytes);
/// "2.41 GB/s".
std::string format_rate(double bytes_per_second);

} // namespace shardshift
