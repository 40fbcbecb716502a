// tar_target_test.cpp: the tar headers shardshift writes, read back by GNU tar: ustar names, names
// split into prefix and name, pax headers for names ustar cannot hold and for sizes of 8 GiB or
// more, directory entries, and a stream that never stops where an entry ends before its end.
#include "tar_target.h"
#include "test_support.h"

#include <atomic>
#include <chrono>
#include <fcntl.h>
#include <random>
#include <set>
#include <sys/ioctl.h>
#include <thread>
#include <unistd.h>

#include <gtest/gtest.h>

namespace shardshift::testing {
namespace {

// An archive of `files` (name, bytes) as TarTarget::deliver writes them, in a file at `path`;
// `finished` adds the end-of-archive blocks, otherwise the stream ends as a failed run's does.
void write_archive(const std::filesystem::path& path,
                   const std::vector<std::pair<std::string, std::string>>& files, bool finished) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  TarTarget tar(Io::system(), fd);
  for (const auto& [name, bytes] : files)
    ASSERT_TRUE(tar.deliver(name, bytes).ok()) << name;
  if (finished)
    EXPECT_TRUE(tar.close().ok());
  else
    tar.end_incomplete();
  ::close(fd);
}

// Closes the pipe's write end `p[1]`, then reads all that is in it and closes `p[0]`.
std::string drain(const int p[2]) {
  ::close(p[1]);
  std::string stream;
  char buf[4096];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;)
    stream.append(buf, static_cast<size_t>(n));
  ::close(p[0]);
  return stream;
}

unsigned checksum_of(const std::string& block) {
  unsigned sum = 0;
  for (size_t i = 0; i < 512; ++i)
    sum += i >= 148 && i < 156 ? ' ' : static_cast<unsigned char>(block[i]);
  return sum;
}

TEST(TarHeader, UstarFieldsAreFixedApartFromNameAndSize) {
  const std::string h = tar_header("config.json", 1234);
  ASSERT_EQ(h.size(), 512u);
  EXPECT_EQ(h.substr(0, 12), std::string("config.json") + '\0');
  EXPECT_EQ(h.substr(100, 8), std::string("0000644") + '\0');
  EXPECT_EQ(h.substr(108, 16), std::string("0000000\0"
                                           "0000000\0",
                                           16));                   // uid, gid
  EXPECT_EQ(h.substr(124, 12), std::string("00000002322") + '\0'); // 1234 in octal
  EXPECT_EQ(h.substr(136, 12), std::string("00000000000") + '\0'); // mtime 0
  EXPECT_EQ(h[156], '0');
  EXPECT_EQ(h.substr(257, 8), std::string("ustar\0"
                                          "00",
                                          8));
  EXPECT_EQ(h.substr(265, 64), std::string(64, '\0')); // no user or group name
  EXPECT_EQ(std::stoul(h.substr(148, 6), nullptr, 8), checksum_of(h));
  EXPECT_EQ(tar_header("config.json", 1234), h); // deterministic
  EXPECT_EQ(tar_padding(0), 0u);
  EXPECT_EQ(tar_padding(1), 511u);
  EXPECT_EQ(tar_padding(1024), 0u);
}

