// gpu_handle_test.cpp: the GPU opened beside the work and closed beside its end (gpu_handle.h),
// when a run retires it (gpu_retirement.h), and the buffer pool that pins its buffers when it
// opens and unlocks them when it closes (buffer_pool.h). The failure cases run everywhere (device
// 999 exists nowhere), and so do the pool's cases with a stand-in device that records what is
// page-locked; the last case needs a GPU and skips without one.
#include "buffer_pool.h"
#include "gpu_handle.h"
#include "gpu_retirement.h"

#include <atomic>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

constexpr uint64_t CHUNK = uint64_t{1} << 20;

TEST(GpuHandle, ADeviceThatCannotOpenFailsOnlyARunThatAskedForIt) {
  for (bool required : {false, true}) {
    SCOPED_TRACE(required);
    GpuHandle gpu(999, CHUNK, 2, required);
    gpu.wait();
    EXPECT_FALSE(gpu.use());
    EXPECT_FALSE(gpu.may_open());
    EXPECT_EQ(gpu.required(), required);
    const Status s = gpu.required_status();
    EXPECT_EQ(s.ok(), !required) << s.message();
    if (required)
      EXPECT_NE(s.message().find("CUDA"), std::string::npos) << s.message();
    // The summary names the device that did the work: the CPU.
    EXPECT_EQ(gpu.description().rfind("cpu (", 0), 0u) << gpu.description();
  }
}

// The errors a missing or out-of-range device gives, whether counted before the work (a stream)
// or on the opening thread (a directory): they name the option as given and say what to do.
TEST(GpuHandle, DeviceCountErrorsNameTheOptionAndWhatToDo) {
  const Status none = check_device_count("cuda", 0, 0);
  EXPECT_EQ(none.code(), Errc::cuda);
  EXPECT_NE(none.message().find("--device cuda: no usable CUDA GPU"), std::string::npos)
      << none.message();
  EXPECT_NE(none.message().find("use --device cpu or auto"), std::string::npos) << none.message();
  const Status beyond = check_device_count("cuda:3", 3, 2);
  EXPECT_EQ(beyond.code(), Errc::invalid_argument);
  EXPECT_NE(beyond.message().find("--device cuda:3: there are 2 CUDA device(s)"), std::string::npos)
      << beyond.message();
  EXPECT_TRUE(check_device_count("cuda:1", 1, 2).ok());
  EXPECT_TRUE(check_device_count("cuda", 0, 1).ok());
}

