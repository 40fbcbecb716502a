// stream_fd.cpp: a non-blocking description of stdout's pipe, and waits on it that a cancel ends.
#include "stream_fd.h"

#include <algorithm>
#include <cerrno>
#include <fcntl.h>
#include <poll.h>
#include <string>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace shardshift {

namespace {
constexpr int POLL_MS = 50;
} // namespace

StreamDescriptor::StreamDescriptor(int fd) : fd_(fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
    return;
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || (flags & O_ACCMODE) == O_RDONLY || (flags & O_NONBLOCK))
    return;
  if (S_ISFIFO(st.st_mode)) {
    // Opening a pipe's /proc/self/fd entry opens the pipe itself, as a FIFO's name would: a new
    // description, with flags of its own. Without a reader it fails (ENXIO), and the writes
    // that follow on `fd` report the broken pipe as before.
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    own_ = ::open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (own_ >= 0 || errno == ENXIO)
      return;
  }
  // No description of its own (EACCES: a pipe of another user; a socket): this one, for the run.
  if (::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0)
    restore_flags_ = flags;
}

StreamDescriptor::~StreamDescriptor() {
  if (own_ >= 0)
    ::close(own_);
  if (restore_flags_ >= 0)
    ::fcntl(fd_, F_SETFL, restore_flags_);
}

bool wait_writable(int fd, const std::atomic<bool>* cancel) {
  for (;;) {
    if (cancel && cancel->load(std::memory_order_relaxed))
      return false;
    pollfd p{fd, POLLOUT, 0};
    const int n = ::poll(&p, 1, POLL_MS);
    // Ready, or an error (POLLERR: no reader) that the next write reports with its errno.
    if (n > 0 || (n < 0 && errno != EINTR))
      return !(cancel && cancel->load(std::memory_order_relaxed));
  }
}

void wait_unread_at_most(int fd, uint64_t bytes, const std::atomic<bool>* cancel) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode))
    return;
  for (int wait_ms = 1;; wait_ms = std::min(2 * wait_ms, POLL_MS)) {
    int unread = 0;
    if (::ioctl(fd, FIONREAD, &unread) != 0 || static_cast<uint64_t>(std::max(unread, 0)) <= bytes)
      return;
    if (cancel && cancel->load(std::memory_order_relaxed))
      return;
    pollfd p{fd, 0, 0}; // no event asked: a sleep that POLLERR (no reader left) ends early
    if (::poll(&p, 1, wait_ms) > 0 && (p.revents & POLLERR))
      return;
  }
}

} // namespace shardshift
