// cmd_inspect.cpp: `shardshift inspect PATH`: validates a checkpoint (every rule of
// docs/format.md) and lists its tensors, as aligned text or as one JSON object.
#include "shardshift/checkpoint.h"
#include "shardshift/dtype.h"
#include "shardshift/json_text.h"
#include "shardshift/problems.h"
#include "shardshift/units.h"

#include "cli.h"
#include "commands.h"

#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

namespace shardshift::app {

namespace po = boost::program_options;

namespace {

const HelpText INSPECT_HELP = {
    .usage = "shardshift inspect PATH [options]",
    .description =
        "Validates a safetensors checkpoint and lists its tensors. PATH is one .safetensors file, "
        "a directory with model.safetensors.index.json (the index is cross-checked against every "
        "shard), or a directory of *.safetensors shards without an index. Every header is checked "
        "against every rule of docs/format.md (lengths, UTF-8, duplicate keys, dtypes, shapes, "
        "offsets, gaps, overlaps, file size), and all problems of all files are reported, one per "
        "line, before exiting.\n\n"
        "Output: one line per tensor, sorted by name: name, dtype, shape, bytes, shard file; then "
        "the totals, each shard's __metadata__, the index metadata and the other files of the "
        "directory. Columns are aligned to their widest cell up to 128 bytes of name and 64 of "
        "shape; a longer cell widens only its own line.\n\n"
        "With --json, one object:\n\n"
        "  {\"path\", \"valid\": true,\n"
        "   \"shards\": [{\"file\", \"tensors\", \"bytes\", \"metadata\"}],\n"
        "   \"tensors\": [{\"name\", \"dtype\", \"shape\", \"bytes\", \"shard\", \"offset\"}],\n"
        "   \"total_bytes\", \"tensor_count\", \"index_metadata\", \"other_files\"}\n\n"
        "where \"offset\" is the tensor's first byte in its shard file. An invalid checkpoint "
        "prints {\"path\", \"valid\": false, \"errors\": [...]} (and the errors on stderr).",
    .examples = "shardshift inspect demo-hf\n"
                "shardshift inspect demo-hf/model-00001-of-00002.safetensors\n"
                "shardshift inspect --json demo-native > tensors.json\n"
                "shardshift inspect -q demo-hf && echo valid",
    .exit_status = "0 valid, 1 invalid or unreadable (problems on stderr), 2 bad usage.",
};

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
    s += (s.empty() ? "" : ", ") + printable(key) + "=" + printable(value);
  return s;
}

// Columns are padded to their widest cell, but never wider than these: a longer cell is printed
// whole and pushes only its own row. Uncapped, one long name (a header may hold a name of 100 MB)
// padded every other row to its width, and the listing grew as the number of tensors times the
// longest cell. The caps sit above what real checkpoints hold (names under 100 bytes, shapes of a
// few dimensions), so their listings stay aligned.
constexpr size_t NAME_COLUMN_CAP = 128, SHAPE_COLUMN_CAP = 64;

// One line per tensor, whatever its name holds: a line feed or NUL in a name (the format allows
// them) is printed escaped, as in the problems' messages. Each line goes to `out` as it is made,
// so memory stays one line, however long the listing.
void print_listing(std::ostream& out, const Checkpoint& ckpt) {
  // ckpt.tensors is a std::map, so iteration is already sorted by name.
  size_t name_width = 4, dtype_width = 5, shape_width = 5, bytes_width = 5;
  for (const auto& [name, ref] : ckpt.tensors) {
    const TensorInfo& t = ckpt.info(ref);
    name_width = std::max(name_width, std::min(printable(name).size(), NAME_COLUMN_CAP));
    dtype_width = std::max(dtype_width, dtype_name(t.dtype).size());
    shape_width = std::max(shape_width, std::min(shape_text(t.shape).size(), SHAPE_COLUMN_CAP));
    bytes_width = std::max(bytes_width, std::to_string(t.size()).size());
  }
  auto pad = [](std::string s, size_t width) {
    s.resize(std::max(s.size(), width), ' ');
    return s;
  };
  auto pad_left = [](const std::string& s, size_t width) {
    return std::string(width > s.size() ? width - s.size() : 0, ' ') + s;
  };
  for (const auto& [name, ref] : ckpt.tensors) {
    const TensorInfo& t = ckpt.info(ref);
    out << pad(printable(name), name_width) + "  " +
               pad(std::string(dtype_name(t.dtype)), dtype_width) + "  " +
               pad(shape_text(t.shape), shape_width) + "  " +
               pad_left(std::to_string(t.size()), bytes_width) + "  " +
               printable(ckpt.shard(ref).file_name) + "\n";
  }
  uint64_t total = ckpt.total_tensor_bytes();
  out << std::to_string(ckpt.tensors.size()) + " tensors, " + std::to_string(total) + " bytes (" +
             format_bytes(total) + "), " + std::to_string(ckpt.shards.size()) +
             (ckpt.shards.size() == 1 ? " shard" : " shards") +
             (ckpt.has_index ? " (indexed)" : "") + "\n";
  for (const auto& shard : ckpt.shards)
    if (!shard.header.metadata.empty())
      out << "metadata of " + printable(shard.file_name) + ": " +
                 metadata_text(shard.header.metadata) + "\n";
  if (!ckpt.index_metadata.empty())
    out << "index metadata: " + metadata_text(ckpt.index_metadata) + "\n";
  if (!ckpt.other_files.empty()) {
    out << "other files:";
    for (const auto& f : ckpt.other_files)
      out << " " + printable(f);
    out << "\n";
  }
}

void write_metadata(JsonWriter& w, const Metadata& metadata) {
  w.begin_object();
  for (const auto& [key, value] : metadata)
    w.key(key).value(value);
  w.end_object();
}

std::string listing_json(const std::string& path, const Checkpoint& ckpt) {
  JsonWriter w;
  w.begin_object().key("path").value(path).key("valid").value(true);
  w.key("shards").begin_array();
  for (const Shard& s : ckpt.shards) {
    w.begin_object().key("file").value(s.file_name);
    w.key("tensors").value(s.header.tensors.size()).key("bytes").value(s.header.data_size());
    w.key("metadata");
    write_metadata(w, s.header.metadata);
    w.end_object();
  }
  w.end_array().key("tensors").begin_array();
  for (const auto& [name, ref] : ckpt.tensors) {
    const TensorInfo& t = ckpt.info(ref);
    w.begin_object().key("name").value(name).key("dtype").value(dtype_name(t.dtype));
    w.key("shape").begin_array();
    for (uint64_t d : t.shape)
      w.value(d);
    w.end_array().key("bytes").value(t.size()).key("shard").value(ckpt.shard(ref).file_name);
    w.key("offset").value(ckpt.file_offset(ref)).end_object();
  }
  w.end_array().key("total_bytes").value(ckpt.total_tensor_bytes());
  w.key("tensor_count").value(ckpt.tensors.size()).key("index_metadata");
  write_metadata(w, ckpt.index_metadata);
  w.key("other_files").begin_array();
  for (const std::string& f : ckpt.other_files)
    w.value(f);
  w.end_array().end_object();
  return w.take() + "\n";
}

std::string errors_json(const std::string& path, const Status& status) {
  JsonWriter w;
  w.begin_object().key("path").value(path).key("valid").value(false).key("errors").begin_array();
  for (const std::string& line : split_lines(status.message()))
    w.value(line);
  w.end_array().end_object();
  return w.take() + "\n";
}

} // namespace

