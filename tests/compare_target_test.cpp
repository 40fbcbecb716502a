// compare_target_test.cpp: `verify`'s target, which compares the bytes a conversion produces with
// the files of a directory. A copied tensor's produced bytes are the input's mapping, so a page
// lost while comparing is either file's: the error names the one that shrank.
#include "shardshift/mapped_file.h"
#include "shardshift/shard_writer.h"

#include "compare_target.h"
#include "test_support.h"

#include <random>
#include <unistd.h>

#include <gtest/gtest.h>

namespace shardshift::testing {
namespace {

struct Files {
  TempDir tmp;
  std::unique_ptr<MappedFile> input;
  OutputFile file;
};

// An input file and OUT/f holding the same `size` random bytes, the input mapped.
void make_files(Files& f, size_t size) {
  std::mt19937_64 rng(test_seed());
  const std::string bytes = random_bytes(rng, size);
  std::filesystem::create_directory(f.tmp / "out");
  write_bytes(f.tmp / "in.bin", bytes);
  write_bytes(f.tmp / "out" / "f", bytes);
  auto mapped = MappedFile::open(f.tmp / "in.bin");
  ASSERT_TRUE(mapped.ok()) << mapped.status().message();
  f.input = std::move(mapped).value();
  f.file.name = "f";
  f.file.data_size = size;
}

// Copies the input into the comparison of OUT/f, as the write stage copies a tensor.
Status compare_copy(Files& f, CompareTarget& target) {
  ShardWriter writer(target.io());
  if (Status s = target.open(writer, f.file); !s.ok())
    return s;
  Status s = writer.append_copy(f.input->fd(), 0, f.input->size(), f.input->bytes(), nullptr,
                                f.input->path());
  if (s.ok())
    return target.finish(writer, f.file);
  target.abandon(writer, f.file);
  return s;
}

TEST(CompareTarget, ACopyFromAnInputThatShrankNamesTheInput) {
  Files f;
  make_files(f, 256 * 1024);
  ASSERT_EQ(::truncate((f.tmp / "in.bin").c_str(), 0), 0);
  CompareTarget target(f.tmp / "out", Io::system());
  const Status s = compare_copy(f, target);
  EXPECT_EQ(s.code(), Errc::file_changed) << s.message();
  EXPECT_EQ(s.message().rfind((f.tmp / "in.bin").string() + ": file changed while reading", 0), 0u)
      << s.message();
  EXPECT_TRUE(target.error().ok()) << target.error().message(); // OUT is as it was
}

TEST(CompareTarget, AnOutputThatShrankIsNamed) {
  Files f;
  make_files(f, 256 * 1024);
  CompareTarget target(f.tmp / "out", Io::system());
  ShardWriter writer(target.io());
  ASSERT_TRUE(target.open(writer, f.file).ok());
  ASSERT_EQ(::truncate((f.tmp / "out" / "f").c_str(), 0), 0); // after it was mapped
  const Status s = writer.append_copy(f.input->fd(), 0, f.input->size(), f.input->bytes(), nullptr,
                                      f.input->path());
  target.abandon(writer, f.file);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(target.error().code(), Errc::file_changed) << target.error().message();
  EXPECT_EQ(target.error().message().rfind(
                (f.tmp / "out" / "f").string() + ": file changed while reading", 0),
            0u)
      << target.error().message();
}

TEST(CompareTarget, IdenticalBytesCompareEqual) {
  Files f;
  make_files(f, 256 * 1024);
  CompareTarget target(f.tmp / "out", Io::system());
  ASSERT_TRUE(compare_copy(f, target).ok());
  const FileComparison result = target.results().at("f");
  EXPECT_TRUE(result.finished);
  EXPECT_EQ(result.compared_bytes, 256u * 1024);
  EXPECT_FALSE(result.first_difference);
}

} // namespace
} // namespace shardshift::testing
