// synth.cpp: synthetic diffusion_gemma / gemma4_moe / qwen3_moe / deepseek_v3 checkpoints (see
// synth.h for the layout).
//
// The run is three passes: derive the scaled sizes and the tensor inventory, cut the inventory
// into shards, then stream every shard through a ShardWriter, filling one reusable buffer chunk by
// chunk. No tensor is ever held whole (a real gate_up_proj is 1 GB), so peak memory is the chunk
// buffer plus the process baseline, whatever the model size (docs/PERFORMANCE.md has the figures).
#include "shardshift/synth.h"

#include "shardshift/dtype.h"
#include "shardshift/safetensors.h"
#include "shardshift/shard_writer.h"

#include "numerics.h"
#include "outputs.h"

#include <algorithm>
#include <cerrno>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

// 8 Mi BF16 elements = 16 MiB: large enough that one write call amortises its overhead, small
// enough that the resident set stays flat.
constexpr uint64_t CHUNK_ELEMENTS = uint64_t{8} << 20;
constexpr uint64_t GRAIN_ELEMENTS = uint64_t{64} << 10;

// How a tensor's values are distributed. Weights are centred on zero; norms, scales and
// layer_scalar are centred on one, as trained checkpoints roughly are, so a folded product of a
// synthetic checkpoint is as well-conditioned as a real one.
// deepseek_v3 adds FP8 weights (random finite F8_E4M3 codes), their F32 block scales (positive,
// around 1/448 of a typical weight magnitude, as real ones are) and the gate's F32 bias.
enum class Init { weight, unit, fp8, block_scale };

struct SynthTensor {
  PlannedTensor planned;
  Init init = Init::weight;
  uint64_t elements = 0;
  uint64_t bytes = 0;
};

struct Dims {
  uint64_t hidden, dense, intermediate, experts, vocab;
  uint64_t heads, q_lora, kv_lora, rope, nope, v_head; ///< deepseek_v3's MLA
  uint64_t q_sliding, kv_sliding, head_sliding, q_full, kv_full, head_full;
  uint64_t vision_hidden, vision_mlp, vision_positions;
};

// splitmix64's finaliser: a bijection on 64 bits with full avalanche, so hashing a counter gives
// independent-looking values that any chunk can compute without the ones before it.
constexpr uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// One BF16 value from 64 random bits: the mean of four 16-bit uniforms (bell-shaped, bounded),
// mapped to [-0.1, 0.1], plus 1 for Init::unit. Always finite, never NaN.
inline uint16_t synth_value(uint64_t bits, Init init) {
  uint32_t sum = static_cast<uint32_t>(bits & 0xFFFF) +
                 static_cast<uint32_t>((bits >> 16) & 0xFFFF) +
                 static_cast<uint32_t>((bits >> 32) & 0xFFFF) + static_cast<uint32_t>(bits >> 48);
  float centred = static_cast<float>(sum) * (0.2f / (4.0f * 65535.0f)) - 0.1f;
  return numerics::f32_to_bf16_rne(init == Init::unit ? 1.0f + centred : centred);
}

// One F32 value: Init::block_scale gives a positive scale around 1e-4 (DeepSeek-V3's are
// max|w| / 448), anything else the BF16 distribution's value.
inline uint32_t synth_f32(uint64_t bits, Init init) {
  const float v = numerics::bf16_to_f32(synth_value(bits, Init::unit)); // in [0.9, 1.1]
  if (init == Init::block_scale)
    return numerics::f32_bits(v * (0.05f / 448.0f));
  return numerics::f32_bits(init == Init::unit ? v : v - 1.0f);
}

// One F8_E4M3 code: uniform over the 254 finite codes (0x7F and 0xFF are NaN).
inline uint8_t synth_fp8(uint64_t bits) {
  const uint8_t code = static_cast<uint8_t>(bits);
  return (code & 0x7F) == 0x7F ? static_cast<uint8_t>(code ^ 0x01) : code;
}

