// dequant_simd_test.cpp: the CPU FP8 block dequantization kernel (src/dequant_cpu.cpp) at every
// SIMD level this CPU runs, bit for bit against the scalar path (SimdLevel::portable) and against
// the independent reference (ref_dequant_element, tests/reference/): every code of both FP8
// formats times special scales (zeros, subnormals, huge, negative, infinite, NaN), products that
// underflow to subnormals or overflow to infinity, random shapes with partial blocks and block
// sizes that are not multiples of the vector width, begin/count sub-ranges, output pitches wider
// than a row, misaligned outputs, and outputs large enough for streaming stores (semantics 15.3).
// Elements outside the call's output must keep their bytes.
#include "cpu_features.h"
#include "dequant.h"
#include "reference/numeric_reference.h"
#include "test_support.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace shardshift {
namespace {

using reference::ref_dequant_element;
using testing::test_seed;

constexpr std::byte SENTINEL{0xA5};

unsigned width(DType t) {
  return dtype_bits(t) / 8;
}

uint64_t load_bits(const std::byte* p, unsigned w) {
  uint64_t v = 0;
  std::memcpy(&v, p, w); // little-endian hosts only, as the library
  return v;
}

void store_bits(std::byte* p, unsigned w, uint64_t v) {
  std::memcpy(p, &v, w);
}

std::string hex(uint64_t v) {
  std::ostringstream s;
  s << "0x" << std::hex << v;
  return s.str();
}

/// The levels this CPU runs, whatever SHARDSHIFT_SIMD says.
std::vector<SimdLevel> supported_levels() {
  std::vector<SimdLevel> levels;
  for (int l = 0; l <= int(cpu_features().level); ++l)
    levels.push_back(SimdLevel(l));
  return levels;
}

/// A weight, its scales, and one call over them. The output buffer holds `count` rows of `pitch`
/// elements; the call writes from element `col_offset` of each row, at `byte_offset` from a
/// 64-byte boundary.
struct Problem {
  DType src = DType::F8_E4M3, scale = DType::F32, dst = DType::BF16;
  uint64_t R = 0, C = 0, block = 128;
  bool transpose = false;
  uint64_t begin = 0, count = 0, pitch = 0, col_offset = 0, byte_offset = 0;
  std::vector<std::byte> w, s;

