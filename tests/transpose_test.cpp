// transpose_test.cpp: the CPU transpose-fold (src/transpose_cpu.cpp) and its numerics
// (src/numerics.h) against a reference written here from semantics.md section 1.1.
//
// The reference shares no code with the kernel: it decodes every dtype to a double (F16 through
// ldexp on the fields, not bit surgery), forms the product in double (exact for every pair of
// 16- and 32-bit floats: at most 48 significant bits), and rounds to a format by scaling to
// an integer significand and comparing the remainder with one half. Every SIMD level this CPU
// supports must match it bit for bit.
#include "shardshift/dtype.h"

#include "numerics.h"
#include "transpose.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "test_support.h"

#include <gtest/gtest.h>

namespace shardshift {
namespace {

// ---------------------------------------------------------------------------------------------
// The reference.

struct Format {
  int precision; ///< significant bits, the implicit one included
  int emin;      ///< exponent of the smallest normal
  int emax;      ///< exponent of the largest finite
};

Format format_of(DType t) {
  switch (t) {
  case DType::BF16:
    return {8, -126, 127};
  case DType::F16:
    return {11, -14, 15};
  default:
    return {24, -126, 127};
  }
}

unsigned width_bits(DType t) {
  return t == DType::F32 ? 32 : 16;
}

bool ref_sign(DType t, uint64_t bits) {
  return (bits >> (width_bits(t) - 1)) & 1;
}

bool ref_is_nan(DType t, uint64_t bits) {
  switch (t) {
  case DType::BF16:
    return (bits & 0x7F80) == 0x7F80 && (bits & 0x7F) != 0;
  case DType::F16:
    return (bits & 0x7C00) == 0x7C00 && (bits & 0x3FF) != 0;
  default:
    return (bits & 0x7F800000) == 0x7F800000 && (bits & 0x7FFFFF) != 0;
  }
}

/// The exact value of a non-NaN element.
double ref_decode(DType t, uint64_t bits) {
  if (t == DType::BF16) {
    const uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  if (t == DType::F32) {
    const uint32_t u = uint32_t(bits);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  const double sign = (bits & 0x8000) ? -1.0 : 1.0;
  const int exponent = int(bits >> 10) & 31;
  const int mantissa = int(bits) & 1023;
  if (exponent == 31)
    return sign * std::numeric_limits<double>::infinity();
  if (exponent == 0)
    return sign * std::ldexp(double(mantissa), -24);
  return sign * std::ldexp(double(1024 + mantissa), exponent - 25);
}

/// Rounds a finite or infinite double to the format, nearest even; overflow gives infinity.
double ref_round(Format f, double v) {
  if (v == 0 || std::isinf(v))
    return v;
  const double a = std::fabs(v);
  int k;
  std::frexp(a, &k); // a = m * 2^k, m in [0.5, 1): the leading bit has exponent k - 1
  const int quantum = std::max(k - 1, f.emin) - (f.precision - 1);
  const double scaled = std::ldexp(a, -quantum);
  double n = std::floor(scaled);
  const double rest = scaled - n;
  if (rest > 0.5 || (rest == 0.5 && std::fmod(n, 2.0) == 1.0))
    n += 1;
  double r = std::ldexp(n, quantum);
  const double max_finite = std::ldexp(std::ldexp(1.0, f.precision) - 1, f.emax - f.precision + 1);
  if (r > max_finite)
    r = std::numeric_limits<double>::infinity();
  return std::copysign(r, v);
}

/// The bits of a value representable in t (the output of ref_round).
uint64_t ref_encode(DType t, double v) {
  if (t == DType::BF16 || t == DType::F32) {
    const float f = float(v);
    EXPECT_EQ(double(f), v) << "reference value not representable";
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (t == DType::F32)
      return u;
    EXPECT_EQ(u & 0xFFFF, 0u) << "reference value not a BF16";
    return u >> 16;
  }
  const uint64_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = std::fabs(v);
  if (std::isinf(a))
    return sign | 0x7C00;
  if (a < std::ldexp(1.0, -14))
    return sign | uint64_t(std::ldexp(a, 24));
  int k;
  std::frexp(a, &k);
  const int lead = k - 1;
  const double mantissa = (std::ldexp(a, -lead) - 1.0) * 1024.0;
  return sign | (uint64_t(lead + 15) << 10) | uint64_t(mantissa);
}

uint64_t ref_canonical_nan(DType t, bool negative) {
  switch (t) {
  case DType::BF16:
    return 0x7FC0 | (negative ? 0x8000 : 0);
  case DType::F16:
    return 0x7E00 | (negative ? 0x8000 : 0);
  default:
    return 0x7FC00000u | (negative ? 0x80000000u : 0);
  }
}

/// PyTorch's promotion among the three float types, written out as a table.
DType ref_promote(DType a, DType b) {
  if (a == b)
    return a;
  return DType::F32; // BF16 x F16, and anything with F32
}

/// One output element: the fold (has_scale), the cast, or the move (same dtype, no scale).
uint64_t ref_element(DType src, uint64_t x, bool has_scale, DType scale_dtype, uint64_t s,
                     DType dst) {
  if (!has_scale && src == dst)
    return x;
  if (!has_scale) {
    if (ref_is_nan(src, x))
      return ref_canonical_nan(dst, ref_sign(src, x));
    return ref_encode(dst, ref_round(format_of(dst), ref_decode(src, x)));
  }
  const bool nan_sign = ref_sign(src, x) != ref_sign(scale_dtype, s);
  if (ref_is_nan(src, x) || ref_is_nan(scale_dtype, s))
    return ref_canonical_nan(dst, nan_sign);
  const double vx = ref_decode(src, x), vs = ref_decode(scale_dtype, s);
  if ((std::isinf(vx) && vs == 0) || (vx == 0 && std::isinf(vs)))
    return ref_canonical_nan(dst, nan_sign);
  const DType product = ref_promote(src, scale_dtype);
  const double p = ref_round(format_of(product), vx * vs);
  return ref_encode(dst, ref_round(format_of(dst), p));
}

// ---------------------------------------------------------------------------------------------
// Buffers and data.

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

/// A 64-byte aligned buffer; `offset` shifts the usable start to test misaligned pointers.
class Buffer {
public:
  Buffer(size_t bytes, size_t offset = 0)
      : storage_(new std::byte[bytes + offset + 64]), offset_(offset), size_(bytes) {
    const auto base = reinterpret_cast<uintptr_t>(storage_.get());
    data_ = storage_.get() + ((64 - base % 64) % 64) + offset_;
    std::memset(data_, 0xA5, size_);
  }
  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }

private:
  std::unique_ptr<std::byte[]> storage_;
  size_t offset_, size_;
  std::byte* data_ = nullptr;
};

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

/// What random data an expert gets. The SIMD kernels hand a whole tile to the scalar code when
/// one product in it is NaN (or, for AVX512-BF16, subnormal), so the profiles without those let
/// the SIMD arithmetic itself be compared.
enum class Profile {
  ordinary, ///< finite values within 2^+-12 of one: never NaN, never subnormal
  no_nan,   ///< plus zeros, infinities, subnormals, extremes (no NaN: no NaN scale, no zero one)
  anything, ///< plus NaNs and raw random bit patterns
};

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
  const char* saved = std::getenv("SHARDSHIFT_SIMD");
  const std::string saved_value = saved ? saved : "";
  unsetenv("SHARDSHIFT_SIMD");
  const SimdLevel best = detect_simd_level();
  if (saved)
    setenv("SHARDSHIFT_SIMD", saved_value.c_str(), 1);
  std::vector<SimdLevel> levels;
  for (int l = 0; l <= int(best); ++l)
    levels.push_back(SimdLevel(l));
  return levels;
}

/// Runs `a` at every supported level into a fresh buffer and compares with `expected` bit for
/// bit. Also checks that every NaN written by a fold or cast is the canonical one.
/// `mxcsr`, when not zero, is the x86 floating-point control word the kernel runs under (the
/// reference never does).
void expect_all_levels_match(TransposeArgs a, const std::vector<std::byte>& expected,
                             const std::string& what, size_t dst_offset = 0, unsigned mxcsr = 0) {
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

struct Case {
  uint64_t experts, A, B, col_begin, cols;
};

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
                     DType dst_dtype, const Case& c, size_t src_offset = 0, size_t dst_offset = 0) {
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

const DType FLOATS[] = {DType::BF16, DType::F16, DType::F32};

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

// ---------------------------------------------------------------------------------------------
// The kernel: every dtype combination, every level, against the reference.

TEST(TransposeFold, EveryFoldCombinationMatchesReference) {
  std::mt19937_64 rng(testing::test_seed());
  const auto cases = shapes(rng);
  for (DType src : FLOATS)
    for (DType scale : FLOATS) {
      const DType product = ref_promote(src, scale);
      for (DType dst : {product, DType::BF16, DType::F16, DType::F32}) {
        for (const Case& c : cases)
          run_random_case(rng, src, true, scale, dst, c);
        if (HasFailure())
          return;
      }
    }
}

TEST(TransposeFold, CastWithoutScaleMatchesReference) {
  std::mt19937_64 rng(testing::test_seed());
  const auto cases = shapes(rng);
  for (DType src : FLOATS)
    for (DType dst : FLOATS) {
      if (src == dst)
        continue;
      for (const Case& c : cases)
        run_random_case(rng, src, false, DType::BF16, dst, c);
      if (HasFailure())
        return;
    }
}

TEST(TransposeFold, MoveKeepsBitsForEveryWidth) {
  std::mt19937_64 rng(testing::test_seed());
  const auto cases = shapes(rng);
  for (DType dtype : {DType::U8, DType::I8, DType::BOOL, DType::F8_E4M3, DType::BF16, DType::F16,
                      DType::I16, DType::F32, DType::I32, DType::F64, DType::I64, DType::C64}) {
    const unsigned w = bytes_of(dtype);
    for (const Case& c : cases) {
      // Raw random bytes: NaN payloads, signalling NaNs and all must survive unchanged.
      Buffer src(c.experts * c.A * c.B * w);
      const std::string bytes = testing::random_bytes(rng, src.size());
      std::memcpy(src.data(), bytes.data(), src.size());
      TransposeArgs a;
      a.src = src.data();
      a.experts = c.experts;
      a.A = c.A;
      a.B = c.B;
      a.col_begin = c.col_begin;
      a.cols = c.cols;
      a.src_dtype = a.dst_dtype = dtype;
      ASSERT_TRUE(check_transpose_supported(dtype, false, dtype, dtype).ok()) << describe(a);
      std::vector<std::byte> expected(c.experts * c.cols * c.A * w);
      for (uint64_t e = 0; e < c.experts; ++e)
        for (uint64_t j = 0; j < c.cols; ++j)
          for (uint64_t i = 0; i < c.A; ++i)
            std::memcpy(expected.data() + ((e * c.cols + j) * c.A + i) * w,
                        src.data() + ((e * c.A + i) * c.B + c.col_begin + j) * w, w);
      expect_all_levels_match(a, expected, describe(a));
    }
    if (HasFailure())
      return;
  }
}

TEST(TransposeFold, MisalignedPointersMatchReference) {
  // safetensors data offsets need not be aligned: odd element addresses and rows, both sides.
  std::mt19937_64 rng(testing::test_seed());
  for (size_t offset : {2, 6, 34}) {
    run_random_case(rng, DType::BF16, true, DType::BF16, DType::BF16, {2, 96, 80, 0, 80}, offset,
                    offset);
    run_random_case(rng, DType::F16, true, DType::F16, DType::F16, {1, 64, 48, 16, 32}, offset, 2);
    run_random_case(rng, DType::BF16, false, DType::BF16, DType::BF16, {1, 128, 64, 0, 64}, offset,
                    offset);
    run_random_case(rng, DType::F32, true, DType::F32, DType::F32, {1, 64, 64, 0, 64}, offset,
                    offset + 2);
  }
}

TEST(TransposeFold, LargeOutputsTakeTheStreamingPathExactly) {
  // Outputs of 8 MiB and more with 64-byte aligned rows use non-temporal stores.
  std::mt19937_64 rng(testing::test_seed());
  run_random_case(rng, DType::BF16, true, DType::BF16, DType::BF16, {2, 1024, 2048, 0, 2048});
  run_random_case(rng, DType::BF16, false, DType::BF16, DType::BF16, {1, 2048, 2112, 32, 2048});
  run_random_case(rng, DType::F32, true, DType::BF16, DType::F32, {1, 1024, 2048, 0, 2048});
  run_random_case(rng, DType::F16, true, DType::F16, DType::F16, {8, 512, 1056, 16, 1024});
}

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

TEST(TransposeFold, NothingToDoWritesNothing) {
  Buffer src(64), dst(64);
  const struct { uint64_t experts, A, cols; } empty[] = {{0, 4, 4}, {1, 0, 4}, {1, 4, 0}};
  for (const auto& c : empty) {
    TransposeArgs a;
    a.src = src.data();
    a.dst = dst.data();
    a.experts = c.experts;
    a.A = c.A;
    a.B = 4;
    a.cols = c.cols;
    for (SimdLevel level : supported_levels())
      transpose_fold_cpu(a, level);
  }
  for (size_t k = 0; k < dst.size(); ++k)
    ASSERT_EQ(dst.data()[k], std::byte{0xA5});
}

// ---------------------------------------------------------------------------------------------
// Support checks, promotion, level selection.

TEST(TransposeSupport, PromotionFollowsPyTorch) {
  using enum DType;
  EXPECT_EQ(promote_types(BF16, BF16), BF16);
  EXPECT_EQ(promote_types(F16, F16), F16);
  EXPECT_EQ(promote_types(F32, F32), F32);
  EXPECT_EQ(promote_types(BF16, F16), F32);
  EXPECT_EQ(promote_types(F16, BF16), F32);
  EXPECT_EQ(promote_types(BF16, F32), F32);
  EXPECT_EQ(promote_types(F32, F16), F32);
  EXPECT_EQ(promote_types(BF16, F64), F64);
  EXPECT_EQ(promote_types(F64, F32), F64);
  EXPECT_EQ(promote_types(I8, BF16), BF16);
}

TEST(TransposeSupport, AcceptsFloatFoldsCastsAndByteMoves) {
  for (DType src : FLOATS)
    for (DType scale : FLOATS)
      for (DType dst : FLOATS) {
        EXPECT_TRUE(check_transpose_supported(src, true, scale, dst).ok());
        EXPECT_TRUE(check_transpose_supported(src, false, scale, dst).ok());
      }
  for (DType t : {DType::BOOL, DType::U8, DType::I8, DType::F8_E5M2, DType::F8_E4M3, DType::I16,
                  DType::I32, DType::U32, DType::F64, DType::I64, DType::C64})
    EXPECT_TRUE(check_transpose_supported(t, false, DType::BF16, t).ok()) << dtype_name(t);
}

TEST(TransposeSupport, RefusesWithClearMessages) {
  using enum DType;
  for (DType t : {I8, U8, F8_E4M3, F8_E5M2, I32, F64, I64}) {
    const Status s = check_transpose_supported(t, true, BF16, BF16);
    ASSERT_FALSE(s.ok()) << dtype_name(t);
    EXPECT_EQ(s.code(), Errc::unsupported);
    EXPECT_NE(s.message().find("cannot fold a per-expert scale into " + std::string(dtype_name(t)) +
                               " tensors"),
              std::string::npos)
        << s.message();
    EXPECT_NE(s.message().find("only BF16, F16 and F32 are supported"), std::string::npos)
        << s.message();
  }
  Status s = check_transpose_supported(BF16, true, F64, BF16);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("scale of dtype F64"), std::string::npos) << s.message();
  s = check_transpose_supported(BF16, true, BF16, I8);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("to I8"), std::string::npos) << s.message();
  s = check_transpose_supported(I8, false, BF16, BF16);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Errc::unsupported);
  EXPECT_NE(s.message().find("cannot cast I8 tensors to BF16"), std::string::npos) << s.message();
  s = check_transpose_supported(BF16, false, BF16, F64);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("to F64"), std::string::npos) << s.message();
  for (DType t : {F4, F6_E2M3, F6_E3M2}) {
    s = check_transpose_supported(t, false, BF16, t);
    ASSERT_FALSE(s.ok()) << dtype_name(t);
    EXPECT_EQ(s.code(), Errc::unsupported);
    EXPECT_NE(s.message().find("cannot transpose " + std::string(dtype_name(t))), std::string::npos)
        << s.message();
  }
}

