// convert_test.cpp: whole conversions on small synthetic checkpoints, compared element by element
// with the independent reference of tests/reference (convert_reference.h): dtype combinations,
// round trips, the tied head, exclusion patterns, gemma4_moe layouts.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"

#include "convert_harness.h"
#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "test_support.h"

#include <cmath>
#include <functional>
#include <optional>
#include <string>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

TEST_F(ConvertTest, ReferenceRoundingMatchesHandPickedCases) {
  // The reference itself: exact ties go to even, overflow to infinity, subnormals kept.
  EXPECT_EQ(encode(DType::BF16, 1.0), 0x3F80u);
  EXPECT_EQ(encode(DType::BF16, 1.0 + std::ldexp(1, -8)), 0x3F80u);     // tie -> even (down)
  EXPECT_EQ(encode(DType::BF16, 1.0 + 3 * std::ldexp(1, -8)), 0x3F82u); // tie -> even (up)
  EXPECT_EQ(encode(DType::F16, 65520.0), 0x7C00u);                      // rounds to inf
  EXPECT_EQ(encode(DType::F16, 65504.0), 0x7BFFu);
  EXPECT_EQ(encode(DType::F16, std::ldexp(1, -24)), 0x0001u); // smallest subnormal
  EXPECT_EQ(encode(DType::F16, std::ldexp(1, -25)), 0x0000u); // tie -> even (zero)
  EXPECT_EQ(encode(DType::F16, -0.0), 0x8000u);
  EXPECT_EQ(decode(DType::F16, 0x3C00), 1.0);
}

TEST_F(ConvertTest, FromHfDiffusionMatchesReference) {
  Dict in = tiny_diffusion(rng, 2, 4, 16, 6);
  write_checkpoint(tmp / "hf", in, 2, "diffusion_gemma");
  auto r = run(tmp / "hf", tmp / "native");
  ASSERT_TRUE(r.ok()) << r.status().message();
  Dict got = read_checkpoint(tmp / "native");
  expect_same(got, ref_from_hf(in, true, {}));
  // Shapes: gate_and_up [E, H, 2I], down [E, I, H]; encoder keys dropped; the scale consumed.
  EXPECT_EQ(got.at("model.layers.0.moe.experts.gate_and_up_projs").shape,
            (std::vector<uint64_t>{4, 16, 12}));
  EXPECT_EQ(got.at("model.layers.1.moe.experts.down_projs").shape,
            (std::vector<uint64_t>{4, 6, 16}));
  EXPECT_EQ(got.count("model.layers.0.router.per_expert_scale"), 0u);
  EXPECT_EQ(got.at("lm_head.weight").bytes, in.at("model.decoder.embed_tokens.weight").bytes);
  EXPECT_EQ(r->dropped, 1u + 2u + 2u); // vision tower, 2 encoder layer_scalars, 2 scales
  EXPECT_TRUE(fs::exists(tmp / "native" / "config.json"));
}

TEST_F(ConvertTest, PlainFoldEqualsDirectMultiply) {
  // One expert layer, BF16 x BF16: down_projs[e][j][i] == bf16(float(down[e][i][j]) *
  // float(scale[e])).
  Dict in = tiny_diffusion(rng, 1, 3, 5, 4);
  write_checkpoint(tmp / "hf", in);
  ASSERT_TRUE(run(tmp / "hf", tmp / "n").ok());
  const Dict out = read_checkpoint(tmp / "n");
  const Tensor& got = out.at("model.layers.0.moe.experts.down_projs");
  const Tensor& down = in.at("model.decoder.layers.0.experts.down_proj");
  const Tensor& scale = in.at("model.decoder.layers.0.router.per_expert_scale");
  for (uint64_t e = 0; e < 3; ++e)
    for (uint64_t j = 0; j < 4; ++j)
      for (uint64_t i = 0; i < 5; ++i) {
        float direct = static_cast<float>(decode(DType::BF16, get_bits(down, e * 20 + i * 4 + j))) *
                       static_cast<float>(decode(DType::BF16, get_bits(scale, e)));
        EXPECT_EQ(get_bits(got, e * 20 + j * 5 + i), encode(DType::BF16, direct))
            << e << "," << j << "," << i;
      }
}

