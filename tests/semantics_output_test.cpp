// semantics_output_test.cpp: the output-file rules of docs/semantics.md (order, cutting, names,
// the index, side files) and detection and option checks, each test named by its rule.
#include "semantics_support.h"
#include "staging.h"

namespace shardshift {
namespace {

using namespace semantics_test;

// --- 4.1, 4.4: order ----------------------------------------------------------------------------

TEST_F(SemanticsRules, FromHfOutputFollowsInputDataOrderWithCopiesFirstInAFile) {
  const uint64_t E = 2, H = 4, I = 2;
  fs::create_directories(tmp / "hf");
  // Two files without an index, read in file-name order; in each, the data order (not the
  // header's sorted key order) decides.
  write_ordered(
      tmp / "hf" / "a.safetensors",
      {{"model.decoder.layers.0.experts.down_proj", random_tensor(rng, DType::BF16, {E, H, I})},
       {"model.decoder.norm.weight", random_tensor(rng, DType::BF16, {H})},
       {"model.encoder.vision_tower.w", random_tensor(rng, DType::BF16, {2})},
       {"model.decoder.embed_tokens.weight", random_tensor(rng, DType::BF16, {8, H})},
       {"model.decoder.layers.0.router.per_expert_scale", random_tensor(rng, DType::BF16, {E})},
       {"model.decoder.layers.0.experts.gate_up_proj",
        random_tensor(rng, DType::BF16, {E, 2 * I, H})}});
  write_ordered(
      tmp / "hf" / "b.safetensors",
      {{"model.decoder.layers.0.router.scale", random_tensor(rng, DType::BF16, {H})},
       {"model.decoder.layers.0.router.proj.weight", random_tensor(rng, DType::BF16, {E, H})}});
  auto plan = plan_conversion(tmp / "hf", PlanOptions{});
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  std::vector<std::string> names;
  for (const OutputTensor& t : plan->tensors)
    names.push_back(t.name);
  // Input order; the tied head right after the embedding; dropped keys leave no gap.
  EXPECT_EQ(names, (std::vector<std::string>{
                       "model.layers.0.moe.experts.down_projs", "model.norm.weight",
                       "model.embed_tokens.weight", "lm_head.weight",
                       "model.layers.0.moe.experts.gate_and_up_projs",
                       "model.layers.0.moe.gate.scale", "model.layers.0.moe.gate.proj.weight"}));

  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_TRUE(r.ok());
  // One file: the copies first, then the transformed tensors, each group in that order.
  EXPECT_EQ(names_in_data_order(tmp / "n"),
            (std::vector<std::vector<std::string>>{
                {"model.norm.weight", "model.embed_tokens.weight", "lm_head.weight",
                 "model.layers.0.moe.gate.scale", "model.layers.0.moe.gate.proj.weight",
                 "model.layers.0.moe.experts.down_projs",
                 "model.layers.0.moe.experts.gate_and_up_projs"}}));
}

TEST_F(SemanticsRules, ToHfOnesComeRightAfterDownProj) {
  const uint64_t E = 3, H = 4, I = 2;
  fs::create_directories(tmp / "native");
  write_ordered(
      tmp / "native" / "model.safetensors",
      {{"model.layers.0.moe.experts.down_projs", random_tensor(rng, DType::BF16, {E, I, H})},
       {"model.norm.weight", random_tensor(rng, DType::BF16, {H})},
       {"model.layers.0.moe.experts.gate_and_up_projs",
        random_tensor(rng, DType::BF16, {E, H, 2 * I})},
       {"model.layers.0.moe.gate.proj.weight", random_tensor(rng, DType::BF16, {E, H})}});
  auto plan = plan_conversion(tmp / "native", PlanOptions{});
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  std::vector<std::string> names;
  for (const OutputTensor& t : plan->tensors)
    names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"model.decoder.layers.0.experts.down_proj",
                                             "model.decoder.layers.0.router.per_expert_scale",
                                             "model.decoder.norm.weight",
                                             "model.decoder.layers.0.experts.gate_up_proj",
                                             "model.decoder.layers.0.router.proj.weight"}));
  auto r = run(tmp / "native", tmp / "hf");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(names_in_data_order(tmp / "hf"),
            (std::vector<std::vector<std::string>>{
                {"model.decoder.norm.weight", "model.decoder.layers.0.router.proj.weight",
                 "model.decoder.layers.0.experts.down_proj",
                 "model.decoder.layers.0.router.per_expert_scale",
                 "model.decoder.layers.0.experts.gate_up_proj"}}));
}

// --- 4.2, 4.3, 4.6: cutting, names, index -------------------------------------------------------

