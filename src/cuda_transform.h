// cuda_transform.h: the CUDA transform stage. No CUDA or simdjson types appear here, so both the
// .cu implementation and plain C++ (the pipeline, the stub used without CUDA) include it.
//
// A CudaTransformer owns one device context, a ring of `slots` staging sets (pinned input buffer,
// device input, device output, one stream each) sized for `max_chunk_bytes` of input and of output
// (the pinned input buffer only as far as chunks needed it, where inputs are read in place).
// run() is called concurrently from the pipeline's worker threads: each call takes a free slot,
// uploads the chunk from the (mapped) source, page-locked in place where it can, else copied into
// pinned memory first, runs the transpose-fold kernel and downloads the result into args.dst (a
// pinned buffer from alloc_pinned()), so with several threads uploads, kernels and downloads of
// different chunks overlap.
// A caller may hand its thread back while the GPU works (a GpuWait), and go on on another.
// Thread-safety: run() and alloc/free_pinned are thread-safe; create/destroy are not.
#pragma once

#include "shardshift/status.h"

#include "dequant.h"
#include "transpose.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace shardshift {

struct CudaTimings { ///< per-call phase times measured with CUDA events, in nanoseconds
  uint64_t stage_ns = 0, h2d_ns = 0, kernel_ns = 0, d2h_ns = 0;
  uint64_t input_bytes = 0;    ///< input bytes uploaded, in place or staged
  uint64_t in_place_bytes = 0; ///< of those, uploaded straight from the mapping (not staged)
  int stream = 0;        ///< which slot/stream ran the call
  uint64_t start_ns = 0; ///< host steady_clock time (ns) when the call started
};

/// One dequantizing part of a chunk (a stacked piece, or rows of a dequantized weight): `args`
/// with host pointers (src into the input mapping, scales anywhere readable; args.dst unused),
/// its output `dst_offset` bytes into the chunk's buffer.
struct CudaDequantPart {
  DequantArgs args;
  uint64_t dst_offset = 0;
};
/// Runs `copy`, which reads part `part`'s input from its mapping, and returns what went wrong
/// (the caller wraps it in the SIGBUS guard of the file that part lies in).
using StagingGuard = std::function<Status(size_t part, const std::function<void()>& copy)>;

/// Wakes a caller waiting for its chunk: called once, from any thread, with the token it was
/// armed with.
using GpuWake = void (*)(void* token);
/// How a caller waits for its chunk's work on the GPU (the upload, the kernel, the download). A
/// GpuWait calls `arm(wake, token)` once: arm asks the device to call wake(token) when the work
/// is done or has failed, and returns false if it could not (then nothing will wake the caller,
/// and the GpuWait returns at once). Otherwise the GpuWait returns once wake(token) has run. The
/// pipeline's suspends its task meanwhile, so the thread runs other chunks and the call may go on
/// on another thread (gpu_wait.h); an empty GpuWait puts the thread to sleep on the stream.
using GpuWait = std::function<void(const std::function<bool(GpuWake wake, void* token)>& arm)>;

class CudaTransformer {
public:
  /// Number of usable CUDA devices; 0 when built without CUDA, with no driver or no GPU.
  static int device_count();
  /// Ends the process's context on device `ordinal` now rather than at exit (cudaDeviceReset):
  /// everything the process holds there goes. Only for a process that is the device's one user.
  static void reset_device(int ordinal);
  /// Opens device `ordinal` with `slots` staging sets of `max_chunk_bytes` each.
  static Result<std::unique_ptr<CudaTransformer>> create(int ordinal, uint64_t max_chunk_bytes,
                                                         unsigned slots);
  virtual ~CudaTransformer() = default;

  virtual std::string device_name() const = 0;
  /// Bytes of pinned host and device memory this transformer holds.
  virtual uint64_t pinned_bytes() const = 0;
  /// Page-locked host memory for outputs (so the download is a true async DMA); nullptr on failure.
  virtual void* alloc_pinned(uint64_t bytes) = 0;
  virtual void free_pinned(void* p) = 0;
  /// Page-locks `bytes` of ordinary host memory at p in place (a buffer made before the GPU was
  /// open, gpu_handle.h); false if it could not be, and p stays pageable. unpin_in_place() undoes
  /// it; either way the caller still frees p.
  virtual bool pin_in_place(void* p, uint64_t bytes) = 0;
  virtual void unpin_in_place(void* p) = 0;
  /// Runs one chunk. args.src is host memory (the input mapping), args.dst host memory that
  /// receives the result. Input and output must each fit in max_chunk_bytes.
  virtual Status run(const TransposeArgs& args, CudaTimings* timings = nullptr) = 0;
  /// As run(), but only when a staging slot is free at once; otherwise sets *ran = false and
  /// returns ok without doing anything, so the caller can do the chunk on the CPU instead. The
  /// reads of args.src that may fault run inside guard(0, ...); the wait for the GPU is `wait`'s.
  virtual Status try_run(const TransposeArgs& args, const StagingGuard& guard,
                         const GpuWait& wait, CudaTimings* timings, bool* ran) = 0;
  /// Dequantizes a chunk on the GPU (dequant_cuda.h), only when a staging slot is free at once
  /// and the parts' regions (dequant_region.h) fit it; otherwise sets *ran = false and does
  /// nothing. Together the parts must write all `dst_bytes` of `dst` (pinned, alloc_pinned()):
  /// the whole device buffer is downloaded.
  virtual Status try_run_dequant(const std::vector<CudaDequantPart>& parts, std::byte* dst,
                                 uint64_t dst_bytes, const StagingGuard& guard,
                                 const GpuWait& wait, CudaTimings* timings, bool* ran) = 0;
};

} // namespace shardshift
