// ranks_e2e_test.cpp: one conversion spread over several processes (issue 13). Under Open MPI's
// mpirun (-np 3 and 4, both directions, a multi-file output) the output is byte-identical to one
// process's and the ranks coordinate through MPI (in a build with MPI); ranks given different
// plans are refused before anything is written; a rank killed mid-way fails the job and leaves
// nothing. Ranks started by hand (--rank/--world-size) or with torchrun's variables coordinate
// through marker files: a rank killed mid-way fails the job on every rank and leaves nothing
// under OUT; ranks given different world sizes are refused; the expert-parallel export of 4 ranks
// in one command equals four single-rank conversions.
#include "coordinator.h"
#include "test_support.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fcntl.h>
#include <map>
#include <optional>
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
using testing::run_shell;
using testing::shell_quoted;
using testing::wait_status;

// The entries of `dir` (hidden ones too).
std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// How many times `what` occurs in `text`.
size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
    ++n;
  return n;
}

// mpirun as the tests run it (as root in CI: Open MPI refuses root without these).
const std::string MPIRUN = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                           "OMPI_MCA_rmaps_base_oversubscribe=1 mpirun --oversubscribe ";

// The coordinator a job started by mpirun uses in this build.
const char* mpirun_coordinator() {
  return coordinates_through_mpi(RankInfo{0, 2, "Open MPI", true}) ? "MPI" : "marker files";
}

class Ranks : public ::testing::Test {
protected:
  void SetUp() override {
    auto r = run_shardshift("synth " + shell_quoted(tmp / "hf") +
                            " --layers 3 --scale 8 --seed 5 -q --max-shard-size 8MB");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto ref = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                              shell_quoted(tmp / "ref") + " " + FLAGS);
    ASSERT_EQ(ref.exit_code, 0) << ref.err;
    ASSERT_GE(list_dir(tmp / "ref").size(), 8u); // several shards for several ranks
  }
  static constexpr const char* FLAGS = "--max-shard-size 2MB --checksums -j 1 -q";
  // Starts rank `r` of a job of `world` processes started by hand (--rank/--world-size),
  // converting hf into out, its stdout and stderr in log<r>.
  pid_t spawn_rank(unsigned r, unsigned world, const char* job_timeout,
                   const char* max_shard_size = "2MB", const std::vector<std::string>& more = {}) {
    std::vector<std::string> args = {"convert", (tmp / "hf").string(), (tmp / "out").string(),
                                     "--max-shard-size", max_shard_size, "-j", "1", "--rank",
                                     std::to_string(r), "--world-size", std::to_string(world),
                                     "--job-timeout", job_timeout};
    args.insert(args.end(), more.begin(), more.end());
    return testing::spawn_shardshift(args, tmp / ("log" + std::to_string(r)));
  }
  // OUT committed with the plan's files and nothing of the job's coordination (no marker), equal
  // to what converting in one process gives, and nothing left beside it.
  void expect_committed_alone() {
    for (const std::string& name : entries(tmp / "out"))
      EXPECT_FALSE(name.starts_with(".rank-")) << name;
    auto verify = run_shardshift("verify " + shell_quoted(tmp / "hf") + " " +
                                 shell_quoted(tmp / "out") + " --max-shard-size 2MB");
    EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
    EXPECT_EQ(entries(tmp.path()),
              (std::vector<std::string>{"hf", "log0", "log1", "log2", "out", "ref"}));
  }
  // Runs rank 0 of 2 (with `more` flags) while the test plays rank 1, whose markers say its
  // share is done and whose files are nowhere; returns rank 0's wait status (-1, and a failure
  // recorded, if it did not start; a failure also if it made no staging directory), its output in
  // log0.
  int rank_zero_beside_a_rank_one_done_elsewhere(const std::vector<std::string>& more = {}) {
    const pid_t zero = spawn_rank(0, 2, "30", "2MB", more);
    if (zero <= 0) {
      ADD_FAILURE() << "rank 0 did not start";
      return -1;
    }
    if (const auto dir = wait_for_in_staging(".rank-0-of-2.alive")) {
      testing::write_bytes(*dir / ".rank-1-of-2.alive", "4242");
      testing::write_bytes(*dir / ".rank-1-of-2.done", "4242\n");
    } else {
      ADD_FAILURE() << "rank 0 made no staging directory: " << read_bytes(tmp / "log0");
    }
    return wait_status(zero);
  }
  // The job's staging directory, once it exists.
  std::optional<fs::path> job_staging() const {
    for (const std::string& name : entries(tmp.path()))
      if (name.find(".shardshift-job-") != std::string::npos)
        return tmp / name;
    return std::nullopt;
  }
  // Waits (at most 30 s) until the job's staging directory holds `name`; returns the directory.
  std::optional<fs::path> wait_for_in_staging(const std::string& name) const {
    for (int i = 0; i < 30'000; ++i) {
      if (const auto dir = job_staging(); dir && fs::exists(*dir / name))
        return dir;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return std::nullopt;
  }
  testing::TempDir tmp;
};

TEST_F(Ranks, UnderMpirunTheOutputIsTheSameAsOneProcesss) {
  if (run_shell("command -v mpirun").exit_code != 0)
    GTEST_SKIP() << "mpirun (Open MPI) is not installed; scripts/setup.sh installs openmpi-bin";
  const std::string mpirun = MPIRUN + "-np ";
  // Back to Hugging Face from the single-process native output, as the other direction.
  auto back = run_shardshift("convert " + shell_quoted(tmp / "ref") + " " +
                             shell_quoted(tmp / "back") + " " + FLAGS);
  ASSERT_EQ(back.exit_code, 0) << back.err;
  for (int np : {3, 4}) {
    for (auto [from, expected] : {std::pair{"hf", "ref"}, {"ref", "back"}}) {
      SCOPED_TRACE(std::to_string(np) + " ranks from " + from);
      fs::remove_all(tmp / "out");
      auto r = run_shell(mpirun + std::to_string(np) + " " + SHARDSHIFT_BINARY + " convert " +
                         shell_quoted(tmp / from) + " " + shell_quoted(tmp / "out") + " " + FLAGS);
      ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
      EXPECT_EQ(files_of(tmp / "out"), files_of(tmp / expected));
      EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"back", "hf", "out", "ref"}));
    }
  }
}

