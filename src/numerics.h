// numerics.h: the scalar numerics of the transpose-fold, shared by the CPU kernel and CUDA device
// code so that every path produces the same bits (docs: semantics.md, section 1.1).
//
// All conversions work on bit patterns with integer arithmetic, so they do not depend on the
// floating-point environment: subnormals are produced and consumed exactly even where the
// hardware flushes them (CUDA -ftz, DAZ/FTZ on x86). The one floating-point operation is the
// f32 multiplication of mul_f32(); it must be a plain IEEE multiply, so never build this with
// -ffast-math or CUDA's --use_fast_math / -ftz=true, and never run it with FTZ/DAZ or a directed
// rounding mode set (transpose_fold_cpu clears them for the duration of each call).
//
// NaN policy: PyTorch's own paths disagree on NaN bit patterns, and x86 and CUDA produce
// different NaNs for the same operation (x86 returns a negative "default NaN" for inf * 0, CUDA
// 0x7FFFFFFF). So every NaN this code produces is the canonical quiet NaN of its type with a
// defined sign: 0x7FC0 | sign (BF16), 0x7E00 | sign (F16), 0x7FC00000 | sign (F32). For a product
// the sign is sign(a) xor sign(b), the IEEE sign of a product, whatever the inputs are; for a
// conversion it is the sign of the input.
//
// Thread-safety: pure functions.
#pragma once

// GCC and Clang say so when -ffast-math (or -Ofast, -ffinite-math-only) is on: refuse to build.
#if defined(__FAST_MATH__) || (defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__)
#error "shardshift's kernels must be built without fast-math options (docs/semantics.md 1.1.7)"
#endif

#include <cstdint>

#if defined(__CUDACC__)
#define SHARDSHIFT_HD __host__ __device__
#else
#define SHARDSHIFT_HD
#endif

// constexpr on the host (tests can static_assert); plain inline under nvcc, where the device-side
// bit casts (__float_as_uint) are not constexpr.
#include <bit>
#if defined(__CUDACC__)
#define SHARDSHIFT_NUMERIC SHARDSHIFT_HD inline
#else
#define SHARDSHIFT_NUMERIC constexpr inline
#endif

namespace shardshift::numerics {

inline constexpr uint16_t BF16_CANONICAL_NAN = 0x7FC0;
inline constexpr uint16_t F16_CANONICAL_NAN = 0x7E00;
inline constexpr uint32_t F32_CANONICAL_NAN = 0x7FC00000u;
inline constexpr uint32_t F32_SIGN = 0x80000000u;

SHARDSHIFT_NUMERIC uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return std::bit_cast<uint32_t>(f);
#endif
}

SHARDSHIFT_NUMERIC float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return std::bit_cast<float>(u);
#endif
}

/// True when the f32 bit pattern is a NaN (quiet or signalling).
SHARDSHIFT_NUMERIC bool f32_bits_is_nan(uint32_t u) {
  return (u & 0x7FFFFFFFu) > 0x7F800000u;
}

/// The bit pattern of `u` with a NaN replaced by the canonical quiet NaN of the same sign.
SHARDSHIFT_NUMERIC uint32_t f32_canonical_bits(uint32_t u) {
  return f32_bits_is_nan(u) ? (u & F32_SIGN) | F32_CANONICAL_NAN : u;
}

/// BF16 -> F32: exact (BF16 is the upper half of an F32). NaN payloads are kept.
SHARDSHIFT_NUMERIC float bf16_to_f32(uint16_t h) {
  return f32_from_bits(uint32_t(h) << 16);
}

/// F16 -> F32: exact, subnormals included (every F16 subnormal is an F32 normal). NaN payloads
/// are kept (shifted into the F32 mantissa, so the canonical F16 NaN gives the canonical F32 NaN).
SHARDSHIFT_NUMERIC float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) // infinity or NaN
    return f32_from_bits(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0) // normal: rebias 15 -> 127
    return f32_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0)
    return f32_from_bits(sign); // signed zero
  // Subnormal mantissa * 2^-24: shift the leading one up to the implicit bit position,
  // lowering the exponent once per shift. 2^-14 has F32 exponent field 113.
  uint32_t f32_exponent = 113;
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --f32_exponent;
  }
  return f32_from_bits(sign | (f32_exponent << 23) | ((mantissa & 0x3FFu) << 13));
}

