// upload.cpp: shards through the writer lanes into their commands, then the small files in the
// order that keeps the destination consistent at every moment.
#include "upload.h"

#include "process_target.h"
#include "sha256.h"
#include "side_files.h"

#include <numeric>

namespace shardshift {

namespace {

// After the shards: the side files (streamed), SHA256SUMS, then the index, which commits.
Status deliver_the_rest(ProcessTarget& target, const Checkpoint& input, const Plan& plan,
                        const PipelineConfig& config, Io& io, UploadResult& r) {
  auto cancelled = [&] { return config.cancel && config.cancel->load(); };
  for (const std::string& name : plan.side_files) {
    if (cancelled())
      return Status(Errc::interrupted, "interrupted");
    std::string digest;
    if (Status s = deliver_side_file(target, io, input, name, config.chunk_bytes,
                                     config.digests ? &digest : nullptr, &r.moved.output_bytes);
        !s.ok())
      return s;
    if (config.digests)
      r.checksums.emplace_back(name, digest);
  }
  std::vector<std::pair<std::string, std::string>> small;
  std::string index;
  if (plan.write_index) {
    auto text = index_json(plan.total_tensor_bytes, plan.weight_map);
    if (!text)
      return text.status();
    index = std::move(*text);
    if (config.digests) // SHA256SUMS, which comes first, lists the index too
      r.checksums.emplace_back(INDEX_FILE_NAME, sha256_hex(std::as_bytes(std::span(index))));
  }
  if (config.digests)
    small.emplace_back("SHA256SUMS", sha256sums_text(r.checksums));
  if (plan.write_index)
    small.emplace_back(INDEX_FILE_NAME, std::move(index));
  for (const auto& [name, bytes] : small) {
    if (cancelled())
      return Status(Errc::interrupted, "interrupted");
    if (Status s = target.deliver(name, bytes, io); !s.ok())
      return s;
    r.moved.output_bytes += bytes.size();
  }
  return {};
}

// One line per file, for the error that ends a failed upload.
Status failure_report(const Status& first, const std::vector<FileDelivery>& files) {
  std::string message = first.message() + "\nfiles:";
  size_t failed = 0;
  for (const FileDelivery& f : files) {
    message += "\n  " + f.name + ": " + f.state;
    failed += f.state != "delivered";
  }
  message += "\n" + std::to_string(failed) + " of " + std::to_string(files.size()) +
             " files not delivered; the index was not delivered, so no reader takes this "
             "checkpoint for complete";
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

Result<UploadResult> upload_outputs(const std::string& command, const Checkpoint& input,
                                    const Plan& plan, const PipelineConfig& config, Io& io,
                                    Profiler& profiler) {
  UploadResult r;
  ProcessTarget target(command);
  std::vector<uint32_t> shards(plan.files.size());
  std::iota(shards.begin(), shards.end(), 0u);
  auto moved = run_pipeline(input, plan, shards, target, config, profiler);

  // The rest goes only after every shard was delivered, the index last of all.
  Status first = moved.ok() ? Status() : moved.status();
  if (first.ok()) {
    r.moved = *moved;
    if (config.digests)
      for (size_t f = 0; f < plan.files.size(); ++f)
        r.checksums.emplace_back(plan.files[f].name, (*config.digests)[f]);
    first = deliver_the_rest(target, input, plan, config, io, r);
  }

  for (const OutputFile& f : plan.files)
    r.files.push_back({f.name, state_text(target.outcome(f.name))});
  for (const std::string& name : plan.side_files)
    r.files.push_back({name, state_text(target.outcome(name))});
  if (config.digests)
    r.files.push_back({"SHA256SUMS", state_text(target.outcome("SHA256SUMS"))});
  if (plan.write_index)
    r.files.push_back({INDEX_FILE_NAME, state_text(target.outcome(INDEX_FILE_NAME))});
  if (!first.ok())
    return failure_report(first, r.files);
  return r;
}

} // namespace shardshift