int cmd_inspect(int argc, char** argv) {
  FlagGroup flags("Options");
  add_common_flags(flags,
                   "Print nothing on stdout (unless --json): only check PATH, and let the exit "
                   "status say whether it is valid. Problems still go to stderr.",
                   "the tensors and shards as described above.");
  po::options_description all;
  all.add(flags.flags).add_options()("path", po::value<std::string>());
  po::positional_options_description positional;
  positional.add("path", 1);
  po::variables_map vm;
  if (int rc; !parse_args("inspect", argc, argv, all, positional, vm, &rc))
    return rc;
  if (vm.count("help")) {
    print_help(std::cout, INSPECT_HELP, {&flags});
    return EXIT_OK;
  }
  if (!vm.count("path") || vm["path"].as<std::string>().empty())
    return usage_error("inspect", "missing the checkpoint PATH");
  const std::string path = vm["path"].as<std::string>();
  const bool json = vm.count("json") > 0, quiet = vm.count("quiet") > 0;

  auto ckpt = Checkpoint::open(path);
  if (!ckpt.ok()) {
    if (json)
      std::cout << errors_json(path, ckpt.status());
    report_error(ckpt.status());
    return EXIT_FAIL;
  }
  print_warnings(ckpt->warnings, quiet);
  if (json)
    std::cout << listing_json(path, *ckpt);
  else if (!quiet)
    print_listing(std::cout, *ckpt);
  return stdout_ok("inspect") ? EXIT_OK : EXIT_FAIL;
}

} // namespace shardshift::app
