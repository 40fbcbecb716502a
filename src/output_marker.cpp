// output_marker.cpp: the marker of a shardshift output directory, and the check --force makes
// before it replaces one.
#include "output_marker.h"

#include "shardshift/checkpoint.h"
#include "shardshift/problems.h"

#include "listing_line.h"
#include "staging.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <vector>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view MARKER_V1 = "shardshift-output 1";
constexpr std::string_view MARKER_V2 = "shardshift-output 2";
constexpr std::string_view MARKER_SENTENCE =
    "This directory was written by shardshift convert; convert --force may replace it while it "
    "holds no file but these:";

// What the marker of `output` says: nullopt when there is none that shardshift wrote (no regular
// file, or another first line); otherwise its format version and, from format 2, the files.
struct Marker {
  int version = 0; ///< 1 or 2; -1: a format this build does not know; -2: too large to be ours
  std::set<std::string> files;
};
// A marker lists one line per file written; no output of shardshift's comes near this.
constexpr uint64_t MARKER_MAX_BYTES = 64ull << 20;
std::optional<Marker> read_marker(const fs::path& output) {
  const fs::path path = output / OUTPUT_MARKER_NAME;
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(path, ec)))
    return std::nullopt;
  if (const uintmax_t size = fs::file_size(path, ec); !ec && size > MARKER_MAX_BYTES)
    return Marker{-2, {}};
  std::ifstream in(path, std::ios::binary);
  std::string line;
  std::getline(in, line);
  Marker m;
  if (line == MARKER_V1)
    m.version = 1;
  else if (line == MARKER_V2)
    m.version = 2;
  else if (line.starts_with("shardshift-output "))
    m.version = -1; // a format this build does not know
  else
    return std::nullopt;
  if (m.version != 2)
    return m;
  std::getline(in, line); // the sentence
  while (std::getline(in, line)) {
    if (!line.starts_with('\\')) {
      m.files.insert(line);
    } else if (auto name = listing_name_unescape(std::string_view(line).substr(1))) {
      m.files.insert(*name);
    }
  }
  return m;
}

// The entries under `output` that `marker` does not account for: files it does not list,
// directories no listed file lies in, and mount points (another file system than OUT's). A
// foreign directory is named once ("runs/"), not entered. At most `limit` names are kept; the
// count is of all of them.
struct Foreign {
  std::vector<std::string> names;
  size_t count = 0;
  std::string error; ///< the walk failed: why
};
Foreign foreign_entries(const fs::path& output, const Marker& marker, size_t limit) {
  // The directories the listed files lie in. A name shardshift writes is relative and goes
  // down only; any other (absolute, "..") stands for nothing here.
  std::set<std::string> dirs;
  for (const std::string& f : marker.files) {
    const fs::path path(f);
    if (path.is_absolute() ||
        std::any_of(path.begin(), path.end(), [](const fs::path& part) { return part == ".."; }))
      continue;
    for (fs::path p = path.parent_path(); !p.empty() && p != p.parent_path(); p = p.parent_path())
      dirs.insert(p.string());
  }
  Foreign foreign;
  struct stat root {};
  if (::lstat(output.c_str(), &root) != 0) {
    foreign.error = output.string() + ": cannot stat: " + errno_text(errno);
    return foreign;
  }
  auto add = [&](std::string name) {
    if (foreign.count++ < limit)
      foreign.names.push_back(printable(name));
  };
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(output, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    const std::string rel = it->path().lexically_relative(output).string();
    if (rel == OUTPUT_MARKER_NAME)
      continue;
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0) {
      foreign.error = it->path().string() + ": cannot stat: " + errno_text(errno);
      return foreign;
    }
    if (S_ISDIR(st.st_mode)) {
      if (st.st_dev != root.st_dev) {
        add(rel + "/ (a mount point)");
        it.disable_recursion_pending();
      } else if (!dirs.count(rel)) {
        add(rel + "/");
        it.disable_recursion_pending();
      }
    } else if (!S_ISREG(st.st_mode)) {
      add(rel + (S_ISLNK(st.st_mode)    ? " (a symbolic link)"
                 : S_ISFIFO(st.st_mode) ? " (a FIFO)"
                 : S_ISSOCK(st.st_mode) ? " (a socket)"
                                        : " (a device)"));
    } else if (!marker.files.count(rel)) {
      add(rel);
    }
  }
  if (ec)
    foreign.error = output.string() + ": cannot list: " + ec.message();
  return foreign;
}

