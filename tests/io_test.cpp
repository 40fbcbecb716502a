// io_test.cpp: the file-I/O seam: ForwardingIo passes every call through unchanged, and the
// directory helpers (make_directories, remove_tree) do all their writing through the Io.
#include "shardshift/io.h"

#include "test_support.h"

#include <atomic>
#include <cerrno>
#include <fcntl.h>
#include <mutex>
#include <string>
#include <unistd.h>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::list_dir;
using testing::TempDir;

// Records every call with its arguments and answers with a distinct value per method, so a
// forwarder that swaps, drops or reroutes a call shows up. Implementing Io directly also checks
// that a new method cannot be forgotten here: this class would no longer compile.
class RecordingIo final : public Io {
public:
  std::vector<std::string> calls;

  int open(const char* path, int flags, unsigned mode) override {
    return log(
        "open " + std::string(path) + " " + std::to_string(flags) + " " + std::to_string(mode), 1);
  }
  int close(int fd) override { return log("close " + std::to_string(fd), 2); }
  ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) override {
    return log(
        "pwrite " + std::to_string(fd) + " " + bytes(buf, count) + " " + std::to_string(offset), 3);
  }
  ssize_t write(int fd, const void* buf, size_t count) override {
    return log("write " + std::to_string(fd) + " " + bytes(buf, count), 4);
  }
  ssize_t copy_file_range(int in, off_t* in_off, int out, off_t* out_off, size_t len) override {
    return log("copy_file_range " + std::to_string(in) + " " + std::to_string(*in_off) + " " +
                   std::to_string(out) + " " + std::to_string(*out_off) + " " + std::to_string(len),
               5);
  }
  ssize_t splice(int in, off_t* in_off, int out, off_t* out_off, size_t len) override {
    return log("splice " + std::to_string(in) + " " + std::to_string(*in_off) + " " +
                   std::to_string(out) + " " + (out_off ? "offset" : "null") + " " +
                   std::to_string(len),
               6);
  }
  int fallocate(int fd, off_t offset, off_t length) override {
    return log("fallocate " + std::to_string(fd) + " " + std::to_string(offset) + " " +
                   std::to_string(length),
               7);
  }
  int fsync(int fd) override { return log("fsync " + std::to_string(fd), 8); }
  int sync_file_range(int fd, off_t offset, off_t length, unsigned flags) override {
    return log("sync_file_range " + std::to_string(fd) + " " + std::to_string(offset) + " " +
                   std::to_string(length) + " " + std::to_string(flags),
               13);
  }
  int rename(const char* from, const char* to) override {
    return log("rename " + std::string(from) + " " + to, 9);
  }
  int unlink(const char* path) override { return log("unlink " + std::string(path), 10); }
  int mkdir(const char* path, unsigned mode) override {
    return log("mkdir " + std::string(path) + " " + std::to_string(mode), 11);
  }
  int rmdir(const char* path) override { return log("rmdir " + std::string(path), 12); }
  int ftruncate(int fd, off_t length) override {
    return log("ftruncate " + std::to_string(fd) + " " + std::to_string(length), 14);
  }
  bool maps_writes() const override { return true; }

private:
  int log(std::string call, int result) {
    calls.push_back(std::move(call));
    return result;
  }
  static std::string bytes(const void* buf, size_t count) {
    return std::string(static_cast<const char*>(buf), count);
  }
};

