// gpu_wait_test.cpp: a pipeline thread is not held while the GPU works on its chunk
// (gpu_wait.h). A stand-in device that works asynchronously, on its own thread as a GPU's stream
// does, and wakes its callers when done, runs the chunks of a real conversion inside an arena of
// one thread: the output is byte-identical to the CPU's, and that one thread had several chunks
// on the device at once, which it could not have had while asleep on one. Runs without a GPU.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/plan.h"

#include "device_router.h"
#include "gpu_handle.h"
#include "gpu_wait.h"
#include "pipeline.h"
#include "process_target.h"
#include "reference/checkpoint_files.h"
#include "test_support.h"

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

namespace shardshift::testing {
namespace {

// Does each chunk's transpose on the CPU, but later and on its own thread, as a GPU does: the
// caller stages the input (under its guard), queues the job and waits through its GpuWait. The
// device thread holds a job until a second one is queued (or 200 ms have passed), so a caller
// whose thread is free has a second chunk there in time, and the deepest queue is recorded. Its
// log outlives it: the pipeline retires (closes) the device once its last chunk is done.
struct AsyncLog {
  std::atomic<size_t> max_queued{0};
  std::atomic<int> async_runs{0}, sync_runs{0};
  std::atomic<bool> closed{false};
};

class AsyncStandIn final : public CudaTransformer {
public:
  explicit AsyncStandIn(std::shared_ptr<AsyncLog> log)
      : log_(std::move(log)), worker_([this] { work(); }) {}
  ~AsyncStandIn() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
    log_->closed = true;
  }
  std::string device_name() const override { return "async stand-in"; }
  uint64_t pinned_bytes() const override { return 0; }
  void* alloc_pinned(uint64_t) override { return nullptr; }
  void free_pinned(void*) override {}
  bool pin_in_place(void*, uint64_t) override { return true; }
  void unpin_in_place(void*) override {}
  Status run(const TransposeArgs&, CudaTimings*) override {
    return Status(Errc::cuda, "the stand-in runs chunks through try_run only");
  }
  Status try_run(const TransposeArgs& args, const StagingGuard& guard, const GpuWait& wait,
                 CudaTimings*, bool* ran) override {
    *ran = true;
    auto job = std::make_shared<Job>();
    job->args = args;
    job->input.resize(args.experts * args.A * args.B * (dtype_bits(args.src_dtype) / 8));
    if (Status s = guard(0, [&] { std::memcpy(job->input.data(), args.src, job->input.size()); });
        !s)
      return s;
    job->args.src = job->input.data();
    if (!wait) { // asleep: done at once, on this thread
      ++log_->sync_runs;
      transpose_fold_cpu(job->args);
      return {};
    }
    wait([&](GpuWake wake, void* token) {
      job->wake = wake;
      job->token = token;
      std::lock_guard lock(mu_);
      queue_.push_back(job);
      log_->max_queued = std::max(log_->max_queued.load(), queue_.size());
      cv_.notify_all();
      return true;
    });
    EXPECT_TRUE(job->done) << "the caller went on before its chunk was done";
    return {};
  }
  Status try_run_dequant(const std::vector<CudaDequantPart>&, std::byte*, uint64_t,
                         const StagingGuard&, const GpuWait&, CudaTimings*, bool* ran) override {
    *ran = false;
    return {};
  }

private:
  struct Job {
    TransposeArgs args;
    std::vector<std::byte> input;
    GpuWake wake = nullptr;
    void* token = nullptr;
    std::atomic<bool> done{false};
  };

  void work() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty())
        return;
      cv_.wait_for(lock, std::chrono::milliseconds(200),
                   [&] { return stop_ || queue_.size() >= 2; });
      std::shared_ptr<Job> job = queue_.front();
      queue_.pop_front();
      lock.unlock();
      transpose_fold_cpu(job->args);
      job->done = true;
      ++log_->async_runs;
      job->wake(job->token); // the caller may go on (and free the job) from here
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stop_ = false;
  std::shared_ptr<AsyncLog> log_;
  std::thread worker_;
};

class GpuWaitTest : public ::testing::Test {
protected:
  void SetUp() override { old_ = std::signal(SIGPIPE, SIG_IGN); } // as the app does
  void TearDown() override { std::signal(SIGPIPE, old_); }

