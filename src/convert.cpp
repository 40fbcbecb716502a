// convert.cpp: the driver. Read it top to bottom: open, plan, stage, pipeline, side files, index,
// commit. Where a tensor's bytes go is decided in planner.cpp and moved in pipeline.cpp.
#include "shardshift/convert.h"

#include "shardshift/shard_writer.h"

#include "cuda_transform.h"
#include "pipeline.h"
#include "sha256.h"
#include "side_files.h"
#include "tar_target.h"
#include "transpose.h"
#include "upload.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <numeric>
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

// Counts the bytes that reach one descriptor (stdout), so that a stream cut short can say how much
// of it went out: a reader must discard all of it, and knowing how far it got tells which.
class CountingIo final : public ForwardingIo {
public:
  CountingIo(Io& base, int fd) : ForwardingIo(base), fd_(fd) {}
  ssize_t write(int fd, const void* buf, size_t count) override {
    return counted(fd, ForwardingIo::write(fd, buf, count));
  }
  ssize_t splice(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len) override {
    return counted(fd_out, ForwardingIo::splice(fd_in, off_in, fd_out, off_out, len));
  }
  uint64_t count() const { return count_.load(); }

private:
  ssize_t counted(int fd, ssize_t n) {
    if (fd == fd_ && n > 0)
      count_ += static_cast<uint64_t>(n);
    return n;
  }
  int fd_;
  std::atomic<uint64_t> count_{0};
};

// What the marker file of an output directory says (OUTPUT_MARKER_NAME). Fixed text, so that
// outputs stay byte-identical from run to run; the number is the marker's format version.
constexpr std::string_view OUTPUT_MARKER_TEXT =
    "shardshift-output 1\n"
    "This directory was written by shardshift convert; convert --force may replace it.\n";

// `p` absolute, with every symlink of the part that exists resolved, normalized, and without a
// trailing separator: two spellings of one place compare equal.
fs::path real_path(const fs::path& p) {
  std::error_code ec;
  fs::path abs = fs::absolute(p, ec);
  fs::path real = fs::weakly_canonical(abs, ec);
  if (ec)
    real = abs.lexically_normal();
  if (!real.has_filename() && real.has_relative_path())
    real = real.parent_path();
  return real;
}

// Whether `inner` is `outer` or lies below it (both real paths).
bool is_within(const fs::path& inner, const fs::path& outer) {
  auto [o, i] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
  return o == outer.end();
}

// Everything the conversion reads: IN, and for a directory each entry in it with its links
// resolved (hub caches link shards into a blobs/ directory elsewhere).
std::vector<fs::path> input_paths(const fs::path& input) {
  std::vector<fs::path> paths{real_path(input)};
  std::error_code ec;
  if (fs::is_directory(input, ec))
    for (fs::directory_iterator it(input, ec), end; !ec && it != end; it.increment(ec))
      paths.push_back(real_path(it->path()));
  return paths;
}

// No flag may let the output replace, or be written into, what the conversion reads.
Status check_not_input(const ConvertOptions& o) {
  const fs::path out = real_path(o.output);
  const std::string name = o.output.string();
  std::error_code ec;
  for (const fs::path& in : input_paths(o.input)) {
    if (is_within(in, out) || fs::equivalent(out, in, ec))
      return Status(Errc::invalid_argument,
                    name + ": the output must not be the input or contain it (" + in.string() +
                        " is read by this conversion); choose another OUT");
    if (is_within(out, in))
      return Status(Errc::invalid_argument, name + ": the output must not lie inside the input " +
                                                in.string() + "; choose an OUT outside it");
  }
  return {};
}

// --force replaces only what shardshift can tell it wrote: a directory holding its marker (a
// regular file, not a link, in the format it writes), or an empty directory (nothing to lose).
Status check_replaceable(const fs::path& output) {
  std::error_code ec;
  if (fs::is_symlink(fs::symlink_status(output, ec))) // replacing it would move the link only
    return Status(Errc::invalid_argument, output.string() + ": is a symbolic link; --force "
                                                            "replaces only a real directory");
  const fs::path marker = output / OUTPUT_MARKER_NAME;
  if (fs::is_regular_file(fs::symlink_status(marker, ec))) {
    std::ifstream in(marker, std::ios::binary);
    std::string first_line;
    std::getline(in, first_line);
    if (first_line.starts_with("shardshift-output "))
      return {};
  } else if (fs::is_empty(output, ec) && !ec) {
    return {};
  }
  return Status(Errc::invalid_argument,
                output.string() + ": exists and is not a previous shardshift output (it has no " +
                    OUTPUT_MARKER_NAME +
                    " file), so --force will not replace it; remove it yourself or choose "
                    "another OUT");
}

