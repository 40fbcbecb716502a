// staging.cpp: naming staging directories, and finding and removing those of killed runs.
#include "staging.h"

#include "shardshift/checkpoint.h"

#include "temp_name.h"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <fcntl.h>
#include <random>
#include <sys/file.h>
#include <unistd.h>

namespace shardshift {

namespace fs = std::filesystem;

fs::path staging_path(const fs::path& output, const char* what) {
  // Beside OUT, so that the final rename stays within one filesystem and is atomic.
  std::random_device rd;
  return output.parent_path() / (temp_name_prefix(output.filename().string(), what) +
                                 std::to_string(getpid()) + "-" + std::to_string(rd() % 100000));
}

namespace {

// Whether `dir` holds nothing but files with shardshift's temporary names (no subdirectory).
bool only_temporary_files(const fs::path& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().filename().string().find(".shardshift-tmp-") == std::string::npos ||
        !it->is_regular_file(ec) || it->is_symlink(ec))
      return false;
  return !ec;
}

// The directories (not links) beside OUT named ".OUT.shardshift-WHAT-PID-N", with their PID.
std::vector<std::pair<fs::path, long>> temp_dirs(const fs::path& out, const char* what) {
  const fs::path output = fs::absolute(out);
  const std::string prefix = temp_name_prefix(output.filename().string(), what);
  std::vector<std::pair<fs::path, long>> dirs;
  std::error_code ec;
  for (fs::directory_iterator it(output.parent_path(), ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.starts_with(prefix) && !it->is_symlink(ec) && it->is_directory(ec))
      dirs.emplace_back(it->path(), std::strtol(name.c_str() + prefix.size(), nullptr, 10));
  }
  return dirs;
}

bool process_gone(long pid) {
  return pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

} // namespace

std::vector<fs::path> abandoned_staging_dirs(const fs::path& out) {
  std::vector<fs::path> dirs;
  std::error_code ec;
  for (const auto& [dir, pid] : temp_dirs(out, "tmp")) {
    // The fingerprint is the first thing a run writes into its staging directory, once locked,
    // and it goes only once the output's marker is written (commit_output).
    // Without one, the directory is a run's only if that run's process (the id in the name) is
    // gone, it may not have taken the lock yet, and the directory holds nothing but what a run
    // can leave before its fingerprint (nothing, or a temporary file): a directory a user made
    // with such a name, with their files in it, is not shardshift's to remove.
    if (!fs::exists(dir / PLAN_FINGERPRINT_NAME, ec) && !fs::exists(dir / OUTPUT_MARKER_NAME, ec) &&
        (!process_gone(pid) || !only_temporary_files(dir)))
      continue;
    dirs.push_back(dir);
  }
  return dirs;
}

std::vector<std::string> set_aside_outputs(const fs::path& out) {
  const std::string name = fs::absolute(out).filename().string();
  std::vector<std::string> notes;
  std::error_code ec;
  for (const auto& [dir, pid] : temp_dirs(out, "old")) {
    if (!process_gone(pid)) // its run may still be replacing OUT
      continue;
    // The marker goes first when the run removes it (Marks::first): without it, the removal was
    // under way and what is left is no whole output.
    if (fs::exists(dir / OUTPUT_MARKER_NAME, ec))
      notes.push_back(dir.string() + ": a previous " + name + " that a run with --force (process " +
                      std::to_string(pid) +
                      ") moved aside and was stopped before removing; it is yours: remove it, "
                      "or move it back if " + name + " is not what you want");
    else
      notes.push_back(dir.string() + ": a previous " + name + " that a run with --force (process " +
                      std::to_string(pid) +
                      ") moved aside and did not finish removing; it holds no whole output (no " +
                      OUTPUT_MARKER_NAME + "): remove it");
  }
  return notes;
}

std::vector<std::string> remove_stale_staging(Io& io, const fs::path& output) {
  std::vector<std::string> notes;
  for (const fs::path& dir : abandoned_staging_dirs(output)) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
      continue;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      uint64_t bytes = 0;
      std::error_code ec;
      for (fs::recursive_directory_iterator f(dir, ec), fend; !ec && f != fend; f.increment(ec))
        if (f->is_regular_file(ec))
          bytes += f->file_size(ec);
      const std::string name = dir.filename().string();
      const std::string after = name.substr(name.rfind("-tmp-") + 5); // "PID-N"
      const std::string pid = after.substr(0, after.find('-'));
      if (remove_tree(io, dir).ok())
        notes.push_back(dir.string() +
                        ": removed the staging directory of an earlier run that did not finish "
                        "(process " +
                        pid + "); " + std::to_string(bytes) + " bytes freed");
    }
    ::close(fd);
  }
  return notes;
}

} // namespace shardshift
