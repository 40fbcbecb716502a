// dequant_cpu.cpp: FP8 block dequantization (dequant.h) on the CPU: a scalar path, and AVX2 and
// AVX-512 kernels (dequant_tiles_x86.inc) for FP8 weights (E4M3, E5M2) to BF16, F16 and F32 with
// any scale dtype, chosen at run time by the CPU's features (SHARDSHIFT_SIMD caps the level, as
// for the transpose kernel).
//
// Shape of the work: the output is visited one block x block tile of W at a time, so that each
// tile's one scale is read once and the tile's input (16 KiB of FP8) stays in L1 while a
// transposed tile reads it column by column. Transposed, the tiles go down each block column
// (the output rows of one block column are finished before the next: the other order stores to
// every output row, each on its own page, once per tile) and the next tile's input is prefetched
// (its 128 rows are too many streams for the hardware prefetchers). Within a tile the SIMD
// kernels take whole register blocks (runs of 16 or 32 codes of one row; or, transposed, 32 x 16
// or 16 x 16 codes, converted row by row and transposed in registers into whole 64-byte output
// lines); the rows and columns left over at a tile's edges are scalar. Outputs of 8 MiB and more
// are written with streaming stores, as in transpose_cpu.cpp, when every row and block starts on
// a 64-byte line (3x faster transposed; docs/PERFORMANCE.md has the rates).
//
// Exactness: the scalar path decodes FP8 through a 256-entry table built from numerics.h's exact
// decoders at compile time (16- and 32-bit weights widen exactly) and uses numerics.h's mul_f32
// and f32_to_*_rne, so its bits are those of the reference arithmetic (semantics 15.3) whatever
// the floating-point environment (FTZ/DAZ and the rounding mode are cleared for the duration of a
// call). The SIMD kernels compute every lane to the same bits, NaN, subnormal and overflowing
// products included (dequant_tiles_x86.inc says how), so every level gives the same output;
// tests/dequant_simd_test.cpp checks each level against the scalar path and the reference.
#include "cpu_features.h"
#include "dequant.h"
#include "float_elements.h"
#include "float_environment.h"
#include "numerics.h"
#include "simd_x86.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

