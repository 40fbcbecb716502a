// sha256.h: SHA-256 of a stream of byte ranges, through OpenSSL's libcrypto (which uses the CPU's
// SHA extensions where it has them). `--checksums` hashes each output file as it is produced.
// Thread-safety: one Sha256 per thread at a time.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace shardshift {

class Sha256 {
public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  /// Starts a new digest.
  void reset();
  void update(std::span<const std::byte> bytes);
  void update(std::string_view text) { update(std::as_bytes(std::span(text))); }
  /// The digest of everything since reset(), as 64 lower-case hex digits; then reset().
  std::string hex();

private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

/// SHA-256 of `bytes` as hex.
std::string sha256_hex(std::span<const std::byte> bytes);

/// `SHA256SUMS` text in GNU coreutils format ("<hex>  <name>\n" each, in the order given), which
/// `sha256sum -c` checks. A name holding a backslash, line feed or carriage return is escaped as
/// sha256sum escapes it (listing_line).
std::string sha256sums_text(std::span<const std::pair<std::string, std::string>> name_digest);

} // namespace shardshift
