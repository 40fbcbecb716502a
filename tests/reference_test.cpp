// reference_test.cpp: the two independent scalar references of tests/reference agree with each
// other: convert_reference.h's encode/decode (used by the conversion tests) and
// numeric_reference.h's ref_round/ref_encode/ref_decode (used by the kernel tests) were written
// separately from semantics.md section 1.1, so a disagreement means one of them is wrong.
#include "reference/convert_reference.h"
#include "reference/numeric_reference.h"
#include "test_support.h"

#include <cmath>
#include <cstdint>
#include <random>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using namespace reference;

const DType FLOATS[] = {DType::BF16, DType::F16, DType::F32};

TEST(ReferenceAgreement, DecodeAgreesOnEvery16BitPatternAndRandomF32) {
  std::mt19937_64 rng(testing::test_seed());
  for (DType t : FLOATS) {
    const uint64_t n = t == DType::F32 ? 1'000'000 : 0x10000;
    for (uint64_t k = 0; k < n; ++k) {
      const uint64_t bits = t == DType::F32 ? uint32_t(rng()) : k;
      if (ref_is_nan(t, bits)) {
        EXPECT_TRUE(std::isnan(decode(t, bits))) << dtype_name(t) << " " << bits;
        continue;
      }
      const double v = decode(t, bits);
      ASSERT_EQ(v, ref_decode(t, bits)) << dtype_name(t) << " " << bits;
      ASSERT_EQ(std::signbit(v), ref_sign(t, bits)) << dtype_name(t) << " " << bits;
    }
  }
}

TEST(ReferenceAgreement, RoundingAgreesOnProductsAndRandomDoubles) {
  std::mt19937_64 rng(testing::test_seed());
  for (DType t : FLOATS) {
    const Format f = format_of(t);
    for (int k = 0; k < 300'000; ++k) {
      double v;
      if (k % 3 == 0) {
        // An exact product of two F32 values (random patterns, NaN skipped): ties and subnormals.
        const double a = ref_decode(DType::F32, uint32_t(rng()) & 0x7F7FFFFFu);
        const double b = ref_decode(DType::F32, uint32_t(rng()));
        v = a * b;
        if (std::isnan(v))
          continue;
      } else {
        // Any magnitude around the format's range, including overflow and deep underflow.
        const int e = int(rng() % uint64_t(f.emax - f.emin + 2 * f.precision + 20)) + f.emin -
                      f.precision - 10;
        v = std::ldexp(1.0 + double(rng() >> 11) / double(uint64_t(1) << 53), e);
        if (rng() & 1)
          v = -v;
      }
      ASSERT_EQ(encode(t, v), ref_encode(t, ref_round(f, v)))
          << dtype_name(t) << " " << std::hexfloat << v;
    }
    EXPECT_EQ(encode(t, 0.0), ref_encode(t, 0.0));
    EXPECT_EQ(encode(t, -0.0), ref_encode(t, -0.0));
    EXPECT_EQ(encode(t, INFINITY), ref_encode(t, INFINITY));
    EXPECT_EQ(encode(t, -INFINITY), ref_encode(t, -INFINITY));
  }
}

} // namespace
} // namespace shardshift
