// tar_target.h: a whole output directory as one POSIX tar stream (`convert IN - --format tar`),
// for `| ssh host tar x`, `| aws s3 cp -` or `| zstd`.
//
// Every size is known before a file's first byte (the plan's header and data sizes, the side
// files, the index text), so each entry is its 512-byte ustar header, the file's bytes as the
// write stage produces them (pass-through runs spliced), and zeros up to the next 512-byte
// boundary; nothing is buffered. A name longer than ustar allows (100 bytes, or 155 + 100 split
// at a '/') or a file of 8 GiB or more gets a pax extended header ('x') before its entry; other
// entries are plain ustar. Headers are fixed apart from name and size (mode 0644 or 0755, uid
// and gid 0, empty user and group names, mtime 0), so one plan gives the same stream every run.
//
// The two zero blocks that end an archive are written by close() only, which the caller calls
// after every entry succeeded. A failed conversion stops the stream without them. Cut inside an
// entry, `tar x` (and Python's tarfile) report an unexpected end of file. Cut between entries they
// would not: they take an archive that ends at an entry's end for complete, end blocks or not.
// Nor in the block after an entry's end: a header cut short there reads as the archive's end.
// So the stream never pauses between a file's last byte and the next file's full header: an
// entry's last byte and its padding are held back (the last byte of a file's data by its
// ShardWriter, hold_back) and go out in one write with the next file's header (and the entries
// of no bytes before it, directories and empty files, held whole), or with the end of archive.
// On a non-blocking pipe, a write of at most PIPE_BUF goes out whole or not at all; a longer one
// waits for the pipe to empty, which then takes it whole. A run that stops, however full the
// pipe and whatever its reader does, has then left the stream inside a file's bytes, and
// end_incomplete() drops what is held. A regular file (`> out.tar`) takes no write whole: a full
// disk or a size limit takes what fits, which may end exactly at an entry's end. There
// end_incomplete() truncates the file back to before the last data byte written, which is this
// run's, so that the archive again ends inside an entry.
//
// Thread-safety: one writer lane (the stream is ordered); entries are written one at a time.
#pragma once

#include "write_stage.h"

#include <atomic>
#include <set>
#include <string>
#include <string_view>

namespace shardshift {

/// The tar header block(s) of one entry: a pax extended header first when the name or the size
/// does not fit ustar. `type` is '0' (a regular file) or '5' (a directory, `name` ending in '/').
std::string tar_header(std::string_view name, uint64_t size, char type = '0');

/// Zeros that pad an entry of `size` bytes to a multiple of 512.
uint64_t tar_padding(uint64_t size);

class TarTarget final : public OutputTarget {
public:
  /// `cancel` (may be null): once set, a wait for a full stream ends (Errc::interrupted).
  TarTarget(Io& io, int fd, const std::atomic<bool>* cancel = nullptr);

  /// Writes the entry's header (and the directory entries its path needs), then starts `writer`
  /// on the descriptor for the file's bytes.
  Status open(ShardWriter& writer, const OutputFile& file) override;
  /// Checks that every byte went out, then pads the entry to 512 bytes.
  Status finish(ShardWriter& writer, const OutputFile& file) override;
  void abandon(ShardWriter& writer, const OutputFile& file) override;

  /// One whole small file (a side file, SHA256SUMS, the index) as an entry.
  Status deliver(const std::string& name, std::string_view bytes);
  /// The end-of-archive marker (two zero blocks). Call once, after every entry succeeded.
  Status close();
  /// After a failure: drops the bytes held back, so that the stream ends inside an entry and
  /// no tar reads it as a whole archive (see above); into a regular file, cuts it back inside
  /// the last entry begun where a short write went past it. Never waits.
  void end_incomplete();

private:
  /// Directory entries the path needs, held (they have no bytes of their own).
  void hold_directories(std::string_view name);
  /// What is held, then `bytes`: the start of an entry (its header, and for a small file its
  /// bytes but the last) or the end of the archive, in one write (see the .cpp).
  Status write_after_held(std::string bytes, const std::string& what);
  /// `bytes` until all went out, waiting for room in a full stream until stopped.
  Status write(std::string_view bytes, const std::string& what);
  /// Into a regular file: the entry just begun ends its data `left` bytes past the file's
  /// offset now (what end_incomplete() cuts back to before).
  void data_ends_in(uint64_t left);

  Io& io_;
  int fd_;
  const std::atomic<bool>* cancel_;
  std::set<std::string> directories_; ///< directory entries written so far ("original/")
  std::string held_;     ///< the end of the entries so far, not yet written (see above)
  bool regular_ = false; ///< fd_ is a regular file (see above)
  off_t data_end_ = -1;  ///< in a regular file: the offset after the last begun entry's data
};

} // namespace shardshift
