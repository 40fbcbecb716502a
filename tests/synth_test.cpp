// synth_test.cpp: the synthetic checkpoint writer as a library: shard cutting, value ranges,
// bounded chunks, refusal of an existing output, and cleanup after a failure or a cancel.
// (The key inventory against the real model is checked by synth_e2e_test.cpp.)
#include "shardshift/checkpoint.h"
#include "shardshift/shard_writer.h"
#include "shardshift/synth.h"

#include "numerics.h"
#include "test_support.h"

#include <cmath>
#include <cstring>
#include <optional>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::list_dir;
using testing::TempDir;

// Counts writes and can run out of space after a byte budget.
class BudgetIo : public ForwardingIo {
public:
  BudgetIo() : ForwardingIo(Io::system()) {}
  std::optional<uint64_t> space_left;
  size_t largest_write = 0;
  uint64_t chunk_writes = 0; ///< writes of a whole ShardWriter piece (8 MiB)

  ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) override {
    largest_write = std::max(largest_write, count);
    if (count == ShardWriter::WRITE_PIECE)
      ++chunk_writes;
    if (space_left) {
      if (*space_left == 0)
        return errno = ENOSPC, -1;
      count = static_cast<size_t>(std::min<uint64_t>(count, *space_left));
      *space_left -= count;
    }
    return ForwardingIo::pwrite(fd, buf, count, offset);
  }
  int fallocate(int, off_t, off_t) override { return errno = EOPNOTSUPP, -1; }
};

SynthOptions tiny(const fs::path& out) {
  SynthOptions o;
  o.out = out;
  o.layers = 3;
  o.scale_hidden = o.scale_intermediate = o.scale_experts = o.scale_vocab = 16;
  return o;
}

uint64_t checkpoint_bytes(const fs::path& dir) {
  auto checkpoint = Checkpoint::open(dir);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status().message();
  return checkpoint.ok() ? checkpoint->total_tensor_bytes() : 0;
}

TEST(Synth, CutsShardsLikeHuggingFace) {
  TempDir dir;
  SynthOptions o = tiny(dir / "out");
  o.max_shard_size = 1'000'000; // the 5.8 MB embedding exceeds it and sits alone
  SynthSummary summary;
  Status s = synth(o, Io::system(), {}, &summary);
  ASSERT_TRUE(s.ok()) << s.message();

  auto checkpoint = Checkpoint::open(o.out);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().message();
  EXPECT_TRUE(checkpoint->has_index);
  ASSERT_EQ(checkpoint->shards.size(), summary.shards);
  ASSERT_GT(summary.shards, 3u);
  EXPECT_EQ(summary.tensors, checkpoint->tensors.size());
  EXPECT_EQ(summary.bytes, checkpoint->total_tensor_bytes());
  char expected_name[64];
  for (size_t i = 0; i < checkpoint->shards.size(); ++i) {
    const Header& h = checkpoint->shards[i].header;
    std::snprintf(expected_name, sizeof expected_name, "model-%05zu-of-%05zu.safetensors", i + 1,
                  checkpoint->shards.size());
    EXPECT_EQ(checkpoint->shards[i].file_name, expected_name);
    EXPECT_EQ(h.metadata, (Metadata{{"format", "pt"}}));
    // A shard is over the limit only when it is one oversized tensor.
    if (h.tensors.size() > 1)
      EXPECT_LE(h.data_size(), o.max_shard_size) << expected_name;
    // And it was cut only because the next tensor did not fit.
    if (i + 1 < checkpoint->shards.size()) {
      const uint64_t first_of_next = checkpoint->shards[i + 1].header.tensors.front().size();
      EXPECT_GT(h.data_size() + first_of_next, o.max_shard_size) << expected_name;
    }
  }
  EXPECT_EQ(checkpoint->index_metadata,
            (Metadata{{"total_size", std::to_string(checkpoint->total_tensor_bytes())}}));
}

TEST(Synth, OneShardHasNoIndex) {
  TempDir dir;
  SynthOptions o = tiny(dir / "out");
  SynthSummary summary;
  ASSERT_TRUE(synth(o, Io::system(), {}, &summary).ok());
  EXPECT_EQ(summary.shards, 1u);
  EXPECT_EQ(list_dir(o.out), (std::vector<std::string>{"config.json", "model.safetensors"}));
  EXPECT_EQ(checkpoint_bytes(o.out), summary.bytes);
}