TEST(GpuHandle, BuffersStayOrdinaryAndTheHookNeverRunsWhenNoDeviceOpens) {
  GpuHandle gpu(999, CHUNK, 2, false);
  BufferPool pool(CHUNK, &gpu);
  auto a = pool.acquire();
  ASSERT_TRUE(a.ok());
  std::memset(*a, 0x5A, CHUNK);
  gpu.wait();
  EXPECT_FALSE(pool.pinned(*a));
  auto b = pool.acquire();
  ASSERT_TRUE(b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_FALSE(pool.pinned(*b));
  EXPECT_EQ(pool.in_use(), 2u);
  pool.release(*a);
  pool.release(*b);
  EXPECT_EQ(pool.in_use(), 0u);
}

// A stand-in for the CUDA stage: it page-locks nothing but records what it was asked to, and
// can refuse; it declines every chunk. Its log outlives it, for the checks after the handle.
struct PinLog {
  std::mutex mu;
  std::set<void*> pinned;
  int pins = 0, unpins = 0;
  bool refuse = false;
  bool closed = false;        ///< the device was destroyed
  size_t pinned_at_close = 0; ///< buffers still locked then
};

class StandInDevice final : public CudaTransformer {
public:
  explicit StandInDevice(std::shared_ptr<PinLog> log) : log_(std::move(log)) {}
  ~StandInDevice() override {
    std::lock_guard lock(log_->mu);
    log_->closed = true;
    log_->pinned_at_close = log_->pinned.size();
  }
  std::string device_name() const override { return "stand-in"; }
  uint64_t pinned_bytes() const override { return 0; }
  void* alloc_pinned(uint64_t) override { return nullptr; }
  void free_pinned(void*) override {}
  bool pin_in_place(void* p, uint64_t) override {
    std::lock_guard lock(log_->mu);
    ++log_->pins;
    return !log_->refuse && log_->pinned.insert(p).second;
  }
  void unpin_in_place(void* p) override {
    std::lock_guard lock(log_->mu);
    ++log_->unpins;
    EXPECT_EQ(log_->pinned.erase(p), 1u) << "unpinned a buffer that was not pinned";
  }
  Status run(const TransposeArgs&, CudaTimings*) override {
    return Status(Errc::cuda, "the stand-in runs nothing");
  }
  Status try_run(const TransposeArgs&, const StagingGuard&, const GpuWait&, CudaTimings*,
                 bool* ran) override {
    *ran = false;
    return {};
  }
  Status try_run_dequant(const std::vector<CudaDequantPart>&, std::byte*, uint64_t,
                         const StagingGuard&, const GpuWait&, CudaTimings*, bool* ran) override {
    *ran = false;
    return {};
  }

private:
  std::shared_ptr<PinLog> log_;
};

// Opens a StandInDevice that logs into `log`.
GpuHandle::Opener stand_in(std::shared_ptr<PinLog> log) {
  return [log = std::move(log)]() -> Result<std::unique_ptr<CudaTransformer>> {
    return std::unique_ptr<CudaTransformer>(std::make_unique<StandInDevice>(log));
  };
}

// The pool's buffers are page-locked in place whether they were made before the device opened
// (by the opening thread's hook) or after (as they are made), their contents untouched, reused
// without being locked again, and unlocked once each when the pool goes.
TEST(GpuHandle, PoolBuffersArePinnedInPlaceBeforeAndAfterTheDeviceOpens) {
  auto log = std::make_shared<PinLog>();
  std::promise<void> go;
  std::shared_future<void> gate = go.get_future().share();
  GpuHandle gpu(
      0,
      [log, gate]() -> Result<std::unique_ptr<CudaTransformer>> {
        gate.wait();
        return std::unique_ptr<CudaTransformer>(std::make_unique<StandInDevice>(log));
      },
      true);
  {
    BufferPool pool(CHUNK, &gpu);
    std::vector<std::byte*> early;
    for (int i = 0; i < 2; ++i) {
      auto p = pool.acquire();
      ASSERT_TRUE(p.ok());
      std::memset(*p, 0x40 + i, CHUNK);
      EXPECT_FALSE(pool.pinned(*p)) << "pinned before the device opened";
      early.push_back(*p);
    }
    EXPECT_FALSE(gpu.use());
    go.set_value();
    gpu.wait();
    ASSERT_TRUE(gpu.use());
    EXPECT_EQ(gpu.description(), "cuda:0 (stand-in)");
    for (int i = 0; i < 2; ++i) {
      EXPECT_TRUE(pool.pinned(early[i])) << i;
      EXPECT_EQ(early[i][CHUNK - 1], std::byte(0x40 + i)) << i;
    }
    auto later = pool.acquire();
    ASSERT_TRUE(later.ok());
    EXPECT_TRUE(pool.pinned(*later));
    {
      std::lock_guard lock(log->mu);
      EXPECT_EQ(log->pins, 3);
      EXPECT_EQ(log->pinned.size(), 3u);
    }
    pool.release(*later);
    auto again = pool.acquire(); // the released buffer, already locked
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *later);
    pool.release(*again);
    for (std::byte* p : early)
      pool.release(p);
    std::lock_guard lock(log->mu);
    EXPECT_EQ(log->pins, 3);
  }
  std::lock_guard lock(log->mu);
  EXPECT_EQ(log->unpins, 3);
  EXPECT_TRUE(log->pinned.empty());
}

// Retiring closes the device on a thread of its own, beside the rest of the run: use() gives
// nothing from then on, the pool's buffers are unlocked before the device goes (their contents
// kept: the writers still need them), a second retire does nothing, the summary still names the
// device, and the handle's destructor waits for the closing.
TEST(GpuHandle, ARetiredDeviceUnlocksThePoolThenClosesBesideTheRun) {
  auto log = std::make_shared<PinLog>();
  auto gpu = std::make_unique<GpuHandle>(0, stand_in(log), true);
  gpu->wait();
  ASSERT_TRUE(gpu->use());
  auto pool = std::make_shared<BufferPool>(CHUNK, gpu.get());
  std::vector<std::byte*> held;
  for (int i = 0; i < 3; ++i) {
    auto p = pool->acquire();
    ASSERT_TRUE(p.ok());
    std::memset(*p, 0x60 + i, CHUNK);
    EXPECT_TRUE(pool->pinned(*p)) << i;
    held.push_back(*p);
  }
  std::atomic<int> last_calls{0};
  gpu->retire([pool, &last_calls](CudaTransformer& device) {
    ++last_calls;
    EXPECT_EQ(device.device_name(), "stand-in");
    pool->unpin_all(device);
  });
  EXPECT_FALSE(gpu->use());
  gpu->retire([&last_calls](CudaTransformer&) { last_calls += 100; });
  EXPECT_EQ(gpu->description(), "cuda:0 (stand-in)");
  gpu.reset(); // waits for the closing
  EXPECT_EQ(last_calls.load(), 1);
  {
    std::lock_guard lock(log->mu);
    EXPECT_TRUE(log->closed);
    EXPECT_EQ(log->pinned_at_close, 0u)
        << "the device went before the pool's buffers were unlocked";
    EXPECT_EQ(log->unpins, 3);
  }
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(pool->pinned(held[i])) << i;
    EXPECT_EQ(held[i][CHUNK - 1], std::byte(0x60 + i)) << i;
    pool->release(held[i]);
  }
}

