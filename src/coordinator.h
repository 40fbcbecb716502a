// coordinator.h: how the ranks of one job (job.h) learn of each other. The driver in job.cpp asks
// the same four questions whatever the launcher: do all ranks work on the same plan; has every
// rank ended its share, and how; should this rank stop early; did rank 0 commit. Two kinds answer:
//
//   MPI          (mpi_coordinator.cpp) when shardshift was built with MPI and the job was started
//                by Open MPI's mpirun (its OMPI_COMM_WORLD_* variables gave the rank): non-blocking
//                collectives on a private communicator, polled so that Ctrl-C and --job-timeout
//                still act while a rank waits; nothing is written for coordination;
//   marker files (marker_coordinator.cpp) for every other launcher, --rank/--world-size by hand,
//                and builds without MPI: ".rank-R-of-N.{alive,done,failed}" in the shared staging
//                directory, a heartbeat, and --job-timeout for a rank that went silent.
//
// Thread-safety: one coordinator per process, called from the thread that made it (MPI is
// initialized for that thread alone: MPI_THREAD_FUNNELED).
#pragma once

#include "shardshift/convert.h"
#include "shardshift/io.h"
#include "shardshift/ranks.h"
#include "shardshift/status.h"

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace shardshift {

/// What rank 0 learns once every rank has ended its share.
struct SharesEnded {
  std::vector<std::string> failures; ///< one line per failed rank, naming it; empty: all done
  std::vector<std::string> done;     ///< every done rank's "NAME DIGEST" lines
  /// Rank 0, every share done: where the staging directory is now, when the coordinator moved it
  /// for the commit (markers: commit_path); empty when it stayed.
  std::filesystem::path staging;
};

class Coordinator {
public:
  virtual ~Coordinator() = default;

  /// How this job coordinates, for the summary line: "MPI" or "marker files".
  virtual const char* name() const = 0;

  /// Before anything is written: every rank planned the output with this fingerprint, into this
  /// `output` (OUT's absolute path, symbolic links resolved), and the launcher's world is the one
  /// detect_rank found. A mismatch is an error on every rank that can see it (MPI: all of them,
  /// naming the paths where OUTs differ; markers: none here, since ranks of other plans or OUTs
  /// work in other staging directories, and ranks of another world are found from their
  /// heartbeats while the job runs).
  [[nodiscard]] virtual Status agree_on_plan(const std::string& fingerprint,
                                             const std::filesystem::path& output) = 0;

  /// The job's staging directory exists (`made` ok), or this rank could not make it (`made` its
  /// error, which begin returns). Start watching (markers: the heartbeat begins). MPI: every
  /// rank checks that it sees the directory rank 0 made (not one of its own node's, for an OUT
  /// on node-local disks), so every rank calls begin, whatever `made`.
  [[nodiscard]] virtual Status begin(const std::filesystem::path& staging, const Status& made) = 0;

  /// Raised when this rank should stop its share at its next piece of work: the user interrupted,
  /// or (markers) another rank failed. Never null.
  virtual const std::atomic<bool>* stop_flag() const = 0;
  /// Why stop_flag() was raised, for the message.
  virtual std::string stop_reason() const = 0;

  /// This rank's share has ended: its files are durable (`own` ok, `done` their "NAME DIGEST"
  /// lines) or it failed with `own`. Rank 0 waits for every rank and returns what they reported;
  /// other ranks return an empty SharesEnded, as soon as they are free to learn the outcome. An
  /// error means this rank gave up waiting (interrupted, or --job-timeout).
  [[nodiscard]] virtual Result<SharesEnded> end_share(const Status& own,
                                                      const std::string& done) = 0;

  /// Rank 0, every share done, just before the staging directory is renamed into OUT: remove
  /// what of the coordination is still in it (markers: every marker file; rank 0's heartbeat
  /// goes on, on the staging directory itself, until the coordinator ends, so that the other
  /// ranks can tell a rank 0 still committing, however slowly, from one that died).
  [[nodiscard]] virtual Status before_commit() { return {}; }

  /// Whether begin's error is one every rank found alike (MPI: a rank that cannot see rank 0's
  /// staging directory), so that each rank reports it and ends at once, as after agree_on_plan,
  /// without end_share's exchange.
  virtual bool failed_alike() const { return false; }

  /// After begin: this rank's share was finished by an earlier process of this rank, killed since
  /// (markers: its "done" marker stands), so this process writes nothing and waits for the
  /// outcome: rank 0 may be committing that share now.
  virtual bool share_adopted() const { return false; }

  /// Where the staging directory this rank began in is now (markers: moved by rank 0 for its
  /// commit, commit_path); `staging` where nothing moved it.
  virtual std::filesystem::path staging_now(const std::filesystem::path& staging) const {
    return staging;
  }

  /// Whether the staging directory is still the one this rank began in (not committed or
  /// replaced by another process, say a second rank 0): only then may a failed job remove it.
  virtual bool staging_intact() const { return true; }

  /// Ranks > 0, after learn_outcome failed: rank 0, whose staging directory it is to remove, is
  /// gone or never joined (markers), or this rank's staging directory is not rank 0's (MPI: OUT
  /// on a disk of each node's own), so the rank removes it itself.
  virtual bool owner_gone() const { return false; }

  /// Rank 0: the job's outcome (ok: OUT is committed; else why not) to every other rank, before
  /// the staging directory of a failed job is removed.
  virtual void tell_outcome(const Status& outcome) = 0;

  /// Ranks > 0, after end_share: the job's outcome as rank 0 told it; `own` when this rank failed.
  [[nodiscard]] virtual Status learn_outcome(const Status& own) = 0;
};

/// Where the job writes: OUT and the shared staging directory beside it.
struct JobPaths {
  std::filesystem::path output, staging;
};

/// Where rank 0 commits a marker-coordinated job's staging directory from, once every share is
/// done: ".OUT.shardshift-commit-PLAN" beside ".OUT.shardshift-job-PLAN".
std::filesystem::path commit_path(const JobPaths& paths);

/// True when this process coordinates through MPI: built with MPI, and started by Open MPI's
/// mpirun (rank.launcher_is_mpi). Every rank of a job decides alike, since they share a launcher.
bool coordinates_through_mpi(const RankInfo& rank);

/// The coordinator for this rank: MPI when coordinates_through_mpi(rank), else marker files.
std::unique_ptr<Coordinator> make_coordinator(const ConvertOptions& options, const RankInfo& rank,
                                              Io& io, const JobPaths& paths);

/// The kinds, for make_coordinator and the tests. make_mpi_coordinator is null in a build without
/// MPI.
std::unique_ptr<Coordinator> make_marker_coordinator(const ConvertOptions& options,
                                                     const RankInfo& rank, Io& io,
                                                     const JobPaths& paths);
std::unique_ptr<Coordinator> make_mpi_coordinator(const ConvertOptions& options,
                                                  const RankInfo& rank);

} // namespace shardshift
