// upload.cpp: shards through the writer lanes into their commands, then the small files in the
// order that keeps the destination consistent at every moment.
#include "upload.h"

#include "shardshift/problems.h"

#include "process_target.h"
#include "side_files.h"

#include <numeric>

namespace shardshift {

namespace {

// One line per file, for the error that ends a failed upload.
Status failure_report(const Status& first, const std::vector<FileDelivery>& files, bool has_index) {
  std::string message = first.message() + "\nfiles:";
  size_t failed = 0;
  for (const FileDelivery& f : files) {
    message += "\n  " + printable(f.name) + ": " + f.state; // one line per file, whatever its name
    failed += f.state != "delivered";
  }
  message += "\n" + std::to_string(failed) + " of " + std::to_string(files.size()) +
             " files not delivered; " +
             (has_index ? "the index was not delivered, so no reader takes this checkpoint for "
                          "complete"
                        : "this checkpoint has no index (its tensors are one file), so nothing "
                          "marks what was delivered as unfinished: remove it, or rerun");
  return Status(first.code(), message);
}

std::string state_text(const Delivery& d) {
  switch (d.state) {
  case Delivery::delivered:
    return "delivered";
  case Delivery::failed:
    return "failed: " + d.detail;
  case Delivery::not_started:
    break;
  }
  return "not started";
}

} // namespace

Result<UploadResult>
upload_outputs(const std::string& command, bool command_stdout_to_stderr, const Checkpoint& input,
               const Plan& plan, const PipelineConfig& config, Io& io, Profiler& profiler,
               const std::function<void(const std::vector<FileDelivery>&)>& delivered) {
  UploadResult r;
  ProcessTarget target(command, std::chrono::milliseconds(5000), command_stdout_to_stderr,
                       config.cancel);
  std::vector<uint32_t> shards(plan.files.size());
  std::iota(shards.begin(), shards.end(), 0u);
  auto moved = run_pipeline(input, plan, shards, target, config, profiler);

  // The rest goes only after every shard was delivered, the index last of all.
  Status first = moved.ok() ? Status() : moved.status();
  if (first.ok()) {
    r.moved = *moved;
    first = deliver_after_shards(
        target, io, input, plan, config.chunk_bytes, config.digests, config.cancel,
        [&](const std::string& name, std::string_view bytes) {
          return target.deliver(name, bytes, io);
        },
        &r.checksums, &r.moved.output_bytes);
  }

  for (const OutputFile& f : plan.files)
    r.files.push_back({f.name, state_text(target.outcome(f.name))});
  for (const std::string& name : plan.side_files)
    r.files.push_back({name, state_text(target.outcome(name))});
  if (config.digests)
    r.files.push_back({"SHA256SUMS", state_text(target.outcome("SHA256SUMS"))});
  if (plan.write_index)
    r.files.push_back({INDEX_FILE_NAME, state_text(target.outcome(INDEX_FILE_NAME))});
  if (delivered)
    delivered(r.files);
  // A command that quit shows first as a broken pipe in its file's writes; how it ended, which
  // its file's state says, is the cause to report.
  if (first.code() == Errc::broken_pipe)
    for (const FileDelivery& f : r.files)
      if (first.message().starts_with(f.name + ": ") && f.state.starts_with("failed: the command"))
        first = Status(Errc::io, f.name + ": " + f.state.substr(8) + "; the file is not delivered");
  if (!first.ok())
    return failure_report(first, r.files, plan.write_index);
  return r;
}

} // namespace shardshift
