// dtype.cpp: the dtype table of the safetensors format and checked size arithmetic.
//
// Sizes come from untrusted headers, so every product is checked: a shape whose element count
// wraps around 2^64 to a small number would otherwise pass the size-versus-offsets check.
#include "shardshift/dtype.h"

#include "numerics.h"

#include <array>

namespace shardshift {

namespace {

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  unsigned bits;
};

// Indexed by the enum value; the static_assert below keeps the order honest.
constexpr std::array<DTypeEntry, DTYPE_COUNT> DTYPES = {{
    {DType::BOOL, "BOOL", 8},
    {DType::U8, "U8", 8},
    {DType::I8, "I8", 8},
    {DType::F8_E5M2, "F8_E5M2", 8},
    {DType::F8_E4M3, "F8_E4M3", 8},
    {DType::F8_E8M0, "F8_E8M0", 8},
    {DType::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {DType::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8},
    {DType::F4, "F4", 4},
    {DType::F6_E2M3, "F6_E2M3", 6},
    {DType::F6_E3M2, "F6_E3M2", 6},
    {DType::I16, "I16", 16},
    {DType::U16, "U16", 16},
    {DType::F16, "F16", 16},
    {DType::BF16, "BF16", 16},
    {DType::I32, "I32", 32},
    {DType::U32, "U32", 32},
    {DType::F32, "F32", 32},
    {DType::C64, "C64", 64},
    {DType::F64, "F64", 64},
    {DType::I64, "I64", 64},
    {DType::U64, "U64", 64},
}};

constexpr bool table_in_enum_order() {
  for (size_t i = 0; i < DTYPES.size(); ++i)
    if (static_cast<size_t>(DTYPES[i].dtype) != i)
      return false;
  return true;
}
static_assert(table_in_enum_order(), "DTYPES must list the dtypes in enum order");

const DTypeEntry& entry(DType dtype) {
  return DTYPES[static_cast<size_t>(dtype)];
}

} // namespace

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& e : DTYPES)
    if (e.name == name)
      return e.dtype;
  return std::nullopt;
}

std::string_view dtype_name(DType dtype) {
  return entry(dtype).name;
}

unsigned dtype_bits(DType dtype) {
  return entry(dtype).bits;
}

bool dtype_is_ieee_float(DType dtype) {
  return dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F32 || dtype == DType::F64;
}

bool dtype_is_8bit_float(DType dtype) {
  return dtype == DType::F8_E4M3 || dtype == DType::F8_E5M2 || dtype == DType::F8_E8M0 ||
         dtype == DType::F8_E4M3FNUZ || dtype == DType::F8_E5M2FNUZ;
}

bool dtype_is_decodable_fp8(DType dtype) {
  return dtype == DType::F8_E4M3 || dtype == DType::F8_E5M2;
}

float fp8_to_float(DType dtype, uint8_t code) {
  return dtype == DType::F8_E4M3 ? numerics::f8_e4m3_to_f32(code) : numerics::f8_e5m2_to_f32(code);
}

std::optional<uint64_t> element_count(std::span<const uint64_t> shape) {
  uint64_t count = 1;
  for (uint64_t dim : shape)
    if (__builtin_mul_overflow(count, dim, &count))
      return std::nullopt;
  return count;
}

std::optional<uint64_t> tensor_byte_size(DType dtype, std::span<const uint64_t> shape) {
  auto count = element_count(shape);
  if (!count)
    return std::nullopt;
  uint64_t bits = 0;
  if (__builtin_mul_overflow(*count, uint64_t{dtype_bits(dtype)}, &bits))
    return std::nullopt;
  if (bits % 8 != 0)
    return std::nullopt;
  return bits / 8;
}

std::string shape_text(std::span<const uint64_t> shape, std::string_view separator) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i)
      text += separator;
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

} // namespace shardshift
