// verify_test.cpp: verify() (include/shardshift/verify.h): an output written by convert() is
// identical in both directions, with several shards, side files in subdirectories and
// SHA256SUMS, for any lanes, threads and budget; each kind of damage is found and named (a byte
// of a transformed tensor, of a copied tensor, of a header, of the index, of a side file; a
// truncated, missing or extra file; a wrong SHA256SUMS line), --quick finds the files, sizes and
// headers but not the data; other conversion flags give differences; bad OUT values are errors.
#include "shardshift/convert.h"
#include "shardshift/verify.h"

#include "convert_harness.h"
#include "reference/checkpoint_files.h"
#include "test_support.h"

#include <algorithm>
#include <atomic>
#include <fstream>
#include <iostream>
#include <string>
#include <sys/stat.h>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using Kind = Difference::Kind;

// The output files a small diffusion_gemma conversion writes: several shards, the index, a
// side file at the top and one in a subdirectory, SHA256SUMS.
constexpr uint64_t SHARD_SIZE = 100'000;

class VerifyTest : public ConvertTest {
protected:
  void SetUp() override {
    ConvertTest::SetUp();
    write_checkpoint(tmp / "hf", tiny_diffusion(rng, 2, 8, 64, 48), 3, "diffusion_gemma");
    testing::write_bytes(tmp / "hf" / "tokenizer.json", "{\"tokens\": [1, 2, 3]}\n");
    fs::create_directories(tmp / "hf" / "original");
    testing::write_bytes(tmp / "hf" / "original" / "params.json", "{\"dim\": 64}\n");
    auto r = run(tmp / "hf", tmp / "out", opts([](ConvertOptions& o) {
                   o.plan.max_shard_size = SHARD_SIZE;
                   o.checksums = true;
                 }));
    ASSERT_TRUE(r.ok());
    ASSERT_GT(r->files, 2u);
  }

  // verify() of `out` against `in` on the CPU with the conversion's flags.
  Result<VerifySummary> check(const fs::path& in, const fs::path& out,
                              std::function<void(VerifyOptions&)> f = {}) {
    VerifyOptions o;
    o.input = in;
    o.output = out;
    o.device = "cpu";
    o.plan.max_shard_size = SHARD_SIZE;
    if (f)
      f(o);
    auto r = verify(o);
    if (r.ok())
      for (const Difference& d : r->differences)
        std::cout << "[ difference ] " << d.text() << "\n";
    else
      std::cout << "[ verify ] " << r.status().message() << "\n";
    return r;
  }
  Result<VerifySummary> check(std::function<void(VerifyOptions&)> f = {}) {
    return check(tmp / "hf", tmp / "out", std::move(f));
  }

  Plan plan() {
    PlanOptions o;
    o.max_shard_size = SHARD_SIZE;
    auto p = plan_conversion(tmp / "hf", o);
    EXPECT_TRUE(p.ok());
    return *p;
  }

  // The file offset of byte `k` of the first tensor of `op` in the plan, and its file.
  std::pair<std::string, uint64_t> byte_of(OpKind op, uint64_t k, std::string* tensor) {
    const Plan p = plan();
    for (const OutputFile& f : p.files)
      for (uint32_t i : f.tensors)
        if (p.tensors[i].op == op && p.tensors[i].size > k) {
          *tensor = p.tensors[i].name;
          return {f.name, f.header.size() + p.tensors[i].offset + k};
        }
    ADD_FAILURE() << "no " << op_name(op) << " tensor";
    return {};
  }

  void flip(const fs::path& file, uint64_t offset) {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    char c = 0;
    f.get(c);
    f.seekp(static_cast<std::streamoff>(offset));
    f.put(static_cast<char>(c ^ 0x20));
  }
};

