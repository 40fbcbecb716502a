// output_dir.cpp: a conversion into a directory. OUT is checked before anything is read (never an
// input, --force only over shardshift's own output), built in a staging directory beside it,
// completed with the side files, SHA256SUMS and the index, marked, and renamed into place.
#include "shardshift/shard_writer.h"

#include "output_marker.h"
#include "outputs.h"
#include "process_target.h"
#include "resume.h"
#include "sha256.h"
#include "side_files.h"
#include "staging.h"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <numeric>
#include <random>
#include <regex>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

// `p` absolute, with every symlink of the part that exists resolved, normalized, and without a
// trailing separator: two spellings of one place compare equal.
fs::path real_path(const fs::path& p) {
  std::error_code ec;
  fs::path abs = fs::absolute(p, ec);
  fs::path real = fs::weakly_canonical(abs, ec);
  if (ec)
    real = abs.lexically_normal();
  if (!real.has_filename() && real.has_relative_path())
    real = real.parent_path();
  return real;
}

// Whether `inner` is `outer` or lies below it (both real paths).
bool is_within(const fs::path& inner, const fs::path& outer) {
  auto [o, i] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
  return o == outer.end();
}

// Everything the conversion reads: IN, and for a directory each entry in it with its links
// resolved (hub caches link shards into a blobs/ directory elsewhere).
std::vector<fs::path> input_paths(const fs::path& input) {
  std::vector<fs::path> paths{real_path(input)};
  std::error_code ec;
  if (fs::is_directory(input, ec))
    for (fs::directory_iterator it(input, ec), end; !ec && it != end; it.increment(ec))
      paths.push_back(real_path(it->path()));
  return paths;
}

// IN and the --base checkpoint: every path the conversion reads.
std::vector<fs::path> read_paths(const ConvertOptions& o) {
  std::vector<fs::path> read = input_paths(o.input);
  if (!o.plan.base.empty())
    for (fs::path& p : input_paths(o.plan.base))
      read.push_back(std::move(p));
  return read;
}

// No flag may let the output replace, or be written into, what the conversion reads: IN, and
// the --base checkpoint it restores keys from.
Status check_not_input(const ConvertOptions& o) {
  const fs::path out = real_path(o.output);
  const std::string name = o.output.string();
  std::error_code ec;
  for (const fs::path& in : read_paths(o)) {
    if (is_within(in, out) || fs::equivalent(out, in, ec))
      return Status(Errc::invalid_argument,
                    name + ": the output must not be the input or contain it (" + in.string() +
                        " is read by this conversion); choose another OUT");
    if (is_within(out, in))
      return Status(Errc::invalid_argument, name + ": the output must not lie inside the input " +
                                                in.string() + "; choose an OUT outside it");
  }
  return {};
}

// OUT '-' into a file (`> x`, `1<> x`) must not be a file the conversion reads, nor lie inside
// IN: the stream would overwrite an input shard while it is read, or grow IN's side files.
Status check_stdout_not_input(const ConvertOptions& o) {
  struct stat st {};
  if (::fstat(STDOUT_FILENO, &st) != 0 || !S_ISREG(st.st_mode))
    return {};
  std::error_code ec;
  const fs::path target = fs::read_symlink("/proc/self/fd/1", ec);
  const fs::path out = ec ? fs::path() : real_path(target);
  for (const fs::path& in : read_paths(o)) {
    struct stat is {};
    const bool same =
        ::stat(in.c_str(), &is) == 0 && is.st_dev == st.st_dev && is.st_ino == st.st_ino;
    if (same || (!out.empty() && is_within(out, in)))
      return Status(
          Errc::invalid_argument,
          "stdout (OUT '-') is " + (out.empty() ? std::string("a file") : out.string()) +
              (same ? ", which this conversion reads" : ", inside the input " + in.string()) +
              "; redirect it to a file outside the input");
  }
  return {};
}

} // namespace

