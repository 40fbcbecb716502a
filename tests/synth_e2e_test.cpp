// synth_e2e_test.cpp: `shardshift synth` end to end: the key inventory and shapes against the real
// model (docs: semantics.md section 5, restated here independently of src/synth.cpp), the
// result passing `shardshift inspect`, determinism, and the command's flags and exit codes.
#include "shardshift/checkpoint.h"

#include "test_support.h"

#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::list_dir;
using testing::run_shardshift;
using testing::shell_quoted;
using testing::TempDir;

using Shapes = std::map<std::string, std::vector<uint64_t>>;

// The text-backbone tensors of the real model with every size divided by `k`, under `prefix`
// ("model.decoder." or "model.language_model."): semantics.md section 5.
Shapes backbone(const std::string& prefix, unsigned layers, uint64_t k) {
  const uint64_t H = 2816 / k, D = 2112 / k, I = 704 / k, E = 128 / k, V = 262144 / k;
  Shapes s;
  s[prefix + "embed_tokens.weight"] = {V, H};
  s[prefix + "norm.weight"] = {H};
  for (unsigned l = 0; l < layers; ++l) {
    const bool full = l == 5 || l == 11 || l == 17 || l == 23 || l == 29;
    const std::string p = prefix + "layers." + std::to_string(l) + ".";
    s[p + "self_attn.q_proj.weight"] = {(full ? 8192 : 4096) / k, H};
    s[p + "self_attn.k_proj.weight"] = {(full ? 1024 : 2048) / k, H};
    if (!full)
      s[p + "self_attn.v_proj.weight"] = {2048 / k, H};
    s[p + "self_attn.o_proj.weight"] = {H, (full ? 8192 : 4096) / k};
    s[p + "self_attn.q_norm.weight"] = {(full ? 512 : 256) / k};
    s[p + "self_attn.k_norm.weight"] = {(full ? 512 : 256) / k};
    s[p + "mlp.gate_proj.weight"] = {D, H};
    s[p + "mlp.up_proj.weight"] = {D, H};
    s[p + "mlp.down_proj.weight"] = {H, D};
    for (const char* norm :
         {"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
          "post_feedforward_layernorm", "post_feedforward_layernorm_1",
          "post_feedforward_layernorm_2", "pre_feedforward_layernorm_2"})
      s[p + norm + ".weight"] = {H};
    s[p + "layer_scalar"] = {1};
    s[p + "router.proj.weight"] = {E, H};
    s[p + "router.scale"] = {H};
    s[p + "router.per_expert_scale"] = {E};
    s[p + "experts.gate_up_proj"] = {E, 2 * I, H};
    s[p + "experts.down_proj"] = {E, H, I};
  }
  return s;
}

Shapes expected_text_tensors(const std::string& model, unsigned layers, uint64_t k) {
  if (model == "gemma4_moe") {
    Shapes s = backbone("model.language_model.", layers, k);
    s["lm_head.weight"] = {262144 / k, 2816 / k};
    return s;
  }
  Shapes s = backbone("model.decoder.", layers, k);
  const uint64_t H = 2816 / k, D = 2112 / k;
  s["model.decoder.self_conditioning.pre_norm.weight"] = {H};
  s["model.decoder.self_conditioning.gate_proj.weight"] = {D, H};
  s["model.decoder.self_conditioning.up_proj.weight"] = {D, H};
  s["model.decoder.self_conditioning.down_proj.weight"] = {H, D};
  for (unsigned l = 0; l < layers; ++l)
    s["model.encoder.language_model.layers." + std::to_string(l) + ".layer_scalar"] = {1};
  return s;
}

std::string vision_prefix(const std::string& model) {
  return model == "gemma4_moe" ? "model.vision_tower." : "model.encoder.vision_tower.";
}

// Six layers so that layer 5, a full-attention layer without v_proj, is among them.
constexpr unsigned LAYERS = 6;
constexpr unsigned SCALE = 16;

class SynthE2e : public ::testing::TestWithParam<std::string> {};