TEST_F(Ranks, UnderMpirunEveryRankSaysHowTheJobIsCoordinated) {
  if (run_shell("command -v mpirun").exit_code != 0)
    GTEST_SKIP() << "mpirun (Open MPI) is not installed; scripts/setup.sh installs openmpi-bin";
  auto r =
      run_shell(MPIRUN + "-np 3 " + SHARDSHIFT_BINARY + " convert " + shell_quoted(tmp / "hf") +
                " " + shell_quoted(tmp / "out") + " --max-shard-size 2MB -j 1");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::string said = r.out + r.err;
  for (unsigned k = 0; k < 3; ++k)
    EXPECT_EQ(count(said, "rank " + std::to_string(k) + " of 3 (Open MPI, coordinated through " +
                              mpirun_coordinator() + "): converted"),
              1u)
        << said;
  for (const std::string& name : list_dir(tmp / "out"))
    EXPECT_FALSE(name.starts_with(".rank-")) << name;
}

TEST_F(Ranks, UnderMpirunRanksGivenDifferentPlansAreRefusedBeforeWriting) {
  if (run_shell("command -v mpirun").exit_code != 0)
    GTEST_SKIP() << "mpirun (Open MPI) is not installed; scripts/setup.sh installs openmpi-bin";
  if (std::string(mpirun_coordinator()) != "MPI")
    GTEST_SKIP() << "built without MPI: ranks of other plans write into other staging "
                    "directories (and time out)";
  // Rank 2 is given another shard size, so another plan (Open MPI's MPMD syntax, "A : B").
  const std::string convert = std::string(SHARDSHIFT_BINARY) + " convert " +
                              shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "out") +
                              " -j 1 -q --max-shard-size ";
  auto r = run_shell(MPIRUN + "-np 2 " + convert + "2MB : -np 1 " + convert + "3MB");
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err; // a usage error, on every rank
  const std::string said = r.out + r.err;
  // Every rank refuses, but mpirun ends the others as soon as the first exits, so how many get
  // to print their refusal is a race: at least one does, and none prints anything else.
  const size_t refusals = count(said, " of 3: the ranks of this job disagree");
  EXPECT_GE(refusals, 1u) << said;
  EXPECT_LE(refusals, 3u) << said;
  EXPECT_EQ(count(said, "rank 2 planned another output than rank 0 (plan fingerprints "), refusals)
      << said;
  // Refused before the staging directory was made.
  EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"hf", "ref"}));
}

// Ranks that hash their files and ranks that do not would leave rank 0 listing empty digests in
// SHA256SUMS: --checksums is part of what the ranks must agree on, and so is --no-side-files.
TEST_F(Ranks, UnderMpirunRanksThatDisagreeOnChecksumsOrSideFilesAreRefusedBeforeWriting) {
  if (run_shell("command -v mpirun").exit_code != 0)
    GTEST_SKIP() << "mpirun (Open MPI) is not installed; scripts/setup.sh installs openmpi-bin";
  if (std::string(mpirun_coordinator()) != "MPI")
    GTEST_SKIP() << "built without MPI: the ranks write into different staging directories";
  const std::string convert = std::string(SHARDSHIFT_BINARY) + " convert " +
                              shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "out") +
                              " -j 1 -q --max-shard-size 2MB";
  auto r = run_shell(MPIRUN + "-np 2 " + convert + " --checksums : -np 1 " + convert);
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  // At least one rank prints its refusal before mpirun ends the others (see above).
  EXPECT_GE(count(r.out + r.err, "rank 2 planned another output than rank 0"), 1u)
      << r.out << r.err;
  EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"hf", "ref"}));
  // So is --no-side-files: the side files are rank 0's to copy, and a job committed with them
  // would not be what the other ranks were asked for (before, every rank exited 0).
  auto side = run_shell(MPIRUN + "-np 2 " + convert + " : -np 1 " + convert + " --no-side-files");
  EXPECT_EQ(side.exit_code, 2) << side.out << side.err;
  EXPECT_GE(count(side.out + side.err, "rank 2 planned another output than rank 0"), 1u)
      << side.out << side.err;
  EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"hf", "ref"}));
}

// A relative OUT is taken from each rank's working directory (here mpirun's -wdir; on a cluster a
// different directory per node): the ranks would fill different staging directories and rank 0
// commit its own share alone, exit 0 everywhere. Refused before anything is written, naming both.
TEST_F(Ranks, UnderMpirunRanksGivenDifferentOutputsAreRefusedBeforeWriting) {
  if (run_shell("command -v mpirun").exit_code != 0)
    GTEST_SKIP() << "mpirun (Open MPI) is not installed; scripts/setup.sh installs openmpi-bin";
  if (std::string(mpirun_coordinator()) != "MPI")
    GTEST_SKIP() << "built without MPI: the ranks write into different staging directories";
  fs::create_directories(tmp / "a");
  fs::create_directories(tmp / "b");
  const std::string convert = std::string(SHARDSHIFT_BINARY) + " convert " +
                              shell_quoted(tmp / "hf") + " out -j 1 -q --max-shard-size 2MB";
  auto r = run_shell(MPIRUN + "-np 1 -wdir " + shell_quoted(tmp / "a") + " " + convert +
                     " : -np 2 -wdir " + shell_quoted(tmp / "b") + " " + convert);
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err; // a usage error, as for different flags
  const std::string said = r.out + r.err;
  const std::string a = fs::weakly_canonical(tmp / "a" / "out").string();
  const std::string b = fs::weakly_canonical(tmp / "b" / "out").string();
  // At least one rank prints its refusal before mpirun ends the others (see above).
  EXPECT_GE(count(said, "rank 2 writes into " + b + ", rank 0 into " + a), 1u) << said;
  EXPECT_GE(count(said, "a relative OUT is taken from each rank's working directory"), 1u) << said;
  EXPECT_TRUE(fs::is_empty(tmp / "a"));
  EXPECT_TRUE(fs::is_empty(tmp / "b"));
}

