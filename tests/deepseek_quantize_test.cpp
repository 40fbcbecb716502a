// deepseek_quantize_test.cpp: deepseek_v3 to_hf --quantize fp8 (docs/semantics.md 15.7) against
// the independent reference (tests/reference/quantize_reference.h): the output bit for bit and
// key for key, the round trip HF (FP8) -> native -> HF (FP8) -> native within FP8 precision
// element by element, the bytes across -j, --writers and --max-memory, and the refusals.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/synth.h"

#include "convert_harness.h"
#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "reference/numeric_reference.h"
#include "reference/quantize_reference.h"
#include "test_support.h"

#include <cmath>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::files_of;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Names, dtypes and shapes, without the bytes.
std::map<std::string, std::pair<DType, std::vector<uint64_t>>> inventory(const Dict& d) {
  std::map<std::string, std::pair<DType, std::vector<uint64_t>>> out;
  for (auto& [name, t] : d)
    out[name] = {t.dtype, t.shape};
  return out;
}

ConvertOptions quantize(std::function<void(ConvertOptions&)> more = {}) {
  ConvertOptions o;
  o.plan.quantize_fp8 = true;
  o.force = true;
  if (more)
    more(o);
  return o;
}

TEST_F(ConvertTest, DeepseekQuantizeMatchesTheReferenceForEveryNativeDtype) {
  // H 260, I 136, dense I 140: partial blocks on both axes of every weight.
  const Dict hf = tiny_deepseek(rng, 2, 1, 3, 260, 136, 140, 24);
  for (DType d : {DType::BF16, DType::F16, DType::F32}) {
    SCOPED_TRACE(std::string("native ") + std::string(dtype_name(d)));
    RefOptions cast;
    cast.cast = d;
    Dict native = ref_deepseek_from_hf(hf, cast);
    native["model.layers.1.self_attn._extra_state"] = random_tensor(rng, DType::U8, {4});
    write_checkpoint(tmp / "native", native, 2, "deepseek_v3");
    ASSERT_TRUE(run(tmp / "native", tmp / "hf", quantize()).ok());
    const Dict got = read_checkpoint(tmp / "hf");
    expect_identical(got, ref_deepseek_to_hf_fp8(native, {}));
    // The key inventory of the FP8 checkpoint the native one came from: every weight it had in
    // F8_E4M3 with its scale, everything else as it was.
    EXPECT_EQ(inventory(got), inventory(hf));
  }
  // --exclude applies before quantization (as the reference): an excluded weight takes its scale
  // with it, and a pattern that would match only the scale's name does not remove it.
  const Dict native = ref_deepseek_from_hf(hf, {});
  write_checkpoint(tmp / "native1", native, 1, "deepseek_v3");
  for (std::string exclude :
       {std::string(R"(model\.layers\.0\.self_attn\.o_proj)"), std::string(".*_scale_inv")}) {
    SCOPED_TRACE("--exclude " + exclude);
    ASSERT_TRUE(run(tmp / "native1", tmp / "hf",
                    quantize([&](ConvertOptions& o) { o.plan.exclude = exclude; }))
                    .ok());
    RefOptions ro;
    ro.exclude = exclude;
    expect_identical(read_checkpoint(tmp / "hf"), ref_deepseek_to_hf_fp8(native, ro));
  }
}

// The block scale of element (r, c) of the HF weight `key` in the quantized checkpoint.
double scale_at(const Dict& q, const std::string& key, uint64_t r, uint64_t c) {
  const Tensor& s = q.at(key + "_scale_inv");
  return ref_decode(DType::F32, get_bits(s, (r / 128) * s.shape[1] + c / 128));
}

struct Closeness {
  uint64_t checked = 0, exact = 0;
};

// |got - x| within half an E4M3 step at |x| / s, at the scale s, plus the float32 roundings of
// the quotient and of the product (2^-24 relative each, 2^-22 allowed); exact when x / s is an
// E4M3 value.
// The 127 finite E4M3 magnitudes, from the reference's decoding of each code.
const std::set<double>& e4m3_values() {
  static const std::set<double> values = [] {
    std::set<double> v;
    for (unsigned c = 0; c <= 0x7E; ++c)
      v.insert(ref_fp8_decode(DType::F8_E4M3, uint8_t(c)));
    return v;
  }();
  return values;
}