Status check_output(const ConvertOptions& o) {
  if (o.resume && (!o.pipe_to.empty() || is_stream(o)))
    return Status(Errc::invalid_argument,
                  "--resume continues a conversion into a directory; it cannot take back what "
                  "went to stdout or to --pipe-to commands");
  if (!o.pipe_to.empty()) {
    if (!o.output.empty())
      return Status(Errc::invalid_argument,
                    "--pipe-to delivers every file to its command: give no OUT with it");
    if (Status s = check_command_template(o.pipe_to); !s.ok())
      return s;
    if (o.force)
      return Status(Errc::invalid_argument, "--force replaces an existing OUT; --pipe-to writes "
                                            "no OUT: drop --force");
    if (!o.only.empty())
      return Status(Errc::invalid_argument, "--only streams one file to stdout; --pipe-to "
                                            "delivers every file: use one of them");
    if (o.format == OutputFormat::tar)
      return Status(Errc::invalid_argument, "--format tar streams the whole output to stdout; "
                                            "--pipe-to delivers each file: use one of them");
    return {};
  }
  if (o.format == OutputFormat::tar) {
    if (!is_stream(o))
      return Status(Errc::invalid_argument,
                    "--format tar writes the output as one stream to stdout: give OUT '-'");
    if (!o.only.empty())
      return Status(Errc::invalid_argument, "--only streams one file; --format tar streams every "
                                            "file: use one of them");
  }
  if (is_stream(o)) {
    if (o.force)
      return Status(Errc::invalid_argument, "--force replaces an existing OUT; OUT '-' is stdout, "
                                            "which it cannot replace: drop --force");
    // Closed at start, stdout is /dev/null opened for reading (main.cpp), so that no file this
    // run opens takes its number: refused like one opened for reading.
    if (const int flags = ::fcntl(STDOUT_FILENO, F_GETFL);
        flags < 0 || (flags & O_ACCMODE) == O_RDONLY)
      return Status(Errc::invalid_argument,
                    "stdout is not open for writing (closed, or opened for reading only); OUT "
                    "'-' writes there: pipe it or redirect it to a file");
    if (isatty(STDOUT_FILENO))
      return Status(Errc::invalid_argument,
                    "refusing to write binary output to a terminal; pipe it or redirect it to a "
                    "file (OUT '-' is stdout)");
    return check_stdout_not_input(o);
  }
  if (!o.only.empty())
    return Status(Errc::invalid_argument, "--only streams one file and needs OUT '-' (stdout)");
  if (Status s = check_not_input(o); !s.ok())
    return s;

  // Everything about OUT that would otherwise fail at the final rename fails now, before any
  // byte is written.
  std::error_code ec;
  const fs::path out = fs::absolute(o.output, ec);
  const std::string name = o.output.string();
  const fs::file_status st = fs::symlink_status(out, ec);
  if (fs::is_symlink(st)) {
    std::error_code link_ec;
    const fs::path target = fs::read_symlink(out, link_ec);
    const bool dangling = !fs::exists(fs::status(out, link_ec));
    // The final rename would replace the link itself, not what it points to.
    return Status(Errc::invalid_argument,
                  name + ": is a symbolic link (to '" + target.string() + "'" +
                      (dangling ? ", which does not exist" : "") +
                      "); give the real path of the output directory instead");
  }
  if (fs::exists(st)) {
    if (!fs::is_directory(st))
      return Status(Errc::invalid_argument,
                    name + ": exists and is not a directory; remove it or choose another OUT");
    if (!o.force)
      return Status(Errc::invalid_argument,
                    name + ": already exists; pass --force to replace it" +
                        (o.resume ? std::string(" (with --resume, the run continues from what an "
                                                "earlier run of this conversion finished)")
                                  : std::string()));
    if (Status s = check_replaceable(out); !s.ok())
      return s;
  }
  return check_output_parent(out);
}

Status check_output_parent(const fs::path& output) {
  std::error_code ec;
  fs::path out = fs::absolute(output, ec);
  // "out/" names the directory "out", whose parent is the one to look at.
  while (!out.has_filename() && out.has_relative_path())
    out = out.parent_path();
  const fs::path parent = out.parent_path();
  if (!fs::is_directory(parent, ec))
    return Status(Errc::invalid_argument,
                  parent.string() + ": the output's parent directory does not exist");
  // A name the filesystem cannot hold would fail only at the final rename, after all the work.
  const long name_max = ::pathconf(parent.c_str(), _PC_NAME_MAX);
  const size_t limit = name_max > 0 ? static_cast<size_t>(name_max) : size_t(255);
  if (const std::string name = out.filename().string(); name.size() > limit)
    return Status(Errc::invalid_argument,
                  out.string() + ": the output's name is " + std::to_string(name.size()) +
                      " bytes long, more than the " + std::to_string(limit) +
                      " its filesystem takes; choose a shorter OUT");
  // Creating the output needs to write the parent (a conversion's staging directory and its
  // final rename both do).
  if (access(parent.c_str(), W_OK | X_OK) != 0)
    return Status(Errc::io, parent.string() + ": cannot create the output in this directory: " +
                                errno_text(errno));
  return {};
}

