// checkpoint_files.cpp: see checkpoint_files.h.
#include "reference/checkpoint_files.h"

#include "shardshift/checkpoint.h"

#include "test_support.h"

#include <cmath>

#include <gtest/gtest.h>

namespace shardshift::reference {

namespace fs = std::filesystem;

namespace {

std::string header_json(const Dict& d, std::vector<std::string>* order) {
  std::string j = "{\"__metadata__\":{\"format\":\"pt\"}";
  uint64_t off = 0;
  for (auto& [k, t] : d) {
    order->push_back(k);
    j += ",\"" + k + "\":{\"dtype\":\"" + std::string(dtype_name(t.dtype)) + "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i)
      j += (i ? "," : "") + std::to_string(t.shape[i]);
    j += "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + t.bytes.size()) +
         "]}";
    off += t.bytes.size();
  }
  return j + "}";
}

bool is_nan_bits(DType d, uint64_t b) {
  if (d == DType::F32)
    return (b & 0x7fffffff) > 0x7f800000;
  if (d == DType::BF16)
    return (b & 0x7fff) > 0x7f80;
  if (d == DType::F16)
    return (b & 0x7fff) > 0x7c00;
  return false;
}

} // namespace

// Writes `d` as `shards` safetensors files (round-robin by key) with an index when shards > 1.
void write_checkpoint(const fs::path& dir, const Dict& d, int shards,
                      const std::string& model_type) {
  fs::create_directories(dir);
  std::vector<Dict> parts(shards);
  int i = 0;
  for (auto& [k, t] : d)
    parts[i++ % shards][k] = t;
  std::string weight_map;
  for (int s = 0; s < shards; ++s) {
    std::vector<std::string> order;
    std::string json = header_json(parts[s], &order);
    while ((json.size() + 8) % 8)
      json += ' ';
    std::string data;
    for (auto& k : order)
      data += parts[s].at(k).bytes;
    std::string name =
        shards == 1 ? "model.safetensors" : "part-" + std::to_string(s) + ".safetensors";
    testing::write_bytes(dir / name, testing::raw_safetensors(json, data));
    for (auto& k : order)
      weight_map += std::string(weight_map.empty() ? "" : ",") + "\"" + k + "\":\"" + name + "\"";
  }
  if (shards > 1)
    testing::write_bytes(dir / "model.safetensors.index.json",
                         "{\"metadata\":{},\"weight_map\":{" + weight_map + "}}");
  if (model_type.empty())
    return;
  // A native qwen3_moe or deepseek_v3 checkpoint's config gives its experts' intermediate size,
  // as the model's own config.json does (without it the reference splits at a default).
  // (Native: down_projs [E, I, H]; Hugging Face: each expert's down_proj.weight [H, I].)
  std::string size;
  for (auto& [k, t] : d) {
    if (model_type != "qwen3_moe" && model_type != "deepseek_v3")
      break;
    const bool native = k.ends_with(".experts.down_projs") && t.shape.size() == 3;
    const bool hf = k.ends_with(".down_proj.weight") && k.find(".experts.") != std::string::npos &&
                    t.shape.size() == 2;
    if (native || hf) {
      size = ", \"moe_intermediate_size\": " + std::to_string(t.shape[1]);
      break;
    }
  }
  testing::write_bytes(dir / "config.json",
                       "{\"model_type\": \"" + model_type + "\"" + size + "}\n");
}

Dict read_checkpoint(const fs::path& dir) {
  auto ck = Checkpoint::open(dir);
  EXPECT_TRUE(ck.ok()) << ck.status().message();
  Dict d;
  if (!ck.ok())
    return d;
  for (auto& [name, ref] : ck->tensors) {
    const TensorInfo& info = ck->info(ref);
    auto b = ck->bytes(ref);
    d[name] = Tensor{info.dtype, info.shape,
                     std::string(reinterpret_cast<const char*>(b.data()), b.size())};
  }
  return d;
}

void expect_identical(const Dict& got, const Dict& want) {
  ASSERT_EQ(got.size(), want.size());
  for (auto& [name, w] : want) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << name;
    EXPECT_EQ(it->second.dtype, w.dtype) << name;
    EXPECT_EQ(it->second.shape, w.shape) << name;
    if (it->second.bytes == w.bytes)
      continue;
    const uint64_t n = numel(w.shape);
    for (uint64_t i = 0; i < n; ++i)
      if (get_bits(it->second, i) != get_bits(w, i)) {
        ADD_FAILURE() << name << ": element " << i << " is 0x" << std::hex
                      << get_bits(it->second, i) << ", expected 0x" << get_bits(w, i);
        break;
      }
  }
}