Result<Dims> derive_dims(const SynthOptions& o) {
  if (o.scale_hidden == 0 || o.scale_experts == 0 || o.scale_vocab == 0 ||
      o.scale_intermediate == 0)
    return error(Errc::invalid_argument, "synth: scale factors must be at least 1");
  Dims d{};
  struct Item {
    uint64_t* dim;
    uint64_t real;
    unsigned scale;
    const char* what;
  };
  // Each of the model's sizes divided by its divisor; none may come out 0.
  auto scaled = [&d](std::span<const Item> model) -> Result<Dims> {
    for (const Item& item : model) {
      *item.dim = item.real / item.scale;
      if (*item.dim == 0)
        return error(Errc::invalid_argument, "synth: scale " + std::to_string(item.scale) +
                                                 " leaves nothing of the " + item.what);
    }
    return d;
  };
  if (o.model == "deepseek_v3") {
    // deepseek-ai/DeepSeek-V3 (config.json): MLA with 128 heads, q_lora_rank 1536, kv_lora_rank
    // 512, qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128; dense MLP 18432; 256
    // routed experts of 2048 and one shared expert of 2048.
    const Item deepseek[] = {
        {&d.hidden, 7168, o.scale_hidden, "hidden size 7168"},
        {&d.dense, 18432, o.scale_hidden, "dense MLP size 18432"},
        {&d.intermediate, 2048, o.scale_intermediate, "expert intermediate size 2048"},
        {&d.experts, 256, o.scale_experts, "expert count 256"},
        {&d.vocab, 129280, o.scale_vocab, "vocabulary 129280"},
        {&d.heads, 128, o.scale_hidden, "head count 128"},
        {&d.q_lora, 1536, o.scale_hidden, "q_lora_rank 1536"},
        {&d.kv_lora, 512, o.scale_hidden, "kv_lora_rank 512"},
        {&d.rope, 64, o.scale_hidden, "qk_rope_head_dim 64"},
        {&d.nope, 128, o.scale_hidden, "qk_nope_head_dim 128"},
        {&d.v_head, 128, o.scale_hidden, "v_head_dim 128"},
    };
    return scaled(deepseek);
  }
  if (o.model == "qwen3_moe") {
    // Qwen/Qwen3-30B-A3B: 32 query heads and 4 KV heads of 128, no dense layer.
    const Item qwen[] = {
        {&d.hidden, 2048, o.scale_hidden, "hidden size 2048"},
        {&d.intermediate, 768, o.scale_intermediate, "expert intermediate size 768"},
        {&d.experts, 128, o.scale_experts, "expert count 128"},
        {&d.vocab, 151936, o.scale_vocab, "vocabulary 151936"},
        {&d.q_full, 4096, o.scale_hidden, "q_proj rows 4096"},
        {&d.kv_full, 512, o.scale_hidden, "k/v_proj rows 512"},
        {&d.head_full, 128, o.scale_hidden, "head dim 128"},
    };
    return scaled(qwen);
  }
  const Item items[] = {
      {&d.hidden, 2816, o.scale_hidden, "hidden size 2816"},
      {&d.dense, 2112, o.scale_hidden, "dense MLP size 2112"},
      {&d.intermediate, 704, o.scale_intermediate, "expert intermediate size 704"},
      {&d.experts, 128, o.scale_experts, "expert count 128"},
      {&d.vocab, 262144, o.scale_vocab, "vocabulary 262144"},
      {&d.q_sliding, 4096, o.scale_hidden, "sliding q_proj rows 4096"},
      {&d.kv_sliding, 2048, o.scale_hidden, "sliding k/v_proj rows 2048"},
      {&d.head_sliding, 256, o.scale_hidden, "sliding head dim 256"},
      {&d.q_full, 8192, o.scale_hidden, "full q_proj rows 8192"},
      {&d.kv_full, 1024, o.scale_hidden, "full k_proj rows 1024"},
      {&d.head_full, 512, o.scale_hidden, "full head dim 512"},
      {&d.vision_hidden, 1152, o.scale_hidden, "vision hidden size 1152"},
      {&d.vision_mlp, 4304, o.scale_hidden, "vision MLP size 4304"},
      {&d.vision_positions, 256, o.scale_hidden, "vision positions 256"},
  };
  return scaled(items);
}

