// ranks_test.cpp: the rank and world size from each launcher's variables (and their refusals), and
// the shares of the output files: every file in exactly one share, balanced by bytes, the same for
// every rank that computes them.
#include "shardshift/ranks.h"

#include "test_support.h"

#include <algorithm>
#include <numeric>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using Env = std::map<std::string, std::string>;

TEST(DetectRank, FromEachLaunchersVariables) {
  struct Case {
    Env env;
    unsigned rank, world;
    const char* source;
  };
  const Case cases[] = {
      {{}, 0, 1, "a single process"},
      {{{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "4"}}, 2, 4, "Open MPI"},
      {{{"PMI_RANK", "1"}, {"PMI_SIZE", "3"}}, 1, 3, "PMI"},
      {{{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}}, 5, 8, "torchrun"},
      {{{"SLURM_PROCID", "3"}, {"SLURM_STEP_NUM_TASKS", "6"}}, 3, 6, "Slurm"},
      // A batch script without srun has SLURM_PROCID but no step: one process.
      {{{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "6"}}, 0, 1, "a single process"},
      // RANK alone (no LOCAL_RANK) is not torchrun's.
      {{{"RANK", "1"}, {"WORLD_SIZE", "2"}}, 0, 1, "a single process"},
      // mpirun inside a Slurm allocation: Open MPI's variables are this process's.
      {{{"OMPI_COMM_WORLD_RANK", "1"},
        {"OMPI_COMM_WORLD_SIZE", "2"},
        {"SLURM_PROCID", "0"},
        {"SLURM_STEP_NUM_TASKS", "1"}},
       1,
       2,
       "Open MPI"},
      // torchrun started by mpirun on each node: its workers inherit Open MPI's variables, and
      // torchrun's win (found by an audit on 2026-12-06: Open MPI's did, and every worker
      // converted everything alone, or aborted in MPI_Init).
      {{{"RANK", "3"},
        {"WORLD_SIZE", "4"},
        {"LOCAL_RANK", "1"},
        {"OMPI_COMM_WORLD_RANK", "1"},
        {"OMPI_COMM_WORLD_SIZE", "2"}},
       3,
       4,
       "torchrun"},
      // torchrun started by srun on each node: torchrun's variables win.
      {{{"RANK", "9"},
        {"WORLD_SIZE", "16"},
        {"LOCAL_RANK", "1"},
        {"SLURM_PROCID", "1"},
        {"SLURM_STEP_NUM_TASKS", "2"}},
       9,
       16,
       "torchrun"},
  };
  for (const Case& c : cases) {
    auto r = detect_rank(std::nullopt, std::nullopt, c.env);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->rank, c.rank) << c.source;
    EXPECT_EQ(r->world, c.world) << c.source;
    EXPECT_EQ(r->source, c.source);
    // Only Open MPI's mpirun lets the ranks coordinate through MPI (coordinator.h).
    EXPECT_EQ(r->launcher_is_mpi, std::string(c.source) == "Open MPI") << c.source;
  }
  // The flags win over every launcher.
  auto flags = detect_rank(1u, 2u, {{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "4"}});
  ASSERT_TRUE(flags.ok());
  EXPECT_EQ(flags->rank, 1u);
  EXPECT_EQ(flags->world, 2u);
  EXPECT_FALSE(flags->launcher_is_mpi); // ranks set by hand coordinate through marker files
}

TEST(DetectRank, RefusesInconsistentValuesNamingThem) {
  struct Case {
    std::optional<unsigned> rank, world;
    Env env;
    const char* expected;
  };
  const Case cases[] = {
      {3u, 3u, {}, "rank 3 is not below the world size 3"},
      {0u, 0u, {}, "the world size must be at least 1"},
      {1u, std::nullopt, {}, "--rank and --world-size go together"},
      {std::nullopt,
       std::nullopt,
       {{"OMPI_COMM_WORLD_RANK", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}},
       "OMPI_COMM_WORLD_RANK=4"},
      {std::nullopt, std::nullopt, {{"PMI_RANK", "x"}, {"PMI_SIZE", "2"}}, "not whole numbers"},
      {std::nullopt,
       std::nullopt,
       {{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "4294967295"}},
       "not whole numbers"},
      // A world too large to coordinate, from a flag or a launcher: refused, not hours of polling.
      {0u, MAX_WORLD + 1, {}, "more than the 65536 processes one job may have"},
      {std::nullopt,
       std::nullopt,
       {{"RANK", "0"}, {"WORLD_SIZE", "100000000"}, {"LOCAL_RANK", "0"}},
       "a world size of 100000000 is more than"},
  };
  for (const Case& c : cases) {
    auto r = detect_rank(c.rank, c.world, c.env);
    ASSERT_FALSE(r.ok()) << c.expected;
    EXPECT_EQ(r.status().code(), Errc::invalid_argument);
    EXPECT_NE(r.status().message().find(c.expected), std::string::npos) << r.status().message();
  }
}

TEST(AssignFiles, EveryFileOnceBalancedByBytesAndTheSameEverywhere) {
  std::mt19937_64 rng(testing::test_seed());
  for (int round = 0; round < 50; ++round) {
    Plan plan;
    const size_t files = 1 + rng() % 40;
    for (size_t i = 0; i < files; ++i) {
      OutputFile f;
      f.name = "f" + std::to_string(i);
      f.data_size = 1 + rng() % 5'000'000;
      plan.files.push_back(f);
    }
    const unsigned world = 1 + static_cast<unsigned>(rng() % 9);
    const auto shares = assign_files(plan, world);
    ASSERT_EQ(shares.size(), world);
    EXPECT_EQ(shares, assign_files(plan, world)); // a function of the plan
    std::vector<int> seen(files, 0);
    uint64_t largest_file = 0, total = 0;
    std::vector<uint64_t> load;
    for (const auto& share : shares) {
      EXPECT_TRUE(std::is_sorted(share.begin(), share.end()));
      uint64_t bytes = 0;
      for (uint32_t f : share) {
        ++seen[f];
        bytes += plan.files[f].size();
      }
      load.push_back(bytes);
    }
    for (const OutputFile& f : plan.files) {
      largest_file = std::max(largest_file, f.size());
      total += f.size();
    }
    EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
    // Greedy onto the least loaded: no share exceeds the mean by more than the largest file.
    const uint64_t most = *std::max_element(load.begin(), load.end());
    EXPECT_LE(most, total / world + largest_file);
  }
}

} // namespace
} // namespace shardshift
