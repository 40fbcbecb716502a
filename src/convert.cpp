// convert.cpp: the driver. Read convert() top to bottom: check OUT, open, plan, configure the
// engine, move the bytes (outputs.h: into a directory or to stdout; upload.h: into commands),
// summarize. Where a tensor's bytes go is decided in planner.cpp and moved in pipeline.cpp.
#include "shardshift/convert.h"

#include "shardshift/problems.h"
#include "shardshift/shard_writer.h"

#include "coordinator.h"
#include "discard.h"
#include "engine.h"
#include "job.h"
#include "outputs.h"
#include "pipeline.h"
#include "stream_fd.h"
#include "upload.h"

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>
#include <thread>
#include <unistd.h>

#include <tbb/global_control.h>
#include <tbb/info.h>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

// --no-sync: the kernel's I/O without fsync. Files are still written to temporary names and
// renamed, so a crash cannot leave a half-written file under a final name, but a power loss may
// lose data the page cache had not written yet.
class NoSyncIo final : public ForwardingIo {
public:
  using ForwardingIo::ForwardingIo;
  int fsync(int) override { return 0; }
  int sync_file_range(int, off_t, off_t, unsigned) override { return 0; }
  bool maps_writes() const override { return base().maps_writes(); } // it drops no write
};

ConvertSummary summarize(const Plan& plan, const UploadResult& delivered, const Engine& engine,
                         uint64_t tensors, uint64_t files, Profiler& profiler) {
  const PipelineResult& moved = delivered.moved;
  ConvertSummary sum;
  sum.deliveries = delivered.files;
  sum.checksums = delivered.checksums;
  sum.adapter = plan.adapter;
  sum.direction = plan.direction;
  sum.device = engine.device();
  sum.tensors = tensors;
  sum.files = files;
  sum.output_bytes = moved.output_bytes;
  sum.zero_copy_bytes = moved.zero_copy_bytes;
  sum.fallback_copy_bytes = moved.fallback_copy_bytes;
  sum.cpu_bytes = moved.cpu_bytes;
  sum.gpu_bytes = moved.gpu_bytes;
  sum.gpu_in_place_bytes = moved.gpu_in_place_bytes;
  sum.gpu_input_bytes = moved.gpu_input_bytes;
  sum.transformed_bytes = moved.cpu_bytes + moved.gpu_bytes + moved.ones_bytes;
  sum.dropped = plan.dropped;
  sum.restored = plan.restored;
  sum.not_restored = plan.not_restored;
  sum.excluded = plan.excluded;
  sum.chunk_bytes = engine.config.chunk_bytes;
  sum.tokens = engine.config.tokens;
  sum.filled_by_threads = engine.config.fill == FillMode::mapped;
  sum.helped_bytes = moved.helped_bytes;
  sum.writers = engine.config.writers;
  for (const LaneEnd& lane : moved.lanes) // a lane that found the queue empty wrote nothing
    if (lane.file < plan.files.size())
      sum.lane_ends.push_back({static_cast<double>(lane.end_ns) / 1e9, plan.files[lane.file].name});
  sum.kept_files = delivered.kept_files;
  sum.kept_bytes = delivered.kept_bytes;
  sum.seconds = static_cast<double>(profiler.now()) / 1e9;
  sum.peak_rss = peak_rss_bytes();
  sum.stages = profiler.summaries();
  return sum;
}

// A stream to stdout that failed: whoever reads it must know that what it got is not a whole
// file, whatever the cause (a reader that went away needs no telling).
Status stream_failure(const Status& cause, uint64_t bytes_out, bool tar) {
  const std::string what = std::to_string(bytes_out) +
                           " bytes had been written to stdout; what read them holds an "
                           "incomplete " +
                           (tar ? "archive (without its end-of-archive blocks)" : "file") +
                           " and must discard it";
  if (cause.code() == Errc::interrupted)
    return Status(Errc::interrupted, "interrupted after " + what);
  if (bytes_out > 0 && cause.code() != Errc::broken_pipe)
    return Status(cause.code(), cause.message() + "\n" + what);
  return cause;
}

} // namespace

