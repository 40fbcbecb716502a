// quantize_bench.cpp: the CPU FP8 block quantization kernel (quantize.h, to_hf --quantize fp8) on
// one core at every SIMD level this CPU runs, against memcpy of the same number of input bytes.
//
// Shapes are DeepSeek-V3's (semantics 15): a BF16 routed expert's gate_proj [I, H] = [2048, 7168]
// read as to_hf reads it, columns [0, 2048) of one expert of gate_and_up_projs [7168, 4096],
// transposed (row_stride 1, col_stride 4096); the same matrix stored plainly (a pass-through
// weight); and the dense MLP's [18432, 7168]. Each case writes the codes, then the scales (the
// pipeline's two outputs, the source read twice). Rates count the BF16 input bytes, so "ratio to
// memcpy" is how close quantizing comes to just reading its input once and writing it back. Each
// kernel case also reports `x_memcpy`: its rate over memcpy's for the same bytes, both in CPU time
// of the benchmark thread (so a VM shared with builds still gives the kernel's own cost); the
// memcpy is bench_memcpy_bytes' (between two 64-byte aligned make_buffer buffers), best of 5
// runs, and the memcpy/ rows report its rate in wall time.
//
//   build/perf/quantize_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include "shardshift/dtype.h"

#include "bench_support.h"
#include "quantize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <time.h>
#include <vector>

#include <benchmark/benchmark.h>

namespace shardshift {
namespace {

using bench::make_buffer;

struct Shape {
  const char* name;
  uint64_t R, C;    ///< the quantized matrix
  uint64_t stacked; ///< 0: stored plainly; else the stacked row length it is a column block of
};

constexpr Shape EXPERT_T{"expert2048x7168_from_stacked4096T", 2048, 7168, 4096};
constexpr Shape EXPERT{"expert2048x7168", 2048, 7168, 0};
constexpr Shape DENSE{"dense18432x7168", 18432, 7168, 0};

uint64_t source_elements(const Shape& s) {
  return s.stacked ? s.C * s.stacked : s.R * s.C;
}

void bench_memcpy(benchmark::State& state, Shape shape) {
  const uint64_t bytes = shape.R * shape.C * 2;
  bench::bench_memcpy_bytes(state, bytes, bytes);
}

double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + double(t.tv_nsec) * 1e-9;
}

/// memcpy of `bytes` between two aligned buffers, in CPU seconds of this thread, best of 5.
double memcpy_cpu_seconds(uint64_t bytes) {
  auto src = make_buffer(bytes, 0x3C), dst = make_buffer(bytes, 0);
  double best = 1e30;
  for (int k = 0; k < 5 && src && dst; ++k) {
    const double t0 = thread_cpu_seconds();
    std::memcpy(dst.get(), src.get(), bytes);
    benchmark::DoNotOptimize(dst.get());
    best = std::min(best, thread_cpu_seconds() - t0);
  }
  return best;
}

void bench_quantize(benchmark::State& state, Shape shape, SimdLevel level) {
  const uint64_t n = source_elements(shape);
  auto src = make_buffer(n * 2), codes = make_buffer(shape.R * shape.C);
  auto scales = make_buffer(scale_blocks(shape.R) * scale_blocks(shape.C) * 4);
  if (!src || !codes || !scales)
    return state.SkipWithError("out of memory");
  // BF16 weights of a trained model's magnitude: normal, standard deviation about 0.02.
  std::mt19937_64 rng(42);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  for (uint64_t i = 0; i < n; ++i) {
    const float v = nd(rng);
    uint32_t u;
    std::memcpy(&u, &v, 4);
    const uint16_t h = uint16_t(u >> 16);
    std::memcpy(src.get() + 2 * i, &h, 2);
  }
  QuantizeArgs a;
  a.src = src.get();
  a.R = shape.R;
  a.C = shape.C;
  a.row_stride = shape.stacked ? 1 : shape.C;
  a.col_stride = shape.stacked ? shape.stacked : 1;
  a.src_dtype = DType::BF16;
  const double t0 = thread_cpu_seconds();
  for (auto _ : state) {
    a.scales = false;
    a.begin = 0;
    a.count = shape.R;
    a.dst = codes.get();
    if (!quantize_cpu(a, level).ok())
      return state.SkipWithError("quantize failed");
    a.scales = true;
    a.count = scale_blocks(shape.R);
    a.dst = scales.get();
    if (!quantize_cpu(a, level).ok())
      return state.SkipWithError("quantize failed");
    benchmark::DoNotOptimize(codes.get());
    benchmark::ClobberMemory();
  }
  const double kernel = (thread_cpu_seconds() - t0) / double(state.iterations());
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(shape.R * shape.C * 2));
  state.counters["x_memcpy"] = memcpy_cpu_seconds(shape.R * shape.C * 2) / kernel;
}

void register_all() {
  for (const Shape& shape : {EXPERT, DENSE})
    benchmark::RegisterBenchmark((std::string("memcpy/BF16/") + shape.name).c_str(), bench_memcpy,
                                 shape)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  // Levels up to the CPU's (quantize_cpu runs a level above it as portable).
  std::vector<SimdLevel> levels;
  for (int l = 0; l <= int(detect_simd_level()); ++l)
    levels.push_back(SimdLevel(l));
  for (const Shape& shape : {EXPERT_T, EXPERT, DENSE})
    for (SimdLevel level : levels)
      benchmark::RegisterBenchmark(
          (std::string("BF16_to_F8_E4M3/") + shape.name + "/" + simd_level_name(level)).c_str(),
          bench_quantize, shape, level)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
}

} // namespace
} // namespace shardshift

int main(int argc, char** argv) {
  return shardshift::bench::run_benchmarks(argc, argv, shardshift::register_all);
}
