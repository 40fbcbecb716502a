// cuda_weight_locks.h: mapped weights page-locked in place once, for all the chunks that read them.
//
// A transposed dequantizing part reads a column range of every row of its weight
// (dequant_region.h), so its region is no one run of the mapping, and every chunk cut from that
// weight reads pages across the whole of it. The runtime refuses to lock a page twice, so chunks
// of one weight cannot each lock what they read. WeightLocks locks the whole pages inside a
// weight for the first chunk that asks, shares them with every chunk that asks while they are
// locked, and unlocks them when the last of those chunks is done. Such a chunk uploads the rows
// of its region that lie in the locked pages with one 2-D copy straight from the mapping, and
// stages only the rows at each end that reach into a page shared with a neighbouring tensor.
//
// Only .cu files include this header (it names cudaStream_t).
// Thread-safety: lock() and Hold's members are thread-safe; no Hold may outlive its WeightLocks.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include <cuda_runtime_api.h>

namespace shardshift {

class WeightLocks {
public:
  /// `failures` counts the registrations that fail for another reason than pages already locked.
  explicit WeightLocks(std::atomic<int>* failures) : failures_(failures) {}
  WeightLocks(const WeightLocks&) = delete;
  WeightLocks& operator=(const WeightLocks&) = delete;

  /// One chunk's share of a weight's lock (or of a failed attempt: nothing locked). When it ends,
  /// it first waits for its chunk's stream unless told the chunk is finished(), then gives its
  /// share back; the last share unlocks the pages.
  class Hold {
  public:
    Hold() = default;
    Hold(Hold&& other) noexcept { *this = std::move(other); }
    Hold& operator=(Hold&& other) noexcept;
    ~Hold() { release(); }

    bool locked() const { return begin_ != end_; }
    const std::byte* begin() const { return begin_; }
    const std::byte* end() const { return end_; }
    /// The chunk's work is done: no need to wait for the stream, which may carry another chunk.
    void finished() { stream_ = nullptr; }

  private:
    friend class WeightLocks;
    void release();

    WeightLocks* owner_ = nullptr;
    const std::byte* key_ = nullptr;
    cudaStream_t stream_ = nullptr;
    const std::byte* begin_ = nullptr;
    const std::byte* end_ = nullptr;
  };

  /// A share of the lock of the whole pages inside the weight [p, p + n), for a chunk whose
  /// uploads run on `stream`; locked() is false when they could not be locked (then the chunk
  /// stages its input). Weights are told apart by `p`: every chunk of one weight passes the same
  /// p and n. Blocks while another chunk is locking the same weight.
  Hold lock(const std::byte* p, uint64_t n, cudaStream_t stream);

private:
  struct Entry {
    const std::byte* begin = nullptr; ///< the locked pages; begin == end when locking failed
    const std::byte* end = nullptr;
    unsigned users = 0;
    bool ready = false; ///< the registration has returned
  };
  void give_back(const std::byte* key);

  std::atomic<int>* failures_;
  std::mutex mu_;
  std::condition_variable ready_;
  std::map<const std::byte*, Entry> entries_; ///< by the weight's first byte
};

} // namespace shardshift
