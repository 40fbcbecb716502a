// stray_shards_test.cpp: a *.safetensors file in an indexed directory that the index does not list
// is reported as a warning naming it and is not copied into the output (issue 12, defect 10: it
// was accepted silently and copied as a side file); a previous output's marker is no side file.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"

#include "convert_harness.h"
#include "reference/checkpoint_files.h"
#include "test_support.h"

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

TEST_F(ConvertTest, StrayShardIsWarnedAboutAndNotCopied) {
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 2, 2, 4, 2), 2,
                              "diffusion_gemma");
  ASSERT_TRUE(fs::exists(tmp / "hf" / INDEX_FILE_NAME));
  fs::copy_file(tmp / "hf" / "part-0.safetensors", tmp / "hf" / "old-model.safetensors");

  auto ckpt = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
  const std::string warning = (tmp / "hf" / "old-model.safetensors").string() +
                              ": not listed in model.safetensors.index.json; ignored (not "
                              "converted, not copied into the output)";
  EXPECT_EQ(ckpt->warnings, std::vector<std::string>{warning});
  EXPECT_FALSE(contains(ckpt->other_files, "old-model.safetensors"));
  EXPECT_TRUE(contains(ckpt->other_files, "config.json"));
  EXPECT_EQ(ckpt->shards.size(), 2u);
  EXPECT_EQ(ckpt->warnings, std::vector<std::string>{warning});

  auto r = testing::run(tmp / "hf", tmp / "n");
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(fs::exists(tmp / "n" / "old-model.safetensors"));
  EXPECT_TRUE(fs::exists(tmp / "n" / "config.json"));
}

TEST_F(ConvertTest, NoWarningsForAnOrdinaryCheckpoint) {
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 2, 2, 4, 2), 2,
                              "diffusion_gemma");
  auto indexed = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(indexed.ok());
  EXPECT_TRUE(indexed->warnings.empty());
  // Without an index every *.safetensors file is a shard: nothing is stray.
  fs::remove(tmp / "hf" / INDEX_FILE_NAME);
  auto plain = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(plain.ok()) << plain.status().message();
  EXPECT_TRUE(plain->warnings.empty());
}

TEST_F(ConvertTest, OutputMarkerIsNoSideFile) {
  // Converting an output again (a round trip) does not carry its marker along as a side file.
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 1, 2, 4, 2), 1,
                              "diffusion_gemma");
  ASSERT_TRUE(testing::run(tmp / "hf", tmp / "n").ok());
  ASSERT_TRUE(fs::exists(tmp / "n" / OUTPUT_MARKER_NAME));
  auto ckpt = Checkpoint::open(tmp / "n");
  ASSERT_TRUE(ckpt.ok());
  EXPECT_FALSE(contains(ckpt->other_files, OUTPUT_MARKER_NAME));
  auto back = make_plan(*ckpt, {});
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_FALSE(contains(back->side_files, OUTPUT_MARKER_NAME));
}

TEST_F(ConvertTest, ChecksumFileIsNoSideFile) {
  // A previous output's SHA256SUMS lists the digests of shards that converting it rewrites: it is
  // not copied, so the round trip's own SHA256SUMS (with --checksums) or none stands in OUT.
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 1, 2, 4, 2), 1,
                              "diffusion_gemma");
  ASSERT_TRUE(testing::run(tmp / "hf", tmp / "n", testing::opts([](ConvertOptions& o) {
                             o.checksums = true;
                           })).ok());
  ASSERT_TRUE(fs::exists(tmp / "n" / CHECKSUMS_FILE_NAME));
  auto ckpt = Checkpoint::open(tmp / "n");
  ASSERT_TRUE(ckpt.ok());
  EXPECT_FALSE(contains(ckpt->other_files, CHECKSUMS_FILE_NAME));
  ASSERT_TRUE(testing::run(tmp / "n", tmp / "back").ok());
  EXPECT_FALSE(fs::exists(tmp / "back" / CHECKSUMS_FILE_NAME));
}

} // namespace
} // namespace shardshift
