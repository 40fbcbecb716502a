// dtype_test.cpp: the dtype table and checked size arithmetic.
#include "shardshift/dtype.h"

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
