// golden_e2e_test.cpp: the shardshift binary writes exactly the bytes it wrote before. Every
// scenario of tests/golden/scenarios.txt (scripts/demo.sh's synth and round trip, expert-parallel
// exports, a cast, single-file output and input, gemma4_moe) runs in a fresh directory, and the
// SHA-256 of every file it leaves must equal tests/golden/SCENARIO.sha256 (sha256sum format), with
// no file missing and none extra. The golden lists were generated with tests/golden/generate.sh;
// regenerate them only for an intended change of the output.
#include "test_support.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <openssl/evp.h>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::run_shell;
using testing::TempDir;

const fs::path GOLDEN = SHARDSHIFT_GOLDEN_DIR;

/// The lowercase hex SHA-256 of the file at `path`, read in pieces.
std::string sha256_file(const fs::path& path) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("EVP_DigestInit_ex failed");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw std::runtime_error("cannot read " + path.string());
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0 && EVP_DigestUpdate(ctx.get(), buf.data(), size_t(in.gcount())) != 1)
      throw std::runtime_error("EVP_DigestUpdate failed");
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(ctx.get(), md, &n) != 1)
    throw std::runtime_error("EVP_DigestFinal_ex failed");
  std::string hex;
  char two[3];
  for (unsigned i = 0; i < n; ++i) {
    std::snprintf(two, sizeof two, "%02x", md[i]);
    hex += two;
  }
  return hex;
}

/// Digest by path relative to `dir`, for every regular file below it.
std::map<std::string, std::string> digests_of(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file())
      out[fs::relative(e.path(), dir).generic_string()] = sha256_file(e.path());
  return out;
}

/// A sha256sum list: "<64 hex>  <path>" per line.
std::map<std::string, std::string> read_golden(const fs::path& file) {
  std::map<std::string, std::string> out;
  std::ifstream in(file);
  EXPECT_TRUE(in) << "cannot read " << file;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty())
      continue;
    EXPECT_TRUE(line.size() > 66 && line.compare(64, 2, "  ") == 0) << file << ": " << line;
    if (line.size() > 66)
      out[line.substr(66)] = line.substr(0, 64);
  }
  return out;
}

/// Scenario name -> its lines of shardshift arguments, in order, from scenarios.txt.
std::vector<std::pair<std::string, std::vector<std::string>>> read_scenarios() {
  std::vector<std::pair<std::string, std::vector<std::string>>> out;
  std::ifstream in(GOLDEN / "scenarios.txt");
  EXPECT_TRUE(in) << "cannot read " << GOLDEN / "scenarios.txt";
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#')
      continue;
    const auto space = line.find(' ');
    const std::string name = line.substr(0, space);
    if (out.empty() || out.back().first != name)
      out.push_back({name, {}});
    out.back().second.push_back(space == std::string::npos ? "" : line.substr(space + 1));
  }
  return out;
}

/// Runs one scenario in a fresh directory and compares what it wrote with its golden list.
void check_scenario(const std::string& name, const std::vector<std::string>& commands) {
  TempDir tmp;
  for (const std::string& args : commands) {
    auto r = run_shell("cd '" + tmp.path().string() + "' && '" + SHARDSHIFT_BINARY + "' " + args +
                       " </dev/null");
    ASSERT_EQ(r.exit_code, 0) << name << ": shardshift " << args << "\n" << r.err;
  }
  const auto want = read_golden(GOLDEN / (name + ".sha256"));
  const auto got = digests_of(tmp.path());
  ASSERT_FALSE(want.empty()) << "no golden digests for " << name;
  for (const auto& [path, digest] : want) {
    auto it = got.find(path);
    if (it == got.end())
      ADD_FAILURE() << name << ": missing output file " << path;
    else
      EXPECT_EQ(it->second, digest) << name << ": " << path << " differs from the golden output";
  }
  for (const auto& [path, digest] : got)
    EXPECT_TRUE(want.count(path)) << name << ": unexpected output file " << path << " (sha256 "
                                  << digest << ")";
}

TEST(GoldenOutput, Sha256OfAKnownStringAndFile) {
  // The digest itself, on the FIPS 180-2 example, so a broken hash cannot pass every comparison.
  TempDir tmp;
  testing::write_bytes(tmp / "abc", "abc");
  EXPECT_EQ(sha256_file(tmp / "abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  testing::write_bytes(tmp / "empty", "");
  EXPECT_EQ(sha256_file(tmp / "empty"),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(GoldenOutput, EveryScenarioHasItsGoldenList) {
  const auto scenarios = read_scenarios();
  ASSERT_GE(scenarios.size(), 2u);
  std::vector<std::string> lists;
  for (auto& e : fs::directory_iterator(GOLDEN))
    if (e.path().extension() == ".sha256")
      lists.push_back(e.path().stem().string());
  std::sort(lists.begin(), lists.end());
  std::vector<std::string> names;
  for (auto& [name, commands] : scenarios)
    names.push_back(name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, lists) << "tests/golden: a scenario without a golden list, or a stale list";
}

TEST(GoldenOutput, DemoScenarioMatchesGoldenDigests) {
  for (auto& [name, commands] : read_scenarios())
    if (name == "demo")
      return check_scenario(name, commands);
  FAIL() << "no 'demo' scenario in scenarios.txt";
}

TEST(GoldenOutput, Gemma4ScenarioMatchesGoldenDigests) {
  for (auto& [name, commands] : read_scenarios())
    if (name == "gemma4")
      return check_scenario(name, commands);
  FAIL() << "no 'gemma4' scenario in scenarios.txt";
}

TEST(GoldenOutput, SynthIsDeterministic) {
  // Two runs of the same synth write the same bytes (the golden lists depend on it).
  TempDir tmp;
  for (const char* out : {"a", "b"}) {
    auto r = testing::run_shardshift(
        "synth '" + (tmp / out).string() +
        "' --model gemma4_moe --layers 2 --scale 16 --seed 5 --max-shard-size 2MB");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  const auto a = digests_of(tmp / "a");
  EXPECT_GT(a.size(), 2u);
  EXPECT_EQ(a, digests_of(tmp / "b"));
}

} // namespace
} // namespace shardshift
