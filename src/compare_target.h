// compare_target.h: an OutputTarget that checks files instead of writing them (`shardshift
// verify`). The pipeline produces each output file exactly as a conversion does (same plan, same
// stages, same budget) and hands its bytes to a ShardWriter; this target opens the file of the same
// name in an existing directory, mapped read-only, and gives the writer that descriptor as a
// stream. Every write to it arrives at the target's Io (io()), which compares the bytes with the
// mapped file instead of writing them, and releases the compared pages, so memory stays within
// the pipeline's budget whatever the file's size. Pass-through runs, which the writer would
// splice, are refused (EINVAL) so that the writer falls back to writing them from the input
// mapping, and those bytes are compared too. Nothing is ever written: a write that reached the
// kernel would fail on the read-only descriptor.
//
// Each file records where it first differs from what was produced, in [from, compared end), where
// `from` skips a shard's header (the caller compares headers first, before any data) and the end
// is the shorter of the two sizes (the caller reports a size difference on its own).
// Thread-safety: several writer lanes may have different files open at once; each file is used by
// one lane at a time.
#pragma once

#include "shardshift/io.h"
#include "shardshift/mapped_file.h"

#include "write_stage.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace shardshift {

/// What comparing one file found.
struct FileComparison {
  uint64_t compared_bytes = 0;              ///< bytes checked (within both files)
  std::optional<uint64_t> first_difference; ///< file offset of the first differing byte
  bool finished = false;                    ///< every produced byte reached the comparison
};

class CompareTarget final : public OutputTarget {
public:
  /// Compares with the files of `dir`; `base` serves every descriptor this target did not open.
  explicit CompareTarget(std::filesystem::path dir, Io& base = Io::system());
  ~CompareTarget() override;

  /// The Io to give the pipeline (PipelineConfig::io) and the side-file writers: writes to the
  /// files this target opened become comparisons.
  Io& io();

  /// Maps dir/file.name and starts a stream of it on `writer`; differences are looked for from
  /// the end of file.header on.
  Status open(ShardWriter& writer, const OutputFile& file) override;
  Status finish(ShardWriter& writer, const OutputFile& file) override;
  void abandon(ShardWriter& writer, const OutputFile& file) override;

  /// The result for every file that was opened, by name.
  std::map<std::string, FileComparison> results() const;
  /// The first error met while reading a compared file (it changed while mapped), which makes
  /// the writer's write fail; ok when there was none.
  Status error() const;

private:
  class ComparingIo;
  struct OpenFile;
  OpenFile* find(int fd);
  void close_file(const OutputFile& file, bool finished);
  ssize_t compare(OpenFile& f, const void* buf, size_t count);

  std::filesystem::path dir_;
  std::unique_ptr<ComparingIo> io_;
  mutable std::mutex mu_;
  std::map<int, std::unique_ptr<OpenFile>> open_; ///< by descriptor
  std::map<std::string, FileComparison> results_;
  Status error_;
};

} // namespace shardshift