TEST(Synth, ValuesAreSaneBf16) {
  TempDir dir;
  SynthOptions o = tiny(dir / "out");
  o.seed = testing::test_seed();
  ASSERT_TRUE(synth(o, Io::system(), {}).ok());
  auto checkpoint = Checkpoint::open(o.out);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().message();
  for (const auto& [name, ref] : checkpoint->tensors) {
    const TensorInfo& info = checkpoint->info(ref);
    ASSERT_EQ(info.dtype, DType::BF16) << name;
    // Norms, scales and layer scalars sit around one; everything else around zero.
    const bool unit = name.find("norm") != std::string::npos ||
                      name.find("scale") != std::string::npos ||
                      name.find("layer_scalar") != std::string::npos;
    auto bytes = checkpoint->bytes(ref);
    double sum = 0;
    for (size_t i = 0; i + 1 < bytes.size(); i += 2) {
      uint16_t bits = static_cast<uint16_t>(std::to_integer<unsigned>(bytes[i]) |
                                            (std::to_integer<unsigned>(bytes[i + 1]) << 8));
      float v = numerics::bf16_to_f32(bits);
      ASSERT_TRUE(std::isfinite(v)) << name;
      ASSERT_LE(std::fabs(v - (unit ? 1.0f : 0.0f)), 0.1005f) << name << " element " << i / 2;
      sum += v;
    }
    const double mean = sum / static_cast<double>(bytes.size() / 2);
    if (bytes.size() >= 2000)
      EXPECT_NEAR(mean, unit ? 1.0 : 0.0, 0.01) << name;
  }
}

TEST(Synth, SeedDecidesTheBytes) {
  TempDir dir;
  SynthOptions a = tiny(dir / "a"), b = tiny(dir / "b"), c = tiny(dir / "c");
  a.seed = b.seed = 7;
  c.seed = 8;
  for (auto* o : {&a, &b, &c})
    ASSERT_TRUE(synth(*o, Io::system(), {}).ok());
  const auto file_a = testing::read_bytes(a.out / "model.safetensors");
  EXPECT_EQ(file_a, testing::read_bytes(b.out / "model.safetensors"));
  const auto file_c = testing::read_bytes(c.out / "model.safetensors");
  ASSERT_EQ(file_a.size(), file_c.size());
  EXPECT_NE(file_a, file_c);
}

TEST(Synth, LargeTensorsAreWrittenInBoundedChunks) {
  TempDir dir;
  SynthOptions o = tiny(dir / "out");
  o.layers = 1;
  o.scale_vocab = 1; // embedding [262144, 176]: 92 MB, several 16 MiB chunks
  BudgetIo io;
  uint64_t calls = 0, last_done = 0, last_total = 0;
  bool monotone = true;
  Status s = synth(o, io, [&](uint64_t done, uint64_t total) {
    ++calls;
    monotone = monotone && done >= last_done && total == (last_total ? last_total : total);
    last_done = done;
    last_total = total;
  });
  ASSERT_TRUE(s.ok()) << s.message();
  // Generated 16 MiB at a time, written in the writer's 8 MiB pieces: never one large write.
  EXPECT_LE(io.largest_write, size_t{16} << 20);
  EXPECT_GE(io.chunk_writes, 10u);
  EXPECT_TRUE(monotone);
  EXPECT_GT(calls, 5u);
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(last_total, checkpoint_bytes(o.out));
}

TEST(Synth, DiskFullLeavesNothing) {
  TempDir dir;
  for (uint64_t budget : {uint64_t{100}, uint64_t{3'000'000}, uint64_t{7'000'000}}) {
    SCOPED_TRACE(budget); // the whole checkpoint is about 8.3 MB
    SynthOptions o = tiny(dir / "out");
    o.max_shard_size = 1'000'000; // several shards commit before the disk fills
    BudgetIo io;
    io.space_left = budget;
    Status s = synth(o, io, {});
    EXPECT_EQ(s.code(), Errc::no_space) << s.message();
    EXPECT_NE(s.message().find("disk full"), std::string::npos);
    EXPECT_FALSE(fs::exists(o.out)) << "the run created the directory, so it removes it";

    // In a directory that existed before, the directory stays, empty.
    fs::create_directory(o.out);
    io.space_left = budget;
    EXPECT_EQ(synth(o, io, {}).code(), Errc::no_space);
    EXPECT_TRUE(list_dir(o.out).empty());
    fs::remove(o.out);
  }
}