// Element-by-element comparison; any two NaNs are equal (semantics 1.1).
void expect_same(const Dict& got, const Dict& want) {
  std::vector<std::string> g, w;
  for (auto& [k, v] : got)
    g.push_back(k);
  for (auto& [k, v] : want)
    w.push_back(k);
  ASSERT_EQ(g, w);
  for (auto& [k, t] : want) {
    const Tensor& o = got.at(k);
    ASSERT_EQ(dtype_name(o.dtype), dtype_name(t.dtype)) << k;
    ASSERT_EQ(o.shape, t.shape) << k;
    ASSERT_EQ(o.bytes.size(), t.bytes.size()) << k;
    if (o.bytes == t.bytes)
      continue;
    uint64_t n = t.bytes.size() / esize(t.dtype), bad = 0;
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t a = get_bits(o, i), b = get_bits(t, i);
      if (a == b || (is_nan_bits(t.dtype, a) && is_nan_bits(t.dtype, b)))
        continue;
      if (++bad <= 5)
        ADD_FAILURE() << k << "[" << i << "]: got 0x" << std::hex << a << " want 0x" << b
                      << std::dec;
    }
    EXPECT_EQ(bad, 0u) << k;
  }
}

// Random tensor bytes; `special` mixes in infinities, NaNs, subnormals, signed zeros, huge values.
Tensor random_tensor(std::mt19937_64& rng, DType d, std::vector<uint64_t> shape, bool special) {
  Tensor t{d, shape, std::string(numel(shape) * esize(d), '\0')};
  std::normal_distribution<double> nd(0.0, 0.5);
  for (uint64_t i = 0; i < numel(shape); ++i) {
    uint64_t bits;
    if (special && rng() % 4 == 0) {
      switch (rng() % 8) {
      case 0:
        bits = encode(d, INFINITY);
        break;
      case 1:
        bits = encode(d, -INFINITY);
        break;
      case 2:
        bits = encode(d, NAN) | (rng() & 1 ? 0 : 0);
        break;
      case 3:
        bits = encode(d, -0.0);
        break;
      case 4:
        bits = rng() & (d == DType::F32 ? 0x807fffffull : d == DType::F16 ? 0x83ffull : 0x807full);
        break; // subnormal
      case 5:
        bits = encode(d, (rng() & 1 ? 1 : -1) * (d == DType::F16 ? 60000.0 : 3e38));
        break; // overflows when scaled
      case 6:
        bits = rng() & (d == DType::F32 ? 0xffffffffull : 0xffffull);
        break; // any pattern
      default:
        bits = encode(d, std::ldexp(1.0 + (rng() % 4) * 0.25, -(int)(rng() % 30)));
        break;
      }
    } else {
      bits = encode(d, nd(rng));
    }
    put_bits(t, i, bits);
  }
  return t;
}

