// input_changed_test.cpp: an input shard truncated by another process while its bytes are being
// copied is reported against that input file, as "file changed while reading" (issue 12, defect
// 6: it used to be "write failed: Bad address" or "input ended" against the output file), on each
// pass-through path: copy_file_range, the pwrite fallback from the mapping, splice to a pipe.
// Nothing is left under OUT. An input rewritten in place at the same size (no page vanishes, so
// no SIGBUS) fails the run the same way, before OUT is committed or the index delivered.
#include "convert_harness.h"

#include <climits>
#include <fcntl.h>
#include <map>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

namespace shardshift::testing {
namespace {

// Truncates the source file of the first zero-copy call to a few bytes, as a process rewriting
// the checkpoint would, then lets the call go through (`refuse` = false) or refuses it the way a
// kernel refuses a cross-filesystem copy, so the bytes come from the mapping instead.
class TruncateSourceOnFirstCopy final : public ForwardingIo {
public:
  explicit TruncateSourceOnFirstCopy(bool refuse) : ForwardingIo(Io::system()), refuse_(refuse) {}
  ssize_t copy_file_range(int in, off_t* in_off, int out, off_t* out_off, size_t len) override {
    if (truncate_source(in) && refuse_) {
      errno = EXDEV;
      return -1;
    }
    return ForwardingIo::copy_file_range(in, in_off, out, out_off, len);
  }
  ssize_t splice(int in, off_t* in_off, int out, off_t* out_off, size_t len) override {
    truncate_source(in);
    return ForwardingIo::splice(in, in_off, out, out_off, len);
  }
  const std::string& truncated() const { return truncated_; }

private:
  bool truncate_source(int fd) {
    if (!truncated_.empty())
      return false;
    char path[PATH_MAX] = {};
    const std::string link = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t n = ::readlink(link.c_str(), path, sizeof path - 1);
    if (n <= 0 || ::truncate(path, 16) != 0)
      return false;
    truncated_ = path;
    return true;
  }
  bool refuse_;
  std::string truncated_;
};

TEST_F(ConvertTest, AnInputTruncatedWhileCopiedIsNamedAsTheFileThatChanged) {
  struct Case {
    const char* path;
    bool refuse, pipe;
  };
  for (const Case& c :
       {Case{"copy_file_range", false, false}, Case{"pwrite from the mapping", true, false},
        Case{"splice", false, true}}) {
    SCOPED_TRACE(c.path);
    std::filesystem::remove_all(tmp / "hf");
    reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 2, 4, 64, 24), 2,
                                "diffusion_gemma");
    TruncateSourceOnFirstCopy io(c.refuse);
    auto r = run(tmp / "hf", c.pipe ? "" : tmp / "out", opts([&](ConvertOptions& o) {
                   o.io = &io;
                   o.writers = 1;
                   if (c.pipe)
                     o.pipe_to = "cat > /dev/null";
                 }));
    ASSERT_FALSE(io.truncated().empty()) << "no pass-through copy was made";
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Errc::file_changed) << r.status().message();
    const std::string& m = r.status().message();
    EXPECT_NE(m.find(io.truncated() + ": file changed while reading"), std::string::npos) << m;
    EXPECT_EQ(m.find("Bad address"), std::string::npos) << m;
    EXPECT_EQ(m.find("input ended"), std::string::npos) << m;
    EXPECT_FALSE(std::filesystem::exists(tmp / "out"));
  }
}

// Rewrites one byte of the source of the first zero-copy call in place, as a process writing the
// checkpoint again would (the file keeps its size), then lets the call go through. `only`: the
// first call whose source's path ends so.
class RewriteSourceOnFirstCopy final : public ForwardingIo {
public:
  /// `bytes` = false: change the file's metadata only (chmod, a hard link, its access time),
  /// which moves its change time and leaves every byte and its modification time alone.
  explicit RewriteSourceOnFirstCopy(bool bytes = true, std::string only = "")
      : ForwardingIo(Io::system()), bytes_(bytes), only_(std::move(only)) {}
  ssize_t copy_file_range(int in, off_t* in_off, int out, off_t* out_off, size_t len) override {
    rewrite_source(in, in_off ? *in_off : 0);
    return ForwardingIo::copy_file_range(in, in_off, out, out_off, len);
  }
  ssize_t splice(int in, off_t* in_off, int out, off_t* out_off, size_t len) override {
    rewrite_source(in, in_off ? *in_off : 0);
    return ForwardingIo::splice(in, in_off, out, out_off, len);
  }
  const std::string& rewritten() const { return rewritten_; }

private:
  void rewrite_source(int fd, off_t at) {
    if (!rewritten_.empty())
      return;
    char path[PATH_MAX] = {};
    const std::string link = "/proc/self/fd/" + std::to_string(fd);
    if (::readlink(link.c_str(), path, sizeof path - 1) <= 0 ||
        !std::string_view(path).ends_with(only_))
      return;
    // File times move with the kernel's clock tick (a few ms): let one pass since the test wrote
    // the file, so the rewrite shows in them as any later one would.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!bytes_) {
      const std::string link = std::string(path) + ".link";
      const timespec times[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
      if (::chmod(path, 0640) == 0 && ::link(path, link.c_str()) == 0 &&
          ::unlink(link.c_str()) == 0 && ::utimensat(AT_FDCWD, path, times, 0) == 0)
        rewritten_ = path;
      return;
    }
    const int w = ::open(path, O_WRONLY | O_CLOEXEC);
    char byte = 0;
    if (w < 0 || ::pread(fd, &byte, 1, at) != 1 || (byte ^= 0x5a, ::pwrite(w, &byte, 1, at)) != 1) {
      if (w >= 0)
        ::close(w);
      return;
    }
    ::close(w);
    rewritten_ = path;
  }
  bool bytes_;
  std::string only_;
  std::string rewritten_;
};

