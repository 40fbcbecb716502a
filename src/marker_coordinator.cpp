// marker_coordinator.cpp: the ranks of a job coordinated through files in the shared staging
// directory (coordinator.h), for every launcher but Open MPI's mpirun and for builds without MPI.
//
//   every rank   touches ".rank-R-of-N.alive" every BEAT while it works or waits, and when its
//                share ends writes ".rank-R-of-N.done" (its files' SHA-256) or
//                ".rank-R-of-N.failed" (its error);
//   every rank   stops at its next piece of work when a ".failed" marker appears;
//   rank 0       waits until every rank has a marker, or a rank's heartbeat is older than
//                --job-timeout, and removes the markers (of every world size: a killed job's of
//                the same plan too) before it commits;
//   ranks > 0    wait for the outcome: OUT is the staging directory (same device and inode, since
//                a rename keeps them) holding its marker, or a failure. A rank whose share is
//                done writes nothing more here (rank 0 may be committing the directory): one
//                interrupted then leaves quietly, and the job goes on.
//
// Ranks given different world sizes plan the same files and meet in one staging directory: each
// looks for another world's live heartbeat before it writes anything, and for another world's
// markers while it works and waits, so that every rank names the mismatch, not what it causes.
#include "coordinator.h"
#include "outputs.h"
#include "staging.h"
#include "temp_name.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

