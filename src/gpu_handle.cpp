// gpu_handle.cpp: opening the CUDA stage on its own thread (gpu_handle.h says why). This is the
// one thread shardshift starts outside oneTBB's pool: opening a device is a blocking driver call
// of a few hundred milliseconds, which would otherwise hold one of the pipeline's workers.
#include "gpu_handle.h"

#include "driver_files.h"
#include "transpose.h" // simd_level_name

namespace shardshift {

Status check_device_count(const std::string& device, int ordinal, int count) {
  if (count == 0)
    return Status(Errc::cuda, "--device " + device +
                                  ": no usable CUDA GPU (no driver, no device, or built "
                                  "without CUDA); use --device cpu or auto");
  if (ordinal >= count)
    return Status(Errc::invalid_argument, "--device " + device + ": there are " +
                                              std::to_string(count) +
                                              " CUDA device(s), numbered from 0");
  return {};
}

GpuHandle::GpuHandle(int ordinal, uint64_t chunk_bytes, unsigned slots, bool required,
                     std::string device, bool owns_device, Profiler* profiler)
    : GpuHandle(
          ordinal,
          [ordinal, chunk_bytes, slots,
           device = std::move(device)]() -> Result<std::unique_ptr<CudaTransformer>> {
            const int count = CudaTransformer::device_count();
            if (Status s = check_device_count(device, ordinal, count); !s)
              return s;
            return CudaTransformer::create(ordinal, chunk_bytes, slots);
          },
          required, owns_device, profiler) {}

GpuHandle::GpuHandle(int ordinal, Opener open, bool required, bool owns_device, Profiler* profiler)
    : ordinal_(ordinal), required_(required), owns_device_(owns_device), profiler_(profiler) {
  thread_ = std::thread([this, opener = std::move(open)] { this->open(opener); });
}

GpuHandle::~GpuHandle() {
  if (closer_.joinable())
    closer_.join(); // it joined the opening
  else
    thread_.join();
}

GpuHandle::Use GpuHandle::use() {
  if (!opened() || retired_.load())
    return {};
  users_.fetch_add(1);
  if (retired_.load()) { // retired meanwhile: it may be closing already
    end_use();
    return {};
  }
  return Use(this, gpu_.get()); // gpu_ stays until the closing, which waits for this Use
}

GpuHandle::Use& GpuHandle::Use::operator=(Use&& other) noexcept {
  if (this != &other) {
    end();
    handle_ = std::exchange(other.handle_, nullptr);
    gpu_ = std::exchange(other.gpu_, nullptr);
  }
  return *this;
}

void GpuHandle::Use::end() {
  if (handle_)
    std::exchange(handle_, nullptr)->end_use();
  gpu_ = nullptr;
}

void GpuHandle::end_use() {
  if (users_.fetch_sub(1) == 1 && retired_.load())
    start_closing();
}

void GpuHandle::retire(std::function<void(CudaTransformer&)> last) {
  {
    // Not mu_: the opening thread holds that while the pool's buffers are pinned.
    std::lock_guard lock(last_mu_);
    if (retired_.load())
      return;
    last_ = std::move(last);
    retired_.store(true);
  }
  if (users_.load() == 0)
    start_closing();
}

void GpuHandle::start_closing() {
  if (closing_.exchange(true))
    return;
  closer_ = std::thread([this] {
    thread_.join();
    const uint64_t t0 = profiler_ ? profiler_->now() : 0;
    std::unique_ptr<CudaTransformer> gpu;
    std::function<void(CudaTransformer&)> last;
    {
      std::lock_guard lock(mu_);
      gpu = std::move(gpu_);
    }
    {
      std::lock_guard lock(last_mu_);
      last = std::move(last_);
    }
    if (!gpu)
      return;
    if (last)
      last(*gpu);
    last = nullptr; // what it holds (the pool) may go before the device
    gpu.reset();
    if (owns_device_) {
      CudaTransformer::reset_device(ordinal_);
      // The driver's files too, which the kernel would otherwise release at exit, after the
      // last write (driver_files.h): nothing of this process uses the device again.
      release_gpu_driver_files(gpu_driver_files_before_cuda());
    }
    record(Stage::gpu_close, t0);
  });
}

void GpuHandle::record(Stage stage, uint64_t t0) {
  if (profiler_)
    profiler_->record(stage, t0, profiler_->now(), 0, {},
                      profiler_->track_id("cuda:" + std::to_string(ordinal_) + " open/close"));
}

void GpuHandle::open(const Opener& opener) {
  const uint64_t t0 = profiler_ ? profiler_->now() : 0;
  Status failure;
  std::unique_ptr<CudaTransformer> gpu;
  if (owns_device_) // what the driver opens from here on is this handle's to hand back
    gpu_driver_files_before_cuda();
  if (auto created = opener(); created)
    gpu = std::move(created.value());
  else
    failure = created.status();
  std::lock_guard lock(mu_);
  if (gpu) {
    gpu_ = std::move(gpu);
    name_ = gpu_->device_name();
    if (hook_)
      hook_(*gpu_); // before publishing: nothing reaches the GPU before the hook has run
    record(Stage::gpu_open, t0);
    state_.store(opened_state, std::memory_order_release);
  } else {
    failure_ = failure;
    record(Stage::gpu_open, t0); // failed: the time it took to find out
    state_.store(failed);
  }
  done_cv_.notify_all();
}

void GpuHandle::wait() {
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [&] { return state_.load() != opening; });
}

Status GpuHandle::required_status() const {
  if (!required_ || state_.load() != failed)
    return {};
  std::lock_guard lock(mu_);
  return failure_;
}

bool GpuHandle::may_open() const {
  return state_.load() != failed;
}

std::string GpuHandle::description() const {
  const std::string device = "cuda:" + std::to_string(ordinal_);
  switch (state_.load()) {
  case opened_state: {
    std::lock_guard lock(mu_);
    return device + " (" + name_ + ")";
  }
  case opening:
    return device;
  default:
    return std::string("cpu (") + simd_level_name(detect_simd_level()) + ")";
  }
}

void GpuHandle::on_open(std::function<void(CudaTransformer&)> hook) {
  std::unique_lock lock(mu_);
  if (gpu_) {
    lock.unlock();
    hook(*gpu_);
    return;
  }
  hook_ = std::move(hook);
}

void GpuHandle::remove_hook() {
  std::lock_guard lock(mu_); // the opening thread runs the hook under mu_
  hook_ = nullptr;
}

} // namespace shardshift