TEST_F(SemanticsRules, ConverterCutsGreedilyInDataOrder) {
  // Pass-through tensors (renamed from model.decoder.* to model.*: an adapter that converts
  // nothing is refused, semantics 6.3) of 60, 40, 1, 200, 0, 30 and 30 bytes under a limit of 100:
  // [60, 40] fit exactly; 1 starts a file; 200 is alone (the file already holds a byte); the empty
  // tensor would push the over-full file further past the limit, so it starts the last file:
  // [0, 30, 30].
  fs::create_directories(tmp / "in");
  write_ordered(tmp / "in" / "model.safetensors", {{"model.decoder.t0", bytes_tensor(60)},
                                                   {"model.decoder.t1", bytes_tensor(40)},
                                                   {"model.decoder.t2", bytes_tensor(1)},
                                                   {"model.decoder.t3", bytes_tensor(200)},
                                                   {"model.decoder.t4", bytes_tensor(0)},
                                                   {"model.decoder.t5", bytes_tensor(30)},
                                                   {"model.decoder.t6", bytes_tensor(30)}});
  auto r = run(tmp / "in", tmp / "out", opts([](ConvertOptions& o) {
                 o.plan.adapter = "diffusion_gemma";
                 o.plan.direction = Direction::from_hf;
                 o.plan.tied_head = false;
                 o.plan.max_shard_size = 100;
               }));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->files, 4u);
  EXPECT_EQ(output_files(tmp / "out"), (std::vector<std::string>{"model-00001-of-00004.safetensors",
                                                                 "model-00002-of-00004.safetensors",
                                                                 "model-00003-of-00004.safetensors",
                                                                 "model-00004-of-00004.safetensors",
                                                                 "model.safetensors.index.json"}));
  EXPECT_EQ(names_in_data_order(tmp / "out"),
            (std::vector<std::vector<std::string>>{{"model.t0", "model.t1"},
                                                   {"model.t2"},
                                                   {"model.t3"},
                                                   {"model.t4", "model.t5", "model.t6"}}));
  // The index: total_size is the sum of the tensor bytes (headers excluded), and its exact text.
  EXPECT_EQ(testing::read_bytes(tmp / "out" / "model.safetensors.index.json"),
            "{\n"
            "  \"metadata\": {\n"
            "    \"total_size\": 361\n"
            "  },\n"
            "  \"weight_map\": {\n"
            "    \"model.t0\": \"model-00001-of-00004.safetensors\",\n"
            "    \"model.t1\": \"model-00001-of-00004.safetensors\",\n"
            "    \"model.t2\": \"model-00002-of-00004.safetensors\",\n"
            "    \"model.t3\": \"model-00003-of-00004.safetensors\",\n"
            "    \"model.t4\": \"model-00004-of-00004.safetensors\",\n"
            "    \"model.t5\": \"model-00004-of-00004.safetensors\",\n"
            "    \"model.t6\": \"model-00004-of-00004.safetensors\"\n"
            "  }\n"
            "}\n");
}

TEST_F(SemanticsRules, IndexTotalSizeCountsTheTiedHead) {
  Dict in = tiny_diffusion(rng, 3, 4, 16, 8);
  write_checkpoint(tmp / "hf", in, 2, "diffusion_gemma");
  auto r =
      run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.plan.max_shard_size = 2000; }));
  ASSERT_TRUE(r.ok());
  ASSERT_GT(r->files, 1u);
  uint64_t sum = 0;
  Dict got = read_checkpoint(tmp / "n");
  ASSERT_TRUE(got.count("lm_head.weight"));
  for (auto& [name, t] : got)
    sum += t.bytes.size();
  const std::string index = testing::read_bytes(tmp / "n" / "model.safetensors.index.json");
  EXPECT_NE(index.find("\"total_size\": " + std::to_string(sum) + "\n"), std::string::npos)
      << index;
}

TEST_F(SemanticsRules, OneOutputFileIsModelSafetensorsWithoutIndex) {
  // A sharded input (with an index) whose output fits in one file.
  Dict in = tiny_diffusion(rng, 2, 2, 4, 2);
  write_checkpoint(tmp / "hf", in, 3, "diffusion_gemma");
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->files, 1u);
  EXPECT_EQ(output_files(tmp / "n"),
            (std::vector<std::string>{"config.json", "model.safetensors"}));
  expect_same(read_checkpoint(tmp / "n"), ref_from_hf(in, true, {}));
}

