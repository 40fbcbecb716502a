// progress_meter.h: what the pipeline reports while it runs. Counts the output bytes written and
// the buffer bytes in flight over every writer lane, and after a written item (at most every
// 200 ms, and at each file's end) samples the trace counters (bytes in flight, buffers in use,
// RSS) and calls the progress callback.
// Thread-safety: every member may be called from any thread; the callback is called by one
// thread at a time.
#pragma once

#include "shardshift/profiler.h"
#include "shardshift/progress.h"

#include "buffer_pool.h"
#include "work_item.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>

namespace shardshift {

class ProgressMeter {
public:
  ProgressMeter(Profiler& profiler, BufferPool& pool, bool pinned, uint64_t total_bytes,
                uint32_t files, std::function<void(const Progress&)> callback)
      : profiler_(profiler), pool_(pool), pinned_(pinned), total_(total_bytes), files_(files),
        callback_(std::move(callback)) {}

  void add_in_flight(uint64_t bytes) { in_flight_ += bytes; }
  void sub_in_flight(uint64_t bytes) { in_flight_ -= bytes; }
  /// A lane has written `bytes` of output for `item` (call before the item's buffer goes back,
  /// so the in-flight figure includes the chunk just written).
  void wrote(const Item& item, uint64_t bytes);
  uint64_t done() const { return done_; }

private:
  Profiler& profiler_;
  BufferPool& pool_;
  const bool pinned_;
  const uint64_t total_;
  const uint32_t files_;
  std::function<void(const Progress&)> callback_;
  std::atomic<uint64_t> in_flight_{0}, done_{0};
  std::atomic<uint32_t> files_done_{0};
  std::mutex report_mu_;
  uint64_t last_report_ = 0; ///< guarded by report_mu_
};

} // namespace shardshift
