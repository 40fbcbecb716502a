// cuda_transform_test.cpp: the CUDA transform stage against the CPU kernel, bit for bit.
//
// transpose_fold_cpu() is the reference: every GPU result (through CudaTransformer::run, and the
// kernel launched directly on misaligned device pointers) must equal it byte for byte, for every
// dtype combination, element width, shape (tiny, odd, prime, real-sized), column slice and special
// value. Outputs are poisoned before each run and followed by a guard region, so unwritten
// elements and overruns show. Without a usable GPU every test that needs one is skipped.
#include "shardshift/mapped_file.h"

#include "cuda_transform.h"
#include "test_support.h"
#include "transpose.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#if defined(SHARDSHIFT_HAVE_CUDA)
#include "transpose_cuda.h"

#include <cuda_runtime_api.h>
#endif

namespace shardshift {
namespace {

using testing::test_seed;

constexpr uint64_t MAX_CHUNK = uint64_t(64) << 20;
constexpr uint8_t POISON = 0xA5;
constexpr size_t GUARD = 64;

// ---------------------------------------------------------------------------------------------
// Values

uint64_t elem_bytes(DType t) {
  return dtype_bits(t) / 8;
}

/// Bit patterns worth testing for each float type: signed zeros, infinities, quiet and signalling
/// NaNs with payloads and both signs, the smallest and largest subnormals and normals, the
/// largest finite values, and values one rounding away from ties.
std::vector<uint32_t> special_bits(DType t) {
  switch (t) {
  case DType::BF16:
    return {0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F81, 0xFFFF, 0x7FA5,
            0x0001, 0x8001, 0x007F, 0x807F, 0x0080, 0x7F7F, 0xFF7F, 0x3F80, 0x3F81,
            0xBF80, 0x4000, 0x3F00, 0x477F, 0x4780, 0x3380, 0x3300, 0x387F};
  case DType::F16:
    return {0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0xFFFF,
            0x7E5A, 0x0001, 0x8001, 0x03FF, 0x83FF, 0x0400, 0x7BFF, 0xFBFF,
            0x3C00, 0x3C01, 0xBC00, 0x4000, 0x3800, 0x0200, 0x1400};
  default: // F32
    return {0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00000u,
            0x7F800001u, 0xFFFFFFFFu, 0x7FC12345u, 0x00000001u, 0x80000001u, 0x007FFFFFu,
            0x807FFFFFu, 0x00800000u, 0x7F7FFFFFu, 0xFF7FFFFFu, 0x3F800000u, 0xBF800000u,
            // BF16 ties (low half exactly 0x8000), even and odd, and one ulp either side
            0x3F808000u, 0x3F818000u, 0x3F807FFFu, 0x3F808001u, 0x7F7F8000u, 0x7F7FFFFFu,
            // F16 ties (low 13 bits 0x1000), overflow at 65520, subnormal range and underflow
            0x3F801000u, 0x3F803000u, 0x477FF000u, 0x477FEFFFu, 0x477FE000u, 0x33800000u,
            0x33000000u, 0x33000001u, 0x33C00000u, 0x387FE000u, 0x38800000u, 0x387FF000u,
            // BF16 subnormals
            0x00008000u, 0x00018000u, 0x00010000u};
  }
}

void put(std::byte* p, DType t, uint32_t bits) {
  if (elem_bytes(t) == 2) {
    const uint16_t v = uint16_t(bits);
    std::memcpy(p, &v, 2);
  } else {
    std::memcpy(p, &bits, 4);
  }
}

/// n elements of float type t: random bit patterns (every class: normals, subnormals,
/// infinities, NaNs) with a share of special values mixed in.
std::vector<std::byte> float_values(std::mt19937_64& rng, DType t, uint64_t n) {
  const auto specials = special_bits(t);
  const uint64_t w = elem_bytes(t);
  std::vector<std::byte> out(n * w);
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t r = rng();
    const uint32_t bits = (r & 3) == 0 ? specials[(r >> 8) % specials.size()] : uint32_t(r >> 32);
    put(out.data() + i * w, t, bits);
  }
  return out;
}

/// Scales for `experts` experts: mostly ordinary magnitudes, with specials (zero, infinity, NaN,
/// huge values that overflow the product, subnormals) mixed in.
std::vector<std::byte> scale_values(std::mt19937_64& rng, DType t, uint64_t experts) {
  std::vector<std::byte> out(experts * elem_bytes(t));
  const auto specials = special_bits(t);
  for (uint64_t e = 0; e < experts; ++e) {
    const uint64_t r = rng();
    uint32_t bits;
    if ((r & 3) == 0) {
      bits = specials[(r >> 8) % specials.size()];
    } else {
      // A float in [2^-4, 2^4) of either sign, in t's encoding.
      const float f =
          std::ldexp(1.0f + float((r >> 16) & 0xFFFF) / 65536.0f, int((r >> 40) % 8) - 4) *
          (((r >> 60) & 1) ? -1.0f : 1.0f);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      if (t == DType::BF16)
        bits = u >> 16;
      else if (t == DType::F16)
        bits = uint32_t(
            (((u >> 16) & 0x8000u) | ((((u >> 23) & 0xFF) - 112) << 10) | ((u >> 13) & 0x3FF)));
      else
        bits = u;
    }
    put(out.data() + e * elem_bytes(t), t, bits);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// One case: inputs, the CPU reference and the GPU result

struct Case {
  uint64_t experts = 1, A = 1, B = 1, col_begin = 0, cols = 1;
  DType src = DType::BF16, dst = DType::BF16;
  bool fold = false;
  DType scale = DType::BF16;
  std::string describe() const {
    std::ostringstream s;
    s << "[" << experts << ", " << A << ", " << B << "] cols [" << col_begin << ", "
      << col_begin + cols << ") " << dtype_name(src);
    if (fold)
      s << " x " << dtype_name(scale);
    s << " -> " << dtype_name(dst);
    return s.str();
  }
};

struct Inputs {
  std::vector<std::byte> src, scales;
  std::vector<std::byte> ref;
  size_t src_offset = 0; ///< the source starts this many bytes into `src` (host misalignment)
  TransposeArgs args(std::byte* dst) const {
    TransposeArgs a;
    a.src = src.data() + src_offset;
    a.dst = dst;
    a.scales = scales.empty() ? nullptr : scales.data();
    return a;
  }
};

TransposeArgs make_args(const Case& c, const Inputs& in, std::byte* dst) {
  TransposeArgs a = in.args(dst);
  a.experts = c.experts;
  a.A = c.A;
  a.B = c.B;
  a.col_begin = c.col_begin;
  a.cols = c.cols;
  a.src_dtype = c.src;
  a.scale_dtype = c.scale;
  a.dst_dtype = c.dst;
  return a;
}

uint64_t in_bytes(const Case& c) {
  return c.experts * c.A * c.B * elem_bytes(c.src);
}
uint64_t out_bytes(const Case& c) {
  return c.experts * c.cols * c.A * elem_bytes(c.dst);
}

Inputs make_inputs(std::mt19937_64& rng, const Case& c) {
  Inputs in;
  in.src_offset = rng() % 4 == 0 ? size_t(rng() % 16) : 0;
  const uint64_t n = c.experts * c.A * c.B;
  std::vector<std::byte> values;
  if (dtype_is_ieee_float(c.src) && c.src != DType::F64) {
    values = float_values(rng, c.src, n);
  } else {
    std::string bytes = testing::random_bytes(rng, n * elem_bytes(c.src));
    values.resize(bytes.size());
    std::memcpy(values.data(), bytes.data(), bytes.size());
  }
  in.src.resize(in.src_offset + values.size());
  std::copy(values.begin(), values.end(), in.src.begin() + ptrdiff_t(in.src_offset));
  if (c.fold)
    in.scales = scale_values(rng, c.scale, c.experts);
  in.ref.assign(out_bytes(c), std::byte{POISON});
  transpose_fold_cpu(make_args(c, in, in.ref.data()));
  return in;
}

/// Compares a result with the reference; on a mismatch names the first differing element.
::testing::AssertionResult same_bytes(const Case& c, const std::byte* got,
                                      const std::vector<std::byte>& want) {
  const uint64_t w = elem_bytes(c.dst);
  for (uint64_t i = 0; i < want.size(); i += w) {
    if (std::memcmp(got + i, want.data() + i, w) == 0)
      continue;
    const uint64_t elem = i / w, e = elem / (c.cols * c.A), j = elem / c.A % c.cols, a = elem % c.A;
    uint64_t g = 0, r = 0;
    std::memcpy(&g, got + i, w);
    std::memcpy(&r, want.data() + i, w);
    std::ostringstream s;
    s << c.describe() << ": output [" << e << "][" << j << "][" << a << "] is 0x" << std::hex << g
      << ", CPU gives 0x" << r;
    return ::testing::AssertionFailure() << s.str();
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------------
// Fixture: one transformer shared by the tests (creating one allocates pinned memory).

class CudaTransform : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    if (CudaTransformer::device_count() == 0)
      return;
    auto made = CudaTransformer::create(0, MAX_CHUNK, 3);
    ASSERT_TRUE(made.ok()) << made.status().message();
    transformer_ = std::move(made.value()).release();
  }
  static void TearDownTestSuite() {
    delete transformer_;
    transformer_ = nullptr;
  }
  void SetUp() override {
    if (CudaTransformer::device_count() == 0)
      GTEST_SKIP() << "no usable CUDA device";
    ASSERT_NE(transformer_, nullptr);
    rng_.seed(test_seed());
  }

  /// Runs `c` through the transformer into a poisoned pinned buffer and compares with the CPU.
  static ::testing::AssertionResult check_case(CudaTransformer& t, std::mt19937_64& rng,
                                               const Case& c) {
    const Inputs in = make_inputs(rng, c);
    const uint64_t n = out_bytes(c);
    auto* out = static_cast<std::byte*>(t.alloc_pinned(n + GUARD));
    if (!out)
      return ::testing::AssertionFailure() << "alloc_pinned failed";
    std::memset(out, POISON, n + GUARD);
    CudaTimings timings;
    const Status s = t.run(make_args(c, in, out), &timings);
    ::testing::AssertionResult result = ::testing::AssertionSuccess();
    if (!s.ok())
      result = ::testing::AssertionFailure() << c.describe() << ": " << s.message();
    else
      result = same_bytes(c, out, in.ref);
    for (size_t i = 0; result && i < GUARD; ++i)
      if (out[n + i] != std::byte{POISON})
        result = ::testing::AssertionFailure() << c.describe() << ": wrote past the output";
    t.free_pinned(out);
    return result;
  }

  static CudaTransformer* transformer_;
  std::mt19937_64 rng_;
};

CudaTransformer* CudaTransform::transformer_ = nullptr;

const DType FLOATS[] = {DType::BF16, DType::F16, DType::F32};

/// Every fold and cast: src x (no scale, 3 scale dtypes) x dst, less the pure transposes.
std::vector<Case> all_conversions() {
  std::vector<Case> out;
  for (DType src : FLOATS)
    for (int sc = -1; sc < 3; ++sc)
      for (DType dst : FLOATS) {
        Case c;
        c.src = src;
        c.dst = dst;
        c.fold = sc >= 0;
        c.scale = sc >= 0 ? FLOATS[sc] : src;
        if (!c.fold && src == dst)
          continue;
        out.push_back(c);
      }
  return out;
}

/// Shapes: tiny, odd, prime, exact tiles, one row or column past a tile, and slices.
struct Shape {
  uint64_t experts, A, B, col_begin, cols;
};
const Shape SHAPES[] = {
    {1, 1, 1, 0, 1},       {2, 3, 5, 0, 5},    {3, 5, 3, 1, 2},        {1, 97, 101, 0, 101},
    {2, 97, 101, 13, 50},  {1, 64, 64, 0, 64}, {2, 65, 63, 0, 63},     {3, 128, 192, 64, 64},
    {1, 129, 257, 3, 251}, {4, 16, 8, 4, 4},   {2, 7, 1000, 500, 499}, {1, 1000, 7, 0, 7},
};

// ---------------------------------------------------------------------------------------------

TEST(CudaTransformNoDevice, CreateFailsCleanlyWhenThereIsNoSuchDevice) {
  // Runs everywhere: with no GPU (or a build without CUDA) any ordinal fails; with GPUs, one past
  // the last does. Either way the error is Errc::cuda with a message, never a crash.
  const int count = CudaTransformer::device_count();
  ASSERT_GE(count, 0);
  auto made = CudaTransformer::create(count, 1 << 20, 1);
  ASSERT_FALSE(made.ok());
  EXPECT_EQ(made.status().code(), Errc::cuda);
  EXPECT_FALSE(made.status().message().empty());
}

TEST_F(CudaTransform, PureTransposesMoveBitsOfEveryWidth) {
  for (DType t : {DType::U8, DType::BF16, DType::I32, DType::F64}) {
    for (const Shape& s : SHAPES) {
      Case c{s.experts, s.A, s.B, s.col_begin, s.cols, t, t, false, t};
      EXPECT_TRUE(check_case(*transformer_, rng_, c));
    }
  }
}

TEST_F(CudaTransform, EveryDtypeCombinationMatchesTheCpu) {
  for (Case c : all_conversions()) {
    for (const Shape& s : SHAPES) {
      c.experts = s.experts;
      c.A = s.A;
      c.B = s.B;
      c.col_begin = s.col_begin;
      c.cols = s.cols;
      EXPECT_TRUE(check_case(*transformer_, rng_, c));
    }
  }
}

TEST_F(CudaTransform, SpecialValuesTimesSpecialScales) {
  // Each expert gets one special scale; each matrix holds every special value of the source
  // type several times (so each meets each scale at several positions of a tile).
  for (Case c : all_conversions()) {
    if (!c.fold)
      continue;
    const auto values = special_bits(c.src);
    const auto scales = special_bits(c.scale);
    c.experts = scales.size();
    c.A = 9;
    c.B = values.size() * 3 + 1;
    c.col_begin = 1;
    c.cols = c.B - 1;
    Inputs in;
    const uint64_t w = elem_bytes(c.src);
    in.src.resize(c.experts * c.A * c.B * w);
    for (uint64_t i = 0; i < c.experts * c.A * c.B; ++i)
      put(in.src.data() + i * w, c.src, values[(i * 7 + i / c.B) % values.size()]);
    in.scales.resize(c.experts * elem_bytes(c.scale));
    for (uint64_t e = 0; e < c.experts; ++e)
      put(in.scales.data() + e * elem_bytes(c.scale), c.scale, scales[e]);
    in.ref.assign(out_bytes(c), std::byte{POISON});
    transpose_fold_cpu(make_args(c, in, in.ref.data()));
    auto* out = static_cast<std::byte*>(transformer_->alloc_pinned(out_bytes(c)));
    ASSERT_NE(out, nullptr);
    std::memset(out, POISON, out_bytes(c));
    const Status s = transformer_->run(make_args(c, in, out));
    EXPECT_TRUE(s.ok()) << s.message();
    EXPECT_TRUE(same_bytes(c, out, in.ref));
    transformer_->free_pinned(out);
  }
}

TEST_F(CudaTransform, RandomShapesSlicesAndDtypes) {
  const auto conversions = all_conversions();
  for (int iter = 0; iter < 120; ++iter) {
    Case c;
    const uint64_t r = rng_();
    if (r % 3 == 0) {
      const DType widths[] = {DType::U8, DType::F16, DType::F32, DType::I64};
      c.src = c.dst = c.scale = widths[(r >> 4) % 4];
    } else {
      c = conversions[(r >> 4) % conversions.size()];
    }
    c.experts = 1 + rng_() % 5;
    c.A = 1 + rng_() % 300;
    c.B = 1 + rng_() % 300;
    c.col_begin = rng_() % c.B;
    c.cols = 1 + rng_() % (c.B - c.col_begin);
    EXPECT_TRUE(check_case(*transformer_, rng_, c));
  }
}

TEST_F(CudaTransform, RealExpertShapes) {
  // gate_up [E, 2I, H] transposed, down [E, H, I] folded, and an expert-parallel row slice.
  const Case cases[] = {
      {2, 1408, 2816, 0, 2816, DType::BF16, DType::BF16, false, DType::BF16},
      {2, 2816, 704, 0, 704, DType::BF16, DType::BF16, true, DType::BF16},
      {2, 2816, 704, 352, 352, DType::BF16, DType::BF16, true, DType::BF16},
      {1, 1408, 2816, 0, 2816, DType::F32, DType::F32, false, DType::F32},
      {1, 2816, 704, 0, 704, DType::BF16, DType::F32, true, DType::F32},
      {1, 2816, 704, 0, 704, DType::F32, DType::BF16, true, DType::BF16},
  };
  for (const Case& c : cases)
    EXPECT_TRUE(check_case(*transformer_, rng_, c));
}

#if defined(SHARDSHIFT_HAVE_CUDA)
// A chunk of a file's read-only mapping, starting mid-page, is uploaded in place (its whole pages
// page-locked, the bytes around them staged) where the device supports read-only registration,
// and staged whole with SHARDSHIFT_CUDA_INPUT=staged: the same bytes either way, and the timings
// say which path ran.
TEST_F(CudaTransform, ReadsTheMappedInputInPlaceOrStagedWithTheSameBytes) {
  int read_only = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&read_only, cudaDevAttrHostRegisterReadOnlySupported, 0),
            cudaSuccess);
  const Case c{4, 1408, 1024, 0, 1024, DType::BF16, DType::BF16, true, DType::BF16};
  Inputs in = make_inputs(rng_, c);
  const uint64_t lead = 1000; // the tensor's offset in the file: not on a page
  testing::TempDir tmp;
  const auto path = tmp / "input.bin";
  std::string file(lead, '\0');
  file.append(reinterpret_cast<const char*>(in.src.data() + in.src_offset), in_bytes(c));
  testing::write_bytes(path, file);
  auto mapped = MappedFile::open(path);
  ASSERT_TRUE(mapped.ok()) << mapped.status().message();
  const std::byte* src = (*mapped)->bytes().data() + lead;

  auto run = [&](CudaTransformer& t, CudaTimings* timings) {
    const uint64_t n = out_bytes(c);
    auto* out = static_cast<std::byte*>(t.alloc_pinned(n + GUARD));
    std::memset(out, POISON, n + GUARD);
    TransposeArgs a = make_args(c, in, out);
    a.src = src;
    const Status s = t.run(a, timings);
    ::testing::AssertionResult r =
        s.ok() ? same_bytes(c, out, in.ref) : ::testing::AssertionFailure() << s.message();
    t.free_pinned(out);
    return r;
  };
  CudaTimings in_place;
  EXPECT_TRUE(run(*transformer_, &in_place));
  if (read_only)
    EXPECT_GE(in_place.in_place_bytes, in_bytes(c) - 2 * 4096) << "the whole pages in place";
  else
    EXPECT_EQ(in_place.in_place_bytes, 0u);

  ::setenv("SHARDSHIFT_CUDA_INPUT", "staged", 1);
  auto staged_made = CudaTransformer::create(0, MAX_CHUNK, 1);
  ::unsetenv("SHARDSHIFT_CUDA_INPUT");
  ASSERT_TRUE(staged_made.ok()) << staged_made.status().message();
  CudaTimings staged;
  EXPECT_TRUE(run(**staged_made, &staged));
  EXPECT_EQ(staged.in_place_bytes, 0u);
}
#endif

// Drives `t` from 6 threads, 12 random chunks each (from generators seeded `seed` + thread), every
// third a plain BF16 transpose, into poisoned pinned buffers; `call` runs one chunk with its
// thread's generator. Returns what went wrong: errors and results that are not exact.
std::vector<std::string> six_threads_of_random_chunks(
    CudaTransformer& t, uint64_t seed,
    const std::function<Status(const TransposeArgs& args, std::mt19937_64& rng)>& call) {
  const auto conversions = all_conversions();
  std::mutex mu;
  std::vector<std::string> failures;
  std::vector<std::thread> threads;
  for (int k = 0; k < 6; ++k) {
    threads.emplace_back([&, k] {
      std::mt19937_64 rng(seed + uint64_t(k));
      for (int iter = 0; iter < 12; ++iter) {
        Case c = conversions[rng() % conversions.size()];
        if (iter % 3 == 0)
          c.src = c.dst = c.scale = DType::BF16, c.fold = false;
        c.experts = 1 + rng() % 4;
        c.A = 1 + rng() % 700;
        c.B = 1 + rng() % 700;
        c.col_begin = rng() % c.B;
        c.cols = c.B - c.col_begin;
        const Inputs in = make_inputs(rng, c);
        const uint64_t n = out_bytes(c);
        auto* out = static_cast<std::byte*>(t.alloc_pinned(n));
        ::testing::AssertionResult same = ::testing::AssertionFailure() << "alloc_pinned failed";
        if (out) {
          std::memset(out, POISON, n);
          const Status s = call(make_args(c, in, out), rng);
          same = s.ok() ? same_bytes(c, out, in.ref)
                        : ::testing::AssertionFailure() << c.describe() << ": " << s.message();
          t.free_pinned(out);
        }
        if (!same) {
          std::lock_guard lock(mu);
          failures.push_back(same.message());
        }
      }
    });
  }
  for (auto& th : threads)
    th.join();
  return failures;
}

TEST_F(CudaTransform, ConcurrentCallsFromMoreThreadsThanSlots) {
  // A transformer with 2 slots driven by 6 threads: callers wait for slots, chunks of different
  // threads overlap on the GPU, and every result is still exact.
  auto made = CudaTransformer::create(0, 8 << 20, 2);
  ASSERT_TRUE(made.ok()) << made.status().message();
  CudaTransformer& t = *made.value();
  std::atomic<int> bad_stream{0};
  const auto failures =
      six_threads_of_random_chunks(t, rng_(), [&](const TransposeArgs& args, std::mt19937_64&) {
        CudaTimings timings;
        const Status s = t.run(args, &timings);
        if (timings.stream < 0 || timings.stream >= 2)
          ++bad_stream;
        return s;
      });
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures, first: " << failures.front();
  EXPECT_EQ(bad_stream.load(), 0);
}

// A GpuWait like the pipeline's, except that the caller sleeps until the stream's callback wakes
// it, then runs `after`: what a woken task waits behind before it gets a thread again.
GpuWait sleeping_wait(std::function<void()> after) {
  return [after = std::move(after)](const std::function<bool(GpuWake, void*)>& arm) {
    struct Woken {
      std::mutex mu;
      std::condition_variable cv;
      bool done = false;
    } woken;
    const GpuWake wake = [](void* token) {
      auto* w = static_cast<Woken*>(token);
      std::lock_guard lock(w->mu); // notified under the lock: the waiter cannot leave before
      w->done = true;
      w->cv.notify_all();
    };
    if (!arm(wake, &woken))
      return;
    {
      std::unique_lock lock(woken.mu);
      woken.cv.wait(lock, [&] { return woken.done; });
    }
    if (after)
      after();
  };
}

const StagingGuard UNGUARDED = [](size_t, const std::function<void()>& copy) {
  copy();
  return Status{};
};

TEST_F(CudaTransform, ASlotIsFreeForTheNextChunkOnceItsWorkIsDoneNotWhenItsCallerWakes) {
  // One slot. The first chunk's caller is woken by the stream and, before it goes on, a second
  // chunk asks for a slot without waiting: it must get the first chunk's, whose work is done,
  // and both results must be exact (the second reused the staging and device buffers).
  auto made = CudaTransformer::create(0, 8 << 20, 1);
  ASSERT_TRUE(made.ok()) << made.status().message();
  CudaTransformer& t = *made.value();
  const Case c1{2, 300, 500, 20, 400, DType::BF16, DType::BF16, true, DType::F32};
  const Case c2{3, 200, 700, 0, 700, DType::F16, DType::BF16, false, DType::F16};
  const Inputs in1 = make_inputs(rng_, c1), in2 = make_inputs(rng_, c2);
  auto* out1 = static_cast<std::byte*>(t.alloc_pinned(out_bytes(c1)));
  auto* out2 = static_cast<std::byte*>(t.alloc_pinned(out_bytes(c2)));
  ASSERT_TRUE(out1 && out2);
  std::memset(out1, POISON, out_bytes(c1));
  std::memset(out2, POISON, out_bytes(c2));
  bool second_ran = false;
  Status second;
  CudaTimings second_timings;
  const GpuWait wait = sleeping_wait([&] {
    second =
        t.try_run(make_args(c2, in2, out2), UNGUARDED, GpuWait{}, &second_timings, &second_ran);
  });
  bool first_ran = false;
  CudaTimings first_timings;
  const Status first =
      t.try_run(make_args(c1, in1, out1), UNGUARDED, wait, &first_timings, &first_ran);
  ASSERT_TRUE(first.ok()) << first.message();
  ASSERT_TRUE(first_ran);
  ASSERT_TRUE(second.ok()) << second.message();
  EXPECT_TRUE(second_ran) << "the slot was still held by a chunk whose work was done";
  EXPECT_TRUE(same_bytes(c1, out1, in1.ref));
  if (second_ran)
    EXPECT_TRUE(same_bytes(c2, out2, in2.ref));
  // Each call read its own timing events, though the second ran on the slot in between.
  EXPECT_GT(first_timings.d2h_ns, 0u);
  EXPECT_GT(second_timings.d2h_ns, 0u);
  t.free_pinned(out1);
  t.free_pinned(out2);
}

TEST_F(CudaTransform, ConcurrentCallersWokenLateStillGetExactResults) {
  // 6 threads, 2 slots, every caller woken by the stream and then held up a little longer, as a
  // suspended task is: the slots pass from chunk to chunk while earlier callers have not yet read
  // their results, and every result is still exact.
  auto made = CudaTransformer::create(0, 8 << 20, 2);
  ASSERT_TRUE(made.ok()) << made.status().message();
  CudaTransformer& t = *made.value();
  std::atomic<int> declined{0};
  const uint64_t seed = rng_();
  const auto failures =
      six_threads_of_random_chunks(t, seed, [&](const TransposeArgs& args, std::mt19937_64& rng) {
        const GpuWait wait = sleeping_wait(
            [&rng] { std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000)); });
        bool ran = false;
        Status s = t.try_run(args, UNGUARDED, wait, nullptr, &ran);
        if (s.ok() && !ran) { // both slots busy: as the pipeline's CPU would, do it anyway
          ++declined;
          s = t.run(args, nullptr);
        }
        return s;
      });
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures, first: " << failures.front();
  std::printf("seed %llu: %d of 72 calls found both slots busy\n", (unsigned long long)seed,
              declined.load());
}

