// stale_staging_test.cpp: a run killed with kill -9 leaves its staging directory behind; the next
// run into the same OUT removes it (its process is gone and its lock is free) and says how much
// it freed. A staging directory whose process lives, or whose lock is held, is left alone, and so
// is a directory that merely has such a name: without the plan fingerprint a run writes first,
// only an empty one (or one of temporary files) of a process that is gone counts as a run's.
#include "convert_harness.h"
#include "staging.h"
#include "temp_name.h"

#include <algorithm>
#include <csignal>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

namespace shardshift::testing {
namespace {

// A pid no process has now (so the staging directory that names it is stale).
pid_t dead_pid() {
  for (pid_t p = 4'000'000; p > 300'000; p -= 7919)
    if (::kill(p, 0) != 0 && errno == ESRCH)
      return p;
  return 0;
}

TEST_F(ConvertTest, AKilledRunsStagingIsRemovedByTheNextRunIntoTheSameOut) {
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 2, 4, 64, 24), 1,
                              "diffusion_gemma");
  const pid_t dead = dead_pid();
  ASSERT_NE(dead, 0);
  const auto stale = tmp / (".out.shardshift-tmp-" + std::to_string(dead) + "-42");
  std::filesystem::create_directory(stale);
  write_bytes(stale / PLAN_FINGERPRINT_NAME, "fingerprint\n");
  write_bytes(stale / "model-00001-of-00002.safetensors", std::string(5000, 'x'));
  // Killed before its fingerprint: empty, or holding only the fingerprint's temporary file.
  const auto early = tmp / (".out.shardshift-tmp-" + std::to_string(dead) + "-43");
  std::filesystem::create_directory(early);
  write_bytes(early / ".shardshift-plan.shardshift-tmp-1-ab", "fing");
  // Killed during its commit, between the fingerprint's removal and the rename: the output's
  // marker is there instead.
  const auto committing = tmp / (".out.shardshift-tmp-" + std::to_string(dead) + "-45");
  std::filesystem::create_directory(committing);
  write_bytes(committing / OUTPUT_MARKER_NAME, "shardshift-output 2\n");
  write_bytes(committing / "model.safetensors", std::string(100, 'y'));
  // A user's directory with such a name, holding their data, is not shardshift's.
  const auto users = tmp / (".out.shardshift-tmp-" + std::to_string(dead) + "-44");
  std::filesystem::create_directory(users);
  write_bytes(users / "mydata.txt", "precious");
  // A staging directory of a live process (this one), and one whose lock is held: both stay.
  const auto live = tmp / (".out.shardshift-tmp-" + std::to_string(::getpid()) + "-7");
  std::filesystem::create_directory(live);
  const auto locked = tmp / (".out.shardshift-tmp-" + std::to_string(dead_pid() - 1) + "-9");
  std::filesystem::create_directory(locked);
  const int lock = ::open(locked.c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_EQ(::flock(lock, LOCK_EX), 0);
  // Something else's hidden directory with a similar name stays too.
  std::filesystem::create_directory(tmp / ".other.shardshift-tmp-1-1");
  // A previous output that a killed --force run moved aside is the user's: kept, and named. One
  // of a live process (its run may still be replacing OUT) is not named.
  const auto aside = tmp / (".out.shardshift-old-" + std::to_string(dead) + "-46");
  std::filesystem::create_directory(aside);
  write_bytes(aside / "model.safetensors", "theirs");
  write_bytes(aside / OUTPUT_MARKER_NAME, "shardshift-output 2\n");
  // One whose removal was cut short: its marker went first (Marks::first), so it is named as a
  // leftover, not as a whole output to move back.
  const auto cut = tmp / (".out.shardshift-old-" + std::to_string(dead) + "-48");
  std::filesystem::create_directory(cut);
  write_bytes(cut / "config.json", "{}");
  const auto aside_live = tmp / (".out.shardshift-old-" + std::to_string(::getpid()) + "-47");
  std::filesystem::create_directory(aside_live);

  std::vector<std::string> warnings;
  ConvertOptions o;
  o.input = tmp / "hf";
  o.output = tmp / "out";
  o.device = "cpu";
  ConvertCallbacks cb;
  cb.warnings = [&](const std::vector<std::string>& w) {
    warnings.insert(warnings.end(), w.begin(), w.end());
  };
  auto r = convert(o, cb);
  ::close(lock);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_FALSE(std::filesystem::exists(stale));
  EXPECT_FALSE(std::filesystem::exists(early));
  EXPECT_FALSE(std::filesystem::exists(committing));
  EXPECT_EQ(read_bytes(users / "mydata.txt"), "precious");
  EXPECT_TRUE(std::filesystem::exists(live));
  EXPECT_TRUE(std::filesystem::exists(locked));
  EXPECT_TRUE(std::filesystem::exists(tmp / ".other.shardshift-tmp-1-1"));
  EXPECT_EQ(read_bytes(aside / "model.safetensors"), "theirs");
  EXPECT_TRUE(std::filesystem::exists(aside_live));
  EXPECT_TRUE(std::filesystem::exists(cut / "config.json"));
  ASSERT_EQ(warnings.size(), 5u);
  std::sort(warnings.begin(), warnings.end()); // "-old-" -46, -48, then "-tmp-" -42, -43, -45
  EXPECT_EQ(warnings[0], aside.string() + ": a previous out that a run with --force (process " +
                             std::to_string(dead) +
                             ") moved aside and was stopped before removing; it is yours: "
                             "remove it, or move it back if out is not what you want");
  EXPECT_EQ(warnings[1], cut.string() + ": a previous out that a run with --force (process " +
                             std::to_string(dead) +
                             ") moved aside and did not finish removing; it holds no whole "
                             "output (no .shardshift-output): remove it");
  warnings.erase(warnings.begin(), warnings.begin() + 2);
  for (const std::string& w : warnings)
    EXPECT_NE(w.find("removed the staging directory of an earlier run"), std::string::npos) << w;
  EXPECT_NE(warnings[0].find("5012 bytes freed"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[1].find("4 bytes freed"), std::string::npos) << warnings[1];
  EXPECT_NE(warnings[2].find("120 bytes freed"), std::string::npos) << warnings[2];
}

// Two outputs whose names agree in their first 160 bytes (more than a temporary name keeps):
// each has temporary names of its own (a hash of the whole name follows the bytes kept), so a run
// into one never takes the other's staging directory, kept for --resume, for its own (found by an
// audit on 2026-12-06: the run removed it).
TEST_F(ConvertTest, OutputsWhoseLongNamesBeginAlikeKeepTheirStagingApart) {
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 1, 4, 64, 24), 1,
                              "diffusion_gemma");
  const std::string common(200, 'n');
  const std::string a = common + "_A", b = common + "_B";
  EXPECT_NE(temp_name_stem(a), temp_name_stem(b));
  EXPECT_EQ(temp_name_stem(a), temp_name_stem(std::string(a))); // the same on every call
  EXPECT_LE(temp_name_stem(a).size(), 160u);
  EXPECT_EQ(temp_name_stem("short"), "short");
  const pid_t dead = dead_pid();
  ASSERT_NE(dead, 0);
  const auto kept = tmp / (temp_name_prefix(b) + std::to_string(dead) + "-42");
  std::filesystem::create_directory(kept);
  write_bytes(kept / PLAN_FINGERPRINT_NAME, "fingerprint\n");
  write_bytes(kept / "model.safetensors", std::string(5000, 'x'));

  std::vector<std::string> warnings;
  ConvertOptions o;
  o.input = tmp / "hf";
  o.output = tmp / a;
  o.device = "cpu";
  ConvertCallbacks cb;
  cb.warnings = [&](const std::vector<std::string>& w) {
    warnings.insert(warnings.end(), w.begin(), w.end());
  };
  for (const bool resume : {false, true}) {
    o.resume = resume;
    o.force = true;
    auto r = convert(o, cb);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_TRUE(std::filesystem::exists(kept / "model.safetensors")) << "resume " << resume;
  }
  EXPECT_TRUE(warnings.empty()) << warnings.front();
  // Into B, it is B's: removed as an earlier run's.
  o.output = tmp / b;
  o.resume = false;
  ASSERT_TRUE(convert(o, cb).ok());
  EXPECT_FALSE(std::filesystem::exists(kept));
}

} // namespace
} // namespace shardshift::testing
