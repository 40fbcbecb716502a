// quantize_test.cpp: the FP8 block quantization kernel (src/quantize_cpu.cpp, semantics 15.7)
// against the independent reference (tests/reference/quantize_reference.h): the E4M3 encoder on
// every code, every midpoint between neighbours and random float32 patterns; the block scale at
// its edge cases; whole matrices of every input dtype with partial edge blocks, zero blocks,
// blocks whose largest magnitude is subnormal or huge, in both source layouts and cut into
// arbitrary row ranges; and the refusal of non-finite blocks.
#include "quantize.h"
#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "reference/numeric_reference.h"
#include "reference/quantize_reference.h"
#include "test_support.h"

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using namespace reference;

float f32(uint32_t bits) {
  return std::bit_cast<float>(bits);
}

TEST(Quantize, EncoderMatchesTheNearestCodeByExhaustiveSearch) {
  std::vector<double> values;
  // Every finite code's value, both signs, and the midpoints between neighbours (the ties) and
  // the float32 neighbours of those midpoints.
  for (unsigned c = 0; c < 0x7E; ++c) {
    const double lo = ref_fp8_decode(DType::F8_E4M3, uint8_t(c));
    const double hi = ref_fp8_decode(DType::F8_E4M3, uint8_t(c + 1));
    const float mid = float((lo + hi) / 2); // exact: 4 significant bits
    for (float v : {float(lo), mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)})
      values.insert(values.end(), {double(v), -double(v)});
  }
  // Saturation: 448 and beyond (464 is the tie with the missing 480), and the extremes.
  for (double v : {448.0, 449.0, 463.99, 464.0, 465.0, 480.0, 1e30, double(FLT_MAX), 1e-45,
                   double(f32(1)), 0.0, std::ldexp(1.0, -10), std::ldexp(1.0, -11),
                   std::ldexp(3.0, -11), std::ldexp(1.0, -6), std::ldexp(15.0, -10)})
    values.insert(values.end(), {double(float(v)), -double(float(v))});
  // Every exponent with random mantissas.
  const uint64_t seed = testing::test_seed();
  std::mt19937_64 rng(seed);
  for (uint32_t top = 0; top < 0x7F80; ++top)
    for (int k = 0; k < 3; ++k) {
      const float v = f32((top << 16) | uint32_t(rng() & 0xFFFF));
      values.insert(values.end(), {double(v), -double(v)});
    }
  for (double v : values) {
    const float y = float(v);
    ASSERT_EQ(double(y), v);
    ASSERT_EQ(f32_to_e4m3_sat(y), ref_e4m3_nearest(v)) << "y = " << v << " (seed " << seed << ")";
  }
  // Infinity saturates too (the contract's "never NaN").
  EXPECT_EQ(f32_to_e4m3_sat(INFINITY), 0x7E);
  EXPECT_EQ(f32_to_e4m3_sat(-INFINITY), 0xFE);
  EXPECT_EQ(f32_to_e4m3_sat(-0.0f), 0x80);
}

TEST(Quantize, BlockScaleIsAmaxOver448NeverBelowTheSmallestNormal) {
  const float min_normal = f32(0x00800000);
  EXPECT_EQ(fp8_block_scale(0.0f), 1.0f); // a block of zeros
  EXPECT_EQ(fp8_block_scale(448.0f), 1.0f);
  EXPECT_EQ(fp8_block_scale(f32(1)), min_normal); // the smallest subnormal
  EXPECT_EQ(fp8_block_scale(448.0f * min_normal), min_normal);
  EXPECT_EQ(fp8_block_scale(FLT_MAX), float(double(FLT_MAX) / 448.0));
  std::mt19937_64 rng(testing::test_seed());
  for (int i = 0; i < 100000; ++i) {
    const float amax = f32(uint32_t(rng() % 0x7F800000u));
    ASSERT_EQ(double(fp8_block_scale(amax)), ref_fp8_block_scale(amax)) << amax;
  }
}

