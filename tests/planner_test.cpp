// planner_test.cpp: each planning pass on its own (src/planner.h), over checkpoints built in memory
// (headers only: planning reads no tensor byte and does no file I/O), and make_plan as their list.
#include "shardshift/safetensors.h"

#include "planner.h"

#include <algorithm>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

struct Fake {
  std::string name;
  DType dtype = DType::BF16;
  std::vector<uint64_t> shape;
};

// A checkpoint whose shards exist only as headers; tensors lie back to back from data_start.
Checkpoint fake_checkpoint(const std::vector<std::vector<Fake>>& shards,
                           uint64_t data_start = 4096) {
  Checkpoint c;
  c.root = "/nonexistent/ckpt";
  for (size_t s = 0; s < shards.size(); ++s) {
    Shard shard;
    shard.file_name = shard_file_name(s, shards.size());
    shard.header.data_start = data_start;
    uint64_t offset = 0;
    for (const Fake& f : shards[s]) {
      TensorInfo t;
      t.name = f.name;
      t.dtype = f.dtype;
      t.shape = f.shape;
      t.begin = offset;
      t.end = offset + tensor_byte_size(f.dtype, f.shape).value();
      offset = t.end;
      c.tensors[t.name] = {static_cast<uint32_t>(s),
                           static_cast<uint32_t>(shard.header.tensors.size())};
      shard.header.tensors.push_back(std::move(t));
    }
    c.shards.push_back(std::move(shard));
  }
  return c;
}

const AdapterSpec& spec(const char* model, Direction d) {
  const AdapterSpec* s = find_adapter(model, d);
  EXPECT_NE(s, nullptr);
  return *s;
}

// One diffusion_gemma HF layer: E experts, hidden H, intermediate I.
std::vector<Fake> dg_layer(int layer, uint64_t e, uint64_t h, uint64_t i, DType dt = DType::BF16) {
  const std::string p = "model.decoder.layers." + std::to_string(layer) + ".";
  return {{p + "experts.gate_up_proj", dt, {e, 2 * i, h}},
          {p + "experts.down_proj", dt, {e, h, i}},
          {p + "router.per_expert_scale", dt, {e}},
          {p + "router.proj.weight", dt, {e, h}}};
}

std::string all_problems(const PlanContext& ctx) {
  std::string s;
  for (const std::string& line : ctx.problems.lines())
    s += line + "\n";
  return s;
}

// Runs the passes up to and including `last` (by position in the list).
void run_through(PlanContext& ctx, int last) {
  void (*passes[])(PlanContext&) = {classify_keys,       group_expert_pieces, validate_groups,
                                    emit_output_tensors, check_unique_names,  cut_files};
  ASSERT_TRUE(check_options(ctx).ok());
  for (int i = 0; i <= last; ++i)
    passes[i](ctx);
}

TEST(PlannerPasses, ClassifyKeysAppliesTheFirstMatchingRule) {
  std::vector<Fake> keys = dg_layer(0, 2, 4, 3);
  keys.push_back({"model.encoder.layers.0.layer_scalar", DType::BF16, {1}});
  keys.push_back({"model.decoder.embed_tokens.weight", DType::BF16, {8, 4}});
  keys.push_back({"unrelated.key", DType::F32, {2}});
  Checkpoint in = fake_checkpoint({keys});
  PlanOptions o;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
  classify_keys(ctx);
  ASSERT_EQ(ctx.classified.size(), keys.size());
  auto by_input = [&](const std::string& name) -> const Classified& {
    auto it = std::find_if(ctx.classified.begin(), ctx.classified.end(),
                           [&](const Classified& c) { return c.input_name == name; });
    EXPECT_NE(it, ctx.classified.end()) << name;
    return *it;
  };
  const Classified& gu = by_input("model.decoder.layers.0.experts.gate_up_proj");
  EXPECT_EQ(gu.action, RuleAction::expert_gate_up);
  EXPECT_EQ(gu.layer, "layers.0");
  EXPECT_EQ(gu.output, "model.layers.0.moe.experts.gate_and_up_projs");
  EXPECT_EQ(by_input("model.decoder.layers.0.router.per_expert_scale").action,
            RuleAction::expert_scale);
  const Classified& router = by_input("model.decoder.layers.0.router.proj.weight");
  EXPECT_EQ(router.action, RuleAction::rename);
  EXPECT_EQ(router.output, "model.layers.0.moe.gate.proj.weight");
  EXPECT_EQ(by_input("model.encoder.layers.0.layer_scalar").action, RuleAction::drop);
  EXPECT_EQ(by_input("model.decoder.embed_tokens.weight").output, "model.embed_tokens.weight");
  const Classified& other = by_input("unrelated.key");
  EXPECT_EQ(other.action, RuleAction::rename);
  EXPECT_EQ(other.output, "unrelated.key");
}