TEST(SemanticsUnits, SizesTakeDecimalAndBinaryUnitsAndRefuseWhatOthersReadOtherwise) {
  struct Case {
    const char* text;
    uint64_t bytes;
  };
  for (Case c :
       {Case{"123", 123}, Case{"123B", 123}, Case{"5GB", 5'000'000'000}, Case{"5gB", 5'000'000'000},
        Case{"2kB", 2000}, Case{"2KB", 2000}, Case{"3MB", 3'000'000},
        Case{"1TB", 1'000'000'000'000}, Case{"2KiB", 2048}, Case{"3MiB", 3u << 20},
        Case{"1gib", uint64_t{1} << 30}, Case{"1TiB", uint64_t{1} << 40}, Case{"0", 0},
        Case{"1.5GB", 1'500'000'000}, Case{"0.5KiB", 512}}) {
    auto v = parse_size(c.text);
    ASSERT_TRUE(v.ok()) << c.text;
    EXPECT_EQ(*v, c.bytes) << c.text;
  }
  for (const char* bad : {"", "GB", "5XB", "-1", "5 GB", "1e3"}) {
    auto v = parse_size(bad);
    EXPECT_FALSE(v.ok()) << bad;
    if (!v.ok())
      EXPECT_EQ(v.status().code(), Errc::invalid_argument) << bad;
  }
  // Hugging Face reads "5Gb" as bits (625 MB); dd reads a bare "2K" as 2048: refused, saying what
  // to write instead.
  for (const char* ambiguous : {"5gb", "10Mb", "2kb", "1tb", "2k", "10M", "1G", "3T"}) {
    auto v = parse_size(ambiguous);
    ASSERT_FALSE(v.ok()) << ambiguous;
    EXPECT_EQ(v.status().code(), Errc::invalid_argument) << ambiguous;
    EXPECT_NE(v.status().message().find("(decimal) or "), std::string::npos)
        << v.status().message();
  }
  EXPECT_NE(parse_size("10Mb").status().message().find("write 10MB (decimal) or 10MiB (binary)"),
            std::string::npos)
      << parse_size("10Mb").status().message();
}

// A well-formed size past the largest (2^63 - 1 bytes) was called invalid, with examples of the
// form the user had just written; a whole number near the top was also rounded through a double.
TEST(SemanticsUnits, ASizePastTheLargestIsTooLargeNotInvalid) {
  const std::string limit = "(at most 9223372036854775807 bytes)";
  for (const char* huge : {"18446744073709551615", "18446744073709551616", "9223372036854775808",
                           "99999999999TB", "20000000TB", "8388608TiB", "10000000000000000000B",
                           "9223372036854775807.5", "99999999999999999999999999999999999999.5GB"}) {
    auto v = parse_size(huge);
    ASSERT_FALSE(v.ok()) << huge << " gave " << *v;
    EXPECT_EQ(v.status().code(), Errc::invalid_argument) << huge;
    EXPECT_EQ(v.status().message(), "size '" + std::string(huge) + "' is too large " + limit);
  }
  // The largest is taken exactly, in every spelling that reaches it or stays below.
  struct Case {
    const char* text;
    uint64_t bytes;
  };
  for (Case c : {Case{"9223372036854775807", MAX_SIZE}, Case{"9223372036854775807B", MAX_SIZE},
                 Case{"9223372036854775806", MAX_SIZE - 1}, Case{"8388607TiB", 8388607ull << 40},
                 Case{"9223372TB", 9'223'372'000'000'000'000},
                 Case{"4611686018427387903.5", 4611686018427387904}}) {
    auto v = parse_size(c.text);
    ASSERT_TRUE(v.ok()) << c.text << ": " << v.status().message();
    EXPECT_EQ(*v, c.bytes) << c.text;
  }
}

// --- 4.7: side files ----------------------------------------------------------------------------

TEST_F(SemanticsRules, SideFilesAreCopiedUnlessNoSideFiles) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  write_checkpoint(tmp / "hf", in, 2, "diffusion_gemma");
  testing::write_bytes(tmp / "hf" / "tokenizer.json", "{\"tok\": 1}");
  fs::create_directory(tmp / "hf" / "sub");
  testing::write_bytes(tmp / "hf" / "sub" / "x.txt", "x");

  auto r = run(tmp / "hf", tmp / "with");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(
      output_files(tmp / "with"),
      (std::vector<std::string>{"config.json", "model.safetensors", "sub", "tokenizer.json"}));
  for (const char* name : {"config.json", "tokenizer.json", "sub/x.txt"})
    EXPECT_EQ(testing::read_bytes(tmp / "with" / name), testing::read_bytes(tmp / "hf" / name))
        << name;

  auto none = run(tmp / "hf", tmp / "without",
                  opts([](ConvertOptions& o) { o.plan.copy_side_files = false; }));
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(output_files(tmp / "without"), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(testing::read_bytes(tmp / "without" / "model.safetensors"),
            testing::read_bytes(tmp / "with" / "model.safetensors"));
}

// --- 6: detection -------------------------------------------------------------------------------

std::string detected(const fs::path& dir, PlanOptions o = {}) {
  auto plan = plan_conversion(dir, o);
  if (!plan.ok())
    return "error: " + plan.status().message();
  return plan->adapter + " " + direction_name(plan->direction);
}

TEST_F(SemanticsRules, ConfigModelTypeDecidesTheModelBeforeTheKeys) {
  // Keys alone say diffusion_gemma (model.decoder.*).
  Dict dg = tiny_diffusion(rng, 1, 2, 4, 2);
  write_checkpoint(tmp / "dg", dg);
  EXPECT_EQ(detected(tmp / "dg"), "diffusion_gemma from_hf");
  for (const char* type : {"gemma3n", "gemma3n_text", "gemma4", "gemma4_text"}) {
    testing::write_bytes(tmp / "dg" / "config.json",
                         std::string("{\"model_type\": \"") + type + "\"}");
    EXPECT_EQ(detected(tmp / "dg"), "gemma4_moe from_hf") << type;
  }
  // An unknown model_type falls through to the keys.
  testing::write_bytes(tmp / "dg" / "config.json", "{\"model_type\": \"llama\"}");
  EXPECT_EQ(detected(tmp / "dg"), "diffusion_gemma from_hf");

  // Keys alone say gemma4_moe (language_model.*); a model_type containing "diffusion" wins.
  Dict g4 = tiny_gemma4(rng, 1, 2, 4, 2, false, "router");
  write_checkpoint(tmp / "g4", g4);
  EXPECT_EQ(detected(tmp / "g4"), "gemma4_moe from_hf");
  testing::write_bytes(tmp / "g4" / "config.json", "{\"model_type\": \"my_diffusion_lm\"}");
  EXPECT_EQ(detected(tmp / "g4"), "diffusion_gemma from_hf");
}

TEST_F(SemanticsRules, LanguageModelKeysSelectGemma4WithoutConfig) {
  for (bool model_prefix : {false, true}) {
    const fs::path dir = tmp / (model_prefix ? "with" : "without");
    Dict in = tiny_gemma4(rng, 1, 2, 4, 2, model_prefix, "router");
    write_checkpoint(dir, in);
    ASSERT_FALSE(fs::exists(dir / "config.json"));
    EXPECT_EQ(detected(dir), "gemma4_moe from_hf") << dir;
    auto r = run(dir, dir.string() + "-out");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->adapter, "gemma4_moe");
    expect_same(read_checkpoint(dir.string() + "-out"), ref_from_hf(in, false, {}));
  }
}

TEST_F(SemanticsRules, UndetectableModelOrDirectionAndUnknownAdapterAreRefused) {
  write_checkpoint(tmp / "anon", {{"foo.weight", random_tensor(rng, DType::BF16, {4})}});
  auto model = plan_conversion(tmp / "anon", {});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), Errc::invalid_argument);
  EXPECT_EQ(model.status().message(),
            "cannot tell the model of this checkpoint (config.json model_type '', no recognisable "
            "keys); pass --adapter diffusion_gemma, gemma4_moe, qwen3_moe or deepseek_v3");
  testing::write_bytes(tmp / "anon" / "config.json", "{\"model_type\": \"llama\"}");
  model = plan_conversion(tmp / "anon", {});
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("(config.json model_type 'llama', no recognisable keys)"),
            std::string::npos)
      << model.status().message();

  // model.layers.* says diffusion_gemma, but no key says which direction.
  write_checkpoint(tmp / "plain", {{"model.layers.0.mlp.up_proj.weight",
                                    random_tensor(rng, DType::BF16, {2, 4})}});
  auto none = plan_conversion(tmp / "plain", {});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), Errc::invalid_argument);
  EXPECT_EQ(none.status().message(), "cannot tell the direction of this checkpoint (no router or "
                                     "expert keys); pass --direction from_hf or to_hf");
  // Both a Hugging Face and a native key.
  write_checkpoint(
      tmp / "both",
      {{"model.decoder.layers.0.router.proj.weight", random_tensor(rng, DType::BF16, {2, 4})},
       {"model.layers.1.moe.gate.proj.weight", random_tensor(rng, DType::BF16, {2, 4})}});
  auto both = plan_conversion(tmp / "both", {});
  ASSERT_FALSE(both.ok());
  EXPECT_EQ(both.status().message(),
            "cannot tell the direction of this checkpoint (it has both Hugging Face and native "
            "keys); pass --direction from_hf or to_hf");

  // An unknown --adapter (checked once the direction is known: an input whose direction cannot
  // be told gets the direction's error first).
  PlanOptions unknown;
  unknown.adapter = "llama";
  write_checkpoint(tmp / "dg", tiny_diffusion(rng, 1, 2, 4, 2));
  auto adapter = plan_conversion(tmp / "dg", unknown);
  ASSERT_FALSE(adapter.ok());
  EXPECT_EQ(adapter.status().code(), Errc::invalid_argument);
  EXPECT_EQ(adapter.status().message(),
            "unknown adapter 'llama'; known: diffusion_gemma, gemma4_moe, qwen3_moe, deepseek_v3");

  // convert() refuses the same way and writes nothing.
  auto r = run(tmp / "anon", tmp / "out");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::invalid_argument);
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST_F(SemanticsRules, UnreadableConfigIsAnErrorBeforeAnyOutput) {
  if (geteuid() == 0)
    GTEST_SKIP() << "root reads a file whatever its permissions";
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 1, 2, 4, 2), 1, "diffusion_gemma");
  ASSERT_EQ(chmod((tmp / "hf" / "config.json").c_str(), 0), 0);
  auto r = run(tmp / "hf", tmp / "n");
  chmod((tmp / "hf" / "config.json").c_str(), 0644);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::io);
  EXPECT_NE(r.status().message().find("config.json: cannot read"), std::string::npos)
      << r.status().message();
  EXPECT_EQ(testing::list_dir(tmp.path()), std::vector<std::string>{"hf"});
}

