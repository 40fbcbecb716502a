// shard_writer.cpp: putting safetensors files on disk: the streaming shard writer with its
// temp-file commit protocol, whole small files written the same way, and the index that commits
// a sharded checkpoint. What the bytes are is decided in the safetensors module.
//
// All system calls go through an Io so tests can inject a full disk, short writes or a broken
// pipe. The app ignores SIGPIPE before it writes to a stream (apps/cmd_convert.cpp), so a vanished
// pipe reader arrives here as EPIPE from write()/splice() rather than killing the process, and is
// reported as Errc::broken_pipe.
#include "shardshift/shard_writer.h"

#include "shardshift/mapped_file.h"

#include "discard.h"
#include "stream_fd.h"
#include "temp_name.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <errno.h>
#include <fcntl.h>
#include <random>
#include <string_view>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view TEMP_MARKER = ".shardshift-tmp";

// The temporary name beside `final_path`: hidden, recognisable by remove_temp_files(), and unique
// across processes (pid) and across writers of one process (random part plus a counter).
fs::path temp_path_for(const fs::path& final_path) {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char suffix[64];
  std::snprintf(suffix, sizeof suffix, "%ld-%016llx", static_cast<long>(::getpid()),
                static_cast<unsigned long long>(rng() ^ counter.fetch_add(1)));
  return final_path.parent_path() / (temp_name_prefix(final_path.filename().string()) + suffix);
}

bool is_copy_refusal(int err) {
  return err == EXDEV || err == EINVAL || err == ENOSYS || err == EOPNOTSUPP || err == EBADF;
}

// Every write-side errno becomes one of three messages; the byte counts tell the user how far the
// file got, which matters when the cause is a full disk or a reader that stopped early.
// A stream (stdout, a pipe) fills up where it leads, which shardshift does not choose.
Status write_error(const std::string& path, int err, uint64_t done, uint64_t total,
                   const char* what, bool stream = false) {
  if ((err == ENOSPC || err == EDQUOT) && stream)
    return error(Errc::no_space, path + ": no space left where the stream is written, after " +
                                     std::to_string(done) + " of " + std::to_string(total) +
                                     " bytes; free space there");
  if (err == ENOSPC || err == EDQUOT)
    return error(Errc::no_space, path + ": disk full after writing " + std::to_string(done) +
                                     " of " + std::to_string(total) +
                                     " bytes; free space or choose another output directory");
  if (err == EPIPE)
    return error(Errc::broken_pipe, path + ": the reader of the output pipe went away after " +
                                        std::to_string(done) + " bytes");
  return error(Errc::io, path + ": " + what + " failed after " + std::to_string(done) +
                             " bytes: " + errno_text(err));
}

} // namespace

ShardWriter::~ShardWriter() {
  abandon();
}

Status ShardWriter::fail(Status s) {
  if (status_.ok())
    status_ = std::move(s);
  // A failed file is worthless: release its disk space now (a full disk is the usual cause)
  // rather than when the caller gets around to abandoning it.
  if (!is_stream_)
    abandon();
  return status_;
}

Status ShardWriter::open(const fs::path& final_path, std::string header, uint64_t data_size) {
  if (Status s = start_file(final_path, header.size(), data_size); !s.ok())
    return s;
  if (Status s = create_temp(O_WRONLY); !s.ok())
    return s;
  if (Status s = reserve_space(); !s.ok())
    return s;
  return append(std::as_bytes(std::span(header)));
}

