// cuda_dequant_test.cpp: FP8 block dequantization on the GPU (dequant_cuda.h and
// CudaTransformer::try_run_dequant) against dequant_cpu(), bit for bit. dequant_cpu() is itself
// checked against the independent reference (deepseek_convert_test.cpp, dequant tests), so equal
// bytes here mean the GPU follows semantics section 15 too. Every source, scale and destination
// dtype; transposed and plain calls; ranges cut inside blocks; pitched and misaligned outputs;
// every FP8 code against special scales. Outputs are poisoned first and followed by a guard, so
// unwritten elements and overruns show. Skips without a usable GPU.
#include "cuda_transform.h"
#include "dequant.h"
#include "dequant_region.h"
#include "test_support.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#if defined(SHARDSHIFT_HAVE_CUDA)
#include "dequant_cuda.h"

#include <cuda_runtime_api.h>
#endif

namespace shardshift {
namespace {

constexpr std::byte POISON{0xA5};
constexpr uint64_t GUARD = 64;

struct Problem {
  std::vector<std::byte> w, s;
  DequantArgs a; ///< src/scales point into w/s; dst unset
  uint64_t out_bytes = 0;
};

uint64_t width_of(const DequantArgs& a) {
  return a.dst_pitch ? a.dst_pitch : (a.transpose ? a.R : a.C);
}

Problem make_problem(std::mt19937_64& rng, uint64_t R, uint64_t C, bool transpose, uint64_t begin,
                     uint64_t count, uint64_t pitch, DType src, DType scale, DType dst,
                     uint64_t block = FP8_BLOCK) {
  Problem p;
  p.w.resize(R * C * (dtype_bits(src) / 8));
  for (auto& b : p.w)
    b = std::byte(rng());
  const uint64_t n = scale_blocks(R, block) * scale_blocks(C, block);
  p.s.resize(n * (dtype_bits(scale) / 8));
  for (uint64_t i = 0; i < n; ++i) {
    // Scales from 2^-12 to 2^12 and both signs, so products reach subnormals and large values.
    const float f = std::ldexp(1.0f + float(rng() % 4096) / 4096.0f, int(rng() % 25) - 12) *
                    (rng() % 8 == 0 ? -1.0f : 1.0f);
    if (scale == DType::F32) {
      std::memcpy(p.s.data() + 4 * i, &f, 4);
    } else {
      uint32_t u;
      std::memcpy(&u, &f, 4);
      const uint16_t h =
          scale == DType::BF16 ? uint16_t(u >> 16) : uint16_t(0x3C00 + rng() % 0x800);
      std::memcpy(p.s.data() + 2 * i, &h, 2);
    }
  }
  DequantArgs& a = p.a;
  a.src = p.w.data();
  a.scales = p.s.data();
  a.R = R;
  a.C = C;
  a.transpose = transpose;
  a.begin = begin;
  a.count = count;
  a.dst_pitch = pitch;
  a.src_dtype = src;
  a.scale_dtype = scale;
  a.dst_dtype = dst;
  a.block = block;
  p.out_bytes = count * width_of(a) * (dtype_bits(dst) / 8);
  return p;
}

std::vector<std::byte> on_cpu(const Problem& p) {
  std::vector<std::byte> out(p.out_bytes + GUARD, POISON);
  DequantArgs a = p.a;
  a.dst = out.data();
  dequant_cpu(a);
  return out;
}

/// Whether two outputs of `p` agree on every element the call writes and on the guard after
/// them. The transformer downloads whole output rows, so the columns of a pitched row that no part
/// writes hold whatever the device buffer held: a stacked chunk's parts cover every column.
bool same_written(const Problem& p, const std::vector<std::byte>& a,
                  const std::vector<std::byte>& b) {
  const uint64_t es = dtype_bits(p.a.dst_dtype) / 8;
  const uint64_t row = width_of(p.a) * es;
  const uint64_t written = (p.a.transpose ? p.a.R : p.a.C) * es;
  for (uint64_t k = 0; k < p.a.count; ++k)
    if (std::memcmp(a.data() + k * row, b.data() + k * row, written) != 0)
      return false;
  return std::memcmp(a.data() + p.out_bytes, b.data() + p.out_bytes, GUARD) == 0;
}

class CudaDequant : public ::testing::Test {
protected:
  void SetUp() override {
    if (CudaTransformer::device_count() == 0)
      GTEST_SKIP() << "no usable CUDA device";
    auto made = CudaTransformer::create(0, uint64_t(64) << 20, 2);
    ASSERT_TRUE(made.ok()) << made.status().message();
    gpu_ = std::move(made.value());
  }

