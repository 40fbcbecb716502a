// job.h: a directory output written by several processes at once, the ranks of one job started by
// a launcher (ranks.h), on a filesystem they all see. Every rank writes into one staging directory
// beside OUT whose name every rank derives from the plan's fingerprint
// (".OUT.shardshift-job-<16 hex>"); the ranks learn of each other through a coordinator
// (coordinator.h: MPI collectives under Open MPI's mpirun, else marker files in that directory):
//
//   every rank   agrees on the plan with the others, before anything is written;
//   every rank   writes its share of the shards (ranks.h: assign_files) durably and reports it
//                ended, with its files' SHA-256, or that it failed and why;
//   rank 0       once every rank has reported, checks that every file the plan writes is in the
//                directory with its planned size (a rank that wrote elsewhere, say onto a disk
//                of its own node, reports done too), writes the side files, SHA256SUMS and the
//                index, removes what else is there (coordination files, a killed job's leftovers)
//                and the fingerprint, marks and renames the directory into OUT, and tells the
//                other ranks; after any failure it tells them why and removes the directory (or
//                keeps it with --resume) instead;
//   ranks > 0    return the outcome rank 0 told, so every rank exits alike.
//
// What the shared filesystem must give (README "Ranks"): an atomic rename within a directory,
// close-to-open consistency (a file closed on one node reads whole on another after open), and,
// for marker files, modification times from one clock (heartbeat ages are read against a file
// rank 0 touches).
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
