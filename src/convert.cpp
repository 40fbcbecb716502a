// convert.cpp: the driver. Read it top to bottom: open, plan, stage, pipeline, side files, index,
// commit. Where a tensor's bytes go is decided in planner.cpp and moved in pipeline.cpp.
#include "shardshift/convert.h"

#include "shardshift/shard_writer.h"

#include "cuda_transform.h"
#include "pipeline.h"
#include "transpose.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>
#include <unistd.h>

#include <tbb/global_control.h>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

// Where the output is built before it is renamed into place: beside it, so the rename is atomic.
fs::path staging_path(const fs::path& output, const char* what) {
  std::random_device rd;
  return output.parent_path() / ("." + output.filename().string() + ".shardshift-" + what + "-" +
                                 std::to_string(getpid()) + "-" + std::to_string(rd() % 100000));
}

bool is_stream(const ConvertOptions& o) {
  return o.output == "-";
}

// --no-sync: the kernel's I/O without fsync. Files are still written to temporary names and
// renamed, so a crash cannot leave a half-written file under a final name, but a power loss may
// lose data the page cache had not written yet.
class NoSyncIo final : public ForwardingIo {
public:
  using ForwardingIo::ForwardingIo;
  int fsync(int) override { return 0; }
};

Status check_output(const ConvertOptions& o) {
  if (is_stream(o)) {
    if (isatty(STDOUT_FILENO))
      return Status(
          Errc::invalid_argument,
          "refusing to write safetensors data to a terminal; pipe it (OUT '-' is stdout)");
    return {};
  }
  if (!o.only.empty())
    return Status(Errc::invalid_argument, "--only streams one file and needs OUT '-' (stdout)");
  std::error_code ec;
  fs::path out = fs::absolute(o.output, ec);
  fs::path in = fs::absolute(o.input, ec);
  if (fs::exists(out, ec)) {
    if (fs::equivalent(out, in, ec) ||
        (fs::is_regular_file(in, ec) && fs::equivalent(out, in.parent_path(), ec)))
      return Status(Errc::invalid_argument,
                    o.output.string() + ": the output must not be the input");
    if (!o.force)
      return Status(Errc::invalid_argument,
                    o.output.string() + ": already exists; pass --force to replace it");
    if (!fs::is_directory(out, ec))
      return Status(Errc::invalid_argument, o.output.string() + ": exists and is not a directory");
  }
  fs::path parent = out.parent_path();
  if (!fs::is_directory(parent, ec))
    return Status(Errc::invalid_argument,
                  parent.string() + ": the output's parent directory does not exist");
  return {};
}

// Opens the CUDA stage when the device option asks for (or allows) it; nullptr means CPU.
Result<std::unique_ptr<CudaTransformer>> open_device(const std::string& device, uint64_t chunk,
                                                     unsigned slots, std::string* description) {
  *description = std::string("cpu (") + simd_level_name(detect_simd_level()) + ")";
  if (device == "cpu")
    return std::unique_ptr<CudaTransformer>();
  int ordinal = 0;
  if (device.starts_with("cuda:"))
    ordinal = std::atoi(device.c_str() + 5);
  else if (device != "cuda" && device != "auto")
    return Status(Errc::invalid_argument,
                  "--device '" + device + "': use auto, cpu, cuda or cuda:N");
  const int count = CudaTransformer::device_count();
  if (count == 0) {
    if (device == "auto")
      return std::unique_ptr<CudaTransformer>();
    return Status(Errc::cuda, "--device " + device +
                                  ": no usable CUDA GPU (no driver, no device, or built without "
                                  "CUDA); use --device cpu or auto");
  }
  if (ordinal < 0 || ordinal >= count)
    return Status(Errc::invalid_argument, "--device " + device + ": there are " +
                                              std::to_string(count) +
                                              " CUDA device(s), numbered from 0");
  auto gpu = CudaTransformer::create(ordinal, chunk, slots);
  if (!gpu) {
    if (device == "auto")
      return std::unique_ptr<CudaTransformer>(); // usable GPU or fall back
    return gpu.status();
  }
  *description = "cuda:" + std::to_string(ordinal) + " (" + (*gpu)->device_name() + ")";
  return std::move(gpu.value());
}

Status copy_side_files(Io& io, const Checkpoint& input, const Plan& plan, const fs::path& dir) {
  for (const std::string& name : plan.side_files) {
    std::ifstream in(input.root / name, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof())
      return Status(Errc::io, (input.root / name).string() + ": cannot read side file");
    Status s = write_file_atomic(io, dir / name, std::as_bytes(std::span(bytes)));
    if (!s.ok())
      return s;
  }
  return {};
}

