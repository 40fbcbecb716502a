// semantics_rules_test.cpp: rules of docs/semantics.md that no other test checked, through the
// library's convert() and plan_conversion(): expert-group refusals, expert-parallel edges and the
// to_hf options (--scale-dtype, --dtype, the ones, an empty --exclude). Output order, cutting,
// the index, side files, detection and the checks on OUT are in semantics_output_test.cpp.
// Expected values come from the document (and tests/reference/), not from src/.
#include "semantics_support.h"

namespace shardshift {
namespace {

using namespace semantics_test;

// --- 1.g: expert groups --------------------------------------------------------------------------

TEST_F(SemanticsRules, TwoKeysForOneExpertPieceAreRefused) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  // A second down_proj for layers.0 under another prefix (sorted, hence stored, first).
  in["model.decoder.extra.layers.0.experts.down_proj"] =
      in.at("model.decoder.layers.0.experts.down_proj");
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::plan);
  EXPECT_NE(r.status().message().find(
                "tensor 'model.decoder.layers.0.experts.down_proj': layers.0 already has this "
                "expert piece in 'model.decoder.extra.layers.0.experts.down_proj'"),
            std::string::npos)
      << r.status().message();
  EXPECT_EQ(testing::list_dir(tmp.path()), std::vector<std::string>{"hf"});
}

TEST_F(SemanticsRules, ExpertTensorsMustBeThreeDAndScalesOneD) {
  Dict in = tiny_diffusion(rng, 2, 2, 4, 2);
  in["model.decoder.layers.0.experts.gate_up_proj"] = random_tensor(rng, DType::BF16, {2, 16});
  in["model.decoder.layers.1.router.per_expert_scale"] = random_tensor(rng, DType::BF16, {2, 1});
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::plan);
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("tensor 'model.decoder.layers.0.experts.gate_up_proj': expert tensor must be "
                   "3-D [E, A, B], has shape [2, 16]"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("tensor 'model.decoder.layers.1.router.per_expert_scale': per_expert_scale "
                   "must be 1-D [E], has shape [2, 1]"),
            std::string::npos)
      << m;
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

TEST_F(SemanticsRules, ExpertCountMustAgreeBetweenGateUpAndDown) {
  Dict in = tiny_diffusion(rng, 1, 4, 8, 2);
  in["model.decoder.layers.0.experts.down_proj"] = random_tensor(rng, DType::BF16, {3, 8, 2});
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::plan);
  EXPECT_NE(r.status().message().find(
                "layers.0: expert count disagrees: 'model.decoder.layers.0.experts.gate_up_proj' "
                "[4, 4, 8] vs 'model.decoder.layers.0.experts.down_proj' [3, 8, 2]"),
            std::string::npos)
      << r.status().message();
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

// --- 1.2: expert-parallel export ---------------------------------------------------------------

TEST_F(SemanticsRules, RanksBeyondTheExpertCountWriteEmptyExpertTensors) {
  // E = 2 experts over W = 3 ranks: ranks 0 and 1 keep one expert each, rank 2 keeps none.
  Dict in = tiny_diffusion(rng, 1, 2, 4, 3);
  write_checkpoint(tmp / "hf", in);
  for (unsigned rank = 0; rank < 3; ++rank) {
    const fs::path out = tmp / ("r" + std::to_string(rank));
    auto r = run(tmp / "hf", out, opts([&](ConvertOptions& o) {
                   o.plan.ep_size = 3;
                   o.plan.ep_rank = rank;
                 }));
    ASSERT_TRUE(r.ok()) << "rank " << rank;
    RefOptions ro;
    ro.ep_size = 3;
    ro.ep_rank = rank;
    Dict got = read_checkpoint(out);
    expect_same(got, ref_from_hf(in, true, ro));
    const uint64_t kept = rank < 2 ? 1 : 0;
    EXPECT_EQ(got.at("model.layers.0.moe.experts.gate_and_up_projs").shape,
              (std::vector<uint64_t>{kept, 4, 6}))
        << "rank " << rank;
    EXPECT_EQ(got.at("model.layers.0.moe.experts.down_projs").shape,
              (std::vector<uint64_t>{kept, 3, 4}))
        << "rank " << rank;
  }
}