// A device retired while it is still opening is closed once it has opened; one that fails to
// open is still reported as the run's failure.
TEST(GpuHandle, RetiringWhileOpeningClosesItOnceOpen) {
  auto log = std::make_shared<PinLog>();
  std::promise<void> go;
  std::shared_future<void> gate = go.get_future().share();
  auto gpu = std::make_unique<GpuHandle>(
      0,
      [log, gate]() -> Result<std::unique_ptr<CudaTransformer>> {
        gate.wait();
        return std::unique_ptr<CudaTransformer>(std::make_unique<StandInDevice>(log));
      },
      true);
  std::atomic<int> last_calls{0};
  gpu->retire([&last_calls](CudaTransformer&) { ++last_calls; });
  EXPECT_FALSE(gpu->use());
  go.set_value();
  gpu->wait();
  EXPECT_FALSE(gpu->use()) << "a retired device came back";
  EXPECT_TRUE(gpu->required_status().ok());
  gpu.reset();
  EXPECT_EQ(last_calls.load(), 1);
  std::lock_guard lock(log->mu);
  EXPECT_TRUE(log->closed);

  GpuHandle failing(
      0, []() -> Result<std::unique_ptr<CudaTransformer>> { return Status(Errc::cuda, "no"); },
      true);
  failing.retire([](CudaTransformer&) { ADD_FAILURE() << "ran without a device"; });
  failing.wait();
  EXPECT_EQ(failing.required_status().code(), Errc::cuda);
}

// A chunk still on the device holds it: retiring gives no new Use, and the closing (the pool's
// unlocking, then the device's end) waits for the last one to end, however the two race.
TEST(GpuHandle, RetiringWaitsForTheChunksStillOnTheDevice) {
  auto log = std::make_shared<PinLog>();
  auto gpu = std::make_unique<GpuHandle>(0, stand_in(log), true);
  gpu->wait();
  GpuHandle::Use held = gpu->use();
  ASSERT_TRUE(held);
  EXPECT_EQ(held->device_name(), "stand-in");
  std::atomic<bool> holding{true};
  std::atomic<int> last_calls{0};
  gpu->retire([&](CudaTransformer&) {
    ++last_calls;
    EXPECT_FALSE(holding.load()) << "closing while a chunk was on the device";
  });
  EXPECT_FALSE(gpu->use()) << "a retired device was handed out";
  // A closing that did not wait would run in this time.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(last_calls.load(), 0);
  {
    std::lock_guard lock(log->mu);
    EXPECT_FALSE(log->closed) << "the device went while a chunk was on it";
  }
  holding = false;
  held.end();
  gpu.reset(); // waits for the closing
  EXPECT_EQ(last_calls.load(), 1);
  std::lock_guard lock(log->mu);
  EXPECT_TRUE(log->closed);
}