// The reference converts whatever it is given, so a model_type, --adapter or --direction that
// does not fit the keys would copy IN unchanged, or rename every key wrongly (to_hf of a Hugging
// Face checkpoint: model.decoder.decoder.*). Refused, saying what the keys are; the adapter that
// fits them passes.
TEST(PlannerPasses, AnAdapterOrDirectionThatDoesNotFitTheKeysIsRefused) {
  std::vector<Fake> keys = dg_layer(0, 2, 4, 3);
  keys.push_back({"model.decoder.embed_tokens.weight", DType::BF16, {8, 4}});
  Checkpoint in = fake_checkpoint({keys});
  struct Case {
    const char* model;
    Direction direction;
    bool forced;
    std::string expected; // "" : no problem
  };
  for (const Case& c : {
           Case{"diffusion_gemma", Direction::from_hf, false, ""},
           Case{"diffusion_gemma", Direction::from_hf, true, ""},
           Case{"qwen3_moe", Direction::from_hf, false,
                "no key is one the qwen3_moe from_hf adapter converts (no expert or router tensor "
                "of its layout), so the output would be the input unchanged; the keys are those of "
                "diffusion_gemma from_hf (--adapter diffusion_gemma --direction from_hf)"},
           Case{"deepseek_v3", Direction::to_hf, true,
                "--direction to_hf does not fit the keys, which are of the layout converted "
                "from_hf: drop --direction, or give the checkpoint it was meant for"},
           Case{"diffusion_gemma", Direction::to_hf, true,
                "--direction to_hf does not fit the keys, which are of the layout converted "
                "from_hf"},
       }) {
    SCOPED_TRACE(std::string(c.model) + " " + direction_name(c.direction));
    PlanOptions o;
    if (c.forced)
      o.direction = c.direction;
    PlanContext ctx(in, o, spec(c.model, c.direction));
    classify_keys(ctx);
    check_adapter_fits_keys(ctx);
    if (c.expected.empty())
      EXPECT_TRUE(ctx.problems.empty()) << all_problems(ctx);
    else
      EXPECT_NE(all_problems(ctx).find(c.expected), std::string::npos) << all_problems(ctx);
  }
  // Keys that no adapter would convert either (dense layers only: a DeepSeek-V3 checkpoint cut
  // to its first layers, say) convert to themselves, as the reference converts them.
  Checkpoint dense = fake_checkpoint({{{"model.layers.0.mlp.gate_proj.weight", DType::BF16, {8, 4}},
                                       {"lm_head.weight", DType::BF16, {8, 4}}}});
  for (const char* model : {"qwen3_moe", "deepseek_v3"})
    for (const Direction d : {Direction::from_hf, Direction::to_hf}) {
      SCOPED_TRACE(std::string(model) + " " + direction_name(d) + ", dense layers only");
      PlanOptions o;
      PlanContext ctx(dense, o, spec(model, d));
      classify_keys(ctx);
      check_adapter_fits_keys(ctx);
      EXPECT_TRUE(ctx.problems.empty()) << all_problems(ctx);
    }
}

