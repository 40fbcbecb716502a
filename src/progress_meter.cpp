// progress_meter.cpp: sampling the pipeline's counters and reporting progress.
#include "progress_meter.h"

#include <algorithm>

namespace shardshift {

void ProgressMeter::wrote(const Item& item, uint64_t bytes) {
  const uint64_t done = done_ += bytes;
  const uint64_t flight = in_flight_.load();
  if (item.kind == ItemKind::close_file)
    ++files_done_;
  // One lane reports at a time; the others go on writing instead of waiting to report.
  std::unique_lock lock(report_mu_, std::try_to_lock);
  if (!lock.owns_lock())
    return;
  const uint64_t now = profiler_.now();
  if (now - last_report_ <= 200'000'000 && item.kind != ItemKind::close_file)
    return;
  last_report_ = now;
  profiler_.counter("bytes in flight", now, static_cast<int64_t>(flight));
  profiler_.counter(pinned_ ? "pinned buffers in use" : "buffers in use", now,
                    static_cast<int64_t>(pool_.in_use()));
  profiler_.counter("rss", now, static_cast<int64_t>(current_rss_bytes()));
  if (!callback_)
    return;
  Progress p;
  p.bytes_done = done;
  p.bytes_total = total_;
  p.file = std::min(files_done_.load() + 1, files_); // lanes may be writing several
  p.files = files_;
  p.in_flight_bytes = flight;
  p.elapsed_s = static_cast<double>(now) / 1e9;
  callback_(p);
}

} // namespace shardshift