TEST_F(SemanticsRules, RanksMustBeBelowTheirSizes) {
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 1, 4, 4, 2));
  struct Case {
    unsigned ep_size, ep_rank, shard_size, shard_rank;
    const char* message;
  };
  for (Case c :
       {Case{2, 2, 1, 0, "--ep-rank must be below --ep-size"},
        Case{0, 0, 1, 0,
             "--ep-size 0: the parts are counted from 1 (1, the default, keeps them whole)"},
        Case{1, 0, 2, 2, "--ep-shard-rank must be below --ep-shard-size"},
        Case{1, 0, 0, 0,
             "--ep-shard-size 0: the parts are counted from 1 (1, the default, keeps them "
             "whole)"}}) {
    auto r = run(tmp / "hf", tmp / "n", opts([&](ConvertOptions& o) {
                   o.plan.ep_size = c.ep_size;
                   o.plan.ep_rank = c.ep_rank;
                   o.plan.ep_shard_size = c.shard_size;
                   o.plan.ep_shard_rank = c.shard_rank;
                 }));
    ASSERT_FALSE(r.ok()) << c.message;
    EXPECT_EQ(r.status().code(), Errc::invalid_argument) << c.message;
    EXPECT_EQ(r.status().message(), c.message);
  }
  EXPECT_EQ(testing::list_dir(tmp.path()), std::vector<std::string>{"hf"});
}

TEST_F(SemanticsRules, ExpertParallelToHfIsRefused) {
  write_checkpoint(tmp / "native", tiny_native(rng, 1, 4, 4, 2));
  for (bool second : {false, true}) {
    auto r =
        run(tmp / "native", tmp / "hf",
            opts([&](ConvertOptions& o) { (second ? o.plan.ep_shard_size : o.plan.ep_size) = 2; }));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Errc::invalid_argument);
    EXPECT_EQ(r.status().message(),
              "expert-parallel export (--ep-size, --ep-shard-size) applies to from_hf only");
  }
  EXPECT_FALSE(fs::exists(tmp / "hf"));
}

TEST_F(SemanticsRules, Gemma4SecondShardingKeepsRowsLikeDiffusionGemma) {
  Dict in = tiny_gemma4(rng, 2, 4, 6, 4, true, "router");
  write_checkpoint(tmp / "hf", in, 1, "gemma4");
  auto r = run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) {
                 o.plan.ep_size = 2;
                 o.plan.ep_rank = 1;
                 o.plan.ep_shard_size = 2;
                 o.plan.ep_shard_rank = 1;
               }));
  ASSERT_TRUE(r.ok());
  RefOptions ro;
  ro.ep_size = 2;
  ro.ep_rank = 1;
  ro.ep_shard_size = 2;
  ro.ep_shard_rank = 1;
  Dict got = read_checkpoint(tmp / "n");
  expect_same(got, ref_from_hf(in, false, ro));
  // 2 experts of 4; gate_and_up [E, H, 2I] keeps H/2 = 3 rows, down [E, I, H] keeps I/2 = 2.
  EXPECT_EQ(got.at("model.language_model.layers.1.moe.experts.gate_and_up_projs").shape,
            (std::vector<uint64_t>{2, 3, 8}));
  EXPECT_EQ(got.at("model.language_model.layers.1.moe.experts.down_projs").shape,
            (std::vector<uint64_t>{2, 2, 6}));
}

// --- 3.b: gemma4 expert keys spelled moe.gate_up_proj / moe.down_proj --------------------------

