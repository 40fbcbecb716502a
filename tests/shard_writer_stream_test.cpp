// shard_writer_stream_test.cpp: writing a shard to a pipe (broken pipe, splice and its
// fallback), and the small files written whole: the index, write_file_atomic, temp-file cleanup
// and directory sync.
#include "shard_writer_support.h"
#include "test_support.h"

#include <atomic>
#include <fcntl.h>
#include <map>
#include <random>
#include <signal.h>
#include <sys/ioctl.h>
#include <thread>
#include <unistd.h>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using namespace writer_test;

// ---------------------------------------------------------------------------------------------
// Streams

class IgnoreSigpipe {
public:
  IgnoreSigpipe() { old_ = ::signal(SIGPIPE, SIG_IGN); }
  ~IgnoreSigpipe() { ::signal(SIGPIPE, old_); }

private:
  sighandler_t old_;
};

TEST(ShardWriterStream, BrokenPipe) {
  IgnoreSigpipe ignore; // as the app does
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  ::close(fds[0]); // the reader is gone before anything is written
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {10}}}, {});
  ASSERT_TRUE(header.ok());
  ShardWriter writer;
  Status s = writer.open_stream(fds[1], "<stdout>", header.value(), 10);
  EXPECT_EQ(s.code(), Errc::broken_pipe);
  EXPECT_EQ(s.message(), "<stdout>: the reader of the output pipe went away after 0 bytes");
  EXPECT_EQ(writer.append(as_span(std::string(10, 'z'))).code(), Errc::broken_pipe);
  ::close(fds[1]);
}

// Writes a shard to a pipe with `io` while a thread drains it; returns the bytes that came out.
std::string stream_through_pipe(Io& io, const std::string& header, const std::string& payload,
                                int copy_fd, Status* status, bool* zero_copy) {
  int fds[2];
  EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  std::string received;
  std::thread reader([&] {
    char buf[65536];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0)
      received.append(buf, static_cast<size_t>(n));
  });
  ShardWriter writer(io);
  *status = writer.open_stream(fds[1], "<pipe>", header, payload.size());
  if (status->ok())
    *status = writer.append_copy(copy_fd, 0, payload.size(), as_span(payload), zero_copy);
  if (status->ok())
    *status = writer.finish();
  ::close(fds[1]);
  reader.join();
  ::close(fds[0]);
  return received;
}

TEST(ShardWriterStream, SpliceAndFallbackToAPipe) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  const std::string payload = testing::random_bytes(rng, 1'000'000);
  testing::write_bytes(dir / "payload.bin", payload);
  int in = ::open((dir / "payload.bin").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(in, 0);
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {payload.size()}}}, {});
  ASSERT_TRUE(header.ok());

  for (int refuse : {0, EINVAL}) {
    SCOPED_TRACE(refuse);
    FaultIo io;
    io.copy_errno = refuse;
    Status s;
    bool zero_copy = false;
    std::string out = stream_through_pipe(io, header.value(), payload, in, &s, &zero_copy);
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_EQ(zero_copy, refuse == 0);
    EXPECT_EQ(out, header.value() + payload);
    auto parsed = parse_header("<pipe>", as_span(out));
    EXPECT_TRUE(parsed.ok()) << parsed.status().message();
  }
  ::close(in);
}