namespace shardshift {

namespace {

using namespace numerics;

using elements::Dest;
using elements::Source;

float load_scale(DType dtype, const std::byte* p) {
  if (dtype == DType::F32) {
    uint32_t u;
    std::memcpy(&u, p, 4);
    return f32_from_bits(u);
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

// ---------------------------------------------------------------------------------------------
// The SIMD kernels' shapes, and the kernels themselves.

/// Converts `n` (a multiple of the kernel's row_step) consecutive codes of one row of W to `dst`,
/// all times `scale`; streaming stores when `stream`.
using RowFn = void (*)(float scale, const uint8_t* src, std::byte* dst, uint64_t n, bool stream);
/// dst[j][i] = deq(src[i][j]) for i < ni (a multiple of tile_i), j < nj (a multiple of tile_j);
/// strides in bytes.
using TileFn = void (*)(float scale, const uint8_t* src, uint64_t src_stride, std::byte* dst,
                        uint64_t dst_stride, uint64_t ni, uint64_t nj, bool stream);

#include "dequant_tiles_x86.inc"

/// A block's scale is plain when it is finite and at least 2^-109 in magnitude: then no product
/// of the block is subnormal (the smallest nonzero FP8 magnitude is 2^-16) and only NaN codes
/// give NaN products. The kernels for plain blocks skip the per-lane NaN fix-up and may use
/// AVX512-BF16's rounding, which flushes subnormals. Real checkpoints have only plain scales.
bool plain_scale(float s) {
  const uint32_t a = f32_bits(s) & 0x7FFFFFFFu;
  return a >= (127u - 109u) << 23 && a < 0x7F800000u;
}

struct Kernels {
  RowFn row = nullptr, row_plain = nullptr; ///< nullptr: scalar rows
  uint64_t row_step = 1;
  TileFn tile = nullptr, tile_plain = nullptr; ///< nullptr: scalar transposed tiles
  uint64_t tile_i = 1, tile_j = 1;
};

#if SHARDSHIFT_X86
template <class Dec, class Dec512, DType D> Kernels kernels_for(SimdLevel level) {
  if (level == SimdLevel::avx512) {
    if constexpr (D == DType::BF16) {
      // Plain blocks use AVX512-BF16's rounding where the CPU has it; elsewhere every block
      // takes the general kernel (a plain-block variant of it would be the one path this
      // project's CPUs never run in the tests).
      Kernels k{&avx512_row_2<Avx512ToBf16<Dec512, false>>,
                &avx512_row_2<Avx512ToBf16<Dec512, false>>,
                32,
                &avx512_tile_2<Avx512ToBf16<Dec512, false>>,
                &avx512_tile_2<Avx512ToBf16<Dec512, false>>,
                32,
                16};
      if (cpu_features().avx512_bf16) {
        k.row_plain = &avx512bf16_row_2<Avx512Bf16ToBf16<Dec512>>;
        k.tile_plain = &avx512bf16_tile_2<Avx512Bf16ToBf16<Dec512>>;
      }
      return k;
    } else if constexpr (D == DType::F16) {
      return {&avx512_row_2<Avx512ToF16<Dec512, false>>,
              &avx512_row_2<Avx512ToF16<Dec512, true>>,
              32,
              &avx512_tile_2<Avx512ToF16<Dec512, false>>,
              &avx512_tile_2<Avx512ToF16<Dec512, true>>,
              32,
              16};
    } else {
      return {&avx512_row_4<Avx512ToF32<Dec512, false>>,
              &avx512_row_4<Avx512ToF32<Dec512, true>>,
              32,
              &avx512_tile_4<Avx512ToF32<Dec512, false>>,
              &avx512_tile_4<Avx512ToF32<Dec512, true>>,
              16,
              16};
    }
  }
  if (level == SimdLevel::avx2) {
    if constexpr (D == DType::BF16)
      return {&avx2_row<Avx2ToBf16<Dec, false>>,
              &avx2_row<Avx2ToBf16<Dec, true>>,
              16,
              &avx2_tile_2<Avx2ToBf16<Dec, false>>,
              &avx2_tile_2<Avx2ToBf16<Dec, true>>,
              32,
              16};
    else if constexpr (D == DType::F16)
      return {&avx2_row<Avx2ToF16<Dec, false>>,
              &avx2_row<Avx2ToF16<Dec, true>>,
              16,
              &avx2_tile_2<Avx2ToF16<Dec, false>>,
              &avx2_tile_2<Avx2ToF16<Dec, true>>,
              32,
              16};
    else
      return {&avx2_row<Avx2ToF32<Dec, false>>,
              &avx2_row<Avx2ToF32<Dec, true>>,
              8,
              &avx2_tile_4<Avx2ToF32<Dec, false>>,
              &avx2_tile_4<Avx2ToF32<Dec, true>>,
              16,
              8};
  }
  return {};
}
#endif

/// The SIMD kernels of a combination at a level: FP8 weights only (the other sources are rare
/// and stay scalar).
template <DType S, DType D> Kernels kernels(SimdLevel level) {
#if SHARDSHIFT_X86
  if constexpr (S == DType::F8_E4M3)
    return kernels_for<Avx2E4M3, Avx512E4M3, D>(level);
  else if constexpr (S == DType::F8_E5M2)
    return kernels_for<Avx2E5M2, Avx512E5M2, D>(level);
#endif
  (void)level;
  return {};
}

// ---------------------------------------------------------------------------------------------
// The driver: tiles, SIMD blocks, scalar edges, streaming.

// Outputs of a call at least this large are written with streaming stores (transpose_cpu.cpp
// explains why; the same threshold).
constexpr uint64_t STREAM_MIN_BYTES = uint64_t(8) << 20;

inline void prefetch_rows(const std::byte* p, uint64_t stride, uint64_t rows, uint64_t bytes) {
  for (uint64_t r = 0; r < rows; ++r)
    for (uint64_t b = 0; b < bytes; b += 64)
      __builtin_prefetch(p + r * stride + b);
}

template <DType S, DType D> void run(const DequantArgs& a, SimdLevel level) {
  using In = typename Source<S>::type;
  using Out = typename Dest<D>::type;
  const Kernels k = kernels<S, D>(level);
  const uint64_t B = a.block;
  const uint64_t scale_cols = scale_blocks(a.C, B);
  const uint64_t scale_es = dtype_bits(a.scale_dtype) / 8;
  auto scale = [&](uint64_t br, uint64_t bc) {
    return load_scale(a.scale_dtype, a.scales + (br * scale_cols + bc) * scale_es);
  };
  auto in = [&](uint64_t r, uint64_t c) {
    In x;
    std::memcpy(&x, a.src + (r * a.C + c) * sizeof(In), sizeof(In));
    return Source<S>::widen(x);
  };
  auto put = [&](uint64_t row, uint64_t col, uint64_t pitch, float v) {
    const Out y = Dest<D>::narrow(v);
    std::memcpy(a.dst + (row * pitch + col) * sizeof(Out), &y, sizeof(Out));
  };
  const uint64_t end = a.begin + a.count;
  const uint64_t pitch = a.dst_pitch ? a.dst_pitch : (a.transpose ? a.R : a.C);
  // Streaming stores write whole aligned lines: every output row and every block must start on
  // one (each SIMD store is then 32 or 64 bytes at an aligned offset).
  const bool stream = (k.row != nullptr || k.tile != nullptr) &&
                      a.count * pitch * sizeof(Out) >= STREAM_MIN_BYTES &&
                      reinterpret_cast<uintptr_t>(a.dst) % 64 == 0 &&
                      pitch * sizeof(Out) % 64 == 0 && B * sizeof(Out) % 64 == 0;
  const auto* codes = reinterpret_cast<const uint8_t*>(a.src);
  if (!a.transpose) {
    for (uint64_t r = a.begin; r < end; ++r)
      for (uint64_t c0 = 0; c0 < a.C; c0 += B) {
        const float s = scale(r / B, c0 / B);
        const uint64_t c1 = std::min(a.C, c0 + B);
        uint64_t c = c0;
        if (k.row != nullptr) {
          const uint64_t n = (c1 - c0) - (c1 - c0) % k.row_step;
          if (n != 0)
            (plain_scale(s) ? k.row_plain
                            : k.row)(s, codes + r * a.C + c0,
                                     a.dst + ((r - a.begin) * pitch + c0) * sizeof(Out), n, stream);
          c += n;
        }
        for (; c < c1; ++c)
          put(r - a.begin, c, pitch, mul_f32(in(r, c), s));
      }
    return;
  }
  // Output row k is column begin + k of W; tiles of W's rows by the block columns in range.
  auto scalar_rect = [&](uint64_t ra, uint64_t rb, uint64_t ja, uint64_t jb, float s) {
    for (uint64_t j = ja; j < jb; ++j)
      for (uint64_t r = ra; r < rb; ++r)
        put(j - a.begin, r, pitch, mul_f32(in(r, j), s));
  };
  // Block columns outer: the output rows of one block column (at most `block` of them) are
  // written whole before the next, so the stores stay within a few pages at a time (the other
  // order touches every output row, each on its own page, once per tile: a TLB miss per row).
  for (uint64_t j0 = a.begin; j0 < end;) {
    const uint64_t j1 = std::min(end, (j0 / B + 1) * B);
    for (uint64_t r0 = 0; r0 < a.R; r0 += B) {
      const uint64_t r1 = std::min(a.R, r0 + B);
      const float s = scale(r0 / B, j0 / B);
      if (k.tile == nullptr) {
        scalar_rect(r0, r1, j0, j1, s);
        continue;
      }
      // The next tile's input: the next block row of these columns.
      if (r1 < a.R)
        prefetch_rows(a.src + r1 * a.C + j0, a.C, std::min(a.R - r1, B), j1 - j0);
      const uint64_t ni = (r1 - r0) - (r1 - r0) % k.tile_i;
      const uint64_t nj = (j1 - j0) - (j1 - j0) % k.tile_j;
      if (ni != 0 && nj != 0)
        (plain_scale(s) ? k.tile_plain : k.tile)(
            s, codes + r0 * a.C + j0, a.C, a.dst + ((j0 - a.begin) * pitch + r0) * sizeof(Out),
            pitch * sizeof(Out), ni, nj, stream);
      scalar_rect(r0 + ni, r1, j0, j0 + nj, s);
      scalar_rect(r0, r1, j0 + nj, j1, s);
    }
    j0 = j1;
  }
}

template <DType S> void run_to(const DequantArgs& a, SimdLevel level) {
  switch (a.dst_dtype) {
  case DType::BF16:
    return run<S, DType::BF16>(a, level);
  case DType::F16:
    return run<S, DType::F16>(a, level);
  default:
    return run<S, DType::F32>(a, level);
  }
}

bool is_source(DType t) {
  return t == DType::F8_E4M3 || t == DType::F8_E5M2 || t == DType::BF16 || t == DType::F16 ||
         t == DType::F32;
}
bool is_float16_32(DType t) {
  return t == DType::BF16 || t == DType::F16 || t == DType::F32;
}

} // namespace

Status check_dequant_supported(DType src, DType scale, DType dst) {
  if (!is_source(src))
    return error(Errc::unsupported, "cannot dequantize " + std::string(dtype_name(src)) +
                                        " weights: only F8_E4M3, F8_E5M2, BF16, F16 and F32");
  if (!is_float16_32(scale))
    return error(Errc::unsupported, "cannot dequantize with a block scale of dtype " +
                                        std::string(dtype_name(scale)) +
                                        ": only F32, BF16 and F16 scales");
  if (!is_float16_32(dst))
    return error(Errc::unsupported, "cannot dequantize to " + std::string(dtype_name(dst)) +
                                        ": only BF16, F16 and F32 are supported");
  return {};
}

void dequant_cpu(const DequantArgs& a) {
  dequant_cpu(a, detect_simd_level());
}

void dequant_cpu(const DequantArgs& a, SimdLevel level) {
  level = level > cpu_features().level ? SimdLevel::portable : level;
  if (a.count == 0 || a.R == 0 || a.C == 0)
    return;
  [[maybe_unused]] const FloatEnvironmentGuard ieee{};
  switch (a.src_dtype) {
  case DType::F8_E4M3:
    run_to<DType::F8_E4M3>(a, level);
    break;
  case DType::F8_E5M2:
    run_to<DType::F8_E5M2>(a, level);
    break;
  case DType::BF16:
    run_to<DType::BF16>(a, level);
    break;
  case DType::F16:
    run_to<DType::F16>(a, level);
    break;
  default:
    run_to<DType::F32>(a, level);
    break;
  }
#if SHARDSHIFT_X86
  // Streaming stores are weakly ordered: fence so that whoever is told the output is ready
  // (another thread, after this call returns) sees all of it.
  if (level != SimdLevel::portable)
    _mm_sfence();
#endif
}

} // namespace shardshift