void expect_close(double got, double x, double s, const std::string& where, Closeness& n) {
  ++n.checked;
  // x / s in double is exact whenever it is an E4M3 value (4 significant bits).
  const double y = std::fabs(x) / s;
  if (e4m3_values().count(y) && y * s == std::fabs(x)) {
    ++n.exact;
    if (got != x || std::signbit(got) != std::signbit(x))
      ADD_FAILURE() << where << ": " << got << " should be exactly " << x << " (scale " << s << ")";
    return;
  }
  const double y_up = y * (1 + std::ldexp(1.0, -20));
  const double step =
      y_up < std::ldexp(1.0, -6) ? std::ldexp(1.0, -9) : std::ldexp(1.0, std::ilogb(y_up) - 3);
  const double bound =
      step / 2 * s + std::ldexp(std::fabs(x) + std::fabs(got), -22) + std::ldexp(1.0, -149);
  if (!(std::fabs(got - x) <= bound))
    ADD_FAILURE() << where << ": " << got << " is " << std::fabs(got - x) << " from " << x
                  << ", more than " << bound << " (scale " << s << ")";
}

TEST_F(ConvertTest, DeepseekQuantizeRoundTripIsWithinFp8Precision) {
  // synth's DeepSeek-V3 at 1/16 (H 448, 16 experts of I 128, dense I 1152, the MTP layer 4) ->
  // native in each dtype -> HF FP8 (--quantize fp8) -> native F32.
  SynthOptions so;
  so.out = tmp / "hf0";
  so.model = "deepseek_v3";
  so.layers = 4;
  so.scale_hidden = so.scale_experts = so.scale_vocab = so.scale_intermediate = 16;
  so.max_shard_size = 3'000'000;
  ASSERT_TRUE(synth(so, Io::system(), {}).ok());
  const Dict hf0 = read_checkpoint(tmp / "hf0");
  for (std::optional<DType> d :
       {std::optional<DType>(), std::optional(DType::F16), std::optional(DType::F32)}) {
    SCOPED_TRACE(std::string("native ") + (d ? std::string(dtype_name(*d)) : "keep (BF16)"));
    ASSERT_TRUE(run(tmp / "hf0", tmp / "native", opts([&](ConvertOptions& o) {
                      o.plan.expert_dtype = d;
                      o.force = true;
                    }))
                    .ok());
    ASSERT_TRUE(run(tmp / "native", tmp / "hf1", quantize()).ok());
    const Dict native = read_checkpoint(tmp / "native");
    const Dict q = read_checkpoint(tmp / "hf1");
    EXPECT_EQ(inventory(q), inventory(hf0));
    ASSERT_TRUE(run(tmp / "hf1", tmp / "again", opts([&](ConvertOptions& o) {
                      o.plan.expert_dtype = DType::F32;
                      o.force = true;
                    }))
                    .ok());
    const Dict again = read_checkpoint(tmp / "again");
    ASSERT_EQ(inventory(again).size(), inventory(native).size());
    Closeness n;
    for (auto& [key, x] : native) {
      ASSERT_TRUE(again.count(key)) << key;
      const Tensor& g = again.at(key);
      auto value = [](const Tensor& t, uint64_t i) { return ref_decode(t.dtype, get_bits(t, i)); };
      const std::string layer = key.substr(0, key.find(".mlp.experts.") + 1); // "model.layers.L."
      if (key.ends_with(".mlp.experts.gate_and_up_projs")) {
        const uint64_t E = x.shape[0], H = x.shape[1], I = x.shape[2] / 2;
        for (uint64_t e = 0; e < E; ++e)
          for (uint64_t h = 0; h < H; ++h)
            for (uint64_t j = 0; j < 2 * I; ++j) {
              const std::string w = layer + "mlp.experts." + std::to_string(e) +
                                    (j < I ? ".gate_proj.weight" : ".up_proj.weight");
              const uint64_t i = (e * H + h) * 2 * I + j;
              expect_close(value(g, i), value(x, i), scale_at(q, w, j % I, h), key, n);
            }
      } else if (key.ends_with(".mlp.experts.down_projs")) {
        const uint64_t E = x.shape[0], I = x.shape[1], H = x.shape[2];
        for (uint64_t e = 0; e < E; ++e)
          for (uint64_t i = 0; i < I; ++i)
            for (uint64_t h = 0; h < H; ++h) {
              const std::string w =
                  layer + "mlp.experts." + std::to_string(e) + ".down_proj.weight";
              const uint64_t k = (e * I + i) * H + h;
              expect_close(value(g, k), value(x, k), scale_at(q, w, h, i), key, n);
            }
      } else if (q.count(key + "_scale_inv")) {
        for (uint64_t k = 0; k < numel(x.shape); ++k)
          expect_close(value(g, k), value(x, k), scale_at(q, key, k / x.shape[1], k % x.shape[1]),
                       key, n);
      } else {
        // Not quantized: passed through both ways, byte for byte.
        EXPECT_EQ(g.dtype, x.dtype) << key;
        EXPECT_TRUE(g.bytes == x.bytes) << key;
      }
      if (HasFailure())
        return;
    }
    std::cout << "[ round trip ] " << n.checked << " quantized values checked, " << n.exact
              << " exact\n";
    EXPECT_GT(n.checked, 1'000'000u);
    EXPECT_GT(n.exact, 0u);
  }
}

