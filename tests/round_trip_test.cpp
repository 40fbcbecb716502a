// round_trip_test.cpp: `--base DIR` (docs/semantics.md section 16) through the library and on the
// planner. HF -> native -> HF with the original checkpoint as the base gives back every tensor of
// the original, for every family, against the independent reference (ref_with_base); without a
// base the plan names what is missing; the base's problems are refused before anything is
// written; a changed base shard is never resumed.
#include "shardshift/io.h"
#include "shardshift/safetensors.h"

#include "convert_harness.h"
#include "planner.h"

#include <fcntl.h>
#include <sys/stat.h>

namespace shardshift {
namespace {

// The pieces from_hf folds (semantics 1.1, 2.4): they come back as down * scale and ones.
bool folded(const std::string& name) {
  return name.ends_with(".experts.down_proj") || name.ends_with(".per_expert_scale");
}

// HF -> native -> HF with --base, every file at most `shard` bytes; the HF input is `in` in
// three shards with config.json naming `model`.
class RoundTrip : public ConvertTest {
protected:
  ConvertSummary trip(const Dict& in, const std::string& model, uint64_t shard = 40'000) {
    write_checkpoint(tmp / "hf", in, 3, model);
    auto native = run(tmp / "hf", tmp / "native",
                      opts([&](ConvertOptions& o) { o.plan.max_shard_size = shard; }));
    EXPECT_TRUE(native.ok());
    auto back = run(tmp / "native", tmp / "back", opts([&](ConvertOptions& o) {
                      o.plan.max_shard_size = shard;
                      o.plan.direction = Direction::to_hf;
                      o.plan.base = tmp / "hf";
                    }));
    EXPECT_TRUE(back.ok());
    EXPECT_GT(back.ok() ? back->files : 0, 1u) << "the test wants a multi-shard output";
    return back.ok() ? *back : ConvertSummary{};
  }
  // Every tensor of `in` is in `back` with its dtype and shape, and its bytes unless `changed`.
  void expect_every_tensor(const Dict& in, const Dict& back, bool (*changed)(const std::string&)) {
    for (const auto& [name, t] : in) {
      SCOPED_TRACE(name);
      auto it = back.find(name);
      ASSERT_NE(it, back.end()) << "missing from the round trip";
      EXPECT_EQ(it->second.dtype, t.dtype);
      EXPECT_EQ(it->second.shape, t.shape);
      if (!changed || !changed(name))
        EXPECT_TRUE(it->second.bytes == t.bytes) << "bytes differ";
    }
    EXPECT_EQ(back.size(), in.size());
  }
};

size_t count_prefix(const Dict& d, const std::string& prefix) {
  size_t n = 0;
  for (const auto& [name, t] : d)
    n += name.starts_with(prefix);
  return n;
}

TEST_F(RoundTrip, DiffusionGemmaGetsItsEncoderBack) {
  Dict in = tiny_diffusion(rng, 3, 4, 32, 16);
  ASSERT_GT(count_prefix(in, "model.encoder."), 3u);
  ConvertSummary s = trip(in, "diffusion_gemma");
  Dict back = read_checkpoint(tmp / "back");
  expect_same(back,
              ref_with_base(ref_to_hf(ref_from_hf(in, true, {}), true, {}), in, "diffusion_gemma"));
  expect_every_tensor(in, back, folded);
  EXPECT_EQ(s.restored, count_prefix(in, "model.encoder."));
  EXPECT_TRUE(s.not_restored.empty());
}

TEST_F(RoundTrip, Gemma4LosesNothingAndRestoresNothing) {
  Dict in = tiny_gemma4(rng, 3, 4, 32, 16, true);
  ConvertSummary s = trip(in, "gemma4_moe");
  Dict back = read_checkpoint(tmp / "back");
  expect_same(back,
              ref_with_base(ref_to_hf(ref_from_hf(in, false, {}), false, {}), in, "gemma4_moe"));
  expect_every_tensor(in, back, folded);
  EXPECT_EQ(s.restored, 0u);
}

TEST_F(RoundTrip, Qwen3IsByteIdentical) {
  Dict in = tiny_qwen3(rng, 3, 4, 32, 16);
  ConvertSummary s = trip(in, "qwen3_moe");
  expect_every_tensor(in, read_checkpoint(tmp / "back"), nullptr);
  EXPECT_EQ(s.restored, 0u);
}

// A BF16 DeepSeek-V3 checkpoint: the FP8 one with every weight dequantized and no scales.
Dict bf16_deepseek(std::mt19937_64& rng) {
  Dict fp8 = tiny_deepseek(rng, 3, 1, 3, 140, 36, 40, 24);
  Dict d;
  for (const auto& [name, t] : fp8) {
    if (name.ends_with("_scale_inv"))
      continue;
    auto scale = fp8.find(name + "_scale_inv");
    d[name] = scale == fp8.end() ? t : ref_dequant(t, scale->second, DType::BF16);
  }
  return d;
}

TEST_F(RoundTrip, DeepseekInBf16IsByteIdentical) {
  Dict in = bf16_deepseek(rng);
  ConvertSummary s = trip(in, "deepseek_v3");
  expect_every_tensor(in, read_checkpoint(tmp / "back"), nullptr);
  EXPECT_EQ(s.restored, 0u);
}

// FP8 in: from_hf consumes the scales into BF16 weights (semantics 15); --base has nothing to
// restore (no key is dropped by a rule), so the round trip is the dequantized model in BF16,
// with every weight under its name and no scale.
TEST_F(RoundTrip, DeepseekInFp8ComesBackDequantizedAndBaseRestoresNothing) {
  Dict in = tiny_deepseek(rng, 3, 1, 3, 140, 36, 40, 24);
  ConvertSummary s = trip(in, "deepseek_v3");
  Dict back = read_checkpoint(tmp / "back");
  expect_same(back, ref_deepseek_to_hf(ref_deepseek_from_hf(in, {}), {}));
  EXPECT_EQ(s.restored, 0u);
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    if (name.ends_with("_scale_inv")) {
      EXPECT_EQ(back.count(name), 0u);
      continue;
    }
    ASSERT_EQ(back.count(name), 1u);
    EXPECT_EQ(back.at(name).shape, t.shape);
    if (t.dtype == DType::F8_E4M3)
      EXPECT_EQ(back.at(name).dtype, DType::BF16);
  }
  // The same output as without --base.
  ASSERT_TRUE(run(tmp / "native", tmp / "plain",
                  opts([&](ConvertOptions& o) { o.plan.max_shard_size = 40'000; }))
                  .ok());
  EXPECT_EQ(testing::files_of(tmp / "back"), testing::files_of(tmp / "plain"));
}

// The base must be the checkpoint IN was converted from: one of another size or depth (same
// family, same names) is refused before anything is written; the right one with another --dtype
// is not.
TEST_F(RoundTrip, ABaseOfAnotherSizeOrDepthIsRefusedBeforeWriting) {
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 2, 4, 32, 16), 2, "diffusion_gemma");
  write_checkpoint(tmp / "wider", tiny_diffusion(rng, 2, 4, 64, 16), 2, "diffusion_gemma");
  write_checkpoint(tmp / "deeper", tiny_diffusion(rng, 3, 4, 32, 16), 2, "diffusion_gemma");
  ASSERT_TRUE(run(tmp / "hf", tmp / "native").ok());
  auto back = [&](const char* base, std::optional<DType> dtype = std::nullopt) {
    return run(tmp / "native", tmp / "back", opts([&](ConvertOptions& o) {
                 o.plan.base = tmp / base;
                 o.plan.expert_dtype = dtype;
               }));
  };
  for (const char* base : {"wider", "deeper"}) {
    SCOPED_TRACE(base);
    auto r = back(base);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Errc::plan);
    EXPECT_NE(r.status().message().find((tmp / base).string() +
                                        ": --base is not the checkpoint IN was converted from: "),
              std::string::npos)
        << r.status().message();
    EXPECT_FALSE(fs::exists(tmp / "back"));
  }
  auto wider = back("wider");
  EXPECT_NE(wider.status().message().find("tensor 'model.decoder.embed_tokens.weight' is "),
            std::string::npos)
      << wider.status().message();
  auto deeper = back("deeper");
  EXPECT_NE(deeper.status().message().find("it has layer 'model.decoder.layers.2'"),
            std::string::npos)
      << deeper.status().message();

