// transpose_test.cpp: the CPU transpose-fold (src/transpose_cpu.cpp) against the reference of
// semantics.md section 1.1 (tests/reference/numeric_reference.h) on random data: every dtype
// combination, shape, slice and alignment, at every SIMD level this CPU supports, bit for bit;
// and the support checks, promotion and SIMD level selection.
#include "shardshift/dtype.h"

#include "reference/numeric_reference.h"
#include "test_support.h"
#include "transpose.h"
#include "transpose_harness.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

// ---------------------------------------------------------------------------------------------
// The kernel: every dtype combination, every level, against the reference.

TEST(TransposeFold, EveryFoldCombinationMatchesReference) {
  std::mt19937_64 rng(testing::test_seed());
  const auto cases = shapes(rng);
  for (DType src : FLOATS)
    for (DType scale : FLOATS) {
      const DType product = ref_promote(src, scale);
      for (DType dst : {product, DType::BF16, DType::F16, DType::F32}) {
        for (const Case& c : cases)
          run_random_case(rng, src, true, scale, dst, c);
        if (HasFailure())
          return;
      }
    }
}

TEST(TransposeFold, CastWithoutScaleMatchesReference) {
  std::mt19937_64 rng(testing::test_seed());
  const auto cases = shapes(rng);
  for (DType src : FLOATS)
    for (DType dst : FLOATS) {
      if (src == dst)
        continue;
      for (const Case& c : cases)
        run_random_case(rng, src, false, DType::BF16, dst, c);
      if (HasFailure())
        return;
    }
}

TEST(TransposeFold, MoveKeepsBitsForEveryWidth) {
  std::mt19937_64 rng(testing::test_seed());
  const auto cases = shapes(rng);
  for (DType dtype : {DType::U8, DType::I8, DType::BOOL, DType::F8_E4M3, DType::BF16, DType::F16,
                      DType::I16, DType::F32, DType::I32, DType::F64, DType::I64, DType::C64}) {
    const unsigned w = bytes_of(dtype);
    for (const Case& c : cases) {
      // Raw random bytes: NaN payloads, signalling NaNs and all must survive unchanged.
      Buffer src(c.experts * c.A * c.B * w);
      const std::string bytes = testing::random_bytes(rng, src.size());
      std::memcpy(src.data(), bytes.data(), src.size());
      TransposeArgs a;
      a.src = src.data();
      a.experts = c.experts;
      a.A = c.A;
      a.B = c.B;
      a.col_begin = c.col_begin;
      a.cols = c.cols;
      a.src_dtype = a.dst_dtype = dtype;
      ASSERT_TRUE(check_transpose_supported(dtype, false, dtype, dtype).ok()) << describe(a);
      std::vector<std::byte> expected(c.experts * c.cols * c.A * w);
      for (uint64_t e = 0; e < c.experts; ++e)
        for (uint64_t j = 0; j < c.cols; ++j)
          for (uint64_t i = 0; i < c.A; ++i)
            std::memcpy(expected.data() + ((e * c.cols + j) * c.A + i) * w,
                        src.data() + ((e * c.A + i) * c.B + c.col_begin + j) * w, w);
      expect_all_levels_match(a, expected, describe(a));
    }
    if (HasFailure())
      return;
  }
}

TEST(TransposeFold, MisalignedPointersMatchReference) {
  // safetensors data offsets need not be aligned: odd element addresses and rows, both sides.
  std::mt19937_64 rng(testing::test_seed());
  for (size_t offset : {2, 6, 34}) {
    run_random_case(rng, DType::BF16, true, DType::BF16, DType::BF16, {2, 96, 80, 0, 80}, offset,
                    offset);
    run_random_case(rng, DType::F16, true, DType::F16, DType::F16, {1, 64, 48, 16, 32}, offset, 2);
    run_random_case(rng, DType::BF16, false, DType::BF16, DType::BF16, {1, 128, 64, 0, 64}, offset,
                    offset);
    run_random_case(rng, DType::F32, true, DType::F32, DType::F32, {1, 64, 64, 0, 64}, offset,
                    offset + 2);
  }
}

TEST(TransposeFold, LargeOutputsTakeTheStreamingPathExactly) {
  // Outputs of 8 MiB and more with 64-byte aligned rows use non-temporal stores.
  std::mt19937_64 rng(testing::test_seed());
  run_random_case(rng, DType::BF16, true, DType::BF16, DType::BF16, {2, 1024, 2048, 0, 2048});
  run_random_case(rng, DType::BF16, false, DType::BF16, DType::BF16, {1, 2048, 2112, 32, 2048});
  run_random_case(rng, DType::F32, true, DType::BF16, DType::F32, {1, 1024, 2048, 0, 2048});
  run_random_case(rng, DType::F16, true, DType::F16, DType::F16, {8, 512, 1056, 16, 1024});
}

