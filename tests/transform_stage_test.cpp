// transform_stage_test.cpp: the ones written by to_hf for the folded per-expert scale are 1.0 in
// every byte-sized dtype, checked by decoding the bits with the formats' own definitions.
#include "transform_stage.h"

#include <cmath>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

// Value of a binary floating-point pattern with `e` exponent bits, `m` mantissa bits and `bias`
// (normal numbers only: enough for 1.0).
double decode(uint64_t bits, int e, int m, int bias) {
  const uint64_t mant = bits & ((uint64_t{1} << m) - 1);
  const int64_t exp = static_cast<int64_t>((bits >> m) & ((uint64_t{1} << e) - 1));
  const double sign = (bits >> (e + m)) & 1 ? -1.0 : 1.0;
  return sign * std::ldexp(1.0 + static_cast<double>(mant) / std::ldexp(1.0, m),
                           static_cast<int>(exp - bias));
}

TEST(TransformStage, OnesAreOneInEveryByteSizedDtype) {
  struct Format {
    DType dtype;
    int e, m, bias;
  };
  for (Format f : {Format{DType::BF16, 8, 7, 127}, Format{DType::F16, 5, 10, 15},
                   Format{DType::F32, 8, 23, 127}, Format{DType::F64, 11, 52, 1023},
                   Format{DType::F8_E4M3, 4, 3, 7}, Format{DType::F8_E5M2, 5, 2, 15},
                   Format{DType::F8_E4M3FNUZ, 4, 3, 8}, Format{DType::F8_E5M2FNUZ, 5, 2, 16}})
    EXPECT_EQ(decode(one_bits(f.dtype), f.e, f.m, f.bias), 1.0) << dtype_name(f.dtype);
  EXPECT_EQ(std::ldexp(1.0, static_cast<int>(one_bits(DType::F8_E8M0)) - 127), 1.0);
  for (DType d : {DType::U8, DType::I8, DType::I16, DType::U16, DType::I32, DType::U32, DType::I64,
                  DType::U64, DType::BOOL})
    EXPECT_EQ(one_bits(d), 1u) << dtype_name(d);
}

TEST(TransformStage, FillOnesWritesEveryElementLittleEndian) {
  std::vector<std::byte> buf(3 * 8, std::byte{0xAA});
  fill_ones(buf.data(), DType::C64, 3);
  for (int i = 0; i < 3; ++i) {
    float re, im;
    std::memcpy(&re, buf.data() + 8 * i, 4);
    std::memcpy(&im, buf.data() + 8 * i + 4, 4);
    EXPECT_EQ(re, 1.0f);
    EXPECT_EQ(im, 0.0f);
  }
  std::vector<std::byte> f8(5, std::byte{0});
  fill_ones(f8.data(), DType::F8_E4M3, 5);
  for (std::byte b : f8)
    EXPECT_EQ(static_cast<unsigned>(b), 0x38u);
}

} // namespace
} // namespace shardshift

namespace shardshift {
namespace {

TEST(DeviceRouter, WarmsUpOnBothThenPrefersTheCheaperAndProbesTheOther) {
  DeviceRouter r;
  int gpu = 0, cpu = 0;
  // Warm-up: alternate until each device has WARMUP samples.
  for (uint64_t i = 0; i < 2 * DeviceRouter::WARMUP; ++i) {
    const bool g = r.prefer_gpu();
    (g ? gpu : cpu)++;
    r.record(g, 1000, g ? 3000 : 1000); // the GPU costs this thread 3 ns/byte, the CPU 1
  }
  EXPECT_EQ(gpu, static_cast<int>(DeviceRouter::WARMUP));
  EXPECT_EQ(cpu, static_cast<int>(DeviceRouter::WARMUP));
  EXPECT_DOUBLE_EQ(r.cpu_cost(), 1.0);
  EXPECT_DOUBLE_EQ(r.gpu_cost(), 3.0);
  // Then the CPU, with one probe of the GPU in every PROBE_EVERY chunks.
  int probes = 0;
  for (uint64_t i = 0; i < 10 * DeviceRouter::PROBE_EVERY; ++i) {
    const bool g = r.prefer_gpu();
    probes += g;
    r.record(g, 1000, g ? 3000 : 1000);
  }
  EXPECT_EQ(probes, 10);
  // When the GPU becomes cheaper, the probes see it and the choice turns.
  for (int i = 0; i < 20; ++i)
    r.record(true, 1000, 100);
  int on_gpu = 0;
  for (int i = 0; i < 100; ++i)
    on_gpu += r.prefer_gpu();
  EXPECT_GE(on_gpu, 95);
}

TEST(DeviceRouter, ZeroByteChunksAreNotCounted) {
  DeviceRouter r;
  r.record(true, 0, 5);
  EXPECT_EQ(r.gpu_cost(), 0.0);
}

} // namespace
} // namespace shardshift
