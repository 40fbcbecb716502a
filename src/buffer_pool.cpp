// buffer_pool.cpp: page-aligned (or pinned) chunk buffers, reused for the whole conversion.
#include "buffer_pool.h"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace shardshift {

BufferPool::BufferPool(uint64_t bytes, GpuHandle* gpu) : bytes_(bytes), handle_(gpu) {
  if (handle_)
    handle_->on_open([this](CudaTransformer& device) { pin_all(device); });
}

BufferPool::~BufferPool() {
  if (handle_)
    handle_->remove_hook(); // pin_all is not running and will not run
  for (const Buffer& b : all_) {
    switch (b.kind) {
    case Kind::allocated_pinned:
      gpu_->free_pinned(b.p);
      break;
    case Kind::pinned_in_place:
      gpu_->unpin_in_place(b.p);
      std::free(b.p);
      break;
    case Kind::plain:
      std::free(b.p);
      break;
    }
  }
}

Result<std::byte*> BufferPool::acquire() {
  std::lock_guard lock(mu_);
  if (!free_.empty()) {
    std::byte* p = free_.back();
    free_.pop_back();
    return p;
  }
  void* p = gpu_ ? gpu_->alloc_pinned(bytes_) : std::aligned_alloc(4096, bytes_);
  if (!p)
    return Status(Errc::io,
                  "out of memory allocating a " + std::to_string(bytes_) + "-byte buffer");
  all_.push_back({static_cast<std::byte*>(p), gpu_ ? Kind::allocated_pinned : Kind::plain});
  return static_cast<std::byte*>(p);
}

void BufferPool::release(std::byte* p) {
  std::lock_guard lock(mu_);
  free_.push_back(p);
}

size_t BufferPool::in_use() {
  std::lock_guard lock(mu_);
  return all_.size() - free_.size();
}

bool BufferPool::pinned(const std::byte* p) {
  std::lock_guard lock(mu_);
  const auto it = std::find_if(all_.begin(), all_.end(), [&](const Buffer& b) { return b.p == p; });
  return it != all_.end() && it->kind != Kind::plain;
}

// Runs on the GPU's opening thread (GpuHandle::on_open). Pinning a buffer in place is a slow
// system call (it locks every page), so it happens outside the lock: the pipeline keeps taking
// and returning buffers meanwhile; the contents are untouched.
void BufferPool::pin_all(CudaTransformer& gpu) {
  std::vector<std::byte*> plain;
  {
    std::lock_guard lock(mu_);
    gpu_ = &gpu;
    for (const Buffer& b : all_)
      plain.push_back(b.p);
  }
  for (std::byte* p : plain) {
    if (!gpu.pin_in_place(p, bytes_))
      continue; // stays pageable: pinned() keeps such a buffer's chunks on the CPU
    std::lock_guard lock(mu_);
    for (Buffer& b : all_)
      if (b.p == p)
        b.kind = Kind::pinned_in_place;
  }
}

} // namespace shardshift
