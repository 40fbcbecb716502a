// convert_errors_test.cpp: conversions that must fail, with which error and message, and leave
// nothing behind: missing or disagreeing expert pieces, unfoldable dtypes, foreign keys.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"

#include "convert_harness.h"
#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "test_support.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

TEST_F(ConvertTest, MissingEmbeddingIsAnError) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  in.erase("model.decoder.embed_tokens.weight");
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::plan);
  EXPECT_NE(r.status().message().find("model.embed_tokens.weight"), std::string::npos)
      << r.status().message();
  EXPECT_FALSE(fs::exists(tmp / "n"));
  EXPECT_EQ(testing::list_dir(tmp.path()), std::vector<std::string>{"hf"}); // no staging left
}

TEST_F(ConvertTest, MissingExpertPiecesAreAllReported) {
  Dict in = tiny_diffusion(rng, 3, 2, 4, 2);
  in.erase("model.decoder.layers.0.experts.down_proj");
  in.erase("model.decoder.layers.2.router.per_expert_scale");
  in.erase("model.decoder.layers.2.experts.gate_up_proj");
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("layers.0: incomplete expert weights: missing down_proj"), std::string::npos)
      << m;
  EXPECT_NE(m.find("layers.2: incomplete expert weights: missing gate_up_proj, per_expert_scale"),
            std::string::npos)
      << m;
  EXPECT_EQ(m.find("layers.1:"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

TEST_F(ConvertTest, ShapeDisagreementsAreReportedBeforeWriting) {
  Dict in = tiny_diffusion(rng, 1, 4, 8, 2);
  in["model.decoder.layers.0.router.per_expert_scale"] = random_tensor(rng, DType::BF16, {3});
  in["model.decoder.layers.0.experts.down_proj"] = random_tensor(rng, DType::BF16, {4, 9, 2});
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("has 3 scales but the layer has 4 experts"),
            std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("hidden size disagrees"), std::string::npos)
      << r.status().message();
}

TEST_F(ConvertTest, IntegerExpertsCannotBeFolded) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  Tensor& down = in["model.decoder.layers.0.experts.down_proj"];
  down = Tensor{DType::I8, down.shape, std::string(numel(down.shape), '\1')};
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("model.decoder.layers.0.experts.down_proj"),
            std::string::npos)
      << r.status().message();
}

TEST_F(ConvertTest, Gemma4MissingScaleNamesTheLayer) {
  Dict in = tiny_gemma4(rng, 2, 4, 6, 3, true, "router");
  in.erase("model.language_model.layers.1.router.per_expert_scale");
  write_checkpoint(tmp / "hf", in, 1, "gemma4");
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(
      r.status().message().find("layers.1: incomplete expert weights: missing per_expert_scale"),
      std::string::npos)
      << r.status().message();
}

TEST_F(ConvertTest, ToHfRejectsGateKeysWithoutModelPrefix) {
  Dict native = ref_from_hf(tiny_diffusion(rng, 1, 2, 4, 2), true, {});
  native["decoder.layers.3.moe.gate.scale"] = random_tensor(rng, DType::BF16, {4});
  write_checkpoint(tmp / "native", native);
  auto r = run(tmp / "native", tmp / "hf", opts([](ConvertOptions& o) {
                 o.plan.adapter = "diffusion_gemma";
                 o.plan.direction = Direction::to_hf;
               }));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("decoder.layers.3.moe.gate.scale"), std::string::npos)
      << r.status().message();
}

// A native checkpoint of one family for to_hf, and the key of one of a MoE layer's expert
// tensors with the one that layer keeps.
struct NativeLayerCase {
  const char* model;
  Dict native;
  std::string removed, kept;
  const char *removed_piece, *kept_piece;
};

