// transpose_numerics_test.cpp: the element numerics (src/numerics.h) against the reference of
// semantics.md section 1.1 (tests/reference/numeric_reference.h), and that reference itself on
// hand-worked values.
#include "shardshift/dtype.h"

#include "numerics.h"
#include "reference/numeric_reference.h"
#include "test_support.h"
#include "transpose_harness.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <gtest/gtest.h>

namespace shardshift {
namespace {

// ---------------------------------------------------------------------------------------------
// The reference itself, on hand-worked values.

TEST(TransposeReference, HandWorkedValues) {
  using enum DType;
  // 1.0078125 * 1.5 = 1.51171875 = 1.10000011b: a tie, kept part odd -> rounds up.
  EXPECT_EQ(ref_element(BF16, 0x3F81, true, BF16, 0x3FC0, BF16), 0x3FC2u);
  // 1.0234375 * 1.5 = 1.10001001b: a tie, kept part even -> stays.
  EXPECT_EQ(ref_element(BF16, 0x3F83, true, BF16, 0x3FC0, BF16), 0x3FC4u);
  // F16: (1 + 2^-10) * 1.5 is a tie with an odd kept part.
  EXPECT_EQ(ref_element(F16, 0x3C01, true, F16, 0x3E00, F16), 0x3E02u);
  // Overflow: 65504 * (1 + 2^-10) > 65520 -> infinity; BF16 max * 1.0078125 -> infinity.
  EXPECT_EQ(ref_element(F16, 0x7BFF, true, F16, 0x3C01, F16), 0x7C00u);
  EXPECT_EQ(ref_element(BF16, 0xFF7F, true, BF16, 0x3F81, BF16), 0xFF80u);
  // Subnormals: 2^-133 * 0.5 is a tie between 0 and 2^-133 -> 0; * 0.75 -> 2^-133.
  EXPECT_EQ(ref_element(BF16, 0x0001, true, BF16, 0x3F00, BF16), 0x0000u);
  EXPECT_EQ(ref_element(BF16, 0x0001, true, BF16, 0x3F40, BF16), 0x0001u);
  EXPECT_EQ(ref_element(BF16, 0x8001, true, BF16, 0x3F00, BF16), 0x8000u);
  // NaN sign is sign(x) xor sign(s); inf * 0 is NaN.
  EXPECT_EQ(ref_element(BF16, 0x7F80, true, BF16, 0x8000, BF16), 0xFFC0u);
  EXPECT_EQ(ref_element(BF16, 0xFFC1, true, F32, 0x3F800000, F16), 0xFE00u);
  // Widening is exact, narrowing rounds: 1 + 2^-8 (F32) -> BF16 tie, even -> 1.0.
  EXPECT_EQ(ref_element(F32, 0x3F808000, false, F32, 0, BF16), 0x3F80u);
  EXPECT_EQ(ref_element(F16, 0x0001, false, F16, 0, F32), 0x33800000u); // 2^-24
  EXPECT_EQ(ref_element(BF16, 0x3F81, false, BF16, 0, F16), 0x3C08u);
  // BF16 x F16 promotes to F32: 1.0078125 * (1 + 2^-10) is kept exactly in F32.
  EXPECT_EQ(ref_element(BF16, 0x3F81, true, F16, 0x3C01, F32), 0x3F812040u);
}

// ---------------------------------------------------------------------------------------------
// numerics.h against the reference.

TEST(TransposeNumerics, WideningIsExactForEvery16BitPattern) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float bf = numerics::bf16_to_f32(uint16_t(h));
    const float hf = numerics::f16_to_f32(uint16_t(h));
    if (ref_is_nan(DType::BF16, h)) {
      EXPECT_TRUE(std::isnan(bf)) << hex(h);
    } else {
      EXPECT_EQ(double(bf), ref_decode(DType::BF16, h)) << hex(h);
      EXPECT_EQ(std::signbit(bf), ref_sign(DType::BF16, h)) << hex(h);
    }
    if (ref_is_nan(DType::F16, h)) {
      EXPECT_TRUE(std::isnan(hf)) << hex(h);
    } else {
      EXPECT_EQ(double(hf), ref_decode(DType::F16, h)) << hex(h);
      EXPECT_EQ(std::signbit(hf), ref_sign(DType::F16, h)) << hex(h);
    }
  }
}

