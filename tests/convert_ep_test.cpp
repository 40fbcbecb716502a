// convert_ep_test.cpp: expert-parallel exports (--ep-size/--ep-rank and the second sharding
// along axis 1) against the reference, and the expert ranges of every rank; for the stacked
// families (qwen3_moe, deepseek_v3), every rank's export against the slice of the whole one.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"

#include "resume.h"

#include "convert_harness.h"
#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "test_support.h"

#include <charconv>
#include <map>
#include <optional>
#include <string>
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

// Names, dtypes, shapes and bytes (NaNs included) of every tensor.
void expect_bytes_equal(const Dict& got, const Dict& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << name;
    EXPECT_EQ(it->second.dtype, w.dtype) << name;
    EXPECT_EQ(it->second.shape, w.shape) << name;
    EXPECT_TRUE(it->second.bytes == w.bytes) << name;
  }
}

// The single-rank export of `hf` (checked against the reference's `want`), then every rank of
// N = 2, 3 (uneven: 3, 3, 2 of 8 experts), 4 and 10 (more ranks than experts: the last two
// write no stacked tensor, as the reference's mixin), and N = 2 with the second sharding of 2: each rank's export equals
// the slice of the single-rank export (ref_stacked_expert_parallel).
void expect_every_rank_is_a_slice(const fs::path& hf, const fs::path& tmp, const Dict& want) {
  ASSERT_TRUE(run(hf, tmp / "whole", opts([](ConvertOptions& o) { o.force = true; })).ok());
  const Dict whole = read_checkpoint(tmp / "whole");
  {
    SCOPED_TRACE("single rank against the reference");
    expect_bytes_equal(whole, want);
  }
  struct Split {
    unsigned n, s;
  };
  for (Split sp : {Split{2, 1}, {3, 1}, {4, 1}, {10, 1}, {2, 2}})
    for (unsigned r = 0; r < sp.n; ++r)
      for (unsigned k = 0; k < sp.s; ++k) {
        SCOPED_TRACE("--ep-size " + std::to_string(sp.n) + " --ep-rank " + std::to_string(r) +
                     " --ep-shard-size " + std::to_string(sp.s) + " --ep-shard-rank " +
                     std::to_string(k));
        auto c = run(hf, tmp / "rank", opts([&](ConvertOptions& o) {
                       o.plan.ep_size = sp.n;
                       o.plan.ep_rank = r;
                       o.plan.ep_shard_size = sp.s;
                       o.plan.ep_shard_rank = k;
                       o.force = true;
                     }));
        ASSERT_TRUE(c.ok()) << c.status().message();
        RefOptions ro;
        ro.ep_size = sp.n;
        ro.ep_rank = r;
        ro.ep_shard_size = sp.s;
        ro.ep_shard_rank = k;
        expect_bytes_equal(read_checkpoint(tmp / "rank"), ref_stacked_expert_parallel(whole, ro));
      }
}

TEST_F(ConvertTest, Qwen3EveryRankIsTheSliceOfTheWholeExport) {
  // 8 experts, H 6, I 4; pieces spread over three shards.
  Dict in = tiny_qwen3(rng, 2, 8, 6, 4, DType::BF16, true, /*special=*/true);
  write_checkpoint(tmp / "hf", in, 3, "qwen3_moe");
  expect_every_rank_is_a_slice(tmp / "hf", tmp.path(), ref_qwen3_from_hf(in, {}));
}

TEST_F(ConvertTest, DeepseekEveryRankIsTheSliceOfTheWholeExport) {
  // FP8 pieces dequantized on the way; H 260 and I 130 cut 128 x 128 blocks at the edges, and
  // the second sharding's rows [130, 260) of gate_and_up start inside a block.
  for (DType fp8 : {DType::F8_E4M3, DType::F8_E5M2}) {
    SCOPED_TRACE(dtype_name(fp8));
    Dict in = tiny_deepseek(rng, 2, 1, 8, 260, 130, 140, 136, fp8, /*special=*/true);
    const fs::path hf = tmp / ("hf" + std::string(dtype_name(fp8)));
    write_checkpoint(hf, in, 3, "deepseek_v3");
    expect_every_rank_is_a_slice(hf, tmp.path(), ref_deepseek_from_hf(in, {}));
  }
}

