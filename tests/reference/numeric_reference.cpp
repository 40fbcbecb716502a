// numeric_reference.cpp: see numeric_reference.h.
#include "reference/numeric_reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <gtest/gtest.h>

namespace shardshift::reference {

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

bool ref_fp8_is_nan(DType t, uint8_t code) {
  if (t == DType::F8_E4M3)
    return (code & 0x7F) == 0x7F; // S.1111.111, the only NaN
  return (code & 0x7C) == 0x7C && (code & 0x03) != 0; // exponent all ones, mantissa not zero
}

double ref_fp8_decode(DType t, uint8_t code) {
  const double sign = (code & 0x80) ? -1.0 : 1.0;
  if (t == DType::F8_E4M3) {
    const int exponent = (code >> 3) & 15, mantissa = code & 7;
    if (exponent == 0) // subnormal: 0.m * 2^(1 - 7)
      return sign * std::ldexp(double(mantissa) / 8.0, -6);
    return sign * std::ldexp(1.0 + double(mantissa) / 8.0, exponent - 7);
  }
  const int exponent = (code >> 2) & 31, mantissa = code & 3;
  if (exponent == 31)
    return sign * std::numeric_limits<double>::infinity();
  if (exponent == 0) // subnormal: 0.m * 2^(1 - 15)
    return sign * std::ldexp(double(mantissa) / 4.0, -14);
  return sign * std::ldexp(1.0 + double(mantissa) / 4.0, exponent - 15);
}

uint64_t ref_dequant_element(DType src, uint64_t x, DType scale_dtype, uint64_t s, DType dst) {
  const bool fp8 = src == DType::F8_E4M3 || src == DType::F8_E5M2;
  const bool x_sign = fp8 ? (x >> 7) & 1 : ref_sign(src, x);
  const bool x_nan = fp8 ? ref_fp8_is_nan(src, uint8_t(x)) : ref_is_nan(src, x);
  const bool nan_sign = x_sign != ref_sign(scale_dtype, s);
  if (x_nan || ref_is_nan(scale_dtype, s))
    return ref_canonical_nan(dst, nan_sign);
  const double vx = fp8 ? ref_fp8_decode(src, uint8_t(x)) : ref_decode(src, x);
  const double vs = ref_decode(scale_dtype, s);
  if ((std::isinf(vx) && vs == 0) || (vx == 0 && std::isinf(vs)))
    return ref_canonical_nan(dst, nan_sign);
  // The exact product fits a double (at most 24 + 24 significant bits); float32 rounds it once.
  const double p = ref_round(format_of(DType::F32), vx * vs);
  return ref_encode(dst, ref_round(format_of(dst), p));
}

} // namespace shardshift::reference
