// dequant_region_test.cpp: the region of a dequantization call (dequant_region.h), which the
// CUDA stage stages instead of the whole weight. The rebased call on the gathered region must
// write exactly what the call writes on the whole weight, for transposed and plain calls, any
// [begin, begin + count), partial edge blocks and pitched outputs; and the region must be no
// larger than whole blocks around what the call reads.
#include "dequant.h"
#include "dequant_region.h"
#include "test_support.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

struct Case {
  uint64_t R, C, begin, count, pitch;
  bool transpose;
  DType src;
};

std::vector<std::byte> random_bytes(std::mt19937_64& rng, uint64_t n) {
  std::vector<std::byte> v(n);
  for (auto& b : v)
    b = std::byte(rng());
  return v;
}

void check_case(const Case& c, std::mt19937_64& rng) {
  SCOPED_TRACE(::testing::Message()
               << "R " << c.R << " C " << c.C << " begin " << c.begin << " count " << c.count
               << " pitch " << c.pitch << (c.transpose ? " transposed " : " rows ")
               << dtype_name(c.src));
  const uint64_t es = dtype_bits(c.src) / 8;
  auto w = random_bytes(rng, c.R * c.C * es);
  // Scales: finite positive F32 values, so that every output element depends on its scale.
  std::vector<float> s(scale_blocks(c.R) * scale_blocks(c.C));
  for (auto& x : s)
    x = std::ldexp(1.0f + float(rng() % 1024) / 1024.0f, int(rng() % 9) - 4);
  DequantArgs a;
  a.src = w.data();
  a.scales = reinterpret_cast<const std::byte*>(s.data());
  a.R = c.R;
  a.C = c.C;
  a.transpose = c.transpose;
  a.begin = c.begin;
  a.count = c.count;
  a.dst_pitch = c.pitch;
  a.src_dtype = c.src;
  a.dst_dtype = DType::BF16;
  const uint64_t width = c.transpose ? c.R : c.C;
  const uint64_t pitch = c.pitch ? c.pitch : width;
  std::vector<std::byte> whole(c.count * pitch * 2, std::byte{0x5A}), part = whole;
  a.dst = whole.data();
  dequant_cpu(a);

  const DequantRegion g = dequant_region(a);
  // Whole blocks around what is read, never more.
  EXPECT_EQ(g.row0 % FP8_BLOCK, 0u);
  EXPECT_EQ(g.col0 % FP8_BLOCK, 0u);
  if (c.transpose) {
    EXPECT_EQ(g.rows, c.R);
    EXPECT_LE(g.col0, c.begin);
    EXPECT_GE(g.col0 + g.cols, c.begin + c.count);
    EXPECT_LT(c.begin - g.col0, FP8_BLOCK);
    EXPECT_LE(g.col0 + g.cols, c.C);
  } else {
    EXPECT_EQ(g.cols, c.C);
    EXPECT_LE(g.row0, c.begin);
    EXPECT_GE(g.row0 + g.rows, c.begin + c.count);
    EXPECT_LT(c.begin - g.row0, FP8_BLOCK);
    EXPECT_LE(g.row0 + g.rows, c.R);
  }
  EXPECT_EQ(g.src_bytes, g.rows * g.cols * es);
  EXPECT_EQ(g.scale_bytes, scale_blocks(g.rows) * scale_blocks(g.cols) * 4);
  // Gathered into exactly-sized buffers (a larger read would show under ASan), then rebased.
  std::vector<std::byte> src(g.src_bytes), scales(g.scale_bytes);
  gather_region(a, g, src.data(), scales.data());
  // A region of whole rows is one run of the input, the gathered bytes; others have none.
  if (const std::byte* run = region_run(a, g)) {
    EXPECT_EQ(g.cols, c.C);
    EXPECT_TRUE(std::memcmp(run, src.data(), g.src_bytes) == 0);
  } else {
    EXPECT_LT(g.cols, c.C);
  }
  std::vector<std::byte> only_scales(g.scale_bytes);
  gather_scales(a, g, only_scales.data());
  EXPECT_TRUE(only_scales == scales);
  DequantArgs r = rebase_dequant(a, g, src.data(), scales.data());
  r.dst = part.data();
  dequant_cpu(r);
  EXPECT_TRUE(whole == part);
}