// OUT on a disk of each node's own: one path on every rank, but rank 2's node has a directory of
// its own mounted there (here: a mount namespace of its own, with another directory bound over
// OUT's parent). Every rank would convert its share, and rank 0 fail at its commit with files
// missing, leaving each node's staging directory behind. Refused before any work (a usage
// error, as for different OUTs), and each node's staging directory removed.
TEST_F(Ranks, UnderMpirunAnOutOnEachNodesOwnDiskIsRefusedBeforeWriting) {
  if (run_shell("command -v mpirun").exit_code != 0)
    GTEST_SKIP() << "mpirun (Open MPI) is not installed; scripts/setup.sh installs openmpi-bin";
  if (std::string(mpirun_coordinator()) != "MPI")
    GTEST_SKIP() << "built without MPI: ranks that never join are waited for (--job-timeout)";
  if (run_shell("unshare -m --propagation private true").exit_code != 0)
    GTEST_SKIP() << "no mount namespaces here (unshare -m needs root)";
  fs::create_directories(tmp / "node");
  fs::create_directories(tmp / "node-b");
  const std::string convert = std::string(SHARDSHIFT_BINARY) + " convert " +
                              shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "node" / "out") +
                              " -j 1 --max-shard-size 2MB";
  const std::string other_node = "unshare -m --propagation private sh -c " +
                                 shell_quoted("mount --bind " + (tmp / "node-b").string() + " " +
                                              (tmp / "node").string() + " && exec " + convert);
  auto r = run_shell(MPIRUN + "-np 2 " + convert + " : -np 1 " + other_node);
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  const std::string said = r.out + r.err;
  EXPECT_GE(count(said, "OUT is not on a filesystem every rank shares: rank 2 (on "), 1u) << said;
  EXPECT_EQ(count(said, "rank 1 (on"), 0u) << said;
  EXPECT_EQ(count(said, "shards written"), 0u) << said; // no rank converted its share
  EXPECT_TRUE(fs::is_empty(tmp / "node")) << entries(tmp / "node").front();
  EXPECT_TRUE(fs::is_empty(tmp / "node-b")) << entries(tmp / "node-b").front();
}

// Runs the fixture's job as 3 ranks under mpirun and sends `signal` to rank 2 once the job's
// staging directory exists. Returns mpirun's wait status (nullopt: the job finished first).
std::optional<int> signal_rank_under_mpirun(const fs::path& dir, int signal) {
  // mpirun ends the other ranks with SIGTERM, then SIGKILL after odls_base_sigkill_timeout
  // seconds (1 by default): rank 0 removes the staging directory in between (README "Ranks").
  const std::string command =
      "exec env " + MPIRUN + "--mca odls_base_sigkill_timeout 5 -np 3 " + SHARDSHIFT_BINARY +
      " convert " + shell_quoted(dir / "hf") + " " + shell_quoted(dir / "out") +
      " --max-shard-size 1MB --checksums -j 1 > " + shell_quoted(dir / "log") + " 2>&1";
  const pid_t mpirun = ::fork();
  if (mpirun < 0)
    return std::nullopt;
  if (mpirun == 0) {
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Rank 2 is the child of mpirun with OMPI_COMM_WORLD_RANK=2.
  pid_t victim = 0;
  for (int i = 0; i < 20000 && victim == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    bool started = false;
    for (const std::string& name : entries(dir))
      started |= name.find(".shardshift-job-") != std::string::npos;
    if (!started)
      continue;
    for (const auto& proc : fs::directory_iterator("/proc")) {
      const std::string stat = read_bytes(proc.path() / "stat");
      const size_t paren = stat.rfind(')');
      if (paren == std::string::npos || std::atoi(stat.c_str() + paren + 4) != mpirun)
        continue; // "PID (NAME) STATE PPID ..."
      std::string env = read_bytes(proc.path() / "environ");
      std::replace(env.begin(), env.end(), '\0', '\n');
      if (env.find("\nOMPI_COMM_WORLD_RANK=2\n") != std::string::npos)
        victim = std::atoi(proc.path().filename().c_str());
    }
  }
  EXPECT_GT(victim, 0) << read_bytes(dir / "log");
  if (victim > 0)
    ::kill(victim, signal);
  const int status = wait_status(mpirun);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return std::nullopt;
  return status;
}

TEST_F(Ranks, UnderMpirunAKilledRankFailsTheJobAndLeavesNothing) {
  if (run_shell("command -v mpirun").exit_code != 0)
    GTEST_SKIP() << "mpirun (Open MPI) is not installed; scripts/setup.sh installs openmpi-bin";
  const std::optional<int> status = signal_rank_under_mpirun(tmp.path(), SIGKILL);
  if (!status)
    GTEST_SKIP() << "the job finished before the kill";
  const std::string log = read_bytes(tmp / "log");
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) != 0) << log;
  EXPECT_NE(log.find("exited on signal 9"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"hf", "log", "ref"})) << log;
}

