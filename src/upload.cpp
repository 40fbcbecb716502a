// upload.cpp: shards through the writer lanes into their commands, then the small files in the
// order that keeps the destination consistent at every moment.
#include "upload.h"

#include "process_target.h"
#include "sha256.h"

#include <fstream>
#include <iterator>
#include <numeric>

namespace shardshift {

Result<std::string> read_side_file(const Checkpoint& input, const std::string& name) {
  std::ifstream in(input.root / name, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof())
    return Status(Errc::io, (input.root / name).string() + ": cannot read side file");
  return bytes;
}

namespace {

// The small files, in delivery order: side files, SHA256SUMS, the index (which commits).
Result<std::vector<std::pair<std::string, std::string>>>
small_files(const Checkpoint& input, const Plan& plan, UploadResult& r, bool checksums) {
  std::vector<std::pair<std::string, std::string>> files;
  for (const std::string& name : plan.side_files) {
    auto bytes = read_side_file(input, name);
    if (!bytes)
      return bytes.status();
    files.emplace_back(name, std::move(*bytes));
  }
  std::string index;
  if (plan.write_index) {
    auto text = index_json(plan.total_tensor_bytes, plan.weight_map);
    if (!text)
      return text.status();
    index = std::move(*text);
  }
  if (checksums) {
    for (const auto& [name, bytes] : files)
      r.checksums.emplace_back(name, sha256_hex(std::as_bytes(std::span(bytes))));
    if (plan.write_index)
      r.checksums.emplace_back(INDEX_FILE_NAME, sha256_hex(std::as_bytes(std::span(index))));
    files.emplace_back("SHA256SUMS", sha256sums_text(r.checksums));
  }
  if (plan.write_index)
    files.emplace_back(INDEX_FILE_NAME, std::move(index));
  return files;
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

  // The small files go only after every shard was delivered, the index last of all.
  Status first = moved.ok() ? Status() : moved.status();
  std::vector<std::pair<std::string, std::string>> rest;
  if (first.ok()) {
    r.moved = *moved;
    if (config.digests)
      for (size_t f = 0; f < plan.files.size(); ++f)
        r.checksums.emplace_back(plan.files[f].name, (*config.digests)[f]);
    auto small = small_files(input, plan, r, config.digests != nullptr);
    if (!small)
      first = small.status();
    else
      rest = std::move(*small);
  }
  for (const auto& [name, bytes] : rest) {
    if (!first.ok() || (config.cancel && config.cancel->load()))
      break;
    first = target.deliver(name, bytes, io);
    if (first.ok())
      r.moved.output_bytes += bytes.size();
  }
  if (first.ok() && config.cancel && config.cancel->load())
    first = Status(Errc::interrupted, "interrupted");

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
