// convert_test.cpp: whole conversions on small synthetic checkpoints, compared element by element
// with an independent reference written here: plain loops over in-memory tensors and scalar
// numerics that round through double precision (no code shared with the planner, the pipeline,
// numerics.h or the kernels).
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"

#include "test_support.h"

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <regex>
#include <set>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

// ---------------------------------------------------------------------------------------------
// The reference: tensors in memory, scalar numerics.

struct T {
  DType dtype = DType::BF16;
  std::vector<uint64_t> shape;
  std::string bytes;
};
using Dict = std::map<std::string, T>;

uint64_t numel(const std::vector<uint64_t>& s) {
  uint64_t n = 1;
  for (auto d : s)
    n *= d;
  return n;
}
unsigned esize(DType d) {
  return d == DType::F32 ? 4 : d == DType::F64 ? 8 : d == DType::U8 || d == DType::I8 ? 1 : 2;
}

uint64_t get_bits(const T& t, uint64_t i) {
  uint64_t v = 0;
  std::memcpy(&v, t.bytes.data() + i * esize(t.dtype), esize(t.dtype));
  return v;
}
void put_bits(T& t, uint64_t i, uint64_t v) {
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

T transpose_ref(const T& in, const T* scale, std::optional<DType> cast, uint64_t e0, uint64_t ne,
                uint64_t c0, uint64_t nc) {
  const uint64_t A = in.shape[1], B = in.shape[2];
  DType p = scale ? promote(in.dtype, scale->dtype) : in.dtype;
  DType out_t = cast.value_or(p);
  T out{out_t, {ne, nc, A}, std::string(ne * nc * A * esize(out_t), '\0')};
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

T ones_ref(DType d, uint64_t n) {
  T t{d, {n}, std::string(n * esize(d), '\0')};
  for (uint64_t i = 0; i < n; ++i)
    put_bits(t, i, encode(d, 1.0));
  return t;
}

struct RefOptions {
  std::optional<DType> cast;
  bool tied_head = true;
  std::string exclude = ".*_extra_state.*";
  uint64_t ep_size = 1, ep_rank = 0, ep_shard_size = 1, ep_shard_rank = 0;
};

std::pair<uint64_t, uint64_t> ref_ep_range(uint64_t e, uint64_t w, uint64_t r) {
  // Written from the formula in semantics 1.2.
  uint64_t base = e / w, rem = e % w;
  uint64_t start = r < rem ? r * (base + 1) : r * base + rem;
  uint64_t count = r < rem ? base + 1 : base;
  return {start, count};
}

std::string layer_of(const std::string& key) {
  static const std::regex L(R"((layers\.\d+))");
  std::smatch m;
  return std::regex_search(key, m, L) ? m[1].str() : "";
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// diffusion_gemma / gemma4_moe, HF -> native (semantics 1 and 3).
Dict ref_from_hf(const Dict& in, bool diffusion, const RefOptions& o) {
  Dict out;
  std::map<std::string, const T*> gate_up, down, scale;
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
      T d = transpose_ref(t, nullptr, o.cast, 0, t.shape[0], 0, t.shape[2]);
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

// ---------------------------------------------------------------------------------------------
// Building inputs and reading outputs.

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

// Writes `d` as `shards` safetensors files (round-robin by key) with an index when shards > 1.
void write_checkpoint(const fs::path& dir, const Dict& d, int shards = 1,
                      const std::string& model_type = "") {
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
  if (!model_type.empty())
    testing::write_bytes(dir / "config.json", "{\"model_type\": \"" + model_type + "\"}\n");
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
    d[name] =
        T{info.dtype, info.shape, std::string(reinterpret_cast<const char*>(b.data()), b.size())};
  }
  return d;
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

// Element-by-element comparison; any two NaNs are equal (semantics 1.1).
void expect_same(const Dict& got, const Dict& want) {
  std::vector<std::string> g, w;
  for (auto& [k, v] : got)
    g.push_back(k);
  for (auto& [k, v] : want)
    w.push_back(k);
  ASSERT_EQ(g, w);
  for (auto& [k, t] : want) {
    const T& o = got.at(k);
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
T random_tensor(std::mt19937_64& rng, DType d, std::vector<uint64_t> shape, bool special = false) {
  T t{d, shape, std::string(numel(shape) * esize(d), '\0')};
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
                    DType expert = DType::BF16, DType scale = DType::BF16, bool special = false) {
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
                 bool model_prefix, const std::string& scale_at = "router") {
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

Result<ConvertSummary> run(const fs::path& in, const fs::path& out, ConvertOptions o = {}) {
  o.input = in;
  o.output = out;
  o.device = "cpu";
  auto r = convert(o);
  if (!r.ok())
    std::cout << "[ convert ] " << r.status().message() << "\n";
  return r;
}

ConvertOptions opts(std::function<void(ConvertOptions&)> f) {
  ConvertOptions o;
  f(o);
  return o;
}

class ConvertTest : public ::testing::Test {
protected:
  void SetUp() override { rng.seed(testing::test_seed()); }
  std::mt19937_64 rng;
  TempDir tmp;
};

// ---------------------------------------------------------------------------------------------

TEST_F(ConvertTest, ReferenceRoundingMatchesHandPickedCases) {
  // The reference itself: exact ties go to even, overflow to infinity, subnormals kept.
  EXPECT_EQ(encode(DType::BF16, 1.0), 0x3F80u);
  EXPECT_EQ(encode(DType::BF16, 1.0 + std::ldexp(1, -8)), 0x3F80u);     // tie -> even (down)
  EXPECT_EQ(encode(DType::BF16, 1.0 + 3 * std::ldexp(1, -8)), 0x3F82u); // tie -> even (up)
  EXPECT_EQ(encode(DType::F16, 65520.0), 0x7C00u);                      // rounds to inf
  EXPECT_EQ(encode(DType::F16, 65504.0), 0x7BFFu);
  EXPECT_EQ(encode(DType::F16, std::ldexp(1, -24)), 0x0001u); // smallest subnormal
  EXPECT_EQ(encode(DType::F16, std::ldexp(1, -25)), 0x0000u); // tie -> even (zero)
  EXPECT_EQ(encode(DType::F16, -0.0), 0x8000u);
  EXPECT_EQ(decode(DType::F16, 0x3C00), 1.0);
}

TEST_F(ConvertTest, FromHfDiffusionMatchesReference) {
  Dict in = tiny_diffusion(rng, 2, 4, 16, 6);
  write_checkpoint(tmp / "hf", in, 2, "diffusion_gemma");
  auto r = run(tmp / "hf", tmp / "native");
  ASSERT_TRUE(r.ok()) << r.status().message();
  Dict got = read_checkpoint(tmp / "native");
  expect_same(got, ref_from_hf(in, true, {}));
  // Shapes: gate_and_up [E, H, 2I], down [E, I, H]; encoder keys dropped; the scale consumed.
  EXPECT_EQ(got.at("model.layers.0.moe.experts.gate_and_up_projs").shape,
            (std::vector<uint64_t>{4, 16, 12}));
  EXPECT_EQ(got.at("model.layers.1.moe.experts.down_projs").shape,
            (std::vector<uint64_t>{4, 6, 16}));
  EXPECT_EQ(got.count("model.layers.0.router.per_expert_scale"), 0u);
  EXPECT_EQ(got.at("lm_head.weight").bytes, in.at("model.decoder.embed_tokens.weight").bytes);
  EXPECT_EQ(r->dropped, 1u + 2u + 2u); // vision tower, 2 encoder layer_scalars, 2 scales
  EXPECT_TRUE(fs::exists(tmp / "native" / "config.json"));
}

TEST_F(ConvertTest, PlainFoldEqualsDirectMultiply) {
  // One expert layer, BF16 x BF16: down_projs[e][j][i] == bf16(float(down[e][i][j]) *
  // float(scale[e])).
  Dict in = tiny_diffusion(rng, 1, 3, 5, 4);
  write_checkpoint(tmp / "hf", in);
  ASSERT_TRUE(run(tmp / "hf", tmp / "n").ok());
  const Dict out = read_checkpoint(tmp / "n");
  const T& got = out.at("model.layers.0.moe.experts.down_projs");
  const T& down = in.at("model.decoder.layers.0.experts.down_proj");
  const T& scale = in.at("model.decoder.layers.0.router.per_expert_scale");
  for (uint64_t e = 0; e < 3; ++e)
    for (uint64_t j = 0; j < 4; ++j)
      for (uint64_t i = 0; i < 5; ++i) {
        float direct = static_cast<float>(decode(DType::BF16, get_bits(down, e * 20 + i * 4 + j))) *
                       static_cast<float>(decode(DType::BF16, get_bits(scale, e)));
        EXPECT_EQ(get_bits(got, e * 20 + j * 5 + i), encode(DType::BF16, direct))
            << e << "," << j << "," << i;
      }
}

TEST_F(ConvertTest, EveryDtypeCombinationWithSpecialValues) {
  const DType floats[] = {DType::BF16, DType::F16, DType::F32};
  const std::optional<DType> casts[] = {std::nullopt, DType::BF16, DType::F16, DType::F32};
  for (DType expert : floats)
    for (DType scale : floats)
      for (auto cast : casts) {
        SCOPED_TRACE(std::string(dtype_name(expert)) + " x " + std::string(dtype_name(scale)) +
                     " -> " + (cast ? std::string(dtype_name(*cast)) : "keep"));
        TempDir t;
        Dict in = tiny_diffusion(rng, 1, 3, 7, 5, expert, scale, /*special=*/true);
        write_checkpoint(t / "hf", in);
        RefOptions ro;
        ro.cast = cast;
        auto r =
            run(t / "hf", t / "n", opts([&](ConvertOptions& o) { o.plan.expert_dtype = cast; }));
        ASSERT_TRUE(r.ok()) << r.status().message();
        expect_same(read_checkpoint(t / "n"), ref_from_hf(in, true, ro));
      }
}

TEST_F(ConvertTest, NativeToHfToNativeIsBitExact) {
  Dict hf = tiny_diffusion(rng, 2, 4, 8, 3);
  write_checkpoint(tmp / "hf", hf);
  ASSERT_TRUE(run(tmp / "hf", tmp / "native").ok());
  ASSERT_TRUE(run(tmp / "native", tmp / "hf2").ok());
  ASSERT_TRUE(run(tmp / "hf2", tmp / "native2").ok());
  Dict native = read_checkpoint(tmp / "native");
  // The scales come back as ones, so folding again is exact: native -> HF -> native is the
  // identity.
  expect_same(read_checkpoint(tmp / "native2"), native);
  expect_same(read_checkpoint(tmp / "hf2"), ref_to_hf(native, true, {}));
}

TEST_F(ConvertTest, HfToNativeToHfKeepsTheFoldedProduct) {
  Dict hf = tiny_diffusion(rng, 1, 3, 6, 4);
  write_checkpoint(tmp / "hf", hf);
  ASSERT_TRUE(run(tmp / "hf", tmp / "native").ok());
  ASSERT_TRUE(run(tmp / "native", tmp / "hf2").ok());
  Dict back = read_checkpoint(tmp / "hf2");
  // down_proj comes back holding down * scale, and per_expert_scale comes back as ones.
  const T& down = hf.at("model.decoder.layers.0.experts.down_proj");
  const T& scale = hf.at("model.decoder.layers.0.router.per_expert_scale");
  const T& got = back.at("model.decoder.layers.0.experts.down_proj");
  ASSERT_EQ(got.shape, down.shape);
  for (uint64_t i = 0; i < numel(down.shape); ++i) {
    uint64_t e = i / (6 * 4);
    double want = product(DType::BF16, decode(DType::BF16, get_bits(down, i)),
                          decode(DType::BF16, get_bits(scale, e)));
    EXPECT_EQ(get_bits(got, i), encode(DType::BF16, want)) << i;
  }
  expect_same({{"s", back.at("model.decoder.layers.0.router.per_expert_scale")}},
              {{"s", ones_ref(DType::BF16, 3)}});
  EXPECT_EQ(back.at("model.decoder.layers.0.experts.gate_up_proj").bytes,
            hf.at("model.decoder.layers.0.experts.gate_up_proj").bytes);
  EXPECT_EQ(back.count("lm_head.weight"), 0u);
  EXPECT_EQ(back.count("model.encoder.language_model.layers.0.layer_scalar"), 0u);
}

TEST_F(ConvertTest, LoraOnlyInputGetsNoTiedHead) {
  Dict in;
  in["model.decoder.layers.0.self_attn.q_proj.lora_A.weight"] =
      random_tensor(rng, DType::BF16, {2, 8});
  in["model.decoder.layers.0.self_attn.q_proj.lora_B.weight"] =
      random_tensor(rng, DType::BF16, {8, 2});
  write_checkpoint(tmp / "hf", in, 1, "diffusion_gemma");
  auto r = run(tmp / "hf", tmp / "n",
               opts([](ConvertOptions& o) { o.plan.direction = Direction::from_hf; }));
  ASSERT_TRUE(r.ok()) << r.status().message();
  Dict got = read_checkpoint(tmp / "n");
  EXPECT_EQ(got.count("lm_head.weight"), 0u);
  expect_same(got, ref_from_hf(in, true, {}));
  EXPECT_EQ(got.count("model.layers.0.self_attn.q_proj.lora_A.weight"), 1u);
}

TEST_F(ConvertTest, ExplicitLmHeadPassesThrough) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  in["lm_head.weight"] = random_tensor(rng, DType::BF16, {32, 4});
  write_checkpoint(tmp / "hf", in);
  ASSERT_TRUE(run(tmp / "hf", tmp / "n").ok());
  Dict got = read_checkpoint(tmp / "n");
  EXPECT_EQ(got.at("lm_head.weight").bytes, in.at("lm_head.weight").bytes);
  expect_same(got, ref_from_hf(in, true, {}));
}

TEST_F(ConvertTest, NoTiedHeadFlagOmitsTheHead) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  write_checkpoint(tmp / "hf", in);
  ASSERT_TRUE(
      run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.plan.tied_head = false; })).ok());
  RefOptions ro;
  ro.tied_head = false;
  expect_same(read_checkpoint(tmp / "n"), ref_from_hf(in, true, ro));
}

TEST_F(ConvertTest, MissingEmbeddingIsAnError) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  in.erase("model.decoder.embed_tokens.weight");
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::plan);
  EXPECT_NE(r.status().message().find("model.embed_tokens.weight"), std::string::npos)
      << r.status().message();
  EXPECT_FALSE(fs::exists(tmp / "n"));
  EXPECT_EQ(testing::list_dir(tmp.path()), std::vector<std::string>{"hf"}); // no staging left
}

