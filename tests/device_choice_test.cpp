// device_choice_test.cpp: what --device auto picks (engine.h): the GPU for plans that dequantize
// FP8 with at most 4 threads, or on a CPU with only the portable kernels; the CPU otherwise. The
// choice changes only the time (every device gives the same bytes: cuda_convert_test); these
// tests need no GPU.
#include "shardshift/checkpoint.h"
#include "shardshift/synth.h"

#include "engine.h"
#include "test_support.h"

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::TempDir;

TEST(DeviceChoice, AutoTakesTheGpuToDequantizeWithFewThreadsOrOnAPortableCpu) {
  for (SimdLevel simd : {SimdLevel::avx2, SimdLevel::avx512}) {
    for (unsigned threads : {1u, 2u, 3u, 4u})
      EXPECT_TRUE(auto_uses_gpu(threads, simd, true)) << threads << " threads dequantizing";
    for (unsigned threads : {5u, 8u, 16u})
      EXPECT_FALSE(auto_uses_gpu(threads, simd, true)) << threads << " threads dequantizing";
    for (unsigned threads : {1u, 2u, 4u, 16u})
      EXPECT_FALSE(auto_uses_gpu(threads, simd, false)) << threads << " threads transposing";
  }
  for (unsigned threads : {1u, 2u, 16u})
    for (bool dequantizes : {false, true})
      EXPECT_TRUE(auto_uses_gpu(threads, SimdLevel::portable, dequantizes)) << threads;
}

// A checkpoint synthesized as `model` (tiny dimensions), planned with the default options.
Plan plan_of(const TempDir& tmp, const std::string& model) {
  SynthOptions so;
  so.out = tmp / model;
  so.model = model;
  so.layers = 2;
  so.mtp_layers = 0;
  so.seed = testing::test_seed();
  so.scale_hidden = model == "deepseek_v3" ? 14 : 8; // DeepSeek-V3: H 512, whole FP8 blocks
  so.scale_intermediate = 8;
  so.scale_experts = model == "deepseek_v3" ? 64 : 16;
  so.scale_vocab = 64;
  EXPECT_TRUE(synth(so, Io::system(), {}).ok());
  auto opened = Checkpoint::open(so.out);
  EXPECT_TRUE(opened.ok()) << opened.status().message();
  auto planned = make_plan(*opened, PlanOptions{});
  EXPECT_TRUE(planned.ok()) << planned.status().message();
  return planned.ok() ? std::move(planned.value()) : Plan{};
}

TEST(DeviceChoice, APlanDequantizesWhenAWeightOrAStackedPieceHasBlockScales) {
  TempDir tmp;
  const Plan deepseek = plan_of(tmp, "deepseek_v3"); // FP8 weights, routed experts stacked
  ASSERT_FALSE(deepseek.tensors.empty());
  EXPECT_TRUE(plan_dequantizes(deepseek));
  const Plan gemma = plan_of(tmp, "diffusion_gemma"); // transposes and copies only
  ASSERT_FALSE(gemma.tensors.empty());
  EXPECT_FALSE(plan_dequantizes(gemma));

  // Each of the two ways on its own: a whole dequantized tensor, or one scaled stack piece.
  Plan only_tensor;
  OutputTensor t;
  t.op = OpKind::dequant;
  only_tensor.tensors.push_back(t);
  EXPECT_TRUE(plan_dequantizes(only_tensor));
  Plan only_piece;
  OutputTensor stacked;
  stacked.op = OpKind::stack;
  stacked.pieces.resize(3);
  only_piece.tensors.push_back(stacked);
  EXPECT_FALSE(plan_dequantizes(only_piece)) << "no piece has a scale yet";
  only_piece.tensors[0].pieces[2].scale = TensorRef{};
  EXPECT_TRUE(plan_dequantizes(only_piece));
}

} // namespace
} // namespace shardshift
