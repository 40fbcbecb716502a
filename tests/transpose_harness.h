// transpose_harness.h: what the transpose*_test programs share: aligned buffers, special and
// random values, the expected output of a whole transpose_fold_cpu() call computed with the
// reference of tests/reference (numeric_reference.h), and running the kernel at every SIMD level
// this CPU supports against it.
#pragma once

#include "shardshift/dtype.h"

#include "reference/numeric_reference.h"
#include "transpose.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace shardshift::testing {

unsigned bytes_of(DType t);
uint64_t load_bits(const std::byte* p, unsigned width);
void store_bits(std::byte* p, unsigned width, uint64_t v);

/// A 64-byte aligned buffer; `offset` shifts the usable start to test misaligned pointers.
class Buffer {
public:
  Buffer(size_t bytes, size_t offset = 0)
      : storage_(new std::byte[bytes + offset + 64]), offset_(offset), size_(bytes) {
    const auto base = reinterpret_cast<uintptr_t>(storage_.get());
    data_ = storage_.get() + ((64 - base % 64) % 64) + offset_;
    std::memset(data_, 0xA5, size_);
  }
  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }

private:
  std::unique_ptr<std::byte[]> storage_;
  size_t offset_, size_;
  std::byte* data_ = nullptr;
};

/// Interesting bit patterns of a float dtype: zeros, infinities, NaNs (quiet and signalling,
/// with payloads), the subnormal and normal extremes, one; each with both signs.
std::vector<uint64_t> special_values(DType t);

/// What random data an expert gets. The SIMD kernels hand a whole tile to the scalar code when
/// one product in it is NaN (or, for AVX512-BF16, subnormal), so the profiles without those let
/// the SIMD arithmetic itself be compared.
enum class Profile {
  ordinary, ///< finite values within 2^+-12 of one: never NaN, never subnormal
  no_nan,   ///< plus zeros, infinities, subnormals, extremes (no NaN: no NaN scale, no zero one)
  anything, ///< plus NaNs and raw random bit patterns
};

/// Finite values within 2^+-12 of one, random sign and mantissa.
uint64_t ordinary_value(DType t, std::mt19937_64& rng);
uint64_t random_value(DType t, std::mt19937_64& rng, Profile profile);
/// A random scale of the profile (for ordinary and no_nan: never NaN, zero or infinite).
uint64_t random_scale(DType t, std::mt19937_64& rng, Profile profile);

/// The expected output of a whole call, computed element by element with the reference.
std::vector<std::byte> reference_output(const TransposeArgs& a);

std::string hex(uint64_t v);

/// The levels this CPU runs (whatever SHARDSHIFT_SIMD says).
std::vector<SimdLevel> supported_levels();

/// Runs `a` at every supported level into a fresh buffer and compares with `expected` bit for
/// bit. Also checks that every NaN written by a fold or cast is the canonical one.
/// `mxcsr`, when not zero, is the x86 floating-point control word the kernel runs under (the
/// reference never does).
void expect_all_levels_match(TransposeArgs a, const std::vector<std::byte>& expected,
                             const std::string& what, size_t dst_offset = 0, unsigned mxcsr = 0);

struct Case {
  uint64_t experts, A, B, col_begin, cols;
};

std::string describe(const TransposeArgs& a);

/// Fills src and scales with random data, each expert with its own profile, and checks every
/// level against the reference.
void run_random_case(std::mt19937_64& rng, DType src_dtype, bool has_scale, DType scale_dtype,
                     DType dst_dtype, const Case& c, size_t src_offset = 0, size_t dst_offset = 0);

/// Shapes: 1x1, odd, prime, single rows and columns, block multiples, and block multiples plus
/// edges, with and without column slicing.
std::vector<Case> shapes(std::mt19937_64& rng);

inline constexpr DType FLOATS[] = {DType::BF16, DType::F16, DType::F32};

} // namespace shardshift::testing

namespace shardshift {

// The transpose*_test programs (whose tests live in namespace shardshift) use the reference and
// this harness unqualified.
using namespace reference;
using namespace testing;

} // namespace shardshift