  auto cast = back("hf", DType::F32);
  ASSERT_TRUE(cast.ok());
  EXPECT_EQ(cast->restored, count_prefix(read_checkpoint(tmp / "hf"), "model.encoder."));
}

// One expert-parallel rank's native checkpoint holds some experts, fewer than its routers' rows:
// to_hf refuses it (2.8) with or without the base it came from, naming the count; a base with
// another expert count is refused as well, by the router's weights, which every rank holds whole.
TEST_F(RoundTrip, AnExpertParallelRanksExportIsRefusedWithOrWithoutItsBase) {
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 2, 4, 32, 16), 2, "diffusion_gemma");
  write_checkpoint(tmp / "more-experts", tiny_diffusion(rng, 2, 8, 32, 16), 2, "diffusion_gemma");
  ASSERT_TRUE(run(tmp / "hf", tmp / "rank1", opts([](ConvertOptions& o) {
                    o.plan.ep_size = 2;
                    o.plan.ep_rank = 1;
                  }))
                  .ok());
  auto back =
      run(tmp / "rank1", tmp / "back", opts([&](ConvertOptions& o) { o.plan.base = tmp / "hf"; }));
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find("holds 2 experts, but its layer's router"),
            std::string::npos)
      << back.status().message();
  EXPECT_FALSE(fs::exists(tmp / "back"));
  auto other = run(tmp / "rank1", tmp / "other",
                   opts([&](ConvertOptions& o) { o.plan.base = tmp / "more-experts"; }));
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("router"), std::string::npos) << other.status().message();
  EXPECT_FALSE(fs::exists(tmp / "other"));
}