TEST_P(SynthE2e, InventoryShapesAndInspect) {
  const std::string model = GetParam();
  TempDir dir;
  const fs::path out = dir / "ckpt";
  auto r = run_shardshift("synth " + out.string() + " --model " + model + " --layers " +
                          std::to_string(LAYERS) + " --scale " + std::to_string(SCALE) +
                          " --max-shard-size 1MB");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.empty()) << "synth prints nothing on stdout";
  EXPECT_NE(r.err.find("synth: wrote "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" to " + out.string()), std::string::npos) << r.err;

  auto checkpoint = Checkpoint::open(out);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().message();
  EXPECT_TRUE(checkpoint->has_index);
  EXPECT_GT(checkpoint->shards.size(), 3u);

  const Shapes expected = expected_text_tensors(model, LAYERS, SCALE);
  // Per layer: 22 tensors in a sliding layer, 21 in a full-attention one (no v_proj).
  const size_t globals = model == "gemma4_moe" ? 3 : 6 + LAYERS;
  EXPECT_EQ(expected.size(), globals + 22 * (LAYERS - 1) + 21);
  size_t vision = 0;
  for (const auto& [name, ref] : checkpoint->tensors) {
    const TensorInfo& info = checkpoint->info(ref);
    EXPECT_EQ(info.dtype, DType::BF16) << name;
    if (name.rfind(vision_prefix(model), 0) == 0) {
      ++vision;
      continue;
    }
    auto it = expected.find(name);
    if (it == expected.end()) {
      ADD_FAILURE() << "unexpected tensor " << name;
      continue;
    }
    EXPECT_EQ(info.shape, it->second) << name;
  }
  for (const auto& [name, shape] : expected)
    EXPECT_TRUE(checkpoint->find(name).has_value()) << "missing " << name;
  EXPECT_GT(vision, 0u) << "a vision tower under " << vision_prefix(model);
  EXPECT_EQ(checkpoint->tensors.size(), expected.size() + vision);
  EXPECT_EQ(checkpoint->find("lm_head.weight").has_value(), model == "gemma4_moe");
  EXPECT_FALSE(checkpoint->find("model.decoder.layers.5.self_attn.v_proj.weight").has_value());

  const std::string config = testing::read_bytes(out / "config.json");
  EXPECT_NE(config.find("\"model_type\": \"" + model + "\""), std::string::npos) << config;
  EXPECT_NE(config.find("\"num_hidden_layers\": 6"), std::string::npos) << config;
  EXPECT_NE(config.find("\"hidden_size\": 176"), std::string::npos) << config;

  auto inspect = run_shardshift("inspect " + out.string());
  EXPECT_EQ(inspect.exit_code, 0) << inspect.err;
}

INSTANTIATE_TEST_SUITE_P(Models, SynthE2e, ::testing::Values("diffusion_gemma", "gemma4_moe"));

TEST(SynthCommand, SameSeedSameBytesOtherSeedOtherBytes) {
  TempDir dir;
  const std::string common = " --layers 2 --scale 16 --max-shard-size 2MB";
  ASSERT_EQ(run_shardshift("synth " + (dir / "a").string() + common + " --seed 5").exit_code, 0);
  ASSERT_EQ(run_shardshift("synth " + (dir / "b").string() + common + " --seed 5").exit_code, 0);
  ASSERT_EQ(run_shardshift("synth " + (dir / "c").string() + common + " --seed 6").exit_code, 0);
  const auto files = list_dir(dir / "a");
  ASSERT_EQ(files, list_dir(dir / "b"));
  ASSERT_EQ(files, list_dir(dir / "c"));
  ASSERT_GT(files.size(), 3u);
  for (const auto& f : files) {
    const std::string a = testing::read_bytes(dir / "a" / f);
    EXPECT_EQ(a, testing::read_bytes(dir / "b" / f)) << f;
    if (f.ends_with(".safetensors"))
      EXPECT_NE(a, testing::read_bytes(dir / "c" / f)) << f;
    else
      EXPECT_EQ(a, testing::read_bytes(dir / "c" / f)) << f;
  }
}

TEST(SynthCommand, SingleFileWithoutIndex) {
  TempDir dir;
  auto r = run_shardshift("synth " + (dir / "one").string() + " --layers 1 --scale 32");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(list_dir(dir / "one"), (std::vector<std::string>{"config.json", "model.safetensors"}));
  EXPECT_NE(r.err.find(" in 1 shard to "), std::string::npos) << r.err;
}

TEST(SynthCommand, ExistingOutputNeedsForce) {
  TempDir dir;
  const std::string out = (dir / "o").string();
  ASSERT_EQ(run_shardshift("synth " + out + " --layers 1 --scale 32").exit_code, 0);
  const std::string before = testing::read_bytes(dir / "o" / "model.safetensors");
  auto r = run_shardshift("synth " + out + " --layers 1 --scale 32 --seed 1");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find(out + " exists; pass --force to replace it"), std::string::npos) << r.err;
  EXPECT_EQ(testing::read_bytes(dir / "o" / "model.safetensors"), before);

  r = run_shardshift("synth " + out + " --layers 1 --scale 32 --seed 1 --force");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(testing::read_bytes(dir / "o" / "model.safetensors"), before);
}

