// progress_meter.h: what the pipeline reports while it runs. Tracks the buffer bytes in flight,
// and after each written item (at most every 200 ms, and at each file's end) samples the trace
// counters (bytes in flight, buffers in use, RSS) and calls the progress callback.
// Thread-safety: add_in_flight/sub_in_flight from any thread; after_write from the write stage.
#pragma once

#include "shardshift/profiler.h"
#include "shardshift/progress.h"

#include "buffer_pool.h"
#include "work_item.h"

#include <atomic>
#include <cstdint>
#include <functional>

namespace shardshift {

class ProgressMeter {
public:
  ProgressMeter(Profiler& profiler, BufferPool& pool, bool pinned, uint64_t total_bytes,
                uint32_t files, std::function<void(const Progress&)> callback)
      : profiler_(profiler), pool_(pool), pinned_(pinned), total_(total_bytes), files_(files),
        callback_(std::move(callback)) {}

  void add_in_flight(uint64_t bytes) { in_flight_ += bytes; }
  void sub_in_flight(uint64_t bytes) { in_flight_ -= bytes; }
  /// The write stage starts an item: the time since the previous one is recorded as waiting.
  void before_write(uint64_t t0) {
    if (last_write_end_)
      profiler_.record(Stage::wait, last_write_end_, t0, 0);
  }
  /// The write stage is done with `item` (before its buffer goes back, so the in-flight figure
  /// includes the chunk just written); `done` is the output bytes written so far.
  void after_write(const Item& item, uint64_t done);

private:
  Profiler& profiler_;
  BufferPool& pool_;
  const bool pinned_;
  const uint64_t total_;
  const uint32_t files_;
  std::function<void(const Progress&)> callback_;
  std::atomic<uint64_t> in_flight_{0};
  uint64_t last_write_end_ = 0, last_report_ = 0;
};

} // namespace shardshift
