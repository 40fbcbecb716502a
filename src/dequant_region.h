// dequant_region.h: the part of the input one dequantization call reads (dequant.h), as a
// self-contained smaller call. The CUDA stage copies only that part of the mapped weight and of
// its scales into pinned memory, and runs the rebased call on the device: the same output, since
// the region starts on a block boundary, so every element keeps its block and its scale.
//
//   transposed:     every row of W, columns [begin, begin + count) widened to whole blocks;
//   not transposed: rows [begin, begin + count) widened to whole blocks, every column.
//
// Thread-safety: pure functions.
#pragma once

#include "dequant.h"

#include <cstddef>
#include <cstdint>

namespace shardshift {

struct DequantRegion {
  uint64_t row0 = 0, rows = 0, col0 = 0, cols = 0; ///< the sub-matrix of W; row0, col0 % block == 0
  uint64_t srow0 = 0, srows = 0, scol0 = 0, scols = 0; ///< its blocks in the scale matrix
  uint64_t src_bytes = 0, scale_bytes = 0;             ///< sizes of the gathered copies
};

/// The region `args` reads. REQUIRES: args valid for dequant_cpu, count > 0.
DequantRegion dequant_region(const DequantArgs& args);

/// Copies the region's weight elements ([rows, cols] row-major) to `src_out` and its scales
/// ([srows, scols]) to `scales_out`, through `copy` (memcpy by default; the CUDA stage passes a
/// streaming copy into pinned memory). Contiguous runs are copied with one call each.
void gather_region(const DequantArgs& args, const DequantRegion& region, std::byte* src_out,
                   std::byte* scales_out,
                   void (*copy)(std::byte*, const std::byte*, uint64_t) = nullptr);

/// The region's weights where they lie in the input as one run of bytes (whole rows of W: every
/// call by rows, and transposed calls that take every column), else nullptr. Such a run can be
/// read in place (the CUDA stage uploads it straight from the mapping).
const std::byte* region_run(const DequantArgs& args, const DequantRegion& region);

/// The rows [first, last) of the region (counted from its first row) whose elements all lie in
/// [begin, end) of the input: the rows that a lock of those pages lets the CUDA stage upload
/// straight from the mapping. The rows inside are consecutive; first == last when there are none.
struct RegionRows {
  uint64_t first = 0, last = 0;
};
RegionRows region_rows_within(const DequantArgs& args, const DequantRegion& region,
                              const std::byte* begin, const std::byte* end);

/// Copies the region's rows [first, last) ([last - first, cols] row-major) to `out`, through
/// `copy` as gather_region() does.
void gather_region_rows(const DequantArgs& args, const DequantRegion& region, uint64_t first,
                        uint64_t last, std::byte* out,
                        void (*copy)(std::byte*, const std::byte*, uint64_t) = nullptr);

/// Copies only the region's scales ([srows, scols]) to `scales_out`.
void gather_scales(const DequantArgs& args, const DequantRegion& region, std::byte* scales_out);

/// The call on the gathered region: the same output rows, written to args.dst with the same pitch.
DequantArgs rebase_dequant(const DequantArgs& args, const DequantRegion& region,
                           const std::byte* src, const std::byte* scales);

} // namespace shardshift
