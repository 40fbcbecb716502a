// write_stage.h: the last pipeline stage, and where output bytes go. The write stage takes items
// in output order and moves their bytes into the current output file through a ShardWriter:
// headers and buffers by write, pass-through runs by copy_file_range / splice (zero-copy). An
// OutputTarget decides where a file's ShardWriter points: a staged file in a directory, or an
// open descriptor (stdout, a pipe). A new destination is a new OutputTarget.
// Thread-safety: one thread at a time (the serial in-order stage).
#pragma once

#include "shardshift/io.h"
#include "shardshift/profiler.h"
#include "shardshift/shard_writer.h"

#include "work_item.h"

#include <atomic>
#include <filesystem>
#include <memory>

namespace shardshift {

/// Where an output file's bytes go. open, then finish or abandon, once per file; several lanes
/// may have different files open at once, so implementations keep per-file state thread-safe.
class OutputTarget {
public:
  virtual ~OutputTarget() = default;
  /// Starts `file` on `writer` (which writes its header).
  virtual Status open(ShardWriter& writer, const OutputFile& file) = 0;
  /// Every byte of `file` has been written: make it final (rename, or a consumer's success).
  virtual Status finish(ShardWriter& writer, const OutputFile& file) {
    (void)file;
    return writer.finish();
  }
  /// `file` failed or was cancelled: make sure nobody takes it for finished.
  virtual void abandon(ShardWriter& writer, const OutputFile& file) {
    (void)file;
    writer.abandon();
  }
};

/// Each file staged under a temporary name in `dir`, fsync'ed and renamed into place.
/// A file whose name has a directory part ("original/params.json", a side file) gets its
/// subdirectories created first, through `io`.
class DirectoryTarget final : public OutputTarget {
public:
  explicit DirectoryTarget(std::filesystem::path dir, Io* io = nullptr)
      : dir_(std::move(dir)), io_(io) {}
  Status open(ShardWriter& writer, const OutputFile& file) override {
    if (io_ && file.name.find('/') != std::string::npos)
      if (Status s = make_directories(*io_, (dir_ / file.name).parent_path()); !s.ok())
        return s;
    return writer.open(dir_ / file.name, file.header, file.data_size);
  }

private:
  std::filesystem::path dir_;
  Io* io_;
};

/// The file's bytes written to an open descriptor (stdout or a pipe); nothing to rename.
class StreamTarget final : public OutputTarget {
public:
  explicit StreamTarget(int fd) : fd_(fd) {}
  Status open(ShardWriter& writer, const OutputFile& file) override {
    return writer.open_stream(fd_, file.name, file.header, file.data_size);
  }

private:
  int fd_;
};

struct WriteTotals {
  uint64_t done = 0;                                     ///< bytes of output written so far
  uint64_t zero_copy_bytes = 0, fallback_copy_bytes = 0; ///< pass-through runs, by path
  uint64_t ones_bytes = 0;
  uint64_t output_bytes = 0; ///< bytes of finished files
};

class WriteStage {
public:
  /// `cancel` (may be nullptr): once set, writes stop within a ShardWriter::WRITE_PIECE.
  WriteStage(Io& io, const Plan& plan, OutputTarget& target, Profiler& profiler,
             const std::atomic<bool>* cancel = nullptr)
      : io_(io), plan_(plan), target_(target), profiler_(profiler), cancel_(cancel) {}
  ~WriteStage() { abandon(); }

  /// Moves the item's bytes to the output (or opens / finishes a file).
  Status write(const Item& item);
  /// Removes the file being written, if any (after a failure).
  void abandon();
  const WriteTotals& totals() const { return totals_; }

private:
  Status open_file(const Item& item);
  Status copy_run(const Item& item);
  Status append_chunk(const Item& item);
  Status close_file(const Item& item);

  Io& io_;
  const Plan& plan_;
  OutputTarget& target_;
  Profiler& profiler_;
  const std::atomic<bool>* cancel_;
  std::unique_ptr<ShardWriter> writer_;
  const OutputFile* open_file_ = nullptr; ///< the file writer_ is writing
  WriteTotals totals_;
};

} // namespace shardshift