TEST_F(SemanticsRules, Gemma4ExpertKeysUnderMoe) {
  Dict in = tiny_gemma4(rng, 2, 4, 6, 3, true, "moe");
  Dict renamed;
  for (auto& [k, t] : in) {
    std::string name = k;
    for (const char* piece : {"gate_up_proj", "down_proj"}) {
      const std::string from = std::string(".experts.") + piece;
      if (name.ends_with(from))
        name = name.substr(0, name.size() - from.size()) + ".moe." + piece;
    }
    renamed[name] = t;
  }
  ASSERT_TRUE(renamed.count("model.language_model.layers.1.moe.down_proj"));
  write_checkpoint(tmp / "hf", renamed, 1, "gemma4");
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_TRUE(r.ok());
  // The same output as the experts.* spelling.
  expect_same(read_checkpoint(tmp / "n"), ref_from_hf(in, false, {}));
}

// --- 2.4, 2.5, 2.6, 8: to_hf options -------------------------------------------------------------

TEST_F(SemanticsRules, ScaleDtypeSetsTheDtypeOfTheOnes) {
  Dict native = tiny_native(rng, 2, 3, 4, 2);
  write_checkpoint(tmp / "native", native);
  struct Case {
    std::optional<DType> scale_dtype;
    DType want;
    std::string one; // the little-endian bytes of 1.0
  };
  int n = 0;
  for (const Case& c : {Case{std::nullopt, DType::BF16, std::string("\x80\x3f", 2)},
                        Case{DType::F32, DType::F32, std::string("\x00\x00\x80\x3f", 4)},
                        Case{DType::F16, DType::F16, std::string("\x00\x3c", 2)}}) {
    const fs::path out = tmp / ("hf" + std::to_string(n++));
    auto r = run(tmp / "native", out,
                 opts([&](ConvertOptions& o) { o.plan.scale_dtype = c.scale_dtype; }));
    ASSERT_TRUE(r.ok());
    Dict got = read_checkpoint(out);
    for (int layer = 0; layer < 2; ++layer) {
      const std::string p = "model.decoder.layers." + std::to_string(layer) + ".";
      const Tensor& ones = got.at(p + "router.per_expert_scale");
      EXPECT_EQ(ones.dtype, c.want);
      EXPECT_EQ(ones.shape, std::vector<uint64_t>{3});
      std::string want;
      for (int i = 0; i < 3; ++i)
        want += c.one;
      EXPECT_EQ(ones.bytes, want);
      // The expert tensors are not cast by --scale-dtype.
      EXPECT_EQ(got.at(p + "experts.down_proj").dtype, DType::BF16);
    }
  }
}

TEST_F(SemanticsRules, ToHfOnesAreOneForFp8ExpertsAndSubByteOnesAreRefused) {
  // Native FP8 (E4M3) experts: moved bit for bit, and the ones are 1.0 = 0x38 (section 12's old
  // bug wrote 0x01).
  const uint64_t E = 2, I = 2, H = 3;
  Tensor down{DType::F8_E4M3, {E, I, H}, {}};
  for (uint64_t i = 0; i < E * I * H; ++i)
    down.bytes += static_cast<char>(0x20 + i);
  Tensor gate{DType::F8_E4M3, {E, H, 2 * I}, std::string(E * H * 2 * I, '\x11')};
  Dict native = {{"model.layers.0.moe.experts.down_projs", down},
                 {"model.layers.0.moe.experts.gate_and_up_projs", gate},
                 {"model.norm.weight", random_tensor(rng, DType::BF16, {H})}};
  write_checkpoint(tmp / "native", native);
  auto r = run(tmp / "native", tmp / "hf");
  ASSERT_TRUE(r.ok());
  Dict got = read_checkpoint(tmp / "hf");
  const Tensor& ones = got.at("model.decoder.layers.0.router.per_expert_scale");
  EXPECT_EQ(ones.dtype, DType::F8_E4M3);
  EXPECT_EQ(ones.bytes, std::string("\x38\x38", 2));
  const Tensor& hf_down = got.at("model.decoder.layers.0.experts.down_proj");
  EXPECT_EQ(hf_down.shape, (std::vector<uint64_t>{E, H, I}));
  for (uint64_t e = 0; e < E; ++e)
    for (uint64_t h = 0; h < H; ++h)
      for (uint64_t i = 0; i < I; ++i)
        EXPECT_EQ(hf_down.bytes[(e * H + h) * I + i], down.bytes[(e * I + i) * H + h]);

  // Ones in a sub-byte dtype have no encoding: refused, naming down_projs.
  auto f4 = run(tmp / "native", tmp / "hf4",
                opts([](ConvertOptions& o) { o.plan.scale_dtype = DType::F4; }));
  ASSERT_FALSE(f4.ok());
  EXPECT_EQ(f4.status().code(), Errc::unsupported);
  EXPECT_NE(f4.status().message().find(
                "tensor 'model.layers.0.moe.experts.down_projs': cannot write the per-expert "
                "scale as ones in F4 (sub-byte dtype); pass --scale-dtype"),
            std::string::npos)
      << f4.status().message();
  EXPECT_FALSE(fs::exists(tmp / "hf4"));
}

