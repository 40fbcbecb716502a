// side_files.cpp: a side file streamed piece by piece through an OutputTarget.
#include "side_files.h"

#include "sha256.h"

#include <algorithm>
#include <optional>

namespace shardshift {

Status deliver_side_file(OutputTarget& target, Io& io, const Checkpoint& input,
                         const std::string& name, uint64_t chunk, std::string* digest,
                         uint64_t* written) {
  auto mapped = MappedFile::open(input.root / name);
  if (!mapped)
    return mapped.status();
  const MappedFile& in = **mapped;
  OutputFile file;
  file.name = name;
  file.data_size = in.size(); // no header: the file's bytes are all data
  ShardWriter writer(io);
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
      copied = writer.append_copy(in.fd(), off, n, *view);
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

} // namespace shardshift
