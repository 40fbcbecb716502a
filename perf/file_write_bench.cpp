// file_write_bench: how fast threads can fill ONE new output file, against one file each.
//
// A writer lane writes its file's bytes in order with pwrite, so a conversion whose output has a
// few large files ends with one lane writing alone (PERFORMANCE.md, "The last file written
// alone"). This measures the ways one file could be filled by several threads at once, on the
// filesystem of DIR (a tmpfs, a disk):
//
//   pwrite, files      each thread writes its own new file (today's lanes: the ceiling)
//   pwrite, one file   the threads write disjoint slices of one file (positioned writes)
//   mmap, one file     the file is mapped shared and the threads copy into disjoint slices
//   mmap+populate      the same, each slice first faulted in with MADV_POPULATE_WRITE
//
// Every file is fallocate'd first, as the writer does, and removed after each trial (not timed).
// Bytes per second of wall time, best of --reps trials.
//
// Usage: file_write_bench DIR [--gib N] [--chunk-mib N] [--threads "1 2 4 8"] [--reps N]
#include <sys/mman.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace {

enum class Way { pwrite_files, pwrite_one, mmap_one, mmap_populate };

const char* way_name(Way w) {
  switch (w) {
  case Way::pwrite_files:
    return "pwrite, a file each";
  case Way::pwrite_one:
    return "pwrite, one file";
  case Way::mmap_one:
    return "mmap, one file";
  case Way::mmap_populate:
    return "mmap+populate, one file";
  }
  return "?";
}

[[noreturn]] void die(const std::string& what) {
  std::perror(what.c_str());
  std::exit(1);
}

int create(const std::string& path, uint64_t bytes) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    die(path);
  if (::fallocate(fd, 0, 0, static_cast<off_t>(bytes)) != 0 && errno != EOPNOTSUPP)
    die("fallocate " + path);
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0)
    die("ftruncate " + path);
  return fd;
}

void write_all(int fd, const std::byte* src, uint64_t n, uint64_t offset) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, src, n, static_cast<off_t>(offset));
    if (w <= 0)
      die("pwrite");
    src += w, n -= static_cast<uint64_t>(w), offset += static_cast<uint64_t>(w);
  }
}

// One trial: `threads` threads fill `bytes` in `chunk`-byte pieces; returns seconds of wall time.
double trial(const std::string& dir, Way way, unsigned threads, uint64_t bytes, uint64_t chunk,
             const std::vector<std::vector<std::byte>>& sources) {
  std::vector<std::string> paths;
  std::vector<int> fds;
  const unsigned files = way == Way::pwrite_files ? threads : 1;
  const uint64_t per_file = way == Way::pwrite_files ? bytes / threads : bytes;
  for (unsigned f = 0; f < files; ++f) {
    paths.push_back(dir + "/file_write_bench." + std::to_string(f));
    fds.push_back(create(paths.back(), per_file));
  }
  std::byte* map = nullptr;
  const auto t0 = std::chrono::steady_clock::now();
  if (way == Way::mmap_one || way == Way::mmap_populate) {
    map = static_cast<std::byte*>(
        ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0));
    if (map == MAP_FAILED)
      die("mmap");
  }
  std::atomic<uint64_t> next{0}; // the shared file's next chunk, taken in turn
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      const std::byte* src = sources[t].data();
      if (way == Way::pwrite_files) {
        for (uint64_t off = 0; off < per_file; off += chunk)
          write_all(fds[t], src, std::min(chunk, per_file - off), off);
        return;
      }
      for (uint64_t off; (off = next.fetch_add(chunk)) < bytes;) {
        const uint64_t n = std::min(chunk, bytes - off);
        if (way == Way::pwrite_one) {
          write_all(fds[0], src, n, off);
          continue;
        }
        if (way == Way::mmap_populate && ::madvise(map + off, n, MADV_POPULATE_WRITE) != 0)
          die("madvise(MADV_POPULATE_WRITE)");
        std::memcpy(map + off, src, n);
      }
    });
  for (std::thread& t : pool)
    t.join();
  if (map && ::munmap(map, bytes) != 0)
    die("munmap");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (unsigned f = 0; f < files; ++f) {
    ::close(fds[f]);
    ::unlink(paths[f].c_str());
  }
  return seconds;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "usage: %s DIR [--gib N] [--chunk-mib N] [--threads \"1 2 4 8\"] "
                         "[--reps N]\n",
                 argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  double gib = 4;
  uint64_t chunk_mib = 32;
  std::string thread_list = "1 2 4 8";
  int reps = 3;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--gib")
      gib = std::atof(argv[i + 1]);
    else if (flag == "--chunk-mib")
      chunk_mib = std::strtoull(argv[i + 1], nullptr, 10);
    else if (flag == "--threads")
      thread_list = argv[i + 1];
    else if (flag == "--reps")
      reps = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  std::vector<unsigned> counts;
  std::istringstream list(thread_list);
  for (unsigned n; list >> n;)
    counts.push_back(std::max(1u, n));
  const uint64_t chunk = chunk_mib << 20;
  const uint64_t bytes = static_cast<uint64_t>(gib * (1ull << 30)) / chunk * chunk;
  const unsigned most = *std::max_element(counts.begin(), counts.end());
  std::vector<std::vector<std::byte>> sources(most, std::vector<std::byte>(chunk));
  for (unsigned t = 0; t < most; ++t) // distinct, touched source pages per thread
    std::memset(sources[t].data(), 0x3C + static_cast<int>(t), chunk);

  std::printf("file_write_bench: %s, %.2f GiB per trial, %llu MiB chunks, best of %d\n",
              dir.c_str(), static_cast<double>(bytes) / (1ull << 30),
              static_cast<unsigned long long>(chunk_mib), reps);
  std::printf("%-26s", "way \\ threads");
  for (unsigned n : counts)
    std::printf("%10u", n);
  std::printf("\n");
  for (Way way : {Way::pwrite_files, Way::pwrite_one, Way::mmap_one, Way::mmap_populate}) {
    std::printf("%-26s", way_name(way));
    for (unsigned n : counts) {
      double best = 1e30;
      for (int r = 0; r < reps; ++r)
        best = std::min(best, trial(dir, way, n, bytes, chunk, sources));
      std::printf("%8.2f  ", static_cast<double>(bytes) / best / 1e9);
      std::fflush(stdout);
    }
    std::printf(" GB/s\n");
  }
  return 0;
}
