// gpu_handle_test.cpp: the GPU opening beside the work (gpu_handle.h) and the buffer pool that
// pins its buffers when it opens (buffer_pool.h). The failure cases run everywhere (device 999
// exists nowhere); the pinning case needs a GPU and skips without one.
#include "buffer_pool.h"
#include "gpu_handle.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
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