Status check_output(const ConvertOptions& o) {
  if (!o.pipe_to.empty()) {
    if (!o.output.empty())
      return Status(Errc::invalid_argument,
                    "--pipe-to delivers every file to its command: give no OUT with it");
    if (!o.only.empty())
      return Status(Errc::invalid_argument, "--only streams one file to stdout; --pipe-to "
                                            "delivers every file: use one of them");
    if (o.format == OutputFormat::tar)
      return Status(Errc::invalid_argument, "--format tar streams the whole output to stdout; "
                                            "--pipe-to delivers each file: use one of them");
    return {};
  }
  if (o.format == OutputFormat::tar) {
    if (!is_stream(o))
      return Status(Errc::invalid_argument,
                    "--format tar writes the output as one stream to stdout: give OUT '-'");
    if (!o.only.empty())
      return Status(Errc::invalid_argument, "--only streams one file; --format tar streams every "
                                            "file: use one of them");
  }
  if (is_stream(o)) {
    if (isatty(STDOUT_FILENO))
      return Status(
          Errc::invalid_argument,
          "refusing to write safetensors data to a terminal; pipe it (OUT '-' is stdout)");
    return {};
  }
  if (!o.only.empty())
    return Status(Errc::invalid_argument, "--only streams one file and needs OUT '-' (stdout)");
  if (Status s = check_not_input(o); !s.ok())
    return s;

  // Everything about OUT that would otherwise fail at the final rename fails now, before any
  // byte is written.
  std::error_code ec;
  const fs::path out = fs::absolute(o.output, ec);
  const std::string name = o.output.string();
  const fs::file_status st = fs::symlink_status(out, ec);
  if (fs::is_symlink(st)) {
    std::error_code link_ec;
    const fs::path target = fs::read_symlink(out, link_ec);
    const bool dangling = !fs::exists(fs::status(out, link_ec));
    // The final rename would replace the link itself, not what it points to.
    return Status(Errc::invalid_argument,
                  name + ": is a symbolic link (to '" + target.string() + "'" +
                      (dangling ? ", which does not exist" : "") +
                      "); give the real path of the output directory instead");
  }
  if (fs::exists(st)) {
    if (!fs::is_directory(st))
      return Status(Errc::invalid_argument,
                    name + ": exists and is not a directory; remove it or choose another OUT");
    if (!o.force)
      return Status(Errc::invalid_argument, name + ": already exists; pass --force to replace it");
    if (Status s = check_replaceable(out); !s.ok())
      return s;
  }
  fs::path parent = out.parent_path();
  if (!fs::is_directory(parent, ec))
    return Status(Errc::invalid_argument,
                  parent.string() + ": the output's parent directory does not exist");
  // The staging directory and the final rename both need to write the parent.
  if (access(parent.c_str(), W_OK | X_OK) != 0)
    return Status(Errc::io, parent.string() + ": cannot create the output in this directory: " +
                                errno_text(errno));
  return {};
}

