// write_stage.h: the last pipeline stage, and where output bytes go. The write stage takes items
// in output order and moves their bytes into the current output file through a ShardWriter:
// headers and buffers by write, pass-through runs by copy_file_range / splice (zero-copy). An
// OutputTarget decides where a file's ShardWriter points: a staged file in a directory, or an
// open descriptor (stdout, a pipe). A new destination is a new OutputTarget.
//
// A file filled at its offsets (FillMode::mapped: a tmpfs, with cores to spare) is not written in
// order by one lane's thread. Each of its items carries the file's FillingFile and its offset,
// fixed when it was cut; the write stage only checks the offset (claim), and fill() copies the
// bytes there from the parallel step after it, on whichever thread runs the item: several
// threads fill one file at once, which write calls into one file cannot (they serialize on the
// file's lock; PERFORMANCE.md, "One file filled by several threads"), and several lanes may take
// items of one file (emitter.h). A FillingFile counts the items cut and not yet filled; the last
// of them, or the file's close if it comes after them, finishes the file.
// Thread-safety: write() and abandon() from one thread at a time (the serial in-order stage);
// fill() from any thread, several at once; totals() from the serial stage or once the pipeline
// has ended.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/io.h"
#include "shardshift/profiler.h"
#include "shardshift/shard_writer.h"

#include "release_order.h"
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
  /// Whether open() opens files for filling at their offsets (ShardWriter::open_mapped), so that
  /// their items may be written in any order, by any lane.
  virtual bool fills_at_offsets() const { return false; }
  /// The run has failed (any file, any stage), once: no open file will be finished. A target
  /// whose writes can block on a consumer (a command that stopped reading) unblocks them now,
  /// rather than when the run's other lanes end. Called from any thread.
  virtual void run_failed() {}
};

/// How a directory's files are filled (PipelineConfig::fill, from fill_mode): each written in
/// order by its lane's one thread; or put in place by the threads that run its items, through a
/// shared mapping of it (ShardWriter::open_mapped).
enum class FillMode { write, mapped };

/// Each file staged under a temporary name in `dir`, fsync'ed and renamed into place.
/// A file whose name has a directory part ("original/params.json", a side file) gets its
/// subdirectories created first, through `io`. `fill`: whether files are opened mapped (FillMode).
class DirectoryTarget final : public OutputTarget {
public:
  explicit DirectoryTarget(std::filesystem::path dir, Io* io = nullptr,
                           FillMode fill = FillMode::write)
      : dir_(std::move(dir)), io_(io), mapped_(fill == FillMode::mapped) {}
  Status open(ShardWriter& writer, const OutputFile& file) override {
    if (io_ && file.name.find('/') != std::string::npos)
      if (Status s = make_directories(*io_, (dir_ / file.name).parent_path()); !s.ok())
        return s;
    if (mapped_)
      return writer.open_mapped(dir_ / file.name, file.header, file.data_size);
    return writer.open(dir_ / file.name, file.header, file.data_size);
  }
  bool fills_at_offsets() const override { return mapped_; }

private:
  std::filesystem::path dir_;
  Io* io_;
  bool mapped_;
};

/// A file filled at its offsets, shared by the lanes that take its items and by those items
/// (Item::fill).
struct FillingFile {
  const OutputFile* file = nullptr;
  std::unique_ptr<ShardWriter> writer; ///< set by the open item's write stage
  std::atomic<bool> opened{false};     ///< writer is open: other lanes may take items
  /// Items cut and not yet filled, plus one until the file's close has been reached.
  std::atomic<uint64_t> pending{1};
  std::atomic<bool> failed{false}; ///< a fill failed, or the run did: abandon rather than finish
  ReleaseOrder release;            ///< when its items' input may be released
};

/// The file's bytes written to an open descriptor (stdout or a pipe); nothing to rename.
class StreamTarget final : public OutputTarget {
public:
  explicit StreamTarget(int fd) : fd_(fd) {}
  /// The file's last byte is held back (held()), to go out once the run has checked that its
  /// input did not change while it was read: a run that fails then never leaves its reader a
  /// file of the planned size.
  Status open(ShardWriter& writer, const OutputFile& file) override {
    return writer.open_stream(fd_, file.name, file.header, file.data_size, 1);
  }
  Status finish(ShardWriter& writer, const OutputFile&) override {
    Status s = writer.finish();
    if (s.ok())
      held_ = writer.take_held();
    return s;
  }
  const std::string& held() const { return held_; }

private:
  int fd_;
  std::string held_;
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
  /// `input`: the checkpoint the plan reads; each file is made final only while it is unchanged
  /// (ShardWriter::set_final_check).
  WriteStage(Io& io, const Checkpoint& input, const Plan& plan, OutputTarget& target,
             Profiler& profiler, const std::atomic<bool>* cancel = nullptr)
      : io_(io), input_(input), plan_(plan), target_(target), profiler_(profiler), cancel_(cancel) {
  }
  ~WriteStage() { abandon(); }

  /// Moves the item's bytes to the output (or opens / finishes a file). For a file filled at its
  /// offsets (Item::fill), opens it, or checks the item's place (Item::fill_offset) for fill().
  Status write(Item& item);
  /// Puts an item of a filled file at its offset (nothing for other items); its close, or the
  /// last of its items after the close, finishes the file. `skip` (the run has failed): copies
  /// nothing, and the file is abandoned rather than finished. Any thread.
  Status fill(Item& item, bool skip);
  /// Removes the file being written, if any (after a failure).
  void abandon();
  WriteTotals totals() const {
    WriteTotals t = totals_;
    t.output_bytes += filled_output_bytes_.load();
    return t;
  }

private:
  Status open_file(const Item& item);
  Status copy_run(const Item& item);
  Status append_chunk(const Item& item);
  Status close_file(const Item& item);
  Status open_filled(Item& item);
  Status claim(Item& item);
  /// One of the file's pending counts is done; the last finishes (or abandons) it.
  Status release(const std::shared_ptr<FillingFile>& f);

  /// A new writer for one of the plan's files, checked against the input at its finish.
  std::unique_ptr<ShardWriter> new_writer() const;

  Io& io_;
  const Checkpoint& input_;
  const Plan& plan_;
  OutputTarget& target_;
  Profiler& profiler_;
  const std::atomic<bool>* cancel_;
  std::unique_ptr<ShardWriter> writer_;
  const OutputFile* open_file_ = nullptr; ///< the file writer_ is writing
  WriteTotals totals_;
  std::atomic<uint64_t> filled_output_bytes_{0}; ///< mapped files finished (by any thread)
};

} // namespace shardshift
