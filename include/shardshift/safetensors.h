// safetensors.h: the safetensors format, both directions, in memory: the hardened header parser,
// header construction, Hugging Face's shard naming and cutting, and the text of
// model.safetensors.index.json (read and written).
//
// docs/format.md describes the format and every rule the parser enforces. Readers report all
// problems of a file, one per line of the Status message, each shaped `path: tensor 'x': problem`
// (problems.h). Nothing here touches the file system: callers map or read the bytes, and the
// shard writer (shard_writer.h) puts what is built here on disk.
// Thread-safety: pure functions over immutable inputs.
#pragma once

#include "shardshift/dtype.h"
#include "shardshift/status.h"

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardshift {

inline constexpr uint64_t MAX_HEADER_BYTES = 100'000'000;
inline constexpr const char* INDEX_FILE_NAME = "model.safetensors.index.json";

// --- Reading a header -----------------------------------------------------------------------

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

// --- Building a header ----------------------------------------------------------------------

struct PlannedTensor {
  std::string name;
  DType dtype = DType::U8;
  std::vector<uint64_t> shape;
};

struct HeaderOptions {
  Metadata metadata = {{"format", "pt"}};
  /// When set, the header is padded with spaces so the data section starts at a file offset that
  /// is congruent to this value modulo 4096 (lets copied runs keep their page alignment for
  /// reflinks). Otherwise it is padded to a multiple of 8.
  std::optional<uint64_t> data_start_mod_4096;
};

/// The 8-byte length prefix plus the JSON header for `tensors` laid out in the given order.
/// Fails (Errc::invalid_argument) on a tensor named `__metadata__`, a duplicate name, a header over
/// MAX_HEADER_BYTES or a size that overflows.
Result<std::string> build_header(std::span<const PlannedTensor> tensors,
                                 const HeaderOptions& options);

// --- Sharding like Hugging Face -------------------------------------------------------------

/// "model.safetensors" when count == 1, else "model-%05zu-of-%05zu.safetensors" (1-based index).
std::string shard_file_name(size_t index, size_t count);

/// Hugging Face's greedy split: tensors in the given order; a new file starts when the next
/// tensor would push the current one over max_shard_size (a tensor larger than the limit gets a
/// file of its own); never an empty list (an empty input is one empty file). Overflow-safe.
/// Returns, per file, the indices into `sizes` of its tensors.
std::vector<std::vector<uint32_t>> cut_shards(std::span<const uint64_t> sizes,
                                              uint64_t max_shard_size);

// --- The index of a sharded checkpoint ------------------------------------------------------

struct Index {
  std::vector<std::pair<std::string, std::string>> weight_map; ///< tensor -> shard, file order
  Metadata metadata; ///< "metadata", sorted by key; values that are not strings as compact JSON
};

/// Parses the text of model.safetensors.index.json with the same care as a header: one object,
/// duplicate keys refused at any level, every value visited. `path` is only used in messages.
/// Fails (Errc::format) with every problem found when the index cannot be used.
Result<Index> parse_index(std::string_view path, std::string_view text);

/// The text of model.safetensors.index.json: {"metadata": {"total_size": N}, "weight_map": {...}}
/// with sorted keys and two-space indentation, byte for byte what transformers writes.
/// Fails (Errc::invalid_argument) on a name or file that is not valid UTF-8.
Result<std::string> index_json(uint64_t total_size,
                               const std::map<std::string, std::string>& weight_map);

} // namespace shardshift