/// F32 -> BF16, round to nearest even. Overflow rounds to infinity; subnormals round like any
/// other value (BF16 has F32's exponent range); NaN -> 0x7FC0 with the sign of the input.
SHARDSHIFT_NUMERIC uint16_t f32_to_bf16_rne(float f) {
  const uint32_t u = f32_bits(f);
  if (f32_bits_is_nan(u))
    return uint16_t(((u >> 16) & 0x8000u) | BF16_CANONICAL_NAN);
  // Adding 0x7FFF rounds up exactly when the low half is above one half; the extra lsb of the kept
  // half breaks the tie towards even. A carry into the exponent is the correct rounding up (up
  // to infinity from the largest finite values).
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/// F32 -> F16, round to nearest even: overflow to infinity (|x| >= 65520), F16 subnormals for
/// |x| < 2^-14, signed zeros kept; NaN -> 0x7E00 with the sign of the input.
SHARDSHIFT_NUMERIC uint16_t f32_to_f16_rne(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u)
    return uint16_t(sign | F16_CANONICAL_NAN);
  if (a >= 0x477FF000u)
    return uint16_t(sign | 0x7C00u); // 65520 ties up to infinity (65504 is odd)
  if (a >= 0x38800000u) {
    // Normal result: round the 13 dropped mantissa bits, then rebias the exponent 127 -> 15.
    // A mantissa carry moves into the exponent, which is the correct rounding up.
    return uint16_t(sign | (((a + 0xFFFu + ((a >> 13) & 1u)) >> 13) - (112u << 10)));
  }
  // Subnormal result q * 2^-24 with q = round(|x| * 2^24) (q = 0x400 is the smallest normal and
  // encodes correctly). |x| = m * 2^(e-150), so q = m >> (126 - e) rounded.
  const uint32_t e = a >> 23;
  if (e < 102)
    return uint16_t(sign); // |x| < 2^-25: below half the smallest subnormal
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - e; // 14..24
  const uint32_t q = m >> shift;
  const uint32_t rest = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  const uint32_t round_up = (rest > half || (rest == half && (q & 1u))) ? 1u : 0u;
  return uint16_t(sign | (q + round_up));
}

/// The IEEE f32 product a * b; a NaN result becomes the canonical quiet NaN with the sign
/// sign(a) xor sign(b), so x86 and CUDA agree.
SHARDSHIFT_NUMERIC float mul_f32(float a, float b) {
  const float p = a * b;
  const uint32_t pu = f32_bits(p);
  if (!f32_bits_is_nan(pu))
    return p;
  return f32_from_bits(((f32_bits(a) ^ f32_bits(b)) & F32_SIGN) | F32_CANONICAL_NAN);
}

/// A widened (or f32) value with a NaN replaced by the canonical F32 NaN of the same sign.
SHARDSHIFT_NUMERIC float f32_canonical(float f) {
  return f32_from_bits(f32_canonical_bits(f32_bits(f)));
}

/// F8_E4M3 (float8_e4m3fn) -> F32, exact. Sign, 4 exponent bits (bias 7), 3 mantissa bits; no
/// infinities: S.1111.111 is NaN (the canonical quiet F32 NaN with the code's sign), so
/// S.1111.110 = 448 is the largest finite value; exponent 0 holds the subnormals m * 2^-9 and the
/// signed zeros. Every value is an F32 normal or zero.
SHARDSHIFT_NUMERIC float f8_e4m3_to_f32(uint8_t c) {
  const uint32_t sign = uint32_t(c & 0x80u) << 24;
  const uint32_t exponent = (c >> 3) & 0xFu;
  uint32_t mantissa = c & 0x7u;
  if (exponent == 0xF && mantissa == 0x7)
    return f32_from_bits(sign | F32_CANONICAL_NAN);
  if (exponent != 0) // normal: rebias 7 -> 127
    return f32_from_bits(sign | ((exponent + 120u) << 23) | (mantissa << 20));
  if (mantissa == 0)
    return f32_from_bits(sign);
  // Subnormal mantissa * 2^-9: shift the leading one up to the implicit bit, lowering the
  // exponent once per shift. 2^-6 has F32 exponent field 121.
  uint32_t f32_exponent = 121;
  while ((mantissa & 0x8u) == 0) {
    mantissa <<= 1;
    --f32_exponent;
  }
  return f32_from_bits(sign | (f32_exponent << 23) | ((mantissa & 0x7u) << 20));
}

/// F8_E5M2 -> F32, exact: E5M2 is the upper byte of an F16 (bias 15, infinities S.11111.00, NaN
/// S.11111.xx with xx != 0, subnormals m * 2^-16). A NaN gives the canonical quiet F32 NaN with the
/// code's sign.
SHARDSHIFT_NUMERIC float f8_e5m2_to_f32(uint8_t c) {
  return f32_canonical(f16_to_f32(uint16_t(uint16_t(c) << 8)));
}

} // namespace shardshift::numerics
