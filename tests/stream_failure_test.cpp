// stream_failure_test.cpp: what a stream to stdout leaves behind when the conversion fails or is
// interrupted. A tar stream that failed inside an entry or between entries is refused by tar; the
// message of a failed or interrupted stream says how many bytes had gone out and that the reader
// must discard them; --only with a shard name from a
// plan of another shard count names the flag that differs. convert() writes to fd 1, which each
// test points at a file for the call.
#include "convert_harness.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fcntl.h>
#include <future>
#include <poll.h>
#include <thread>
#include <sys/socket.h>
#include <unistd.h>

namespace shardshift::testing {
namespace {

// Runs convert(o, cb) with stdout going to `path`.
Result<ConvertSummary> convert_to_file(const std::filesystem::path& path, const ConvertOptions& o,
                                       const ConvertCallbacks& cb = {}) {
  std::fflush(stdout);
  const int saved = ::dup(STDOUT_FILENO);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ::dup2(fd, STDOUT_FILENO);
  ::close(fd);
  auto r = convert(o, cb);
  ::dup2(saved, STDOUT_FILENO);
  ::close(saved);
  return r;
}

// Fails every write to stdout with EIO once `limit` bytes went out (a disk or a pipe that broke);
// with a cancel flag, sets it there instead (a Ctrl-C) and lets the writes go on.
class FailingStdout final : public ForwardingIo {
public:
  FailingStdout(uint64_t limit, std::atomic<bool>* cancel = nullptr)
      : ForwardingIo(Io::system()), limit_(limit), cancel_(cancel) {}
  ssize_t write(int fd, const void* buf, size_t count) override {
    if (fd != STDOUT_FILENO)
      return ForwardingIo::write(fd, buf, count);
    return pass(ForwardingIo::write(fd, buf, std::min<uint64_t>(count, room(count))));
  }
  ssize_t splice(int in, off_t* in_off, int out, off_t* out_off, size_t len) override {
    if (out != STDOUT_FILENO)
      return ForwardingIo::splice(in, in_off, out, out_off, len);
    return pass(ForwardingIo::splice(in, in_off, out, out_off, room(len)));
  }

private:
  // How much of `n` may still go; 0 means fail.
  uint64_t room(uint64_t n) {
    return cancel_ ? n : std::min<uint64_t>(n, limit_ - std::min(limit_, done_));
  }
  ssize_t pass(ssize_t n) {
    if (n > 0)
      done_ += static_cast<uint64_t>(n);
    if (done_ >= limit_ && cancel_)
      *cancel_ = true; // a Ctrl-C: the writes themselves go on
    if (n == 0 && !cancel_) {
      errno = EIO;
      return -1;
    }
    return n;
  }
  uint64_t limit_, done_ = 0;
  std::atomic<bool>* cancel_;
};

class StreamFailureTest : public ConvertTest {
protected:
  void SetUp() override {
    ConvertTest::SetUp();
    reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 4, 4, 64, 24), 2,
                                "diffusion_gemma");
    write_bytes(tmp / "hf" / "tokenizer.json", "{}");
  }
  // The names of the plan tar_options() makes.
  std::vector<std::string> planned_files() {
    PlanOptions po;
    po.max_shard_size = 40'000;
    auto plan = plan_conversion(tmp / "hf", po);
    EXPECT_TRUE(plan.ok());
    std::vector<std::string> names;
    for (const OutputFile& f : plan->files)
      names.push_back(f.name);
    return names;
  }
  // The size of the planned file `name`.
  uint64_t planned_size(const std::string& name) {
    PlanOptions po;
    po.max_shard_size = 40'000;
    auto plan = plan_conversion(tmp / "hf", po);
    EXPECT_TRUE(plan.ok());
    for (const OutputFile& f : plan->files)
      if (f.name == name)
        return f.size();
    ADD_FAILURE() << name << " is not planned";
    return 0;
  }
  ConvertOptions tar_options() {
    ConvertOptions o;
    o.input = tmp / "hf";
    o.output = "-";
    o.format = OutputFormat::tar;
    o.device = "cpu";
    o.max_memory = 1 << 20;
    o.plan.max_shard_size = 40'000;
    return o;
  }
  int tar_list(const std::filesystem::path& file) {
    return run_shell("tar -tf " + shell_quoted(file) + " > /dev/null").exit_code;
  }
};

