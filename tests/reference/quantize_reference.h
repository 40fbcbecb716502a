// quantize_reference.h: FP8 block quantization (docs/semantics.md 15.7) from the contract, sharing
// no code with src/quantize*.{h,cpp} or src/numerics.h: the E4M3 code of a value is found by
// exhaustive search over the codes for the nearest value (ties to the even code), and the
// divisions are done in double, then rounded to float32 by ref_round (a float32 quotient
// computed in double and rounded once is the correctly rounded float32 quotient: double has
// more than 2 * 24 + 2 bits).
#pragma once

#include "reference/convert_reference.h"

#include <cstdint>
#include <string>

namespace shardshift::reference {

/// The F8_E4M3 code nearest to the finite y: of the 127 finite magnitudes (codes 0x00-0x7E) the
/// nearest to |y|, the even code on a tie (so |y| beyond 448 gives 448), with y's sign bit.
uint8_t ref_e4m3_nearest(double y);

/// The block scale of a block whose largest magnitude is amax (finite, >= 0): 1 for 0, else
/// float32(amax / 448), raised to 2^-126 when below it.
double ref_fp8_block_scale(double amax);

/// X [R, C] (BF16, F16 or F32, every element finite) quantized: F8_E4M3 codes [R, C] and F32
/// scales [ceil(R/128), ceil(C/128)].
struct RefQuantized {
  Tensor codes, scales;
};
RefQuantized ref_quantize(const Tensor& x);

/// Whether deepseek_v3 to_hf --quantize fp8 quantizes the output key (semantics 15.7): it ends
/// in ".weight" and contains none of the norms', embeddings', heads', router's and MTP
/// projection's names.
bool ref_quantized_key(const std::string& key);

/// deepseek_v3 to_hf --quantize fp8: ref_deepseek_to_hf, then every quantized key `W` replaced by
/// its codes and `W_scale_inv` added.
Dict ref_deepseek_to_hf_fp8(const Dict& native, const RefOptions& o);

} // namespace shardshift::reference