TEST(ForwardingIo, ForwardsEveryCallWithItsArgumentsAndResult) {
  RecordingIo recorder;
  ForwardingIo io(recorder);
  off_t in_off = 40, out_off = 50;
  EXPECT_EQ(io.open("/a", O_WRONLY, 0644), 1);
  EXPECT_EQ(io.close(3), 2);
  EXPECT_EQ(io.pwrite(4, "xy", 2, 9), 3);
  EXPECT_EQ(io.write(5, "z", 1), 4);
  EXPECT_EQ(io.copy_file_range(6, &in_off, 7, &out_off, 8), 5);
  EXPECT_EQ(io.splice(6, &in_off, 7, nullptr, 8), 6);
  EXPECT_EQ(io.fallocate(8, 0, 100), 7);
  EXPECT_EQ(io.fsync(9), 8);
  EXPECT_EQ(io.rename("/b", "/c"), 9);
  EXPECT_EQ(io.unlink("/d"), 10);
  EXPECT_EQ(io.mkdir("/e", 0755), 11);
  EXPECT_EQ(io.rmdir("/f"), 12);
  EXPECT_EQ(io.sync_file_range(9, 4096, 8192, 2), 13);
  EXPECT_EQ(io.ftruncate(10, 4096), 14);
  const std::vector<std::string> expected = {
      "open /a " + std::to_string(O_WRONLY) + " 420",
      "close 3",
      "pwrite 4 xy 9",
      "write 5 z",
      "copy_file_range 6 40 7 50 8",
      "splice 6 40 7 null 8",
      "fallocate 8 0 100",
      "fsync 9",
      "rename /b /c",
      "unlink /d",
      "mkdir /e 493",
      "rmdir /f",
      "sync_file_range 9 4096 8192 2",
      "ftruncate 10 4096",
  };
  EXPECT_EQ(recorder.calls, expected);
  // The one answer not passed on: a decorator that does not say otherwise sees every byte
  // written, so files are not filled through mappings under it.
  EXPECT_TRUE(recorder.maps_writes());
  EXPECT_FALSE(io.maps_writes());
}

// Passes everything to the kernel, counting removals; can refuse to remove directories.
// Thread-safe, like every Io (remove_tree removes a directory's entries in parallel).
class RemovalCountingIo final : public ForwardingIo {
public:
  RemovalCountingIo() : ForwardingIo(Io::system()) {}
  std::atomic<int> unlinks = 0, rmdirs = 0, mkdirs = 0;
  bool refuse_rmdir = false;

  int unlink(const char* path) override {
    ++unlinks;
    return ForwardingIo::unlink(path);
  }
  int rmdir(const char* path) override {
    ++rmdirs;
    if (refuse_rmdir)
      return errno = EACCES, -1;
    return ForwardingIo::rmdir(path);
  }
  int mkdir(const char* path, unsigned mode) override {
    ++mkdirs;
    return ForwardingIo::mkdir(path, mode);
  }
};

TEST(RemoveTree, RemovesEverythingThroughTheIoAndNeverFollowsLinks) {
  TempDir dir;
  fs::create_directories(dir / "tree/a/b");
  fs::create_directories(dir / "outside");
  testing::write_bytes(dir / "outside/keep", "k");
  testing::write_bytes(dir / "tree/f", "1");
  testing::write_bytes(dir / "tree/a/g", "2");
  testing::write_bytes(dir / "tree/a/b/h", "3");
  fs::create_directory_symlink(dir / "outside", dir / "tree/a/link");

  RemovalCountingIo io;
  Status s = remove_tree(io, dir / "tree");
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(io.unlinks, 4); // three files and the link
  EXPECT_EQ(io.rmdirs, 3);  // tree, a, b
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"outside"});
  EXPECT_EQ(testing::read_bytes(dir / "outside/keep"), "k");
}

