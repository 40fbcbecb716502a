// bench_support.h: what the Google Benchmark programs of perf/ share: 64-byte aligned buffers
// (the pipeline's alignment, so streaming stores behave as in a run) and the main() that runs
// the benchmarks a program registers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <benchmark/benchmark.h>

namespace shardshift::bench {

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<std::byte[], FreeDeleter>;

/// A 64-byte aligned buffer of at least `bytes`, filled with `fill` (so every page is touched
/// before timing).
inline AlignedBuffer make_buffer(uint64_t bytes, uint8_t fill = 0) {
  const uint64_t rounded = (bytes + 63) / 64 * 64;
  AlignedBuffer buffer(static_cast<std::byte*>(std::aligned_alloc(64, rounded)));
  if (buffer)
    std::memset(buffer.get(), fill, rounded);
  return buffer;
}

/// The physical floor beside a kernel: memcpy of `bytes` between two aligned buffers, each
/// iteration counted as `counted` bytes processed (the output bytes, or read + write).
inline void bench_memcpy_bytes(benchmark::State& state, uint64_t bytes, uint64_t counted) {
  auto src = make_buffer(bytes, 0x3C), dst = make_buffer(bytes, 0);
  if (!src || !dst)
    return state.SkipWithError("out of memory");
  for (auto _ : state) {
    std::memcpy(dst.get(), src.get(), bytes);
    benchmark::DoNotOptimize(dst.get());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(counted));
}

/// main() of a benchmark program: Google Benchmark's flags, then `register_all`, then the runs.
inline int run_benchmarks(int argc, char** argv, void (*register_all)()) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv))
    return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

} // namespace shardshift::bench
