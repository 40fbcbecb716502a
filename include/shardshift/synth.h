// synth.h: writes synthetic Hugging Face checkpoints with the real key inventory and shapes of
// diffusion_gemma (google/diffusiongemma-26B-A4B-it) and gemma4_moe, for demos, tests and
// benchmarks. docs/semantics.md section 5 lists the real model; the layout written is:
//
//   diffusion_gemma: model.decoder.embed_tokens.weight, then per layer model.decoder.layers.L.*
//     (attention, dense MLP, seven norms, layer_scalar, router, experts; layers with L % 6 == 5
//     are full attention: no v_proj, larger head dim), model.decoder.norm.weight,
//     model.decoder.self_conditioning.*, model.encoder.language_model.layers.L.layer_scalar for
//     every L, and a small two-block vision tower under model.encoder.vision_tower.*. No lm_head.
//   gemma4_moe: the same backbone under model.language_model.* (no self_conditioning, no
//     encoder), lm_head.weight, and the small vision tower under model.vision_tower.*.
//   qwen3_moe (Qwen/Qwen3-30B-A3B: H 2048, 128 experts of I 768, vocabulary 151936, 32 query
//     and 4 KV heads of 128): model.embed_tokens.weight, per layer model.layers.L.* (attention
//     with q_norm/k_norm, mlp.gate.weight, and mlp.experts.E.{gate,up,down}_proj.weight for
//     every expert), model.norm.weight, lm_head.weight (not tied).
//   deepseek_v3 (deepseek-ai/DeepSeek-V3: H 7168, 61 layers of which the first 3 dense with
//     I 18432, 256 routed experts and 1 shared of I 2048, vocabulary 129280, MLA with 128 heads,
//     q_lora_rank 1536, kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head 128):
//     model.embed_tokens.weight, per layer model.layers.L.* (MLA attention and its two norms, the
//     dense MLP or mlp.gate.{weight,e_score_correction_bias}, mlp.shared_experts.* and
//     mlp.experts.E.{gate,up,down}_proj.weight), then `mtp_layers` multi-token-prediction layers
//     (a MoE layer plus embed_tokens, enorm, hnorm, eh_proj, shared_head.{norm,head}),
//     model.norm.weight, lm_head.weight. Every linear weight of a layer is F8_E4M3 (random finite
//     codes) with an F32 `_scale_inv` of one scale per 128 x 128 block; the router bias is F32.
//
// The vision tower is a stand-in (patch embedding, position embedding, two transformer blocks,
// a final norm), not the real one: converters only pass it through or drop it.
//
// Every other tensor is BF16. Element i of tensor t is a pure function of (seed, t, i), so the
// bytes are generated in bounded chunks, in parallel, and identically on every run and machine.
// Thread-safety: synth() may run concurrently for different output directories.
#pragma once

#include "shardshift/io.h"
#include "shardshift/status.h"

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace shardshift {

struct SynthOptions {
  std::filesystem::path out;
  std::string model = "diffusion_gemma"; ///< or "gemma4_moe", "qwen3_moe", "deepseek_v3"
  unsigned layers = 30;
  /// deepseek_v3: multi-token-prediction layers written after the decoder layers (the real
  /// checkpoint has 1: model.layers.61).
  unsigned mtp_layers = 1;
  uint64_t seed = 0;
  /// Divisors of the real sizes: hidden (H = 2816, also every attention and dense-MLP size and
  /// the vision tower), experts (E = 128), vocab (262144), expert intermediate (I = 704).
  /// Every resulting size must stay >= 1.
  unsigned scale_hidden = 1, scale_experts = 1, scale_vocab = 1, scale_intermediate = 1;
  /// Shards are cut like Hugging Face does: a new one starts when the next tensor would take the
  /// current one past this size; a larger tensor gets a shard of its own.
  uint64_t max_shard_size = 5'000'000'000;
  /// Allow a non-empty `out`: its *.safetensors files, index, config.json and leftover temporary
  /// files are removed first (other files are kept).
  bool force = false;
  /// When set and true, the run stops at the next chunk with Errc::interrupted (and cleans up).
  const std::atomic<bool>* cancel = nullptr;
};

struct SynthSummary {
  uint64_t tensors = 0;
  uint64_t bytes = 0; ///< tensor bytes (the index's total_size)
  uint64_t shards = 0;
};

/// Writes the checkpoint into `options.out`: model.safetensors, or model-0000i-of-0000N.safetensors
/// plus model.safetensors.index.json (written last), and config.json. A missing `options.out` is
/// created in its parent directory, which must exist, as a conversion's OUT (Errc::invalid_argument
/// otherwise). Memory stays bounded (one
/// ~16 MiB buffer) whatever the tensor sizes. On failure, everything this run wrote is removed.
/// `progress` (may be empty) is called with tensor bytes written so far and the total.
Status synth(const SynthOptions& options, Io& io,
             const std::function<void(uint64_t done, uint64_t total)>& progress,
             SynthSummary* summary = nullptr);

} // namespace shardshift