Status ShardWriter::open_mapped(const fs::path& final_path, std::string header,
                                uint64_t data_size) {
  if (!io_->maps_writes() || data_size == 0) { // filled by positioned writes
    Status s = open(final_path, std::move(header), data_size);
    filled_ = s.ok();
    return s;
  }
  if (Status s = start_file(final_path, header.size(), data_size); !s.ok())
    return s;
  if (Status s = create_temp(O_RDWR); !s.ok())
    return s;
  // Not reserved, checked: reserving a file's space is the work of making its pages, which the
  // threads filling it then do side by side.
  if (Status s = check_space(); !s.ok())
    return s;
  int rc;
  do {
    rc = io_->ftruncate(fd_, static_cast<off_t>(expected_size_));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int err = errno;
    return fail(write_error(display_path_, err, 0, expected_size_, "ftruncate"));
  }
  void* map = ::mmap(nullptr, expected_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (map == MAP_FAILED) { // a filesystem without shared writable mappings: write instead
    if (Status s = reserve_space(); !s.ok())
      return s;
  } else {
    map_ = static_cast<std::byte*>(map);
  }
  Status s = append(std::as_bytes(std::span(header)));
  filled_ = s.ok();
  return s;
}

Status ShardWriter::start_file(const fs::path& final_path, uint64_t header_size,
                               uint64_t data_size) {
  if (!status_.ok())
    return status_;
  display_path_ = final_path.string();
  if (fd_ >= 0 || !temp_path_.empty())
    return fail(error(Errc::io, display_path_ + ": internal: writer opened twice"));
  if (data_size > UINT64_MAX - header_size)
    return fail(error(Errc::invalid_argument, display_path_ + ": size overflows 64 bits"));
  final_path_ = final_path;
  is_stream_ = false;
  hold_from_ = UINT64_MAX;
  held_.clear();
  expected_size_ = header_size + data_size;
  data_begin_ = header_size;
  position_ = 0;
  claimed_ = 0;
  filled_ = false;
  started_ = waited_ = 0;
  return {};
}

// O_EXCL: never write through a name someone else created (a symlink planted in a shared
// directory, or a concurrent run that drew the same name).
Status ShardWriter::create_temp(int access) {
  for (int attempt = 0;; ++attempt) {
    fs::path candidate = temp_path_for(final_path_);
    int fd = io_->open(candidate.c_str(), access | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
      fd_ = fd;
      owns_fd_ = true;
      temp_path_ = std::move(candidate);
      return {};
    }
    int err = errno;
    if (err == EEXIST && attempt < 8)
      continue;
    if (err == ENOSPC || err == EDQUOT)
      return fail(error(Errc::no_space, display_path_ +
                                            ": cannot create the file: the file system has "
                                            "no space or no free inodes left (" +
                                            std::to_string(expected_size_) +
                                            " bytes to write); free some or choose another output "
                                            "directory"));
    return fail(error(Errc::io, candidate.string() + ": cannot create: " + errno_text(err)));
  }
}

Status ShardWriter::check_space() {
  struct statvfs fs_info;
  if (::fstatvfs(fd_, &fs_info) == 0 &&
      static_cast<uint64_t>(fs_info.f_bavail) * fs_info.f_frsize < expected_size_)
    return fail(
        error(Errc::no_space,
              display_path_ + ": disk full: " + std::to_string(expected_size_) + " bytes needed, " +
                  std::to_string(static_cast<uint64_t>(fs_info.f_bavail) * fs_info.f_frsize) +
                  " free; free space or choose another output directory"));
  return {};
}

// Reserves the whole file so a full disk shows up now, before the expensive part of the work,
// and so the filesystem can lay the file out contiguously. On a tmpfs too: there reserving makes
// and zeroes every page before the writes copy over them, yet writing into holes instead was no
// faster on the H200 host and 9% slower on a 2-core VM (docs/PERFORMANCE.md, "The driver's
// files handed back").
Status ShardWriter::reserve_space() {
  if (expected_size_ == 0)
    return {};
  int rc;
  do {
    rc = io_->fallocate(fd_, 0, static_cast<off_t>(expected_size_));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int err = errno;
    if (err == ENOSPC || err == EDQUOT)
      return fail(
          error(Errc::no_space, display_path_ + ": disk full: cannot reserve " +
                                    std::to_string(expected_size_) +
                                    " bytes; free space or choose another output directory"));
    if (err != EOPNOTSUPP && err != ENOSYS)
      return fail(error(Errc::io, display_path_ + ": cannot reserve space: " + errno_text(err)));
  }
  return {};
}

Status ShardWriter::open_stream(int fd, std::string name, std::string header, uint64_t data_size,
                                uint64_t hold_back) {
  if (!status_.ok())
    return status_;
  display_path_ = std::move(name);
  is_stream_ = true;
  if (fd_ >= 0 || !temp_path_.empty())
    return fail(error(Errc::io, display_path_ + ": internal: writer opened twice"));
  if (data_size > UINT64_MAX - header.size())
    return fail(error(Errc::invalid_argument, display_path_ + ": size overflows 64 bits"));
  fd_ = fd;
  owns_fd_ = false;
  expected_size_ = header.size() + data_size;
  position_ = 0;
  hold_from_ = expected_size_ - std::min(hold_back, expected_size_);
  held_.clear();
  return append(std::as_bytes(std::span(header)));
}

Status ShardWriter::append(std::span<const std::byte> bytes) {
  return write_bytes(bytes, nullptr);
}

// A stream opened with hold_back: the part of `bytes` (the next bytes of the file) from
// hold_from_ on is kept in held_; returns how many bytes that is, for the caller to count as
// written once it has written the ones before them.
size_t ShardWriter::hold(std::span<const std::byte> bytes) {
  const uint64_t end = position_ + bytes.size();
  if (end <= hold_from_)
    return 0;
  const size_t keep = static_cast<size_t>(std::min<uint64_t>(end - hold_from_, bytes.size()));
  held_.append(reinterpret_cast<const char*>(bytes.data() + bytes.size() - keep), keep);
  return keep;
}

// `source`: the input file the bytes are mapped from, named when the kernel cannot read them.
Status ShardWriter::write_bytes(std::span<const std::byte> bytes, const std::string* source) {
  if (!status_.ok())
    return status_;
  if (fd_ < 0)
    return fail(error(Errc::io, display_path_ + ": internal: write to a closed writer"));
  if (bytes.size() > expected_size_ - position_)
    return fail(error(Errc::io, display_path_ + ": internal: writing past the planned size of " +
                                    std::to_string(expected_size_) + " bytes"));
  const size_t held = hold(bytes);
  bytes = bytes.first(bytes.size() - held);
  while (!bytes.empty()) {
    if (cancelled())
      return fail(error(Errc::interrupted, "interrupted"));
    size_t chunk = std::min(bytes.size(), WRITE_PIECE);
    ssize_t n = is_stream_ ? io_->write(fd_, bytes.data(), chunk)
                           : io_->pwrite(fd_, bytes.data(), chunk, static_cast<off_t>(position_));
    if (n < 0) {
      int err = errno;
      if (err == EINTR)
        continue;
      // A full non-blocking stream (stream_fd.h): wait for room, or stop once cancelled.
      if (is_stream_ && (err == EAGAIN || err == EWOULDBLOCK)) {
        if (!wait_writable(fd_, cancel_))
          return fail(error(Errc::interrupted, "interrupted"));
        continue;
      }
      if (err == EFAULT && source) // a mapping whose file shrank
        return fail(file_changed_error(*source));
      if (err == EPIPE && cancelled()) // the reader went because Ctrl-C reached it too
        return fail(error(Errc::interrupted, "interrupted"));
      return fail(write_error(display_path_, err, position_, expected_size_, "write", is_stream_));
    }
    if (n == 0)
      return fail(error(Errc::io, display_path_ + ": write made no progress after " +
                                      std::to_string(position_) + " bytes"));
    position_ += static_cast<uint64_t>(n);
    since_splice_ += static_cast<uint64_t>(n);
    bytes = bytes.subspan(static_cast<size_t>(n));
    write_behind();
  }
  position_ += held;
  return {};
}

// A file of a directory output is fsync'ed before its rename. Left to the end, that fsync would
// write the whole file at once: seconds for a shard of gigabytes, during which Ctrl-C cannot act,
// and a run stopped then leaves gigabytes of dirty pages to drop. So the write-back of each
// WRITE_BEHIND window is started as soon as it is written, and the window before it is waited
// for: at most two windows of a file are dirty at any time, and the final fsync finds little to
// do. (--no-sync makes these calls no-ops; streams have nothing to sync.)
void ShardWriter::write_behind() {
  constexpr uint64_t WRITE_BEHIND = uint64_t{8} << 20;
  if (is_stream_ || position_ - started_ < WRITE_BEHIND)
    return;
  io_->sync_file_range(fd_, static_cast<off_t>(started_), static_cast<off_t>(position_ - started_),
                       SYNC_FILE_RANGE_WRITE);
  if (started_ > waited_)
    io_->sync_file_range(fd_, static_cast<off_t>(waited_), static_cast<off_t>(started_ - waited_),
                         SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                             SYNC_FILE_RANGE_WAIT_AFTER);
  waited_ = started_;
  started_ = position_;
}

// Bytes spliced into a pipe are references to the input's pages until they are read: a rewrite
// meanwhile would change them after the final check. So a stream with a final check splices only
// up to its last pipeful, which it writes as copies: once those are in, the pipe holds no spliced
// page, and the check needs no wait for the reader (one that reads only after the run ends would
// wait for ever). Of the next `length` bytes, how many may be spliced.
uint64_t ShardWriter::spliceable(uint64_t length) const {
  if (!is_stream_ || !final_check_)
    return length;
  const int pipe_size = ::fcntl(fd_, F_GETPIPE_SZ); // -1: not a pipe, nothing referenced
  const uint64_t pipeful = static_cast<uint64_t>(std::max(pipe_size, 0));
  const uint64_t copies_from = hold_from_ - std::min(hold_from_, pipeful);
  return position_ >= copies_from ? 0 : std::min(length, copies_from - position_);
}

Status ShardWriter::append_copy(int in_fd, uint64_t in_offset, uint64_t length,
                                std::span<const std::byte> fallback, bool* zero_copy,
                                const std::string& source) {
  if (zero_copy)
    *zero_copy = false;
  if (!status_.ok())
    return status_;
  if (fd_ < 0)
    return fail(error(Errc::io, display_path_ + ": internal: write to a closed writer"));
  if (fallback.size() != length)
    return fail(error(Errc::io, display_path_ + ": internal: fallback span has " +
                                    std::to_string(fallback.size()) + " bytes for a copy of " +
                                    std::to_string(length)));
  if (length > expected_size_ - position_)
    return fail(error(Errc::io, display_path_ + ": internal: writing past the planned size of " +
                                    std::to_string(expected_size_) + " bytes"));
  const size_t held = hold(fallback); // the tail is held, from the same bytes in memory
  length -= held;
  fallback = fallback.first(static_cast<size_t>(length));
  const uint64_t splice_length = spliceable(length);

  // The kernel copies (or shares extents) while we track both offsets ourselves. If it refuses
  // the pair of descriptors (different filesystems on old kernels, a pipe for copy_file_range, a
  // file for splice), the same bytes are written from the fallback span instead; a refusal after
  // some bytes went through finishes the rest the same way, so the result never depends on it.
  uint64_t done = 0;
  while (done < splice_length) {
    if (cancelled())
      return fail(error(Errc::interrupted, "interrupted"));
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(splice_length - done, WRITE_PIECE));
    auto in_off = static_cast<off_t>(in_offset + done);
    ssize_t n;
    if (is_stream_) {
      n = io_->splice(in_fd, &in_off, fd_, nullptr, chunk);
    } else {
      auto out_off = static_cast<off_t>(position_);
      n = io_->copy_file_range(in_fd, &in_off, fd_, &out_off, chunk);
    }
    if (n < 0) {
      int err = errno;
      if (err == EINTR)
        continue;
      // A full non-blocking stream (stream_fd.h): wait for room, or stop once cancelled.
      if (is_stream_ && (err == EAGAIN || err == EWOULDBLOCK)) {
        if (!wait_writable(fd_, cancel_))
          return fail(error(Errc::interrupted, "interrupted"));
        continue;
      }
      bool refused = is_stream_ ? err == EINVAL || err == ENOSYS : is_copy_refusal(err);
      if (refused) {
        Status s = write_bytes(fallback.subspan(static_cast<size_t>(done)), &source);
        if (s.ok())
          position_ += held;
        return s;
      }
      if (err == EPIPE && cancelled())
        return fail(error(Errc::interrupted, "interrupted"));
      return fail(write_error(display_path_, err, position_, expected_size_,
                              is_stream_ ? "splice" : "copy_file_range", is_stream_));
    }
    if (n == 0) // the source ended early: it shrank
      return fail(file_changed_error(source));
    done += static_cast<uint64_t>(n);
    position_ += static_cast<uint64_t>(n);
    spliced_ = spliced_ || is_stream_;
    since_splice_ = 0;
    write_behind();
  }
  if (done < length) // a stream's last pipeful, as copies (above)
    if (Status s = write_bytes(fallback.subspan(static_cast<size_t>(done)), &source); !s.ok())
      return s;
  position_ += held;
  if (zero_copy)
    *zero_copy = done == length; // the kernel moved it all
  return {};
}

