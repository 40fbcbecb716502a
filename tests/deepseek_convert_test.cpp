// deepseek_convert_test.cpp: deepseek_v3 conversions (docs/semantics.md section 15) against the
// independent reference (tests/reference/): FP8 block dequantization of every code with random
// scales and partial edge blocks, both directions, every output dtype, pieces over shards,
// chunking, the refusals, and synth's inventory.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/synth.h"

#include "convert_harness.h"
#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "reference/numeric_reference.h"
#include "test_support.h"

#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::files_of;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

const char* name_of(std::optional<DType> d) {
  return d ? dtype_name(*d).data() : "keep";
}

TEST_F(ConvertTest, DeepseekDequantizesEveryCodeWithRandomScalesAndPartialBlocks) {
  // A [300, 260] weight: 3 x 3 blocks, the last row and column of blocks partial. Element i holds
  // code (i * 7 + i / 260) % 256, so every code sits in every block at many positions.
  for (DType fp8 : {DType::F8_E4M3, DType::F8_E5M2}) {
    Dict in;
    Tensor w{fp8, {300, 260}, std::string(300 * 260, '\0')};
    for (uint64_t i = 0; i < 300 * 260; ++i)
      w.bytes[i] = char((i * 7 + i / 260) % 256);
    in["model.layers.0.self_attn.q_a_proj.weight"] = w;
    in["model.layers.0.self_attn.q_a_proj.weight_scale_inv"] =
        random_block_scales(rng, 300, 260, /*special=*/true);
    in["model.layers.0.input_layernorm.weight"] = random_tensor(rng, DType::BF16, {8});
    write_checkpoint(tmp / "hf", in, 1, "deepseek_v3");
    for (std::optional<DType> cast : {std::optional<DType>(), std::optional(DType::BF16),
                                      std::optional(DType::F16), std::optional(DType::F32)}) {
      SCOPED_TRACE(std::string(dtype_name(fp8)) + " --dtype " + name_of(cast));
      auto r = run(tmp / "hf", tmp / "n", opts([&](ConvertOptions& o) {
                     o.plan.expert_dtype = cast;
                     o.force = true;
                   }));
      ASSERT_TRUE(r.ok()) << r.status().message();
      Dict got = read_checkpoint(tmp / "n");
      // Element by element from the contract's arithmetic (ref_dequant_element), not from
      // ref_deepseek_from_hf, so that a shared mistake in the block walk would show too.
      const Tensor& scale = in.at("model.layers.0.self_attn.q_a_proj.weight_scale_inv");
      const DType to = cast.value_or(DType::BF16);
      const Tensor& out = got.at("model.layers.0.self_attn.q_a_proj.weight");
      ASSERT_EQ(out.dtype, to);
      ASSERT_EQ(out.shape, w.shape);
      uint64_t bad = 0;
      for (uint64_t r = 0; r < 300; ++r)
        for (uint64_t c = 0; c < 260; ++c) {
          const uint64_t want = ref_dequant_element(fp8, uint8_t(w.bytes[r * 260 + c]), DType::F32,
                                                    get_bits(scale, (r / 128) * 3 + c / 128), to);
          if (get_bits(out, r * 260 + c) != want && bad++ < 5)
            ADD_FAILURE() << "[" << r << "][" << c << "] code 0x" << std::hex
                          << (unsigned(w.bytes[r * 260 + c]) & 0xFF) << ": got 0x"
                          << get_bits(out, r * 260 + c) << ", expected 0x" << want;
        }
      EXPECT_EQ(bad, 0u);
      EXPECT_EQ(got.count("model.layers.0.self_attn.q_a_proj.weight_scale_inv"), 0u);
      EXPECT_EQ(got.at("model.layers.0.input_layernorm.weight").bytes,
                in.at("model.layers.0.input_layernorm.weight").bytes);
    }
  }
}