Status check_trace_file(const ConvertOptions& o) {
  if (o.trace_file.empty())
    return {};
  const std::string name = "--trace " + o.trace_file.string();
  const fs::path trace = real_path(o.trace_file);
  std::error_code ec;
  for (const fs::path& in : read_paths(o))
    if (is_within(trace, in) || fs::equivalent(trace, in, ec))
      return Status(Errc::invalid_argument,
                    name + ": the trace would be written " + (trace == in ? "over " : "inside ") +
                        in.string() +
                        ", which this conversion reads; choose a file outside the input");
  if (!o.output.empty() && !is_stream(o) && is_within(trace, real_path(o.output)))
    return Status(Errc::invalid_argument,
                  name + ": the trace would become part of the output directory " +
                      o.output.string() + "; choose a file outside it");
  if (fs::is_directory(trace, ec))
    return Status(Errc::invalid_argument, name + ": is a directory; name a file");
  const fs::path dir = trace.parent_path();
  if (!fs::is_directory(dir, ec))
    return Status(Errc::invalid_argument, name + ": the directory " + dir.string() +
                                              " does not exist; create it or choose another");
  if (access(dir.c_str(), W_OK | X_OK) != 0)
    return Status(Errc::io, name + ": cannot write in " + dir.string() + ": " + errno_text(errno));
  return {};
}

Status commit_output(Io& io, const fs::path& staging, const fs::path& output, bool force) {
  // Written last, so only a complete output carries the marker that lets --force replace it.
  // The plan fingerprint goes only once the marker is there: at every moment the staging
  // directory holds one of the two, so a run killed in between leaves a directory that the next
  // run can tell for a run's (staging.h) and remove.
  auto marker = output_marker_text(staging);
  if (!marker)
    return marker.status();
  if (Status s =
          write_file_atomic(io, staging / OUTPUT_MARKER_NAME, std::as_bytes(std::span(*marker)));
      !s.ok())
    return s;
  const fs::path fingerprint = staging / PLAN_FINGERPRINT_NAME;
  const std::string plan = read_fingerprint(staging); // put back if the output cannot go in place
  if (io.unlink(fingerprint.c_str()) != 0 && errno != ENOENT)
    return Status(Errc::io, fingerprint.string() + ": cannot remove: " + errno_text(errno));
  // Every failure from here on makes the staging directory a run's again (fingerprint first,
  // then no marker), so that --resume can take it up once OUT is out of the way.
  auto failed = [&](Status s) {
    if (!plan.empty()) {
      const std::string text = fingerprint_file_text(plan);
      if (write_file_atomic(io, fingerprint, std::as_bytes(std::span(text))).ok())
        io.unlink((staging / OUTPUT_MARKER_NAME).c_str());
    }
    return s;
  };
  std::error_code ec;
  fs::path old;
  if (force && fs::exists(fs::symlink_status(output, ec))) {
    // check_output proved this when the run began; the run can take minutes, so again now.
    if (Status s = check_replaceable(output); !s.ok())
      return failed(std::move(s));
    old = staging_path(output, "old");
    if (io.rename(output.c_str(), old.c_str()) != 0)
      return failed(Status(
          Errc::io, output.string() + ": cannot move the old output aside: " + errno_text(errno)));
  }
  if (io.rename(staging.c_str(), output.c_str()) != 0) {
    const int err = errno;
    // OUT was free when the run began (check_output): another process made it meanwhile.
    std::string why = err == ENOTEMPTY || err == EEXIST
                          ? output.string() + ": another process created it while this run "
                                              "worked, so this output was not put in its place; "
                                              "check what is there, then run again with --force "
                                              "to replace it"
                          : output.string() + ": cannot rename the finished output into place: " +
                                errno_text(err);
    if (!old.empty() && io.rename(old.c_str(), output.c_str()) != 0)
      why += "; the previous output, moved aside, could not be moved back (" + errno_text(errno) +
             "): it is in " + old.string();
    return failed(Status(Errc::io, why));
  }
  if (!old.empty())
    // The new output is in place; a leftover is only clutter, and its marker goes first so that
    // what a stop leaves of it never reads as a complete output (set_aside_outputs).
    discard_tree(io, old, Marks::first).ignore();
  return sync_directory(io, fs::absolute(output).parent_path());
}

