// convert_reference.cpp: see convert_reference.h.
#include "reference/convert_reference.h"
#include "reference/numeric_reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <regex>

namespace shardshift::reference {

namespace {

std::string layer_of(const std::string& key) {
  static const std::regex L(R"((layers\.\d+))");
  std::smatch m;
  return std::regex_search(key, m, L) ? m[1].str() : "";
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

} // namespace

uint64_t numel(const std::vector<uint64_t>& s) {
  uint64_t n = 1;
  for (auto d : s)
    n *= d;
  return n;
}
unsigned esize(DType d) {
  return d == DType::F32                                           ? 4
         : d == DType::F64                                         ? 8
         : d == DType::U8 || d == DType::I8 || d == DType::F8_E4M3 ||
                 d == DType::F8_E5M2
             ? 1
             : 2;
}

uint64_t get_bits(const Tensor& t, uint64_t i) {
  uint64_t v = 0;
  std::memcpy(&v, t.bytes.data() + i * esize(t.dtype), esize(t.dtype));
  return v;
}
void put_bits(Tensor& t, uint64_t i, uint64_t v) {
  std::memcpy(t.bytes.data() + i * esize(t.dtype), &v, esize(t.dtype));
}

// Decodes a BF16/F16/F32 bit pattern to double, exactly.
double decode(DType d, uint64_t bits) {
  if (d == DType::F32 || d == DType::BF16) {
    uint32_t u = d == DType::F32 ? static_cast<uint32_t>(bits) : static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  // F16 by its definition: (-1)^s * 2^(e-15) * 1.m, or 2^-14 * 0.m for subnormals.
  int s = (bits >> 15) & 1, e = (bits >> 10) & 0x1f;
  int m = bits & 0x3ff;
  double v;
  if (e == 0)
    v = std::ldexp(m, -24);
  else if (e == 31)
    v = m ? NAN : INFINITY;
  else
    v = std::ldexp(1024 + m, e - 25);
  return s ? -v : v;
}

// Rounds a double to the nearest value of a binary format with `mant` explicit mantissa bits and
// minimum normal exponent `emin`, ties to even; returns the encoded bits. Overflow gives infinity.
uint64_t encode(DType d, double x) {
  const int mant = d == DType::F32 ? 23 : d == DType::BF16 ? 7 : 10;
  const int ebits = d == DType::F16 ? 5 : 8;
  const int bias = (1 << (ebits - 1)) - 1, emin = 1 - bias, emax = bias;
  const uint64_t sign = std::signbit(x) ? 1ull << (mant + ebits) : 0;
  const uint64_t exp_all = ((1ull << ebits) - 1) << mant;
  if (std::isnan(x))
    return sign | exp_all | (1ull << (mant - 1)); // canonical quiet NaN
  double a = std::fabs(x);
  if (std::isinf(a))
    return sign | exp_all;
  if (a == 0)
    return sign;
  int e;
  std::frexp(a, &e); // a = f * 2^e, f in [0.5, 1)
  int exp = std::max(e - 1, emin);
  double ulp = std::ldexp(1.0, exp - mant);
  double q = a / ulp;                      // exact: power-of-two scaling
  double fl = std::floor(q), rem = q - fl; // q has at most 53 bits: exact
  uint64_t n = static_cast<uint64_t>(fl);
  if (rem > 0.5 || (rem == 0.5 && (n & 1)))
    ++n;
  // n * ulp is the result; renormalise when the rounding carried into the next binade.
  if (n >> (mant + 1)) {
    n >>= 1;
    ++exp;
  }
  if (exp > emax)
    return sign | exp_all; // overflow to infinity
  if (n < (1ull << mant))
    return sign | n; // subnormal (exp == emin)
  return sign | (static_cast<uint64_t>(exp + bias) << mant) | (n - (1ull << mant));
}

DType promote(DType a, DType b) {
  if (a == b)
    return a;
  return DType::F32; // BF16 x F16, anything x F32 (the cases semantics.md lists)
}

// down.transpose(-2,-1) * scale[:, None, None], then .to(out): PyTorch's definition.
double product(DType p, double d, double s) {
  float f = static_cast<float>(d) * static_cast<float>(s); // float32 arithmetic, as PyTorch
  return p == DType::F32 ? f : decode(p, encode(p, f));
}

Tensor transpose_ref(const Tensor& in, const Tensor* scale, std::optional<DType> cast, uint64_t e0,
                     uint64_t ne, uint64_t c0, uint64_t nc) {
  const uint64_t A = in.shape[1], B = in.shape[2];
  DType p = scale ? promote(in.dtype, scale->dtype) : in.dtype;
  DType out_t = cast.value_or(p);
  Tensor out{out_t, {ne, nc, A}, std::string(ne * nc * A * esize(out_t), '\0')};
  for (uint64_t e = 0; e < ne; ++e)
    for (uint64_t j = 0; j < nc; ++j)
      for (uint64_t i = 0; i < A; ++i) {
        uint64_t src = (e0 + e) * A * B + i * B + (c0 + j), dst = (e * nc + j) * A + i;
        if (!scale && out_t == in.dtype) {
          put_bits(out, dst, get_bits(in, src));
          continue;
        }
        double v = decode(in.dtype, get_bits(in, src));
        if (scale)
          v = product(p, v, decode(scale->dtype, get_bits(*scale, e0 + e)));
        put_bits(out, dst, encode(out_t, v));
      }
  return out;
}

Tensor ones_ref(DType d, uint64_t n) {
  Tensor t{d, {n}, std::string(n * esize(d), '\0')};
  for (uint64_t i = 0; i < n; ++i)
    put_bits(t, i, encode(d, 1.0));
  return t;
}

std::pair<uint64_t, uint64_t> ref_ep_range(uint64_t e, uint64_t w, uint64_t r) {
  // Written from the formula in semantics 1.2.
  uint64_t base = e / w, rem = e % w;
  uint64_t start = r < rem ? r * (base + 1) : r * base + rem;
  uint64_t count = r < rem ? base + 1 : base;
  return {start, count};
}

// Written from semantics 14.7: a slice of the whole export, experts along axis 0, rows along
// axis 1; element by element, through get_bits/put_bits.
Dict ref_stacked_expert_parallel(const Dict& native, const RefOptions& o) {
  auto is_expert = [](const std::string& k) {
    for (const std::string end : {".mlp.experts.gate_and_up_projs", ".mlp.experts.down_projs"})
      if (k.size() >= end.size() && k.compare(k.size() - end.size(), end.size(), end) == 0)
        return true;
    return false;
  };
  Dict out;
  for (const auto& [name, t] : native) {
    if (!is_expert(name)) {
      out[name] = t;
      continue;
    }
    const uint64_t R = t.shape[1], C = t.shape[2];
    auto [e0, ne] = ref_ep_range(t.shape[0], o.ep_size, o.ep_rank);
    if (ne == 0) // the mixin skips every piece of a rank without experts: no stacked key
      continue;
    const uint64_t n = R / o.ep_shard_size, r0 = o.ep_shard_rank * n;
    Tensor s{t.dtype, {ne, n, C}, std::string(ne * n * C * esize(t.dtype), '\0')};
    for (uint64_t e = 0; e < ne; ++e)
      for (uint64_t r = 0; r < n; ++r)
        for (uint64_t c = 0; c < C; ++c)
          put_bits(s, (e * n + r) * C + c, get_bits(t, ((e0 + e) * R + r0 + r) * C + c));
    out[name] = std::move(s);
  }
  return out;
}

// diffusion_gemma / gemma4_moe, HF -> native (semantics 1 and 3).
Dict ref_from_hf(const Dict& in, bool diffusion, const RefOptions& o) {
  Dict out;
  std::map<std::string, const Tensor*> gate_up, down, scale;
  bool any_model = false;
  for (auto& [k, v] : in)
    any_model |= k.rfind("model.", 0) == 0;
  for (auto& [key, t] : in) {
    std::string k = key;
    if (diffusion) {
      if (k.rfind("model.encoder.", 0) == 0)
        continue;
      if (k.rfind("model.decoder.", 0) == 0)
        k = "model." + k.substr(14);
    }
    std::string L = layer_of(k);
    if (!L.empty() && ends_with(k, ".per_expert_scale"))
      scale[L] = &t;
    else if (!L.empty() && ends_with(k, ".gate_up_proj"))
      gate_up[L] = &t;
    else if (!L.empty() && ends_with(k, ".down_proj") && k.find("experts.") != std::string::npos)
      down[L] = &t;
    else if (!L.empty() && (ends_with(k, ".router.proj.weight") || ends_with(k, ".router.scale"))) {
      auto pos = k.rfind(".router.");
      out[k.substr(0, pos) + ".moe.gate." + k.substr(pos + 8)] = t;
    } else
      out[k] = t;
  }
  std::string prefix =
      diffusion ? "model." : (any_model ? "model.language_model." : "language_model.");
  for (auto& [L, g] : gate_up) {
    auto [e0, ne] = ref_ep_range(g->shape[0], o.ep_size, o.ep_rank);
    uint64_t n = g->shape[2] / o.ep_shard_size;
    out[prefix + L + ".moe.experts.gate_and_up_projs"] =
        transpose_ref(*g, nullptr, o.cast, e0, ne, o.ep_shard_rank * n, n);
  }
  for (auto& [L, d] : down) {
    auto [e0, ne] = ref_ep_range(d->shape[0], o.ep_size, o.ep_rank);
    uint64_t n = d->shape[2] / o.ep_shard_size;
    out[prefix + L + ".moe.experts.down_projs"] =
        transpose_ref(*d, scale.at(L), o.cast, e0, ne, o.ep_shard_rank * n, n);
  }
  bool lora = false;
  for (auto& [k, v] : in)
    lora |= k.find(".lora_") != std::string::npos;
  if (diffusion && o.tied_head && !in.count("lm_head.weight") && !lora)
    out["lm_head.weight"] = out.at("model.embed_tokens.weight");
  return out;
}

// Native -> HF (semantics 2 and 3).
Dict ref_to_hf(const Dict& in, bool diffusion, const RefOptions& o) {
  Dict out;
  bool any_model = false;
  for (auto& [k, v] : in)
    any_model |= k.rfind("model.", 0) == 0;
  std::string expert_prefix =
      diffusion ? "model.decoder." : (any_model ? "model.language_model." : "language_model.");
  for (auto& [k, t] : in) {
    std::string L = layer_of(k);
    if (diffusion && k == "lm_head.weight")
      continue;
    if (ends_with(k, ".moe.experts.gate_and_up_projs")) {
      out[expert_prefix + L + ".experts.gate_up_proj"] =
          transpose_ref(t, nullptr, o.cast, 0, t.shape[0], 0, t.shape[2]);
    } else if (ends_with(k, ".moe.experts.down_projs")) {
      Tensor d = transpose_ref(t, nullptr, o.cast, 0, t.shape[0], 0, t.shape[2]);
      out[expert_prefix + L + ".router.per_expert_scale"] = ones_ref(d.dtype, t.shape[0]);
      out[expert_prefix + L + ".experts.down_proj"] = std::move(d);
    } else {
      std::string name = k;
      auto pos = name.find(".moe.gate.");
      if (pos != std::string::npos)
        name = name.substr(0, pos) + ".router." + name.substr(pos + 10);
      if (diffusion && name.rfind("model.", 0) == 0)
        name = "model.decoder." + name.substr(6);
      out[name] = t;
    }
  }
  if (!o.exclude.empty()) {
    std::regex ex(o.exclude);
    for (auto it = out.begin(); it != out.end();)
      it = std::regex_search(it->first, ex, std::regex_constants::match_continuous) ? out.erase(it)
                                                                                    : std::next(it);
  }
  return out;
}

// qwen3_moe (semantics 14), written as plain element loops from the text.
namespace {

// Element (r, c) of a row-major 2-D tensor with `cols` columns, cast to `to` when given.
uint64_t elem(const Tensor& t, uint64_t index, std::optional<DType> to) {
  const uint64_t bits = get_bits(t, index);
  if (!to || *to == t.dtype)
    return bits;
  return encode(*to, decode(t.dtype, bits));
}

Tensor empty_tensor(DType d, std::vector<uint64_t> shape) {
  Tensor t;
  t.dtype = d;
  t.shape = std::move(shape);
  t.bytes.assign(numel(t.shape) * esize(d), '\0');
  return t;
}

} // namespace

Dict ref_qwen3_from_hf(const Dict& in, const RefOptions& o) {
  static const std::regex piece(
      R"(^((?:model\.)?(?:language_model\.)?layers\.\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$)");
  // layer path -> projection -> expert -> tensor
  std::map<std::string, std::map<std::string, std::map<uint64_t, const Tensor*>>> pieces;
  Dict out;
  uint64_t E = 0;
  for (auto& [k, t] : in) {
    std::smatch m;
    if (std::regex_match(k, m, piece)) {
      const uint64_t e = std::stoull(m[2].str());
      pieces[m[1].str()][m[3].str()][e] = &t;
      E = std::max(E, e + 1);
    } else {
      out[k] = t;
    }
  }
  for (auto& [layer, by_proj] : pieces) {
    if (by_proj.count("gate_proj")) {
      const Tensor& g0 = *by_proj["gate_proj"].at(0);
      const uint64_t I = g0.shape[0], H = g0.shape[1];
      const DType d = o.cast.value_or(g0.dtype);
      Tensor gu = empty_tensor(d, {E, H, 2 * I});
      for (uint64_t e = 0; e < E; ++e) {
        const Tensor& gate = *by_proj["gate_proj"].at(e);
        const Tensor& up = *by_proj["up_proj"].at(e);
        for (uint64_t h = 0; h < H; ++h)
          for (uint64_t j = 0; j < 2 * I; ++j) {
            const uint64_t v =
                j < I ? elem(gate, j * H + h, o.cast) : elem(up, (j - I) * H + h, o.cast);
            put_bits(gu, (e * H + h) * 2 * I + j, v);
          }
      }
      out[layer + ".mlp.experts.gate_and_up_projs"] = std::move(gu);
    }
    if (by_proj.count("down_proj")) {
      const Tensor& d0 = *by_proj["down_proj"].at(0);
      const uint64_t H = d0.shape[0], I = d0.shape[1];
      Tensor dn = empty_tensor(o.cast.value_or(d0.dtype), {E, I, H});
      for (uint64_t e = 0; e < E; ++e) {
        const Tensor& down = *by_proj["down_proj"].at(e);
        for (uint64_t i = 0; i < I; ++i)
          for (uint64_t h = 0; h < H; ++h)
            put_bits(dn, (e * I + i) * H + h, elem(down, h * I + i, o.cast));
      }
      out[layer + ".mlp.experts.down_projs"] = std::move(dn);
    }
  }
  return out;
}

Dict ref_qwen3_to_hf(const Dict& in, const RefOptions& o) {
  static const std::regex layer_re(R"(layers\.(\d+))");
  Dict out;
  for (auto& [k, t] : in) {
    const bool gate_up = ends_with(k, ".mlp.experts.gate_and_up_projs");
    const bool down = ends_with(k, ".mlp.experts.down_projs");
    std::smatch m;
    if (!(gate_up || down) || !std::regex_search(k, m, layer_re)) {
      out[k] = t;
      continue;
    }
    const std::string base = "model.layers." + m[1].str() + ".mlp.experts.";
    const uint64_t E = t.shape[0], R = t.shape[1], C = t.shape[2];
    const DType d = o.cast.value_or(t.dtype);
    if (gate_up) {
      const uint64_t I = C / 2, H = R;
      for (uint64_t e = 0; e < E; ++e) {
        Tensor gate = empty_tensor(d, {I, H}), up = empty_tensor(d, {I, H});
        for (uint64_t j = 0; j < I; ++j)
          for (uint64_t h = 0; h < H; ++h) {
            put_bits(gate, j * H + h, elem(t, (e * H + h) * C + j, o.cast));
            put_bits(up, j * H + h, elem(t, (e * H + h) * C + I + j, o.cast));
          }
        out[base + std::to_string(e) + ".gate_proj.weight"] = std::move(gate);
        out[base + std::to_string(e) + ".up_proj.weight"] = std::move(up);
      }
    } else {
      const uint64_t I = R, H = C;
      for (uint64_t e = 0; e < E; ++e) {
        Tensor dn = empty_tensor(d, {H, I});
        for (uint64_t h = 0; h < H; ++h)
          for (uint64_t i = 0; i < I; ++i)
            put_bits(dn, h * I + i, elem(t, (e * I + i) * H + h, o.cast));
        out[base + std::to_string(e) + ".down_proj.weight"] = std::move(dn);
      }
    }
  }
  if (!o.exclude.empty()) {
    std::regex ex(o.exclude);
    for (auto it = out.begin(); it != out.end();)
      it = std::regex_search(it->first, ex, std::regex_constants::match_continuous) ? out.erase(it)
                                                                                    : std::next(it);
  }
  return out;
}

// deepseek_v3 (semantics 15), from the text: dequantize what has a scale, then stack as qwen3_moe.
Tensor ref_dequant(const Tensor& weight, const Tensor& scale, DType to) {
  const uint64_t R = weight.shape[0], C = weight.shape[1];
  const uint64_t scale_cols = (C + 127) / 128;
  Tensor out = empty_tensor(to, {R, C});
  for (uint64_t r = 0; r < R; ++r)
    for (uint64_t c = 0; c < C; ++c)
      put_bits(out, r * C + c,
               ref_dequant_element(weight.dtype, get_bits(weight, r * C + c), scale.dtype,
                                   get_bits(scale, (r / 128) * scale_cols + c / 128), to));
  return out;
}

Dict ref_deepseek_from_hf(const Dict& in, const RefOptions& o) {
  const DType to = o.cast.value_or(DType::BF16);
  Dict plain;
  for (auto& [k, t] : in) {
    if (ends_with(k, "_scale_inv"))
      continue; // consumed by its weight
    auto scale = in.find(k + "_scale_inv");
    plain[k] = ends_with(k, ".weight") && scale != in.end() ? ref_dequant(t, scale->second, to) : t;
  }
  RefOptions stack = o;
  stack.cast = to; // stacked experts always in the adapter's dtype
  return ref_qwen3_from_hf(plain, stack);
}

Dict ref_deepseek_to_hf(const Dict& in, const RefOptions& o) {
  return ref_qwen3_to_hf(in, o);
}

Dict ref_with_base(const Dict& out, const Dict& base, const std::string& model) {
  Dict d = out;
  if (model == "diffusion_gemma")
    for (const auto& [name, t] : base)
      if (name.rfind("model.encoder.", 0) == 0)
        d[name] = t;
  return d;
}

} // namespace shardshift::reference