TEST(SynthCommand, FinerScalesOverrideScale) {
  TempDir dir;
  const fs::path out = dir / "s";
  auto r = run_shardshift("synth " + out.string() +
                          " --model gemma4_moe --layers 1 --scale 16 --scale-experts 32 "
                          "--scale-vocab 64 --scale-hidden 8 --scale-intermediate 4");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto checkpoint = Checkpoint::open(out);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().message();
  auto shape = [&](const std::string& name) {
    auto ref = checkpoint->find(name);
    return ref ? checkpoint->info(*ref).shape : std::vector<uint64_t>{};
  };
  EXPECT_EQ(shape("model.language_model.layers.0.experts.gate_up_proj"),
            (std::vector<uint64_t>{4, 352, 352}));
  EXPECT_EQ(shape("model.language_model.embed_tokens.weight"), (std::vector<uint64_t>{4096, 352}));
  EXPECT_EQ(shape("model.language_model.layers.0.mlp.gate_proj.weight"),
            (std::vector<uint64_t>{264, 352}));
}

// DeepSeek-V3 alone has multi-token-prediction layers: for another model --mtp-layers would be
// ignored without a word, so it is refused as a flag with nothing to set.
TEST(SynthCommand, MtpLayersIsForDeepseekV3Only) {
  TempDir dir;
  const std::string out = shell_quoted(dir / "x");
  for (const char* model : {"", " --model gemma4_moe", " --model qwen3_moe"}) {
    for (const char* mtp : {" --mtp-layers 0", " --mtp-layers 1"}) {
      auto r = run_shardshift("synth " + out + model + mtp + " --layers 1 --scale 32");
      EXPECT_EQ(r.exit_code, 2) << model << mtp << ": " << r.err;
      EXPECT_NE(r.err.find("--mtp-layers applies to --model deepseek_v3 only"), std::string::npos)
          << model << mtp << ": " << r.err;
    }
  }
  EXPECT_FALSE(fs::exists(dir / "x")) << "a refused run writes nothing";
  auto deepseek = run_shardshift("synth " + out +
                                 " --model deepseek_v3 --mtp-layers 0 --layers 1 --scale 64 -q");
  EXPECT_EQ(deepseek.exit_code, 0) << deepseek.err;
}

// synth makes OUT in an existing directory only, as convert does: the same error, the same exit
// code, and no directory made.
TEST(SynthCommand, AMissingParentDirectoryIsRefusedAsConvertRefusesIt) {
  TempDir dir;
  const std::string out = shell_quoted(dir / "typo" / "out");
  auto synth = run_shardshift("synth " + out + " --layers 1 --scale 32");
  EXPECT_EQ(synth.exit_code, 2) << synth.err;
  EXPECT_EQ(synth.err, "shardshift: " + (dir / "typo").string() +
                           ": the output's parent directory does not exist\n");
  EXPECT_FALSE(fs::exists(dir / "typo"));

  ASSERT_EQ(
      run_shardshift("synth " + shell_quoted(dir / "hf") + " --layers 1 --scale 32 -q").exit_code,
      0);
  auto convert = run_shardshift("convert " + shell_quoted(dir / "hf") + " " + out);
  EXPECT_EQ(convert.exit_code, synth.exit_code) << convert.err;
  EXPECT_EQ(convert.err, synth.err);
  EXPECT_FALSE(fs::exists(dir / "typo"));
}

TEST(SynthCommand, HelpAndUsageErrors) {
  auto help = run_shardshift("synth --help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag : {"--model", "--layers", "--seed", "--scale", "--scale-hidden",
                           "--scale-intermediate", "--scale-experts", "--scale-vocab",
                           "--max-shard-size", "--force", "--json", "--quiet", "Example"})
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;

  TempDir dir;
  const std::string out = (dir / "x").string();
  EXPECT_EQ(run_shardshift("synth").exit_code, 2);
  EXPECT_EQ(run_shardshift("synth " + out + " --no-such-flag").exit_code, 2);
  EXPECT_EQ(run_shardshift("synth " + out + " --layers -1").exit_code, 2);
  EXPECT_EQ(run_shardshift("synth " + out + " --scale 0").exit_code, 2);
  EXPECT_EQ(run_shardshift("synth " + out + " --max-shard-size lots").exit_code, 2);
  auto too_small = run_shardshift("synth " + out + " --scale 5000");
  EXPECT_EQ(too_small.exit_code, 2);
  EXPECT_NE(too_small.err.find("leaves nothing"), std::string::npos) << too_small.err;
  EXPECT_EQ(run_shardshift("synth " + out + " --model llama").exit_code, 2);
  EXPECT_FALSE(fs::exists(out)) << "a refused run writes nothing";
}

} // namespace
} // namespace shardshift
