// driver_files_test.cpp: driver_files.h. Handing a driver's files back points exactly the
// descriptors under the given prefixes at /dev/null, keeps their numbers and flags, and leaves
// every other descriptor (standard ones included) alone. The GPU driver's own files are only
// there on a GPU machine; the mechanism is tested here on files of a scratch directory.
#include "driver_files.h"
#include "test_support.h"

#include <fcntl.h>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::TempDir;

std::string path_of(int fd) {
  char target[4096];
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
  return n > 0 ? std::string(target, static_cast<size_t>(n)) : std::string();
}

int open_file(const std::filesystem::path& path, int flags) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | flags, 0644);
  EXPECT_GE(fd, 0) << path;
  return fd;
}

TEST(DriverFiles, OnlyFilesUnderThePrefixesArePointedAtDevNull) {
  if (::access("/proc/self/fd", R_OK) != 0)
    GTEST_SKIP() << "no /proc here";
  TempDir driver, other;
  const int a = open_file(driver / "ctl", O_CLOEXEC);
  const int b = open_file(driver / "uvm", 0);
  const int kept = open_file(other / "output", O_CLOEXEC);
  ASSERT_TRUE(path_of(a).starts_with(driver.path().string()));

  const std::string prefix = driver.path().string() + "/";
  EXPECT_EQ(files_under({prefix}), (std::vector<int>{a, b}));
  EXPECT_EQ(release_files_under({"/nowhere/", prefix}), 2u);

  // Same numbers, now /dev/null, each with the close-on-exec flag it had.
  EXPECT_EQ(path_of(a), "/dev/null");
  EXPECT_EQ(path_of(b), "/dev/null");
  EXPECT_EQ(::fcntl(a, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  EXPECT_EQ(::fcntl(b, F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_EQ(path_of(kept), (other / "output").string());
  // Writing to a handed-back descriptor lands nowhere; the file it had is untouched.
  EXPECT_EQ(::write(b, "x", 1), 1);
  struct stat st {};
  ASSERT_EQ(::stat((driver / "uvm").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0);
  // Nothing left under the prefix: a second call finds nothing.
  EXPECT_EQ(release_files_under({driver.path().string() + "/"}), 0u);
  for (int fd : {a, b, kept})
    ::close(fd);
}

TEST(DriverFiles, FilesOpenBeforeAreKept) {
  TempDir driver;
  const int before = open_file(driver / "nvml", O_CLOEXEC); // another library's, say
  const std::vector<int> kept = files_under({driver.path().string() + "/"});
  const int after = open_file(driver / "uvm", O_CLOEXEC); // opened by the driver we started
  EXPECT_EQ(release_files_under({driver.path().string() + "/"}, kept), 1u);
  EXPECT_EQ(path_of(before), (driver / "nvml").string());
  EXPECT_EQ(path_of(after), "/dev/null");
  ::close(before);
  ::close(after);
}

TEST(DriverFiles, StandardDescriptorsAreNeverReplaced) {
  TempDir driver;
  const int saved = ::dup(STDIN_FILENO);
  ASSERT_GE(saved, 0);
  const int fd = open_file(driver / "ctl", O_CLOEXEC);
  ASSERT_EQ(::dup2(fd, STDIN_FILENO), STDIN_FILENO);
  const unsigned replaced = release_files_under({driver.path().string() + "/"});
  const std::string stdin_path = path_of(STDIN_FILENO);
  ASSERT_EQ(::dup2(saved, STDIN_FILENO),
            STDIN_FILENO); // restored before any assertion can end the test
  ::close(saved);
  EXPECT_EQ(replaced, 1u); // fd, not stdin
  EXPECT_EQ(stdin_path, (driver / "ctl").string());
  ::close(fd);
}

TEST(DriverFiles, GpuDriverFilesAreTheNvidiaAndWslDevices) {
  // On a machine without a GPU driver loaded in this process there is nothing to hand back;
  // with one (a CUDA test binary that opened a device) this would end its use of the GPU, so
  // only the former is checked.
  for (int fd = 3; fd < 1024; ++fd)
    if (const std::string p = path_of(fd);
        p.starts_with("/dev/nvidia") || p.starts_with("/dev/dxg"))
      GTEST_SKIP() << "this process has the GPU driver open";
  EXPECT_EQ(release_gpu_driver_files(), 0u);
}

} // namespace
} // namespace shardshift