Result<int> parse_device(std::string_view device) {
  if (device == "auto" || device == "cpu")
    return -1;
  if (device == "cuda")
    return 0;
  // Digits only: "cuda:x" or "cuda:1a" is a usage error, not GPU 0 or 1.
  const std::string_view digits = device.starts_with("cuda:") ? device.substr(5) : "";
  if (digits.empty() || digits.size() > 9 ||
      digits.find_first_not_of("0123456789") != std::string_view::npos)
    return Status(Errc::invalid_argument,
                  "--device '" + std::string(device) +
                      "': use auto, cpu, cuda or cuda:N, where N is a GPU number (0, 1, ...)");
  return std::stoi(std::string(digits));
}

Result<Plan> plan_conversion(const fs::path& input, const PlanOptions& options) {
  auto checkpoint = open_for_plan(input, options);
  if (!checkpoint)
    return checkpoint.status();
  return make_plan(*checkpoint, options);
}

namespace {

// "out/" (a shell's completion) names the directory "out": without its trailing separators, the
// parent of the output and the name of its staging directory come out right.
fs::path without_trailing_slashes(const fs::path& output) {
  const std::string out = output.string();
  if (out.size() <= 1 || out.back() != '/')
    return output;
  const size_t end = out.find_last_not_of('/');
  return end == std::string::npos ? fs::path("/") : fs::path(out.substr(0, end + 1));
}

// The checks on the options that need no input: OUT, --trace, --device, and this process's
// rank, which a stream to stdout or --pipe-to cannot have beside others.
Result<RankInfo> check_options(const ConvertOptions& options) {
  if (Status s = check_output(options); !s.ok())
    return s;
  if (Status s = check_trace_file(options); !s.ok())
    return s;
  if (auto device = parse_device(options.device); !device)
    return device.status();
  auto rank = detect_rank(options.rank, options.world_size, environment());
  if (!rank)
    return rank.status();
  if (rank->world > 1 && (is_stream(options) || !options.pipe_to.empty()))
    return Status(Errc::invalid_argument,
                  "a job of " + std::to_string(rank->world) + " ranks (" + rank->source +
                      ") writes one directory OUT together; it cannot stream to stdout or "
                      "--pipe-to (run one process for those)");
  return rank;
}

// Whether a word of `command` names a file (a script the command runs, say) that mentions
// SHARDSHIFT_NAME in its first 64 KiB: the command line cannot show that the script names the file.
bool runs_a_script_naming_the_file(const std::string& command) {
  std::istringstream words(command);
  for (std::string word; words >> word;) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(word, ec))
      continue;
    std::ifstream in(word, std::ios::binary);
    std::string head(64 * 1024, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<size_t>(in.gcount()));
    if (head.find("SHARDSHIFT_NAME") != std::string::npos)
      return true;
  }
  return false;
}

// Several files into one --pipe-to command line that names none of them: each would go to the
// same place (`cat > model.bin` keeps only the last). Legal, but said, unless a script the
// command runs reads $SHARDSHIFT_NAME.
void warn_if_no_file_named(const ConvertOptions& options, const Plan& plan,
                           const ConvertCallbacks& callbacks) {
  const size_t delivered = plan.files.size() + plan.side_files.size() + (plan.write_index ? 1 : 0);
  if (options.pipe_to.empty() || delivered < 2 || !callbacks.warnings ||
      options.pipe_to.find("{name}") != std::string::npos ||
      options.pipe_to.find("SHARDSHIFT_NAME") != std::string::npos ||
      runs_a_script_naming_the_file(options.pipe_to))
    return;
  callbacks.warnings({"--pipe-to: the command names no file ({name}, or $SHARDSHIFT_NAME in its "
                      "environment), and this conversion delivers " +
                      std::to_string(delivered) +
                      " files: each is handed to the same command line (cat > FILE would keep "
                      "the last one only)"});
}

// OUT '-' without --only or --format tar streams the one tensor file alone: the side files that
// a directory would get (config.json, ...) are not written anywhere. Legal, but said.
void warn_if_stream_drops_files(const ConvertOptions& options, const Plan& plan,
                                const ConvertCallbacks& callbacks) {
  if (!is_stream(options) || options.format == OutputFormat::tar || !options.only.empty() ||
      plan.files.size() != 1 || plan.side_files.empty() || !callbacks.warnings)
    return;
  std::string names;
  for (const std::string& name : plan.side_files)
    names += (names.empty() ? "" : ", ") + printable(name);
  callbacks.warnings({"OUT '-' streams " + plan.files[0].name + " alone; the side files (" + names +
                      ") are not written: pass --format tar to stream them with it, or --only "
                      "NAME to stream one of them"});
}

} // namespace

