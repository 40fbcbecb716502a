// cuda_transformer.cu: CudaTransformer (cuda_transform.h) on the CUDA runtime.
//
// A slot is everything one chunk needs on its way through the GPU: a stream, a pinned staging
// buffer for the input, device buffers for input, output and scales. run() takes a free slot, so
// up to `slots` chunks are in flight from different threads; the copy engines (one per direction)
// and the SMs then work on different chunks at once. Each call also takes a set of four timing
// events of its own (a pool of them, grown on demand), which it keeps until it has read them.
//
// Input. The source is pageable (the input mapping), which the GPU cannot read directly. Where
// the device allows it, a chunk's input is page-locked in place (cudaHostRegister, read-only)
// and uploaded straight from the mapping, then unlocked once the chunk is done: only the whole
// pages inside the chunk, so that two chunks never lock the same page (the runtime refuses
// overlapping registrations); the bytes before the first and after the last whole page go
// through the slot's pinned buffer. On the H200 host this costs a thread a quarter of the copy
// below, and the input crosses host memory once instead of three times (docs/PERFORMANCE.md,
// "Reading the input in place"). A transposed FP8 weight is read by many chunks, each taking a
// column range of every row: its whole pages are locked once for all the chunks that read it at
// the time (WeightLocks, cuda_weight_locks.h), and each chunk uploads its rows with a 2-D copy
// straight from the mapping. Otherwise (no support, a failed registration, a column range under
// 128 bytes wide, or SHARDSHIFT_CUDA_INPUT=staged) the chunk is first copied into the slot's pinned
// buffer, in pieces, each piece's upload queued right after its copy, so that only the last
// piece's upload is exposed.
//
// Waiting. Once a chunk's work is queued, its caller waits for the stream: asleep on the last
// event, or, given a GpuWait (the pipeline's suspends its task), until a stream callback wakes
// it, its thread free for other chunks meanwhile. The callback first gives the slot back: its
// work is done, and the next chunk can have it at once rather than when the woken caller next
// gets a thread, which on a busy host is many milliseconds later (a chunk's round trip on the
// GPU is a few). Either way the caller then synchronizes its own last event, which reports any
// failure of the queued work, and reads its own timing events.
//
// Errors. Every runtime call is checked; a failure becomes Errc::cuda with the call, the
// runtime's message and the device. After a failure the slot's stream is synchronized before the
// slot is reused, so no queued copy can still be writing into a buffer that the next chunk uses.
#include "cuda_transform.h"
#include "cuda_weight_locks.h"
#include "dequant_cuda.h"
#include "dequant_region.h"
#include "transpose_cuda.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <cuda_runtime_api.h>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace shardshift {