TEST(TransposeSupport, SimdLevelIsCappedByEnvironment) {
  const char* saved = std::getenv("SHARDSHIFT_SIMD");
  const std::string saved_value = saved ? saved : "";
  unsetenv("SHARDSHIFT_SIMD");
  const SimdLevel best = detect_simd_level();
  setenv("SHARDSHIFT_SIMD", "portable", 1);
  EXPECT_EQ(detect_simd_level(), SimdLevel::portable);
  setenv("SHARDSHIFT_SIMD", "avx2", 1);
  EXPECT_EQ(detect_simd_level(), std::min(best, SimdLevel::avx2));
  setenv("SHARDSHIFT_SIMD", "avx512", 1);
  EXPECT_EQ(detect_simd_level(), best);
  setenv("SHARDSHIFT_SIMD", "no-such-level", 1);
  EXPECT_EQ(detect_simd_level(), best);
  if (saved)
    setenv("SHARDSHIFT_SIMD", saved_value.c_str(), 1);
  else
    unsetenv("SHARDSHIFT_SIMD");
  EXPECT_STREQ(simd_level_name(SimdLevel::portable), "portable");
  EXPECT_STREQ(simd_level_name(SimdLevel::avx2), "avx2");
  EXPECT_STREQ(simd_level_name(SimdLevel::avx512), "avx512");
  std::cout << "[ info ] this CPU: " << simd_level_name(best) << "\n";
}

} // namespace
} // namespace shardshift