  /// The problem through the transformer as one part, into a pinned buffer.
  std::vector<std::byte> on_transformer(const Problem& p, CudaTimings* timings = nullptr) {
    std::byte* dst = static_cast<std::byte*>(gpu_->alloc_pinned(p.out_bytes + GUARD));
    std::memset(dst, int(POISON), p.out_bytes + GUARD);
    std::vector<CudaDequantPart> parts{{p.a, 0}};
    int guarded = 0;
    const StagingGuard guard = [&](size_t, const std::function<void()>& copy) {
      ++guarded;
      copy();
      return Status{};
    };
    bool ran = false;
    Status s = gpu_->try_run_dequant(parts, dst, p.out_bytes, guard, GpuWait{}, timings, &ran);
    EXPECT_TRUE(s.ok()) << s.message();
    EXPECT_TRUE(ran);
    EXPECT_EQ(guarded, 1);
    std::vector<std::byte> out(dst, dst + p.out_bytes + GUARD);
    gpu_->free_pinned(dst);
    return out;
  }

  std::unique_ptr<CudaTransformer> gpu_;
};

#if defined(SHARDSHIFT_HAVE_CUDA)
/// The kernel on device copies of the problem, the output `misalign` bytes past an aligned
/// address (when the element size allows: outputs stay element-aligned).
std::vector<std::byte> on_kernel(const Problem& p, uint64_t misalign) {
  std::byte *w = nullptr, *s = nullptr, *d = nullptr;
  const uint64_t total = p.out_bytes + GUARD + 64;
  EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&w), p.w.size() + 64), cudaSuccess);
  EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&s), p.s.size() + 64), cudaSuccess);
  EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&d), total), cudaSuccess);
  const uint64_t in_shift = misalign % (dtype_bits(p.a.src_dtype) / 8) == 0 ? misalign : 0;
  cudaMemcpy(w + in_shift, p.w.data(), p.w.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(s, p.s.data(), p.s.size(), cudaMemcpyHostToDevice);
  cudaMemset(d, int(POISON), total);
  DequantArgs a = p.a;
  a.src = w + in_shift;
  a.scales = s;
  a.dst = d + misalign;
  EXPECT_EQ(launch_dequant(a, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<std::byte> out(p.out_bytes + GUARD);
  cudaMemcpy(out.data(), d + misalign, out.size(), cudaMemcpyDeviceToHost);
  cudaFree(w);
  cudaFree(s);
  cudaFree(d);
  return out;
}
#endif

const DType SOURCES[] = {DType::F8_E4M3, DType::F8_E5M2, DType::BF16, DType::F16, DType::F32};
const DType SCALES[] = {DType::F32, DType::BF16, DType::F16};
const DType DESTS[] = {DType::BF16, DType::F16, DType::F32};

TEST_F(CudaDequant, EveryDtypeCombinationMatchesTheCpu) {
  std::mt19937_64 rng(testing::test_seed());
  for (DType src : SOURCES)
    for (DType scale : SCALES)
      for (DType dst : DESTS)
        for (bool transpose : {false, true}) {
          SCOPED_TRACE(::testing::Message() << dtype_name(src) << " x " << dtype_name(scale)
                                            << " -> " << dtype_name(dst) << " t" << transpose);
          Problem p =
              make_problem(rng, 300, 260, transpose, 0, transpose ? 260 : 300, 0, src, scale, dst);
          const auto want = on_cpu(p);
          EXPECT_TRUE(same_written(p, on_transformer(p), want));
        }
}

TEST_F(CudaDequant, RangesPitchesAndMisalignedPointers) {
  std::mt19937_64 rng(testing::test_seed());
  for (int i = 0; i < 60; ++i) {
    const uint64_t R = 1 + rng() % 700, C = 1 + rng() % 700;
    const bool transpose = rng() % 2;
    const uint64_t n = transpose ? C : R;
    const uint64_t begin = rng() % n, count = 1 + rng() % (n - begin);
    const uint64_t width = transpose ? R : C;
    const uint64_t pitch = rng() % 2 ? 0 : width + rng() % 100;
    const DType src = SOURCES[rng() % 5], scale = SCALES[rng() % 3], dst = DESTS[rng() % 3];
    SCOPED_TRACE(::testing::Message()
                 << "case " << i << ": [" << R << ", " << C << "] t" << transpose << " [" << begin
                 << ", +" << count << ") pitch " << pitch << " " << dtype_name(src) << " x "
                 << dtype_name(scale) << " -> " << dtype_name(dst));
    Problem p = make_problem(rng, R, C, transpose, begin, count, pitch, src, scale, dst);
    const auto want = on_cpu(p);
    EXPECT_TRUE(same_written(p, on_transformer(p), want));
#if defined(SHARDSHIFT_HAVE_CUDA)
    const uint64_t es = dtype_bits(dst) / 8;
    for (uint64_t misalign : {uint64_t{0}, es, 16 - es})
      EXPECT_TRUE(on_kernel(p, misalign) == want) << "output misaligned by " << misalign;
#endif
  }
}

// FP8 weights into 16-bit results whose shapes, pitches and pointers are multiples of 8 take the
// kernels of the 8-byte layout (dequant_cuda.cu): rows whose range is too, and transposed calls
// with any range (output rows are masked one by one); blocks of 64 put two scale columns in one
// 128-column tile. Random bytes include NaN codes, so both the plain and the checked multiply
// run. Against the CPU, bit for bit.
TEST_F(CudaDequant, AlignedShapesMatchTheCpu) {
  const uint64_t seed = testing::test_seed();
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 60; ++i) {
    const uint64_t R = 8 * (1 + rng() % 90), C = 8 * (1 + rng() % 90);
    const bool transpose = rng() % 2;
    const uint64_t n = transpose ? C : R;
    const uint64_t begin = transpose ? rng() % n : 8 * (rng() % (n / 8));
    const uint64_t count =
        transpose ? 1 + rng() % (n - begin) : 8 * (1 + rng() % ((n - begin) / 8));
    const uint64_t width = transpose ? R : C;
    const uint64_t pitch = rng() % 2 ? 0 : width + 8 * (rng() % 12);
    const DType src = rng() % 2 ? DType::F8_E4M3 : DType::F8_E5M2;
    const DType scale = SCALES[rng() % 3], dst = rng() % 2 ? DType::BF16 : DType::F16;
    const uint64_t block = uint64_t(64) << (rng() % 3);
    SCOPED_TRACE(::testing::Message()
                 << "seed " << seed << " case " << i << ": [" << R << ", " << C << "] t"
                 << transpose << " [" << begin << ", +" << count << ") pitch " << pitch << " block "
                 << block << " " << dtype_name(src) << " x " << dtype_name(scale) << " -> "
                 << dtype_name(dst));
    Problem p = make_problem(rng, R, C, transpose, begin, count, pitch, src, scale, dst, block);
    const auto want = on_cpu(p);
    EXPECT_TRUE(same_written(p, on_transformer(p), want));
#if defined(SHARDSHIFT_HAVE_CUDA)
    EXPECT_TRUE(on_kernel(p, 0) == want);
#endif
  }
}

#if defined(SHARDSHIFT_HAVE_CUDA)
// launch_dequant_batch: 40 calls in one list, more than one launch takes (32), stacked pieces of
// several shapes, ranges and blocks side by side with calls that must go alone (rows, F32
// results, a width that is not a multiple of 8, an empty call): each call's output against the
// CPU, bit for bit.
TEST_F(CudaDequant, ABatchMatchesItsCallsOneByOne) {
  const uint64_t seed = testing::test_seed();
  std::mt19937_64 rng(seed);
  std::vector<Problem> problems;
  for (int i = 0; i < 40; ++i) {
    const int kind = i % 10 == 9 ? int(rng() % 4) : 4; // mostly stacked pieces
    const uint64_t R = kind == 2 ? 8 * (1 + rng() % 40) + 3 : 8 * (1 + rng() % 40);
    const uint64_t C = 8 * (1 + rng() % 40);
    const bool transpose = kind != 0;
    const uint64_t n = transpose ? C : R;
    const uint64_t begin = rng() % n, count = kind == 3 ? 0 : 1 + rng() % (n - begin);
    const uint64_t pitch = rng() % 2 ? 0 : (transpose ? R : C) + 8 * (rng() % 4);
    const DType src = rng() % 2 ? DType::F8_E4M3 : DType::F8_E5M2;
    const DType dst = kind == 1 ? DType::F32 : (i / 20 == 0 ? DType::BF16 : DType::F16);
    problems.push_back(make_problem(rng, R, C, transpose, begin, count, pitch, src,
                                    SCALES[rng() % 3], dst, uint64_t(64) << (rng() % 3)));
  }
  struct Device {
    std::byte *w = nullptr, *s = nullptr, *d = nullptr;
  };
  std::vector<Device> dev(problems.size());
  std::vector<DequantArgs> calls;
  for (size_t i = 0; i < problems.size(); ++i) {
    const Problem& p = problems[i];
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&dev[i].w), p.w.size()), cudaSuccess);
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&dev[i].s), p.s.size()), cudaSuccess);
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&dev[i].d), p.out_bytes + GUARD), cudaSuccess);
    cudaMemcpy(dev[i].w, p.w.data(), p.w.size(), cudaMemcpyHostToDevice);
    cudaMemcpy(dev[i].s, p.s.data(), p.s.size(), cudaMemcpyHostToDevice);
    cudaMemset(dev[i].d, int(POISON), p.out_bytes + GUARD);
    DequantArgs a = p.a;
    a.src = dev[i].w;
    a.scales = dev[i].s;
    a.dst = dev[i].d;
    calls.push_back(a);
  }
  ASSERT_EQ(launch_dequant_batch(calls.data(), calls.size(), nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (size_t i = 0; i < problems.size(); ++i) {
    const Problem& p = problems[i];
    std::vector<std::byte> got(p.out_bytes + GUARD);
    cudaMemcpy(got.data(), dev[i].d, got.size(), cudaMemcpyDeviceToHost);
    EXPECT_TRUE(got == on_cpu(p)) << "seed " << seed << " call " << i << ": [" << p.a.R << ", "
                                  << p.a.C << "] t" << p.a.transpose << " [" << p.a.begin << ", +"
                                  << p.a.count << ") block " << p.a.block << " -> "
                                  << dtype_name(p.a.dst_dtype);
    cudaFree(dev[i].w);
    cudaFree(dev[i].s);
    cudaFree(dev[i].d);
  }
}
#endif

// Every FP8 code (NaN, subnormals, 448 / 57344, zeros of both signs) against scales that are
// zero, negative zero, subnormal, huge, infinite and NaN: each 128 x 128 block gets one scale.
TEST_F(CudaDequant, EveryCodeTimesSpecialScales) {
  const float scales[] = {0.0f,       -0.0f,  1.0f,     -1.0f,         1e-40f, -3e-39f,
                          3e38f,      1e-20f, INFINITY, -INFINITY,     NAN,    -NAN,
                          0.0078125f, 448.0f, 65504.0f, 1.1754944e-38f};
  const uint64_t blocks = sizeof(scales) / sizeof(scales[0]);
  for (DType src : {DType::F8_E4M3, DType::F8_E5M2})
    for (DType dst : DESTS)
      for (bool transpose : {false, true}) {
        // [128, 128 * blocks]: every block holds each code 64 times.
        std::mt19937_64 rng(1);
        Problem p = make_problem(rng, 128, 128 * blocks, transpose, 0,
                                 transpose ? 128 * blocks : 128, 0, src, DType::F32, dst);
        for (uint64_t i = 0; i < p.w.size(); ++i)
          p.w[i] = std::byte(i % 256);
        std::memcpy(p.s.data(), scales, sizeof(scales));
        SCOPED_TRACE(::testing::Message()
                     << dtype_name(src) << " -> " << dtype_name(dst) << " t" << transpose);
        const auto want = on_cpu(p);
        EXPECT_TRUE(same_written(p, on_transformer(p), want));
      }
}

// A stacked chunk: two pieces transposed side by side into one buffer (gate | up), and a part
// whose guard fails makes the call fail with the guard's error.
TEST_F(CudaDequant, PartsFillTheirColumnsOfOneBufferAndGuardsReportErrors) {
  std::mt19937_64 rng(testing::test_seed());
  const uint64_t I = 300, H = 200; // pieces [I, H] -> output rows of H, [gate | up] = 2I wide
  Problem gate =
      make_problem(rng, I, H, true, 64, 136, 2 * I, DType::F8_E4M3, DType::F32, DType::BF16);
  Problem up =
      make_problem(rng, I, H, true, 64, 136, 2 * I, DType::F8_E4M3, DType::F32, DType::BF16);
  const uint64_t bytes = 136 * 2 * I * 2;
  std::vector<std::byte> want(bytes, POISON);
  DequantArgs g = gate.a, u = up.a;
  g.dst = want.data();
  u.dst = want.data() + I * 2;
  dequant_cpu(g);
  dequant_cpu(u);
  std::byte* dst = static_cast<std::byte*>(gpu_->alloc_pinned(bytes));
  std::vector<CudaDequantPart> parts{{gate.a, 0}, {up.a, I * 2}};
  std::vector<size_t> seen;
  const StagingGuard guard = [&](size_t i, const std::function<void()>& copy) {
    seen.push_back(i);
    copy();
    return Status{};
  };
  bool ran = false;
  CudaTimings tm;
  ASSERT_TRUE(gpu_->try_run_dequant(parts, dst, bytes, guard, GpuWait{}, &tm, &ran).ok());
  EXPECT_TRUE(ran);
  EXPECT_EQ(seen, (std::vector<size_t>{0, 1}));
  EXPECT_TRUE(std::vector<std::byte>(dst, dst + bytes) == want);
  EXPECT_GT(tm.kernel_ns + tm.h2d_ns + tm.d2h_ns, 0u);

  const StagingGuard failing = [&](size_t i, const std::function<void()>& copy) {
    if (i == 1)
      return Status(Errc::io, "input file changed while reading: up.safetensors");
    copy();
    return Status{};
  };
  Status s = gpu_->try_run_dequant(parts, dst, bytes, failing, GpuWait{}, nullptr, &ran);
  EXPECT_TRUE(ran);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("up.safetensors"), std::string::npos) << s.message();
  // The slot is usable again afterwards.
  ASSERT_TRUE(gpu_->try_run_dequant(parts, dst, bytes, guard, GpuWait{}, nullptr, &ran).ok());
  EXPECT_TRUE(std::vector<std::byte>(dst, dst + bytes) == want);
  gpu_->free_pinned(dst);
}

