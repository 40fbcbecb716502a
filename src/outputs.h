// outputs.h: where a conversion's bytes go, beside the driver (convert.cpp): into a directory
// (output_dir.cpp: the checks on OUT, the staging directory, side files, SHA256SUMS, the commit)
// or to stdout (output_stream.cpp: one file, or the whole output as a tar stream). Delivery to
// commands (--pipe-to) is upload.h.
// Thread-safety: one conversion at a time per call; CountingIo is thread-safe.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/io.h"
#include "shardshift/plan.h"
#include "shardshift/profiler.h"

#include "pipeline.h"
#include "upload.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <unistd.h>
#include <vector>

namespace shardshift {

/// OUT '-': the output goes to stdout.
inline bool is_stream(const ConvertOptions& o) {
  return o.output == "-";
}

/// Everything about OUT that can be checked before reading the input: never an input or inside
/// one, --force only over a previous output, no symlink, a writable parent; the flag combinations
/// of streams and --pipe-to. Errc::invalid_argument for usage, Errc::io for the filesystem.
Status check_output(const ConvertOptions& o);

/// The parent directory of the output directory `output` ("out/" is "out") exists and this
/// process can create entries in it. An output's parents are never created: a typo in one of
/// their names would put the output somewhere else, unseen. check_output() and synth() ask it.
/// Errc::invalid_argument when the parent is missing, Errc::io when it cannot be written.
Status check_output_parent(const std::filesystem::path& output);

/// options.trace_file, when set: not a file the conversion reads (IN, a file in it, --base), not
/// inside IN, --base or OUT (it would become part of what they hold), not a directory, and in
/// an existing directory this process can write. Errc::invalid_argument or Errc::io.
Status check_trace_file(const ConvertOptions& o);

/// OUT a directory: built in a staging directory beside it (staging.h; shards by the writer
/// lanes, then side files, SHA256SUMS with --checksums, the index), marked as shardshift's output
/// and renamed into place, so OUT appears whole or not at all. First clears what killed runs into
/// the same OUT left (or, with options.resume, continues one: resume.h). On failure the staging
/// directory is removed, or with options.resume kept for the next run, which the error says.
/// `notes` receives what the user should hear before the work starts (directories removed, files
/// kept).
Result<UploadResult>
write_directory(const ConvertOptions& options, const Checkpoint& input, const Plan& plan,
                const PipelineConfig& config, Io& io, Profiler& profiler,
                const std::function<void(const std::vector<std::string>&)>& notes);

/// Marks the finished `staging` directory as shardshift's output and renames it to `output`,
/// replacing (with `force`) a previous shardshift output, which is put back if the rename fails.
Status commit_output(Io& io, const std::filesystem::path& staging,
                     const std::filesystem::path& output, bool force);

/// `s` with the staging directory and temporary file names in its message replaced by OUT/name,
/// where the user will look for the file.
Status name_final_paths(const Status& s, const std::filesystem::path& staging,
                        const std::filesystem::path& output);

/// OUT '-': the one file --only names (a shard, the index or a side file; or the only file),
/// written to `fd` (stdout, or its own description of stdout's pipe: stream_fd.h).
/// `*tensors` is set to the number of tensors streamed.
Result<UploadResult> stream_one_file(const ConvertOptions& options, const Checkpoint& input,
                                     const Plan& plan, const PipelineConfig& config, Io& io, int fd,
                                     Profiler& profiler, uint64_t* tensors);

/// OUT '-' with --format tar: the whole output as one POSIX tar stream (tar_target.h) to `fd`.
Result<UploadResult> stream_tar(const ConvertOptions& options, const Checkpoint& input,
                                const Plan& plan, const PipelineConfig& config, Io& io, int fd,
                                Profiler& profiler);

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
  /// A cut-back of the stream's file (TarTarget::end_incomplete) takes back what it removes.
  int ftruncate(int fd, off_t length) override {
    const off_t at = fd == fd_ ? ::lseek(fd, 0, SEEK_CUR) : -1;
    const int r = ForwardingIo::ftruncate(fd, length);
    if (r == 0 && at > length)
      count_ -= std::min<uint64_t>(count_.load(), static_cast<uint64_t>(at - length));
    return r;
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

} // namespace shardshift
