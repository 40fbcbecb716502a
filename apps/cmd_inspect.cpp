// cmd_inspect.cpp: `shardshift inspect PATH`: validates a checkpoint (every rule of
// docs/format.md) and lists its tensors, as aligned text or as one JSON object.
#include "shardshift/checkpoint.h"
#include "shardshift/json_text.h"
#include "shardshift/units.h"

#include "commands.h"

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

namespace shardshift::app {

namespace po = boost::program_options;

namespace {

const char* const INSPECT_HELP = R"(Usage: shardshift inspect PATH [options]

Validates a safetensors checkpoint and lists its tensors. PATH is one .safetensors file, a
directory with model.safetensors.index.json (the index is cross-checked against every shard), or
a directory of *.safetensors shards without an index. Every header is checked against every rule
of docs/format.md (lengths, UTF-8, duplicate keys, dtypes, shapes, offsets, gaps, overlaps, file
size), and all problems of all files are reported, one per line, before exiting.

Output: one line per tensor, sorted by name: name, dtype, shape, bytes, shard file; then the
totals, each shard's __metadata__, the index metadata and the other files of the directory.

Options:
  --json       print one JSON object instead of text:
               {"path", "valid", "shards": [{"file", "tensors", "bytes", "metadata"}],
                "tensors": [{"name", "dtype", "shape", "bytes", "shard", "offset"}],
                "total_bytes", "tensor_count", "index_metadata", "other_files"}
               where "offset" is the tensor's first byte in its shard file. An invalid
               checkpoint prints {"path", "valid": false, "errors": [...]} (and the errors on
               stderr).
  -h, --help   show this help

Exit status: 0 valid, 1 invalid or unreadable (problems on stderr), 2 bad usage.

Examples:
  shardshift inspect demo-hf
  shardshift inspect demo-hf/model-00001-of-00002.safetensors
  shardshift inspect --json demo-native > tensors.json
)";

std::string json_metadata(const Metadata& metadata) {
  std::string s = "{";
  for (size_t i = 0; i < metadata.size(); ++i) {
    if (i)
      s += ", ";
    s += json_string(metadata[i].first) + ": " + json_string(metadata[i].second);
  }
  return s + "}";
}

std::string shape_text(const std::vector<uint64_t>& shape, const char* separator) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i)
      s += separator;
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos)
      nl = text.size();
    lines.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return lines;
}

std::string metadata_text(const Metadata& metadata) {
  std::string s;
  for (const auto& [key, value] : metadata)
    s += (s.empty() ? "" : ", ") + key + "=" + value;
  return s;
}

void print_text(const Checkpoint& ckpt) {
  // ckpt.tensors is a std::map, so iteration is already sorted by name.
  size_t name_width = 4, dtype_width = 5, shape_width = 5, bytes_width = 5;
  for (const auto& [name, ref] : ckpt.tensors) {
    const TensorInfo& t = ckpt.info(ref);
    name_width = std::max(name_width, name.size());
    dtype_width = std::max(dtype_width, dtype_name(t.dtype).size());
    shape_width = std::max(shape_width, shape_text(t.shape, ", ").size());
    bytes_width = std::max(bytes_width, std::to_string(t.size()).size());
  }
  auto pad = [](std::string s, size_t width) {
    s.resize(std::max(s.size(), width), ' ');
    return s;
  };
  auto pad_left = [](const std::string& s, size_t width) {
    return std::string(width > s.size() ? width - s.size() : 0, ' ') + s;
  };
  std::string out;
  for (const auto& [name, ref] : ckpt.tensors) {
    const TensorInfo& t = ckpt.info(ref);
    out += pad(name, name_width) + "  " + pad(std::string(dtype_name(t.dtype)), dtype_width) +
           "  " + pad(shape_text(t.shape, ", "), shape_width) + "  " +
           pad_left(std::to_string(t.size()), bytes_width) + "  " + ckpt.shard(ref).file_name +
           "\n";
  }
  uint64_t total = ckpt.total_tensor_bytes();
  out += std::to_string(ckpt.tensors.size()) + " tensors, " + std::to_string(total) + " bytes (" +
         format_bytes(total) + "), " + std::to_string(ckpt.shards.size()) +
         (ckpt.shards.size() == 1 ? " shard" : " shards") + (ckpt.has_index ? " (indexed)" : "") +
         "\n";
  for (const auto& shard : ckpt.shards)
    if (!shard.header.metadata.empty())
      out += "metadata of " + shard.file_name + ": " + metadata_text(shard.header.metadata) + "\n";
  if (!ckpt.index_metadata.empty())
    out += "index metadata: " + metadata_text(ckpt.index_metadata) + "\n";
  if (!ckpt.other_files.empty()) {
    out += "other files:";
    for (const auto& f : ckpt.other_files)
      out += " " + f;
    out += "\n";
  }
  std::cout << out;
}