// X [R, C] of dtype d: per 128 x 128 block one of: plain values near 1, zeros, values whose
// largest magnitude is subnormal in float32 (or, for F16, tiny), huge values, values that are
// exactly E4M3 codes times a power of two (quantized exactly).
Tensor test_matrix(std::mt19937_64& rng, DType d, uint64_t R, uint64_t C) {
  Tensor x{d, {R, C}, std::string(R * C * esize(d), '\0')};
  const uint64_t bc = (C + 127) / 128;
  std::normal_distribution<double> nd(0.0, 1.0);
  for (uint64_t r = 0; r < R; ++r)
    for (uint64_t c = 0; c < C; ++c) {
      const uint64_t kind = ((r / 128) * bc + c / 128) % 5;
      double v = nd(rng);
      if (kind == 1)
        v = (r + c) % 3 == 0 ? -0.0 : 0.0;
      else if (kind == 2)
        v = std::ldexp(v, d == DType::F16 ? -20 : -132);
      else if (kind == 3)
        v = std::ldexp(v, d == DType::F16 ? 12 : 120);
      else if (kind == 4)
        v = ref_fp8_decode(DType::F8_E4M3, uint8_t(rng() % 0x7F)) * (rng() % 2 ? -1 : 1) *
            std::ldexp(1.0, d == DType::F16 ? -4 : -20);
      put_bits(x, r * C + c, encode(d, v));
    }
  return x;
}

// Runs the kernel over X in row ranges of `step` rows (codes) and block-row ranges of `bstep`
// (scales); `src`, strides as given.
RefQuantized run_kernel(const Tensor& x, const std::byte* src, uint64_t row_stride,
                        uint64_t col_stride, uint64_t step, uint64_t bstep) {
  const uint64_t R = x.shape[0], C = x.shape[1], br = (R + 127) / 128, bc = (C + 127) / 128;
  RefQuantized got{{DType::F8_E4M3, {R, C}, std::string(R * C, '\x55')},
                   {DType::F32, {br, bc}, std::string(br * bc * 4, '\x55')}};
  QuantizeArgs a;
  a.src = src;
  a.R = R;
  a.C = C;
  a.row_stride = row_stride;
  a.col_stride = col_stride;
  a.src_dtype = x.dtype;
  for (uint64_t r = 0; r < R; r += step) {
    a.begin = r;
    a.count = std::min(step, R - r);
    a.dst = reinterpret_cast<std::byte*>(got.codes.bytes.data() + r * C);
    EXPECT_TRUE(quantize_cpu(a).ok());
  }
  a.scales = true;
  for (uint64_t b = 0; b < br; b += bstep) {
    a.begin = b;
    a.count = std::min(bstep, br - b);
    a.dst = reinterpret_cast<std::byte*>(got.scales.bytes.data() + b * bc * 4);
    EXPECT_TRUE(quantize_cpu(a).ok());
  }
  return got;
}

void expect_same(const RefQuantized& got, const RefQuantized& want) {
  for (uint64_t i = 0; i < numel(want.scales.shape); ++i)
    ASSERT_EQ(get_bits(got.scales, i), get_bits(want.scales, i)) << "scale " << i;
  for (uint64_t i = 0; i < numel(want.codes.shape); ++i)
    ASSERT_EQ(get_bits(got.codes, i), get_bits(want.codes, i))
        << "element " << i << " (row " << i / want.codes.shape[1] << ")";
}

TEST(Quantize, KernelMatchesTheReferenceForEveryDtypeLayoutAndCut) {
  const uint64_t seed = testing::test_seed();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (DType d : {DType::BF16, DType::F16, DType::F32}) {
    SCOPED_TRACE(std::string(dtype_name(d)));
    // [300, 260]: 3 x 3 blocks, the last row and column of blocks partial; [5, 7]: one partial
    // block; [256, 128]: whole blocks only.
    for (auto [R, C] : {std::pair<uint64_t, uint64_t>{300, 260}, {5, 7}, {256, 128}}) {
      SCOPED_TRACE(std::to_string(R) + " x " + std::to_string(C));
      const Tensor x = test_matrix(rng, d, R, C);
      const RefQuantized want = ref_quantize(x);
      const auto* src = reinterpret_cast<const std::byte*>(x.bytes.data());
      for (auto [step, bstep] : {std::pair<uint64_t, uint64_t>{R, 3}, {128, 1}, {37, 2}, {1, 1}})
        expect_same(run_kernel(x, src, 0, 1, step, bstep), want);
      // The same matrix as columns [3, 3 + R) of expert 1 of a stacked [2, C, R + 5] tensor,
      // transposed (to_hf's experts).
      const uint64_t B = R + 5, es = esize(d);
      std::string stacked = testing::random_bytes(rng, 2 * C * B * es);
      for (uint64_t r = 0; r < R; ++r)
        for (uint64_t c = 0; c < C; ++c)
          std::memcpy(stacked.data() + ((C + c) * B + 3 + r) * es,
                      x.bytes.data() + (r * C + c) * es, es);
      const auto* expert = reinterpret_cast<const std::byte*>(stacked.data()) + (C * B + 3) * es;
      for (auto [step, bstep] : {std::pair<uint64_t, uint64_t>{R, 3}, {64, 1}})
        expect_same(run_kernel(x, expert, 1, B, step, bstep), want);
    }
  }
}

