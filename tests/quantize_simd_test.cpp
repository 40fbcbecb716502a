// quantize_simd_test.cpp: the CPU FP8 block quantization kernel (src/quantize_cpu.cpp,
// src/quantize_tiles_x86.inc, semantics 15.7) at every SIMD level this CPU runs, byte for byte
// against the scalar path (SimdLevel::portable) and against the independent reference
// (ref_quantize): BF16, F16 and F32 sources, stored plainly and as a transposed column block of a
// wider stacked tensor, shapes with partial edge blocks and edges that are not multiples of the
// vectors, blocks built to hit rounding ties (normal and subnormal codes), quotients just beyond
// 448, subnormal quotients, signed zeros, zero blocks, scales clamped to 2^-126, random float32
// patterns, row windows that start and end inside blocks, and the refusal of NaN and infinities
// with the scalar path's message. Bytes outside a call's output must keep their sentinel.
#include "cpu_features.h"
#include "quantize.h"
#include "reference/convert_reference.h"
#include "reference/numeric_reference.h"
#include "reference/quantize_reference.h"
#include "test_support.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using namespace reference;

constexpr char SENTINEL = '\x5A';

/// The best level this CPU runs, whatever SHARDSHIFT_SIMD says.
SimdLevel best_level() {
  return cpu_features().level;
}

uint64_t esize(DType d) {
  return dtype_bits(d) / 8;
}

/// X [R, C] of dtype d, block by block one of several kinds (below), and the same matrix laid
/// out as the kernel reads it: plainly with `pad` extra elements per row, or as columns
/// [3, 3 + R) of expert 1 of a stacked [2, C, R + pad] tensor, transposed.
struct Source {
  Tensor x;
  std::string bytes;
  uint64_t offset = 0, row_stride = 0, col_stride = 1;
  const std::byte* src() const { return reinterpret_cast<const std::byte*>(bytes.data()) + offset; }
};

double e4m3(unsigned code) {
  return ref_fp8_decode(DType::F8_E4M3, uint8_t(code));
}

/// An element of a block of kind `kind`; `p` is 2^k for the block (a power of two that keeps the
/// block's values representable in d), `first` marks the block's element that fixes its amax.
double element(std::mt19937_64& rng, DType d, unsigned kind, double p, bool first) {
  std::normal_distribution<double> nd(0.0, 1.0);
  const double sign = rng() % 2 ? -1.0 : 1.0;
  switch (kind) {
  case 0: // plain values; the quotients near the block's amax may round past 448
    return nd(rng) * p;
  case 1: // zeros of both signs: scale 1, codes 0x00 and 0x80
    return sign * 0.0;
  case 2: { // amax 448 p (so s = p exactly), every other element a tie between two codes
    if (first)
      return sign * 448.0 * p;
    const unsigned c = unsigned(rng() % 0x7E);
    return sign * (e4m3(c) + e4m3(c + 1)) / 2 * p;
  }
  case 3: { // amax 448 p, the others subnormal codes, their ties and their neighbours
    if (first)
      return sign * 448.0 * p;
    const double k = double(rng() % 20) / 2; // multiples of 2^-10, up to 2^-6 + 2^-9 and beyond
    return sign * std::ldexp(k, -10) * p;
  }
  case 4: // exact codes times a power of two: quantized exactly
    return sign * e4m3(unsigned(rng() % 0x7F)) * p;
  default: // 5: largest magnitude 448 p, others uniform below it
    if (first)
      return sign * 448.0 * p;
    return sign * std::uniform_real_distribution<double>(0.0, 448.0)(rng) * p;
  }
}

Tensor test_matrix(std::mt19937_64& rng, DType d, uint64_t R, uint64_t C) {
  Tensor x{d, {R, C}, std::string(R * C * esize(d), '\0')};
  const uint64_t bc = (C + 127) / 128;
  // Block powers of two: near 1, tiny (BF16 and F32: amax below 448 x 2^-126, so the scale is
  // clamped and the quotients are subnormal float32; F16: near its subnormals), large.
  const int tiny = d == DType::F16 ? -22 : -135, small = d == DType::F16 ? -12 : -60;
  const int large = d == DType::F16 ? 5 : 100;
  for (uint64_t r = 0; r < R; ++r)
    for (uint64_t c = 0; c < C; ++c) {
      const uint64_t block = (r / 128) * bc + c / 128;
      // Each block's kind and scale from its index and the seed's first draws.
      std::mt19937_64 block_rng(block * 7919 + 17);
      const unsigned kind = unsigned((block + block_rng()) % 6);
      const int exps[] = {0, -8, small, tiny, large, 3};
      const int e = exps[(block_rng() + block / 6) % 6];
      const bool first = r % 128 == 0 && c % 128 == 0; // the block's first element
      put_bits(x, r * C + c, encode(d, element(rng, d, kind, std::ldexp(1.0, e), first)));
    }
  return x;
}

