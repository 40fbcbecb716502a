// semantics_cli_e2e_test.cpp: rules of docs/semantics.md as the shardshift binary shows them:
// flags that had no test (--max-shard-size units and 0, --scale-dtype, --dtype on to_hf,
// --exclude '' and an invalid --exclude, --no-side-files, --adapter, --ep-*), the checks on OUT,
// and streaming with OUT '-' (--only).
#include "shardshift/checkpoint.h"

#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "test_support.h"

#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using namespace reference;
using testing::run_shardshift;
using testing::shell_quoted;
using testing::TempDir;

// The files of an output directory, sorted, hidden ones left out: a hidden marker file that
// names the directory as shardshift's is not one of the files these rules are about.
std::vector<std::string> output_files(const fs::path& dir) {
  std::vector<std::string> names = testing::list_dir(dir);
  std::erase_if(names, [](const std::string& n) { return n.starts_with("."); });
  return names;
}

class SemanticsCli : public ::testing::Test {
protected:
  void SetUp() override {
    rng.seed(testing::test_seed());
    hf = tiny_diffusion(rng, 2, 4, 16, 8);
    write_checkpoint(tmp / "hf", hf, 2, "diffusion_gemma");
    native = ref_from_hf(hf, true, {});
    native["model.layers.0.self_attn._extra_state"] = Tensor{DType::U8, {5}, "state"};
    write_checkpoint(tmp / "native", native);
  }
  // Every tensor of the checkpoint at `dir`.
  static Dict open(const fs::path& dir) { return read_checkpoint(dir); }
  // A small synthetic checkpoint of `model` at `dir` (synth --layers 2 --scale 16).
  static void synth(const fs::path& dir, const std::string& model) {
    ASSERT_EQ(run_shardshift("synth " + shell_quoted(dir) + " --model " + model +
                             " --layers 2 --scale 16 -q")
                  .exit_code,
              0);
  }
  // shardshift convert FROM TO -q FLAGS.
  static testing::CommandResult convert(const fs::path& from, const fs::path& to,
                                        const std::string& flags = "") {
    return run_shardshift("convert " + shell_quoted(from) + " " + shell_quoted(to) + " -q " +
                          flags);
  }

  std::mt19937_64 rng;
  TempDir tmp;
  Dict hf, native;
};

TEST_F(SemanticsCli, MaxShardSizeTakesUnitsAndRefusesZero) {
  auto sizes = [&](const std::string& limit) {
    auto r = run_shardshift("plan " + shell_quoted(tmp / "hf") + " --print-size --max-shard-size " +
                            limit);
    EXPECT_EQ(r.exit_code, 0) << limit << ": " << r.err;
    return r.out;
  };
  const std::string decimal = sizes("3000");
  EXPECT_NE(decimal.find("model-00001-of-"), std::string::npos) << decimal;
  EXPECT_EQ(sizes("3kB"), decimal);
  EXPECT_EQ(sizes("3KB"), decimal);
  EXPECT_EQ(sizes("3072"), sizes("3KiB"));
  EXPECT_EQ(sizes("3072"), sizes("3kib"));

  auto zero = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n") +
                             " --max-shard-size 0");
  EXPECT_EQ(zero.exit_code, 2);
  EXPECT_NE(zero.err.find("--max-shard-size must be positive"), std::string::npos) << zero.err;
  auto bad = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n") +
                            " --max-shard-size 3XB");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--max-shard-size: invalid size '3XB'"), std::string::npos) << bad.err;
  auto bits = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n") +
                             " --max-shard-size 3kb");
  EXPECT_EQ(bits.exit_code, 2);
  EXPECT_NE(bits.err.find("--max-shard-size: size '3kb': a lowercase b after the unit means bits"),
            std::string::npos)
      << bits.err;
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

