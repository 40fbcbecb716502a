// convert.h: the whole conversion, as the app and tests call it.
//
// convert() reads as its passes: open and validate the input, plan, prepare a staging directory,
// run the pipeline (copy / transform / write, bounded by max_memory), copy side files, write the
// index, commit (rename the staging directory to the output). On any error or cancellation the
// staging directory is removed: the output either appears whole or not at all.
// Thread-safety: one conversion per ConvertOptions; callbacks are invoked from one thread at a
// time.
#pragma once

#include "shardshift/io.h"
#include "shardshift/plan.h"
#include "shardshift/profiler.h"
#include "shardshift/progress.h"
#include "shardshift/status.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardshift {

/// --format: the output as a directory (OUT, or with OUT '-' one of its files, see
/// ConvertOptions::only), or the whole directory as one POSIX tar stream to stdout (OUT '-').
enum class OutputFormat { dir, tar };

struct ConvertOptions {
  std::filesystem::path input;
  std::filesystem::path output; ///< a directory, or "-": stream to stdout (see `only`, `format`)
  OutputFormat format = OutputFormat::dir; ///< tar: the whole output to stdout (output "-")
  std::string only; ///< with output "-": the output file to stream (shard, index, side file)
  PlanOptions plan;
  unsigned threads = 0; ///< 0 = all hardware threads (-j)
  unsigned writers = 0; ///< output files written at once; 0 = from threads and files (--writers)
  uint64_t max_memory = uint64_t{1} << 30; ///< budget for buffers and mapped input in flight
  std::string device = "auto";             ///< auto | cpu | cuda | cuda:N
  bool force = false;                      ///< replace an existing output directory
  /// --resume: continue the staging directory a killed or interrupted run of the same conversion
  /// into the same OUT left (its finished files kept), and keep this run's if it fails too.
  bool resume = false;
  /// One job of several processes (mpirun, srun, torchrun: README "Ranks"): this process's rank
  /// and the world size; unset: from the launcher's variables (ranks.h), else a single process.
  std::optional<unsigned> rank, world_size;
  /// A rank whose heartbeat is this old is taken for dead, and the job fails (--job-timeout).
  std::chrono::seconds job_timeout{120};
  const std::atomic<bool>* cancel = nullptr; ///< set (e.g. by SIGINT) to stop; result: interrupted
  Io* io = nullptr;                          ///< nullptr = Io::system()
  bool sync = true;                          ///< fsync files and directories (--no-sync: false)
  bool trace = false;                        ///< keep per-span events for Profiler::write_trace
  /// Where the caller will write the trace (--trace), checked with OUT before any work: not a
  /// file the conversion reads, not inside IN or OUT, and its directory writable. Empty: none.
  std::filesystem::path trace_file;
  /// --pipe-to: instead of OUT, stream every output file into its own `sh -c` command ({name} and
  /// {size} replaced, shell-quoted); the index goes last, only after every shard was delivered.
  std::string pipe_to;
  /// --pipe-to with --json: each command's stdout goes to stderr, so that stdout holds the
  /// caller's results alone.
  bool pipe_to_stdout_to_stderr = false;
  unsigned uploads = 0;   ///< --uploads: commands running at once (0 = 4)
  bool checksums = false; ///< --checksums: SHA-256 of every output file, written as SHA256SUMS
  /// With a GPU: start moving bytes only once it is open, and keep it to the last chunk (tests
  /// and benchmarks of the GPU path). By default it opens beside the work, which starts on the
  /// CPU, takes chunks once it is there, and is closed a little ahead of the end (README,
  /// `convert`: `--device cuda`).
  bool wait_for_gpu = false;
  /// The process is the GPU's one user (the command-line tool sets it): once the run is done with
  /// the device, its context is ended beside the rest of the run (cudaDeviceReset) rather than at
  /// exit. A program that uses CUDA itself leaves it false: the reset would end its work too.
  bool owns_gpu = false;
};

/// What became of one output file delivered to a command (--pipe-to).
struct FileDelivery {
  std::string name;
  std::string state; ///< "delivered", "failed: why" or "not started"
};

