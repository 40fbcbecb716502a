// job.cpp: the ranks of one job writing one directory output through a shared staging directory
// (job.h): shares, markers, heartbeats, rank 0's commit, and every rank learning the outcome.
#include "job.h"

#include "shardshift/shard_writer.h"

#include "outputs.h"
#include "resume.h"
#include "side_files.h"
#include "staging.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <sys/stat.h>
#include <thread>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

using Notes = std::function<void(const std::vector<std::string>&)>;
constexpr auto BEAT = std::chrono::milliseconds(500);
constexpr auto POLL = std::chrono::milliseconds(100);

std::string marker(unsigned r, unsigned n, const char* what) {
  return ".rank-" + std::to_string(r) + "-of-" + std::to_string(n) + "." + what;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Modification time in nanoseconds on the filesystem's clock; 0 when absent.
int64_t mtime_ns(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0)
    return 0;
  return int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
}

// This rank's heartbeat: ".rank-R-of-N.alive" holds a random nonce (a new one per run) and is
// touched every BEAT while the rank works or waits; its markers carry the same nonce, so a marker
// left by an earlier job with the same plan is never taken for this job's. The same thread
// watches for failures elsewhere (and the user's Ctrl-C) and raises `stop`.
class Heartbeat {
public:
  Heartbeat(Io& io, fs::path staging, const RankInfo& rank, const std::atomic<bool>* cancel)
      : io_(io), staging_(std::move(staging)), rank_(rank), cancel_(cancel) {
    std::random_device rd;
    nonce_ = std::to_string(rd()) + std::to_string(rd());
  }
  ~Heartbeat() { stop_beating(); }

  Status start() {
    if (Status s = write(marker(rank_.rank, rank_.world, "alive"), nonce_); !s.ok())
      return s;
    started_ns_ = mtime_ns(staging_ / marker(rank_.rank, rank_.world, "alive"));
    thread_ = std::thread([this] { beat(); });
    return {};
  }
  void stop_beating() {
    {
      std::lock_guard lock(mutex_);
      quit_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable())
      thread_.join();
  }
  /// Set when this rank should stop: another rank failed, or the user interrupted.
  const std::atomic<bool>* stop_flag() const { return &stop_; }
  const std::string& nonce() const { return nonce_; }
  int64_t started_ns() const { return started_ns_; }
  Status write(const std::string& name, const std::string& text) {
    return write_file_atomic(io_, staging_ / name, std::as_bytes(std::span(text)));
  }

private:
  void beat() {
    const fs::path alive = staging_ / marker(rank_.rank, rank_.world, "alive");
    std::unique_lock lock(mutex_);
    while (!wake_.wait_for(lock, BEAT, [this] { return quit_; })) {
      ::utimensat(AT_FDCWD, alive.c_str(), nullptr, 0); // now, on the filesystem's clock
      if ((cancel_ && cancel_->load()) || !first_failure(staging_, rank_.world, started_ns_).empty())
        stop_ = true;
    }
  }
  Io& io_;
  fs::path staging_;
  RankInfo rank_;
  const std::atomic<bool>* cancel_;
  std::string nonce_;
  int64_t started_ns_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool quit_ = false;
  std::thread thread_;

public:
  // The message of a ".failed" marker written after `since` (this job's), or "".
  static std::string first_failure(const fs::path& staging, unsigned world, int64_t since) {
    for (unsigned r = 0; r < world; ++r) {
      const fs::path f = staging / marker(r, world, "failed");
      if (mtime_ns(f) >= since && since > 0) {
        const std::string text = read_text(f); // the writer's nonce, then its message
        return text.substr(std::min(text.size(), text.find('\n') + 1));
      }
    }
    return {};
  }
};