TEST_F(SemanticsCli, ScaleDtypeAndDtypeOnToHf) {
  auto r = run_shardshift("convert " + shell_quoted(tmp / "native") + " " +
                          shell_quoted(tmp / "a") + " --scale-dtype f32 -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Dict a = open(tmp / "a");
  const Tensor& ones = a.at("model.decoder.layers.1.router.per_expert_scale");
  EXPECT_EQ(ones.dtype, DType::F32);
  EXPECT_EQ(ones.bytes, std::string("\x00\x00\x80\x3f\x00\x00\x80\x3f\x00\x00\x80\x3f"
                                    "\x00\x00\x80\x3f",
                                    16));
  EXPECT_EQ(a.at("model.decoder.layers.1.experts.down_proj").dtype, DType::BF16);

  r = run_shardshift("convert " + shell_quoted(tmp / "native") + " " + shell_quoted(tmp / "b") +
                     " --dtype f32 -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  RefOptions cast;
  cast.cast = DType::F32;
  expect_same(open(tmp / "b"), ref_to_hf(native, true, cast));

  auto bad = run_shardshift("convert " + shell_quoted(tmp / "native") + " " +
                            shell_quoted(tmp / "c") + " --scale-dtype int8");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--scale-dtype 'int8': use keep, bf16, f16 or f32"), std::string::npos)
      << bad.err;
  EXPECT_FALSE(fs::exists(tmp / "c"));
}

// from_hf's default dtype is the one the reference takes from config.json (semantics 1.1.14);
// `--dtype keep` given on the command line keeps the fold's dtypes instead.
TEST_F(SemanticsCli, DtypeKeepKeepsWhatTheDefaultWouldCast) {
  const Dict in = tiny_diffusion(rng, 1, 3, 8, 4, DType::F32, DType::F32);
  write_checkpoint(tmp / "f32", in, 1);
  testing::write_bytes(tmp / "f32" / "config.json",
                       R"({"model_type": "diffusion_gemma", "text_config": {"dtype": "float16"}})");
  auto def = convert(tmp / "f32", tmp / "def");
  ASSERT_EQ(def.exit_code, 0) << def.err;
  RefOptions f16;
  f16.cast = DType::F16;
  expect_same(open(tmp / "def"), ref_from_hf(in, true, f16));
  auto keep = convert(tmp / "f32", tmp / "keep", "--dtype keep");
  ASSERT_EQ(keep.exit_code, 0) << keep.err;
  expect_same(open(tmp / "keep"), ref_from_hf(in, true, {}));
  EXPECT_EQ(open(tmp / "keep").at("model.layers.0.moe.experts.down_projs").dtype, DType::F32);
}

TEST_F(SemanticsCli, EmptyExcludeKeepsEveryKeyAndInvalidExcludeIsRefused) {
  auto def = run_shardshift("convert " + shell_quoted(tmp / "native") + " " +
                            shell_quoted(tmp / "def") + " -q");
  ASSERT_EQ(def.exit_code, 0) << def.err;
  EXPECT_FALSE(open(tmp / "def").count("model.decoder.layers.0.self_attn._extra_state"));

  auto keep = run_shardshift("convert " + shell_quoted(tmp / "native") + " " +
                             shell_quoted(tmp / "keep") + " --exclude '' -q");
  ASSERT_EQ(keep.exit_code, 0) << keep.err;
  RefOptions all;
  all.exclude = "";
  expect_same(open(tmp / "keep"), ref_to_hf(native, true, all));
  EXPECT_EQ(open(tmp / "keep").at("model.decoder.layers.0.self_attn._extra_state").bytes, "state");
  // `--exclude=` is the same empty value, written with '='; a flag that takes no value is still
  // refused with one.
  auto eq = run_shardshift("convert " + shell_quoted(tmp / "native") + " " +
                           shell_quoted(tmp / "eq") + " --exclude= -q");
  ASSERT_EQ(eq.exit_code, 0) << eq.err;
  expect_same(open(tmp / "eq"), ref_to_hf(native, true, all));
  auto flag = run_shardshift("convert " + shell_quoted(tmp / "native") + " " +
                             shell_quoted(tmp / "flag") + " --no-sync= -q");
  EXPECT_EQ(flag.exit_code, 2) << flag.err;
  EXPECT_FALSE(fs::exists(tmp / "flag"));

  auto bad = run_shardshift("convert " + shell_quoted(tmp / "native") + " " +
                            shell_quoted(tmp / "bad") + " --exclude '([unclosed'");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--exclude '([unclosed'"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(tmp / "bad"));
}

TEST_F(SemanticsCli, NoSideFilesCopiesNothingButTheCheckpoint) {
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n") +
                          " --no-side-files -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(output_files(tmp / "n"), std::vector<std::string>{"model.safetensors"});
  r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "m") + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(output_files(tmp / "m"),
            (std::vector<std::string>{"config.json", "model.safetensors"}));
}

TEST_F(SemanticsCli, AdapterDirectionAndDetectionErrorsAreUsageErrors) {
  auto adapter = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                                shell_quoted(tmp / "n") + " --adapter llama");
  EXPECT_EQ(adapter.exit_code, 2);
  EXPECT_NE(
      adapter.err.find("unknown adapter 'llama'; known: diffusion_gemma, gemma4_moe, qwen3_moe"),
      std::string::npos)
      << adapter.err;
  auto direction = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                                  shell_quoted(tmp / "n") + " --direction sideways");
  EXPECT_EQ(direction.exit_code, 2);
  EXPECT_NE(direction.err.find("--direction 'sideways': use from_hf or to_hf"), std::string::npos)
      << direction.err;

  write_checkpoint(tmp / "anon", {{"foo.weight", Tensor{DType::U8, {3}, "abc"}}});
  auto model =
      run_shardshift("convert " + shell_quoted(tmp / "anon") + " " + shell_quoted(tmp / "n"));
  EXPECT_EQ(model.exit_code, 2);
  EXPECT_NE(model.err.find("cannot tell the model of this checkpoint"), std::string::npos)
      << model.err;
  auto forced = run_shardshift("convert " + shell_quoted(tmp / "anon") + " " +
                               shell_quoted(tmp / "n") + " --adapter gemma4_moe");
  EXPECT_EQ(forced.exit_code, 2);
  EXPECT_NE(forced.err.find("cannot tell the direction of this checkpoint (no router or expert "
                            "keys); pass --direction from_hf or to_hf"),
            std::string::npos)
      << forced.err;
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