Status ShardWriter::claim(uint64_t offset, uint64_t length) {
  if (!filled_)
    return error(Errc::io, display_path_ + ": internal: claim on a file not opened for filling");
  if (offset < data_begin_ || offset > expected_size_ || length > expected_size_ - offset)
    return error(Errc::io, display_path_ + ": internal: bytes " + std::to_string(offset) + "-" +
                               std::to_string(offset + length) + " lie outside the data, bytes " +
                               std::to_string(data_begin_) + "-" + std::to_string(expected_size_));
  claimed_.fetch_add(length, std::memory_order_relaxed);
  return {};
}

Status ShardWriter::fill(uint64_t offset, std::span<const std::byte> bytes,
                         const std::string* source) const {
  if (!filled_ || offset > expected_size_ || bytes.size() > expected_size_ - offset)
    return error(Errc::io, display_path_ + ": internal: fill outside the file");
  if (!map_)
    return fill_by_write(offset, bytes, source);
  // One thread at a time writes (the kernel would serialize more on the file's lock), which
  // costs a fraction of the CPU of making pages through the mapping; the others copy.
  if (!writing_.test_and_set(std::memory_order_acquire)) {
    Status s = fill_by_write(offset, bytes, source);
    writing_.clear(std::memory_order_release);
    return s;
  }
  for (uint64_t done = 0; done < bytes.size();) {
    if (cancelled())
      return error(Errc::interrupted, "interrupted");
    const size_t n = static_cast<size_t>(std::min<uint64_t>(bytes.size() - done, WRITE_PIECE));
    std::byte* const dst = map_ + offset + done;
    const std::byte* const src = bytes.data() + done;
    if (!run_catching_sigbus([dst, src, n] { std::memcpy(dst, src, n); }))
      return fill_fault(offset + done, source);
    done += n;
  }
  // The pages leave this process's page tables, dirty, and stay in the file (once per fill: each
  // call interrupts every core running one of the process's threads). A page shared with a
  // neighbouring fill on another thread just faults back in.
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t first = reinterpret_cast<uintptr_t>(map_ + offset) & ~(page - 1);
  const uintptr_t end =
      (reinterpret_cast<uintptr_t>(map_ + offset + bytes.size()) + page - 1) & ~(page - 1);
  (void)::madvise(reinterpret_cast<void*>(first), end - first, MADV_DONTNEED);
  return {};
}

