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

} // namespace
} // namespace shardshift
