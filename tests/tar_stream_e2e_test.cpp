// tar_stream_e2e_test.cpp: `shardshift convert IN - --format tar` through the binary, read back by
// GNU tar: it extracts to the directory output file for file (subdirectories and SHA256SUMS
// included), it is the same bytes for any -j and --writers, and the flag's usage errors.
#include "convert_harness.h"

namespace shardshift::testing {
namespace {

class TarStreamTest : public ConvertTest {
protected:
  void SetUp() override {
    ConvertTest::SetUp();
    in = tmp / "hf";
    reference::write_checkpoint(in, reference::tiny_diffusion(rng, 4, 4, 64, 24), 2,
                                "diffusion_gemma");
    std::filesystem::create_directories(in / "original" / "sub");
    write_bytes(in / "tokenizer.json", "{\"tok\": 1}");
    write_bytes(in / "original" / "params.json", "{\"dim\": 64}");
    write_bytes(in / "original" / "sub" / "tokenizer.model", random_bytes(rng, 3000));
  }
  // `convert IN - --format tar ARGS > FILE`; the exit status.
  int tar_to(const std::filesystem::path& file, const std::string& args) {
    auto r =
        run_shell(std::string(SHARDSHIFT_BINARY) + " convert " + shell_quoted(in) +
                  " - --format tar --max-shard-size 40000 -q " + args + " > " + shell_quoted(file));
    EXPECT_EQ(r.err, "");
    return r.exit_code;
  }
  std::filesystem::path in;
};

// Every regular file below `dir`, by relative path.
std::map<std::string, std::string> files_below(const std::filesystem::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    if (e.is_regular_file())
      files[std::filesystem::relative(e.path(), dir).generic_string()] = read_bytes(e.path());
  return files;
}

TEST_F(TarStreamTest, ExtractsToTheDirectoryOutputFileForFile) {
  auto dir = run_shardshift("convert " + shell_quoted(in) + " " + shell_quoted(tmp / "dir") +
                            " --max-shard-size 40000 --checksums -q");
  ASSERT_EQ(dir.exit_code, 0) << dir.err;
  ASSERT_EQ(tar_to(tmp / "out.tar", "--checksums"), 0);
  std::filesystem::create_directory(tmp / "x");
  auto x = run_shell("tar -xf " + shell_quoted(tmp / "out.tar") + " -C " + shell_quoted(tmp / "x"));
  ASSERT_EQ(x.exit_code, 0) << x.err;
  auto want = files_below(tmp / "dir");
  want.erase(OUTPUT_MARKER_NAME); // the marker belongs to a directory output only
  EXPECT_EQ(files_below(tmp / "x"), want);
  EXPECT_TRUE(want.count("original/sub/tokenizer.model"));
  auto check = run_shell("cd " + shell_quoted(tmp / "x") + " && sha256sum -c SHA256SUMS");
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  // The index is the last entry, SHA256SUMS just before it.
  auto names = lines_of(run_shell("tar -tf " + shell_quoted(tmp / "out.tar")).out);
  ASSERT_GE(names.size(), 2u);
  EXPECT_EQ(names.back(), "model.safetensors.index.json");
  EXPECT_EQ(names[names.size() - 2], "SHA256SUMS");
}

TEST_F(TarStreamTest, SameBytesForAnyThreadsAndWriters) {
  ASSERT_EQ(tar_to(tmp / "a.tar", "-j 1 --writers 1"), 0);
  ASSERT_EQ(tar_to(tmp / "b.tar", "-j 4 --writers 3 --max-memory 1MiB"), 0);
  ASSERT_EQ(tar_to(tmp / "c.tar", "-j 2"), 0);
  const std::string a = read_bytes(tmp / "a.tar");
  EXPECT_EQ(a.size() % 512, 0u);
  EXPECT_EQ(read_bytes(tmp / "b.tar"), a);
  EXPECT_EQ(read_bytes(tmp / "c.tar"), a);
}

TEST_F(TarStreamTest, UsageErrors) {
  auto to_dir = run_shardshift("convert " + shell_quoted(in) + " " + shell_quoted(tmp / "o") +
                               " --format tar");
  EXPECT_EQ(to_dir.exit_code, 2);
  EXPECT_NE(to_dir.err.find("give OUT '-'"), std::string::npos) << to_dir.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "o"));
  auto only = run_shell(std::string(SHARDSHIFT_BINARY) + " convert " + shell_quoted(in) +
                        " - --format tar --only tokenizer.json > /dev/null");
  EXPECT_EQ(only.exit_code, 2);
  EXPECT_NE(only.err.find("--only"), std::string::npos) << only.err;
  auto pipe = run_shardshift("convert " + shell_quoted(in) + " --format tar --pipe-to 'cat'");
  EXPECT_EQ(pipe.exit_code, 2);
  auto bad = run_shardshift("convert " + shell_quoted(in) + " - --format zip");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("use dir or tar"), std::string::npos) << bad.err;
}

} // namespace
} // namespace shardshift::testing