// Chunks whose staged input would not fit a slot are left to the CPU (ran == false).
TEST_F(CudaDequant, ChunksLargerThanASlotAreDeclined) {
  std::mt19937_64 rng(testing::test_seed());
  auto made = CudaTransformer::create(0, 1 << 16, 1);
  ASSERT_TRUE(made.ok());
  Problem p = make_problem(rng, 512, 512, true, 0, 512, 0, DType::F8_E4M3, DType::F32, DType::BF16);
  std::vector<std::byte> dst(p.out_bytes);
  bool ran = true;
  const StagingGuard guard = [](size_t, const std::function<void()>& copy) {
    copy();
    return Status{};
  };
  EXPECT_TRUE(
      (*made)
          ->try_run_dequant({{p.a, 0}}, dst.data(), p.out_bytes, guard, GpuWait{}, nullptr, &ran)
          .ok());
  EXPECT_FALSE(ran);
}

// Real DeepSeek-V3 expert pieces: gate [2048, 7168] into the first half of [7168, 4096] rows, and
// down [7168, 2048] transposed, in chunks of whole 128-column blocks as the emitter cuts them.
TEST_F(CudaDequant, RealExpertShapes) {
  std::mt19937_64 rng(testing::test_seed());
  Problem gate =
      make_problem(rng, 2048, 7168, true, 1024, 512, 4096, DType::F8_E4M3, DType::F32, DType::BF16);
  EXPECT_TRUE(same_written(gate, on_transformer(gate), on_cpu(gate)));
  Problem down =
      make_problem(rng, 7168, 2048, true, 0, 1024, 0, DType::F8_E4M3, DType::F32, DType::BF16);
  EXPECT_TRUE(same_written(down, on_transformer(down), on_cpu(down)));
}

