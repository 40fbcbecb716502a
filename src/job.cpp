// job.cpp: the ranks of one job writing one directory output through a shared staging directory
// (job.h): the driver over a coordinator (coordinator.h: MPI or marker files), each rank's share,
// and rank 0's commit.
#include "job.h"

#include "shardshift/safetensors.h"
#include "shardshift/shard_writer.h"

#include "coordinator.h"
#include "outputs.h"
#include "resume.h"
#include "sha256.h"
#include "side_files.h"
#include "staging.h"
#include "temp_name.h"

#include <map>
#include <set>
#include <sstream>
#include <sys/stat.h>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

using Notes = std::function<void(const std::vector<std::string>&)>;

// This rank's files: the share of assign_files, minus (with --resume) those already finished.
std::vector<uint32_t> my_files(Io& io, const Plan& plan, const fs::path& staging,
                               const RankInfo& rank, bool resume, UploadResult& r) {
  const std::vector<uint32_t> files = assign_files(plan, rank.world)[rank.rank];
  std::vector<uint32_t> todo;
  for (uint32_t f : files) {
    const fs::path path = staging / plan.files[f].name;
    if (resume && keeps_file(path, plan.files[f])) {
      ++r.kept_files;
      r.kept_bytes += plan.files[f].size();
      continue;
    }
    remove_tree(io, path).ignore(); // a leftover of an earlier job: written again
    todo.push_back(f);
    // Temporary names of this file left by a killed writer (".NAME.shardshift-tmp-PID-RANDOM").
    const std::string prefix = temp_name_prefix(plan.files[f].name);
    std::error_code ec;
    for (fs::directory_iterator it(staging, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().filename().string().starts_with(prefix))
        remove_tree(io, it->path()).ignore();
  }
  return todo;
}

// What every step of a rank's part of the job shares.
struct Job {
  const ConvertOptions& options;
  const RankInfo& rank;
  JobPaths paths;
  std::string who; ///< "rank R of N", for messages
  bool cancelled() const { return options.cancel && options.cancel->load(); }
};

// The staging directory every rank shares, named by the plan, with the fingerprint that lets a
// later run --resume it.
Status make_staging(const Job& job, Io& io, const std::string& fingerprint) {
  const fs::path& staging = job.paths.staging;
  if (io.mkdir(staging.c_str(), 0777) != 0 && errno != EEXIST)
    return Status(Errc::io, staging.string() + ": cannot create the job's staging directory: " +
                                errno_text(errno));
  struct stat st {};
  if (::stat(staging.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return Status(Errc::io, staging.string() + ": is not a directory");
  if (read_fingerprint(staging) == fingerprint)
    return {};
  const std::string text = fingerprint_file_text(fingerprint);
  return write_file_atomic(io, staging / PLAN_FINGERPRINT_NAME, std::as_bytes(std::span(text)));
}

// This rank's share, written durably. Returns its files' "NAME DIGEST" lines for rank 0's
// SHA256SUMS (empty digests without --checksums).
Result<std::string> write_share(const Job& job, Io& io, const Checkpoint& input, const Plan& plan,
                                const PipelineConfig& config, Profiler& profiler,
                                Coordinator& coordinator, const Notes& notes, UploadResult& r) {
  const fs::path& staging = job.paths.staging;
  const std::vector<uint32_t> files = my_files(io, plan, staging, job.rank, job.options.resume, r);
  if (notes && r.kept_files)
    notes({job.paths.output.string() + ": " + job.who + " keeps " + std::to_string(r.kept_files) +
           " finished file(s) of an earlier run"});
  std::vector<std::string> digests(plan.files.size());
  PipelineConfig mine = config;
  mine.cancel = coordinator.stop_flag();
  if (config.digests)
    mine.digests = &digests;
  DirectoryTarget target(staging, nullptr, config.fill);
  auto moved = run_pipeline(input, plan, files, target, mine, profiler);
  // Stopped because of another rank (it failed, or runs with another world size): that is the
  // cause to report, not what the stop left here (a file whose directory rank 0 removed, say).
  // Only this process's own interruption is one (exit 130).
  const bool stopped = coordinator.stop_flag()->load();
  if (stopped && !job.cancelled())
    return Status(Errc::io, job.who + ": stopped: " + coordinator.stop_reason());
  if (!moved)
    return name_final_paths(moved.status(), staging, job.paths.output);
  if (stopped)
    return Status(Errc::interrupted, job.who + ": stopped: " + coordinator.stop_reason());
  r.moved = *moved;
  std::string done;
  const std::vector<std::vector<uint32_t>> shares = assign_files(plan, job.rank.world);
  for (uint32_t f : shares[job.rank.rank]) { // (a temporary's element would not outlive the loop)
    std::string digest = digests[f];
    if (config.digests && digest.empty()) { // kept by --resume: read back
      auto d = sha256_of_file(staging / plan.files[f].name, config.chunk_bytes);
      if (!d)
        return d.status();
      digest = *d;
    }
    done += plan.files[f].name + " " + digest + "\n";
  }
  return done;
}

// Rank 0 after a failure: why nothing was written (the caller removes the staging directory,
// or keeps it with --resume). `for_commit`: the staging directory had been moved for the commit,
// which the next run removes and writes again, so nothing there can be resumed.
Status failed_job(const Job& job, const std::vector<std::string>& failures, bool for_commit) {
  const fs::path& output = job.paths.output;
  std::string m = "the job of " + std::to_string(job.rank.world) + " ranks failed; nothing was " +
                  "written to " + output.string() + ":";
  for (const std::string& f : failures)
    m += "\n  " + f;
  if (job.options.resume && for_commit)
    m += "\n" + output.string() + ": the files finished so far are in " +
         job.paths.staging.string() + ", moved there for the commit; the next run of this job " +
         "removes it and writes every file again (--resume cannot continue a commit)";
  else if (job.options.resume)
    m += "\n" + output.string() + ": the files finished so far are kept in " +
         job.paths.staging.string() + "; run the same job with --resume to continue from them";
  return Status(job.cancelled() ? Errc::interrupted : Errc::io, m);
}

// Rank 0, every rank reported its share written: each file the plan writes is in the staging
// directory, a regular file of its planned size. A rank that wrote into another directory (OUT on
// a disk of its own node under the same path, a relative OUT from another working directory, or
// anything the coordinator could not see) reports done like the others; committing then would
// give an OUT whose index names files it does not hold, and exit 0 everywhere. Returns the
// failure to report ("" when every file is there).
std::string missing_files(const Job& job, const Plan& plan) {
  const std::vector<std::vector<uint32_t>> shares = assign_files(plan, job.rank.world);
  std::vector<std::string> wrong;
  for (size_t k = 0; k < shares.size(); ++k)
    for (uint32_t f : shares[k]) {
      const std::string& name = plan.files[f].name;
      const std::string whose = " (rank " + std::to_string(k) + "'s share): ";
      struct stat st {};
      if (::lstat((job.paths.staging / name).c_str(), &st) != 0)
        wrong.push_back(name + whose + "missing");
      else if (!S_ISREG(st.st_mode))
        wrong.push_back(name + whose + "not a regular file");
      else if (static_cast<uint64_t>(st.st_size) != plan.files[f].size())
        wrong.push_back(name + whose + std::to_string(st.st_size) + " bytes, planned " +
                        std::to_string(plan.files[f].size()));
    }
  if (wrong.empty())
    return {};
  constexpr size_t SHOWN = 10;
  std::string m =
      job.who + ": " + std::to_string(wrong.size()) + " of " + std::to_string(plan.files.size()) +
      " file(s) the plan writes are not in the job's staging directory " +
      job.paths.staging.string() + " as planned, though every rank reported its share written:";
  for (size_t i = 0; i < wrong.size() && i < SHOWN; ++i)
    m += "\n    " + wrong[i];
  if (wrong.size() > SHOWN)
    m += "\n    and " + std::to_string(wrong.size() - SHOWN) + " more";
  m += "\n    every rank must write into this one directory, on a filesystem all of them share: "
       "is OUT on a disk of each node's own (the same path on every node, not the same disk), "
       "or did a rank take a relative OUT from another working directory?";
  return m;
}

// Rank 0, just before the rename: the staging directory holds what the plan writes (its files,
// the side files, SHA256SUMS, the index) and the fingerprint that commit_output replaces by the
// output's marker, and nothing else. Whatever else is at its top is coordination (a marker of a
// killed job of this plan, of any world size, or of a rank that went on after its share) or a
// killed job's leftover, and would otherwise be renamed into OUT and listed as its own.
void remove_strays(Io& io, const fs::path& staging, const Plan& plan, bool digests) {
  std::set<std::string, std::less<>> expected{PLAN_FINGERPRINT_NAME};
  auto top = [](const std::string& name) { return name.substr(0, name.find('/')); };
  for (const auto& file : plan.files)
    expected.insert(top(file.name));
  for (const std::string& name : plan.side_files)
    expected.insert(top(name));
  if (digests)
    expected.insert("SHA256SUMS");
  if (plan.write_index)
    expected.insert(INDEX_FILE_NAME);
  std::vector<fs::path> strays;
  std::error_code ec;
  for (fs::directory_iterator it(staging, ec), end; !ec && it != end; it.increment(ec))
    if (!expected.contains(it->path().filename().string()))
      strays.push_back(it->path());
  for (const fs::path& p : strays)
    remove_tree(io, p).ignore();
}

// Rank 0, every rank done, so nothing else writes in the staging directory: the temporary files
// killed runs of this job left there (a side file's, in a subdirectory too, or a marker's) go,
// or the commit would carry them into OUT. Each rank cleared its own shards' already.
void remove_temporaries(Io& io, const fs::path& staging) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(staging, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.starts_with(".") && name.find(".shardshift-tmp-") != std::string::npos) {
      found.push_back(it->path());
      if (it->is_directory(ec))
        it.disable_recursion_pending();
    }
  }
  for (const fs::path& p : found)
    remove_tree(io, p).ignore();
}

// Rank 0, every rank done: side files, SHA256SUMS (from the ranks' "NAME DIGEST" lines), the
// index, then the directory into place.
Status commit_job(const Job& job, Io& io, const Checkpoint& input, const Plan& plan,
                  const PipelineConfig& config, const std::vector<std::string>& done,
                  Coordinator& coordinator, UploadResult& r) {
  const fs::path& staging = job.paths.staging;
  std::map<std::string, size_t, std::less<>> file_index;
  for (size_t i = 0; i < plan.files.size(); ++i)
    file_index.emplace(plan.files[i].name, i);
  std::vector<std::string> digests(plan.files.size());
  for (const std::string& text : done) {
    std::istringstream lines(text);
    for (std::string name, digest; lines >> name >> digest;)
      if (auto it = file_index.find(name); it != file_index.end())
        digests[it->second] = digest;
  }
  remove_temporaries(io, staging);
  DirectoryTarget side_target(staging, &io);
  Status s = deliver_after_shards(
      side_target, io, input, plan, config.chunk_bytes, config.digests ? &digests : nullptr,
      job.options.cancel,
      [&](const std::string& name, std::string_view bytes) {
        return write_file_atomic(io, staging / name, std::as_bytes(std::span(bytes)));
      },
      &r.checksums, nullptr);
  if (s.ok()) { // commit_output removes the fingerprint once the output's marker is written
    if (Status b = coordinator.before_commit(); !b.ok())
      return b; // not this job's directory any more: nothing of it to remove
    remove_strays(io, staging, plan, config.digests != nullptr);
    s = commit_output(io, staging, job.paths.output, job.options.force);
  }
  if (!s.ok()) {
    discard_tree(io, staging).ignore();
    return name_final_paths(s, staging, job.paths.output);
  }
  return {};
}

} // namespace