Status ShardWriter::fill_by_write(uint64_t offset, std::span<const std::byte> bytes,
                                  const std::string* source) const {
  for (uint64_t done = 0; done < bytes.size();) {
    if (cancelled())
      return error(Errc::interrupted, "interrupted");
    const size_t n = static_cast<size_t>(std::min<uint64_t>(bytes.size() - done, WRITE_PIECE));
    const ssize_t w = io_->pwrite(fd_, bytes.data() + done, n, static_cast<off_t>(offset + done));
    if (w < 0) {
      const int err = errno;
      if (err == EINTR)
        continue;
      if (err == EFAULT && source) // a mapping whose file shrank
        return file_changed_error(*source);
      return write_error(display_path_, err, offset + done, expected_size_, "write");
    }
    if (w == 0)
      return error(Errc::io, display_path_ + ": write made no progress at byte " +
                                 std::to_string(offset + done));
    done += static_cast<uint64_t>(w);
  }
  return {};
}

// A page of a fill could not be had: the filesystem ran full (another file, or another process,
// took the space after open_mapped looked), the input's file shrank, or ours was truncated.
Status ShardWriter::fill_fault(uint64_t offset, const std::string* source) const {
  struct statvfs fs_info;
  if (::fstatvfs(fd_, &fs_info) == 0 &&
      static_cast<uint64_t>(fs_info.f_bavail) * fs_info.f_frsize < expected_size_ - offset)
    return error(Errc::no_space, display_path_ + ": disk full while writing byte " +
                                     std::to_string(offset) + " of " +
                                     std::to_string(expected_size_) +
                                     "; free space or choose another output directory");
  if (source)
    return file_changed_error(*source);
  return error(Errc::io, display_path_ + ": byte " + std::to_string(offset) +
                             " could not be written through the file's mapping (was " +
                             temp_path_.string() + " truncated by another process?)");
}

