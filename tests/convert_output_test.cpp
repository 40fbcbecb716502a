// convert_output_test.cpp: what a conversion writes and how: byte-identical output across thread
// counts and memory budgets, --force, cancellation, fsync, shard sizes and the index.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/io.h"

#include "convert_harness.h"
#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "test_support.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

TEST_F(ConvertTest, OutputIsByteIdenticalAcrossThreadsAndMemoryBudgets) {
  // One expert's output is 256 x 320 x 2 = 160 KiB: the smallest budgets cut single experts into
  // row ranges, the middle ones group a few experts, 1 GiB takes whole tensors.
  Dict in = tiny_diffusion(rng, 2, 8, 256, 160);
  write_checkpoint(tmp / "hf", in, 3);
  const uint64_t expert_out = 256 * 320 * 2;
  std::string reference;
  std::set<uint64_t> chunk_sizes;
  int n = 0;
  for (unsigned threads : {1u, 2u, 4u})
    for (uint64_t mem : {uint64_t{1} << 20, uint64_t{3} << 20, uint64_t{1} << 30}) {
      fs::path out = tmp / ("o" + std::to_string(n++));
      auto r = run(tmp / "hf", out, opts([&](ConvertOptions& o) {
                     o.threads = threads;
                     o.max_memory = mem;
                     o.plan.max_shard_size = 2'000'000;
                   }));
      ASSERT_TRUE(r.ok()) << r.status().message();
      chunk_sizes.insert(r->chunk_bytes);
      std::string all;
      for (auto& name : testing::list_dir(out))
        all += name + ":" + testing::read_bytes(out / name);
      if (reference.empty())
        reference = all;
      else
        EXPECT_TRUE(all == reference) << "threads=" << threads << " max_memory=" << mem;
    }
  EXPECT_GE(chunk_sizes.size(), 4u);
  EXPECT_LT(*chunk_sizes.begin(), expert_out);      // some run split single experts
  EXPECT_GT(*chunk_sizes.rbegin(), 8 * expert_out); // some run took whole tensors
  expect_same(read_checkpoint(tmp / "o0"), ref_from_hf(in, true, {}));
}

TEST_F(ConvertTest, ExistingOutputNeedsForce) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  write_checkpoint(tmp / "hf", in);
  fs::create_directories(tmp / "n");
  testing::write_bytes(tmp / "n" / "old.txt", "old");
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::invalid_argument);
  EXPECT_TRUE(fs::exists(tmp / "n" / "old.txt"));
  // --force replaces only a previous shardshift output (it carries the marker): a directory made
  // by hand stays as it is.
  auto forced = run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.force = true; }));
  ASSERT_FALSE(forced.ok());
  EXPECT_EQ(forced.status().code(), Errc::invalid_argument);
  EXPECT_TRUE(fs::exists(tmp / "n" / "old.txt"));
  fs::remove_all(tmp / "n");
  ASSERT_TRUE(run(tmp / "hf", tmp / "n").ok());
  // Nor one that holds a file the output's marker does not list.
  testing::write_bytes(tmp / "n" / "old.txt", "old");
  forced = run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.force = true; }));
  ASSERT_FALSE(forced.ok());
  EXPECT_EQ(forced.status().code(), Errc::invalid_argument);
  EXPECT_TRUE(fs::exists(tmp / "n" / "old.txt"));
  fs::remove(tmp / "n" / "old.txt");
  ASSERT_TRUE(run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.force = true; })).ok());
  expect_same(read_checkpoint(tmp / "n"), ref_from_hf(in, true, {}));
}

TEST_F(ConvertTest, CancelledRunLeavesNothing) {
  Dict in = tiny_diffusion(rng, 2, 4, 8, 4);
  write_checkpoint(tmp / "hf", in);
  std::atomic<bool> cancel{true};
  auto r = run(tmp / "hf", tmp / "n", opts([&](ConvertOptions& o) { o.cancel = &cancel; }));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::interrupted);
  EXPECT_EQ(testing::list_dir(tmp.path()), std::vector<std::string>{"hf"});
}

// Counts fsync calls and passes everything to the kernel.
class CountingIo final : public ForwardingIo {
public:
  CountingIo() : ForwardingIo(Io::system()) {}
  int fsync(int fd) override {
    ++syncs;
    return ForwardingIo::fsync(fd);
  }
  int syncs = 0;
};

TEST_F(ConvertTest, NoSyncSkipsFsyncButStillCommitsByRename) {
  Dict in = tiny_diffusion(rng, 2, 2, 4, 2);
  write_checkpoint(tmp / "hf", in, 1, "diffusion_gemma");
  CountingIo synced, unsynced;
  ASSERT_TRUE(run(tmp / "hf", tmp / "a", opts([&](ConvertOptions& o) { o.io = &synced; })).ok());
  ASSERT_TRUE(run(tmp / "hf", tmp / "b", opts([&](ConvertOptions& o) {
                    o.io = &unsynced;
                    o.sync = false;
                  }))
                  .ok());
  EXPECT_GE(synced.syncs, 3); // the shard, config.json, the directories
  EXPECT_EQ(unsynced.syncs, 0);
  expect_same(read_checkpoint(tmp / "b"), read_checkpoint(tmp / "a"));
}

TEST_F(ConvertTest, ShardsFollowTheSizeLimitAndIndexIsConsistent) {
  Dict in = tiny_diffusion(rng, 4, 4, 16, 8);
  write_checkpoint(tmp / "hf", in, 1, "diffusion_gemma");
  auto r =
      run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.plan.max_shard_size = 3000; }));
  ASSERT_TRUE(r.ok()) << r.status().message();
  auto files = testing::list_dir(tmp / "n");
  ASSERT_GT(r->files, 2u);
  ASSERT_GT(files.size(), 2u);
  EXPECT_EQ(files[0], OUTPUT_MARKER_NAME); // "." sorts first
  EXPECT_EQ(files[1], "config.json");
  EXPECT_NE(std::find(files.begin(), files.end(), "model.safetensors.index.json"), files.end());
  char last[64];
  std::snprintf(last, sizeof last, "model-%05llu-of-%05llu.safetensors",
                (unsigned long long)r->files, (unsigned long long)r->files);
  EXPECT_NE(std::find(files.begin(), files.end(), last), files.end());
  // Checkpoint::open cross-checks the index against every shard header.
  expect_same(read_checkpoint(tmp / "n"), ref_from_hf(in, true, {}));
  std::string index = testing::read_bytes(tmp / "n" / "model.safetensors.index.json");
  EXPECT_EQ(index.rfind("{\n  \"metadata\": {\n    \"total_size\": ", 0), 0u) << index;
}

} // namespace
} // namespace shardshift