// An empty --adapter (an unset shell variable) is not the flag left out, which lets config.json
// and the key names choose: it is refused as any unknown name is, by every command that takes it.
TEST_F(SemanticsCli, AnEmptyAdapterIsAnUnknownAdapter) {
  const std::string in = shell_quoted(tmp / "hf"), out = shell_quoted(tmp / "n");
  auto unknown = run_shardshift("convert " + in + " " + out + " --adapter llama");
  ASSERT_EQ(unknown.exit_code, 2);
  const std::string known = unknown.err.substr(unknown.err.find("; known: "));
  for (const std::string& command :
       {"convert " + in + " " + out + " --adapter ''", "convert " + in + " " + out + " --adapter=",
        "plan " + in + " --adapter ''", "verify " + in + " " + in + " --adapter ''"}) {
    auto r = run_shardshift(command);
    EXPECT_EQ(r.exit_code, 2) << command << ": " << r.err;
    EXPECT_NE(r.err.find("unknown adapter ''" + known), std::string::npos)
        << command << ": " << r.err;
    EXPECT_EQ(r.out, "") << command;
  }
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

TEST_F(SemanticsCli, ExpertParallelFlagErrors) {
  auto rank = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n") +
                             " --ep-size 2 --ep-rank 2");
  EXPECT_EQ(rank.exit_code, 2);
  EXPECT_NE(rank.err.find("--ep-rank must be below --ep-size"), std::string::npos) << rank.err;
  auto shard = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                              shell_quoted(tmp / "n") + " --ep-shard-size 2 --ep-shard-rank 5");
  EXPECT_EQ(shard.exit_code, 2);
  EXPECT_NE(shard.err.find("--ep-shard-rank must be below --ep-shard-size"), std::string::npos)
      << shard.err;
  auto to_hf = run_shardshift("convert " + shell_quoted(tmp / "native") + " " +
                              shell_quoted(tmp / "n") + " --ep-size 2");
  EXPECT_EQ(to_hf.exit_code, 2);
  EXPECT_NE(
      to_hf.err.find("expert-parallel export (--ep-size, --ep-shard-size) applies to from_hf only"),
      std::string::npos)
      << to_hf.err;
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