void ShardWriter::unmap() {
  if (map_)
    ::munmap(map_, expected_size_);
  map_ = nullptr;
}

Status ShardWriter::finish(bool check) {
  if (!status_.ok())
    return status_;
  if (fd_ < 0)
    return fail(error(Errc::io, display_path_ + ": internal: finish without open"));
  const uint64_t done = position_ + claimed_.load();
  if (done != expected_size_)
    return fail(error(Errc::io, display_path_ + ": internal: wrote " + std::to_string(done) +
                                    " of " + std::to_string(expected_size_) + " bytes"));
  unmap(); // every fill has returned: the bytes are in the file's pages
  if (check && final_check_ && spliced_) {
    // The copies after the last splice fill the pipe as it was then; a pipe its reader has made
    // larger since can still hold spliced pages before them, which must be read before the check.
    wait_unread_at_most(fd_, since_splice_, cancel_);
    if (cancelled())
      return fail(error(Errc::interrupted, "interrupted"));
  }
  if (check)
    if (Status s = final_check(); !s.ok())
      return fail(s);
  if (is_stream_) {
    // A pipe has nothing to sync; the descriptor belongs to the caller.
    fd_ = -1;
    return {};
  }
  if (io_->fsync(fd_) != 0) {
    int err = errno;
    return fail(write_error(display_path_, err, position_, expected_size_, "fsync"));
  }
  int fd = fd_;
  fd_ = -1;
  if (io_->close(fd) != 0) {
    int err = errno;
    return fail(write_error(display_path_, err, position_, expected_size_, "close"));
  }
  if (io_->rename(temp_path_.c_str(), final_path_.c_str()) != 0) {
    int err = errno;
    return fail(error(Errc::io, display_path_ + ": cannot rename " + temp_path_.string() +
                                    " into place: " + errno_text(err)));
  }
  temp_path_.clear();
  fs::path dir = final_path_.parent_path();
  Status synced = sync_directory(*io_, dir.empty() ? fs::path(".") : dir);
  if (!synced.ok())
    status_ = synced;
  return synced;
}