TEST(PlannerPasses, ClassifyKeysFollowsDataOrderAcrossShards) {
  Checkpoint in = fake_checkpoint({{{"b", DType::F32, {2}}, {"a", DType::F32, {2}}},
                                   {{"d", DType::F32, {1}}, {"c", DType::F32, {1}}}});
  PlanOptions o;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
  classify_keys(ctx);
  std::vector<std::string> names;
  for (const Classified& c : ctx.classified)
    names.push_back(c.input_name);
  EXPECT_EQ(names, (std::vector<std::string>{"b", "a", "d", "c"}));
}

TEST(PlannerPasses, GroupExpertPiecesRefusesASecondPieceAndEscapesNames) {
  std::vector<Fake> keys = dg_layer(0, 2, 4, 3);
  // A second gate_up for layers.0 under another prefix, with a tab in its name.
  keys.push_back({"x\tmodel.decoder.layers.0.experts.gate_up_proj", DType::BF16, {2, 6, 4}});
  Checkpoint in = fake_checkpoint({keys});
  PlanOptions o;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
  classify_keys(ctx);
  group_expert_pieces(ctx);
  ASSERT_EQ(ctx.problems.size(), 1u) << all_problems(ctx);
  const std::string& line = ctx.problems.lines()[0];
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  EXPECT_NE(line.find("tensor 'x\\x09model.decoder.layers.0.experts.gate_up_proj'"),
            std::string::npos)
      << line;
  EXPECT_NE(line.find("layers.0 already has this expert piece"), std::string::npos) << line;
  ASSERT_EQ(ctx.groups.size(), 1u);
  EXPECT_NE(ctx.groups["layers.0"].down, nullptr);
  EXPECT_NE(ctx.groups["layers.0"].scale, nullptr);
}

// Found by fuzz/planner_fuzz: the second piece, refused above, was still emitted from the first
// piece's validated group, reading its shape as if it were 3-D (past the end of a 2-D one) and
// adding a spurious "written twice". Only the piece the group kept is emitted.
TEST(PlannerPasses, EmitOutputTensorsSkipsAPieceTheGroupRefused) {
  std::vector<Fake> keys = dg_layer(0, 2, 4, 3);
  keys.push_back({"x.model.decoder.layers.0.experts.down_proj", DType::BF16, {128, 16}});
  Checkpoint in = fake_checkpoint({keys});
  PlanOptions o;
  o.tied_head = false;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
  run_through(ctx, 4);
  ASSERT_EQ(ctx.problems.size(), 1u) << all_problems(ctx);
  EXPECT_NE(ctx.problems.lines()[0].find("layers.0 already has this expert piece"),
            std::string::npos)
      << all_problems(ctx);
  size_t downs = 0;
  for (const OutputTensor& t : ctx.plan.tensors)
    downs += t.name == "model.layers.0.moe.experts.down_projs";
  EXPECT_EQ(downs, 1u);
}

TEST(PlannerPasses, ValidateGroupsReportsMissingPiecesAndDisagreements) {
  std::vector<Fake> keys = dg_layer(0, 2, 4, 3);
  keys.pop_back(); // router proj: irrelevant to the group
  std::vector<Fake> l1 = dg_layer(1, 2, 4, 3);
  l1.erase(l1.begin() + 1); // layers.1: no down_proj
  std::vector<Fake> l2 = dg_layer(2, 2, 4, 3);
  l2[1].shape = {3, 4, 3}; // layers.2: 3 experts in down, 2 in gate_up
  std::vector<Fake> l3 = dg_layer(3, 2, 4, 3);
  l3[1].shape = {2, 5, 3}; // layers.3: hidden 5 vs 4
  for (auto* l : {&l1, &l2, &l3})
    keys.insert(keys.end(), l->begin(), l->end());
  Checkpoint in = fake_checkpoint({keys});
  PlanOptions o;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
  run_through(ctx, 2);
  const std::string p = all_problems(ctx);
  EXPECT_NE(p.find("layers.1: incomplete expert weights: missing down_proj"), std::string::npos)
      << p;
  EXPECT_NE(p.find("layers.2: expert count disagrees"), std::string::npos) << p;
  EXPECT_NE(p.find("layers.3: hidden size disagrees"), std::string::npos) << p;
  EXPECT_EQ(ctx.problems.size(), 3u) << p;
  EXPECT_EQ(ctx.expert_out.count("layers.0"), 1u);
  EXPECT_EQ(ctx.expert_out.count("layers.1") + ctx.expert_out.count("layers.2") +
                ctx.expert_out.count("layers.3"),
            0u);
}

