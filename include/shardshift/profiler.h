// profiler.h: the timers behind --stats, --trace and the progress line. One set of measurements
// feeds all three: each pipeline stage records (start, end, bytes, tensor) spans; --stats
// aggregates them per stage, --trace writes them as Chrome trace events (Perfetto opens them,
// plain or gzip-compressed).
//
// Spans are buffered per thread and merged once at the end. With tracing off, only the per-stage
// aggregates are kept (a few atomic adds per chunk), so the cost of a disabled trace is a branch.
// Thread-safety: record(), counter() and name_thread() may be called from any thread;
// summaries() and write_trace() after the recording threads are done.
#pragma once

#include "shardshift/io.h"
#include "shardshift/status.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace shardshift {

class JsonWriter;

enum class Stage : uint8_t {
  plan,          ///< open inputs, validate, plan
  read,          ///< emit work items, prefetch input pages
  transform_cpu, ///< transpose-fold on the CPU
  transform_gpu, ///< transpose-fold through the CUDA stage (the whole call)
  gpu_stage,     ///< CUDA: copy from the mapping into pinned memory
  gpu_h2d,       ///< CUDA: host-to-device copy
  gpu_kernel,    ///< CUDA: the kernel
  gpu_d2h,       ///< CUDA: device-to-host copy
  write_copy,    ///< pass-through runs written without a user-space buffer (or their fallback)
  write_data,    ///< transformed bytes written from buffers
  commit,        ///< fsync, rename, index, side files
  wait,          ///< waiting for a free buffer (memory budget)
  hash,          ///< --checksums: SHA-256 of each output file's bytes, in order
  gpu_open,      ///< CUDA: counting the devices, the context, the slots, pinning the pool
  gpu_close,     ///< CUDA: unpinning the pool, freeing the slots, resetting the device
  release,       ///< dropping written items' input pages from the mappings
  open,          ///< creating an output file (its temp name) and reserving its space
};
inline constexpr int STAGE_COUNT = 17;
const char* stage_name(Stage stage);

struct StageSummary {
  Stage stage;
  uint64_t count = 0, bytes = 0, busy_ns = 0;
  uint64_t p50_ns = 0, p99_ns = 0; ///< per-span duration percentiles
};

class Profiler {
public:
  explicit Profiler(bool keep_trace);
  ~Profiler();

  /// Nanoseconds since the profiler was created (steady clock).
  uint64_t now() const {
    return static_cast<uint64_t>((std::chrono::steady_clock::now() - start_).count());
  }
  /// Records a finished span on the calling thread's track (or `track` >= 0: a named extra
  /// track such as a CUDA stream, see track_id()). `tensor` may be empty.
  void record(Stage stage, uint64_t t0, uint64_t t1, uint64_t bytes, std::string_view tensor = {},
              int track = -1);
  /// A counter sample (bytes in flight, pinned buffers in use, RSS) at time `t`.
  void counter(std::string_view name, uint64_t t, int64_t value);
  /// Names the calling thread's track ("worker 3", "writer").
  void name_thread(std::string name);
  /// A stable id for an extra named track ("cuda stream 0").
  int track_id(const std::string& name);
  bool tracing() const { return keep_trace_; }

  std::vector<StageSummary> summaries() const;
  /// Writes the Chrome trace event JSON (the object form with "traceEvents") to `path`,
  /// gzip-compressed when the name ends in ".gz" (Perfetto opens both). The text is streamed
  /// through `io` into a temporary file beside `path`, fsync'ed and renamed into place: a failed
  /// write leaves no file behind, and a fault-injecting Io sees every write.
  Status write_trace(const std::filesystem::path& path, Io& io = Io::system()) const;

  struct Event {
    Stage stage;
    int track;
    uint64_t t0, t1, bytes;
    std::string tensor;
  };
  struct CounterSample {
    std::string name;
    uint64_t t;
    int64_t value;
  };
  struct ThreadBuffer;

private:
  ThreadBuffer& local();
  // Builds the trace into `w`, handing each finished megabyte or so to `flush`.
  void write_trace_events(JsonWriter& w, const std::function<void(std::string_view)>& flush) const;
  const bool keep_trace_;
  const std::chrono::steady_clock::time_point start_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<ThreadBuffer>> buffers_;
  std::vector<std::string> extra_tracks_;
  std::vector<CounterSample> counters_;
  struct Totals {
    std::atomic<uint64_t> count{0}, bytes{0}, busy_ns{0};
  } totals_[STAGE_COUNT];
  const uint64_t id_; // distinguishes profilers in thread-local caches
};

/// Peak resident set size of this process so far, in bytes (getrusage).
uint64_t peak_rss_bytes();
/// Current resident set size in bytes (/proc/self/statm); 0 when unavailable.
uint64_t current_rss_bytes();
/// Bytes of the heap allocated and not freed (glibc's mallinfo2): what the process holds for its
/// data structures, without mapped files.
uint64_t heap_in_use_bytes();

} // namespace shardshift