// Opens the CUDA stage when the device option asks for (or allows) it; nullptr means CPU.
Result<std::unique_ptr<CudaTransformer>> open_device(const std::string& device, unsigned threads,
                                                     uint64_t chunk, unsigned slots,
                                                     std::string* description) {
  *description = std::string("cpu (") + simd_level_name(detect_simd_level()) + ")";
  if (device == "cpu")
    return std::unique_ptr<CudaTransformer>();
  int ordinal = 0;
  if (device.starts_with("cuda:")) {
    // Digits only: "cuda:x" or "cuda:1a" is a usage error, not GPU 0 or 1.
    const std::string digits = device.substr(5);
    if (digits.empty() || digits.size() > 4 ||
        digits.find_first_not_of("0123456789") != std::string::npos)
      return Status(Errc::invalid_argument,
                    "--device '" + device + "': use auto, cpu, cuda or cuda:N (N a GPU number)");
    ordinal = std::stoi(digits);
  } else if (device != "cuda" && device != "auto") {
    return Status(Errc::invalid_argument,
                  "--device '" + device + "': use auto, cpu, cuda or cuda:N");
  }
  // auto: the GPU only where it was measured to make a conversion faster (docs/PERFORMANCE.md,
  // "GPU or CPU"). Its stage costs a pipeline thread a copy of each chunk into pinned memory plus
  // the wait for the transfers, which is more than the AVX2/AVX-512 kernel costs once there are
  // 4 or more threads; with 2 threads, or a CPU that only has the portable kernel, it helps.
  if (device == "auto" && threads > 2 && detect_simd_level() != SimdLevel::portable)
    return std::unique_ptr<CudaTransformer>();
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

// Side files, copied verbatim as streams (side_files.h); with `sums`, their SHA-256 is added.
Status copy_side_files(Io& io, const Checkpoint& input, const Plan& plan, const fs::path& dir,
                       uint64_t chunk, std::vector<std::pair<std::string, std::string>>* sums) {
  DirectoryTarget target(dir, &io);
  for (const std::string& name : plan.side_files) {
    std::string digest;
    if (Status s = deliver_side_file(target, io, input, name, chunk, sums ? &digest : nullptr);
        !s.ok())
      return s;
    if (sums)
      sums->emplace_back(name, digest);
  }
  return {};
}

// Marks the finished staging directory as shardshift's and renames it to the output, replacing
// an old output when forced.
Status commit_output(Io& io, const fs::path& staging, const fs::path& output, bool force) {
  // Written last, so only a complete output carries the marker that lets --force replace it.
  if (Status s = write_file_atomic(io, staging / OUTPUT_MARKER_NAME,
                                   std::as_bytes(std::span(OUTPUT_MARKER_TEXT)));
      !s.ok())
    return s;
  std::error_code ec;
  fs::path old;
  if (force && fs::exists(fs::symlink_status(output, ec))) {
    // check_output proved this when the run began; the run can take minutes, so again now.
    if (Status s = check_replaceable(output); !s.ok())
      return s;
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

// The N of "model-00002-of-0000N.safetensors", the names the planner gives the shards of a plan
// of N files; 0 for any other name.
size_t shard_count_in_name(const std::string& name) {
  constexpr std::string_view SUFFIX = ".safetensors";
  const size_t of = name.rfind("-of-");
  if (of == std::string::npos || !name.ends_with(SUFFIX))
    return 0;
  const std::string digits = name.substr(of + 4, name.size() - SUFFIX.size() - of - 4);
  if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != digits.npos)
    return 0;
  return std::stoul(digits);
}

// --only NAME that the plan does not have. A shard name of another count means the plan it was
// copied from (`shardshift plan --print-size`) was made with other flags, --max-shard-size most
// often, and converting with these would not give the file that was asked for.
Status not_in_plan(const Plan& plan, const std::string& name) {
  const size_t count = shard_count_in_name(name);
  const std::string files = std::to_string(plan.files.size()) +
                            (plan.files.size() == 1 ? " file (" : " files (") +
                            plan.files.front().name + (plan.files.size() > 1 ? ", ...)" : ")");
  if (count > 0 && count != plan.files.size())
    return Status(Errc::invalid_argument,
                  "--only " + name + ": not in this plan, which has " + files +
                      "; that name comes from a plan of " + std::to_string(count) +
                      " files: pass the same --max-shard-size as to `shardshift plan` (and the "
                      "same --dtype, --exclude, --no-tied-head and --ep-* flags)");
  return Status(Errc::invalid_argument, "--only " + name + ": not in this plan, which has " +
                                            files +
                                            " and no such file (see shardshift plan IN "
                                            "--print-size with the same flags)");
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
                         const std::string& name, uint64_t chunk) {
  if (name == INDEX_FILE_NAME) {
    if (!plan.write_index)
      return Status(Errc::invalid_argument,
                    "--only " + name + ": this output is a single file and has no index");
    auto text = index_json(plan.total_tensor_bytes, plan.weight_map);
    if (!text)
      return text.status();
    return write_all(io, fd, *text, name);
  }
  StreamTarget target(fd);
  return deliver_side_file(target, io, input, name, chunk, nullptr);
}

// The pipeline's shape for this run: threads, writer lanes, chunks and tokens from the memory
// budget, and the device (a GPU's staging slots come out of the same budget).
struct Engine {
  PipelineConfig config;
  std::unique_ptr<CudaTransformer> gpu;
  std::string device; ///< for the summary: "cpu (avx512)", "cuda:0 (NVIDIA H200)"
};

Result<Engine> configure_engine(const ConvertOptions& options, unsigned threads, size_t files,
                                Io& io, const ConvertCallbacks& callbacks) {
  Engine e;
  PipelineConfig& c = e.config;
  c.writers = options.writers ? options.writers : default_writers(threads, files);
  if (!options.pipe_to.empty()) // each lane feeds one command: --uploads of them at once
    c.writers = options.uploads ? options.uploads : 4;
  if (options.format == OutputFormat::tar) // one stream, its entries in order
    c.writers = 1;
  c.writers =
      static_cast<unsigned>(std::clamp<size_t>(files, 1, c.writers)); // a lane per file at most
  // The GPU stage is bound by host memory traffic (each byte is staged into pinned memory, then
  // uploaded and downloaded), so it wants about one staging slot per core doing those copies.
  const unsigned gpu_slots = options.device == "cpu" ? 0 : std::clamp(threads, 2u, 16u);
  size_pipeline(options.max_memory, threads, gpu_slots, c.writers, &c.chunk_bytes, &c.tokens);
  auto gpu = open_device(options.device, threads, c.chunk_bytes, gpu_slots, &e.device);
  if (!gpu)
    return gpu.status();
  e.gpu = std::move(gpu.value());
  if (!e.gpu)
    size_pipeline(options.max_memory, threads, 0, c.writers, &c.chunk_bytes, &c.tokens);
  c.gpu = e.gpu.get();
  c.io = &io;
  c.cancel = options.cancel;
  c.progress = callbacks.progress;
  return e;
}

// OUT '-': one output file to stdout, for uploads that never land on local disk. There is nothing
// to commit: a failure shows as the exit code, and the reader must discard the data.
Result<UploadResult> stream_one_file(const ConvertOptions& options, const Checkpoint& input,
                                     const Plan& plan, const PipelineConfig& config, Io& io,
                                     Profiler& profiler, uint64_t* tensors) {
  auto target = stream_target(plan, options.only);
  if (!target)
    return target.status();
  auto file = std::find_if(plan.files.begin(), plan.files.end(),
                           [&](const OutputFile& f) { return f.name == *target; });
  if (file == plan.files.end()) {
    const bool side =
        std::find(plan.side_files.begin(), plan.side_files.end(), *target) != plan.side_files.end();
    if (!side && *target != INDEX_FILE_NAME)
      return not_in_plan(plan, *target);
    if (Status s = stream_small_file(io, STDOUT_FILENO, input, plan, *target, config.chunk_bytes);
        !s.ok())
      return s;
    return UploadResult{};
  }
  *tensors = file->tensors.size();
  const uint32_t only[] = {static_cast<uint32_t>(file - plan.files.begin())};
  StreamTarget stdout_target(STDOUT_FILENO);
  auto moved = run_pipeline(input, plan, only, stdout_target, config, profiler);
  if (!moved)
    return moved.status();
  UploadResult r;
  r.moved = *moved;
  if (config.digests)
    r.checksums.emplace_back(file->name, (*config.digests)[only[0]]);
  return r;
}

// OUT a directory: build it in a staging directory beside it, then side files, the index (the
// commit point of a sharded checkpoint) and one rename. The staging directory is removed on any
// failure, so OUT appears whole or not at all.
Result<UploadResult> write_directory(const ConvertOptions& options, const Checkpoint& input,
                                     const Plan& plan, const PipelineConfig& config, Io& io,
                                     Profiler& profiler) {
  const fs::path output = fs::absolute(options.output);
  const fs::path staging = staging_path(output, "tmp");
  if (io.mkdir(staging.c_str(), 0777) != 0)
    return Status(Errc::io,
                  staging.string() + ": cannot create the staging directory: " + errno_text(errno));
  struct Cleanup {
    Io& io;
    fs::path dir;
    bool armed = true;
    ~Cleanup() {
      if (armed)
        remove_tree(io, dir).ignore(); // the failure being reported matters more
    }
  } cleanup{io, staging};

  std::vector<uint32_t> files(plan.files.size());
  std::iota(files.begin(), files.end(), 0u);
  DirectoryTarget target(staging);
  auto moved = run_pipeline(input, plan, files, target, config, profiler);
  if (!moved)
    return moved.status();
  if (options.cancel && options.cancel->load())
    return Status(Errc::interrupted, "interrupted");

  UploadResult r;
  r.moved = *moved;
  auto* sums = config.digests ? &r.checksums : nullptr;
  if (sums)
    for (size_t f = 0; f < plan.files.size(); ++f)
      sums->emplace_back(plan.files[f].name, (*config.digests)[f]);
  const uint64_t c0 = profiler.now();
  if (Status s = copy_side_files(io, input, plan, staging, config.chunk_bytes, sums); !s.ok())
    return s;
  if (plan.write_index) {
    auto text = index_json(plan.total_tensor_bytes, plan.weight_map);
    if (!text)
      return text.status();
    if (sums)
      sums->emplace_back(INDEX_FILE_NAME, sha256_hex(std::as_bytes(std::span(*text))));
    if (Status s = write_index(io, staging, plan.total_tensor_bytes, plan.weight_map); !s.ok())
      return s;
  }
  if (sums) {
    const std::string text = sha256sums_text(*sums);
    if (Status s = write_file_atomic(io, staging / "SHA256SUMS", std::as_bytes(std::span(text)));
        !s.ok())
      return s;
  }
  if (Status s = commit_output(io, staging, output, options.force); !s.ok())
    return s;
  cleanup.armed = false;
  profiler.record(Stage::commit, c0, profiler.now(), 0);
  return r;
}

// The entries of the tar stream, in the order that keeps every prefix of it consistent: the shards
// (one lane, in plan order), the side files, SHA256SUMS and the index last, then the end blocks.
Result<UploadResult> tar_entries(TarTarget& target, const ConvertOptions& options,
                                 const Checkpoint& input, const Plan& plan,
                                 const PipelineConfig& config, Io& io, Profiler& profiler) {
  std::vector<uint32_t> files(plan.files.size());
  std::iota(files.begin(), files.end(), 0u);
  auto moved = run_pipeline(input, plan, files, target, config, profiler);
  if (!moved)
    return moved.status();
  auto cancelled = [&] { return options.cancel && options.cancel->load(); };
  if (cancelled())
    return Status(Errc::interrupted, "interrupted");

  UploadResult r;
  r.moved = *moved;
  auto* sums = config.digests ? &r.checksums : nullptr;
  if (sums)
    for (size_t f = 0; f < plan.files.size(); ++f)
      sums->emplace_back(plan.files[f].name, (*config.digests)[f]);
  auto deliver = [&](const std::string& name, std::string_view bytes) {
    if (cancelled())
      return Status(Errc::interrupted, "interrupted");
    r.moved.output_bytes += bytes.size();
    return target.deliver(name, bytes);
  };
  for (const std::string& name : plan.side_files) {
    if (cancelled())
      return Status(Errc::interrupted, "interrupted");
    std::string digest;
    if (Status s = deliver_side_file(target, io, input, name, config.chunk_bytes,
                                     sums ? &digest : nullptr, &r.moved.output_bytes);
        !s.ok())
      return s;
    if (sums)
      sums->emplace_back(name, digest);
  }
  std::string index;
  if (plan.write_index) {
    auto text = index_json(plan.total_tensor_bytes, plan.weight_map);
    if (!text)
      return text.status();
    index = std::move(*text);
    if (sums) // SHA256SUMS, which comes first, lists the index too
      sums->emplace_back(INDEX_FILE_NAME, sha256_hex(std::as_bytes(std::span(index))));
  }
  if (sums)
    if (Status s = deliver("SHA256SUMS", sha256sums_text(*sums)); !s.ok())
      return s;
  if (plan.write_index)
    if (Status s = deliver(INDEX_FILE_NAME, index); !s.ok())
      return s;
  if (cancelled())
    return Status(Errc::interrupted, "interrupted");
  if (Status s = target.close(); !s.ok())
    return s;
  return r;
}

// OUT '-' with --format tar: the whole output directory as one tar stream. Only a complete run
// ends the archive; a failed one ends so that `tar x` fails (tar_target.h says how).
Result<UploadResult> stream_tar(const ConvertOptions& options, const Checkpoint& input,
                                const Plan& plan, const PipelineConfig& config, Io& io,
                                Profiler& profiler) {
  TarTarget target(io, STDOUT_FILENO);
  auto entries = tar_entries(target, options, input, plan, config, io, profiler);
  if (!entries)
    target.end_incomplete();
  return entries;
}

ConvertSummary summarize(const Plan& plan, const UploadResult& delivered, const Engine& engine,
                         uint64_t tensors, uint64_t files, Profiler& profiler) {
  const PipelineResult& moved = delivered.moved;
  ConvertSummary sum;
  sum.deliveries = delivered.files;
  sum.checksums = delivered.checksums;
  sum.adapter = plan.adapter;
  sum.direction = plan.direction;
  sum.device = engine.device;
  sum.tensors = tensors;
  sum.files = files;
  sum.output_bytes = moved.output_bytes;
  sum.zero_copy_bytes = moved.zero_copy_bytes;
  sum.fallback_copy_bytes = moved.fallback_copy_bytes;
  sum.cpu_bytes = moved.cpu_bytes;
  sum.gpu_bytes = moved.gpu_bytes;
  sum.transformed_bytes = moved.cpu_bytes + moved.gpu_bytes + moved.ones_bytes;
  sum.dropped = plan.dropped;
  sum.excluded = plan.excluded;
  sum.chunk_bytes = engine.config.chunk_bytes;
  sum.tokens = engine.config.tokens;
  sum.writers = engine.config.writers;
  sum.seconds = static_cast<double>(profiler.now()) / 1e9;
  sum.peak_rss = peak_rss_bytes();
  sum.stages = profiler.summaries();
  return sum;
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
  Io& base_io = !options.sync ? no_sync_io : options.io ? *options.io : Io::system();
  CountingIo to_stdout(base_io, STDOUT_FILENO);
  Io& io = is_stream(options) ? to_stdout : base_io;

  // 1. Check OUT, open and validate the input, plan the output. Nothing is written before this.
  if (Status s = check_output(options); !s.ok())
    return s;
  const uint64_t t0 = profiler.now();
  auto opened = Checkpoint::open(options.input);
  if (!opened)
    return opened.status();
  const Checkpoint& input = *opened;
  profiler.record(Stage::plan, t0, profiler.now(), 0, "open_checkpoint");
  if (callbacks.warnings && !input.warnings.empty())
    callbacks.warnings(input.warnings);
  auto planned = make_plan(input, options.plan, &profiler);
  if (!planned)
    return planned.status();
  const Plan& plan = *planned;
  if (callbacks.planned)
    callbacks.planned(plan);

  // 2. Size the pipeline from the memory budget; pick the device and the writer lanes.
  const unsigned threads =
      options.threads ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, threads);
  auto engine = configure_engine(options, threads, plan.files.size(), io, callbacks);
  if (!engine)
    return engine.status();

  // 3. Move the bytes: into OUT, one file to stdout, or every file into its own command.
  std::vector<std::string> digests(plan.files.size());
  if (options.checksums)
    engine->config.digests = &digests;
  uint64_t tensors = plan.tensors.size(), files = plan.files.size();
  const bool tar = options.format == OutputFormat::tar;
  Result<UploadResult> moved =
      !options.pipe_to.empty()
          ? upload_outputs(options.pipe_to, input, plan, engine->config, io, profiler)
      : tar ? stream_tar(options, input, plan, engine->config, io, profiler)
      : is_stream(options)
          ? stream_one_file(options, input, plan, engine->config, io, profiler, &tensors)
          : write_directory(options, input, plan, engine->config, io, profiler);
  if (!moved && is_stream(options) && moved.status().code() == Errc::interrupted)
    return Status(Errc::interrupted,
                  "interrupted after " + std::to_string(to_stdout.count()) +
                      " bytes had been written to stdout; what read them holds an incomplete " +
                      (tar ? "archive (without its end-of-archive blocks)" : "file") +
                      " and must discard it");
  if (!moved)
    return moved.status();
  if (is_stream(options) && !tar)
    files = 1;
  return summarize(plan, *moved, *engine, tensors, files, profiler);
}

} // namespace shardshift