class Inventory {
public:
  void add(std::string name, std::vector<uint64_t> shape, Init init = Init::weight,
           DType dtype = DType::BF16) {
    SynthTensor t;
    t.elements = 1;
    for (uint64_t s : shape)
      t.elements *= s;
    t.bytes = t.elements * (dtype_bits(dtype) / 8);
    t.planned = {std::move(name), dtype, std::move(shape)};
    t.init = init;
    tensors.push_back(std::move(t));
  }
  /// An FP8 weight [rows, cols] and its F32 block scales `<name>_scale_inv` [ceil(rows/128),
  /// ceil(cols/128)], as DeepSeek-V3 stores its linear layers.
  void add_fp8(const std::string& name, uint64_t rows, uint64_t cols) {
    add(name, {rows, cols}, Init::fp8, DType::F8_E4M3);
    add(name + "_scale_inv", {(rows + 127) / 128, (cols + 127) / 128}, Init::block_scale,
        DType::F32);
  }
  std::vector<SynthTensor> tensors;
};

// One decoder layer of the text backbone. Layers with L % 6 == 5 use full attention: twice the
// head dim, two KV heads, and keys double as values, so there is no v_proj.
void add_layer(Inventory& inv, const std::string& prefix, unsigned layer, const Dims& d) {
  const std::string p = prefix + "layers." + std::to_string(layer) + ".";
  const bool full = layer % 6 == 5;
  const uint64_t h = d.hidden, q = full ? d.q_full : d.q_sliding;
  const uint64_t kv = full ? d.kv_full : d.kv_sliding, head = full ? d.head_full : d.head_sliding;
  inv.add(p + "input_layernorm.weight", {h}, Init::unit);
  inv.add(p + "self_attn.q_proj.weight", {q, h});
  inv.add(p + "self_attn.q_norm.weight", {head}, Init::unit);
  inv.add(p + "self_attn.k_proj.weight", {kv, h});
  inv.add(p + "self_attn.k_norm.weight", {head}, Init::unit);
  if (!full)
    inv.add(p + "self_attn.v_proj.weight", {kv, h});
  inv.add(p + "self_attn.o_proj.weight", {h, q});
  inv.add(p + "post_attention_layernorm.weight", {h}, Init::unit);
  inv.add(p + "pre_feedforward_layernorm.weight", {h}, Init::unit);
  inv.add(p + "mlp.gate_proj.weight", {d.dense, h});
  inv.add(p + "mlp.up_proj.weight", {d.dense, h});
  inv.add(p + "mlp.down_proj.weight", {h, d.dense});
  inv.add(p + "post_feedforward_layernorm_1.weight", {h}, Init::unit);
  inv.add(p + "router.proj.weight", {d.experts, h});
  inv.add(p + "router.scale", {h}, Init::unit);
  inv.add(p + "router.per_expert_scale", {d.experts}, Init::unit);
  inv.add(p + "pre_feedforward_layernorm_2.weight", {h}, Init::unit);
  inv.add(p + "experts.gate_up_proj", {d.experts, 2 * d.intermediate, h});
  inv.add(p + "experts.down_proj", {d.experts, h, d.intermediate});
  inv.add(p + "post_feedforward_layernorm_2.weight", {h}, Init::unit);
  inv.add(p + "post_feedforward_layernorm.weight", {h}, Init::unit);
  inv.add(p + "layer_scalar", {1}, Init::unit);
}

