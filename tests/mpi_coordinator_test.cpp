// mpi_coordinator_test.cpp: the MPI coordinator (src/mpi_coordinator.cpp) between real processes.
// Each test runs this program again under `mpirun -np 3` with a filter naming itself; the copies
// see Open MPI's variables and act as the ranks, and any failed expectation in a rank makes
// mpirun exit non-zero. Skipped in a build without MPI or without mpirun.
#include "shardshift/ranks.h"

#include "coordinator.h"
#include "test_support.h"

#include <cstdlib>
#include <unistd.h>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

// In the test process: runs `test` (this program's test of that name) as 3 ranks under mpirun
// and returns true; in a rank: returns false, and the caller acts as the rank.
// `dir` (optional) reaches the ranks as SHARDSHIFT_TEST_DIR.
bool ran_under_mpirun(const char* test, const std::filesystem::path& dir = {}) {
  if (std::getenv("OMPI_COMM_WORLD_SIZE"))
    return false;
  char self[4096] = {};
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  EXPECT_GT(n, 0);
  auto r = testing::run_shell(
      "SHARDSHIFT_TEST_DIR=" + testing::shell_quoted(dir) +
      " OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np 3 "
      "-x SHARDSHIFT_TEST_DIR " +
      testing::shell_quoted(self) + " --gtest_filter=MpiCoordinator." + test);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  return true;
}

bool can_run() {
  return coordinates_through_mpi(RankInfo{0, 2, "Open MPI", true}) &&
         testing::run_shell("command -v mpirun").exit_code == 0;
}

TEST(MpiCoordinator, RankZeroLearnsEveryRanksFilesAndEveryRankTheCommit) {
  if (!can_run())
    GTEST_SKIP() << "built without MPI (libopenmpi-dev), or no mpirun";
  if (ran_under_mpirun("RankZeroLearnsEveryRanksFilesAndEveryRankTheCommit"))
    return;
  auto rank = detect_rank(std::nullopt, std::nullopt, environment());
  ASSERT_TRUE(rank.ok()) << rank.status().message();
  ASSERT_EQ(rank->world, 3u);
  ConvertOptions options;
  auto coordinator = make_mpi_coordinator(options, *rank);
  ASSERT_TRUE(coordinator);
  EXPECT_STREQ(coordinator->name(), "MPI");
  ASSERT_TRUE(coordinator->agree_on_plan(std::string(64, 'a'), "/out").ok());
  // Texts of different lengths, the longest in the middle.
  const std::string mine(10 + 1000 * (rank->rank == 1), char('x' + rank->rank));
  auto ended = coordinator->end_share(Status(), mine);
  ASSERT_TRUE(ended.ok()) << ended.status().message();
  if (rank->rank == 0) {
    EXPECT_TRUE(ended->failures.empty());
    EXPECT_EQ(ended->done, (std::vector<std::string>{std::string(10, 'x'), std::string(1010, 'y'),
                                                     std::string(10, 'z')}));
    coordinator->tell_outcome(Status());
  } else {
    EXPECT_TRUE(ended->done.empty()); // only rank 0 is told the files
    EXPECT_TRUE(coordinator->learn_outcome(Status()).ok());
  }
}

TEST(MpiCoordinator, ARankThatFailedIsNamedToEveryRankAndTheJobFailsOnAll) {
  if (!can_run())
    GTEST_SKIP() << "built without MPI (libopenmpi-dev), or no mpirun";
  if (ran_under_mpirun("ARankThatFailedIsNamedToEveryRankAndTheJobFailsOnAll"))
    return;
  auto rank = detect_rank(std::nullopt, std::nullopt, environment());
  ASSERT_TRUE(rank.ok()) << rank.status().message();
  ConvertOptions options;
  auto coordinator = make_mpi_coordinator(options, *rank);
  ASSERT_TRUE(coordinator->agree_on_plan(std::string(64, 'b'), "/out").ok());
  const Status own =
      rank->rank == 2 ? Status(Errc::no_space, "out: no space left on purpose") : Status();
  auto ended = coordinator->end_share(own, own.ok() ? "f 0\n" : "");
  ASSERT_TRUE(ended.ok()) << ended.status().message();
  if (rank->rank == 0) {
    EXPECT_EQ(ended->failures,
              (std::vector<std::string>{"rank 2 of 3: out: no space left on purpose"}));
    EXPECT_EQ(ended->done.size(), 2u);
    coordinator->tell_outcome(Status(Errc::io, "the job of 3 ranks failed"));
    return;
  }
  const Status outcome = coordinator->learn_outcome(own);
  if (rank->rank == 2) {
    EXPECT_EQ(outcome.code(), Errc::no_space);
    EXPECT_EQ(outcome.message(), own.message()); // its own error, as it happened
  } else {
    EXPECT_EQ(outcome.code(), Errc::io);
    EXPECT_EQ(outcome.message(), "the job failed: rank 2 of 3: out: no space left on purpose");
  }
}

