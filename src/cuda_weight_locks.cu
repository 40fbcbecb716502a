// cuda_weight_locks.cu: WeightLocks (cuda_weight_locks.h) on the CUDA runtime.
#include "cuda_weight_locks.h"

namespace shardshift {

WeightLocks::Hold& WeightLocks::Hold::operator=(Hold&& other) noexcept {
  if (this != &other) {
    release();
    owner_ = std::exchange(other.owner_, nullptr);
    key_ = other.key_;
    stream_ = other.stream_;
    begin_ = std::exchange(other.begin_, nullptr);
    end_ = std::exchange(other.end_, nullptr);
  }
  return *this;
}

void WeightLocks::Hold::release() {
  if (!owner_)
    return;
  if (stream_ && locked())
    cudaStreamSynchronize(stream_); // nothing queued may still read the pages
  std::exchange(owner_, nullptr)->give_back(key_);
  begin_ = end_ = nullptr;
}

WeightLocks::Hold WeightLocks::lock(const std::byte* p, uint64_t n, cudaStream_t stream) {
  Hold hold;
  hold.owner_ = this;
  hold.key_ = p;
  hold.stream_ = stream;
  std::unique_lock lock(mu_);
  auto [it, first] = entries_.try_emplace(p);
  Entry& e = it->second; // std::map: stays valid while this share keeps it
  ++e.users;
  if (first) {
    // The first chunk locks the pages, outside the mutex: it takes about a millisecond per
    // 20-30 MB (docs/PERFORMANCE.md, "Reading the input in place").
    lock.unlock();
    const uint64_t page = 4096;
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
    const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
    bool ok = false;
    if (hi > lo) {
      const cudaError_t err =
          cudaHostRegister(reinterpret_cast<void*>(lo), hi - lo, cudaHostRegisterReadOnly);
      ok = err == cudaSuccess;
      if (!ok) {
        cudaGetLastError(); // not sticky: these chunks are staged instead
        if (err != cudaErrorHostMemoryAlreadyRegistered)
          failures_->fetch_add(1);
      }
    }
    lock.lock();
    if (ok) {
      e.begin = reinterpret_cast<const std::byte*>(lo);
      e.end = reinterpret_cast<const std::byte*>(hi);
    }
    e.ready = true;
    ready_.notify_all();
  } else {
    ready_.wait(lock, [&] { return e.ready; });
  }
  hold.begin_ = e.begin;
  hold.end_ = e.end;
  return hold;
}

void WeightLocks::give_back(const std::byte* key) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || --it->second.users != 0)
    return;
  // Unlocking is fast (100-180 GB/s there); under the mutex, so that a chunk arriving now
  // finds either the lock or no entry, never pages still locked without an entry.
  if (it->second.begin != it->second.end)
    cudaHostUnregister(const_cast<std::byte*>(it->second.begin));
  entries_.erase(it);
}

} // namespace shardshift
