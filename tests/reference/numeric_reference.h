// numeric_reference.h: the element-wise numerics of semantics.md section 1.1, written from the
// contract and sharing no code with src/numerics.h or the kernels.
//
// Every dtype decodes to a double (F16 through ldexp on the fields, not bit surgery), a product is
// formed in double (exact for every pair of 16- and 32-bit floats: at most 48 significant bits),
// and rounding to a format scales to an integer significand and compares the remainder with one
// half.
#pragma once

#include "shardshift/dtype.h"

#include <cstdint>

namespace shardshift::reference {

struct Format {
  int precision; ///< significant bits, the implicit one included
  int emin;      ///< exponent of the smallest normal
  int emax;      ///< exponent of the largest finite
};

/// BF16, F16, or (anything else) F32.
Format format_of(DType t);
/// 32 for F32, else 16.
unsigned width_bits(DType t);

bool ref_sign(DType t, uint64_t bits);
bool ref_is_nan(DType t, uint64_t bits);
/// The exact value of a non-NaN element.
double ref_decode(DType t, uint64_t bits);
/// Rounds a finite or infinite double to the format, nearest even; overflow gives infinity.
double ref_round(Format f, double v);
/// The bits of a value representable in t (the output of ref_round).
uint64_t ref_encode(DType t, double v);
uint64_t ref_canonical_nan(DType t, bool negative);
/// PyTorch's promotion among the three float types, written out as a table.
DType ref_promote(DType a, DType b);
/// One output element: the fold (has_scale), the cast, or the move (same dtype, no scale).
uint64_t ref_element(DType src, uint64_t x, bool has_scale, DType scale_dtype, uint64_t s,
                     DType dst);

/// FP8 (semantics 15.1), from the formats' definitions: F8_E4M3 is float8_e4m3fn (bias 7, no
/// infinities, S.1111.111 NaN), F8_E5M2 the IEEE-style 1-5-2 format (bias 15, infinities, NaNs).
bool ref_fp8_is_nan(DType t, uint8_t code);
/// The exact value of a non-NaN code (an infinity for E5M2 S.11111.00).
double ref_fp8_decode(DType t, uint8_t code);
/// One element of FP8 block dequantization (semantics 15.3): the weight element x (an FP8 code or
/// a BF16/F16/F32 pattern) times the F32/BF16/F16 block scale s, formed in float32 (one rounding
/// of the exact product), then rounded once to dst; NaN results are the canonical quiet NaN with
/// sign(x) xor sign(s).
uint64_t ref_dequant_element(DType src, uint64_t x, DType scale_dtype, uint64_t s, DType dst);

} // namespace shardshift::reference