TEST(TransposeFold, NothingToDoWritesNothing) {
  Buffer src(64), dst(64);
  const struct { uint64_t experts, A, cols; } empty[] = {{0, 4, 4}, {1, 0, 4}, {1, 4, 0}};
  for (const auto& c : empty) {
    TransposeArgs a;
    a.src = src.data();
    a.dst = dst.data();
    a.experts = c.experts;
    a.A = c.A;
    a.B = 4;
    a.cols = c.cols;
    for (SimdLevel level : supported_levels())
      transpose_fold_cpu(a, level);
  }
  for (size_t k = 0; k < dst.size(); ++k)
    ASSERT_EQ(dst.data()[k], std::byte{0xA5});
}

// ---------------------------------------------------------------------------------------------
// Support checks, promotion, level selection.

TEST(TransposeSupport, PromotionFollowsPyTorch) {
  using enum DType;
  EXPECT_EQ(promote_types(BF16, BF16), BF16);
  EXPECT_EQ(promote_types(F16, F16), F16);
  EXPECT_EQ(promote_types(F32, F32), F32);
  EXPECT_EQ(promote_types(BF16, F16), F32);
  EXPECT_EQ(promote_types(F16, BF16), F32);
  EXPECT_EQ(promote_types(BF16, F32), F32);
  EXPECT_EQ(promote_types(F32, F16), F32);
  EXPECT_EQ(promote_types(BF16, F64), F64);
  EXPECT_EQ(promote_types(F64, F32), F64);
  EXPECT_EQ(promote_types(I8, BF16), BF16);
}

TEST(TransposeSupport, AcceptsFloatFoldsCastsAndByteMoves) {
  for (DType src : FLOATS)
    for (DType scale : FLOATS)
      for (DType dst : FLOATS) {
        EXPECT_TRUE(check_transpose_supported(src, true, scale, dst).ok());
        EXPECT_TRUE(check_transpose_supported(src, false, scale, dst).ok());
      }
  for (DType t : {DType::BOOL, DType::U8, DType::I8, DType::F8_E5M2, DType::F8_E4M3, DType::I16,
                  DType::I32, DType::U32, DType::F64, DType::I64, DType::C64})
    EXPECT_TRUE(check_transpose_supported(t, false, DType::BF16, t).ok()) << dtype_name(t);
}

TEST(TransposeSupport, RefusesWithClearMessages) {
  using enum DType;
  for (DType t : {I8, U8, F8_E4M3, F8_E5M2, I32, F64, I64}) {
    const Status s = check_transpose_supported(t, true, BF16, BF16);
    ASSERT_FALSE(s.ok()) << dtype_name(t);
    EXPECT_EQ(s.code(), Errc::unsupported);
    EXPECT_NE(s.message().find("cannot fold a per-expert scale into " + std::string(dtype_name(t)) +
                               " tensors"),
              std::string::npos)
        << s.message();
    EXPECT_NE(s.message().find("only BF16, F16 and F32 are supported"), std::string::npos)
        << s.message();
  }
  Status s = check_transpose_supported(BF16, true, F64, BF16);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("scale of dtype F64"), std::string::npos) << s.message();
  s = check_transpose_supported(BF16, true, BF16, I8);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("to I8"), std::string::npos) << s.message();
  s = check_transpose_supported(I8, false, BF16, BF16);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Errc::unsupported);
  EXPECT_NE(s.message().find("cannot cast I8 tensors to BF16"), std::string::npos) << s.message();
  s = check_transpose_supported(BF16, false, BF16, F64);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("to F64"), std::string::npos) << s.message();
  for (DType t : {F4, F6_E2M3, F6_E3M2}) {
    s = check_transpose_supported(t, false, BF16, t);
    ASSERT_FALSE(s.ok()) << dtype_name(t);
    EXPECT_EQ(s.code(), Errc::unsupported);
    EXPECT_NE(s.message().find("cannot transpose " + std::string(dtype_name(t))), std::string::npos)
        << s.message();
  }
}

TEST(TransposeSupport, SimdLevelIsCappedByEnvironment) {
  const char* saved = std::getenv("SHARDSHIFT_SIMD");
  const std::string saved_value = saved ? saved : "";
  unsetenv("SHARDSHIFT_SIMD");
  const SimdLevel best = detect_simd_level();
  setenv("SHARDSHIFT_SIMD", "portable", 1);
  EXPECT_EQ(detect_simd_level(), SimdLevel::portable);
  setenv("SHARDSHIFT_SIMD", "avx2", 1);
  EXPECT_EQ(detect_simd_level(), std::min(best, SimdLevel::avx2));
  setenv("SHARDSHIFT_SIMD", "avx512", 1);
  EXPECT_EQ(detect_simd_level(), best);
  setenv("SHARDSHIFT_SIMD", "no-such-level", 1);
  EXPECT_EQ(detect_simd_level(), best);
  if (saved)
    setenv("SHARDSHIFT_SIMD", saved_value.c_str(), 1);
  else
    unsetenv("SHARDSHIFT_SIMD");
  EXPECT_STREQ(simd_level_name(SimdLevel::portable), "portable");
  EXPECT_STREQ(simd_level_name(SimdLevel::avx2), "avx2");
  EXPECT_STREQ(simd_level_name(SimdLevel::avx512), "avx512");
  std::cout << "[ info ] this CPU: " << simd_level_name(best) << "\n";
}

} // namespace
} // namespace shardshift