Result<ConvertSummary> convert(const ConvertOptions& options, const ConvertCallbacks& callbacks,
                               Profiler* external_profiler) {
  if (fs::path out = without_trailing_slashes(options.output); out != options.output) {
    ConvertOptions same = options;
    same.output = std::move(out);
    return convert(same, callbacks, external_profiler);
  }
  // Files a stopped run removed but still holds (discard.h) are let go however it ends.
  struct ReleaseDiscarded {
    ~ReleaseDiscarded() { release_discarded(); }
  } release_at_end;
  Profiler local_profiler(options.trace);
  Profiler& profiler = external_profiler ? *external_profiler : local_profiler;
  NoSyncIo no_sync_io(options.io ? *options.io : Io::system());
  Io& base_io = !options.sync ? no_sync_io : options.io ? *options.io : Io::system();
  // OUT '-': stdout, or when it is a pipe a description of its own that a stalled reader never
  // keeps a stopped run waiting on (stream_fd.h).
  const StreamDescriptor out(is_stream(options) ? STDOUT_FILENO : -1);
  CountingIo to_stdout(base_io, out.fd());
  Io& io = is_stream(options) ? to_stdout : base_io;

  // 1. Check OUT, open and validate the input, plan the output. Nothing is written before this.
  auto rank = check_options(options);
  if (!rank)
    return rank.status();
  auto opened =
      open_and_plan(options.input, options.plan, options.max_memory, callbacks.warnings, profiler);
  if (!opened)
    return opened.status();
  const Checkpoint& input = opened->input;
  const Plan& plan = opened->plan;
  if (callbacks.planned)
    callbacks.planned(plan);
  warn_if_no_file_named(options, plan, callbacks);
  warn_if_stream_drops_files(options, plan, callbacks);

  // 2. Size the pipeline from the memory budget; pick the device and the writer lanes.
  const unsigned threads =
      options.threads ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  // With --pipe-to, a lane spends its time waiting on its command (an upload's pace), in its
  // write stage and, for its next file, in its first: two threads more per upload, so that
  // --uploads commands run at once whatever -j is.
  const unsigned pool = options.pipe_to.empty() ? threads : threads + 2 * options.uploads;
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, pool);
  // The parsed headers and the plan are part of the budget too (they grow with the tensor count).
  auto engine = configure_engine(options, threads, plan.files.size(), plan_dequantizes(plan), io,
                                 callbacks, opened->held, &profiler);
  if (!engine)
    return engine.status();
  // The default arena has one thread per core this process may use (its affinity): enough for
  // work, not for lanes that wait on uploads.
  if (!options.pipe_to.empty() && pool > static_cast<unsigned>(tbb::info::default_concurrency()))
    engine->config.arena_threads = pool;
  engine->config.file_at_a_time = !options.pipe_to.empty();

  // 3. Move the bytes: into OUT (which first clears, or with --resume continues, what killed
  // runs into it left; with several ranks, this rank's share: job.h), one file to stdout, or
  // every file into its own command.
  std::vector<std::string> digests(plan.files.size());
  if (options.checksums)
    engine->config.digests = &digests;
  uint64_t tensors = plan.tensors.size(), files = plan.files.size();
  const bool tar = options.format == OutputFormat::tar;
  Result<UploadResult> moved =
      !options.pipe_to.empty()
          ? upload_outputs(options.pipe_to, options.pipe_to_stdout_to_stderr, input, plan,
                           engine->config, io, profiler, callbacks.delivered)
      : tar ? stream_tar(options, input, plan, engine->config, io, out.fd(), profiler)
      : is_stream(options)
          ? stream_one_file(options, input, plan, engine->config, io, out.fd(), profiler, &tensors)
      : rank->world > 1
          ? write_directory_as_rank(options, input, plan, engine->config, io, profiler, *rank,
                                    callbacks.warnings)
          : write_directory(options, input, plan, engine->config, io, profiler, callbacks.warnings);
  if (!moved)
    return is_stream(options) ? stream_failure(moved.status(), to_stdout.count(), tar)
                              : moved.status();
  if (is_stream(options) && !tar)
    files = 1;
  ConvertSummary summary = summarize(plan, *moved, *engine, tensors, files, profiler);
  if (rank->world > 1)
    summary.rank = "rank " + std::to_string(rank->rank) + " of " + std::to_string(rank->world) +
                   " (" + rank->source + ", coordinated through " +
                   (coordinates_through_mpi(*rank) ? "MPI" : "marker files") + ")";
  return summary;
}

} // namespace shardshift
