// dequant_cpu.cpp: FP8 block dequantization (dequant.h) on the CPU, scalar.
//
// Shape of the work: the output is visited one block x block tile of W at a time, so that each
// tile's one scale is read once and the tile's input (16 KiB of FP8) stays in L1 while a
// transposed tile reads it column by column. FP8 codes are decoded through a 256-entry table
// built from numerics.h's exact decoders at compile time; 16- and 32-bit weights widen exactly.
// The product and the rounding are numerics.h's mul_f32 and f32_to_*_rne, so the bits are those
// of the reference arithmetic (semantics 15.3) whatever the floating-point environment
// (FTZ/DAZ and the rounding mode are cleared for the duration of a call, as in transpose_cpu.cpp).
#include "dequant.h"

#include "float_environment.h"
#include "numerics.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SHARDSHIFT_X86 1
#else
#define SHARDSHIFT_X86 0
#endif

namespace shardshift {

namespace {

using namespace numerics;


template <float (*Decode)(uint8_t)> constexpr std::array<float, 256> fp8_table() {
  std::array<float, 256> t{};
  for (int c = 0; c < 256; ++c)
    t[c] = Decode(uint8_t(c));
  return t;
}
constexpr std::array<float, 256> E4M3 = fp8_table<f8_e4m3_to_f32>();
constexpr std::array<float, 256> E5M2 = fp8_table<f8_e5m2_to_f32>();

template <DType S> struct Source;
template <> struct Source<DType::F8_E4M3> {
  using type = uint8_t;
  static float widen(uint8_t x) { return E4M3[x]; }
};
template <> struct Source<DType::F8_E5M2> {
  using type = uint8_t;
  static float widen(uint8_t x) { return E5M2[x]; }
};
template <> struct Source<DType::BF16> {
  using type = uint16_t;
  static float widen(uint16_t x) { return bf16_to_f32(x); }
};
template <> struct Source<DType::F16> {
  using type = uint16_t;
  static float widen(uint16_t x) { return f16_to_f32(x); }
};
template <> struct Source<DType::F32> {
  using type = uint32_t;
  static float widen(uint32_t x) { return f32_from_bits(x); }
};

template <DType D> struct Dest;
template <> struct Dest<DType::BF16> {
  using type = uint16_t;
  static uint16_t narrow(float v) { return f32_to_bf16_rne(v); }
};
template <> struct Dest<DType::F16> {
  using type = uint16_t;
  static uint16_t narrow(float v) { return f32_to_f16_rne(v); }
};
template <> struct Dest<DType::F32> {
  using type = uint32_t;
  static uint32_t narrow(float v) { return f32_canonical_bits(f32_bits(v)); }
};

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

template <DType S, DType D> void run(const DequantArgs& a) {
  using In = typename Source<S>::type;
  using Out = typename Dest<D>::type;
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
  if (!a.transpose) {
    const uint64_t pitch = a.dst_pitch ? a.dst_pitch : a.C;
    for (uint64_t r = a.begin; r < end; ++r)
      for (uint64_t c0 = 0; c0 < a.C; c0 += B) {
        const float s = scale(r / B, c0 / B);
        for (uint64_t c = c0; c < std::min(a.C, c0 + B); ++c)
          put(r - a.begin, c, pitch, mul_f32(in(r, c), s));
      }
    return;
  }
  // Output row k is column begin + k of W; tiles of W's rows by the block columns in range.
  const uint64_t pitch = a.dst_pitch ? a.dst_pitch : a.R;
  for (uint64_t r0 = 0; r0 < a.R; r0 += B) {
    const uint64_t r1 = std::min(a.R, r0 + B);
    for (uint64_t j0 = a.begin; j0 < end;) {
      const uint64_t j1 = std::min(end, (j0 / B + 1) * B);
      const float s = scale(r0 / B, j0 / B);
      for (uint64_t j = j0; j < j1; ++j)
        for (uint64_t r = r0; r < r1; ++r)
          put(j - a.begin, r, pitch, mul_f32(in(r, j), s));
      j0 = j1;
    }
  }
}

template <DType S> void run_to(const DequantArgs& a) {
  switch (a.dst_dtype) {
  case DType::BF16:
    return run<S, DType::BF16>(a);
  case DType::F16:
    return run<S, DType::F16>(a);
  default:
    return run<S, DType::F32>(a);
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
  if (a.count == 0 || a.R == 0 || a.C == 0)
    return;
  [[maybe_unused]] const FloatEnvironmentGuard ieee{};
  switch (a.src_dtype) {
  case DType::F8_E4M3:
    return run_to<DType::F8_E4M3>(a);
  case DType::F8_E5M2:
    return run_to<DType::F8_E5M2>(a);
  case DType::BF16:
    return run_to<DType::BF16>(a);
  case DType::F16:
    return run_to<DType::F16>(a);
  default:
    return run_to<DType::F32>(a);
  }
}

} // namespace shardshift
