// safetensors_shards_test.cpp: Hugging Face's shard names and greedy cut (cut_shards), including
// the edges: exact fits, tensors over the limit, empty tensors and input, sizes near 2^64.
#include "shardshift/safetensors.h"

#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using Files = std::vector<std::vector<uint32_t>>;

TEST(ShardFileName, OneFileHasNoCounter) {
  EXPECT_EQ(shard_file_name(0, 1), "model.safetensors");
}

TEST(ShardFileName, CountsFromOneWithFiveDigits) {
  EXPECT_EQ(shard_file_name(0, 2), "model-00001-of-00002.safetensors");
  EXPECT_EQ(shard_file_name(1, 2), "model-00002-of-00002.safetensors");
  EXPECT_EQ(shard_file_name(41, 123), "model-00042-of-00123.safetensors");
  // Past five digits the counter widens rather than wraps, as Python's "%05d" does.
  EXPECT_EQ(shard_file_name(99999, 100000), "model-100000-of-100000.safetensors");
}

TEST(CutShards, EmptyInputIsOneEmptyFile) {
  EXPECT_EQ(cut_shards({}, 100), (Files{{}}));
}

TEST(CutShards, ExactFitStaysAndOneMoreByteStartsAFile) {
  const std::vector<uint64_t> fits = {40, 60, 100};
  EXPECT_EQ(cut_shards(fits, 100), (Files{{0, 1}, {2}}));
  const std::vector<uint64_t> over = {40, 61, 99};
  EXPECT_EQ(cut_shards(over, 100), (Files{{0}, {1}, {2}}));
}

TEST(CutShards, EverythingFitsInOneFile) {
  const std::vector<uint64_t> sizes = {1, 2, 3, 4};
  EXPECT_EQ(cut_shards(sizes, 10), (Files{{0, 1, 2, 3}}));
}

TEST(CutShards, TensorOverTheLimitGetsAFileOfItsOwn) {
  const std::vector<uint64_t> sizes = {10, 500, 10, 10};
  EXPECT_EQ(cut_shards(sizes, 100), (Files{{0}, {1}, {2, 3}}));
  // First in line: it opens the first file, and the next tensor still moves on.
  const std::vector<uint64_t> first = {500, 1};
  EXPECT_EQ(cut_shards(first, 100), (Files{{0}, {1}}));
}

TEST(CutShards, EmptyTensorsFollowTheSameRule) {
  // A file holding only empty tensors takes the next tensor whatever its size; after an oversized
  // tensor even an empty one starts a new file, since current + 0 is already over the limit.
  const std::vector<uint64_t> sizes = {0, 0, 500, 0, 7};
  EXPECT_EQ(cut_shards(sizes, 100), (Files{{0, 1, 2}, {3, 4}}));
}

TEST(CutShards, NoWrapAroundNearTheTopOfTheRange) {
  const uint64_t max = UINT64_MAX;
  // current + size wraps past 2^64; a naive sum would see a small number and keep one file.
  const std::vector<uint64_t> sizes = {max - 1, 5, max};
  EXPECT_EQ(cut_shards(sizes, max - 2), (Files{{0}, {1}, {2}}));
  const std::vector<uint64_t> fits = {max - 5, 5};
  EXPECT_EQ(cut_shards(fits, max), (Files{{0, 1}}));
  const std::vector<uint64_t> one_over = {max - 5, 6};
  EXPECT_EQ(cut_shards(one_over, max), (Files{{0}, {1}}));
}

} // namespace
} // namespace shardshift
