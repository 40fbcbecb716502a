// transpose_cpu.cpp: the transpose-fold of transpose.h on the CPU.
//
// Shape of the work: each expert matrix is cut into tiles of a few input rows by a few input
// columns (see TILE_IN_BYTES), visited row-major while the next tile's input is prefetched. A
// tile is transposed in blocks held in SIMD registers: AVX-512 loads 32 rows x 16 columns of a
// 2-byte type (16 x 16 of a 4-byte one) so that every transposed row is one whole 64-byte line;
// AVX2 transposes two 16x16 (8x8) blocks side by side for the same reason. Each row is converted
// in registers (widen, multiply, round) and stored. Large outputs are written with non-temporal
// stores: they are written once and read much later (by the writer), so fetching their lines
// into the cache first (read-for-ownership) would cost a third of the memory traffic for nothing.
//
// Exactness: the SIMD paths round exactly as numerics.h does (the same integer rounding on AVX2,
// F16C's and AVX512-BF16's round-to-nearest-even conversions otherwise). Where they could differ
// (a NaN product, whose bit pattern the hardware chooses, or a subnormal product, which
// AVX512-BF16 flushes) the SIMD code only flags the tile, and the scalar code built on
// numerics.h recomputes it. Elements outside whole blocks (matrix edges) are scalar too. So
// every SimdLevel gives the same bits, which tests/transpose_test.cpp checks.
#include "cpu_features.h"
#include "float_environment.h"
#include "numerics.h"
#include "simd_x86.h"
#include "transpose.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

