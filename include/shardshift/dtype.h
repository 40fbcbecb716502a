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

/// True for the five 8-bit float dtypes (F8_*).
bool dtype_is_8bit_float(DType dtype);
/// True for F8_E4M3 (float8_e4m3fn) and F8_E5M2: the 8-bit floats shardshift can decode (FP8
/// block dequantization, docs/semantics.md section 15).
bool dtype_is_decodable_fp8(DType dtype);
/// The exact value of one F8_E4M3 or F8_E5M2 element (every such value is an F32 normal, a
/// signed zero or, for E5M2, an infinity); a NaN code gives the quiet NaN 0x7FC00000 with the
/// code's sign. REQUIRES: dtype_is_decodable_fp8(dtype).
float fp8_to_float(DType dtype, uint8_t code);

/// Number of elements of a shape ([] is a scalar: 1); nullopt on 64-bit overflow.
std::optional<uint64_t> element_count(std::span<const uint64_t> shape);
/// Byte length of a tensor; nullopt when the element or bit count overflows 64 bits or the bit
/// count is not a multiple of 8 (sub-byte dtypes).
std::optional<uint64_t> tensor_byte_size(DType dtype, std::span<const uint64_t> shape);

/// A shape as text: "[2, 3]" for people (messages, `inspect`), or "[2,3]" with separator ","
/// as it appears in a header and in the header parser's messages that quote it.
std::string shape_text(std::span<const uint64_t> shape, std::string_view separator = ", ");

} // namespace shardshift