// Touches every input shard at the first write to stdout: the input changes while it is read
// (as a rewrite in place at the same size would), which the run finds only once every byte of
// its file was produced.
class TouchInputAtFirstWrite final : public ForwardingIo {
public:
  explicit TouchInputAtFirstWrite(std::filesystem::path dir)
      : ForwardingIo(Io::system()), dir_(std::move(dir)) {}
  ssize_t write(int fd, const void* buf, size_t count) override {
    touch(fd);
    return ForwardingIo::write(fd, buf, count);
  }
  ssize_t splice(int in, off_t* in_off, int out, off_t* out_off, size_t len) override {
    touch(out);
    return ForwardingIo::splice(in, in_off, out, out_off, len);
  }

private:
  void touch(int fd) {
    if (fd != STDOUT_FILENO || touched_.exchange(true))
      return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20)); // a later modification time
    for (const auto& e : std::filesystem::directory_iterator(dir_))
      if (e.path().extension() == ".safetensors")
        ::utimensat(AT_FDCWD, e.path().c_str(), nullptr, 0);
  }
  std::filesystem::path dir_;
  std::atomic<bool> touched_{false};
};

// A single file streamed to stdout (--only) whose input changed while it was read fails, and what
// its reader got is shorter than the planned file: the file's last byte goes out only once the
// run has checked its input (before, the reader got every byte, a file of the planned size that
// a size check would take for whole).
TEST_F(StreamFailureTest, AnOnlyStreamWhoseInputChangedIsShorterThanTheFile) {
  ConvertOptions o = tar_options();
  o.format = OutputFormat::dir;
  o.only = planned_files().front();
  TouchInputAtFirstWrite io(tmp / "hf");
  o.io = &io;
  auto r = convert_to_file(tmp / "out", o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::file_changed) << r.status().message();
  EXPECT_EQ(read_bytes(tmp / "out").size(), planned_size(o.only) - 1);
}