// A stand-in vision tower (SigLIP-shaped: 16x16 RGB patches, two blocks). Converters only pass it
// through or drop it, so its exact inventory does not matter; its size keeps those paths honest.
void add_vision_tower(Inventory& inv, const std::string& prefix, const Dims& d) {
  const uint64_t vh = d.vision_hidden;
  inv.add(prefix + "embeddings.patch_embedding.weight", {vh, 3, 16, 16});
  inv.add(prefix + "embeddings.position_embedding.weight", {d.vision_positions, vh});
  for (int block = 0; block < 2; ++block) {
    const std::string p = prefix + "encoder.layers." + std::to_string(block) + ".";
    inv.add(p + "layer_norm1.weight", {vh}, Init::unit);
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"})
      inv.add(p + "self_attn." + proj + ".weight", {vh, vh});
    inv.add(p + "layer_norm2.weight", {vh}, Init::unit);
    inv.add(p + "mlp.fc1.weight", {d.vision_mlp, vh});
    inv.add(p + "mlp.fc2.weight", {vh, d.vision_mlp});
  }
  inv.add(prefix + "post_layernorm.weight", {vh}, Init::unit);
}

// One Qwen3-MoE decoder layer: attention with q/k norms, the router, and every expert as three
// 2-D tensors (Hugging Face's layout; semantics 14).
void add_qwen3_layer(Inventory& inv, unsigned layer, const Dims& d) {
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  const uint64_t h = d.hidden;
  inv.add(p + "input_layernorm.weight", {h}, Init::unit);
  inv.add(p + "self_attn.q_proj.weight", {d.q_full, h});
  inv.add(p + "self_attn.k_proj.weight", {d.kv_full, h});
  inv.add(p + "self_attn.v_proj.weight", {d.kv_full, h});
  inv.add(p + "self_attn.o_proj.weight", {h, d.q_full});
  inv.add(p + "self_attn.q_norm.weight", {d.head_full}, Init::unit);
  inv.add(p + "self_attn.k_norm.weight", {d.head_full}, Init::unit);
  inv.add(p + "post_attention_layernorm.weight", {h}, Init::unit);
  inv.add(p + "mlp.gate.weight", {d.experts, h});
  for (uint64_t e = 0; e < d.experts; ++e) {
    const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
    inv.add(x + "gate_proj.weight", {d.intermediate, h});
    inv.add(x + "up_proj.weight", {d.intermediate, h});
    inv.add(x + "down_proj.weight", {h, d.intermediate});
  }
}

// One DeepSeek-V3 decoder layer in the order of the real index: MLA attention, then the dense
// MLP (layers below 3) or the MoE (router with its F32 bias, one shared expert, every routed
// expert as three 2-D tensors); every linear weight FP8 with its block scales (semantics 15.6).
void add_deepseek_layer(Inventory& inv, unsigned layer, const Dims& d, bool moe) {
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  const uint64_t h = d.hidden;
  inv.add(p + "input_layernorm.weight", {h}, Init::unit);
  inv.add_fp8(p + "self_attn.q_a_proj.weight", d.q_lora, h);
  inv.add(p + "self_attn.q_a_layernorm.weight", {d.q_lora}, Init::unit);
  inv.add_fp8(p + "self_attn.q_b_proj.weight", d.heads * (d.nope + d.rope), d.q_lora);
  inv.add_fp8(p + "self_attn.kv_a_proj_with_mqa.weight", d.kv_lora + d.rope, h);
  inv.add(p + "self_attn.kv_a_layernorm.weight", {d.kv_lora}, Init::unit);
  inv.add_fp8(p + "self_attn.kv_b_proj.weight", d.heads * (d.nope + d.v_head), d.kv_lora);
  inv.add_fp8(p + "self_attn.o_proj.weight", h, d.heads * d.v_head);
  inv.add(p + "post_attention_layernorm.weight", {h}, Init::unit);
  if (!moe) {
    inv.add_fp8(p + "mlp.gate_proj.weight", d.dense, h);
    inv.add_fp8(p + "mlp.up_proj.weight", d.dense, h);
    inv.add_fp8(p + "mlp.down_proj.weight", h, d.dense);
    return;
  }
  inv.add(p + "mlp.gate.weight", {d.experts, h});
  inv.add(p + "mlp.gate.e_score_correction_bias", {d.experts}, Init::weight, DType::F32);
  inv.add_fp8(p + "mlp.shared_experts.gate_proj.weight", d.intermediate, h);
  inv.add_fp8(p + "mlp.shared_experts.up_proj.weight", d.intermediate, h);
  inv.add_fp8(p + "mlp.shared_experts.down_proj.weight", h, d.intermediate);
  for (uint64_t e = 0; e < d.experts; ++e) {
    const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
    inv.add_fp8(x + "gate_proj.weight", d.intermediate, h);
    inv.add_fp8(x + "up_proj.weight", d.intermediate, h);
    inv.add_fp8(x + "down_proj.weight", h, d.intermediate);
  }
}