TEST(PlannerPasses, ValidateGroupsPromotesTheFoldAndHonoursDtypeOptions) {
  std::vector<Fake> keys = dg_layer(0, 4, 8, 2);
  keys[2].dtype = DType::F32; // an F32 scale promotes the folded down_proj to F32
  Checkpoint in = fake_checkpoint({keys});
  PlanOptions o;
  {
    PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
    run_through(ctx, 2);
    ASSERT_TRUE(ctx.problems.empty()) << all_problems(ctx);
    const ExpertOut& eo = ctx.expert_out.at("layers.0");
    EXPECT_EQ(eo.gate_dtype, DType::BF16);
    EXPECT_EQ(eo.down_dtype, DType::F32);
  }
  o.expert_dtype = DType::F16;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
  run_through(ctx, 2);
  ASSERT_TRUE(ctx.problems.empty()) << all_problems(ctx);
  EXPECT_EQ(ctx.expert_out.at("layers.0").gate_dtype, DType::F16);
  EXPECT_EQ(ctx.expert_out.at("layers.0").down_dtype, DType::F16);
}

TEST(PlannerPasses, ValidateGroupsSplitsExpertsByRankAndRefusesUnevenRows) {
  Checkpoint in = fake_checkpoint({dg_layer(0, 5, 8, 3)});
  PlanOptions o;
  o.ep_size = 2;
  o.ep_rank = 1;
  {
    PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
    run_through(ctx, 2);
    ASSERT_TRUE(ctx.problems.empty()) << all_problems(ctx);
    EXPECT_EQ(ctx.expert_out.at("layers.0").expert_begin, 3u); // rank 0 has experts 0-2
    EXPECT_EQ(ctx.expert_out.at("layers.0").experts, 2u);
  }
  o.ep_shard_size = 2; // gate_up's axis 2 is H = 8 (even), down's is I = 3 (odd)
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
  run_through(ctx, 2);
  ASSERT_EQ(ctx.problems.size(), 1u) << all_problems(ctx);
  EXPECT_NE(ctx.problems.lines()[0].find("down_proj': axis of size 3 does not split evenly"),
            std::string::npos)
      << all_problems(ctx);
}

TEST(PlannerPasses, EpRangeCoversEveryExpertOnce) {
  for (uint64_t e : {0u, 1u, 5u, 8u, 128u})
    for (uint64_t w : {1u, 2u, 3u, 7u, 16u}) {
      uint64_t next = 0;
      for (uint64_t r = 0; r < w; ++r) {
        auto [begin, count] = ep_range(e, w, r);
        EXPECT_EQ(begin, next) << e << " " << w << " " << r;
        EXPECT_TRUE(count == e / w || count == e / w + 1);
        next = begin + count;
      }
      EXPECT_EQ(next, e) << e << " " << w;
    }
}

