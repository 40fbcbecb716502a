// emitter.h: the first pipeline stage of one writer lane. Takes output files from the shared
// FileQueue, one at a time, and cuts each into work items: open, pieces of copy runs and transform
// chunks of at most `chunk` bytes (stacked tensors: whole experts or rows of one, made from
// every piece of those experts; dequantized weights: rows), ones, close.
//
// Where files are filled at their offsets (FillMode::mapped: several threads put a file's bytes
// in place at once), a file is not tied to the lane that opened it. A lane that finds the queue
// empty helps with the open file that has the most bytes left to cut, when that file holds more
// than half of all the bytes left (the file that would otherwise be written last, alone): it
// takes that file's next items, under the file's lock, into its own pipeline; otherwise the lane
// ends. The run then ends when the last items are written, not when the lane of the largest file
// has written it alone (docs/PERFORMANCE.md, "Lanes that help"). Each item's offset is fixed as
// it is cut, in the file's order, so which lane writes it changes nothing in the output.
// Thread-safety: an Emitter is used by one thread at a time (its lane's serial first stage); the
// FileQueue and the files it hands out are shared by every lane.
#pragma once

#include "gpu_handle.h"
#include "work_item.h"
#include "write_stage.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

namespace shardshift {

/// Where the cutting of one output file stands.
struct FileCursor {
  uint32_t file = 0;
  bool opened = false;   ///< its open item was cut
  bool closed = false;   ///< its close item was cut: nothing is left
  size_t k = 0;          ///< next tensor within the file
  uint64_t run_done = 0; ///< bytes of the current copy run already cut
  uint64_t e = 0, c = 0; ///< next expert, next column (stack: row) of the current tensor
  uint64_t offset = 0;   ///< where the next data item goes in the file (filled files)
  uint64_t seq = 0;      ///< the next item's Item::fill_seq
  uint64_t readers = 0;  ///< the first item reading the input the current tensor's chunks share
};

/// An output file being cut into items, by the lane that took it and by any that help.
struct FileWork {
  std::mutex mu; ///< guards `at`
  FileCursor at;
  /// Set when the file is filled at its offsets (its items carry it): its open, its pending
  /// items and its finish (write_stage.h).
  std::shared_ptr<FillingFile> fill;
  std::atomic<uint64_t> left{0}; ///< data bytes not yet cut
};

/// The output files still to write (indices into Plan::files), handed out first come, first
/// served: the plan lists big files first or in order, and a lane that finishes early takes the
/// next one, so lanes stay busy without a schedule computed ahead. With `help`, files are filled
/// at their offsets and the queue also keeps those in progress for lanes to help with.
class FileQueue {
public:
  /// `plan`: the files' sizes and headers; `filled`: each file is filled at its offsets
  /// (FillMode::mapped); `help` (only with `filled`): lanes left without a file help others.
  FileQueue(std::span<const uint32_t> files, const Plan& plan, bool filled = false,
            bool help = false)
      : files_(files), plan_(plan), filled_(filled), help_(filled && help) {}
  /// Whether lanes out of files may help with others' (`filled` and `help`).
  bool helps() const { return help_; }
  /// The next file, or nullptr when none is left.
  std::shared_ptr<FileWork> take();
  /// With `help`: the file in progress, open, with the most bytes left to cut, if it holds more
  /// than half of the bytes left in all files taken (nullptr: none).
  std::shared_ptr<FileWork> help();

private:
  std::span<const uint32_t> files_;
  const Plan& plan_;
  const bool filled_, help_;
  std::atomic<size_t> next_{0};
  std::mutex mu_; ///< guards active_
  std::vector<std::shared_ptr<FileWork>> active_;
};

class Emitter {
public:
  Emitter(const Checkpoint& in, const Plan& plan, uint64_t chunk, const GpuHandle* gpu,
          FileQueue& queue)
      : in_(in), plan_(plan), chunk_(chunk), gpu_(gpu), queue_(queue) {}

  /// Data bytes of the items this emitter cut from files another lane took (FileQueue::help).
  uint64_t helped_bytes() const { return helped_bytes_; }

  /// The next item: in output order within each file; nullptr when the queue has no more files
  /// (and, where lanes help, no file in progress has items left).
  std::unique_ptr<Item> next();
  /// Whether the next item comes from a file not yet taken (the last one was cut to its close).
  bool between_files() const { return !work_; }

private:
  std::unique_ptr<Item> cut(); ///< the next item of the current file; nullptr at its end
  std::unique_ptr<Item> make(ItemKind kind);
  std::unique_ptr<Item> copy_piece(const OutputFile& file);
  std::unique_ptr<Item> transform_chunk(const OutputTensor& t);
  std::unique_ptr<Item> stack_chunk(const OutputTensor& t);
  std::unique_ptr<Item> dequant_chunk(const OutputTensor& t);
  std::unique_ptr<Item> quantize_chunk(const OutputTensor& t);
  static uint64_t block_rows(uint64_t rows);
  void set_dequant(StackPart& part, TensorRef source, TensorRef scale, bool transpose,
                   uint64_t begin, uint64_t count, uint64_t pitch, DType dst);

  const Checkpoint& in_;
  const Plan& plan_;
  uint64_t chunk_;
  const GpuHandle* gpu_; ///< non-null: chunks the GPU can take are marked on_gpu
  FileQueue& queue_;
  std::shared_ptr<FileWork> work_; ///< the file being cut
  FileCursor* at_ = nullptr;       ///< its cursor (locked while cutting)
  bool helping_ = false;           ///< work_ came from FileQueue::help
  uint64_t helped_bytes_ = 0;
};

} // namespace shardshift