TEST_F(ConvertTest, DeepseekFromHfMatchesTheReferenceForEveryDtype) {
  // H 260, I 130: partial blocks in both axes of every expert piece; three shards, so a piece,
  // its scale and its expert's other pieces lie in different files.
  for (DType fp8 : {DType::F8_E4M3, DType::F8_E5M2}) {
    Dict in = tiny_deepseek(rng, 3, 1, 3, 260, 130, 140, 136, fp8, /*special=*/true);
    const fs::path hf = tmp / ("hf" + std::string(dtype_name(fp8)));
    write_checkpoint(hf, in, 3, "deepseek_v3");
    for (std::optional<DType> cast : {std::optional<DType>(), std::optional(DType::BF16),
                                      std::optional(DType::F16), std::optional(DType::F32)}) {
      SCOPED_TRACE(std::string(dtype_name(fp8)) + " --dtype " + name_of(cast));
      auto r = run(hf, tmp / "n", opts([&](ConvertOptions& o) {
                     o.plan.expert_dtype = cast;
                     o.force = true;
                   }));
      ASSERT_TRUE(r.ok()) << r.status().message();
      RefOptions ro;
      ro.cast = cast;
      expect_identical(read_checkpoint(tmp / "n"), ref_deepseek_from_hf(in, ro));
    }
  }
}

// Semantics 14.2.7 and 15.2.6: without --dtype, qwen3_moe's stacked experts and deepseek_v3's
// dequantized weights and stacked experts come out in config.json's dtype ("dtype", else
// "torch_dtype", as transformers keeps them; a repeated key counts as its last), as the
// reference's adapter, built with that dtype, casts them; --dtype overrides it. A value
// shardshift cannot write, one that is no string, or a config.json that simdjson cannot read
// (Python's json takes NaN) is refused (exit 1) naming config.json and --dtype, unless --dtype
// is given.
TEST_F(ConvertTest, StackedFamiliesCastToTheConfigsDtypeLikeTheReference) {
  const Dict qwen = tiny_qwen3(rng, 1, 2, 4, 3, DType::F32);
  const Dict deepseek = tiny_deepseek(rng, 2, 1, 2, 130, 20, 24, 16);
  for (const std::string model : {"qwen3_moe", "deepseek_v3"}) {
    const Dict& in = model == "qwen3_moe" ? qwen : deepseek;
    const fs::path hf = tmp / model;
    write_checkpoint(hf, in, 2, model);
    auto reference = [&](DType cast) {
      RefOptions ro;
      ro.cast = cast;
      return model == "qwen3_moe" ? ref_qwen3_from_hf(in, ro) : ref_deepseek_from_hf(in, ro);
    };
    auto convert = [&](const std::string& dtype_fields, std::optional<DType> flag) {
      testing::write_bytes(hf / "config.json",
                           "{\"model_type\": \"" + model + "\"" + dtype_fields + "}\n");
      return run(hf, tmp / "n", opts([&](ConvertOptions& o) {
                   o.plan.expert_dtype = flag;
                   o.force = true;
                 }));
    };
    struct Case {
      std::string fields;
      DType want;
    };
    for (const Case& c :
         {Case{", \"torch_dtype\": \"float32\"", DType::F32},
          Case{", \"torch_dtype\": \"float16\"", DType::F16},
          Case{", \"dtype\": \"float16\"", DType::F16},
          Case{", \"torch_dtype\": \"bfloat16\"", DType::BF16},
          Case{", \"torch_dtype\": null", DType::BF16},
          Case{", \"torch_dtype\": \"float32\", \"dtype\": \"float32\"", DType::F32},
          Case{", \"torch_dtype\": \"float32\", \"dtype\": \"bfloat16\"", DType::BF16},
          Case{", \"torch_dtype\": \"float\"", DType::F32},
          Case{", \"dtype\": \"half\"", DType::F16},
          Case{", \"torch_dtype\": \"float64\", \"torch_dtype\": \"float16\"", DType::F16}}) {
      SCOPED_TRACE(model + c.fields);
      auto r = convert(c.fields, std::nullopt);
      ASSERT_TRUE(r.ok()) << r.status().message();
      expect_identical(read_checkpoint(tmp / "n"), reference(c.want));
    }
    // transformers reads the name with getattr(torch, name): "torch.half" and "bf16" are none.
    for (const std::string bad :
         {", \"torch_dtype\": \"float64\"", ", \"torch_dtype\": \"auto\"", ", \"dtype\": 16",
          ", \"dtype\": \"torch.half\"", ", \"torch_dtype\": \"bf16\""}) {
      SCOPED_TRACE(model + bad);
      fs::remove_all(tmp / "n");
      auto r = convert(bad, std::nullopt);
      ASSERT_FALSE(r.ok());
      EXPECT_NE(r.status().message().find("config.json"), std::string::npos)
          << r.status().message();
      EXPECT_NE(r.status().message().find("--dtype bf16|f16|f32"), std::string::npos)
          << r.status().message();
      // That one problem alone: no dequantized weight is reported for the unknown dtype again.
      EXPECT_NE(r.status().message().find("(1 problem)"), std::string::npos)
          << r.status().message();
      EXPECT_FALSE(fs::exists(tmp / "n"));
      // --dtype settles it.
      auto given = convert(bad, DType::F16);
      ASSERT_TRUE(given.ok()) << given.status().message();
      expect_identical(read_checkpoint(tmp / "n"), reference(DType::F16));
    }
    // A config.json that Python's json reads and simdjson does not (NaN): its model_type names
    // the adapter, so nothing is guessed from the keys; with --adapter, its dtype is still
    // unknown until --dtype gives it.
    const std::string nan = ", \"torch_dtype\": \"float32\", \"x\": NaN";
    fs::remove_all(tmp / "n");
    auto unread = convert(nan, std::nullopt);
    ASSERT_FALSE(unread.ok());
    EXPECT_NE(unread.status().message().find("give --adapter"), std::string::npos)
        << unread.status().message();
    testing::write_bytes(hf / "config.json", "{\"model_type\": \"" + model + "\"" + nan + "}\n");
    auto adapter_only =
        run(hf, tmp / "n", opts([&](ConvertOptions& o) { o.plan.adapter = model; }));
    ASSERT_FALSE(adapter_only.ok());
    EXPECT_NE(adapter_only.status().message().find("or choose with --dtype bf16|f16|f32"),
              std::string::npos)
        << adapter_only.status().message();
    // --dtype gives the dtype, but the reference reads the expert count from the file too
    // (14.2.5): still refused, naming it.
    auto both = run(hf, tmp / "n", opts([&](ConvertOptions& o) {
                      o.plan.adapter = model;
                      o.plan.expert_dtype = DType::F32;
                    }));
    ASSERT_FALSE(both.ok());
    const std::string count = model == "qwen3_moe" ? "num_experts" : "n_routed_experts";
    EXPECT_NE(both.status().message().find("reference reads its " + count + " (Python's json"),
              std::string::npos)
        << both.status().message();
    EXPECT_FALSE(fs::exists(tmp / "n"));
  }
}