namespace shardshift {

namespace {

using namespace numerics;

bool is_arith_float(DType t) {
  return t == DType::BF16 || t == DType::F16 || t == DType::F32;
}

// ---------------------------------------------------------------------------------------------
// Scalar element operations: the reference every other path must match.

template <DType T> struct Storage;
template <> struct Storage<DType::BF16> { using type = uint16_t; };
template <> struct Storage<DType::F16> { using type = uint16_t; };
template <> struct Storage<DType::F32> { using type = uint32_t; };

template <DType T> inline float widen(typename Storage<T>::type x) {
  if constexpr (T == DType::BF16)
    return bf16_to_f32(x);
  else if constexpr (T == DType::F16)
    return f16_to_f32(x);
  else
    return f32_from_bits(x);
}

/// Rounds an f32 value to T and returns the result's bits (NaN: canonical, sign kept).
template <DType T> inline typename Storage<T>::type narrow(float v) {
  if constexpr (T == DType::BF16)
    return f32_to_bf16_rne(v);
  else if constexpr (T == DType::F16)
    return f32_to_f16_rne(v);
  else
    return f32_canonical_bits(f32_bits(v));
}

/// Bytes moved unchanged: the transpose without fold or cast, for any element width.
template <class T> struct MoveOp {
  using In = T;
  using Out = T;
  T operator()(T x) const { return x; }
};

/// src S, product dtype P (when SCALED), destination D. Without SCALED this is a plain cast.
template <DType S, DType P, DType D, bool SCALED> struct ConvertOp {
  using In = typename Storage<S>::type;
  using Out = typename Storage<D>::type;
  float scale = 1.0f;
  Out operator()(In x) const {
    float v = widen<S>(x);
    if constexpr (SCALED) {
      // PyTorch: the product in f32, rounded once to the promoted dtype P, then cast to D.
      v = mul_f32(v, scale);
      if constexpr (P != DType::F32)
        v = widen<P>(narrow<P>(v));
    }
    return narrow<D>(v);
  }
};

template <class T> inline T load_elem(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <class T> inline void store_elem(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

/// dst[j][i] = op(src[i][j]) for i in [i0, i1), j in [j0, j1). Strides are in bytes.
template <class Op>
void scalar_rect(const Op& op, const std::byte* src, uint64_t src_stride, std::byte* dst,
                 uint64_t dst_stride, uint64_t i0, uint64_t i1, uint64_t j0, uint64_t j1) {
  using In = typename Op::In;
  using Out = typename Op::Out;
  for (uint64_t j = j0; j < j1; ++j) {
    std::byte* out = dst + j * dst_stride;
    const std::byte* in = src + j * sizeof(In);
    for (uint64_t i = i0; i < i1; ++i)
      store_elem<Out>(out + i * sizeof(Out), op(load_elem<In>(in + i * src_stride)));
  }
}

// ---------------------------------------------------------------------------------------------
// The driver: tiles, edges, NaN fix-ups and streaming stores, shared by all levels.

// A tile is tile_i x tile_j input elements: the SIMD blocks of one tile read tile_i rows of
// TILE_IN_BYTES and write tile_j rows of TILE_OUT_BYTES. While one tile is worked on, the input
// lines of the next one are prefetched: the rows of a tile are too many streams for the hardware
// prefetchers to follow. One input line and two output lines per row was the fastest shape
// measured (BF16 [1408, 2816] and [2816, 704] experts, Zen 5; docs/PERFORMANCE.md): each input
// line is used whole by one tile, and rows of 64 elements or more in flight stall on misses.
#ifndef SHARDSHIFT_TILE_IN_BYTES
#define SHARDSHIFT_TILE_IN_BYTES 64
#define SHARDSHIFT_TILE_OUT_BYTES 128
#endif
constexpr uint64_t TILE_IN_BYTES = SHARDSHIFT_TILE_IN_BYTES;
constexpr uint64_t TILE_OUT_BYTES = SHARDSHIFT_TILE_OUT_BYTES;
// Outputs at least this large are written with non-temporal stores (see the file comment). A
// smaller output may still be in cache when the writer reads it, so it is stored normally: for
// 4 MiB outputs each copied out right after, normal stores were 1.3x faster in all (Zen 5,
// 32 MiB L3), while for outputs larger than the caches streaming is 1.5x faster.
#ifndef SHARDSHIFT_STREAM_MIN_BYTES
#define SHARDSHIFT_STREAM_MIN_BYTES (uint64_t(8) << 20)
#endif
constexpr uint64_t STREAM_MIN_BYTES = SHARDSHIFT_STREAM_MIN_BYTES;

struct Matrix {
  const std::byte* src; ///< element (0, col_begin) of one expert
  std::byte* dst;       ///< element (0, 0) of its output
  uint64_t A, B, cols;
  uint64_t pitch; ///< output row length in elements (A unless a stacked piece)
};

/// A SIMD tile function: transposes and converts ni x nj input elements (ni a multiple of the
/// kernel's block_i, nj of block_j) from `src` to `dst` (row strides in bytes), with
/// non-temporal stores when `stream`. Returns true when some block needs the scalar
/// recomputation (a NaN or subnormal product the SIMD code does not round exactly).
using TileFn = bool (*)(float scale, const std::byte* src, uint64_t src_stride, std::byte* dst,
                        uint64_t dst_stride, uint64_t ni, uint64_t nj, bool stream);

template <class Op> struct Kernel {
  Op op;                 ///< the scalar reference, for edges and fix-ups
  float scale = 1.0f;    ///< the expert's scale, passed to tile
  TileFn tile = nullptr; ///< nullptr: scalar only
  uint64_t block_i = 1, block_j = 1;
  uint64_t stream_align = 0; ///< 0: never stream; else the output row alignment streaming needs
};

inline void prefetch_rows(const std::byte* p, uint64_t stride, uint64_t rows, uint64_t bytes) {
  for (uint64_t r = 0; r < rows; ++r)
    for (uint64_t b = 0; b < bytes; b += 64)
      __builtin_prefetch(p + r * stride + b);
}

template <class Op> void run_matrix(const Kernel<Op>& k, const Matrix& m, bool stream) {
  using In = typename Op::In;
  using Out = typename Op::Out;
  const uint64_t src_stride = m.B * sizeof(In);
  const uint64_t dst_stride = m.pitch * sizeof(Out);
  // Multiples of every kernel's block (at most 32 x 16 elements), and whole lines per row so that
  // streamed rows stay 64-byte aligned.
  constexpr uint64_t TILE_I = std::max<uint64_t>(TILE_OUT_BYTES / sizeof(Out), 32);
  constexpr uint64_t TILE_J = std::max<uint64_t>(TILE_IN_BYTES / sizeof(In), 16);
  static_assert(TILE_I % 32 == 0 && TILE_J % 16 == 0 && TILE_I * sizeof(Out) % 64 == 0);
  if (k.tile == nullptr) {
    for (uint64_t i0 = 0; i0 < m.A; i0 += TILE_I)
      for (uint64_t j0 = 0; j0 < m.cols; j0 += TILE_J)
        scalar_rect(k.op, m.src, src_stride, m.dst, dst_stride, i0, std::min(m.A, i0 + TILE_I), j0,
                    std::min(m.cols, j0 + TILE_J));
    return;
  }
  // Whole blocks first; the bottom rows and right columns that do not fill a block are scalar.
  const uint64_t a_full = m.A - m.A % k.block_i;
  const uint64_t cols_full = m.cols - m.cols % k.block_j;
  // Tiles in row-major order: a strip of TILE_I input rows is read front to back.
  const uint64_t tiles_j = (cols_full + TILE_J - 1) / TILE_J;
  const uint64_t tiles = (a_full + TILE_I - 1) / TILE_I * tiles_j;
  for (uint64_t t = 0; t < tiles; ++t) {
    const uint64_t i0 = t / tiles_j * TILE_I, j0 = t % tiles_j * TILE_J;
    const uint64_t ni = std::min(a_full - i0, TILE_I), nj = std::min(cols_full - j0, TILE_J);
    if (t + 1 < tiles) {
      const uint64_t pi = (t + 1) / tiles_j * TILE_I, pj = (t + 1) % tiles_j * TILE_J;
      prefetch_rows(m.src + pi * src_stride + pj * sizeof(In), src_stride,
                    std::min(a_full - pi, TILE_I), std::min(cols_full - pj, TILE_J) * sizeof(In));
    }
    const std::byte* in = m.src + i0 * src_stride + j0 * sizeof(In);
    std::byte* out = m.dst + j0 * dst_stride + i0 * sizeof(Out);
    if (k.tile(k.scale, in, src_stride, out, dst_stride, ni, nj, stream))
      scalar_rect(k.op, in, src_stride, out, dst_stride, 0, ni, 0, nj);
  }
  if (a_full < m.A)
    scalar_rect(k.op, m.src, src_stride, m.dst, dst_stride, a_full, m.A, 0, cols_full);
  if (cols_full < m.cols)
    for (uint64_t i0 = 0; i0 < m.A; i0 += TILE_I)
      scalar_rect(k.op, m.src, src_stride, m.dst, dst_stride, i0, std::min(m.A, i0 + TILE_I),
                  cols_full, m.cols);
}

/// Runs all experts of the call. `make` builds the kernel of one expert from its scale.
template <class Op, class Make> void run_experts(const TransposeArgs& a, Make make) {
  using In = typename Op::In;
  using Out = typename Op::Out;
  const uint64_t pitch = a.dst_pitch != 0 ? a.dst_pitch : a.A;
  const uint64_t out_bytes = a.experts * a.cols * pitch * sizeof(Out);
  for (uint64_t e = 0; e < a.experts; ++e) {
    const Kernel<Op> k = make(e);
    // Streaming needs every output row to start on the kernel's alignment (so whole lines are
    // written) and the output to be large enough not to be wanted in cache right after.
    const bool stream = k.stream_align != 0 && out_bytes >= STREAM_MIN_BYTES &&
                        reinterpret_cast<uintptr_t>(a.dst) % k.stream_align == 0 &&
                        (a.A * sizeof(Out)) % k.stream_align == 0 &&
                        (pitch * sizeof(Out)) % k.stream_align == 0;
    const Matrix m{a.src + (e * a.A * a.B + a.col_begin) * sizeof(In),
                   a.dst + e * a.cols * pitch * sizeof(Out),
                   a.A,
                   a.B,
                   a.cols,
                   pitch};
    run_matrix(k, m, stream);
  }
}

float load_scale(DType dtype, const std::byte* scales, uint64_t e) {
  switch (dtype) {
  case DType::BF16:
    return bf16_to_f32(load_elem<uint16_t>(scales + 2 * e));
  case DType::F16:
    return f16_to_f32(load_elem<uint16_t>(scales + 2 * e));
  default:
    return f32_from_bits(load_elem<uint32_t>(scales + 4 * e));
  }
}

// The SIMD tiles (AVX2, AVX-512) live beside this file.
#include "transpose_tiles_x86.inc"

// ---------------------------------------------------------------------------------------------
// Dispatch: pick the kernel of a dtype combination at a level.

struct TileSpec {
  TileFn fn = nullptr; ///< nullptr: scalar only
  uint64_t block_i = 1, block_j = 1;
  uint64_t stream_align = 0;
};

// The element operations that have SIMD tiles.
enum class SimdOp { none, move2, move4, fold_bf16, fold_f16, fold_f32 };

TileSpec tile_for(SimdOp op, SimdLevel level) {
#if SHARDSHIFT_X86
  if (level == SimdLevel::avx512) {
    switch (op) {
    case SimdOp::move2:
      return {&avx512_tile_32x16<Avx512Move>, 32, 16, 64};
    case SimdOp::move4:
      return {&avx512_tile_16x16<Avx512Move>, 16, 16, 64};
    case SimdOp::fold_bf16:
      // Without AVX512-BF16 the AVX2 kernel (exact integer rounding) is the faster choice.
      if (cpu_features().avx512_bf16)
        return {&avx512bf16_tile_32x16, 32, 16, 64};
      return tile_for(op, SimdLevel::avx2);
    case SimdOp::fold_f16:
      return {&avx512_tile_32x16<Avx512FoldF16>, 32, 16, 64};
    case SimdOp::fold_f32:
      return {&avx512_tile_16x16<Avx512FoldF32>, 16, 16, 64};
    case SimdOp::none:
      return {};
    }
  }
  if (level == SimdLevel::avx2) {
    switch (op) {
    case SimdOp::move2:
      return {&avx2_tile_16x16<Avx2Move>, 32, 16, 64};
    case SimdOp::move4:
      return {&avx2_tile_8x8<Avx2Move>, 16, 8, 64};
    case SimdOp::fold_bf16:
      return {&avx2_tile_16x16<Avx2FoldBf16>, 32, 16, 64};
    case SimdOp::fold_f16:
      return {&avx2_tile_16x16<Avx2FoldF16>, 32, 16, 64};
    case SimdOp::fold_f32:
      return {&avx2_tile_8x8<Avx2FoldF32>, 16, 8, 64};
    case SimdOp::none:
      return {};
    }
  }
#endif
  (void)op;
  (void)level;
  return {};
}

/// Runs `Op` for every expert of the call, with the SIMD tile of `simd` at `level` when there is
/// one, else scalar.
template <class Op> void run(const TransposeArgs& a, SimdLevel level, SimdOp simd = SimdOp::none) {
  const TileSpec spec = tile_for(simd, level);
  run_experts<Op>(a, [&](uint64_t e) {
    Kernel<Op> k{};
    k.scale = a.scales != nullptr ? load_scale(a.scale_dtype, a.scales, e) : 1.0f;
    if constexpr (requires { k.op.scale; })
      k.op.scale = k.scale;
    k.tile = spec.fn;
    k.block_i = spec.block_i;
    k.block_j = spec.block_j;
    k.stream_align = spec.stream_align;
    return k;
  });
}

/// A fold or cast with dtypes known at compile time except the destination.
template <DType S, DType P, bool SCALED>
void run_convert_to(const TransposeArgs& a, SimdLevel level) {
  switch (a.dst_dtype) {
  case DType::BF16:
    return run<ConvertOp<S, P, DType::BF16, SCALED>>(a, level);
  case DType::F16:
    return run<ConvertOp<S, P, DType::F16, SCALED>>(a, level);
  default:
    return run<ConvertOp<S, P, DType::F32, SCALED>>(a, level);
  }
}

void run_fold(const TransposeArgs& a, SimdLevel level) {
  using enum DType;
  const DType p = promote_types(a.src_dtype, a.scale_dtype);
  // The hot paths, a product kept in its own dtype, have SIMD tiles.
  if (a.dst_dtype == p) {
    if (a.src_dtype == BF16 && p == BF16)
      return run<ConvertOp<BF16, BF16, BF16, true>>(a, level, SimdOp::fold_bf16);
    if (a.src_dtype == F16 && p == F16)
      return run<ConvertOp<F16, F16, F16, true>>(a, level, SimdOp::fold_f16);
    if (a.src_dtype == F32)
      return run<ConvertOp<F32, F32, F32, true>>(a, level, SimdOp::fold_f32);
  }
  switch (a.src_dtype) {
  case BF16:
    if (p == BF16)
      return run_convert_to<BF16, BF16, true>(a, level);
    return run_convert_to<BF16, F32, true>(a, level);
  case F16:
    if (p == F16)
      return run_convert_to<F16, F16, true>(a, level);
    return run_convert_to<F16, F32, true>(a, level);
  case F32:
    return run_convert_to<F32, F32, true>(a, level);
  default: // check_transpose_supported refuses every other dtype: a plan that let one by is a bug
    std::abort();
  }
}

void run_cast(const TransposeArgs& a, SimdLevel level) {
  switch (a.src_dtype) {
  case DType::BF16:
    return run_convert_to<DType::BF16, DType::BF16, false>(a, level);
  case DType::F16:
    return run_convert_to<DType::F16, DType::F16, false>(a, level);
  case DType::F32:
    return run_convert_to<DType::F32, DType::F32, false>(a, level);
  default: // as in run_fold: never planned
    std::abort();
  }
}

void run_move(const TransposeArgs& a, SimdLevel level) {
  switch (dtype_bits(a.src_dtype)) {
  case 8:
    return run<MoveOp<uint8_t>>(a, level);
  case 16:
    return run<MoveOp<uint16_t>>(a, level, SimdOp::move2);
  case 32:
    return run<MoveOp<uint32_t>>(a, level, SimdOp::move4);
  default:
    return run<MoveOp<uint64_t>>(a, level);
  }
}

} // namespace

DType promote_types(DType a, DType b) {
  if (a == b)
    return a;
  // Rank in PyTorch's float lattice; BF16 and F16 share a rank and meet at F32.
  auto rank = [](DType t) {
    switch (t) {
    case DType::BF16:
    case DType::F16:
      return 1;
    case DType::F32:
      return 2;
    case DType::F64:
      return 3;
    default:
      return 0;
    }
  };
  const int ra = rank(a), rb = rank(b);
  if (ra == 0)
    return rb == 0 ? a : b; // an integer times a float is that float
  if (rb == 0)
    return a;
  if (ra == rb)
    return DType::F32; // BF16 x F16
  return ra > rb ? a : b;
}

Status check_transpose_supported(DType src, bool has_scale, DType scale, DType dst) {
  const std::string src_name(dtype_name(src));
  const std::string dst_name(dtype_name(dst));
  if (!has_scale && src == dst) {
    const unsigned bits = dtype_bits(src);
    if (bits == 8 || bits == 16 || bits == 32 || bits == 64)
      return {};
    return error(Errc::unsupported, "cannot transpose " + src_name + " tensors: elements of " +
                                        std::to_string(bits) +
                                        " bits are not supported (whole bytes only)");
  }
  if (has_scale) {
    if (!is_arith_float(src))
      return error(Errc::unsupported, "cannot fold a per-expert scale into " + src_name +
                                          " tensors: only BF16, F16 and F32 are supported");
    if (!is_arith_float(scale))
      return error(Errc::unsupported, "cannot fold a per-expert scale of dtype " +
                                          std::string(dtype_name(scale)) +
                                          ": only BF16, F16 and F32 scales are supported");
    if (!is_arith_float(dst))
      return error(Errc::unsupported, "cannot cast folded expert tensors to " + dst_name +
                                          ": only BF16, F16 and F32 are supported");
    return {};
  }
  if (!is_arith_float(src))
    return error(Errc::unsupported, "cannot cast " + src_name + " tensors to " + dst_name +
                                        ": only BF16, F16 and F32 tensors can be cast");
  if (!is_arith_float(dst))
    return error(Errc::unsupported, "cannot cast " + src_name + " tensors to " + dst_name +
                                        ": only BF16, F16 and F32 are supported as targets");
  return {};
}

void transpose_fold_cpu(const TransposeArgs& args) {
  transpose_fold_cpu(args, detect_simd_level());
}

void transpose_fold_cpu(const TransposeArgs& args, SimdLevel level) {
  level = level > cpu_features().level ? SimdLevel::portable : level;
  if (args.experts == 0 || args.A == 0 || args.cols == 0)
    return;
  [[maybe_unused]] const FloatEnvironmentGuard ieee{};
  if (args.scales != nullptr)
    run_fold(args, level);
  else if (args.src_dtype == args.dst_dtype)
    run_move(args, level);
  else
    run_cast(args, level);
#if SHARDSHIFT_X86
  // Non-temporal stores are weakly ordered: fence so that whoever is told the output is ready
  // (another thread, after this call returns) sees all of it.
  if (level != SimdLevel::portable)
    _mm_sfence();
#endif
}

} // namespace shardshift