// A rank of this job that runs with another world size: its heartbeat is ".rank-K-of-M.alive"
// with M != world, touched since this job began. "" when there is none.
std::string other_world(const fs::path& staging, unsigned world, int64_t since) {
  std::error_code ec;
  for (fs::directory_iterator it(staging, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    unsigned k = 0, m = 0;
    char tail[8] = {};
    if (std::sscanf(name.c_str(), ".rank-%u-of-%u.%7s", &k, &m, tail) == 3 &&
        std::string(tail) == "alive" && m != world && mtime_ns(it->path()) >= since)
      return "rank " + std::to_string(k) + " runs with a world size of " + std::to_string(m) +
             ", this one with " + std::to_string(world) +
             ": every process of a job must be given the same";
  }
  return {};
}

// A rank's state as rank 0 sees it.
enum class RankState { working, done, failed, gone };

struct Observed {
  RankState state = RankState::working;
  std::string text; ///< the done marker's digests, or the failure
};

// Rank r's marker, valid only when it carries the nonce now in its heartbeat file; a heartbeat
// not touched for `timeout` (against rank 0's own, on the same clock) means the rank is gone.
Observed observe(const fs::path& staging, unsigned r, unsigned world, int64_t now_ns,
                 int64_t job_start_ns, std::chrono::seconds timeout) {
  const std::string nonce = read_text(staging / marker(r, world, "alive"));
  const int64_t beat = mtime_ns(staging / marker(r, world, "alive"));
  for (auto [what, state] : {std::pair{"done", RankState::done}, {"failed", RankState::failed}}) {
    const std::string text = read_text(staging / marker(r, world, what));
    const size_t eol = text.find('\n');
    if (!nonce.empty() && eol != std::string::npos && text.substr(0, eol) == nonce)
      return {state, text.substr(eol + 1)};
  }
  const int64_t limit = std::chrono::nanoseconds(timeout).count();
  if (beat == 0 ? now_ns - job_start_ns > limit : now_ns - beat > limit)
    return {RankState::gone, "gave no sign of life for " +
                                 std::to_string(timeout.count()) +
                                 " s (killed, or never started); see its own output"};
  return {};
}

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
    const std::string prefix = "." + plan.files[f].name + ".shardshift-tmp-";
    std::error_code ec;
    for (fs::directory_iterator it(staging, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().filename().string().starts_with(prefix))
        remove_tree(io, it->path()).ignore();
  }
  return todo;
}

} // namespace

namespace {

// What every step of a rank's part of the job shares.
struct Job {
  const ConvertOptions& options;
  const RankInfo& rank;
  fs::path output, staging;
  struct stat staging_st {};
  std::string who; ///< "rank R of N", for messages
  Heartbeat* heart = nullptr;

