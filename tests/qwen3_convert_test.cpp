// qwen3_convert_test.cpp: qwen3_moe conversions (docs/semantics.md section 14) against the
// independent reference (tests/reference/), both directions, every dtype, pieces of one expert
// spread over shards, chunking inside one expert, and the refusals.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/synth.h"

#include "convert_harness.h"
#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "test_support.h"

#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::files_of;

// Every file of a directory, by name, as bytes.
bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST_F(ConvertTest, Qwen3FromHfMatchesTheReferenceForEveryDtype) {
  const std::optional<DType> casts[] = {std::nullopt, DType::BF16, DType::F16, DType::F32};
  for (DType expert : {DType::BF16, DType::F16, DType::F32}) {
    Dict in = tiny_qwen3(rng, 2, 4, 6, 5, expert, true, /*special=*/true);
    const fs::path hf = tmp / ("hf" + std::string(dtype_name(expert)));
    write_checkpoint(hf, in, 3, "qwen3_moe");
    for (std::optional<DType> cast : casts) {
      SCOPED_TRACE(std::string(dtype_name(expert)) + " --dtype " +
                   (cast ? std::string(dtype_name(*cast)) : "keep"));
      const fs::path out = tmp / "n";
      auto r = run(hf, out, opts([&](ConvertOptions& o) {
                     o.plan.expert_dtype = cast;
                     o.force = true;
                   }));
      ASSERT_TRUE(r.ok()) << r.status().message();
      // Without --dtype the reference casts to config.json's torch_dtype, BF16 when absent
      // (this config.json names the model only).
      RefOptions ro;
      ro.cast = cast.value_or(DType::BF16);
      expect_same(read_checkpoint(out), ref_qwen3_from_hf(in, ro));
    }
  }
}

TEST_F(ConvertTest, Qwen3LayoutIsGateThenUpAlongTheLastAxis) {
  // One hand-checked element per block, independent of both converters' loops.
  Dict in = tiny_qwen3(rng, 1, 3, 4, 2);
  write_checkpoint(tmp / "hf", in);
  ASSERT_TRUE(run(tmp / "hf", tmp / "n").ok());
  Dict got = read_checkpoint(tmp / "n");
  const Tensor& gu = got.at("model.layers.0.mlp.experts.gate_and_up_projs");
  const Tensor& dn = got.at("model.layers.0.mlp.experts.down_projs");
  ASSERT_EQ(gu.shape, (std::vector<uint64_t>{3, 4, 4}));
  ASSERT_EQ(dn.shape, (std::vector<uint64_t>{3, 2, 4}));
  // gate_and_up[e=2][h=3][j=1] = gate_2[1][3]; [2][3][2 + 1] = up_2[1][3]; down[2][1][3] =
  // down_2[3][1].
  EXPECT_EQ(get_bits(gu, (2 * 4 + 3) * 4 + 1),
            get_bits(in.at("model.layers.0.mlp.experts.2.gate_proj.weight"), 1 * 4 + 3));
  EXPECT_EQ(get_bits(gu, (2 * 4 + 3) * 4 + 3),
            get_bits(in.at("model.layers.0.mlp.experts.2.up_proj.weight"), 1 * 4 + 3));
  EXPECT_EQ(get_bits(dn, (2 * 2 + 1) * 4 + 3),
            get_bits(in.at("model.layers.0.mlp.experts.2.down_proj.weight"), 3 * 2 + 1));
  // Router, attention and norms keep their names and bytes.
  EXPECT_EQ(got.at("model.layers.0.mlp.gate.weight").bytes,
            in.at("model.layers.0.mlp.gate.weight").bytes);
  EXPECT_EQ(got.size(), in.size() - 3 * 3 + 2);
}

