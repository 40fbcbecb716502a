// gpu_handle.h: the CUDA stage of one run, opened beside the work rather than before it.
//
// Opening the GPU stage costs about half a second on the H200 host (the driver's start, the
// context and the staging slots: docs/PERFORMANCE.md, "Opening the GPU beside the work" and
// "The GPU's fixed cost"), a good part of what a whole conversion of a few GB takes on 16 cores.
// Waiting for it made `--device cuda` slower than `--device cpu` whenever the CPU alone was fast.
// So a GpuHandle counts the devices and opens one on a thread of its own while the pipeline
// starts on the CPU: the transform stage asks get() for each chunk and sends chunks to the GPU
// once it is there (and once the DeviceRouter finds it the cheaper device). The bytes are the
// same on either device, so when the GPU arrives changes only the time.
//
// Buffers that the GPU writes into must be page-locked. The buffer pool pins the buffers it made
// before the GPU arrived from a hook that runs on the opening thread before get() publishes the
// device (on_open), so no chunk reaches the GPU with a buffer that is not pinned.
//
// Closing it costs again (0.1-0.15 s there: freeing the slots, unlocking the pool's buffers,
// and the context's end at exit), which a run that waits for it at its end pays in full. So the
// pipeline retires the handle as soon as its last chunk is transformed (retire()): the closing
// runs on a thread of its own while the writer lanes finish, and is mostly done by the end.
//
// Thread-safety: every member is thread-safe but construction and destruction; the handle
// is created and destroyed by one thread (the destructor waits for the opening to end).
#pragma once

#include "shardshift/status.h"

#include "cuda_transform.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace shardshift {

/// Whether `count` CUDA devices can serve --device `device` (ordinal `ordinal`): ok, or the error
/// that explains it to the user (no device at all: Errc::cuda; a number beyond the last one:
/// Errc::invalid_argument). With "auto" the error is only kept: the run stays on the CPU.
Status check_device_count(const std::string& device, int ordinal, int count);

class GpuHandle {
public:
  /// Starts opening CUDA device `ordinal` with `slots` staging sets of `chunk_bytes`
  /// (CudaTransformer::create). `required` (an explicit --device cuda): a failure to open fails
  /// the run (required_status); otherwise the run goes on without the GPU. Counting the devices
  /// (the driver's start, 0.1-0.2 s) is part of the opening; `device` (the option as given,
  /// "cuda:1") names the device in the error when there is none or too few
  /// (check_device_count).
  GpuHandle(int ordinal, uint64_t chunk_bytes, unsigned slots, bool required,
            std::string device = "cuda", bool owns_device = false);
  /// What opens the device, on the opening thread.
  using Opener = std::function<Result<std::unique_ptr<CudaTransformer>>()>;
  /// The same with the opening given: `open` runs on the opening thread in place of counting the
  /// devices and CudaTransformer::create (tests open a stand-in device with it, without a GPU).
  /// `owns_device`: the process is the device's only user (the command-line tool), so retire()
  /// may reset it (cudaDeviceReset: its context ends then rather than at exit).
  GpuHandle(int ordinal, Opener open, bool required, bool owns_device = false);
  ~GpuHandle();
  GpuHandle(const GpuHandle&) = delete;
  GpuHandle& operator=(const GpuHandle&) = delete;

  /// The open GPU stage; nullptr while it is opening, if it could not be opened, or once retired.
  CudaTransformer* get() const {
    return state_.load(std::memory_order_acquire) == opened && !retired_.load() ? gpu_.get()
                                                                                 : nullptr;
  }
  /// Blocks until the opening has ended (successfully or not).
  void wait();
  /// ok, or, when the device is required and could not be opened, why (without waiting).
  Status required_status() const;
  /// Whether it was asked for by name (--device cuda[:N]) rather than allowed by auto.
  bool required() const { return required_; }
  /// "cuda:N (name)" once open, "cuda:N" while opening, "cpu (level)" when it could not be.
  std::string description() const;
  /// Whether get() may still return a device (opening, or open).
  bool may_open() const;

  /// Runs `hook` with the device once it is open: on the opening thread before get() returns
  /// it, or at once on the calling thread when it already has. One hook at a time.
  void on_open(std::function<void(CudaTransformer&)> hook);
  /// Removes the hook; when this returns, the hook is not running and will not run.
  void remove_hook();

  /// The run is done with the device: get() returns nullptr from now on, and a thread of its
  /// own waits for the opening to end and, if the device opened, runs `last` with it (the pool
  /// unlocks its buffers), frees it, and with owns_device resets it. The destructor waits for
  /// that thread. Later calls do nothing.
  /// REQUIRES: no chunk is on the device, and none will be asked for.
  void retire(std::function<void(CudaTransformer&)> last);

private:
  void open(const Opener& opener);

  enum State { opening, opened, failed };

  const int ordinal_;
  const bool required_;
  const bool owns_device_;
  std::unique_ptr<CudaTransformer> gpu_; ///< set by the opening thread, under mu_, before state_
  std::atomic<int> state_{opening}; ///< read without mu_ on every chunk; opened publishes gpu_
  mutable std::mutex mu_;
  std::condition_variable done_cv_;
  Status failure_; ///< guarded by mu_: why the device could not be opened
  std::function<void(CudaTransformer&)> hook_; ///< guarded by mu_
  std::string name_;                           ///< guarded by mu_: the device's, once open
  std::atomic<bool> retired_{false};
  std::thread thread_; ///< the opening
  std::thread closer_; ///< the closing, once retired
};

} // namespace shardshift