namespace shardshift {

namespace fs = std::filesystem;

fs::path commit_path(const JobPaths& paths) {
  std::string name = paths.staging.filename().string();
  const std::string job = ".shardshift-job-";
  if (const size_t at = name.rfind(job); at != std::string::npos)
    name.replace(at, job.size(), ".shardshift-commit-");
  else
    name += ".commit";
  return paths.staging.parent_path() / name;
}

namespace {

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

// A marker file in a staging directory, of any rank and world: this job's, a killed job's of the
// same plan (which may have had another world size), or a rank's given another world size.
struct MarkerFile {
  fs::path path;
  unsigned rank = 0, world = 0;
  std::string what; ///< "alive", "done" or "failed"
};

std::vector<MarkerFile> marker_files(const fs::path& staging) {
  std::vector<MarkerFile> found;
  std::error_code ec;
  for (fs::directory_iterator it(staging, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    unsigned k = 0, m = 0;
    char tail[8] = {};
    if (std::sscanf(name.c_str(), ".rank-%u-of-%u.%7s", &k, &m, tail) != 3)
      continue;
    const std::string what = tail;
    if ((what == "alive" || what == "done" || what == "failed") &&
        name == marker(k, m, what.c_str()))
      found.push_back({it->path(), k, m, what});
  }
  return found;
}

// A rank that runs with another world size in this staging directory (the plan does not depend
// on the world, so such ranks meet here): any of its markers written since this job began, a
// heartbeat or the failure it reported on seeing this job's. Found before anything else a
// mismatched job shows (files removed under a rank, ranks that never join), so that every rank
// that can see it names it. "" when there is none.
std::string world_mismatch(const MarkerFile& other, unsigned world) {
  return "rank " + std::to_string(other.rank) + " runs with a world size of " +
         std::to_string(other.world) + ", this one with " + std::to_string(world) +
         ": every process of a job must be given the same";
}

std::string other_world(const fs::path& staging, unsigned world, int64_t since) {
  if (since <= 0)
    return {};
  for (const MarkerFile& f : marker_files(staging))
    if (f.world != world && mtime_ns(f.path) >= since)
      return world_mismatch(f, world);
  return {};
}

// A rank of another world size that failed here on finding a rank of this world (its "failed"
// marker names this world size), up to `window` before this rank began. Such a rank may come
// and go before a slow rank of this world starts, leaving no heartbeat to see, and the ranks it
// displaced never join. Used only to explain a rank that never joined or went silent, so a job
// run again soon after such a failure, in the staging directory it left, gets the mismatch named
// as the likely cause of a failure it has anyway. "" when there is none.
std::string recent_other_world_failure(const fs::path& staging, unsigned world, int64_t since,
                                       std::chrono::seconds window) {
  if (since <= 0)
    return {};
  const int64_t from = since - std::chrono::nanoseconds(window).count();
  const std::string names_this = "runs with a world size of " + std::to_string(world) + ",";
  for (const MarkerFile& f : marker_files(staging))
    if (f.world != world && f.what == "failed" && mtime_ns(f.path) >= from &&
        read_text(f.path).find(names_this) != std::string::npos)
      return world_mismatch(f, world) + " (it stopped on meeting this job's ranks)";
  return {};
}

// Whether a live process touches `path` (a heartbeat file, a directory being committed): its time
// changes within a beat, and it is still there (not moved or removed meanwhile).
bool touched_within_a_beat(const fs::path& path) {
  const int64_t before = mtime_ns(path);
  if (before == 0)
    return false;
  std::this_thread::sleep_for(BEAT + 2 * POLL); // a live heartbeat is touched at least once
  const int64_t after = mtime_ns(path);
  return after != 0 && after != before;
}

// Before this rank writes anything: a rank of another world size at work here now, whose
// heartbeat is touched while this one looks (a killed job's, of whatever world, never is). Such a
// rank writes its own share of the same files under the same names, and each would take the
// other's temporary files for a killed writer's and remove them: without this, a rank's first
// error could be a rename of a vanished file instead of the mismatch. Of two ranks of different
// worlds that start together, the later one to write its heartbeat sees the other's here; the
// earlier learns of it from the later one's "failed" marker (other_world). "" when there is none.
std::string live_other_world(const fs::path& staging, unsigned world, int64_t since) {
  std::vector<std::pair<MarkerFile, int64_t>> seen;
  for (MarkerFile& f : marker_files(staging))
    if (f.world != world && f.what == "alive")
      seen.emplace_back(std::move(f), mtime_ns(f.path));
  if (seen.empty())
    return {};
  std::this_thread::sleep_for(BEAT + 2 * POLL); // a live heartbeat is touched at least once
  for (const auto& [f, before] : seen)
    if (const int64_t now = mtime_ns(f.path); now != 0 && now != before)
      return world_mismatch(f, world);
  return other_world(staging, world, since);
}

// The message of a ".failed" marker of this world written since `since` (this job's), or "".
std::string first_failure(const fs::path& staging, unsigned world, int64_t since) {
  for (unsigned r = 0; r < world; ++r) {
    const fs::path f = staging / marker(r, world, "failed");
    if (mtime_ns(f) >= since && since > 0) {
      const std::string text = read_text(f); // the writer's nonce, then its message
      return text.substr(std::min(text.size(), text.find('\n') + 1));
    }
  }
  return {};
}

// This rank's heartbeat: ".rank-R-of-N.alive" holds a random nonce (a new one per run) and is
// touched every BEAT while the rank works or waits; its markers carry the same nonce, so a marker
// left by an earlier job with the same plan is never taken for this job's. The same thread
// watches for failures elsewhere, ranks of another world size and the user's Ctrl-C, and raises
// `stop` with the reason.
class Heartbeat {
public:
  Heartbeat(Io& io, fs::path staging, const RankInfo& rank, const std::atomic<bool>* cancel)
      : io_(io), staging_(std::move(staging)), rank_(rank), cancel_(cancel),
        alive_name_(marker(rank.rank, rank.world, "alive")) {
    std::random_device rd;
    nonce_ = std::to_string(rd()) + std::to_string(rd());
    // The directory itself, whatever its name: rank 0 moves it for the commit, and a process
    // started late may make another under the old name, whose files this one must not touch.
    dir_fd_ = ::open(staging_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd_ >= 0)
      ::fstat(dir_fd_, &dir_st_);
  }
  ~Heartbeat() {
    stop_beating();
    if (dir_fd_ >= 0)
      ::close(dir_fd_);
  }

  Status start() {
    if (Status s = write(marker(rank_.rank, rank_.world, "alive"), nonce_); !s.ok())
      return s;
    started_ns_ = mtime_ns(staging_ / marker(rank_.rank, rank_.world, "alive"));
    thread_ = std::thread([this] { beat(); });
    return {};
  }
  // A last touch as the heartbeat stops: a rank that leaves on finding a rank of another world
  // size (its share done, so it writes no marker) is then seen by that rank as having been here
  // since it began (other_world), even if it left between two beats. A touch creates nothing:
  // once rank 0 has removed the file, or committed the directory, it does nothing.
  void stop_beating() {
    {
      std::lock_guard lock(mutex_);
      quit_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) {
      thread_.join();
      ::utimensat(dir_fd_, alive_name_.c_str(), nullptr, 0);
    }
  }
  /// Rank 0, committing from `dir` (the staging directory moved to commit_path): the beat
  /// touches the directory itself from now on (its markers are cleared; a rename keeps it), so
  /// that the waiting ranks still see rank 0 alive however long the commit takes.
  void committing(const fs::path& dir) {
    std::lock_guard lock(mutex_); // the beat reads staging_ under it
    staging_ = dir;
    committing_ = true;
  }
  /// Set when this rank should stop: another rank failed, a rank runs with another world size,
  /// or the user interrupted.
  const std::atomic<bool>* stop_flag() const { return &stop_; }
  /// Why stop_flag() was raised; "" before.
  std::string reason() const {
    std::lock_guard lock(reason_mutex_);
    return reason_;
  }
  const std::string& nonce() const { return nonce_; }
  int64_t started_ns() const { return started_ns_; }
  Status write(const std::string& name, const std::string& text) {
    std::lock_guard lock(mutex_);
    return write_here(name, text);
  }

private:
  void beat() {
    std::unique_lock lock(mutex_);
    while (!wake_.wait_for(lock, BEAT, [this] { return quit_; })) {
      const fs::path alive = staging_ / alive_name_;
      // Now, on the filesystem's clock; through the directory's descriptor, wherever it is.
      if (committing_)
        ::futimens(dir_fd_, nullptr);
      else
        ::utimensat(dir_fd_, alive_name_.c_str(), nullptr, 0);
      if (stop_ || committing_ || !still_here())
        continue; // moved for the commit: what is under its old name is another's
      std::string why = cancel_ && cancel_->load()
                            ? std::string("interrupted")
                            : other_world(staging_, rank_.world, started_ns_);
      if (why.empty())
        why = twin(alive);
      if (why.empty())
        why = first_failure(staging_, rank_.world, started_ns_);
      if (!why.empty()) {
        std::lock_guard reason_lock(reason_mutex_);
        reason_ = why;
        stop_ = true;
      }
    }
  }
  // Another process of the same rank rewrote this rank's heartbeat file (both started at once,
  // before either could see the other's): this one stops, and fails the job under the other's
  // nonce, so that every rank, the other too, learns why. "" when the file is still this one's.
  // Called by the beat, which holds mutex_.
  std::string twin(const fs::path& alive) {
    const std::string now = read_text(alive);
    if (now.empty() || now == nonce_)
      return {};
    const std::string why =
        "rank " + std::to_string(rank_.rank) + " of " + std::to_string(rank_.world) +
        " was started twice (two processes took its heartbeat file " + alive.string() + ")";
    write_here(marker(rank_.rank, rank_.world, "failed"), now + "\n" + why).ignore();
    return why;
  }

  // A marker written into the directory under its current name; mutex_ held.
  // A marker, whole or not at all. Its rename may be what lets rank 0 move the directory for the
  // commit (this rank's "done", the last one it waited for): the sync of the directory by its
  // old name then finds none. The marker is in place and is read: the directory is synced
  // through its descriptor instead, which follows it.
  Status write_here(const std::string& name, const std::string& text) {
    Status s = write_file_atomic(io_, staging_ / name, std::as_bytes(std::span(text)));
    if (s.ok() || dir_fd_ < 0 || still_here() || !holds(name, text))
      return s;
    // A filesystem that cannot sync a directory (some FUSE and network ones) is taken as the
    // sync by path takes it: the rename has happened.
    if (::fsync(dir_fd_) == 0 || errno == EINVAL || errno == ENOTSUP)
      return {};
    return Status(Errc::io, staging_.string() + ": cannot sync: " + errno_text(errno));
  }

  // The directory (wherever it is now) holds `name` with exactly `text`.
  bool holds(const std::string& name, const std::string& text) const {
    const int fd = ::openat(dir_fd_, name.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return false;
    std::string got(text.size() + 1, '\0');
    const ssize_t n = ::pread(fd, got.data(), got.size(), 0);
    ::close(fd);
    return n == static_cast<ssize_t>(text.size()) && got.compare(0, text.size(), text) == 0;
  }

  // The directory's current name still names it (not moved away, not replaced by another's).
  bool still_here() const {
    struct stat st {};
    return ::stat(staging_.c_str(), &st) == 0 && st.st_dev == dir_st_.st_dev &&
           st.st_ino == dir_st_.st_ino;
  }

  Io& io_;
  fs::path staging_;
  RankInfo rank_;
  const std::atomic<bool>* cancel_;
  std::string alive_name_;
  int dir_fd_ = -1;
  struct stat dir_st_ {};
  std::string nonce_;
  int64_t started_ns_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> committing_{false};
  mutable std::mutex reason_mutex_;
  std::string reason_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool quit_ = false;
  std::thread thread_;
};

// Rank `k` of this world at work in another staging directory of the same OUT: a job directory
// of another plan (".OUT.shardshift-job-OTHER"), its heartbeat touched since this job began. Ranks
// given other flags or other input files plan differently and never meet; without this each
// would wait out --job-timeout and call the other dead. "" when there is none.
std::string other_plan(const JobPaths& paths, unsigned k, unsigned world, int64_t since) {
  const std::string prefix = temp_name_prefix(paths.output.filename().string(), "job");
  std::error_code ec;
  for (fs::directory_iterator it(paths.staging.parent_path(), ec), end; !ec && it != end;
       it.increment(ec)) {
    const fs::path dir = it->path();
    if (!dir.filename().string().starts_with(prefix) || dir.filename() == paths.staging.filename())
      continue;
    if (mtime_ns(dir / marker(k, world, "alive")) >= since && since > 0)
      return "rank " + std::to_string(k) + " works on another plan (in " + dir.string() +
             "): every process of a job must be given the same input and flags";
  }
  return {};
}

// A rank's state as rank 0 sees it.
enum class RankState { working, done, failed, gone };

struct Observed {
  RankState state = RankState::working;
  std::string text; ///< the done marker's digests, or the failure
};

// Rank r's marker, valid only when it carries the nonce now in its heartbeat file: a "done"
// marker of a killed earlier job of this plan too (its files are this plan's; a process of that
// rank that joins later adopts them and writes nothing, see begin), a "failed" one only when
// written since this job began. A heartbeat not touched for `timeout` (against rank 0's own, on
// the same clock; an earlier job's counts from rank 0's start) means the rank is gone.
Observed observe(const fs::path& staging, unsigned r, unsigned world, int64_t now_ns,
                 int64_t job_start_ns, std::chrono::seconds timeout) {
  const std::string nonce = read_text(staging / marker(r, world, "alive"));
  const int64_t beat = mtime_ns(staging / marker(r, world, "alive"));
  for (auto [what, state] : {std::pair{"done", RankState::done}, {"failed", RankState::failed}}) {
    const fs::path f = staging / marker(r, world, what);
    if (state == RankState::failed && mtime_ns(f) < job_start_ns)
      continue; // an earlier job's failure (kept for --resume), not this job's
    const std::string text = read_text(f);
    const size_t eol = text.find('\n');
    if (!nonce.empty() && eol != std::string::npos && text.substr(0, eol) == nonce)
      return {state, text.substr(eol + 1)};
  }
  const int64_t limit = std::chrono::nanoseconds(timeout).count();
  if (beat != 0 && beat < job_start_ns && now_ns - job_start_ns <= limit)
    return {}; // a heartbeat older than this job: its rank has until the timeout to join
  if (beat == 0 && now_ns - job_start_ns > limit)
    return {RankState::gone,
            "never joined this job in " + std::to_string(timeout.count()) +
                " s (not started; given other input or flags, which make another plan; or given "
                "another OUT, say a relative one from another working directory, or one on a "
                "disk of its own node, not on a filesystem every rank shares); see its own "
                "output"};
  if (beat != 0 && now_ns - beat > limit)
    return {RankState::gone, "gave no sign of life for " + std::to_string(timeout.count()) +
                                 " s (killed?); see its own output"};
  return {};
}

class MarkerCoordinator final : public Coordinator {
public:
  MarkerCoordinator(const ConvertOptions& options, const RankInfo& rank, Io& io,
                    const JobPaths& paths)
      : options_(options), rank_(rank), io_(io), paths_(paths),
        who_("rank " + std::to_string(rank.rank) + " of " + std::to_string(rank.world)) {}

  const char* name() const override { return "marker files"; }

  // Ranks given other plans, or another OUT, write into other staging directories (the name is
  // OUT's and the plan's): rank 0 never sees them join, and fails the job after --job-timeout
  // (observe). Ranks given other world sizes meet in this one and see each other's markers
  // (other_world). Nothing is exchanged before the staging directory exists.
  Status agree_on_plan(const std::string&, const fs::path&) override { return {}; }

  Status begin(const fs::path& staging, const Status& made) override {
    if (!made.ok())
      return made;
    if (::stat(staging.c_str(), &staging_st_) != 0)
      return Status(Errc::io, staging.string() + ": " + errno_text(errno));
    // The OUT a --force run replaces, if any: never this job's commit.
    if (::stat(paths_.output.c_str(), &output_st_) != 0)
      output_st_ = {};
    // A share this rank's earlier process finished, which was killed since (its "done" marker
    // carries the nonce of the heartbeat it left, no longer touched; only a process of this rank
    // changes that heartbeat): rank 0 may be committing it now, so this process writes nothing
    // into the directory, neither a heartbeat nor its files again, and waits for the outcome.
    // Rank 0 itself commits, with no one else writing, and does its share again.
    const bool finished = rank_.rank != 0 && share_finished(staging);
    // This rank's heartbeat file touched by another process now: the same rank started twice.
    // The process that finds it leaves the job to the other, and removes nothing.
    if (const fs::path beat = staging / marker(rank_.rank, rank_.world, "alive");
        touched_within_a_beat(beat)) {
      twin_ = true;
      return Status(Errc::io, who_ + " already runs in this job (another process touches " +
                                  beat.string() +
                                  "): was it started twice? This process leaves the job to it");
    }
    // Read before the wait: rank 0 may have moved the directory for its commit since.
    if (finished || (rank_.rank != 0 && share_finished(staging)))
      return adopt();
    heart_ = std::make_unique<Heartbeat>(io_, staging, rank_, options_.cancel);
    for (const char* what : {"done", "failed"}) // this rank's own leftovers
      io_.unlink((staging / marker(rank_.rank, rank_.world, what)).c_str());
    if (Status s = heart_->start(); !s.ok()) {
      heart_.reset();
      // Every share was done before this process could join: rank 0 moved the directory to
      // commit it (what this process's heartbeat began is a stray that rank 0 removes).
      if (where() == commit_path(paths_) || commit_seen()) {
        if (rank_.rank != 0)
          return adopt();
        twin_ = true; // another rank 0 commits it: left to that one
        return Status(Errc::io, who_ +
                                    ": another process of rank 0 is committing this job (was "
                                    "rank 0 started twice?); this process leaves it to that one");
      }
      return s;
    }
    since_ns_ = heart_->started_ns();
    if (std::string odd = live_other_world(staging, rank_.world, heart_->started_ns());
        !odd.empty())
      return Status(Errc::io, odd); // (named with this rank where it is reported)
    return {};
  }

  const std::atomic<bool>* stop_flag() const override {
    static const std::atomic<bool> never{false};
    return heart_ ? heart_->stop_flag() : options_.cancel ? options_.cancel : &never;
  }
  std::string stop_reason() const override {
    if (cancelled())
      return "interrupted";
    if (std::string why = heart_ ? heart_->reason() : std::string(); !why.empty())
      return why;
    return first_failure(paths_.staging, rank_.world, since_ns_);
  }

  Result<SharesEnded> end_share(const Status& own, const std::string& done) override {
    if (!heart_) // begin() was never reached: nothing to tell, nobody to wait for
      return own.ok() ? Result<SharesEnded>(SharesEnded{}) : Result<SharesEnded>(own);
    // Rank 0 clears its heartbeat file only after reading every "done" marker: seen before
    // this rank writes its own, it is this job's rank 0 (see wait_for_commit).
    zero_seen_ = mtime_ns(paths_.staging / marker(0, rank_.world, "alive")) != 0;
    if (own.ok()) {
      if (Status s =
              heart_->write(marker(rank_.rank, rank_.world, "done"), heart_->nonce() + "\n" + done);
          !s.ok())
        return fail(s);
    } else {
      fail(own).ignore(); // reported with every rank's
    }
    if (rank_.rank != 0)
      return SharesEnded{};
    std::vector<std::string> failures;
    if (!own.ok())
      failures.push_back(who_ + ": " + own.message());
    else
      own_done_ = done;
    SharesEnded ended = wait_for_ranks(std::move(failures));
    if (!ended.failures.empty()) {
      heart_->stop_beating();
      return ended;
    }
    // Every share is done: the directory moves to a name of its own for the commit (the same
    // directory: the waiting ranks follow its inode). A process of this job that starts late
    // (ranks start at their own times) then finds no staging directory by the job's name and
    // makes its own, so nothing it writes can reach the directory being committed, nor take
    // out a file of it. Rank 0's heartbeat goes on through the commit (side files, the index)
    // on the directory itself: the others tell a slow commit from a dead rank 0 by it.
    const fs::path commit = commit_path(paths_);
    if (fs::exists(commit)) {
      // A commit of this plan under way (another job's rank 0 touches it), or a killed one's.
      if (touched_within_a_beat(commit)) {
        heart_->stop_beating();
        ended.failures.push_back(who_ + ": another job of this plan is committing " +
                                 commit.string() + " into " + paths_.output.string() +
                                 " (two jobs of the same conversion at once?)");
        return ended;
      }
      discard_tree(io_, commit).ignore(); // a killed commit's: this job wrote every file again
    }
    if (io_.rename(paths_.staging.c_str(), commit.c_str()) != 0) {
      const int err = errno;
      ended.failures.push_back(who_ + ": cannot move the staging directory " +
                               paths_.staging.string() + " to " + commit.string() +
                               " for the commit: " + errno_text(err));
      fail(Status(Errc::io, "stopping the job: " + ended.failures.back())).ignore();
      heart_->stop_beating();
      return ended;
    }
    heart_->committing(commit);
    paths_.staging = commit;
    ended.staging = commit;
    // The committed OUT carries no markers: neither this job's nor those a killed job of the
    // same plan left, whatever its world size.
    for (const MarkerFile& f : marker_files(paths_.staging))
      io_.unlink(f.path.c_str());
    return ended;
  }

  Status before_commit() override {
    if (!heart_)
      return {};
    if (!staging_is_ours()) // moved or replaced by another process: not this job's to commit
      return Status(Errc::io, who_ + ": the directory to commit, " + paths_.staging.string() +
                                  ", was moved or replaced by another process (two jobs of the "
                                  "same conversion at once?); nothing was committed");
    for (const MarkerFile& f : marker_files(paths_.staging)) // none written since end_share
      io_.unlink(f.path.c_str());
    return {};
  }

  // Ranks that finished their share poll for the outcome; give them time to read a failure
  // before the directory (with the markers) goes. A commit they see in OUT itself. A failure
  // rank 0 found only after every share was done (a planned file missing, a side file that
  // could not be copied) is told here, so that they name it rather than the removal.
  void tell_outcome(const Status& outcome) override {
    if (outcome.ok())
      return;
    if (heart_ && !told_failure_)
      fail(outcome).ignore();
    std::this_thread::sleep_for(4 * POLL + BEAT);
  }

  Status learn_outcome(const Status& own) override {
    if (!own.ok())
      return own;
    return wait_for_commit();
  }

private:
  bool cancelled() const { return options_.cancel && options_.cancel->load(); }

  // Tells the other ranks (a "failed" marker) and returns `s`.
  Status fail(const Status& s) const {
    told_failure_ = true;
    heart_
        ->write(marker(rank_.rank, rank_.world, "failed"),
                heart_->nonce() + "\n" + who_ + ": " + s.message())
        .ignore(); // best effort: the error itself is what this rank reports
    return s;
  }

  bool owner_gone() const override { return rank0_gone_; }

  bool share_adopted() const override { return adopted_; }

  // This rank's "done" marker carries the nonce of its heartbeat file: the share is finished.
  bool share_finished(const fs::path& staging) const {
    const std::string nonce = read_text(staging / marker(rank_.rank, rank_.world, "alive"));
    const std::string done = read_text(staging / marker(rank_.rank, rank_.world, "done"));
    return !nonce.empty() && done.starts_with(nonce + "\n");
  }

  // Joins as a rank whose share is done, writing nothing; failures and the commit from now on.
  Status adopt() {
    adopted_ = true;
    since_ns_ = std::chrono::duration_cast<std::chrono::nanoseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
    return {};
  }

  bool staging_intact() const override {
    return !twin_ && (staging_st_.st_ino == 0 || !where().empty());
  }

  fs::path staging_now(const fs::path&) const override { return here(); }

  // The staging directory is still the one this rank began in.
  bool staging_is_ours() const {
    struct stat st {};
    return ::stat(paths_.staging.c_str(), &st) == 0 && st.st_dev == staging_st_.st_dev &&
           st.st_ino == staging_st_.st_ino;
  }

  // OUT is the staging directory (a rename keeps device and inode), holding its marker.
  bool commit_seen() const {
    struct stat st {};
    return ::stat(paths_.output.c_str(), &st) == 0 && st.st_dev == staging_st_.st_dev &&
           st.st_ino == staging_st_.st_ino && fs::exists(paths_.output / OUTPUT_MARKER_NAME);
  }

  // Ranks > 0, their share done: wait for rank 0's commit, or a failure, and report it. Rank 0
  // is gone when its heartbeat has not changed for --job-timeout on this rank's own clock: its
  // heartbeat file, or once rank 0 has cleared the markers for its commit, the staging
  // directory itself, which it touches until the rename however long the commit takes (a
  // rank 0 killed then leaves it still for good).
  //
  // A rank whose share is done writes nothing more into the staging directory: rank 0 may be
  // committing it, and a marker written now would be renamed into OUT with it. So an interrupted
  // rank leaves quietly (its files are durable, its "done" marker read or about to be: the job
  // goes on without the process), and one that finds rank 0 gone removes the directory instead
  // of telling the others, who then see it gone.
  Status wait_for_commit() const {
    const fs::path beat = paths_.staging / marker(0, rank_.world, "alive");
    int64_t last_beat = beat_or_staging(beat);
    auto last_change = std::chrono::steady_clock::now();
    for (;; std::this_thread::sleep_for(POLL)) {
      zero_seen_ = zero_seen_ || mtime_ns(beat) != 0;
      if (commit_seen())
        return {};
      if (const std::string odd = other_world(here(), rank_.world, since_ns_); !odd.empty())
        return Status(Errc::io, "the job failed: " + odd);
      const std::string failure = first_failure(here(), rank_.world, since_ns_);
      if (!failure.empty())
        return Status(Errc::io, "the job failed: " + failure);
      if (cancelled())
        return Status(Errc::interrupted,
                      who_ +
                          ": interrupted while waiting for rank 0's commit; this rank's share "
                          "was finished, so the job goes on without this process: whether " +
                          paths_.output.string() + " was committed, rank 0's output says");
      if (where().empty() && !commit_seen())
        return Status(Errc::io, "the job failed: its staging directory was removed without a "
                                "commit (by rank 0, or by a rank that found rank 0 gone); see "
                                "rank 0's output");
      if (!where().empty() && committed_without_this_rank()) {
        rank0_gone_ = true; // the directory is this process's own: it removes it
        return Status(Errc::io, "the job was committed into " + paths_.output.string() +
                                    " without this process: it started after every share was "
                                    "done (rank 0 was committing); nothing of it reached OUT");
      }
      // Another plan's rank 0 explains a rank 0 never seen here; once this job's has beaten, a
      // heartbeat file gone means its commit (markers cleared), not a rank 0 at work elsewhere.
      // (A rank 0 that starts after this rank's share ended and clears its markers within one
      // poll is never seen: then a live rank 0 of another plan still fails this job.)
      if (const std::string odd =
              zero_seen_ ? std::string() : other_plan(paths_, 0, rank_.world, since_ns_);
          !odd.empty() && mtime_ns(beat) == 0) {
        rank0_gone_ = true;
        return Status(Errc::io, "the job failed: " + odd);
      }
      if (const int64_t b = beat_or_staging(beat); b != last_beat) {
        last_beat = b;
        last_change = std::chrono::steady_clock::now();
      } else if (std::chrono::steady_clock::now() - last_change > options_.job_timeout) {
        rank0_gone_ = true;
        if (const std::string odd = recent_other_world_failure(paths_.staging, rank_.world,
                                                               since_ns_, options_.job_timeout);
            !odd.empty())
          return Status(Errc::io, "the job failed: " + odd);
        return Status(Errc::io, "the job failed: rank 0 gave no sign of life for " +
                                    std::to_string(options_.job_timeout.count()) +
                                    " s and did not commit (killed, not started, or given other "
                                    "input or flags, which make another plan, or another OUT); "
                                    "see its output");
      }
    }
  }

  // Rank 0's sign of life while this rank waits: its heartbeat file's time, or once that is gone
  // (the directory moved for the commit, the markers cleared), the directory's own.
  int64_t beat_or_staging(const fs::path& beat) const {
    const int64_t b = mtime_ns(beat);
    const fs::path dir = where();
    return b != 0 || dir.empty() ? b : mtime_ns(dir);
  }

  fs::path here() const {
    fs::path dir = where();
    return dir.empty() ? paths_.staging : dir;
  }

  // Where the directory this rank began in is now: the staging directory, or rank 0's commit
  // name for it (the same inode); "" when it is at neither.
  fs::path where() const {
    for (const fs::path& p : {paths_.staging, commit_path(paths_)}) {
      struct stat st {};
      if (::stat(p.c_str(), &st) == 0 && st.st_dev == staging_st_.st_dev &&
          st.st_ino == staging_st_.st_ino)
        return p;
    }
    return {};
  }

  // OUT committed from another directory than this rank's: this process started late and made
  // a staging directory of its own while rank 0 committed the job's.
  bool committed_without_this_rank() const {
    struct stat st {};
    return ::stat(paths_.output.c_str(), &st) == 0 &&
           !(st.st_dev == staging_st_.st_dev && st.st_ino == staging_st_.st_ino) &&
           !(st.st_dev == output_st_.st_dev && st.st_ino == output_st_.st_ino) &&
           fs::exists(paths_.output / OUTPUT_MARKER_NAME) && !commit_seen();
  }

  // Rank 0: waits until every rank has ended its share. Returns the failures (none: every rank
  // is done) and every done rank's digests.
  SharesEnded wait_for_ranks(std::vector<std::string> failures) const {
    const unsigned world = rank_.world;
    const fs::path& staging = paths_.staging;
    for (;; std::this_thread::sleep_for(POLL)) {
      if (!staging_is_ours()) // another rank 0 committed it, or something removed it
        return SharesEnded{{who_ + ": the staging directory " + staging.string() +
                            (commit_seen() ? " was committed into OUT by another process"
                                           : " was removed or replaced by another process") +
                            " (was rank 0 started twice?)"},
                           {}};
      const int64_t now = mtime_ns(staging / marker(0, world, "alive"));
      // The heartbeat only touches its file, never makes it again: gone, another process
      // removed it, and it can no longer time the other ranks (this would wait for ever).
      if (now == 0)
        return SharesEnded{{who_ + ": its heartbeat file in " + staging.string() +
                            " was removed by another process (was a rank started twice, or "
                            "the directory cleaned by hand?)"},
                           {}};
      bool all_ended = true;
      std::vector<std::string> seen, done;
      // A rank of another world size first: the ranks it displaced never join, and it may write
      // its share over theirs; that would be what the user reads instead.
      if (const std::string odd = other_world(staging, world, heart_->started_ns()); !odd.empty())
        seen.push_back(odd);
      if (own_done_) // rank 0 itself, from what it knows, not from files another may write
        done.push_back(*own_done_);
      for (unsigned k = 1; k < world; ++k) {
        const Observed o =
            observe(staging, k, world, now, heart_->started_ns(), options_.job_timeout);
        // After a failure, a rank that never started is not waited for.
        if (o.state == RankState::working &&
            (failures.empty() || mtime_ns(staging / marker(k, world, "alive")) != 0))
          all_ended = false;
        std::string why = "rank " + std::to_string(k) + ": " + o.text;
        if (o.state == RankState::gone) // displaced by a rank of another world size?
          if (std::string odd = recent_other_world_failure(staging, world, heart_->started_ns(),
                                                           options_.job_timeout);
              !odd.empty())
            why = std::move(odd);
        if ((o.state == RankState::failed || o.state == RankState::gone) &&
            std::find(seen.begin(), seen.end(), why) == seen.end())
          seen.push_back(std::move(why));
        if (o.state == RankState::done)
          done.push_back(o.text);
      }
      for (unsigned k = 0; k < world && seen.empty(); ++k)
        if (const std::string odd = other_plan(paths_, k, world, heart_->started_ns());
            !odd.empty())
          seen.push_back(odd);
      if (!seen.empty() && failures.empty()) { // tell the others to stop
        failures = seen;
        fail(Status(Errc::io, "stopping the job: " + seen.front())).ignore();
      }
      if (all_ended) // all done, or every rank stopped after a failure
        return SharesEnded{failures, done};
      if (cancelled() && failures.empty()) {
        failures.push_back(who_ + ": interrupted");
        fail(Status(Errc::interrupted, "interrupted")).ignore();
      }
    }
  }

  const ConvertOptions& options_;
  RankInfo rank_;
  Io& io_;
  JobPaths paths_;
  std::string who_; ///< "rank R of N", for messages
  struct stat staging_st_ {};
  struct stat output_st_ {}; ///< OUT as begin() found it (st_ino 0: none), which --force replaces
  std::unique_ptr<Heartbeat> heart_;
  std::optional<std::string> own_done_; ///< rank 0: its own share's digests, once it is done
  bool twin_ = false;    ///< begin: another process runs this rank in this job; its directory stays
  bool adopted_ = false; ///< begin: an earlier process of this rank finished its share
  int64_t since_ns_ =
      0; ///< when this rank joined (its heartbeat's start): markers before are older
  mutable bool zero_seen_ = false;    ///< ranks > 0: this job's rank 0 was seen beating
  mutable bool rank0_gone_ = false;   ///< wait_for_commit found rank 0 gone or never there
  mutable bool told_failure_ = false; ///< this rank wrote its "failed" marker
};

} // namespace

std::unique_ptr<Coordinator> make_marker_coordinator(const ConvertOptions& options,
                                                     const RankInfo& rank, Io& io,
                                                     const JobPaths& paths) {
  return std::make_unique<MarkerCoordinator>(options, rank, io, paths);
}

} // namespace shardshift
