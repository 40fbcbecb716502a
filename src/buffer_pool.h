// buffer_pool.h: the output buffers of transform and ones chunks. At most `tokens` are ever live
// (the pipeline's token count), so acquire() never waits; they are allocated on first use and
// reused. With a GPU they are page-locked, so device-to-host copies land in them directly: the
// GPU opens beside the work (gpu_handle.h), so buffers made before it is open are ordinary and
// are pinned in place when it opens, before any chunk can reach it; later ones are pinned in
// place as they are made. A buffer that cannot be pinned stays ordinary, and its chunks run on
// the CPU.
// Thread-safety: all members are thread-safe.
#pragma once

#include "shardshift/status.h"

#include "gpu_handle.h"

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace shardshift {

class BufferPool {
public:
  /// Buffers of `bytes`; `gpu` (may be null) is the run's GPU, open or opening.
  BufferPool(uint64_t bytes, GpuHandle* gpu);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  Result<std::byte*> acquire();
  void release(std::byte* p);
  size_t in_use();
  /// Whether the device can write into p directly (p from acquire()).
  bool pinned(const std::byte* p);
  /// The device is done with the buffers (GpuHandle::retire): unlocks them, once the pinning of
  /// any buffer being made has ended. They stay in use by the rest of the run, as ordinary
  /// memory, as do buffers made from now on, and the pool no longer refers to the handle, which
  /// may then go first.
  void unpin_all(CudaTransformer& gpu);

private:
  enum class Kind { plain, pinned_in_place };
  struct Buffer {
    std::byte* p;
    Kind kind;
  };
  /// The GPU has opened: the buffers made before are pinned in place (later ones as they are made).
  void pin_all(CudaTransformer& gpu);

  uint64_t bytes_;
  GpuHandle* handle_;
  CudaTransformer* gpu_ = nullptr; ///< guarded by mu_: set once the device is open, until unpin_all
  std::mutex mu_;
  std::condition_variable unpinned_; ///< signalled when pinning_ drops
  unsigned pinning_ = 0; ///< guarded by mu_: acquire() calls pinning a new buffer outside mu_
  std::vector<Buffer> all_;
  std::vector<std::byte*> free_;
};

} // namespace shardshift