TEST_F(ConvertTest, EveryDtypeCombinationWithSpecialValues) {
  const DType floats[] = {DType::BF16, DType::F16, DType::F32};
  const std::optional<DType> casts[] = {std::nullopt, DType::BF16, DType::F16, DType::F32};
  for (DType expert : floats)
    for (DType scale : floats)
      for (auto cast : casts) {
        SCOPED_TRACE(std::string(dtype_name(expert)) + " x " + std::string(dtype_name(scale)) +
                     " -> " + (cast ? std::string(dtype_name(*cast)) : "keep"));
        TempDir t;
        Dict in = tiny_diffusion(rng, 1, 3, 7, 5, expert, scale, /*special=*/true);
        write_checkpoint(t / "hf", in);
        RefOptions ro;
        ro.cast = cast;
        auto r =
            run(t / "hf", t / "n", opts([&](ConvertOptions& o) { o.plan.expert_dtype = cast; }));
        ASSERT_TRUE(r.ok()) << r.status().message();
        expect_same(read_checkpoint(t / "n"), ref_from_hf(in, true, ro));
      }
}

TEST_F(ConvertTest, NativeToHfToNativeIsBitExact) {
  Dict hf = tiny_diffusion(rng, 2, 4, 8, 3);
  write_checkpoint(tmp / "hf", hf);
  ASSERT_TRUE(run(tmp / "hf", tmp / "native").ok());
  ASSERT_TRUE(run(tmp / "native", tmp / "hf2").ok());
  ASSERT_TRUE(run(tmp / "hf2", tmp / "native2").ok());
  Dict native = read_checkpoint(tmp / "native");
  // The scales come back as ones, so folding again is exact: native -> HF -> native is the
  // identity.
  expect_same(read_checkpoint(tmp / "native2"), native);
  expect_same(read_checkpoint(tmp / "hf2"), ref_to_hf(native, true, {}));
}

TEST_F(ConvertTest, HfToNativeToHfKeepsTheFoldedProduct) {
  Dict hf = tiny_diffusion(rng, 1, 3, 6, 4);
  write_checkpoint(tmp / "hf", hf);
  ASSERT_TRUE(run(tmp / "hf", tmp / "native").ok());
  ASSERT_TRUE(run(tmp / "native", tmp / "hf2").ok());
  Dict back = read_checkpoint(tmp / "hf2");
  // down_proj comes back holding down * scale, and per_expert_scale comes back as ones.
  const Tensor& down = hf.at("model.decoder.layers.0.experts.down_proj");
  const Tensor& scale = hf.at("model.decoder.layers.0.router.per_expert_scale");
  const Tensor& got = back.at("model.decoder.layers.0.experts.down_proj");
  ASSERT_EQ(got.shape, down.shape);
  for (uint64_t i = 0; i < numel(down.shape); ++i) {
    uint64_t e = i / (6 * 4);
    double want = product(DType::BF16, decode(DType::BF16, get_bits(down, i)),
                          decode(DType::BF16, get_bits(scale, e)));
    EXPECT_EQ(get_bits(got, i), encode(DType::BF16, want)) << i;
  }
  expect_same({{"s", back.at("model.decoder.layers.0.router.per_expert_scale")}},
              {{"s", ones_ref(DType::BF16, 3)}});
  EXPECT_EQ(back.at("model.decoder.layers.0.experts.gate_up_proj").bytes,
            hf.at("model.decoder.layers.0.experts.gate_up_proj").bytes);
  EXPECT_EQ(back.count("lm_head.weight"), 0u);
  EXPECT_EQ(back.count("model.encoder.language_model.layers.0.layer_scalar"), 0u);
}

TEST_F(ConvertTest, LoraOnlyInputGetsNoTiedHead) {
  Dict in;
  in["model.decoder.layers.0.self_attn.q_proj.lora_A.weight"] =
      random_tensor(rng, DType::BF16, {2, 8});
  in["model.decoder.layers.0.self_attn.q_proj.lora_B.weight"] =
      random_tensor(rng, DType::BF16, {8, 2});
  write_checkpoint(tmp / "hf", in, 1, "diffusion_gemma");
  auto r = run(tmp / "hf", tmp / "n",
               opts([](ConvertOptions& o) { o.plan.direction = Direction::from_hf; }));
  ASSERT_TRUE(r.ok()) << r.status().message();
  Dict got = read_checkpoint(tmp / "n");
  EXPECT_EQ(got.count("lm_head.weight"), 0u);
  expect_same(got, ref_from_hf(in, true, {}));
  EXPECT_EQ(got.count("model.layers.0.self_attn.q_proj.lora_A.weight"), 1u);
}

TEST_F(ConvertTest, ExplicitLmHeadPassesThrough) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  in["lm_head.weight"] = random_tensor(rng, DType::BF16, {32, 4});
  write_checkpoint(tmp / "hf", in);
  ASSERT_TRUE(run(tmp / "hf", tmp / "n").ok());
  Dict got = read_checkpoint(tmp / "n");
  EXPECT_EQ(got.at("lm_head.weight").bytes, in.at("lm_head.weight").bytes);
  expect_same(got, ref_from_hf(in, true, {}));
}

