// dtype.h: the element types of safetensors and the arithmetic on their sizes.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace shardshift {

/// Every dtype of the safetensors format (names are case-sensitive in files).
enum class DType : uint8_t {
  BOOL,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  F8_E4M3FNUZ,
  F8_E5M2FNUZ,
  F4,
  F6_E2M3,
  F6_E3M2,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  C64,
  F64,
  I64,
  U64,
};
inline constexpr int DTYPE_COUNT = 22;

/// Parses a dtype name exactly as written in a header ("BF16"); nullopt when unknown.
std::optional<DType> dtype_from_name(std::string_view name);
/// The header name of a dtype ("BF16").
std::string_view dtype_name(DType dtype);
/// Bits per element: 4, 6, 8, 16, 32 or 64.
unsigned dtype_bits(DType dtype);
/// True for F16, BF16, F32 and F64: the types the fold arithmetic accepts (F64 transposes only).
bool dtype_is_ieee_float(DType dtype);

/// Number of elements of a shape ([] is a scalar: 1); nullopt on 64-bit overflow.
std::optional<uint64_t> element_count(std::span<const uint64_t> shape);
/// Byte length of a tensor; nullopt when the element or bit count overflows 64 bits or the bit
/// count is not a multiple of 8 (sub-byte dtypes).
std::optional<uint64_t> tensor_byte_size(DType dtype, std::span<const uint64_t> shape);

/// A shape as text: "[2, 3]" for people (messages, `inspect`), or "[2,3]" with separator ","
/// as it appears in a header and in the header parser's messages that quote it.
std::string shape_text(std::span<const uint64_t> shape, std::string_view separator = ", ");

} // namespace shardshift