// Spliced bytes are the source's pages until the reader reads them: a source rewritten after the
// final check would still change what the reader gets. With a final check, a stream's last pipeful
// goes out as copies, so when finish() asks the check no spliced page is left in the pipe, and
// finish() never waits for the reader (one that reads only after the run ends would wait for
// ever). The reader stops a pipeful before the end; the source is then rewritten; the bytes it
// reads after are the ones the check vouched for. Without a check every byte is spliced, and
// the same rewrite shows through (the control).
TEST(ShardWriterStream, AStreamsLastPipefulIsCopiedSoTheCheckVouchesForWhatIsRead) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  const std::string payload = testing::random_bytes(rng, 1 << 20);
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {payload.size()}}}, {});
  ASSERT_TRUE(header.ok());
  const std::string expected = header.value() + payload;
  for (const bool checked : {true, false}) {
    SCOPED_TRACE(checked ? "with a final check" : "without (every byte spliced)");
    testing::write_bytes(dir / "payload.bin", payload);
    const int in = ::open((dir / "payload.bin").c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(in, 0);
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    const size_t pipeful = static_cast<size_t>(::fcntl(fds[1], F_GETPIPE_SZ));
    std::atomic<bool> go_on{false};
    std::string received;
    std::thread reader([&] {
      char buf[65536];
      for (ssize_t n; received.size() < expected.size(); received.append(buf, n)) {
        const size_t stop = expected.size() - pipeful;
        while (received.size() >= stop && !go_on.load())
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        const size_t want =
            received.size() < stop ? std::min(sizeof buf, stop - received.size()) : sizeof buf;
        if ((n = ::read(fds[0], buf, want)) <= 0)
          break;
      }
    });
    ShardWriter writer;
    int checks = 0;
    if (checked)
      writer.set_final_check([&] {
        ++checks;
        return Status();
      });
    ASSERT_TRUE(writer.open_stream(fds[1], "<pipe>", header.value(), payload.size()).ok());
    bool zero_copy = false;
    ASSERT_TRUE(writer.append_copy(in, 0, payload.size(), as_span(payload), &zero_copy).ok());
    EXPECT_EQ(zero_copy, !checked); // with a check, all but the last pipeful spliced
    ASSERT_TRUE(writer.finish().ok());
    EXPECT_EQ(checks, checked ? 1 : 0);
    const std::string zeros(payload.size(), '\0'); // a rewrite in place, the reader a pipeful short
    ASSERT_EQ(::pwrite(in, zeros.data(), zeros.size(), 0), static_cast<ssize_t>(zeros.size()));
    go_on = true;
    reader.join();
    ::close(fds[0]);
    ::close(fds[1]);
    ::close(in);
    ASSERT_EQ(received.size(), expected.size());
    if (checked)
      EXPECT_TRUE(received == expected)
          << "the reader got bytes written after the check, from byte "
          << std::mismatch(received.begin(), received.end(), expected.begin()).first -
                 received.begin()
          << " of " << expected.size() << " (a pipeful: " << pipeful << ")";
    else
      EXPECT_FALSE(received == expected) << "control: spliced pages show the rewrite";
  }
}

// The copies fill the pipe as it was when they were planned; either end may enlarge the pipe
// later, and then spliced pages can still sit before them. finish() then waits until the reader
// has read past the last spliced byte before asking its check. Here 32 KiB are spliced, the pipe
// grows to 1 MiB, the rest (480 KiB, inside the new last pipeful) goes as copies, and the reader
// starts late.
TEST(ShardWriterStream, APipeEnlargedAfterTheSplicesIsReadPastThemBeforeTheCheck) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  const std::string payload = testing::random_bytes(rng, 512 * 1024);
  testing::write_bytes(dir / "payload.bin", payload);
  const int in = ::open((dir / "payload.bin").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(in, 0);
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {payload.size()}}}, {});
  ASSERT_TRUE(header.ok());
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  ShardWriter writer;
  int unread_at_check = -1;
  writer.set_final_check([&] {
    EXPECT_EQ(::ioctl(fds[1], FIONREAD, &unread_at_check), 0);
    return Status();
  });
  ASSERT_TRUE(writer.open_stream(fds[1], "<pipe>", header.value(), payload.size()).ok());
  const size_t first = 32 * 1024;
  bool zero_copy = false;
  ASSERT_TRUE(writer.append_copy(in, 0, first, as_span(payload).first(first), &zero_copy).ok());
  EXPECT_TRUE(zero_copy); // far from the end: spliced
  ASSERT_GE(::fcntl(fds[1], F_SETPIPE_SZ, 1 << 20), 1 << 20);
  const size_t rest = payload.size() - first;
  ASSERT_TRUE(
      writer.append_copy(in, first, rest, as_span(payload).subspan(first), &zero_copy).ok());
  EXPECT_FALSE(zero_copy); // within the last pipeful: copies
  std::string received;
  std::thread reader([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    char buf[65536];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;)
      received.append(buf, static_cast<size_t>(n));
  });
  ASSERT_TRUE(writer.finish().ok());
  ::close(fds[1]);
  reader.join();
  ::close(fds[0]);
  ::close(in);
  EXPECT_GE(unread_at_check, 0);
  EXPECT_LE(static_cast<size_t>(unread_at_check), rest) << "a spliced page was left at the check";
  EXPECT_TRUE(received == header.value() + payload);
}

