// quantize_cpu.cpp: FP8 block quantization (quantize.h, semantics 15.7) on the CPU: a scalar
// path, and AVX2 and AVX-512 kernels (quantize_tiles_x86.inc) for both source layouts, chosen at
// run time by the CPU's features (SHARDSHIFT_SIMD caps the level, as for dequant_cpu.cpp).
//
// Shape of the work: one 128 x 128 block at a time, twice over its elements: first its largest
// magnitude (compared as integer bit patterns: for non-negative floats the order of the bits is
// the order of the values, so no floating-point operation is involved), then each element divided
// by the block's scale and encoded. A block is at most 64 KiB of F32, so the second pass reads it
// from L1/L2 whichever of the two strides is the contiguous one. The two divisions per block
// (amax / 448) and per element (x / s) are plain IEEE float32 divisions, nearest even, subnormals
// kept: FloatEnvironmentGuard clears FTZ/DAZ and directed rounding for the duration of a call.
//
// The SIMD kernels read each block along the source's contiguous axis. Stored plainly (col_stride
// 1) that is the output's rows, 16 or 64 codes per step. Transposed (row_stride 1: one expert of
// a stacked tensor) it is the output's columns: the kernel encodes 16 x 16 tiles along the source
// rows and transposes the 256 codes in registers into 16-byte runs of 16 output rows. The rows
// and columns a tile does not cover at a block's edges are scalar, and so is any other stride
// pair. A block with a NaN or an infinity is found by the SIMD scan and then scanned again by
// the scalar code, whose message names the first such element, so every level fails alike.
#include "cpu_features.h"
#include "float_elements.h"
#include "float_environment.h"
#include "numerics.h"
#include "quantize.h"
#include "simd_x86.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace shardshift {