TEST_F(ConvertTest, DeepseekKeepsWhatTheAdapterKeeps) {
  Dict in = tiny_deepseek(rng, 2, 1, 2, 130, 20, 24, 16);
  // The multi-token-prediction layer's own tensors (15.2.5), after the last decoder layer.
  in["model.layers.2.embed_tokens.weight"] = random_tensor(rng, DType::BF16, {16, 130});
  in["model.layers.2.enorm.weight"] = random_tensor(rng, DType::BF16, {130});
  in["model.layers.2.eh_proj.weight"] = random_tensor(rng, DType::BF16, {130, 260});
  in["model.layers.2.mlp.experts.0.gate_proj.weight"] =
      in.at("model.layers.1.mlp.experts.0.gate_proj.weight");
  in["model.layers.2.mlp.experts.0.gate_proj.weight_scale_inv"] =
      in.at("model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv");
  for (const char* p : {"up_proj", "down_proj"})
    for (uint64_t e = 0; e < 2; ++e) {
      const std::string from = "model.layers.1.mlp.experts." + std::to_string(e) + "." + p;
      const std::string to = "model.layers.2.mlp.experts." + std::to_string(e) + "." + p;
      in[to + ".weight"] = in.at(from + ".weight");
      in[to + ".weight_scale_inv"] = in.at(from + ".weight_scale_inv");
    }
  in["model.layers.2.mlp.experts.1.gate_proj.weight"] =
      in.at("model.layers.1.mlp.experts.1.gate_proj.weight");
  in["model.layers.2.mlp.experts.1.gate_proj.weight_scale_inv"] =
      in.at("model.layers.1.mlp.experts.1.gate_proj.weight_scale_inv");
  write_checkpoint(tmp / "hf", in, 2); // no config.json: detected from the keys (15.6)
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_TRUE(r.ok()) << r.status().message();
  Dict got = read_checkpoint(tmp / "n");
  expect_identical(got, ref_deepseek_from_hf(in, {}));
  for (auto& [name, t] : got)
    EXPECT_FALSE(contains(name, "_scale_inv")) << name;
  // The gate's bias stays F32 and untouched; the router, norms and BF16 tensors are copies.
  for (const char* k :
       {"model.layers.1.mlp.gate.e_score_correction_bias", "model.layers.1.mlp.gate.weight",
        "model.layers.0.input_layernorm.weight", "model.layers.2.eh_proj.weight",
        "model.layers.2.embed_tokens.weight", "lm_head.weight"}) {
    EXPECT_EQ(got.at(k).dtype, in.at(k).dtype) << k;
    EXPECT_TRUE(got.at(k).bytes == in.at(k).bytes) << k;
  }
  // Shared experts and the dense MLP stay 2-D, dequantized to BF16.
  EXPECT_EQ(got.at("model.layers.1.mlp.shared_experts.down_proj.weight").shape,
            (std::vector<uint64_t>{130, 20}));
  EXPECT_EQ(got.at("model.layers.1.mlp.shared_experts.down_proj.weight").dtype, DType::BF16);
  EXPECT_EQ(got.at("model.layers.0.mlp.up_proj.weight").dtype, DType::BF16);
  // Routed experts of layers 1 and 2 (the MTP layer) are stacked.
  EXPECT_EQ(got.at("model.layers.2.mlp.experts.gate_and_up_projs").shape,
            (std::vector<uint64_t>{2, 130, 40}));
  EXPECT_EQ(got.at("model.layers.1.mlp.experts.down_projs").shape,
            (std::vector<uint64_t>{2, 20, 130}));
}