  // Tells the other ranks (a "failed" marker) and returns `s`.
  Status fail(const Status& s) const {
    heart->write(marker(rank.rank, rank.world, "failed"),
                 heart->nonce() + "\n" + who + ": " + s.message())
        .ignore(); // best effort: the error itself is what this rank reports
    return s;
  }
  bool cancelled() const { return options.cancel && options.cancel->load(); }
  // OUT is the staging directory (a rename keeps device and inode), holding its marker.
  bool commit_seen() const {
    struct stat st {};
    return ::stat(output.c_str(), &st) == 0 && st.st_dev == staging_st.st_dev &&
           st.st_ino == staging_st.st_ino && fs::exists(output / OUTPUT_MARKER_NAME);
  }
};

// Ranks > 0, their share done: wait for rank 0's commit, or a failure, and report it.
Result<UploadResult> wait_for_commit(const Job& job, UploadResult r) {
  const Heartbeat& heart = *job.heart;
  for (;; std::this_thread::sleep_for(POLL)) {
    if (job.commit_seen())
      return r;
    const std::string failure =
        Heartbeat::first_failure(job.staging, job.rank.world, heart.started_ns());
    if (!failure.empty())
      return Status(Errc::io, "the job failed: " + failure);
    if (job.cancelled())
      return job.fail(Status(Errc::interrupted, "interrupted while waiting for the commit"));
    std::error_code ec;
    if (!fs::exists(job.staging, ec) && !job.commit_seen())
      return Status(Errc::io, "the job failed: rank 0 removed the staging directory without "
                              "committing; see its output");
    const int64_t now = mtime_ns(job.staging / marker(job.rank.rank, job.rank.world, "alive"));
    const Observed zero = observe(job.staging, 0, job.rank.world, now, heart.started_ns(),
                                  job.options.job_timeout);
    if (zero.state == RankState::gone)
      return job.fail(Status(Errc::io, "the job failed: rank 0 " + zero.text));
  }
}

// Rank 0: waits until every rank has ended its share. Returns the failures (none: every rank is
// done) and fills `digests` (one per plan file) from the done markers.
std::vector<std::string> wait_for_ranks(const Job& job, const Plan& plan,
                                        std::vector<std::string> failures,
                                        std::vector<std::string>* digests) {
  const unsigned world = job.rank.world;
  std::map<std::string, size_t, std::less<>> file_index;
  for (size_t i = 0; i < plan.files.size(); ++i)
    file_index.emplace(plan.files[i].name, i);
  for (;; std::this_thread::sleep_for(POLL)) {
    const int64_t now = mtime_ns(job.staging / marker(0, world, "alive"));
    bool all_ended = true;
    std::vector<std::string> seen;
    for (unsigned k = 0; k < world; ++k) {
      const Observed o =
          observe(job.staging, k, world, now, job.heart->started_ns(), job.options.job_timeout);
      // After a failure, a rank that never started is not waited for.
      if (o.state == RankState::working &&
          (failures.empty() || mtime_ns(job.staging / marker(k, world, "alive")) != 0))
        all_ended = false;
      if (o.state == RankState::failed || o.state == RankState::gone)
        seen.push_back(k == 0 ? o.text : "rank " + std::to_string(k) + ": " + o.text);
      if (o.state == RankState::done) {
        std::istringstream lines(o.text);
        for (std::string name, digest; lines >> name >> digest;)
          if (auto it = file_index.find(name); it != file_index.end())
            (*digests)[it->second] = digest;
      }
    }
    if (const std::string odd = other_world(job.staging, world, job.heart->started_ns());
        !odd.empty())
      seen.push_back(odd);
    if (!seen.empty() && failures.empty()) { // tell the others to stop
      failures = seen;
      job.fail(Status(Errc::io, "stopping the job: " + seen.front())).ignore();
    }
    if (all_ended) // all done, or every rank stopped after a failure
      return failures;
    if (job.cancelled() && failures.empty()) {
      failures.push_back(job.who + ": interrupted");
      job.fail(Status(Errc::interrupted, "interrupted")).ignore();
    }
  }
}

// Rank 0 after a failure: removes the staging directory (kept with --resume) and says why.
Status end_failed_job(const Job& job, Io& io, const std::vector<std::string>& failures) {
  // Ranks that finished their share poll for the outcome; give them time to read the failure
  // before the directory (with the markers) goes.
  std::this_thread::sleep_for(4 * POLL + BEAT);
  if (!job.options.resume)
    remove_tree(io, job.staging).ignore();
  std::string m = "the job of " + std::to_string(job.rank.world) + " ranks failed; nothing was " +
                  "written to " + job.output.string() + ":";
  for (const std::string& f : failures)
    m += "\n  " + f;
  if (job.options.resume)
    m += "\n" + job.output.string() + ": the files finished so far are kept in " +
         job.staging.string() + "; run the same job with --resume to continue from them";
  return Status(job.cancelled() ? Errc::interrupted : Errc::io, m);
}

// Rank 0, every rank done: side files, SHA256SUMS, the index, then the directory into place.
Status commit_job(const Job& job, Io& io, const Checkpoint& input, const Plan& plan,
                  const PipelineConfig& config, const std::vector<std::string>& digests,
                  UploadResult& r) {
  for (unsigned k = 0; k < job.rank.world; ++k)
    for (const char* what : {"done", "failed", "alive"})
      io.unlink((job.staging / marker(k, job.rank.world, what)).c_str());
  DirectoryTarget side_target(job.staging, &io);
  Status s = deliver_after_shards(
      side_target, io, input, plan, config.chunk_bytes, config.digests ? &digests : nullptr,
      job.options.cancel,
      [&](const std::string& name, std::string_view bytes) {
        return write_file_atomic(io, job.staging / name, std::as_bytes(std::span(bytes)));
      },
      &r.checksums, nullptr);
  if (s.ok() && io.unlink((job.staging / PLAN_FINGERPRINT_NAME).c_str()) != 0)
    s = Status(Errc::io,
               job.staging.string() + ": cannot remove the fingerprint: " + errno_text(errno));
  if (s.ok())
    s = commit_output(io, job.staging, job.output, job.options.force);
  if (!s.ok()) {
    remove_tree(io, job.staging).ignore();
    return name_final_paths(s, job.staging, job.output);
  }
  return {};
}

} // namespace

