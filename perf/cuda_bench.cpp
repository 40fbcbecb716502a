// cuda_bench.cpp: the CUDA stage against its physical ceilings, one line per case:
//
//   name : X GB/s (ratio)
//
// (a) device memory: a large device-to-device copy, bytes read + written: the kernel's ceiling.
// (b) PCIe: pinned host-to-device alone, device-to-host alone, and both at once on two streams.
// (c) the transpose-fold kernel on real expert shapes (gate_up [128, 1408, 2816], down
//     [128, 2816, 704]), bytes read + written, median of repeats with CUDA events, inputs rotated
//     so that the 60 MB L2 never holds the next input; ratio to (a), target >= 0.75.
// (d) the staged pipeline: CudaTransformer::run() over an 8 GB pageable buffer standing in for the
//     input mapping (pageable -> pinned -> GPU -> pinned output) from N threads on N slots; input
//     bytes per second, ratio to the host-to-device rate of (b) measured while both directions
//     run, target >= 0.80. Beside it, what bounds it from the host side: the staging memcpy
//     alone, and the pipeline's host-side traffic replayed without the transformer (copy, then
//     + upload, then + download), and the alternative of page-locking chunks in place.
// (e) the FP8 block dequantization kernel (dequant_cuda.h) on DeepSeek-V3 shapes: 16 expert
//     pieces transposed into their stacked rows (one launch each, as the pipeline does), and a
//     dense weight by rows; bytes read + written, ratio to (a), target >= 0.70. Codes are
//     weight-like (no NaN) except in the cases marked "NaN codes"; beside them, the floor of a
//     kernel that only reads one byte and writes two (cuda_floor.cu) in several thread layouts,
//     a write-only floor, and an experimental rows kernel (cuda_floor.cu).
//
// A plain program, not Google Benchmark: each number needs its own timing method (events for
// device work, wall clock for the pipeline). Without CUDA it prints "no CUDA" and exits 0.
// Usage: cuda_bench [--quick] [--kernels]
//   --quick    1 GB pipeline buffer, fewer repeats
//   --kernels  only (c), one timed run per case: for ncu and compute-sanitizer
//   --pipeline only (b) and (d)
//   --dequant  only (a) and (e)
//   --init     what opening the CUDA stage costs, step by step (run it in a fresh process), and
//              closing it
//   --init-leave  the opening steps, then _exit without closing anything (time the process
//              from outside: what the end of a process costs that leaves it to the driver)
//   --init-handback  --init, then the driver's files handed back as shardshift's closing does
//              (driver_files.h), each timed (time the process from outside: what is left of
//              its end)
//   --register DIR  a chunk of a file's mapping to the GPU: staged copy or page-locked in place
//   --register-out DIR  a chunk of results from the GPU into a new file in DIR: downloaded into
//                   pinned memory then written (pwrite), or downloaded straight into the file's
//                   shared mapping page-locked in place
//   --host-cost DIR  what an open CUDA context costs the host's page-table work: threads
//              fill new files in DIR through shared mappings and read them back through
//              read-only mappings, releasing each piece with MADV_DONTNEED as a lane does; system
//              time per GiB before any CUDA call, while a child process holds a context, with a
//              context of its own, with a conversion's chunk buffers page-locked, and after
//              cudaDeviceReset
//   --contention DIR  what getting chunks of input to the GPU costs the CPU lanes beside it:
//              cores-1 (then cores) threads work as lanes (fault a piece of their input mapping
//              in, copy it, write it to a new file, release it) while 0, 1 or 4 feeder threads
//              get chunks of another input to the GPU: locked in place, copied from the
//              mapping into pinned memory, or read from the file into pinned memory
//   --opening DIR  what the GPU's opening costs the lanes it runs beside: 16 lanes (as in
//              --contention) with no CUDA, then while a child process opens the GPU as the
//              CUDA stage does (context, 16 slots, 20 page-locked pool buffers), with no CUDA
//              again, while a thread of this process opens it, then with the GPU open; in five
//              fresh processes
//   --rows2d   a column range of every row of page-locked host memory to the GPU, by row width:
//              one 2-D copy straight from it (the CUDA stage's held weights), against the rows
//              gathered into pinned memory by one thread and uploaded, and a contiguous upload
#include <cstdio>
#include <cstring>

#if !defined(SHARDSHIFT_HAVE_CUDA)
int main() {
  std::printf("no CUDA\n");
  return 0;
}
#else
#include "cuda_floor.h"
#include "shardshift/mapped_file.h"
#include "cuda_transform.h"
#include "dequant_cuda.h"
#include "driver_files.h"
#include "transpose.h"
#include "transpose_cuda.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fcntl.h>
#include <memory>
#include <random>
#include <string>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <cuda_runtime_api.h>

namespace {

using namespace shardshift;

bool g_quick = false;
bool g_kernels_only = false;  // --kernels: section (c) only, one timed run each (for profilers)
bool g_pipeline_only = false; // --pipeline: sections (b) and (d) only
bool g_dequant_only = false;  // --dequant: sections (a) and (e) only
const char* g_register_dir = nullptr;     // --register DIR: page-locking the mapping in place
const char* g_register_out_dir = nullptr; // --register-out DIR: downloading into a file mapping
bool g_init_only = false;                 // --init: what opening the GPU stage costs, step by step
bool g_init_leave = false;    // --init-leave: the same, then _exit without freeing anything
bool g_init_handback = false; // --init-handback: --init, then the driver's files handed back
const char* g_contention_dir = nullptr; // --contention DIR: feeders' cost to the lanes beside
const char* g_opening_dir = nullptr; // --opening DIR: the GPU's opening beside the lanes
bool g_rows2d = false;        // --rows2d: 2-D uploads of column ranges, by row width
const char* g_host_cost_dir = nullptr; // --host-cost DIR: page-table work with and without CUDA

void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess)
    return;
  std::fprintf(stderr, "cuda_bench: %s: %s\n", what, cudaGetErrorString(err));
  std::exit(1);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double gbps(double bytes, double seconds) {
  return bytes / seconds / 1e9;
}

void line(const std::string& name, double rate, double ceiling) {
  if (ceiling > 0)
    std::printf("%-44s : %7.1f GB/s (%.2f)\n", name.c_str(), rate, rate / ceiling);
  else
    std::printf("%-44s : %7.1f GB/s\n", name.c_str(), rate);
  std::fflush(stdout);
}

/// Fills device memory with pseudo-random bytes (never zeros: they can run faster than data).
/// 64 MiB of pseudo-random bytes (never zeros: they can run faster than data).
const std::vector<std::byte>& random_pattern() {
  static const std::vector<std::byte> pattern = [] {
    std::vector<std::byte> p(uint64_t(64) << 20);
    std::mt19937_64 rng(42);
    for (size_t i = 0; i < p.size(); i += 8) {
      const uint64_t r = rng();
      std::memcpy(p.data() + i, &r, 8);
    }
    return p;
  }();
  return pattern;
}

/// Fills device memory with `pattern`, repeated.
void fill_device(std::byte* dev, uint64_t bytes,
                 const std::vector<std::byte>& pattern = random_pattern()) {
  for (uint64_t off = 0; off < bytes; off += pattern.size())
    check(cudaMemcpy(dev + off, pattern.data(), std::min<uint64_t>(pattern.size(), bytes - off),
                     cudaMemcpyHostToDevice),
          "fill");
}

/// Median seconds of `reps` runs of `work` on `stream`, timed with events, after one warm-up.
template <class F> double time_events(cudaStream_t stream, int reps, F&& work) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  work(-1);
  check(cudaStreamSynchronize(stream), "warm-up");
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    check(cudaEventRecord(start, stream), "cudaEventRecord");
    work(r);
    check(cudaEventRecord(stop, stream), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    times.push_back(ms / 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return median(times);
}

// --- (a) device memory ---------------------------------------------------------------------------

double bench_device_copy() {
  const uint64_t bytes = uint64_t(4) << 30;
  std::byte *a = nullptr, *b = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&a), bytes), "cudaMalloc");
  check(cudaMalloc(reinterpret_cast<void**>(&b), bytes), "cudaMalloc");
  fill_device(a, bytes);
  const double t = time_events(nullptr, g_quick ? 5 : 20, [&](int) {
    check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, nullptr), "d2d");
  });
  cudaFree(a);
  cudaFree(b);
  const double rate = gbps(2.0 * double(bytes), t);
  line("(a) device-to-device copy, 4 GiB (r+w)", rate, 0);
  return rate;
}

// --- (b) PCIe ----------------------------------------------------------------------------------

struct Pcie {
  double h2d = 0, d2h = 0, both_h2d = 0, both_d2h = 0;
};