TEST_F(ConvertTest, NoTiedHeadFlagOmitsTheHead) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  write_checkpoint(tmp / "hf", in);
  ASSERT_TRUE(
      run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.plan.tied_head = false; })).ok());
  RefOptions ro;
  ro.tied_head = false;
  expect_same(read_checkpoint(tmp / "n"), ref_from_hf(in, true, ro));
}

TEST_F(ConvertTest, ExclusionPatternRemovesKeysLast) {
  Dict native = ref_from_hf(tiny_diffusion(rng, 1, 2, 4, 2), true, {});
  native["model.layers.0.mlp._extra_state"] = random_tensor(rng, DType::U8, {4});
  native["model.norm.weight"] = random_tensor(rng, DType::BF16, {4});
  write_checkpoint(tmp / "native", native);
  ASSERT_TRUE(run(tmp / "native", tmp / "hf").ok());
  expect_same(read_checkpoint(tmp / "hf"), ref_to_hf(native, true, {}));
  EXPECT_EQ(read_checkpoint(tmp / "hf").count("model.decoder.layers.0.mlp._extra_state"), 0u);
  // A custom pattern, matched at the start of the HF key like re.match.
  RefOptions ro;
  ro.exclude = "model\\.decoder\\.layers\\.0\\.router";
  ASSERT_TRUE(run(tmp / "native", tmp / "hf2",
                  opts([&](ConvertOptions& o) { o.plan.exclude = ro.exclude; }))
                  .ok());
  Dict got = read_checkpoint(tmp / "hf2");
  expect_same(got, ref_to_hf(native, true, ro));
  EXPECT_EQ(got.count("model.decoder.layers.0.router.per_expert_scale"), 0u);
  EXPECT_EQ(got.count("model.decoder.layers.0.mlp._extra_state"), 1u);
  // Not anchored at the end: "router" alone matches nothing at the start of any key.
  ro.exclude = "router";
  ASSERT_TRUE(run(tmp / "native", tmp / "hf3",
                  opts([&](ConvertOptions& o) { o.plan.exclude = ro.exclude; }))
                  .ok());
  EXPECT_EQ(read_checkpoint(tmp / "hf3").size(), ref_to_hf(native, true, ro).size());
}

TEST_F(ConvertTest, Gemma4BothDirectionsWithAndWithoutModelPrefix) {
  for (bool prefix : {true, false})
    for (std::string scale_at : {"router", "moe", "experts"}) {
      SCOPED_TRACE((prefix ? "model. prefix, scale at " : "unprefixed, scale at ") + scale_at);
      TempDir t;
      Dict in = tiny_gemma4(rng, 2, 4, 6, 3, prefix, scale_at);
      write_checkpoint(t / "hf", in, 2, "gemma4");
      auto r = run(t / "hf", t / "n");
      ASSERT_TRUE(r.ok()) << r.status().message();
      Dict native = read_checkpoint(t / "n");
      expect_same(native, ref_from_hf(in, false, {}));
      std::string root = prefix ? "model.language_model." : "language_model.";
      EXPECT_EQ(native.count(root + "layers.1.moe.experts.down_projs"), 1u);
      EXPECT_EQ(native.count(root + "layers.1.moe.gate.proj.weight"), 1u);
      EXPECT_EQ(native.count("lm_head.weight"), 1u);
      ASSERT_TRUE(run(t / "n", t / "hf2").ok());
      expect_same(read_checkpoint(t / "hf2"), ref_to_hf(native, false, {}));
    }
}

