// dtype_test.cpp: the dtype table and checked size arithmetic.
#include "shardshift/dtype.h"

#include "reference/numeric_reference.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

TEST(DType, NamesRoundTripForEveryDtype) {
  std::set<std::string_view> names;
  for (int i = 0; i < DTYPE_COUNT; ++i) {
    auto dtype = static_cast<DType>(i);
    auto name = dtype_name(dtype);
    EXPECT_TRUE(names.insert(name).second) << "duplicate name " << name;
    auto parsed = dtype_from_name(name);
    ASSERT_TRUE(parsed.has_value()) << name;
    EXPECT_EQ(*parsed, dtype);
  }
  EXPECT_EQ(names.size(), size_t(DTYPE_COUNT));
}

TEST(DType, NamesAreCaseSensitiveAndExact) {
  EXPECT_FALSE(dtype_from_name("bf16"));
  EXPECT_FALSE(dtype_from_name("BF16 "));
  EXPECT_FALSE(dtype_from_name(""));
  EXPECT_FALSE(dtype_from_name("F8"));
  EXPECT_FALSE(dtype_from_name("Q4_0"));
  EXPECT_EQ(dtype_from_name("F8_E4M3FNUZ"), DType::F8_E4M3FNUZ);
}

TEST(DType, BitWidthsMatchTheFormat) {
  const std::vector<std::pair<std::string, unsigned>> expected = {
      {"BOOL", 8},    {"U8", 8},          {"I8", 8},          {"F8_E5M2", 8}, {"F8_E4M3", 8},
      {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8}, {"F4", 4},      {"F6_E2M3", 6},
      {"F6_E3M2", 6}, {"I16", 16},        {"U16", 16},        {"F16", 16},    {"BF16", 16},
      {"I32", 32},    {"U32", 32},        {"F32", 32},        {"C64", 64},    {"F64", 64},
      {"I64", 64},    {"U64", 64}};
  ASSERT_EQ(expected.size(), size_t(DTYPE_COUNT));
  for (const auto& [name, bits] : expected) {
    auto dtype = dtype_from_name(name);
    ASSERT_TRUE(dtype) << name;
    EXPECT_EQ(dtype_bits(*dtype), bits) << name;
  }
}

TEST(DType, IeeeFloats) {
  int count = 0;
  for (int i = 0; i < DTYPE_COUNT; ++i)
    count += dtype_is_ieee_float(static_cast<DType>(i));
  EXPECT_EQ(count, 4);
  EXPECT_TRUE(dtype_is_ieee_float(DType::BF16));
  EXPECT_TRUE(dtype_is_ieee_float(DType::F64));
  EXPECT_FALSE(dtype_is_ieee_float(DType::F8_E4M3));
  EXPECT_FALSE(dtype_is_ieee_float(DType::C64));
}

// Semantics 15.1: every one of the 256 codes of both 8-bit floats decodes exactly, checked
// against the reference's decoding from the format definitions and against values written out by
// hand (largest finite, smallest subnormal, one, negative zero, NaN, infinity).
TEST(DType, Fp8DecodesEveryCodeExactly) {
  for (DType t : {DType::F8_E4M3, DType::F8_E5M2}) {
    ASSERT_TRUE(dtype_is_decodable_fp8(t));
    for (int c = 0; c < 256; ++c) {
      SCOPED_TRACE(std::string(dtype_name(t)) + " code " + std::to_string(c));
      const uint8_t code = uint8_t(c);
      const float got = fp8_to_float(t, code);
      const uint32_t bits = std::bit_cast<uint32_t>(got);
      if (reference::ref_fp8_is_nan(t, code)) {
        EXPECT_EQ(bits, 0x7FC00000u | (c & 0x80 ? 0x80000000u : 0u)); // canonical, sign kept
        continue;
      }
      const double want = reference::ref_fp8_decode(t, code);
      EXPECT_EQ(double(got), want);
      EXPECT_EQ(std::signbit(got), bool(c & 0x80)); // -0 included
    }
  }
  EXPECT_FALSE(dtype_is_decodable_fp8(DType::F8_E4M3FNUZ));
  EXPECT_FALSE(dtype_is_decodable_fp8(DType::BF16));
  // float8_e4m3fn by hand: 0x7E = 1.75 * 2^8, 0x01 = 2^-9 (smallest subnormal), 0x07 = 7 * 2^-9
  // (largest subnormal), 0x08 = 2^-6 (smallest normal), 0x38 = 1, 0x80 = -0, 0x7F/0xFF NaN.
  EXPECT_EQ(fp8_to_float(DType::F8_E4M3, 0x7E), 448.0f);
  EXPECT_EQ(fp8_to_float(DType::F8_E4M3, 0xFE), -448.0f);
  EXPECT_EQ(fp8_to_float(DType::F8_E4M3, 0x01), 0.001953125f);
  EXPECT_EQ(fp8_to_float(DType::F8_E4M3, 0x07), 0.013671875f);
  EXPECT_EQ(fp8_to_float(DType::F8_E4M3, 0x08), 0.015625f);
  EXPECT_EQ(fp8_to_float(DType::F8_E4M3, 0x38), 1.0f);
  EXPECT_EQ(fp8_to_float(DType::F8_E4M3, 0x39), 1.125f);
  EXPECT_EQ(std::bit_cast<uint32_t>(fp8_to_float(DType::F8_E4M3, 0x80)), 0x80000000u);
  EXPECT_TRUE(std::isnan(fp8_to_float(DType::F8_E4M3, 0x7F)));
  EXPECT_TRUE(std::isnan(fp8_to_float(DType::F8_E4M3, 0xFF)));
  EXPECT_FALSE(std::isinf(fp8_to_float(DType::F8_E4M3, 0x78))); // 0x78 = 256: no infinities
  EXPECT_EQ(fp8_to_float(DType::F8_E4M3, 0x78), 256.0f);
  // E5M2 by hand: 0x7B = 57344 (largest finite), 0x7C = inf, 0x01 = 2^-16, 0x3C = 1.
  EXPECT_EQ(fp8_to_float(DType::F8_E5M2, 0x7B), 57344.0f);
  EXPECT_TRUE(std::isinf(fp8_to_float(DType::F8_E5M2, 0x7C)));
  EXPECT_TRUE(std::isinf(fp8_to_float(DType::F8_E5M2, 0xFC)) &&
              fp8_to_float(DType::F8_E5M2, 0xFC) < 0);
  EXPECT_TRUE(std::isnan(fp8_to_float(DType::F8_E5M2, 0x7D)));
  EXPECT_EQ(fp8_to_float(DType::F8_E5M2, 0x01), 0x1p-16f);
  EXPECT_EQ(fp8_to_float(DType::F8_E5M2, 0x3C), 1.0f);
}