TEST_F(ConvertTest, DeepseekToHfMatchesTheReferenceAndRoundTrips) {
  Dict hf = tiny_deepseek(rng, 2, 1, 3, 140, 36, 40, 24);
  Dict native = ref_deepseek_from_hf(hf, {});
  native["model.layers.1.self_attn._extra_state"] = random_tensor(rng, DType::U8, {4});
  write_checkpoint(tmp / "native", native, 2, "deepseek_v3");
  for (std::optional<DType> cast : {std::optional<DType>(), std::optional(DType::F32)}) {
    SCOPED_TRACE(std::string("--dtype ") + name_of(cast));
    auto r = run(tmp / "native", tmp / "hf", opts([&](ConvertOptions& o) {
                   o.plan.expert_dtype = cast;
                   o.force = true;
                 }));
    ASSERT_TRUE(r.ok()) << r.status().message();
    RefOptions ro;
    ro.cast = cast;
    Dict got = read_checkpoint(tmp / "hf");
    expect_identical(got, ref_deepseek_to_hf(native, ro));
    EXPECT_EQ(got.count("model.layers.1.self_attn._extra_state"), 0u);
  }
  // native -> HF (BF16) -> native gives the native tensors back, byte for byte.
  native.erase("model.layers.1.self_attn._extra_state");
  ASSERT_TRUE(run(tmp / "hf", tmp / "again", opts([](ConvertOptions& o) {
                    o.plan.direction = Direction::from_hf;
                    o.plan.adapter = "deepseek_v3";
                  }))
                  .ok());
  expect_identical(read_checkpoint(tmp / "again"), native);
}