// --exclude that drops a whole layer leaves the output without it by the user's choice: the base
// is still the one IN came from, and what it restores of that layer is excluded too.
TEST_F(RoundTrip, AnExcludedLayerIsNotAMissingLayerOfTheBase) {
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 2, 4, 32, 16), 2, "diffusion_gemma");
  ASSERT_TRUE(run(tmp / "hf", tmp / "native").ok());
  auto back = run(tmp / "native", tmp / "back", opts([&](ConvertOptions& o) {
                    o.plan.base = tmp / "hf";
                    o.plan.exclude = R"(.*layers\.1\.)";
                  }));
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_GT(back->excluded, 0u);
  size_t layer0 = 0;
  for (const auto& [name, t] : read_checkpoint(tmp / "back")) {
    EXPECT_EQ(name.find("layers.1."), std::string::npos) << name;
    layer0 += name.find("layers.0.") != std::string::npos;
  }
  EXPECT_GT(layer0, 0u);
  // A base one layer deeper is still refused.
  write_checkpoint(tmp / "deeper", tiny_diffusion(rng, 3, 4, 32, 16), 2, "diffusion_gemma");
  auto deeper = run(tmp / "native", tmp / "other", opts([&](ConvertOptions& o) {
                      o.plan.base = tmp / "deeper";
                      o.plan.exclude = R"(.*layers\.1\.)";
                    }));
  ASSERT_FALSE(deeper.ok());
  EXPECT_NE(deeper.status().message().find("layers.2"), std::string::npos)
      << deeper.status().message();
}

TEST_F(RoundTrip, WithoutBaseThePlanNamesWhatIsMissing) {
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 2, 2, 8, 4), 1, "diffusion_gemma");
  ASSERT_TRUE(run(tmp / "hf", tmp / "native").ok());
  auto plain = run(tmp / "native", tmp / "back");
  ASSERT_TRUE(plain.ok());
  ASSERT_EQ(plain->not_restored.size(), 1u);
  EXPECT_EQ(plain->not_restored[0],
            "model.encoder.* (the vision tower and the encoder's layer_scalar copies)");
  EXPECT_EQ(plain->restored, 0u);
  for (const auto& [name, t] : read_checkpoint(tmp / "back"))
    EXPECT_FALSE(name.starts_with("model.encoder.")) << name;
  // from_hf has nothing to say.
  auto forward = plan_conversion(tmp / "hf", {});
  ASSERT_TRUE(forward.ok());
  EXPECT_TRUE(forward->not_restored.empty());
}

// Fails the rename that commits the output file named `victim`.
class FailOneCommit final : public ForwardingIo {
public:
  FailOneCommit(Io& base, std::string victim) : ForwardingIo(base), victim_(std::move(victim)) {}
  int rename(const char* from, const char* to) override {
    if (std::string_view(to).ends_with("/" + victim_)) {
      errno = EIO;
      return -1;
    }
    return ForwardingIo::rename(from, to);
  }

private:
  std::string victim_;
};

