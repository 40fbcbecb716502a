// gpu_handle_test.cpp: the GPU opened beside the work and closed beside its end (gpu_handle.h),
// and the buffer pool that pins its buffers when it opens and unlocks them when it closes
// (buffer_pool.h). The failure cases run everywhere (device 999 exists nowhere), and so do the
// pool's cases with a stand-in device that records what is page-locked; the last case needs a
// GPU and skips without one.
#include "buffer_pool.h"
#include "gpu_handle.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace shardshift {
namespace {

constexpr uint64_t CHUNK = uint64_t{1} << 20;

TEST(GpuHandle, ADeviceThatCannotOpenFailsOnlyARunThatAskedForIt) {
  for (bool required : {false, true}) {
    SCOPED_TRACE(required);
    GpuHandle gpu(999, CHUNK, 2, required);
    gpu.wait();
    EXPECT_EQ(gpu.get(), nullptr);
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
  EXPECT_NE(beyond.message().find("--device cuda:3: there are 2 CUDA device(s)"),
            std::string::npos)
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
  bool closed = false;         ///< the device was destroyed
  size_t pinned_at_close = 0;  ///< buffers still locked then
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
    EXPECT_EQ(gpu.get(), nullptr);
    go.set_value();
    gpu.wait();
    ASSERT_NE(gpu.get(), nullptr);
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

// Retiring closes the device on a thread of its own, beside the rest of the run: get() gives
// nothing from then on, the pool's buffers are unlocked before the device goes (their contents
// kept: the writers still need them), a second retire does nothing, the summary still names the
// device, and the handle's destructor waits for the closing.
TEST(GpuHandle, ARetiredDeviceUnlocksThePoolThenClosesBesideTheRun) {
  auto log = std::make_shared<PinLog>();
  auto gpu = std::make_unique<GpuHandle>(
      0,
      [log]() -> Result<std::unique_ptr<CudaTransformer>> {
        return std::unique_ptr<CudaTransformer>(std::make_unique<StandInDevice>(log));
      },
      true);
  gpu->wait();
  ASSERT_NE(gpu->get(), nullptr);
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
  EXPECT_EQ(gpu->get(), nullptr);
  gpu->retire([&last_calls](CudaTransformer&) { last_calls += 100; });
  EXPECT_EQ(gpu->description(), "cuda:0 (stand-in)");
  gpu.reset(); // waits for the closing
  EXPECT_EQ(last_calls.load(), 1);
  {
    std::lock_guard lock(log->mu);
    EXPECT_TRUE(log->closed);
    EXPECT_EQ(log->pinned_at_close, 0u) << "the device went before the pool's buffers were unlocked";
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
  EXPECT_EQ(gpu->get(), nullptr);
  go.set_value();
  gpu->wait();
  EXPECT_EQ(gpu->get(), nullptr) << "a retired device came back";
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

// A buffer the device cannot page-lock stays ordinary: pinned() says so (its chunks stay on the
// CPU), and the pool does not unlock it at the end.
TEST(GpuHandle, ABufferTheDeviceCannotPinStaysOrdinary) {
  auto log = std::make_shared<PinLog>();
  log->refuse = true;
  GpuHandle gpu(
      0,
      [log]() -> Result<std::unique_ptr<CudaTransformer>> {
        return std::unique_ptr<CudaTransformer>(std::make_unique<StandInDevice>(log));
      },
      false);
  gpu.wait();
  ASSERT_NE(gpu.get(), nullptr);
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
      0, []() -> Result<std::unique_ptr<CudaTransformer>> {
        return Status(Errc::cuda, "stand-in: out of device memory");
      },
      true);
  gpu.wait();
  EXPECT_EQ(gpu.get(), nullptr);
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
  EXPECT_TRUE(gpu.get() != nullptr || !gpu.may_open());
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
  ASSERT_NE(gpu.get(), nullptr) << gpu.required_status().message();
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
