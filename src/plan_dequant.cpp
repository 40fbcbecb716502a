// plan_dequant.cpp: the planning pass for FP8 block dequantization (docs/semantics.md section
// 15). A weight `W` stored in an 8-bit float comes with `W_scale_inv`, one scale per 128 x 128
// block; the adapter's `block_scale` rule names the weight a scale belongs to, the weight's own
// rule still decides where it goes (passed through or stacked), and this pass pairs the two,
// checks the scale's shape against the weight's, and refuses what the reference would get wrong
// silently: an FP8 weight without its scale (loaded unscaled), a scale without its weight
// (dropped), a scale of the wrong shape (read past its blocks, or partly ignored).
#include "dequant.h"
#include "planner.h"

#include <algorithm>

namespace shardshift {

namespace {

// The weights a scale can belong to: passed through, or a piece of a stacked output.
bool takes_scale(RuleAction a) {
  return a == RuleAction::rename || a == RuleAction::stack_piece;
}

} // namespace

bool dequantizes(const AdapterSpec& spec) {
  return std::any_of(spec.rules.begin(), spec.rules.end(),
                     [](const Rule& r) { return r.action == RuleAction::block_scale; });
}

void pair_block_scales(PlanContext& ctx) {
  if (!dequantizes(ctx.spec))
    return;
  std::map<std::string_view, const Classified*> by_name;
  for (const Classified& c : ctx.classified)
    by_name[c.input_name] = &c;
  for (const Classified& c : ctx.classified) {
    if (c.action != RuleAction::block_scale)
      continue;
    auto it = by_name.find(c.output);
    if (it == by_name.end()) {
      ctx.problems.add(Errc::plan, "", c.input_name,
                       "block scale without its weight '" + printable(c.output) +
                           "' (the reference would drop the scale silently)");
      continue;
    }
    const Classified& w = *it->second;
    if (!takes_scale(w.action))
      continue; // the weight is dropped or refused on its own account
    const TensorInfo& wi = ctx.input.info(w.ref);
    const TensorInfo& si = ctx.input.info(c.ref);
    if (wi.shape.size() != 2) {
      ctx.problems.add(Errc::plan, "", w.input_name,
                       "a weight with a block scale must be 2-D, has shape " +
                           shape_text(wi.shape));
      continue;
    }
    const std::vector<uint64_t> want = {scale_blocks(wi.shape[0]), scale_blocks(wi.shape[1])};
    if (si.shape != want) {
      ctx.problems.add(Errc::plan, "", c.input_name,
                       "block scale has shape " + shape_text(si.shape) + " but weight '" +
                           printable(w.input_name) + "' " + shape_text(wi.shape) + " needs " +
                           shape_text(want) + " (one scale per 128 x 128 block, partial blocks " +
                           "at the edges; the reference would only warn)");
      continue;
    }
    const Status s = check_dequant_supported(wi.dtype, si.dtype, converted_dtype(ctx, wi.dtype));
    if (!s.ok()) {
      ctx.problems.add(Errc::plan, "", w.input_name, s.message());
      continue;
    }
    ctx.block_scales[w.input_name] = &c;
  }
  // Every 8-bit float weight that is written must be dequantized: a plain cast would load it
  // without its scale, which the reference does silently when the scale is missing.
  for (const Classified& c : ctx.classified) {
    if (!takes_scale(c.action) || !dtype_is_8bit_float(ctx.input.info(c.ref).dtype))
      continue;
    if (by_name.count(c.input_name + "_scale_inv") == 0)
      ctx.problems.add(Errc::plan, "", c.input_name,
                       std::string(dtype_name(ctx.input.info(c.ref).dtype)) +
                           " weight without its block scale '" + printable(c.input_name) +
                           "_scale_inv' (the reference would load it unscaled)");
  }
}

void emit_dequant(PlanContext& ctx, const Classified& c) {
  const TensorInfo& info = ctx.input.info(c.ref);
  const Classified& scale = *ctx.block_scales.at(c.input_name);
  OutputTensor t;
  t.name = c.output;
  t.op = OpKind::dequant;
  t.source = c.ref;
  t.scale = scale.ref;
  t.dtype = converted_dtype(ctx, info.dtype);
  t.shape = info.shape;
  t.note = "dequantize with " + scale.input_name;
  if (c.output != c.input_name)
    t.note += ", from " + c.input_name;
  emit_tensor(ctx, std::move(t));
}

} // namespace shardshift