namespace {

/// Pieces of the host staging copy: at most this many, each at least MIN_PIECE bytes.
constexpr uint64_t MAX_PIECES = 4;
constexpr uint64_t MIN_PIECE = uint64_t(1) << 20;
/// Initial capacity of a slot's scale buffers (grown on demand; a scale is at most 4 bytes).
constexpr uint64_t INITIAL_SCALE_BYTES = 4096;
/// Initial capacity of a slot's input staging when chunks are read in place (grown on demand):
/// enough for a region too small to lock (InPlaceInput::MIN_BYTES) and the pages around it.
constexpr uint64_t INITIAL_STAGING_BYTES = (uint64_t(1) << 20) + 3 * 4096;

uint64_t steady_ns() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

/// memcpy into pinned staging memory, with non-temporal stores where the CPU has them. The bytes
/// are read next by the GPU's copy engine, not by this CPU: written through the caches they would
/// first be read from memory (read-for-ownership: glibc's memcpy streams only copies larger than a
/// cache-dependent threshold, above our piece size), evict useful lines, and be snooped out of the
/// caches by the DMA. The fence orders the streamed stores before the upload is queued.
void copy_to_staging(std::byte* dst, const std::byte* src, uint64_t n) {
#if defined(__x86_64__)
  const uint64_t head = std::min<uint64_t>(n, (16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15);
  std::memcpy(dst, src, head);
  dst += head;
  src += head;
  n -= head;
  auto* d = reinterpret_cast<__m128i*>(dst);
  const auto* s = reinterpret_cast<const __m128i*>(src);
  const uint64_t blocks = n / 64;
  for (uint64_t i = 0; i < blocks; ++i, d += 4, s += 4) {
    const __m128i a = _mm_loadu_si128(s), b = _mm_loadu_si128(s + 1);
    const __m128i c = _mm_loadu_si128(s + 2), e = _mm_loadu_si128(s + 3);
    _mm_stream_si128(d, a);
    _mm_stream_si128(d + 1, b);
    _mm_stream_si128(d + 2, c);
    _mm_stream_si128(d + 3, e);
  }
  std::memcpy(d, s, n % 64);
  _mm_sfence();
#else
  std::memcpy(dst, src, n);
#endif
}

uint64_t event_ns(cudaEvent_t from, cudaEvent_t to) {
  float ms = 0;
  if (cudaEventElapsedTime(&ms, from, to) != cudaSuccess)
    return 0;
  return uint64_t(double(ms) * 1e6);
}

/// The whole pages of [p, p + n) page-locked in place for one chunk's upload, or nothing (empty
/// begin == end) when locking them failed or would not pay. The destructor waits for `stream`
/// (nothing queued may still read the pages) unless told the chunk is finished(), and unlocks
/// them.
class InPlaceInput {
public:
  /// Below this many whole pages the registration's fixed cost outweighs the copy it saves.
  static constexpr uint64_t MIN_BYTES = uint64_t(1) << 20;

  InPlaceInput(const std::byte* p, uint64_t n, cudaStream_t stream, std::atomic<int>* failures)
      : stream_(stream) {
    const uint64_t page = 4096;
    const uintptr_t first = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
    const uintptr_t last = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
    if (last < first + MIN_BYTES)
      return;
    void* base = reinterpret_cast<void*>(first);
    const cudaError_t err = cudaHostRegister(base, last - first, cudaHostRegisterReadOnly);
    if (err != cudaSuccess) {
      cudaGetLastError(); // not sticky: the chunk is staged instead
      if (err != cudaErrorHostMemoryAlreadyRegistered)
        failures->fetch_add(1);
      return;
    }
    begin_ = reinterpret_cast<const std::byte*>(first);
    end_ = reinterpret_cast<const std::byte*>(last);
  }
  ~InPlaceInput() {
    if (begin_ == end_)
      return;
    if (stream_)
      cudaStreamSynchronize(stream_);
    cudaHostUnregister(const_cast<std::byte*>(begin_));
  }
  InPlaceInput(const InPlaceInput&) = delete;
  InPlaceInput& operator=(const InPlaceInput&) = delete;

  bool locked() const { return begin_ != end_; }
  /// The chunk's work is done: the destructor need not wait for the stream, which may by then
  /// carry another chunk (the slot is given back as soon as its work is done).
  void finished() { stream_ = nullptr; }
  /// Bytes of [src, src + n) outside the locked pages (less than two pages).
  uint64_t around(const std::byte* src, uint64_t n) const {
    return uint64_t(begin_ - src) + uint64_t(src + n - end_);
  }
  /// Copies those bytes to `staged`, the ones before the locked pages first.
  /// REQUIRES: locked(), and [src, src + n) is the range given to the constructor.
  void copy_around(std::byte* staged, const std::byte* src, uint64_t n) const;
  const std::byte* begin() const { return begin_; }
  const std::byte* end() const { return end_; }

private:
  cudaStream_t stream_;
  const std::byte* begin_ = nullptr;
  const std::byte* end_ = nullptr;
};

/// How one dequantizing part's region reaches the device, decided before it is staged: a run of
/// the mapping locked for this chunk (`pin`), or rows [first, last) of the region in the locked
/// pages of its whole weight (`hold`, a transposed part), or else gathered into pinned memory.
struct PartInput {
  const std::byte* run = nullptr; ///< region_run(): the region as one run of the mapping, or null
  std::unique_ptr<InPlaceInput> pin;
  WeightLocks::Hold hold;
  RegionRows rows;     ///< with hold: the region's rows inside the locked pages
  uint64_t staged = 0; ///< bytes of the region that go through the staging buffer

  /// The chunk's work is done: the locks need not wait for its stream.
  void finished() {
    if (pin)
      pin->finished();
    hold.finished();
  }
};

/// Whether chunks may be read in place: SHARDSHIFT_CUDA_INPUT=staged says no (for comparisons).
bool in_place_allowed() {
  const char* v = std::getenv("SHARDSHIFT_CUDA_INPUT");
  return !(v && std::strcmp(v, "staged") == 0);
}

class CudaTransformerImpl final : public CudaTransformer {
public:
  CudaTransformerImpl(int ordinal, uint64_t max_chunk_bytes)
      : ordinal_(ordinal), max_chunk_(max_chunk_bytes) {}
  ~CudaTransformerImpl() override;

  Status init(unsigned slots);

  std::string device_name() const override { return name_; }
  uint64_t pinned_bytes() const override;
  void* alloc_pinned(uint64_t bytes) override;
  void free_pinned(void* p) override;
  bool pin_in_place(void* p, uint64_t bytes) override;
  void unpin_in_place(void* p) override;
  Status run(const TransposeArgs& args, CudaTimings* timings) override;
  Status try_run(const TransposeArgs& args, const StagingGuard& guard, const GpuWait& wait,
                 CudaTimings* timings, bool* ran) override;
  Status try_run_dequant(const std::vector<CudaDequantPart>& parts, std::byte* dst,
                         uint64_t dst_bytes, const StagingGuard& guard, const GpuWait& wait,
                         CudaTimings* timings, bool* ran) override;

private:
  enum Event { H2D_START, H2D_END, KERNEL_END, D2H_END, EVENTS };
  struct Slot {
    int index = 0;
    cudaStream_t stream = nullptr;
    std::byte* host_in = nullptr; ///< pinned staging for the input
    uint64_t host_in_capacity = 0;
    std::byte* dev_in = nullptr;
    std::byte* dev_out = nullptr;
    std::byte* host_scales = nullptr; ///< pinned
    std::byte* dev_scales = nullptr;
    uint64_t scale_capacity = 0;
  };
  struct EventSet {
    cudaEvent_t at[EVENTS] = {};
  };
  /// One chunk's passage through a slot, from acquire() to the end of run_checked().
  struct Call {
    CudaTransformerImpl* owner = nullptr;
    Slot* slot = nullptr;
    cudaEvent_t* events = nullptr; ///< the call's own EVENTS timing events (an EventSet's)
    GpuWake wake = nullptr;        ///< who the stream's callback wakes (a GpuWait's), and its token
    void* wake_token = nullptr;
    std::atomic<bool> released{false}; ///< the stream's callback gave the slot back
  };

  /// Status for a failed runtime call, "CUDA error in <call>: <message> (device N <name>)".
  Status fail(cudaError_t err, const char* call) const;
  Status check(cudaError_t err, const char* call) const {
    return err == cudaSuccess ? Status{} : fail(err, call);
  }
  Status init_slot(Slot& s);
  /// A free event set (made when none is), or the runtime's error.
  Result<EventSet*> take_events();
  void give_events(EventSet* set);
  Status grow_scales(Slot& s, uint64_t bytes);
  Status run_on(Call& c, const TransposeArgs& args, uint64_t in_bytes, uint64_t out_bytes,
                const StagingGuard& guard, const GpuWait& wait, CudaTimings* timings);
  Slot* acquire(bool wait = true);
  void release(Slot* s);
  Status check_args(const TransposeArgs& args, uint64_t* in_bytes, uint64_t* out_bytes) const;
  /// Runs `work` on the acquired `slot`, with an event set, and gives the slot back unless the
  /// stream's callback did: timings reset (start_ns kept), the slot's stream synchronized after a
  /// failure so nothing queued outlives the call.
  Status run_checked(Slot* slot, CudaTimings* timings, uint64_t start_ns,
                     const std::function<Status(Call&)>& work);
  /// A dequantizing chunk on `s`: the parts' regions are staged at `offsets` (input) and
  /// `scale_offsets`, uploaded, dequantized into the device output, and downloaded.
  Status run_dequant_on(Call& c, const std::vector<CudaDequantPart>& parts,
                        const std::vector<DequantRegion>& regions,
                        const std::vector<uint64_t>& offsets,
                        const std::vector<uint64_t>& scale_offsets, uint64_t scale_bytes,
                        std::byte* dst, uint64_t dst_bytes, const StagingGuard& guard,
                        const GpuWait& wait, CudaTimings* timings);
  /// Queues the upload of each dequantizing part's region to its `offsets` in the device input:
  /// read in place where it can be (its locks put in `inputs`, which the caller keeps until the
  /// chunk is done), else gathered into the staging buffer, the scales gathered at
  /// `scale_offsets` of the slot's pinned scales (uploaded by the caller).
  Status upload_parts(Slot& s, const std::vector<CudaDequantPart>& parts,
                      const std::vector<DequantRegion>& regions,
                      const std::vector<uint64_t>& offsets,
                      const std::vector<uint64_t>& scale_offsets, const StagingGuard& guard,
                      CudaTimings* timings, std::vector<PartInput>& inputs);
  /// How part `a`'s region `g` will reach the device (its locks taken), and its staged bytes.
  PartInput plan_part_input(Slot& s, const DequantArgs& a, const DequantRegion& g);
  /// Queues the upload of a held part's region to dev: rows inside the weight's locked pages
  /// with one 2-D copy from the mapping, the others from `staged` (those before, then after).
  Status upload_held_rows(Slot& s, const DequantArgs& a, const DequantRegion& g,
                          const PartInput& in, const std::byte* staged, std::byte* dev);
  /// Queues the download of `bytes` of the slot's device output into dst, waits for the slot's
  /// work (through `wait` when it is set, whose callback gives the slot back first), and fills
  /// `timings` (stage_ns: the host staging time, already measured). On success the chunk's work
  /// is done; the slot may already be another call's.
  Status download_and_wait(Call& c, std::byte* dst, uint64_t bytes, const GpuWait& wait,
                           CudaTimings* timings, uint64_t stage_ns);

  /// Locks [src, src + n) in place for slot `s` when reading in place is on, or returns nullptr.
  std::unique_ptr<InPlaceInput> lock_in_place(Slot& s, const std::byte* src, uint64_t n);
  /// Grows the slot's pinned staging buffer to at least `bytes`. The slot's previous chunk is done
  /// (a slot is given back only then), so its old buffer can go.
  Status grow_staging(Slot& s, uint64_t bytes);
  /// Queues the upload of n bytes at src (the mapping) to dev: the locked pages straight from the
  /// mapping, the bytes around them from `staged` (pin.copy_around() put them there).
  Status upload_in_place(Slot& s, const InPlaceInput& pin, std::byte* dev, const std::byte* staged,
                         const std::byte* src, uint64_t n);

  const int ordinal_;
  const uint64_t max_chunk_;
  std::string name_;
  /// Reading in place: on where the device supports read-only registration and the environment
  /// allows it; off for good after a few registrations fail for other reasons than an overlap.
  bool in_place_ = false;
  std::atomic<int> in_place_failures_{0};
  static constexpr int MAX_IN_PLACE_FAILURES = 3;
  /// Transposed weights' pages, locked once for the chunks that read them (cuda_weight_locks.h).
  WeightLocks weight_locks_{&in_place_failures_};
  /// Rows of a held region narrower than this are gathered. The 2-D copy from locked pages of
  /// 128-byte rows still ran at 19.7 GB/s on the H200 host, twice one thread's gather and upload
  /// (0.94 of a contiguous upload at 1 KiB; docs/PERFORMANCE.md, "A transposed weight locked
  /// once"); narrower rows were not measured.
  static constexpr uint64_t MIN_HELD_ROW = 128;
  std::vector<Slot> slots_;

  std::mutex slots_mu_;
  std::condition_variable slot_freed_;
  std::vector<Slot*> free_;
  std::vector<std::unique_ptr<EventSet>> event_sets_; ///< under slots_mu_, as free_event_sets_
  std::vector<EventSet*> free_event_sets_;

  mutable std::mutex pinned_mu_;
  std::unordered_map<void*, uint64_t> pinned_;     ///< alloc_pinned() blocks and their sizes
  std::unordered_map<void*, uint64_t> registered_; ///< pin_in_place() blocks and their sizes
  uint64_t slot_bytes_ = 0;                        ///< pinned + device bytes of the slots
};

Status CudaTransformerImpl::fail(cudaError_t err, const char* call) const {
  return error(Errc::cuda, std::string("CUDA error in ") + call + ": " + cudaGetErrorString(err) +
                               " (device " + std::to_string(ordinal_) +
                               (name_.empty() ? "" : " " + name_) + ")");
}

Status CudaTransformerImpl::init(unsigned slots) {
  if (Status s = check(cudaSetDevice(ordinal_), "cudaSetDevice"); !s)
    return s;
  cudaDeviceProp props{};
  if (Status s = check(cudaGetDeviceProperties(&props, ordinal_), "cudaGetDeviceProperties"); !s)
    return s;
  name_ = props.name;
  int read_only = 0;
  if (cudaDeviceGetAttribute(&read_only, cudaDevAttrHostRegisterReadOnlySupported, ordinal_) !=
      cudaSuccess)
    read_only = 0;
  cudaGetLastError();
  in_place_ = read_only != 0 && in_place_allowed();
  slots_.resize(slots);
  for (unsigned i = 0; i < slots; ++i) {
    slots_[i].index = int(i);
    if (Status s = init_slot(slots_[i]); !s)
      return s;
    free_.push_back(&slots_[i]);
  }
  return {};
}

Status CudaTransformerImpl::init_slot(Slot& s) {
  if (Status st = check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking),
                        "cudaStreamCreateWithFlags");
      !st)
    return st;
  // One event set per slot now; more are made if calls keep theirs after the slot is back.
  auto set = take_events();
  if (!set)
    return set.status();
  give_events(*set);
  // Reading in place, a chunk stages only the bytes around its locked pages (or a narrow or
  // small region): the buffer starts small and grows when a chunk needs more. Staging every
  // chunk, it is made whole now, as part of the opening.
  if (Status st = grow_staging(s, in_place_ ? INITIAL_STAGING_BYTES : max_chunk_); !st)
    return st;
  if (Status st = check(cudaMalloc(reinterpret_cast<void**>(&s.dev_in), max_chunk_), "cudaMalloc");
      !st)
    return st;
  slot_bytes_ += max_chunk_;
  if (Status st = check(cudaMalloc(reinterpret_cast<void**>(&s.dev_out), max_chunk_), "cudaMalloc");
      !st)
    return st;
  slot_bytes_ += max_chunk_;
  return grow_scales(s, INITIAL_SCALE_BYTES);
}