TEST(TarHeader, PaxOnlyWhereUstarHasNoRoom) {
  const std::string dir(120, 'd');
  // Split at a '/' into prefix and name: still one ustar block.
  EXPECT_EQ(tar_header(dir + "/params.json", 5).size(), 512u);
  // No split fits (a last component over 100 bytes): a pax header with the path first.
  const std::string long_name = std::string(130, 'n') + ".json";
  const std::string h = tar_header(long_name, 5);
  ASSERT_EQ(h.size(), 512u * 3); // 'x' header, its records, the ustar block
  EXPECT_EQ(h[156], 'x');
  const std::string record = " path=" + long_name + "\n";
  const std::string length = std::to_string(record.size() + 3);
  EXPECT_NE(h.find(length + record), std::string::npos);
  // 8 GiB and more: ustar's 11 octal digits cannot say it; pax "size" does.
  const std::string big = tar_header("model-00001-of-00002.safetensors", uint64_t{1} << 33);
  EXPECT_EQ(big.size(), 512u * 3);
  EXPECT_NE(big.find("19 size=8589934592\n"), std::string::npos);
  TempDir tmp; // GNU tar reads the size from it (then finds the data missing)
  write_bytes(tmp / "big.tar", big);
  auto listed = run_shell("tar -tvf " + shell_quoted(tmp / "big.tar"));
  EXPECT_NE(listed.out.find("8589934592 "), std::string::npos) << listed.out << listed.err;
  EXPECT_EQ(tar_header("model.safetensors", (uint64_t{1} << 33) - 1).size(), 512u);
}