TEST_F(RoundTrip, ResumeKeepsFilesOnlyWhileTheBaseIsUnchanged) {
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 4, 4, 32, 16), 3, "diffusion_gemma");
  ASSERT_TRUE(run(tmp / "hf", tmp / "native").ok());
  auto with = [&](bool resume, Io* io) {
    return opts([&](ConvertOptions& o) {
      o.plan.max_shard_size = 20'000;
      o.plan.base = tmp / "hf";
      o.writers = 1;
      o.resume = resume;
      o.io = io;
    });
  };
  auto plan = plan_conversion(tmp / "native", with(false, nullptr).plan);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  ASSERT_GE(plan->files.size(), 4u);
  const std::string victim = plan->files[plan->files.size() - 1].name;
  ASSERT_TRUE(run(tmp / "native", tmp / "ref", with(false, nullptr)).ok());
  for (bool touch_base : {false, true}) {
    SCOPED_TRACE(touch_base ? "a base shard modified since" : "nothing changed");
    fs::remove_all(tmp / "out");
    FailOneCommit io(Io::system(), victim);
    ASSERT_FALSE(run(tmp / "native", tmp / "out", with(true, &io)).ok());
    if (touch_base) { // same bytes, a later modification time: the run cannot know
      fs::path shard;
      for (const std::string& name : testing::list_dir(tmp / "hf"))
        if (name.ends_with(".safetensors"))
          shard = tmp / "hf" / name;
      ASSERT_FALSE(shard.empty());
      struct timespec times[2] = {{0, UTIME_OMIT}, {2'000'000'000, 0}};
      ASSERT_EQ(::utimensat(AT_FDCWD, shard.c_str(), times, 0), 0);
    }
    auto resumed = run(tmp / "native", tmp / "out", with(true, nullptr));
    ASSERT_TRUE(resumed.ok());
    if (touch_base)
      EXPECT_EQ(resumed->kept_files, 0u);
    else
      EXPECT_GE(resumed->kept_files, 2u);
    EXPECT_EQ(testing::files_of(tmp / "out"), testing::files_of(tmp / "ref"));
  }
}

// --- The planner, on checkpoints that exist only as headers. ---

struct Fake {
  std::string name;
  std::vector<uint64_t> shape;
};

Shard fake_shard(const std::string& file_name, const std::vector<Fake>& tensors) {
  Shard shard;
  shard.file_name = file_name;
  shard.header.data_start = 4096;
  uint64_t offset = 0;
  for (const Fake& f : tensors) {
    TensorInfo t;
    t.name = f.name;
    t.dtype = DType::BF16;
    t.shape = f.shape;
    t.begin = offset;
    t.end = offset += tensor_byte_size(DType::BF16, f.shape).value();
    shard.header.tensors.push_back(std::move(t));
  }
  return shard;
}

// A native diffusion_gemma checkpoint (one shard) with an HF base of two shards attached as
// Checkpoint::attach_base does.
Checkpoint native_with_base(const std::string& base_model_type,
                            const std::vector<Fake>& base_extra = {},
                            const std::vector<Fake>& native_extra = {}) {
  Checkpoint c;
  c.root = "/nonexistent/native";
  std::vector<Fake> native = {{"model.embed_tokens.weight", {8, 4}},
                              {"model.layers.0.moe.gate.proj.weight", {2, 4}},
                              {"model.layers.0.moe.experts.gate_and_up_projs", {2, 4, 6}},
                              {"model.layers.0.moe.experts.down_projs", {2, 3, 4}}};
  native.insert(native.end(), native_extra.begin(), native_extra.end());
  c.shards.push_back(fake_shard("model.safetensors", native));
  for (uint32_t t = 0; t < c.shards[0].header.tensors.size(); ++t)
    c.tensors[c.shards[0].header.tensors[t].name] = {0, t};
  c.base_first_shard = 1;
  c.base_root = "/nonexistent/hf";
  c.base_config_model_type = base_model_type;
  std::vector<Fake> first = {{"model.encoder.vision_tower.patch.weight", {4, 4}},
                             {"model.decoder.embed_tokens.weight", {8, 4}},
                             {"model.encoder.language_model.layers.0.layer_scalar", {1}}};
  first.insert(first.end(), base_extra.begin(), base_extra.end());
  c.shards.push_back(fake_shard("/nonexistent/hf/model-00001-of-00002.safetensors", first));
  c.shards.push_back(fake_shard("/nonexistent/hf/model-00002-of-00002.safetensors",
                                {{"model.decoder.layers.0.experts.down_proj", {2, 4, 3}},
                                 {"model.encoder.vision_tower.norm.weight", {4}}}));
  return c;
}

PlanOptions with_base() {
  PlanOptions o;
  o.base = "/nonexistent/hf";
  return o;
}

TEST(PlanBase, DroppedKeysAreCopiedFromTheBaseAfterTheConvertedOnesInItsOrder) {
  Checkpoint c = native_with_base("diffusion_gemma");
  auto plan = make_plan(c, with_base());
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->direction, Direction::to_hf);
  EXPECT_EQ(plan->restored, 3u);
  EXPECT_TRUE(plan->not_restored.empty());
  const std::vector<OutputTensor>& t = plan->tensors;
  ASSERT_GE(t.size(), 3u);
  const std::string names[] = {"model.encoder.vision_tower.patch.weight",
                               "model.encoder.language_model.layers.0.layer_scalar",
                               "model.encoder.vision_tower.norm.weight"};
  const TensorRef sources[] = {{1, 0}, {1, 2}, {2, 1}};
  for (size_t k = 0; k < 3; ++k) {
    const OutputTensor& r = t[t.size() - 3 + k];
    SCOPED_TRACE(r.name);
    EXPECT_EQ(r.name, names[k]);
    EXPECT_EQ(r.op, OpKind::copy);
    EXPECT_EQ(r.source.shard, sources[k].shard);
    EXPECT_EQ(r.source.tensor, sources[k].tensor);
    EXPECT_EQ(r.size, c.info(r.source).size());
    EXPECT_EQ(plan->weight_map.count(r.name), 1u);
  }
  EXPECT_EQ(t[t.size() - 1].note,
            "restored from --base /nonexistent/hf/model-00002-of-00002.safetensors");
  // Keys from_hf converts are not restored: the native checkpoint is their source.
  for (const OutputTensor& o : t)
    if (o.source.shard >= 1 && o.op == OpKind::copy)
      EXPECT_TRUE(o.name.starts_with("model.encoder.")) << o.name;
}