// --- 7.2: invalid --exclude --------------------------------------------------------------------

TEST_F(SemanticsRules, InvalidExcludeIsRefusedOnToHfOnly) {
  write_checkpoint(tmp / "native", tiny_native(rng, 1, 2, 4, 2));
  // Patterns that neither Python nor shardshift can compile.
  for (const char* pattern : {"([unclosed", "*model", "model)"}) {
    auto r = run(tmp / "native", tmp / "hf",
                 opts([&](ConvertOptions& o) { o.plan.exclude = std::string(pattern); }));
    ASSERT_FALSE(r.ok()) << pattern;
    EXPECT_EQ(r.status().code(), Errc::invalid_argument) << pattern;
    EXPECT_EQ(r.status().message().rfind(std::string("--exclude '") + pattern + "'", 0), 0u)
        << r.status().message();
  }
  EXPECT_FALSE(fs::exists(tmp / "hf"));
  // from_hf has no exclusion: a pattern given there is refused as having no effect, not
  // ignored; the default pattern is no pattern given.
  write_checkpoint(tmp / "hf_in", tiny_diffusion(rng, 1, 2, 4, 2));
  auto from = run(tmp / "hf_in", tmp / "n",
                  opts([](ConvertOptions& o) { o.plan.exclude = std::string("([unclosed"); }));
  ASSERT_FALSE(from.ok());
  EXPECT_EQ(from.status().code(), Errc::invalid_argument);
  EXPECT_NE(from.status().message().find("--exclude applies to to_hf only"), std::string::npos)
      << from.status().message();
  EXPECT_FALSE(fs::exists(tmp / "n"));
  EXPECT_TRUE(run(tmp / "hf_in", tmp / "n").ok());
}

