// mapped_file_test.cpp: checked views of a mapping, page release, and the SIGBUS guard.
#include "shardshift/mapped_file.h"

#include "test_support.h"

#include <csignal>
#include <fcntl.h>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::TempDir;
using testing::write_bytes;

// Reads a byte the compiler cannot optimise away.
char touch(const std::byte* p) {
  return static_cast<char>(*reinterpret_cast<const volatile std::byte*>(p));
}

TEST(MappedFile, MapsContentsAndChecksViews) {
  TempDir dir;
  write_bytes(dir / "f", "hello world");
  auto file = MappedFile::open(dir / "f");
  ASSERT_TRUE(file.ok()) << file.status().message();
  const MappedFile& f = **file;
  EXPECT_EQ(f.size(), 11u);
  EXPECT_EQ(f.path(), (dir / "f").string());
  EXPECT_GE(f.fd(), 0);

  auto v = f.view(6, 5);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(v->data()), v->size()), "world");
  EXPECT_TRUE(f.view(11, 0).ok()); // an empty view at the very end is fine
  EXPECT_TRUE(f.view(0, 11).ok());

  auto past = f.view(6, 6);
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.status().code(), Errc::format);
  EXPECT_NE(past.status().message().find((dir / "f").string()), std::string::npos);
  EXPECT_FALSE(f.view(12, 0).ok());
  // offset + length wraps around 2^64 to a small number: must still be refused.
  EXPECT_FALSE(f.view(5, UINT64_MAX - 2).ok());
  EXPECT_FALSE(f.view(UINT64_MAX, 2).ok());
}

TEST(MappedFile, EmptyFileIsValid) {
  TempDir dir;
  write_bytes(dir / "empty", "");
  auto file = MappedFile::open(dir / "empty");
  ASSERT_TRUE(file.ok()) << file.status().message();
  EXPECT_EQ((*file)->size(), 0u);
  EXPECT_TRUE((*file)->bytes().empty());
  EXPECT_TRUE((*file)->view(0, 0).ok());
  EXPECT_FALSE((*file)->view(0, 1).ok());
  (*file)->release(0, 100);
  (*file)->will_need(0, 100);
}

TEST(MappedFile, OpenErrorsNameThePath) {
  TempDir dir;
  auto missing = MappedFile::open(dir / "missing");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Errc::io);
  EXPECT_NE(missing.status().message().find("missing"), std::string::npos);
  auto directory = MappedFile::open(dir.path());
  ASSERT_FALSE(directory.ok());
  EXPECT_NE(directory.status().message().find("not a regular file"), std::string::npos);
}

TEST(MappedFile, ReleaseKeepsContentsReadable) {
  // MADV_DONTNEED on a shared file mapping drops the pages; reading them again refetches the
  // file's bytes. Release ranges that do and do not cover whole pages, then check every byte.
  TempDir dir;
  std::mt19937_64 rng(testing::test_seed());
  std::string data = testing::random_bytes(rng, 5 * 4096 + 123);
  write_bytes(dir / "f", data);
  auto file = MappedFile::open(dir / "f");
  ASSERT_TRUE(file.ok());
  const MappedFile& f = **file;
  f.will_need(100, 8000);
  f.release(10, 3 * 4096);
  f.release(4096, 4096);
  f.release(0, f.size());
  f.release(f.size() - 1, 1000); // clamped
  f.release(f.size() + 5, 10);   // past the end: ignored
  auto bytes = f.bytes();
  ASSERT_EQ(bytes.size(), data.size());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()), data);
}

TEST(GuardMappedAccess, RunsTheFunctionAndReturnsOk) {
  TempDir dir;
  write_bytes(dir / "f", "abc");
  auto file = MappedFile::open(dir / "f");
  ASSERT_TRUE(file.ok());
  char seen = 0;
  Status s = guard_mapped_access(**file, [&] { seen = static_cast<char>((*file)->bytes()[2]); });
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(seen, 'c');
}

TEST(GuardMappedAccess, TruncatedFileGivesFileChanged) {
  TempDir dir;
  const size_t size = 64 * 1024;
  write_bytes(dir / "f", std::string(size, 'x'));
  auto file = MappedFile::open(dir / "f");
  ASSERT_TRUE(file.ok());
  const MappedFile& f = **file;

  // Shrink the file under the mapping: pages past the new end now raise SIGBUS when touched.
  int fd = ::open((dir / "f").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 0), 0);
  ::close(fd);

  volatile char sink = 0;
  Status s = guard_mapped_access(f, [&] { sink = touch(f.bytes().data() + size - 1); });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Errc::file_changed);
  EXPECT_NE(s.message().find(f.path() + ": file changed while reading"), std::string::npos)
      << s.message();

  // The guard can be used again afterwards (SIGBUS was unblocked by siglongjmp), also nested and
  // from another thread.
  Status again = guard_mapped_access(f, [&] {
    Status inner = guard_mapped_access(f, [&] { sink = touch(f.bytes().data() + 4096); });
    EXPECT_EQ(inner.code(), Errc::file_changed);
  });
  EXPECT_TRUE(again.ok()) << "the inner guard caught the fault";
  std::thread other([&] {
    Status t = guard_mapped_access(f, [&] { sink = touch(f.bytes().data()); });
    EXPECT_EQ(t.code(), Errc::file_changed);
  });
  other.join();
  (void)sink;
}

TEST(GuardMappedAccess, ExceptionsPassThroughAndRestoreState) {
  TempDir dir;
  write_bytes(dir / "f", "abc");
  auto file = MappedFile::open(dir / "f");
  ASSERT_TRUE(file.ok());
  EXPECT_THROW((void)guard_mapped_access(**file, [] { throw std::runtime_error("boom"); }),
               std::runtime_error);
  EXPECT_TRUE(guard_mapped_access(**file, [] {}).ok());
}

// Death by SIGBUS. Under AddressSanitizer the previous SIGBUS handler is ASan's, which reports
// the fault and exits with a failure status instead: that still proves the signal was not
// swallowed.
bool died_of_sigbus(int status) {
#if defined(__SANITIZE_ADDRESS__)
  if (WIFEXITED(status))
    return WEXITSTATUS(status) != 0;
#endif
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS;
}

TEST(GuardMappedAccessDeathTest, SigbusOutsideAGuardStillKills) {
  // Installing the handler must not swallow unrelated SIGBUS signals.
  TempDir dir;
  write_bytes(dir / "f", "abc");
  auto file = MappedFile::open(dir / "f");
  ASSERT_TRUE(file.ok());
  EXPECT_TRUE(guard_mapped_access(**file, [] {}).ok()); // installs the handler
  EXPECT_EXIT(raise(SIGBUS), died_of_sigbus, "");

  // A real fault on a vanished page outside any guard: the default action, not a silent retry loop.
  write_bytes(dir / "g", std::string(8192, 'g'));
  auto g = MappedFile::open(dir / "g");
  ASSERT_TRUE(g.ok());
  EXPECT_EXIT(
      {
        if (truncate((dir / "g").c_str(), 0) != 0)
          _exit(3);
        (void)touch((*g)->bytes().data() + 5000);
        _exit(0);
      },
      died_of_sigbus, "");
}

} // namespace
} // namespace shardshift