TEST_F(SemanticsRules, NativeKeysWithoutModelPrefixKeepTheirName) {
  Dict native = tiny_native(rng, 1, 2, 4, 2);
  native["vision_tower.proj.weight"] = random_tensor(rng, DType::BF16, {3, 4});
  native["decoder_extra.bias"] = random_tensor(rng, DType::F32, {5});
  write_checkpoint(tmp / "native", native);
  auto r = run(tmp / "native", tmp / "hf");
  ASSERT_TRUE(r.ok());
  Dict got = read_checkpoint(tmp / "hf");
  expect_same(got, ref_to_hf(native, true, {}));
  EXPECT_EQ(got.at("vision_tower.proj.weight").bytes, native.at("vision_tower.proj.weight").bytes);
  EXPECT_EQ(got.at("decoder_extra.bias").bytes, native.at("decoder_extra.bias").bytes);
  EXPECT_TRUE(got.count("model.decoder.norm.weight")); // model.X -> model.decoder.X
}

TEST_F(SemanticsRules, EmptyExcludeKeepsEveryKey) {
  Dict native = tiny_native(rng, 1, 2, 4, 2);
  native["model.layers.0.self_attn._extra_state"] = bytes_tensor(7);
  write_checkpoint(tmp / "native", native);
  auto by_default = run(tmp / "native", tmp / "default");
  ASSERT_TRUE(by_default.ok());
  EXPECT_EQ(by_default->excluded, 1u);
  EXPECT_FALSE(
      read_checkpoint(tmp / "default").count("model.decoder.layers.0.self_attn._extra_state"));

  auto r = run(tmp / "native", tmp / "hf",
               opts([](ConvertOptions& o) { o.plan.exclude = std::string(); }));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->excluded, 0u);
  RefOptions ro;
  ro.exclude = "";
  Dict got = read_checkpoint(tmp / "hf");
  expect_same(got, ref_to_hf(native, true, ro));
  EXPECT_EQ(got.at("model.decoder.layers.0.self_attn._extra_state").bytes, std::string(7, 'x'));
}

TEST_F(SemanticsRules, DtypeOnToHfCastsTheExpertTensorsAndTheOnesFollow) {
  Dict native = tiny_native(rng, 2, 3, 4, 2);
  write_checkpoint(tmp / "native", native);
  auto r = run(tmp / "native", tmp / "hf",
               opts([](ConvertOptions& o) { o.plan.expert_dtype = DType::F32; }));
  ASSERT_TRUE(r.ok());
  RefOptions ro;
  ro.cast = DType::F32;
  Dict got = read_checkpoint(tmp / "hf");
  expect_same(got, ref_to_hf(native, true, ro));
  EXPECT_EQ(got.at("model.decoder.layers.1.experts.gate_up_proj").dtype, DType::F32);
  EXPECT_EQ(got.at("model.decoder.layers.1.experts.down_proj").dtype, DType::F32);
  EXPECT_EQ(got.at("model.decoder.layers.1.router.per_expert_scale").dtype, DType::F32);
  // Pass-through tensors are never cast.
  EXPECT_EQ(got.at("model.decoder.layers.1.router.proj.weight").dtype, DType::BF16);
}

} // namespace
} // namespace shardshift