void ShardWriter::abandon() {
  unmap();
  // A staged file with much written into it is discarded (discard.h): its name goes now, its
  // blocks are freed without this run waiting for the disk.
  if (fd_ >= 0 && owns_fd_ && !temp_path_.empty() && position_ >= DISCARD_MIN_BYTES) {
    discard_open_file(*io_, fd_, temp_path_);
    fd_ = -1;
    temp_path_.clear();
    return;
  }
  if (fd_ >= 0 && owns_fd_)
    io_->close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) {
    io_->unlink(temp_path_.c_str());
    temp_path_.clear();
  }
}

Status sync_directory(Io& io, const fs::path& dir) {
  int fd = io.open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    return error(Errc::io, dir.string() + ": cannot open directory to sync it: " + errno_text(err));
  }
  int rc = io.fsync(fd);
  int err = errno;
  io.close(fd);
  // Some filesystems (a few FUSE and network ones) cannot fsync a directory at all; the rename
  // has still happened, so that is not a failure of ours.
  if (rc != 0 && err != EINVAL && err != ENOTSUP)
    return error(Errc::io, dir.string() + ": cannot sync directory: " + errno_text(err));
  return {};
}

Status write_file_atomic(Io& io, const fs::path& path, std::span<const std::byte> bytes) {
  ShardWriter writer(io);
  if (Status s = writer.open(path, std::string(), bytes.size()); !s.ok())
    return s;
  if (Status s = writer.append(bytes); !s.ok())
    return s;
  return writer.finish();
}

Status write_index(Io& io, const fs::path& dir, uint64_t total_size,
                   const std::map<std::string, std::string>& weight_map) {
  auto text = index_json(total_size, weight_map);
  if (!text)
    return error(text.status().code(), (dir / text.status().message()).string());
  return write_file_atomic(io, dir / "model.safetensors.index.json",
                           std::as_bytes(std::span(*text)));
}

void remove_temp_files(Io& io, const fs::path& dir) {
  std::error_code ec;
  std::vector<fs::path> doomed;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (name.size() > 1 && name[0] == '.' && name.find(TEMP_MARKER) != std::string::npos)
      doomed.push_back(it->path());
  }
  // Collected first: removing entries while the directory is being read may skip some.
  for (const auto& p : doomed)
    io.unlink(p.c_str());
}

} // namespace shardshift
