// transpose.h: the transpose-fold operation on expert tensors, shared by the CPU and CUDA paths.
//
// One call handles a chunk of an [E, A, B] tensor: `experts` consecutive expert matrices, each
// [A, B] row-major. For every expert e of the chunk and every output row j in [0, cols):
//
//     dst[e][j][i] = cast_to(dst_dtype, product(src[e][i][col_begin + j], scale[e]))   i in [0, A)
//
// so the output is [experts, cols, A]: the last two axes swapped, optionally only the columns
// [col_begin, col_begin + cols) of the input (expert-parallel row slicing), optionally each
// element multiplied by its expert's scale. docs/semantics.md section 1.1: the product is
// computed as PyTorch does (type promotion of src and scale dtypes, float32 arithmetic for 16-bit
// types, one round-to-nearest-even), NaN results become the sign-preserving quiet NaN, then the
// result is cast to dst_dtype. Without a scale and with dst == src, bytes are moved unchanged for
// any element width (1, 2, 4, 8 bytes).
// Thread-safety: pure; any number of concurrent calls on disjoint outputs.
#pragma once

#include "shardshift/dtype.h"
#include "shardshift/status.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace shardshift {

struct TransposeArgs {
  const std::byte* src = nullptr;    ///< first element of expert 0 of the chunk
  std::byte* dst = nullptr;          ///< output, experts * cols * A elements of dst_dtype
  const std::byte* scales = nullptr; ///< `experts` values of scale_dtype, or nullptr: no fold
  uint64_t experts = 0;
  uint64_t A = 0, B = 0;            ///< input matrix shape; input expert stride is A * B elements
  uint64_t col_begin = 0, cols = 0; ///< input columns kept (= output rows); cols == B for all
  /// Output row length in elements; 0 means A (rows back to back). A larger pitch places the
  /// transposed matrix inside wider output rows (a stacked piece: out[e][j][col + i], semantics
  /// 14.1), leaving the other columns alone. CPU only: the CUDA stage never gets such a call.
  uint64_t dst_pitch = 0;
  DType src_dtype = DType::BF16;
  DType scale_dtype = DType::BF16;
  DType dst_dtype = DType::BF16;
};

/// PyTorch's result dtype for src * scale among F16, BF16, F32, F64 (BF16 x F16 -> F32).
DType promote_types(DType a, DType b);

/// Whether this combination is supported; the error says why not (integer or 8-bit float fold,
/// cast of a non-float type, unknown width). `scale` is nullptr-free: pass has_scale.
Status check_transpose_supported(DType src, bool has_scale, DType scale, DType dst);

enum class SimdLevel { portable = 0, avx2 = 1, avx512 = 2 };
/// The best level this CPU supports (cpuid), capped by SHARDSHIFT_SIMD=portable|avx2|avx512 if set.
SimdLevel detect_simd_level();
const char* simd_level_name(SimdLevel level);

/// Runs the operation on the CPU at the detected SIMD level. REQUIRES: check_transpose_supported
/// ok.
void transpose_fold_cpu(const TransposeArgs& args);
/// Same at an explicit level (for tests and benchmarks; a level above the CPU's runs portable).
void transpose_fold_cpu(const TransposeArgs& args, SimdLevel level);

} // namespace shardshift
