// io.cpp: the system Io, a thin layer over the kernel; ForwardingIo; and the directory helpers
// built on Io. The system Io adds nothing (no retry, no wording) so that a test double that
// overrides one call exercises exactly the caller's handling.
#include "shardshift/io.h"

#include "discard.h"

#include <algorithm>
#include <cstdio>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include <tbb/parallel_for.h>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

// The system Io: each call is the system call itself.
class SystemIo final : public Io {
public:
  int open(const char* path, int flags, unsigned mode) override {
    return ::open(path, flags, static_cast<mode_t>(mode));
  }
  int close(int fd) override { return ::close(fd); }
  ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) override {
    return ::pwrite(fd, buf, count, offset);
  }
  ssize_t write(int fd, const void* buf, size_t count) override { return ::write(fd, buf, count); }
  ssize_t copy_file_range(int fd_in, off_t* off_in, int fd_out, off_t* off_out,
                          size_t len) override {
    return ::copy_file_range(fd_in, off_in, fd_out, off_out, len, 0);
  }
  ssize_t splice(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len) override {
    // SPLICE_F_MOVE is only a hint; SPLICE_F_MORE tells the pipe more data follows.
    return ::splice(fd_in, off_in, fd_out, off_out, len, SPLICE_F_MOVE | SPLICE_F_MORE);
  }
  int fallocate(int fd, off_t offset, off_t length) override {
    // fallocate(2) mode 0 rather than posix_fallocate: glibc's posix_fallocate emulates missing
    // support by writing a byte into every block, which would double the I/O of a large shard. A
    // filesystem without support reports EOPNOTSUPP, which the writer ignores.
    return ::fallocate(fd, 0, offset, length);
  }
  int ftruncate(int fd, off_t length) override { return ::ftruncate(fd, length); }
  int fsync(int fd) override { return ::fsync(fd); }
  int sync_file_range(int fd, off_t offset, off_t length, unsigned flags) override {
    return ::sync_file_range(fd, offset, length, flags);
  }
  int rename(const char* from, const char* to) override { return std::rename(from, to); }
  int unlink(const char* path) override { return ::unlink(path); }
  int mkdir(const char* path, unsigned mode) override {
    return ::mkdir(path, static_cast<mode_t>(mode));
  }
  int rmdir(const char* path) override { return ::rmdir(path); }
  bool maps_writes() const override { return true; }
};

} // namespace

Io& Io::system() {
  static SystemIo instance;
  return instance;
}

int ForwardingIo::open(const char* path, int flags, unsigned mode) {
  return base_.open(path, flags, mode);
}

int ForwardingIo::close(int fd) {
  return base_.close(fd);
}

ssize_t ForwardingIo::pwrite(int fd, const void* buf, size_t count, off_t offset) {
  return base_.pwrite(fd, buf, count, offset);
}

ssize_t ForwardingIo::write(int fd, const void* buf, size_t count) {
  return base_.write(fd, buf, count);
}

ssize_t ForwardingIo::copy_file_range(int fd_in, off_t* off_in, int fd_out, off_t* off_out,
                                      size_t len) {
  return base_.copy_file_range(fd_in, off_in, fd_out, off_out, len);
}

ssize_t ForwardingIo::splice(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len) {
  return base_.splice(fd_in, off_in, fd_out, off_out, len);
}

int ForwardingIo::fallocate(int fd, off_t offset, off_t length) {
  return base_.fallocate(fd, offset, length);
}
int ForwardingIo::ftruncate(int fd, off_t length) {
  return base_.ftruncate(fd, length);
}

int ForwardingIo::fsync(int fd) {
  return base_.fsync(fd);
}

int ForwardingIo::sync_file_range(int fd, off_t offset, off_t length, unsigned flags) {
  return base_.sync_file_range(fd, offset, length, flags);
}

int ForwardingIo::rename(const char* from, const char* to) {
  return base_.rename(from, to);
}

int ForwardingIo::unlink(const char* path) {
  return base_.unlink(path);
}

