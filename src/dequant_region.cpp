// dequant_region.cpp: the region of a dequantization call, its gathering and the rebased call.
#include "dequant_region.h"

#include <algorithm>
#include <cstring>

namespace shardshift {

namespace {

// [begin, end) widened to whole blocks, clamped to n.
void widen(uint64_t begin, uint64_t end, uint64_t n, uint64_t block, uint64_t* first,
           uint64_t* count) {
  *first = begin / block * block;
  *count = std::min(n, scale_blocks(end, block) * block) - *first;
}

void plain_copy(std::byte* dst, const std::byte* src, uint64_t n) {
  std::memcpy(dst, src, n);
}

// Copies a [rows, cols] window at (row0, col0) of a row-major matrix with `ld` elements per row.
void copy_window(std::byte* dst, const std::byte* src, uint64_t ld, uint64_t row0, uint64_t rows,
                 uint64_t col0, uint64_t cols, uint64_t es,
                 void (*copy)(std::byte*, const std::byte*, uint64_t)) {
  if (cols == ld) { // whole rows: one run
    copy(dst, src + row0 * ld * es, rows * cols * es);
    return;
  }
  for (uint64_t r = 0; r < rows; ++r)
    copy(dst + r * cols * es, src + ((row0 + r) * ld + col0) * es, cols * es);
}

} // namespace

DequantRegion dequant_region(const DequantArgs& a) {
  DequantRegion g;
  const uint64_t end = a.begin + a.count;
  if (a.transpose) {
    g.row0 = 0;
    g.rows = a.R;
    widen(a.begin, end, a.C, a.block, &g.col0, &g.cols);
  } else {
    widen(a.begin, end, a.R, a.block, &g.row0, &g.rows);
    g.col0 = 0;
    g.cols = a.C;
  }
  g.srow0 = g.row0 / a.block;
  g.srows = scale_blocks(g.rows, a.block);
  g.scol0 = g.col0 / a.block;
  g.scols = scale_blocks(g.cols, a.block);
  g.src_bytes = g.rows * g.cols * (dtype_bits(a.src_dtype) / 8);
  g.scale_bytes = g.srows * g.scols * (dtype_bits(a.scale_dtype) / 8);
  return g;
}

void gather_region(const DequantArgs& a, const DequantRegion& g, std::byte* src_out,
                   std::byte* scales_out, void (*copy)(std::byte*, const std::byte*, uint64_t)) {
  gather_region_rows(a, g, 0, g.rows, src_out, copy);
  gather_scales(a, g, scales_out);
}

const std::byte* region_run(const DequantArgs& a, const DequantRegion& g) {
  return g.cols == a.C ? a.src + g.row0 * a.C * (dtype_bits(a.src_dtype) / 8) : nullptr;
}

RegionRows region_rows_within(const DequantArgs& a, const DequantRegion& g, const std::byte* begin,
                              const std::byte* end) {
  // Row r (of W) lies in [src + (r C + col0) es, src + (r C + col0 + cols) es).
  const uint64_t es = dtype_bits(a.src_dtype) / 8, pitch = a.C * es;
  const uint64_t lo = begin > a.src ? uint64_t(begin - a.src) : 0;
  if (end <= a.src || g.rows == 0)
    return {};
  const uint64_t hi = uint64_t(end - a.src), head = g.col0 * es, tail = (g.col0 + g.cols) * es;
  if (hi < tail)
    return {};
  const uint64_t first = std::max(g.row0, lo > head ? (lo - head + pitch - 1) / pitch : 0);
  const uint64_t last = std::min(g.row0 + g.rows, (hi - tail) / pitch + 1);
  if (first >= last)
    return {};
  return {first - g.row0, last - g.row0};
}

void gather_region_rows(const DequantArgs& a, const DequantRegion& g, uint64_t first, uint64_t last,
                        std::byte* out, void (*copy)(std::byte*, const std::byte*, uint64_t)) {
  if (first < last)
    copy_window(out, a.src, a.C, g.row0 + first, last - first, g.col0, g.cols,
                dtype_bits(a.src_dtype) / 8, copy ? copy : plain_copy);
}

void gather_scales(const DequantArgs& a, const DequantRegion& g, std::byte* scales_out) {
  copy_window(scales_out, a.scales, scale_blocks(a.C, a.block), g.srow0, g.srows, g.scol0, g.scols,
              dtype_bits(a.scale_dtype) / 8, plain_copy);
}

DequantArgs rebase_dequant(const DequantArgs& a, const DequantRegion& g, const std::byte* src,
                           const std::byte* scales) {
  DequantArgs r = a;
  r.src = src;
  r.scales = scales;
  r.R = g.rows;
  r.C = g.cols;
  r.begin = a.begin - (a.transpose ? g.col0 : g.row0);
  r.dst_pitch = a.dst_pitch ? a.dst_pitch : (a.transpose ? a.R : a.C);
  return r;
}

} // namespace shardshift