TEST_F(ConvertTest, DeepseekBf16PiecesAreSlicedToo) {
  // BF16 expert pieces (no block scale): stacked without dequantization, cast to BF16 = kept.
  Dict in = tiny_deepseek(rng, 2, 1, 4, 130, 20, 24, 16);
  for (auto& [name, t] : in)
    if (name.find(".mlp.experts.") != std::string::npos && name.ends_with(".weight")) {
      t = random_tensor(rng, DType::BF16, t.shape, true);
      in.erase(name + "_scale_inv");
    }
  write_checkpoint(tmp / "hf", in, 2, "deepseek_v3");
  expect_every_rank_is_a_slice(tmp / "hf", tmp.path(), ref_deepseek_from_hf(in, {}));
}

// The expert index in `layers.L.mlp.experts.X.P.weight`.
uint64_t expert_of(const std::string& key) {
  const std::string marker = ".mlp.experts.";
  const size_t at = key.find(marker) + marker.size();
  uint64_t e = 0;
  std::from_chars(key.data() + at, key.data() + key.size(), e);
  return e;
}

TEST_F(ConvertTest, StackedRanksReadOnlyTheirExpertsPieces) {
  Dict in = tiny_qwen3(rng, 2, 10, 6, 4);
  write_checkpoint(tmp / "hf", in, 2, "qwen3_moe");
  auto ck = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(ck.ok());
  std::map<std::string, uint64_t> covered; // stacked tensor -> experts seen over the ranks
  for (unsigned rank = 0; rank < 4; ++rank) {
    PlanOptions po;
    po.ep_size = 4;
    po.ep_rank = rank;
    auto plan = make_plan(*ck, po);
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    auto [begin, count] = ref_ep_range(10, 4, rank); // 3, 3, 2, 2
    for (const OutputTensor& t : plan->tensors) {
      if (t.op != OpKind::stack)
        continue;
      const uint64_t slots = t.name.ends_with("gate_and_up_projs") ? 2 : 1;
      EXPECT_EQ(t.shape[0], count) << t.name;
      ASSERT_EQ(t.pieces.size(), count * slots) << t.name;
      for (const StackPiece& p : t.pieces) {
        const uint64_t e = expert_of(ck->info(p.source).name);
        EXPECT_GE(e, begin) << t.name << " rank " << rank;
        EXPECT_LT(e, begin + count) << t.name << " rank " << rank;
        EXPECT_EQ(p.index, e - begin);
      }
      covered[t.name] += t.shape[0];
    }
  }
  ASSERT_EQ(covered.size(), 4u);
  for (const auto& [name, n] : covered)
    EXPECT_EQ(n, 10u) << name;
}

TEST_F(ConvertTest, StackedExpertParallelBytesAreTheSameForEveryThreadsAndBudget) {
  // One expert's gate_and_up is 80 KiB (H 128, I 160; qwen3) and 312 KB (H 260, I 300; FP8
  // deepseek), over the 64 KiB chunk of the 256 KiB budget: rank 1 of 2, second-sharding rank 1
  // of 2, is cut into rows inside each kept half.
  struct Case {
    std::string model;
    Dict in, whole;
  };
  std::vector<Case> cases;
  {
    Dict q = tiny_qwen3(rng, 2, 4, 128, 160);
    cases.push_back({"qwen3_moe", q, ref_qwen3_from_hf(q, {})});
    Dict d = tiny_deepseek(rng, 2, 1, 4, 260, 300, 300, 136);
    cases.push_back({"deepseek_v3", d, ref_deepseek_from_hf(d, {})});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.model);
    const fs::path hf = tmp / ("hf-" + c.model);
    write_checkpoint(hf, c.in, 3, c.model);
    RefOptions ro;
    ro.ep_size = ro.ep_shard_size = 2;
    ro.ep_rank = ro.ep_shard_rank = 1;
    const Dict want = ref_stacked_expert_parallel(c.whole, ro);
    std::optional<std::map<std::string, std::string>> first;
    struct Setting {
      unsigned threads, writers;
      uint64_t memory;
    };
    for (Setting s : {Setting{1, 1, 256 << 10}, {2, 1, 1 << 20}, {4, 3, 2 << 20}, {4, 2, 64 << 20}}) {
      SCOPED_TRACE("-j " + std::to_string(s.threads) + " --writers " + std::to_string(s.writers) +
                   " --max-memory " + std::to_string(s.memory));
      auto r = run(hf, tmp / "n", opts([&](ConvertOptions& o) {
                     o.threads = s.threads;
                     o.writers = s.writers;
                     o.max_memory = s.memory;
                     o.plan.max_shard_size = 400'000;
                     o.plan.ep_size = o.plan.ep_shard_size = 2;
                     o.plan.ep_rank = o.plan.ep_shard_rank = 1;
                     o.force = true;
                   }));
      ASSERT_TRUE(r.ok()) << r.status().message();
      auto files = testing::files_of(tmp / "n");
      if (!first) {
        first = files;
        expect_bytes_equal(read_checkpoint(tmp / "n"), want);
      } else {
        EXPECT_TRUE(files == *first);
      }
    }
  }
}

