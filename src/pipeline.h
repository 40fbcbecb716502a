// pipeline.h: the one bounded tbb::parallel_pipeline that moves a plan's bytes, through three
// stage objects:
//
//   Emitter (serial, in order) -> TransformStage (parallel)    -> WriteStage (serial, in order)
//   walks the plan, cuts          transpose-fold a chunk on the   appends to the current file
//   expert tensors in chunks,     CPU or the CUDA stage, or       (copy_file_range for runs)
//   takes a buffer, prefetches    fills ones                      through an OutputTarget;
//                                                                 frees the buffer, releases input
//
// At most `tokens` items are alive, each holding at most one buffer of `chunk_bytes` and reading at
// most `chunk_bytes` of mapped input, so memory in flight is bounded by tokens * 2 * chunk_bytes
// whatever the model's or a tensor's size (docs in README "Memory").
// Thread-safety: run_pipeline is called once per conversion.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/io.h"
#include "shardshift/plan.h"
#include "shardshift/profiler.h"
#include "shardshift/progress.h"

#include "cuda_transform.h"

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>

namespace shardshift {

struct PipelineConfig {
  uint64_t chunk_bytes = 64 << 20;
  unsigned tokens = 8;
  CudaTransformer* gpu = nullptr; ///< nullptr: transform on the CPU
  Io* io = nullptr;
  const std::atomic<bool>* cancel = nullptr;
  std::function<void(const Progress&)> progress;
  /// Stream mode: write only plan.files[only_file] to the descriptor stream_fd (a pipe or
  /// stdout) instead of writing every file into the directory.
  int stream_fd = -1;
  uint32_t only_file = 0;
};

struct PipelineResult {
  uint64_t zero_copy_bytes = 0, fallback_copy_bytes = 0;
  uint64_t cpu_bytes = 0, gpu_bytes = 0, ones_bytes = 0;
  uint64_t output_bytes = 0;
};

/// Chunk size and token count for a memory budget and thread count (the formula of README
/// "Memory"): tokens = threads + 2 (at least 3), chunk = budget / (2 * tokens + gpu_slots),
/// rounded down to 4 KiB and clamped to [64 KiB, 64 MiB].
void size_pipeline(uint64_t max_memory, unsigned threads, unsigned gpu_slots, uint64_t* chunk_bytes,
                   unsigned* tokens);

/// Writes every file of `plan` into `dir` (each committed by rename as it completes), or in stream
/// mode the one file config.only_file to config.stream_fd.
Result<PipelineResult> run_pipeline(const Checkpoint& input, const Plan& plan,
                                    const std::filesystem::path& dir, const PipelineConfig& config,
                                    Profiler& profiler);

} // namespace shardshift
