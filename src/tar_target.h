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
// entry, `tar x` reports an unexpected end of file. Cut between entries it would not: GNU tar
// takes an archive that ends at an entry boundary for complete, end blocks or not. So after a
// failure the caller calls end_incomplete(), which at a boundary writes one block that is not a
// tar header (a line of text saying the stream is incomplete), and `tar x` fails on it.
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
  TarTarget(Io& io, int fd, const std::atomic<bool>* cancel = nullptr)
      : io_(io), fd_(fd), cancel_(cancel) {}

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
  /// After a failure: ends the stream so that no tar reads it as a whole archive (see above).
  /// Best effort: when stdout itself failed, nothing more can be written, and nothing needs to be.
  /// A run stopped while its reader has stopped reading does not wait for room: the pipe is
  /// grown to take the block (stream_fd.h, make_room), so that a reader that reads on later
  /// still finds it.
  void end_incomplete();

private:
  Status write_directories(std::string_view name);
  /// `room_when_stopped`: stopped while the stream is full, grow the pipe once (make_room)
  /// rather than give up.
  Status write(std::string_view bytes, const std::string& what, bool room_when_stopped = false);

  Io& io_;
  int fd_;
  const std::atomic<bool>* cancel_;
  std::set<std::string> directories_; ///< directory entries written so far ("original/")
  bool inside_entry_ = false;         ///< bytes of an entry went out, and not yet all of its blocks
};

} // namespace shardshift
