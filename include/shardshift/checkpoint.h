// checkpoint.h: a checkpoint on disk (one file, an indexed directory, or a directory of shards),
// opened, mapped and validated, with lookup of any tensor by name.
// Thread-safety: immutable after open(); all const members may be used from any thread.
#pragma once

#include "shardshift/mapped_file.h"
#include "shardshift/safetensors.h"
#include "shardshift/status.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace shardshift {

/// The file shardshift writes into every output directory it creates ("shardshift-output 1" and
/// a line of prose). `convert --force` replaces only directories that hold it; opening a
/// checkpoint never lists it as a side file, so it is not copied along.
inline constexpr const char* OUTPUT_MARKER_NAME = ".shardshift-output";

/// The checksum file `convert --checksums` writes beside the output (GNU coreutils format) and
/// `verify` checks. Like the marker, opening a checkpoint never lists it as a side file: it
/// describes the files of a previous output, which a conversion rewrites.
inline constexpr const char* CHECKSUMS_FILE_NAME = "SHA256SUMS";

struct Shard {
  std::string
      file_name; ///< relative to the checkpoint directory ("model-00001-of-00002.safetensors")
  std::unique_ptr<MappedFile> file;
  Header header;
};

struct TensorRef {
  uint32_t shard = 0;  ///< index into Checkpoint::shards
  uint32_t tensor = 0; ///< index into that shard's header.tensors
};

/// Memory a header takes once parsed into a Checkpoint and planned, per byte of its JSON, for the
/// early check before parsing (measured: 13 on 800,000 tensors of one-element shapes). Not a
/// bound: a to_hf of stacked experts (qwen3_moe, deepseek_v3) plans three tensors per expert from
/// one input tensor, about 25 per byte; the engine weighs the exact figure after planning and
/// refuses then, so the budget holds either way.
inline constexpr uint64_t HEADER_MEMORY_FACTOR = 16;

class Checkpoint {
public:
  /// Opens `path`: a `.safetensors` file, a directory with model.safetensors.index.json
  /// (cross-checked against every shard header), or a directory of `*.safetensors` shards without
  /// an index. Reports every problem found in every shard before failing. With `memory_limit`
  /// (bytes; 0: none), the headers' total length is checked before any is parsed: parsed and
  /// planned, a header takes up to HEADER_MEMORY_FACTOR times its bytes, and input whose headers
  /// would take more than half the limit is refused (Errc::unsupported) before it is parsed.
  static Result<Checkpoint> open(const std::filesystem::path& path, uint64_t memory_limit = 0);

  std::filesystem::path root; ///< the directory (or, for one file, its directory)
  bool single_file = false;   ///< opened from a path to one .safetensors file
  /// single_file: a config.json lies beside the file. It is not read (nor copied): the file may be
  /// one shard of many, or a file of its own in a shared directory; an adapter that would take a
  /// value from it refuses rather than guess which.
  bool config_beside = false;
  bool has_index = false;    ///< model.safetensors.index.json was present and used
  std::vector<Shard> shards; ///< sorted by file name
  std::map<std::string, TensorRef, std::less<>> tensors; ///< every tensor, by name
  /// The side files: the other regular files of the directory and of its subdirectories, as
  /// sorted relative paths ("config.json", "original/params.json").
  std::vector<std::string> other_files;
  Metadata index_metadata;       ///< the index's "metadata" as strings (e.g. total_size)
  std::string config_model_type; ///< config.json's "model_type"; empty when absent or not JSON
  /// config.json's top-level whole numbers ("num_experts": 128), which an adapter may check the
  /// tensors against; empty when absent or not JSON.
  std::map<std::string, uint64_t, std::less<>> config_counts;
  /// config.json's other top-level keys, whose value is no whole number: key -> the value's JSON
  /// text (cut at 40 bytes).
  std::map<std::string, std::string, std::less<>> config_not_counts;
  /// config.json's "torch_dtype" and "dtype" (newer transformers write the second), each present
  /// and not null: key -> value, the string itself, or the JSON text of a value that is no string
  /// (then in `config_dtype_not_string`); those of its "text_config" object under the keys
  /// "text_config.torch_dtype" and "text_config.dtype". A repeated key counts as its last, as
  /// Python's json reads it. The references cast to this dtype (semantics 14.2.7, 3.c).
  std::map<std::string, std::string, std::less<>> config_dtypes;
  std::vector<std::string>
      config_dtype_not_string;         ///< keys of config_dtypes whose value is no string
  bool config_has_text_config = false; ///< config.json's "text_config" is a JSON object
  /// config.json's top level, or its "text_config" where present and neither an object nor null,
  /// as JSON text (cut at 40 bytes), when it is no JSON object: transformers cannot load it.
  std::string config_not_object, config_text_config_not_object;
  /// Why config.json could not be read as JSON; empty when it was (or there is none).
  std::string config_error;
  /// Things that do not stop a conversion but that a user should hear about, one message each
  /// ("path: what"), e.g. a *.safetensors file the index does not list (ignored, not copied).
  /// The library never prints them; the apps do.
  std::vector<std::string> warnings;

  /// `--base DIR` (to_hf): the original Hugging Face checkpoint whose keys from_hf dropped, so
  /// that the plan can copy them back (docs/semantics.md section 16). attach_base() appends its
  /// shards to `shards`, from index `base_first_shard` on, so that a TensorRef names a shard of
  /// either checkpoint and the engine reads, releases and fingerprints both alike. Those shards'
  /// `file_name` is their path (they are not under `root`); their tensors are not in `tensors`,
  /// and every other member describes this checkpoint only. nullopt: no base attached.
  std::optional<uint32_t> base_first_shard;
  std::filesystem::path base_root;    ///< DIR as given
  std::string base_config_model_type; ///< DIR's config.json "model_type"

  /// Opens `base` (any form open() takes) and attaches it as above; its warnings join these.
  /// Refuses (Errc::invalid_argument) a base that is this checkpoint itself, and a second base.
  Status attach_base(const std::filesystem::path& base, uint64_t memory_limit = 0);
  /// The number of this checkpoint's own shards (those before the base's).
  uint32_t own_shard_count() const {
    return base_first_shard.value_or(static_cast<uint32_t>(shards.size()));
  }

  /// Lookup by name; nullopt when absent.
  std::optional<TensorRef> find(std::string_view name) const;
  const TensorInfo& info(TensorRef ref) const {
    return shards[ref.shard].header.tensors[ref.tensor];
  }
  const Shard& shard(TensorRef ref) const { return shards[ref.shard]; }
  /// File offset of the tensor's first byte in its shard.
  uint64_t file_offset(TensorRef ref) const {
    return shards[ref.shard].header.data_start + info(ref).begin;
  }
  /// The tensor's bytes in its shard's mapping (read them under guard_mapped_access()).
  std::span<const std::byte> bytes(TensorRef ref) const;
  uint64_t total_tensor_bytes() const;
  /// Whether every shard is as it was when opened (MappedFile::unchanged): the first that was
  /// written to since, as Errc::file_changed naming it.
  Status unchanged() const;
};

} // namespace shardshift
