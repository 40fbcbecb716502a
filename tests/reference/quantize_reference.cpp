// quantize_reference.cpp: see quantize_reference.h.
#include "reference/quantize_reference.h"

#include "reference/numeric_reference.h"

#include <cmath>

namespace shardshift::reference {

uint8_t ref_e4m3_nearest(double y) {
  const double a = std::fabs(y);
  uint8_t best = 0;
  double best_distance = INFINITY;
  for (unsigned c = 0; c <= 0x7E; ++c) {
    const double distance = std::fabs(ref_fp8_decode(DType::F8_E4M3, uint8_t(c)) - a);
    // Codes are visited in increasing value: on a tie the even one of the two neighbours wins.
    if (distance < best_distance || (distance == best_distance && c % 2 == 0)) {
      best = uint8_t(c);
      best_distance = distance;
    }
  }
  return uint8_t(best | (std::signbit(y) ? 0x80 : 0));
}

double ref_fp8_block_scale(double amax) {
  if (amax == 0)
    return 1.0;
  const double s = ref_round(format_of(DType::F32), amax / 448.0);
  return std::max(s, std::ldexp(1.0, -126));
}

RefQuantized ref_quantize(const Tensor& x) {
  const uint64_t R = x.shape.at(0), C = x.shape.at(1);
  const uint64_t br = (R + 127) / 128, bc = (C + 127) / 128;
  RefQuantized q{{DType::F8_E4M3, {R, C}, std::string(R * C, '\0')},
                 {DType::F32, {br, bc}, std::string(br * bc * 4, '\0')}};
  for (uint64_t i = 0; i < br; ++i)
    for (uint64_t j = 0; j < bc; ++j) {
      const uint64_t r1 = std::min(R, 128 * i + 128), c1 = std::min(C, 128 * j + 128);
      double amax = 0;
      for (uint64_t r = 128 * i; r < r1; ++r)
        for (uint64_t c = 128 * j; c < c1; ++c)
          amax = std::max(amax, std::fabs(ref_decode(x.dtype, get_bits(x, r * C + c))));
      const double s = ref_fp8_block_scale(amax);
      put_bits(q.scales, i * bc + j, ref_encode(DType::F32, s));
      for (uint64_t r = 128 * i; r < r1; ++r)
        for (uint64_t c = 128 * j; c < c1; ++c) {
          const double v = ref_decode(x.dtype, get_bits(x, r * C + c));
          put_bits(q.codes, r * C + c, ref_e4m3_nearest(ref_round(format_of(DType::F32), v / s)));
        }
    }
  return q;
}

bool ref_quantized_key(const std::string& key) {
  if (key.size() < 7 || key.compare(key.size() - 7, 7, ".weight") != 0)
    return false;
  for (const char* kept : {"input_layernorm.weight", "post_attention_layernorm.weight",
                           "norm.weight", "lm_head.weight", "embed_tokens.weight",
                           "mlp.gate.weight", "eh_proj.weight", "shared_head.head.weight"})
    if (key.find(kept) != std::string::npos)
      return false;
  return true;
}

Dict ref_deepseek_to_hf_fp8(const Dict& native, const RefOptions& o) {
  Dict out;
  for (auto& [key, t] : ref_deepseek_to_hf(native, o)) {
    if (!ref_quantized_key(key)) {
      out[key] = t;
      continue;
    }
    RefQuantized q = ref_quantize(t);
    out[key] = std::move(q.codes);
    out[key + "_scale_inv"] = std::move(q.scales);
  }
  return out;
}

} // namespace shardshift::reference