TEST(Synth, CancelStopsAndCleansUp) {
  TempDir dir;
  SynthOptions o = tiny(dir / "out");
  o.max_shard_size = 1'000'000;
  std::atomic<bool> cancel{false};
  o.cancel = &cancel;
  uint64_t calls = 0;
  Status s = synth(o, Io::system(), [&](uint64_t, uint64_t) {
    if (++calls == 20)
      cancel = true;
  });
  EXPECT_EQ(s.code(), Errc::interrupted);
  EXPECT_FALSE(fs::exists(o.out));
}

TEST(Synth, RefusesExistingOutputWithoutForce) {
  TempDir dir;
  SynthOptions o = tiny(dir / "out");
  fs::create_directory(o.out);
  testing::write_bytes(o.out / "README", "keep me");
  testing::write_bytes(o.out / "model-00001-of-00009.safetensors", "stale");
  Status s = synth(o, Io::system(), {});
  EXPECT_EQ(s.code(), Errc::invalid_argument);
  EXPECT_EQ(s.message(), o.out.string() + " exists; pass --force to replace it");
  EXPECT_EQ(testing::read_bytes(o.out / "model-00001-of-00009.safetensors"), "stale");

  o.force = true;
  ASSERT_TRUE(synth(o, Io::system(), {}).ok());
  EXPECT_EQ(list_dir(o.out),
            (std::vector<std::string>{"README", "config.json", "model.safetensors"}));
  EXPECT_EQ(testing::read_bytes(o.out / "README"), "keep me");

  testing::write_bytes(dir / "file", "x");
  o.out = dir / "file";
  EXPECT_EQ(synth(o, Io::system(), {}).code(), Errc::invalid_argument);
}

// OUT is made in an existing directory, never with its parents: a typo in a parent's name would
// put the checkpoint somewhere unseen. convert refuses the same OUT with the same error.
TEST(Synth, RefusesAMissingParentDirectory) {
  TempDir dir;
  SynthOptions o = tiny(dir / "typo" / "out");
  Status s = synth(o, Io::system(), {});
  EXPECT_EQ(s.code(), Errc::invalid_argument);
  EXPECT_EQ(s.message(),
            (dir / "typo").string() + ": the output's parent directory does not exist");
  EXPECT_FALSE(fs::exists(dir / "typo"));

  o.out = dir.path().string() + "/out/"; // "out/" is the directory "out" of an existing parent
  ASSERT_TRUE(synth(o, Io::system(), {}).ok());
  EXPECT_EQ(list_dir(dir / "out"), (std::vector<std::string>{"config.json", "model.safetensors"}));
}

TEST(Synth, RejectsBadOptions) {
  TempDir dir;
  SynthOptions o = tiny(dir / "out");
  o.scale_hidden = 3000;
  Status s = synth(o, Io::system(), {});
  EXPECT_EQ(s.code(), Errc::invalid_argument);
  EXPECT_NE(s.message().find("hidden size 2816"), std::string::npos) << s.message();

  o = tiny(dir / "out");
  o.scale_experts = 0;
  EXPECT_EQ(synth(o, Io::system(), {}).code(), Errc::invalid_argument);

  o = tiny(dir / "out");
  o.model = "llama";
  EXPECT_NE(synth(o, Io::system(), {}).message().find("unknown model 'llama'"), std::string::npos);

  o = tiny(dir / "out");
  o.max_shard_size = 0;
  EXPECT_EQ(synth(o, Io::system(), {}).code(), Errc::invalid_argument);
  EXPECT_FALSE(fs::exists(o.out));
}

TEST(Synth, ConfigJson) {
  TempDir dir;
  SynthOptions o = tiny(dir / "out");
  o.model = "gemma4_moe";
  o.scale_experts = 4;
  o.scale_intermediate = 2;
  ASSERT_TRUE(synth(o, Io::system(), {}).ok());
  EXPECT_EQ(testing::read_bytes(o.out / "config.json"), R"({
  "model_type": "gemma4_moe",
  "num_hidden_layers": 3,
  "hidden_size": 176,
  "num_experts": 32,
  "moe_intermediate_size": 352,
  "vocab_size": 16384
}
)");
}

} // namespace
} // namespace shardshift