// --scale-dtype and --no-tied-head where they have nothing to set are refused the same way.
TEST_F(SemanticsRules, FlagsWithNothingToSetAreRefused) {
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 1, 2, 4, 2));
  write_checkpoint(tmp / "native", tiny_native(rng, 1, 2, 4, 2));
  auto scale =
      run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.plan.scale_dtype = DType::F32; }));
  ASSERT_FALSE(scale.ok());
  EXPECT_EQ(scale.status().code(), Errc::invalid_argument);
  EXPECT_NE(scale.status().message().find("--scale-dtype sets the dtype of the per_expert_scale "
                                          "that to_hf writes"),
            std::string::npos)
      << scale.status().message();
  auto head =
      run(tmp / "native", tmp / "n", opts([](ConvertOptions& o) { o.plan.tied_head = false; }));
  ASSERT_FALSE(head.ok());
  EXPECT_NE(head.status().message().find("--no-tied-head applies where from_hf writes a tied "
                                         "lm_head.weight (diffusion_gemma); this is "
                                         "diffusion_gemma to_hf"),
            std::string::npos)
      << head.status().message();
  EXPECT_FALSE(fs::exists(tmp / "n"));
  // Where they apply, they convert.
  EXPECT_TRUE(run(tmp / "native", tmp / "a",
                  opts([](ConvertOptions& o) { o.plan.scale_dtype = DType::F32; }))
                  .ok());
  EXPECT_TRUE(
      run(tmp / "hf", tmp / "b", opts([](ConvertOptions& o) { o.plan.tied_head = false; })).ok());
}

// --- 10.1: checks on OUT ------------------------------------------------------------------------

