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
#include <cstdint>

namespace shardshift {

/// The descriptor to write stdout's stream through: when `fd` is a pipe (or a FIFO) with a
/// reader, a new non-blocking, close-on-exec description of it (opened through /proc/self/fd);
/// otherwise `fd` itself. The new one is closed by the destructor, so that the reader sees the
/// end of the stream once the run's own `fd` is closed. Where no description of its own can be
/// had (a socket, which /proc cannot open; a pipe this process may not open, as one made by
/// another user is to a run started with sudo -u), `fd`'s own description is made non-blocking
/// and its flags are put back by the destructor: until then, another process writing through
/// the same description (a shell script's later commands) would find it non-blocking too, and
/// it stays so after a SIGKILL. A file or a terminal is left as it is: writes to them never wait
/// on a reader.
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
  int restore_flags_ = -1; ///< fd_'s flags before this made it non-blocking; -1: untouched
};

/// Waits until a pipe `fd` holds at most `bytes` that its reader has not read, or its reader is
/// gone, or *cancel is set (cancel may be null); at once for anything but a pipe. What ended the
/// wait is left to the next write, or the caller's cancel check, to report.
void wait_unread_at_most(int fd, uint64_t bytes, const std::atomic<bool>* cancel);

/// Waits until the stream `fd` can take more bytes (after a write or a splice returned EAGAIN).
/// False, at once or within a poll of 50 ms, once *cancel is set (cancel may be null).
bool wait_writable(int fd, const std::atomic<bool>* cancel);

} // namespace shardshift