  // A tiny diffusion_gemma checkpoint, its plan, and the files the CPU alone makes of it.
  void make_input() {
    std::mt19937_64 rng(test_seed());
    reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 3, 8, 64, 48), 2,
                                "diffusion_gemma");
    auto opened = Checkpoint::open(tmp / "hf");
    ASSERT_TRUE(opened.ok()) << opened.status().message();
    input.emplace(std::move(opened.value()));
    PlanOptions po;
    po.max_shard_size = 60'000;
    auto planned = make_plan(*input, po);
    ASSERT_TRUE(planned.ok()) << planned.status().message();
    plan.emplace(std::move(planned.value()));
    ConvertOptions o;
    o.input = tmp / "hf";
    o.output = tmp / "cpu";
    o.device = "cpu";
    o.plan = po;
    ASSERT_TRUE(convert(o).ok());
  }

  // Runs the pipeline with the stand-in device in an arena of one thread, into OUT, retiring
  // the device `ahead_ns` before the end (PipelineConfig::gpu_retire_ahead_ns), and checks that
  // the files equal the CPU's and that the device was retired.
  Result<PipelineResult> run_on_stand_in(GpuHandle& gpu, const std::string& out,
                                         uint64_t ahead_ns) {
    std::filesystem::create_directory(tmp / out);
    ProcessTarget target("cat > " + shell_quote((tmp / out).string()) + "/{name}");
    std::vector<uint32_t> files(plan->files.size());
    std::iota(files.begin(), files.end(), 0u);
    PipelineConfig config;
    config.writers = 2;
    config.chunk_bytes = 8 << 10; // several transform chunks a tensor
    config.tokens = 4;
    config.gpu = &gpu;
    config.gpu_retire_ahead_ns = ahead_ns;
    Profiler profiler(false);
    Result<PipelineResult> moved = Status(Errc::unsupported, "not run");
    tbb::task_arena one_thread(1);
    one_thread.execute(
        [&] { moved = run_pipeline(*input, *plan, files, target, config, profiler); });
    if (!moved.ok())
      return moved;
    EXPECT_FALSE(gpu.use()) << "the pipeline did not retire the device";
    for (const OutputFile& f : plan->files)
      EXPECT_EQ(read_bytes(tmp / out / f.name), read_bytes(tmp / "cpu" / f.name)) << f.name;
    return moved;
  }

  static std::unique_ptr<GpuHandle> open_stand_in(const std::shared_ptr<AsyncLog>& log) {
    auto gpu = std::make_unique<GpuHandle>(
        0,
        [log]() -> Result<std::unique_ptr<CudaTransformer>> {
          return std::unique_ptr<CudaTransformer>(std::make_unique<AsyncStandIn>(log));
        },
        true);
    gpu->wait();
    return gpu;
  }

  TempDir tmp;
  std::optional<Checkpoint> input;
  std::optional<Plan> plan;
  void (*old_)(int) = nullptr;
};

TEST_F(GpuWaitTest, AThreadWaitingForTheGpuRunsOtherChunksMeanwhile) {
  ASSERT_NO_FATAL_FAILURE(make_input());
  auto log = std::make_shared<AsyncLog>();
  auto gpu = open_stand_in(log);
  ASSERT_TRUE(gpu->use());
  // The device to the last chunk: this run is far shorter than any lead.
  auto moved = run_on_stand_in(*gpu, "gpu", 0);
  ASSERT_TRUE(moved.ok()) << moved.status().message();
  EXPECT_GE(moved->gpu_bytes, 1u);
  EXPECT_EQ(log->sync_runs.load(), 0) << "a pipeline task waited asleep";
  EXPECT_GE(log->async_runs.load(), int(DeviceRouter::WARMUP));
  EXPECT_GE(log->max_queued.load(), 2u)
      << "the arena's one thread never had two chunks on the device at once";
}

// With a lead longer than the run, the device is retired at the first write: it takes no more
// chunks than were in flight then (every lane's tokens), the CPU does the rest, and the files are
// the same. (Retired only once the emitters stop, it takes 17 or so of this run's chunks.)
TEST_F(GpuWaitTest, ARunRetiresItsGpuAheadOfTheEndAndTheCpuDoesTheRest) {
  ASSERT_NO_FATAL_FAILURE(make_input());
  auto log = std::make_shared<AsyncLog>();
  auto gpu = open_stand_in(log);
  constexpr uint64_t HOUR_NS = 3'600'000'000'000;
  auto moved = run_on_stand_in(*gpu, "early", HOUR_NS);
  ASSERT_TRUE(moved.ok()) << moved.status().message();
  EXPECT_GE(moved->cpu_bytes, 1u);
  EXPECT_LE(log->async_runs.load(), 2 * 4) << "more chunks on the device than were in flight";
  gpu.reset(); // waits for the closing
  EXPECT_TRUE(log->closed);
}

// A thread oneTBB does not know has nothing else to do: its wait is empty (it sleeps on the
// stream). Within a task, an arm that could not ask for a wake-up goes on at once, and a wake
// from another thread resumes the task.
TEST(GpuWait, SuspendsOnlyInATaskAndGoesOnWhenWoken) {
  std::thread([] { EXPECT_FALSE(suspending_wait()); }).join();
  tbb::task_arena arena(2);
  arena.execute([] {
    tbb::parallel_for(0, 4, [](int i) {
      GpuWait wait = suspending_wait();
      ASSERT_TRUE(wait);
      if (i % 2 == 0) {
        bool asked = false;
        wait([&](GpuWake, void*) {
          asked = true;
          return false; // could not ask for a wake-up
        });
        EXPECT_TRUE(asked);
        return;
      }
      std::atomic<bool> woken{false};
      std::thread waker;
      wait([&](GpuWake wake, void* token) {
        waker = std::thread([&woken, wake, token] {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          woken = true;
          wake(token);
        });
        return true;
      });
      EXPECT_TRUE(woken) << "the task went on before it was woken";
      waker.join();
    });
  });
}

} // namespace
} // namespace shardshift::testing