TEST_F(SemanticsRules, OutputChecksBeforeTheInputIsOpened) {
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 1, 2, 4, 2));
  const std::string before = testing::read_bytes(tmp / "hf" / "model.safetensors");
  auto expect_refused = [&](const fs::path& in, const fs::path& out, bool force,
                            const std::string& message) {
    auto r = run(in, out, opts([&](ConvertOptions& o) { o.force = force; }));
    ASSERT_FALSE(r.ok()) << message;
    EXPECT_EQ(r.status().code(), Errc::invalid_argument) << message;
    // The rule's words begin the message; what follows is advice.
    EXPECT_EQ(r.status().message().rfind(message, 0), 0u) << r.status().message();
  };
  // OUT is the input, with or without --force; for a single-file input, its directory.
  expect_refused(tmp / "hf", tmp / "hf", false,
                 (tmp / "hf").string() + ": the output must not be the input");
  expect_refused(tmp / "hf", tmp / "hf", true,
                 (tmp / "hf").string() + ": the output must not be the input");
  expect_refused(tmp / "hf" / "model.safetensors", tmp / "hf", true,
                 (tmp / "hf").string() + ": the output must not be the input");
  // An existing OUT that is not a directory, even with --force.
  testing::write_bytes(tmp / "file", "keep me");
  expect_refused(tmp / "hf", tmp / "file", true,
                 (tmp / "file").string() + ": exists and is not a directory");
  EXPECT_EQ(testing::read_bytes(tmp / "file"), "keep me");
  // A missing parent directory.
  expect_refused(tmp / "hf", tmp / "no" / "out", false,
                 (tmp / "no").string() + ": the output's parent directory does not exist");
  // Checked before the input is opened: a missing input gives the same OUT error.
  expect_refused(tmp / "missing", tmp / "no" / "out", false,
                 (tmp / "no").string() + ": the output's parent directory does not exist");
  EXPECT_EQ(testing::read_bytes(tmp / "hf" / "model.safetensors"), before);
  EXPECT_EQ(testing::list_dir(tmp.path()), (std::vector<std::string>{"file", "hf"}));
}

// --- 10.2: the old OUT is put back when the final rename fails ----------------------------------

// Fails the rename that moves the finished staging directory onto OUT.
class FailFinalRename final : public ForwardingIo {
public:
  FailFinalRename(Io& base, fs::path output) : ForwardingIo(base), output_(std::move(output)) {}
  int rename(const char* from, const char* to) override {
    if (fs::path(to) == output_ &&
        std::string_view(from).find("shardshift-tmp") != std::string::npos) {
      errno = EIO;
      return -1;
    }
    return ForwardingIo::rename(from, to);
  }

private:
  fs::path output_;
};

TEST_F(SemanticsRules, OldOutputIsPutBackWhenTheFinalRenameFails) {
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 1, 2, 4, 2), 1, "diffusion_gemma");
  ASSERT_TRUE(run(tmp / "hf", tmp / "n").ok()); // the old output, a shardshift output itself
  const std::string old_bytes = testing::read_bytes(tmp / "n" / "model.safetensors");
  const std::vector<std::string> old_files = testing::list_dir(tmp / "n");
  write_checkpoint(tmp / "hf2", tiny_diffusion(rng, 1, 2, 4, 2), 1, "diffusion_gemma");
  FailFinalRename io(Io::system(), tmp / "n");
  auto r = run(tmp / "hf2", tmp / "n", opts([&](ConvertOptions& o) {
                 o.force = true;
                 o.io = &io;
               }));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::io);
  EXPECT_NE(r.status().message().find(": cannot rename the finished output into place: "),
            std::string::npos)
      << r.status().message();
  // OUT is the old output, whole; no staging or set-aside directory is left.
  EXPECT_EQ(testing::list_dir(tmp / "n"), old_files);
  EXPECT_EQ(testing::read_bytes(tmp / "n" / "model.safetensors"), old_bytes);
  EXPECT_EQ(testing::list_dir(tmp.path()), (std::vector<std::string>{"hf", "hf2", "n"}));
}

// Another process makes OUT just before the final rename (a second conversion into it).
class AnotherProcessMakesOut final : public ForwardingIo {
public:
  AnotherProcessMakesOut(Io& base, fs::path output)
      : ForwardingIo(base), output_(std::move(output)) {}
  int rename(const char* from, const char* to) override {
    if (fs::path(to) == output_ &&
        std::string_view(from).find("shardshift-tmp") != std::string::npos) {
      fs::create_directory(output_);
      testing::write_bytes(output_ / "theirs", "x");
    }
    return ForwardingIo::rename(from, to);
  }

private:
  fs::path output_;
};