std::vector<NativeLayerCase> native_cases(std::mt19937_64& rng) {
  return {
      {"diffusion_gemma", ref_from_hf(tiny_diffusion(rng, 2, 4, 8, 4), true, {}),
       "model.layers.1.moe.experts.down_projs", "model.layers.1.moe.experts.gate_and_up_projs",
       "down_projs", "gate_and_up_projs"},
      {"gemma4_moe", ref_from_hf(tiny_gemma4(rng, 2, 4, 8, 4, true), false, {}),
       "model.language_model.layers.1.moe.experts.gate_and_up_projs",
       "model.language_model.layers.1.moe.experts.down_projs", "gate_and_up_projs", "down_projs"},
      {"qwen3_moe", ref_qwen3_from_hf(tiny_qwen3(rng, 2, 4, 8, 4), {}),
       "model.layers.1.mlp.experts.down_projs", "model.layers.1.mlp.experts.gate_and_up_projs",
       "down_projs", "gate_and_up_projs"},
      // Layer 0 is dense: it has no expert tensor and needs none.
      {"deepseek_v3", ref_deepseek_from_hf(tiny_deepseek(rng, 3, 1, 3, 140, 36, 40, 24), {}),
       "model.layers.2.mlp.experts.gate_and_up_projs", "model.layers.2.mlp.experts.down_projs",
       "gate_and_up_projs", "down_projs"},
  };
}

// The reverse of the from_hf checks (semantics 2.8, 14.3): a native MoE layer missing one of its
// expert tensors would convert into a checkpoint without that layer's down_proj (or gate_proj and
// up_proj, or the per_expert_scale ones), silently; it is refused, naming the layer, what it has
// and what it lacks, and nothing is written. The complete checkpoint converts.
TEST_F(ConvertTest, ToHfRefusesALayerMissingOneOfItsExpertTensors) {
  for (NativeLayerCase& c : native_cases(rng)) {
    SCOPED_TRACE(c.model);
    const fs::path dir = tmp / c.model;
    write_checkpoint(dir / "complete", c.native, 2, c.model);
    ASSERT_TRUE(run(dir / "complete", dir / "hf").ok());
    ASSERT_EQ(c.native.erase(c.removed), 1u);
    write_checkpoint(dir / "incomplete", c.native, 2, c.model);
    auto r = run(dir / "incomplete", dir / "out");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Errc::plan);
    const std::string layer = c.removed.substr(c.removed.find("layers."), 8); // "layers.N"
    EXPECT_NE(r.status().message().find(layer + ": incomplete expert tensors: has " + c.kept_piece +
                                        " '" + c.kept + "' but is missing " + c.removed_piece +
                                        " (every MoE layer of a native " + c.model +
                                        " checkpoint has gate_and_up_projs and down_projs; "),
              std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find("(1 problem):"), std::string::npos) // no other layer
        << r.status().message();
    EXPECT_FALSE(fs::exists(dir / "out"));
  }
}

TEST_F(ConvertTest, ToHfNamesTheIncompleteLayerWhatItHasAndWhatItLacks) {
  Dict native = ref_qwen3_from_hf(tiny_qwen3(rng, 2, 4, 8, 4), {});
  native.erase("model.layers.1.mlp.experts.down_projs");
  write_checkpoint(tmp / "native", native, 1, "qwen3_moe");
  auto r = run(tmp / "native", tmp / "out");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            (tmp / "native").string() +
                ": the checkpoint does not fit the qwen3_moe to_hf adapter (1 problem):\n"
                "  layers.1: incomplete expert tensors: has gate_and_up_projs "
                "'model.layers.1.mlp.experts.gate_and_up_projs' but is missing down_projs (every "
                "MoE layer of a native qwen3_moe checkpoint has gate_and_up_projs and down_projs; "
                "the output would lack the Hugging Face tensors made from the missing ones); "
                "convert a native checkpoint that has them all");
}