Result<UploadResult> write_directory_as_rank(const ConvertOptions& options,
                                             const Checkpoint& input, const Plan& plan,
                                             const PipelineConfig& config, Io& io,
                                             Profiler& profiler, const RankInfo& rank,
                                             const Notes& notes) {
  const std::string fingerprint = plan_fingerprint(input, plan);
  Job job{options, rank, fs::absolute(options.output), {}, {}, {}, nullptr};
  job.staging = job.output.parent_path() / ("." + job.output.filename().string() +
                                            ".shardshift-job-" + fingerprint.substr(0, 16));
  job.who = "rank " + std::to_string(rank.rank) + " of " + std::to_string(rank.world);
  if (io.mkdir(job.staging.c_str(), 0777) != 0 && errno != EEXIST)
    return Status(Errc::io, job.staging.string() +
                                ": cannot create the job's staging directory: " + errno_text(errno));
  if (::stat(job.staging.c_str(), &job.staging_st) != 0 || !S_ISDIR(job.staging_st.st_mode))
    return Status(Errc::io, job.staging.string() + ": is not a directory");
  const std::string fp_text = fingerprint_file_text(fingerprint);
  if (read_fingerprint(job.staging) != fingerprint)
    if (Status s = write_file_atomic(io, job.staging / PLAN_FINGERPRINT_NAME,
                                     std::as_bytes(std::span(fp_text)));
        !s.ok())
      return s;

  Heartbeat heart(io, job.staging, rank, options.cancel);
  job.heart = &heart;
  for (const char* what : {"done", "failed"}) // this rank's own leftovers
    io.unlink((job.staging / marker(rank.rank, rank.world, what)).c_str());
  if (Status s = heart.start(); !s.ok())
    return s;

  // 1. This rank's share, then its marker.
  UploadResult r;
  const std::vector<uint32_t> files = my_files(io, plan, job.staging, rank, options.resume, r);
  if (notes && r.kept_files)
    notes({job.output.string() + ": " + job.who + " keeps " + std::to_string(r.kept_files) +
           " finished file(s) of an earlier run"});
  std::vector<std::string> digests(plan.files.size());
  PipelineConfig mine = config;
  mine.cancel = heart.stop_flag();
  if (config.digests)
    mine.digests = &digests;
  DirectoryTarget target(job.staging);
  auto moved = run_pipeline(input, plan, files, target, mine, profiler);
  Status own = moved ? Status() : name_final_paths(moved.status(), job.staging, job.output);
  if (own.ok() && heart.stop_flag()->load())
    own = Status(Errc::interrupted,
                 job.who + ": stopped: " +
                     (job.cancelled() ? std::string("interrupted")
                                      : Heartbeat::first_failure(job.staging, rank.world,
                                                                 heart.started_ns())));
  if (own.ok()) {
    r.moved = *moved;
    std::string done = heart.nonce() + "\n";
    const std::vector<std::vector<uint32_t>> shares = assign_files(plan, rank.world);
    for (uint32_t f : shares[rank.rank]) { // (a temporary's element would not outlive the loop)
      std::string digest = digests[f];
      if (config.digests && digest.empty()) { // kept by --resume: read back
        auto d = sha256_of_file(job.staging / plan.files[f].name, config.chunk_bytes);
        if (!d)
          return job.fail(d.status());
        digest = *d;
      }
      done += plan.files[f].name + " " + digest + "\n";
    }
    if (Status s = heart.write(marker(rank.rank, rank.world, "done"), done); !s.ok())
      return job.fail(s);
  } else {
    job.fail(own).ignore(); // reported below, with every rank's
  }

  // 2. The outcome: ranks > 0 wait for rank 0's commit; rank 0 waits for every rank.
  if (rank.rank != 0)
    return own.ok() ? wait_for_commit(job, r) : Result<UploadResult>(own);
  std::vector<std::string> failures;
  if (!own.ok())
    failures.push_back(job.who + ": " + own.message());
  std::vector<std::string> all_digests(plan.files.size());
  failures = wait_for_ranks(job, plan, std::move(failures), &all_digests);
  heart.stop_beating();
  if (!failures.empty())
    return end_failed_job(job, io, failures);

  // 3. Rank 0 commits.
  if (Status s = commit_job(job, io, input, plan, config, all_digests, r); !s.ok())
    return s;
  return r;
}

} // namespace shardshift