TEST_F(SemanticsRules, AnOutMadeMeanwhileByAnotherProcessIsNamedAndKept) {
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 1, 2, 4, 2), 1, "diffusion_gemma");
  AnotherProcessMakesOut io(Io::system(), tmp / "n");
  auto r = run(tmp / "hf", tmp / "n", opts([&](ConvertOptions& o) { o.io = &io; }));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find((tmp / "n").string() +
                                      ": another process created it while this run worked"),
            std::string::npos)
      << r.status().message();
  EXPECT_EQ(testing::list_dir(tmp / "n"), std::vector<std::string>{"theirs"}); // theirs, kept
  EXPECT_EQ(testing::list_dir(tmp.path()), (std::vector<std::string>{"hf", "n"}));

  // With --resume the finished files are kept, and the advice says what to do first now that OUT
  // exists; done, the rerun with --resume continues from them.
  fs::remove_all(tmp / "n");
  auto kept = run(tmp / "hf", tmp / "n", opts([&](ConvertOptions& o) {
                    o.io = &io;
                    o.resume = true;
                  }));
  ASSERT_FALSE(kept.ok());
  EXPECT_NE(kept.status().message().find(" exists now: once it is out of the way"),
            std::string::npos)
      << kept.status().message();
  fs::remove_all(tmp / "n");
  auto again = run(tmp / "hf", tmp / "n", opts([&](ConvertOptions& o) { o.resume = true; }));
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ(again->kept_files, 1u);
  EXPECT_EQ(testing::list_dir(tmp.path()), (std::vector<std::string>{"hf", "n"}));
}

// A file of the user's appears in OUT while a --force run works: the run's second look refuses
// to replace OUT (after the plan fingerprint was taken down for the commit). With --resume, the
// fingerprint is put back, so the kept files are taken up by the next --resume run as the
// message says, not removed as an unknown run's leftovers.
class UserWritesIntoOut final : public ForwardingIo {
public:
  UserWritesIntoOut(Io& base, fs::path output) : ForwardingIo(base), output_(std::move(output)) {}
  int unlink(const char* path) override {
    if (fs::path(path).filename() == PLAN_FINGERPRINT_NAME)
      testing::write_bytes(output_ / "notes.txt", "mine");
    return ForwardingIo::unlink(path);
  }

private:
  fs::path output_;
};

TEST_F(SemanticsRules, AForceRunRefusedAtItsCommitKeepsAResumableStaging) {
  write_checkpoint(tmp / "hf", tiny_diffusion(rng, 1, 2, 4, 2), 1, "diffusion_gemma");
  ASSERT_TRUE(run(tmp / "hf", tmp / "n").ok());
  UserWritesIntoOut io(Io::system(), tmp / "n");
  auto refused = run(tmp / "hf", tmp / "n", opts([&](ConvertOptions& o) {
                       o.io = &io;
                       o.force = true;
                       o.resume = true;
                     }));
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("notes.txt"), std::string::npos)
      << refused.status().message();
  EXPECT_NE(refused.status().message().find("run the same command with --resume"),
            std::string::npos)
      << refused.status().message();
  EXPECT_EQ(testing::read_bytes(tmp / "n" / "notes.txt"), "mine"); // theirs, kept
  fs::remove(tmp / "n" / "notes.txt");
  auto again = run(tmp / "hf", tmp / "n", opts([&](ConvertOptions& o) {
                     o.force = true;
                     o.resume = true;
                   }));
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ(again->kept_files, 1u);
  EXPECT_EQ(testing::list_dir(tmp.path()), (std::vector<std::string>{"hf", "n"}));
}

// --- 12.2: names with a line break
// ----------------------------------------------------------------

TEST_F(SemanticsRules, KeysWithALineBreakAreRenamedLikeThePythonReferenceOrRefused) {
  // The reference re-prefixes by a plain string test, so 'model.decoder.extra\n' becomes
  // 'model.extra\n'; shardshift must do the same or refuse the name.
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  in["model.decoder.extra\n"] = random_tensor(rng, DType::BF16, {2});
  fs::create_directories(tmp / "hf");
  write_ordered(tmp / "hf" / "model.safetensors", Ordered(in.begin(), in.end()));
  auto r = run(tmp / "hf", tmp / "n");
  if (!r.ok()) { // a refusal names the key, escaped, on one line
    EXPECT_NE(r.status().message().find("extra\\x0a"), std::string::npos) << r.status().message();
    EXPECT_FALSE(fs::exists(tmp / "n"));
    return;
  }
  Dict got = read_checkpoint(tmp / "n");
  EXPECT_FALSE(got.count("model.decoder.extra\n")) << "passed through without its re-prefixing";
  EXPECT_TRUE(got.count("model.extra\n"));
}