// One part of an --ep-shard-size export holds a fraction of each expert tensor's axis 1; to_hf
// refuses it (its sizes disagree), and the message says what it is and what to convert instead.
// A whole export converts back.
TEST_F(SemanticsCli, ToHfNamesAPartOfASecondShardingForWhatItIs) {
  for (const char* model : {"diffusion_gemma", "gemma4_moe", "qwen3_moe", "deepseek_v3"}) {
    SCOPED_TRACE(model);
    const fs::path in = tmp / model;
    synth(in, model);
    for (const char* parts : {"2", "4"}) {
      fs::remove_all(tmp / "part");
      ASSERT_EQ(
          convert(in, tmp / "part", std::string("--ep-shard-size ") + parts + " --ep-shard-rank 1")
              .exit_code,
          0);
      auto back = convert(tmp / "part", tmp / "back");
      EXPECT_EQ(back.exit_code, 1);
      EXPECT_NE(back.err.find("one part of a from_hf export with --ep-shard-size " +
                              std::string(parts) + ", which keeps 1/" + parts + " of axis 1"),
                std::string::npos)
          << back.err;
      EXPECT_FALSE(fs::exists(tmp / "back"));
    }
    fs::remove_all(tmp / "part");
    ASSERT_EQ(convert(in, tmp / "part").exit_code, 0);
    auto whole = convert(tmp / "part", tmp / "back");
    EXPECT_EQ(whole.exit_code, 0) << whole.err;
    fs::remove_all(tmp / "part");
    fs::remove_all(tmp / "back");
  }
}

// One expert-parallel rank's export of a family whose Hugging Face layout names every expert
// holds fewer experts than config.json's count: the reference's to_hf refuses to split it, and
// so does shardshift (it would number them from 0). The whole export converts back.
TEST_F(SemanticsCli, ToHfRefusesARanksExportOfPerExpertFamilies) {
  for (auto [model, key] :
       {std::pair{"qwen3_moe", "num_experts"}, std::pair{"deepseek_v3", "n_routed_experts"}}) {
    SCOPED_TRACE(model);
    const fs::path in = tmp / model;
    synth(in, model);
    ASSERT_EQ(convert(in, tmp / "rank", "--ep-size 2 --ep-rank 1").exit_code, 0);
    auto back = convert(tmp / "rank", tmp / "back");
    EXPECT_EQ(back.exit_code, 1);
    EXPECT_NE(back.err.find("experts, but config.json's " + std::string(key) + " is "),
              std::string::npos)
        << back.err;
    EXPECT_NE(back.err.find("the reference's to_hf refuses such a tensor"), std::string::npos)
        << back.err;
    EXPECT_FALSE(fs::exists(tmp / "back"));
    ASSERT_EQ(convert(in, tmp / "whole").exit_code, 0);
    auto whole = convert(tmp / "whole", tmp / "back");
    EXPECT_EQ(whole.exit_code, 0) << whole.err;
    for (const char* dir : {"rank", "whole", "back"})
      fs::remove_all(tmp / dir);
  }
}

TEST_F(SemanticsCli, EpFromLauncherSplitsAStackedFamilyByRank) {
  // qwen3_moe, 6 experts over the 4 ranks of a launcher (--rank/--world-size stand for its
  // variables): 2, 2, 1, 1 experts; each OUT holds its rank's slice, everything else whole.
  Dict in = tiny_qwen3(rng, 2, 6, 8, 4);
  write_checkpoint(tmp / "qwen", in, 2, "qwen3_moe");
  const Dict whole = ref_qwen3_from_hf(in, {});
  for (unsigned r = 0; r < 4; ++r) {
    auto c = run_shardshift("convert " + shell_quoted(tmp / "qwen") + " " +
                            shell_quoted(tmp / "ep{rank}") + " -q --rank " + std::to_string(r) +
                            " --world-size 4 --ep-from-launcher");
    ASSERT_EQ(c.exit_code, 0) << c.err;
    RefOptions ro;
    ro.ep_size = 4;
    ro.ep_rank = r;
    const Dict want = ref_stacked_expert_parallel(whole, ro);
    const Dict got = read_checkpoint(tmp / ("ep" + std::to_string(r)));
    ASSERT_EQ(got.size(), want.size()) << "rank " << r;
    for (const auto& [name, t] : want) {
      ASSERT_TRUE(got.count(name)) << name;
      EXPECT_EQ(got.at(name).shape, t.shape) << name << " rank " << r;
      EXPECT_TRUE(got.at(name).bytes == t.bytes) << name << " rank " << r;
    }
    EXPECT_EQ(got.at("model.layers.1.mlp.experts.down_projs").shape[0], r < 2 ? 2u : 1u);
  }
}

