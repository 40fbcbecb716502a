// output_listing.cpp: every file a conversion will write, with its exact size, before anything is
// written (`shardshift plan --print-size`): what an upload loop or a quota check needs ahead of
// time. The sizes come from the same places the writer takes its bytes from, so they cannot
// drift: the planned headers and data sizes, the index text, the side files on disk.
#include "shardshift/convert.h"
#include "shardshift/shard_writer.h"

#include "listing_line.h"

#include <cerrno>
#include <sys/stat.h>

namespace shardshift {

Result<std::vector<OutputFileSize>> list_output_files(const Checkpoint& input, const Plan& plan) {
  std::vector<OutputFileSize> files;
  files.reserve(plan.files.size() + 1 + plan.side_files.size());
  for (const OutputFile& f : plan.files)
    files.push_back({f.name, f.size()});
  if (plan.write_index) {
    auto text = index_json(plan.total_tensor_bytes, plan.weight_map);
    if (!text)
      return text.status();
    files.push_back({INDEX_FILE_NAME, text->size()});
  }
  // Side files are copied verbatim, so their size is their size now. stat(2), not
  // std::filesystem, so the error text is the system's, like every other I/O message.
  for (const std::string& name : plan.side_files) {
    const std::filesystem::path path = input.root / name;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      const int err = errno; // before building the message can change it
      return Status(Errc::io, path.string() + ": cannot stat side file: " + errno_text(err));
    }
    files.push_back({name, static_cast<uint64_t>(st.st_size)});
  }
  return files;
}

std::string output_sizes_text(std::span<const OutputFileSize> files) {
  std::string text;
  for (const OutputFileSize& f : files)
    text += listing_line(std::to_string(f.size), "\t", f.name);
  return text;
}

} // namespace shardshift
