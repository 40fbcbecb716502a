// engine.h: the shape of one run of the pipeline (pipeline.h) for a set of options: threads,
// writer lanes, chunk size and tokens from the memory budget, and the device (auto, cpu, cuda:N).
// convert() and verify() both configure their runs here, so that a verification recomputes the
// output exactly as the conversion it checks produced it, within the same budget.
// Thread-safety: one call per run; the Engine belongs to that run.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/io.h"
#include "shardshift/plan.h"
#include "shardshift/profiler.h"

#include "gpu_handle.h"
#include "pipeline.h"
#include "transpose.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace shardshift {

/// IN opened and planned, as convert() and verify() both need it: Checkpoint::open with the
/// memory limit, its warnings handed to `warnings`, make_plan, each a `plan` span of `profiler`.
/// `held` is the heap the parsed input and the plan hold, which the budget covers too
/// (configure_engine).
struct PlannedInput {
  Checkpoint input;
  Plan plan;
  uint64_t held = 0;
};
Result<PlannedInput>
open_and_plan(const std::filesystem::path& input, const PlanOptions& options, uint64_t max_memory,
              const std::function<void(const std::vector<std::string>&)>& warnings,
              Profiler& profiler);

struct Engine {
  PipelineConfig config;
  std::unique_ptr<GpuHandle> gpu; ///< the GPU, open or opening (gpu_handle.h); null: the CPU
  /// For the summary: "cpu (avx512)", "cuda:0 (NVIDIA H200)" (or "cpu (...)" when a GPU that
  /// --device auto allowed could not be opened).
  std::string device() const;
};

/// The engine for converting `files` output files with `threads` worker threads (the caller
/// holds the tbb::global_control): writer lanes from options.writers (or --pipe-to's uploads, or
/// one for tar), the memory split of size_pipeline, and the GPU when options.device asks for or
/// allows one (its staging slots come out of the same budget; it opens beside the work unless
/// options.wait_for_gpu). config.io is `io`. `held`: memory
/// the run already holds for the parsed input and the plan, which the budget covers too: the
/// pipeline gets the rest, and a run where that is less than half the budget is refused
/// (Errc::unsupported, saying what budget would do). `profiler` (may be null) gets the GPU's
/// opening and closing spans (GpuHandle).
Result<Engine> configure_engine(const ConvertOptions& options, unsigned threads, size_t files,
                                bool dequantizes, Io& io, const ConvertCallbacks& callbacks,
                                uint64_t held = 0, Profiler* profiler = nullptr);

/// Whether the plan dequantizes FP8 block-scaled weights (semantics 15.3), as a stack piece or a
/// whole tensor: arithmetic on every byte, where the GPU can pay for itself.
bool plan_dequantizes(const Plan& plan);

/// --device auto's choice: the GPU for a plan that dequantizes, run with at most 4 threads, or on
/// a CPU with only the portable kernels; the CPU otherwise (docs/PERFORMANCE.md, "A transposed
/// weight locked once" and "The last file written alone").
bool auto_uses_gpu(unsigned threads, SimdLevel simd, bool dequantizes);

} // namespace shardshift
