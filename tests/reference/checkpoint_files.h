// checkpoint_files.h: in-memory checkpoints (convert_reference.h) to and from disk, random test
// models, and the element-by-element comparison the conversion tests use. Files are written byte
// by byte here; reading goes through the library's Checkpoint (reading is not under test here).
#pragma once

#include "reference/convert_reference.h"

#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace shardshift::reference {

/// Writes `d` as `shards` safetensors files (round-robin by key) with an index when shards > 1,
/// and a config.json naming `model_type` when given.
void write_checkpoint(const std::filesystem::path& dir, const Dict& d, int shards = 1,
                      const std::string& model_type = "");
/// Every tensor of the checkpoint at `dir` (a failure to open it is a test failure).
Dict read_checkpoint(const std::filesystem::path& dir);

/// Element-by-element comparison as GoogleTest failures; any two NaNs are equal (semantics 1.1).
void expect_same(const Dict& got, const Dict& want);
/// Exact comparison: names, dtypes, shapes and every bit, NaNs included (for rules that fix the
/// NaN bits, such as semantics 15.3.5); names the first element that differs in each tensor.
void expect_identical(const Dict& got, const Dict& want);

/// Random tensor bytes; `special` mixes in infinities, NaNs, subnormals, signed zeros, huge values.
Tensor random_tensor(std::mt19937_64& rng, DType d, std::vector<uint64_t> shape,
                     bool special = false);

/// A diffusion_gemma HF checkpoint in miniature: L layers, E experts, hidden H, intermediate I.
Dict tiny_diffusion(std::mt19937_64& rng, int layers, uint64_t E, uint64_t H, uint64_t I,
                    DType expert = DType::BF16, DType scale = DType::BF16, bool special = false);
/// A gemma4_moe HF checkpoint in miniature, keys under model.language_model. (model_prefix) or
/// language_model.; the per-expert scale under layers.N.<scale_at>. (none when empty).
Dict tiny_gemma4(std::mt19937_64& rng, int layers, uint64_t E, uint64_t H, uint64_t I,
                 bool model_prefix, const std::string& scale_at = "router");

/// A qwen3_moe HF checkpoint in miniature: per layer attention, router (mlp.gate.weight) and E
/// experts' gate_proj / up_proj [I, H] and down_proj [H, I] in `expert` dtype, keys under
/// `model.` (model_prefix) or bare `layers.N`.
Dict tiny_qwen3(std::mt19937_64& rng, int layers, uint64_t E, uint64_t H, uint64_t I,
                DType expert = DType::BF16, bool model_prefix = true, bool special = false);

/// A deepseek_v3 HF checkpoint in miniature (semantics 15.2): `layers` layers of which the first
/// `dense` have a dense MLP [D, H] and the rest a router, its F32 bias, a shared expert and E
/// routed experts [I, H] / [H, I]; MLA attention [Q, H], [H, Q]; every linear weight in `fp8`
/// (random codes, NaNs included when `special`) with an F32 `_scale_inv` of random scales
/// (subnormal, huge, zero, negative, infinite and NaN ones when `special`).
Dict tiny_deepseek(std::mt19937_64& rng, int layers, int dense, uint64_t E, uint64_t H,
                   uint64_t I, uint64_t D, uint64_t Q, DType fp8 = DType::F8_E4M3,
                   bool special = false);
/// Random F32 block scales for a [rows, cols] weight ([ceil(rows/128), ceil(cols/128)]).
Tensor random_block_scales(std::mt19937_64& rng, uint64_t rows, uint64_t cols, bool special);

} // namespace shardshift::reference
