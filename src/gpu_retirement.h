// gpu_retirement.h: when a run is done with its GPU. The GPU is retired (GpuHandle::retire) ahead
// of the run's end, so that its closing (freeing the slots and resetting the device: about 70 ms
// on the H200 host, docs/PERFORMANCE.md "Closing the GPU ahead of the end") runs beside the last
// writes rather than after them:
// - once the pace of the run so far says that less than `ahead_ns` of it is left: the chunks from
//   then on go to the CPU (the same bits), which costs at most that time's share of the GPU's
//   help;
// - at the latest once every lane's emitter has stopped, when no chunk can reach it again.
// The closing itself waits for the chunks still on the device (GpuHandle::Use).
// Thread-safety: every member may be called from any thread; `retire` runs once.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

namespace shardshift {

class GpuRetirement {
public:
  /// The default lead: about three times the closing measured on an idle H200 host (70 ms), so
  /// that it ends before the last write even when the pace so far was a little optimistic.
  static constexpr uint64_t AHEAD_NS = 200'000'000;
  /// Where lanes help each other (emitter.h) they end together, with no tail of idle cores for
  /// the closing to hide in, and the closing took 0.28-0.48 s while 16 threads worked
  /// (PERFORMANCE.md, "Lanes that help"): it starts that much sooner.
  static constexpr uint64_t HELPING_AHEAD_NS = 400'000'000;

  /// `lanes` emitters; `total_bytes` of output in the run, which started at `start_ns`;
  /// `ahead_ns` 0: only once the emitters have stopped.
  GpuRetirement(unsigned lanes, uint64_t total_bytes, uint64_t ahead_ns, uint64_t start_ns,
                std::function<void()> retire)
      : emitting_(lanes), total_(total_bytes), ahead_ns_(ahead_ns), start_ns_(start_ns),
        retire_(std::move(retire)) {}

  /// `done` of the run's output bytes have been written, at `now_ns` (start_ns's clock).
  void wrote(uint64_t done, uint64_t now_ns) {
    if (ahead_ns_ == 0 || done == 0 || done >= total_ || now_ns <= start_ns_ || fired_.load())
      return;
    // What is left at the pace so far, in floating point: bytes times nanoseconds overflow 64 bits.
    const double left_ns = double(now_ns - start_ns_) * double(total_ - done) / double(done);
    if (left_ns < double(ahead_ns_))
      fire();
  }
  /// A lane's emitter has stopped.
  void lane_stopped() {
    if (--emitting_ == 0)
      fire();
  }
  bool fired() const { return fired_.load(); }

private:
  void fire() {
    if (!fired_.exchange(true) && retire_)
      retire_();
  }

  std::atomic<unsigned> emitting_;
  const uint64_t total_, ahead_ns_, start_ns_;
  std::atomic<bool> fired_{false};
  std::function<void()> retire_;
};

} // namespace shardshift
