// convert_ep_test.cpp: expert-parallel exports (--ep-size/--ep-rank and the second sharding
// along axis 1) against the reference, and the expert ranges of every rank.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"

#include "convert_harness.h"
#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "test_support.h"

#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

TEST_F(ConvertTest, ExpertParallelSliceMatchesReference) {
  // E = 8 over 4 ranks: rank 1 keeps experts [2, 4); second sharding: rank 1 of 2 along axis 1.
  Dict in = tiny_diffusion(rng, 1, 8, 6, 4);
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) {
                 o.plan.ep_size = 4;
                 o.plan.ep_rank = 1;
                 o.plan.ep_shard_size = 2;
                 o.plan.ep_shard_rank = 1;
               }));
  ASSERT_TRUE(r.ok()) << r.status().message();
  RefOptions ro;
  ro.ep_size = 4;
  ro.ep_rank = 1;
  ro.ep_shard_size = 2;
  ro.ep_shard_rank = 1;
  Dict got = read_checkpoint(tmp / "n");
  expect_same(got, ref_from_hf(in, true, ro));
  EXPECT_EQ(got.at("model.layers.0.moe.experts.gate_and_up_projs").shape,
            (std::vector<uint64_t>{2, 3, 8}));
  EXPECT_EQ(got.at("model.layers.0.moe.experts.down_projs").shape,
            (std::vector<uint64_t>{2, 2, 6}));
  // Expert 2's first kept row is input column 3 of expert 2 (H / 2 * rank).
  const Tensor& gu = in.at("model.decoder.layers.0.experts.gate_up_proj");
  EXPECT_EQ(get_bits(got.at("model.layers.0.moe.experts.gate_and_up_projs"), 0),
            get_bits(gu, 2 * 8 * 6 + 3));
}

TEST_F(ConvertTest, ExpertParallelRangesWithRemainderCoverAllExperts) {
  Dict in = tiny_diffusion(rng, 1, 128, 2, 1);
  write_checkpoint(tmp / "hf", in);
  auto ck = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(ck.ok());
  for (unsigned w : {3u, 5u, 6u}) {
    uint64_t next = 0;
    for (unsigned rank = 0; rank < w; ++rank) {
      PlanOptions po;
      po.ep_size = w;
      po.ep_rank = rank;
      auto plan = make_plan(*ck, po);
      ASSERT_TRUE(plan.ok()) << plan.status().message();
      for (const OutputTensor& t : plan->tensors)
        if (t.name == "model.layers.0.moe.experts.down_projs") {
          auto [start, count] = ref_ep_range(128, w, rank);
          EXPECT_EQ(t.expert_begin, start) << "W=" << w << " r=" << rank;
          EXPECT_EQ(t.experts, count) << "W=" << w << " r=" << rank;
          EXPECT_EQ(t.expert_begin, next);
          EXPECT_TRUE(t.experts == 128 / w || t.experts == 128 / w + 1);
          next = t.expert_begin + t.experts;
        }
    }
    EXPECT_EQ(next, 128u) << "W=" << w;
  }
}

TEST_F(ConvertTest, UnevenSecondShardingIsRefused) {
  Dict in = tiny_diffusion(rng, 1, 4, 5, 2);
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.plan.ep_shard_size = 2; }));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("does not split evenly"), std::string::npos)
      << r.status().message();
}

} // namespace
} // namespace shardshift
