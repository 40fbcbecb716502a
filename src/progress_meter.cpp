// progress_meter.cpp: sampling the pipeline's counters and reporting progress.
#include "progress_meter.h"

namespace shardshift {

void ProgressMeter::after_write(const Item& item, uint64_t done) {
  const uint64_t flight = in_flight_.load();
  const uint64_t now = profiler_.now();
  last_write_end_ = now;
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
  p.file = item.file + 1;
  p.files = files_;
  p.in_flight_bytes = flight;
  p.elapsed_s = static_cast<double>(now) / 1e9;
  callback_(p);
}

} // namespace shardshift
