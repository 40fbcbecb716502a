// verify.h: checks that a directory holds exactly what converting a checkpoint gives
// (`shardshift verify IN OUT`), e.g. after a copy or a download.
//
// verify() plans the conversion of IN with the same options a conversion takes and compares OUT
// with it in three steps, each reporting every difference it finds before the next:
//   1. the files: every file the conversion writes (shards, index, side files) is in OUT, as a
//      regular file of the planned size, and nothing else is (shardshift's marker and SHA256SUMS
//      aside); each shard's header and the whole index are compared byte for byte. `quick` stops
//      here.
//   2. the data: the conversion runs again, as a stream through the same pipeline, stages and
//      memory budget as convert() (so on the same devices, with the same bits), and every
//      produced byte is compared with OUT's as it is produced; side files are compared with IN's.
//      Nothing is written. Each differing file is reported with its first differing byte and the
//      tensor that holds it.
//   3. SHA256SUMS, when OUT has one: each line is checked like `sha256sum -c` does. Files found
//      identical in step 2 take the digest of the bytes just produced; others are read and hashed.
// Thread-safety: one verification per VerifyOptions; callbacks are invoked from one thread at a
// time.
#pragma once

#include "shardshift/convert.h"
#include "shardshift/plan.h"
#include "shardshift/profiler.h"
#include "shardshift/progress.h"
#include "shardshift/status.h"

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace shardshift {

struct VerifyOptions {
  std::filesystem::path input;             ///< the checkpoint that was converted
  std::filesystem::path output;            ///< the directory to check (not a stream)
  PlanOptions plan;                        ///< must be the options the conversion used
  bool quick = false;                      ///< step 1 only: files, sizes, headers and the index
  unsigned threads = 0;                    ///< 0 = all hardware threads (-j)
  unsigned writers = 0;                    ///< files compared at once; 0 = as convert picks
  uint64_t max_memory = uint64_t{1} << 30; ///< the same budget as convert's
  std::string device = "auto";             ///< auto | cpu | cuda | cuda:N
  bool owns_gpu = false;                   ///< as ConvertOptions::owns_gpu
  const std::atomic<bool>* cancel = nullptr;
};

/// One way OUT differs from the conversion's output.
struct Difference {
  enum class Kind {
    missing,  ///< a file of the conversion is not in OUT (or is not a regular file)
    extra,    ///< OUT holds a file the conversion does not write
    size,     ///< a file's size differs
    header,   ///< a shard's header, or the index, differs
    data,     ///< tensor data (or a side file's bytes) differs
    checksum, ///< a line of OUT's SHA256SUMS does not hold
  };
  Kind kind = Kind::missing;
  std::string file;    ///< relative to OUT
  std::string detail;  ///< what differs, for people ("size 10 bytes, expected 12")
  uint64_t offset = 0; ///< header, data: the file offset of the first differing byte
  std::string tensor;  ///< data: the tensor holding that byte (empty in a side file)
  /// One line: `file: detail`, the name escaped like every name shardshift prints (printable()).
  std::string text() const;
};
const char* difference_kind_name(Difference::Kind kind);

struct VerifySummary {
  std::string adapter;
  Direction direction = Direction::from_hf;
  std::string device; ///< where the data was recomputed (empty with quick)
  bool quick = false;
  uint64_t files = 0, bytes = 0;       ///< the files the conversion writes, and their bytes
  uint64_t compared_bytes = 0;         ///< bytes compared (headers and index in step 1, then data)
  bool checksum_file = false;          ///< OUT has SHA256SUMS (checked unless quick)
  uint64_t checksums_ok = 0;           ///< its lines that hold
  std::vector<Difference> differences; ///< in the order of the steps; empty: identical
  double seconds = 0;
  uint64_t peak_rss = 0;
  bool identical() const { return differences.empty(); }
};

struct VerifyCallbacks {
  std::function<void(const Progress&)> progress; ///< step 2, at most ~5 times a second
  /// Called once the input is open with each of its warnings (Checkpoint::warnings).
  std::function<void(const std::vector<std::string>&)> warnings;
};

/// Compares options.output with what converting options.input gives. A difference is a result,
/// not an error: the Status fails only when IN or OUT cannot be read (Errc::io, Errc::format,
/// Errc::file_changed), the conversion is impossible (Errc::plan), for bad options
/// (Errc::invalid_argument: OUT '-', a bad --device) or on cancellation (Errc::interrupted).
Result<VerifySummary> verify(const VerifyOptions& options, const VerifyCallbacks& callbacks = {},
                             Profiler* profiler = nullptr);

} // namespace shardshift