TEST_F(ConvertTest, MissingExpertPiecesAreAllReported) {
  Dict in = tiny_diffusion(rng, 3, 2, 4, 2);
  in.erase("model.decoder.layers.0.experts.down_proj");
  in.erase("model.decoder.layers.2.router.per_expert_scale");
  in.erase("model.decoder.layers.2.experts.gate_up_proj");
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("layers.0: incomplete expert weights: missing down_proj"), std::string::npos)
      << m;
  EXPECT_NE(m.find("layers.2: incomplete expert weights: missing gate_up_proj, per_expert_scale"),
            std::string::npos)
      << m;
  EXPECT_EQ(m.find("layers.1:"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

TEST_F(ConvertTest, ShapeDisagreementsAreReportedBeforeWriting) {
  Dict in = tiny_diffusion(rng, 1, 4, 8, 2);
  in["model.decoder.layers.0.router.per_expert_scale"] = random_tensor(rng, DType::BF16, {3});
  in["model.decoder.layers.0.experts.down_proj"] = random_tensor(rng, DType::BF16, {4, 9, 2});
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("has 3 scales but the layer has 4 experts"),
            std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("hidden size disagrees"), std::string::npos)
      << r.status().message();
}

TEST_F(ConvertTest, IntegerExpertsCannotBeFolded) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  T& down = in["model.decoder.layers.0.experts.down_proj"];
  down = T{DType::I8, down.shape, std::string(numel(down.shape), '\1')};
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("model.decoder.layers.0.experts.down_proj"),
            std::string::npos)
      << r.status().message();
}

