// inspect_e2e_test.cpp: `shardshift inspect` end to end: listing, --json, invalid files, usage.
#include "test_support.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <simdjson.h>

namespace shardshift {
namespace {

using testing::lines_of;
using testing::raw_safetensors;
using testing::run_shardshift;
using testing::shell_quoted;
using testing::TempDir;
using testing::write_bytes;

// Two tensors: "b.weight" BF16 [2, 3] (12 bytes) first in data order, then "a.bias" F32 [2].
std::string two_tensor_file() {
  return raw_safetensors(R"({"__metadata__":{"format":"pt"},)"
                         R"("b.weight":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},)"
                         R"("a.bias":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                         std::string(20, '\x01'));
}

TEST(InspectE2E, ListsTensorsSortedByName) {
  TempDir dir;
  write_bytes(dir / "model.safetensors", two_tensor_file());
  auto r = run_shardshift("inspect " + shell_quoted(dir / "model.safetensors"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  auto lines = lines_of(r.out);
  ASSERT_GE(lines.size(), 4u) << r.out;
  // Sorted by name: a.bias before b.weight, whatever the data order.
  EXPECT_EQ(lines[0].rfind("a.bias", 0), 0u) << r.out;
  for (const char* piece : {"F32", "[2]", " 8 ", "model.safetensors"})
    EXPECT_NE(lines[0].find(piece), std::string::npos) << lines[0] << " lacks " << piece;
  EXPECT_EQ(lines[1].rfind("b.weight", 0), 0u);
  for (const char* piece : {"BF16", "[2, 3]", " 12 ", "model.safetensors"})
    EXPECT_NE(lines[1].find(piece), std::string::npos) << lines[1] << " lacks " << piece;
  EXPECT_NE(r.out.find("2 tensors, 20 bytes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 shard"), std::string::npos);
  EXPECT_NE(r.out.find("format=pt"), std::string::npos);
}

// The format allows any text in a name, a line feed or NUL too: the listing stays one line per
// tensor, the name escaped.
TEST(InspectE2E, ANameWithALineBreakStaysOnItsLine) {
  TempDir dir;
  write_bytes(dir / "model.safetensors",
              raw_safetensors(R"({"__metadata__":{"note":"two\nlines"},)"
                              R"("a\nb":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                              R"("c\u0000d":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                              std::string(2, '\x01')));
  auto r = run_shardshift("inspect " + shell_quoted(dir / "model.safetensors"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 4u) << r.out; // two tensors, the count, the metadata
  EXPECT_EQ(lines[0].rfind("a\\x0ab  ", 0), 0u) << lines[0];
  EXPECT_EQ(lines[1].rfind("c\\x00d  ", 0), 0u) << lines[1];
  EXPECT_NE(lines[3].find("note=two\\x0alines"), std::string::npos) << lines[3];
}

// The listing's exact bytes: every column padded to its widest cell, the byte counts
// right-aligned. A name of 127 bytes and a shape of 60 characters are still below the caps on
// padding, so they widen every row as before.
TEST(InspectE2E, ListingColumnsAreAlignedToTheirWidestCell) {
  TempDir dir;
  write_bytes(dir / "model.safetensors", two_tensor_file());
  auto r = run_shardshift("inspect " + shell_quoted(dir / "model.safetensors"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "a.bias    F32    [2]         8  model.safetensors\n"
                   "b.weight  BF16   [2, 3]     12  model.safetensors\n"
                   "2 tensors, 20 bytes (20 B), 1 shard\n"
                   "metadata of model.safetensors: format=pt\n");

  const std::string name = "model." + std::string(114, 'x') + ".weight"; // 127 bytes
  std::string dims = "[1";
  for (int i = 0; i < 19; ++i)
    dims += i == 18 ? ",2]" : ",1";
  write_bytes(dir / "model.safetensors",
              raw_safetensors(R"({")" + name + R"(":{"dtype":"U8","shape":)" + dims +
                                  R"(,"data_offsets":[0,2]},)"
                                  R"("w":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
                              std::string(6, '\x01')));
  r = run_shardshift("inspect " + shell_quoted(dir / "model.safetensors"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string shape = "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]";
  ASSERT_EQ(shape.size(), 60u);
  EXPECT_EQ(r.out, name + "  U8     " + shape + "      2  model.safetensors\n" + "w" +
                       std::string(126, ' ') + "  F32    [1]" + std::string(57, ' ') +
                       "      4  model.safetensors\n" + "2 tensors, 6 bytes (6 B), 1 shard\n");
}

// A header may hold a name of any length, or a shape of any number of dimensions. Padded to such
// a cell, every row would be as long, and the listing (and the memory holding it) would grow as
// the number of tensors times the longest cell: one 1 MB name among 1000 tensors made 1 GB. A
// cell past the cap on padding is printed whole and pushes only its own row.
TEST(InspectE2E, OneLongNameOrShapePushesOnlyItsOwnRow) {
  const std::string long_name(100'000, 'n');
  std::string many_dims = "[1";
  for (int i = 1; i < 10'000; ++i)
    many_dims += ",1";
  many_dims += "]";
  constexpr int SHORT_TENSORS = 500;
  std::string header =
      R"({")" + long_name + R"(":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)" +
      R"("many_dims":{"dtype":"U8","shape":)" + many_dims + R"(,"data_offsets":[1,2]})";
  for (int i = 0; i < SHORT_TENSORS; ++i)
    header += R"(,"t)" + std::to_string(i) + R"(":{"dtype":"U8","shape":[1],"data_offsets":[)" +
              std::to_string(2 + i) + "," + std::to_string(3 + i) + "]}";
  header += "}";
  TempDir dir;
  write_bytes(dir / "model.safetensors",
              raw_safetensors(header, std::string(2 + SHORT_TENSORS, '\x01')));
  auto r = run_shardshift("inspect " + shell_quoted(dir / "model.safetensors"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Linear in the input: the header's own text once, and a bounded line per tensor.
  const size_t tensors = SHORT_TENSORS + 2;
  EXPECT_LE(r.out.size(), header.size() + 512 * tensors)
      << "the listing is " << r.out.size() << " bytes for a header of " << header.size();
  auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), tensors + 1);
  // Sorted by name: "many_dims", then the long name ("n..."), then t0, t1, ...
  EXPECT_EQ(lines[0].rfind("many_dims", 0), 0u) << lines[0].substr(0, 80);
  EXPECT_NE(lines[0].find(", 1]  "), std::string::npos) << "the whole shape is printed";
  EXPECT_GE(lines[0].size(), 3 * 10'000u - 2);
  EXPECT_EQ(lines[1].rfind(long_name + "  U8", 0), 0u) << "the whole name is printed";
  for (size_t i = 2; i < tensors; ++i) {
    EXPECT_LT(lines[i].size(), 512u) << lines[i].substr(0, 80);
    EXPECT_EQ(lines[i].size(), lines[2].size()) << "the short rows stay aligned: " << lines[i];
  }
  EXPECT_EQ(lines.back(), std::to_string(tensors) + " tensors, " +
                              std::to_string(2 + SHORT_TENSORS) + " bytes (" +
                              std::to_string(2 + SHORT_TENSORS) + " B), 1 shard");
}

TEST(InspectE2E, ShardedDirectoryShowsIndexMetadataAndOtherFiles) {
  TempDir dir;
  write_bytes(dir / "model-00001-of-00002.safetensors",
              raw_safetensors(R"({"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", "abc"));
  write_bytes(dir / "model-00002-of-00002.safetensors",
              raw_safetensors(R"({"y":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "d"));
  write_bytes(dir / "model.safetensors.index.json",
              R"({"metadata":{"total_size":4},"weight_map":{)"
              R"("x":"model-00001-of-00002.safetensors","y":"model-00002-of-00002.safetensors"}})");
  write_bytes(dir / "config.json", "{}");
  auto r = run_shardshift("inspect " + shell_quoted(dir.path()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("2 tensors, 4 bytes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2 shards (indexed)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("index metadata: total_size=4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("other files: config.json"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model-00002-of-00002.safetensors"), std::string::npos);
}

TEST(InspectE2E, JsonOutputParses) {
  TempDir dir;
  write_bytes(dir / "model.safetensors", two_tensor_file());
  write_bytes(dir / "config.json", "{}");
  auto r = run_shardshift("inspect --json " + shell_quoted(dir.path()));
  ASSERT_EQ(r.exit_code, 0) << r.err;

  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(r.out).get(doc), simdjson::SUCCESS) << r.out;
  EXPECT_EQ(bool(doc["valid"]), true);
  EXPECT_EQ(std::string_view(doc["path"]), dir.path().string());
  EXPECT_EQ(uint64_t(doc["tensor_count"]), 2u);
  EXPECT_EQ(uint64_t(doc["total_bytes"]), 20u);

  simdjson::dom::array shards = doc["shards"];
  ASSERT_EQ(shards.size(), 1u);
  EXPECT_EQ(std::string_view(shards.at(0)["file"]), "model.safetensors");
  EXPECT_EQ(uint64_t(shards.at(0)["tensors"]), 2u);
  EXPECT_EQ(uint64_t(shards.at(0)["bytes"]), 20u);
  EXPECT_EQ(std::string_view(shards.at(0)["metadata"]["format"]), "pt");

  simdjson::dom::array tensors = doc["tensors"];
  ASSERT_EQ(tensors.size(), 2u);
  simdjson::dom::element w = tensors.at(1);
  EXPECT_EQ(std::string_view(w["name"]), "b.weight");
  EXPECT_EQ(std::string_view(w["dtype"]), "BF16");
  simdjson::dom::array shape = w["shape"];
  ASSERT_EQ(shape.size(), 2u);
  EXPECT_EQ(uint64_t(shape.at(0)), 2u);
  EXPECT_EQ(uint64_t(shape.at(1)), 3u);
  EXPECT_EQ(uint64_t(w["bytes"]), 12u);
  EXPECT_EQ(std::string_view(w["shard"]), "model.safetensors");
  // The data section starts after the 8-byte prefix and the header.
  uint64_t header_length = two_tensor_file().size() - 8 - 20;
  EXPECT_EQ(uint64_t(w["offset"]), 8 + header_length);
  EXPECT_EQ(uint64_t(tensors.at(0)["offset"]), 8 + header_length + 12);

  simdjson::dom::array others = doc["other_files"];
  ASSERT_EQ(others.size(), 1u);
  EXPECT_EQ(std::string_view(others.at(0)), "config.json");
}

TEST(InspectE2E, MalformedFileFailsWithAllProblemsOnStderr) {
  TempDir dir;
  auto path = dir / "bad.safetensors";
  write_bytes(path, raw_safetensors(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,10]},)"
                                    R"("v":{"dtype":"F99","shape":[1],"data_offsets":[10,12]}})",
                                    std::string(12, '\0')));
  auto r = run_shardshift("inspect " + shell_quoted(path));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("shardshift: " + path.string() +
                       ": tensor 'w': shape [2,3] x BF16 is 12 bytes but data_offsets span 10"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("shardshift: " + path.string() + ": tensor 'v': unknown dtype 'F99'"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(lines_of(r.err).size(), 2u) << r.err;

  // --json still says why, as data, and fails the same way.
  auto j = run_shardshift("inspect --json " + shell_quoted(path));
  EXPECT_EQ(j.exit_code, 1);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(j.out).get(doc), simdjson::SUCCESS) << j.out;
  EXPECT_EQ(bool(doc["valid"]), false);
  EXPECT_EQ(simdjson::dom::array(doc["errors"]).size(), 2u);
}

TEST(InspectE2E, MissingPathFails) {
  TempDir dir;
  auto r = run_shardshift("inspect " + shell_quoted(dir / "nothing"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("no such file or directory"), std::string::npos) << r.err;
}

TEST(InspectE2E, UsageErrors) {
  auto bad_flag = run_shardshift("inspect --no-such-flag x");
  EXPECT_EQ(bad_flag.exit_code, 2);
  EXPECT_EQ(bad_flag.out, "");
  EXPECT_NE(bad_flag.err.find("--help"), std::string::npos) << bad_flag.err;

  auto no_path = run_shardshift("inspect");
  EXPECT_EQ(no_path.exit_code, 2);
  EXPECT_NE(no_path.err.find("PATH"), std::string::npos) << no_path.err;

  auto two_paths = run_shardshift("inspect a b");
  EXPECT_EQ(two_paths.exit_code, 2);
}

TEST(InspectE2E, HelpExplainsEveryFlag) {
  auto r = run_shardshift("inspect --help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* piece : {"--json", "--help", "Examples:", "Exit status"})
    EXPECT_NE(r.out.find(piece), std::string::npos) << piece;
}

} // namespace
} // namespace shardshift
