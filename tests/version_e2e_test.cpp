// version_e2e_test: `shardshift --version` says the project's version (CMake's project(VERSION)),
// the revision and the build's features, as build_info() reports them; and every command follows
// the flag conventions of apps/cli.h (-q, --json where a result exists, one size syntax).
#include "shardshift/version.h"

#include "test_support.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::lines_of;
using testing::run_shardshift;

TEST(Version, PrintsTheProjectVersionRevisionAndFeatures) {
  auto r = run_shardshift("--version");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  const std::vector<std::string> lines = lines_of(r.out);
  ASSERT_GE(lines.size(), 6u) << r.out;
  // The first line is what help2man and scripts read.
  EXPECT_EQ(lines[0], std::string("shardshift ") + SHARDSHIFT_PROJECT_VERSION);
  const BuildInfo info = build_info();
  EXPECT_EQ(info.version, SHARDSHIFT_PROJECT_VERSION);
  EXPECT_FALSE(info.git_revision.empty()) << "a revision, or \"unknown\" outside git";
  EXPECT_EQ(lines[1], "revision: " + info.git_revision);
  EXPECT_EQ(lines[2].rfind("build: ", 0), 0u) << lines[2];
  // The SIMD kernels compiled in, and the one this CPU runs.
  EXPECT_EQ(lines[3].rfind("simd: portable", 0), 0u) << lines[3];
  EXPECT_NE(lines[3].find("(this CPU: " + info.simd_running + ")"), std::string::npos) << lines[3];
#if defined(__x86_64__)
  EXPECT_NE(lines[3].find("avx2 avx512"), std::string::npos) << lines[3];
#endif
#ifdef SHARDSHIFT_HAVE_CUDA
  EXPECT_TRUE(info.cuda);
  EXPECT_EQ(lines[4].rfind("cuda: on (architectures " + info.cuda_architectures, 0), 0u)
      << lines[4];
  EXPECT_FALSE(info.cuda_architectures.empty());
#else
  EXPECT_FALSE(info.cuda);
  EXPECT_EQ(lines[4], "cuda: off");
#endif
  EXPECT_EQ(lines[5], "models: diffusion_gemma gemma4_moe qwen3_moe deepseek_v3");
  // Whether jobs under mpirun coordinate through MPI (SHARDSHIFT_MPI), as the ranks decide it.
  ASSERT_GE(lines.size(), 7u) << r.out;
  EXPECT_EQ(lines[6],
            info.mpi ? "mpi: on (jobs started by mpirun coordinate through MPI)" : "mpi: off");
}

// The revision is read again before every build, so a build directory configured at one commit
// and rebuilt at a later one names the later. Compared without "-dirty": files edited since the
// build would make a current binary look stale. Skips outside a git checkout (a source tarball).
TEST(Version, RevisionIsTheCommitBuilt) {
  const std::string source = SHARDSHIFT_SOURCE_DIR;
  auto head = testing::run_shell("git -C " + testing::shell_quoted(source) +
                                 " describe --always --abbrev=12 2>/dev/null");
  if (head.exit_code != 0 || head.out.empty())
    GTEST_SKIP() << "not a git checkout, or no git: " << source;
  const std::string commit = lines_of(head.out).at(0);
  const std::string revision = build_info().git_revision;
  EXPECT_TRUE(revision == commit || revision == commit + "-dirty")
      << "built as " << revision << ", the checkout is at " << commit
      << ": rebuild, or the revision was read at configure time only";
}

TEST(FlagConventions, EveryCommandTakesQuietJsonAndOneSizeSyntax) {
  const std::string size_syntax = "SIZE is a byte count with an optional";
  for (const char* command : {"synth", "plan", "inspect", "convert"}) {
    SCOPED_TRACE(command);
    auto help = run_shardshift(std::string(command) + " --help");
    ASSERT_EQ(help.exit_code, 0) << help.err;
    for (const char* flag : {"  -q, --quiet ", "      --json ", "  -h, --help "})
      EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
    // Every flag that takes a SIZE explains it with the same sentence (units::parse_size). A
    // flag's description starts on its line or the next, and goes on in lines indented deeper
    // than any flag.
    const std::vector<std::string> lines = lines_of(help.out);
    for (size_t i = 0; i < lines.size(); ++i) {
      const std::string& line = lines[i];
      const size_t dashes = line.find("--");
      if (dashes == std::string::npos || dashes > 6 || line.find(" SIZE") == std::string::npos)
        continue;
      std::string description = line.size() > 26 ? line.substr(26) : "";
      for (size_t j = i + 1; j < lines.size() && lines[j].rfind("          ", 0) == 0; ++j)
        description += " " + lines[j].substr(lines[j].find_first_not_of(' '));
      EXPECT_NE(description.find(size_syntax), std::string::npos) << line << ": " << description;
    }
  }
  // The same size is accepted the same way by every command that takes one.
  testing::TempDir tmp;
  auto synth = run_shardshift("synth " + testing::shell_quoted(tmp / "hf") +
                              " --layers 1 --scale 32 --max-shard-size 64KiB -q");
  ASSERT_EQ(synth.exit_code, 0) << synth.err;
  EXPECT_EQ(synth.out + synth.err, "");
  auto plan =
      run_shardshift("plan " + testing::shell_quoted(tmp / "hf") + " --max-shard-size 64KiB -q");
  EXPECT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_EQ(plan.out, "");
  auto convert = run_shardshift("convert " + testing::shell_quoted(tmp / "hf") + " " +
                                testing::shell_quoted(tmp / "out") +
                                " --max-shard-size 64KiB --max-memory 64MiB -q");
  EXPECT_EQ(convert.exit_code, 0) << convert.err;
  EXPECT_EQ(convert.out + convert.err, "");
  auto bad = run_shardshift("synth " + testing::shell_quoted(tmp / "x") + " --max-shard-size 5XB");
  EXPECT_EQ(bad.exit_code, 2);
  auto bad_convert = run_shardshift("convert " + testing::shell_quoted(tmp / "hf") + " " +
                                    testing::shell_quoted(tmp / "y") + " --max-memory 5XB");
  EXPECT_EQ(bad_convert.exit_code, 2);
}

} // namespace
} // namespace shardshift