TEST_F(ConvertTest, ExpertParallelSliceMatchesReference) {
  // E = 8 over 4 ranks: rank 1 keeps experts [2, 4); second sharding: rank 1 of 2 along axis 1.
  Dict in = tiny_diffusion(rng, 1, 8, 6, 4);
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) {
                 o.plan.ep_size = 4;
                 o.plan.ep_rank = 1;
                 o.plan.ep_shard_size = 2;
                 o.plan.ep_shard_rank = 1;
               }));
  ASSERT_TRUE(r.ok()) << r.status().message();
  RefOptions ro;
  ro.ep_size = 4;
  ro.ep_rank = 1;
  ro.ep_shard_size = 2;
  ro.ep_shard_rank = 1;
  Dict got = read_checkpoint(tmp / "n");
  expect_same(got, ref_from_hf(in, true, ro));
  EXPECT_EQ(got.at("model.layers.0.moe.experts.gate_and_up_projs").shape,
            (std::vector<uint64_t>{2, 3, 8}));
  EXPECT_EQ(got.at("model.layers.0.moe.experts.down_projs").shape,
            (std::vector<uint64_t>{2, 2, 6}));
  // Expert 2's first kept row is input column 3 of expert 2 (H / 2 * rank).
  const T& gu = in.at("model.decoder.layers.0.experts.gate_up_proj");
  EXPECT_EQ(get_bits(got.at("model.layers.0.moe.experts.gate_and_up_projs"), 0),
            get_bits(gu, 2 * 8 * 6 + 3));
}