namespace {

using namespace numerics;

constexpr uint32_t ABS_MASK = 0x7FFFFFFFu;
constexpr uint32_t F32_INF_BITS = 0x7F800000u;
constexpr uint32_t F32_MIN_NORMAL_BITS = 0x00800000u;  // 2^-126
constexpr uint32_t E4M3_MAX_BITS = 0x43E00000u;        // 448 = 1.75 * 2^8 as an F32
constexpr uint32_t E4M3_MIN_NORMAL_BITS = 0x3C800000u; // 2^-6 as an F32

using elements::Source;

template <DType S> inline constexpr uint64_t ELEMENT_SIZE = sizeof(typename Source<S>::type);

/// The magnitude bits of one element in its own format (the sign cleared). Magnitudes of BF16,
/// F16 and F32 alike order as these integers, and a magnitude at or above MAGNITUDE_LIMIT<S> is
/// an infinity or a NaN.
template <DType S> uint32_t magnitude_bits(const std::byte* p) {
  typename Source<S>::type x;
  std::memcpy(&x, p, sizeof(x));
  return uint32_t(x) & (sizeof(x) == 4 ? ABS_MASK : 0x7FFFu);
}
template <DType S> inline constexpr uint32_t MAGNITUDE_LIMIT = 0;
template <> inline constexpr uint32_t MAGNITUDE_LIMIT<DType::BF16> = 0x7F80u;
template <> inline constexpr uint32_t MAGNITUDE_LIMIT<DType::F16> = 0x7C00u;
template <> inline constexpr uint32_t MAGNITUDE_LIMIT<DType::F32> = F32_INF_BITS;

// ---------------------------------------------------------------------------------------------
// The SIMD kernels' shapes, and the kernels themselves.

/// The largest magnitude_bits of `runs` runs of `len` contiguous elements, `stride` bytes apart.
using AmaxFn = uint32_t (*)(const std::byte* src, uint64_t runs, uint64_t stride, uint64_t len);
/// dst[j] = code(x_j / s) for the `n` (a multiple of 16) contiguous elements x_j at src.
using RowFn = void (*)(float s, const std::byte* src, uint8_t* dst, uint64_t n);
/// dst[i * dst_stride + j] = code(x / s) of the element i + j * col_stride (elements) of src,
/// for i < ni and j < nj (multiples of 16).
using TileFn = void (*)(float s, const std::byte* src, uint64_t col_stride, uint8_t* dst,
                        uint64_t dst_stride, uint64_t ni, uint64_t nj);

#include "quantize_tiles_x86.inc"

struct Kernels {
  AmaxFn amax = nullptr; ///< nullptr: the scalar path throughout
  RowFn row = nullptr;
  TileFn tile = nullptr;
};

template <DType S> Kernels kernels(SimdLevel level) {
#if SHARDSHIFT_X86
  if (level == SimdLevel::avx512)
    return {&avx512_amax<S>, &avx512_row<S>, &avx512_tile<S>};
  if (level == SimdLevel::avx2)
    return {&avx2_amax<S>, &avx2_row<S>, &avx2_tile<S>};
#endif
  (void)level;
  return {};
}

// ---------------------------------------------------------------------------------------------
// The driver: blocks, SIMD runs and tiles, scalar edges.

template <DType S> class Matrix {
public:
  Matrix(const QuantizeArgs& a, SimdLevel level)
      : a_(a), row_stride_(a.row_stride ? a.row_stride : a.C), rows_(scale_blocks(a.R)),
        cols_(scale_blocks(a.C)), plain_(a.col_stride == 1),
        transposed_(!plain_ && row_stride_ == 1),
        k_(plain_ || transposed_ ? kernels<S>(level) : Kernels{}) {}

  const std::byte* ptr(uint64_t r, uint64_t c) const {
    return a_.src + (r * row_stride_ + c * a_.col_stride) * ELEMENT_SIZE<S>;
  }

  float at(uint64_t r, uint64_t c) const {
    typename Source<S>::type x;
    std::memcpy(&x, ptr(r, c), sizeof(x));
    return Source<S>::widen(x);
  }

  // Visits block (br, bc)'s elements, restricted to rows [lo, hi), in the order in which the
  // source is contiguous; f returns false to stop.
  template <typename F>
  bool visit(uint64_t br, uint64_t bc, uint64_t lo, uint64_t hi, F&& f) const {
    const uint64_t r0 = std::max(br * FP8_BLOCK, lo),
                   r1 = std::min({a_.R, (br + 1) * FP8_BLOCK, hi});
    const uint64_t c0 = bc * FP8_BLOCK, c1 = std::min(a_.C, c0 + FP8_BLOCK);
    if (a_.col_stride == 1 || row_stride_ != 1) {
      for (uint64_t r = r0; r < r1; ++r)
        for (uint64_t c = c0; c < c1; ++c)
          if (!f(r, c))
            return false;
    } else {
      for (uint64_t c = c0; c < c1; ++c)
        for (uint64_t r = r0; r < r1; ++r)
          if (!f(r, c))
            return false;
    }
    return true;
  }

  // The scale of block (br, bc), or the error naming its first non-finite element.
  Status scale(uint64_t br, uint64_t bc, float* s) const {
    if (k_.amax != nullptr) {
      const uint64_t r0 = br * FP8_BLOCK, r1 = std::min(a_.R, r0 + FP8_BLOCK);
      const uint64_t c0 = bc * FP8_BLOCK, c1 = std::min(a_.C, c0 + FP8_BLOCK);
      const uint32_t amax =
          plain_ ? k_.amax(ptr(r0, c0), r1 - r0, row_stride_ * ELEMENT_SIZE<S>, c1 - c0)
                 : k_.amax(ptr(r0, c0), c1 - c0, a_.col_stride * ELEMENT_SIZE<S>, r1 - r0);
      if (amax < MAGNITUDE_LIMIT<S>) {
        *s = fp8_block_scale(Source<S>::widen(typename Source<S>::type(amax)));
        return {};
      }
      // Not finite: the scalar scan below finds the element to name.
    }
    uint32_t amax = 0;
    uint64_t bad_r = 0, bad_c = 0;
    uint32_t bad = 0;
    visit(br, bc, 0, a_.R, [&](uint64_t r, uint64_t c) {
      const uint32_t m = f32_bits(at(r, c)) & ABS_MASK;
      if (m >= F32_INF_BITS) {
        bad_r = r, bad_c = c, bad = m;
        return false;
      }
      amax = std::max(amax, m);
      return true;
    });
    if (bad != 0)
      return Status(Errc::unsupported,
                    "row " + std::to_string(bad_r) + ", column " + std::to_string(bad_c) +
                        " (block [" + std::to_string(br) + ", " + std::to_string(bc) + "]) is " +
                        (bad == F32_INF_BITS ? "infinite" : "NaN") +
                        ": an FP8 block needs finite values (E4M3 has no infinity, and the "
                        "block's scale comes from its largest magnitude)");
    *s = fp8_block_scale(f32_from_bits(amax));
    return {};
  }

  // The codes of block (br, bc)'s rows in [lo, hi), at dst (row lo of Q at dst + lo * C).
  void codes(uint64_t br, uint64_t bc, uint64_t lo, uint64_t hi, float s, uint8_t* dst) const {
    const uint64_t r0 = std::max(br * FP8_BLOCK, lo),
                   r1 = std::min({a_.R, (br + 1) * FP8_BLOCK, hi});
    const uint64_t c0 = bc * FP8_BLOCK, c1 = std::min(a_.C, c0 + FP8_BLOCK);
    auto scalar_rect = [&](uint64_t ra, uint64_t rb, uint64_t ca, uint64_t cb) {
      for (uint64_t r = ra; r < rb; ++r)
        for (uint64_t c = ca; c < cb; ++c)
          dst[(r - lo) * a_.C + c] = f32_to_e4m3_sat(at(r, c) / s);
    };
    const uint64_t nc = (c1 - c0) - (c1 - c0) % 16;
    if (plain_ && k_.row != nullptr) {
      if (nc != 0)
        for (uint64_t r = r0; r < r1; ++r)
          k_.row(s, ptr(r, c0), dst + (r - lo) * a_.C + c0, nc);
      scalar_rect(r0, r1, c0 + nc, c1);
    } else if (transposed_ && k_.tile != nullptr) {
      const uint64_t nr = (r1 - r0) - (r1 - r0) % 16;
      if (nr != 0 && nc != 0)
        k_.tile(s, ptr(r0, c0), a_.col_stride, dst + (r0 - lo) * a_.C + c0, a_.C, nr, nc);
      scalar_rect(r0 + nr, r1, c0, c0 + nc);
      scalar_rect(r0, r1, c0 + nc, c1);
    } else {
      visit(br, bc, lo, hi, [&](uint64_t r, uint64_t c) {
        dst[(r - lo) * a_.C + c] = f32_to_e4m3_sat(at(r, c) / s);
        return true;
      });
    }
  }

  uint64_t block_rows() const { return rows_; }
  uint64_t block_cols() const { return cols_; }

private:
  const QuantizeArgs& a_;
  uint64_t row_stride_;
  uint64_t rows_, cols_;
  bool plain_, transposed_; ///< which axis of the source is contiguous (neither: scalar only)
  Kernels k_;
};

template <DType S> Status run_scales(const QuantizeArgs& a, SimdLevel level) {
  const Matrix<S> m(a, level);
  for (uint64_t br = a.begin; br < a.begin + a.count; ++br)
    for (uint64_t bc = 0; bc < m.block_cols(); ++bc) {
      float s = 0;
      if (Status st = m.scale(br, bc, &s); !st.ok())
        return st;
      const uint32_t bits = f32_bits(s);
      std::memcpy(a.dst + ((br - a.begin) * m.block_cols() + bc) * 4, &bits, 4);
    }
  return {};
}

template <DType S> Status run_codes(const QuantizeArgs& a, SimdLevel level) {
  const Matrix<S> m(a, level);
  const uint64_t end = a.begin + a.count;
  auto* dst = reinterpret_cast<uint8_t*>(a.dst);
  for (uint64_t br = a.begin / FP8_BLOCK; br * FP8_BLOCK < end; ++br)
    for (uint64_t bc = 0; bc < m.block_cols(); ++bc) {
      float s = 0;
      if (Status st = m.scale(br, bc, &s); !st.ok())
        return st;
      m.codes(br, bc, a.begin, end, s, dst);
    }
  return {};
}

template <DType S> Status run(const QuantizeArgs& a, SimdLevel level) {
  return a.scales ? run_scales<S>(a, level) : run_codes<S>(a, level);
}

} // namespace

