// emitter.h: the first pipeline stage of one writer lane. Takes output files from the shared
// FileQueue, one at a time, and cuts each into work items: open, pieces of copy runs and transform
// chunks of at most `chunk` bytes (stacked tensors: whole experts or rows of one, made from
// every piece of those experts; dequantized weights: rows), ones, close.
// Thread-safety: an Emitter is used by one thread at a time (its lane's serial first stage); the
// FileQueue is shared by every lane.
#pragma once

#include "gpu_handle.h"
#include "work_item.h"

#include <atomic>
#include <memory>
#include <span>

namespace shardshift {

/// The output files still to write (indices into Plan::files), handed out first come, first
/// served: the plan lists big files first or in order, and a lane that finishes early takes the
/// next one, so lanes stay busy without a schedule computed ahead.
class FileQueue {
public:
  explicit FileQueue(std::span<const uint32_t> files) : files_(files) {}
  /// The next file, or false when none is left.
  bool take(uint32_t* file) {
    const size_t i = next_.fetch_add(1);
    if (i >= files_.size())
      return false;
    *file = files_[i];
    return true;
  }

private:
  std::span<const uint32_t> files_;
  std::atomic<size_t> next_{0};
};

class Emitter {
public:
  Emitter(const Checkpoint& in, const Plan& plan, uint64_t chunk, const GpuHandle* gpu,
          FileQueue& queue)
      : in_(in), plan_(plan), chunk_(chunk), gpu_(gpu), queue_(queue) {}

  /// The next item in output order; nullptr when the queue has no more files.
  std::unique_ptr<Item> next();

private:
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
  uint32_t f_ = 0; ///< current file
  bool have_file_ = false;
  bool opened_ = false;    ///< its open item was emitted
  size_t k_ = 0;           ///< next tensor within the file
  uint64_t run_done_ = 0;  ///< bytes of the current copy run already emitted
  uint64_t e_ = 0, c_ = 0; ///< next expert, next column (stack: row) of the current tensor
};

} // namespace shardshift
