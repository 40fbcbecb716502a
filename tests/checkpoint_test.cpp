// checkpoint_test.cpp: opening single files, indexed directories and plain shard directories,
// and every cross-check between model.safetensors.index.json and the shard headers.
#include "shardshift/checkpoint.h"

#include "test_support.h"

#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::raw_safetensors;
using testing::TempDir;
using testing::write_bytes;

using Tensors = std::vector<std::pair<std::string, std::string>>; // name -> bytes (U8, 1-D)

// A valid safetensors file holding U8 tensors in the given order.
std::string safetensors_file(const Tensors& tensors) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  std::string data;
  for (const auto& [name, bytes] : tensors) {
    header += ",\"" + name + "\":{\"dtype\":\"U8\",\"shape\":[" + std::to_string(bytes.size()) +
              "],\"data_offsets\":[" + std::to_string(data.size()) + "," +
              std::to_string(data.size() + bytes.size()) + "]}";
    data += bytes;
  }
  return raw_safetensors(header + "}", data);
}

std::string index_json(const std::vector<std::pair<std::string, std::string>>& weight_map,
                       const std::string& metadata = R"({"total_size": 6})") {
  std::string s = "{\"metadata\": " + metadata + ", \"weight_map\": {";
  for (size_t i = 0; i < weight_map.size(); ++i)
    s += (i ? ", \"" : "\"") + weight_map[i].first + "\": \"" + weight_map[i].second + "\"";
  return s + "}}";
}

const std::string A = "model-00001-of-00002.safetensors";
const std::string B = "model-00002-of-00002.safetensors";

// A valid two-shard checkpoint: a, b in shard A; c in shard B.
void write_sharded(const TempDir& dir) {
  write_bytes(dir / A, safetensors_file({{"a", "11"}, {"b", "222"}}));
  write_bytes(dir / B, safetensors_file({{"c", "3"}}));
}

std::string bytes_text(std::span<const std::byte> s) {
  return std::string(reinterpret_cast<const char*>(s.data()), s.size());
}

void expect_fails(const std::filesystem::path& path, const std::vector<std::string>& needles,
                  size_t lines = 0) {
  auto ckpt = Checkpoint::open(path);
  ASSERT_FALSE(ckpt.ok()) << "opened a broken checkpoint";
  const std::string msg = ckpt.status().message();
  EXPECT_EQ(ckpt.status().code(), Errc::format) << msg;
  for (const auto& n : needles)
    EXPECT_NE(msg.find(n), std::string::npos) << msg << "\n lacks " << n;
  if (lines)
    EXPECT_EQ(size_t(std::count(msg.begin(), msg.end(), '\n') + 1), lines) << msg;
}

TEST(Checkpoint, SingleFile) {
  TempDir dir;
  write_bytes(dir / "model.safetensors", safetensors_file({{"w", "xyz"}, {"v", "q"}}));
  write_bytes(dir / "config.json", "{}");
  auto ckpt = Checkpoint::open(dir / "model.safetensors");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
  EXPECT_TRUE(ckpt->single_file);
  EXPECT_FALSE(ckpt->has_index);
  EXPECT_EQ(ckpt->root, dir.path());
  ASSERT_EQ(ckpt->shards.size(), 1u);
  EXPECT_EQ(ckpt->shards[0].file_name, "model.safetensors");
  EXPECT_EQ(ckpt->tensors.size(), 2u);
  auto w = ckpt->find("w");
  ASSERT_TRUE(w);
  EXPECT_EQ(bytes_text(ckpt->bytes(*w)), "xyz");
  EXPECT_EQ(ckpt->file_offset(*w), ckpt->shards[0].header.data_start);
  EXPECT_EQ(bytes_text(ckpt->bytes(*ckpt->find("v"))), "q");
  EXPECT_FALSE(ckpt->find("nope"));
  EXPECT_EQ(ckpt->total_tensor_bytes(), 4u);
  EXPECT_EQ(ckpt->shards[0].header.metadata, (Metadata{{"format", "pt"}}));
}

TEST(Checkpoint, ShardedWithIndex) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / INDEX_FILE_NAME, index_json({{"c", B}, {"a", A}, {"b", A}},
                                                R"({"total_size": 6, "note": "hi", "x": [1]})"));
  write_bytes(dir / "config.json", "{}");
  write_bytes(dir / "tokenizer.json", "{}");
  std::filesystem::create_directory(dir / "subdir");
  write_bytes(dir / "subdir" / "nested.txt", "not listed");

  auto ckpt = Checkpoint::open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
  EXPECT_FALSE(ckpt->single_file);
  EXPECT_TRUE(ckpt->has_index);
  ASSERT_EQ(ckpt->shards.size(), 2u);
  EXPECT_EQ(ckpt->shards[0].file_name, A);
  EXPECT_EQ(ckpt->shards[1].file_name, B);
  EXPECT_EQ(ckpt->tensors.size(), 3u);
  EXPECT_EQ(ckpt->find("c")->shard, 1u);
  EXPECT_EQ(bytes_text(ckpt->bytes(*ckpt->find("b"))), "222");
  EXPECT_EQ(ckpt->info(*ckpt->find("b")).shape, (std::vector<uint64_t>{3}));
  EXPECT_EQ(ckpt->total_tensor_bytes(), 6u);
  EXPECT_EQ(ckpt->index_metadata, (Metadata{{"note", "hi"}, {"total_size", "6"}, {"x", "[1]"}}));
  // A subdirectory's files are side files too, by relative path (issue 11, item 6).
  EXPECT_EQ(ckpt->other_files,
            (std::vector<std::string>{"config.json", "subdir/nested.txt", "tokenizer.json"}));
}

