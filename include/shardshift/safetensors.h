// safetensors.h: the parsed header of one safetensors file, and the hardened parser.
//
// docs/format.md describes the format and every rule the parser enforces. The parser reports all
// problems of a file, one per line of the Status message, each shaped `path: tensor 'x': problem`.
// Thread-safety: pure functions over immutable inputs.
#pragma once

#include "shardshift/dtype.h"
#include "shardshift/status.h"

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardshift {

inline constexpr uint64_t MAX_HEADER_BYTES = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::U8;
  std::vector<uint64_t> shape;
  uint64_t begin = 0; ///< offset of the first byte, relative to the data section
  uint64_t end = 0;   ///< one past the last byte, relative to the data section
  uint64_t size() const { return end - begin; }
};

using Metadata = std::vector<std::pair<std::string, std::string>>; // sorted by key

struct Header {
  uint64_t header_length = 0;      ///< N, the length of the JSON text
  uint64_t data_start = 0;         ///< 8 + N: file offset of the data section
  std::vector<TensorInfo> tensors; ///< sorted by `begin` (data order), names unique
  Metadata metadata;               ///< `__metadata__`, sorted by key; empty when absent

  /// The tensor named `name`, or nullptr. O(log n) through a sorted name index.
  const TensorInfo* find(std::string_view name) const;
  /// Sum of all tensor sizes (= file size - data_start for a valid file).
  uint64_t data_size() const;

  std::vector<uint32_t> by_name; ///< indices into `tensors` sorted by name (filled by the parser)
};

/// Parses and validates the header of `file` (the whole file's bytes, typically a mapping) against
/// every rule of docs/format.md, including the data-section layout and the file size. `path` is
/// only used in messages.
Result<Header> parse_header(std::string_view path, std::span<const std::byte> file);

} // namespace shardshift