// Renames the finished staging directory to the output, replacing an old output when forced.
Status commit_output(Io& io, const fs::path& staging, const fs::path& output, bool force) {
  std::error_code ec;
  fs::path old;
  if (force && fs::exists(output, ec)) {
    old = staging_path(output, "old");
    if (io.rename(output.c_str(), old.c_str()) != 0)
      return Status(Errc::io,
                    output.string() + ": cannot move the old output aside: " + errno_text(errno));
  }
  if (io.rename(staging.c_str(), output.c_str()) != 0) {
    Status s(Errc::io, output.string() +
                           ": cannot rename the finished output into place: " + errno_text(errno));
    if (!old.empty())
      io.rename(old.c_str(), output.c_str());
    return s;
  }
  if (!old.empty())
    remove_tree(io, old).ignore(); // the new output is in place; a leftover is only clutter
  return sync_directory(io, fs::absolute(output).parent_path());
}

// Which file of the plan a stream writes: --only NAME, or the single output file.
Result<std::string> stream_target(const Plan& plan, const std::string& only) {
  if (!only.empty())
    return only;
  if (plan.files.size() == 1)
    return plan.files[0].name;
  std::string names;
  for (auto& f : plan.files)
    names += (names.empty() ? "" : ", ") + f.name;
  return Status(Errc::invalid_argument,
                "the output has " + std::to_string(plan.files.size()) +
                    " files and OUT '-' streams one: pass --only NAME with one of " + names +
                    ", model.safetensors.index.json or a side file (sizes: shardshift plan IN "
                    "--print-size)");
}