TEST_F(StreamFailureTest, AWriteFailingInsideAShardLeavesAnArchiveTarRefuses) {
  ConvertOptions o = tar_options();
  FailingStdout io(30'000);
  o.io = &io;
  auto r = convert_to_file(tmp / "out.tar", o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(read_bytes(tmp / "out.tar").size(), 30'000u);
  EXPECT_NE(tar_list(tmp / "out.tar"), 0);
  // The message says, after the cause, that the reader got an incomplete archive.
  EXPECT_NE(r.status().message().find("\n30000 bytes had been written to stdout; what read them "
                                      "holds an incomplete archive"),
            std::string::npos)
      << r.status().message();
  // The control: the same conversion, whole, lists fine.
  ASSERT_TRUE(convert_to_file(tmp / "whole.tar", tar_options()).ok());
  EXPECT_EQ(tar_list(tmp / "whole.tar"), 0);
}

TEST_F(StreamFailureTest, AFailureBetweenEntriesStillLeavesNoArchive) {
  // The shards all go out; then the side file cannot be read (removed after planning). The
  // stream stops at an entry boundary, where GNU tar would take it for complete.
  ConvertCallbacks cb;
  cb.planned = [&](const Plan&) { std::filesystem::remove(tmp / "hf" / "tokenizer.json"); };
  auto r = convert_to_file(tmp / "out.tar", tar_options(), cb);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("tokenizer.json"), std::string::npos) << r.status().message();
  EXPECT_NE(tar_list(tmp / "out.tar"), 0);
  EXPECT_NE(r.status().message().find(std::to_string(read_bytes(tmp / "out.tar").size()) +
                                      " bytes had been written to stdout; what read them holds "
                                      "an incomplete archive (without its end-of-archive blocks) "
                                      "and must discard it"),
            std::string::npos)
      << r.status().message();
}

TEST_F(StreamFailureTest, AnInterruptedStreamSaysHowManyBytesWentOut) {
  for (bool tar : {true, false}) {
    std::atomic<bool> cancel{false};
    ConvertOptions o = tar_options();
    if (!tar) {
      o.format = OutputFormat::dir;
      o.only = planned_files().front();
    }
    FailingStdout io(20'000, &cancel);
    o.io = &io;
    o.cancel = &cancel;
    auto r = convert_to_file(tmp / "out", o);
    ASSERT_FALSE(r.ok()) << tar;
    EXPECT_EQ(r.status().code(), Errc::interrupted);
    const uint64_t went_out = read_bytes(tmp / "out").size();
    EXPECT_GE(went_out, 20'000u);
    EXPECT_NE(r.status().message().find("interrupted after " + std::to_string(went_out) +
                                        " bytes had been written to stdout"),
              std::string::npos)
        << r.status().message();
    if (tar)
      EXPECT_NE(tar_list(tmp / "out"), 0);
  }
}

// stdout is a pipe whose reader has stopped reading (an uploader stalled on its network), and the
// run is told to stop (a SIGTERM sent to shardshift alone: the reader gets none). The run must end
// at once, not when the reader reads again: a blocking write into the full pipe would wait for
// ever. A tar stream read afterwards is refused; a single file is cut short. The same with a
// socket for stdout (a program's child whose stdio are socket pairs), which has no description
// of its own to open: its own is non-blocking during the run and blocking again after it.
TEST_F(StreamFailureTest, AStoppedRunDoesNotWaitForAReaderThatStoppedReading) {
  for (auto [socket, tar] : {std::pair{false, true}, {false, false}, {true, true}, {true, false}}) {
    SCOPED_TRACE(std::string(socket ? "socket, " : "pipe, ") + (tar ? "tar" : "--only"));
    int p[2];
    if (socket) {
      ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p), 0);
      const int small = 4096;
      ASSERT_EQ(::setsockopt(p[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
      ASSERT_EQ(::setsockopt(p[0], SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
    } else {
      ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
      ASSERT_EQ(::fcntl(p[1], F_SETPIPE_SZ, 4096), 4096);
    }
    std::atomic<bool> cancel{false};
    ConvertOptions o = tar_options();
    if (!tar) {
      o.format = OutputFormat::dir;
      o.only = planned_files().front();
    }
    o.cancel = &cancel;
    std::fflush(stdout);
    const int saved = ::dup(STDOUT_FILENO);
    ::dup2(p[1], STDOUT_FILENO);
    ::close(p[1]);
    auto run = std::async(std::launch::async, [&] { return convert(o); });
    // Wait until the pipe is full (the run is then stuck on its reader), then stop the run.
    for (pollfd out{STDOUT_FILENO, POLLOUT, 0};
         ::poll(&out, 1, 0) != 0 &&
         run.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready;) {
    }
    EXPECT_NE(run.wait_for(std::chrono::milliseconds(0)), std::future_status::ready)
        << "the run ended before the pipe was full";
    cancel = true;
    // Not a timing: a run that waits for its reader never ends on its own. After a generous
    // wait the test reads, so that such a run ends and the failure is reported, not a hang.
    const bool ended = run.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
    EXPECT_TRUE(ended) << "the stopped run waited for its stalled reader";
    std::string stream;
    char buf[4096];
    for (pollfd in{p[0], POLLIN, 0};
         !ended && run.wait_for(std::chrono::milliseconds(0)) != std::future_status::ready;)
      if (::poll(&in, 1, 20) > 0)
        if (ssize_t n = ::read(p[0], buf, sizeof buf); n > 0)
          stream.append(buf, static_cast<size_t>(n));
    auto r = run.get();
    EXPECT_EQ(::fcntl(STDOUT_FILENO, F_GETFL) & O_NONBLOCK, 0) << "stdout left non-blocking";
    ::dup2(saved, STDOUT_FILENO);
    ::close(saved);
    for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;)
      stream.append(buf, static_cast<size_t>(n));
    ::close(p[0]);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Errc::interrupted) << r.status().message();
    write_bytes(tmp / "out", stream);
    if (tar)
      EXPECT_NE(tar_list(tmp / "out"), 0);
    else
      EXPECT_LT(stream.size(), planned_size(o.only));
  }
}

TEST_F(StreamFailureTest, OnlyANameFromAPlanOfAnotherShardCountNamesTheFlag) {
  ConvertOptions o = tar_options();
  o.format = OutputFormat::dir;
  const size_t count = planned_files().size();
  ASSERT_GE(count, 2u);
  o.only = "model-00002-of-0000" + std::to_string(count + 1) + ".safetensors";
  auto r = convert_to_file(tmp / "out", o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::invalid_argument);
  const std::string& m = r.status().message();
  // The shards counted as shards (the side files and the index are named apart).
  EXPECT_NE(m.find("not in this plan, which has " + std::to_string(count) + " shards"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("from a plan of " + std::to_string(count + 1) + " shards"), std::string::npos)
      << m;
  EXPECT_NE(m.find("--max-shard-size"), std::string::npos) << m;
  o.only = "tokenizer.jsn"; // any other name: no flag to blame
  auto other = convert_to_file(tmp / "out", o);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().message().find("--max-shard-size"), std::string::npos);
  EXPECT_NE(other.status().message().find("--only tokenizer.jsn: no such file in this plan"),
            std::string::npos)
      << other.status().message();
  EXPECT_EQ(read_bytes(tmp / "out"), "");
}

} // namespace
} // namespace shardshift::testing
