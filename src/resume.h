// resume.h: what lets a conversion into a directory continue where a killed or interrupted run
// stopped (--resume). Every staging directory carries the plan's fingerprint in a small file,
// written before the first shard: a SHA-256 over every output file's name, header and size, every
// output tensor's source and operation, and the identity of every input shard (size, modification
// time, inode). Shards inside a staging directory get their final names only after fsync
// (ShardWriter::finish), so a file under its final name there is complete. A later run with
// --resume adopts the staging directory of the same OUT whose process is gone, whose lock is free
// and whose fingerprint equals its own, keeps each file whose size and header match the plan,
// removes the rest, and converts only what is missing.
// Thread-safety: these functions touch the filesystem; call them from one thread per OUT.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/io.h"
#include "shardshift/plan.h"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace shardshift {

/// How the input files' identity enters a fingerprint: `local` for runs on one machine (size,
/// modification and change times, inode and device); `shared` for the ranks of a job, which may
/// run on several nodes of a shared filesystem (NFS, Lustre), where the device number is each
/// client's own (and the inode not promised alike): size and the two times, which the server
/// keeps.
enum class InputIdentity { local, shared };

/// 64 hex digits: equal for two runs only when they would write the same bytes from the same
/// input files (unchanged since, as `identity` tells it). The change time is part of it because a
/// copy tool can put a file's modification time back after rewriting it (touch -r, cp -p onto
/// the file), never its change time.
std::string plan_fingerprint(const Checkpoint& input, const Plan& plan,
                             InputIdentity identity = InputIdentity::local);

/// The fingerprint file's text: a format line, then the fingerprint.
std::string fingerprint_file_text(const std::string& fingerprint);

/// The fingerprint recorded in `staging`, or "" when it has none or cannot be read.
std::string read_fingerprint(const std::filesystem::path& staging);

/// A staging directory of an earlier run adopted for this one: locked by `lock` (an open
/// descriptor of the directory holding an exclusive flock), already renamed to the caller's own
/// staging name.
struct AdoptedStaging {
  int lock = -1;
  std::string from; ///< the name it had (the earlier run's), for the user
};

/// Looks beside `output` for the staging directory of an earlier run into the same OUT whose
/// process is gone, whose lock is free and whose fingerprint is `fingerprint`; locks it and
/// renames it to `staging`. Returns lock -1 when there is none.
AdoptedStaging adopt_staging(Io& io, const std::filesystem::path& output,
                             const std::string& fingerprint, const std::filesystem::path& staging);

/// What a resumed staging directory already holds: finished[i] for plan.files[i] when the file
/// is there under its final name as a regular file with the plan's size and header. Temporary
/// files of the interrupted run are removed; so are shards that do not match (they are written
/// again).
struct KeptFiles {
  std::vector<bool> finished;
  uint64_t files = 0, bytes = 0;
};
KeptFiles keep_finished_files(Io& io, const std::filesystem::path& staging, const Plan& plan);

/// Whether `path` is a regular file (not a link) with exactly `file`'s size and header bytes: a
/// shard a run finished (the data is the writer's to have fsync'ed before the rename that gave the
/// file this name).
bool keeps_file(const std::filesystem::path& path, const OutputFile& file);

/// SHA-256 (hex) of a file already on disk, read in pieces of `chunk` bytes (--checksums of a
/// file kept by --resume).
Result<std::string> sha256_of_file(const std::filesystem::path& path, uint64_t chunk);

} // namespace shardshift
