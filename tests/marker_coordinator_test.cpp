// marker_coordinator_test.cpp: the marker-file coordinator (src/marker_coordinator.cpp) of two
// ranks in one process, driven step by step: rank 0's commit as the waiting rank sees it.
#include "shardshift/checkpoint.h"
#include "shardshift/io.h"

#include "coordinator.h"
#include "test_support.h"

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include <gtest/gtest.h>

namespace shardshift::testing {
namespace {

namespace fs = std::filesystem;

class MarkerCoordinatorTest : public ::testing::Test {
protected:
  void SetUp() override {
    fs::create_directories(paths.staging);
    options.job_timeout = std::chrono::seconds(1);
    zero = make_marker_coordinator(options, RankInfo{0, 2, "--rank/--world-size", false},
                                   Io::system(), paths);
    one = make_marker_coordinator(options, RankInfo{1, 2, "--rank/--world-size", false},
                                  Io::system(), paths);
    ASSERT_TRUE(zero->begin(paths.staging, Status()).ok());
    ASSERT_TRUE(one->begin(paths.staging, Status()).ok());
    ASSERT_TRUE(one->end_share(Status(), "b 0\n").ok());
    auto ended = zero->end_share(Status(), "a 0\n");
    ASSERT_TRUE(ended.ok()) << ended.status().message();
    ASSERT_TRUE(ended->failures.empty());
    ASSERT_EQ(ended->staging, commit_path(paths)); // moved for the commit
    // Rank 1, its share done, waits for the commit.
    waiting = std::async(std::launch::async, [this] { return one->learn_outcome(Status()); });
    ASSERT_TRUE(zero->before_commit().ok());
  }
  // Whether rank 1 has given its answer within `d`.
  bool answered_within(std::chrono::seconds d) {
    return waiting.wait_for(d) == std::future_status::ready;
  }
  TempDir tmp;
  JobPaths paths{tmp / "out", tmp / ".out.shardshift-job-0123456789abcdef"};
  ConvertOptions options;
  std::unique_ptr<Coordinator> zero, one;
  std::future<Status> waiting;
};

// Rank 0 moves the staging directory for its commit the moment it has read the last "done"
// marker, which may come before the rank that wrote it has synced the directory by its old
// name: that rank's share is done all the same (it failed the job with "cannot open directory
// to sync it", found by CI on 2026-12-06). Here rank 0's move comes right after the rename.
TEST(MarkerCoordinator, ADoneMarkerWhoseDirectoryMovesAtOnceEndsTheShare) {
  TempDir tmp;
  const JobPaths paths{tmp / "out", tmp / ".out.shardshift-job-0123456789abcdef"};
  fs::create_directories(paths.staging);
  class MovedOnDone final : public ForwardingIo {
  public:
    explicit MovedOnDone(const JobPaths& p) : ForwardingIo(Io::system()), paths_(p) {}
    int rename(const char* from, const char* to) override {
      const int r = ForwardingIo::rename(from, to);
      if (r == 0 && std::string_view(to).ends_with(".rank-1-of-2.done"))
        fs::rename(paths_.staging, commit_path(paths_));
      return r;
    }

  private:
    const JobPaths& paths_;
  } io(paths);
  ConvertOptions options;
  auto one =
      make_marker_coordinator(options, RankInfo{1, 2, "--rank/--world-size", false}, io, paths);
  ASSERT_TRUE(one->begin(paths.staging, Status()).ok());
  auto ended = one->end_share(Status(), "b 0\n");
  ASSERT_TRUE(ended.ok()) << ended.status().message();
  EXPECT_EQ(read_bytes(commit_path(paths) / ".rank-1-of-2.done")
                .substr(read_bytes(commit_path(paths) / ".rank-1-of-2.done").find('\n') + 1),
            "b 0\n");
}

// A commit that takes longer than --job-timeout (a slow filesystem, --force over a large old OUT):
// rank 0's markers are gone, but it still beats, and rank 1 waits for the commit rather than
// calling rank 0 gone and removing the staging directory under its rename.
TEST_F(MarkerCoordinatorTest, ARankZeroWhoseCommitOutlastsTheTimeoutIsWaitedFor) {
  EXPECT_FALSE(answered_within(std::chrono::seconds(3))) << waiting.get().message();
  write_bytes(commit_path(paths) / OUTPUT_MARKER_NAME, "{}\n");
  fs::rename(commit_path(paths), paths.output);
  zero->tell_outcome(Status());
  ASSERT_TRUE(answered_within(std::chrono::seconds(10)));
  const Status s = waiting.get();
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_FALSE(one->owner_gone());
}

// Another job of another plan for the same OUT, its rank 0 alive, while this job's rank 0
// commits (its heartbeat file cleared): rank 1 has seen its own rank 0 beat, so it does not take
// the other job's rank 0 for its own and fail a job that is being committed.
TEST_F(MarkerCoordinatorTest, AnotherPlansRankZeroDoesNotFailAJobWhoseRankZeroCommits) {
  const fs::path other = tmp / ".out.shardshift-job-fedcba9876543210";
  fs::create_directories(other);
  write_bytes(other / ".rank-0-of-2.alive", "other\n");
  std::atomic<bool> stop{false};
  std::thread beating([&] {
    while (!stop) { // the other job's rank 0 beats as long as this test looks
      fs::last_write_time(other / ".rank-0-of-2.alive", fs::file_time_type::clock::now());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  const bool answered = answered_within(std::chrono::seconds(2));
  write_bytes(commit_path(paths) / OUTPUT_MARKER_NAME, "{}\n");
  fs::rename(commit_path(paths), paths.output);
  zero->tell_outcome(Status());
  stop = true;
  beating.join();
  if (answered)
    FAIL() << "rank 1 answered during the commit: " << waiting.get().message();
  ASSERT_TRUE(answered_within(std::chrono::seconds(10)));
  const Status s = waiting.get();
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_FALSE(one->owner_gone());
}

// The control: a rank 0 that dies while committing stops beating, and rank 1 finds it gone
// after --job-timeout, told to remove the staging directory itself.
TEST_F(MarkerCoordinatorTest, ARankZeroThatDiesWhileCommittingIsFoundGone) {
  zero.reset(); // its heartbeat ends, as at a kill
  ASSERT_TRUE(answered_within(std::chrono::seconds(10)));
  const Status s = waiting.get();
  EXPECT_NE(s.message().find("rank 0 gave no sign of life for 1 s and did not commit"),
            std::string::npos)
      << s.message();
  EXPECT_TRUE(one->owner_gone());
}

} // namespace
} // namespace shardshift::testing
