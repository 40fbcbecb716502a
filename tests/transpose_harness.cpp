// transpose_harness.cpp: see transpose_harness.h.
#include "transpose_harness.h"

#include "cpu_features.h"

#include "reference/numeric_reference.h"

#include <cmath>
#include <cstdlib>
#include <sstream>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <gtest/gtest.h>

namespace shardshift::testing {

using namespace reference;

unsigned bytes_of(DType t) {
  return dtype_bits(t) / 8;
}

uint64_t load_bits(const std::byte* p, unsigned width) {
  uint64_t v = 0;
  std::memcpy(&v, p, width); // little-endian host
  return v;
}
void store_bits(std::byte* p, unsigned width, uint64_t v) {
  std::memcpy(p, &v, width);
}

/// Interesting bit patterns of a float dtype: zeros, infinities, NaNs (quiet and signalling,
/// with payloads), the subnormal and normal extremes, one.
std::vector<uint64_t> special_values(DType t) {
  std::vector<uint64_t> v;
  switch (t) {
  case DType::BF16:
    v = {0x0000, 0x7F80, 0x7FC0, 0x7FC1, 0x7F81, 0x7FFF, 0x0001, 0x007F,
         0x0080, 0x7F7F, 0x3F80, 0x3F81, 0x3FC0, 0x0040, 0x7F00, 0x0100};
    break;
  case DType::F16:
    v = {0x0000, 0x7C00, 0x7E00, 0x7E01, 0x7C01, 0x7FFF, 0x0001, 0x03FF,
         0x0400, 0x7BFF, 0x3C00, 0x3C01, 0x3E00, 0x0200, 0x7800, 0x0800};
    break;
  default:
    v = {0x00000000, 0x7F800000, 0x7FC00000, 0x7FC00001, 0x7F800001, 0x7FFFFFFF,
         0x00000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0x3F800000, 0x3F800001,
         0x3FC00000, 0x00400000, 0x7F000000, 0x01000000};
  }
  const size_t n = v.size();
  const uint64_t sign = uint64_t(1) << (width_bits(t) - 1);
  for (size_t i = 0; i < n; ++i)
    v.push_back(v[i] | sign);
  return v;
}

uint64_t ordinary_value(DType t, std::mt19937_64& rng) {
  const Format f = format_of(t);
  const int mantissa_bits = f.precision - 1;
  const uint64_t exponent = uint64_t(f.emax + int(rng() % 25) - 12);
  const uint64_t mantissa = rng() & ((uint64_t(1) << mantissa_bits) - 1);
  return ((rng() & 1) << (width_bits(t) - 1)) | (exponent << mantissa_bits) | mantissa;
}

uint64_t random_value(DType t, std::mt19937_64& rng, Profile profile) {
  const unsigned pick = rng() % 10;
  if (profile == Profile::ordinary || pick > 1)
    return ordinary_value(t, rng);
  if (pick == 1 && profile == Profile::anything)
    return rng() & ((uint64_t(1) << width_bits(t)) - 1);
  const auto specials = special_values(t);
  for (;;) {
    const uint64_t v = specials[rng() % specials.size()];
    if (profile == Profile::anything || !ref_is_nan(t, v))
      return v;
  }
}

uint64_t random_scale(DType t, std::mt19937_64& rng, Profile profile) {
  for (;;) {
    const uint64_t s = random_value(t, rng, profile);
    if (profile == Profile::anything)
      return s;
    const double v = ref_decode(t, s);
    // Not zero or infinite either: zero times an infinite input is NaN.
    if (!ref_is_nan(t, s) && !std::isinf(v) && v != 0 &&
        (profile == Profile::no_nan || std::fabs(v) >= std::ldexp(1.0, -12)))
      return s;
  }
}

/// The expected output of a whole call, computed element by element with the reference.
std::vector<std::byte> reference_output(const TransposeArgs& a) {
  const unsigned in_w = bytes_of(a.src_dtype), out_w = bytes_of(a.dst_dtype);
  std::vector<std::byte> out(a.experts * a.cols * a.A * out_w);
  const bool has_scale = a.scales != nullptr;
  for (uint64_t e = 0; e < a.experts; ++e) {
    const uint64_t s =
        has_scale ? load_bits(a.scales + e * bytes_of(a.scale_dtype), bytes_of(a.scale_dtype)) : 0;
    for (uint64_t j = 0; j < a.cols; ++j)
      for (uint64_t i = 0; i < a.A; ++i) {
        const uint64_t x = load_bits(a.src + ((e * a.A + i) * a.B + a.col_begin + j) * in_w, in_w);
        const uint64_t y = ref_element(a.src_dtype, x, has_scale, a.scale_dtype, s, a.dst_dtype);
        store_bits(out.data() + ((e * a.cols + j) * a.A + i) * out_w, out_w, y);
      }
  }
  return out;
}

std::string hex(uint64_t v) {
  std::ostringstream os;
  os << "0x" << std::hex << v;
  return os.str();
}

/// The levels this CPU runs (whatever SHARDSHIFT_SIMD says).
std::vector<SimdLevel> supported_levels() {
  std::vector<SimdLevel> levels;
  for (int l = 0; l <= int(cpu_features().level); ++l)
    levels.push_back(SimdLevel(l));
  return levels;
}

/// Runs `a` at every supported level into a fresh buffer and compares with `expected` bit for
/// bit. Also checks that every NaN written by a fold or cast is the canonical one.
/// `mxcsr`, when not zero, is the x86 floating-point control word the kernel runs under (the
/// reference never does).
void expect_all_levels_match(TransposeArgs a, const std::vector<std::byte>& expected,
                             const std::string& what, size_t dst_offset, unsigned mxcsr) {
  const unsigned out_w = bytes_of(a.dst_dtype);
  const bool canonical = a.scales != nullptr || a.src_dtype != a.dst_dtype;
  for (SimdLevel level : supported_levels()) {
    Buffer dst(expected.size(), dst_offset);
    a.dst = dst.data();
#if defined(__x86_64__)
    const unsigned saved = _mm_getcsr();
    if (mxcsr != 0)
      _mm_setcsr(mxcsr);
    transpose_fold_cpu(a, level);
    const unsigned after = _mm_getcsr();
    _mm_setcsr(saved);
    if (mxcsr != 0)
      EXPECT_EQ(after, mxcsr) << "the kernel changed the caller's MXCSR";
#else
    (void)mxcsr;
    transpose_fold_cpu(a, level);
#endif
    size_t reported = 0, mismatches = 0;
    for (size_t k = 0; k < expected.size() / out_w; ++k) {
      const uint64_t got = load_bits(dst.data() + k * out_w, out_w);
      const uint64_t want = load_bits(expected.data() + k * out_w, out_w);
      if (canonical && ref_is_nan(a.dst_dtype, got)) {
        EXPECT_EQ(got, ref_canonical_nan(a.dst_dtype, ref_sign(a.dst_dtype, got)))
            << what << " level " << simd_level_name(level) << ": non-canonical NaN at " << k;
      }
      if (got != want) {
        ++mismatches;
        if (reported++ < 5) {
          const uint64_t i = k % a.A, j = k / a.A % a.cols, e = k / a.A / a.cols;
          ADD_FAILURE() << what << " level " << simd_level_name(level) << ": expert " << e
                        << " out[" << j << "][" << i << "] = " << hex(got) << ", want " << hex(want)
                        << " (input "
                        << hex(load_bits(a.src + ((e * a.A + i) * a.B + a.col_begin + j) *
                                                     bytes_of(a.src_dtype),
                                         bytes_of(a.src_dtype)))
                        << ")";
        }
      }
    }
    EXPECT_EQ(mismatches, 0u) << what << " level " << simd_level_name(level);
  }
}

std::string describe(const TransposeArgs& a) {
  std::ostringstream os;
  os << dtype_name(a.src_dtype);
  if (a.scales)
    os << " x " << dtype_name(a.scale_dtype);
  os << " -> " << dtype_name(a.dst_dtype) << " [" << a.experts << ", " << a.A << ", " << a.B
     << "] cols [" << a.col_begin << ", " << a.col_begin + a.cols << ")";
  return os.str();
}

/// Fills src and scales with random data, each expert with its own profile, and checks every
/// level against the reference.
void run_random_case(std::mt19937_64& rng, DType src_dtype, bool has_scale, DType scale_dtype,
                     DType dst_dtype, const Case& c, size_t src_offset, size_t dst_offset) {
  const unsigned in_w = bytes_of(src_dtype), scale_w = bytes_of(scale_dtype);
  Buffer src(c.experts * c.A * c.B * in_w, src_offset);
  Buffer scales(c.experts * scale_w);
  const uint64_t first_profile = rng();
  for (uint64_t e = 0; e < c.experts; ++e) {
    const auto profile = Profile((first_profile + e) % 3);
    for (uint64_t k = e * c.A * c.B; k < (e + 1) * c.A * c.B; ++k)
      store_bits(src.data() + k * in_w, in_w, random_value(src_dtype, rng, profile));
    store_bits(scales.data() + e * scale_w, scale_w, random_scale(scale_dtype, rng, profile));
  }
  TransposeArgs a;
  a.src = src.data();
  a.scales = has_scale ? scales.data() : nullptr;
  a.experts = c.experts;
  a.A = c.A;
  a.B = c.B;
  a.col_begin = c.col_begin;
  a.cols = c.cols;
  a.src_dtype = src_dtype;
  a.scale_dtype = scale_dtype;
  a.dst_dtype = dst_dtype;
  ASSERT_TRUE(check_transpose_supported(src_dtype, has_scale, scale_dtype, dst_dtype).ok())
      << describe(a);
  expect_all_levels_match(a, reference_output(a), describe(a), dst_offset);
}

/// Shapes: 1x1, odd, prime, single rows and columns, block multiples, and block multiples plus
/// edges, with and without column slicing.
std::vector<Case> shapes(std::mt19937_64& rng) {
  std::vector<Case> cases = {
      {1, 1, 1, 0, 1},       {3, 7, 13, 0, 13},      {1, 97, 101, 0, 101}, {1, 1, 257, 0, 257},
      {1, 257, 1, 0, 1},     {3, 64, 64, 0, 64},     {3, 96, 80, 0, 80},   {3, 128, 96, 16, 48},
      {3, 33, 47, 5, 30},    {3, 130, 70, 3, 64},    {3, 64, 48, 0, 48},   {1, 31, 17, 0, 17},
      {3, 160, 112, 0, 112}, {3, 70, 200, 100, 100},
  };
  for (int k = 0; k < 3; ++k) {
    const uint64_t A = 1 + rng() % 150, B = 1 + rng() % 150;
    const uint64_t col_begin = rng() % B;
    cases.push_back({1 + rng() % 3, A, B, col_begin, 1 + rng() % (B - col_begin)});
  }
  return cases;
}

} // namespace shardshift::testing