TEST_F(ConvertTest, AnInputRewrittenInPlaceWhileReadFailsTheRun) {
  for (const bool pipe : {false, true}) {
    SCOPED_TRACE(pipe ? "--pipe-to" : "directory");
    std::filesystem::remove_all(tmp / "hf");
    reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 2, 4, 64, 24), 2,
                                "diffusion_gemma");
    std::map<std::string, uintmax_t> sizes;
    for (const auto& e : std::filesystem::directory_iterator(tmp / "hf"))
      sizes[e.path().string()] = e.file_size();
    RewriteSourceOnFirstCopy io;
    auto r = run(tmp / "hf", pipe ? "" : tmp / "out", opts([&](ConvertOptions& o) {
                   o.io = &io;
                   o.writers = 1;
                   if (pipe)
                     o.pipe_to = "cat > /dev/null";
                 }));
    ASSERT_FALSE(io.rewritten().empty()) << "no pass-through copy was made";
    EXPECT_EQ(std::filesystem::file_size(io.rewritten()), sizes[io.rewritten()]);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Errc::file_changed) << r.status().message();
    EXPECT_NE(r.status().message().find(io.rewritten() +
                                        ": file changed while reading (it was written to after "
                                        "it was opened"),
              std::string::npos)
        << r.status().message();
    EXPECT_FALSE(std::filesystem::exists(tmp / "out"));
  }
}

// --pipe-to commits each file as its command ends: the check comes before each commit, not only
// at the run's end, so that no file holding bytes of both versions is delivered; nor a side file
// rewritten while it streams.
TEST_F(ConvertTest, NoFileOfAnInputRewrittenWhileItStreamsIsDelivered) {
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 2, 4, 64, 24), 2,
                              "diffusion_gemma");
  RewriteSourceOnFirstCopy io;
  ConvertOptions o;
  o.input = tmp / "hf";
  o.device = "cpu";
  o.io = &io;
  o.writers = 1;
  o.pipe_to = "cat > /dev/null";
  std::vector<FileDelivery> deliveries;
  ConvertCallbacks cb;
  cb.delivered = [&](const std::vector<FileDelivery>& d) { deliveries = d; };
  auto r = convert(o, cb);
  ASSERT_FALSE(io.rewritten().empty()) << "no pass-through copy was made";
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::file_changed) << r.status().message();
  ASSERT_FALSE(deliveries.empty());
  for (const FileDelivery& d : deliveries)
    EXPECT_NE(d.state, "delivered") << d.name;

  // A side file: the rewrite comes while it streams, after the shards were delivered.
  std::filesystem::remove_all(tmp / "hf");
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 2, 4, 64, 24), 1,
                              "diffusion_gemma");
  write_bytes(tmp / "hf" / "tokenizer.json", std::string(100'000, 't'));
  RewriteSourceOnFirstCopy side_io(/*bytes=*/true, "/tokenizer.json");
  o.io = &side_io;
  deliveries.clear();
  r = convert(o, cb);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("tokenizer.json: file changed while reading"),
            std::string::npos)
      << r.status().message() << " (rewritten: " << side_io.rewritten() << ")";
  for (const FileDelivery& d : deliveries)
    if (d.name == "tokenizer.json" || d.name == INDEX_FILE_NAME)
      EXPECT_NE(d.state, "delivered") << d.name;
}

// chmod, a new hard link or touch -a move the change time and no byte: no alarm.
TEST_F(ConvertTest, AnInputWhoseMetadataAloneChangesConvertsAsUsual) {
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 2, 4, 64, 24), 2,
                              "diffusion_gemma");
  RewriteSourceOnFirstCopy io(/*bytes=*/false);
  auto r = run(tmp / "hf", tmp / "out", opts([&](ConvertOptions& o) {
                 o.io = &io;
                 o.writers = 1;
               }));
  ASSERT_FALSE(io.rewritten().empty()) << "no pass-through copy was made";
  EXPECT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(std::filesystem::exists(tmp / "out"));
}

} // namespace
} // namespace shardshift::testing
