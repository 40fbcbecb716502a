// resume_e2e_test.cpp: the shardshift binary killed at random moments (seeded: kill -9, Ctrl-C,
// SIGTERM), then run again with --resume until a run completes: the output is byte-identical to an
// uninterrupted run and nothing is left beside it. Also: signals after the first one do not cut
// the cleanup short.
#include "test_support.h"

#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <map>
#include <spawn.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::files_of;
using testing::list_dir;
using testing::read_bytes;
using testing::run_shardshift;
using testing::shell_quoted;

// shardshift started in the background, its output into a file; killed if never waited for.
class Running {
public:
  Running(const std::vector<std::string>& args, const fs::path& err)
      : pid_(testing::spawn_shardshift(args, err)), started_(pid_ > 0) {}
  ~Running() {
    if (started_ && !waited_) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  bool started() const { return started_; }
  void signal(int sig) { ::kill(pid_, sig); }
  // The wait status.
  int wait() {
    waited_ = true;
    return testing::wait_status(pid_);
  }

private:
  pid_t pid_ = -1;
  bool started_ = false, waited_ = false;
};

// Entries of `dir` other than those named.
std::vector<std::string> others(const fs::path& dir, const std::vector<std::string>& expected) {
  std::vector<std::string> rest;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (std::find(expected.begin(), expected.end(), name) == expected.end())
      rest.push_back(name);
  }
  return rest;
}

class ResumeE2e : public ::testing::Test {
protected:
  void SetUp() override {
    auto r = run_shardshift("synth " + shell_quoted(tmp / "hf") +
                            " --layers 2 --scale 8 --seed 3 -q --max-shard-size 8MB");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto t0 = std::chrono::steady_clock::now();
    auto ref = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                              shell_quoted(tmp / "ref") + " " + flags_text());
    seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_EQ(ref.exit_code, 0) << ref.err;
    ASSERT_GE(list_dir(tmp / "ref").size(), 6u);
  }
  // Many output files, each written and committed in turn, so that kills land between commits.
  std::vector<std::string> flags() const {
    return {"--max-shard-size", "3MB", "--writers", "1", "-j", "2", "--checksums"};
  }
  std::string flags_text() const {
    std::string text;
    for (const std::string& f : flags())
      text += f + " ";
    return text;
  }
  std::vector<std::string> convert_args(bool resume) const {
    std::vector<std::string> args{"convert", (tmp / "hf").string(), (tmp / "out").string()};
    for (const std::string& f : flags())
      args.push_back(f);
    if (resume)
      args.push_back("--resume");
    return args;
  }

  testing::TempDir tmp;
  double seconds_ = 0; ///< an uninterrupted run's wall time
};

TEST_F(ResumeE2e, KilledAtRandomMomentsAndResumedGivesTheSameBytesAndLeavesNothing) {
  std::mt19937_64 rng(testing::test_seed());
  const int signals[] = {SIGKILL, SIGINT, SIGTERM};
  int kills = 0, resumed_with_files = 0;
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    fs::remove_all(tmp / "out");
    for (int attempt = 0;; ++attempt) {
      ASSERT_LT(attempt, 12) << "no run completed";
      const fs::path err = tmp / "err.txt";
      Running run(convert_args(/*resume=*/true), err);
      ASSERT_TRUE(run.started());
      int status;
      if (attempt < 4) { // the last attempts run to the end
        const double at = std::uniform_real_distribution<double>(0.1, 1.1)(rng) * seconds_;
        const int sig = signals[rng() % 3];
        std::this_thread::sleep_for(std::chrono::duration<double>(at));
        run.signal(sig);
        status = run.wait();
        // Killed, interrupted (130) or done before the signal came (0). SIGINT and SIGTERM also
        // kill outright outside convert's handler: before it is installed (nothing written yet)
        // or after OUT was committed.
        if (WIFSIGNALED(status)) {
          EXPECT_TRUE(WTERMSIG(status) == sig) << WTERMSIG(status);
        } else {
          EXPECT_TRUE(WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 130)
              << WEXITSTATUS(status) << ": " << read_bytes(err);
        }
        ++kills;
      } else {
        status = run.wait();
      }
      const std::string said = read_bytes(err);
      if (said.find("file(s) were finished") != std::string::npos &&
          said.find("resuming") != std::string::npos && said.find(": 0 of ") == std::string::npos)
        ++resumed_with_files;
      if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        break;
      // Until a run completes OUT does not exist, unless the signal came after its commit.
      if (fs::exists(tmp / "out"))
        break;
    }
    EXPECT_EQ(files_of(tmp / "out"), files_of(tmp / "ref"));
    EXPECT_EQ(others(tmp.path(), {"hf", "ref", "out", "err.txt"}), std::vector<std::string>{});
  }
  std::cout << "[ resume ] " << kills << " signals, " << resumed_with_files
            << " runs resumed with finished files kept\n";
  EXPECT_GT(resumed_with_files, 0) << "no kill landed after a file was finished";
}

TEST_F(ResumeE2e, InterruptedWithResumeKeepsItsFilesAndSaysHowToContinue) {
  const fs::path err = tmp / "err.txt";
  Running run(convert_args(/*resume=*/true), err);
  ASSERT_TRUE(run.started());
  // Once the first output file is finished inside the staging directory, Ctrl-C.
  bool finished_one = false;
  for (int i = 0; i < 4000 && !finished_one; ++i) {
    for (const auto& e : fs::directory_iterator(tmp.path()))
      if (e.path().filename().string().starts_with(".out.shardshift-tmp-"))
        for (const auto& f : fs::directory_iterator(e.path()))
          finished_one |= f.path().filename().string().starts_with("model-");
    if (!finished_one)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(finished_one);
  run.signal(SIGINT);
  const int status = run.wait();
  const std::string said = read_bytes(err);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    GTEST_SKIP() << "the run finished before the signal arrived";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130) << said;
  EXPECT_NE(said.find("run the same command with --resume"), std::string::npos) << said;
  EXPECT_FALSE(fs::exists(tmp / "out"));
  ASSERT_EQ(others(tmp.path(), {"hf", "ref", "err.txt"}).size(), 1u); // the kept staging

  auto again = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                              shell_quoted(tmp / "out") + " " + flags_text() + " --resume");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.err.find("resumed: "), std::string::npos) << again.err;
  EXPECT_EQ(files_of(tmp / "out"), files_of(tmp / "ref"));
  EXPECT_EQ(others(tmp.path(), {"hf", "ref", "out", "err.txt"}), std::vector<std::string>{});
}

TEST_F(ResumeE2e, SignalsAfterTheFirstStillCleanUp) {
  // Without --resume, a run stopped by Ctrl-C then SIGTERM and Ctrl-C again, in quick succession,
  // removes everything it wrote (before, the second signal exited at once, leaving its staging).
  const fs::path err = tmp / "err.txt";
  Running run(convert_args(/*resume=*/false), err);
  ASSERT_TRUE(run.started());
  bool staging = false;
  for (int i = 0; i < 4000 && !staging; ++i) {
    staging = others(tmp.path(), {"hf", "ref", "err.txt"}).size() == 1;
    if (!staging)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(staging);
  const auto t0 = std::chrono::steady_clock::now();
  run.signal(SIGINT);
  run.signal(SIGTERM);
  run.signal(SIGINT);
  const int status = run.wait();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ signals ] exited " << took << " s after the first signal\n";
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    GTEST_SKIP() << "the run finished before the signals arrived";
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 130) << read_bytes(err);
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_EQ(others(tmp.path(), {"hf", "ref", "err.txt"}), std::vector<std::string>{});
}

} // namespace
} // namespace shardshift