  uint64_t scale_cols() const { return scale_blocks(C, block); }
  uint64_t out_bytes() const { return count * pitch * width(dst); }
  std::string describe() const {
    std::ostringstream o;
    o << dtype_name(src) << " x " << dtype_name(scale) << " -> " << dtype_name(dst) << " [" << R
      << ", " << C << "] block " << block << (transpose ? " transposed" : "") << " begin " << begin
      << " count " << count << " pitch " << pitch << " col_offset " << col_offset << " byte_offset "
      << byte_offset;
    return o.str();
  }
};

/// Fills the scale matrix with `scale_bits` everywhere.
void set_scales(Problem& p, uint64_t scale_bits) {
  const unsigned sw = width(p.scale);
  p.s.assign(scale_blocks(p.R, p.block) * p.scale_cols() * sw, std::byte{0});
  for (uint64_t i = 0; i < p.s.size() / sw; ++i)
    store_bits(p.s.data() + i * sw, sw, scale_bits);
}

/// The output the call must leave in the whole buffer, from the reference element by element.
std::vector<std::byte> expected_output(const Problem& p) {
  const unsigned ow = width(p.dst), sw = width(p.scale), iw = width(p.src);
  std::vector<std::byte> out(p.out_bytes(), SENTINEL);
  const uint64_t L = p.transpose ? p.R : p.C;
  for (uint64_t k = 0; k < p.count; ++k)
    for (uint64_t i = 0; i < L; ++i) {
      const uint64_t r = p.transpose ? i : p.begin + k, c = p.transpose ? p.begin + k : i;
      const uint64_t x = load_bits(p.w.data() + (r * p.C + c) * iw, iw);
      const uint64_t s =
          load_bits(p.s.data() + ((r / p.block) * p.scale_cols() + c / p.block) * sw, sw);
      store_bits(out.data() + (k * p.pitch + p.col_offset + i) * ow, ow,
                 ref_dequant_element(p.src, x, p.scale, s, p.dst));
    }
  return out;
}

/// Runs the call at `level` into a fresh sentinel-filled buffer and returns the buffer's bytes.
std::vector<std::byte> run_at(const Problem& p, SimdLevel level, unsigned mxcsr = 0) {
  const uint64_t bytes = p.out_bytes();
  std::unique_ptr<std::byte[]> storage(new std::byte[bytes + 128]);
  const auto base = reinterpret_cast<uintptr_t>(storage.get());
  std::byte* buf = storage.get() + (64 - base % 64) % 64 + p.byte_offset;
  std::memset(buf, 0xA5, bytes);
  DequantArgs a;
  a.src = p.w.data();
  a.scales = p.s.data();
  a.dst = buf + p.col_offset * width(p.dst);
  a.R = p.R;
  a.C = p.C;
  a.block = p.block;
  a.transpose = p.transpose;
  a.begin = p.begin;
  a.count = p.count;
  a.dst_pitch = p.pitch;
  a.src_dtype = p.src;
  a.scale_dtype = p.scale;
  a.dst_dtype = p.dst;
#if defined(__x86_64__)
  const unsigned saved = _mm_getcsr();
  if (mxcsr != 0)
    _mm_setcsr(mxcsr);
  dequant_cpu(a, level);
  const unsigned after = _mm_getcsr();
  _mm_setcsr(saved);
  if (mxcsr != 0)
    EXPECT_EQ(after, mxcsr) << "the kernel changed the caller's MXCSR";
#else
  (void)mxcsr;
  dequant_cpu(a, level);
#endif
  return {buf, buf + bytes};
}

/// Every level against the reference and against the scalar path, bit for bit; failures name the
/// element, its code and its scale.
void expect_every_level_exact(const Problem& p, const std::string& what, unsigned mxcsr = 0) {
  const std::vector<std::byte> want = expected_output(p);
  const std::vector<std::byte> scalar = run_at(p, SimdLevel::portable, mxcsr);
  const unsigned ow = width(p.dst), sw = width(p.scale), iw = width(p.src);
  for (SimdLevel level : supported_levels()) {
    const std::vector<std::byte> got =
        level == SimdLevel::portable ? scalar : run_at(p, level, mxcsr);
    if (level != SimdLevel::portable)
      EXPECT_TRUE(got == scalar) << simd_level_name(level)
                                 << " differs from the scalar path: " << what << ": "
                                 << p.describe();
    uint64_t bad = 0;
    for (uint64_t e = 0; e < want.size() / ow; ++e) {
      const uint64_t g = load_bits(got.data() + e * ow, ow),
                     x = load_bits(want.data() + e * ow, ow);
      if (g == x || bad++ >= 5)
        continue;
      const uint64_t k = e / p.pitch, col = e % p.pitch;
      std::ostringstream o;
      o << simd_level_name(level) << ": " << what << ": " << p.describe() << ": output [" << k
        << "][" << col << "]";
      if (col >= p.col_offset && col - p.col_offset < (p.transpose ? p.R : p.C)) {
        const uint64_t i = col - p.col_offset;
        const uint64_t r = p.transpose ? i : p.begin + k, c = p.transpose ? p.begin + k : i;
        o << " = W[" << r << "][" << c << "] "
          << hex(load_bits(p.w.data() + (r * p.C + c) * iw, iw)) << " x scale "
          << hex(load_bits(p.s.data() + ((r / p.block) * p.scale_cols() + c / p.block) * sw, sw));
      } else {
        o << " (outside the call's output)";
      }
      ADD_FAILURE() << o.str() << ": got " << hex(g) << ", expected " << hex(x);
    }
    EXPECT_EQ(bad, 0u) << simd_level_name(level) << ": " << what;
  }
}

/// Special scale patterns of a scale dtype: zeros, one, subnormals, the smallest normal, values
/// that push products below the normal range or above the largest finite, the largest finite,
/// infinities and NaNs (quiet, signalling, with payloads), each sign.
std::vector<uint64_t> special_scales(DType t) {
  if (t == DType::F32)
    return {
        0x00000000, 0x80000000, 0x3F800000, 0xBF800000, 0x00000001,
        0x80000001, 0x00012345, 0x00800000, 0x03800000, // 2^-120: every E4M3 product is subnormal
        0x04000000, 0x3B124925,                         // ~1/448, DeepSeek's typical
        0x3F2AAAAB, 0x72800000,                         // 2/3; 2^102
        0x7B800000,                                     // 2^120: 448 x 2^120 overflows
        0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000,
        0xFFC00000, 0x7F800001, 0x7FC12345, 0xFFA00001};
  if (t == DType::BF16)
    return {0x0000, 0x8000, 0x3F80, 0xBF80, 0x0001, 0x8040, 0x0080, 0x0380, 0x3B12,
            0x7B80, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F81, 0xFFA1};
  return {0x0000, 0x8000, 0x3C00, 0xBC00, 0x0001, 0x83FF, 0x0400, 0x1C92,
          0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0xFD23};
}

constexpr DType FP8[] = {DType::F8_E4M3, DType::F8_E5M2};
constexpr DType OUTPUTS[] = {DType::BF16, DType::F16, DType::F32};

// Every code of both formats, at positions covered by the SIMD blocks and by the scalar edges
// (a [160, 288] weight: partial blocks of 32 rows and 32 columns), times every special scale of
// each scale dtype, to each output dtype, transposed and not.
TEST(DequantSimd, EveryCodeTimesEverySpecialScaleAtEveryLevel) {
  for (DType src : FP8)
    for (DType scale : {DType::F32, DType::BF16, DType::F16})
      for (uint64_t s : special_scales(scale))
        for (DType dst : OUTPUTS)
          for (bool transpose : {false, true}) {
            Problem p;
            p.src = src;
            p.scale = scale;
            p.dst = dst;
            p.R = 160;
            p.C = 288;
            p.transpose = transpose;
            p.count = transpose ? p.C : p.R;
            p.pitch = transpose ? p.R : p.C;
            p.w.resize(p.R * p.C);
            // Each 16-code run of a row and each 16-row column run holds 16 different codes, and
            // the first 128 x 256 (the SIMD part) holds every code many times.
            for (uint64_t r = 0; r < p.R; ++r)
              for (uint64_t c = 0; c < p.C; ++c)
                p.w[r * p.C + c] = std::byte((r * 37 + c * 11 + 5) & 0xFF);
            set_scales(p, s);
            expect_every_level_exact(p, "scale " + hex(s));
            if (HasFailure())
              return;
          }
}

// Products that land in the subnormal range (rounded there exactly), right at the normal
// boundary, and past the largest finite value, with scales on a fine grid around those
// boundaries; under a caller's FTZ/DAZ and round-toward-zero, which the kernel must clear.
TEST(DequantSimd, ProductsThatUnderflowOrOverflowRoundExactly) {
  std::vector<uint64_t> scales;
  for (uint32_t e : {1u,   2u,   3u,   10u,  100u, 110u, 116u, 117u, 118u, 119u, 120u, 121u, 122u,
                     123u, 124u, 125u, 126u, 200u, 244u, 245u, 246u, 247u, 248u, 250u, 254u})
    for (uint32_t m : {0x000000u, 0x7FFFFFu, 0x400001u, 0x123457u})
      scales.push_back((e << 23) | m);
  for (uint32_t m : {0x000001u, 0x3FFFFFu, 0x7FFFFFu, 0x555555u})
    scales.push_back(m); // subnormal scales
  for (DType src : FP8)
    for (DType dst : OUTPUTS)
      for (bool transpose : {false, true}) {
        Problem p;
        p.src = src;
        p.dst = dst;
        p.R = 48; // one 32-row SIMD block and a scalar edge
        p.C = 128 * uint64_t(scales.size());
        p.transpose = transpose;
        p.count = transpose ? p.C : p.R;
        p.pitch = transpose ? p.R : p.C;
        p.w.resize(p.R * p.C);
        for (uint64_t i = 0; i < p.w.size(); ++i)
          p.w[i] = std::byte((i * 13 + i / 256) & 0xFF);
        set_scales(p, 0);
        // Each block column gets its own scale; a second pass flips every scale's sign.
        for (bool negative : {false, true}) {
          for (uint64_t b = 0; b < scales.size(); ++b)
            store_bits(p.s.data() + b * 4, 4, scales[b] | (negative ? 0x80000000u : 0));
          // FTZ | DAZ | round toward zero, all exceptions masked.
          expect_every_level_exact(p, negative ? "negative scales" : "positive scales",
                                   0x1F80u | 0x8000u | 0x0040u | 0x6000u);
          if (HasFailure())
            return;
        }
      }
}

// Random shapes (partial blocks, block sizes that are and are not multiples of the vector
// widths), random sub-ranges, pitches wider than a row, the output placed at a column offset and
// at misaligned addresses, random codes and scales (mostly ordinary, some special).
TEST(DequantSimd, RandomShapesRangesPitchesAndOffsets) {
  const uint64_t seed = test_seed();
  std::mt19937_64 rng(seed);
  auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  const uint64_t blocks[] = {128, 128, 128, 64, 32, 100, 48, 16, 200};
  for (int iteration = 0; iteration < 150; ++iteration) {
    Problem p;
    p.src = FP8[pick(2)];
    p.dst = OUTPUTS[pick(3)];
    const DType scale_dtypes[] = {DType::F32, DType::F32, DType::F32, DType::BF16, DType::F16};
    p.scale = scale_dtypes[pick(5)];
    p.block = blocks[pick(std::size(blocks))];
    p.R = 1 + pick(pick(3) == 0 ? 40 : 420);
    p.C = 1 + pick(pick(3) == 0 ? 40 : 420);
    p.transpose = pick(2) == 1;
    const uint64_t rows = p.transpose ? p.C : p.R, L = p.transpose ? p.R : p.C;
    p.begin = pick(3) == 0 ? 0 : pick(rows);
    p.count = 1 + pick(rows - p.begin);
    const uint64_t extra = pick(3) == 0 ? 0 : pick(70);
    p.pitch = L + extra;
    p.col_offset = extra == 0 ? 0 : pick(extra + 1);
    p.byte_offset = pick(4) == 0 ? width(p.dst) * pick(16) : 0;
    p.w.resize(p.R * p.C);
    for (std::byte& b : p.w)
      b = std::byte(pick(256));
    set_scales(p, 0);
    const std::vector<uint64_t> specials = special_scales(p.scale);
    const unsigned sw = width(p.scale);
    for (uint64_t i = 0; i < p.s.size() / sw; ++i) {
      uint64_t s;
      if (pick(8) == 0) {
        s = specials[pick(specials.size())];
      } else if (p.scale == DType::F32) { // sign, exponent within 2^+-40 of one, any mantissa
        s = (pick(2) << 31) | ((87 + pick(80)) << 23) | pick(1u << 23);
      } else if (p.scale == DType::BF16) {
        s = (pick(2) << 15) | ((87 + pick(80)) << 7) | pick(1u << 7);
      } else {
        s = (pick(2) << 15) | ((1 + pick(30)) << 10) | pick(1u << 10);
      }
      store_bits(p.s.data() + i * sw, sw, s);
    }
    expect_every_level_exact(p, "seed " + std::to_string(seed) + " iteration " +
                                    std::to_string(iteration));
    if (HasFailure())
      return;
  }
}

// Outputs of 8 MiB and more take the streaming stores (aligned rows and blocks): a transposed
// expert piece placed in the left and right halves of stacked rows, and a plain weight.
TEST(DequantSimd, LargeOutputsWithStreamingStoresAreExact) {
  std::mt19937_64 rng(test_seed());
  struct Shape {
    DType dst;
    bool transpose;
    uint64_t R, C, pitch, col_offset;
  };
  const Shape shapes[] = {
      {DType::BF16, true, 1024, 2048, 2048, 0},    // gate: [I, H] -> columns [0, I) of [H, 2I]
      {DType::BF16, true, 1024, 2048, 2048, 1024}, // up: columns [I, 2I)
      {DType::BF16, false, 2048, 2048, 0, 0},      {DType::F16, true, 2048, 2048, 0, 0},
      {DType::F32, true, 1024, 2048, 0, 0},        {DType::F32, false, 1024, 2048, 0, 0},
  };
  for (const Shape& sh : shapes) {
    Problem p;
    p.src = DType::F8_E4M3;
    p.dst = sh.dst;
    p.R = sh.R;
    p.C = sh.C;
    p.transpose = sh.transpose;
    p.count = sh.transpose ? sh.C : sh.R;
    p.pitch = sh.pitch != 0 ? sh.pitch : (sh.transpose ? sh.R : sh.C);
    p.col_offset = sh.col_offset;
    p.w.resize(p.R * p.C);
    for (std::byte& b : p.w)
      b = std::byte(rng() & 0xFF);
    set_scales(p, 0);
    for (uint64_t i = 0; i < p.s.size() / 4; ++i)
      store_bits(p.s.data() + i * 4, 4, (rng() & 0x807FFFFFu) | ((100 + rng() % 40) << 23));
    ASSERT_GE(p.out_bytes(), uint64_t(8) << 20);
    expect_every_level_exact(p, "large");
  }
}

} // namespace
} // namespace shardshift
