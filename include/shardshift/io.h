// io.h: the file-I/O seam. Every write-side system call shardshift makes (creating, writing,
// syncing, renaming and removing files and directories) goes through an Io, so tests can inject
// a full disk, a short write or a broken pipe, and the system Io calls the kernel. Reads go
// straight to the kernel (mapped files, directory listings): there is nothing to commit or undo.
//
// Calls return what the system call returns (-1 with errno set on failure); the looping, retrying
// and error wording live in the callers (shard_writer.cpp), so injected faults exercise them.
// Every method is pure virtual, and a decorator derives from ForwardingIo: a method added here
// then either forwards through the decorator to the Io it wraps or fails to compile, so a
// fault-injecting Io can never be bypassed silently.
// Thread-safety: Io::system() and ForwardingIo are stateless and safe from any thread; test doubles
// say their own.
#pragma once

#include "shardshift/status.h"

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <sys/types.h>

namespace shardshift {

class Io {
public:
  virtual ~Io() = default;
  virtual int open(const char* path, int flags, unsigned mode) = 0;
  virtual int close(int fd) = 0;
  virtual ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) = 0;
  virtual ssize_t write(int fd, const void* buf, size_t count) = 0;
  virtual ssize_t copy_file_range(int fd_in, off_t* off_in, int fd_out, off_t* off_out,
                                  size_t len) = 0;
  virtual ssize_t splice(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len) = 0;
  virtual int fallocate(int fd, off_t offset, off_t length) = 0;
  virtual int ftruncate(int fd, off_t length) = 0;
  virtual int fsync(int fd) = 0;
  /// sync_file_range(2): start (and with SYNC_FILE_RANGE_WAIT_* flags, wait for) the write-back of
  /// a range of `fd`, without the metadata fsync commits. A hint: callers ignore its errors.
  virtual int sync_file_range(int fd, off_t offset, off_t length, unsigned flags) = 0;
  virtual int rename(const char* from, const char* to) = 0;
  virtual int unlink(const char* path) = 0;
  virtual int mkdir(const char* path, unsigned mode) = 0;
  virtual int rmdir(const char* path) = 0;
  /// Whether output files may be filled through shared mappings of them (ShardWriter::
  /// open_mapped): their bytes are then copied into the file's pages, not written by a call of
  /// this Io. The system Io: yes. A decorator: only if it says so (ForwardingIo: no), so that a
  /// fault-injecting test double sees every byte written.
  virtual bool maps_writes() const = 0;

  /// The process-wide Io that calls the kernel, adding nothing (no retry, no wording). Its class
  /// is private to io.cpp: nothing derives from it, and decorators wrap it through ForwardingIo.
  static Io& system();
};

/// The base of decorators: every call goes to the wrapped Io; a decorator overrides only what it
/// changes, calling ForwardingIo::x where it passes a call on.
class ForwardingIo : public Io {
public:
  explicit ForwardingIo(Io& base) : base_(base) {}
  int open(const char* path, int flags, unsigned mode) override;
  int close(int fd) override;
  ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) override;
  ssize_t write(int fd, const void* buf, size_t count) override;
  ssize_t copy_file_range(int fd_in, off_t* off_in, int fd_out, off_t* off_out,
                          size_t len) override;
  ssize_t splice(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len) override;
  int fallocate(int fd, off_t offset, off_t length) override;
  int ftruncate(int fd, off_t length) override;
  int fsync(int fd) override;
  int sync_file_range(int fd, off_t offset, off_t length, unsigned flags) override;
  int rename(const char* from, const char* to) override;
  int unlink(const char* path) override;
  int mkdir(const char* path, unsigned mode) override;
  int rmdir(const char* path) override;
  bool maps_writes() const override { return false; }

protected:
  Io& base() const { return base_; }

private:
  Io& base_;
};

/// Creates `dir` and any missing parents through `io` (mode 0777 before the umask), like
/// `mkdir -p`. An existing directory is fine; an existing non-directory is an error.
Status make_directories(Io& io, const std::filesystem::path& dir);

/// Removes `path` and, for a directory, everything under it, through `io` (unlink and rmdir),
/// like `rm -rf`: symbolic links are removed, never followed; a missing path is fine. Keeps going
/// past a failure and returns the first. A directory's marks go last (Marks).
Status remove_tree(Io& io, const std::filesystem::path& path);

/// When a directory's `.shardshift-*` marks (a staging directory's plan fingerprint, an output's
/// marker) are removed: `last`, once everything else has gone, so that a removal cut short
/// leaves a directory the next run still knows for a run's staging and removes; `first`, so that
/// what is left of an output cut short never claims to be a complete one.
enum class Marks { last, first };

/// remove_tree for what a stopped or finished run throws away: every name is gone when it
/// returns, as with remove_tree, but the space of large files is freed by a detached process
/// rather than waited for (src/discard.h says why and how). Not for making room before writing.
Status discard_tree(Io& io, const std::filesystem::path& path, Marks marks = Marks::last);

/// Largest byte count passed to one read, write or copy call (Linux moves at most ~2 GiB a call).
inline constexpr size_t MAX_IO_CHUNK = size_t{1} << 30;

} // namespace shardshift
