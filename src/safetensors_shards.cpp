// safetensors_shards.cpp: how Hugging Face names and cuts the files of a sharded checkpoint.
//
// transformers' save_pretrained fills files greedily in tensor order; reproducing its cut and its
// names exactly lets a converted checkpoint be diffed file by file against one saved by Python.
#include "shardshift/safetensors.h"

#include <cstdio>

namespace shardshift {

std::string shard_file_name(size_t index, size_t count) {
  if (count == 1)
    return "model.safetensors";
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

std::vector<std::vector<uint32_t>> cut_shards(std::span<const uint64_t> sizes,
                                              uint64_t max_shard_size) {
  std::vector<std::vector<uint32_t>> files;
  uint64_t current = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    // "current + size > limit", written so it cannot wrap: current exceeds the limit only when
    // one oversized tensor fills the file, and then any further tensor must go elsewhere.
    const bool over = current > max_shard_size || sizes[i] > max_shard_size - current;
    if (files.empty() || (current > 0 && over)) {
      files.emplace_back();
      current = 0;
    }
    files.back().push_back(static_cast<uint32_t>(i));
    // Cannot wrap: either current is 0 here, or current + size <= limit was just checked.
    current += sizes[i];
  }
  if (files.empty())
    files.emplace_back(); // an empty checkpoint is still one valid file
  return files;
}

} // namespace shardshift
