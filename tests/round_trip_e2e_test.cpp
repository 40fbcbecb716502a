// round_trip_e2e_test.cpp: `--base HF_DIR` through the binary (docs/semantics.md section 16):
// synth -> convert -> convert back with --base gives every tensor of the original again, the
// summary and --json of a to_hf without it say what is missing, plan and verify take the flag,
// and every misuse is refused with the exit status the semantics give it.
#include "shardshift/checkpoint.h"

#include "reference/checkpoint_files.h"
#include "test_support.h"

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::run_shardshift;
using testing::shell_quoted;
using testing::TempDir;

constexpr const char* NOTE =
    "note: the Hugging Face checkpoint had model.encoder.* (the vision tower and the encoder's "
    "layer_scalar copies), which from_hf dropped and this output lacks; pass --base HF_DIR to "
    "restore them";

class RoundTripCli : public ::testing::Test {
protected:
  void SetUp() override {
    auto r = run_shardshift("synth " + q("hf") + " --layers 2 --scale 16 --max-shard-size 2MB");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = run_shardshift("convert " + q("hf") + " " + q("native") + " --max-shard-size 2MB");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::string q(const std::string& name) const { return shell_quoted(tmp / name); }
  TempDir tmp;
};

std::string last_line(const std::string& text) {
  auto lines = testing::lines_of(text);
  return lines.empty() ? std::string() : lines.back();
}

TEST_F(RoundTripCli, WithBaseEveryTensorOfTheOriginalComesBack) {
  auto r = run_shardshift("convert " + q("native") + " " + q("back") +
                          " --base " + q("hf") + " --max-shard-size 2MB --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("note:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("restored from --base: "), std::string::npos) << r.err;
  const reference::Dict in = reference::read_checkpoint(tmp / "hf");
  const reference::Dict back = reference::read_checkpoint(tmp / "back");
  size_t encoder = 0;
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    encoder += name.starts_with("model.encoder.");
    auto it = back.find(name);
    ASSERT_NE(it, back.end());
    EXPECT_EQ(it->second.dtype, t.dtype);
    EXPECT_EQ(it->second.shape, t.shape);
    // The fold (semantics 2.4) is the one change a round trip makes.
    if (!name.ends_with(".experts.down_proj") && !name.ends_with(".router.per_expert_scale"))
      EXPECT_TRUE(it->second.bytes == t.bytes);
  }
  EXPECT_EQ(back.size(), in.size());
  ASSERT_GT(encoder, 0u);
  EXPECT_NE(r.out.find("\"restored\": " + std::to_string(encoder)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"not_restored\": []"), std::string::npos) << r.out;
  EXPECT_GT(testing::list_dir(tmp / "back").size(), 3u); // several shards and the index

  // verify recomputes it with the base, and without the base the output is not what IN gives.
  auto v = run_shardshift("verify " + q("native") + " " + q("back") + " --base " + q("hf") +
                          " --max-shard-size 2MB");
  EXPECT_EQ(v.exit_code, 0) << v.err;
  v = run_shardshift("verify " + q("native") + " " + q("back") + " --max-shard-size 2MB");
  EXPECT_EQ(v.exit_code, 1) << v.err;
}

TEST_F(RoundTripCli, WithoutBaseTheSummaryEndsWithTheNote) {
  auto r = run_shardshift("convert " + q("native") + " " + q("back") + " --stats");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(last_line(r.err), NOTE) << r.err;
  r = run_shardshift("convert " + q("native") + " " + q("back2") + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"not_restored\": [\"model.encoder.* (the vision tower and the "
                       "encoder's layer_scalar copies)\"]"),
            std::string::npos)
      << r.out;
  r = run_shardshift("plan " + q("native"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(last_line(r.out), NOTE);
  r = run_shardshift("plan " + q("native") + " --base " + q("hf"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("restored from --base"), std::string::npos);
  EXPECT_EQ(r.out.find("note:"), std::string::npos);
  // A family whose from_hf drops nothing has nothing to say.
  ASSERT_EQ(run_shardshift("synth " + q("g4") + " --model gemma4_moe --layers 1 --scale 16")
                .exit_code,
            0);
  ASSERT_EQ(run_shardshift("convert " + q("g4") + " " + q("g4n")).exit_code, 0);
  r = run_shardshift("convert " + q("g4n") + " " + q("g4back"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("note:"), std::string::npos) << r.err;
}

TEST_F(RoundTripCli, MisusesAreRefusedBeforeAnythingIsWritten) {
  struct Case {
    const char* what;
    std::string args;
    int exit_code;
    std::string says;
  };
  fs::create_directories(tmp / "empty");
  ASSERT_EQ(run_shardshift("synth " + q("qwen") + " --model qwen3_moe --layers 1 --scale 16")
                .exit_code,
            0);
  ASSERT_EQ(testing::run_shell("cp -r " + q("native") + " " + q("native-copy")).exit_code, 0);
  // The same family, but not the checkpoint IN was converted from: larger, or deeper.
  ASSERT_EQ(run_shardshift("synth " + q("wide") + " --layers 1 --scale 8").exit_code, 0);
  ASSERT_EQ(run_shardshift("synth " + q("deep") + " --layers 3 --scale 16").exit_code, 0);
  const std::string native = "convert " + q("native") + " ";
  const Case cases[] = {
      {"not a checkpoint", native + q("out") + " --base " + q("empty"), 1,
       "--base " + (tmp / "empty").string() + ": not a checkpoint"},
      {"another family", native + q("out") + " --base " + q("qwen"), 1,
       (tmp / "qwen").string() + ": --base is a qwen3_moe checkpoint (config.json model_type "
                                 "'qwen3_moe') but this conversion is diffusion_gemma"},
      {"another size", native + q("out") + " --base " + q("wide"), 1,
       (tmp / "wide").string() + ": --base is not the checkpoint IN was converted from: tensor "
                                 "'model.decoder.embed_tokens.weight' is "},
      {"another depth", native + q("out") + " --base " + q("deep"), 1,
       (tmp / "deep").string() + ": --base is not the checkpoint IN was converted from: it has "
                                 "layer 'model.decoder.layers.2'"},
      {"the input itself", native + q("out") + " --base " + q("native"), 1,
       "--base is the input checkpoint itself"},
      {"a native checkpoint", native + q("out") + " --base " + q("native-copy"), 1,
       "--base is a native checkpoint"},
      {"OUT inside the base", native + q("hf") + "/out --base " + q("hf"), 2,
       "the output must not lie inside the input " + (tmp / "hf").string()},
      {"OUT is the base", native + q("hf") + " --force --base " + q("hf"), 2,
       "the output must not be the input or contain it"},
      {"from_hf, detected", "convert " + q("hf") + " " + q("out") + " --base " + q("hf"), 2,
       "--base restores what from_hf dropped and applies to to_hf only"},
      {"from_hf, forced", "plan " + q("hf") + " --direction from_hf --base " + q("hf"), 2,
       "--base restores what from_hf dropped and applies to to_hf only"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto r = run_shardshift(c.args);
    EXPECT_EQ(r.exit_code, c.exit_code) << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(tmp / "out"));
  }
  EXPECT_FALSE(fs::exists(tmp / "hf" / "out"));
}

} // namespace
} // namespace shardshift