struct ConvertSummary {
  std::string adapter;
  Direction direction = Direction::from_hf;
  std::string device; ///< "cpu (avx512)" or "cuda:0 (NVIDIA H200)"
  uint64_t tensors = 0, files = 0;
  uint64_t output_bytes = 0;             ///< all output files, headers included
  uint64_t zero_copy_bytes = 0;          ///< pass-through bytes moved by copy_file_range / splice
  uint64_t fallback_copy_bytes = 0;      ///< pass-through bytes the kernel refused to move (pwrite)
  uint64_t transformed_bytes = 0;        ///< bytes produced by transpose-fold and ones
  uint64_t cpu_bytes = 0, gpu_bytes = 0; ///< transformed bytes by device
  uint64_t gpu_input_bytes = 0;          ///< input the GPU read (for FP8, half its output)
  uint64_t gpu_in_place_bytes = 0;       ///< of it, read from the mappings, not staged
  uint64_t dropped = 0, excluded = 0;
  uint64_t restored = 0;                 ///< Plan::restored (--base)
  std::vector<std::string> not_restored; ///< Plan::not_restored: what a to_hf output lacks
  uint64_t chunk_bytes = 0, tokens = 0;  ///< the memory budget's split (tokens per writer lane)
  uint64_t writers = 0;                  ///< writer lanes (output files written at once)
  /// Whether each output file was filled by several threads (through a mapping of it) rather
  /// than written in order by its lane (README, --writers).
  bool filled_by_threads = false;
  /// Bytes written by writer lanes that had run out of files, helping with a file another lane
  /// took (files filled by several threads only).
  uint64_t helped_bytes = 0;
  /// Each writer lane that wrote a file, in the order they ended: seconds from the start, and the
  /// last file it wrote. The time from the one before last to the last is the last file written
  /// by one lane alone.
  struct LaneEnd {
    double seconds = 0;
    std::string file;
  };
  std::vector<LaneEnd> lane_ends;
  uint64_t kept_files = 0, kept_bytes = 0; ///< --resume: finished by an earlier run, not rewritten
  std::string rank; ///< in a job of several processes: "rank R of N (Open MPI, coordinated through
                    ///< MPI)" (or "marker files"); else empty
  double seconds = 0;
  uint64_t peak_rss = 0;
  std::vector<StageSummary> stages;
  std::vector<FileDelivery> deliveries; ///< --pipe-to: every file with its state
  std::vector<std::pair<std::string, std::string>> checksums; ///< --checksums: name, SHA-256
};

struct ConvertCallbacks {
  std::function<void(const Progress&)> progress; ///< called at most ~5 times a second
  std::function<void(const Plan&)> planned;      ///< called once the plan is made
  /// Called once the input is open with each of its warnings (Checkpoint::warnings).
  std::function<void(const std::vector<std::string>&)> warnings;
  /// --pipe-to: called once the deliveries are over, whether the run succeeded or not, with
  /// every file's state (on success also in ConvertSummary::deliveries).
  std::function<void(const std::vector<FileDelivery>&)> delivered;
};

/// Converts options.input into options.output. `profiler` (optional) receives the timings.
Result<ConvertSummary> convert(const ConvertOptions& options,
                               const ConvertCallbacks& callbacks = {},
                               Profiler* profiler = nullptr);

/// Checks a --device value: auto, cpu, cuda or cuda:N with N only digits (at most 9). Returns the
/// GPU number it names (0 for cuda, -1 for auto and cpu), or Errc::invalid_argument saying why.
Result<int> parse_device(std::string_view device);

/// Opens the input and makes its plan without writing anything (`shardshift plan`).
Result<Plan> plan_conversion(const std::filesystem::path& input, const PlanOptions& options);

/// One file a conversion writes, with its exact size in bytes.
struct OutputFileSize {
  std::string name; ///< relative to the output directory
  uint64_t size = 0;
};

/// Every file that converting `input` by `plan` writes: the shards in plan order, then the index
/// (when the plan writes one), then the side files; each with its exact size, computed without
/// writing anything (`shardshift plan --print-size`). REQUIRES: `plan` was made from `input`.
/// Fails (Errc::io) when a side file cannot be stat'ed.
Result<std::vector<OutputFileSize>> list_output_files(const Checkpoint& input, const Plan& plan);

/// `files` as `plan --print-size` prints them: "SIZE<TAB>NAME\n" each. A name holding a
/// backslash, line feed or carriage return is escaped as GNU sha256sum escapes names (the line
/// starts with a backslash; those bytes are written \\, \n and \r), so each file is one line.
std::string output_sizes_text(std::span<const OutputFileSize> files);

} // namespace shardshift
