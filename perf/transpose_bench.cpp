// transpose_bench.cpp: the CPU transpose-fold kernel against memcpy of the same bytes, on one
// core, at every SIMD level this CPU runs.
//
// Shapes are the diffusion_gemma experts (semantics.md section 5) with fewer experts, so that a
// case moves about 126 MB (63 MB in, 63 MB out: far more than the caches) without needing much
// memory: gate_up [E, 1408, 2816] and down [E, 2816, 704] in BF16, and an F32 [E, 1408, 2816].
// Bytes per second count bytes read plus bytes written, for memcpy as for the kernel, so the
// two rates compare directly. Buffers are 64-byte aligned, as the pipeline's are (page-aligned),
// and written once before timing so page faults are not measured.
//
//   build-kernel-rel/perf/transpose_bench --benchmark_repetitions=5
//     --benchmark_report_aggregates_only=true
#include "bench_support.h"
#include "shardshift/dtype.h"

#include "transpose.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

namespace shardshift {
namespace {

using bench::make_buffer;

struct Shape {
  const char* name;
  uint64_t experts, A, B;
};

constexpr Shape GATE_UP{"E8x1408x2816", 8, 1408, 2816};
constexpr Shape DOWN{"E16x2816x704", 16, 2816, 704};
constexpr Shape GATE_UP_F32{"E4x1408x2816", 4, 1408, 2816};

uint64_t width(DType t) {
  return dtype_bits(t) / 8;
}

void bench_memcpy(benchmark::State& state, Shape shape, DType dtype) {
  const uint64_t bytes = shape.experts * shape.A * shape.B * width(dtype);
  bench::bench_memcpy_bytes(state, bytes, 2 * bytes); // read + write
}

void bench_kernel(benchmark::State& state, Shape shape, DType src_dtype, bool fold, DType dst_dtype,
                  SimdLevel level) {
  const uint64_t elements = shape.experts * shape.A * shape.B;
  const uint64_t in_bytes = elements * width(src_dtype), out_bytes = elements * width(dst_dtype);
  // BF16 0x3F80 / F32 0x3F803F80 inputs are ordinary finite values, like real weights.
  auto src = make_buffer(in_bytes, 0x3F), dst = make_buffer(out_bytes, 0);
  auto scales = make_buffer(shape.experts * width(src_dtype), 0x3F);
  if (!src || !dst || !scales)
    return state.SkipWithError("out of memory");
  TransposeArgs args;
  args.src = src.get();
  args.dst = dst.get();
  args.scales = fold ? scales.get() : nullptr;
  args.experts = shape.experts;
  args.A = shape.A;
  args.B = shape.B;
  args.cols = shape.B;
  args.src_dtype = args.scale_dtype = src_dtype;
  args.dst_dtype = dst_dtype;
  if (Status s = check_transpose_supported(src_dtype, fold, src_dtype, dst_dtype); !s.ok())
    return state.SkipWithError(s.message().c_str());
  for (auto _ : state) {
    transpose_fold_cpu(args, level);
    benchmark::DoNotOptimize(dst.get());
    benchmark::ClobberMemory();
  }
  const uint64_t scale_bytes = fold ? shape.experts * width(src_dtype) : 0;
  state.SetBytesProcessed(int64_t(state.iterations()) *
                          int64_t(in_bytes + scale_bytes + out_bytes));
}

void register_all() {
  // The levels this CPU runs: transpose_fold_cpu runs a level above the CPU's as portable, so
  // only those up to detect_simd_level() (which SHARDSHIFT_SIMD may cap) are listed.
  std::vector<SimdLevel> levels;
  for (int l = 0; l <= int(detect_simd_level()); ++l)
    levels.push_back(SimdLevel(l));

  struct KernelCase {
    const char* name;
    Shape shape;
    DType src;
    bool fold;
    DType dst;
  };
  const KernelCase cases[] = {
      {"bf16_fold", GATE_UP, DType::BF16, true, DType::BF16},
      {"bf16_fold", DOWN, DType::BF16, true, DType::BF16},
      {"bf16_transpose", GATE_UP, DType::BF16, false, DType::BF16},
      {"bf16_transpose", DOWN, DType::BF16, false, DType::BF16},
      {"f32_fold", GATE_UP_F32, DType::F32, true, DType::F32},
      {"f32_transpose", GATE_UP_F32, DType::F32, false, DType::F32},
  };
  for (const Shape& shape : {GATE_UP, DOWN})
    benchmark::RegisterBenchmark((std::string("memcpy/bf16/") + shape.name).c_str(), bench_memcpy,
                                 shape, DType::BF16)
        ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark((std::string("memcpy/f32/") + GATE_UP_F32.name).c_str(),
                               bench_memcpy, GATE_UP_F32, DType::F32)
      ->Unit(benchmark::kMillisecond);
  for (const KernelCase& c : cases)
    for (SimdLevel level : levels)
      benchmark::RegisterBenchmark(
          (std::string(c.name) + "/" + c.shape.name + "/" + simd_level_name(level)).c_str(),
          bench_kernel, c.shape, c.src, c.fold, c.dst, level)
          ->Unit(benchmark::kMillisecond);
}

} // namespace
} // namespace shardshift

int main(int argc, char** argv) {
  return shardshift::bench::run_benchmarks(argc, argv, shardshift::register_all);
}
