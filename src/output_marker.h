// output_marker.h: the marker file that names a directory as shardshift's output
// (OUTPUT_MARKER_NAME), and what it lets `convert --force` replace.
//
// The marker is written last, so only a complete output carries it. It lists every file the run
// wrote, so that --force replaces an output only while it holds nothing else: a user's notes or a
// mount inside an old output are never removed with it.
// Thread-safety: pure functions over the file system.
#pragma once

#include "shardshift/status.h"

#include <filesystem>
#include <string>

namespace shardshift {

/// The marker's text for the finished directory `dir`: a fixed first line with the format
/// version, a sentence for whoever opens it, then every regular file under `dir` but the plan
/// fingerprint of its staging (relative,
/// sorted, escaped as sha256sum escapes names: listing_line). The same files give the same text,
/// so outputs stay byte-identical from run to run.
Result<std::string> output_marker_text(const std::filesystem::path& dir);

/// Whether --force may replace `output`: an empty directory (nothing to lose), or a directory
/// whose marker is shardshift's and that holds nothing but the files that marker lists (and the
/// directories they lie in, on the same file system). Errc::invalid_argument saying what stands
/// in the way (no marker, a link, files shardshift did not write, a mount point) and what to do.
/// A marker of format 1 (before the list) is taken as before: the whole directory.
Status check_replaceable(const std::filesystem::path& output);

} // namespace shardshift