/// Random bit patterns of d, NaN and infinity replaced by their halves, with a large element
/// per block so that most quotients are normal, some subnormal: the encoder across its range.
Tensor random_bits_matrix(std::mt19937_64& rng, DType d, uint64_t R, uint64_t C) {
  Tensor x{d, {R, C}, std::string(R * C * esize(d), '\0')};
  const uint64_t inf = d == DType::F32 ? 0x7F800000u : d == DType::BF16 ? 0x7F80u : 0x7C00u;
  const uint64_t sign = d == DType::F32 ? 0x80000000u : 0x8000u;
  for (uint64_t i = 0; i < R * C; ++i) {
    uint64_t b = rng() & (2 * sign - 1);
    if ((b & ~sign) >= inf)
      b = (b & sign) | ((b & ~sign) / 2);
    put_bits(x, i, b);
  }
  return x;
}

Source lay_out(std::mt19937_64& rng, const Tensor& x, bool transposed, uint64_t pad) {
  const uint64_t R = x.shape[0], C = x.shape[1], es = esize(x.dtype);
  Source s{x, {}, 0, 0, 1};
  if (!transposed) {
    const uint64_t stride = C + pad;
    s.bytes = testing::random_bytes(rng, R * stride * es);
    for (uint64_t r = 0; r < R; ++r)
      std::memcpy(s.bytes.data() + r * stride * es, x.bytes.data() + r * C * es, C * es);
    s.row_stride = stride;
    return s;
  }
  const uint64_t L = R + pad;
  s.bytes = testing::random_bytes(rng, 2 * C * L * es);
  for (uint64_t r = 0; r < R; ++r)
    for (uint64_t c = 0; c < C; ++c)
      std::memcpy(s.bytes.data() + ((C + c) * L + 3 + r) * es, x.bytes.data() + (r * C + c) * es,
                  es);
  s.offset = (C * L + 3) * es;
  s.row_stride = 1;
  s.col_stride = L;
  return s;
}

QuantizeArgs args_for(const Source& s) {
  QuantizeArgs a;
  a.src = s.src();
  a.R = s.x.shape[0];
  a.C = s.x.shape[1];
  a.row_stride = s.row_stride;
  a.col_stride = s.col_stride;
  a.src_dtype = s.x.dtype;
  return a;
}

/// One call: rows [begin, begin + count) of the codes, or block rows of the scales, into a
/// buffer with sentinel bytes before and after; the whole buffer, or the error.
struct Output {
  Status status;
  std::string bytes;
};
Output run_at(const Source& s, SimdLevel level, bool scales, uint64_t begin, uint64_t count) {
  QuantizeArgs a = args_for(s);
  a.scales = scales;
  a.begin = begin;
  a.count = count;
  const uint64_t n = scales ? count * ((a.C + 127) / 128) * 4 : count * a.C;
  Output o{{}, std::string(n + 32, SENTINEL)};
  a.dst = reinterpret_cast<std::byte*>(o.bytes.data() + 16);
  o.status = quantize_cpu(a, level);
  return o;
}

/// Every window of codes and scales at `level` against the scalar path; the whole matrix also
/// against `want` when given.
void expect_level_matches(const Source& s, SimdLevel level, const RefQuantized* want) {
  const uint64_t R = s.x.shape[0], BR = (R + 127) / 128;
  std::vector<std::pair<uint64_t, uint64_t>> windows = {{0, R}};
  for (uint64_t step : {uint64_t(128), uint64_t(37), uint64_t(1)}) {
    if (step >= R)
      continue;
    for (uint64_t r = 0; r < R; r += step) {
      windows.push_back({r, std::min(step, R - r)});
      if (step == 1 && r >= 40) // single rows: the first 40 (16-row tiles' edges) are enough
        break;
    }
  }
  if (R > 20)
    windows.push_back({5, R - 20}); // starts and ends inside blocks
  for (auto [begin, count] : windows) {
    const Output got = run_at(s, level, false, begin, count);
    const Output scalar = run_at(s, SimdLevel::portable, false, begin, count);
    ASSERT_TRUE(got.status.ok()) << got.status.message();
    ASSERT_TRUE(scalar.status.ok()) << scalar.status.message();
    for (uint64_t i = 0; i < got.bytes.size(); ++i)
      ASSERT_EQ(int(uint8_t(got.bytes[i])), int(uint8_t(scalar.bytes[i])))
          << "codes, rows [" << begin << ", " << begin + count << "): byte " << i
          << " of the buffer (16 sentinel bytes first; row " << (i - 16) / s.x.shape[1] << ")";
    if (want != nullptr && begin == 0 && count == R)
      ASSERT_EQ(got.bytes.substr(16, R * s.x.shape[1]), want->codes.bytes) << "codes vs reference";
  }
  for (uint64_t b = 0; b < BR; ++b)
    for (uint64_t n : {BR - b, uint64_t(1)}) {
      const Output got = run_at(s, level, true, b, n);
      const Output scalar = run_at(s, SimdLevel::portable, true, b, n);
      ASSERT_TRUE(got.status.ok()) << got.status.message();
      ASSERT_EQ(got.bytes, scalar.bytes) << "scales, block rows [" << b << ", " << b + n << ")";
      if (want != nullptr && b == 0 && n == BR)
        ASSERT_EQ(got.bytes.substr(16, want->scales.bytes.size()), want->scales.bytes)
            << "scales vs reference";
    }
}

