// memory_budget_e2e_test.cpp: the memory budget holds on every write path, measured as this
// process's own peak RSS (getrusage), so this program holds this one test only.
//
// The input (made by `shardshift synth` in another process, so it costs this one nothing) has a
// 369 MB embedding, one pass-through run ten times the budget, and a 320 MB side file. It is
// converted (1) with the kernel's copy refused, as across filesystems on many kernels, so every
// pass-through byte is written from the mapping; (1b) with every file filled through a shared
// mapping of it; (2) onto a tmpfs mounted for the test (another filesystem; skipped without the
// privilege to mount), written and filled; (3) to a pipe; (1c) with lanes helping with each
// other's files. Mapped input pages must be
// released chunk by chunk on every path, so the peak stays near the budget, far below the
// embedding's size.
#include "shardshift/convert.h"
#include "shardshift/io.h"

#include "test_support.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#if defined(__SANITIZE_ADDRESS__)
// Under AddressSanitizer, freed memory waits in a quarantine (256 MB by default) before it is
// reused, so each conversion of this test would add its buffers to the process's peak (139 MiB
// after five, against 80 MiB with this). A small quarantine keeps the peak the program's own.
extern "C" const char* __asan_default_options() {
  return "quarantine_size_mb=4";
}
#endif

namespace shardshift::testing {
namespace {

// The kernel refuses to copy between these descriptors: every copy falls back to writes.
class NoKernelCopy final : public ForwardingIo {
public:
  using ForwardingIo::ForwardingIo;
  ssize_t copy_file_range(int, off_t*, int, off_t*, size_t) override {
    errno = EXDEV;
    return -1;
  }
  ssize_t splice(int, off_t*, int, off_t*, size_t) override {
    errno = EINVAL;
    return -1;
  }
};

constexpr uint64_t BUDGET = uint64_t{32} << 20;
// The program, its libraries, the plan and the headers: measured at ~20 MB without CUDA; the
// margin leaves room for allocator slack but not for a run of input pages (369 MB).
constexpr uint64_t OVERHEAD = uint64_t{90} << 20;

Result<ConvertSummary> convert_with(const std::filesystem::path& in,
                                    const std::filesystem::path& out, Io* io) {
  ConvertOptions o;
  o.input = in;
  o.output = out;
  o.device = "cpu";
  o.threads = 2;
  o.max_memory = BUDGET;
  o.sync = false;
  o.io = io;
  return convert(o);
}

TEST(MemoryBudget, HoldsWhenCopiesFallBackAcrossFilesystemsAndToPipes) {
  TempDir tmp;
  auto made = run_shardshift("synth " + (tmp / "in").string() +
                             " --model diffusion_gemma --layers 1 --scale 2");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  // A side file ten times the budget in a subdirectory (like Meta's original/*.pth): copied as a
  // stream too. Sparse, so making it costs no disk; reading it maps real (zero) pages.
  std::filesystem::create_directory(tmp / "in" / "original");
  auto big = run_shell("truncate -s 320M " + shell_quoted(tmp / "in" / "original" / "big.pth"));
  ASSERT_EQ(big.exit_code, 0) << big.err;

  NoKernelCopy no_copy(Io::system());
  auto fallback = convert_with(tmp / "in", tmp / "fallback", &no_copy);
  ASSERT_TRUE(fallback.ok()) << fallback.status().message();
  EXPECT_EQ(fallback->zero_copy_bytes, 0u);
  EXPECT_GT(fallback->fallback_copy_bytes, uint64_t{369} << 20);
  std::filesystem::remove_all(tmp / "fallback");

  // Every file filled through a shared mapping of it (pipeline.h, fill_mode): the pages it makes
  // are dropped from the process as they are filled, so they do not pile up either.
  ::setenv("SHARDSHIFT_FILL", "mapped", 1);
  auto mapped = convert_with(tmp / "in", tmp / "mapped", nullptr);
  ::unsetenv("SHARDSHIFT_FILL");
  ASSERT_TRUE(mapped.ok()) << mapped.status().message();
  EXPECT_EQ(mapped->zero_copy_bytes, 0u);
  EXPECT_GT(mapped->fallback_copy_bytes, uint64_t{369} << 20);
  std::filesystem::remove_all(tmp / "mapped");

  std::filesystem::create_directory(tmp / "mnt");
  const bool mounted = ::mount("tmpfs", (tmp / "mnt").c_str(), "tmpfs", 0, "size=3g") == 0;
  if (mounted) {
    auto across = convert_with(tmp / "in", tmp / "mnt" / "out", nullptr);
    EXPECT_TRUE(across.ok()) << across.status().message();
    std::filesystem::remove_all(tmp / "mnt" / "out");
    ::setenv("SHARDSHIFT_FILL", "mapped", 1);
    auto across_mapped = convert_with(tmp / "in", tmp / "mnt" / "out", nullptr);
    ::unsetenv("SHARDSHIFT_FILL");
    EXPECT_TRUE(across_mapped.ok()) << across_mapped.status().message();
    ::umount((tmp / "mnt").c_str());
  } else {
    std::cout << "[ note ] cannot mount a tmpfs here (" << std::strerror(errno)
              << "): the cross-filesystem case is not run\n";
  }

  // A pipe: this process streams the one output file to a child that discards it.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::dup2(fds[0], 0);
    ::close(fds[1]);
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::execlp("cat", "cat", static_cast<char*>(nullptr));
    _exit(127);
  }
  ::close(fds[0]);
  const int saved_stdout = ::dup(1);
  ::dup2(fds[1], 1);
  ::close(fds[1]);
  auto piped = convert_with(tmp / "in", "-", &no_copy);
  ::dup2(saved_stdout, 1);
  ::close(saved_stdout);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(piped.ok()) << piped.status().message();