Pcie bench_pcie() {
  const uint64_t bytes = uint64_t(2) << 30;
  std::byte *host_a = nullptr, *host_b = nullptr, *dev_a = nullptr, *dev_b = nullptr;
  check(cudaHostAlloc(reinterpret_cast<void**>(&host_a), bytes, 0), "cudaHostAlloc");
  check(cudaHostAlloc(reinterpret_cast<void**>(&host_b), bytes, 0), "cudaHostAlloc");
  std::memset(host_a, 0x5A, bytes);
  std::memset(host_b, 0x3C, bytes);
  check(cudaMalloc(reinterpret_cast<void**>(&dev_a), bytes), "cudaMalloc");
  check(cudaMalloc(reinterpret_cast<void**>(&dev_b), bytes), "cudaMalloc");
  cudaStream_t s1, s2;
  check(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking), "cudaStreamCreate");
  check(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking), "cudaStreamCreate");
  const int reps = g_quick ? 3 : 7;
  Pcie p;
  p.h2d = gbps(double(bytes), time_events(s1, reps, [&](int) {
                 check(cudaMemcpyAsync(dev_a, host_a, bytes, cudaMemcpyHostToDevice, s1), "h2d");
               }));
  p.d2h = gbps(double(bytes), time_events(s1, reps, [&](int) {
                 check(cudaMemcpyAsync(host_b, dev_b, bytes, cudaMemcpyDeviceToHost, s1), "d2h");
               }));
  // Both at once: s2 starts with s1 and s1's end waits for s2, so the events span both copies;
  // each direction's own span is timed too.
  cudaEvent_t fork, d2h_done;
  check(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming), "cudaEventCreate");
  check(cudaEventCreate(&d2h_done), "cudaEventCreate");
  std::vector<double> h2d_t, d2h_t;
  cudaEvent_t s1_start, s1_end, s2_start;
  check(cudaEventCreate(&s1_start), "cudaEventCreate");
  check(cudaEventCreate(&s1_end), "cudaEventCreate");
  check(cudaEventCreate(&s2_start), "cudaEventCreate");
  for (int r = 0; r < reps + 1; ++r) {
    check(cudaEventRecord(s1_start, s1), "record");
    check(cudaEventRecord(fork, s1), "record");
    check(cudaStreamWaitEvent(s2, fork), "wait");
    check(cudaEventRecord(s2_start, s2), "record");
    check(cudaMemcpyAsync(dev_a, host_a, bytes, cudaMemcpyHostToDevice, s1), "h2d");
    check(cudaMemcpyAsync(host_b, dev_b, bytes, cudaMemcpyDeviceToHost, s2), "d2h");
    check(cudaEventRecord(s1_end, s1), "record");
    check(cudaEventRecord(d2h_done, s2), "record");
    check(cudaDeviceSynchronize(), "sync");
    float ms1 = 0, ms2 = 0;
    check(cudaEventElapsedTime(&ms1, s1_start, s1_end), "elapsed");
    check(cudaEventElapsedTime(&ms2, s2_start, d2h_done), "elapsed");
    if (r > 0) { // the first is a warm-up
      h2d_t.push_back(ms1 / 1e3);
      d2h_t.push_back(ms2 / 1e3);
    }
  }
  p.both_h2d = gbps(double(bytes), median(h2d_t));
  p.both_d2h = gbps(double(bytes), median(d2h_t));
  line("(b) pinned host-to-device alone", p.h2d, 0);
  line("(b) pinned device-to-host alone", p.d2h, 0);
  line("(b) both at once: host-to-device", p.both_h2d, 0);
  line("(b) both at once: device-to-host", p.both_d2h, 0);
  line("(b) both at once: sum", p.both_h2d + p.both_d2h, 0);
  for (auto ev : {fork, d2h_done, s1_start, s1_end, s2_start})
    cudaEventDestroy(ev);
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
  cudaFreeHost(host_a);
  cudaFreeHost(host_b);
  cudaFree(dev_a);
  cudaFree(dev_b);
  return p;
}

// --- (c) the kernel ----------------------------------------------------------------------------

struct KernelCase {
  const char* name;
  uint64_t experts, A, B, col_begin, cols;
  DType src, dst;
  bool fold;
  DType scale;
  CudaTileVariant variant;
};

void bench_kernel(const KernelCase& k, double ceiling) {
  const uint64_t in_bytes = k.experts * k.A * k.B * (dtype_bits(k.src) / 8);
  const uint64_t out_bytes = k.experts * k.cols * k.A * (dtype_bits(k.dst) / 8);
  // Enough input sets that consecutive runs never find their input in L2.
  const int sets = 3;
  std::vector<std::byte*> in(sets), out(sets);
  for (int s = 0; s < sets; ++s) {
    check(cudaMalloc(reinterpret_cast<void**>(&in[s]), in_bytes), "cudaMalloc");
    check(cudaMalloc(reinterpret_cast<void**>(&out[s]), out_bytes), "cudaMalloc");
    fill_device(in[s], in_bytes);
  }
  std::byte* scales = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&scales), k.experts * 4), "cudaMalloc");
  fill_device(scales, k.experts * 4);
  const double t = time_events(nullptr,
                               g_kernels_only ? 1
                               : g_quick      ? 5
                                              : 15,
                               [&](int r) {
                                 const int s = (r + sets) % sets;
                                 TransposeArgs a;
                                 a.src = in[s];
                                 a.dst = out[s];
                                 a.scales = k.fold ? scales : nullptr;
                                 a.experts = k.experts;
                                 a.A = k.A;
                                 a.B = k.B;
                                 a.col_begin = k.col_begin;
                                 a.cols = k.cols;
                                 a.src_dtype = k.src;
                                 a.dst_dtype = k.dst;
                                 a.scale_dtype = k.scale;
                                 check(launch_transpose_fold(a, nullptr, k.variant), k.name);
                               });
  check(cudaDeviceSynchronize(), k.name);
  // Bytes the kernel must move: the selected columns of the input (whole rows when cols == B)
  // and the output.
  const double moved = double(in_bytes) * double(k.cols) / double(k.B) + double(out_bytes);
  line(std::string("(c) ") + k.name, gbps(moved, t), ceiling);
  for (int s = 0; s < sets; ++s) {
    cudaFree(in[s]);
    cudaFree(out[s]);
  }
  cudaFree(scales);
}

// --- (e) FP8 block dequantization ---------------------------------------------------------------

struct DequantCase {
  const char* name;
  uint64_t pieces, R, C;
  bool transpose;
  uint64_t pitch, col; ///< output row length and first column of a piece (stacked: gate | up)
  DType src, dst;
  bool nan_codes = false; ///< uniformly random bytes, NaN codes included (no real weight has one)
};

/// Fills device memory with FP8 weights as a checkpoint holds them: pseudo-random codes, none of
/// them NaN (E4M3 S.1111.111 becomes 448; E5M2 exponent 11111 becomes 11110).
void fill_device_fp8(std::byte* dev, uint64_t bytes, DType type) {
  std::vector<std::byte> p = random_pattern();
  for (std::byte& b : p) {
    uint8_t c = uint8_t(b);
    if (type == DType::F8_E4M3 && (c & 0x7F) == 0x7F)
      c ^= 1;
    else if (type == DType::F8_E5M2 && (c & 0x7C) == 0x7C)
      c &= 0xFB;
    b = std::byte(c);
  }
  fill_device(dev, bytes, p);
}

// What device memory gives a kernel that reads one byte for every two it writes (cuda_floor.cu),
// in each thread layout, on the bytes of the dense case: the write-heavy ceiling beside (a). Then
// a write-only ceiling (cudaMemsetAsync of the output bytes), and the experimental rows kernel in
// the load8 layout against the library's, output compared byte for byte.
void bench_widen_floor(double ceiling) {
  const uint64_t R = 18432, C = 7168;
  const uint64_t in_bytes = R * C;
  const int sets = 2;
  std::vector<std::byte*> in(sets), out(sets);
  for (int s = 0; s < sets; ++s) {
    check(cudaMalloc(reinterpret_cast<void**>(&in[s]), in_bytes), "cudaMalloc");
    check(cudaMalloc(reinterpret_cast<void**>(&out[s]), 2 * in_bytes), "cudaMalloc");
    fill_device(in[s], in_bytes);
  }
  const int reps = g_quick ? 5 : 15;
  const std::pair<FloorLayout, const char*> layouts[] = {
      {FloorLayout::load16, "(e) floor: read 1 B, write 2 B (16 B loads)"},
      {FloorLayout::load16_streaming, "(e) floor: the same, streaming stores"},
      {FloorLayout::load8, "(e) floor: 8 B loads, 16 B stores"},
      {FloorLayout::load8_deep, "(e) floor: 8 B loads, 8 in flight"},
  };
  for (const auto& [layout, name] : layouts) {
    const double t = time_events(nullptr, reps, [&](int r) {
      const int s = (r + sets) % sets;
      check(launch_widen_floor(in[s], out[s], in_bytes, nullptr, layout), "widen floor");
    });
    check(cudaDeviceSynchronize(), "widen floor");
    line(name, gbps(3.0 * double(in_bytes), t), ceiling);
  }
  const double w = time_events(nullptr, reps, [&](int r) {
    check(cudaMemsetAsync(out[(r + sets) % sets], 0x5A, 2 * in_bytes, nullptr), "memset");
  });
  line("(e) write only: cudaMemsetAsync", gbps(2.0 * double(in_bytes), w), ceiling);

  // The experimental rows kernel, weight-like codes, against the library's on the same data.
  for (int s = 0; s < sets; ++s)
    fill_device_fp8(in[s], in_bytes, DType::F8_E4M3);
  const uint64_t n_scales = scale_blocks(R) * scale_blocks(C);
  std::vector<float> host_scales(n_scales);
  for (size_t i = 0; i < n_scales; ++i)
    host_scales[i] = 1.0f / float(1 + i % 97);
  float* scales = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&scales), n_scales * 4), "cudaMalloc");
  check(cudaMemcpy(scales, host_scales.data(), n_scales * 4, cudaMemcpyHostToDevice), "scales");
  const double e = time_events(nullptr, reps, [&](int r) {
    const int s = (r + sets) % sets;
    check(launch_dequant_rows8(in[s], scales, out[s], R, C, nullptr), "rows8");
  });
  line("(e) experiment: rows, 8 B loads, fast path", gbps(3.0 * double(in_bytes), e), ceiling);
  std::byte* lib = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&lib), 2 * in_bytes), "cudaMalloc");
  check(launch_dequant_rows8(in[0], scales, out[0], R, C, nullptr), "rows8");
  DequantArgs a;
  a.src = in[0];
  a.scales = reinterpret_cast<const std::byte*>(scales);
  a.dst = lib;
  a.R = R;
  a.C = C;
  a.begin = 0;
  a.count = R;
  a.src_dtype = DType::F8_E4M3;
  a.dst_dtype = DType::BF16;
  check(launch_dequant(a, nullptr), "library rows");
  check(cudaDeviceSynchronize(), "rows8");
  std::vector<std::byte> x(2 * in_bytes), y(2 * in_bytes);
  check(cudaMemcpy(x.data(), out[0], x.size(), cudaMemcpyDeviceToHost), "download");
  check(cudaMemcpy(y.data(), lib, y.size(), cudaMemcpyDeviceToHost), "download");
  std::printf("    experiment output %s the library's\n", x == y ? "equals" : "DIFFERS FROM");
  cudaFree(lib);
  cudaFree(scales);
  for (int s = 0; s < sets; ++s) {
    cudaFree(in[s]);
    cudaFree(out[s]);
  }
}

