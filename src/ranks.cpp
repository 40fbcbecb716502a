// ranks.cpp: the rank and world size from a launcher's variables, and the byte-balanced shares.
#include "shardshift/ranks.h"

#include <algorithm>
#include <numeric>
#include <string_view>
#include <unistd.h>

extern char** environ;

namespace shardshift {

namespace {

struct Launcher {
  const char* name;
  const char* rank;
  const char* world;
  const char* also = nullptr; ///< a variable that must be present too
};

// Innermost first: the variables of a launcher started inside another are this process's own.
// torchrun is started on each node by mpirun or srun (its workers inherit their variables), and
// mpirun inside a Slurm allocation.
constexpr Launcher LAUNCHERS[] = {
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
    {"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
    {"PMI", "PMI_RANK", "PMI_SIZE"},
    {"Slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"},
};

// A decimal number of at most 9 digits, or nullopt.
std::optional<unsigned> number(const std::string& text) {
  if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  return static_cast<unsigned>(std::stoul(text));
}

Status check_pair(unsigned rank, unsigned world, const std::string& names) {
  if (world == 0)
    return Status(Errc::invalid_argument, names + ": the world size must be at least 1");
  if (world > MAX_WORLD)
    return Status(Errc::invalid_argument, names + ": a world size of " + std::to_string(world) +
                                              " is more than the " + std::to_string(MAX_WORLD) +
                                              " processes one job may have");
  if (rank >= world)
    return Status(Errc::invalid_argument,
                  names + ": rank " + std::to_string(rank) + " is not below the world size " +
                      std::to_string(world) + " (ranks are numbered from 0)");
  return {};
}

} // namespace

Result<RankInfo> detect_rank(std::optional<unsigned> rank, std::optional<unsigned> world,
                             const std::map<std::string, std::string>& env) {
  if (rank.has_value() != world.has_value())
    return Status(Errc::invalid_argument,
                  "--rank and --world-size go together: give both, or neither to take them from "
                  "the launcher (mpirun, srun, torchrun)");
  if (rank) {
    if (Status s = check_pair(*rank, *world, "--rank/--world-size"); !s.ok())
      return s;
    return RankInfo{*rank, *world, "--rank/--world-size"};
  }
  for (const Launcher& l : LAUNCHERS) {
    auto r = env.find(l.rank), w = env.find(l.world);
    if (r == env.end() || w == env.end() || (l.also && !env.count(l.also)))
      continue;
    const std::string names = std::string(l.name) + " (" + l.rank + "=" + r->second + ", " +
                              l.world + "=" + w->second + ")";
    auto rn = number(r->second), wn = number(w->second);
    if (!rn || !wn)
      return Status(Errc::invalid_argument,
                    names + ": not whole numbers (digits only, at most 9 of them)");
    if (Status s = check_pair(*rn, *wn, names); !s.ok())
      return s;
    return RankInfo{*rn, *wn, l.name, std::string_view(l.name) == "Open MPI"};
  }
  return RankInfo{0, 1, "a single process"};
}

std::map<std::string, std::string> environment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    const std::string entry(*e);
    const size_t eq = entry.find('=');
    if (eq != std::string::npos)
      env.emplace(entry.substr(0, eq), entry.substr(eq + 1));
  }
  return env;
}

std::vector<std::vector<uint32_t>> assign_files(const Plan& plan, unsigned world) {
  std::vector<std::vector<uint32_t>> shares(std::max(1u, world));
  std::vector<uint32_t> order(plan.files.size());
  std::iota(order.begin(), order.end(), 0u);
  // Largest first, each onto the rank with the fewest bytes so far (the lower rank on a tie): a
  // function of the plan alone, so every rank computes the same shares.
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return plan.files[a].size() > plan.files[b].size();
  });
  std::vector<uint64_t> load(shares.size(), 0);
  for (uint32_t f : order) {
    const size_t r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    shares[r].push_back(f);
    load[r] += plan.files[f].size();
  }
  for (auto& share : shares) // each rank writes its files in plan order
    std::sort(share.begin(), share.end());
  return shares;
}

} // namespace shardshift