// A diffusion_gemma HF checkpoint in miniature: L layers, E experts, hidden H, intermediate I.
Dict tiny_diffusion(std::mt19937_64& rng, int layers, uint64_t E, uint64_t H, uint64_t I,
                    DType expert, DType scale, bool special) {
  Dict d;
  d["model.decoder.embed_tokens.weight"] = random_tensor(rng, DType::BF16, {32, H});
  d["model.decoder.norm.weight"] = random_tensor(rng, DType::BF16, {H});
  d["model.decoder.self_conditioning.gate_proj.weight"] = random_tensor(rng, DType::BF16, {6, H});
  d["model.encoder.vision_tower.patch.weight"] = random_tensor(rng, DType::BF16, {4, 4});
  for (int l = 0; l < layers; ++l) {
    std::string p = "model.decoder.layers." + std::to_string(l) + ".";
    d[p + "self_attn.q_proj.weight"] = random_tensor(rng, DType::BF16, {8, H});
    d[p + "input_layernorm.weight"] = random_tensor(rng, DType::BF16, {H});
    d[p + "layer_scalar"] = random_tensor(rng, DType::BF16, {1});
    d[p + "router.proj.weight"] = random_tensor(rng, DType::BF16, {E, H});
    d[p + "router.scale"] = random_tensor(rng, DType::BF16, {H});
    d[p + "router.per_expert_scale"] = random_tensor(rng, scale, {E}, special);
    d[p + "experts.gate_up_proj"] = random_tensor(rng, expert, {E, 2 * I, H}, special);
    d[p + "experts.down_proj"] = random_tensor(rng, expert, {E, H, I}, special);
    d["model.encoder.language_model.layers." + std::to_string(l) + ".layer_scalar"] =
        random_tensor(rng, DType::BF16, {1});
  }
  return d;
}

Dict tiny_gemma4(std::mt19937_64& rng, int layers, uint64_t E, uint64_t H, uint64_t I,
                 bool model_prefix, const std::string& scale_at) {
  Dict d;
  std::string root = model_prefix ? "model.language_model." : "language_model.";
  d[root + "embed_tokens.weight"] = random_tensor(rng, DType::BF16, {16, H});
  d["lm_head.weight"] = random_tensor(rng, DType::BF16, {16, H});
  d[(model_prefix ? "model." : "") + std::string("vision_tower.proj.weight")] =
      random_tensor(rng, DType::BF16, {3, 5});
  for (int l = 0; l < layers; ++l) {
    std::string p = root + "layers." + std::to_string(l) + ".";
    d[p + "self_attn.q_proj.weight"] = random_tensor(rng, DType::BF16, {8, H});
    d[p + "router.proj.weight"] = random_tensor(rng, DType::BF16, {E, H});
    d[p + "router.scale"] = random_tensor(rng, DType::BF16, {H});
    if (!scale_at.empty())
      d[p + scale_at + ".per_expert_scale"] = random_tensor(rng, DType::BF16, {E});
    d[p + "experts.gate_up_proj"] = random_tensor(rng, DType::BF16, {E, 2 * I, H});
    d[p + "experts.down_proj"] = random_tensor(rng, DType::BF16, {E, H, I});
  }
  return d;
}

Dict tiny_qwen3(std::mt19937_64& rng, int layers, uint64_t E, uint64_t H, uint64_t I, DType expert,
                bool model_prefix, bool special) {
  Dict d;
  const std::string root = model_prefix ? "model." : "";
  d[root + "embed_tokens.weight"] = random_tensor(rng, DType::BF16, {16, H});
  d[root + "norm.weight"] = random_tensor(rng, DType::BF16, {H});
  d["lm_head.weight"] = random_tensor(rng, DType::BF16, {16, H});
  for (int l = 0; l < layers; ++l) {
    const std::string p = root + "layers." + std::to_string(l) + ".";
    d[p + "self_attn.q_proj.weight"] = random_tensor(rng, DType::BF16, {8, H});
    d[p + "self_attn.q_norm.weight"] = random_tensor(rng, DType::BF16, {4});
    d[p + "mlp.gate.weight"] = random_tensor(rng, DType::BF16, {E, H});
    for (uint64_t e = 0; e < E; ++e) {
      const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
      d[x + "gate_proj.weight"] = random_tensor(rng, expert, {I, H}, special);
      d[x + "up_proj.weight"] = random_tensor(rng, expert, {I, H}, special);
      d[x + "down_proj.weight"] = random_tensor(rng, expert, {H, I}, special);
    }
  }
  return d;
}