Status write_all(Io& io, int fd, std::string_view bytes, const std::string& name) {
  while (!bytes.empty()) {
    ssize_t n = io.write(fd, bytes.data(), std::min<size_t>(bytes.size(), MAX_IO_CHUNK));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return Status(errno == EPIPE ? Errc::broken_pipe : Errc::io,
                    name + ": cannot write to stdout: " + errno_text(errno));
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

// Streams the index or a side file (small files) to fd.
Status stream_small_file(Io& io, int fd, const Checkpoint& input, const Plan& plan,
                         const std::string& name) {
  if (name == INDEX_FILE_NAME) {
    if (!plan.write_index)
      return Status(Errc::invalid_argument,
                    "--only " + name + ": this output is a single file and has no index");
    auto text = index_json(plan.total_tensor_bytes, plan.weight_map);
    if (!text)
      return text.status();
    return write_all(io, fd, *text, name);
  }
  std::ifstream in(input.root / name, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof())
    return Status(Errc::io, (input.root / name).string() + ": cannot read");
  return write_all(io, fd, bytes, name);
}

} // namespace

Result<Plan> plan_conversion(const fs::path& input, const PlanOptions& options) {
  auto checkpoint = Checkpoint::open(input);
  if (!checkpoint)
    return checkpoint.status();
  return make_plan(*checkpoint, options);
}

Result<ConvertSummary> convert(const ConvertOptions& options, const ConvertCallbacks& callbacks,
                               Profiler* external_profiler) {
  Profiler local_profiler(options.trace);
  Profiler& profiler = external_profiler ? *external_profiler : local_profiler;
  NoSyncIo no_sync_io(options.io ? *options.io : Io::system());
  Io& io = !options.sync ? no_sync_io : options.io ? *options.io : Io::system();
  const uint64_t plan_t0 = profiler.now();

  // 1. Open and validate the input; plan the output. Nothing is written before this succeeds.
  if (Status s = check_output(options); !s.ok())
    return s;
  auto opened = Checkpoint::open(options.input);
  if (!opened)
    return opened.status();
  const Checkpoint& input = *opened;
  auto planned = make_plan(input, options.plan);
  if (!planned)
    return planned.status();
  const Plan& plan = *planned;
  if (callbacks.planned)
    callbacks.planned(plan);
  profiler.record(Stage::plan, plan_t0, profiler.now(), 0);

  // 2. Size the pipeline from the memory budget and pick the device.
  const unsigned threads =
      options.threads ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, threads);
  PipelineConfig config;
  // The GPU stage is bound by host memory traffic (each byte is staged into pinned memory, then
  // uploaded and downloaded), so it wants about one staging slot per core doing those copies.
  const unsigned gpu_slots = options.device == "cpu" ? 0 : std::clamp(threads, 2u, 16u);
  size_pipeline(options.max_memory, threads, gpu_slots, &config.chunk_bytes, &config.tokens);
  std::string device;
  auto gpu = open_device(options.device, config.chunk_bytes, gpu_slots, &device);
  if (!gpu)
    return gpu.status();
  if (!*gpu)
    size_pipeline(options.max_memory, threads, 0, &config.chunk_bytes, &config.tokens);
  config.gpu = gpu->get();
  config.io = &io;
  config.cancel = options.cancel;
  config.progress = callbacks.progress;

  Result<PipelineResult> moved = PipelineResult{};
  uint64_t streamed_tensors = 0;
  if (is_stream(options)) {
    // 3'. Stream one output file to stdout (for uploads that never land on local disk). There is
    // nothing to commit: a failure shows as the exit code, and the reader must discard the data.
    auto target = stream_target(plan, options.only);
    if (!target)
      return target.status();
    auto file = std::find_if(plan.files.begin(), plan.files.end(),
                             [&](const OutputFile& f) { return f.name == *target; });
    if (file == plan.files.end()) {
      bool side = std::find(plan.side_files.begin(), plan.side_files.end(), *target) !=
                  plan.side_files.end();
      if (!side && *target != INDEX_FILE_NAME)
        return Status(Errc::invalid_argument, "--only " + *target +
                                                  ": the output has no such file (see "
                                                  "shardshift plan IN --print-size)");
      if (Status s = stream_small_file(io, STDOUT_FILENO, input, plan, *target); !s.ok())
        return s;
    } else {
      streamed_tensors = file->tensors.size();
      config.stream_fd = STDOUT_FILENO;
      config.only_file = static_cast<uint32_t>(file - plan.files.begin());
      moved = run_pipeline(input, plan, {}, config, profiler);
      if (!moved)
        return moved.status();
    }
  } else {
    // 3. Build the output in a staging directory beside it; remove it on any failure.
    const fs::path output = fs::absolute(options.output);
    const fs::path staging = staging_path(output, "tmp");
    if (io.mkdir(staging.c_str(), 0777) != 0)
      return Status(Errc::io, staging.string() +
                                  ": cannot create the staging directory: " + errno_text(errno));
    struct Cleanup {
      Io& io;
      fs::path dir;
      bool armed = true;
      ~Cleanup() {
        if (armed)
          remove_tree(io, dir).ignore(); // the failure being reported matters more
      }
    } cleanup{io, staging};

    moved = run_pipeline(input, plan, staging, config, profiler);
    if (!moved)
      return moved.status();
    if (options.cancel && options.cancel->load())
      return Status(Errc::interrupted, "interrupted");

    // 4. Side files, then the index (the commit point of a sharded checkpoint), then the rename.
    const uint64_t c0 = profiler.now();
    if (Status s = copy_side_files(io, input, plan, staging); !s.ok())
      return s;
    if (plan.write_index)
      if (Status s = write_index(io, staging, plan.total_tensor_bytes, plan.weight_map); !s.ok())
        return s;
    if (Status s = commit_output(io, staging, output, options.force); !s.ok())
      return s;
    cleanup.armed = false;
    profiler.record(Stage::commit, c0, profiler.now(), 0);
  }

  ConvertSummary sum;
  sum.adapter = plan.adapter;
  sum.direction = plan.direction;
  sum.device = device;
  sum.tensors = is_stream(options) ? streamed_tensors : plan.tensors.size();
  sum.files = is_stream(options) ? 1 : plan.files.size();
  sum.output_bytes = moved->output_bytes;
  sum.zero_copy_bytes = moved->zero_copy_bytes;
  sum.fallback_copy_bytes = moved->fallback_copy_bytes;
  sum.cpu_bytes = moved->cpu_bytes;
  sum.gpu_bytes = moved->gpu_bytes;
  sum.transformed_bytes = moved->cpu_bytes + moved->gpu_bytes + moved->ones_bytes;
  sum.dropped = plan.dropped;
  sum.excluded = plan.excluded;
  sum.chunk_bytes = config.chunk_bytes;
  sum.tokens = config.tokens;
  sum.seconds = static_cast<double>(profiler.now()) / 1e9;
  sum.peak_rss = peak_rss_bytes();
  sum.stages = profiler.summaries();
  return sum;
}

} // namespace shardshift
