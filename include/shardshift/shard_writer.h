// shard_writer.h: writes one safetensors file as a stream, and the index that commits a checkpoint.
//
// The header is computed up front from the planned tensors (build_header, in safetensors.h, which
// this header includes for its callers), written first, and the tensor bytes follow strictly in
// header order, so a shard can go to a pipe as well as to a file. A file opened for filling
// (open_mapped) is the exception: its bytes are placed at offsets the caller knows from the plan
// (claim), by several threads at once (fill).
// Files are written to a temporary name in the destination directory, fsync'ed, renamed into place,
// and the directory is fsync'ed (commit). Any failure is sticky: later calls return the first
// error, and abandon() (or the destructor) removes the temporary file.
// Thread-safety: a ShardWriter is used by one thread at a time, but for claim() and fill(), which
// any number of threads may call at once.
#pragma once

#include "shardshift/io.h"
#include "shardshift/safetensors.h"
#include "shardshift/status.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace shardshift {

class ShardWriter {
public:
  explicit ShardWriter(Io& io = Io::system()) : io_(&io) {}
  ~ShardWriter(); ///< abandons an unfinished file
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  /// Starts `final_path` (through a temporary file beside it) and writes `header`
  /// (from build_header). `data_size` is the exact number of data bytes that will follow;
  /// space for them is reserved up front so a full disk is found before most of the work.
  Status open(const std::filesystem::path& final_path, std::string header, uint64_t data_size);
  /// Like open(), but the data bytes are then placed by fill(), at the offsets claim() has
  /// checked, on any thread and several at once: into a shared mapping of the file, since write
  /// calls into one file serialize on its lock and copies into its pages do not
  /// (docs/PERFORMANCE.md, "One file filled by several threads"). The header is written at once.
  /// Space is checked against the filesystem's free space rather than reserved (reserving is that
  /// same serial work); a filesystem that runs full while the file is filled fails fill() with
  /// Errc::no_space. Where the file cannot be mapped (io.maps_writes() is false, or the
  /// filesystem refuses), its space is reserved and fill() writes at the offsets instead:
  /// mapped() says which.
  Status open_mapped(const std::filesystem::path& final_path, std::string header,
                     uint64_t data_size);
  /// Whether the file is filled through its mapping (open_mapped succeeded in mapping it).
  bool mapped() const { return map_ != nullptr; }
  /// A file opened with open_mapped: `length` bytes at `offset` (from the start of the file) are
  /// to be filled. Checks that they lie in the data part and counts them: finish() wants the
  /// claims to add up to the data size (the caller keeps them from overlapping). Any thread.
  Status claim(uint64_t offset, uint64_t length);
  /// A file opened with open_mapped: puts `bytes` at `offset` (claimed). One thread at a time
  /// writes them (pwrite: no page is zeroed first, and writes into one file serialize anyway); a
  /// thread that finds another writing copies into the mapping instead, then drops the pages it
  /// touched from this process's page tables (the bytes stay in the file), so that filling holds
  /// at most the pages of the fills under way. Unmapped, every fill writes. Safe on any thread,
  /// beside other fill() and claim() calls; finish() and abandon() must come after every fill()
  /// has returned.
  /// `source` (may be null): the input file `bytes` are mapped from, named (Errc::file_changed)
  /// when a page of it has vanished. Does not change status(): the caller keeps the failure.
  Status fill(uint64_t offset, std::span<const std::byte> bytes,
              const std::string* source = nullptr) const;

  /// Starts a stream to an already open descriptor (a pipe or stdout): no temp file, no rename.
  /// `hold_back`: the file's last bytes are not written but kept, for the caller to write
  /// together with what follows them (take_held; a tar stream, tar_target.h, so that it never
  /// pauses at an entry's end).
  Status open_stream(int fd, std::string name, std::string header, uint64_t data_size,
                     uint64_t hold_back = 0);
  /// After finish() of a stream opened with hold_back: the bytes held back (empty otherwise).
  std::string take_held() { return std::exchange(held_, {}); }