void print_json(const std::string& path, const Checkpoint& ckpt) {
  std::string out = "{\"path\": " + json_string(path) + ", \"valid\": true, \"shards\": [";
  for (size_t i = 0; i < ckpt.shards.size(); ++i) {
    const Shard& s = ckpt.shards[i];
    if (i)
      out += ", ";
    out += "{\"file\": " + json_string(s.file_name) +
           ", \"tensors\": " + std::to_string(s.header.tensors.size()) +
           ", \"bytes\": " + std::to_string(s.header.data_size()) +
           ", \"metadata\": " + json_metadata(s.header.metadata) + "}";
  }
  out += "], \"tensors\": [";
  bool first = true;
  for (const auto& [name, ref] : ckpt.tensors) {
    const TensorInfo& t = ckpt.info(ref);
    if (!first)
      out += ", ";
    first = false;
    out += "{\"name\": " + json_string(name) + ", \"dtype\": " + json_string(dtype_name(t.dtype)) +
           ", \"shape\": " + shape_text(t.shape, ", ") +
           ", \"bytes\": " + std::to_string(t.size()) +
           ", \"shard\": " + json_string(ckpt.shard(ref).file_name) +
           ", \"offset\": " + std::to_string(ckpt.file_offset(ref)) + "}";
  }
  out += "], \"total_bytes\": " + std::to_string(ckpt.total_tensor_bytes()) +
         ", \"tensor_count\": " + std::to_string(ckpt.tensors.size()) +
         ", \"index_metadata\": " + json_metadata(ckpt.index_metadata) + ", \"other_files\": [";
  for (size_t i = 0; i < ckpt.other_files.size(); ++i)
    out += (i ? ", " : "") + json_string(ckpt.other_files[i]);
  out += "]}\n";
  std::cout << out;
}

void print_json_errors(const std::string& path, const Status& status) {
  std::string out = "{\"path\": " + json_string(path) + ", \"valid\": false, \"errors\": [";
  auto lines = split_lines(status.message());
  for (size_t i = 0; i < lines.size(); ++i)
    out += (i ? ", " : "") + json_string(lines[i]);
  out += "]}\n";
  std::cout << out;
}

} // namespace

int cmd_inspect(int argc, char** argv) {
  std::string path;
  bool json = false;
  po::options_description flags("inspect options");
  flags.add_options()("path", po::value(&path), "")("json", po::bool_switch(&json), "")("help,h",
                                                                                        "");
  po::positional_options_description positional;
  positional.add("path", 1);
  po::variables_map vm;
  if (int rc; !parse_args("inspect", argc, argv, flags, positional, vm, &rc))
    return rc;
  if (vm.count("help")) {
    std::cout << INSPECT_HELP;
    return EXIT_OK;
  }
  if (path.empty())
    return usage_error("inspect", "missing the checkpoint PATH");

  auto ckpt = Checkpoint::open(path);
  if (!ckpt.ok()) {
    if (json)
      print_json_errors(path, ckpt.status());
    // One problem per line, each with the tool's prefix, so every line can be grepped alone.
    for (const auto& line : split_lines(ckpt.status().message()))
      std::cerr << "shardshift: " << line << "\n";
    return EXIT_FAIL;
  }
  if (json)
    print_json(path, *ckpt);
  else
    print_text(*ckpt);
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "shardshift: cannot write the listing to stdout\n";
    return EXIT_FAIL;
  }
  return EXIT_OK;
}

} // namespace shardshift::app