TEST_F(ConvertTest, ExpertParallelRangesWithRemainderCoverAllExperts) {
  Dict in = tiny_diffusion(rng, 1, 128, 2, 1);
  write_checkpoint(tmp / "hf", in);
  auto ck = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(ck.ok());
  for (unsigned w : {3u, 5u, 6u}) {
    uint64_t next = 0;
    for (unsigned rank = 0; rank < w; ++rank) {
      PlanOptions po;
      po.ep_size = w;
      po.ep_rank = rank;
      auto plan = make_plan(*ck, po);
      ASSERT_TRUE(plan.ok()) << plan.status().message();
      for (const OutputTensor& t : plan->tensors)
        if (t.name == "model.layers.0.moe.experts.down_projs") {
          auto [start, count] = ref_ep_range(128, w, rank);
          EXPECT_EQ(t.expert_begin, start) << "W=" << w << " r=" << rank;
          EXPECT_EQ(t.experts, count) << "W=" << w << " r=" << rank;
          EXPECT_EQ(t.expert_begin, next);
          EXPECT_TRUE(t.experts == 128 / w || t.experts == 128 / w + 1);
          next = t.expert_begin + t.experts;
        }
    }
    EXPECT_EQ(next, 128u) << "W=" << w;
  }
}

TEST_F(ConvertTest, UnevenSecondShardingIsRefused) {
  Dict in = tiny_diffusion(rng, 1, 4, 5, 2);
  write_checkpoint(tmp / "hf", in);
  auto r = run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.plan.ep_shard_size = 2; }));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("does not split evenly"), std::string::npos)
      << r.status().message();
}