const std::vector<std::pair<uint64_t, uint64_t>> SHAPES = {
    {1, 1}, {127, 129}, {260, 130}, {300, 257}, {16, 16}, {128, 128}, {33, 200}, {256, 384}};

void check_level(SimdLevel level) {
  if (best_level() < level)
    GTEST_SKIP() << "this CPU does not run " << simd_level_name(level);
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + ", level " + simd_level_name(level));
  std::mt19937_64 rng(seed);
  for (DType d : {DType::BF16, DType::F16, DType::F32})
    for (auto [R, C] : SHAPES) {
      SCOPED_TRACE(std::string(dtype_name(d)) + " [" + std::to_string(R) + ", " +
                   std::to_string(C) + "]");
      const Tensor x = test_matrix(rng, d, R, C);
      const RefQuantized want = ref_quantize(x);
      const Tensor bits = random_bits_matrix(rng, d, R, C);
      const RefQuantized want_bits = ref_quantize(bits);
      for (bool transposed : {false, true}) {
        SCOPED_TRACE(transposed ? "transposed" : "plain");
        expect_level_matches(lay_out(rng, x, transposed, transposed ? 5 : 0), level, &want);
        expect_level_matches(lay_out(rng, bits, transposed, 3), level, &want_bits);
      }
    }
}

TEST(QuantizeSimd, Avx2MatchesTheScalarPathAndTheReference) {
  check_level(SimdLevel::avx2);
}

TEST(QuantizeSimd, Avx512MatchesTheScalarPathAndTheReference) {
  check_level(SimdLevel::avx512);
}

/// A NaN or an infinity (several, in several blocks) fails every level with the scalar path's
/// message, for codes and scales, whatever the window; a window whose blocks hold none is fine.
void check_non_finite(SimdLevel level) {
  if (best_level() < level)
    GTEST_SKIP() << "this CPU does not run " << simd_level_name(level);
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + ", level " + simd_level_name(level));
  std::mt19937_64 rng(seed);
  for (DType d : {DType::BF16, DType::F16, DType::F32}) {
    const uint64_t inf = d == DType::F32 ? 0x7F800000u : d == DType::BF16 ? 0x7F80u : 0x7C00u;
    const uint64_t sign = d == DType::F32 ? 0x80000000u : 0x8000u;
    for (int trial = 0; trial < 12; ++trial) {
      const uint64_t R = 140 + rng() % 200, C = 140 + rng() % 200;
      SCOPED_TRACE(std::string(dtype_name(d)) + " [" + std::to_string(R) + ", " +
                   std::to_string(C) + "] trial " + std::to_string(trial));
      Tensor x = test_matrix(rng, d, R, C);
      // 1 to 3 bad elements: infinities of either sign, quiet and signalling NaNs.
      const int bad = 1 + int(rng() % 3);
      uint64_t first_block_row = R;
      for (int k = 0; k < bad; ++k) {
        const uint64_t r = rng() % R, c = rng() % C;
        uint64_t b = inf | (rng() % 2 ? sign : 0);
        if (rng() % 2)
          b |= 1 + rng() % (sign - inf - 1); // a nonzero mantissa: a NaN
        put_bits(x, r * C + c, b);
        first_block_row = std::min(first_block_row, r / 128);
      }
      for (bool transposed : {false, true}) {
        const Source s = lay_out(rng, x, transposed, 7);
        for (bool scales : {false, true}) {
          const uint64_t end = scales ? (R + 127) / 128 : R;
          const uint64_t begin = scales ? 0 : rng() % 5;
          const Output got = run_at(s, level, scales, begin, end - begin);
          const Output scalar = run_at(s, SimdLevel::portable, scales, begin, end - begin);
          ASSERT_FALSE(scalar.status.ok());
          ASSERT_FALSE(got.status.ok());
          EXPECT_EQ(got.status.code(), scalar.status.code());
          EXPECT_EQ(got.status.message(), scalar.status.message());
        }
        // The block rows before the first bad one quantize, at every level alike.
        if (first_block_row > 0) {
          const Output got = run_at(s, level, false, 0, first_block_row * 128);
          const Output scalar = run_at(s, SimdLevel::portable, false, 0, first_block_row * 128);
          ASSERT_TRUE(got.status.ok()) << got.status.message();
          EXPECT_EQ(got.bytes, scalar.bytes);
        }
      }
    }
  }
}

TEST(QuantizeSimd, Avx2RefusesNonFiniteBlocksWithTheScalarMessage) {
  check_non_finite(SimdLevel::avx2);
}

TEST(QuantizeSimd, Avx512RefusesNonFiniteBlocksWithTheScalarMessage) {
  check_non_finite(SimdLevel::avx512);
}

} // namespace
} // namespace shardshift