TEST(Checkpoint, DirectoryWithoutIndex) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / "README.md", "hi");
  auto ckpt = Checkpoint::open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
  EXPECT_FALSE(ckpt->has_index);
  ASSERT_EQ(ckpt->shards.size(), 2u);
  EXPECT_EQ(ckpt->shards[0].file_name, A);
  EXPECT_EQ(ckpt->tensors.size(), 3u);
  EXPECT_EQ(ckpt->other_files, (std::vector<std::string>{"README.md"}));
}

TEST(Checkpoint, DirectoryWithoutShards) {
  TempDir dir;
  write_bytes(dir / "config.json", "{}");
  auto ckpt = Checkpoint::open(dir.path());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.status().message().find("no *.safetensors files"), std::string::npos);
  auto missing = Checkpoint::open(dir / "nothing-here");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Errc::io);
}

TEST(Checkpoint, TensorInTwoShardsWithoutIndex) {
  TempDir dir;
  write_bytes(dir / A, safetensors_file({{"a", "1"}, {"dup", "2"}}));
  write_bytes(dir / B, safetensors_file({{"dup", "3"}}));
  expect_fails(dir.path(), {(dir / B).string() + ": tensor 'dup': also in shard '" + A + "'"}, 1);
}

TEST(Checkpoint, BadHeadersInEveryShardAreAllReported) {
  TempDir dir;
  write_bytes(dir / A,
              raw_safetensors(R"({"a":{"dtype":"X","shape":[1],"data_offsets":[0,1]}})", "1"));
  write_bytes(dir / B, "short");
  expect_fails(dir.path(),
               {(dir / A).string() + ": tensor 'a': unknown dtype 'X'",
                (dir / B).string() + ": file is 5 bytes"},
               2);
}

TEST(CheckpointIndex, MissingWeightMap) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / INDEX_FILE_NAME, R"({"metadata": {"total_size": 6}})");
  expect_fails(dir.path(), {INDEX_FILE_NAME + std::string(": index has no 'weight_map' object")});
}

TEST(CheckpointIndex, MalformedIndex) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / INDEX_FILE_NAME, R"([1, 2])");
  expect_fails(dir.path(), {"index must be one JSON object, found array"});
  write_bytes(dir / INDEX_FILE_NAME, R"({"weight_map": {"a": "x", "a": "y"}})");
  expect_fails(dir.path(), {"weight_map: duplicate key 'a'"});
  write_bytes(dir / INDEX_FILE_NAME, R"({"weight_map": {"a": 3}})");
  expect_fails(dir.path(), {"weight_map: tensor 'a': the shard file name must be a string"});
  write_bytes(dir / INDEX_FILE_NAME, R"({"weight_map": {}} {})");
  expect_fails(dir.path(), {"content after its JSON object"});
  write_bytes(dir / INDEX_FILE_NAME, R"({"weight_map": {}, "metadata": {"m": {"k": 1, "k": 2}}})");
  expect_fails(dir.path(), {"metadata: 'm': duplicate key 'k'"});
}

// As for a header (HeaderRejects.AnythingButWhitespaceAfterTheObjectIsContentAfterIt): simdjson
// refuses a complete index object followed by other text as if the object were unfinished.
TEST(CheckpointIndex, AnythingButWhitespaceAfterTheObjectIsContentAfterIt) {
  TempDir dir;
  write_sharded(dir);
  const std::string index = index_json({{"a", A}, {"b", A}, {"c", B}});
  for (const std::string tail : {"x", "//x", "\f", "]", "\"", "\n{\"a\":"}) {
    write_bytes(dir / INDEX_FILE_NAME, index + tail);
    expect_fails(dir.path(),
                 {INDEX_FILE_NAME + std::string(": index has content after its JSON object "
                                                "(exactly one object is allowed)")},
                 1);
  }
  write_bytes(dir / INDEX_FILE_NAME, index + std::string(1, '\0'));
  expect_fails(dir.path(), {"index has content after its JSON object"}, 1);
  write_bytes(dir / INDEX_FILE_NAME, index + " \n");
  EXPECT_TRUE(Checkpoint::open(dir.path()).ok()) << "whitespace after the object is allowed";
  write_bytes(dir / INDEX_FILE_NAME, index.substr(0, index.size() - 1) + "x");
  expect_fails(dir.path(), {"index is not valid JSON: "}, 1);
}

