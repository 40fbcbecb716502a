// discard.cpp: see discard.h. The detached process is a grandchild: the child forks it and exits
// at once, so this process reaps the child right away and the grandchild, orphaned, is reaped
// by init; no zombie is left for a library's caller to collect. Both are made with _Fork, which
// runs no atfork handlers (locks of other libraries taken by threads of this process stay out
// of it), and between the fork and _exit they make system calls only, which is all a child of
// a multithreaded process may do. The filesystem frees a file's blocks at its last close, so the
// grandchild must close after this process: it waits for the end of a pipe whose write end this
// process closes once its own copies are closed (or when it dies).
#include "discard.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <fcntl.h>
#include <mutex>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace shardshift {

namespace {

std::mutex g_mu;
std::vector<int> g_held; // descriptors of removed files, closed by release_discarded()

// Filesystems on which removing an open file is quick and leaves no trace: the name goes, the
// inode lives on as an orphan until its last close. NFS and SMB clients instead rename the file
// to a hidden name in the same directory until then (which would keep the staging directory
// from being removed), and FUSE filesystems may do the same; those are unlinked plainly.
bool unlinks_open_files_cleanly(int fd) {
  struct statfs fs {};
  if (::fstatfs(fd, &fs) != 0)
    return false;
  switch (static_cast<unsigned long>(fs.f_type)) {
  case 0xEF53:     // ext2, ext3, ext4
  case 0x58465342: // XFS
  case 0x9123683E: // btrfs
  case 0x01021994: // tmpfs
  case 0xF2F52010: // F2FS
  case 0x2FC12FC1: // ZFS
  case 0x0BD00BD0: // Lustre
  case 0x47504653: // GPFS (IBM Storage Scale)
    return true;
  default:
    return false;
  }
}

// Forking copies the page tables of the process's private memory: a few milliseconds for
// shardshift's own (its budget), but seconds and gigabytes of page tables for a host process
// with a large heap that calls the library. Above this much private resident memory, the files
// are closed here instead.
constexpr uint64_t MAX_FORKED_PRIVATE_BYTES = uint64_t{4} << 30;

bool small_enough_to_fork() {
  const int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  char text[128] = {};
  const ssize_t n = ::read(fd, text, sizeof(text) - 1);
  ::close(fd);
  unsigned long long size = 0, resident = 0, shared = 0;
  if (n <= 0 || std::sscanf(text, "%llu %llu %llu", &size, &resident, &shared) != 3)
    return false;
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  return (resident > shared ? resident - shared : 0) * page <= MAX_FORKED_PRIVATE_BYTES;
}

void hold(int fd) {
  std::lock_guard lock(g_mu);
  g_held.push_back(fd);
}

// Closes [first, last] (close_range(2); a loop of close(2) where the kernel lacks it).
void close_between(unsigned first, unsigned last) {
  if (first > last)
    return;
  if (::syscall(SYS_close_range, first, last, 0) == 0)
    return;
  for (unsigned fd = first; fd <= last && fd < 65536; ++fd)
    ::close(int(fd));
}

// The grandchild: closes every descriptor it inherited except `held` and `wait_fd` (appended
// within the capacity reserved before the fork: nothing is allocated after it), waits until this
// process has closed its own copies of `held` (end of file on `wait_fd`: the last close of a file
// is the one that frees its blocks, and it must be this one), then closes `held` and exits.
[[noreturn]] void close_and_exit(std::vector<int>& held, int wait_fd) {
  held.push_back(wait_fd);
  std::sort(held.begin(), held.end());
  unsigned next = 0;
  for (int fd : held) {
    if (unsigned(fd) > next)
      close_between(next, unsigned(fd) - 1);
    next = unsigned(fd) + 1;
  }
  close_between(next, UINT_MAX);
  for (char byte;;) {
    const ssize_t n = ::read(wait_fd, &byte, 1);
    if (n == 0 || (n < 0 && errno != EINTR))
      break;
  }
  for (int fd : held)
    ::close(fd); // the slow part: the filesystem frees the blocks here
  ::_exit(0);
}

} // namespace

int discard_file(Io& io, const std::filesystem::path& path) {
  const int fd = io.open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0);
  if (fd < 0) // a symlink, a file we cannot read, or none: a plain unlink says which
    return io.unlink(path.c_str());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      uint64_t(st.st_blocks) * 512 < DISCARD_MIN_BYTES) {
    io.close(fd);
    return io.unlink(path.c_str());
  }
  return discard_open_file(io, fd, path); // which checks the filesystem
}

int discard_open_file(Io& io, int fd, const std::filesystem::path& path) {
  if (!unlinks_open_files_cleanly(fd)) {
    io.close(fd);
    return io.unlink(path.c_str());
  }
  if (io.unlink(path.c_str()) != 0) {
    const int err = errno;
    io.close(fd);
    errno = err;
    return -1;
  }
  hold(fd);
  return 0;
}

void release_discarded() {
  std::vector<int> held;
  {
    std::lock_guard lock(g_mu);
    held.swap(g_held);
  }
  if (held.empty())
    return;
  held.reserve(held.size() + 1); // the grandchild appends one without allocating (no malloc there)
  // The grandchild reads `done` until this process closes its write end.
  int done[2] = {-1, -1};
  const pid_t child =
      small_enough_to_fork() && ::pipe2(done, O_CLOEXEC) == 0 ? ::_Fork() : -1;
  if (child == 0) {
    const pid_t grandchild = ::_Fork();
    if (grandchild == 0)
      close_and_exit(held, done[0]); // its copy of the write end is closed there too
    ::_exit(grandchild > 0 ? 0 : 1);
  }
  if (child > 0) {
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
  }
  // Quick when the grandchild holds the files too; otherwise this is where their space is freed.
  for (int fd : held)
    ::close(fd);
  for (int fd : done)
    if (fd >= 0)
      ::close(fd); // the grandchild now closes the files, as their last holder
}

} // namespace shardshift