// Semantics 1.1.14: the gemma families' model classes build their adapter with their text
// config's dtype (BF16 when it names none), and the adapter casts both expert outputs to it:
// diffusion_gemma's is text_config's own (a top level naming another is refused: transformers'
// from_pretrained would copy it down), gemma4_moe's model class copies the top level's down. With
// a config.json, shardshift casts to that dtype unless --dtype says otherwise (`keep`: the fold's
// dtypes); without one, it keeps the fold's dtypes.
TEST_F(ConvertTest, GemmaFamiliesCastToTheirTextConfigsDtypeLikeTheReference) {
  // F32 experts and scale: what `keep` writes (F32) differs from the reference's default (BF16).
  // Special values included; NaNs compare equal whatever their bits (the fold's NaN policy, 1.1.8,
  // has its own tests).
  const Dict diffusion = tiny_diffusion(rng, 2, 3, 8, 4, DType::F32, DType::F32, true);
  const Dict gemma4 = tiny_gemma4(rng, 1, 4, 6, 3, true);
  for (const std::string model : {"diffusion_gemma", "gemma4_moe"}) {
    const bool is_diffusion = model == "diffusion_gemma";
    const Dict& in = is_diffusion ? diffusion : gemma4;
    const fs::path hf = tmp / model;
    write_checkpoint(hf, in, 2);
    auto reference = [&](std::optional<DType> cast) {
      RefOptions ro;
      ro.cast = cast;
      return ref_from_hf(in, is_diffusion, ro);
    };
    auto convert_with = [&](const fs::path& from, const std::string& config,
                            const std::function<void(ConvertOptions&)>& set) {
      fs::remove_all(tmp / "n");
      testing::write_bytes(hf / "config.json", config);
      return run(from, tmp / "n", opts(set));
    };
    auto convert = [&](const std::string& fields, std::optional<DType> flag) {
      return convert_with(hf, "{\"model_type\": \"" + model + "\"" + fields + "}\n",
                          [&](ConvertOptions& o) { o.plan.expert_dtype = flag; });
    };
    // No config.json: the adapter alone, whose default shardshift keeps as the fold gives it.
    {
      SCOPED_TRACE(model + " without config.json");
      fs::remove(hf / "config.json");
      fs::remove_all(tmp / "n");
      auto r = run(hf, tmp / "n", opts([&](ConvertOptions& o) { o.plan.adapter = model; }));
      ASSERT_TRUE(r.ok()) << r.status().message();
      expect_same(read_checkpoint(tmp / "n"), reference(std::nullopt));
    }
    // An empty `want` is a refusal whose message holds `says`.
    struct Case {
      std::string fields;
      std::optional<DType> diffusion_want, gemma4_want;
      std::string says;
    };
    const std::string both_refuse;
    for (const Case& c : {
             Case{"", DType::BF16, DType::BF16},
             Case{", \"torch_dtype\": \"bfloat16\"", DType::BF16, DType::BF16},
             Case{", \"text_config\": {\"torch_dtype\": \"float32\"}", DType::F32, DType::F32},
             Case{", \"dtype\": \"float16\", \"text_config\": {\"dtype\": \"half\"}", DType::F16,
                  DType::F16},
             Case{", \"torch_dtype\": \"float32\", \"text_config\": {\"torch_dtype\": \"float\"}",
                  DType::F32, DType::F32},
             Case{", \"text_config\": {\"dtype\": \"float16\", \"torch_dtype\": \"float32\"}",
                  DType::F16, DType::F16},
             Case{", \"torch_dtype\": \"bfloat16\", \"text_config\": {}", DType::BF16, DType::BF16},
             Case{", \"text_config\": {\"torch_dtype\": null}", DType::BF16, DType::BF16},
             Case{", \"text_config\": {\"dtype\": \"float32\"}, \"text_config\": null", DType::BF16,
                  DType::BF16},
             // The top level against text_config: gemma4_moe's model class copies it down;
             // diffusion_gemma's reads text_config's, which from_pretrained would overwrite.
             Case{", \"torch_dtype\": \"float32\"", std::nullopt, DType::F32,
                  "config.json gives the dtype F32 at its top level and BF16 for text_config, "
                  "which config.json has none of"},
             Case{", \"dtype\": \"float16\", \"text_config\": {}", std::nullopt, DType::F16,
                  "F16 at its top level and BF16 for text_config, which gives none"},
             Case{", \"torch_dtype\": \"float32\", \"text_config\": {\"dtype\": \"bfloat16\"}",
                  std::nullopt, DType::F32, "F32 at its top level and BF16 in text_config;"},
             // Values transformers casts to and shardshift does not write, or cannot read at all.
             Case{", \"text_config\": {\"torch_dtype\": \"float64\"}", std::nullopt, std::nullopt,
                  "config.json's text_config.torch_dtype is 'float64', which shardshift does not "
                  "write"},
             Case{", \"text_config\": {\"dtype\": 16}", std::nullopt, std::nullopt,
                  "config.json's text_config.dtype is 16, not a dtype name"},
             Case{", \"torch_dtype\": \"auto\", \"text_config\": {\"dtype\": \"float32\"}",
                  std::nullopt, std::nullopt,
                  "config.json's torch_dtype is 'auto', which is no name of a torch dtype"},
             Case{", \"text_config\": {\"dtype\": \"torch.half\"}", std::nullopt, std::nullopt,
                  "config.json's text_config.dtype is 'torch.half', which is no name of a torch "
                  "dtype"},
             Case{", \"text_config\": {\"dtype\": \"bf16\"}", std::nullopt, std::nullopt,
                  "'bf16', which is no name of a torch dtype"},
             Case{", \"text_config\": [1]", std::nullopt, std::nullopt,
                  "config.json's text_config is [1], neither an object nor null"},
             Case{", \"text_config\": \"x\"", std::nullopt, std::nullopt,
                  "config.json's text_config is \"x\", neither an object nor null"},
         }) {
      SCOPED_TRACE(model + c.fields);
      const std::optional<DType> want = is_diffusion ? c.diffusion_want : c.gemma4_want;
      auto r = convert(c.fields, std::nullopt);
      if (want) {
        ASSERT_TRUE(r.ok()) << r.status().message();
        expect_same(read_checkpoint(tmp / "n"), reference(*want));
        continue;
      }
      ASSERT_FALSE(r.ok());
      EXPECT_NE(r.status().message().find(c.says), std::string::npos) << r.status().message();
      EXPECT_NE(r.status().message().find("--dtype bf16|f16|f32"), std::string::npos)
          << r.status().message();
      EXPECT_FALSE(fs::exists(tmp / "n"));
      // --dtype settles it.
      auto given = convert(c.fields, DType::F16);
      ASSERT_TRUE(given.ok()) << given.status().message();
      expect_same(read_checkpoint(tmp / "n"), reference(DType::F16));
    }
    // --dtype keep keeps the fold's dtypes whatever config.json says.
    {
      SCOPED_TRACE(model + " --dtype keep");
      auto r = convert_with(
          hf, "{\"model_type\": \"" + model + "\", \"text_config\": {\"dtype\": \"float16\"}}",
          [](ConvertOptions& o) { o.plan.keep_dtype = true; });
      ASSERT_TRUE(r.ok()) << r.status().message();
      expect_same(read_checkpoint(tmp / "n"), reference(std::nullopt));
    }
    // A top level that is no object: transformers cannot load it.
    {
      SCOPED_TRACE(model + " [1, 2]");
      auto r = convert_with(hf, "[1, 2]", [&](ConvertOptions& o) { o.plan.adapter = model; });
      ASSERT_FALSE(r.ok());
      EXPECT_NE(r.status().message().find("config.json's top level is [1,2], no JSON object"),
                std::string::npos)
          << r.status().message();
      EXPECT_FALSE(fs::exists(tmp / "n"));
    }
  }
}

