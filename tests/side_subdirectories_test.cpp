// side_subdirectories_test.cpp: files in subdirectories of the input (tokenizer assets, Meta's
// original/) are side files with their relative paths: listed by Checkpoint::open and by
// list_output_files (plan --print-size), copied into a directory output in the same place, and
// delivered under that name by --pipe-to. *.safetensors there are side files too; hidden
// subdirectories are skipped; a link to a directory, or to nothing, is refused with its name.
#include "convert_harness.h"

#include <sys/stat.h>

namespace shardshift::testing {
namespace {

class SideSubdirectoriesTest : public ConvertTest {
protected:
  void SetUp() override {
    ConvertTest::SetUp();
    in = tmp / "hf";
    reference::write_checkpoint(in, reference::tiny_diffusion(rng, 2, 4, 64, 24), 2,
                                "diffusion_gemma");
    std::filesystem::create_directories(in / "original" / "sub");
    std::filesystem::create_directories(in / ".cache" / "huggingface");
    write_bytes(in / "original" / "params.json", "{\"dim\": 64}");
    write_bytes(in / "original" / "consolidated.safetensors", random_bytes(rng, 700));
    write_bytes(in / ".cache" / "huggingface" / "download.lock", "");
    // A link to a file outside the input is followed, as at the top level (hub caches).
    write_bytes(tmp / "blob", "tokenizer bytes");
    std::filesystem::create_symlink(tmp / "blob", in / "original" / "sub" / "tokenizer.model");
  }
  std::filesystem::path in;
  const std::vector<std::string> below = {"original/consolidated.safetensors",
                                          "original/params.json", "original/sub/tokenizer.model"};
};

TEST_F(SideSubdirectoriesTest, CheckpointListsThemAsSideFiles) {
  auto ckpt = Checkpoint::open(in);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
  std::vector<std::string> want = {"config.json"};
  want.insert(want.end(), below.begin(), below.end());
  EXPECT_EQ(ckpt->other_files, want);  // no .cache/, no shard
  EXPECT_TRUE(ckpt->warnings.empty()); // a *.safetensors below the top is no stray shard
  EXPECT_EQ(ckpt->shards.size(), 2u);
  auto plan = make_plan(*ckpt, PlanOptions{});
  ASSERT_TRUE(plan.ok());
  auto sizes = list_output_files(*ckpt, *plan);
  ASSERT_TRUE(sizes.ok());
  std::map<std::string, uint64_t> listed;
  for (const OutputFileSize& f : *sizes)
    listed[f.name] = f.size;
  EXPECT_EQ(listed["original/params.json"], 11u);
  EXPECT_EQ(listed["original/consolidated.safetensors"], 700u);
  EXPECT_EQ(listed["original/sub/tokenizer.model"], 15u);
}

TEST_F(SideSubdirectoriesTest, ADirectoryOutputHoldsThemInPlace) {
  ASSERT_TRUE(run(in, tmp / "out").ok());
  for (const std::string& name : below)
    EXPECT_EQ(read_bytes(tmp / "out" / name), read_bytes(in / name)) << name;
  EXPECT_FALSE(std::filesystem::exists(tmp / "out" / ".cache"));
  EXPECT_FALSE(std::filesystem::is_symlink(tmp / "out" / "original" / "sub" / "tokenizer.model"));
}

TEST_F(SideSubdirectoriesTest, PipeToNamesThemByRelativePath) {
  std::filesystem::create_directory(tmp / "bucket");
  const std::string b = shell_quoted(tmp / "bucket");
  ConvertOptions o;
  o.input = in;
  o.device = "cpu";
  o.pipe_to = "mkdir -p \"$(dirname " + b + "/{name})\" && cat > " + b + "/{name}";
  auto r = convert(o);
  ASSERT_TRUE(r.ok()) << r.status().message();
  for (const std::string& name : below)
    EXPECT_EQ(read_bytes(tmp / "bucket" / name), read_bytes(in / name)) << name;
}

TEST_F(SideSubdirectoriesTest, ALinkToADirectoryIsRefusedByName) {
  std::filesystem::create_directory(tmp / "elsewhere");
  std::filesystem::create_directory_symlink(tmp / "elsewhere", in / "original" / "linked");
  auto ckpt = Checkpoint::open(in);
  ASSERT_FALSE(ckpt.ok());
  const std::string& m = ckpt.status().message();
  EXPECT_NE(m.find((in / "original" / "linked").string() + ": a link to the directory"),
            std::string::npos)
      << m;
}

// A side file whose link points nowhere (a hub download that never fetched the blob) is refused,
// at the top and below it, rather than left out of the output without a word.
TEST_F(SideSubdirectoriesTest, ALinkToNothingIsRefusedByName) {
  for (const std::filesystem::path& link :
       {in / "tokenizer.json", in / "original" / "sub" / "vocab.txt"}) {
    SCOPED_TRACE(link.string());
    std::filesystem::create_symlink(tmp / "no-such-blob", link);
    auto ckpt = Checkpoint::open(in);
    ASSERT_FALSE(ckpt.ok());
    EXPECT_EQ(ckpt.status().code(), Errc::format);
    const std::string& m = ckpt.status().message();
    EXPECT_NE(m.find(link.string() + ": a link to '" + (tmp / "no-such-blob").string() +
                     "', which does not exist"),
              std::string::npos)
        << m;
    std::filesystem::remove(link);
  }
  EXPECT_TRUE(Checkpoint::open(in).ok()) << "without the links it opens";
}

// A FIFO, or a link to a device, in the input is no file to copy: refused by name, at the top and
// below it, rather than left out of the output without a word (it was).
TEST_F(SideSubdirectoriesTest, AFifoOrADeviceIsRefusedByName) {
  const std::filesystem::path fifo = in / "tokenizer.json";
  const std::filesystem::path device = in / "original" / "sub" / "vocab.txt";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::filesystem::create_symlink("/dev/null", device);
  auto ckpt = Checkpoint::open(in);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), Errc::format);
  const std::string& m = ckpt.status().message();
  EXPECT_NE(m.find(fifo.string() + ": a FIFO, not a file"), std::string::npos) << m;
  EXPECT_NE(m.find(device.string() + ": a link to a character device, not a file"),
            std::string::npos)
      << m;
  std::filesystem::remove(fifo);
  std::filesystem::remove(device);
  EXPECT_TRUE(Checkpoint::open(in).ok()) << "without them it opens";
}

} // namespace
} // namespace shardshift::testing