// The multi-token-prediction layer after the last decoder layer: a full MoE layer plus its own
// embedding, the two norms of its inputs, their projection (BF16) and its head.
void add_deepseek_mtp_layer(Inventory& inv, unsigned layer, const Dims& d) {
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  inv.add(p + "embed_tokens.weight", {d.vocab, d.hidden});
  inv.add(p + "enorm.weight", {d.hidden}, Init::unit);
  inv.add(p + "hnorm.weight", {d.hidden}, Init::unit);
  inv.add(p + "eh_proj.weight", {d.hidden, 2 * d.hidden});
  add_deepseek_layer(inv, layer, d, true);
  inv.add(p + "shared_head.norm.weight", {d.hidden}, Init::unit);
  inv.add(p + "shared_head.head.weight", {d.vocab, d.hidden});
}

std::vector<SynthTensor> build_inventory(const SynthOptions& o, const Dims& d) {
  Inventory inv;
  if (o.model == "deepseek_v3") {
    inv.add("model.embed_tokens.weight", {d.vocab, d.hidden});
    for (unsigned layer = 0; layer < o.layers; ++layer)
      add_deepseek_layer(inv, layer, d, layer >= 3); // first_k_dense_replace 3
    for (unsigned m = 0; m < o.mtp_layers; ++m)
      add_deepseek_mtp_layer(inv, o.layers + m, d);
    inv.add("model.norm.weight", {d.hidden}, Init::unit);
    inv.add("lm_head.weight", {d.vocab, d.hidden}); // tie_word_embeddings is false
  } else if (o.model == "qwen3_moe") {
    inv.add("model.embed_tokens.weight", {d.vocab, d.hidden});
    for (unsigned layer = 0; layer < o.layers; ++layer)
      add_qwen3_layer(inv, layer, d);
    inv.add("model.norm.weight", {d.hidden}, Init::unit);
    inv.add("lm_head.weight", {d.vocab, d.hidden}); // tie_word_embeddings is false
  } else if (o.model == "diffusion_gemma") {
    const std::string decoder = "model.decoder.";
    inv.add(decoder + "embed_tokens.weight", {d.vocab, d.hidden});
    for (unsigned layer = 0; layer < o.layers; ++layer)
      add_layer(inv, decoder, layer, d);
    inv.add(decoder + "norm.weight", {d.hidden}, Init::unit);
    inv.add(decoder + "self_conditioning.pre_norm.weight", {d.hidden}, Init::unit);
    inv.add(decoder + "self_conditioning.gate_proj.weight", {d.dense, d.hidden});
    inv.add(decoder + "self_conditioning.up_proj.weight", {d.dense, d.hidden});
    inv.add(decoder + "self_conditioning.down_proj.weight", {d.hidden, d.dense});
    for (unsigned layer = 0; layer < o.layers; ++layer)
      inv.add("model.encoder.language_model.layers." + std::to_string(layer) + ".layer_scalar", {1},
              Init::unit);
    add_vision_tower(inv, "model.encoder.vision_tower.", d);
  } else {
    const std::string text = "model.language_model.";
    inv.add(text + "embed_tokens.weight", {d.vocab, d.hidden});
    for (unsigned layer = 0; layer < o.layers; ++layer)
      add_layer(inv, text, layer, d);
    inv.add(text + "norm.weight", {d.hidden}, Init::unit);
    add_vision_tower(inv, "model.vision_tower.", d);
    inv.add("lm_head.weight", {d.vocab, d.hidden});
  }
  return std::move(inv.tensors);
}