TEST(TarTarget, GnuTarExtractsEveryNameKind) {
  TempDir tmp;
  const std::string split_name = std::string(120, 'd') + "/params.json";
  const std::string pax_name = "original/" + std::string(130, 'n') + ".json";
  const std::vector<std::pair<std::string, std::string>> files = {
      {"config.json", "{}"},
      {"original/sub/tokenizer.model", std::string(1000, 't')},
      {split_name, "split"},
      {pax_name, std::string(513, 'p')},
      {"empty", ""}};
  write_archive(tmp / "a.tar", files, true);
  std::filesystem::create_directory(tmp / "x");
  auto r = run_shell("tar -xf " + shell_quoted(tmp / "a.tar") + " -C " + shell_quoted(tmp / "x"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const auto& [name, bytes] : files)
    EXPECT_EQ(read_bytes(tmp / "x" / name), bytes) << name;
  // The directories come as entries of their own (mode 0755), before the files in them.
  auto list = run_shell("tar -tvf " + shell_quoted(tmp / "a.tar"));
  EXPECT_LT(list.out.find("drwxr-xr-x 0/0"), list.out.find("original/sub/tokenizer.model"));
  EXPECT_NE(list.out.find("original/sub/\n"), std::string::npos) << list.out;
}

TEST(TarTarget, AFailedStreamEndsInsideAnEntry) {
  TempDir tmp;
  // GNU tar and Python's tarfile take an archive that ends at an entry's end for complete (the
  // control: the whole archive cut before its end blocks):
  write_archive(tmp / "whole.tar", {{"a", "1"}}, true);
  EXPECT_EQ(run_shell("tar -tf " + shell_quoted(tmp / "whole.tar")).exit_code, 0);
  auto cut = read_bytes(tmp / "whole.tar").substr(0, 1024); // header and one data block
  write_bytes(tmp / "cut.tar", cut);
  EXPECT_EQ(run_shell("tar -tf " + shell_quoted(tmp / "cut.tar")).exit_code, 0);
  const std::string python = "python3 -c 'import sys, tarfile; t = tarfile.open(sys.argv[1]); "
                             "[t.extractfile(m).read() for m in t]; print(len(t.getmembers()))' ";
  auto cut_py = run_shell(python + shell_quoted(tmp / "cut.tar"));
  EXPECT_EQ(cut_py.exit_code, 0) << cut_py.err;
  // So a failed run's stream stops with the entry's last byte and padding never written: the
  // header alone here, which both refuse.
  write_archive(tmp / "failed.tar", {{"a", "1"}}, false);
  EXPECT_EQ(read_bytes(tmp / "failed.tar"), cut.substr(0, 512));
  auto r = run_shell("tar -tf " + shell_quoted(tmp / "failed.tar"));
  EXPECT_NE(r.exit_code, 0) << r.out;
  auto failed = run_shell(python + shell_quoted(tmp / "failed.tar") + " 2>&1");
  EXPECT_NE(failed.exit_code, 0) << failed.out;
  EXPECT_NE(failed.out.find("ReadError"), std::string::npos) << failed.out;
}

// A disk with `room` bytes left: a write that passes it is cut short there, as a regular file's
// is, and the next fails with ENOSPC.
class FullDiskIo final : public ForwardingIo {
public:
  explicit FullDiskIo(uint64_t room) : ForwardingIo(Io::system()), room_(room) {}
  ssize_t write(int fd, const void* buf, size_t count) override {
    if (room_ == 0) {
      errno = ENOSPC;
      return -1;
    }
    const ssize_t n = ForwardingIo::write(fd, buf, std::min<uint64_t>(count, room_));
    if (n > 0)
      room_ -= static_cast<uint64_t>(n);
    return n;
  }

private:
  uint64_t room_;
};

// Into a regular file, a write is taken in part: a full disk could stop the stream right after
// an entry's held last byte and padding, or inside the next header, where readers see a whole
// archive. Wherever the disk fills (each block boundary, each entry's last byte, one either
// side), the failed stream is refused by GNU tar and by Python's tarfile, and holds nothing but
// a prefix of what the run wrote.
TEST(TarTarget, AFileThatFillsAtAnEntrysEndIsCutBackInsideIt) {
  TempDir tmp;
  const std::vector<std::pair<std::string, std::string>> files = {
      {"a", std::string(600, 'a')}, {"d/b", "bbbbb"}, {"c", std::string(1024, 'c')}};
  write_archive(tmp / "whole.tar", files, true);
  const std::string whole = read_bytes(tmp / "whole.tar");
  std::set<uint64_t> rooms;
  for (uint64_t at = 0; at <= whole.size(); at += 512)
    rooms.insert({at, at + 1, at == 0 ? 0 : at - 1});
  for (uint64_t end : {512 + 600, 3 * 512 + 512 + 5, 5 * 512 + 512 + 1024}) // each data's end
    rooms.insert({end - 1, end, end + 1});
  const std::string python = "python3 -c 'import sys, tarfile; t = tarfile.open(sys.argv[1]); "
                             "[t.extractfile(m).read() for m in t]' ";
  for (uint64_t room : rooms) {
    if (room >= whole.size())
      continue;
    SCOPED_TRACE("room for " + std::to_string(room) + " of " + std::to_string(whole.size()) +
                 " bytes");
    const auto path = tmp / ("cut" + std::to_string(room) + ".tar");
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    FullDiskIo disk(room);
    TarTarget tar(disk, fd);
    Status s;
    for (const auto& [name, bytes] : files)
      if (s = tar.deliver(name, bytes); !s.ok())
        break;
    if (s.ok())
      s = tar.close();
    ASSERT_FALSE(s.ok());
    tar.end_incomplete();
    ::close(fd);
    const std::string cut = read_bytes(path);
    EXPECT_EQ(cut, whole.substr(0, cut.size()));
    EXPECT_NE(run_shell("tar -tf " + shell_quoted(path) + " >/dev/null 2>&1").exit_code, 0);
    EXPECT_NE(run_shell(python + shell_quoted(path) + " 2>/dev/null").exit_code, 0);
  }
}

// Every prefix of the stream that went out before close() is refused by GNU tar, whatever the
// entries: files through a ShardWriter (their last byte held by it) or delivered whole, of sizes
// at and around 512-byte multiples, empty ones, directories and pax headers; after close() the
// archive is whole and its files are the bytes given.
TEST(TarTarget, NoPrefixBeforeTheEndIsAWholeArchive) {
  const uint64_t seed = test_seed();
  std::mt19937_64 rng(seed);
  TempDir tmp;
  const std::filesystem::path stream = tmp / "s.tar";
  const int fd = ::open(stream.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  TarTarget tar(Io::system(), fd);
  std::vector<std::pair<std::string, std::string>> files;
  const uint64_t sizes[] = {0, 1, 8, 511, 512, 513, 1023, 1024, 1536, 4095, 4096, 4097, 9000};
  auto tar_accepts = [&] {
    return run_shell("tar -tf " + shell_quoted(stream) + " >/dev/null 2>&1").exit_code == 0;
  };
  for (int i = 0; i < 14; ++i) {
    const uint64_t size = i == 1 ? 0 : sizes[rng() % std::size(sizes)]; // one empty file always
    std::string name = "f" + std::to_string(i);
    if (rng() % 3 == 0)
      name = "d" + std::to_string(i % 3) + "/sub/" + name;
    if (rng() % 5 == 0)
      name = std::string(120, 'n') + std::to_string(i); // a pax header
    std::string bytes(size, '\0');
    for (char& c : bytes)
      c = static_cast<char>(rng());
    if (i == 1 || ((size >= 8 || size == 0) && rng() % 2 == 0)) { // through a ShardWriter
      OutputFile f; // (an empty one: an empty side file, as the run streams side files)
      f.name = name;
      f.header = bytes.substr(0, std::min<size_t>(8, size));
      f.data_size = size - f.header.size();
      ShardWriter w;
      ASSERT_TRUE(tar.open(w, f).ok()) << "SHARDSHIFT_SEED=" << seed;
      const std::string data = bytes.substr(f.header.size());
      const size_t half = data.size() / 2;
      ASSERT_TRUE(w.append(std::as_bytes(std::span(data.data(), half))).ok());
      ASSERT_TRUE(w.append(std::as_bytes(std::span(data.data() + half, data.size() - half))).ok());
      ASSERT_TRUE(tar.finish(w, f).ok());
    } else {
      ASSERT_TRUE(tar.deliver(name, bytes).ok()) << "SHARDSHIFT_SEED=" << seed;
    }
    files.emplace_back(name, bytes);
    // An empty stream is no archive either: refused like every other prefix.
    EXPECT_FALSE(tar_accepts()) << "SHARDSHIFT_SEED=" << seed << ": after " << name << " (" << size
                                << " bytes), " << std::filesystem::file_size(stream)
                                << " bytes out";
  }
  ASSERT_TRUE(tar.close().ok());
  ::close(fd);
  ASSERT_TRUE(tar_accepts()) << "SHARDSHIFT_SEED=" << seed;
  std::filesystem::create_directory(tmp / "x");
  auto r = run_shell("tar -xf " + shell_quoted(stream) + " -C " + shell_quoted(tmp / "x"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const auto& [name, bytes] : files)
    EXPECT_EQ(read_bytes(tmp / "x" / name), bytes) << name << " SHARDSHIFT_SEED=" << seed;
}

// Entries of no bytes of their own (here 20 nested directories with names long enough for pax
// headers, 30 KB of headers) between a file's last byte and the next file's header are more than
// a pipe takes in one atomic write. Readers take a stream cut anywhere there for a whole archive
// (at an entry's end, or inside the header block after it), so none of it may go out in pieces:
// it waits for the pipe to empty, and a run stopped meanwhile writes none of it.
TEST(TarTarget, AChainOfHeadersWaitsForAnEmptyPipeAndIsNeverCutShort) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  ASSERT_EQ(::fcntl(p[1], F_SETPIPE_SZ, 65536), 65536);
  ASSERT_EQ(::fcntl(p[1], F_SETFL, O_NONBLOCK), 0); // as StreamDescriptor opens it
  std::atomic<bool> cancel{false};
  std::string deep;
  for (int i = 0; i < 20; ++i)
    deep += std::string(90, static_cast<char>('a' + i)) + "/";
  {
    TarTarget tar(Io::system(), p[1], &cancel);
    ASSERT_TRUE(tar.deliver("first", std::string(40000, 'x')).ok()); // the pipe: 40 KB of 64
    std::thread stop([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      cancel = true;
    });
    const Status s = tar.deliver(deep + "f", std::string(600, 'f'));
    stop.join();
    EXPECT_EQ(s.code(), Errc::interrupted) << s.message();
    tar.end_incomplete();
  }
  const std::string stream = drain(p);
  EXPECT_EQ(stream.size(), 512u + 40000 - 1) << "headers went out in pieces";
  TempDir tmp;
  write_bytes(tmp / "stopped.tar", stream);
  EXPECT_NE(run_shell("tar -tf " + shell_quoted(tmp / "stopped.tar")).exit_code, 0);
  // With a reader, the same entries go out whole.
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  ASSERT_EQ(::fcntl(p[1], F_SETFL, O_NONBLOCK), 0);
  std::string got;
  std::thread reader([&] {
    char buf[4096];
    for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;)
      got.append(buf, static_cast<size_t>(n));
  });
  {
    TarTarget tar(Io::system(), p[1], nullptr);
    ASSERT_TRUE(tar.deliver("first", std::string(40000, 'x')).ok());
    ASSERT_TRUE(tar.deliver(deep + "f", std::string(600, 'f')).ok());
    ASSERT_TRUE(tar.close().ok());
  }
  ::close(p[1]);
  reader.join();
  ::close(p[0]);
  write_bytes(tmp / "whole.tar", got);
  std::filesystem::create_directory(tmp / "x");
  auto r =
      run_shell("tar -xf " + shell_quoted(tmp / "whole.tar") + " -C " + shell_quoted(tmp / "x"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_bytes(tmp / "x" / (deep + "f")), std::string(600, 'f'));
}

// A run stopped while its reader has stopped reading, the pipe full: waiting for room would never
// end, and nothing can be written. The stream must still not end where an entry ends (a reader
// that reads on later would take it for a whole archive). Twice: stopped before the next entry,
// and stopped while the next entry waits for room.
TEST(TarTarget, StoppedWithAFullPipeStillEndsAsNoArchive) {
  for (bool stop_while_waiting : {false, true}) {
    SCOPED_TRACE(stop_while_waiting ? "stopped while the next entry waits" : "stopped first");
    TempDir tmp;
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    ASSERT_EQ(::fcntl(p[1], F_SETPIPE_SZ, 4096), 4096);
    ASSERT_EQ(::fcntl(p[1], F_SETFL, O_NONBLOCK), 0); // as StreamDescriptor opens it
    std::atomic<bool> cancel{false};
    {
      TarTarget tar(Io::system(), p[1], &cancel);
      // Header (512) and 3584 bytes, no padding: the entry would end where the pipe's one page
      // is full; its last byte is held.
      ASSERT_TRUE(tar.deliver("a", std::string(3584, 'a')).ok());
      int queued = 0;
      ASSERT_EQ(::ioctl(p[0], FIONREAD, &queued), 0);
      EXPECT_EQ(queued, 4095);
      std::thread stop;
      if (stop_while_waiting)
        stop = std::thread([&] {
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
          cancel = true;
        });
      else
        cancel = true;
      const Status s = tar.deliver("b", "b"); // the held byte and b's header: no room
      EXPECT_EQ(s.code(), Errc::interrupted) << s.message();
      if (stop.joinable())
        stop.join();
      tar.end_incomplete(); // writes nothing: the stream stays as it is
    }
    const std::string stream = drain(p);
    EXPECT_EQ(stream.size(), 4095u);
    write_bytes(tmp / "stopped.tar", stream);
    EXPECT_NE(run_shell("tar -tf " + shell_quoted(tmp / "stopped.tar")).exit_code, 0);
    // The control: with the held byte, ending at the boundary, it passes for an archive.
    write_bytes(tmp / "boundary.tar", stream + "a");
    EXPECT_EQ(run_shell("tar -tf " + shell_quoted(tmp / "boundary.tar")).exit_code, 0);
  }
}

} // namespace
} // namespace shardshift::testing