TEST_F(VerifyTest, AConvertedOutputIsIdentical) {
  auto r = check();
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->identical());
  EXPECT_FALSE(r->quick);
  // The shards, the index and config.json, tokenizer.json, original/params.json.
  const auto files = plan().files.size() + 1 + 3;
  EXPECT_EQ(r->files, files);
  EXPECT_TRUE(r->checksum_file);
  EXPECT_EQ(r->checksums_ok, files);
  EXPECT_EQ(r->adapter, "diffusion_gemma");
  EXPECT_EQ(r->direction, Direction::from_hf);
  uint64_t bytes = 0;
  for (const auto& e : fs::recursive_directory_iterator(tmp / "out"))
    if (e.is_regular_file() && e.path().filename() != "SHA256SUMS" &&
        e.path().filename() != OUTPUT_MARKER_NAME)
      bytes += e.file_size();
  EXPECT_EQ(r->bytes, bytes);
  EXPECT_EQ(r->compared_bytes, bytes); // every byte once: headers and index, then the rest

  auto quick = check([](VerifyOptions& o) { o.quick = true; });
  ASSERT_TRUE(quick.ok());
  EXPECT_TRUE(quick->identical());
  EXPECT_TRUE(quick->quick);
  EXPECT_EQ(quick->checksums_ok, 0u); // --quick reads no data, so SHA256SUMS is not checked
}

TEST_F(VerifyTest, TheOtherDirectionToo) {
  auto back = run(tmp / "out", tmp / "back",
                  opts([](ConvertOptions& o) { o.plan.max_shard_size = SHARD_SIZE; }));
  ASSERT_TRUE(back.ok());
  auto r = check(tmp / "out", tmp / "back");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->identical());
  EXPECT_EQ(r->direction, Direction::to_hf);
  EXPECT_FALSE(r->checksum_file);
}

TEST_F(VerifyTest, AnyLanesThreadsAndBudgetGiveTheSameAnswer) {
  std::string tensor;
  auto [file, at] = byte_of(OpKind::transpose, 5000, &tensor);
  for (unsigned threads : {1u, 2u, 4u})
    for (unsigned writers : {1u, 3u})
      for (uint64_t mem : {uint64_t{1} << 20, uint64_t{1} << 30}) {
        auto r = check([&](VerifyOptions& o) {
          o.threads = threads;
          o.writers = writers;
          o.max_memory = mem;
        });
        ASSERT_TRUE(r.ok());
        EXPECT_TRUE(r->identical()) << threads << " threads, " << writers << " lanes, " << mem;
      }
  flip(tmp / "out" / file, at);
  for (unsigned writers : {1u, 3u}) {
    auto r = check([&](VerifyOptions& o) {
      o.writers = writers;
      o.max_memory = uint64_t{1} << 20;
    });
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->differences.size(), 2u); // the data, then SHA256SUMS
    EXPECT_EQ(r->differences[0].offset, at);
  }
}

TEST_F(VerifyTest, AFlippedByteOfATransformedTensorIsNamed) {
  std::string tensor;
  auto [file, at] = byte_of(OpKind::transpose, 777, &tensor);
  flip(tmp / "out" / file, at);
  auto r = check();
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->differences.size(), 2u);
  const Difference& d = r->differences[0];
  EXPECT_EQ(d.kind, Kind::data);
  EXPECT_EQ(d.file, file);
  EXPECT_EQ(d.offset, at);
  EXPECT_EQ(d.tensor, tensor);
  EXPECT_NE(d.text().find("in tensor '" + tensor + "' (byte 777 of its"), std::string::npos)
      << d.text();
  // SHA256SUMS still names the conversion's digest, which the damaged file no longer has.
  EXPECT_EQ(r->differences[1].kind, Kind::checksum);
  EXPECT_NE(r->differences[1].detail.find(file + ": FAILED"), std::string::npos);

  auto quick = check([](VerifyOptions& o) { o.quick = true; });
  ASSERT_TRUE(quick.ok());
  EXPECT_TRUE(quick->identical()); // --quick compares no tensor data
}