TEST_F(CudaTransform, RejectsChunksThatDoNotFitAndUnsupportedDtypes) {
  std::vector<std::byte> src(16), out(16);
  TransposeArgs a;
  a.src = src.data();
  a.dst = out.data();
  a.experts = 1;
  a.A = 1;
  a.B = MAX_CHUNK; // 2 * MAX_CHUNK bytes of BF16: only the size is looked at
  a.cols = 1;
  Status s = transformer_->run(a);
  EXPECT_EQ(s.code(), Errc::invalid_argument) << s.message();

  a.B = 4;
  a.cols = 2;
  a.col_begin = 3; // past the row
  s = transformer_->run(a);
  EXPECT_EQ(s.code(), Errc::invalid_argument) << s.message();

  a.col_begin = 0;
  a.src_dtype = a.dst_dtype = DType::I32;
  a.scales = src.data(); // folding an integer tensor
  s = transformer_->run(a);
  EXPECT_EQ(s.code(), Errc::unsupported) << s.message();
}

TEST_F(CudaTransform, PinnedBytesCountsAllocations) {
  const uint64_t before = transformer_->pinned_bytes();
  // Three slots: device input and output, and pinned input staging (whole, or where chunks are
  // read in place, grown only as far as they needed).
  EXPECT_GE(before, 3 * 2 * MAX_CHUNK);
  void* p = transformer_->alloc_pinned(5 << 20);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(transformer_->pinned_bytes(), before + (5 << 20));
  transformer_->free_pinned(p);
  EXPECT_EQ(transformer_->pinned_bytes(), before);
  EXPECT_FALSE(transformer_->device_name().empty());
}