// The mount points strictly under `dir` (from /proc/self/mountinfo, whose fifth field is the
// mount point with space, tab, line feed and backslash written as octal escapes). A bind mount
// of the same file system has the same st_dev as the directory above it, so only this tells it.
std::vector<std::string> mount_points_under(const fs::path& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  const std::string root = fs::canonical(dir, ec).string();
  if (ec)
    return found;
  std::ifstream mounts("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    std::string field, point;
    for (int k = 0; k < 5 && fields >> field; ++k)
      point = field;
    std::string unescaped;
    for (size_t i = 0; i < point.size(); ++i) {
      if (point[i] == '\\' && i + 3 < point.size() &&
          std::isdigit(static_cast<unsigned char>(point[i + 1]))) {
        unescaped += static_cast<char>(std::stoi(point.substr(i + 1, 3), nullptr, 8));
        i += 3;
      } else {
        unescaped += point[i];
      }
    }
    if (unescaped.size() > root.size() + 1 && unescaped.starts_with(root + "/"))
      found.push_back(unescaped.substr(root.size() + 1));
  }
  return found;
}

} // namespace

Result<std::string> output_marker_text(const fs::path& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    const std::string rel = it->path().lexically_relative(dir).string();
    if (rel != OUTPUT_MARKER_NAME && rel != PLAN_FINGERPRINT_NAME && it->is_regular_file(ec) &&
        !it->is_symlink(ec))
      files.push_back(rel);
  }
  if (ec)
    return Status(Errc::io, dir.string() + ": cannot list the finished output: " + ec.message());
  std::sort(files.begin(), files.end());
  std::string text = std::string(MARKER_V2) + "\n" + std::string(MARKER_SENTENCE) + "\n";
  for (const std::string& f : files)
    text += listing_line("", "", f);
  return text;
}

Status check_replaceable(const fs::path& output) {
  std::error_code ec;
  if (fs::is_symlink(fs::symlink_status(output, ec))) // replacing it would move the link only
    return Status(Errc::invalid_argument, output.string() + ": is a symbolic link; --force "
                                                            "replaces only a real directory");
  const std::optional<Marker> marker = read_marker(output);
  if (!marker) {
    if (fs::is_empty(output, ec) && !ec)
      return {};
    return Status(Errc::invalid_argument,
                  output.string() + ": exists and is not a previous shardshift output (it has no " +
                      OUTPUT_MARKER_NAME +
                      " file), so --force will not replace it; remove it yourself or choose "
                      "another OUT");
  }
  // Whatever the marker says, a file system mounted inside OUT is not the old output's: removing
  // the old output would empty it.
  if (const std::vector<std::string> mounts = mount_points_under(output); !mounts.empty())
    return Status(Errc::invalid_argument,
                  output.string() + ": a file system is mounted inside it (" +
                      printable(mounts.front()) + (mounts.size() > 1 ? ", ..." : "") +
                      "), which --force would empty with the old output; unmount it, then run "
                      "again");
  if (marker->version == 1)
    return {};
  if (marker->version == -2)
    return Status(Errc::invalid_argument,
                  output.string() + ": its " + OUTPUT_MARKER_NAME + " is larger than " +
                      std::to_string(MARKER_MAX_BYTES >> 20) +
                      " MiB, more than any shardshift writes, so --force will not replace it; "
                      "remove it yourself or choose another OUT");
  if (marker->version != 2)
    return Status(Errc::invalid_argument,
                  output.string() + ": was written by a newer shardshift (its " +
                      OUTPUT_MARKER_NAME +
                      " is of a format this one does not know), so --force will not replace it; "
                      "remove it yourself or use that shardshift");
  const Foreign foreign = foreign_entries(output, *marker, 3);
  if (!foreign.error.empty())
    return Status(Errc::io, foreign.error + "; --force replaces a previous output only once it "
                                            "has seen everything in it");
  if (foreign.count == 0)
    return {};
  std::string names;
  for (const std::string& n : foreign.names)
    names += (names.empty() ? "" : ", ") + n;
  if (foreign.count > foreign.names.size())
    names += ", ...";
  return Status(Errc::invalid_argument,
                output.string() + ": holds " + std::to_string(foreign.count) +
                    (foreign.count == 1 ? " entry" : " entries") +
                    " that shardshift did not write (" + names +
                    "), which --force would remove with the old output; move them out of it, or "
                    "remove " +
                    output.string() + " yourself, then run again");
}

} // namespace shardshift
