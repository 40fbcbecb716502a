// mapped_file.h: a read-only memory mapping of one input file, with checked views.
//
// Every span handed out is bounds- and overflow-checked against the mapping. Files are mapped with
// MADV_SEQUENTIAL; release() drops consumed pages (MADV_DONTNEED) so a long conversion keeps a
// flat resident set. A file that shrinks while mapped raises SIGBUS on access: code that touches
// mapped bytes runs inside guard_mapped_access(), which turns that signal into Errc::file_changed.
// Thread-safety: a MappedFile is immutable after open(); view(), release() and the guard may be
// called from any thread.
#pragma once

#include "shardshift/status.h"

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>

namespace shardshift {

class MappedFile {
public:
  /// Opens and maps `path` read-only. An empty file is valid (its span is empty).
  static Result<std::unique_ptr<MappedFile>> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  int fd() const { return fd_; }
  uint64_t size() const { return size_; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }

  /// The bytes [offset, offset + length); an error naming the file when the range does not fit.
  Result<std::span<const std::byte>> view(uint64_t offset, uint64_t length) const;
  /// Tells the kernel the range is no longer needed (whole pages inside it only). Never fails.
  void release(uint64_t offset, uint64_t length) const;
  /// Maps the range's pages into the process in one call (MADV_POPULATE_READ), much cheaper than
  /// faulting them in one 4 KiB page at a time when a kernel then reads them. Reads the data from
  /// disk if needed, so call it where waiting is fine (a worker thread). Never fails; a file that
  /// shrank is left for the guarded read to report. No-op before Linux 5.14.
  void populate(uint64_t offset, uint64_t length) const;
  /// Asks the kernel to read the range ahead (MADV_WILLNEED). Never fails.
  void will_need(uint64_t offset, uint64_t length) const;
  /// OK while the file is as it was opened: the same size and modification time (fstat; not the
  /// change time, which chmod, a hard link or touch -a move too). Otherwise Errc::file_changed
  /// naming it: bytes rewritten in place while a run read them (at the same size, so no page
  /// vanished) would give output that matches neither version.
  Status unchanged() const;

private:
  MappedFile() = default;
  std::string path_;
  int fd_ = -1;
  const std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  int64_t modified_ns_ = 0; ///< st_mtim at open
};

/// Runs `fn`, which reads mapped memory of `file`. If a page of any mapping has vanished (the file
/// shrank), returns Errc::file_changed naming `file` ("file changed while reading") instead of
/// crashing. `fn` must not own objects with non-trivial destructors across the access (the
/// recovery unwinds with siglongjmp). Nested guards on one thread are allowed.
Status guard_mapped_access(const MappedFile& file, const std::function<void()>& fn);

/// The same guard for any mapping (an output file filled through one, ShardWriter::fill): runs
/// `fn` and returns false, instead of crashing, if it touched a mapped page that could not be
/// provided (SIGBUS: the file shrank, or its filesystem had no room for a new page).
bool run_catching_sigbus(const std::function<void()>& fn);

/// The address whose access raised the SIGBUS that a guard on this thread caught last (null
/// before any): which of two mappings an access that read both had lost a page of.
const void* last_sigbus_address();

/// The error of an input file that changed while it was read (Errc::file_changed, naming `path`):
/// what guard_mapped_access returns on SIGBUS, and what ShardWriter::append_copy returns when the
/// kernel can no longer read its source (EFAULT from a mapping, a copy that ends early).
Status file_changed_error(const std::string& path);

} // namespace shardshift
