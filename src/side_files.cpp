// side_files.cpp: a side file streamed piece by piece through an OutputTarget.
#include "side_files.h"

#include "sha256.h"

#include <algorithm>
#include <optional>

namespace shardshift {

Status deliver_side_file(OutputTarget& target, Io& io, const Checkpoint& input,
                         const std::string& name, uint64_t chunk, std::string* digest,
                         uint64_t* written, const std::atomic<bool>* cancel) {
  auto mapped = MappedFile::open(input.root / name);
  if (!mapped)
    return mapped.status();
  const MappedFile& in = **mapped;
  OutputFile file;
  file.name = name;
  file.data_size = in.size(); // no header: the file's bytes are all data
  ShardWriter writer(io);
  writer.set_cancel(cancel);
  // Made final only if the file was not written to meanwhile: the held last byte, an uploaded
  // object and the digest would otherwise stand for bytes of both versions.
  writer.set_final_check([&in] { return in.unchanged(); });
  std::optional<Sha256> sha;
  if (digest)
    sha.emplace();
  Status s = target.open(writer, file);
  chunk = std::max<uint64_t>(chunk, 4096);
  for (uint64_t off = 0; s.ok() && off < in.size(); off += chunk) {
    const uint64_t n = std::min(chunk, in.size() - off);
    auto view = in.view(off, n);
    if (!view) {
      s = view.status();
      break;
    }
    Status copied;
    s = guard_mapped_access(in, [&] {
      copied = writer.append_copy(in.fd(), off, n, *view, nullptr, in.path());
      if (sha && copied.ok())
        sha->update(*view);
    });
    if (s.ok())
      s = copied;
    in.release(off, n);
  }
  if (s.ok())
    s = target.finish(writer, file);
  else
    target.abandon(writer, file);
  if (!s.ok())
    return s;
  if (digest)
    *digest = sha->hex();
  if (written)
    *written += in.size();
  return {};
}

Status deliver_after_shards(
    OutputTarget& target, Io& io, const Checkpoint& input, const Plan& plan, uint64_t chunk,
    const std::vector<std::string>* shard_digests, const std::atomic<bool>* cancel,
    const std::function<Status(const std::string& name, std::string_view bytes)>& deliver_small,
    std::vector<std::pair<std::string, std::string>>* sums, uint64_t* written) {
  auto cancelled = [&] { return cancel && cancel->load(); };
  if (shard_digests)
    for (size_t f = 0; f < plan.files.size(); ++f)
      sums->emplace_back(plan.files[f].name, (*shard_digests)[f]);
  for (const std::string& name : plan.side_files) {
    if (cancelled())
      return Status(Errc::interrupted, "interrupted");
    std::string digest;
    if (Status s = deliver_side_file(target, io, input, name, chunk,
                                     shard_digests ? &digest : nullptr, written, cancel);
        !s.ok())
      return s;
    if (shard_digests)
      sums->emplace_back(name, digest);
  }
  std::vector<std::pair<std::string, std::string>> small;
  std::string index;
  if (plan.write_index) {
    auto text = index_json(plan.total_tensor_bytes, plan.weight_map);
    if (!text)
      return text.status();
    index = std::move(*text);
    if (shard_digests) // SHA256SUMS, which comes before it, lists the index too
      sums->emplace_back(INDEX_FILE_NAME, sha256_hex(std::as_bytes(std::span(index))));
  }
  if (shard_digests)
    small.emplace_back("SHA256SUMS", sha256sums_text(*sums));
  if (plan.write_index)
    small.emplace_back(INDEX_FILE_NAME, std::move(index));
  for (const auto& [name, bytes] : small) {
    if (cancelled())
      return Status(Errc::interrupted, "interrupted");
    if (Status s = deliver_small(name, bytes); !s.ok())
      return s;
    if (written)
      *written += bytes.size();
  }
  return {};
}

} // namespace shardshift