// A message about a file being built names where the user will look for it: OUT/name, not the
// hidden staging directory or the file's temporary name inside it.
Status name_final_paths(const Status& s, const fs::path& staging, const fs::path& output) {
  if (s.ok())
    return s;
  std::string m = s.message();
  for (size_t at = m.find(staging.string()); at != std::string::npos;
       at = m.find(staging.string(), at))
    m.replace(at, staging.string().size(), output.string());
  // ".model-00001-of-00002.safetensors.shardshift-tmp-PID-RANDOM" -> the file's own name.
  static const std::regex TEMP_NAME(R"(/\.([^/]+?)\.shardshift-tmp-[0-9a-f-]+)");
  m = std::regex_replace(m, TEMP_NAME, "/$1");
  return Status(s.code(), m);
}

// OUT a directory: build it in a staging directory beside it, then side files, the index (the
// commit point of a sharded checkpoint) and one rename. The staging directory is removed on any
// failure (or kept with --resume), so OUT appears whole or not at all.
namespace {

// The staging directory of this run: created and locked, or adopted from an earlier run
// (--resume). Unless committed, it is removed when the run ends, or with --resume kept for the
// next run.
class StagingGuard {
public:
  StagingGuard(Io& io, fs::path dir, bool keep) : io_(io), dir_(std::move(dir)), keep_(keep) {}
  ~StagingGuard() {
    if (armed_ && !keep_)
      discard_tree(io_, dir_).ignore(); // the failure being reported matters more
    if (lock_ >= 0)
      ::close(lock_);
  }
  StagingGuard(const StagingGuard&) = delete;
  StagingGuard& operator=(const StagingGuard&) = delete;

  // Locked for as long as this run may write into it, so that a later run can tell it from the
  // leftover of a run that was killed (staging.h).
  Status create() {
    if (io_.mkdir(dir_.c_str(), 0777) != 0)
      return Status(Errc::io,
                    dir_.string() + ": cannot create the staging directory: " + errno_text(errno));
    armed_ = true;
    lock_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock_ < 0 || flock(lock_, LOCK_EX | LOCK_NB) != 0)
      return Status(Errc::io,
                    dir_.string() + ": cannot lock the staging directory: " + errno_text(errno));
    return {};
  }
  void adopt(int lock) {
    lock_ = lock;
    armed_ = true;
  }
  void committed() { armed_ = false; }

private:
  Io& io_;
  fs::path dir_;
  bool keep_;
  bool armed_ = false;
  int lock_ = -1;
};

using Notes = std::function<void(const std::vector<std::string>&)>;

// Which plan files this run writes: all of them, or with an adopted staging directory those it
// does not already hold. Files kept get their SHA-256 from disk (--checksums): this run does not
// see their bytes go by.
Result<std::vector<uint32_t>> files_to_write(Io& io, const Plan& plan, const PipelineConfig& config,
                                             const fs::path& output, const fs::path& staging,
                                             const AdoptedStaging& adopted, const Notes& notes,
                                             UploadResult& r) {
  KeptFiles kept;
  if (adopted.lock >= 0) {
    kept = keep_finished_files(io, staging, plan);
    r.kept_files = kept.files;
    r.kept_bytes = kept.bytes;
    if (notes)
      notes({output.string() + ": resuming the run that left " + adopted.from + ": " +
             std::to_string(kept.files) + " of " + std::to_string(plan.files.size()) +
             " file(s) were finished (" + std::to_string(kept.bytes) + " bytes) and are kept"});
  }
  std::vector<uint32_t> files;
  for (uint32_t i = 0; i < plan.files.size(); ++i) {
    if (kept.finished.empty() || !kept.finished[i]) {
      files.push_back(i);
    } else if (config.digests) {
      auto digest = sha256_of_file(staging / plan.files[i].name, config.chunk_bytes);
      if (!digest)
        return digest.status();
      (*config.digests)[i] = *digest;
    }
  }
  return files;
}