TEST_F(ConvertTest, DeepseekQuantizeBytesAreTheSameForEveryThreadsWritersAndBudget) {
  // H 260, I 300: one expert's quantized matrix is [300, 260] (three 128-row block rows, the last
  // partial); the 64 KiB chunk of the 256 KiB budget cuts the dense [300, 260] F32 weight into
  // row chunks that are not whole blocks.
  const Dict hf = tiny_deepseek(rng, 2, 1, 3, 260, 300, 300, 136);
  RefOptions f32;
  f32.cast = DType::F32;
  const Dict native = ref_deepseek_from_hf(hf, f32);
  write_checkpoint(tmp / "native", native, 3, "deepseek_v3");
  const Dict want = ref_deepseek_to_hf_fp8(native, {});
  expect_same_files_for_every_setting(
      tmp / "native", tmp / "hf",
      quantize([](ConvertOptions& o) { o.plan.max_shard_size = 400'000; }),
      {{1, 1, 256 << 10}, {2, 1, 1 << 20}, {2, 3, 2 << 20}, {1, 3, 64 << 20}, {2, 2, 256 << 20}});
  expect_identical(read_checkpoint(tmp / "hf"), want);
}

TEST_F(ConvertTest, DeepseekQuantizeRefusesWhatItCannotDo) {
  const Dict hf = tiny_deepseek(rng, 2, 1, 3, 140, 36, 40, 24);
  write_checkpoint(tmp / "hf", hf, 1, "deepseek_v3");
  // Not to_hf, not with --dtype, not another family: usage errors.
  auto r = run(tmp / "hf", tmp / "x", quantize());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::invalid_argument);
  EXPECT_TRUE(contains(r.status().message(), "--quantize fp8 applies to deepseek_v3 to_hf only"))
      << r.status().message();
  Dict native = ref_deepseek_from_hf(hf, {});
  write_checkpoint(tmp / "native", native, 1, "deepseek_v3");
  r = run(tmp / "native", tmp / "x",
          quantize([](ConvertOptions& o) { o.plan.expert_dtype = DType::F32; }));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::invalid_argument);
  r = run(tmp / "native", tmp / "x",
          quantize([](ConvertOptions& o) { o.plan.adapter = "qwen3_moe"; }));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::invalid_argument);
  // A NaN or an infinity in a weight: refused, naming the file, the tensor and the element.
  // Expert 2's down_proj [140, 36] is column block 0 of down_projs [3, 36, 140], transposed:
  // native [2][5][131] is its row 131, column 5, in block [1, 0].
  Tensor& down = native.at("model.layers.1.mlp.experts.down_projs");
  put_bits(down, (2 * 36 + 5) * 140 + 131, encode(down.dtype, INFINITY));
  write_checkpoint(tmp / "native", native, 1, "deepseek_v3");
  r = run(tmp / "native", tmp / "x", quantize());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::unsupported);
  EXPECT_TRUE(contains(r.status().message(),
                       "model.safetensors: tensor 'model.layers.1.mlp.experts.down_projs': "
                       "--quantize fp8 of 'model.layers.1.mlp.experts.2.down_proj.weight': row "
                       "131, column 5 (block [1, 0]) is infinite"))
      << r.status().message();
  EXPECT_FALSE(fs::exists(tmp / "x"));
  // A weight that is not 2-D.
  native = ref_deepseek_from_hf(hf, {});
  native["model.layers.0.self_attn.extra_proj.weight"] = random_tensor(rng, DType::BF16, {4});
  write_checkpoint(tmp / "native", native, 1, "deepseek_v3");
  r = run(tmp / "native", tmp / "x", quantize());
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(contains(r.status().message(),
                       "--quantize fp8: 'model.layers.0.self_attn.extra_proj.weight' has shape "
                       "[4]; 128 x 128 block scales need a 2-D weight"))
      << r.status().message();
}

} // namespace
} // namespace shardshift