TEST(TransposeNumerics, NarrowingRoundsToNearestEven) {
  std::mt19937_64 rng(testing::test_seed());
  std::vector<uint32_t> inputs;
  for (uint64_t v : special_values(DType::F32))
    inputs.push_back(uint32_t(v));
  // Every BF16 / F16 boundary region: values near each representable 16-bit value.
  for (uint32_t h = 0; h < 0x10000; h += 7) {
    const uint32_t bf = h << 16;
    for (uint32_t d : {0u, 1u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu})
      inputs.push_back(bf + d);
  }
  for (int k = 0; k < 300000; ++k)
    inputs.push_back(uint32_t(rng()));
  // F16 ties and the overflow edge: 65520 (tie -> infinity) and just below.
  for (uint32_t u : {0x477FF000u, 0x477FEFFFu, 0x477FF001u, 0x33000000u, 0x33000001u, 0x387FC000u,
                     0x387FE000u, 0x38800000u})
    inputs.push_back(u);
  for (uint32_t u : inputs) {
    const float f = std::bit_cast<float>(u);
    if (std::isnan(f)) {
      const bool negative = u >> 31;
      EXPECT_EQ(numerics::f32_to_bf16_rne(f), ref_canonical_nan(DType::BF16, negative)) << hex(u);
      EXPECT_EQ(numerics::f32_to_f16_rne(f), ref_canonical_nan(DType::F16, negative)) << hex(u);
      continue;
    }
    const double v = f;
    ASSERT_EQ(numerics::f32_to_bf16_rne(f),
              ref_encode(DType::BF16, ref_round(format_of(DType::BF16), v)))
        << hex(u);
    ASSERT_EQ(numerics::f32_to_f16_rne(f),
              ref_encode(DType::F16, ref_round(format_of(DType::F16), v)))
        << hex(u);
  }
}

#if defined(__x86_64__)
__attribute__((target("f16c"))) uint16_t hardware_f16(float f) {
  return uint16_t(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

TEST(TransposeNumerics, F16RoundingAgreesWithF16cHardware) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("f16c"))
    GTEST_SKIP() << "no F16C on this CPU";
  std::mt19937_64 rng(testing::test_seed());
  for (int k = 0; k < 1000000; ++k) {
    // Concentrate on the F16 range (|x| < 2^17) where the rounding is not trivial.
    uint32_t u = uint32_t(rng());
    if (k % 2)
      u = (u & 0x807FFFFFu) | (uint32_t(96 + rng() % 48) << 23);
    const float f = std::bit_cast<float>(u);
    if (std::isnan(f))
      continue; // the hardware keeps payloads; we canonicalise
    ASSERT_EQ(numerics::f32_to_f16_rne(f), hardware_f16(f)) << hex(u);
  }
}
#endif

TEST(TransposeNumerics, ProductNanIsCanonicalWithXorSign) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct {
    float a, b;
    uint32_t want;
  } cases[] = {
      {inf, 0.0f, 0x7FC00000u},  {-inf, 0.0f, 0xFFC00000u}, {inf, -0.0f, 0xFFC00000u},
      {0.0f, -inf, 0xFFC00000u}, {nan, -1.0f, 0xFFC00000u}, {-nan, -1.0f, 0x7FC00000u},
      {2.0f, nan, 0x7FC00000u},
  };
  for (const auto& c : cases)
    EXPECT_EQ(numerics::f32_bits(numerics::mul_f32(c.a, c.b)), c.want) << c.a << " * " << c.b;
  EXPECT_EQ(numerics::f32_bits(numerics::mul_f32(3.0f, -0.5f)), numerics::f32_bits(-1.5f));
}

} // namespace
} // namespace shardshift