TEST_F(VerifyTest, AFlippedByteOfACopiedTensorIsNamed) {
  std::string tensor;
  auto [file, at] = byte_of(OpKind::copy, 3, &tensor);
  flip(tmp / "out" / file, at);
  auto r = check();
  ASSERT_TRUE(r.ok());
  ASSERT_FALSE(r->differences.empty());
  EXPECT_EQ(r->differences[0].kind, Kind::data);
  EXPECT_EQ(r->differences[0].offset, at);
  EXPECT_EQ(r->differences[0].tensor, tensor);
}

TEST_F(VerifyTest, AFlippedHeaderByteIsAHeaderDifference) {
  const OutputFile f = plan().files[1];
  flip(tmp / "out" / f.name, 20);
  auto r = check([](VerifyOptions& o) { o.quick = true; });
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->differences.size(), 1u);
  EXPECT_EQ(r->differences[0].kind, Kind::header);
  EXPECT_EQ(r->differences[0].file, f.name);
  EXPECT_EQ(r->differences[0].offset, 20u);
  auto full = check();
  ASSERT_TRUE(full.ok());
  ASSERT_EQ(full->differences.size(), 2u); // the header (once) and its SHA256SUMS line
  EXPECT_EQ(full->differences[0].kind, Kind::header);
  EXPECT_EQ(full->differences[1].kind, Kind::checksum);
}

TEST_F(VerifyTest, TheIndexIsComparedWhole) {
  std::string index = testing::read_bytes(tmp / "out" / INDEX_FILE_NAME);
  const size_t at = index.find("model.layers.1");
  ASSERT_NE(at, std::string::npos);
  index[at + 13] = '7';
  testing::write_bytes(tmp / "out" / INDEX_FILE_NAME, index);
  auto r = check([](VerifyOptions& o) { o.quick = true; });
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->differences.size(), 1u);
  EXPECT_EQ(r->differences[0].kind, Kind::header);
  EXPECT_EQ(r->differences[0].file, INDEX_FILE_NAME);
  EXPECT_EQ(r->differences[0].offset, at + 13);
}

TEST_F(VerifyTest, ATruncatedFileIsASizeDifference) {
  const OutputFile f = plan().files[0];
  fs::resize_file(tmp / "out" / f.name, f.size() - 1000);
  auto quick = check([](VerifyOptions& o) { o.quick = true; });
  ASSERT_TRUE(quick.ok());
  ASSERT_EQ(quick->differences.size(), 1u);
  EXPECT_EQ(quick->differences[0].kind, Kind::size);
  EXPECT_NE(quick->differences[0].detail.find("(1000 bytes short)"), std::string::npos);
  // The bytes that are there are right: the data step adds nothing, SHA256SUMS fails.
  auto r = check();
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->differences.size(), 2u);
  EXPECT_EQ(r->differences[0].kind, Kind::size);
  EXPECT_EQ(r->differences[1].kind, Kind::checksum);
}

TEST_F(VerifyTest, MissingAndExtraFilesAreListed) {
  const OutputFile f = plan().files[2];
  fs::remove(tmp / "out" / f.name);
  testing::write_bytes(tmp / "out" / "notes.txt", "mine\n");
  testing::write_bytes(tmp / "out" / "original" / "extra.bin", "x");
  fs::create_directories(tmp / "out" / ".cache" / "huggingface"); // a download tool's state
  testing::write_bytes(tmp / "out" / ".cache" / "huggingface" / "x.metadata", "x");
  for (bool quick : {true, false}) {
    auto r = check([&](VerifyOptions& o) { o.quick = quick; });
    ASSERT_TRUE(r.ok());
    ASSERT_GE(r->differences.size(), 3u);
    EXPECT_EQ(r->differences[0].kind, Kind::missing);
    EXPECT_EQ(r->differences[0].file, f.name);
    EXPECT_EQ(r->differences[1].kind, Kind::extra);
    EXPECT_EQ(r->differences[1].file, "notes.txt");
    EXPECT_EQ(r->differences[2].kind, Kind::extra);
    EXPECT_EQ(r->differences[2].file, "original/extra.bin");
    if (quick) {
      EXPECT_EQ(r->differences.size(), 3u);
    } else { // sha256sum -c: "FAILED open or read"
      ASSERT_EQ(r->differences.size(), 4u);
      EXPECT_EQ(r->differences[3].kind, Kind::checksum);
      EXPECT_NE(r->differences[3].detail.find(f.name + ": FAILED open or read"), std::string::npos);
    }
  }
}

