// device_router.cpp: moving averages of each device's cost per byte, and the choice.
#include "device_router.h"

#include <cstdlib>
#include <cstring>

namespace shardshift {

namespace {

// SHARDSHIFT_ROUTER=cpu|gpu overrides the measurements, for comparisons: cpu sends no chunk to
// the GPU (it is still opened), gpu sends every chunk it can take.
int forced_choice() {
  static const int choice = [] {
    const char* v = std::getenv("SHARDSHIFT_ROUTER");
    return !v ? -1 : std::strcmp(v, "gpu") == 0 ? 1 : std::strcmp(v, "cpu") == 0 ? 0 : -1;
  }();
  return choice;
}

} // namespace

bool DeviceRouter::prefer_gpu() {
  if (const int forced = forced_choice(); forced >= 0)
    return forced == 1;
  const uint64_t n = chunks_.fetch_add(1);
  std::lock_guard lock(mu_);
  // Warm up by alternating, so both devices are measured on the same kind of chunks.
  if (samples_[0] < WARMUP || samples_[1] < WARMUP)
    return samples_[1] < WARMUP && (n % 2 == 0 || samples_[0] >= WARMUP);
  const bool gpu_cheaper = cost_[1] <= cost_[0];
  return n % PROBE_EVERY == 0 ? !gpu_cheaper : gpu_cheaper;
}

void DeviceRouter::record(bool gpu, uint64_t bytes, uint64_t ns) {
  if (bytes == 0)
    return;
  const double cost = static_cast<double>(ns) / static_cast<double>(bytes);
  std::lock_guard lock(mu_);
  double& avg = cost_[gpu ? 1 : 0];
  uint64_t& n = samples_[gpu ? 1 : 0];
  // A plain mean while warming up, then an exponential moving average that follows the load.
  avg = n < WARMUP ? (avg * static_cast<double>(n) + cost) / static_cast<double>(n + 1)
                   : 0.8 * avg + 0.2 * cost;
  ++n;
}

double DeviceRouter::cpu_cost() const {
  std::lock_guard lock(mu_);
  return cost_[0];
}

double DeviceRouter::gpu_cost() const {
  std::lock_guard lock(mu_);
  return cost_[1];
}

} // namespace shardshift
