// convert_reference.h: an independent reference converter, written from semantics.md (sections
// 1 to 3), not from src/: plain loops over tensors held in memory and scalar numerics that round
// through double precision. It shares no code with the planner, the pipeline, numerics.h or the
// kernels.
#pragma once

#include "shardshift/dtype.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace shardshift::reference {

/// A tensor in memory: dtype, shape and little-endian element bytes.
struct Tensor {
  DType dtype = DType::BF16;
  std::vector<uint64_t> shape;
  std::string bytes;
};
/// A checkpoint in memory: tensors by name.
using Dict = std::map<std::string, Tensor>;

uint64_t numel(const std::vector<uint64_t>& s);
/// Element size in bytes of the dtypes the tests use.
unsigned esize(DType d);
/// Element i's bit pattern.
uint64_t get_bits(const Tensor& t, uint64_t i);
void put_bits(Tensor& t, uint64_t i, uint64_t v);

/// Decodes a BF16/F16/F32 bit pattern to double, exactly.
double decode(DType d, uint64_t bits);
/// Rounds a double to the nearest value of d (BF16, F16 or F32), ties to even; returns the
/// encoded bits. Overflow gives infinity, NaN the canonical quiet NaN with x's sign.
uint64_t encode(DType d, double x);
/// The result dtype of expert x scale (semantics.md's table).
DType promote(DType a, DType b);
/// down.transpose(-2,-1) * scale[:, None, None] in dtype p, as PyTorch computes it: float32
/// arithmetic, then rounded to p.
double product(DType p, double d, double s);

/// Experts [e0, e0 + ne) of `in` [E, A, B], input columns [c0, c0 + nc), transposed to
/// [ne, nc, A]; each expert multiplied by its `scale` element when given; cast to `cast` when
/// given (else the promoted dtype).
Tensor transpose_ref(const Tensor& in, const Tensor* scale, std::optional<DType> cast, uint64_t e0,
                     uint64_t ne, uint64_t c0, uint64_t nc);
/// n ones of dtype d.
Tensor ones_ref(DType d, uint64_t n);

struct RefOptions {
  std::optional<DType> cast;
  bool tied_head = true;
  std::string exclude = ".*_extra_state.*";
  uint64_t ep_size = 1, ep_rank = 0, ep_shard_size = 1, ep_shard_rank = 0;
};

/// The experts {start, count} rank r of w keeps out of e (semantics 1.2).
std::pair<uint64_t, uint64_t> ref_ep_range(uint64_t e, uint64_t w, uint64_t r);

/// diffusion_gemma (diffusion) or gemma4_moe, HF -> native (semantics 1 and 3).
Dict ref_from_hf(const Dict& in, bool diffusion, const RefOptions& o);
/// Native -> HF (semantics 2 and 3).
Dict ref_to_hf(const Dict& in, bool diffusion, const RefOptions& o);

/// qwen3_moe, HF -> native (semantics 14.2): each layer's per-expert gate_proj / up_proj
/// [I, H] become gate_and_up_projs [E, H, 2I] (gate's transpose in columns [0, I), up's in
/// [I, 2I)), down_proj [H, I] becomes down_projs [E, I, H]; o.cast casts them; every other key
/// is copied unchanged. REQUIRES: a complete, well-shaped input.
Dict ref_qwen3_from_hf(const Dict& in, const RefOptions& o);
/// qwen3_moe, native -> HF (semantics 14.3): the reverse split, names under `model.layers.N.`,
/// then o.exclude.
Dict ref_qwen3_to_hf(const Dict& in, const RefOptions& o);

/// Expert-parallel export of a stacked family (qwen3_moe, deepseek_v3; semantics 14.7): `native`
/// is the whole from_hf output; every key ending in `.mlp.experts.gate_and_up_projs` or
/// `.mlp.experts.down_projs` keeps the experts ref_ep_range gives rank o.ep_rank of o.ep_size
/// (axis 0) and rows [k * n, (k + 1) * n) of axis 1, n = axis 1 / o.ep_shard_size, k =
/// o.ep_shard_rank; every other key is unchanged. REQUIRES: axis 1 divisible.
Dict ref_stacked_expert_parallel(const Dict& native, const RefOptions& o);

/// FP8 block dequantization of a 2-D weight (semantics 15.3): every element times its 128 x 128
/// block's element of `scale`, by ref_dequant_element, in dtype `to`.
Tensor ref_dequant(const Tensor& weight, const Tensor& scale, DType to);
/// deepseek_v3, HF -> native (semantics 15.2): every `W` with a `W_scale_inv` dequantized to
/// o.cast (BF16 when unset) and the scale removed, then the qwen3_moe stacking with the stacked
/// experts in that dtype. REQUIRES: a complete, well-shaped input.
Dict ref_deepseek_from_hf(const Dict& in, const RefOptions& o);
/// deepseek_v3, native -> HF (semantics 15.4): the qwen3_moe split.
Dict ref_deepseek_to_hf(const Dict& in, const RefOptions& o);

/// to_hf with --base (semantics 16): `out` (a to_hf result) plus every key of the original
/// Hugging Face checkpoint `base` that the model's from_hf drops: for diffusion_gemma the keys
/// beginning with `model.encoder.`; the other models drop none. REQUIRES: no name in both.
Dict ref_with_base(const Dict& out, const Dict& base, const std::string& model);

} // namespace shardshift::reference