TEST(GpuHandle, ConcurrentUsesAndARetireCloseOnceWithNoUseLeft) {
  for (int round = 0; round < 20; ++round) {
    SCOPED_TRACE(round);
    auto log = std::make_shared<PinLog>();
    auto gpu = std::make_unique<GpuHandle>(0, stand_in(log), true);
    gpu->wait();
    std::atomic<int> live{0}, last_calls{0}, live_at_close{-1};
    std::atomic<bool> stop{false};
    std::vector<std::thread> users;
    for (int t = 0; t < 4; ++t)
      users.emplace_back([&] {
        while (!stop.load()) {
          GpuHandle::Use use = gpu->use();
          if (!use)
            continue;
          ++live;
          std::this_thread::sleep_for(std::chrono::milliseconds(1)); // a chunk on the device
          EXPECT_EQ(use->device_name(), "stand-in"); // reads the device: it must still be there
          --live;
        }
      });
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    gpu->retire([&](CudaTransformer&) {
      ++last_calls;
      live_at_close = live.load();
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    stop = true;
    for (std::thread& t : users)
      t.join();
    gpu.reset();
    EXPECT_EQ(last_calls.load(), 1);
    EXPECT_EQ(live_at_close.load(), 0);
  }
}

// The stand-in, with its first page-locking held until the gate opens (it says when it is held).
class SlowPin final : public CudaTransformer {
public:
  SlowPin(std::shared_ptr<PinLog> log, std::promise<void>& pinning, std::shared_future<void> gate)
      : inner_(std::move(log)), pinning_(pinning), gate_(std::move(gate)) {}
  std::string device_name() const override { return inner_.device_name(); }
  uint64_t pinned_bytes() const override { return 0; }
  void* alloc_pinned(uint64_t) override { return nullptr; }
  void free_pinned(void*) override {}
  bool pin_in_place(void* p, uint64_t n) override {
    if (std::exchange(first_, false)) {
      pinning_.set_value();
      gate_.wait();
    }
    return inner_.pin_in_place(p, n);
  }
  void unpin_in_place(void* p) override { inner_.unpin_in_place(p); }
  Status run(const TransposeArgs& a, CudaTimings* t) override { return inner_.run(a, t); }
  Status try_run(const TransposeArgs& a, const StagingGuard& g, const GpuWait& w, CudaTimings* t,
                 bool* ran) override {
    return inner_.try_run(a, g, w, t, ran);
  }
  Status try_run_dequant(const std::vector<CudaDequantPart>& parts, std::byte* d, uint64_t n,
                         const StagingGuard& g, const GpuWait& w, CudaTimings* t,
                         bool* ran) override {
    return inner_.try_run_dequant(parts, d, n, g, w, t, ran);
  }

private:
  StandInDevice inner_;
  std::promise<void>& pinning_;
  std::shared_future<void> gate_;
  bool first_ = true;
};

// Unlocking the pool's buffers (the closing's first step) waits for a buffer being page-locked
// as it is made, then unlocks it too; buffers made afterwards stay ordinary.
TEST(GpuHandle, UnpinningWaitsForABufferBeingPinned) {
  auto log = std::make_shared<PinLog>();
  std::promise<void> pinning, go;
  std::shared_future<void> gate = go.get_future().share();
  GpuHandle gpu(
      0,
      [&]() -> Result<std::unique_ptr<CudaTransformer>> {
        return std::unique_ptr<CudaTransformer>(std::make_unique<SlowPin>(log, pinning, gate));
      },
      true);
  gpu.wait();
  GpuHandle::Use use = gpu.use();
  ASSERT_TRUE(use);
  CudaTransformer& device = *use;
  BufferPool pool(CHUNK, &gpu); // the device is open: buffers are locked as they are made
  std::byte* made = nullptr;
  std::thread maker([&] {
    auto p = pool.acquire();
    ASSERT_TRUE(p.ok());
    made = *p;
  });
  pinning.get_future().wait(); // the maker is inside pin_in_place, outside the pool's lock
  std::atomic<bool> unpinned{false};
  std::thread closer([&] {
    pool.unpin_all(device);
    unpinned = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(unpinned.load()) << "unlocked the buffers while one was being locked";
  go.set_value();
  maker.join();
  closer.join();
  EXPECT_TRUE(unpinned.load());
  ASSERT_NE(made, nullptr);
  EXPECT_FALSE(pool.pinned(made));
  auto later = pool.acquire();
  ASSERT_TRUE(later.ok());
  EXPECT_FALSE(pool.pinned(*later)) << "a buffer made after the closing was locked";
  std::lock_guard lock(log->mu);
  EXPECT_TRUE(log->pinned.empty()) << log->pinned.size() << " buffer(s) left locked";
  EXPECT_EQ(log->pins, 1);
  EXPECT_EQ(log->unpins, 1);
  pool.release(made);
  pool.release(*later);
}

// The run retires its GPU once, when what is left at its pace so far is less than the lead (the
// bytes of this run: 1 GB in 1 s, 10 s left at 10%), or at the latest when its last lane's
// emitter stops; with no lead, only then.
TEST(GpuRetirement, RetiresWhenLessThanTheLeadIsLeftOrWhenTheEmittersStop) {
  constexpr uint64_t GB = 1'000'000'000, MS = 1'000'000, START = 5'000 * MS;
  int retired = 0;
  GpuRetirement paced(2, 10 * GB, 200 * MS, START, [&] { ++retired; });
  paced.wrote(0, START + 10 * MS);
  paced.wrote(1 * GB, START + 1'000 * MS);        // 9 s left
  paced.wrote(9 * GB, START + 9'000 * MS);        // 1 s left
  paced.wrote(9'700'000'000, START + 9'700 * MS); // 300 ms left
  EXPECT_EQ(retired, 0);
  EXPECT_FALSE(paced.fired());
  paced.wrote(9'850'000'000, START + 9'850 * MS); // 150 ms left
  EXPECT_EQ(retired, 1);
  paced.wrote(9'900'000'000, START + 9'900 * MS);
  paced.lane_stopped();
  paced.lane_stopped();
  EXPECT_EQ(retired, 1) << "retired twice";

  int at_end = 0;
  GpuRetirement unpaced(2, 10 * GB, 0, START, [&] { ++at_end; });
  unpaced.wrote(9'999'000'000, START + 9'999 * MS); // 1 ms left at that pace: no lead, no matter
  unpaced.lane_stopped();
  EXPECT_EQ(at_end, 0) << "retired with a lane still emitting";
  unpaced.lane_stopped();
  EXPECT_EQ(at_end, 1);

  int slow = 0; // a slow start: 10% in 5 s leaves 45 s, and the pace then decides
  GpuRetirement late(1, 10 * GB, 200 * MS, START, [&] { ++slow; });
  late.wrote(1 * GB, START + 5'000 * MS);
  late.wrote(9'990'000'000, START + 6'000 * MS); // 6 ms left
  EXPECT_EQ(slow, 1);
}

// With a profiler, the opening and the closing are spans of their own (gpu_open, gpu_close), on
// the device's track: --stats and --trace show what the GPU's fixed cost was and when. A failed
// opening is a gpu_open span too (the time it took to find out), with no closing.
TEST(GpuHandle, TheOpeningAndTheClosingAreProfiled) {
  Profiler profiler(true);
  auto log = std::make_shared<PinLog>();
  auto gpu = std::make_unique<GpuHandle>(
      0,
      [log]() -> Result<std::unique_ptr<CudaTransformer>> {
        std::this_thread::sleep_for(std::chrono::milliseconds(20)); // as a driver takes its time
        return std::unique_ptr<CudaTransformer>(std::make_unique<StandInDevice>(log));
      },
      true, false, &profiler);
  gpu->wait();
  gpu->retire([](CudaTransformer&) {});
  gpu.reset();
  auto s = profiler.summaries();
  const StageSummary& open = s[static_cast<int>(Stage::gpu_open)];
  EXPECT_EQ(open.count, 1u);
  EXPECT_GE(open.busy_ns, 20'000'000u);
  EXPECT_EQ(s[static_cast<int>(Stage::gpu_close)].count, 1u);
  EXPECT_STREQ(stage_name(Stage::gpu_open), "gpu_open");
  EXPECT_STREQ(stage_name(Stage::gpu_close), "gpu_close");

  Profiler failed_profiler(false);
  {
    GpuHandle failing(
        0, []() -> Result<std::unique_ptr<CudaTransformer>> { return Status(Errc::cuda, "no"); },
        false, false, &failed_profiler);
    failing.wait();
    failing.retire([](CudaTransformer&) { ADD_FAILURE() << "ran without a device"; });
  }
  s = failed_profiler.summaries();
  EXPECT_EQ(s[static_cast<int>(Stage::gpu_open)].count, 1u);
  EXPECT_EQ(s[static_cast<int>(Stage::gpu_close)].count, 0u);
}

// Retiring while the opening thread pins the pool's buffers (holding the handle's lock) returns
// at once: the writer lane that retires is not held up by the opening. The closing follows it.
TEST(GpuHandle, RetiringDoesNotWaitForTheOpeningsPinning) {
  auto log = std::make_shared<PinLog>();
  std::promise<void> pinning, go;
  std::shared_future<void> gate = go.get_future().share();
  std::promise<void> opener_go;
  std::shared_future<void> opener_gate = opener_go.get_future().share();
  auto gpu = std::make_unique<GpuHandle>(
      0,
      [&, opener_gate]() -> Result<std::unique_ptr<CudaTransformer>> {
        opener_gate.wait(); // until the pool has a buffer for the hook to pin
        return std::unique_ptr<CudaTransformer>(std::make_unique<SlowPin>(log, pinning, gate));
      },
      true);
  auto pool = std::make_shared<BufferPool>(CHUNK, gpu.get());
  auto early = pool->acquire();
  ASSERT_TRUE(early.ok());
  opener_go.set_value();
  pinning.get_future().wait(); // the opening thread is in the hook, pinning `early`
  std::atomic<int> last_calls{0};
  auto retired = std::async(std::launch::async, [&] {
    gpu->retire([pool, &last_calls](CudaTransformer& device) {
      ++last_calls;
      pool->unpin_all(device);
    });
  });
  const bool prompt = retired.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  go.set_value();
  retired.wait();
  EXPECT_TRUE(prompt) << "retire() waited for the opening's pinning";
  gpu.reset();
  EXPECT_EQ(last_calls.load(), 1);
  EXPECT_FALSE(pool->pinned(*early));
  pool->release(*early);
  std::lock_guard lock(log->mu);
  EXPECT_TRUE(log->closed);
  EXPECT_TRUE(log->pinned.empty());
}

// A buffer the device cannot page-lock stays ordinary: pinned() says so (its chunks stay on the
// CPU), and the pool does not unlock it at the end.
TEST(GpuHandle, ABufferTheDeviceCannotPinStaysOrdinary) {
  auto log = std::make_shared<PinLog>();
  log->refuse = true;
  GpuHandle gpu(0, stand_in(log), false);
  gpu.wait();
  ASSERT_TRUE(gpu.use());
  {
    BufferPool pool(CHUNK, &gpu);
    auto p = pool.acquire();
    ASSERT_TRUE(p.ok());
    EXPECT_FALSE(pool.pinned(*p));
    pool.release(*p);
  }
  std::lock_guard lock(log->mu);
  EXPECT_EQ(log->pins, 1);
  EXPECT_EQ(log->unpins, 0);
}

// An opening that fails with a device asked for by name fails the run with the opening's error.
TEST(GpuHandle, AFailedOpeningIsTheRequiredStatus) {
  GpuHandle gpu(
      0,
      []() -> Result<std::unique_ptr<CudaTransformer>> {
        return Status(Errc::cuda, "stand-in: out of device memory");
      },
      true);
  gpu.wait();
  EXPECT_FALSE(gpu.use());
  EXPECT_FALSE(gpu.may_open());
  EXPECT_EQ(gpu.required_status().message(), "stand-in: out of device memory");
}

TEST(GpuHandle, AHookRemovedIsNotCalledAfterwards) {
  GpuHandle gpu(0, CHUNK, 2, false);
  std::atomic<bool> removed{false}, called_after_removal{false};
  gpu.on_open([&](CudaTransformer&) {
    if (removed)
      called_after_removal = true;
  });
  gpu.remove_hook();
  removed = true;
  gpu.wait();
  EXPECT_FALSE(called_after_removal);
  EXPECT_TRUE(gpu.use() || !gpu.may_open());
}

// With a GPU: every buffer the pool handed out before the device opened is pinned once it has,
// its contents untouched, and later buffers are pinned from the start.
TEST(GpuHandle, BuffersMadeBeforeTheDeviceOpensArePinnedWhenItDoes) {
  if (CudaTransformer::device_count() == 0)
    GTEST_SKIP() << "no usable CUDA device";
  GpuHandle gpu(0, CHUNK, 2, true);
  BufferPool pool(CHUNK, &gpu);
  std::vector<std::byte*> early;
  for (int i = 0; i < 3; ++i) {
    auto p = pool.acquire();
    ASSERT_TRUE(p.ok());
    std::memset(*p, 0x30 + i, CHUNK);
    early.push_back(*p);
  }
  gpu.wait();
  ASSERT_TRUE(gpu.use()) << gpu.required_status().message();
  EXPECT_TRUE(gpu.required_status().ok());
  EXPECT_EQ(gpu.description().rfind("cuda:0 (", 0), 0u) << gpu.description();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(pool.pinned(early[i])) << i;
    EXPECT_EQ(early[i][CHUNK - 1], std::byte(0x30 + i)) << i;
  }
  auto later = pool.acquire();
  ASSERT_TRUE(later.ok());
  EXPECT_TRUE(pool.pinned(*later));
}

} // namespace
} // namespace shardshift