TEST(PlanBase, ABaseKeyTheConversionAlsoWritesIsAProblemNamingItsFile) {
  Checkpoint c = native_with_base("diffusion_gemma");
  const PlanOptions o = with_base();
  PlanContext ctx(c, o, *find_adapter("diffusion_gemma", Direction::to_hf));
  OutputTensor clash;
  clash.name = "model.encoder.vision_tower.norm.weight";
  clash.note = "from model.x";
  ctx.plan.tensors.push_back(clash);
  restore_base_keys(ctx);
  ASSERT_EQ(ctx.problems.size(), 1u);
  EXPECT_EQ(ctx.problems.lines()[0],
            "/nonexistent/hf/model-00002-of-00002.safetensors: tensor "
            "'model.encoder.vision_tower.norm.weight': would be restored from --base, but the "
            "to_hf conversion writes a tensor of this name too (from model.x); the native "
            "checkpoint already has it, so leave out --base or remove it from IN");
  EXPECT_EQ(ctx.plan.restored, 2u);
}

TEST(PlanBase, ABaseOfAnotherFamilyOrANativeBaseIsRefused) {
  auto other = make_plan(native_with_base("qwen3_moe"), with_base());
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), Errc::plan);
  EXPECT_NE(other.status().message().find(
                "/nonexistent/hf: --base is a qwen3_moe checkpoint (config.json model_type "
                "'qwen3_moe') but this conversion is diffusion_gemma"),
            std::string::npos)
      << other.status().message();

  // A native checkpoint as the base: its keys say so.
  Checkpoint c = native_with_base("", {{"model.layers.0.moe.experts.down_projs", {2, 3, 4}}});
  c.shards[1].header.tensors.erase(c.shards[1].header.tensors.begin(),
                                   c.shards[1].header.tensors.begin() + 3);
  c.shards[2] = fake_shard("/nonexistent/hf/model-00002-of-00002.safetensors",
                           {{"model.layers.0.moe.gate.proj.weight", {2, 4}}});
  auto native = make_plan(c, with_base());
  ASSERT_FALSE(native.ok());
  EXPECT_NE(native.status().message().find("--base is a native checkpoint"), std::string::npos)
      << native.status().message();
}

// The one problem of a plan that failed.
std::string only_problem(const Result<Plan>& plan) {
  if (plan.ok())
    return "(the plan succeeded)";
  const auto lines = testing::lines_of(plan.status().message());
  return lines.size() == 2 ? lines[1].substr(lines[1].find_first_not_of(' '))
                           : plan.status().message();
}

