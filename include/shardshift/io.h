// io.h: the file-I/O seam. Every write-side system call shardshift makes goes through an Io, so
// tests can inject a full disk, a short write or a broken pipe, and a default Io calls the kernel.
//
// Calls return what the system call returns (-1 with errno set on failure); the looping, retrying
// and error wording live in the callers (shard_writer.cpp), so injected faults exercise them.
// Thread-safety: the default Io is stateless and safe from any thread; test doubles say their own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <sys/types.h>

namespace shardshift {

class Io {
public:
  virtual ~Io() = default;
  virtual int open(const char* path, int flags, unsigned mode);
  virtual int close(int fd);
  virtual ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset);
  virtual ssize_t write(int fd, const void* buf, size_t count);
  virtual ssize_t copy_file_range(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len);
  virtual ssize_t splice(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len);
  virtual int ftruncate(int fd, off_t length);
  virtual int fallocate(int fd, off_t offset, off_t length);
  virtual int fsync(int fd);
  virtual int rename(const char* from, const char* to);
  virtual int unlink(const char* path);

  /// The process-wide Io that calls the kernel.
  static Io& system();
};

/// Largest byte count passed to one read, write or copy call (Linux moves at most ~2 GiB a call).
inline constexpr size_t MAX_IO_CHUNK = size_t{1} << 30;

} // namespace shardshift