void bench_dequant(const DequantCase& k, double ceiling) {
  const uint64_t in_piece = k.R * k.C * (dtype_bits(k.src) / 8);
  const uint64_t rows = k.transpose ? k.C : k.R;
  const uint64_t width = k.pitch ? k.pitch : (k.transpose ? k.R : k.C);
  const uint64_t out_es = dtype_bits(k.dst) / 8;
  const uint64_t out_piece = rows * width * out_es;
  const uint64_t scale_bytes = scale_blocks(k.R) * scale_blocks(k.C) * 4;
  const int sets = 2; // each set is far larger than the 60 MB L2
  std::vector<std::byte*> in(sets), out(sets);
  for (int s = 0; s < sets; ++s) {
    check(cudaMalloc(reinterpret_cast<void**>(&in[s]), in_piece * k.pieces), "cudaMalloc");
    check(cudaMalloc(reinterpret_cast<void**>(&out[s]), out_piece * k.pieces), "cudaMalloc");
    if (k.nan_codes || dtype_bits(k.src) != 8)
      fill_device(in[s], in_piece * k.pieces);
    else
      fill_device_fp8(in[s], in_piece * k.pieces, k.src);
  }
  // Scales: finite positive floats (random bytes would make many NaN and infinite products).
  std::vector<float> host_scales(scale_bytes / 4);
  for (size_t i = 0; i < host_scales.size(); ++i)
    host_scales[i] = 1.0f / float(1 + i % 97);
  std::byte* scales = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&scales), scale_bytes), "cudaMalloc");
  check(cudaMemcpy(scales, host_scales.data(), scale_bytes, cudaMemcpyHostToDevice), "scales");
  auto piece = [&](int s, uint64_t p) {
    DequantArgs a;
    a.src = in[s] + p * in_piece;
    a.scales = scales;
    a.dst = out[s] + p * out_piece + k.col * out_es;
    a.R = k.R;
    a.C = k.C;
    a.transpose = k.transpose;
    a.begin = 0;
    a.count = rows;
    a.dst_pitch = k.pitch;
    a.src_dtype = k.src;
    a.dst_dtype = k.dst;
    return a;
  };
  const int reps = g_quick ? 5 : 15;
  const double t = time_events(nullptr, reps, [&](int r) {
    for (uint64_t p = 0; p < k.pieces; ++p)
      check(launch_dequant(piece((r + sets) % sets, p), nullptr), k.name);
  });
  check(cudaDeviceSynchronize(), k.name);
  // Moved: every input byte once, every output element written once (a stacked piece writes
  // its R columns of each row, not the whole pitch).
  const uint64_t written = rows * (k.transpose ? k.R : k.C) * out_es;
  const double moved = double(k.pieces) * double(in_piece + written);
  line(std::string("(e) ") + k.name, gbps(moved, t), ceiling);
  if (k.pieces > 1) { // the pieces as the CUDA stage launches a chunk's: one batch
    std::vector<DequantArgs> batch(k.pieces);
    const double b = time_events(nullptr, reps, [&](int r) {
      for (uint64_t p = 0; p < k.pieces; ++p)
        batch[p] = piece((r + sets) % sets, p);
      check(launch_dequant_batch(batch.data(), batch.size(), nullptr), k.name);
    });
    check(cudaDeviceSynchronize(), k.name);
    line(std::string("(e) ") + k.name + ", one batch", gbps(moved, b), ceiling);
  }
  for (int s = 0; s < sets; ++s) {
    cudaFree(in[s]);
    cudaFree(out[s]);
  }
  cudaFree(scales);
}

// --- (d) the staged pipeline -------------------------------------------------------------------

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};

struct HostBuffer {
  std::unique_ptr<std::byte, FreeDeleter> data;
  uint64_t bytes = 0;
};

/// Pageable memory, touched and filled in parallel so that page faults stay out of the timing.
HostBuffer make_host_buffer(uint64_t bytes) {
  HostBuffer h;
  // Page aligned: chunks registered in place by different threads must not share a page.
  h.data.reset(static_cast<std::byte*>(std::aligned_alloc(4096, bytes)));
  h.bytes = bytes;
  const unsigned n = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < n; ++t)
    threads.emplace_back([&, t] {
      const uint64_t begin = bytes / n * t, end = t + 1 == n ? bytes : bytes / n * (t + 1);
      uint64_t x = 0x9E3779B97F4A7C15ull * (t + 1);
      for (uint64_t i = begin; i + 8 <= end; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::memcpy(h.data.get() + i, &x, 8);
      }
    });
  for (auto& th : threads)
    th.join();
  return h;
}

void bench_staging_copy(const HostBuffer& host, unsigned threads_n) {
  // The host half of a chunk's trip: pageable -> pinned memcpy, from threads_n threads at once.
  const uint64_t per_thread = uint64_t(512) << 20;
  std::vector<std::byte*> pinned(threads_n);
  for (auto& p : pinned)
    check(cudaHostAlloc(reinterpret_cast<void**>(&p), per_thread, 0), "cudaHostAlloc");
  auto run = [&] {
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < threads_n; ++t)
      threads.emplace_back([&, t] {
        const uint64_t off = (per_thread * t) % (host.bytes - per_thread);
        std::memcpy(pinned[t], host.data.get() + off, per_thread);
      });
    for (auto& th : threads)
      th.join();
  };
  run(); // warm-up: first touch of the pinned pages
  const auto t0 = std::chrono::steady_clock::now();
  run();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  line("(d) host staging memcpy, " + std::to_string(threads_n) + " threads",
       gbps(double(per_thread) * threads_n, s), 0);
  for (auto p : pinned)
    cudaFreeHost(p);
}

/// The host side of the pipeline without the transformer, to see where its time goes: n threads
/// take 63 MB chunks of the pageable buffer and (copy) copy each into their own pinned buffer in
/// four pieces, (upload) queueing each piece's upload right after its copy as run() does,
/// (download) then download a chunk-sized result into a pinned output; (register) page-locks the
/// chunk in place with cudaHostRegister and uploads from it directly, with no copy.
enum class Staging { copy, upload, download, register_in_place };