std::unique_ptr<Coordinator> make_coordinator(const ConvertOptions& options, const RankInfo& rank,
                                              Io& io, const JobPaths& paths) {
  if (coordinates_through_mpi(rank))
    if (auto mpi = make_mpi_coordinator(options, rank))
      return mpi;
  return make_marker_coordinator(options, rank, io, paths);
}

namespace {

// What every rank must agree on: the plan, whether the files are hashed (--checksums), or rank 0
// would list empty digests for the files of ranks that did not hash theirs, and the side files
// rank 0 copies (none with --no-side-files), so that a rank given other flags is refused rather
// than a job committed with rank 0's. Different settings give different fingerprints, hence
// different staging directories and a refusal (MPI) or a rank that never turns up (markers),
// never a wrong SHA256SUMS.
std::string job_fingerprint(const std::string& plan, bool checksums,
                            const std::vector<std::string>& side_files) {
  std::string text = plan;
  if (checksums)
    text += " --checksums";
  text += " side files " + std::to_string(side_files.size());
  for (const std::string& name : side_files)
    text += " " + std::to_string(name.size()) + ":" + name;
  return sha256_hex(std::as_bytes(std::span(text)));
}

} // namespace

Result<UploadResult> write_directory_as_rank(const ConvertOptions& options, const Checkpoint& input,
                                             const Plan& plan, const PipelineConfig& config, Io& io,
                                             Profiler& profiler, const RankInfo& rank,
                                             const Notes& notes) {
  const std::string fingerprint =
      job_fingerprint(plan_fingerprint(input, plan, InputIdentity::shared),
                      config.digests != nullptr, plan.side_files);
  Job job{options,
          rank,
          {fs::absolute(options.output), {}},
          "rank " + std::to_string(rank.rank) + " of " + std::to_string(rank.world)};
  job.paths.staging =
      job.paths.output.parent_path() /
      (temp_name_prefix(job.paths.output.filename().string(), "job") + fingerprint.substr(0, 16));
  const std::unique_ptr<Coordinator> coordinator = make_coordinator(options, rank, io, job.paths);

  // 1. Every rank works on the same plan, into the same OUT, before anything is written.
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(job.paths.output, ec);
  if (ec)
    resolved = job.paths.output.lexically_normal();
  if (Status s = coordinator->agree_on_plan(fingerprint, resolved); !s.ok())
    return s;

  // 2. This rank's share into the shared staging directory. From here on a failure is reported
  // through the coordinator, so that every rank learns it and leaves alike.
  UploadResult r;
  Status own = make_staging(job, io, fingerprint);
  const bool staged = own.ok(); // rank 0 removes only a staging directory that is the job's
  own = coordinator->begin(job.paths.staging, own);
  if (coordinator->failed_alike()) { // each rank removes the directory no other rank will
    if (staged && !options.resume && (rank.rank == 0 || coordinator->owner_gone()) &&
        coordinator->staging_intact())
      discard_tree(io, job.paths.staging).ignore();
    return own;
  }
  std::string done;
  if (own.ok() && !coordinator->share_adopted()) {
    auto written = write_share(job, io, input, plan, config, profiler, *coordinator, notes, r);
    if (written)
      done = std::move(*written);
    else
      own = written.status();
  }
  auto ended = coordinator->end_share(own, done);

  // 3. Ranks > 0: the outcome, as rank 0 tells it.
  if (rank.rank != 0) {
    if (!ended)
      return ended.status();
    if (Status s = coordinator->learn_outcome(own); !s.ok()) {
      if (staged && !options.resume && coordinator->owner_gone() && coordinator->staging_intact())
        discard_tree(io, coordinator->staging_now(job.paths.staging)).ignore();
      return s;
    }
    return r;
  }

  // 4. Rank 0: commit once every rank's files are durable and where the plan puts them, never
  // after a failure.
  if (!ended) { // gave up waiting: the job's other ranks are ended by their launcher
    if (staged && !options.resume && coordinator->staging_intact())
      discard_tree(io, job.paths.staging).ignore();
    return Status(ended.status().code(),
                  ended.status().message() + "; nothing was written to " +
                      job.paths.output.string() +
                      (options.resume && staged ? " (the finished files are kept in " +
                                                      job.paths.staging.string() + " for --resume)"
                                                : std::string()));
  }
  const bool for_commit = !ended->staging.empty();
  if (for_commit) // moved for the commit (markers), whatever follows
    job.paths.staging = ended->staging;
  if (ended->failures.empty())
    if (std::string missing = missing_files(job, plan); !missing.empty())
      ended->failures.push_back(std::move(missing));
  if (!ended->failures.empty()) {
    Status failed = failed_job(job, ended->failures, for_commit);
    coordinator->tell_outcome(failed);
    if (staged && !options.resume && coordinator->staging_intact())
      discard_tree(io, job.paths.staging).ignore();
    return failed;
  }
  Status committed = commit_job(job, io, input, plan, config, ended->done, *coordinator, r);
  coordinator->tell_outcome(committed);
  if (!committed.ok())
    return committed;
  return r;
}

} // namespace shardshift