TEST_F(ConvertTest, ExclusionPatternRemovesKeysLast) {
  Dict native = ref_from_hf(tiny_diffusion(rng, 1, 2, 4, 2), true, {});
  native["model.layers.0.mlp._extra_state"] = random_tensor(rng, DType::U8, {4});
  native["model.norm.weight"] = random_tensor(rng, DType::BF16, {4});
  write_checkpoint(tmp / "native", native);
  ASSERT_TRUE(run(tmp / "native", tmp / "hf").ok());
  expect_same(read_checkpoint(tmp / "hf"), ref_to_hf(native, true, {}));
  EXPECT_EQ(read_checkpoint(tmp / "hf").count("model.decoder.layers.0.mlp._extra_state"), 0u);
  // A custom pattern, matched at the start of the HF key like re.match.
  RefOptions ro;
  ro.exclude = "model\\.decoder\\.layers\\.0\\.router";
  ASSERT_TRUE(run(tmp / "native", tmp / "hf2",
                  opts([&](ConvertOptions& o) { o.plan.exclude = ro.exclude; }))
                  .ok());
  Dict got = read_checkpoint(tmp / "hf2");
  expect_same(got, ref_to_hf(native, true, ro));
  EXPECT_EQ(got.count("model.decoder.layers.0.router.per_expert_scale"), 0u);
  EXPECT_EQ(got.count("model.decoder.layers.0.mlp._extra_state"), 1u);
  // Not anchored at the end: "router" alone matches nothing at the start of any key.
  ro.exclude = "router";
  ASSERT_TRUE(run(tmp / "native", tmp / "hf3",
                  opts([&](ConvertOptions& o) { o.plan.exclude = ro.exclude; }))
                  .ok());
  EXPECT_EQ(read_checkpoint(tmp / "hf3").size(), ref_to_hf(native, true, ro).size());
}