void bench_staging_chunks(const HostBuffer& host, unsigned n, Staging mode) {
  const uint64_t chunk = uint64_t(8) * 1408 * 2816 * 2, piece = chunk / 4;
  const uint64_t chunks = host.bytes / chunk;
  const bool up = mode != Staging::copy;
  const bool down = mode == Staging::download || mode == Staging::register_in_place;
  struct Lane {
    std::byte *pinned = nullptr, *out = nullptr, *dev = nullptr;
    cudaStream_t stream = nullptr;
    cudaEvent_t done = nullptr;
  };
  std::vector<Lane> lanes(n);
  for (auto& l : lanes) {
    check(cudaHostAlloc(reinterpret_cast<void**>(&l.pinned), chunk, 0), "cudaHostAlloc");
    check(cudaHostAlloc(reinterpret_cast<void**>(&l.out), chunk, 0), "cudaHostAlloc");
    std::memset(l.pinned, 0, chunk);
    std::memset(l.out, 0, chunk);
    check(cudaMalloc(reinterpret_cast<void**>(&l.dev), chunk), "cudaMalloc");
    check(cudaStreamCreateWithFlags(&l.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreateWithFlags(&l.done, cudaEventBlockingSync), "cudaEventCreate");
  }
  std::atomic<uint64_t> next{0};
  std::atomic<bool> register_failed{false};
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (unsigned k = 0; k < n; ++k)
    threads.emplace_back([&, k] {
      Lane& l = lanes[k];
      for (uint64_t c; (c = next.fetch_add(1)) < chunks;) {
        std::byte* src = host.data.get() + c * chunk;
        if (mode == Staging::register_in_place) {
          if (cudaHostRegister(src, chunk, cudaHostRegisterReadOnly) != cudaSuccess) {
            cudaGetLastError();
            register_failed = true;
            return;
          }
          check(cudaMemcpyAsync(l.dev, src, chunk, cudaMemcpyHostToDevice, l.stream), "h2d");
        } else {
          for (uint64_t off = 0; off < chunk; off += piece) {
            std::memcpy(l.pinned + off, src + off, piece);
            if (up)
              check(cudaMemcpyAsync(l.dev + off, l.pinned + off, piece, cudaMemcpyHostToDevice,
                                    l.stream),
                    "h2d");
          }
        }
        if (down)
          check(cudaMemcpyAsync(l.out, l.dev, chunk, cudaMemcpyDeviceToHost, l.stream), "d2h");
        if (up) {
          check(cudaEventRecord(l.done, l.stream), "record");
          check(cudaEventSynchronize(l.done), "sync");
        }
        if (mode == Staging::register_in_place)
          check(cudaHostUnregister(src), "unregister");
      }
    });
  for (auto& th : threads)
    th.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const char* names[] = {"copy", "copy + upload", "copy + upload + download",
                         "register + upload + download"};
  if (register_failed)
    std::printf("(d) %s: cudaHostRegister failed\n", names[int(mode)]);
  else
    line(std::string("(d) ") + names[int(mode)] + ", " + std::to_string(n) + " threads",
         gbps(double(chunks * chunk), s), 0);
  for (auto& l : lanes) {
    cudaFreeHost(l.pinned);
    cudaFreeHost(l.out);
    cudaFree(l.dev);
    cudaStreamDestroy(l.stream);
    cudaEventDestroy(l.done);
  }
}

void bench_pipeline(const HostBuffer& host, unsigned slots, bool fold, double ceiling) {
  // gate_up (or down) chunks of 8 experts, laid end to end over the host buffer.
  const uint64_t A = fold ? 2816 : 1408, B = fold ? 704 : 2816, experts = 8;
  const uint64_t chunk = experts * A * B * 2;
  const uint64_t chunks = host.bytes / chunk;
  auto made = CudaTransformer::create(0, chunk, slots);
  if (!made.ok()) {
    std::fprintf(stderr, "cuda_bench: %s\n", made.status().message().c_str());
    std::exit(1);
  }
  CudaTransformer& t = *made.value();
  std::vector<std::byte> scales(experts * 2, std::byte{0x3F}); // BF16 0x3F3F: about 0.75
  // Outputs are allocated once, outside the timing (cudaHostAlloc and cudaFreeHost are slow and
  // synchronize), as the pipeline's buffer pool does.
  std::vector<std::byte*> outs(slots);
  for (auto& out : outs) {
    out = static_cast<std::byte*>(t.alloc_pinned(chunk));
    if (!out) {
      std::fprintf(stderr, "cuda_bench: alloc_pinned failed\n");
      std::exit(1);
    }
  }
  auto pass = [&](std::vector<CudaTimings>* timings) {
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::vector<std::thread> threads;
    for (unsigned k = 0; k < slots; ++k)
      threads.emplace_back([&, k] {
        std::byte* out = outs[k];
        for (uint64_t c; (c = next.fetch_add(1)) < chunks;) {
          TransposeArgs a;
          a.src = host.data.get() + c * chunk;
          a.dst = out;
          a.scales = fold ? scales.data() : nullptr;
          a.experts = experts;
          a.A = A;
          a.B = B;
          a.cols = B;
          CudaTimings tm;
          const Status s = t.run(a, &tm);
          if (!s.ok()) {
            std::fprintf(stderr, "cuda_bench: %s\n", s.message().c_str());
            failed = true;
            break;
          }
          if (timings && k == 0)
            timings->push_back(tm);
        }
      });
    for (auto& th : threads)
      th.join();
    if (failed)
      std::exit(1);
  };
  pass(nullptr); // warm-up: first touch of the output buffers, module load
  std::vector<CudaTimings> timings;
  const auto t0 = std::chrono::steady_clock::now();
  pass(&timings);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string name = std::string("(d) staged pipeline, ") + (fold ? "down+fold" : "gate_up") +
                           ", " + std::to_string(slots) + " slots";
  line(name, gbps(double(chunks * chunk), s), ceiling);
  double stage = 0, h2d = 0, kernel = 0, d2h = 0;
  for (const auto& tm : timings) {
    stage += double(tm.stage_ns);
    h2d += double(tm.h2d_ns);
    kernel += double(tm.kernel_ns);
    d2h += double(tm.d2h_ns);
  }
  const double n = double(std::max<size_t>(timings.size(), 1)) * 1e6;
  for (auto* out : outs)
    t.free_pinned(out);
  std::printf("    per %.0f MB chunk (one thread's average): stage %.2f ms, h2d %.2f ms, "
              "kernel %.2f ms, d2h %.2f ms\n",
              double(chunk) / 1e6, stage / n, h2d / n, kernel / n, d2h / n);
}

// What opening the CUDA stage costs the process, step by step, in a fresh process: the driver,
// the context, then the staging memory of 16 slots of 32 MiB (pinned host and device), and
// page-locking 16 ordinary buffers of that size in place.
void bench_init(bool leave, bool hand_back) {
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::time_point a) {
    return std::chrono::duration<double, std::milli>(clock::now() - a).count();
  };
  const auto start = clock::now();
  auto t = clock::now();
  const int n = CudaTransformer::device_count();
  std::printf("init: device_count %d: %.1f ms\n", n, ms(t));
  if (n == 0)
    return;
  t = clock::now();
  check(cudaSetDevice(0), "cudaSetDevice");
  check(cudaFree(nullptr), "cudaFree");
  std::printf("init: context: %.1f ms\n", ms(t));
  const uint64_t size = uint64_t(32) << 20;
  std::vector<void*> host(16), dev(32), plain(16);
  t = clock::now();
  for (auto& p : host)
    check(cudaHostAlloc(&p, size, cudaHostAllocPortable), "cudaHostAlloc");
  std::printf("init: cudaHostAlloc 16 x 32 MiB: %.1f ms\n", ms(t));
  t = clock::now();
  for (auto& p : dev)
    check(cudaMalloc(&p, size), "cudaMalloc");
  std::printf("init: cudaMalloc 32 x 32 MiB: %.1f ms\n", ms(t));
  for (auto& p : plain) {
    p = std::aligned_alloc(4096, size);
    std::memset(p, 1, size);
  }
  t = clock::now();
  for (auto& p : plain)
    check(cudaHostRegister(p, size, cudaHostRegisterPortable), "cudaHostRegister");
  std::printf("init: cudaHostRegister 16 x 32 MiB (touched): %.1f ms\n", ms(t));
  if (leave) { // what the process's end costs when nothing is freed: time the process outside
    std::printf("init: in the process %.1f ms, now _exit without freeing\n", ms(start));
    std::fflush(stdout);
    _exit(0);
  }
  std::vector<void*> fresh(16);
  t = clock::now();
  for (auto& p : fresh) {
    p = std::aligned_alloc(4096, size);
    check(cudaHostRegister(p, size, cudaHostRegisterPortable), "cudaHostRegister");
  }
  std::printf("init: aligned_alloc + cudaHostRegister 16 x 32 MiB (untouched): %.1f ms\n", ms(t));
  t = clock::now();
  for (auto& p : plain)
    cudaHostUnregister(p);
  for (auto& p : fresh)
    cudaHostUnregister(p);
  std::printf("init: cudaHostUnregister 32 x 32 MiB: %.1f ms\n", ms(t));
  t = clock::now();
  for (auto& p : plain)
    std::free(p);
  for (auto& p : fresh)
    std::free(p);
  std::printf("init: free 32 x 32 MiB: %.1f ms\n", ms(t));
  t = clock::now();
  for (auto& p : host)
    cudaFreeHost(p);
  std::printf("init: cudaFreeHost 16 x 32 MiB: %.1f ms\n", ms(t));
  t = clock::now();
  for (auto& p : dev)
    cudaFree(p);
  std::printf("init: cudaFree 32 x 32 MiB: %.1f ms\n", ms(t));
  t = clock::now();
  check(cudaDeviceReset(), "cudaDeviceReset");
  std::printf("init: cudaDeviceReset: %.1f ms\n", ms(t));
  if (hand_back) {
    const std::vector<int> files = gpu_driver_files();
    t = clock::now();
    const unsigned n = release_gpu_driver_files();
    std::printf("init: %u of the driver's %zu files handed back: %.1f ms\n", n, files.size(),
                ms(t));
  }
  std::printf("init: in the process %.1f ms\n", ms(start));
  std::fflush(stdout);
}
// What it costs one thread to get a chunk of a file's mapping to the GPU, two ways: copying it
// into pinned memory and uploading it (the CUDA stage's way), or page-locking the mapped chunk
// in place (cudaHostRegister, read-only), uploading from it and unlocking it. The file (4 GiB,
// in `dir`: a tmpfs stands for the page cache of a warm input) is mapped as MappedFile maps
// input, read-only and shared, and read once before timing. Chunk sizes 8 to 512 MiB; 1 and 4
// threads, each on its own chunks.
void bench_register(const char* dir) {
  const uint64_t bytes = uint64_t(4) << 30;
  const std::string path = std::string(dir) + "/cuda_bench_register.bin";
  {
    const HostBuffer h = make_host_buffer(uint64_t(64) << 20);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) {
      std::printf("register: cannot create %s\n", path.c_str());
      return;
    }
    for (uint64_t off = 0; off < bytes; off += h.bytes)
      std::fwrite(h.data.get(), 1, h.bytes, f);
    std::fclose(f);
  }
  const int fd = open(path.c_str(), O_RDONLY);
  auto* map = static_cast<std::byte*>(mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0));
  close(fd);
  std::remove(path.c_str());
  if (map == MAP_FAILED) {
    std::printf("register: mmap failed\n");
    return;
  }
  volatile uint64_t sum = 0;
  for (uint64_t off = 0; off < bytes; off += 4096)
    sum = sum + uint64_t(map[off]);
  for (const uint64_t chunk :
       {uint64_t(8) << 20, uint64_t(32) << 20, uint64_t(128) << 20, uint64_t(512) << 20})
    for (const unsigned n : {1u, 4u})
      for (const bool in_place : {false, true}) {
        struct Lane {
          std::byte *pinned = nullptr, *dev = nullptr;
          cudaStream_t stream = nullptr;
        };
        std::vector<Lane> lanes(n);
        for (auto& l : lanes) {
          if (!in_place)
            check(cudaHostAlloc(reinterpret_cast<void**>(&l.pinned), chunk, 0), "cudaHostAlloc");
          check(cudaMalloc(reinterpret_cast<void**>(&l.dev), chunk), "cudaMalloc");
          check(cudaStreamCreateWithFlags(&l.stream, cudaStreamNonBlocking), "stream");
        }
        std::atomic<uint64_t> next{0};
        std::atomic<bool> failed{false};
        std::vector<double> reg_ms(n), unreg_ms(n);
        const uint64_t chunks = bytes / chunk;
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::thread> threads;
        for (unsigned k = 0; k < n; ++k)
          threads.emplace_back([&, k] {
            Lane& l = lanes[k];
            using clock = std::chrono::steady_clock;
            for (uint64_t c; (c = next.fetch_add(1)) < chunks;) {
              std::byte* src = map + c * chunk;
              if (in_place) {
                const auto r0 = clock::now();
                if (cudaHostRegister(src, chunk, cudaHostRegisterReadOnly) != cudaSuccess) {
                  std::printf("register: %s\n", cudaGetErrorString(cudaGetLastError()));
                  failed = true;
                  return;
                }
                reg_ms[k] += std::chrono::duration<double, std::milli>(clock::now() - r0).count();
                check(cudaMemcpyAsync(l.dev, src, chunk, cudaMemcpyHostToDevice, l.stream), "h2d");
                check(cudaStreamSynchronize(l.stream), "sync");
                const auto u0 = clock::now();
                check(cudaHostUnregister(src), "unregister");
                unreg_ms[k] += std::chrono::duration<double, std::milli>(clock::now() - u0).count();
              } else {
                std::memcpy(l.pinned, src, chunk);
                check(cudaMemcpyAsync(l.dev, l.pinned, chunk, cudaMemcpyHostToDevice, l.stream),
                      "h2d");
                check(cudaStreamSynchronize(l.stream), "sync");
              }
            }
          });
        for (auto& th : threads)
          th.join();
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (!failed) {
          char name[160];
          std::snprintf(name, sizeof name, "register: %s, %3llu MiB chunks, %u thread%s",
                        in_place ? "in place + upload" : "copy + upload   ",
                        (unsigned long long)(chunk >> 20), n, n > 1 ? "s" : "");
          line(name, gbps(double(chunks * chunk), s), 0);
          if (in_place) {
            double r = 0, u = 0;
            for (unsigned k = 0; k < n; ++k) {
              r += reg_ms[k];
              u += unreg_ms[k];
            }
            std::printf(
                "    cudaHostRegister %.2f GB/s, cudaHostUnregister %.2f GB/s (per thread)\n",
                double(bytes) / (r / n) / 1e6, double(bytes) / (u / n) / 1e6);
          }
        }
        for (auto& l : lanes) {
          cudaFreeHost(l.pinned);
          cudaFree(l.dev);
          cudaStreamDestroy(l.stream);
        }
      }
  munmap(map, bytes);
}