#if defined(SHARDSHIFT_HAVE_CUDA)
/// Whether the whole pages inside p's weight can be page-locked now: no lock of the transformer
/// is left on them.
bool pages_free(const Problem& p) {
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p.w.data()) + 4095) / 4096 * 4096;
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p.w.data()) + p.w.size()) / 4096 * 4096;
  if (cudaHostRegister(reinterpret_cast<void*>(lo), hi - lo, cudaHostRegisterReadOnly) !=
      cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  cudaHostUnregister(reinterpret_cast<void*>(lo));
  return true;
}

/// The bytes of a region that cannot lie in its weight's locked pages: a run's bytes around its
/// whole pages, or, for a transposed weight locked whole, the rows reaching into its first or
/// last partial page.
uint64_t at_most_staged(const Problem& p, const DequantRegion& g) {
  const uint64_t es = dtype_bits(p.a.src_dtype) / 8;
  if (!p.a.transpose)
    return 2 * 4096;
  return 2 * (4096 / (p.a.C * es) + 1) * g.cols * es;
}

// Where the device supports read-only registration, a region that is one run of the input (rows
// of a dense weight) is uploaded in place; a transposed weight's pages are locked whole and the
// region's rows in them uploaded in place with a 2-D copy, whether it takes every column or a
// range; rows too narrow for that (under 128 bytes) are gathered. Same bytes every way,
// and no lock is left on the input afterwards.
TEST_F(CudaDequant, RunsAndTransposedWeightsAreReadInPlaceNarrowRangesGathered) {
  int read_only = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&read_only, cudaDevAttrHostRegisterReadOnlySupported, 0),
            cudaSuccess);
  std::mt19937_64 rng(testing::test_seed());
  Problem rows =
      make_problem(rng, 2048, 7168, false, 300, 1000, 0, DType::F8_E4M3, DType::F32, DType::BF16);
  Problem piece =
      make_problem(rng, 2048, 3584, true, 0, 3584, 0, DType::F8_E4M3, DType::F32, DType::BF16);
  Problem wide = make_problem(rng, 2048, 7168, true, 1000, 2100, 4096, DType::F8_E4M3, DType::F32,
                              DType::BF16);
  Problem range =
      make_problem(rng, 2048, 7168, true, 1024, 512, 4096, DType::F8_E4M3, DType::F32, DType::BF16);
  // Columns [128, 200) of a 200-wide weight: rows of 72 bytes.
  Problem narrow =
      make_problem(rng, 8192, 200, true, 150, 20, 0, DType::F8_E4M3, DType::F32, DType::BF16);
  for (Problem* p : {&rows, &piece, &wide, &range, &narrow}) {
    SCOPED_TRACE(::testing::Message() << "[" << p->a.R << ", " << p->a.C << "] t" << p->a.transpose
                                      << " [" << p->a.begin << ", +" << p->a.count << ")");
    CudaTimings t;
    EXPECT_TRUE(same_written(*p, on_transformer(*p, &t), on_cpu(*p)));
    const DequantRegion region = dequant_region(p->a);
    const bool held = p->a.transpose && region.cols >= 128;
    if (read_only && (held || region_run(p->a, region))) {
      EXPECT_GE(t.in_place_bytes, region.src_bytes - at_most_staged(*p, region));
      EXPECT_LE(t.in_place_bytes, region.src_bytes);
    } else {
      EXPECT_EQ(t.in_place_bytes, 0u);
    }
    EXPECT_TRUE(pages_free(*p));
  }
}

