// buffer_pool.cpp: page-aligned (or pinned) chunk buffers, reused for the whole conversion.
#include "buffer_pool.h"

#include <cstdlib>
#include <string>

namespace shardshift {

BufferPool::~BufferPool() {
  for (std::byte* p : all_)
    gpu_ ? gpu_->free_pinned(p) : std::free(p);
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
  all_.push_back(static_cast<std::byte*>(p));
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

} // namespace shardshift
