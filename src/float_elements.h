// float_elements.h: the floating-point element types of the CPU kernels as compile-time data:
// each type's storage, its exact widening to float32, and rounding a float32 to it (numerics.h).
// The dequantization and quantization kernels are templates over these, so they share one
// definition of what "an element of dtype T" means.
// Thread-safety: pure functions and constant tables.
#pragma once

#include "shardshift/dtype.h"

#include "numerics.h"

#include <array>
#include <cstdint>

namespace shardshift::elements {

template <float (*Decode)(uint8_t)> constexpr std::array<float, 256> fp8_table() {
  std::array<float, 256> t{};
  for (int c = 0; c < 256; ++c)
    t[c] = Decode(uint8_t(c));
  return t;
}
/// Every code of each FP8 format as its exact float32 value (numerics.h's decoders).
inline constexpr std::array<float, 256> E4M3 = fp8_table<numerics::f8_e4m3_to_f32>();
inline constexpr std::array<float, 256> E5M2 = fp8_table<numerics::f8_e5m2_to_f32>();

/// Source<T>: `type` (the storage) and widen(bits) -> float, exact.
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
  static float widen(uint16_t x) { return numerics::bf16_to_f32(x); }
};
template <> struct Source<DType::F16> {
  using type = uint16_t;
  static float widen(uint16_t x) { return numerics::f16_to_f32(x); }
};
template <> struct Source<DType::F32> {
  using type = uint32_t;
  static float widen(uint32_t x) { return numerics::f32_from_bits(x); }
};

/// Dest<T>: `type` and narrow(float) -> bits, round to nearest even, canonical NaN.
template <DType D> struct Dest;
template <> struct Dest<DType::BF16> {
  using type = uint16_t;
  static uint16_t narrow(float v) { return numerics::f32_to_bf16_rne(v); }
};
template <> struct Dest<DType::F16> {
  using type = uint16_t;
  static uint16_t narrow(float v) { return numerics::f32_to_f16_rne(v); }
};
template <> struct Dest<DType::F32> {
  using type = uint32_t;
  static uint32_t narrow(float v) { return numerics::f32_canonical_bits(numerics::f32_bits(v)); }
};

} // namespace shardshift::elements