Status check_quantize_supported(DType src) {
  if (src == DType::BF16 || src == DType::F16 || src == DType::F32)
    return {};
  return Status(Errc::unsupported, "cannot quantize " + std::string(dtype_name(src)) +
                                       " weights to FP8: only BF16, F16 and F32");
}

uint8_t f32_to_e4m3_sat(float y) {
  const uint32_t u = f32_bits(y);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  const uint32_t a = u & ABS_MASK;
  if (a >= E4M3_MAX_BITS)
    return uint8_t(sign | 0x7Eu); // 448; beyond it saturates (0x7F would be NaN)
  if (a >= E4M3_MIN_NORMAL_BITS) {
    // Normal: keep the F32 exponent and the top 3 mantissa bits, rounding the 20 dropped bits to
    // nearest even (a carry into the exponent is the correct rounding up, at most to 448), then
    // rebias the exponent 127 -> 7.
    const uint32_t kept = (a + 0x7FFFFu + ((a >> 20) & 1u)) >> 20;
    return uint8_t(sign | std::min<uint32_t>(kept - (120u << 3), 0x7Eu));
  }
  // Subnormal result q * 2^-9 with q = round(|y| * 2^9), 0..8 (8 encodes 2^-6, the smallest
  // normal, correctly). |y| = m * 2^(e - 150), so q = m >> (141 - e) rounded.
  const uint32_t e = a >> 23;
  if (e < 117)
    return sign; // |y| < 2^-10: below half the smallest subnormal
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 141u - e; // 21..24
  const uint32_t q = m >> shift;
  const uint32_t rest = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  const uint32_t round_up = (rest > half || (rest == half && (q & 1u))) ? 1u : 0u;
  return uint8_t(sign | (q + round_up));
}

float fp8_block_scale(float amax) {
  if (amax == 0.0f)
    return 1.0f;
  [[maybe_unused]] const FloatEnvironmentGuard ieee{};
  const float s = amax / E4M3_MAX;
  return f32_bits(s) < F32_MIN_NORMAL_BITS ? f32_from_bits(F32_MIN_NORMAL_BITS) : s;
}

Status quantize_cpu(const QuantizeArgs& a) {
  return quantize_cpu(a, detect_simd_level());
}

Status quantize_cpu(const QuantizeArgs& a, SimdLevel level) {
  level = level > cpu_features().level ? SimdLevel::portable : level;
  if (a.count == 0 || a.R == 0 || a.C == 0)
    return {};
  [[maybe_unused]] const FloatEnvironmentGuard ieee{};
  switch (a.src_dtype) {
  case DType::BF16:
    return run<DType::BF16>(a, level);
  case DType::F16:
    return run<DType::F16>(a, level);
  default:
    return run<DType::F32>(a, level);
  }
}

} // namespace shardshift
