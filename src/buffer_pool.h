// buffer_pool.h: the output buffers of transform and ones chunks. At most `tokens` are ever live
// (the pipeline's token count), so acquire() never waits; they are allocated on first use and
// reused. With a GPU they are pinned, so device-to-host copies land in them directly.
// Thread-safety: all members are thread-safe.
#pragma once

#include "shardshift/status.h"

#include "cuda_transform.h"

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace shardshift {

class BufferPool {
public:
  BufferPool(uint64_t bytes, CudaTransformer* gpu) : bytes_(bytes), gpu_(gpu) {}
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  Result<std::byte*> acquire();
  void release(std::byte* p);
  size_t in_use();

private:
  uint64_t bytes_;
  CudaTransformer* gpu_;
  std::mutex mu_;
  std::vector<std::byte*> all_, free_;
};

} // namespace shardshift