// One file given as IN is converted without its directory's config.json: where the reference
// would take the experts' dtype from one beside it, shardshift refuses rather than guess, until
// --dtype (or --dtype keep) says which; with none beside it, the default stands.
TEST_F(ConvertTest, OneFileWithAConfigBesideItIsRefusedWhereTheReferenceReadsIt) {
  const Dict in = tiny_diffusion(rng, 1, 2, 8, 4, DType::F32, DType::F32);
  const fs::path dir = tmp / "hf";
  write_checkpoint(dir, in, 1);
  const fs::path file = dir / "model.safetensors";
  auto convert = [&](std::function<void(ConvertOptions&)> set) {
    fs::remove_all(tmp / "n");
    return run(file, tmp / "n", opts(set));
  };
  auto plain = convert([](ConvertOptions&) {});
  ASSERT_TRUE(plain.ok()) << plain.status().message();
  expect_same(read_checkpoint(tmp / "n"), ref_from_hf(in, true, {}));

  testing::write_bytes(dir / "config.json",
                       R"({"model_type": "diffusion_gemma", "text_config": {"dtype": "float16"}})");
  auto refused = convert([](ConvertOptions&) {});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find(
                "IN is one file, and shardshift reads no config.json for it, but there is one "
                "beside it"),
            std::string::npos)
      << refused.status().message();
  EXPECT_NE(refused.status().message().find("convert the directory, or choose with --dtype"),
            std::string::npos)
      << refused.status().message();
  EXPECT_FALSE(fs::exists(tmp / "n"));
  RefOptions f16;
  f16.cast = DType::F16;
  auto chosen = convert([](ConvertOptions& o) { o.plan.expert_dtype = DType::F16; });
  ASSERT_TRUE(chosen.ok()) << chosen.status().message();
  expect_same(read_checkpoint(tmp / "n"), ref_from_hf(in, true, f16));
  auto kept = convert([](ConvertOptions& o) { o.plan.keep_dtype = true; });
  ASSERT_TRUE(kept.ok()) << kept.status().message();
  expect_same(read_checkpoint(tmp / "n"), ref_from_hf(in, true, {}));
}

} // namespace
} // namespace shardshift
