// quantize.h: FP8 block quantization (docs/semantics.md 15.7), the inverse of dequant.h, written by
// to_hf --quantize fp8. A 2-D matrix X [R, C] (BF16, F16 or F32) becomes F8_E4M3 codes Q [R, C]
// and F32 block scales S [ceil(R/128), ceil(C/128)] such that Q * S (dequant.h) gives X back
// within half an E4M3 step at the block's scale. For each 128 x 128 block (partial at the edges):
//
//     amax = max |f32(x)| over the block's elements
//     s    = 1                          when amax = 0 (a block of zeros)
//            max(amax / 448, 2^-126)    otherwise (an IEEE float32 division, nearest even)
//     q    = e4m3(f32(x) / s)           an IEEE float32 division, then f32_to_e4m3_sat
//
// A block holding a NaN or an infinity has no scale (E4M3 has no infinity, and a NaN amax would
// make every element of the block NaN): the call fails, naming the element.
//
// The matrix is read through two strides, so that both of to_hf's sources are one operation: a
// pass-through weight (row_stride C, col_stride 1) and one expert's column block of a stacked
// tensor, transposed (row_stride 1, col_stride the stacked tensor's last axis).
// Thread-safety: pure; any number of concurrent calls on disjoint outputs.
#pragma once

#include "shardshift/dtype.h"
#include "shardshift/status.h"

#include "dequant.h"
#include "transpose.h" // SimdLevel, detect_simd_level

#include <cstddef>
#include <cstdint>

namespace shardshift {

/// The largest finite F8_E4M3 value, to which each block's largest magnitude is mapped.
inline constexpr float E4M3_MAX = 448.0f;

struct QuantizeArgs {
  /// Element (r, c) of X is src[(r * row_stride + c * col_stride) * element size].
  const std::byte* src = nullptr;
  uint64_t R = 0, C = 0;
  uint64_t row_stride = 0, col_stride = 1; ///< in elements; row_stride 0: C
  DType src_dtype = DType::BF16;
  /// false: codes of rows [begin, begin + count) of Q, C bytes each, at dst. true: scales of
  /// block rows [begin, begin + count) of S, ceil(C/128) little-endian F32 each, at dst.
  bool scales = false;
  uint64_t begin = 0, count = 0;
  std::byte* dst = nullptr;
};

/// Whether X's dtype can be quantized (BF16, F16, F32); the error names the dtype.
Status check_quantize_supported(DType src);

/// F32 -> F8_E4M3, round to nearest even, saturating: |y| >= 448 gives the code of +-448 (never
/// NaN), |y| below 2^-6 rounds to a multiple of 2^-9 (the subnormals), signed zeros are kept.
/// REQUIRES: y is not NaN (an infinity saturates like any value beyond 448).
uint8_t f32_to_e4m3_sat(float y);

/// The block scale of a block whose largest magnitude is `amax` (finite, >= 0), as above.
float fp8_block_scale(float amax);

/// Runs the operation on the CPU, with the SIMD kernels of detect_simd_level(). A block with a NaN
/// or infinity fails with Errc::unsupported and a message naming the element and its block ("row 5,
/// column 130 (block [0, 1]) is NaN: ..."). Quantizing rows that do not start or end on a block
/// boundary still reads their whole blocks. REQUIRES: check_quantize_supported ok.
Status quantize_cpu(const QuantizeArgs& args);

/// The same at a given SIMD level (tests and benchmarks compare them; a level above the CPU's runs
/// the scalar code). Every level gives the same bytes and the same errors.
Status quantize_cpu(const QuantizeArgs& args, SimdLevel level);

} // namespace shardshift