  /// Appends bytes (looping over short writes).
  Status append(std::span<const std::byte> bytes);
  /// Appends `length` bytes of `in_fd` from `in_offset` without passing them through user space:
  /// copy_file_range to a file (reflinks where the filesystem shares extents), splice to a pipe.
  /// Falls back to pwrite from `fallback` (the same bytes, e.g. from a mapping) when the kernel
  /// refuses. Returns whether the zero-copy path was used in `*zero_copy` when non-null. A source
  /// the kernel can no longer read (it ends early, or EFAULT from a mapping whose file shrank)
  /// fails with Errc::file_changed naming `source`, the input file's path.
  Status append_copy(int in_fd, uint64_t in_offset, uint64_t length,
                     std::span<const std::byte> fallback, bool* zero_copy = nullptr,
                     const std::string& source = "the input");
  /// Checks the byte count, fsyncs, renames into place and fsyncs the directory. With a final
  /// check set, runs it first (a stream's last pipeful went out as copies, so no spliced page of
  /// an input is left in its pipe: append_copy). `check` = false: the caller runs final_check()
  /// itself (ProcessTarget: once its command has read the file).
  Status finish(bool check = true);
  /// The final check alone (set_final_check); ok when none is set.
  Status final_check() const { return final_check_ ? final_check_() : Status(); }
  /// What finish() asks before the file is made final: that the inputs its bytes came from are
  /// as they were when opened (MappedFile::unchanged). A file copied from an input rewritten in
  /// place holds bytes of both versions, and no page vanished to say so. Set it before the first
  /// append_copy: with one, a stream into a pipe writes its last pipeful as copies.
  void set_final_check(std::function<Status()> check) { final_check_ = std::move(check); }
  /// Removes the temporary file (no-op when finished or never opened).
  void abandon();

  /// Stops between pieces of WRITE_PIECE bytes once *cancel is set (Errc::interrupted), so a
  /// Ctrl-C does not wait for a whole chunk to reach the disk. nullptr (the default): never.
  void set_cancel(const std::atomic<bool>* cancel) { cancel_ = cancel; }
  /// Bytes one write, copy or splice call moves at most.
  static constexpr size_t WRITE_PIECE = size_t{8} << 20;

  const Status& status() const { return status_; }
  uint64_t bytes_written() const { return position_; }
  const std::string& path() const { return display_path_; }

private:
  Status fail(Status s);
  bool cancelled() const { return cancel_ && cancel_->load(std::memory_order_relaxed); }
  Status write_bytes(std::span<const std::byte> bytes, const std::string* source);
  size_t hold(std::span<const std::byte> bytes);
  void write_behind();
  Status start_file(const std::filesystem::path& final_path, uint64_t header_size,
                    uint64_t data_size);
  Status create_temp(int access);
  Status reserve_space();
  Status check_space(); ///< fails with no_space when the filesystem has less free than the file
  uint64_t spliceable(uint64_t length) const; ///< of the next `length` bytes (append_copy)
  Status fill_by_write(uint64_t offset, std::span<const std::byte> bytes,
                       const std::string* source) const;
  Status fill_fault(uint64_t offset, const std::string* source) const;
  void unmap();
  Io* io_;
  const std::atomic<bool>* cancel_ = nullptr;
  int fd_ = -1;
  bool owns_fd_ = false;
  bool is_stream_ = false;
  std::function<Status()> final_check_;
  std::filesystem::path final_path_, temp_path_;
  std::string display_path_;
  uint64_t expected_size_ = 0;
  uint64_t data_begin_ = 0; ///< the header's size
  uint64_t position_ = 0;
  uint64_t hold_from_ = UINT64_MAX; ///< open_stream: bytes from here on are held, not written
  bool spliced_ = false;            ///< a stream: some bytes went into it by splice
  uint64_t since_splice_ = 0;       ///< a stream: bytes written (copies) since the last splice
  std::string held_;
  uint64_t started_ = 0, waited_ = 0; ///< write_behind: write-back started / waited for up to here
  std::byte* map_ = nullptr;          ///< open_mapped: the whole file, shared and writable
  mutable std::atomic_flag writing_;  ///< fill: a thread is writing (the others copy)
  bool filled_ = false;               ///< opened with open_mapped: claim() and fill()
  std::atomic<uint64_t> claimed_{0};  ///< bytes claimed so far
  Status status_;
};

/// Writes `dir`/model.safetensors.index.json (the text of index_json) atomically. Write it last:
/// it commits a sharded checkpoint.
Status write_index(Io& io, const std::filesystem::path& dir, uint64_t total_size,
                   const std::map<std::string, std::string>& weight_map);

/// Writes a whole small file atomically (temp, fsync, rename, dir fsync). Used for the index,
/// for copied side files and by tests.
Status write_file_atomic(Io& io, const std::filesystem::path& path,
                         std::span<const std::byte> bytes);

/// Removes, through `io`, leftover temporary files shardshift created in `dir` (name pattern
/// `.*.shardshift-tmp*`). Best effort: what cannot be removed stays.
void remove_temp_files(Io& io, const std::filesystem::path& dir);

/// fsyncs a directory so a rename in it is durable.
Status sync_directory(Io& io, const std::filesystem::path& dir);

} // namespace shardshift