TEST(PlannerPasses, EmitOutputTensorsAddsTheTiedHeadAfterTheEmbedding) {
  std::vector<Fake> keys = {{"model.decoder.embed_tokens.weight", DType::BF16, {8, 4}}};
  std::vector<Fake> layer = dg_layer(0, 2, 4, 3);
  keys.insert(keys.end(), layer.begin(), layer.end());
  Checkpoint in = fake_checkpoint({keys});
  PlanOptions o;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
  run_through(ctx, 3);
  ASSERT_TRUE(ctx.problems.empty()) << all_problems(ctx);
  std::vector<std::string> names;
  for (const OutputTensor& t : ctx.plan.tensors)
    names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"model.embed_tokens.weight", "lm_head.weight",
                                             "model.layers.0.moe.experts.gate_and_up_projs",
                                             "model.layers.0.moe.experts.down_projs",
                                             "model.layers.0.moe.gate.proj.weight"}));
  const OutputTensor& down = ctx.plan.tensors[3];
  EXPECT_EQ(down.op, OpKind::transpose);
  ASSERT_TRUE(down.scale.has_value());
  EXPECT_EQ(down.shape, (std::vector<uint64_t>{2, 3, 4})); // [E, I, H]
  EXPECT_EQ(down.size, 2u * 3 * 4 * 2);
  EXPECT_EQ(ctx.plan.dropped, 1u); // the scale, folded
  EXPECT_EQ(ctx.plan.tensors[1].source.tensor, ctx.plan.tensors[0].source.tensor);
}

TEST(PlannerPasses, EmitOutputTensorsWithoutAnEmbeddingToTieIsAProblem) {
  Checkpoint in = fake_checkpoint({dg_layer(0, 2, 4, 3)});
  PlanOptions o;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
  run_through(ctx, 3);
  ASSERT_EQ(ctx.problems.size(), 1u);
  EXPECT_NE(ctx.problems.lines()[0].find("--no-tied-head"), std::string::npos);
  o.tied_head = false;
  PlanContext untied(in, o, spec("diffusion_gemma", Direction::from_hf));
  run_through(untied, 3);
  EXPECT_TRUE(untied.problems.empty()) << all_problems(untied);
}

TEST(PlannerPasses, EmitOutputTensorsToHfWritesOnesAndAppliesTheExclusion) {
  const std::vector<Fake> keys = {
      {"model.layers.0.moe.experts.gate_and_up_projs", DType::BF16, {2, 4, 6}},
      {"model.layers.0.moe.experts.down_projs", DType::BF16, {2, 3, 4}},
      {"model.layers.0.self_attn._extra_state", DType::U8, {4}},
      {"model.norm.weight", DType::F32, {4}}};
  Checkpoint in = fake_checkpoint({keys});
  PlanOptions o;
  o.scale_dtype = DType::F32;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::to_hf));
  run_through(ctx, 3);
  ASSERT_TRUE(ctx.problems.empty()) << all_problems(ctx);
  std::vector<std::string> names;
  for (const OutputTensor& t : ctx.plan.tensors)
    names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"model.decoder.layers.0.experts.gate_up_proj",
                                             "model.decoder.layers.0.experts.down_proj",
                                             "model.decoder.layers.0.router.per_expert_scale",
                                             "model.decoder.norm.weight"}));
  EXPECT_EQ(ctx.plan.excluded, 1u); // model.decoder.layers.0.self_attn._extra_state
  const OutputTensor& ones = ctx.plan.tensors[2];
  EXPECT_EQ(ones.op, OpKind::ones);
  EXPECT_EQ(ones.dtype, DType::F32);
  EXPECT_EQ(ones.shape, (std::vector<uint64_t>{2}));
}

TEST(PlannerPasses, CheckUniqueNamesRefusesAnOutputWrittenTwice) {
  // model.decoder.norm.weight and model.norm.weight both become model.norm.weight.
  Checkpoint in = fake_checkpoint(
      {{{"model.decoder.norm.weight", DType::F32, {4}}, {"model.norm.weight", DType::F32, {4}}}});
  PlanOptions o;
  o.tied_head = false;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
  run_through(ctx, 4);
  ASSERT_EQ(ctx.problems.size(), 1u) << all_problems(ctx);
  EXPECT_NE(
      ctx.problems.lines()[0].find("output tensor 'model.norm.weight' would be written twice"),
      std::string::npos)
      << all_problems(ctx);
}