int ForwardingIo::mkdir(const char* path, unsigned mode) {
  return base_.mkdir(path, mode);
}

int ForwardingIo::rmdir(const char* path) {
  return base_.rmdir(path);
}

Status make_directories(Io& io, const fs::path& dir) {
  std::error_code ec;
  if (fs::is_directory(dir, ec))
    return {};
  // Missing parents first. A parent that exists but is no directory is left for mkdir to
  // report (ENOTDIR), naming the directory that was asked for.
  const fs::path parent = dir.parent_path();
  if (!parent.empty() && parent != dir && !fs::exists(parent, ec))
    if (Status s = make_directories(io, parent); !s.ok())
      return s;
  if (io.mkdir(dir.c_str(), 0777) != 0) {
    int err = errno;
    // A concurrent creator may have won the race; only a directory will do.
    if (err == EEXIST && fs::is_directory(dir, ec))
      return {};
    return error(Errc::io, dir.string() + ": cannot create directory: " + errno_text(err));
  }
  return {};
}

namespace {

Status remove_tree(Io& io, const fs::path& path, bool discard, Marks marks) {
  std::error_code ec;
  // symlink_status: a link to a directory is removed as a link, its target left alone.
  const fs::file_status status = fs::symlink_status(path, ec);
  if (ec || !fs::exists(status))
    return {};
  Status first;
  if (fs::is_directory(status)) {
    // Listed first, removed after: removing entries while the directory is read may skip some.
    std::vector<fs::path> children;
    for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec))
      children.push_back(it->path());
    if (ec)
      first = error(Errc::io, path.string() + ": cannot list directory: " + ec.message());
    // In parallel: removing a large file frees its extents and drops its cached pages, a tenth
    // of a second or more per gigabyte, and a cancelled conversion removes several at once
    // (docs/PERFORMANCE.md, "Stopping"). Io implementations are thread-safe.
    // The marks that say whose a directory is (a staging directory's `.shardshift-plan`, an
    // output's `.shardshift-output`) go last by default, and only once everything else has gone:
    // a removal cut short (a SIGKILL) then leaves a directory the next run still knows as its
    // own and removes, never one without its mark that nobody may touch. Marks::first removes
    // them before the rest.
    std::vector<fs::path> first_marks;
    const auto at = std::stable_partition(children.begin(), children.end(), [](const fs::path& p) {
      return !p.filename().string().starts_with(".shardshift-");
    });
    if (marks == Marks::first) {
      first_marks.assign(at, children.end());
      children.erase(at, children.end());
      for (const fs::path& m : first_marks)
        if (Status s = remove_tree(io, m, discard, marks); !s.ok() && first.ok())
          first = std::move(s);
    }
    const size_t others = marks == Marks::first ? children.size() : size_t(at - children.begin());
    std::vector<Status> removed(children.size());
    tbb::parallel_for(size_t{0}, others, [&](size_t i) {
      removed[i] = remove_tree(io, children[i], discard, marks);
    });
    const bool all_gone =
        std::all_of(removed.begin(), removed.begin() + others, [](const Status& s) { return s.ok(); });
    for (size_t i = others; i < children.size() && all_gone; ++i)
      removed[i] = remove_tree(io, children[i], discard, marks);
    for (Status& s : removed)
      if (first.ok())
        first = std::move(s);
    if (io.rmdir(path.c_str()) != 0 && first.ok())
      first = error(Errc::io, path.string() + ": cannot remove directory: " + errno_text(errno));
  } else if ((discard ? discard_file(io, path) : io.unlink(path.c_str())) != 0 &&
             errno != ENOENT && first.ok()) {
    first = error(Errc::io, path.string() + ": cannot remove: " + errno_text(errno));
  }
  return first;
}

} // namespace

Status remove_tree(Io& io, const fs::path& path) {
  return remove_tree(io, path, false, Marks::last);
}

Status discard_tree(Io& io, const fs::path& path, Marks marks) {
  Status s = remove_tree(io, path, true, marks);
  release_discarded();
  return s;
}

} // namespace shardshift
