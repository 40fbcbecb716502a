// job.h: a directory output written by several processes at once, the ranks of one job started by
// a launcher (ranks.h), on a filesystem they all see. No coordinator and no messages: everything
// goes through one staging directory beside OUT whose name every rank derives from the plan's
// fingerprint (".OUT.shardshift-job-<16 hex>"):
//
//   every rank   writes its share of the shards (ranks.h: assign_files), then a marker
//                ".rank-R-of-N.done" holding its files' SHA-256 (or ".rank-R-of-N.failed" with its
//                error), and touches ".rank-R-of-N.alive" every second while it works;
//   every rank   stops at its next piece of work when a ".failed" marker appears;
//   rank 0       waits until every rank has a marker (or a rank's heartbeat is older than the job
//                timeout), then writes the side files, SHA256SUMS and the index, removes the
//                markers and the fingerprint, marks and renames the directory into OUT; on any
//                failure it removes the directory (or keeps it with --resume) instead;
//   ranks > 0    wait for that outcome: OUT is the staging directory (same device and inode, since
//                a rename keeps them) holding its marker, or a failure.
//
// What the shared filesystem must give (README "Ranks"): an atomic rename within a directory,
// close-to-open consistency (a file closed on one node reads whole on another after open), and
// modification times from one clock (the heartbeat ages are read against a file rank 0 touches).
// Thread-safety: one call per process.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/io.h"
#include "shardshift/plan.h"
#include "shardshift/profiler.h"

#include "pipeline.h"
#include "shardshift/ranks.h"
#include "upload.h"

#include <functional>
#include <string>
#include <vector>

namespace shardshift {

/// This rank's part of a directory output shared by `rank.world` processes. Every rank returns
/// the job's outcome: success only when OUT was committed, the first failure's message otherwise.
Result<UploadResult> write_directory_as_rank(
    const ConvertOptions& options, const Checkpoint& input, const Plan& plan,
    const PipelineConfig& config, Io& io, Profiler& profiler, const RankInfo& rank,
    const std::function<void(const std::vector<std::string>&)>& notes);

} // namespace shardshift
