// emitter.h: the first pipeline stage. Walks the plan's files [first, end) in order and cuts them
// into work items: open, copy runs, transform chunks of at most `chunk` bytes, ones, close.
// Thread-safety: used by one thread (the serial first stage).
#pragma once

#include "cuda_transform.h"
#include "work_item.h"

#include <memory>

namespace shardshift {

class Emitter {
public:
  Emitter(const Checkpoint& in, const Plan& plan, uint64_t chunk, CudaTransformer* gpu,
          size_t first_file, size_t end_file)
      : in_(in), plan_(plan), chunk_(chunk), gpu_(gpu), f_(first_file), end_(end_file) {}

  /// The next item in output order; nullptr when every file has been emitted.
  std::unique_ptr<Item> next();

private:
  std::unique_ptr<Item> make(ItemKind kind);
  std::unique_ptr<Item> copy_run(const OutputFile& file);
  std::unique_ptr<Item> transform_chunk(const OutputTensor& t);

  const Checkpoint& in_;
  const Plan& plan_;
  uint64_t chunk_;
  CudaTransformer* gpu_;
  size_t f_, end_, k_ = 0; ///< current file, end, tensor within the file
  bool opened_ = false;
  uint64_t e_ = 0, c_ = 0; ///< next expert, next column of the current transform tensor
};

} // namespace shardshift