TEST_F(Ranks, UnderMpirunAnInterruptedRankEndsTheJobOnEveryRankAndLeavesNothing) {
  if (run_shell("command -v mpirun").exit_code != 0)
    GTEST_SKIP() << "mpirun (Open MPI) is not installed; scripts/setup.sh installs openmpi-bin";
  if (std::string(mpirun_coordinator()) != "MPI")
    GTEST_SKIP() << "built without MPI: the marker files' tests cover this";
  // SIGTERM, as Ctrl-C: rank 2 stops and gives up; mpirun ends ranks 0 and 1 with SIGTERM.
  const std::optional<int> status = signal_rank_under_mpirun(tmp.path(), SIGTERM);
  if (!status)
    GTEST_SKIP() << "the job finished before the signal";
  const std::string log = read_bytes(tmp / "log");
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 130) << log;
  // Rank 2 says it was interrupted (in its share, or waiting for the others' reports).
  EXPECT_NE(log.find("shardshift: rank 2 of 3: interrupted"), std::string::npos) << log;
  // Rank 0 either gets mpirun's SIGTERM while it waits, or (when rank 2 was already waiting for
  // the reports, so its interruption is one of them) learns the job failed and says so first.
  EXPECT_TRUE(log.find("shardshift: rank 0 of 3: interrupted while waiting for ") !=
                  std::string::npos ||
              log.find("shardshift: the job of 3 ranks failed; nothing was written to ") !=
                  std::string::npos)
      << log;
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"hf", "log", "ref"})) << log;
}

TEST_F(Ranks, WithTorchrunsVariablesTheRanksCoordinateThroughMarkerFiles) {
  // Two ranks as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK), each with its own log.
  std::string command;
  for (unsigned k = 0; k < 2; ++k)
    command += "RANK=" + std::to_string(k) + " WORLD_SIZE=2 LOCAL_RANK=" + std::to_string(k) + " " +
               SHARDSHIFT_BINARY + " convert " + shell_quoted(tmp / "hf") + " " +
               shell_quoted(tmp / "out") + " --max-shard-size 2MB --checksums -j 1 > " +
               shell_quoted(tmp / ("log" + std::to_string(k))) + " 2>&1 & ";
  auto r = run_shell(command + "wait %1 && wait %2");
  const std::string logs = read_bytes(tmp / "log0") + read_bytes(tmp / "log1");
  ASSERT_EQ(r.exit_code, 0) << logs;
  EXPECT_EQ(files_of(tmp / "out"), files_of(tmp / "ref"));
  for (unsigned k = 0; k < 2; ++k)
    EXPECT_EQ(count(logs, "rank " + std::to_string(k) +
                              " of 2 (torchrun, coordinated through marker files): converted"),
              1u)
        << logs;
}

// The job's staging and commit directories are temporary names too: an OUT of 240 bytes, which
// one process converts, converts as a job of two (found by an audit on 2026-12-06: "File name too
// long"), and nothing of the job is left beside it.
TEST_F(Ranks, AJobConvertsIntoTheLongestNamesOneProcessTakes) {
  const std::string out(240, 'o');
  std::string command;
  for (unsigned k = 0; k < 2; ++k)
    command += std::string(SHARDSHIFT_BINARY) + " convert " + shell_quoted(tmp / "hf") + " " +
               shell_quoted(tmp / out) + " " + FLAGS + " --rank " + std::to_string(k) +
               " --world-size 2 --job-timeout 30 > " +
               shell_quoted(tmp / ("log" + std::to_string(k))) + " 2>&1 & ";
  auto r = run_shell(command + "wait %1 && wait %2");
  ASSERT_EQ(r.exit_code, 0) << read_bytes(tmp / "log0") << read_bytes(tmp / "log1");
  EXPECT_EQ(files_of(tmp / out), files_of(tmp / "ref"));
  EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"hf", "log0", "log1", out, "ref"}));
}

TEST_F(Ranks, AKilledRankFailsTheJobOnEveryRankAndLeavesNothing) {
  std::vector<pid_t> pids;
  for (unsigned r = 0; r < 3; ++r)
    pids.push_back(spawn_rank(r, 3, "2"));
  ASSERT_TRUE(std::all_of(pids.begin(), pids.end(), [](pid_t p) { return p > 0; }));
  // Once the job's staging directory exists, rank 2 dies without a word.
  for (int i = 0; i < 5000; ++i) {
    bool started = false;
    for (const std::string& name : entries(tmp.path()))
      started |= name.find(".shardshift-job-") != std::string::npos;
    if (started)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::kill(pids[2], SIGKILL);
  EXPECT_TRUE(WIFSIGNALED(wait_status(pids[2])));
  for (unsigned r = 0; r < 2; ++r) {
    const int status = wait_status(pids[r]);
    const std::string log = read_bytes(tmp / ("log" + std::to_string(r)));
    ASSERT_TRUE(WIFEXITED(status)) << log;
    if (WEXITSTATUS(status) == 0)
      GTEST_SKIP() << "the job finished before the kill";
    EXPECT_EQ(WEXITSTATUS(status), 1) << log;
    EXPECT_NE(log.find("rank 2"), std::string::npos) << "rank " << r << ": " << log;
  }
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"hf", "log0", "log1", "log2", "ref"}));
}