TEST_F(ConvertTest, Gemma4BothDirectionsWithAndWithoutModelPrefix) {
  for (bool prefix : {true, false})
    for (std::string scale_at : {"router", "moe", "experts"}) {
      SCOPED_TRACE((prefix ? "model. prefix, scale at " : "unprefixed, scale at ") + scale_at);
      TempDir t;
      Dict in = tiny_gemma4(rng, 2, 4, 6, 3, prefix, scale_at);
      write_checkpoint(t / "hf", in, 2, "gemma4");
      auto r = run(t / "hf", t / "n");
      ASSERT_TRUE(r.ok()) << r.status().message();
      Dict native = read_checkpoint(t / "n");
      expect_same(native, ref_from_hf(in, false, {}));
      std::string root = prefix ? "model.language_model." : "language_model.";
      EXPECT_EQ(native.count(root + "layers.1.moe.experts.down_projs"), 1u);
      EXPECT_EQ(native.count(root + "layers.1.moe.gate.proj.weight"), 1u);
      EXPECT_EQ(native.count("lm_head.weight"), 1u);
      ASSERT_TRUE(run(t / "n", t / "hf2").ok());
      expect_same(read_checkpoint(t / "hf2"), ref_to_hf(native, false, {}));
    }
}

TEST_F(ConvertTest, Gemma4MissingScaleNamesTheLayer) {
  Dict in = tiny_gemma4(rng, 2, 4, 6, 3, true, "router");
  in.erase("model.language_model.layers.1.router.per_expert_scale");
  write_checkpoint(tmp / "hf", in, 1, "gemma4");
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(
      r.status().message().find("layers.1: incomplete expert weights: missing per_expert_scale"),
      std::string::npos)
      << r.status().message();
}

TEST_F(ConvertTest, ToHfRejectsGateKeysWithoutModelPrefix) {
  Dict native = ref_from_hf(tiny_diffusion(rng, 1, 2, 4, 2), true, {});
  native["decoder.layers.3.moe.gate.scale"] = random_tensor(rng, DType::BF16, {4});
  write_checkpoint(tmp / "native", native);
  auto r = run(tmp / "native", tmp / "hf", opts([](ConvertOptions& o) {
                 o.plan.adapter = "diffusion_gemma";
                 o.plan.direction = Direction::to_hf;
               }));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("decoder.layers.3.moe.gate.scale"), std::string::npos)
      << r.status().message();
}

TEST_F(ConvertTest, OutputIsByteIdenticalAcrossThreadsAndMemoryBudgets) {
  // One expert's output is 256 x 320 x 2 = 160 KiB: the smallest budgets cut single experts into
  // row ranges, the middle ones group a few experts, 1 GiB takes whole tensors.
  Dict in = tiny_diffusion(rng, 2, 8, 256, 160);
  write_checkpoint(tmp / "hf", in, 3);
  const uint64_t expert_out = 256 * 320 * 2;
  std::string reference;
  std::set<uint64_t> chunk_sizes;
  int n = 0;
  for (unsigned threads : {1u, 2u, 4u})
    for (uint64_t mem : {uint64_t{1} << 20, uint64_t{3} << 20, uint64_t{1} << 30}) {
      fs::path out = tmp / ("o" + std::to_string(n++));
      auto r = run(tmp / "hf", out, opts([&](ConvertOptions& o) {
                     o.threads = threads;
                     o.max_memory = mem;
                     o.plan.max_shard_size = 2'000'000;
                   }));
      ASSERT_TRUE(r.ok()) << r.status().message();
      chunk_sizes.insert(r->chunk_bytes);
      std::string all;
      for (auto& name : testing::list_dir(out))
        all += name + ":" + testing::read_bytes(out / name);
      if (reference.empty())
        reference = all;
      else
        EXPECT_TRUE(all == reference) << "threads=" << threads << " max_memory=" << mem;
    }
  EXPECT_GE(chunk_sizes.size(), 4u);
  EXPECT_LT(*chunk_sizes.begin(), expert_out);      // some run split single experts
  EXPECT_GT(*chunk_sizes.rbegin(), 8 * expert_out); // some run took whole tensors
  expect_same(read_checkpoint(tmp / "o0"), ref_from_hf(in, true, {}));
}