TEST_F(VerifyTest, AModifiedSideFileIsFound) {
  testing::write_bytes(tmp / "out" / "original" / "params.json", "{\"dim\": 65}\n");
  auto quick = check([](VerifyOptions& o) { o.quick = true; });
  ASSERT_TRUE(quick.ok());
  EXPECT_TRUE(quick->identical()); // same size; its bytes are data
  auto r = check();
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->differences.size(), 2u);
  EXPECT_EQ(r->differences[0].kind, Kind::data);
  EXPECT_EQ(r->differences[0].file, "original/params.json");
  EXPECT_EQ(r->differences[0].offset, 9u);
  EXPECT_TRUE(r->differences[0].tensor.empty());
  EXPECT_EQ(r->differences[1].kind, Kind::checksum);
}

TEST_F(VerifyTest, AWrongChecksumLineFailsLikeSha256sum) {
  std::string sums = testing::read_bytes(tmp / "out" / "SHA256SUMS");
  sums[0] = sums[0] == '0' ? '1' : '0';
  // CRLF line ends, as a file written on Windows has them, are fine.
  for (size_t at = sums.find('\n'); at != std::string::npos; at = sums.find('\n', at + 2))
    sums.insert(at, "\r");
  sums += "not a checksum line\n";
  testing::write_bytes(tmp / "out" / "SHA256SUMS", sums);
  auto r = check();
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->differences.size(), 2u);
  EXPECT_EQ(r->differences[0].kind, Kind::checksum);
  EXPECT_EQ(r->differences[0].text().rfind("SHA256SUMS: line 1: ", 0), 0u)
      << r->differences[0].text();
  EXPECT_NE(r->differences[0].detail.find(": FAILED (its SHA-256 is "), std::string::npos);
  EXPECT_NE(r->differences[1].detail.find("not a checksum line"), std::string::npos);
  EXPECT_EQ(r->checksums_ok, r->files - 1);
}

// A side file whose name holds a line feed or a backslash: SHA256SUMS escapes it as sha256sum
// does, so `sha256sum -c` and verify both pass the output.
TEST_F(VerifyTest, NamesWithLineBreaksOrBackslashesAreEscapedAsSha256sumDoes) {
  testing::write_bytes(tmp / "hf" / "new\nline.txt", "x\n");
  testing::write_bytes(tmp / "hf" / "back\\slash\r.txt", "y");
  auto converted = run(tmp / "hf", tmp / "out", opts([](ConvertOptions& o) {
                         o.plan.max_shard_size = SHARD_SIZE;
                         o.checksums = true;
                         o.force = true;
                       }));
  ASSERT_TRUE(converted.ok()) << converted.status().message();
  const std::string sums = testing::read_bytes(tmp / "out" / "SHA256SUMS");
  EXPECT_NE(sums.find("  new\\nline.txt\n"), std::string::npos) << sums;
  EXPECT_NE(sums.find("  back\\\\slash\\r.txt\n"), std::string::npos) << sums;
  for (const std::string& line : testing::lines_of(sums))
    EXPECT_EQ(line[0] == '\\', line.find('\\', 1) != std::string::npos) << line;
  auto r = check();
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->identical());
  EXPECT_EQ(r->checksums_ok, r->files);
  const int rc = std::system(
      ("cd " + testing::shell_quoted(tmp / "out") + " && sha256sum --quiet -c SHA256SUMS").c_str());
  EXPECT_EQ(rc, 0) << "sha256sum -c fails on the SHA256SUMS written";
}

