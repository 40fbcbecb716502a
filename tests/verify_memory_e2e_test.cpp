// verify_memory_e2e_test.cpp: verify() holds the memory budget, measured as this process's own
// peak RSS (getrusage), so this program holds this one test only.
//
// The checkpoint and its conversion are made by the shardshift binary in other processes (they
// cost this one nothing): a 369 MB embedding, one pass-through run ten times the budget, and a
// 320 MB side file. verify() then reads IN and OUT whole, both mapped: the pages of each must be
// released as they are compared, so the peak stays near the budget, far below the embedding.
#include "shardshift/profiler.h"
#include "shardshift/verify.h"

#include "test_support.h"

#include <filesystem>
#include <iostream>

#include <gtest/gtest.h>

namespace shardshift::testing {
namespace {

constexpr uint64_t BUDGET = uint64_t{32} << 20;
// As in memory_budget_e2e_test.cpp: the program, its libraries, the plan and the headers.
constexpr uint64_t OVERHEAD = uint64_t{90} << 20;

TEST(VerifyMemory, HoldsTheBudgetWhateverTheFileSizes) {
  TempDir tmp;
  auto made = run_shardshift("synth " + shell_quoted(tmp / "in") +
                             " --model diffusion_gemma --layers 1 --scale 2 -q");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  std::filesystem::create_directory(tmp / "in" / "original");
  auto big = run_shell("truncate -s 320M " + shell_quoted(tmp / "in" / "original" / "big.pth"));
  ASSERT_EQ(big.exit_code, 0) << big.err;
  auto converted = run_shardshift("convert " + shell_quoted(tmp / "in") + " " +
                                  shell_quoted(tmp / "out") + " --checksums --no-sync -q");
  ASSERT_EQ(converted.exit_code, 0) << converted.err;

  VerifyOptions o;
  o.input = tmp / "in";
  o.output = tmp / "out";
  o.device = "cpu";
  o.threads = 2;
  o.max_memory = BUDGET;
  auto r = verify(o);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->identical());
  EXPECT_GT(r->compared_bytes, uint64_t{369 + 320} << 20);
  EXPECT_EQ(r->compared_bytes, r->bytes);
  EXPECT_EQ(r->checksums_ok, r->files);

  const uint64_t peak = peak_rss_bytes();
  std::cout << "[ peak ] " << (peak >> 20) << " MiB with a " << (BUDGET >> 20)
            << " MiB budget, comparing " << (r->compared_bytes >> 20) << " MiB\n";
  EXPECT_LT(peak, BUDGET + OVERHEAD) << "peak RSS " << peak;
}

} // namespace
} // namespace shardshift::testing
