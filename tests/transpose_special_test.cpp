// transpose_special_test.cpp: the CPU transpose-fold against the reference on the hard values:
// products exactly halfway between two results (normal and subnormal), special values times
// special scales, overflow inside SIMD blocks, and a hostile floating-point environment.
#include "shardshift/dtype.h"

#include "reference/numeric_reference.h"
#include "test_support.h"
#include "transpose.h"
#include "transpose_harness.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <gtest/gtest.h>

namespace shardshift {
namespace {

/// A value of `dtype` with the given unbiased exponent, a random sign and `bits` random leading
/// mantissa bits (the rest zero): short mantissas make exact ties common.
uint64_t short_value(DType dtype, int exponent, int bits, std::mt19937_64& rng) {
  const Format f = format_of(dtype);
  const int mantissa_bits = f.precision - 1;
  const uint64_t mantissa = (rng() & ((uint64_t(1) << bits) - 1)) << (mantissa_bits - bits);
  return ((rng() & 1) << (width_bits(dtype) - 1)) | (uint64_t(exponent + f.emax) << mantissa_bits) |
         mantissa;
}

/// Builds experts whose every element is a product exactly halfway between two values of the
/// product dtype (found by search), and checks every level rounds them like the reference. The
/// last expert's products lie in the subnormal range of the dtype.
void run_ties(DType dtype, std::mt19937_64& rng, unsigned mxcsr = 0) {
  const Format f = format_of(dtype);
  const unsigned w = bytes_of(dtype);
  const uint64_t experts = 3, A = 48, B = 40;
  Buffer src(experts * A * B * w), scales(experts * w);
  size_t round_up = 0, round_down = 0, subnormal = 0;
  for (uint64_t e = 0; e < experts; ++e) {
    const bool tiny = e == experts - 1;
    const int scale_exponent = tiny ? f.emin / 2 - 2 : int(rng() % 3) - 1;
    // The lowest of its three mantissa bits is set: a power-of-two scale never makes a tie.
    const uint64_t scale =
        short_value(dtype, scale_exponent, 3, rng) | (uint64_t(1) << (f.precision - 1 - 3));
    store_bits(scales.data() + e * w, w, scale);
    const double vs = ref_decode(dtype, scale);
    for (uint64_t k = 0; k < A * B; ++k) {
      for (int attempt = 0;; ++attempt) {
        ASSERT_LT(attempt, 100000) << "no tie found for scale " << hex(scale);
        const int x_exponent = tiny ? f.emin / 2 - 2 + int(rng() % 2) : int(rng() % 5) - 2;
        const uint64_t x = short_value(dtype, x_exponent, f.precision - 3, rng);
        const double p = std::fabs(ref_decode(dtype, x) * vs); // exact
        if (p == 0)
          continue;
        // Halfway: the product scaled to the format's quantum has a fractional part of one half.
        int k2;
        std::frexp(p, &k2);
        const int quantum = std::max(k2 - 1, f.emin) - (f.precision - 1);
        const double scaled = std::ldexp(p, -quantum);
        if (scaled - std::floor(scaled) != 0.5)
          continue;
        (std::fmod(std::floor(scaled), 2.0) == 1.0 ? round_up : round_down) += 1;
        if (k2 - 1 < f.emin)
          ++subnormal;
        store_bits(src.data() + (e * A * B + k) * w, w, x);
        break;
      }
    }
  }
  EXPECT_GT(round_up, 100u);
  EXPECT_GT(round_down, 100u);
  EXPECT_GT(subnormal, 100u);
  TransposeArgs a;
  a.src = src.data();
  a.scales = scales.data();
  a.experts = experts;
  a.A = A;
  a.B = B;
  a.cols = B;
  a.src_dtype = a.scale_dtype = a.dst_dtype = dtype;
  expect_all_levels_match(a, reference_output(a), "ties " + describe(a), 0, mxcsr);
}

TEST(TransposeFold, ExactTiesRoundToEven) {
  std::mt19937_64 rng(testing::test_seed());
  run_ties(DType::BF16, rng);
  run_ties(DType::F16, rng);
  run_ties(DType::F32, rng);
}

/// Every value of `keep_value` against every scale of `keep_scale` (one scale per expert), for
/// every dtype combination, in a shape with whole SIMD blocks and edges.
template <class KeepValue, class KeepScale>
void run_specials(const std::string& what, KeepValue keep_value, KeepScale keep_scale) {
  for (DType src : FLOATS)
    for (DType scale_dtype : FLOATS)
      for (DType dst : {ref_promote(src, scale_dtype), DType::BF16, DType::F16, DType::F32}) {
        std::vector<uint64_t> values, scale_values;
        for (uint64_t v : special_values(src))
          if (keep_value(src, v))
            values.push_back(v);
        for (uint64_t v : special_values(scale_dtype))
          if (keep_scale(scale_dtype, v))
            scale_values.push_back(v);
        const unsigned in_w = bytes_of(src), sw = bytes_of(scale_dtype);
        const uint64_t experts = scale_values.size(), A = 40, B = 36;
        Buffer data(experts * A * B * in_w), scales(experts * sw);
        for (uint64_t k = 0; k < experts * A * B; ++k)
          store_bits(data.data() + k * in_w, in_w, values[k % values.size()]);
        for (uint64_t e = 0; e < experts; ++e)
          store_bits(scales.data() + e * sw, sw, scale_values[e]);
        TransposeArgs a;
        a.src = data.data();
        a.scales = scales.data();
        a.experts = experts;
        a.A = A;
        a.B = B;
        a.cols = B;
        a.src_dtype = src;
        a.scale_dtype = scale_dtype;
        a.dst_dtype = dst;
        expect_all_levels_match(a, reference_output(a), what + " " + describe(a));
        if (::testing::Test::HasFailure())
          return;
      }
}

TEST(TransposeFold, SpecialValuesTimesSpecialScales) {
  auto all = [](DType, uint64_t) { return true; };
  run_specials("specials", all, all);
}

TEST(TransposeFold, SpecialValuesWithoutNanProducts) {
  // No NaN anywhere, so the SIMD results are kept (except subnormal products on AVX512-BF16).
  auto not_nan = [](DType t, uint64_t v) { return !ref_is_nan(t, v); };
  auto finite_nonzero = [](DType t, uint64_t v) {
    return !ref_is_nan(t, v) && std::isfinite(ref_decode(t, v)) && ref_decode(t, v) != 0;
  };
  run_specials("no-NaN specials", not_nan, finite_nonzero);
}

TEST(TransposeFold, OverflowAndInfinitiesInsideSimdBlocks) {
  // Zeros, infinities and values that overflow when scaled, but no NaN and no subnormal product:
  // every SIMD kernel keeps its own results for these.
  auto large_or_zero = [](DType t, uint64_t v) {
    if (ref_is_nan(t, v))
      return false;
    const double d = std::fabs(ref_decode(t, v));
    return d == 0 || d >= 1;
  };
  auto large_finite = [](DType t, uint64_t v) {
    if (ref_is_nan(t, v))
      return false;
    const double d = std::fabs(ref_decode(t, v));
    return std::isfinite(d) && d >= 1;
  };
  run_specials("large specials", large_or_zero, large_finite);
}

#if defined(__x86_64__)
TEST(TransposeFold, IgnoresFlushToZeroAndDirectedRounding) {
  // As if a -ffast-math library had set FTZ and DAZ, plus round-toward-zero: the kernel must
  // still produce IEEE round-to-nearest-even results with subnormals, and leave MXCSR as it was.
  const unsigned hostile = _mm_getcsr() | 0x8000u /*FTZ*/ | 0x0040u /*DAZ*/ | 0x6000u /*to 0*/;
  std::mt19937_64 rng(testing::test_seed());
  run_ties(DType::BF16, rng, hostile);
  run_ties(DType::F16, rng, hostile);
  run_ties(DType::F32, rng, hostile);
}
#endif

} // namespace
} // namespace shardshift