// An expert-parallel rank's checkpoint has fewer experts in each tensor, but every tensor: it
// converts as before, into that rank's experts.
TEST_F(ConvertTest, ToHfHoldsExpertParallelCheckpointsToTheModelsExpertCount) {
  RefOptions rank1;
  rank1.ep_size = 2;
  rank1.ep_rank = 1;
  const Dict diffusion = ref_from_hf(tiny_diffusion(rng, 2, 4, 8, 4), true, rank1);
  const Dict qwen3 =
      ref_stacked_expert_parallel(ref_qwen3_from_hf(tiny_qwen3(rng, 2, 4, 8, 4), {}), rank1);
  ASSERT_EQ(qwen3.at("model.layers.1.mlp.experts.down_projs").shape[0], 2u);
  // diffusion_gemma: the reference's to_hf writes per_expert_scale with the model's count (4,
  // from config.json, else the router's rows) beside the rank's 2 experts: refused both ways.
  write_checkpoint(tmp / "dg", diffusion, 1, "diffusion_gemma");
  auto dg_router = run(tmp / "dg", tmp / "dg-hf");
  ASSERT_FALSE(dg_router.ok());
  EXPECT_NE(dg_router.status().message().find(
                "'model.layers.1.moe.experts.down_projs': holds 2 experts, but its layer's router "
                "'model.layers.1.moe.gate.proj.weight' has 4 rows"),
            std::string::npos)
      << dg_router.status().message();
  testing::write_bytes(tmp / "dg" / "config.json",
                       R"({"model_type": "diffusion_gemma", "num_experts": 4})");
  auto dg_config = run(tmp / "dg", tmp / "dg-hf");
  ASSERT_FALSE(dg_config.ok());
  EXPECT_NE(dg_config.status().message().find(
                "'model.layers.0.moe.experts.down_projs': holds 2 experts, but config.json's "
                "num_experts is 4"),
            std::string::npos)
      << dg_config.status().message();
  EXPECT_FALSE(fs::exists(tmp / "dg-hf"));
  // Without the count and the routers there is nothing to hold them to: converted as they are.
  Dict dg_alone = diffusion;
  for (int l = 0; l < 2; ++l)
    ASSERT_EQ(dg_alone.erase("model.layers." + std::to_string(l) + ".moe.gate.proj.weight"), 1u);
  write_checkpoint(tmp / "dg0", dg_alone, 1, "diffusion_gemma");
  ASSERT_TRUE(run(tmp / "dg0", tmp / "dg0-hf").ok());
  expect_same(read_checkpoint(tmp / "dg0-hf"), ref_to_hf(dg_alone, true, {}));
  // The whole export converts.
  const Dict whole = ref_from_hf(tiny_diffusion(rng, 2, 4, 8, 4), true, {});
  write_checkpoint(tmp / "dgw", whole, 1, "diffusion_gemma");
  testing::write_bytes(tmp / "dgw" / "config.json",
                       R"({"model_type": "diffusion_gemma", "num_experts": 4})");
  ASSERT_TRUE(run(tmp / "dgw", tmp / "dgw-hf").ok());
  expect_same(read_checkpoint(tmp / "dgw-hf"), ref_to_hf(whole, true, {}));
  // Without an expert count in config.json and without routers there is nothing to hold the
  // stacked tensors to.
  Dict no_router = qwen3;
  for (int l = 0; l < 2; ++l)
    ASSERT_EQ(no_router.erase("model.layers." + std::to_string(l) + ".mlp.gate.weight"), 1u);
  write_checkpoint(tmp / "qw0", no_router, 1, "qwen3_moe");
  ASSERT_TRUE(run(tmp / "qw0", tmp / "qw0-hf").ok());
  expect_same(read_checkpoint(tmp / "qw0-hf"), ref_qwen3_to_hf(no_router, {}));
  // Without the count, the layer's router gives it: 4 rows, the whole model's experts.
  write_checkpoint(tmp / "qw", qwen3, 1, "qwen3_moe");
  auto by_router = run(tmp / "qw", tmp / "qw-hf");
  ASSERT_FALSE(by_router.ok());
  EXPECT_NE(
      by_router.status().message().find(
          "'model.layers.1.mlp.experts.down_projs': holds 2 experts, but its layer's router "
          "'model.layers.1.mlp.gate.weight' has 4 rows, and config.json gives no num_experts"),
      std::string::npos)
      << by_router.status().message();
  EXPECT_FALSE(fs::exists(tmp / "qw-hf"));
  // With a count, a tensor holding fewer experts is refused, as the reference's split refuses it.
  testing::write_bytes(tmp / "qw" / "config.json",
                       R"({"model_type": "qwen3_moe", "num_experts": 4})");
  auto refused = run(tmp / "qw", tmp / "qw-hf2");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find(
                "'model.layers.1.mlp.experts.down_projs': holds 2 experts, but config.json's "
                "num_experts is 4"),
            std::string::npos)
      << refused.status().message();
  EXPECT_FALSE(fs::exists(tmp / "qw-hf2"));
}

} // namespace
} // namespace shardshift