// Rule 9.4, the planner's side: a cast that makes an output tensor of more than 2^64 bytes is
// refused, naming the tensor. An input cannot hold such a tensor, but --dtype can make one. Sizes
// are counted in bits, so a tensor has fewer than 2^64 bits: gate_up here is 3 * 2^58 BF16
// elements (3 * 2^62 bits, a size the input can state), 3 * 2^63 bits as float32. Kept in BF16,
// the same input plans without that problem.
TEST(PlannerPasses, CheckUniqueNamesRefusesAnOutputWhoseSizeOverflows) {
  const uint64_t h = uint64_t(3) << 29, i = uint64_t(1) << 28;
  Checkpoint in = fake_checkpoint({dg_layer(0, 1, h, i)});
  ASSERT_EQ(in.info({0, 0}).size(), uint64_t(3) << 59);
  for (const bool cast : {false, true}) {
    PlanOptions o;
    o.tied_head = false;
    if (cast)
      o.expert_dtype = DType::F32;
    PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
    run_through(ctx, 4);
    const std::string problems = all_problems(ctx);
    const bool overflow =
        problems.find("gate_and_up_projs': size overflows 64 bits") != std::string::npos;
    EXPECT_EQ(overflow, cast) << (cast ? "cast to F32" : "kept") << ":\n" << problems;
    if (cast) {
      EXPECT_EQ(problems.find("down_projs': size overflows"), std::string::npos) << problems;
    }
  }
}

TEST(PlannerPasses, CutFilesSplitsGreedilyAndPutsCopiesFirst) {
  // Output sizes in order: copy 40, transpose 48, copy 40, copy 16 (bytes); limit 100.
  std::vector<Fake> keys = {{"a", DType::F32, {10}}};
  std::vector<Fake> layer = dg_layer(0, 1, 4, 3); // gate_up [1, 6, 4] BF16 = 48 bytes
  layer.erase(layer.begin() + 1, layer.end());
  keys.insert(keys.end(), layer.begin(), layer.end());
  keys.push_back({"b", DType::F32, {10}});
  keys.push_back({"c", DType::F32, {4}});
  Checkpoint in = fake_checkpoint({keys});
  PlanOptions o;
  o.max_shard_size = 100;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::to_hf)); // no fold, no tied head
  // to_hf does not claim the HF-named piece: make it an expert piece by hand.
  classify_keys(ctx);
  ctx.classified[1].action = RuleAction::expert_gate_up;
  ctx.classified[1].layer = "layers.0";
  ctx.classified[1].output = "g";
  group_expert_pieces(ctx);
  validate_groups(ctx);
  emit_output_tensors(ctx);
  ASSERT_TRUE(ctx.problems.empty()) << all_problems(ctx);
  cut_files(ctx);
  // [a 40, g 48] = 88, + b 40 > 100 -> new file [b 40, c 16].
  ASSERT_EQ(ctx.file_tensors.size(), 2u);
  EXPECT_EQ(ctx.file_tensors[0], (std::vector<uint32_t>{0, 1}));
  EXPECT_EQ(ctx.file_tensors[1], (std::vector<uint32_t>{2, 3}));
  // Copies before transforms within a file, whatever the input order.
  ctx.plan.tensors[0].op = OpKind::transpose;
  ctx.plan.tensors[1].op = OpKind::copy;
  cut_files(ctx);
  EXPECT_EQ(ctx.file_tensors[0], (std::vector<uint32_t>{1, 0}));
}