// Makes `out` ready: created when missing, in an existing parent as convert's OUT is; when it
// exists it must be a directory, and a non-empty one only with force, in which case the files a
// checkpoint consists of are removed so stale shards of an earlier, differently cut run cannot
// mix with this one. Sets `*created`.
Status prepare_output(const SynthOptions& o, Io& io, bool* created) {
  *created = false;
  std::error_code ec;
  const std::string out = o.out.string();
  if (!fs::exists(o.out, ec)) {
    if (Status st = check_output_parent(o.out); !st.ok())
      return st;
    if (Status st = make_directories(io, o.out); !st.ok())
      return st;
    *created = true;
    return {};
  }
  if (!fs::is_directory(o.out, ec))
    return error(Errc::invalid_argument, out + " exists and is not a directory");
  if (fs::directory_iterator(o.out, ec) == fs::directory_iterator()) {
    if (ec)
      return error(Errc::io, out + ": cannot list directory: " + ec.message());
    return {};
  }
  if (!o.force)
    return error(Errc::invalid_argument, out + " exists; pass --force to replace it");
  remove_temp_files(io, o.out);
  std::vector<fs::path> doomed;
  for (const auto& entry : fs::directory_iterator(o.out, ec)) {
    std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && (entry.path().extension() == ".safetensors" ||
                                    name == INDEX_FILE_NAME || name == "config.json"))
      doomed.push_back(entry.path());
  }
  for (const auto& p : doomed) {
    if (io.unlink(p.c_str()) != 0 && errno != ENOENT)
      return error(Errc::io, p.string() + ": cannot remove: " + errno_text(errno));
  }
  return {};
}