// SHA256SUMS naming a FIFO (or anything but a regular file) is a failed line, not a read that
// waits for ever; an empty SHA256SUMS, or one that is not a file, fails as with sha256sum -c.
TEST_F(VerifyTest, AChecksumFileThatChecksNothingOrNamesAFifoFails) {
  ASSERT_EQ(mkfifo((tmp / "out" / "extra.fifo").c_str(), 0644), 0);
  std::string sums = testing::read_bytes(tmp / "out" / "SHA256SUMS");
  testing::write_bytes(tmp / "out" / "SHA256SUMS", sums + std::string(64, '0') + "  extra.fifo\n");
  auto r = check();
  ASSERT_TRUE(r.ok());
  ASSERT_FALSE(r->differences.empty());
  EXPECT_NE(r->differences.back().detail.find("extra.fifo: FAILED open or read"), std::string::npos)
      << r->differences.back().text();
  fs::remove(tmp / "out" / "extra.fifo");

  testing::write_bytes(tmp / "out" / "SHA256SUMS", "");
  r = check();
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->differences.size(), 1u);
  EXPECT_EQ(r->differences[0].text(), "SHA256SUMS: no checksum lines ('<sha256>  <file>')");

  fs::remove(tmp / "out" / "SHA256SUMS");
  fs::create_directory(tmp / "out" / "SHA256SUMS");
  r = check();
  ASSERT_TRUE(r.ok());
  ASSERT_FALSE(r->differences.empty());
  EXPECT_EQ(r->differences[0].text(), "SHA256SUMS: is not a regular file");
}

TEST_F(VerifyTest, OtherConversionFlagsGiveDifferences) {
  auto r = check([](VerifyOptions& o) { o.plan.expert_dtype = DType::F32; });
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->identical());
  auto shards = check([](VerifyOptions& o) { o.plan.max_shard_size = 5'000'000'000; });
  ASSERT_TRUE(shards.ok());
  EXPECT_FALSE(shards->identical());
  EXPECT_EQ(shards->differences[0].kind, Kind::missing); // model.safetensors
}

TEST_F(VerifyTest, ARandomByteAnywhereIsFoundWhereItIs) {
  const uint64_t seed = testing::test_seed();
  std::mt19937_64 pick(seed);
  const Plan p = plan();
  for (int round = 0; round < 4; ++round) {
    const OutputFile& f = p.files[pick() % p.files.size()];
    const uint64_t at = pick() % f.size();
    flip(tmp / "out" / f.name, at);
    auto r = check();
    ASSERT_TRUE(r.ok());
    ASSERT_FALSE(r->differences.empty()) << "seed " << seed;
    const Difference& d = r->differences[0];
    EXPECT_EQ(d.file, f.name) << "seed " << seed;
    EXPECT_EQ(d.offset, at) << "seed " << seed;
    EXPECT_EQ(d.kind, at < f.header.size() ? Kind::header : Kind::data) << "seed " << seed;
    flip(tmp / "out" / f.name, at); // undo
  }
  auto r = check();
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->identical());
}

TEST_F(VerifyTest, OutMustBeADirectory) {
  auto stream = check([](VerifyOptions& o) { o.output = "-"; });
  ASSERT_FALSE(stream.ok());
  EXPECT_EQ(stream.status().code(), Errc::invalid_argument);
  auto missing = check(tmp / "hf", tmp / "nowhere");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Errc::io);
  EXPECT_NE(missing.status().message().find("nowhere"), std::string::npos);
  auto file = check(tmp / "hf", tmp / "out" / "SHA256SUMS");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), Errc::io);
}

TEST_F(VerifyTest, CancellationStopsIt) {
  std::atomic<bool> cancel{true};
  auto r = check([&](VerifyOptions& o) { o.cancel = &cancel; });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::interrupted);
}

} // namespace
} // namespace shardshift