TEST(PlannerPasses, ReflinkAlignmentKeepsTheLongestCopyRunsPageOffset) {
  // Input: data starts at 4096 + 24; tensors x (8 KiB) and y (16 KiB) back to back.
  Checkpoint in = fake_checkpoint(
      {{{"x", DType::U8, {8192}}, {"y", DType::U8, {16384}}, {"z", DType::U8, {64}}}}, 4120);
  std::vector<OutputTensor> out(3);
  for (uint32_t i = 0; i < 3; ++i) {
    out[i].op = OpKind::copy;
    out[i].source = {0, i};
    out[i].size = in.info({0, i}).size();
  }
  // Output order y, x, z: no two input-contiguous; y is the longest run, at output offset 0.
  out[1].offset = 0;
  out[0].offset = 16384;
  out[2].offset = 16384 + 8192;
  auto mod = reflink_alignment(in, out, {1, 0, 2});
  ASSERT_TRUE(mod.has_value());
  EXPECT_EQ(*mod, (4120 + 8192) % 4096);
  // A run shorter than a page is not worth aligning.
  EXPECT_FALSE(reflink_alignment(in, out, {2}).has_value());
  // A start that would break the data section's 8-byte alignment is refused.
  Checkpoint odd = fake_checkpoint({{{"x", DType::U8, {8192}}}}, 4099);
  std::vector<OutputTensor> one(1);
  one[0].op = OpKind::copy;
  one[0].size = 8192;
  EXPECT_FALSE(reflink_alignment(odd, one, {0}).has_value());
}

// Rule 4.5: of two equally long runs, the first in the file's order sets the page offset,
// whichever order the two take. x and y (8 KiB each) lie apart in the input (a small tensor
// between them), so they are two runs, whose input page offsets differ (24 and 32).
TEST(PlannerPasses, ReflinkAlignmentTakesTheFirstOfTwoEquallyLongRuns) {
  Checkpoint in = fake_checkpoint(
      {{{"x", DType::U8, {8192}}, {"gap", DType::U8, {8}}, {"y", DType::U8, {8192}}}}, 4120);
  const uint64_t x_in = 4120, y_in = 4120 + 8192 + 8;
  ASSERT_EQ(in.file_offset({0, 0}), x_in);
  ASSERT_EQ(in.file_offset({0, 2}), y_in);
  std::vector<OutputTensor> out(3);
  for (uint32_t i = 0; i < 3; ++i) {
    out[i].op = OpKind::copy;
    out[i].source = {0, i};
    out[i].size = in.info({0, i}).size();
  }
  // x first: x at output offset 0, y right after it.
  out[0].offset = 0;
  out[2].offset = 8192;
  auto x_first = reflink_alignment(in, out, {0, 2});
  ASSERT_TRUE(x_first.has_value());
  EXPECT_EQ(*x_first, x_in % 4096);
  // y first: y at 0, x after it.
  out[2].offset = 0;
  out[0].offset = 8192;
  auto y_first = reflink_alignment(in, out, {2, 0});
  ASSERT_TRUE(y_first.has_value());
  EXPECT_EQ(*y_first, y_in % 4096);
  EXPECT_NE(*x_first, *y_first) << "the two runs must ask for different paddings";
}

TEST(PlannerPasses, LayOutHeadersAssignsOffsetsNamesAndHeaders) {
  Checkpoint in =
      fake_checkpoint({{{"a", DType::F32, {10}}, {"b", DType::F32, {10}}, {"c", DType::F32, {4}}}});
  PlanOptions o;
  o.max_shard_size = 80;
  o.tied_head = false;
  PlanContext ctx(in, o, spec("diffusion_gemma", Direction::from_hf));
  run_through(ctx, 5);
  ASSERT_TRUE(lay_out_headers(ctx).ok());
  summarize(ctx);
  const Plan& plan = ctx.plan;
  ASSERT_EQ(plan.files.size(), 2u);
  EXPECT_EQ(plan.files[0].name, "model-00001-of-00002.safetensors");
  EXPECT_EQ(plan.files[1].name, "model-00002-of-00002.safetensors");
  EXPECT_EQ(plan.tensors[1].offset, 40u);
  EXPECT_EQ(plan.tensors[2].file, 1u);
  EXPECT_EQ(plan.tensors[2].offset, 0u);
  EXPECT_EQ(plan.files[0].data_size, 80u);
  for (const OutputFile& f : plan.files) {
    // The header is an 8-byte little-endian length, then that much JSON; data 8-byte aligned.
    ASSERT_GE(f.header.size(), 8u);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i)
      n = (n << 8) | static_cast<unsigned char>(f.header[i]);
    EXPECT_EQ(n + 8, f.header.size());
    EXPECT_EQ(f.header.size() % 8, 0u);
  }
  EXPECT_EQ(plan.total_tensor_bytes, 96u);
  EXPECT_EQ(plan.copy_bytes, 96u);
  EXPECT_TRUE(plan.write_index);
  EXPECT_EQ(plan.weight_map.at("c"), "model-00002-of-00002.safetensors");
}