TEST(PlanBase, ABaseOfAnotherSizeIsRefusedNamingTheFirstShapeThatDiffers) {
  // Same names, another hidden size: the embedding is the first output tensor the base holds.
  Checkpoint c = native_with_base("diffusion_gemma");
  c.shards[1].header.tensors[1].shape = {8, 6};
  c.shards[2].header.tensors[0].shape = {2, 6, 3};
  auto plan = make_plan(c, with_base());
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), Errc::plan);
  EXPECT_EQ(only_problem(plan),
            "/nonexistent/hf: --base is not the checkpoint IN was converted from: tensor "
            "'model.decoder.embed_tokens.weight' is [8, 6] there and [8, 4] in this output; pass "
            "the Hugging Face checkpoint IN came from");

  // Another dtype is not another checkpoint: --dtype and FP8 change dtypes, not shapes.
  Checkpoint cast = native_with_base("diffusion_gemma");
  cast.shards[1].header.tensors[1].dtype = DType::F32;
  cast.shards[2].header.tensors[0].dtype = DType::F16;
  auto accepted = make_plan(cast, with_base());
  ASSERT_TRUE(accepted.ok()) << accepted.status().message();
  EXPECT_EQ(accepted->restored, 3u);
}

TEST(PlanBase, ABaseWithOtherLayersIsRefused) {
  // A deeper base: its encoder's copy of layer 1's scalar would belong to no layer of the output.
  auto deeper =
      make_plan(native_with_base("diffusion_gemma",
                                 {{"model.decoder.layers.1.input_layernorm.weight", {4}},
                                  {"model.encoder.language_model.layers.1.layer_scalar", {1}}}),
                with_base());
  EXPECT_EQ(only_problem(deeper),
            "/nonexistent/hf: --base is not the checkpoint IN was converted from: it has layer "
            "'model.decoder.layers.1' (tensor 'model.decoder.layers.1.input_layernorm.weight'), "
            "which this output lacks; pass the Hugging Face checkpoint IN came from");

  // A shallower base: the output's layer 1 would get no encoder scalar back.
  auto shallower = make_plan(
      native_with_base("diffusion_gemma", {}, {{"model.layers.1.input_layernorm.weight", {4}}}),
      with_base());
  EXPECT_EQ(only_problem(shallower),
            "/nonexistent/hf: --base is not the checkpoint IN was converted from: this output has "
            "layer 'model.decoder.layers.1' (tensor 'model.decoder.layers.1.input_layernorm."
            "weight'), which the base lacks; pass the Hugging Face checkpoint IN came from");

  // The layers of a stack that from_hf drops are their own: a vision tower with more blocks than
  // the decoder has layers is the right base (synth --layers 1 writes two blocks).
  auto vision = make_plan(
      native_with_base("diffusion_gemma",
                       {{"model.encoder.vision_tower.encoder.layers.3.mlp.fc1.weight", {4, 4}}}),
      with_base());
  ASSERT_TRUE(vision.ok()) << vision.status().message();
  EXPECT_EQ(vision->restored, 4u);
}

TEST(PlanBase, BaseOnFromHfIsAUsageErrorAndAnUnattachedBaseIsRefused) {
  Checkpoint c = native_with_base("diffusion_gemma");
  PlanOptions o = with_base();
  o.direction = Direction::from_hf;
  auto from = make_plan(c, o);
  ASSERT_FALSE(from.ok());
  EXPECT_EQ(from.status().code(), Errc::invalid_argument);

  c.base_first_shard.reset();
  c.shards.resize(1);
  auto unattached = make_plan(c, with_base());
  ASSERT_FALSE(unattached.ok());
  EXPECT_EQ(unattached.status().code(), Errc::invalid_argument);
}

TEST(PlanBase, WithoutBaseOnlyFamiliesThatDropKeysGetTheNote) {
  Checkpoint c = native_with_base("diffusion_gemma");
  c.base_first_shard.reset();
  c.shards.resize(1);
  auto plan = make_plan(c, {});
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->not_restored,
            std::vector<std::string>{
                "model.encoder.* (the vision tower and the encoder's layer_scalar copies)"});
  EXPECT_EQ(plan->restored, 0u);
  for (const char* model : {"gemma4_moe", "qwen3_moe", "deepseek_v3"}) {
    const AdapterSpec* from_hf = find_adapter(model, Direction::from_hf);
    ASSERT_NE(from_hf, nullptr);
    for (const Rule& r : from_hf->rules)
      EXPECT_NE(r.action, RuleAction::drop) << model << " drops keys: the note must list them";
  }
}

} // namespace
} // namespace shardshift