Result<UploadResult> build_directory(const ConvertOptions& options, const Checkpoint& input,
                                     const Plan& plan, const PipelineConfig& config, Io& io,
                                     Profiler& profiler, const fs::path& output,
                                     const fs::path& staging, const AdoptedStaging& adopted,
                                     const std::string& fingerprint, const Notes& notes) {
  StagingGuard guard(io, staging, options.resume);
  if (adopted.lock >= 0)
    guard.adopt(adopted.lock);
  else if (Status s = guard.create(); !s.ok())
    return s;
  // Before the first shard, so that a run killed at any later moment can be resumed.
  const std::string fingerprint_text = fingerprint_file_text(fingerprint);
  if (Status s = write_file_atomic(io, staging / PLAN_FINGERPRINT_NAME,
                                   std::as_bytes(std::span(fingerprint_text)));
      !s.ok())
    return s;

  UploadResult r;
  auto files = files_to_write(io, plan, config, output, staging, adopted, notes, r);
  if (!files)
    return files.status();
  DirectoryTarget target(staging, nullptr, config.fill);
  auto moved = run_pipeline(input, plan, *files, target, config, profiler);
  if (!moved)
    return moved.status();
  if (options.cancel && options.cancel->load())
    return Status(Errc::interrupted, "interrupted");

  r.moved = *moved;
  const uint64_t c0 = profiler.now();
  DirectoryTarget side_target(staging, &io);
  if (Status s = deliver_after_shards(
          side_target, io, input, plan, config.chunk_bytes, config.digests, options.cancel,
          [&](const std::string& name, std::string_view bytes) {
            return write_file_atomic(io, staging / name, std::as_bytes(std::span(bytes)));
          },
          &r.checksums, nullptr);
      !s.ok())
    return s;
  if (Status s = commit_output(io, staging, output, options.force); !s.ok())
    return s;
  guard.committed();
  profiler.record(Stage::commit, c0, profiler.now(), 0);
  return r;
}

} // namespace

Result<UploadResult> write_directory(const ConvertOptions& options, const Checkpoint& input,
                                     const Plan& plan, const PipelineConfig& config, Io& io,
                                     Profiler& profiler, const Notes& notes) {
  const fs::path output = fs::absolute(options.output);
  const fs::path staging = staging_path(output, "tmp");
  const std::string fingerprint = plan_fingerprint(input, plan);
  // An earlier run of this very conversion is taken over first (--resume); what other killed
  // runs into the same OUT left is then cleared away.
  AdoptedStaging adopted;
  if (options.resume)
    adopted = adopt_staging(io, output, fingerprint, staging);
  if (auto removed = remove_stale_staging(io, output); !removed.empty() && notes)
    notes(removed);
  if (auto aside = set_aside_outputs(output); !aside.empty() && notes)
    notes(aside);
  auto built = build_directory(options, input, plan, config, io, profiler, output, staging, adopted,
                               fingerprint, notes);
  if (built)
    return built;
  Status s = name_final_paths(built.status(), staging, output);
  std::error_code ec;
  if (options.resume && fs::is_directory(staging, ec)) {
    // OUT may exist now (another process made it while this run worked): then only --force
    // lets a rerun put this conversion in its place.
    const bool taken = !options.force && fs::exists(fs::symlink_status(output, ec));
    s = Status(s.code(), s.message() + "\n" + output.string() +
                             ": the files finished so far are kept in " + staging.string() +
                             (taken ? "; " + output.string() +
                                          " exists now: once it is out of the way (moved, "
                                          "removed, or with --force if it is a shardshift "
                                          "output), run the same command with --resume to "
                                          "continue from them (or remove " +
                                          staging.string() + ")"
                                    : "; run the same command with --resume to continue from "
                                      "them (or without it to start over)"));
  }
  return s;
}

} // namespace shardshift
