// buffer_pool.cpp: page-aligned chunk buffers (page-locked with a GPU), reused for the whole
// conversion.
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
  {
    std::lock_guard lock(mu_);
    if (!free_.empty()) {
      std::byte* p = free_.back();
      free_.pop_back();
      return p;
    }
  }
  auto* p = static_cast<std::byte*>(std::aligned_alloc(4096, bytes_));
  if (!p)
    return Status(Errc::io,
                  "out of memory allocating a " + std::to_string(bytes_) + "-byte buffer");
  // Listed and the device read under one lock: either the device is not open yet, and pin_all
  // will pin the buffer with the others, or it is, and the buffer is pinned here.
  CudaTransformer* gpu = nullptr;
  {
    std::lock_guard lock(mu_);
    all_.push_back({p, Kind::plain});
    gpu = gpu_;
    if (!gpu)
      return p;
    ++pinning_; // unpin_all() waits for it, so the device stays
  }
  // Outside the lock: page-locking is a system call of milliseconds. In place rather than
  // allocated pinned: on the H200 host cudaHostAlloc ran at about 2.5 GB/s, registering ordinary
  // pages several times faster (PERFORMANCE.md, "Opening the GPU beside the work").
  const bool pinned = gpu->pin_in_place(p, bytes_);
  std::lock_guard lock(mu_);
  if (pinned)
    for (Buffer& b : all_)
      if (b.p == p)
        b.kind = Kind::pinned_in_place;
  --pinning_;
  unpinned_.notify_all();
  return p;
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

void BufferPool::unpin_all(CudaTransformer& gpu) {
  if (handle_) // the device is closing: nothing of the handle is needed any more
    handle_->remove_hook();
  std::vector<std::byte*> locked;
  {
    std::unique_lock lock(mu_);
    handle_ = nullptr;
    gpu_ = nullptr;                                      // buffers made from now on stay ordinary
    unpinned_.wait(lock, [&] { return pinning_ == 0; }); // and the ones being pinned are done
    for (Buffer& b : all_)
      if (b.kind == Kind::pinned_in_place) {
        locked.push_back(b.p);
        b.kind = Kind::plain;
      }
  }
  for (std::byte* p : locked)
    gpu.unpin_in_place(p);
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