#if defined(SHARDSHIFT_HAVE_CUDA)
/// The kernel on device pointers that are not 16-byte aligned, so loads and stores narrow to
/// 8, 4, 2 or 1 bytes; every offset that keeps elements aligned, for every element width.
TEST_F(CudaTransform, KernelOnMisalignedDevicePointers) {
  const uint64_t max_bytes = 4 << 20;
  std::byte *dev_src = nullptr, *dev_dst = nullptr, *dev_scales = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&dev_src), max_bytes + 64), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&dev_dst), max_bytes + 64), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&dev_scales), 4096), cudaSuccess);
  std::vector<Case> cases;
  for (DType t : {DType::U8, DType::BF16, DType::F32, DType::F64})
    cases.push_back({3, 70, 130, 2, 120, t, t, false, t});
  cases.push_back({3, 70, 130, 2, 120, DType::BF16, DType::BF16, true, DType::BF16});
  cases.push_back({3, 70, 130, 2, 120, DType::BF16, DType::F32, true, DType::F16});
  cases.push_back({3, 70, 130, 2, 120, DType::F32, DType::BF16, true, DType::F32});
  for (const Case& c : cases) {
    const Inputs in = make_inputs(rng_, c);
    const std::byte* host_src = in.src.data() + in.src_offset;
    for (uint64_t src_off = 0; src_off < 16; src_off += elem_bytes(c.src)) {
      const uint64_t dst_off = (src_off * 3) % 16 / elem_bytes(c.dst) * elem_bytes(c.dst);
      ASSERT_EQ(cudaMemcpy(dev_src + src_off, host_src, in_bytes(c), cudaMemcpyHostToDevice),
                cudaSuccess);
      if (c.fold)
        ASSERT_EQ(
            cudaMemcpy(dev_scales, in.scales.data(), in.scales.size(), cudaMemcpyHostToDevice),
            cudaSuccess);
      ASSERT_EQ(cudaMemset(dev_dst, POISON, max_bytes + 64), cudaSuccess);
      TransposeArgs a = make_args(c, in, dev_dst + dst_off);
      a.src = dev_src + src_off;
      a.scales = c.fold ? dev_scales : nullptr;
      ASSERT_EQ(launch_transpose_fold(a, nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      std::vector<std::byte> got(out_bytes(c) + GUARD);
      ASSERT_EQ(cudaMemcpy(got.data(), dev_dst + dst_off, got.size(), cudaMemcpyDeviceToHost),
                cudaSuccess);
      EXPECT_TRUE(same_bytes(c, got.data(), in.ref)) << "src +" << src_off << ", dst +" << dst_off;
      for (size_t i = 0; i < GUARD; ++i)
        ASSERT_EQ(got[out_bytes(c) + i], std::byte{POISON}) << c.describe() << ": overrun";
    }
  }
  cudaFree(dev_src);
  cudaFree(dev_dst);
  cudaFree(dev_scales);
}

TEST_F(CudaTransform, BothTileVariantsAgree) {
  // The `small` tiles exist for the benchmark; they must compute the same function.
  const Case c{2, 200, 300, 10, 280, DType::BF16, DType::BF16, true, DType::BF16};
  const Inputs in = make_inputs(rng_, c);
  std::byte *dev_src = nullptr, *dev_dst = nullptr, *dev_scales = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&dev_src), in_bytes(c)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&dev_dst), out_bytes(c)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&dev_scales), in.scales.size()), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev_src, in.src.data() + in.src_offset, in_bytes(c), cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev_scales, in.scales.data(), in.scales.size(), cudaMemcpyHostToDevice),
            cudaSuccess);
  for (CudaTileVariant v : {CudaTileVariant::standard, CudaTileVariant::small}) {
    for (bool fold : {true, false}) {
      Case cv = c;
      cv.fold = fold;
      std::vector<std::byte> ref(out_bytes(cv));
      Inputs in_v = in;
      if (!fold)
        in_v.scales.clear();
      transpose_fold_cpu(make_args(cv, in_v, ref.data()));
      ASSERT_EQ(cudaMemset(dev_dst, POISON, out_bytes(cv)), cudaSuccess);
      TransposeArgs a = make_args(cv, in_v, dev_dst);
      a.src = dev_src;
      a.scales = fold ? dev_scales : nullptr;
      ASSERT_EQ(launch_transpose_fold(a, nullptr, v), cudaSuccess);
      std::vector<std::byte> got(out_bytes(cv));
      ASSERT_EQ(cudaMemcpy(got.data(), dev_dst, got.size(), cudaMemcpyDeviceToHost), cudaSuccess);
      EXPECT_TRUE(same_bytes(cv, got.data(), ref)) << "variant " << int(v);
    }
  }
  cudaFree(dev_src);
  cudaFree(dev_dst);
  cudaFree(dev_scales);
}
#endif

} // namespace
} // namespace shardshift
