// driver_files.cpp: see driver_files.h.
#include "driver_files.h"

#include <algorithm>
#include <cstdlib>
#include <dirent.h>
#include <fcntl.h>
#include <string>
#include <unistd.h>
#include <vector>

namespace shardshift {

namespace {

// The path the descriptor's file had when opened, or "" when it has none (or is closed).
std::string path_of(int fd) {
  char target[4096];
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
  return n > 0 ? std::string(target, static_cast<size_t>(n)) : std::string();
}

bool under(const std::string& path, std::initializer_list<std::string_view> prefixes) {
  for (std::string_view prefix : prefixes)
    if (!path.empty() && path.starts_with(prefix))
      return true;
  return false;
}

} // namespace

std::vector<int> files_under(std::initializer_list<std::string_view> prefixes) {
  std::vector<int> found;
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir)
    return found;
  while (const dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (*end != '\0' || end == entry->d_name || fd <= 2 || fd == ::dirfd(dir))
      continue;
    if (under(path_of(static_cast<int>(fd)), prefixes))
      found.push_back(static_cast<int>(fd));
  }
  ::closedir(dir);
  return found;
}

unsigned release_files_under(std::initializer_list<std::string_view> prefixes,
                             std::span<const int> keep) {
  std::vector<int> matched = files_under(prefixes);
  std::erase_if(matched,
                [&](int fd) { return std::find(keep.begin(), keep.end(), fd) != keep.end(); });
  if (matched.empty())
    return 0;
  const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0)
    return 0;
  unsigned replaced = 0;
  for (int fd : matched) {
    // Looked at again just before: a descriptor closed and its number reused since the listing
    // (the caller's driver is idle, so this is only a guard) is left alone.
    if (!under(path_of(fd), prefixes))
      continue;
    // Keeps the descriptor's close-on-exec flag: dup2 clears it, and the driver sets it.
    const int flags = ::fcntl(fd, F_GETFD);
    if (::dup2(null, fd) != fd)
      continue;
    if (flags > 0)
      ::fcntl(fd, F_SETFD, flags);
    ++replaced;
  }
  ::close(null);
  return replaced;
}

// The NVIDIA driver's device files, and WSL's GPU.
std::vector<int> gpu_driver_files() {
  return files_under({"/dev/nvidia", "/dev/dxg"});
}

const std::vector<int>& gpu_driver_files_before_cuda() {
  static const std::vector<int> before = gpu_driver_files();
  return before;
}

unsigned release_gpu_driver_files(std::span<const int> before) {
  return release_files_under({"/dev/nvidia", "/dev/dxg"}, before);
}

} // namespace shardshift
