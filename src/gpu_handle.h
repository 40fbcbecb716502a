// gpu_handle.h: the CUDA stage of one run, opened beside the work rather than before it.
//
// Opening the GPU stage costs about half a second on the H200 host (the driver's start, the
// context and the staging slots: docs/PERFORMANCE.md, "Opening the GPU beside the work" and
// "The GPU's fixed cost"), a good part of what a whole conversion of a few GB takes on 16 cores.
// Waiting for it made `--device cuda` slower than `--device cpu` whenever the CPU alone was fast.
// So a GpuHandle counts the devices and opens one on a thread of its own while the pipeline
// starts on the CPU: the transform stage asks use() for each chunk and sends chunks to the GPU
// once it is there (and once the DeviceRouter finds it the cheaper device). The bytes are the
// same on either device, so when the GPU arrives changes only the time.
//
// Buffers that the GPU writes into must be page-locked. The buffer pool pins the buffers it made
// before the GPU arrived from a hook that runs on the opening thread before use() hands the
// device out (on_open), so no chunk reaches the GPU with a buffer that is not pinned.
//
// Closing it costs again (about 70 ms there: freeing the slots and resetting the device), which
// a run that waits for it at its end pays in full. So the pipeline retires the handle before the
// end (retire()): use() hands the device out no more, and once the last chunk on it is done
// (the last Use ends), the closing runs on a thread of its own while the writer lanes finish.
//
// Thread-safety: every member is thread-safe but construction and destruction; the handle
// is created and destroyed by one thread (the destructor waits for the opening and the closing
// to end). No Use may outlive the handle.
#pragma once

#include "shardshift/profiler.h"
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
#include <utility>

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
  /// `profiler` (may be null; it must outlive the handle) gets the opening and the closing as
  /// gpu_open and gpu_close spans on a track of their own ("cuda:N open/close").
  GpuHandle(int ordinal, uint64_t chunk_bytes, unsigned slots, bool required,
            std::string device = "cuda", bool owns_device = false, Profiler* profiler = nullptr);
  /// What opens the device, on the opening thread.
  using Opener = std::function<Result<std::unique_ptr<CudaTransformer>>()>;
  /// The same with the opening given: `open` runs on the opening thread in place of counting the
  /// devices and CudaTransformer::create (tests open a stand-in device with it, without a GPU).
  /// `owns_device`: the process is the device's only user (the command-line tool), so retire()
  /// may reset it (cudaDeviceReset: its context ends then rather than at exit) and hand the
  /// driver's files back (driver_files.h); the process makes no CUDA call after that.
  GpuHandle(int ordinal, Opener open, bool required, bool owns_device = false,
            Profiler* profiler = nullptr);
  ~GpuHandle();
  GpuHandle(const GpuHandle&) = delete;
  GpuHandle& operator=(const GpuHandle&) = delete;

  /// A hold on the open device for one chunk: while any Use lives, the device is not closed.
  class Use {
  public:
    Use() = default;
    Use(Use&& other) noexcept
        : handle_(std::exchange(other.handle_, nullptr)), gpu_(std::exchange(other.gpu_, nullptr)) {
    }
    Use& operator=(Use&& other) noexcept;
    ~Use() { end(); }
    /// The device; nullptr for an empty Use.
    CudaTransformer* get() const { return gpu_; }
    CudaTransformer& operator*() const { return *gpu_; }
    CudaTransformer* operator->() const { return gpu_; }
    explicit operator bool() const { return gpu_ != nullptr; }
    /// Lets go of the device now (the destructor does it otherwise).
    void end();

  private:
    friend class GpuHandle;
    Use(GpuHandle* handle, CudaTransformer* gpu) : handle_(handle), gpu_(gpu) {}
    GpuHandle* handle_ = nullptr;
    CudaTransformer* gpu_ = nullptr;
  };

  /// The open device, held until the Use ends; empty while it is opening, if it could not be
  /// opened, or once retired.
  Use use();
  /// Whether the device has opened (retired or not).
  bool opened() const { return state_.load(std::memory_order_acquire) == opened_state; }
  /// Blocks until the opening has ended (successfully or not).
  void wait();
  /// ok, or, when the device is required and could not be opened, why (without waiting).
  Status required_status() const;
  /// Whether it was asked for by name (--device cuda[:N]) rather than allowed by auto.
  bool required() const { return required_; }
  /// "cuda:N (name)" once open, "cuda:N" while opening, "cpu (level)" when it could not be.
  std::string description() const;
  /// Whether use() may still give a device (opening, or open).
  bool may_open() const;

  /// Runs `hook` with the device once it is open: on the opening thread before use() hands
  /// it out, or at once on the calling thread when it already has. One hook at a time.
  void on_open(std::function<void(CudaTransformer&)> hook);
  /// Removes the hook; when this returns, the hook is not running and will not run.
  void remove_hook();

  /// The run is done with the device: use() gives nothing from now on. Once the last Use has
  /// ended (at once when none is held), a thread of its own waits for the opening to end and, if
  /// the device opened, runs `last` with it (the pool unlocks its buffers), frees it, and with
  /// owns_device resets it and hands the driver's files back. The destructor waits for that
  /// thread. Later calls do nothing.
  void retire(std::function<void(CudaTransformer&)> last);

private:
  void open(const Opener& opener);
  void end_use();
  void start_closing(); ///< retired and no Use left: starts the closing thread, once
  /// A gpu_open or gpu_close span from t0 to now, when there is a profiler.
  void record(Stage stage, uint64_t t0);

  enum State { opening, opened_state, failed };

  const int ordinal_;
  const bool required_;
  const bool owns_device_;
  Profiler* const profiler_;
  std::unique_ptr<CudaTransformer> gpu_; ///< set by the opening thread, under mu_, before state_
  std::atomic<int> state_{opening};      ///< read without mu_ on every chunk; opened publishes gpu_
  mutable std::mutex mu_;
  std::condition_variable done_cv_;
  Status failure_; ///< guarded by mu_: why the device could not be opened
  std::function<void(CudaTransformer&)> hook_; ///< guarded by mu_
  std::mutex last_mu_;
  std::function<void(CudaTransformer&)> last_; ///< guarded by last_mu_: retire()'s, until closing
  std::string name_;                           ///< guarded by mu_: the device's, once open
  // Sequentially consistent, with users_: of a retire() and the end of the last Use on two
  // threads, at least one sees the other's change and starts the closing (closing_: once).
  std::atomic<bool> retired_{false};
  std::atomic<unsigned> users_{0}; ///< Uses alive
  std::atomic<bool> closing_{false};
  std::thread thread_; ///< the opening
  std::thread closer_; ///< the closing, once retired and unused
};

} // namespace shardshift