// Rank 0 clears every marker before its commit; killed then, it leaves ranks whose own heartbeat
// files are gone too. They waited for ever, --job-timeout or not. Here the test plays that rank
// 0: ranks 1 and 2 finish their shares, then every marker goes and no commit comes. Each must
// fail within its timeout, naming rank 0.
TEST_F(Ranks, ARankZeroThatDiesWhileCommittingFailsTheOthersWithinTheTimeout) {
  std::vector<pid_t> pids;
  for (unsigned r = 1; r < 3; ++r)
    pids.push_back(spawn_rank(r, 3, "2"));
  ASSERT_TRUE(std::all_of(pids.begin(), pids.end(), [](pid_t p) { return p > 0; }));
  auto staging = [&]() -> std::optional<fs::path> {
    for (const std::string& name : entries(tmp.path()))
      if (name.find(".shardshift-job-") != std::string::npos)
        return tmp / name;
    return std::nullopt;
  };
  bool cleared = false;
  for (int i = 0; i < 30'000 && !cleared; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const auto dir = staging();
    if (dir && !fs::exists(*dir / ".rank-0-of-3.alive")) // rank 0 at work
      testing::write_bytes(*dir / ".rank-0-of-3.alive", "12345");
    if (!dir || !fs::exists(*dir / ".rank-1-of-3.done") || !fs::exists(*dir / ".rank-2-of-3.done"))
      continue;
    for (const std::string& name : entries(*dir)) // as rank 0 does before it commits
      if (name.starts_with(".rank-"))
        fs::remove(*dir / name);
    cleared = true;
  }
  ASSERT_TRUE(cleared) << "the ranks never finished their shares";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (size_t k = 0; k < pids.size(); ++k) {
    int status = 0;
    while (waitpid(pids[k], &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        for (pid_t p : pids)
          ::kill(p, SIGKILL);
        FAIL() << "rank " << k + 1 << " still waits for a commit 30 s on, with --job-timeout 2";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const std::string log = read_bytes(tmp / ("log" + std::to_string(k + 1)));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << log;
    // The first to see rank 0 gone removes the staging directory; another may see that first.
    EXPECT_TRUE(log.find("rank 0 gave no sign of life for 2 s and did not commit") !=
                    std::string::npos ||
                log.find("its staging directory was removed without a commit") != std::string::npos)
        << log;
  }
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

// A job taking over the staging directory of a killed one finds the temporary files that run
// left (a side file's, a marker's): they must not reach OUT with the commit.
TEST_F(Ranks, TemporaryFilesOfAKilledJobDoNotReachTheOutput) {
  std::vector<pid_t> pids;
  for (unsigned r = 0; r < 2; ++r)
    pids.push_back(spawn_rank(r, 2, "5"));
  ASSERT_TRUE(std::all_of(pids.begin(), pids.end(), [](pid_t p) { return p > 0; }));
  bool planted = false;
  for (int i = 0; i < 20'000 && !planted; ++i) {
    for (const std::string& name : entries(tmp.path()))
      if (name.find(".shardshift-job-") != std::string::npos) {
        const fs::path dir = tmp / name;
        testing::write_bytes(dir / ".config.json.shardshift-tmp-99999-1a2b", "{");
        testing::write_bytes(dir / "..rank-1-of-2.alive.shardshift-tmp-99999-3c4d", "");
        planted = true;
      }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  ASSERT_TRUE(planted);
  for (size_t k = 0; k < pids.size(); ++k) {
    const int status = wait_status(pids[k]);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << read_bytes(tmp / ("log" + std::to_string(k)));
  }
  for (const std::string& name : entries(tmp / "out"))
    EXPECT_EQ(name.find(".shardshift-tmp-"), std::string::npos) << name;
  auto verify = run_shardshift("verify " + shell_quoted(tmp / "hf") + " " +
                               shell_quoted(tmp / "out") + " --max-shard-size 2MB");
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

// Ranks given other flags plan differently and work in different staging directories: each is
// told the other works on another plan (not that it died), and neither directory is left.
TEST_F(Ranks, RanksGivenDifferentFlagsAreToldSoAndLeaveNothing) {
  std::vector<pid_t> pids;
  for (unsigned r = 0; r < 2; ++r)
    pids.push_back(spawn_rank(r, 2, "3", r == 0 ? "2MB" : "3MB"));
  ASSERT_TRUE(std::all_of(pids.begin(), pids.end(), [](pid_t p) { return p > 0; }));
  for (unsigned r = 0; r < 2; ++r) {
    const int status = wait_status(pids[r]);
    const std::string log = read_bytes(tmp / ("log" + std::to_string(r)));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << log;
    // Told as soon as it sees the other's staging directory, or when the other never joins.
    const std::string other = "rank " + std::to_string(1 - r);
    EXPECT_TRUE(log.find(other + " works on another plan") != std::string::npos ||
                log.find(other + ": never joined this job") != std::string::npos ||
                log.find("other input or flags, which make another plan") != std::string::npos ||
                log.find("its staging directory was removed without a commit") != std::string::npos)
        << "rank " << r << ": " << log;
  }
  EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"hf", "log0", "log1", "ref"}));
}

// Rank 0 commits only what is there: a rank that reported its share done but wrote it elsewhere
// (an OUT on a disk of its own node, a relative OUT from another working directory) fails the job,
// whatever the coordinator. Here the test plays rank 1 of 2: its markers say done, its files are
// nowhere.
TEST_F(Ranks, RankZeroNeverCommitsWithoutEveryPlannedFile) {
  const int status = rank_zero_beside_a_rank_one_done_elsewhere();
  const std::string log = read_bytes(tmp / "log0");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << log;
  EXPECT_NE(log.find("the job of 2 ranks failed; nothing was written to " + (tmp / "out").string()),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("file(s) the plan writes are not in the job's staging directory"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("(rank 1's share): missing"), std::string::npos) << log;
  EXPECT_EQ(log.find("(rank 0's share)"), std::string::npos) << log;
  EXPECT_NE(log.find("is OUT on a disk of each node's own"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"hf", "log0", "ref"}));
}

// A job run again with --force over the OUT its first run committed: the old OUT (its marker,
// another directory than the job's staging) is not taken for this job's commit by a rank that
// finished its share (found by an audit on 2026-12-06: rank 1 said the job was committed without
// it and removed the staging directory, and both ranks failed).
TEST_F(Ranks, AJobWithForceReplacesAnOutput) {
  for (const bool force : {false, true}) {
    SCOPED_TRACE(force);
    const std::vector<std::string> more =
        force ? std::vector<std::string>{"--force"} : std::vector<std::string>{};
    const pid_t zero = spawn_rank(0, 2, "30", "2MB", more);
    const pid_t one = spawn_rank(1, 2, "30", "2MB", more);
    ASSERT_TRUE(zero > 0 && one > 0);
    const int s0 = wait_status(zero), s1 = wait_status(one);
    const std::string logs = read_bytes(tmp / "log0") + read_bytes(tmp / "log1");
    EXPECT_TRUE(WIFEXITED(s0) && WEXITSTATUS(s0) == 0) << logs;
    EXPECT_TRUE(WIFEXITED(s1) && WEXITSTATUS(s1) == 0) << logs;
  }
  auto verify = run_shardshift("verify " + shell_quoted(tmp / "hf") + " " +
                               shell_quoted(tmp / "out") + " --max-shard-size 2MB");
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
  EXPECT_EQ(entries(tmp.path()), (std::vector<std::string>{"hf", "log0", "log1", "out", "ref"}));
}

// Rank 0 times the other ranks by its own heartbeat file: removed by another process, it fails
// the job rather than wait for ever (an audit on 2026-12-06 found a rank 0 still waiting after
// 11 minutes with --job-timeout 30, once a rank had cleared the directory's markers).
TEST_F(Ranks, RankZeroWhoseHeartbeatIsRemovedFailsTheJob) {
  const pid_t zero = spawn_rank(0, 2, "5");
  ASSERT_GT(zero, 0);
  const auto dir = wait_for_in_staging(".rank-0-of-2.alive");
  ASSERT_TRUE(dir) << read_bytes(tmp / "log0");
  // Once its share is done, it waits for rank 1; then its heartbeat goes.
  ASSERT_TRUE(wait_for_in_staging(".rank-0-of-2.done")) << read_bytes(tmp / "log0");
  fs::remove(*dir / ".rank-0-of-2.alive");
  const int status = wait_status(zero);
  const std::string log = read_bytes(tmp / "log0");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << log;
  EXPECT_NE(log.find("its heartbeat file in " + dir->string() + " was removed by another process"),
            std::string::npos)
      << log;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

// The same with --resume: the staging directory had been moved for the commit, which the next run
// removes and writes again, so rank 0 does not promise a resume (found by an audit on
// 2026-12-06: it told the user to run the job with --resume to continue from them).
TEST_F(Ranks, AFailedCommitPromisesNoResume) {
  const int status = rank_zero_beside_a_rank_one_done_elsewhere({"--resume"});
  const std::string log = read_bytes(tmp / "log0");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << log;
  EXPECT_NE(log.find("(rank 1's share): missing"), std::string::npos) << log;
  EXPECT_NE(log.find("moved there for the commit; the next run of this job removes it and writes "
                     "every file again (--resume cannot continue a commit)"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("to continue from them"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

// A rank interrupted once its share is done (its files durable, its "done" marker written) no
// longer stops the job, and writes nothing more into the staging directory, which rank 0 may be
// committing: it says so and exits 130; the others commit and exit 0, and OUT holds no marker.
// Rank 0 starts only after the interruption, so the rank is certainly waiting when interrupted.
TEST_F(Ranks, ARankInterruptedAfterItsShareLeavesTheJobToCommit) {
  const pid_t one = spawn_rank(1, 3, "30");
  const pid_t two = spawn_rank(2, 3, "30");
  ASSERT_TRUE(one > 0 && two > 0);
  ASSERT_TRUE(wait_for_in_staging(".rank-1-of-3.done")) << read_bytes(tmp / "log1");
  ::kill(one, SIGINT);
  const int s1 = wait_status(one);
  const std::string log1 = read_bytes(tmp / "log1");
  EXPECT_TRUE(WIFEXITED(s1) && WEXITSTATUS(s1) == 130) << log1;
  EXPECT_NE(log1.find("rank 1 of 3: interrupted while waiting for rank 0's commit; this rank's "
                      "share was finished, so the job goes on without this process: whether " +
                      (tmp / "out").string() + " was committed, rank 0's output says"),
            std::string::npos)
      << log1;
  const pid_t zero = spawn_rank(0, 3, "30");
  ASSERT_GT(zero, 0);
  for (auto [pid, r] : {std::pair{zero, 0}, {two, 2}}) {
    const int status = wait_status(pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << read_bytes(tmp / ("log" + std::to_string(r)));
  }
  expect_committed_alone();
}

// A rank killed after its share was done, started again: its share stands (the "done" marker
// carries the nonce of the heartbeat it left), so the new process writes nothing into the staging
// directory, which rank 0 may be committing at that moment (before, it wrote a new heartbeat and
// its files again there, and a commit could take the directory with a shard missing or a
// temporary file in it). The job then commits with it.
TEST_F(Ranks, ARankWhoseShareAKilledProcessFinishedWritesNothingAgain) {
  const pid_t first = spawn_rank(1, 3, "30");
  ASSERT_GT(first, 0);
  const auto dir = wait_for_in_staging(".rank-1-of-3.done");
  ASSERT_TRUE(dir) << read_bytes(tmp / "log1");
  ::kill(first, SIGKILL);
  wait_status(first);
  std::map<std::string, std::pair<std::string, fs::file_time_type>> before;
  for (const std::string& name : entries(*dir))
    before[name] = {read_bytes(*dir / name), fs::last_write_time(*dir / name)};
  const pid_t again = spawn_rank(1, 3, "30");
  ASSERT_GT(again, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500)); // beats would have come by now
  std::map<std::string, std::pair<std::string, fs::file_time_type>> after;
  for (const std::string& name : entries(*dir))
    after[name] = {read_bytes(*dir / name), fs::last_write_time(*dir / name)};
  EXPECT_TRUE(before == after) << "the restarted rank wrote into the staging directory";
  std::vector<pid_t> pids{spawn_rank(0, 3, "30"), again, spawn_rank(2, 3, "30")};
  for (size_t r = 0; r < pids.size(); ++r) {
    const int status = wait_status(pids[r]);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << read_bytes(tmp / ("log" + std::to_string(r)));
  }
  expect_committed_alone();
}

// A rank killed in the middle of its share leaves a heartbeat file that stops changing. The job
// run again, that rank started a second after the others and longer than --job-timeout after the
// kill: rank 0 counts the timeout from its own start, not from the old heartbeat, and waits for
// it (before, it called the rank gone at once and failed the job).
TEST_F(Ranks, ARankKilledMidShareAndStartedLateIsWaitedFor) {
  const pid_t first = spawn_rank(1, 3, "4");
  ASSERT_GT(first, 0);
  const auto dir = wait_for_in_staging(".rank-1-of-3.alive");
  ASSERT_TRUE(dir) << read_bytes(tmp / "log1");
  ::kill(first, SIGKILL);
  wait_status(first);
  fs::remove(*dir / ".rank-1-of-3.done"); // as if killed before the end of its share
  std::this_thread::sleep_for(std::chrono::seconds(5)); // the heartbeat is older than the timeout
  const pid_t zero = spawn_rank(0, 3, "4"), two = spawn_rank(2, 3, "4");
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const pid_t one = spawn_rank(1, 3, "4");
  for (auto [pid, r] : {std::pair{zero, 0}, {one, 1}, {two, 2}}) {
    const int status = wait_status(pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << read_bytes(tmp / ("log" + std::to_string(r)));
  }
  expect_committed_alone();
}

// A rank started a second time while the first process of it still works or waits: the second
// finds its heartbeat file touched by another process, says so, exits 1 and removes nothing; the
// job goes on with the first and commits.
TEST_F(Ranks, ARankStartedTwiceLeavesTheJobToTheFirst) {
  const pid_t first = spawn_rank(1, 2, "30");
  ASSERT_GT(first, 0);
  ASSERT_TRUE(wait_for_in_staging(".rank-1-of-2.done")) << read_bytes(tmp / "log1");
  const pid_t twin = testing::spawn_shardshift(
      {"convert", (tmp / "hf").string(), (tmp / "out").string(), "--max-shard-size", "2MB", "-j",
       "1", "--rank", "1", "--world-size", "2", "--job-timeout", "30"},
      tmp / "log2");
  const int twin_status = wait_status(twin);
  const std::string twin_log = read_bytes(tmp / "log2");
  EXPECT_TRUE(WIFEXITED(twin_status) && WEXITSTATUS(twin_status) == 1) << twin_log;
  EXPECT_NE(twin_log.find("rank 1 of 2 already runs in this job"), std::string::npos) << twin_log;
  EXPECT_NE(twin_log.find("was it started twice?"), std::string::npos) << twin_log;
  ASSERT_TRUE(job_staging()) << "the second process removed the job's staging directory";
  const pid_t zero = spawn_rank(0, 2, "30");
  for (auto [pid, r] : {std::pair{zero, 0}, {first, 1}}) {
    const int status = wait_status(pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << read_bytes(tmp / ("log" + std::to_string(r)));
  }
  expect_committed_alone();
}

// Two processes of one rank that start at the same moment both write the heartbeat file before
// either can see the other's; the one whose nonce was overwritten finds it at its next beat, and
// fails the job naming why (its heartbeat's thread once deadlocked here, and the process hung).
// Played here by rewriting the file under a waiting rank.
TEST_F(Ranks, ARankWhoseHeartbeatAnotherProcessTookFailsTheJobNamingIt) {
  const pid_t one = spawn_rank(1, 2, "30");
  ASSERT_GT(one, 0);
  const auto dir = wait_for_in_staging(".rank-1-of-2.done");
  ASSERT_TRUE(dir) << read_bytes(tmp / "log1");
  testing::write_bytes(*dir / ".rank-1-of-2.alive", "12345"); // another process's nonce
  int status = 0;
  bool ended = false; // not a timing: a generous bound, so that a hang fails rather than stalls
  for (int i = 0; i < 600 && !ended; ++i) {
    ended = ::waitpid(one, &status, WNOHANG) == one;
    if (!ended)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!ended) {
    ::kill(one, SIGKILL);
    wait_status(one);
  }
  ASSERT_TRUE(ended) << "rank 1 hung after another process took its heartbeat file";
  const std::string log = read_bytes(tmp / "log1");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << log;
  EXPECT_NE(log.find("rank 1 of 2 was started twice"), std::string::npos) << log;
}

// A job of 3 ranks killed after two of them finished leaves their markers in the staging
// directory; the same conversion run again as 2 ranks takes it over. No marker of the killed job
// (another world size) may reach OUT: the commit holds the plan's files and nothing else.
TEST_F(Ranks, ARerunWithAnotherWorldSizeCommitsNoMarkerOfTheKilledJob) {
  const pid_t one = spawn_rank(1, 3, "30");
  const pid_t two = spawn_rank(2, 3, "30");
  ASSERT_TRUE(one > 0 && two > 0);
  ASSERT_TRUE(wait_for_in_staging(".rank-1-of-3.done")) << read_bytes(tmp / "log1");
  ASSERT_TRUE(wait_for_in_staging(".rank-2-of-3.done")) << read_bytes(tmp / "log2");
  ::kill(one, SIGKILL);
  ::kill(two, SIGKILL);
  wait_status(one);
  wait_status(two);
  const auto dir = job_staging();
  ASSERT_TRUE(dir);
  testing::write_bytes(*dir / ".rank-6-of-7.failed", "1\nrank 6 of 7: of a job long gone");
  std::vector<pid_t> pids{spawn_rank(0, 2, "30"), spawn_rank(1, 2, "30")};
  for (size_t r = 0; r < pids.size(); ++r) {
    const int status = wait_status(pids[r]);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << read_bytes(tmp / ("log" + std::to_string(r)));
  }
  expect_committed_alone();
}

TEST_F(Ranks, RanksGivenDifferentWorldSizesAreRefused) {
  // A timeout far above a slow start (sanitizers): the later rank must find the earlier one's
  // heartbeat live, which the earlier keeps for the timeout while it waits for its rank 0.
  const pid_t one = spawn_rank(1, 3, "20");
  const pid_t zero = spawn_rank(0, 2, "20");
  const int s0 = wait_status(zero), s1 = wait_status(one);
  const std::string log0 = read_bytes(tmp / "log0");
  EXPECT_TRUE(WIFEXITED(s0) && WEXITSTATUS(s0) == 1) << log0;
  EXPECT_TRUE(WIFEXITED(s1) && WEXITSTATUS(s1) == 1) << read_bytes(tmp / "log1");
  EXPECT_NE(log0.find("runs with a world size of 3, this one with 2"), std::string::npos) << log0;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

// Ranks 0 and 2 of 3 and rank 1 of 2, started together (as a launcher given two world sizes
// would): every rank names the mismatch, never what it causes (a rank that never joins, a file
// renamed away by a rank of the other world). Three rounds, so that the order in which the ranks
// write their heartbeats varies.
TEST_F(Ranks, RanksGivenDifferentWorldSizesEachNameTheMismatch) {
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const std::vector<std::pair<unsigned, unsigned>> ranks{{0, 3}, {1, 2}, {2, 3}};
    std::vector<pid_t> pids;
    for (auto [r, world] : ranks)
      pids.push_back(spawn_rank(r, world, "10"));
    for (size_t k = 0; k < ranks.size(); ++k) {
      const int status = wait_status(pids[k]);
      const std::string log = read_bytes(tmp / ("log" + std::to_string(ranks[k].first)));
      const std::string who =
          "rank " + std::to_string(ranks[k].first) + " of " + std::to_string(ranks[k].second);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << who << ": " << log;
      EXPECT_NE(log.find(ranks[k].second == 3 ? "runs with a world size of 2, this one with 3"
                                              : "runs with a world size of 3, this one with 2"),
                std::string::npos)
          << who << ": " << log;
      for (const char* symptom : {"never joined", "cannot rename", "No such file", "no sign"})
        EXPECT_EQ(log.find(symptom), std::string::npos) << who << ": " << log;
    }
    EXPECT_FALSE(fs::exists(tmp / "out"));
    EXPECT_FALSE(job_staging()) << "the staging directory is left";
    for (unsigned r = 0; r < 3; ++r)
      fs::remove(tmp / ("log" + std::to_string(r)));
  }
}

// A rank of world 2 failed on meeting a rank of world 3, and only then do the ranks of world 3
// start (a slow start: here the earlier world-3 rank's markers are removed, as if it had not
// started yet). No heartbeat of the other world is left to see, and rank 1 of 3 never joins: the
// ranks name the mismatch the failed marker records, not the rank that never joined.
TEST_F(Ranks, RanksStartedAfterAnotherWorldsRankFailedNameTheMismatch) {
  const pid_t early = spawn_rank(2, 3, "20");
  const auto staging = wait_for_in_staging(".rank-2-of-3.alive");
  ASSERT_TRUE(staging);
  const pid_t other = spawn_rank(1, 2, "20");
  const int s_other = wait_status(other), s_early = wait_status(early);
  ASSERT_TRUE(WIFEXITED(s_other) && WEXITSTATUS(s_other) == 1) << read_bytes(tmp / "log1");
  ASSERT_TRUE(WIFEXITED(s_early) && WEXITSTATUS(s_early) == 1) << read_bytes(tmp / "log2");
  ASSERT_TRUE(fs::exists(*staging / ".rank-1-of-2.failed")) << read_bytes(tmp / "log1") << read_bytes(tmp / "log2");
  for (const char* what : {"alive", "done", "failed"})
    fs::remove(*staging / (std::string(".rank-2-of-3.") + what));
  // (A rank that failed more than --job-timeout before a rank started is no part of its job.)
  const pid_t zero = spawn_rank(0, 3, "5"), two = spawn_rank(2, 3, "5");
  for (auto [pid, r] : {std::pair{zero, 0}, {two, 2}}) {
    const int status = wait_status(pid);
    const std::string log = read_bytes(tmp / ("log" + std::to_string(r)));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << "rank " << r << ": " << log;
    EXPECT_NE(log.find("rank 1 runs with a world size of 2, this one with 3"), std::string::npos)
        << "rank " << r << ": " << log;
    for (const char* symptom : {"never joined", "no sign"})
      EXPECT_EQ(log.find(symptom), std::string::npos) << "rank " << r << ": " << log;
  }
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_FALSE(job_staging()) << "the staging directory is left";
}

TEST_F(Ranks, ExpertParallelExportOfFourRanksEqualsFourSingleRankConversions) {
  std::vector<pid_t> pids;
  for (unsigned r = 0; r < 4; ++r)
    pids.push_back(testing::spawn_shardshift(
        {"convert", (tmp / "hf").string(), (tmp / "ep{rank}").string(), "-q", "-j", "1", "--rank",
         std::to_string(r), "--world-size", "4", "--ep-from-launcher"},
        tmp / ("log" + std::to_string(r))));
  for (unsigned r = 0; r < 4; ++r) {
    const int status = wait_status(pids[r]);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << read_bytes(tmp / ("log" + std::to_string(r)));
  }
  for (unsigned r = 0; r < 4; ++r) {
    const std::string one = "single" + std::to_string(r);
    auto s = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / one) +
                            " -q -j 1 --ep-size 4 --ep-rank " + std::to_string(r));
    ASSERT_EQ(s.exit_code, 0) << s.err;
    EXPECT_EQ(files_of(tmp / ("ep" + std::to_string(r))), files_of(tmp / one)) << "rank " << r;
  }
  auto usage = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                              shell_quoted(tmp / "no-placeholder") + " --ep-from-launcher");
  EXPECT_EQ(usage.exit_code, 2);
  EXPECT_NE(usage.err.find("{rank}"), std::string::npos) << usage.err;
}

} // namespace
} // namespace shardshift
