// pipeline.h: moving a plan's bytes. Each output file is a unit of work; `writers` lanes take
// files from one queue and each runs a bounded tbb::parallel_pipeline of three stage objects and
// a last step that gives back what an item held:
//
//   Emitter (serial, in order) -> TransformStage (parallel) -> WriteStage (serial, in order)
//   takes the lane's next file,   transpose-fold a chunk on    opens the lane's file, appends
//   cuts copy runs and experts    the CPU or the CUDA stage,   to it through an OutputTarget
//   into chunks, takes a buffer   or fills ones                (copy_file_range / splice for
//                                                              runs), commits it
//   -> give back (parallel): puts an item of a file filled by several threads in its place
//      (WriteStage::fill), drops the item's input pages from the mappings, frees its buffer
//
// Giving back runs after the in-order write, on any thread, so the lane's one writing thread
// only writes (or, for a file filled by several threads, only checks places). Such a file's
// items carry their places from the cutting, so a lane out of files can take items of another
// lane's file, the one that would end alone (emitter.h, FileQueue::help).
//
// Lanes share the transform threads, the buffer pool and one memory budget: each lane has at
// most `tokens` items alive, each holding at most one buffer of `chunk_bytes` and reading at most
// `chunk_bytes` of mapped input, so memory in flight is at most writers * tokens * 2 * chunk_bytes
// whatever the model's, a file's or a tensor's size (README "Memory"). Every file's bytes are a
// function of the plan alone, so the output is the same for any number of lanes or threads.
// Thread-safety: run_pipeline is called once per conversion.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/io.h"
#include "shardshift/plan.h"
#include "shardshift/profiler.h"
#include "shardshift/progress.h"

#include "gpu_handle.h"
#include "gpu_retirement.h"
#include "write_stage.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace shardshift {

struct PipelineConfig {
  uint64_t chunk_bytes = 64 << 20;
  unsigned tokens = 8;  ///< items alive per lane
  unsigned writers = 1; ///< lanes: output files written at once
  /// Threads of the task arena the lanes run in (0: the default arena, one per core). More than
  /// the cores where lanes mostly wait (--pipe-to: two more per upload).
  unsigned arena_threads = 0;
  /// A lane takes its next file only once it has finished the last (--pipe-to: finishing is
  /// waiting for the command, an upload; a lane that took its next file meanwhile would leave
  /// another lane without one, and fewer commands running than --uploads).
  bool file_at_a_time = false;
  GpuHandle* gpu = nullptr; ///< nullptr: transform on the CPU; else the GPU, open or opening
  /// The GPU is retired once less than this is left of the run at its pace so far, 0: only once
  /// no chunk can reach it (gpu_retirement.h).
  uint64_t gpu_retire_ahead_ns = GpuRetirement::AHEAD_NS;
  Io* io = nullptr;
  const std::atomic<bool>* cancel = nullptr;
  std::function<void(const Progress&)> progress;
  /// --checksums: when set (one entry per plan file), the SHA-256 of each file written is stored
  /// at its index, computed by a serial stage of its lane between transform and write.
  std::vector<std::string>* digests = nullptr;
  /// How a directory output's files are filled (DirectoryTarget; fill_mode() chooses).
  FillMode fill = FillMode::write;
};

/// When one writer lane ran out of files, and the last file it wrote. A run ends with its last
/// lane; the time between the lanes' ends is time the last files were written by fewer lanes
/// (PERFORMANCE.md, "The last file written alone").
struct LaneEnd {
  uint64_t end_ns = 0;        ///< Profiler::now() when the lane's pipeline returned
  uint32_t file = UINT32_MAX; ///< plan.files index of its last file; UINT32_MAX: it wrote none
};

struct PipelineResult {
  uint64_t zero_copy_bytes = 0, fallback_copy_bytes = 0;
  uint64_t cpu_bytes = 0, gpu_bytes = 0, ones_bytes = 0;
  uint64_t gpu_in_place_bytes = 0; ///< TransformStage::gpu_in_place_bytes()
  uint64_t gpu_input_bytes = 0;    ///< TransformStage::gpu_input_bytes()
  uint64_t output_bytes = 0;
  uint64_t helped_bytes = 0;  ///< written by lanes helping with another lane's file (emitter.h)
  std::vector<LaneEnd> lanes; ///< one per writer lane, in the order they ended
};

/// Chunk size and per-lane token count for a memory budget, thread count and lane count (the
/// formula of README "Memory"): tokens = max(3, ceil((threads + 2) / writers)),
/// chunk = budget / (2 * writers * tokens + gpu_slots), rounded down to 4 KiB and clamped to
/// [64 KiB, 64 MiB]; tokens are first cut to what the budget holds at 64 KiB chunks (a -j far
/// beyond the cores would otherwise break the budget). (Giving every lane threads + 2 tokens where
/// files are filled by several threads, in smaller chunks, was tried and was slower:
/// PERFORMANCE.md, "One file filled by several threads".)
void size_pipeline(uint64_t max_memory, unsigned threads, unsigned gpu_slots, unsigned writers,
                   uint64_t* chunk_bytes, unsigned* tokens);

/// The default number of writer lanes: one per thread up to 8 threads, then one per two threads
/// (and never fewer than 8), at most one per file and at most 16. Writing into the page cache or a
/// tmpfs is CPU work (a copy, and a zeroed page for each new one), so with few threads every
/// thread is best spent as a lane; beyond 8 lanes the transforms need the rest (PERFORMANCE.md,
/// "Writer lanes" and "Reading the input in place"). With `gpu` (a GPU that may take the
/// transforms) and at least 4 threads, a few files (at most two per lane) get a lane each: the
/// GPU leaves cores free, and otherwise the file beyond the lanes is written alone at the end
/// ("The last file written alone").
unsigned default_writers(unsigned threads, size_t files, bool gpu = false);

/// How the files of a directory output are filled (FillMode), for `threads` threads and `writers`
/// lanes, through `io`, into a directory on a tmpfs or not (on_tmpfs): SHARDSHIFT_FILL=write or
/// =mapped when set (for comparisons); otherwise by several threads on a tmpfs when there are at
/// least three threads per lane and `io` allows it (Io::maps_writes), and written in order
/// otherwise. A copy into a mapping costs about three times the CPU per byte of a write (each new
/// page is zeroed, then copied into), so it pays only where threads would otherwise wait for a
/// lane writing one file alone (PERFORMANCE.md, "One file filled by several threads"). On a disk
/// the page cache's write-back is left to writes.
FillMode fill_mode(unsigned threads, unsigned writers, const Io& io, bool tmpfs);

/// Whether `dir` (or, when it does not exist yet, its parent) is on a tmpfs.
bool on_tmpfs(const std::filesystem::path& dir);

/// Writes plan.files[i] for every i in `files` through `target` (a directory: each file committed
/// by rename as it completes; a stream: one file only).
Result<PipelineResult> run_pipeline(const Checkpoint& input, const Plan& plan,
                                    std::span<const uint32_t> files, OutputTarget& target,
                                    const PipelineConfig& config, Profiler& profiler);

} // namespace shardshift
