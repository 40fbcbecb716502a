// dequant_bench.cpp: the CPU FP8 block dequantization kernel (dequant.h) on one core, at every
// SIMD level this CPU runs, against memcpy of the same number of output bytes.
//
// Shapes are DeepSeek-V3's (semantics 15): a routed expert's piece [I, H] = [2048, 7168] in
// F8_E4M3 with F32 128 x 128 block scales, dequantized as a plain weight (rows) and transposed
// into its half of a stacked gate_and_up row ([H, 2I]: pitch 4096, as the gate piece lands); the
// dense MLP's [18432, 7168]. Rates count output bytes only (the kernel also reads half as many
// FP8 bytes; memcpy reads as many as it writes), so "ratio to memcpy" is how close the kernel
// comes to just writing its output. Inputs are realistic codes (all finite, random) and scales
// near DeepSeek's (about 1/448); buffers are 64-byte aligned, as the pipeline's, and touched
// before timing.
//
//   build-simd/perf/dequant_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include "bench_support.h"
#include "shardshift/dtype.h"

#include "dequant.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

namespace shardshift {
namespace {

using bench::make_buffer;

struct Shape {
  const char* name;
  uint64_t R, C;
  bool transpose;
  uint64_t pitch; ///< 0: the output row length
};

constexpr Shape PIECE{"piece2048x7168", 2048, 7168, false, 0};
constexpr Shape PIECE_T{"piece2048x7168T_into_pitch4096", 2048, 7168, true, 4096};
constexpr Shape DENSE{"dense18432x7168", 18432, 7168, false, 0};

uint64_t out_row_length(const Shape& s) {
  return s.pitch != 0 ? s.pitch : (s.transpose ? s.R : s.C);
}
uint64_t out_rows(const Shape& s) {
  return s.transpose ? s.C : s.R;
}

void bench_memcpy(benchmark::State& state, Shape shape, DType dst) {
  // The bytes the kernel writes (a transposed piece fills half of each stacked row).
  const uint64_t bytes =
      out_rows(shape) * (shape.transpose ? shape.R : shape.C) * dtype_bits(dst) / 8;
  bench::bench_memcpy_bytes(state, bytes, bytes);
}

void bench_kernel(benchmark::State& state, Shape shape, DType src_dtype, DType dst,
                  SimdLevel level) {
  const uint64_t in_bytes = shape.R * shape.C;
  const uint64_t scale_count = scale_blocks(shape.R) * scale_blocks(shape.C);
  const uint64_t written =
      out_rows(shape) * (shape.transpose ? shape.R : shape.C) * dtype_bits(dst) / 8;
  auto src = make_buffer(in_bytes), scales = make_buffer(scale_count * 4);
  auto out = make_buffer(out_rows(shape) * out_row_length(shape) * dtype_bits(dst) / 8);
  if (!src || !scales || !out)
    return state.SkipWithError("out of memory");
  std::mt19937_64 rng(42);
  for (uint64_t i = 0; i < in_bytes; ++i) {
    uint8_t code = uint8_t(rng());
    if ((code & 0x7F) >= 0x78) // no NaN (E4M3 0x7F) nor infinity/NaN (E5M2 0x7C-0x7F)
      code &= 0xB7;
    src.get()[i] = std::byte(code);
  }
  for (uint64_t i = 0; i < scale_count; ++i) {
    const float s = float(1.0 / 448.0) * float(1 + rng() % 1000) / 500.0f;
    std::memcpy(scales.get() + 4 * i, &s, 4);
  }
  DequantArgs a;
  a.src = src.get();
  a.scales = scales.get();
  a.dst = out.get();
  a.R = shape.R;
  a.C = shape.C;
  a.transpose = shape.transpose;
  a.begin = 0;
  a.count = out_rows(shape);
  a.dst_pitch = shape.pitch;
  a.src_dtype = src_dtype;
  a.scale_dtype = DType::F32;
  a.dst_dtype = dst;
  for (auto _ : state) {
    dequant_cpu(a, level);
    benchmark::DoNotOptimize(out.get());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(written));
}

void register_all() {
  // Levels up to the CPU's (dequant_cpu runs a level above it as portable).
  std::vector<SimdLevel> levels;
  for (int l = 0; l <= int(detect_simd_level()); ++l)
    levels.push_back(SimdLevel(l));
  struct Case {
    Shape shape;
    DType src, dst;
  };
  const Case cases[] = {
      {PIECE, DType::F8_E4M3, DType::BF16},   {PIECE_T, DType::F8_E4M3, DType::BF16},
      {DENSE, DType::F8_E4M3, DType::BF16},   {PIECE, DType::F8_E5M2, DType::BF16},
      {PIECE_T, DType::F8_E5M2, DType::BF16}, {PIECE, DType::F8_E4M3, DType::F16},
      {PIECE_T, DType::F8_E4M3, DType::F16},  {PIECE, DType::F8_E4M3, DType::F32},
      {PIECE_T, DType::F8_E4M3, DType::F32},
  };
  for (const Shape& shape : {PIECE, DENSE})
    for (DType dst : {DType::BF16, DType::F32})
      benchmark::RegisterBenchmark(
          (std::string("memcpy/") + std::string(dtype_name(dst)) + "/" + shape.name).c_str(),
          bench_memcpy, shape, dst)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  for (const Case& c : cases)
    for (SimdLevel level : levels)
      benchmark::RegisterBenchmark((std::string(dtype_name(c.src)) + "_to_" +
                                    std::string(dtype_name(c.dst)) + "/" + c.shape.name + "/" +
                                    simd_level_name(level))
                                       .c_str(),
                                   bench_kernel, c.shape, c.src, c.dst, level)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
}

} // namespace
} // namespace shardshift

int main(int argc, char** argv) {
  return shardshift::bench::run_benchmarks(argc, argv, shardshift::register_all);
}
