// transform_stage.h: the parallel pipeline stage. Fills a transform item's buffer with the
// transpose-fold of its chunk and a ones item's buffer with ones; other items pass through. An
// item the GPU can take goes to the CUDA stage when the DeviceRouter finds the GPU the cheaper
// device and one of its staging slots is free at once, and is done on the CPU with SIMD
// otherwise: the same bits either way, and the GPU adds to the CPU's throughput, never holds it
// back. The same holds for chunks that dequantize (a stacked tensor of FP8 pieces, rows of an
// FP8 weight), routed by their own measurements; other stacked chunks run on the CPU. While the
// GPU works on a chunk, its thread is free for other work (gpu_wait.h).
// Thread-safety: run() is called concurrently on different items.
#pragma once

#include "shardshift/profiler.h"

#include "buffer_pool.h"
#include "cuda_transform.h"
#include "device_router.h"
#include "gpu_handle.h"
#include "work_item.h"

#include <atomic>
#include <vector>

namespace shardshift {

class TransformStage {
public:
  /// `gpu` (may be null): the run's GPU, open or opening; `pool`: where item buffers come from
  /// (needed with a GPU only).
  TransformStage(GpuHandle* gpu, BufferPool* pool, Profiler& profiler)
      : handle_(gpu), pool_(pool), profiler_(profiler) {}

  /// Produces the item's bytes; a failure (e.g. the input shrank under the mapping) is left in
  /// item.status.
  void run(Item& item);

  uint64_t cpu_bytes() const { return cpu_bytes_; }
  uint64_t gpu_bytes() const { return gpu_bytes_; }
  /// Input bytes the GPU read straight from the mappings (page-locked in place, not staged).
  uint64_t gpu_in_place_bytes() const { return gpu_in_place_bytes_; }
  /// Input bytes the GPU uploaded, read in place or staged (its output is gpu_bytes()).
  uint64_t gpu_input_bytes() const { return gpu_input_bytes_; }

private:
  /// One chunk's call to the GPU as its pipeline thread sees it: how it waits (its task
  /// suspended, gpu_wait.h), what it cost the thread, and its profiler spans.
  class GpuCall {
  public:
    GpuCall(TransformStage& stage, const Item& item, uint64_t t0);
    GpuWait wait; ///< empty: the thread sleeps on the stream
    /// Thread time since t0, the time the task was suspended left out.
    uint64_t thread_ns() const;
    /// The spans of a chunk the GPU ran: the thread's (two when it was suspended: before and
    /// after), the phases on the stream's track. Counts its bytes as the GPU's.
    void record(const CudaTimings& tm);

  private:
    TransformStage& stage_;
    const Item& item_;
    const uint64_t t0_;
    uint64_t suspended_at_ = 0, resumed_at_ = 0;
    bool suspended_ = false;
  };

  /// A chunk on the GPU; false: no free slot, nothing done.
  bool run_gpu(Item& item, CudaTransformer& gpu, GpuCall& call);
  /// A chunk whose parts all dequantize, on the GPU; false: it did not take it, nothing done.
  bool run_gpu_dequant(Item& item, CudaTransformer& gpu, GpuCall& call);
  void run_cpu(Item& item, uint64_t t0);
  void run_stack(Item& item, uint64_t t0); ///< a chunk of a stacked tensor: CPU only
  /// One dequantizing part of a stack or dequant chunk (CPU only); `scales` is scratch.
  void run_dequant(Item& item, StackPart& part, std::vector<std::byte>& scales);
  /// A chunk of a --quantize fp8 output: codes or block scales (CPU only).
  void run_quantize(Item& item, uint64_t t0);

  /// The GPU for this item, or an empty Use: not open (yet), retired, or the item's buffer is not
  /// pinned.
  GpuHandle::Use gpu_for(Item& item);

  GpuHandle* handle_;
  BufferPool* pool_;
  Profiler& profiler_;
  DeviceRouter router_;         ///< transpose-fold chunks
  DeviceRouter dequant_router_; ///< dequantizing chunks: a different cost on either device
  std::atomic<uint64_t> cpu_bytes_{0}, gpu_bytes_{0}, gpu_in_place_bytes_{0}, gpu_input_bytes_{0};
};

/// The bit pattern of 1 in `dtype` (for C64, of its real part). REQUIRES: dtype_bits(dtype) >= 8.
uint64_t one_bits(DType dtype);
/// Writes `count` ones of `dtype` (little-endian) at dst. REQUIRES: dtype_bits(dtype) >= 8.
void fill_ones(std::byte* dst, DType dtype, uint64_t count);

} // namespace shardshift
