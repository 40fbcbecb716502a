// ranks.h: one conversion spread over the processes a cluster launcher started (mpirun, srun,
// torchrun). Each process finds its rank and the world size in its environment (or from --rank /
// --world-size) and converts its share of the output files. Shares are a pure function of the plan
// (files balanced by bytes, largest first onto the least-loaded rank, ties to the lower rank), so
// every rank computes the same assignment without a message. The commit is rank 0's (job.h).
// Thread-safety: pure functions.
#pragma once

#include "shardshift/plan.h"
#include "shardshift/status.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace shardshift {

struct RankInfo {
  unsigned rank = 0, world = 1;
  std::string source; ///< where they came from: "--rank/--world-size", "Open MPI", "Slurm", ...
  /// Started by Open MPI's mpirun (its variables gave the rank): MPI_Init can reach the launcher,
  /// so the ranks may coordinate through MPI (job.h).
  bool launcher_is_mpi = false;
};

/// The most processes one job may have. Rank 0 looks at every rank's markers each heartbeat
/// (marker_coordinator.cpp) and every rank holds a share list per rank: a world of 10^8, a typo,
/// would run for hours before failing; the largest launchers' jobs stay far below this.
inline constexpr unsigned MAX_WORLD = 65536;

/// The rank and world size of this process: `rank` / `world` when given (both or neither), else
/// from the variables of the innermost launcher in `env`, in this order: Open MPI
/// (OMPI_COMM_WORLD_RANK/SIZE), PMI (PMI_RANK/PMI_SIZE: MPICH, Intel MPI), torchrun (RANK and
/// WORLD_SIZE, with LOCAL_RANK), Slurm's srun (SLURM_PROCID and SLURM_STEP_NUM_TASKS, which a
/// batch script without srun does not have); else rank 0 of 1. A launcher started inside another
/// (mpirun or torchrun in a Slurm allocation) sets its own variables, and those win. Refuses
/// (Errc::invalid_argument) a rank >= world size, a world size of 0 or above MAX_WORLD and values
/// that are not numbers, naming the variables.
Result<RankInfo> detect_rank(std::optional<unsigned> rank, std::optional<unsigned> world,
                             const std::map<std::string, std::string>& env);

/// This process's environment as a map (for detect_rank).
std::map<std::string, std::string> environment();

/// The output files each rank writes: `world` lists of indices into plan.files, balanced by the
/// files' sizes. Every file is in exactly one list; a list may be empty.
std::vector<std::vector<uint32_t>> assign_files(const Plan& plan, unsigned world);

} // namespace shardshift