TEST(MpiCoordinator, RanksWithDifferentPlansAreRefusedOnEveryRank) {
  if (!can_run())
    GTEST_SKIP() << "built without MPI (libopenmpi-dev), or no mpirun";
  if (ran_under_mpirun("RanksWithDifferentPlansAreRefusedOnEveryRank"))
    return;
  auto rank = detect_rank(std::nullopt, std::nullopt, environment());
  ASSERT_TRUE(rank.ok()) << rank.status().message();
  ConvertOptions options;
  auto coordinator = make_mpi_coordinator(options, *rank);
  const Status s = coordinator->agree_on_plan(std::string(64, rank->rank == 1 ? 'd' : 'c'), "/out");
  EXPECT_EQ(s.code(), Errc::invalid_argument);
  EXPECT_NE(s.message().find("rank 1 planned another output than rank 0 (plan fingerprints "
                             "dddddddddddddddd and cccccccccccccccc)"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(s.message().find("rank 2 planned"), std::string::npos) << s.message();
}

// Ranks that resolved OUT to different directories (a relative OUT and another working
// directory, mpirun's -wdir) would each fill a staging directory of their own, and rank 0 would
// commit its share alone: refused on every rank, naming both paths.
TEST(MpiCoordinator, RanksWithDifferentOutputsAreRefusedOnEveryRankNamingThePaths) {
  if (!can_run())
    GTEST_SKIP() << "built without MPI (libopenmpi-dev), or no mpirun";
  if (ran_under_mpirun("RanksWithDifferentOutputsAreRefusedOnEveryRankNamingThePaths"))
    return;
  auto rank = detect_rank(std::nullopt, std::nullopt, environment());
  ASSERT_TRUE(rank.ok()) << rank.status().message();
  ConvertOptions options;
  auto coordinator = make_mpi_coordinator(options, *rank);
  const Status s = coordinator->agree_on_plan(std::string(64, 'e'),
                                              rank->rank == 2 ? "/node-b/out" : "/shared/out");
  EXPECT_EQ(s.code(), Errc::invalid_argument);
  EXPECT_NE(s.message().find("rank 2 writes into /node-b/out, rank 0 into /shared/out"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("a relative OUT is taken from each rank's working directory"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(s.message().find("rank 1 writes"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find("planned another output"), std::string::npos) << s.message();
}

// An OUT on a disk of each node's own: one path, but rank 2's node has a directory of its own
// there (here: another directory, as that node would see). Found before any work, on every rank,
// naming rank 2 and the hosts; rank 2 alone is told to remove its directory (rank 0 removes its
// own), and rank 0's check file is gone. First the control: every rank in one directory.
TEST(MpiCoordinator, ARankThatCannotSeeRankZerosStagingDirectoryIsNamedOnEveryRank) {
  if (!can_run())
    GTEST_SKIP() << "built without MPI (libopenmpi-dev), or no mpirun";
  testing::TempDir tmp;
  if (ran_under_mpirun("ARankThatCannotSeeRankZerosStagingDirectoryIsNamedOnEveryRank",
                       tmp.path())) {
    EXPECT_EQ(testing::list_dir(tmp / "shared"), std::vector<std::string>{});
    EXPECT_EQ(testing::list_dir(tmp / "node-b"), std::vector<std::string>{});
    return;
  }
  const std::filesystem::path dir = std::getenv("SHARDSHIFT_TEST_DIR");
  auto rank = detect_rank(std::nullopt, std::nullopt, environment());
  ASSERT_TRUE(rank.ok()) << rank.status().message();
  std::filesystem::create_directories(dir / "shared");
  std::filesystem::create_directories(dir / "node-b");
  ConvertOptions options;
  auto coordinator = make_mpi_coordinator(options, *rank);
  ASSERT_TRUE(coordinator->agree_on_plan(std::string(64, 'f'), "/out").ok());
  const Status shared = coordinator->begin(dir / "shared", Status());
  EXPECT_TRUE(shared.ok()) << shared.message();
  EXPECT_FALSE(coordinator->owner_gone());

  // (The path is one on every node; here each rank names the one it was given.)
  const std::filesystem::path staging = dir / (rank->rank == 2 ? "node-b" : "shared");
  const Status s = coordinator->begin(staging, Status());
  EXPECT_EQ(s.code(), Errc::invalid_argument);
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  EXPECT_NE(s.message().find("OUT is not on a filesystem every rank shares: rank 2 (on " +
                             std::string(host) + ") cannot see the staging directory rank 0 (on " +
                             host + ") made, " + staging.string()),
            std::string::npos)
      << s.message();
  EXPECT_EQ(s.message().find("rank 1 (on"), std::string::npos) << s.message();
  EXPECT_EQ(coordinator->owner_gone(), rank->rank == 2);
}

} // namespace
} // namespace shardshift