TEST(DType, ElementCount) {
  EXPECT_EQ(element_count(std::vector<uint64_t>{}), 1u); // scalar
  EXPECT_EQ(element_count(std::vector<uint64_t>{128, 1408, 2816}), 128ull * 1408 * 2816);
  EXPECT_EQ(element_count(std::vector<uint64_t>{5, 0, 7}), 0u);
  EXPECT_EQ(element_count(std::vector<uint64_t>{UINT64_MAX}), UINT64_MAX);
  EXPECT_FALSE(element_count(std::vector<uint64_t>{1ull << 32, 1ull << 32}));
  EXPECT_FALSE(element_count(std::vector<uint64_t>{UINT64_MAX, 2}));
}

TEST(DType, TensorByteSize) {
  EXPECT_EQ(tensor_byte_size(DType::BF16, std::vector<uint64_t>{2, 3}), 12u);
  EXPECT_EQ(tensor_byte_size(DType::F32, std::vector<uint64_t>{}), 4u);
  EXPECT_EQ(tensor_byte_size(DType::C64, std::vector<uint64_t>{3}), 24u);
  // Sub-byte types: only whole bytes exist.
  EXPECT_EQ(tensor_byte_size(DType::F4, std::vector<uint64_t>{2}), 1u);
  EXPECT_FALSE(tensor_byte_size(DType::F4, std::vector<uint64_t>{3}));
  EXPECT_EQ(tensor_byte_size(DType::F6_E2M3, std::vector<uint64_t>{4}), 3u);
  EXPECT_FALSE(tensor_byte_size(DType::F6_E3M2, std::vector<uint64_t>{2}));
  EXPECT_EQ(tensor_byte_size(DType::F6_E3M2, std::vector<uint64_t>{0}), 0u);
  // Overflow of the element count, and of the bit count alone.
  EXPECT_FALSE(tensor_byte_size(DType::U8, std::vector<uint64_t>{1ull << 32, 1ull << 32}));
  EXPECT_FALSE(tensor_byte_size(DType::BF16, std::vector<uint64_t>{1ull << 62}));
  EXPECT_EQ(tensor_byte_size(DType::U8, std::vector<uint64_t>{1ull << 60}), 1ull << 60);
  // The bit count 2^63 * 4 would overflow even though the byte count 2^62 fits.
  EXPECT_FALSE(tensor_byte_size(DType::I32, std::vector<uint64_t>{1ull << 62}));
}

TEST(ShapeText, ForPeopleAndAsInAHeader) {
  EXPECT_EQ(shape_text(std::vector<uint64_t>{}), "[]");
  EXPECT_EQ(shape_text(std::vector<uint64_t>{7}), "[7]");
  EXPECT_EQ(shape_text(std::vector<uint64_t>{2, 3, UINT64_MAX}), "[2, 3, 18446744073709551615]");
  EXPECT_EQ(shape_text(std::vector<uint64_t>{2, 3}, ","), "[2,3]");
}

} // namespace
} // namespace shardshift
