// semantics_support.h: what the semantics_*_test programs share: the SemanticsRules fixture and
// small helpers to write checkpoints whose data order differs from their header order and to read
// outputs back. Each rule of docs/semantics.md that these programs check names its test.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/io.h"
#include "shardshift/units.h"

#include "convert_harness.h"
#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "test_support.h"

#include <algorithm>
#include <map>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift::semantics_test {

class SemanticsRules : public shardshift::testing::ConvertTest {};

using Ordered = std::vector<std::pair<std::string, Tensor>>;

// `name` as the inside of a JSON string (the names these tests use need only these escapes).
inline std::string json_name(const std::string& name) {
  std::string out;
  for (char c : name)
    out += c == '\n'               ? std::string("\\n")
           : c == '"' || c == '\\' ? std::string("\\") + c
                                   : std::string(1, c);
  return out;
}

// One safetensors file whose data section holds `tensors` in the given order, while its header
// lists them sorted by name: the data order differs from the header's key order.
inline void write_ordered(const fs::path& path, const Ordered& tensors) {
  std::map<std::string, std::pair<uint64_t, const Tensor*>> by_name;
  uint64_t offset = 0;
  std::string data;
  for (const auto& [name, t] : tensors) {
    by_name[name] = {offset, &t};
    offset += t.bytes.size();
    data += t.bytes;
  }
  std::string json = "{\"__metadata__\":{\"format\":\"pt\"}";
  for (const auto& [name, at] : by_name) {
    const Tensor& t = *at.second;
    json += ",\"" + json_name(name) + "\":{\"dtype\":\"" + std::string(dtype_name(t.dtype)) +
            "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i)
      json += (i ? "," : "") + std::to_string(t.shape[i]);
    json += "],\"data_offsets\":[" + std::to_string(at.first) + "," +
            std::to_string(at.first + t.bytes.size()) + "]}";
  }
  json += "}";
  testing::write_bytes(path, testing::raw_safetensors(json, data));
}

// Tensor names of every file of the checkpoint at `dir`, file by file, each in data order.
inline std::vector<std::vector<std::string>> names_in_data_order(const fs::path& dir) {
  auto ck = Checkpoint::open(dir);
  EXPECT_TRUE(ck.ok()) << ck.status().message();
  std::vector<std::vector<std::string>> files;
  if (!ck.ok())
    return files;
  for (const Shard& s : ck->shards) {
    files.emplace_back();
    for (const TensorInfo& t : s.header.tensors)
      files.back().push_back(t.name);
  }
  return files;
}

// The files of an output directory, sorted, hidden ones left out: a hidden marker file that
// names the directory as shardshift's is not one of the files these rules are about.
inline std::vector<std::string> output_files(const fs::path& dir) {
  std::vector<std::string> names = testing::list_dir(dir);
  std::erase_if(names, [](const std::string& n) { return n.starts_with("."); });
  return names;
}

// A tensor of `n` bytes (U8), filled with `fill`.
inline Tensor bytes_tensor(uint64_t n, char fill = 'x') {
  return Tensor{DType::U8, {n}, std::string(n, fill)};
}

// A native diffusion_gemma checkpoint made from a tiny HF one.
inline Dict tiny_native(std::mt19937_64& rng, int layers, uint64_t e, uint64_t h, uint64_t i) {
  return ref_from_hf(tiny_diffusion(rng, layers, e, h, i), true, {});
}

} // namespace shardshift::semantics_test