TEST_F(ConvertTest, ExistingOutputNeedsForce) {
  Dict in = tiny_diffusion(rng, 1, 2, 4, 2);
  write_checkpoint(tmp / "hf", in);
  fs::create_directories(tmp / "n");
  testing::write_bytes(tmp / "n" / "old.txt", "old");
  auto r = run(tmp / "hf", tmp / "n");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::invalid_argument);
  EXPECT_TRUE(fs::exists(tmp / "n" / "old.txt"));
  ASSERT_TRUE(run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.force = true; })).ok());
  EXPECT_FALSE(fs::exists(tmp / "n" / "old.txt"));
  expect_same(read_checkpoint(tmp / "n"), ref_from_hf(in, true, {}));
}

TEST_F(ConvertTest, CancelledRunLeavesNothing) {
  Dict in = tiny_diffusion(rng, 2, 4, 8, 4);
  write_checkpoint(tmp / "hf", in);
  std::atomic<bool> cancel{true};
  auto r = run(tmp / "hf", tmp / "n", opts([&](ConvertOptions& o) { o.cancel = &cancel; }));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::interrupted);
  EXPECT_EQ(testing::list_dir(tmp.path()), std::vector<std::string>{"hf"});
}

// Counts fsync calls and passes everything to the kernel.
class CountingIo : public Io {
public:
  int fsync(int fd) override {
    ++syncs;
    return Io::fsync(fd);
  }
  int syncs = 0;
};

TEST_F(ConvertTest, NoSyncSkipsFsyncButStillCommitsByRename) {
  Dict in = tiny_diffusion(rng, 2, 2, 4, 2);
  write_checkpoint(tmp / "hf", in, 1, "diffusion_gemma");
  CountingIo synced, unsynced;
  ASSERT_TRUE(run(tmp / "hf", tmp / "a", opts([&](ConvertOptions& o) { o.io = &synced; })).ok());
  ASSERT_TRUE(run(tmp / "hf", tmp / "b", opts([&](ConvertOptions& o) {
                    o.io = &unsynced;
                    o.sync = false;
                  }))
                  .ok());
  EXPECT_GE(synced.syncs, 3); // the shard, config.json, the directories
  EXPECT_EQ(unsynced.syncs, 0);
  expect_same(read_checkpoint(tmp / "b"), read_checkpoint(tmp / "a"));
}

TEST_F(ConvertTest, ShardsFollowTheSizeLimitAndIndexIsConsistent) {
  Dict in = tiny_diffusion(rng, 4, 4, 16, 8);
  write_checkpoint(tmp / "hf", in, 1, "diffusion_gemma");
  auto r =
      run(tmp / "hf", tmp / "n", opts([](ConvertOptions& o) { o.plan.max_shard_size = 3000; }));
  ASSERT_TRUE(r.ok()) << r.status().message();
  auto files = testing::list_dir(tmp / "n");
  ASSERT_GT(r->files, 2u);
  EXPECT_EQ(files.front(), "config.json");
  EXPECT_NE(std::find(files.begin(), files.end(), "model.safetensors.index.json"), files.end());
  char last[64];
  std::snprintf(last, sizeof last, "model-%05llu-of-%05llu.safetensors",
                (unsigned long long)r->files, (unsigned long long)r->files);
  EXPECT_NE(std::find(files.begin(), files.end(), last), files.end());
  // Checkpoint::open cross-checks the index against every shard header.
  expect_same(read_checkpoint(tmp / "n"), ref_from_hf(in, true, {}));
  std::string index = testing::read_bytes(tmp / "n" / "model.safetensors.index.json");
  EXPECT_EQ(index.rfind("{\n  \"metadata\": {\n    \"total_size\": ", 0), 0u) << index;
}

} // namespace
} // namespace shardshift