TEST(RemoveTree, AMissingPathIsFineAndAFileIsUnlinked) {
  TempDir dir;
  RemovalCountingIo io;
  EXPECT_TRUE(remove_tree(io, dir / "missing").ok());
  EXPECT_EQ(io.unlinks + io.rmdirs, 0);
  testing::write_bytes(dir / "file", "x");
  EXPECT_TRUE(remove_tree(io, dir / "file").ok());
  EXPECT_EQ(io.unlinks, 1);
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(RemoveTree, ReportsAnInjectedFailureAfterRemovingWhatItCan) {
  TempDir dir;
  fs::create_directories(dir / "tree/sub");
  testing::write_bytes(dir / "tree/sub/f", "1");
  testing::write_bytes(dir / "tree/g", "2");
  RemovalCountingIo io;
  io.refuse_rmdir = true;
  Status s = remove_tree(io, dir / "tree");
  EXPECT_EQ(s.code(), Errc::io);
  EXPECT_EQ(s.message(),
            (dir / "tree/sub").string() + ": cannot remove directory: Permission denied");
  EXPECT_EQ(io.unlinks, 2);
  EXPECT_EQ(io.rmdirs, 2); // it went on to the parent after the first refusal
  EXPECT_TRUE(list_dir(dir / "tree").size() == 1 && list_dir(dir / "tree/sub").empty());
}

// Records the order of unlinks; can refuse to unlink one name.
class RemovalOrderIo final : public ForwardingIo {
public:
  RemovalOrderIo() : ForwardingIo(Io::system()) {}
  std::string refuse; ///< a file name whose unlink fails (EACCES)

  int unlink(const char* path) override {
    const std::string name = fs::path(path).filename().string();
    {
      std::lock_guard<std::mutex> lock(mu_);
      order_.push_back(name);
    }
    if (name == refuse)
      return errno = EACCES, -1;
    return ForwardingIo::unlink(path);
  }
  std::vector<std::string> order() {
    std::lock_guard<std::mutex> lock(mu_);
    return order_;
  }

private:
  std::mutex mu_;
  std::vector<std::string> order_;
};

// A directory's `.shardshift-*` marks (a staging directory's plan, an output's marker) go after
// everything else, and stay when something else could not be removed: a removal cut short leaves
// a directory the next run still knows as a run's staging and removes, never files without the
// mark, which no run may touch.
TEST(RemoveTree, RemovesTheMarksThatSayWhoseADirectoryIsLast) {
  TempDir dir;
  fs::create_directories(dir / "staging/sub");
  const std::vector<std::string> files = {"model-00001.safetensors", "model-00002.safetensors",
                                          "..shardshift-plan.shardshift-tmp-1-2", "zz",
                                          "aa"};
  for (const std::string& f : files)
    testing::write_bytes(dir / "staging" / f, "x");
  testing::write_bytes(dir / "staging/sub/.shardshift-plan", "inner");
  testing::write_bytes(dir / "staging/.shardshift-plan", "p");
  testing::write_bytes(dir / "staging/.shardshift-output", "o");
  {
    RemovalOrderIo io;
    ASSERT_TRUE(remove_tree(io, dir / "staging").ok());
    const std::vector<std::string> order = io.order();
    ASSERT_EQ(order.size(), files.size() + 3);
    const std::vector<std::string> last(order.end() - 2, order.end());
    EXPECT_TRUE((last == std::vector<std::string>{".shardshift-plan", ".shardshift-output"}) ||
                (last == std::vector<std::string>{".shardshift-output", ".shardshift-plan"}))
        << last[0] << ", " << last[1];
    EXPECT_FALSE(fs::exists(dir / "staging"));
  }
  // A directory of a shard, a file that cannot go, and `mark`.
  auto with_stuck_file = [&](const std::string& name, const std::string& mark) {
    fs::create_directories(dir / name);
    for (const std::string& f : {std::string("model-00001.safetensors"), std::string("stuck"), mark})
      testing::write_bytes(dir / name / f, "x");
    return dir / name;
  };
  // One file that cannot go: the marks stay with it.
  const fs::path again = with_stuck_file("again", ".shardshift-plan");
  RemovalOrderIo io;
  io.refuse = "stuck";
  EXPECT_FALSE(remove_tree(io, again).ok());
  EXPECT_EQ(list_dir(again), (std::vector<std::string>{".shardshift-plan", "stuck"}));

  // Marks::first (an output moved aside): the marker goes before anything else, and stays gone
  // when the rest could not all go.
  const fs::path old = with_stuck_file("old", ".shardshift-output");
  RemovalOrderIo first;
  first.refuse = "stuck";
  EXPECT_FALSE(discard_tree(first, old, Marks::first).ok());
  EXPECT_EQ(first.order().front(), ".shardshift-output");
  EXPECT_EQ(list_dir(old), std::vector<std::string>{"stuck"});
}

TEST(MakeDirectories, CreatesMissingParentsThroughTheIo) {
  TempDir dir;
  RemovalCountingIo io;
  ASSERT_TRUE(make_directories(io, dir / "a/b/c").ok());
  EXPECT_TRUE(fs::is_directory(dir / "a/b/c"));
  EXPECT_EQ(io.mkdirs, 3);
  ASSERT_TRUE(make_directories(io, dir / "a/b").ok()); // exists: nothing to do
  EXPECT_EQ(io.mkdirs, 3);
}

TEST(MakeDirectories, AFileInTheWayIsAnError) {
  TempDir dir;
  testing::write_bytes(dir / "file", "x");
  Status s = make_directories(Io::system(), dir / "file/sub");
  EXPECT_EQ(s.code(), Errc::io);
  EXPECT_EQ(s.message(),
            (dir / "file/sub").string() + ": cannot create directory: Not a directory");
}

} // namespace
} // namespace shardshift