Tensor random_block_scales(std::mt19937_64& rng, uint64_t rows, uint64_t cols, bool special) {
  Tensor t{DType::F32, {(rows + 127) / 128, (cols + 127) / 128}, {}};
  t.bytes.assign(numel(t.shape) * 4, '\0');
  for (uint64_t i = 0; i < numel(t.shape); ++i) {
    double v = std::ldexp(1.0 + double(rng() % 1024) / 1024.0, -int(rng() % 16) - 6);
    if (special && rng() % 3 == 0) {
      const double picks[] = {std::ldexp(1.0, -140), 3e38, 0.0, -v, INFINITY, NAN, -0.0, 1.0};
      v = picks[rng() % 8];
    }
    put_bits(t, i, encode(DType::F32, v));
  }
  return t;
}

Dict tiny_deepseek(std::mt19937_64& rng, int layers, int dense, uint64_t E, uint64_t H,
                   uint64_t I, uint64_t D, uint64_t Q, DType fp8, bool special) {
  Dict d;
  auto weight = [&](const std::string& name, uint64_t rows, uint64_t cols) {
    Tensor w{fp8, {rows, cols}, std::string(rows * cols, '\0')};
    for (uint64_t i = 0; i < rows * cols; ++i) {
      uint8_t code = uint8_t(rng());
      if (!special && fp8 == DType::F8_E4M3 && (code & 0x7F) == 0x7F)
        code ^= 1; // no NaN
      if (!special && fp8 == DType::F8_E5M2 && (code & 0x7C) == 0x7C)
        code &= 0xF3; // no infinity or NaN
      w.bytes[i] = char(code);
    }
    d[name] = std::move(w);
    d[name + "_scale_inv"] = random_block_scales(rng, rows, cols, special);
  };
  d["model.embed_tokens.weight"] = random_tensor(rng, DType::BF16, {16, H});
  d["model.norm.weight"] = random_tensor(rng, DType::BF16, {H});
  d["lm_head.weight"] = random_tensor(rng, DType::BF16, {16, H});
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    d[p + "input_layernorm.weight"] = random_tensor(rng, DType::BF16, {H});
    weight(p + "self_attn.q_a_proj.weight", Q, H);
    d[p + "self_attn.q_a_layernorm.weight"] = random_tensor(rng, DType::BF16, {Q});
    weight(p + "self_attn.kv_a_proj_with_mqa.weight", 5, H);
    weight(p + "self_attn.o_proj.weight", H, Q);
    d[p + "post_attention_layernorm.weight"] = random_tensor(rng, DType::BF16, {H});
    if (l < dense) {
      weight(p + "mlp.gate_proj.weight", D, H);
      weight(p + "mlp.up_proj.weight", D, H);
      weight(p + "mlp.down_proj.weight", H, D);
      continue;
    }
    d[p + "mlp.gate.weight"] = random_tensor(rng, DType::BF16, {E, H});
    d[p + "mlp.gate.e_score_correction_bias"] = random_tensor(rng, DType::F32, {E});
    weight(p + "mlp.shared_experts.gate_proj.weight", I, H);
    weight(p + "mlp.shared_experts.up_proj.weight", I, H);
    weight(p + "mlp.shared_experts.down_proj.weight", H, I);
    for (uint64_t e = 0; e < E; ++e) {
      const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
      weight(x + "gate_proj.weight", I, H);
      weight(x + "up_proj.weight", I, H);
      weight(x + "down_proj.weight", H, I);
    }
  }
  return d;
}

} // namespace shardshift::reference