// What it costs threads to get chunks of results from the GPU into a new file (in `dir`: a tmpfs
// stands for the page cache), three ways:
//   download + pwrite: into a pinned buffer, then written into the file (the writer lanes' way);
//   register + download: the file's chunk mapped shared and writable, page-locked in place
//     (cudaHostRegister, which allocates the file's pages), the download straight into it;
//   populate + register + download: the same after MADV_POPULATE_WRITE has allocated the pages.
// Each trial writes a new 4 GiB file; the bytes are checked, one per page.
void bench_register_out(const char* dir) {
  const uint64_t bytes = uint64_t(4) << 30;
  const std::string path = std::string(dir) + "/cuda_bench_register_out.bin";
  enum Way { pwrite_way, register_way, populate_way };
  for (const uint64_t chunk : {uint64_t(16) << 20, uint64_t(64) << 20})
    for (const unsigned n : {1u, 2u, 4u, 8u})
      for (const Way way : {pwrite_way, register_way, populate_way}) {
        const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
          std::printf("register-out: cannot create %s\n", path.c_str());
          return;
        }
        std::byte* map = nullptr;
        if (way != pwrite_way) {
          map = static_cast<std::byte*>(
              mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
          if (map == MAP_FAILED) {
            std::printf("register-out: mmap failed\n");
            return;
          }
        }
        struct Lane {
          std::byte *pinned = nullptr, *dev = nullptr;
          cudaStream_t stream = nullptr;
        };
        std::vector<Lane> lanes(n);
        for (unsigned k = 0; k < n; ++k) {
          Lane& l = lanes[k];
          if (way == pwrite_way)
            check(cudaHostAlloc(reinterpret_cast<void**>(&l.pinned), chunk, 0), "cudaHostAlloc");
          check(cudaMalloc(reinterpret_cast<void**>(&l.dev), chunk), "cudaMalloc");
          check(cudaMemset(l.dev, 0x5A, chunk), "cudaMemset");
          check(cudaStreamCreateWithFlags(&l.stream, cudaStreamNonBlocking), "stream");
        }
        check(cudaDeviceSynchronize(), "sync");
        std::atomic<uint64_t> next{0};
        std::atomic<bool> failed{false};
        std::vector<double> reg_ms(n), pop_ms(n), write_ms(n);
        const uint64_t chunks = bytes / chunk;
        using clock = std::chrono::steady_clock;
        const auto ms_since = [](clock::time_point t) {
          return std::chrono::duration<double, std::milli>(clock::now() - t).count();
        };
        const auto t0 = clock::now();
        std::vector<std::thread> threads;
        for (unsigned k = 0; k < n; ++k)
          threads.emplace_back([&, k] {
            Lane& l = lanes[k];
            for (uint64_t c; !failed && (c = next.fetch_add(1)) < chunks;) {
              if (way == pwrite_way) {
                check(cudaMemcpyAsync(l.pinned, l.dev, chunk, cudaMemcpyDeviceToHost, l.stream),
                      "d2h");
                check(cudaStreamSynchronize(l.stream), "sync");
                const auto w0 = clock::now();
                for (uint64_t done = 0; done < chunk;) {
                  const ssize_t w = pwrite(fd, l.pinned + done, chunk - done,
                                           static_cast<off_t>(c * chunk + done));
                  if (w <= 0) {
                    std::printf("register-out: pwrite failed\n");
                    failed = true;
                    return;
                  }
                  done += static_cast<uint64_t>(w);
                }
                write_ms[k] += ms_since(w0);
                continue;
              }
              std::byte* dst = map + c * chunk;
              if (way == populate_way) {
                const auto p0 = clock::now();
                if (madvise(dst, chunk, 23 /* MADV_POPULATE_WRITE */) != 0) {
                  std::printf("register-out: MADV_POPULATE_WRITE failed\n");
                  failed = true;
                  return;
                }
                pop_ms[k] += ms_since(p0);
              }
              const auto r0 = clock::now();
              if (const cudaError_t e = cudaHostRegister(dst, chunk, 0); e != cudaSuccess) {
                std::printf("register-out: cudaHostRegister: %s\n", cudaGetErrorString(e));
                failed = true;
                return;
              }
              reg_ms[k] += ms_since(r0);
              check(cudaMemcpyAsync(dst, l.dev, chunk, cudaMemcpyDeviceToHost, l.stream), "d2h");
              check(cudaStreamSynchronize(l.stream), "sync");
              check(cudaHostUnregister(dst), "unregister");
            }
          });
        for (auto& th : threads)
          th.join();
        const double s = std::chrono::duration<double>(clock::now() - t0).count();
        bool right = !failed;
        std::vector<unsigned char> page(1);
        for (uint64_t off = 0; right && off < bytes; off += 4096 * 97) {
          unsigned char b = 0;
          if (map)
            b = static_cast<unsigned char>(map[off]);
          else if (pread(fd, &b, 1, static_cast<off_t>(off)) != 1)
            right = false;
          right = right && b == 0x5A;
        }
        if (!failed) {
          static const char* names[] = {"download + pwrite          ",
                                        "register + download        ",
                                        "populate + register + down."};
          char name[160];
          std::snprintf(name, sizeof name, "register-out: %s %3llu MiB chunks, %u thread%s%s",
                        names[way], (unsigned long long)(chunk >> 20), n, n > 1 ? "s" : "",
                        right ? "" : " WRONG BYTES");
          line(name, gbps(double(bytes), s), 0);
          double r = 0, p = 0, w = 0;
          for (unsigned k = 0; k < n; ++k) {
            r += reg_ms[k];
            p += pop_ms[k];
            w += write_ms[k];
          }
          const auto rate = [&](double ms) { return ms > 0 ? double(bytes) / (ms / n) / 1e6 : 0; };
          std::printf("    per thread: pwrite %.2f GB/s, populate %.2f GB/s, register %.2f GB/s\n",
                      rate(w), rate(p), rate(r));
        }
        for (auto& l : lanes) {
          cudaFreeHost(l.pinned);
          cudaFree(l.dev);
          cudaStreamDestroy(l.stream);
        }
        if (map)
          munmap(map, bytes);
        close(fd);
        std::remove(path.c_str());
      }
}