  const uint64_t peak = peak_rss_bytes();
  std::cout << "[ peak ] " << (peak >> 20) << " MiB with a " << (BUDGET >> 20) << " MiB budget\n";
  EXPECT_LT(peak, BUDGET + OVERHEAD) << "peak RSS " << peak;

#if !defined(__SANITIZE_ADDRESS__)
  // Lanes helping with one file (emitter.h): output in 600 MB files, filled through their
  // mappings by 16 threads, so a lane out of files takes the next items of another's. Its own
  // input, with experts of real size (3 layers of 32): each is larger than a chunk and cut into
  // column chunks whose input the last one releases. On another lane an earlier chunk could
  // still be reading it, fault the pages back in and keep them (release_order.h): this held
  // 192-217 MB of input at this budget, where a 400 MB file held 91-161 MB.
  made = run_shardshift("synth " + (tmp / "experts").string() +
                        " --layers 3 --scale-experts 4 --scale-vocab 16 -q");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  ::setenv("SHARDSHIFT_FILL", "mapped", 1);
  ConvertOptions lanes;
  lanes.input = tmp / "experts";
  lanes.output = tmp / "lanes";
  lanes.device = "cpu";
  lanes.threads = 16;
  lanes.max_memory = BUDGET;
  lanes.sync = false;
  lanes.plan.max_shard_size = 600'000'000;
  // Which lane cuts the last chunk of an expert is a race: the leak showed in about half of
  // the runs, so three.
  for (int run = 0; run < 3; ++run) {
    auto helped = convert(lanes);
    ASSERT_TRUE(helped.ok()) << helped.status().message();
    EXPECT_TRUE(helped->filled_by_threads);
    std::cout << "[ lanes ] " << helped->writers << " lanes, " << (helped->helped_bytes >> 20)
              << " MiB written by lanes helping with another's file; peak so far "
              << (peak_rss_bytes() >> 20) << " MiB\n";
    std::filesystem::remove_all(tmp / "lanes");
  }
  ::unsetenv("SHARDSHIFT_FILL");
  std::filesystem::remove_all(tmp / "experts");
  // Before, 185-217 MiB in the runs that met the race (and 581 MB on a larger input).
  const uint64_t lanes_peak = peak_rss_bytes();
  EXPECT_LT(lanes_peak, BUDGET + OVERHEAD) << "peak RSS " << lanes_peak;
#else
  // Under AddressSanitizer its own allocator caches and shadow memory for many threads stand
  // beside the budget (131 MiB here): the release build's run of this test counts for the
  // lanes case.
  std::cout << "[ note ] AddressSanitizer: the lanes case runs in the release build only\n";
#endif
}

} // namespace
} // namespace shardshift::testing
