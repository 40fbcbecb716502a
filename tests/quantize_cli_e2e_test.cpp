// quantize_cli_e2e_test.cpp: `shardshift convert --quantize fp8` end to end (docs/semantics.md
// 15.7): the binary writes the FP8 checkpoint's inventory from a native deepseek_v3 one, `plan`
// and `verify` take the flag, and every misuse is a usage error (exit 2) with a clear message.
#include "shardshift/checkpoint.h"

#include "test_support.h"

#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::run_shardshift;
using testing::shell_quoted;
using testing::TempDir;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Names -> (dtype, shape) of a checkpoint, read through the library.
std::map<std::string, std::pair<DType, std::vector<uint64_t>>>
inventory(const std::filesystem::path& dir) {
  auto ck = Checkpoint::open(dir);
  EXPECT_TRUE(ck.ok()) << ck.status().message();
  std::map<std::string, std::pair<DType, std::vector<uint64_t>>> out;
  if (ck.ok())
    for (auto& [name, ref] : ck->tensors)
      out[name] = {ck->info(ref).dtype, ck->info(ref).shape};
  return out;
}

TEST(QuantizeCli, WritesTheFp8InventoryAndRefusesMisuseWithExit2) {
  TempDir tmp;
  const std::string hf = shell_quoted(tmp / "hf"), nat = shell_quoted(tmp / "nat"),
                    fp8 = shell_quoted(tmp / "fp8");
  ASSERT_EQ(
      run_shardshift("synth " + hf + " --model deepseek_v3 --layers 4 --scale 16 -q").exit_code, 0);
  ASSERT_EQ(run_shardshift("convert " + hf + " " + nat + " -q").exit_code, 0);
  auto r = run_shardshift("convert " + nat + " " + fp8 + " --quantize fp8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(inventory(tmp / "fp8"), inventory(tmp / "hf"));
  r = run_shardshift("plan " + nat + " --quantize fp8");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(
      contains(r.out, "quantize_scale\tmodel.layers.3.mlp.experts.0.gate_proj.weight_scale_inv"))
      << r.out;
  r = run_shardshift("verify " + nat + " " + fp8 + " --quantize fp8");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;

  const std::pair<std::string, std::string> misuse[] = {
      {"convert " + nat + " " + shell_quoted(tmp / "x") + " --quantize fp4",
       "--quantize 'fp4': use fp8"},
      {"convert " + nat + " " + shell_quoted(tmp / "x") + " --quantize fp8 --dtype bf16",
       "--quantize fp8 writes F8_E4M3 weights; --dtype must be keep"},
      {"convert " + hf + " " + shell_quoted(tmp / "x") + " --quantize fp8",
       "--quantize fp8 applies to deepseek_v3 to_hf only (this is deepseek_v3 from_hf)"},
  };
  for (auto& [args, message] : misuse) {
    r = run_shardshift(args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, message)) << r.err;
  }
  EXPECT_FALSE(std::filesystem::exists(tmp / "x"));
}

} // namespace
} // namespace shardshift
