// output_stream.cpp: a conversion to stdout: one output file (--only), or the whole output as a
// tar stream (--format tar) whose end-of-archive blocks come only after every entry succeeded.
#include "shardshift/problems.h"
#include "shardshift/shard_writer.h"

#include "outputs.h"
#include "sha256.h"
#include "side_files.h"
#include "stream_fd.h"
#include "tar_target.h"

#include <algorithm>
#include <numeric>
#include <unistd.h>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

// Which file of the plan a stream writes: --only NAME, or the single output file.
Result<std::string> stream_target(const Plan& plan, const std::string& only) {
  if (!only.empty())
    return only;
  if (plan.files.size() == 1)
    return plan.files[0].name;
  std::string names;
  for (auto& f : plan.files)
    names += (names.empty() ? "" : ", ") + f.name;
  if (plan.write_index)
    names += std::string(", ") + INDEX_FILE_NAME;
  for (const std::string& side : plan.side_files)
    names += ", " + printable(side);
  const size_t all = plan.files.size() + (plan.write_index ? 1 : 0) + plan.side_files.size();
  return Status(Errc::invalid_argument,
                "the output has " + std::to_string(all) + " files (" +
                    std::to_string(plan.files.size()) +
                    " of tensors) and OUT '-' streams one: pass --only NAME with one of " + names +
                    " (sizes: shardshift plan IN --print-size), or --format tar to stream them "
                    "all");
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
  const size_t others = plan.side_files.size() + (plan.write_index ? 1 : 0);
  const std::string files =
      std::to_string(plan.files.size()) + (plan.files.size() == 1 ? " shard (" : " shards (") +
      plan.files.front().name + (plan.files.size() > 1 ? ", ...)" : ")") +
      (others ? " and " + std::to_string(others) + " other file(s)" : std::string());
  if (count > 0 && count != plan.files.size())
    return Status(Errc::invalid_argument,
                  "--only " + name + ": not in this plan, which has " + files +
                      "; that name comes from a plan of " + std::to_string(count) +
                      " shards: pass the same --max-shard-size as to `shardshift plan` (and the "
                      "same --dtype, --exclude, --no-tied-head and --ep-* flags)");
  return Status(Errc::invalid_argument, "--only " + name +
                                            ": no such file in this plan, which "
                                            "has " +
                                            files +
                                            " (see shardshift plan IN --print-size with the "
                                            "same flags)");
}

Status write_all(Io& io, int fd, std::string_view bytes, const std::string& name,
                 const std::atomic<bool>* cancel) {
  while (!bytes.empty()) {
    ssize_t n = io.write(fd, bytes.data(), std::min<size_t>(bytes.size(), MAX_IO_CHUNK));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { // full (stream_fd.h)
      if (!wait_writable(fd, cancel))
        return Status(Errc::interrupted, "interrupted");
      continue;
    }
    if (n < 0)
      return Status(errno == EPIPE ? Errc::broken_pipe : Errc::io,
                    name + ": cannot write to stdout: " + errno_text(errno));
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

// Streams the index or a side file (small files) to fd; `written` counts its bytes.
Status stream_small_file(Io& io, int fd, const Checkpoint& input, const Plan& plan,
                         const std::string& name, uint64_t chunk, uint64_t* written,
                         const std::atomic<bool>* cancel) {
  if (name == INDEX_FILE_NAME) {
    if (!plan.write_index)
      return Status(Errc::invalid_argument,
                    "--only " + name + ": this output is a single file and has no index");
    auto text = index_json(plan.total_tensor_bytes, plan.weight_map);
    if (!text)
      return text.status();
    *written = text->size();
    return write_all(io, fd, *text, name, cancel);
  }
  StreamTarget target(fd);
  if (Status s = deliver_side_file(target, io, input, name, chunk, nullptr, written, cancel);
      !s.ok())
    return s;
  return write_all(io, fd, target.held(), name, cancel); // its last byte, once all is well
}

} // namespace

// OUT '-': one output file to stdout, for uploads that never land on local disk. There is nothing
// to commit: a failure shows as the exit code, and the reader must discard the data.
Result<UploadResult> stream_one_file(const ConvertOptions& options, const Checkpoint& input,
                                     const Plan& plan, const PipelineConfig& config, Io& io, int fd,
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
    // No tensor is converted: the summary counts the file's bytes alone.
    UploadResult r;
    *tensors = 0;
    if (Status s = stream_small_file(io, fd, input, plan, *target, config.chunk_bytes,
                                     &r.moved.output_bytes, options.cancel);
        !s.ok())
      return s;
    return r;
  }
  *tensors = file->tensors.size();
  const uint32_t only[] = {static_cast<uint32_t>(file - plan.files.begin())};
  StreamTarget stdout_target(fd);
  auto moved = run_pipeline(input, plan, only, stdout_target, config, profiler);
  if (!moved)
    return moved.status();
  // Every check passed (the input unchanged, the GPU): the held last byte ends the file.
  if (Status s = write_all(io, fd, stdout_target.held(), file->name, options.cancel); !s.ok())
    return s;
  UploadResult r;
  r.moved = *moved;
  if (config.digests)
    r.checksums.emplace_back(file->name, (*config.digests)[only[0]]);
  return r;
}

namespace {

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
  if (Status s = deliver_after_shards(
          target, io, input, plan, config.chunk_bytes, config.digests, options.cancel,
          [&](const std::string& name, std::string_view bytes) {
            return target.deliver(name, bytes);
          },
          &r.checksums, &r.moved.output_bytes);
      !s.ok())
    return s;
  if (cancelled())
    return Status(Errc::interrupted, "interrupted");
  if (Status s = target.close(); !s.ok())
    return s;
  return r;
}

} // namespace

// OUT '-' with --format tar: the whole output directory as one tar stream. Only a complete run
// ends the archive; a failed one ends so that `tar x` fails (tar_target.h says how).
Result<UploadResult> stream_tar(const ConvertOptions& options, const Checkpoint& input,
                                const Plan& plan, const PipelineConfig& config, Io& io, int fd,
                                Profiler& profiler) {
  TarTarget target(io, fd, options.cancel);
  auto entries = tar_entries(target, options, input, plan, config, io, profiler);
  if (!entries)
    target.end_incomplete();
  return entries;
}

} // namespace shardshift
