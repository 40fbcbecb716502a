// stream_fd.h: writing to a stream (stdout, a pipe) in a way that a stopped run never waits on.
//
// A blocking write into a full pipe returns only once the reader has read. A reader that has
// stopped reading (an uploader stalled on its network, a pager at its prompt) would then keep a
// run that was told to stop (a SIGTERM sent to shardshift alone, which its reader does not get)
// waiting for ever. So a conversion to stdout, when stdout is a pipe, writes through a file
// description of its own of the same pipe, opened non-blocking (StreamDescriptor): the pipe's
// other users, its reader among them, keep their own mode. A full pipe makes a write or a splice
// return EAGAIN, and wait_writable() waits in short polls that see the cancel flag.
//
// Thread-safety: a StreamDescriptor is made and destroyed by one thread; the functions are
// thread-safe.
#pragma once

#include <atomic>
#include <cstddef>

namespace shardshift {

/// The descriptor to write stdout's stream through: when `fd` is a pipe (or a FIFO) with a
/// reader, a new non-blocking, close-on-exec description of it (opened through /proc/self/fd);
/// otherwise (a file, a terminal, a socket, no /proc) `fd` itself. The new one is closed by the
/// destructor, so that the reader sees the end of the stream once the run's own `fd` is closed.
class StreamDescriptor {
public:
  explicit StreamDescriptor(int fd);
  ~StreamDescriptor();
  StreamDescriptor(const StreamDescriptor&) = delete;
  StreamDescriptor& operator=(const StreamDescriptor&) = delete;
  int fd() const { return own_ >= 0 ? own_ : fd_; }

private:
  int fd_;
  int own_ = -1;
};

/// Waits until the stream `fd` can take more bytes (after a write or a splice returned EAGAIN).
/// False, at once or within a poll of 50 ms, once *cancel is set (cancel may be null).
bool wait_writable(int fd, const std::atomic<bool>* cancel);

} // namespace shardshift