TEST_F(SemanticsCli, OutputChecks) {
  auto same = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                             shell_quoted(tmp / "hf") + " --force");
  EXPECT_EQ(same.exit_code, 2);
  EXPECT_NE(same.err.find("the output must not be the input"), std::string::npos) << same.err;
  auto dir_of_file = run_shardshift("convert " + shell_quoted(tmp / "hf" / "part-0.safetensors") +
                                    " " + shell_quoted(tmp / "hf") +
                                    " --force --adapter diffusion_gemma "
                                    "--direction from_hf");
  EXPECT_EQ(dir_of_file.exit_code, 2);
  EXPECT_NE(dir_of_file.err.find("the output must not be the input"), std::string::npos)
      << dir_of_file.err;
  testing::write_bytes(tmp / "file", "keep me");
  auto file = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                             shell_quoted(tmp / "file") + " --force");
  EXPECT_EQ(file.exit_code, 2);
  EXPECT_NE(file.err.find("exists and is not a directory"), std::string::npos) << file.err;
  EXPECT_EQ(testing::read_bytes(tmp / "file"), "keep me");
  auto parent = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                               shell_quoted(tmp / "no" / "out"));
  EXPECT_EQ(parent.exit_code, 2);
  EXPECT_NE(parent.err.find("the output's parent directory does not exist"), std::string::npos)
      << parent.err;
  EXPECT_EQ(testing::list_dir(tmp.path()), (std::vector<std::string>{"file", "hf", "native"}));
}

TEST_F(SemanticsCli, StreamingASingleFileOutput) {
  auto dir = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                            shell_quoted(tmp / "dir") + " -q");
  ASSERT_EQ(dir.exit_code, 0) << dir.err;
  ASSERT_EQ(output_files(tmp / "dir"),
            (std::vector<std::string>{"config.json", "model.safetensors"}));
  // The single output file needs no --only.
  auto streamed = run_shardshift("convert " + shell_quoted(tmp / "hf") + " - -q");
  ASSERT_EQ(streamed.exit_code, 0) << streamed.err;
  EXPECT_TRUE(streamed.out == testing::read_bytes(tmp / "dir" / "model.safetensors"));
  // The side files go nowhere then: said (a warning, which -q keeps quiet).
  auto warned = run_shardshift("convert " + shell_quoted(tmp / "hf") + " -");
  ASSERT_EQ(warned.exit_code, 0) << warned.err;
  EXPECT_NE(warned.err.find("OUT '-' streams model.safetensors alone; the side files "
                            "(config.json) are not written: pass --format tar"),
            std::string::npos)
      << warned.err;
  EXPECT_EQ(streamed.err.find("side files"), std::string::npos) << streamed.err;
  // Several files: the refusal counts and names all of them.
  auto several =
      run_shardshift("convert " + shell_quoted(tmp / "hf") + " - -q --max-shard-size 8KiB");
  EXPECT_EQ(several.exit_code, 2);
  EXPECT_EQ(several.out, "");
  EXPECT_NE(several.err.find(" files ("), std::string::npos) << several.err;
  EXPECT_NE(several.err.find("model.safetensors.index.json, config.json (sizes"), std::string::npos)
      << several.err;
  EXPECT_NE(several.err.find("or --format tar to stream them all"), std::string::npos)
      << several.err;
  auto side = run_shardshift("convert " + shell_quoted(tmp / "hf") + " - -q --only config.json");
  ASSERT_EQ(side.exit_code, 0) << side.err;
  EXPECT_EQ(side.out, testing::read_bytes(tmp / "hf" / "config.json"));
  // A single-file output has no index to stream.
  auto index = run_shardshift("convert " + shell_quoted(tmp / "hf") +
                              " - -q --only model.safetensors.index.json");
  EXPECT_EQ(index.exit_code, 2);
  EXPECT_EQ(index.out, "");
  EXPECT_NE(index.err.find("--only model.safetensors.index.json: this output is a single file and "
                           "has no index"),
            std::string::npos)
      << index.err;
  // --only needs OUT '-'.
  auto only = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "x") +
                             " --only model.safetensors");
  EXPECT_EQ(only.exit_code, 2);
  EXPECT_NE(only.err.find("--only streams one file and needs OUT '-' (stdout)"), std::string::npos)
      << only.err;
  EXPECT_FALSE(fs::exists(tmp / "x"));
}

} // namespace
} // namespace shardshift
