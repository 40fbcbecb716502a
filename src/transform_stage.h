// transform_stage.h: the parallel pipeline stage. Fills a transform item's buffer with the
// transpose-fold of its chunk (on the CUDA stage when the item is marked for it, else on the CPU
// with SIMD: same bits either way) and a ones item's buffer with ones. Other items pass through.
// Thread-safety: run() is called concurrently on different items.
#pragma once

#include "shardshift/profiler.h"

#include "cuda_transform.h"
#include "work_item.h"

#include <atomic>

namespace shardshift {

class TransformStage {
public:
  TransformStage(CudaTransformer* gpu, Profiler& profiler) : gpu_(gpu), profiler_(profiler) {}

  /// Produces the item's bytes; a failure (e.g. the input shrank under the mapping) is left in
  /// item.status.
  void run(Item& item);

  uint64_t cpu_bytes() const { return cpu_bytes_; }
  uint64_t gpu_bytes() const { return gpu_bytes_; }

private:
  void run_gpu(Item& item, uint64_t t0);
  void run_cpu(Item& item, uint64_t t0);

  CudaTransformer* gpu_;
  Profiler& profiler_;
  std::atomic<uint64_t> cpu_bytes_{0}, gpu_bytes_{0};
};

/// The bit pattern of 1 in `dtype` (for C64, of its real part). REQUIRES: dtype_bits(dtype) >= 8.
uint64_t one_bits(DType dtype);
/// Writes `count` ones of `dtype` (little-endian) at dst. REQUIRES: dtype_bits(dtype) >= 8.
void fill_ones(std::byte* dst, DType dtype, uint64_t count);

} // namespace shardshift