TEST_F(ConvertTest, StackedExpertParallelRefusals) {
  // I = 5: down_projs' axis 1 does not split into 2 (gate_and_up's H = 6 does).
  write_checkpoint(tmp / "hf", tiny_qwen3(rng, 1, 4, 6, 5), 1, "qwen3_moe");
  auto r = run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.plan.ep_shard_size = 2; }));
  ASSERT_FALSE(r.ok());
  const std::string m = r.status().message();
  EXPECT_NE(m.find("model.layers.0.mlp.experts.down_projs"), std::string::npos) << m;
  EXPECT_NE(m.find("axis 1 of size 5 does not split evenly into 2 shards (--ep-shard-size)"),
            std::string::npos)
      << m;
  EXPECT_EQ(m.find("gate_and_up_projs"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(tmp / "n"));

  // to_hf gathers whole native checkpoints only.
  write_checkpoint(tmp / "native", ref_qwen3_from_hf(tiny_qwen3(rng, 1, 4, 4, 2), {}));
  auto back = run(tmp / "native", tmp / "h", opts([](ConvertOptions& o) { o.plan.ep_size = 2; }));
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find("applies to from_hf only"), std::string::npos)
      << back.status().message();
}

// 14.7.1: with fewer experts than ranks, a rank with no expert writes no stacked tensor (the
// reference skips every piece); the others keep theirs, and everything else is whole everywhere.
TEST_F(ConvertTest, AStackedRankWithNoExpertWritesNoStackedTensor) {
  const Dict in = tiny_qwen3(rng, 2, 2, 4, 3);
  write_checkpoint(tmp / "hf", in, 1, "qwen3_moe");
  const Dict whole = ref_qwen3_from_hf(in, {});
  for (unsigned rank = 0; rank < 4; ++rank) {
    SCOPED_TRACE(rank);
    const fs::path out = tmp / ("n" + std::to_string(rank));
    auto r = run(tmp / "hf", out, opts([rank](ConvertOptions& o) {
                   o.plan.ep_size = 4;
                   o.plan.ep_rank = rank;
                 }));
    ASSERT_TRUE(r.ok()) << r.status().message();
    const Dict got = read_checkpoint(out);
    for (const auto& [name, t] : whole) {
      const bool stacked = name.ends_with("_projs");
      if (!stacked || rank < 2) { // ranks 0 and 1 hold expert 0 and expert 1
        ASSERT_TRUE(got.count(name)) << name;
        EXPECT_EQ(got.at(name).shape[0], stacked ? 1u : t.shape[0]) << name;
      } else {
        EXPECT_EQ(got.count(name), 0u) << name;
      }
    }
    EXPECT_EQ(got.size(), rank < 2 ? whole.size() : whole.size() - 4);
  }
}

TEST_F(ConvertTest, StackedRanksHaveTheirOwnResumeFingerprints) {
  // A staging left by one rank is never taken for another's: the fingerprint covers the expert
  // range, the rows and the pieces.
  write_checkpoint(tmp / "hf", tiny_deepseek(rng, 2, 1, 4, 130, 20, 24, 16), 2, "deepseek_v3");
  auto ck = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(ck.ok());
  std::map<std::string, std::string> seen; // fingerprint -> which
  for (unsigned n : {1u, 2u, 4u})
    for (unsigned r = 0; r < n; ++r)
      for (unsigned k = 0; k < 2; ++k) {
        PlanOptions po;
        po.ep_size = n;
        po.ep_rank = r;
        po.ep_shard_size = 2;
        po.ep_shard_rank = k;
        auto plan = make_plan(*ck, po);
        ASSERT_TRUE(plan.ok()) << plan.status().message();
        const std::string which = std::to_string(n) + "/" + std::to_string(r) + "/" +
                                  std::to_string(k);
        auto [it, fresh] = seen.emplace(plan_fingerprint(*ck, *plan), which);
        EXPECT_TRUE(fresh) << which << " has the fingerprint of " << it->second;
      }
}

} // namespace
} // namespace shardshift