TEST_F(ConvertTest, Qwen3ToHfMatchesTheReferenceForEveryDtype) {
  for (DType expert : {DType::BF16, DType::F16, DType::F32}) {
    Dict native = ref_qwen3_from_hf(tiny_qwen3(rng, 2, 3, 5, 4, expert, true, true), {});
    native["model.layers.0.self_attn._extra_state"] = random_tensor(rng, DType::U8, {4});
    const fs::path in = tmp / ("native" + std::string(dtype_name(expert)));
    write_checkpoint(in, native, 2, "qwen3_moe");
    for (std::optional<DType> cast : {std::optional<DType>(), std::optional(DType::F32)}) {
      auto r = run(in, tmp / "hf", opts([&](ConvertOptions& o) {
                     o.plan.expert_dtype = cast;
                     o.force = true;
                   }));
      ASSERT_TRUE(r.ok()) << r.status().message();
      RefOptions ro;
      ro.cast = cast;
      Dict got = read_checkpoint(tmp / "hf");
      expect_same(got, ref_qwen3_to_hf(native, ro));
      EXPECT_EQ(got.count("model.layers.0.self_attn._extra_state"), 0u); // the default --exclude
    }
  }
}

TEST_F(ConvertTest, Qwen3RoundTripIsByteIdenticalWithAndWithoutModelPrefix) {
  for (bool prefix : {true, false}) {
    Dict in = tiny_qwen3(rng, 2, 5, 8, 6, DType::BF16, prefix, true);
    write_checkpoint(tmp / "hf", in, 3, "qwen3_moe");
    ASSERT_TRUE(run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.force = true; })).ok());
    ASSERT_TRUE(run(tmp / "n", tmp / "back", opts([](ConvertOptions& o) { o.force = true; })).ok());
    Dict back = read_checkpoint(tmp / "back");
    if (prefix) {
      ASSERT_EQ(back.size(), in.size());
      for (auto& [name, t] : in) {
        ASSERT_TRUE(back.count(name)) << name;
        EXPECT_EQ(back.at(name).dtype, t.dtype) << name;
        EXPECT_EQ(back.at(name).shape, t.shape) << name;
        EXPECT_TRUE(back.at(name).bytes == t.bytes) << name;
      }
    } else {
      // to_hf always writes experts under `model.` (14.3); the rest keeps its names.
      EXPECT_TRUE(back.count("model.layers.1.mlp.experts.4.up_proj.weight"));
      EXPECT_EQ(back.at("model.layers.1.mlp.experts.4.up_proj.weight").bytes,
                in.at("layers.1.mlp.experts.4.up_proj.weight").bytes);
      EXPECT_TRUE(back.count("layers.1.mlp.gate.weight"));
    }
  }
}

TEST_F(ConvertTest, Qwen3BytesAreTheSameForEveryThreadsWritersAndBudget) {
  // Experts of H 128, I 160: one expert's gate_and_up is 80 KiB, over the 64 KiB chunk of the
  // 256 KiB budget (and of 1 MiB with 3 writers), so it is cut into rows; its pieces are in
  // three different shards.
  Dict in = tiny_qwen3(rng, 2, 4, 128, 160);
  write_checkpoint(tmp / "hf", in, 3);
  expect_same_files_for_every_setting(
      tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.plan.max_shard_size = 400'000; }),
      {{1, 1, 256 << 10}, {2, 1, 1 << 20}, {4, 3, 1 << 20}, {4, 2, 64 << 20}, {1, 1, 256 << 20}});
  expect_same(read_checkpoint(tmp / "n"), ref_qwen3_from_hf(in, {}));
}