TEST(CheckpointIndex, ListedShardMissing) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / INDEX_FILE_NAME,
              index_json({{"a", A}, {"b", A}, {"c", B}, {"d", "model-gone.safetensors"}}));
  expect_fails(dir.path(),
               {"shard 'model-gone.safetensors' is listed for 1 tensor(s) but is missing"}, 1);
}

TEST(CheckpointIndex, NameAbsentFromItsShard) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / INDEX_FILE_NAME, index_json({{"a", A}, {"b", A}, {"c", B}, {"ghost", B}}));
  expect_fails(dir.path(),
               {"tensor 'ghost': listed in shard '" + B + "', which lacks it (no shard has it)"},
               1);
}

TEST(CheckpointIndex, IndexPointsAtTheWrongShard) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / INDEX_FILE_NAME, index_json({{"a", A}, {"b", B}, {"c", B}}));
  expect_fails(
      dir.path(),
      {"tensor 'b': listed in shard '" + B + "', which lacks it (it is in shard '" + A + "')"}, 1);
}

// "./A" names shard A, as Hugging Face's loader reads it: not a second shard, nor a tensor in two.
TEST(CheckpointIndex, ADotSlashPathIsTheSameShard) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / INDEX_FILE_NAME, index_json({{"a", "./" + A}, {"b", A}, {"c", "./" + B}}));
  auto ckpt = Checkpoint::open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
  ASSERT_EQ(ckpt->shards.size(), 2u);
  EXPECT_EQ(ckpt->shards[0].file_name, A);
  EXPECT_EQ(ckpt->shards[1].file_name, B);
  EXPECT_EQ(ckpt->tensors.size(), 3u);
}

TEST(CheckpointIndex, ShardTensorAbsentFromIndex) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / INDEX_FILE_NAME, index_json({{"a", A}, {"c", B}}));
  expect_fails(dir.path(), {(dir / A).string() + ": tensor 'b': not listed in " + INDEX_FILE_NAME},
               1);
}

TEST(CheckpointIndex, TensorInTwoShards) {
  TempDir dir;
  write_bytes(dir / A, safetensors_file({{"a", "1"}, {"dup", "2"}}));
  write_bytes(dir / B, safetensors_file({{"dup", "3"}, {"e", "4"}}));
  write_bytes(dir / INDEX_FILE_NAME, index_json({{"a", A}, {"dup", A}, {"e", B}}));
  expect_fails(dir.path(), {(dir / B).string() + ": tensor 'dup': also in shard '" + A + "'"}, 1);
}

TEST(CheckpointIndex, ParentDirectoryPath) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / INDEX_FILE_NAME,
              index_json({{"a", A}, {"b", A}, {"c", B}, {"evil", "../outside.safetensors"}}));
  expect_fails(dir.path(),
               {"tensor 'evil': shard path '../outside.safetensors' must be relative to the "
                "checkpoint directory, without '..'"},
               1);
  write_bytes(dir / INDEX_FILE_NAME,
              index_json({{"a", A}, {"b", A}, {"c", B}, {"evil", "sub/../../x.safetensors"}}));
  expect_fails(dir.path(), {"shard path 'sub/../../x.safetensors'"}, 1);
}

TEST(CheckpointIndex, AbsolutePath) {
  TempDir dir;
  write_sharded(dir);
  std::string absolute = (dir / B).string();
  write_bytes(dir / INDEX_FILE_NAME, index_json({{"a", A}, {"b", A}, {"c", absolute}}));
  // The absolute path is refused even though it names an existing shard; B is then not a shard
  // of this checkpoint at all, so nothing else is reported.
  expect_fails(dir.path(), {"tensor 'c': shard path '" + absolute + "' must be relative"}, 1);
}

// A NUL byte ends the name the system opens early: "B\u0000x" would read B, which the index
// does not list, under the name of a file that cannot exist. Refused, and printed escaped.
TEST(CheckpointIndex, AShardPathHoldingANulByteIsRefused) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / INDEX_FILE_NAME, index_json({{"a", A}, {"b", A}, {"c", B + "\\u0000x"}}));
  expect_fails(
      dir.path(),
      {"tensor 'c': shard path '" + B + "\\x00x' holds a NUL byte, which no file name can"}, 1);
}

TEST(CheckpointIndex, EveryProblemReportedTogether) {
  TempDir dir;
  write_sharded(dir);
  write_bytes(dir / INDEX_FILE_NAME,
              index_json({{"a", A}, {"ghost", A}, {"c", B}, {"d", "gone.safetensors"}}));
  expect_fails(dir.path(),
               {"shard 'gone.safetensors' is listed", "tensor 'ghost': listed in shard",
                "tensor 'b': not listed in"},
               3);
}

TEST(CheckpointIndex, BrokenShardIsNotAlsoReportedAsMissingTensors) {
  TempDir dir;
  write_bytes(dir / A, "short");
  write_bytes(dir / B, safetensors_file({{"c", "3"}}));
  write_bytes(dir / INDEX_FILE_NAME, index_json({{"a", A}, {"b", A}, {"c", B}}));
  expect_fails(dir.path(), {(dir / A).string() + ": file is 5 bytes"}, 1);
}

} // namespace
} // namespace shardshift