TEST(Quantize, DequantizingGivesTheValuesBackWithinHalfAnE4M3Step) {
  // The bound the round trip test relies on, here on the reference's own output: for a normal
  // scale s, |x - q * s| <= half the E4M3 step at |x| / s, times s (plus float32 rounding of the
  // quotient, 2^-24 relative), and q * s == x whenever x / s is a code.
  const uint64_t seed = testing::test_seed();
  std::mt19937_64 rng(seed);
  const Tensor x = test_matrix(rng, DType::F32, 300, 260);
  const RefQuantized q = ref_quantize(x);
  for (uint64_t r = 0; r < 300; ++r)
    for (uint64_t c = 0; c < 260; ++c) {
      const double v = ref_decode(DType::F32, get_bits(x, r * 260 + c));
      const double s = ref_decode(DType::F32, get_bits(q.scales, (r / 128) * 3 + c / 128));
      const double back = ref_fp8_decode(DType::F8_E4M3, uint8_t(get_bits(q.codes, r * 260 + c)));
      const double y = std::fabs(v) / s;
      const double step =
          y < std::ldexp(1.0, -6) ? std::ldexp(1.0, -9) : std::ldexp(1.0, std::ilogb(y) - 3);
      ASSERT_LE(std::fabs(back * s - v), (step / 2) * s + std::ldexp(std::fabs(v), -23))
          << r << ", " << c << " seed " << seed;
      if (ref_fp8_decode(DType::F8_E4M3, ref_e4m3_nearest(y)) * s == std::fabs(v))
        ASSERT_EQ(back * s, v) << r << ", " << c << " seed " << seed;
    }
}

TEST(Quantize, ANonFiniteElementIsRefusedNamingItsRowColumnAndBlock) {
  for (double bad : {double(NAN), double(INFINITY), -double(INFINITY)}) {
    Tensor x{DType::BF16, {200, 300}, std::string(200 * 300 * 2, '\0')};
    put_bits(x, 150 * 300 + 260, encode(DType::BF16, bad));
    QuantizeArgs a;
    a.src = reinterpret_cast<const std::byte*>(x.bytes.data());
    a.R = 200;
    a.C = 300;
    a.src_dtype = DType::BF16;
    std::string out(200 * 300, '\0');
    a.dst = reinterpret_cast<std::byte*>(out.data());
    a.begin = 0;
    a.count = 200;
    for (bool scales : {false, true}) {
      a.scales = scales;
      a.count = scales ? 2 : 200;
      const Status s = quantize_cpu(a);
      ASSERT_FALSE(s.ok());
      EXPECT_EQ(s.code(), Errc::unsupported);
      EXPECT_NE(s.message().find(std::string("row 150, column 260 (block [1, 2]) is ") +
                                 (std::isnan(bad) ? "NaN" : "infinite")),
                std::string::npos)
          << s.message();
    }
    // Rows whose blocks hold no such element quantize.
    a.scales = false;
    a.count = 128;
    EXPECT_TRUE(quantize_cpu(a).ok());
  }
  EXPECT_FALSE(check_quantize_supported(DType::I32).ok());
  EXPECT_FALSE(check_quantize_supported(DType::F8_E4M3).ok());
  EXPECT_TRUE(check_quantize_supported(DType::F16).ok());
}

} // namespace
} // namespace shardshift