TEST_F(ConvertTest, Qwen3MissingOrMisshapenExpertPiecesAreNamedBeforeAnyWrite) {
  Dict in = tiny_qwen3(rng, 2, 4, 6, 5);
  in.erase("model.layers.1.mlp.experts.2.up_proj.weight");
  in["model.layers.0.mlp.experts.1.down_proj.weight"] = random_tensor(rng, DType::BF16, {6, 4});
  in["model.layers.0.mlp.experts.3.gate_proj.weight"] = random_tensor(rng, DType::F16, {5, 6});
  write_checkpoint(tmp / "hf", in, 2);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  const std::string& m = r.status().message();
  EXPECT_TRUE(contains(m, "model.layers.1: 'model.layers.1.mlp.experts.gate_and_up_projs' needs "
                          "every expert 0-3 (2 pieces each); missing: expert 2 up_proj"))
      << m;
  EXPECT_TRUE(contains(m, "model.layers.0: expert 1 down_proj "
                          "'model.layers.0.mlp.experts.1.down_proj.weight' has shape [6, 4]"))
      << m;
  EXPECT_TRUE(contains(m, "model.layers.0: expert 3 gate_proj "
                          "'model.layers.0.mlp.experts.3.gate_proj.weight' is F16"))
      << m;
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

// A layer whose experts lack one kind of piece altogether (every down_proj, or every gate_proj
// and up_proj) is refused: there is no stack to find it missing from, and it converted into a
// layer without that stacked tensor.
TEST_F(ConvertTest, Qwen3ALayerWithoutOneKindOfPieceIsRefused) {
  for (const std::vector<std::string> kinds :
       {std::vector<std::string>{"down_proj"}, std::vector<std::string>{"gate_proj", "up_proj"}}) {
    SCOPED_TRACE(kinds.front());
    Dict in = tiny_qwen3(rng, 2, 4, 6, 5);
    for (int e = 0; e < 4; ++e)
      for (const std::string& kind : kinds)
        ASSERT_EQ(
            in.erase("model.layers.1.mlp.experts." + std::to_string(e) + "." + kind + ".weight"),
            1u);
    fs::remove_all(tmp / "hf");
    write_checkpoint(tmp / "hf", in, 2);
    auto r = run(tmp / "hf", tmp / "n");
    ASSERT_FALSE(r.ok());
    const std::string& m = r.status().message();
    const std::string missing =
        kinds.size() == 1 ? "gate_proj and up_proj (for " : "down_proj (for ";
    EXPECT_TRUE(contains(m, "model.layers.1: its experts have " + missing)) << m;
    EXPECT_TRUE(contains(m, "but no " +
                                (kinds.size() == 1 ? std::string("down_proj")
                                                   : std::string("gate_proj and up_proj")) +
                                " at all"))
        << m;
    EXPECT_FALSE(fs::exists(tmp / "n"));
  }
}

// Rule 14.2.8: a far expert index is counted, not listed piece by piece (the plan stays small),
// and an index or a stacked axis past 65536 experts is refused with the number.
TEST_F(ConvertTest, Qwen3FarExpertIndexIsCountedAndTooManyExpertsAreRefused) {
  Dict in = tiny_qwen3(rng, 1, 2, 4, 3);
  in["model.layers.0.mlp.experts.60000.down_proj.weight"] = random_tensor(rng, DType::BF16, {4, 3});
  write_checkpoint(tmp / "far", in);
  auto far = run(tmp / "far", tmp / "n");
  ASSERT_FALSE(far.ok());
  // Experts 0-60000: down_projs has 3 of its 60001 pieces (59998 missing, 8 listed),
  // gate_and_up_projs 4 of its 120002 (119998 missing, 8 listed).
  EXPECT_TRUE(contains(far.status().message(),
                       "'model.layers.0.mlp.experts.down_projs' needs every expert 0-60000 (1 "
                       "pieces each); missing: expert 2 down_proj, expert 3 down_proj"))
      << far.status().message();
  EXPECT_TRUE(contains(far.status().message(), "(and 59990 more)")) << far.status().message();
  EXPECT_TRUE(contains(far.status().message(), "(and 119990 more)")) << far.status().message();

  in.erase("model.layers.0.mlp.experts.60000.down_proj.weight");
  in["model.layers.0.mlp.experts.65536.up_proj.weight"] = random_tensor(rng, DType::BF16, {3, 4});
  write_checkpoint(tmp / "huge", in);
  auto huge = run(tmp / "huge", tmp / "n");
  ASSERT_FALSE(huge.ok());
  EXPECT_TRUE(contains(huge.status().message(),
                       "expert index '65536' is too large (shardshift takes at most 65536 "
                       "experts per layer)"))
      << huge.status().message();

  // to_hf: a stacked tensor of no bytes may claim any number of experts.
  Dict native = ref_qwen3_from_hf(tiny_qwen3(rng, 1, 2, 4, 3), {});
  native["model.layers.0.mlp.experts.gate_and_up_projs"] =
      random_tensor(rng, DType::BF16, {65537, 0, 6});
  write_checkpoint(tmp / "native", native);
  auto split = run(tmp / "native", tmp / "h");
  ASSERT_FALSE(split.ok());
  EXPECT_TRUE(contains(split.status().message(),
                       "stacked expert tensor [65537, 0, 6] has more than 65536 experts"))
      << split.status().message();
  EXPECT_FALSE(fs::exists(tmp / "n"));
  EXPECT_FALSE(fs::exists(tmp / "h"));
}

TEST_F(ConvertTest, Qwen3Fp8ScaleTensorsAndDuplicateExpertsAreRefused) {
  Dict in = tiny_qwen3(rng, 1, 2, 4, 3);
  in["model.layers.0.mlp.experts.0.gate_proj.weight_scale_inv"] =
      random_tensor(rng, DType::F32, {1, 1});
  in["model.layers.0.mlp.experts.01.up_proj.weight"] = random_tensor(rng, DType::BF16, {3, 4});
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  const std::string& m = r.status().message();
  EXPECT_TRUE(contains(m, "model.layers.0.mlp.experts.0.gate_proj.weight_scale_inv")) << m;
  EXPECT_TRUE(contains(m, "FP8 block scale: shardshift does not dequantize qwen3_moe")) << m;
  EXPECT_TRUE(contains(m, "expert 1 already has its up_proj")) << m;
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

// Semantics 14.5: the expert LoRA layouts the reference recombines are refused, never passed
// through under their own names: per-expert LoRA (from_hf), PEFT's ParamWrapper layout
// (`experts.lora_A.weight`, `experts.base_layer.lora_B.weight`: the reference reshapes them into
// grouped LoRA), and grouped LoRA (to_hf). Each key is named; nothing is written.
TEST_F(ConvertTest, Qwen3AndDeepseekExpertLoraLayoutsAreRefused) {
  struct Case {
    std::string model, key;
    std::string says;
  };
  for (const Case& c :
       {Case{"qwen3_moe", "model.layers.0.mlp.experts.1.gate_proj.lora_A.weight",
             "per-expert LoRA weights are not supported for qwen3_moe"},
        Case{"qwen3_moe", "model.layers.0.mlp.experts.lora_A.weight",
             "PEFT's ParamWrapper layout are not supported for qwen3_moe"},
        Case{"qwen3_moe", "base_model.model.model.layers.0.mlp.experts.base_layer.lora_B.weight",
             "PEFT's ParamWrapper layout are not supported for qwen3_moe"},
        Case{"deepseek_v3", "model.layers.1.mlp.experts.lora_B.weight",
             "PEFT's ParamWrapper layout are not supported for deepseek_v3"},
        Case{"deepseek_v3", "model.layers.1.mlp.experts.base_layer.lora_A.weight",
             "PEFT's ParamWrapper layout are not supported for deepseek_v3"}}) {
    SCOPED_TRACE(c.key);
    Dict in = c.model == "qwen3_moe" ? tiny_qwen3(rng, 1, 2, 4, 3)
                                     : tiny_deepseek(rng, 2, 1, 2, 130, 20, 24, 16);
    in[c.key] = random_tensor(rng, DType::BF16, {2, 4});
    const fs::path hf = tmp / "hf";
    fs::remove_all(hf);
    write_checkpoint(hf, in, 1, c.model);
    auto r = run(hf, tmp / "n");
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(contains(r.status().message(), c.key)) << r.status().message();
    EXPECT_TRUE(contains(r.status().message(), c.says)) << r.status().message();
    EXPECT_FALSE(fs::exists(tmp / "n"));
  }
  // A ParamWrapper-like key outside a `layers.N` path is not the reference's pattern either: it
  // passes through under its name, as there.
  Dict mtp = tiny_qwen3(rng, 1, 2, 4, 3);
  mtp["model.mtp.mlp.experts.lora_A.weight"] = random_tensor(rng, DType::BF16, {2, 4});
  write_checkpoint(tmp / "mtp", mtp, 1, "qwen3_moe");
  ASSERT_TRUE(run(tmp / "mtp", tmp / "mtp-n").ok());
  EXPECT_TRUE(read_checkpoint(tmp / "mtp-n").count("model.mtp.mlp.experts.lora_A.weight"));
  // Grouped LoRA in a native checkpoint (to_hf).
  Dict native = ref_qwen3_from_hf(tiny_qwen3(rng, 1, 2, 4, 3), {});
  native["model.layers.0.mlp.experts.lora_gate_and_up_A"] = random_tensor(rng, DType::BF16, {2, 4});
  write_checkpoint(tmp / "native", native, 1, "qwen3_moe");
  auto r = run(tmp / "native", tmp / "h");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(contains(r.status().message(), "grouped-expert LoRA weights are not supported"))
      << r.status().message();
  EXPECT_FALSE(fs::exists(tmp / "h"));
}

// Semantics 14.3.6: the reference's to_hf splits gate_and_up_projs at config.json's
// moe_intermediate_size whatever the tensor holds, and passes down_projs through unsplit when its
// axis 1 differs; shardshift splits at the tensor's middle, so a disagreement is refused, naming
// both tensors of the layer. A config.json that agrees converts. One that gives no size is read
// as the reference's config class reads it, with its default (768 for Qwen3-MoE, 2048 for
// DeepSeek-V3): other sizes are refused, saying what to add; that size converts.
TEST_F(ConvertTest, Qwen3AndDeepseekToHfRefuseAnIntermediateSizeConfigJsonDoesNotGive) {
  for (const std::string model : {"qwen3_moe", "deepseek_v3"}) {
    SCOPED_TRACE(model);
    const Dict hf = model == "qwen3_moe" ? tiny_qwen3(rng, 1, 2, 4, 3)
                                         : tiny_deepseek(rng, 2, 1, 2, 130, 20, 24, 16);
    const uint64_t i = model == "qwen3_moe" ? 3 : 20;
    const Dict native = model == "qwen3_moe" ? ref_qwen3_from_hf(hf, {}) : ref_deepseek_from_hf(hf, {});
    const fs::path dir = tmp / ("native-" + model);
    write_checkpoint(dir, native, 1, model);
    for (const uint64_t said : {i + 1, i - 1, i}) {
      testing::write_bytes(dir / "config.json", "{\"model_type\": \"" + model +
                                                    "\", \"moe_intermediate_size\": " +
                                                    std::to_string(said) + "}\n");
      fs::remove_all(tmp / "h");
      auto r = run(dir, tmp / "h");
      if (said == i) {
        EXPECT_TRUE(r.ok()) << r.status().message();
        continue;
      }
      ASSERT_FALSE(r.ok());
      const std::string& m = r.status().message();
      EXPECT_TRUE(contains(m, "mlp.experts.gate_and_up_projs': has an expert intermediate size of " +
                                  std::to_string(i) + ", but config.json's moe_intermediate_size is " +
                                  std::to_string(said)))
          << m;
      EXPECT_TRUE(contains(m, "mlp.experts.down_projs': has an expert intermediate size of " +
                                  std::to_string(i)))
          << m;
      EXPECT_FALSE(fs::exists(tmp / "h"));
    }
    testing::write_bytes(dir / "config.json", "{\"model_type\": \"" + model + "\"}\n");
    fs::remove_all(tmp / "h");
    auto r = run(dir, tmp / "h");
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(contains(r.status().message(),
                         "mlp.experts.gate_and_up_projs': has an expert intermediate size of " +
                             std::to_string(i) + ", but config.json gives no " +
                             "moe_intermediate_size, which the reference's " + model +
                             " config then takes as " + (model == "qwen3_moe" ? "768" : "2048") +
                             ": the reference's to_hf would split it at"))
        << r.status().message();
    EXPECT_TRUE(contains(r.status().message(),
                         "give \"moe_intermediate_size\": " + std::to_string(i) + " in config.json"))
        << r.status().message();
    EXPECT_FALSE(fs::exists(tmp / "h"));
  }
  // Experts of the default size convert with no size given, as the reference's split.
  const Dict hf = tiny_qwen3(rng, 1, 2, 4, 768);
  const Dict native = ref_qwen3_from_hf(hf, {});
  const fs::path dir = tmp / "native-default";
  write_checkpoint(dir, native, 1, "qwen3_moe");
  testing::write_bytes(dir / "config.json", "{\"model_type\": \"qwen3_moe\"}\n");
  auto r = run(dir, tmp / "h-default");
  ASSERT_TRUE(r.ok()) << r.status().message();
  expect_same(read_checkpoint(tmp / "h-default"), ref_qwen3_to_hf(native, {}));
}

// Found by the audit of 2026-12-06 (semantics 14.2, 14.3.3, 14.3.6, 14.4): inputs the reference
// takes that shardshift converted otherwise, each now converted as there or refused.
TEST_F(ConvertTest, Qwen3InputsTheReferenceTakesDifferentlyAreConvertedAsThereOrRefused) {
  // 8-bit float experts without scales: the reference would decode them; they were read as F32
  // (past the end of each piece). Refused, naming a piece.
  for (const DType fp8 : {DType::F8_E4M3, DType::F8_E5M2}) {
    SCOPED_TRACE(dtype_name(fp8));
    const fs::path dir = tmp / ("fp8-" + std::string(dtype_name(fp8)));
    write_checkpoint(dir, tiny_qwen3(rng, 1, 2, 4, 3, fp8), 1, "qwen3_moe");
    auto r = run(dir, tmp / "fp8-out");
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(contains(r.status().message(), "mlp.experts.0.") &&
                contains(r.status().message(), "cannot cast " + std::string(dtype_name(fp8))))
        << r.status().message();
    EXPECT_FALSE(fs::exists(tmp / "fp8-out"));
  }

  // Keys under `model.language_model.` and no config.json: the reference's expert pattern takes
  // them; they were detected as gemma4_moe and copied unchanged.
  Dict prefixed;
  const Dict plain = tiny_qwen3(rng, 1, 2, 4, 3);
  for (const auto& [name, t] : plain)
    prefixed["model.language_model." + name.substr(std::string("model.").size())] = t;
  write_checkpoint(tmp / "lm", prefixed);
  auto ck = Checkpoint::open(tmp / "lm");
  ASSERT_TRUE(ck.ok());
  auto plan = make_plan(*ck, {});
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->adapter, "qwen3_moe");
  ASSERT_TRUE(run(tmp / "lm", tmp / "lm-out").ok());
  const Dict lm = read_checkpoint(tmp / "lm-out");
  EXPECT_EQ(lm.count("model.language_model.layers.0.mlp.experts.gate_and_up_projs"), 1u);
  EXPECT_EQ(lm.count("model.language_model.layers.0.mlp.experts.0.gate_proj.weight"), 0u);

  // config.json's num_experts other than the checkpoint's experts: the reference stacks that
  // many (the first ones twice, or it fails). Refused; the count that agrees converts.
  const Dict four = tiny_qwen3(rng, 1, 4, 4, 3);
  write_checkpoint(tmp / "count", four, 1, "qwen3_moe");
  for (const int said : {2, 5, 4}) {
    SCOPED_TRACE(said);
    testing::write_bytes(tmp / "count" / "config.json",
                         "{\"model_type\": \"qwen3_moe\", \"num_experts\": " +
                             std::to_string(said) + "}");
    fs::remove_all(tmp / "count-out");
    auto r = run(tmp / "count", tmp / "count-out");
    if (said == 4) {
      EXPECT_TRUE(r.ok()) << r.status().message();
      continue;
    }
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(contains(r.status().message(),
                         "the checkpoint's experts are 0-3 (4), but config.json's num_experts is " +
                             std::to_string(said) + ": the reference stacks that many"))
        << r.status().message();
  }

  // to_hf: a name that holds the marker before its end and ends like it, which the reference
  // splits as a stacked tensor: refused.
  Dict native = ref_qwen3_from_hf(tiny_qwen3(rng, 1, 2, 4, 3), {});
  native["model.layers.0.mlp.experts.gate_and_up_projs_ema.gate_and_up_projs"] =
      native.at("model.layers.0.mlp.experts.gate_and_up_projs");
  write_checkpoint(tmp / "marker", native, 1, "qwen3_moe");
  auto marker = run(tmp / "marker", tmp / "marker-out");
  ASSERT_FALSE(marker.ok());
  EXPECT_TRUE(contains(marker.status().message(),
                       "gate_and_up_projs_ema.gate_and_up_projs': the name holds "
                       "'.mlp.experts.gate_and_up_projs' (or 'down_projs') before its end"))
      << marker.status().message();

  // to_hf: a moe_intermediate_size that is no whole number, which the reference splits at (or
  // fails on): refused, whatever the tensors hold.
  const Dict good = ref_qwen3_from_hf(tiny_qwen3(rng, 1, 2, 4, 3), {});
  write_checkpoint(tmp / "odd", good, 1, "qwen3_moe");
  // The expert count likewise, in both directions (the re-audit found it was ignored).
  const std::pair<const char*, const char*> cases[] = {
      {"odd", "moe_intermediate_size"}, {"odd", "num_experts"}, {"count", "num_experts"}};
  for (const std::string odd : {"3.0", "-1", "null", "\"3\""})
    for (const auto& [dir, key] : cases) {
      SCOPED_TRACE(odd + " " + dir + " " + key);
      testing::write_bytes(tmp / dir / "config.json", "{\"model_type\": \"qwen3_moe\", \"" +
                                                          std::string(key) + "\": " + odd + "}");
      auto r = run(tmp / dir, tmp / "odd-out");
      ASSERT_FALSE(r.ok());
      EXPECT_TRUE(contains(r.status().message(), "config.json's " + std::string(key) + " is " +
                                                     odd + ", not a whole number"))
          << r.status().message();
      EXPECT_FALSE(fs::exists(tmp / "odd-out"));
    }
}

TEST_F(ConvertTest, Qwen3ToHfRefusesSizesThatDisagreeAndExpertParallel) {
  // (from_hf's expert-parallel export: tests/convert_ep_test.cpp.)
  Dict native = ref_qwen3_from_hf(tiny_qwen3(rng, 1, 3, 6, 4), {});
  native["model.layers.0.mlp.experts.down_projs"] = random_tensor(rng, DType::BF16, {3, 5, 6});
  write_checkpoint(tmp / "native", native);
  auto r = run(tmp / "native", tmp / "hf");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(contains(r.status().message(), "layers.0: the expert sizes of"))
      << r.status().message();

  write_checkpoint(tmp / "native2", ref_qwen3_from_hf(tiny_qwen3(rng, 1, 4, 4, 2), {}));
  auto ep = run(tmp / "native2", tmp / "h", opts([](ConvertOptions& o) { o.plan.ep_size = 2; }));
  ASSERT_FALSE(ep.ok());
  EXPECT_TRUE(contains(ep.status().message(), "applies to from_hf only")) << ep.status().message();
}

TEST_F(ConvertTest, Qwen3IsDetectedFromConfigAndFromKeysInBothDirections) {
  Dict in = tiny_qwen3(rng, 1, 2, 4, 3);
  write_checkpoint(tmp / "keys", in);
  write_checkpoint(tmp / "config", in, 1, "qwen3_moe");
  for (const char* dir : {"keys", "config"}) {
    auto ck = Checkpoint::open(tmp / dir);
    ASSERT_TRUE(ck.ok());
    auto plan = make_plan(*ck, {});
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    EXPECT_EQ(plan->adapter, "qwen3_moe");
    EXPECT_EQ(plan->direction, Direction::from_hf);
  }
  write_checkpoint(tmp / "native", ref_qwen3_from_hf(in, {}));
  // No model_type: the keys name the model. (The experts' size is given: without it to_hf takes
  // the reference's default, which these tiny experts do not have.)
  testing::write_bytes(tmp / "native" / "config.json", "{\"moe_intermediate_size\": 3}");
  auto ck = Checkpoint::open(tmp / "native");
  ASSERT_TRUE(ck.ok());
  auto plan = make_plan(*ck, {});
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->adapter, "qwen3_moe");
  EXPECT_EQ(plan->direction, Direction::to_hf);
}