// The 2-D upload of a column range of every row of 16 DeepSeek-V3 gate pieces ([2048, 7168] FP8,
// 235 MB, page-locked read-only as WeightLocks locks them) by row width, against gathering the
// same rows with one thread into pinned memory and uploading that (what a chunk did before), and
// a contiguous upload of as many bytes (the PCIe ceiling). Wall time of each over all pieces.
void bench_rows2d() {
  const uint64_t R = 2048, C = 7168, pieces = 16, bytes = pieces * R * C;
  const HostBuffer host = make_host_buffer(bytes);
  check(cudaHostRegister(host.data.get(), bytes, cudaHostRegisterReadOnly), "cudaHostRegister");
  std::byte *dev = nullptr, *pinned = nullptr;
  check(cudaMalloc(reinterpret_cast<void**>(&dev), bytes), "cudaMalloc");
  check(cudaHostAlloc(reinterpret_cast<void**>(&pinned), bytes, cudaHostAllocDefault),
        "cudaHostAlloc");
  cudaStream_t stream = nullptr;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  const auto seconds = [&](auto&& work) {
    double best = 1e30;
    for (int r = 0; r < (g_quick ? 2 : 5); ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      work();
      check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      best = std::min(best,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  for (const uint64_t w : {128u, 256u, 512u, 1024u, 2048u, 4096u, 7168u}) {
    const uint64_t moved = pieces * R * w;
    const double two_d = seconds([&] {
      for (uint64_t p = 0; p < pieces; ++p)
        check(cudaMemcpy2DAsync(dev + p * R * w, w, host.data.get() + p * R * C + (C - w) / 2, C, w,
                                R, cudaMemcpyHostToDevice, stream),
              "cudaMemcpy2DAsync");
    });
    const double gathered = seconds([&] {
      for (uint64_t p = 0; p < pieces; ++p) {
        for (uint64_t r = 0; r < R; ++r)
          std::memcpy(pinned + (p * R + r) * w, host.data.get() + p * R * C + r * C + (C - w) / 2,
                      w);
        check(cudaMemcpyAsync(dev + p * R * w, pinned + p * R * w, R * w, cudaMemcpyHostToDevice,
                              stream),
              "cudaMemcpyAsync");
      }
    });
    const double flat = seconds([&] {
      check(cudaMemcpyAsync(dev, pinned, moved, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
    });
    std::printf("rows2d width %5llu B : 2-D in place %6.1f GB/s (%.2f of contiguous), gathered + "
                "upload %6.1f GB/s, contiguous %6.1f GB/s\n",
                static_cast<unsigned long long>(w), moved / two_d / 1e9, flat / two_d,
                moved / gathered / 1e9, moved / flat / 1e9);
  }
  cudaStreamDestroy(stream);
  cudaFreeHost(pinned);
  cudaFree(dev);
  cudaHostUnregister(host.data.get());
}

} // namespace

/// CPU and wall seconds of this process, for the host-cost phases.
struct Times {
  double wall = 0, sys = 0, user = 0;
  static Times now() {
    rusage r{};
    getrusage(RUSAGE_SELF, &r);
    Times t;
    t.wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    t.sys = double(r.ru_stime.tv_sec) + double(r.ru_stime.tv_usec) / 1e6;
    t.user = double(r.ru_utime.tv_sec) + double(r.ru_utime.tv_usec) / 1e6;
    return t;
  }
  Times operator-(const Times& o) const { return {wall - o.wall, sys - o.sys, user - o.user}; }
};

/// One host-cost trial: each of `threads` threads fills its own new file in `dir` through a
/// shared mapping, a piece at a time, releasing each piece (MADV_DONTNEED) after copying it, as
/// a lane filling a file at its offsets does; then reads the file back through a read-only
/// mapping into a private buffer, releasing each piece after it, as a lane reading its input.
/// Prints the two steps' wall and system seconds, and system seconds per GiB.
void host_cost_trial(const char* dir, const char* phase, unsigned threads, uint64_t per_thread,
                     uint64_t piece) {
  std::vector<std::vector<std::byte>> bufs; // filled: every page touched before timing
  for (unsigned t = 0; t < threads; ++t)
    bufs.emplace_back(piece, std::byte(0x31 + t));
  std::vector<std::string> paths;
  for (unsigned t = 0; t < threads; ++t)
    paths.push_back(std::string(dir) + "/cuda_bench_host_cost." + std::to_string(t));
  std::atomic<bool> failed{false};
  const auto run = [&](bool fill) {
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        const int fd = open(paths[t].c_str(), fill ? O_RDWR | O_CREAT | O_TRUNC : O_RDONLY, 0644);
        if (fd < 0 || (fill && ftruncate(fd, static_cast<off_t>(per_thread)) != 0)) {
          failed = true;
          if (fd >= 0)
            close(fd);
          return;
        }
        void* m =
            mmap(nullptr, per_thread, fill ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (m == MAP_FAILED) {
          failed = true;
          return;
        }
        auto* base = static_cast<std::byte*>(m);
        for (uint64_t at = 0; at < per_thread; at += piece) {
          const uint64_t n = std::min(piece, per_thread - at);
          if (fill)
            std::memcpy(base + at, bufs[t].data(), n);
          else
            std::memcpy(bufs[t].data(), base + at, n);
          madvise(base + at, n, MADV_DONTNEED);
        }
        munmap(m, per_thread);
      });
    for (auto& th : pool)
      th.join();
  };
  const double gib = double(per_thread) * threads / double(uint64_t(1) << 30);
  for (const bool fill : {true, false}) {
    const Times t0 = Times::now();
    run(fill);
    const Times d = Times::now() - t0;
    std::printf("host cost %-22s %-4s %u threads %.1f GiB, %3llu MiB pieces : wall %6.3f s  sys "
                "%6.3f s (%.3f s/GiB)  user %6.3f s\n",
                phase, fill ? "fill" : "read", threads, gib,
                static_cast<unsigned long long>(piece >> 20), d.wall, d.sys, d.sys / gib, d.user);
  }
  std::fflush(stdout);
  for (const auto& p : paths)
    unlink(p.c_str());
  if (failed)
    std::printf("host cost: cannot create, map or read files in %s\n", dir);
}

/// --host-cost DIR: whether a process's open CUDA context makes its page-table work dearer
/// (faults, MADV_DONTNEED: each interrupts every core running one of its threads, and the
/// driver may watch the address space). The same trials in five phases: before any CUDA call;
/// while a child process holds a context (what a helper process owning the GPU would leave the
/// converting process); with a context of its own (cudaFree(0)); with the chunk buffers a
/// 16-thread conversion keeps page-locked (20 of 19 MiB, each locked in place, the locking and
/// unlocking timed); and after cudaDeviceReset.
void bench_host_cost(const char* dir) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const uint64_t per_thread = (g_quick ? uint64_t(64) : uint64_t(256)) << 20;
  const auto trials = [&](const char* phase) {
    for (const uint64_t piece : {uint64_t(2) << 20, uint64_t(16) << 20})
      for (int rep = 0; rep < 2; ++rep)
        host_cost_trial(dir, phase, cores, per_thread, piece);
    host_cost_trial(dir, phase, std::min(2u, cores), per_thread, uint64_t(16) << 20);
  };
  trials("(no CUDA yet)");

  // Forked before this process makes any CUDA call (a child may not use a parent's CUDA state).
  int up[2], down[2];
  if (pipe(up) != 0 || pipe(down) != 0) {
    std::printf("host cost: pipe failed\n");
    return;
  }
  const pid_t child = fork();
  if (child == 0) {
    close(up[0]);
    close(down[1]);
    char c = cudaSetDevice(0) == cudaSuccess && cudaFree(nullptr) == cudaSuccess ? 'y' : 'n';
    if (write(up[1], &c, 1) != 1 || read(down[0], &c, 1) < 0) // holds it until the parent is done
      _exit(1);
    _exit(0);
  }
  close(up[1]);
  close(down[0]);
  char opened = 'n';
  if (child > 0 && read(up[0], &opened, 1) == 1 && opened == 'y')
    trials("(context in a child)");
  else
    std::printf("host cost: no child with a context\n");
  close(down[1]); // the child's read returns and it exits
  close(up[0]);
  if (child > 0)
    waitpid(child, nullptr, 0);

  const Times t0 = Times::now();
  check(cudaSetDevice(0), "cudaSetDevice");
  check(cudaFree(nullptr), "cudaFree (context)");
  const Times open = Times::now() - t0;
  std::printf("host cost: context opened in %.3f s (sys %.3f s)\n", open.wall, open.sys);
  trials("(context open)");

  const uint64_t buffer = uint64_t(19) << 20;
  std::vector<std::byte*> pool;
  for (int i = 0; i < 20; ++i) {
    auto* p = static_cast<std::byte*>(std::aligned_alloc(4096, buffer));
    if (!p)
      break;
    std::memset(p, 0x5A, buffer); // resident, as a used chunk buffer is
    pool.push_back(p);
  }
  const Times l0 = Times::now();
  for (std::byte* p : pool)
    check(cudaHostRegister(p, buffer, cudaHostRegisterPortable), "cudaHostRegister");
  const Times lock = Times::now() - l0;
  std::printf("host cost: %zu buffers of 19 MiB locked in %.3f s (sys %.3f s)\n", pool.size(),
              lock.wall, lock.sys);
  trials("(buffers locked)");
  const Times u0 = Times::now();
  for (std::byte* p : pool)
    check(cudaHostUnregister(p), "cudaHostUnregister");
  const Times unlock = Times::now() - u0;
  std::printf("host cost: unlocked in %.3f s (sys %.3f s)\n", unlock.wall, unlock.sys);
  for (std::byte* p : pool)
    std::free(p);

  check(cudaDeviceReset(), "cudaDeviceReset");
  trials("(after reset)");
}

/// A file of `bytes` in `dir` (pseudo-random words), opened as the pipeline opens input; the
/// name is unlinked at once, the mapping keeps it. Null on failure.
std::unique_ptr<MappedFile> make_input(const std::string& path, uint64_t bytes) {
  {
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
      return nullptr;
    std::vector<uint64_t> block((uint64_t(16) << 20) / 8);
    std::mt19937_64 rng(bytes);
    for (auto& w : block)
      w = rng();
    bool ok = true;
    for (uint64_t at = 0; ok && at < bytes; at += block.size() * 8)
      ok = pwrite(fd, block.data(), std::min<uint64_t>(block.size() * 8, bytes - at),
                  static_cast<off_t>(at)) > 0;
    close(fd);
    if (!ok)
      return nullptr;
  }
  auto file = MappedFile::open(path);
  unlink(path.c_str());
  return file ? std::move(*file) : nullptr;
}

/// Lanes as --contention runs them: each of `lanes` threads faults a `piece` of its input in
/// (MADV_POPULATE_READ), copies it into a buffer (the transform), writes that to a new file of
/// its own in `dir` (pwrite) and releases the piece (MADV_DONTNEED), over the whole input.
/// False if a file could not be made or written.
bool run_lanes(const char* dir, const std::vector<std::unique_ptr<MappedFile>>& inputs,
               unsigned lanes, uint64_t piece) {
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < lanes; ++t)
    threads.emplace_back([&, t] {
      const MappedFile& in = *inputs[t];
      const std::string out = std::string(dir) + "/contention_out." + std::to_string(t);
      const int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      unlink(out.c_str());
      std::vector<std::byte> buf(piece);
      for (uint64_t at = 0; fd >= 0 && at < in.size(); at += piece) {
        const uint64_t n = std::min(piece, in.size() - at);
        in.populate(at, n);
        std::memcpy(buf.data(), in.bytes().data() + at, n);
        if (pwrite(fd, buf.data(), n, static_cast<off_t>(at)) != ssize_t(n))
          failed = true;
        in.release(at, n);
      }
      if (fd < 0)
        failed = true;
      else
        close(fd);
    });
  for (auto& th : threads)
    th.join();
  return !failed;
}

/// Opens the GPU as the CUDA stage does: cudaSetDevice, a context, 16 slots of two 64 MiB device
/// buffers, 1 MiB of pinned staging and a stream each, and 20 pool buffers of 20 MiB made and
/// page-locked in place (kept in `pool`).
void open_like_the_stage(std::vector<void*>& pool) {
  check(cudaSetDevice(0), "cudaSetDevice");
  check(cudaFree(nullptr), "cudaFree (context)");
  for (int i = 0; i < 16; ++i) {
    void *a = nullptr, *b = nullptr, *h = nullptr;
    cudaStream_t st = nullptr;
    check(cudaMalloc(&a, uint64_t(64) << 20), "cudaMalloc");
    check(cudaMalloc(&b, uint64_t(64) << 20), "cudaMalloc");
    check(cudaHostAlloc(&h, uint64_t(1) << 20, cudaHostAllocPortable), "cudaHostAlloc");
    check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
  }
  for (int i = 0; i < 20; ++i) {
    void* p = std::aligned_alloc(4096, uint64_t(20) << 20);
    std::memset(p, 0x5A, uint64_t(20) << 20);
    check(cudaHostRegister(p, uint64_t(20) << 20, cudaHostRegisterPortable), "register");
    pool.push_back(p);
  }
}

/// --opening DIR: whether opening the GPU costs the lanes running beside it more than the CPU
/// time the opening itself takes, and whether that changes when the opening runs in a process of
/// its own (a GPU helper process: its own address space, so none of the driver's mapping and
/// locking goes through the one every lane's faults and releases use). In each of five fresh
/// processes: 16 lanes (run_lanes, 768 MiB each) before any CUDA call, after a warm-up run; the
/// same while a child process opens the GPU as the CUDA stage does (open_like_the_stage); again
/// with no CUDA; the same while a thread of this process opens it; then with the GPU open here.
/// Prints the lanes' wall seconds and each opener's wall and CPU seconds (the child's: its whole
/// process, driver threads included; the thread's: its own): lanes slower by more than the
/// opener's CPU time over the cores is the presence cost.
void bench_opening(const char* dir) {
  for (int round = 0; round < 5; ++round) {
    const pid_t child = fork();
    if (child < 0) {
      std::printf("opening: fork failed\n");
      return;
    }
    if (child > 0) {
      waitpid(child, nullptr, 0);
      continue;
    }
    const unsigned lanes = 16;
    const uint64_t piece = uint64_t(16) << 20, per_lane = uint64_t(768) << 20;
    std::vector<std::unique_ptr<MappedFile>> inputs;
    for (unsigned t = 0; t < lanes; ++t)
      if (auto f = make_input(std::string(dir) + "/opening_in." + std::to_string(t), per_lane))
        inputs.push_back(std::move(f));
    if (inputs.size() != lanes) {
      std::printf("opening: cannot make inputs in %s\n", dir);
      std::fflush(stdout);
      _exit(1);
    }
    const auto lanes_wall = [&] {
      const Times t0 = Times::now();
      if (!run_lanes(dir, inputs, lanes, piece))
        std::printf("opening: a lane failed\n");
      return (Times::now() - t0).wall;
    };
    lanes_wall(); // warm-up: the first run in a process is the slowest whatever runs beside it
    const double before = lanes_wall();

    // The opening in a child process, which reports its wall and CPU seconds through a pipe and
    // holds the GPU open until this process closes the other pipe.
    int report[2], hold[2];
    if (pipe(report) != 0 || pipe(hold) != 0)
      _exit(1);
    const pid_t opener_process = fork();
    if (opener_process == 0) {
      close(report[0]);
      close(hold[1]);
      const auto w0 = std::chrono::steady_clock::now();
      std::vector<void*> pool;
      open_like_the_stage(pool);
      const Times t = Times::now();
      const double got[2] = {
          std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count(),
          t.sys + t.user};
      if (write(report[1], got, sizeof got) != ssize_t(sizeof got))
        _exit(1);
      char c;
      while (read(hold[0], &c, 1) > 0) {
      }
      _exit(0);
    }
    close(report[1]);
    close(hold[0]);
    const double during_process = lanes_wall();
    double child_got[2] = {0, 0};
    if (read(report[0], child_got, sizeof child_got) != ssize_t(sizeof child_got))
      std::printf("opening: the child process did not report\n");
    close(hold[1]);
    close(report[0]);
    waitpid(opener_process, nullptr, 0);
    const double between = lanes_wall();

    double open_wall = 0, open_cpu = 0;
    std::vector<void*> pool;
    std::thread opener([&] {
      const auto w0 = std::chrono::steady_clock::now();
      open_like_the_stage(pool);
      open_wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
      timespec cpu{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
      open_cpu = double(cpu.tv_sec) + double(cpu.tv_nsec) / 1e9;
    });
    const double during = lanes_wall();
    opener.join();
    const double after = lanes_wall();
    std::printf("opening: %u lanes of %llu MiB: before any CUDA %.3f s, while a child process "
                "opens the GPU %.3f s (it: %.3f s wall, %.3f s CPU), no CUDA again %.3f s, while "
                "a thread here opens it %.3f s (it: %.3f s wall, %.3f s CPU, %.3f s over %u "
                "cores), with it open here %.3f s\n",
                lanes, static_cast<unsigned long long>(per_lane >> 20), before, during_process,
                child_got[0], child_got[1], between, during, open_wall, open_cpu,
                open_cpu / lanes, lanes, after);
    std::fflush(stdout);
    _exit(0);
  }
}

/// --contention DIR: whether a thread that gets chunks of input to the GPU slows the lanes
/// beside it by more than the core it takes. Lanes (threads, as the pipeline's) each fault a
/// 16 MiB piece of their own input in (MADV_POPULATE_READ), copy it into a buffer (the
/// transform), write that to a new file of their own in DIR (pwrite) and release the piece
/// (MADV_DONTNEED), over 512 MiB each. Meanwhile feeders take 16 MiB chunks of another input
/// in turn, one of three ways, and upload them (cudaMemcpyAsync, then wait):
///   in place: fault in, cudaHostRegister read-only, upload, unregister, release (the default);
///   staged:   fault in, copy into pinned memory, upload, release (SHARDSHIFT_CUDA_INPUT=staged);
///   read:     pread from the file into pinned memory, upload (no fault, nothing to release).
/// Prints the lanes' rate (input bytes per wall second), the feeders' rate, and the process's
/// system and user seconds, for cores-1 lanes with 0, 1 and 4 feeders each way, and cores lanes.
void bench_contention(const char* dir) {
  const unsigned cores = std::max(2u, std::thread::hardware_concurrency());
  const uint64_t per_lane = (g_quick ? uint64_t(64) : uint64_t(512)) << 20;
  const uint64_t piece = uint64_t(16) << 20, feed_bytes = uint64_t(4) << 30;
  std::vector<std::unique_ptr<MappedFile>> inputs;
  for (unsigned t = 0; t < cores; ++t)
    if (auto f = make_input(std::string(dir) + "/contention_in." + std::to_string(t), per_lane))
      inputs.push_back(std::move(f));
  auto feed = make_input(std::string(dir) + "/contention_feed", feed_bytes);
  if (inputs.size() != cores || !feed) {
    std::printf("contention: cannot make inputs in %s\n", dir);
    return;
  }
  check(cudaSetDevice(0), "cudaSetDevice");
  check(cudaFree(nullptr), "cudaFree (context)");
  constexpr unsigned MAX_FEEDERS = 4;
  struct Feeder {
    std::byte *pinned = nullptr, *dev = nullptr;
    cudaStream_t stream = nullptr;
  };
  std::vector<Feeder> feeders(MAX_FEEDERS);
  for (auto& f : feeders) {
    check(cudaHostAlloc(reinterpret_cast<void**>(&f.pinned), piece, 0), "cudaHostAlloc");
    check(cudaMalloc(reinterpret_cast<void**>(&f.dev), piece), "cudaMalloc");
    check(cudaStreamCreateWithFlags(&f.stream, cudaStreamNonBlocking), "stream");
  }
  enum Way { in_place, staged, read };
  const char* way_names[] = {"in place", "staged", "read"};
  const auto trial = [&](unsigned lanes, unsigned nfeed, Way way) {
    std::atomic<bool> lanes_done{false}, failed{false};
    std::atomic<uint64_t> next_feed{0}, fed{0};
    std::vector<std::thread> threads;
    const Times t0 = Times::now();
    for (unsigned k = 0; k < nfeed; ++k)
      threads.emplace_back([&, k] {
        Feeder& f = feeders[k];
        const MappedFile& in = *feed;
        auto* base = const_cast<std::byte*>(in.bytes().data());
        while (!lanes_done.load(std::memory_order_relaxed)) {
          const uint64_t at = (next_feed.fetch_add(1) * piece) % feed_bytes;
          std::byte* src = base + at;
          const std::byte* from = f.pinned;
          if (way == read) {
            for (uint64_t done = 0; done < piece;) { // the file, not the mapping
              const ssize_t got = pread(in.fd(), f.pinned + done, piece - done,
                                        static_cast<off_t>(at + done));
              if (got <= 0) {
                failed = true;
                return;
              }
              done += uint64_t(got);
            }
          } else {
            in.populate(at, piece);
            if (way == staged)
              std::memcpy(f.pinned, src, piece);
            else if (cudaHostRegister(src, piece, cudaHostRegisterReadOnly) == cudaSuccess)
              from = src;
            else {
              failed = true;
              return;
            }
          }
          check(cudaMemcpyAsync(f.dev, from, piece, cudaMemcpyHostToDevice, f.stream), "h2d");
          check(cudaStreamSynchronize(f.stream), "sync");
          if (from == src)
            check(cudaHostUnregister(src), "cudaHostUnregister");
          if (way != read)
            in.release(at, piece);
          fed += piece;
        }
      });
    if (!run_lanes(dir, inputs, lanes, piece))
      failed = true;
    const Times lanes_t = Times::now() - t0;
    lanes_done = true;
    for (auto& th : threads)
      th.join();
    const Times d = Times::now() - t0;
    if (failed) {
      std::printf("contention: a trial failed (%s)\n", way_names[way]);
      return;
    }
    std::printf("contention: %2u lanes, %u feeder%s %-8s : lanes %6.2f GB/s, feeders %6.2f GB/s"
                " | sys %6.2f s, user %6.2f s, wall %5.2f s\n",
                lanes, nfeed, nfeed == 1 ? " " : "s", nfeed ? way_names[way] : "",
                gbps(double(per_lane) * lanes, lanes_t.wall), gbps(double(fed), d.wall), d.sys,
                d.user, d.wall);
    std::fflush(stdout);
  };
  for (int rep = 0; rep < (g_quick ? 1 : 3); ++rep) {
    trial(cores, 0, in_place);
    trial(cores - 1, 0, in_place);
    for (const unsigned nfeed : {1u, MAX_FEEDERS})
      for (const Way way : {in_place, staged, read})
        trial(cores - 1, nfeed, way);
  }
  for (auto& f : feeders) {
    cudaFreeHost(f.pinned);
    cudaFree(f.dev);
    cudaStreamDestroy(f.stream);
  }
}

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--quick") == 0)
      g_quick = true;
    else if (std::strcmp(argv[i], "--kernels") == 0)
      g_kernels_only = true;
    else if (std::strcmp(argv[i], "--pipeline") == 0)
      g_pipeline_only = true;
    else if (std::strcmp(argv[i], "--dequant") == 0)
      g_dequant_only = true;
    else if (std::strcmp(argv[i], "--init") == 0)
      g_init_only = true;
    else if (std::strcmp(argv[i], "--init-leave") == 0)
      g_init_only = g_init_leave = true;
    else if (std::strcmp(argv[i], "--init-handback") == 0)
      g_init_only = g_init_handback = true;
    else if (std::strcmp(argv[i], "--register") == 0 && i + 1 < argc)
      g_register_dir = argv[++i];
    else if (std::strcmp(argv[i], "--register-out") == 0 && i + 1 < argc)
      g_register_out_dir = argv[++i];
    else if (std::strcmp(argv[i], "--rows2d") == 0)
      g_rows2d = true;
    else if (std::strcmp(argv[i], "--host-cost") == 0 && i + 1 < argc)
      g_host_cost_dir = argv[++i];
    else if (std::strcmp(argv[i], "--contention") == 0 && i + 1 < argc)
      g_contention_dir = argv[++i];
    else if (std::strcmp(argv[i], "--opening") == 0 && i + 1 < argc)
      g_opening_dir = argv[++i];
  if (g_contention_dir) {
    bench_contention(g_contention_dir);
    return 0;
  }
  if (g_opening_dir) { // before any CUDA call: each round opens the GPU in a fresh process
    bench_opening(g_opening_dir);
    return 0;
  }
  if (g_host_cost_dir) { // before any CUDA call: its first phase is the process without CUDA
    bench_host_cost(g_host_cost_dir);
    return 0;
  }
  if (g_rows2d) {
    check(cudaSetDevice(0), "cudaSetDevice");
    bench_rows2d();
    return 0;
  }
  if (g_register_out_dir) {
    check(cudaSetDevice(0), "cudaSetDevice");
    bench_register_out(g_register_out_dir);
    return 0;
  }
  if (g_register_dir) {
    check(cudaSetDevice(0), "cudaSetDevice");
    bench_register(g_register_dir);
    return 0;
  }
  if (g_init_only) {
    bench_init(g_init_leave, g_init_handback);
    return 0;
  }
  if (CudaTransformer::device_count() == 0) {
    std::printf("no CUDA device\n");
    return 0;
  }
  check(cudaSetDevice(0), "cudaSetDevice");
  cudaDeviceProp props{};
  check(cudaGetDeviceProperties(&props, 0), "cudaGetDeviceProperties");
  std::printf("device: %s, %d SMs, %.0f MB L2, %.1f GB; pageable memory access %d (through "
              "host page tables %d)\n",
              props.name, props.multiProcessorCount, props.l2CacheSize / 1e6,
              double(props.totalGlobalMem) / 1e9, props.pageableMemoryAccess,
              props.pageableMemoryAccessUsesHostPageTables);

  const double copy = g_kernels_only || g_pipeline_only ? 0 : bench_device_copy();
  const auto E4M3 = DType::F8_E4M3;
  const DequantCase dequant_cases[] = {
      {"gate piece E4M3 -> BF16 T [2048,7168] x16", 16, 2048, 7168, true, 4096, 0, E4M3,
       DType::BF16},
      {"down piece E4M3 -> BF16 T [7168,2048] x16", 16, 7168, 2048, true, 0, 0, E4M3, DType::BF16},
      {"dense E4M3 -> BF16 rows [18432,7168]", 1, 18432, 7168, false, 0, 0, E4M3, DType::BF16},
      {"dense E4M3 -> F32 rows [18432,7168]", 1, 18432, 7168, false, 0, 0, E4M3, DType::F32},
      {"gate piece E5M2 -> F16 T [2048,7168] x16", 16, 2048, 7168, true, 4096, 0, DType::F8_E5M2,
       DType::F16},
      {"gate piece E4M3 -> BF16 T, NaN codes", 16, 2048, 7168, true, 4096, 0, E4M3, DType::BF16,
       true},
      {"dense E4M3 -> BF16 rows, NaN codes", 1, 18432, 7168, false, 0, 0, E4M3, DType::BF16, true},
  };
  if (g_dequant_only) {
    bench_widen_floor(copy);
    for (const auto& k : dequant_cases)
      bench_dequant(k, copy);
    return 0;
  }
  const Pcie pcie = g_kernels_only ? Pcie{} : bench_pcie();

  const auto BF16 = DType::BF16, F32 = DType::F32, F16 = DType::F16;
  const auto STD = CudaTileVariant::standard, SMALL = CudaTileVariant::small;
  const KernelCase cases[] = {
      {"gate_up BF16 transpose [128,1408,2816]", 128, 1408, 2816, 0, 2816, BF16, BF16, false, BF16,
       STD},
      {"gate_up BF16 transpose, small tiles", 128, 1408, 2816, 0, 2816, BF16, BF16, false, BF16,
       SMALL},
      {"down BF16 x BF16 fold [128,2816,704]", 128, 2816, 704, 0, 704, BF16, BF16, true, BF16, STD},
      {"down BF16 x BF16 fold, small tiles", 128, 2816, 704, 0, 704, BF16, BF16, true, BF16, SMALL},
      {"down BF16 fold, EP slice cols 352..704", 128, 2816, 704, 352, 352, BF16, BF16, true, BF16,
       STD},
      {"down F16 x F16 fold", 128, 2816, 704, 0, 704, F16, F16, true, F16, STD},
      {"gate_up F32 transpose", 128, 1408, 2816, 0, 2816, F32, F32, false, F32, STD},
      {"down F32 x F32 fold", 128, 2816, 704, 0, 704, F32, F32, true, F32, STD},
      {"down BF16 x BF16 fold -> F32", 128, 2816, 704, 0, 704, BF16, F32, true, BF16, STD},
      {"gate_up F32 -> BF16 cast", 128, 1408, 2816, 0, 2816, F32, BF16, false, F32, STD},
      {"U8 transpose [128,1408,2816]", 128, 1408, 2816, 0, 2816, DType::U8, DType::U8, false,
       DType::U8, STD},
      {"F64 transpose [64,1408,2816]", 64, 1408, 2816, 0, 2816, DType::F64, DType::F64, false,
       DType::F64, STD},
      {"odd shape BF16 transpose [128,1407,2815]", 128, 1407, 2815, 0, 2815, BF16, BF16, false,
       BF16, STD},
  };
  for (const auto& k : cases)
    bench_kernel(k, copy);
  if (!g_pipeline_only) {
    bench_widen_floor(copy);
    for (const auto& k : dequant_cases)
      bench_dequant(k, copy);
  }

  const HostBuffer host = make_host_buffer(g_quick ? uint64_t(1) << 30 : uint64_t(8) << 30);
  for (unsigned n : {1u, 4u, 8u, 16u})
    bench_staging_copy(host, n);
  for (Staging mode :
       {Staging::copy, Staging::upload, Staging::download, Staging::register_in_place})
    for (unsigned n : {8u, 16u})
      bench_staging_chunks(host, n, mode);
  for (unsigned slots : {2u, 4u, 8u, 12u, 16u})
    bench_pipeline(host, slots, false, pcie.both_h2d);
  bench_pipeline(host, 8, true, pcie.both_h2d);
  return 0;
}
#endif