TEST(PlannerPasses, MakePlanFailsWithEveryProblemUnderOneHeading) {
  std::vector<Fake> keys = dg_layer(0, 2, 4, 3);
  keys.erase(keys.begin() + 1); // layers.0: no down_proj
  std::vector<Fake> l1 = dg_layer(1, 2, 4, 3);
  l1.erase(l1.begin()); // layers.1: no gate_up_proj
  keys.insert(keys.end(), l1.begin(), l1.end());
  Checkpoint in = fake_checkpoint({keys});
  PlanOptions o;
  o.adapter = "diffusion_gemma";
  auto plan = make_plan(in, o);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), Errc::plan);
  const std::string& m = plan.status().message();
  EXPECT_EQ(m.rfind("/nonexistent/ckpt: the checkpoint does not fit the diffusion_gemma from_hf "
                    "adapter (3 problems):",
                    0),
            0u)
      << m;
  EXPECT_NE(m.find("\n  layers.0: incomplete"), std::string::npos) << m;
  EXPECT_NE(m.find("\n  layers.1: incomplete"), std::string::npos) << m;
  EXPECT_NE(m.find("\n  the input has no lm_head.weight"), std::string::npos) << m;
}

TEST(PlannerPasses, MakePlanRecordsOneSpanPerPass) {
  std::vector<Fake> keys = {{"model.decoder.embed_tokens.weight", DType::BF16, {8, 4}}};
  std::vector<Fake> layer = dg_layer(0, 2, 4, 3);
  keys.insert(keys.end(), layer.begin(), layer.end());
  Checkpoint in = fake_checkpoint({keys});
  Profiler profiler(false);
  auto plan = make_plan(in, PlanOptions{}, &profiler);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  uint64_t plan_spans = 0;
  for (const StageSummary& s : profiler.summaries())
    if (s.stage == Stage::plan)
      plan_spans = s.count;
  EXPECT_EQ(plan_spans, 15u); // read_config_facts, classify, check_adapter_fits_keys ...
                              // restore_base_keys, check_unique_names, cut, lay out, summarize
  EXPECT_EQ(plan->adapter, "diffusion_gemma");
  EXPECT_EQ(plan->files.size(), 1u);
  EXPECT_EQ(plan->files[0].name, "model.safetensors");
}

TEST(PlannerPasses, CheckOptionsRefusesBadRanksAndPatterns) {
  Checkpoint in = fake_checkpoint({{}});
  PlanOptions o;
  o.ep_size = 2;
  o.ep_rank = 2;
  PlanContext a(in, o, spec("diffusion_gemma", Direction::from_hf));
  EXPECT_EQ(check_options(a).code(), Errc::invalid_argument);
  PlanOptions ep;
  ep.ep_size = 2;
  PlanContext b(in, ep, spec("diffusion_gemma", Direction::to_hf));
  EXPECT_EQ(check_options(b).code(), Errc::invalid_argument);
  PlanOptions bad;
  bad.exclude = "([unclosed";
  PlanContext c(in, bad, spec("diffusion_gemma", Direction::to_hf));
  Status s = check_options(c);
  EXPECT_EQ(s.code(), Errc::invalid_argument);
  EXPECT_NE(s.message().find("--exclude '([unclosed' is not a valid regular expression"),
            std::string::npos);
}

} // namespace
} // namespace shardshift