TEST(Qwen3Synth, WritesTheRealInventoryScaledAndConvertsBothWays) {
  TempDir tmp;
  SynthOptions o;
  o.out = tmp / "hf";
  o.model = "qwen3_moe";
  o.layers = 2;
  o.scale_hidden = o.scale_experts = o.scale_vocab = o.scale_intermediate = 8;
  o.max_shard_size = 3'000'000;
  ASSERT_TRUE(synth(o, Io::system(), {}).ok());
  auto ck = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(ck.ok()) << ck.status().message();
  EXPECT_EQ(ck->config_model_type, "qwen3_moe");
  // 16 experts x 3 per layer, 9 other tensors per layer, embedding, norm, head.
  EXPECT_EQ(ck->tensors.size(), 2u * (16 * 3 + 9) + 3);
  auto shape = [&](const std::string& name) { return ck->info(ck->tensors.at(name)).shape; };
  EXPECT_EQ(shape("model.layers.1.mlp.experts.15.gate_proj.weight"),
            (std::vector<uint64_t>{96, 256}));
  EXPECT_EQ(shape("model.layers.1.mlp.experts.15.down_proj.weight"),
            (std::vector<uint64_t>{256, 96}));
  EXPECT_EQ(shape("model.layers.0.self_attn.q_proj.weight"), (std::vector<uint64_t>{512, 256}));
  EXPECT_EQ(shape("model.layers.0.self_attn.k_norm.weight"), (std::vector<uint64_t>{16}));
  EXPECT_EQ(shape("lm_head.weight"), (std::vector<uint64_t>{18992, 256}));
  Dict in = read_checkpoint(tmp / "hf");
  ASSERT_TRUE(run(tmp / "hf", tmp / "n").ok());
  expect_same(read_checkpoint(tmp / "n"), ref_qwen3_from_hf(in, {}));
  ASSERT_TRUE(run(tmp / "n", tmp / "back").ok());
  Dict back = read_checkpoint(tmp / "back");
  ASSERT_EQ(back.size(), in.size());
  for (auto& [name, t] : in)
    EXPECT_TRUE(back.count(name) && back.at(name).bytes == t.bytes) << name;
}

} // namespace
} // namespace shardshift