Result<CudaTransformerImpl::EventSet*> CudaTransformerImpl::take_events() {
  {
    std::lock_guard lock(slots_mu_);
    if (!free_event_sets_.empty()) {
      EventSet* set = free_event_sets_.back();
      free_event_sets_.pop_back();
      return set;
    }
  }
  auto set = std::make_unique<EventSet>();
  // The last event of a chunk is waited on: blocking sync puts the waiting thread to sleep
  // instead of spinning, leaving the core to the threads that stage other chunks.
  for (int i = 0; i < EVENTS; ++i) {
    const unsigned flags = i == D2H_END ? cudaEventBlockingSync : cudaEventDefault;
    if (Status st = check(cudaEventCreateWithFlags(&set->at[i], flags), "cudaEventCreateWithFlags");
        !st) {
      for (int j = 0; j < i; ++j)
        cudaEventDestroy(set->at[j]);
      return st;
    }
  }
  std::lock_guard lock(slots_mu_);
  event_sets_.push_back(std::move(set));
  return event_sets_.back().get();
}

void CudaTransformerImpl::give_events(EventSet* set) {
  std::lock_guard lock(slots_mu_);
  free_event_sets_.push_back(set);
}

Status CudaTransformerImpl::grow_scales(Slot& s, uint64_t bytes) {
  if (bytes <= s.scale_capacity)
    return {};
  // A slot is given back once its chunk's work is done; the wait only makes that certain.
  if (Status st = check(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize"); !st)
    return st;
  {
    std::lock_guard lock(pinned_mu_);
    slot_bytes_ -= 2 * s.scale_capacity;
  }
  cudaFreeHost(s.host_scales);
  cudaFree(s.dev_scales);
  s.host_scales = s.dev_scales = nullptr;
  s.scale_capacity = 0;
  const uint64_t capacity = std::max(bytes, 2 * INITIAL_SCALE_BYTES);
  if (Status st = check(
          cudaHostAlloc(reinterpret_cast<void**>(&s.host_scales), capacity, cudaHostAllocPortable),
          "cudaHostAlloc");
      !st)
    return st;
  if (Status st =
          check(cudaMalloc(reinterpret_cast<void**>(&s.dev_scales), capacity), "cudaMalloc");
      !st) {
    cudaFreeHost(s.host_scales);
    s.host_scales = nullptr;
    return st;
  }
  s.scale_capacity = capacity;
  std::lock_guard lock(pinned_mu_);
  slot_bytes_ += 2 * capacity;
  return {};
}

CudaTransformerImpl::~CudaTransformerImpl() {
  // Errors are ignored here: there is no one to report them to, and at process exit the runtime
  // may already be unloading (cudaErrorCudartUnloading).
  cudaSetDevice(ordinal_);
  for (auto& s : slots_) {
    if (s.stream)
      cudaStreamSynchronize(s.stream);
    if (s.stream)
      cudaStreamDestroy(s.stream);
    cudaFreeHost(s.host_in);
    cudaFreeHost(s.host_scales);
    cudaFree(s.dev_in);
    cudaFree(s.dev_out);
    cudaFree(s.dev_scales);
  }
  for (const auto& set : event_sets_)
    for (cudaEvent_t ev : set->at)
      cudaEventDestroy(ev);
  for (auto& [p, bytes] : pinned_)
    cudaFreeHost(p);
  for (auto& [p, bytes] : registered_)
    cudaHostUnregister(p);
}

uint64_t CudaTransformerImpl::pinned_bytes() const {
  std::lock_guard lock(pinned_mu_);
  uint64_t total = slot_bytes_;
  for (const auto& [p, bytes] : pinned_)
    total += bytes;
  for (const auto& [p, bytes] : registered_)
    total += bytes;
  return total;
}

void* CudaTransformerImpl::alloc_pinned(uint64_t bytes) {
  void* p = nullptr;
  if (cudaHostAlloc(&p, std::max<uint64_t>(bytes, 1), cudaHostAllocPortable) != cudaSuccess)
    return nullptr;
  std::lock_guard lock(pinned_mu_);
  pinned_[p] = bytes;
  return p;
}

void CudaTransformerImpl::free_pinned(void* p) {
  if (!p)
    return;
  {
    std::lock_guard lock(pinned_mu_);
    pinned_.erase(p);
  }
  cudaFreeHost(p);
}

bool CudaTransformerImpl::pin_in_place(void* p, uint64_t bytes) {
  cudaSetDevice(ordinal_);
  if (cudaHostRegister(p, bytes, cudaHostRegisterPortable) != cudaSuccess) {
    cudaGetLastError(); // not sticky: the buffer stays pageable, the device stays usable
    return false;
  }
  std::lock_guard lock(pinned_mu_);
  registered_[p] = bytes;
  return true;
}

void CudaTransformerImpl::unpin_in_place(void* p) {
  {
    std::lock_guard lock(pinned_mu_);
    if (registered_.erase(p) == 0)
      return;
  }
  cudaHostUnregister(p);
}

CudaTransformerImpl::Slot* CudaTransformerImpl::acquire(bool wait) {
  std::unique_lock lock(slots_mu_);
  if (wait)
    slot_freed_.wait(lock, [&] { return !free_.empty(); });
  else if (free_.empty())
    return nullptr;
  Slot* s = free_.back();
  free_.pop_back();
  return s;
}

void CudaTransformerImpl::release(Slot* s) {
  {
    std::lock_guard lock(slots_mu_);
    free_.push_back(s);
  }
  slot_freed_.notify_one();
}

Status CudaTransformerImpl::check_args(const TransposeArgs& args, uint64_t* in_bytes,
                                       uint64_t* out_bytes) const {
  const bool fold = args.scales != nullptr;
  if (Status s = check_transpose_supported(args.src_dtype, fold, args.scale_dtype, args.dst_dtype);
      !s)
    return s;
  if (args.col_begin > args.B || args.cols > args.B - args.col_begin)
    return error(Errc::invalid_argument, "CUDA transform: columns [" +
                                             std::to_string(args.col_begin) + ", " +
                                             std::to_string(args.col_begin + args.cols) +
                                             ") outside a row of " + std::to_string(args.B));
  const uint64_t in_elem = dtype_bits(args.src_dtype) / 8,
                 out_elem = dtype_bits(args.dst_dtype) / 8;
  if (__builtin_mul_overflow(args.experts, args.A, in_bytes) ||
      __builtin_mul_overflow(*in_bytes, args.B, in_bytes) ||
      __builtin_mul_overflow(*in_bytes, in_elem, in_bytes) ||
      __builtin_mul_overflow(args.experts, args.cols, out_bytes) ||
      __builtin_mul_overflow(*out_bytes, args.A, out_bytes) ||
      __builtin_mul_overflow(*out_bytes, out_elem, out_bytes) || *in_bytes > max_chunk_ ||
      *out_bytes > max_chunk_)
    return error(Errc::invalid_argument,
                 "CUDA transform: a chunk of " + std::to_string(args.experts) + " x " +
                     std::to_string(args.A) + " x " + std::to_string(args.B) +
                     " elements does not fit the staging buffers of " + std::to_string(max_chunk_) +
                     " bytes");
  return {};
}

Status CudaTransformerImpl::run_checked(Slot* slot, CudaTimings* timings, uint64_t start_ns,
                                        const std::function<Status(Call&)>& work) {
  if (timings) {
    *timings = CudaTimings{};
    timings->start_ns = start_ns;
    timings->stream = slot->index;
  }
  auto set = take_events();
  if (!set) {
    release(slot);
    return set.status();
  }
  Call call;
  call.owner = this;
  call.slot = slot;
  call.events = (*set)->at;
  Status status = work(call);
  if (!call.released.load()) {
    if (!status)
      cudaStreamSynchronize(slot->stream); // nothing queued may outlive the call
    release(slot);
  }
  give_events(*set);
  return status;
}

Status CudaTransformerImpl::run(const TransposeArgs& args, CudaTimings* timings) {
  const uint64_t start_ns = steady_ns();
  if (timings)
    *timings = CudaTimings{};
  uint64_t in_bytes = 0, out_bytes = 0;
  if (Status s = check_args(args, &in_bytes, &out_bytes); !s)
    return s;
  if (args.experts == 0 || args.A == 0 || args.cols == 0)
    return {};
  const StagingGuard unguarded = [](size_t, const std::function<void()>& copy) {
    copy();
    return Status{};
  };
  return run_checked(acquire(), timings, start_ns, [&](Call& c) {
    return run_on(c, args, in_bytes, out_bytes, unguarded, GpuWait{}, timings);
  });
}

Status CudaTransformerImpl::try_run(const TransposeArgs& args, const StagingGuard& guard,
                                    const GpuWait& wait, CudaTimings* timings, bool* ran) {
  const uint64_t start_ns = steady_ns();
  *ran = false;
  uint64_t in_bytes = 0, out_bytes = 0;
  if (Status s = check_args(args, &in_bytes, &out_bytes); !s)
    return s;
  Slot* slot = acquire(false);
  if (!slot)
    return {};
  *ran = true;
  if (args.experts == 0 || args.A == 0 || args.cols == 0) {
    release(slot);
    return {};
  }
  return run_checked(slot, timings, start_ns, [&](Call& c) {
    return run_on(c, args, in_bytes, out_bytes, guard, wait, timings);
  });
}

Status CudaTransformerImpl::run_on(Call& c, const TransposeArgs& args, uint64_t in_bytes,
                                   uint64_t out_bytes, const StagingGuard& guard,
                                   const GpuWait& wait, CudaTimings* timings) {
  Slot& s = *c.slot;
  // Runtime calls act on the calling thread's current device; pipeline threads are not ours.
  if (Status st = check(cudaSetDevice(ordinal_), "cudaSetDevice"); !st)
    return st;
  const bool fold = args.scales != nullptr;
  const uint64_t scale_bytes = fold ? args.experts * (dtype_bits(args.scale_dtype) / 8) : 0;
  if (Status st = grow_scales(s, scale_bytes); !st)
    return st;

  // Upload the input, in place or staged (see the file comment).
  const uint64_t t0 = steady_ns();
  if (Status st = check(cudaEventRecord(c.events[H2D_START], s.stream), "cudaEventRecord"); !st)
    return st;
  const std::unique_ptr<InPlaceInput> pin = lock_in_place(s, args.src, in_bytes);
  if (Status st = grow_staging(s, pin ? pin->around(args.src, in_bytes) : in_bytes); !st)
    return st;
  if (timings)
    timings->input_bytes = in_bytes;
  if (pin) {
    if (timings)
      timings->in_place_bytes = uint64_t(pin->end() - pin->begin());
    if (Status st = guard(0, [&] { pin->copy_around(s.host_in, args.src, in_bytes); }); !st)
      return st;
    if (Status st = upload_in_place(s, *pin, s.dev_in, s.host_in, args.src, in_bytes); !st)
      return st;
  } else {
    // Copy and upload in pieces: the DMA of piece k runs while the CPU copies piece k + 1.
    const uint64_t piece =
        (std::max(MIN_PIECE, (in_bytes + MAX_PIECES - 1) / MAX_PIECES) + 4095) / 4096 * 4096;
    for (uint64_t off = 0; off < in_bytes; off += piece) {
      const uint64_t n = std::min(piece, in_bytes - off);
      if (Status st = guard(0, [&] { copy_to_staging(s.host_in + off, args.src + off, n); }); !st)
        return st;
      if (Status st = check(
              cudaMemcpyAsync(s.dev_in + off, s.host_in + off, n, cudaMemcpyHostToDevice, s.stream),
              "cudaMemcpyAsync");
          !st)
        return st;
    }
  }
  if (fold) {
    std::memcpy(s.host_scales, args.scales, scale_bytes);
    if (Status st = check(cudaMemcpyAsync(s.dev_scales, s.host_scales, scale_bytes,
                                          cudaMemcpyHostToDevice, s.stream),
                          "cudaMemcpyAsync");
        !st)
      return st;
  }
  const uint64_t t1 = steady_ns();
  if (Status st = check(cudaEventRecord(c.events[H2D_END], s.stream), "cudaEventRecord"); !st)
    return st;

  TransposeArgs dev = args;
  dev.src = s.dev_in;
  dev.dst = s.dev_out;
  dev.scales = fold ? s.dev_scales : nullptr;
  if (Status st = check(launch_transpose_fold(dev, s.stream), "transpose_fold kernel launch"); !st)
    return st;
  Status st = download_and_wait(c, args.dst, out_bytes, wait, timings, t1 - t0);
  if (st && pin)
    pin->finished();
  return st;
}

Status CudaTransformerImpl::grow_staging(Slot& s, uint64_t bytes) {
  if (bytes <= s.host_in_capacity)
    return {};
  // Doubling, so a slot grows a few times at most; never past a chunk unless asked to.
  const uint64_t capacity = std::max(bytes, std::min(max_chunk_, 2 * s.host_in_capacity));
  std::byte* p = nullptr;
  // Portable: the staging buffer is read by this device's copy engine whatever the thread.
  if (Status st =
          check(cudaHostAlloc(reinterpret_cast<void**>(&p), capacity, cudaHostAllocPortable),
                "cudaHostAlloc");
      !st)
    return st;
  cudaFreeHost(s.host_in);
  std::lock_guard lock(pinned_mu_);
  slot_bytes_ += capacity - s.host_in_capacity;
  s.host_in = p;
  s.host_in_capacity = capacity;
  return {};
}

std::unique_ptr<InPlaceInput> CudaTransformerImpl::lock_in_place(Slot& s, const std::byte* src,
                                                                 uint64_t n) {
  if (!in_place_ || in_place_failures_.load() >= MAX_IN_PLACE_FAILURES)
    return nullptr;
  auto pin = std::make_unique<InPlaceInput>(src, n, s.stream, &in_place_failures_);
  return pin->locked() ? std::move(pin) : nullptr;
}

void InPlaceInput::copy_around(std::byte* staged, const std::byte* src, uint64_t n) const {
  copy_to_staging(staged, src, uint64_t(begin_ - src));
  copy_to_staging(staged + (begin_ - src), end_, uint64_t(src + n - end_));
}

Status CudaTransformerImpl::upload_in_place(Slot& s, const InPlaceInput& pin, std::byte* dev,
                                            const std::byte* staged, const std::byte* src,
                                            uint64_t n) {
  const uint64_t head = uint64_t(pin.begin() - src), body = uint64_t(pin.end() - pin.begin());
  const std::pair<uint64_t, const std::byte*> runs[] = {
      {head, staged}, {body, pin.begin()}, {n - head - body, staged + head}};
  uint64_t off = 0;
  for (const auto& [bytes, from] : runs) {
    if (bytes != 0)
      if (Status st =
              check(cudaMemcpyAsync(dev + off, from, bytes, cudaMemcpyHostToDevice, s.stream),
                    "cudaMemcpyAsync");
          !st)
        return st;
    off += bytes;
  }
  return {};
}

Status CudaTransformerImpl::download_and_wait(Call& c, std::byte* dst, uint64_t bytes,
                                              const GpuWait& wait, CudaTimings* timings,
                                              uint64_t stage_ns) {
  Slot& s = *c.slot;
  if (Status st = check(cudaEventRecord(c.events[KERNEL_END], s.stream), "cudaEventRecord"); !st)
    return st;
  if (Status st = check(cudaMemcpyAsync(dst, s.dev_out, bytes, cudaMemcpyDeviceToHost, s.stream),
                        "cudaMemcpyAsync");
      !st)
    return st;
  if (Status st = check(cudaEventRecord(c.events[D2H_END], s.stream), "cudaEventRecord"); !st)
    return st;
  if (wait) {
    // The stream calls back once all it was given is done. A stream callback (unlike a host
    // function) is called after a failure too, with the error, so a waiting caller is always
    // woken; the error itself is reported by the synchronization below. The callback gives the
    // slot back before it wakes the caller, and from then on only the call is the caller's.
    wait([&c](GpuWake wake, void* token) {
      c.wake = wake;
      c.wake_token = token;
      const auto done = [](cudaStream_t, cudaError_t, void* p) {
        Call& call = *static_cast<Call*>(p);
        const GpuWake woken = call.wake;
        void* const woken_token = call.wake_token;
        call.released.store(true);
        call.owner->release(call.slot);
        woken(woken_token); // the call may end from here on
      };
      if (cudaStreamAddCallback(c.slot->stream, done, &c, 0) == cudaSuccess)
        return true;
      cudaGetLastError(); // not sticky: the caller waits on the stream instead, below
      return false;
    });
    // The caller may go on on another thread, whose current device is not ours.
    if (Status st = check(cudaSetDevice(ordinal_), "cudaSetDevice"); !st)
      return st;
  }
  // Kernel faults surface here (asynchronous errors are reported by the next synchronizing call).
  if (Status st = check(cudaEventSynchronize(c.events[D2H_END]), "cudaEventSynchronize"); !st)
    return st;

  if (timings) {
    timings->stage_ns = stage_ns;
    timings->h2d_ns = event_ns(c.events[H2D_START], c.events[H2D_END]);
    timings->kernel_ns = event_ns(c.events[H2D_END], c.events[KERNEL_END]);
    timings->d2h_ns = event_ns(c.events[KERNEL_END], c.events[D2H_END]);
  }
  return {};
}

Status CudaTransformerImpl::try_run_dequant(const std::vector<CudaDequantPart>& parts,
                                            std::byte* dst, uint64_t dst_bytes,
                                            const StagingGuard& guard, const GpuWait& wait,
                                            CudaTimings* timings, bool* ran) {
  const uint64_t start_ns = steady_ns();
  *ran = false;
  if (parts.empty() || dst_bytes == 0 || dst_bytes > max_chunk_)
    return {};
  // Where each part's region goes in the slot's buffers (256-byte aligned, as cudaMalloc's).
  std::vector<DequantRegion> regions;
  std::vector<uint64_t> offsets, scale_offsets;
  uint64_t in_bytes = 0, scale_bytes = 0;
  for (const CudaDequantPart& p : parts) {
    if (p.args.block < 64 || !std::has_single_bit(p.args.block) || p.args.count == 0)
      return {}; // shapes the kernel does not take: the CPU does them
    regions.push_back(dequant_region(p.args));
    offsets.push_back(in_bytes);
    scale_offsets.push_back(scale_bytes);
    in_bytes += (regions.back().src_bytes + 255) / 256 * 256;
    scale_bytes += (regions.back().scale_bytes + 255) / 256 * 256;
  }
  if (in_bytes > max_chunk_)
    return {};
  Slot* slot = acquire(false);
  if (!slot)
    return {};
  *ran = true;
  return run_checked(slot, timings, start_ns, [&](Call& c) {
    return run_dequant_on(c, parts, regions, offsets, scale_offsets, scale_bytes, dst, dst_bytes,
                          guard, wait, timings);
  });
}

PartInput CudaTransformerImpl::plan_part_input(Slot& s, const DequantArgs& a,
                                               const DequantRegion& g) {
  PartInput in;
  in.run = region_run(a, g);
  in.staged = g.src_bytes;
  const uint64_t es = dtype_bits(a.src_dtype) / 8, row = g.cols * es;
  if (a.transpose && in_place_ && in_place_failures_.load() < MAX_IN_PLACE_FAILURES &&
      a.R * a.C * es >= InPlaceInput::MIN_BYTES && row >= MIN_HELD_ROW) {
    // Every chunk of a transposed weight reads pages across all of it: one lock for them all.
    in.hold = weight_locks_.lock(a.src, a.R * a.C * es, s.stream);
    if (in.hold.locked()) {
      in.rows = region_rows_within(a, g, in.hold.begin(), in.hold.end());
      in.staged -= (in.rows.last - in.rows.first) * row;
    }
  } else if (in.run) {
    in.pin = lock_in_place(s, in.run, g.src_bytes);
    if (in.pin)
      in.staged = in.pin->around(in.run, g.src_bytes);
  }
  return in;
}

Status CudaTransformerImpl::upload_held_rows(Slot& s, const DequantArgs& a, const DequantRegion& g,
                                             const PartInput& in, const std::byte* staged,
                                             std::byte* dev) {
  const uint64_t es = dtype_bits(a.src_dtype) / 8, row = g.cols * es;
  const auto [first, last] = in.rows;
  // Rows [k, k + n) of the region from the staging buffer.
  const auto from_staging = [&](uint64_t k, uint64_t n, const std::byte* from) {
    return n == 0 ? Status{}
                  : check(cudaMemcpyAsync(dev + k * row, from, n * row, cudaMemcpyHostToDevice,
                                          s.stream),
                          "cudaMemcpyAsync");
  };
  if (Status st = from_staging(0, first, staged); !st)
    return st;
  if (last > first)
    if (Status st =
            check(cudaMemcpy2DAsync(dev + first * row, row,
                                    a.src + ((g.row0 + first) * a.C + g.col0) * es, a.C * es, row,
                                    last - first, cudaMemcpyHostToDevice, s.stream),
                  "cudaMemcpy2DAsync");
        !st)
      return st;
  return from_staging(last, g.rows - last, staged + first * row);
}

Status CudaTransformerImpl::upload_parts(Slot& s, const std::vector<CudaDequantPart>& parts,
                                         const std::vector<DequantRegion>& regions,
                                         const std::vector<uint64_t>& offsets,
                                         const std::vector<uint64_t>& scale_offsets,
                                         const StagingGuard& guard, CudaTimings* timings,
                                         std::vector<PartInput>& inputs) {
  // Each part's locks are taken first (plan_part_input), so that the staging buffer is sized once
  // for what remains. Then part by part: part k's upload runs while part k + 1 is being staged.
  std::vector<uint64_t> staged(parts.size() + 1, 0); // each part's staged bytes, from host_in
  for (size_t i = 0; i < parts.size(); ++i) {
    inputs[i] = plan_part_input(s, parts[i].args, regions[i]);
    staged[i + 1] = staged[i] + inputs[i].staged;
    if (timings) {
      timings->input_bytes += regions[i].src_bytes;
      timings->in_place_bytes += regions[i].src_bytes - inputs[i].staged;
    }
  }
  if (Status st = grow_staging(s, staged.back()); !st)
    return st;
  for (size_t i = 0; i < parts.size(); ++i) {
    const DequantArgs& a = parts[i].args;
    const DequantRegion& g = regions[i];
    const PartInput& in = inputs[i];
    std::byte* host = s.host_in + staged[i];
    std::byte* dev = s.dev_in + offsets[i];
    std::byte* scales = s.host_scales + scale_offsets[i];
    // Only the bytes outside the locked pages are read here: the reads that may fault.
    if (Status st = guard(i,
                          [&] {
                            if (in.hold.locked()) {
                              gather_region_rows(a, g, 0, in.rows.first, host, copy_to_staging);
                              gather_region_rows(a, g, in.rows.last, g.rows,
                                                 host + in.rows.first * g.cols *
                                                            (dtype_bits(a.src_dtype) / 8),
                                                 copy_to_staging);
                              gather_scales(a, g, scales);
                            } else if (in.pin) {
                              in.pin->copy_around(host, in.run, g.src_bytes);
                              gather_scales(a, g, scales);
                            } else {
                              gather_region(a, g, host, scales, copy_to_staging);
                            }
                          });
        !st)
      return st;
    const Status st =
        in.hold.locked() ? upload_held_rows(s, a, g, in, host, dev)
        : in.pin         ? upload_in_place(s, *in.pin, dev, host, in.run, g.src_bytes)
                 : check(cudaMemcpyAsync(dev, host, g.src_bytes, cudaMemcpyHostToDevice, s.stream),
                         "cudaMemcpyAsync");
    if (!st)
      return st;
  }
  return {};
}

Status CudaTransformerImpl::run_dequant_on(Call& c, const std::vector<CudaDequantPart>& parts,
                                           const std::vector<DequantRegion>& regions,
                                           const std::vector<uint64_t>& offsets,
                                           const std::vector<uint64_t>& scale_offsets,
                                           uint64_t scale_bytes, std::byte* dst, uint64_t dst_bytes,
                                           const StagingGuard& guard, const GpuWait& wait,
                                           CudaTimings* timings) {
  Slot& s = *c.slot;
  if (Status st = check(cudaSetDevice(ordinal_), "cudaSetDevice"); !st)
    return st;
  if (Status st = grow_scales(s, scale_bytes); !st)
    return st;
  const uint64_t t0 = steady_ns();
  if (Status st = check(cudaEventRecord(c.events[H2D_START], s.stream), "cudaEventRecord"); !st)
    return st;
  std::vector<PartInput> inputs(parts.size()); // their locks end last, at return
  if (Status st = upload_parts(s, parts, regions, offsets, scale_offsets, guard, timings, inputs);
      !st)
    return st;
  if (Status st = check(cudaMemcpyAsync(s.dev_scales, s.host_scales, scale_bytes,
                                        cudaMemcpyHostToDevice, s.stream),
                        "cudaMemcpyAsync");
      !st)
    return st;
  const uint64_t t1 = steady_ns();
  if (Status st = check(cudaEventRecord(c.events[H2D_END], s.stream), "cudaEventRecord"); !st)
    return st;
  std::vector<DequantArgs> dev(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) {
    dev[i] = rebase_dequant(parts[i].args, regions[i], s.dev_in + offsets[i],
                            s.dev_scales + scale_offsets[i]);
    dev[i].dst = s.dev_out + parts[i].dst_offset;
  }
  if (Status st =
          check(launch_dequant_batch(dev.data(), dev.size(), s.stream), "dequant kernel launch");
      !st)
    return st;
  Status st = download_and_wait(c, dst, dst_bytes, wait, timings, t1 - t0);
  if (st)
    for (PartInput& in : inputs)
      in.finished();
  return st;
}

} // namespace

int CudaTransformer::device_count() {
  // With the static runtime this is safe without a driver: it returns cudaErrorNoDevice or
  // cudaErrorInsufficientDriver, which mean "no GPU" here like any other failure.
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError(); // clear, so a later unrelated check does not report it
    return 0;
  }
  return count;
}

void CudaTransformer::reset_device(int ordinal) {
  if (cudaSetDevice(ordinal) == cudaSuccess)
    cudaDeviceReset();
  cudaGetLastError();
}

Result<std::unique_ptr<CudaTransformer>>
CudaTransformer::create(int ordinal, uint64_t max_chunk_bytes, unsigned slots) {
  const int count = device_count();
  if (ordinal < 0 || ordinal >= count)
    return error(Errc::cuda, count == 0
                                 ? std::string("no usable CUDA device (no GPU or no driver)")
                                 : "CUDA device " + std::to_string(ordinal) + " does not exist (" +
                                       std::to_string(count) + " found)");
  if (slots == 0 || max_chunk_bytes == 0)
    return error(Errc::invalid_argument,
                 "CUDA transform: need at least one slot and a non-zero chunk size");
  auto impl = std::make_unique<CudaTransformerImpl>(ordinal, max_chunk_bytes);
  if (Status s = impl->init(slots); !s)
    return s; // the destructor frees what was allocated
  return std::unique_ptr<CudaTransformer>(std::move(impl));
}

} // namespace shardshift
