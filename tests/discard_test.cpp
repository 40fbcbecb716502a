// discard_test.cpp: discard.h. Removing what a stopped run wrote takes every name at once and
// frees the space without the caller waiting for it. The space is checked on /dev/shm (a tmpfs,
// whose free space moves only with what is written there; skipped where it is missing), since a
// shared disk's free space moves with everything else on the machine.
#include "discard.h"

#include "shardshift/shard_writer.h"

#include "test_support.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fcntl.h>
#include <filesystem>
#include <string>
#include <sys/statvfs.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

constexpr uint64_t MiB = uint64_t{1} << 20;

uint64_t free_bytes(const fs::path& dir) {
  struct statvfs v {};
  EXPECT_EQ(::statvfs(dir.c_str(), &v), 0) << dir;
  return uint64_t(v.f_bavail) * v.f_frsize;
}

// A scratch directory on /dev/shm, removed afterwards.
class ShmDir {
public:
  ShmDir() {
    char name[] = "/dev/shm/shardshift-discard-XXXXXX";
    if (fs::is_directory("/dev/shm") && ::mkdtemp(name))
      path_ = name;
  }
  ~ShmDir() {
    std::error_code ec;
    if (!path_.empty())
      fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

private:
  fs::path path_;
};

void write_file(const fs::path& path, uint64_t bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << path;
  const std::string block(MiB, 'x');
  for (uint64_t done = 0; done < bytes; done += block.size())
    ASSERT_EQ(::write(fd, block.data(), block.size()), ssize_t(block.size()));
  ::close(fd);
}

// Waits (at most 20 s) until `dir`'s filesystem has at least `want` bytes free again.
bool space_comes_back(const fs::path& dir, uint64_t want) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (free_bytes(dir) < want) {
    if (std::chrono::steady_clock::now() > give_up)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

int open_descriptors() {
  int n = 0;
  for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
    (void)e;
    ++n;
  }
  return n;
}

TEST(Discard, NamesGoAtOnceAndTheSpaceComesBack) {
  ShmDir shm;
  if (shm.path().empty())
    GTEST_SKIP() << "no /dev/shm to measure free space on";
  const uint64_t before = free_bytes(shm.path());
  const fs::path tree = shm.path() / "staging";
  fs::create_directories(tree / "sub");
  write_file(tree / "big", 96 * MiB);              // held, then released
  write_file(tree / "sub" / "bigger", 80 * MiB);   // held, then released
  write_file(tree / "small", MiB);                 // unlinked plainly
  fs::create_symlink(tree / "big", tree / "link"); // removed as a link
  const int descriptors = open_descriptors();
  ASSERT_LT(free_bytes(shm.path()) + 150 * MiB, before) << "the files did not take space";

  ASSERT_TRUE(discard_tree(Io::system(), tree).ok());
  EXPECT_FALSE(fs::exists(fs::symlink_status(tree))) << "a name was left behind";
  EXPECT_EQ(open_descriptors(), descriptors) << "this process still holds a removed file";
  EXPECT_TRUE(space_comes_back(shm.path(), before - 8 * MiB))
      << "the space of the discarded files was not freed within 20 s";
}

TEST(Discard, HoldsALargeFileUntilReleasedAndASmallOneNot) {
  ShmDir shm;
  if (shm.path().empty())
    GTEST_SKIP() << "no /dev/shm (a tmpfs) to discard on";
  write_file(shm.path() / "large", DISCARD_MIN_BYTES);
  write_file(shm.path() / "small", DISCARD_MIN_BYTES - MiB);
  const int descriptors = open_descriptors();
  ASSERT_EQ(discard_file(Io::system(), shm.path() / "small"), 0);
  EXPECT_EQ(open_descriptors(), descriptors) << "a small file was held";
  ASSERT_EQ(discard_file(Io::system(), shm.path() / "large"), 0);
  EXPECT_FALSE(fs::exists(shm.path() / "large"));
  EXPECT_EQ(open_descriptors(), descriptors + 1) << "a large file on tmpfs was not held";
  release_discarded();
  EXPECT_EQ(open_descriptors(), descriptors);
}

TEST(Discard, AbandonedShardWriterLeavesNoNameAndNoSpace) {
  ShmDir shm;
  if (shm.path().empty())
    GTEST_SKIP() << "no /dev/shm to measure free space on";
  const uint64_t before = free_bytes(shm.path());
  {
    ShardWriter writer(Io::system());
    ASSERT_TRUE(writer.open(shm.path() / "shard.safetensors", std::string(), 100 * MiB).ok());
    const std::vector<std::byte> block(MiB, std::byte{7});
    for (int i = 0; i < 72; ++i)
      ASSERT_TRUE(writer.append(block).ok());
    writer.abandon();
  }
  std::vector<fs::path> left;
  for (const auto& e : fs::directory_iterator(shm.path()))
    left.push_back(e.path());
  EXPECT_TRUE(left.empty()) << "left behind: " << (left.empty() ? "" : left[0].string());
  release_discarded();
  EXPECT_TRUE(space_comes_back(shm.path(), before - 8 * MiB))
      << "the abandoned shard's space was not freed within 20 s";
}

// An Io whose unlink fails: the file stays, and discard_file keeps no descriptor of it.
class NoUnlinkIo : public ForwardingIo {
public:
  NoUnlinkIo() : ForwardingIo(Io::system()) {}
  int unlink(const char*) override {
    errno = EACCES;
    return -1;
  }
};

TEST(Discard, FailedUnlinkKeepsTheFileAndNoDescriptor) {
  TempDir tmp;
  write_file(tmp / "big", 70 * MiB);
  const int descriptors = open_descriptors();
  NoUnlinkIo io;
  errno = 0;
  EXPECT_EQ(discard_file(io, tmp / "big"), -1);
  EXPECT_EQ(errno, EACCES);
  EXPECT_TRUE(fs::exists(tmp / "big"));
  EXPECT_EQ(open_descriptors(), descriptors);
  Status s = discard_tree(io, tmp.path());
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cannot remove"), std::string::npos) << s.message();
  EXPECT_EQ(open_descriptors(), descriptors);
}

TEST(Discard, NeverFollowsALinkOutOfTheTree) {
  TempDir tmp;
  write_file(tmp / "outside", 70 * MiB);
  fs::create_directories(tmp / "tree");
  fs::create_symlink(tmp / "outside", tmp / "tree" / "link");
  ASSERT_TRUE(discard_tree(Io::system(), tmp / "tree").ok());
  EXPECT_FALSE(fs::exists(tmp / "tree"));
  ASSERT_TRUE(fs::exists(tmp / "outside"));
  EXPECT_EQ(fs::file_size(tmp / "outside"), 70 * MiB);
}

} // namespace
} // namespace shardshift