// The reference's patterns are Python's: its \d takes every Unicode decimal digit, so
// 'layers.\u0661.router.scale' (an Arabic-Indic one) is a router key there and not under the rules'
// ECMAScript \d. Refused, naming the key, where the rules read a number (after `layers.` or
// `experts.`); such a digit elsewhere, and other non-ASCII text, passes through as there.
TEST_F(SemanticsRules, KeysWithADigitOtherThanZeroToNineAreRefused) {
  const std::string arabic_one = "\xd9\xa1"; // U+0661 in UTF-8
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  in["model.decoder.layers." + arabic_one + ".router.scale"] = random_tensor(rng, DType::BF16, {4});
  fs::create_directories(tmp / "hf");
  write_ordered(tmp / "hf" / "model.safetensors", Ordered(in.begin(), in.end()));
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("a decimal digit other than 0-9"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("layers." + arabic_one + ".router.scale"), std::string::npos)
      << r.status().message();
  EXPECT_FALSE(fs::exists(tmp / "n"));
  // Non-ASCII text that holds no other digit (an accented letter, a CJK one) passes through.
  Dict ok = tiny_diffusion(rng, 1, 2, 4, 2);
  ok["model.decoder.caf\xc3\xa9.\xe4\xb8\x80"] = random_tensor(rng, DType::BF16, {2});
  ok["model.decoder.extra_" + arabic_one + ".weight"] = random_tensor(rng, DType::BF16, {2});
  fs::create_directories(tmp / "hf2");
  write_ordered(tmp / "hf2" / "model.safetensors", Ordered(ok.begin(), ok.end()));
  auto fine = run(tmp / "hf2", tmp / "n2");
  ASSERT_TRUE(fine.ok()) << fine.status().message();
  const Dict got = read_checkpoint(tmp / "n2");
  EXPECT_TRUE(got.count("model.caf\xc3\xa9.\xe4\xb8\x80"));
  EXPECT_TRUE(got.count("model.extra_" + arabic_one + ".weight"));
}

// The reference renames a router key with Python's str.replace of its 'layers.N.router.ATTR'
// tail (from_hf; '.moe.gate.' to_hf), which rewrites every copy of that text in the key; the
// rules rewrite the tail only. A key holding it twice is refused, naming it, in both directions,
// in time linear in its length. A name longer than the rules read (4096 bytes) is refused too,
// not a crash of the regular-expression engine.
TEST_F(SemanticsRules, ARouterKeyHoldingItsRouterPartTwiceIsRefused) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  in["model.decoder.layers.0.router.scale.ema.layers.0.router.scale"] =
      random_tensor(rng, DType::BF16, {4});
  // A copy of another layer's part is not replaced by the reference either: it converts.
  in["model.decoder.layers.1.router.scale.ema.layers.0.router.scale"] =
      random_tensor(rng, DType::BF16, {4});
  fs::create_directories(tmp / "hf");
  write_ordered(tmp / "hf" / "model.safetensors", Ordered(in.begin(), in.end()));
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("'model.decoder.layers.0.router.scale.ema.layers.0.router.scale': the name "
                   "holds 'layers.0.router.scale' twice"),
            std::string::npos)
      << m;
  EXPECT_EQ(m.find("layers.1.router.scale.ema"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(tmp / "n"));
  // to_hf: the same with '.moe.gate.'.
  Dict native = ref_from_hf(tiny_diffusion(rng, 1, 2, 4, 2), true, {});
  native["model.layers.0.moe.gate.proj.weight.old.layers.0.moe.gate.proj.weight"] =
      random_tensor(rng, DType::BF16, {2});
  fs::create_directories(tmp / "native");
  write_ordered(tmp / "native" / "model.safetensors", Ordered(native.begin(), native.end()));
  auto back = run(tmp / "native", tmp / "h");
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find("holds 'layers.0.moe.gate.proj.weight' twice"),
            std::string::npos)
      << back.status().message();
  EXPECT_FALSE(fs::exists(tmp / "h"));

  // Long names: 4000 bytes of repeated router parts are refused at once; 5000 bytes of any name
  // are beyond what the rules read.
  std::string repeated;
  while (repeated.size() < 4000)
    repeated += "layers.0.router.scale.";
  for (const std::string& name : {repeated + "layers.0.router.scale", std::string(5000, 'x')}) {
    Dict big = tiny_diffusion(rng, 1, 2, 4, 2);
    big["model.decoder." + name] = random_tensor(rng, DType::BF16, {2});
    fs::remove_all(tmp / "big");
    fs::create_directories(tmp / "big");
    write_ordered(tmp / "big" / "model.safetensors", Ordered(big.begin(), big.end()));
    auto long_name = run(tmp / "big", tmp / "nb");
    ASSERT_FALSE(long_name.ok());
    EXPECT_TRUE(long_name.status().message().find("twice") != std::string::npos ||
                long_name.status().message().find("5014 bytes long") != std::string::npos)
        << long_name.status().message().substr(0, 300);
  }
}

} // namespace
} // namespace shardshift