TEST(DequantRegion, RebasedCallsWriteWhatTheWholeCallWrites) {
  const uint64_t seed = testing::test_seed();
  std::mt19937_64 rng(seed);
  // Edges: blocks cut at both ends, a range inside one block, whole matrices, pitched rows.
  const std::vector<Case> fixed = {
      {300, 260, 0, 260, 0, true, DType::F8_E4M3},     {300, 260, 130, 2, 0, true, DType::F8_E4M3},
      {300, 260, 127, 129, 700, true, DType::F8_E5M2}, {300, 260, 256, 4, 0, true, DType::BF16},
      {300, 260, 0, 300, 0, false, DType::F8_E4M3},    {300, 260, 129, 171, 0, false, DType::F16},
      {300, 260, 5, 1, 999, false, DType::F32},        {128, 128, 0, 128, 0, true, DType::F8_E4M3},
      {1, 1, 0, 1, 0, true, DType::F8_E4M3},           {1, 1, 0, 1, 0, false, DType::F8_E4M3}};
  for (const Case& c : fixed)
    check_case(c, rng);
  const DType dtypes[] = {DType::F8_E4M3, DType::F8_E5M2, DType::BF16, DType::F16, DType::F32};
  for (int i = 0; i < 40; ++i) {
    Case c;
    c.R = 1 + rng() % 400;
    c.C = 1 + rng() % 400;
    c.transpose = rng() % 2;
    const uint64_t n = c.transpose ? c.C : c.R;
    c.begin = rng() % n;
    c.count = 1 + rng() % (n - c.begin);
    const uint64_t width = c.transpose ? c.R : c.C;
    c.pitch = rng() % 2 ? 0 : width + rng() % 64;
    c.src = dtypes[rng() % 5];
    check_case(c, rng);
  }
}

// The rows a locked range [begin, end) lets the CUDA stage read in place: exactly those whose
// elements all lie inside it, checked row by row, for ranges that start and end before, inside
// and after the weight; and the rows gathered in three pieces around them make the region.
TEST(DequantRegion, RowsWithinARangeAreExactlyThoseWhollyInsideIt) {
  const uint64_t seed = testing::test_seed();
  std::mt19937_64 rng(seed);
  const DType dtypes[] = {DType::F8_E4M3, DType::F8_E5M2, DType::BF16, DType::F32};
  int some_inside = 0;
  for (int i = 0; i < 300; ++i) {
    DequantArgs a;
    a.R = 1 + rng() % 300;
    a.C = 1 + rng() % 300;
    a.transpose = rng() % 2;
    a.src_dtype = dtypes[rng() % 4];
    const uint64_t n = a.transpose ? a.C : a.R;
    a.begin = rng() % n;
    a.count = 1 + rng() % (n - a.begin);
    const uint64_t es = dtype_bits(a.src_dtype) / 8, pitch = a.C * es, size = a.R * pitch;
    // The weight inside a larger buffer, so that the range may start or end outside it.
    std::vector<std::byte> buffer = random_bytes(rng, size + 4 * pitch);
    a.src = buffer.data() + 2 * pitch;
    std::vector<float> s(scale_blocks(a.R) * scale_blocks(a.C), 1.0f);
    a.scales = reinterpret_cast<const std::byte*>(s.data());
    const DequantRegion g = dequant_region(a);
    // A range anywhere; one shorter than a row of the region (none inside); or whole pages
    // inside the weight, as a lock takes them.
    uint64_t lo = rng() % buffer.size(), hi = rng() % (buffer.size() + 1);
    if (lo > hi)
      std::swap(lo, hi);
    if (i % 3 == 1) {
      hi = std::min<uint64_t>(buffer.size(), lo + rng() % (g.cols * es));
    } else if (i % 3 == 2) {
      lo = 2 * pitch + rng() % std::min<uint64_t>(size, 4096);
      hi = std::max(lo, 2 * pitch + size - rng() % std::min<uint64_t>(size, 4096));
    }
    const std::byte *begin = buffer.data() + lo, *end = buffer.data() + hi;
    SCOPED_TRACE(::testing::Message()
                 << "seed " << seed << " R " << a.R << " C " << a.C
                 << (a.transpose ? " transposed " : " rows ") << a.begin << " +" << a.count << " "
                 << dtype_name(a.src_dtype) << " range [" << lo << ", " << hi << ") of the buffer");
    std::vector<uint64_t> inside;
    for (uint64_t k = 0; k < g.rows; ++k) {
      const std::byte* row = a.src + ((g.row0 + k) * a.C + g.col0) * es;
      if (row >= begin && row + g.cols * es <= end)
        inside.push_back(k);
    }
    const RegionRows got = region_rows_within(a, g, begin, end);
    if (inside.empty()) {
      EXPECT_EQ(got.first, got.last);
      continue;
    }
    ++some_inside;
    EXPECT_EQ(got.first, inside.front());
    EXPECT_EQ(got.last, inside.back() + 1);
    EXPECT_EQ(inside.size(), inside.back() + 1 - inside.front()); // consecutive

    const uint64_t row_bytes = g.cols * es;
    std::vector<std::byte> whole(g.src_bytes), scales(g.scale_bytes), pieces(g.src_bytes);
    gather_region(a, g, whole.data(), scales.data());
    gather_region_rows(a, g, 0, got.first, pieces.data());
    gather_region_rows(a, g, got.first, got.last, pieces.data() + got.first * row_bytes);
    gather_region_rows(a, g, got.last, g.rows, pieces.data() + got.last * row_bytes);
    EXPECT_TRUE(pieces == whole);
  }
  // Rows inside were drawn often enough to mean something (ranges shorter than a row, a third
  // of the draws, have none).
  EXPECT_GT(some_inside, 100);
}

} // namespace
} // namespace shardshift