TEST_F(ConvertTest, DeepseekRefusesMissingOrMisshapenScalesAndPieces) {
  Dict in = tiny_deepseek(rng, 2, 1, 3, 140, 36, 40, 24);
  in.erase("model.layers.0.self_attn.o_proj.weight_scale_inv");        // non-expert
  in.erase("model.layers.1.mlp.experts.1.down_proj.weight_scale_inv"); // expert piece
  in.erase("model.layers.1.mlp.experts.2.up_proj.weight");             // piece (and orphan)
  in["model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv"] =      // [1, 1] for [36, 140]
      random_block_scales(rng, 36, 100, false);
  write_checkpoint(tmp / "hf", in, 2, "deepseek_v3");
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  const std::string& m = r.status().message();
  EXPECT_TRUE(contains(m, "model.layers.0.self_attn.o_proj.weight") &&
              contains(m, "F8_E4M3 weight without its block scale "
                          "'model.layers.0.self_attn.o_proj.weight_scale_inv'"))
      << m;
  EXPECT_TRUE(contains(m, "weight without its block scale "
                          "'model.layers.1.mlp.experts.1.down_proj.weight_scale_inv'"))
      << m;
  EXPECT_TRUE(contains(m, "model.layers.1: 'model.layers.1.mlp.experts.gate_and_up_projs' needs "
                          "every expert 0-2 (2 pieces each); missing: expert 2 up_proj"))
      << m;
  EXPECT_TRUE(contains(m, "block scale without its weight "
                          "'model.layers.1.mlp.experts.2.up_proj.weight'"))
      << m;
  EXPECT_TRUE(contains(m, "block scale has shape [1, 1] but weight "
                          "'model.layers.1.mlp.experts.0.gate_proj.weight' [36, 140] needs [1, 2]"))
      << m;
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

TEST_F(ConvertTest, DeepseekBytesAreTheSameForEveryThreadsWritersAndBudget) {
  // H 260, I 300: one expert's gate_and_up output is 312 KB and the dense MLP's 300 x 260 rows
  // 156 KB, over the 64 KiB chunk of the 256 KiB budget, so both are cut into rows (in 128-row
  // block rows from 1 MiB up).
  Dict in = tiny_deepseek(rng, 2, 1, 3, 260, 300, 300, 136);
  write_checkpoint(tmp / "hf", in, 3, "deepseek_v3");
  const Dict want = ref_deepseek_from_hf(in, {});
  expect_same_files_for_every_setting(
      tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.plan.max_shard_size = 400'000; }),
      {{1, 1, 256 << 10}, {2, 1, 1 << 20}, {4, 3, 2 << 20}, {4, 2, 64 << 20}, {1, 1, 256 << 20}});
  expect_identical(read_checkpoint(tmp / "n"), want);
}

TEST(DeepseekSynth, WritesTheRealInventoryScaledAndConvertsBothWays) {
  TempDir tmp;
  SynthOptions o;
  o.out = tmp / "hf";
  o.model = "deepseek_v3";
  o.layers = 4; // 3 dense, 1 MoE, then the MTP layer 4
  o.scale_hidden = o.scale_experts = o.scale_vocab = o.scale_intermediate = 16;
  o.max_shard_size = 3'000'000;
  ASSERT_TRUE(synth(o, Io::system(), {}).ok());
  auto ck = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  EXPECT_EQ(ck->config_model_type, "deepseek_v3");
  // Per layer: 5 attention weights + 5 scales + 4 norms; dense: 3 + 3; MoE: gate, bias,
  // shared 3 + 3, routed 16 x 6. MTP: a MoE layer + embed, enorm, hnorm, eh_proj, 2 head.
  const uint64_t attn = 14, dense = 6, moe = 2 + 6 + 16 * 6;
  EXPECT_EQ(ck->tensors.size(), 3 * (attn + dense) + 2 * (attn + moe) + 6 + 3);
  auto info = [&](const std::string& name) { return ck->info(ck->tensors.at(name)); };
  using Shape = std::vector<uint64_t>;
  EXPECT_EQ(info("model.layers.3.mlp.experts.15.gate_proj.weight").shape, (Shape{128, 448}));
  EXPECT_EQ(info("model.layers.3.mlp.experts.15.gate_proj.weight").dtype, DType::F8_E4M3);
  EXPECT_EQ(info("model.layers.3.mlp.experts.15.gate_proj.weight_scale_inv").shape, (Shape{1, 4}));
  EXPECT_EQ(info("model.layers.3.mlp.experts.15.gate_proj.weight_scale_inv").dtype, DType::F32);
  EXPECT_EQ(info("model.layers.0.mlp.down_proj.weight").shape, (Shape{448, 1152}));
  EXPECT_EQ(info("model.layers.0.self_attn.q_b_proj.weight").shape, (Shape{8 * 12, 96}));
  EXPECT_EQ(info("model.layers.0.self_attn.kv_a_proj_with_mqa.weight").shape, (Shape{36, 448}));
  EXPECT_EQ(info("model.layers.0.self_attn.kv_b_proj.weight").shape, (Shape{8 * 16, 32}));
  EXPECT_EQ(info("model.layers.0.self_attn.o_proj.weight").shape, (Shape{448, 64}));
  EXPECT_EQ(info("model.layers.3.mlp.gate.e_score_correction_bias").dtype, DType::F32);
  EXPECT_EQ(info("model.layers.4.eh_proj.weight").shape, (Shape{448, 896}));
  EXPECT_EQ(info("model.layers.4.shared_head.head.weight").shape, (Shape{8080, 448}));
  EXPECT_EQ(info("lm_head.weight").shape, (Shape{8080, 448}));
  Dict in = read_checkpoint(tmp / "hf");
  ASSERT_TRUE(run(tmp / "hf", tmp / "n").ok());
  const Dict native = ref_deepseek_from_hf(in, {});
  expect_identical(read_checkpoint(tmp / "n"), native);
  ASSERT_TRUE(run(tmp / "n", tmp / "back").ok());
  expect_identical(read_checkpoint(tmp / "back"), ref_deepseek_to_hf(native, {}));
}

} // namespace
} // namespace shardshift
