// progress.h: what a running conversion reports to whoever draws its progress line.
// Thread-safety: a value; the callback receiving it is called from one thread at a time.
#pragma once

#include <cstdint>

namespace shardshift {

struct Progress {
  uint64_t bytes_done = 0, bytes_total = 0; ///< output bytes written / planned
  uint32_t file = 0, files = 0;             ///< current output file (1-based) / count
  uint64_t in_flight_bytes = 0;             ///< buffer bytes held by chunks in the pipeline
  double elapsed_s = 0;
};

} // namespace shardshift
