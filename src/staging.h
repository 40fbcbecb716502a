// staging.h: the directories a conversion builds its output in, beside OUT
// (".OUT.shardshift-tmp-PID-N"), so that one rename puts the whole output in place. A run holds
// an exclusive flock on its staging directory for as long as it may write into it; a directory
// whose process is gone and whose lock is free was left by a run that was killed, and the next
// run into the same OUT removes it or, with --resume, continues it (resume.h).
// Thread-safety: these functions touch the filesystem; call them from one thread per OUT.
#pragma once

#include "shardshift/io.h"

#include <filesystem>
#include <string>
#include <vector>

namespace shardshift {

/// The plan's fingerprint inside a staging directory (resume.h), written once the directory is
/// locked and removed before the commit, so it never reaches OUT.
inline constexpr const char* PLAN_FINGERPRINT_NAME = ".shardshift-plan";

/// A new name beside `output` for this process: ".OUT.shardshift-WHAT-PID-N" ("tmp" for the
/// directory being built, "old" for a previous output that --force moves aside).
std::filesystem::path staging_path(const std::filesystem::path& output, const char* what);

/// The "-tmp-" staging directories of `output` that may have been abandoned: they hold a plan
/// fingerprint (written only after the lock was taken, so a free lock then means nobody writes
/// there any more) or, from the commit on, the output's marker, or their process is gone and they
/// hold nothing a run could not have left before its fingerprint (no file, or only temporary ones:
/// a directory of a user's that merely has such a name is never taken). Their locks are not checked
/// here: a caller takes the lock before touching one.
std::vector<std::filesystem::path> abandoned_staging_dirs(const std::filesystem::path& output);

/// Removes every abandoned staging directory of `output` whose lock is free. Returns one note per
/// directory removed, with the bytes freed, for the user. "-old-" directories are left alone: they
/// hold a previous output that --force moved aside, the user's to recover.
std::vector<std::string> remove_stale_staging(Io& io, const std::filesystem::path& output);

/// One note per "-old-" directory of `output` whose process is gone: a previous output that a
/// run with --force moved aside and was stopped before removing (between its two renames, OUT's
/// only copy). Never removed: the user's to keep, move back or remove.
std::vector<std::string> set_aside_outputs(const std::filesystem::path& output);

} // namespace shardshift
