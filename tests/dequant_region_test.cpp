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
  SCOPED_TRACE(::testing::Message() << "R " << c.R << " C " << c.C << " begin " << c.begin
                                    << " count " << c.count << " pitch " << c.pitch
                                    << (c.transpose ? " transposed " : " rows ")
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
      {300, 260, 0, 260, 0, true, DType::F8_E4M3},   {300, 260, 130, 2, 0, true, DType::F8_E4M3},
      {300, 260, 127, 129, 700, true, DType::F8_E5M2}, {300, 260, 256, 4, 0, true, DType::BF16},
      {300, 260, 0, 300, 0, false, DType::F8_E4M3},  {300, 260, 129, 171, 0, false, DType::F16},
      {300, 260, 5, 1, 999, false, DType::F32},      {128, 128, 0, 128, 0, true, DType::F8_E4M3},
      {1, 1, 0, 1, 0, true, DType::F8_E4M3},         {1, 1, 0, 1, 0, false, DType::F8_E4M3}};
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

} // namespace
} // namespace shardshift