TEST(ShardWriterStream, FinishChecksTheCount) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {4}}}, {});
  ASSERT_TRUE(header.ok());
  ShardWriter writer;
  ASSERT_TRUE(writer.open_stream(fds[1], "<pipe>", header.value(), 4).ok());
  ASSERT_TRUE(writer.append(as_span(std::string(3, 'z'))).ok());
  EXPECT_EQ(writer.finish().code(), Errc::io);
  // The descriptor belongs to the caller: still open.
  EXPECT_EQ(::write(fds[1], "x", 1), 1);
  ::close(fds[0]);
  ::close(fds[1]);
}

// ---------------------------------------------------------------------------------------------
// Index and small files

TEST(WriteIndex, MatchesPythonJsonDumps) {
  TempDir dir;
  std::map<std::string, std::string> weight_map = {
      {"model.layers.1.w", "model-00002-of-00002.safetensors"},
      {"lm_head.weight", "model-00001-of-00002.safetensors"},
      {"model.layers.0.w", "model-00001-of-00002.safetensors"},
      {"quote\"back\\slash\ttab\x7f", "model-00001-of-00002.safetensors"},
      {"caf\xC3\xA9.\xF0\x9F\x98\x80", "model-00002-of-00002.safetensors"},
  };
  Status s = write_index(Io::system(), dir.path(), 123456789012, weight_map);
  ASSERT_TRUE(s.ok()) << s.message();
  // What json.dumps({"metadata": ..., "weight_map": ...}, indent=2, sort_keys=True) + "\n" gives.
  const std::string expected = R"({
  "metadata": {
    "total_size": 123456789012
  },
  "weight_map": {
    "caf\u00e9.\ud83d\ude00": "model-00002-of-00002.safetensors",
    "lm_head.weight": "model-00001-of-00002.safetensors",
    "model.layers.0.w": "model-00001-of-00002.safetensors",
    "model.layers.1.w": "model-00002-of-00002.safetensors",
    "quote\"back\\slash\ttab\u007f": "model-00001-of-00002.safetensors"
  }
}
)";
  EXPECT_EQ(read_bytes(dir / "model.safetensors.index.json"), expected);
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"model.safetensors.index.json"});
}

TEST(WriteIndex, EmptyWeightMap) {
  TempDir dir;
  ASSERT_TRUE(write_index(Io::system(), dir.path(), 0, {}).ok());
  EXPECT_EQ(read_bytes(dir / "model.safetensors.index.json"),
            "{\n  \"metadata\": {\n    \"total_size\": 0\n  },\n  \"weight_map\": {}\n}\n");
}

TEST(WriteFileAtomic, WritesAndLeavesNoTemp) {
  TempDir dir;
  const std::string text = "{\"model_type\": \"x\"}\n";
  ASSERT_TRUE(write_file_atomic(Io::system(), dir / "config.json", as_span(text)).ok());
  EXPECT_EQ(read_bytes(dir / "config.json"), text);
  ASSERT_TRUE(write_file_atomic(Io::system(), dir / "empty", {}).ok());
  EXPECT_EQ(read_bytes(dir / "empty"), "");
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"config.json", "empty"}));

  FaultIo full;
  full.fallocate_errno = EOPNOTSUPP;
  full.space_left = 3;
  Status s = write_file_atomic(full, dir / "config.json", as_span(std::string("replacement")));
  EXPECT_EQ(s.code(), Errc::no_space);
  EXPECT_EQ(read_bytes(dir / "config.json"), text) << "the old file survives a failed write";
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"config.json", "empty"}));
}

TEST(RemoveTempFiles, RemovesOnlyOurs) {
  TempDir dir;
  for (const char* name : {".model.safetensors.shardshift-tmp-12-abcdef", ".x.shardshift-tmp",
                           "model.safetensors", ".hidden", "shardshift-tmp-visible"})
    testing::write_bytes(dir / name, "x");
  remove_temp_files(Io::system(), dir.path());
  EXPECT_EQ(list_dir(dir.path()),
            (std::vector<std::string>{".hidden", "model.safetensors", "shardshift-tmp-visible"}));
}

TEST(SyncDirectory, ReportsAMissingDirectory) {
  TempDir dir;
  EXPECT_TRUE(sync_directory(Io::system(), dir.path()).ok());
  Status s = sync_directory(Io::system(), dir / "missing");
  EXPECT_EQ(s.code(), Errc::io);
  EXPECT_NE(s.message().find("missing"), std::string::npos);
}

} // namespace
} // namespace shardshift