std::string config_json(const SynthOptions& o, const Dims& d) {
  auto n = [](uint64_t v) { return std::to_string(v); };
  if (o.model == "deepseek_v3")
    return "{\n  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n  \"model_type\": "
           "\"deepseek_v3\",\n  \"num_hidden_layers\": " +
           n(o.layers) + ",\n  \"num_nextn_predict_layers\": " + n(o.mtp_layers) +
           ",\n  \"first_k_dense_replace\": 3,\n  \"hidden_size\": " + n(d.hidden) +
           ",\n  \"intermediate_size\": " + n(d.dense) +
           ",\n  \"moe_intermediate_size\": " + n(d.intermediate) +
           ",\n  \"n_routed_experts\": " + n(d.experts) +
           ",\n  \"n_shared_experts\": 1,\n  \"num_experts_per_tok\": 8" +
           ",\n  \"num_attention_heads\": " + n(d.heads) +
           ",\n  \"num_key_value_heads\": " + n(d.heads) + ",\n  \"q_lora_rank\": " + n(d.q_lora) +
           ",\n  \"kv_lora_rank\": " + n(d.kv_lora) + ",\n  \"qk_rope_head_dim\": " + n(d.rope) +
           ",\n  \"qk_nope_head_dim\": " + n(d.nope) + ",\n  \"v_head_dim\": " + n(d.v_head) +
           ",\n  \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": "
           "\"e4m3\", \"quant_method\": \"fp8\", \"weight_block_size\": [128, 128]}" +
           ",\n  \"tie_word_embeddings\": false,\n  \"torch_dtype\": \"bfloat16\"" +
           ",\n  \"vocab_size\": " + n(d.vocab) + "\n}\n";
  if (o.model == "qwen3_moe")
    return "{\n  \"architectures\": [\"Qwen3MoeForCausalLM\"],\n  \"model_type\": \"qwen3_moe\""
           ",\n  \"num_hidden_layers\": " +
           std::to_string(o.layers) + ",\n  \"hidden_size\": " + std::to_string(d.hidden) +
           ",\n  \"num_attention_heads\": " + std::to_string(d.q_full / d.head_full) +
           ",\n  \"num_key_value_heads\": " + std::to_string(d.kv_full / d.head_full) +
           ",\n  \"head_dim\": " + std::to_string(d.head_full) +
           ",\n  \"num_experts\": " + std::to_string(d.experts) +
           ",\n  \"num_experts_per_tok\": 8" +
           ",\n  \"moe_intermediate_size\": " + std::to_string(d.intermediate) +
           ",\n  \"decoder_sparse_step\": 1,\n  \"mlp_only_layers\": []" +
           ",\n  \"tie_word_embeddings\": false,\n  \"torch_dtype\": \"bfloat16\"" +
           ",\n  \"vocab_size\": " + std::to_string(d.vocab) + "\n}\n";
  return "{\n  \"model_type\": \"" + o.model +
         "\",\n  \"num_hidden_layers\": " + std::to_string(o.layers) +
         ",\n  \"hidden_size\": " + std::to_string(d.hidden) +
         ",\n  \"num_experts\": " + std::to_string(d.experts) +
         ",\n  \"moe_intermediate_size\": " + std::to_string(d.intermediate) +
         ",\n  \"vocab_size\": " + std::to_string(d.vocab) + "\n}\n";
}

// The write pass proper; synth() wraps it with preparation and cleanup.
class SynthRun {
public:
  SynthRun(const SynthOptions& o, Io& io, const std::function<void(uint64_t, uint64_t)>& progress)
      : o_(o), io_(io), progress_(progress) {}

  Status run(const std::vector<SynthTensor>& tensors, const Dims& dims, SynthSummary* summary) {
    uint64_t total = 0;
    for (const auto& t : tensors)
      total += t.bytes;
    total_ = total;
    std::vector<uint64_t> sizes;
    for (const auto& t : tensors)
      sizes.push_back(t.bytes);
    const std::vector<std::vector<uint32_t>> shards = cut_shards(sizes, o_.max_shard_size);
    std::vector<std::byte> buffer(CHUNK_ELEMENTS * 4);
    std::map<std::string, std::string> weight_map;
    const uint64_t stream_base = mix64(o_.seed);

    for (size_t s = 0; s < shards.size(); ++s) {
      const std::string file = shard_file_name(s, shards.size());
      std::vector<PlannedTensor> planned;
      uint64_t data_size = 0;
      for (uint32_t i : shards[s]) {
        planned.push_back(tensors[i].planned);
        data_size += tensors[i].bytes;
        weight_map[tensors[i].planned.name] = file;
      }
      auto header = build_header(planned, HeaderOptions{});
      if (!header.ok())
        return header.status();

      ShardWriter writer(io_);
      const fs::path path = o_.out / file;
      written_.push_back(path);
      if (Status st = writer.open(path, std::move(header.value()), data_size); !st.ok())
        return st;
      for (uint32_t i : shards[s]) {
        Status st = write_tensor(writer, tensors[i], mix64(stream_base ^ i), buffer);
        if (!st.ok())
          return st;
      }
      if (Status st = writer.finish(); !st.ok())
        return st;
    }

    const std::string config = config_json(o_, dims);
    written_.push_back(o_.out / "config.json");
    if (Status st = write_file_atomic(io_, written_.back(), std::as_bytes(std::span(config)));
        !st.ok())
      return st;
    // The index commits a sharded checkpoint, so it comes last.
    if (shards.size() > 1) {
      written_.push_back(o_.out / INDEX_FILE_NAME);
      if (Status st = write_index(io_, o_.out, total, weight_map); !st.ok())
        return st;
    }
    if (summary)
      *summary = {tensors.size(), total, shards.size()};
    return {};
  }

