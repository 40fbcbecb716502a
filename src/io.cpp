// io.cpp: the default Io, a thin forwarding layer to the kernel. It adds nothing (no retry, no
// wording) so that a test double that overrides one call exercises exactly the caller's handling.
#include "shardshift/io.h"

#include <cstdio>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

namespace shardshift {

int Io::open(const char* path, int flags, unsigned mode) {
  return ::open(path, flags, static_cast<mode_t>(mode));
}

int Io::close(int fd) {
  return ::close(fd);
}

ssize_t Io::pwrite(int fd, const void* buf, size_t count, off_t offset) {
  return ::pwrite(fd, buf, count, offset);
}

ssize_t Io::write(int fd, const void* buf, size_t count) {
  return ::write(fd, buf, count);
}

ssize_t Io::copy_file_range(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len) {
  return ::copy_file_range(fd_in, off_in, fd_out, off_out, len, 0);
}

ssize_t Io::splice(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len) {
  // SPLICE_F_MOVE is only a hint; SPLICE_F_MORE tells the pipe more data follows.
  return ::splice(fd_in, off_in, fd_out, off_out, len, SPLICE_F_MOVE | SPLICE_F_MORE);
}

int Io::ftruncate(int fd, off_t length) {
  return ::ftruncate(fd, length);
}

int Io::fallocate(int fd, off_t offset, off_t length) {
  // fallocate(2) mode 0 rather than posix_fallocate: glibc's posix_fallocate emulates missing
  // support by writing a byte into every block, which would double the I/O of a large shard. A
  // filesystem without support reports EOPNOTSUPP, which the writer ignores.
  return ::fallocate(fd, 0, offset, length);
}

int Io::fsync(int fd) {
  return ::fsync(fd);
}

int Io::rename(const char* from, const char* to) {
  return std::rename(from, to);
}

int Io::unlink(const char* path) {
  return ::unlink(path);
}

Io& Io::system() {
  static Io instance;
  return instance;
}

} // namespace shardshift