// Chunks of one transposed weight from several threads at once share its lock: every chunk but
// those at the weight's ends reads in place, each result is exact, and the last chunk done
// unlocks the pages.
TEST_F(CudaDequant, ChunksOfOneWeightFromManyThreadsShareItsLock) {
  int read_only = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&read_only, cudaDevAttrHostRegisterReadOnlySupported, 0),
            cudaSuccess);
  if (!read_only)
    GTEST_SKIP() << "the device cannot lock host memory read-only";
  const uint64_t seed = testing::test_seed();
  std::mt19937_64 rng(seed);
  auto made = CudaTransformer::create(0, uint64_t(32) << 20, 4);
  ASSERT_TRUE(made.ok()) << made.status().message();
  CudaTransformer& gpu = **made;
  // A real gate piece, [2048, 7168] FP8, into the first half of 4096-wide rows.
  Problem whole =
      make_problem(rng, 2048, 7168, true, 0, 7168, 4096, DType::F8_E4M3, DType::F32, DType::BF16);
  const std::vector<std::byte> want = on_cpu(whole);
  const uint64_t row_bytes = 4096 * 2;
  std::atomic<int> wrong{0}, staged_whole{0}, calls{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 local(seed + t);
      for (int round = 0; round < 6; ++round) {
        // Chunks of 1024-2047 output rows, from an offset cut inside a block.
        const uint64_t begin = local() % 5000, count = 1024 + local() % 1024;
        DequantArgs a = whole.a;
        a.begin = begin;
        a.count = count;
        const uint64_t bytes = count * row_bytes;
        auto* dst = static_cast<std::byte*>(gpu.alloc_pinned(bytes));
        const StagingGuard guard = [](size_t, const std::function<void()>& copy) {
          copy();
          return Status{};
        };
        bool ran = false;
        CudaTimings tm;
        Status s;
        while (!ran && s.ok()) // another thread may hold every slot
          s = gpu.try_run_dequant({{a, 0}}, dst, bytes, guard, GpuWait{}, &tm, &ran);
        ++calls;
        if (!s.ok())
          ++wrong;
        for (uint64_t k = 0; k < count && s.ok(); ++k)
          if (std::memcmp(dst + k * row_bytes, want.data() + (begin + k) * row_bytes, 2048 * 2) !=
              0) {
            ++wrong;
            break;
          }
        if (tm.in_place_bytes == 0)
          ++staged_whole;
        gpu.free_pinned(dst);
      }
    });
  for (auto& th : threads)
    th.join();
  EXPECT_EQ(calls.load(), 24);
  EXPECT_EQ(wrong.load(), 0) << "seed " << seed;
  EXPECT_EQ(staged_whole.load(), 0) << "seed " << seed;
  EXPECT_TRUE(pages_free(whole));
}
#endif

} // namespace
} // namespace shardshift
