// dequant.h: FP8 block dequantization (docs/semantics.md section 15), the operation that turns a
// DeepSeek-style quantized weight into a plain float tensor. The weight W is a 2-D [R, C] matrix
// (F8_E4M3, F8_E5M2, or BF16/F16/F32) with a scale matrix S of [ceil(R/block), ceil(C/block)]
// (F32, BF16 or F16; one scale per block x block tile, partial tiles at the right and bottom
// edges). Each element is
//
//     out = round_to(dst_dtype, f32(W[r][c]) * f32(S[r / block][c / block]))
//
// with the product formed in float32 (one IEEE rounding; subnormals kept) and rounded once to the
// destination, nearest even. A NaN result is the destination's canonical quiet NaN with the sign
// sign(W) xor sign(S), as every product of semantics 1.1. The numerics are those of numerics.h.
//
// A call produces `count` output rows starting at `begin`: rows of W (transpose false: out[k][c] =
// deq(W[begin + k][c])), or columns of W transposed (transpose true: out[k][r] =
// deq(W[r][begin + k]), a stacked expert piece), each output row `dst_pitch` elements apart.
// Thread-safety: pure; any number of concurrent calls on disjoint outputs.
#pragma once

#include "shardshift/dtype.h"
#include "shardshift/status.h"

#include "transpose.h" // SimdLevel, detect_simd_level

#include <cstddef>
#include <cstdint>

namespace shardshift {

/// The block of DeepSeek-V3's checkpoints (128 x 128 elements per scale).
inline constexpr uint64_t FP8_BLOCK = 128;

struct DequantArgs {
  const std::byte* src = nullptr;    ///< W, [R, C] row-major
  const std::byte* scales = nullptr; ///< S, [ceil(R/block), ceil(C/block)] row-major
  std::byte* dst = nullptr;          ///< count rows of dst_pitch elements
  uint64_t R = 0, C = 0;
  uint64_t block = FP8_BLOCK;
  bool transpose = false;
  uint64_t begin = 0, count = 0; ///< output rows: rows of W, or (transpose) columns of W
  uint64_t dst_pitch = 0;        ///< elements per output row; 0: C (R when transposed)
  DType src_dtype = DType::F8_E4M3;
  DType scale_dtype = DType::F32;
  DType dst_dtype = DType::BF16;
};

/// Whether the combination is supported: W in F8_E4M3, F8_E5M2, BF16, F16, F32; S in F32, BF16,
/// F16; out in BF16, F16, F32. The error says which part is not.
Status check_dequant_supported(DType src, DType scale, DType dst);

/// The scale matrix shape for an [R, C] weight: [ceil(R/block), ceil(C/block)].
inline uint64_t scale_blocks(uint64_t n, uint64_t block = FP8_BLOCK) {
  return n / block + (n % block != 0);
}

/// Runs the operation on the CPU at the detected SIMD level (detect_simd_level(): the CPU's best,
/// capped by SHARDSHIFT_SIMD). REQUIRES: check_dequant_supported ok; the scale matrix has the
/// shape above.
void dequant_cpu(const DequantArgs& args);
/// Same at an explicit level (for tests and benchmarks; a level above the CPU's runs portable).
/// Every level gives the same bits.
void dequant_cpu(const DequantArgs& args, SimdLevel level);

} // namespace shardshift
