// device_router.h: which device transforms the next chunk, when a GPU is open. The GPU stage costs
// the calling CPU thread too: it page-locks the chunk's input in place (or copies it into pinned
// memory) and waits for the upload, the kernel and the download, and on a host whose SIMD kernel
// is about as fast as that, the GPU only adds host memory traffic (docs/PERFORMANCE.md, "GPU or
// CPU"). So the router measures what a
// chunk has cost a pipeline thread per byte on each device (moving averages) and sends chunks to
// the cheaper one, re-trying the other every PROBE_EVERY chunks in case the load changed. The
// output is the same whichever device runs a chunk; only the time differs. For comparisons,
// SHARDSHIFT_ROUTER=cpu sends the GPU nothing (it is still opened) and =gpu every chunk.
// Thread-safety: all members are thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

namespace shardshift {

class DeviceRouter {
public:
  static constexpr uint64_t WARMUP = 4;       ///< samples of each device before choosing
  static constexpr uint64_t PROBE_EVERY = 32; ///< then, one chunk in this many tries the other

  /// Whether the next chunk should try the GPU.
  bool prefer_gpu();
  /// A chunk of `bytes` took `ns` of a pipeline thread's time on the GPU (or the CPU).
  void record(bool gpu, uint64_t bytes, uint64_t ns);

  /// Current estimates in nanoseconds per byte (0 until measured), for tests and --stats.
  double cpu_cost() const;
  double gpu_cost() const;

private:
  std::atomic<uint64_t> chunks_{0};
  mutable std::mutex mu_;
  double cost_[2] = {0, 0};  ///< [cpu, gpu] ns per byte, moving averages
  uint64_t samples_[2] = {0, 0};
};

} // namespace shardshift