  /// Every final path this run created or was about to create, for cleanup after a failure.
  const std::vector<fs::path>& written() const { return written_; }

private:
  Status write_tensor(ShardWriter& writer, const SynthTensor& t, uint64_t key,
                      std::vector<std::byte>& buffer) {
    const uint64_t es = dtype_bits(t.planned.dtype) / 8;
    for (uint64_t start = 0; start < t.elements; start += CHUNK_ELEMENTS) {
      if (o_.cancel && o_.cancel->load(std::memory_order_relaxed))
        return error(Errc::interrupted, o_.out.string() + ": interrupted");
      const uint64_t count = std::min(CHUNK_ELEMENTS, t.elements - start);
      // Element i depends only on (key, i), so the split across threads cannot change the bytes.
      tbb::parallel_for(tbb::blocked_range<uint64_t>(0, count, GRAIN_ELEMENTS),
                        [&](const tbb::blocked_range<uint64_t>& r) {
                          for (uint64_t j = r.begin(); j < r.end(); ++j) {
                            const uint64_t bits = mix64(key + start + j);
                            const uint32_t v = es == 1   ? synth_fp8(bits)
                                               : es == 4 ? synth_f32(bits, t.init)
                                                         : synth_value(bits, t.init);
                            // safetensors is little-endian; store the bytes explicitly.
                            auto* out = reinterpret_cast<unsigned char*>(&buffer[j * es]);
                            for (uint64_t b = 0; b < es; ++b)
                              out[b] = static_cast<unsigned char>(v >> (8 * b));
                          }
                        });
      Status st = writer.append(std::span<const std::byte>(buffer.data(), count * es));
      if (!st.ok())
        return st;
      done_ += count * es;
      if (progress_)
        progress_(done_, total_);
    }
    return {};
  }

  const SynthOptions& o_;
  Io& io_;
  const std::function<void(uint64_t, uint64_t)>& progress_;
  std::vector<fs::path> written_;
  uint64_t done_ = 0, total_ = 0;
};

} // namespace

Status synth(const SynthOptions& options, Io& io,
             const std::function<void(uint64_t done, uint64_t total)>& progress,
             SynthSummary* summary) {
  if (options.model != "diffusion_gemma" && options.model != "gemma4_moe" &&
      options.model != "qwen3_moe" && options.model != "deepseek_v3")
    return error(Errc::invalid_argument,
                 "synth: unknown model '" + options.model +
                     "' (expected diffusion_gemma, gemma4_moe, qwen3_moe or deepseek_v3)");
  if (options.max_shard_size == 0)
    return error(Errc::invalid_argument, "synth: the maximum shard size must be positive");
  if (options.out.empty())
    return error(Errc::invalid_argument, "synth: no output directory");
  auto dims = derive_dims(options);
  if (!dims.ok())
    return dims.status();
  const std::vector<SynthTensor> tensors = build_inventory(options, dims.value());

  bool created = false;
  if (Status st = prepare_output(options, io, &created); !st.ok())
    return st;

  SynthRun run(options, io, progress);
  Status st = run.run(tensors, dims.value(), summary);
  if (!st.ok()) {
    // No partial checkpoint: the failed writer removed its own temporary file; committed files
    // of this run go too, and the directory when this run made it.
    for (const auto& p : run.written())
      io.unlink(p.c_str());
    if (created)
      io.rmdir(options.out.c_str()); // only succeeds while empty
  }
  return st;
}

} // namespace shardshift
