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

Result<UploadResult> write_directory_as_rank(const ConvertOptions& options,
                                             const Checkpoint& input, const Plan& plan,
                                             const PipelineConfig& config, Io& io,
                                             Profiler& profiler, const RankInfo& rank,
                                             const Notes& notes) {
  const fs::path output = fs::absolute(options.output);
  const std::string fingerprint = plan_fingerprint(input, plan);
  const fs::path staging = output.parent_path() / ("." + output.filename().string() +
                                                   ".shardshift-job-" + fingerprint.substr(0, 16));
  const std::string who = "rank " + std::to_string(rank.rank) + " of " + std::to_string(rank.world);
  if (io.mkdir(staging.c_str(), 0777) != 0 && errno != EEXIST)
    return Status(Errc::io, staging.string() + ": cannot create the job's staging directory: " +
                                errno_text(errno));
  struct stat staging_st {};
  if (::stat(staging.c_str(), &staging_st) != 0 || !S_ISDIR(staging_st.st_mode))
    return Status(Errc::io, staging.string() + ": is not a directory");
  const std::string fp_text = fingerprint_file_text(fingerprint);
  if (read_fingerprint(staging) != fingerprint)
    if (Status s = write_file_atomic(io, staging / PLAN_FINGERPRINT_NAME,
                                     std::as_bytes(std::span(fp_text)));
        !s.ok())
      return s;

  Heartbeat heart(io, staging, rank, options.cancel);
  for (const char* what : {"done", "failed"}) // this rank's own leftovers
    io.unlink((staging / marker(rank.rank, rank.world, what)).c_str());
  if (Status s = heart.start(); !s.ok())
    return s;
  const auto fail_job = [&](const Status& s) {
    heart.write(marker(rank.rank, rank.world, "failed"),
                heart.nonce() + "\n" + who + ": " + s.message()).ignore();
    return s;
  };

  // 1. This rank's share.
  UploadResult r;
  const std::vector<uint32_t> files = my_files(io, plan, staging, rank, options.resume, r);
  if (notes && r.kept_files)
    notes({output.string() + ": " + who + " keeps " + std::to_string(r.kept_files) +
           " finished file(s) of an earlier run"});
  std::vector<std::string> digests(plan.files.size());
  PipelineConfig mine = config;
  mine.cancel = heart.stop_flag();
  if (config.digests)
    mine.digests = &digests;
  DirectoryTarget target(staging);
  auto moved = run_pipeline(input, plan, files, target, mine, profiler);
  Status own = moved ? Status() : name_final_paths(moved.status(), staging, output);
  if (own.ok() && heart.stop_flag()->load())
    own = Status(Errc::interrupted, who + ": stopped: " +
                                        (options.cancel && options.cancel->load()
                                             ? std::string("interrupted")
                                             : Heartbeat::first_failure(staging, rank.world,
                                                                        heart.started_ns())));
  if (own.ok()) {
    if (moved)
      r.moved = *moved;
    std::string done = heart.nonce() + "\n";
    const std::vector<std::vector<uint32_t>> shares = assign_files(plan, rank.world);
    for (uint32_t f : shares[rank.rank]) {
      std::string digest = digests[f];
      if (config.digests && digest.empty()) { // kept by --resume: read back
        auto d = sha256_of_file(staging / plan.files[f].name, config.chunk_bytes);
        if (!d)
          return fail_job(d.status());
        digest = *d;
      }
      done += plan.files[f].name + " " + digest + "\n";
    }
    if (Status s = heart.write(marker(rank.rank, rank.world, "done"), done); !s.ok())
      return fail_job(s);
  } else {
    fail_job(own).ignore(); // reported below, with every rank's
  }

  // 2. The outcome. Ranks > 0 wait for rank 0's commit (or a failure) and report it.
  const auto commit_seen = [&] {
    struct stat st {};
    return ::stat(output.c_str(), &st) == 0 && st.st_dev == staging_st.st_dev &&
           st.st_ino == staging_st.st_ino && fs::exists(output / OUTPUT_MARKER_NAME);
  };
  if (rank.rank != 0) {
    if (!own.ok())
      return own;
    for (;; std::this_thread::sleep_for(POLL)) {
      if (commit_seen())
        return r;
      const std::string failure =
          Heartbeat::first_failure(staging, rank.world, heart.started_ns());
      if (!failure.empty())
        return Status(Errc::io, "the job failed: " + failure);
      if (options.cancel && options.cancel->load())
        return fail_job(Status(Errc::interrupted, "interrupted while waiting for the commit"));
      std::error_code ec;
      if (!fs::exists(staging, ec) && !commit_seen())
        return Status(Errc::io, "the job failed: rank 0 removed the staging directory without "
                                "committing; see its output");
      const Observed zero = observe(staging, 0, rank.world, mtime_ns(staging / marker(
                                                                rank.rank, rank.world, "alive")),
                                    heart.started_ns(), options.job_timeout);
      if (zero.state == RankState::gone)
        return fail_job(Status(Errc::io, "the job failed: rank 0 " + zero.text));
    }
  }

  // Rank 0: wait until every rank has ended its share, then commit or clean up.
  std::vector<std::string> failures;
  if (!own.ok())
    failures.push_back(who + ": " + own.message());
  std::vector<std::pair<std::string, std::string>> sums_by_file;
  for (;; std::this_thread::sleep_for(POLL)) {
    const int64_t now = mtime_ns(staging / marker(0, rank.world, "alive"));
    bool all_ended = true;
    std::vector<std::string> seen;
    sums_by_file.clear();
    for (unsigned k = 0; k < rank.world; ++k) {
      const Observed o = observe(staging, k, rank.world, now, heart.started_ns(), options.job_timeout);
      // After a failure, a rank that never started is not waited for.
      if (o.state == RankState::working &&
          (failures.empty() || mtime_ns(staging / marker(k, rank.world, "alive")) != 0))
        all_ended = false;
      if (o.state == RankState::failed || o.state == RankState::gone)
        seen.push_back(k == 0 ? o.text : "rank " + std::to_string(k) + ": " + o.text);
      if (o.state == RankState::done) {
        std::istringstream lines(o.text);
        for (std::string name, digest; lines >> name >> digest;)
          sums_by_file.emplace_back(name, digest);
      }
    }
    if (const std::string odd = other_world(staging, rank.world, heart.started_ns()); !odd.empty())
      seen.push_back(odd);
    if (!seen.empty() && failures.empty()) { // tell the others to stop
      failures = seen;
      fail_job(Status(Errc::io, "stopping the job: " + seen.front())).ignore();
    }
    if (all_ended) // all done, or every rank stopped after a failure
      break;
    if (options.cancel && options.cancel->load() && failures.empty()) {
      failures.push_back(who + ": interrupted");
      fail_job(Status(Errc::interrupted, "interrupted")).ignore();
    }
  }
  heart.stop_beating();
  if (!failures.empty()) {
    // Ranks that finished their share poll for the outcome; give them time to read the failure
    // before the directory (with the markers) goes.
    std::this_thread::sleep_for(4 * POLL + BEAT);
    if (!options.resume)
      remove_tree(io, staging).ignore();
    std::string m = "the job of " + std::to_string(rank.world) + " ranks failed; nothing was "
                    "written to " + output.string() + ":";
    for (const std::string& f : failures)
      m += "\n  " + f;
    if (options.resume)
      m += "\n" + output.string() + ": the files finished so far are kept in " +
           staging.string() + "; run the same job with --resume to continue from them";
    return Status(options.cancel && options.cancel->load() ? Errc::interrupted : Errc::io, m);
  }

  // 3. Rank 0 commits: side files, SHA256SUMS, the index, then the directory into place.
  std::vector<std::string> all_digests(plan.files.size());
  for (const auto& [name, digest] : sums_by_file)
    for (size_t i = 0; i < plan.files.size(); ++i)
      if (plan.files[i].name == name)
        all_digests[i] = digest;
  for (unsigned k = 0; k < rank.world; ++k)
    for (const char* what : {"done", "failed", "alive"})
      io.unlink((staging / marker(k, rank.world, what)).c_str());
  DirectoryTarget side_target(staging, &io);
  Status s = deliver_after_shards(
      side_target, io, input, plan, config.chunk_bytes, config.digests ? &all_digests : nullptr,
      options.cancel,
      [&](const std::string& name, std::string_view bytes) {
        return write_file_atomic(io, staging / name, std::as_bytes(std::span(bytes)));
      },
      &r.checksums, nullptr);
  if (s.ok() && io.unlink((staging / PLAN_FINGERPRINT_NAME).c_str()) != 0)
    s = Status(Errc::io, staging.string() + ": cannot remove the fingerprint: " + errno_text(errno));
  if (s.ok())
    s = commit_output(io, staging, output, options.force);
  if (!s.ok()) {
    remove_tree(io, staging).ignore();
    return name_final_paths(s, staging, output);
  }
  return r;
}

} // namespace shardshift
