// plan_emit.cpp: the passes that decide the output tensors. emit_output_tensors walks the
// classified keys in input order and writes down each output tensor with the operation that
// produces it (copy, transpose-fold, ones), adding the tied lm_head and applying --exclude;
// check_unique_names refuses an output name produced twice.
#include "planner.h"

#include <algorithm>

namespace shardshift {

// Adds `t` unless the exclusion pattern removes it (Python re.match: anchored at the start only).
bool emit_tensor(PlanContext& ctx, OutputTensor t) {
  if (ctx.exclude) {
    auto excluded = ctx.exclude->match(t.name);
    if (!excluded) {
      ctx.problems.add(excluded.status().code(), "", "",
                       "--exclude: " + excluded.status().message());
      return false;
    }
    if (*excluded) {
      ++ctx.plan.excluded;
      ctx.excluded_names.push_back(std::move(t.name));
      return false;
    }
  }
  t.size = tensor_byte_size(t.dtype, t.shape).value_or(0); // overflow: check_unique_names says so
  ctx.plan.tensors.push_back(std::move(t));
  return true;
}

namespace {

// A pass-through tensor: the input's bytes under a (possibly) new name.
OutputTensor copy_of(const PlanContext& ctx, const Classified& c) {
  const TensorInfo& info = ctx.input.info(c.ref);
  OutputTensor t;
  t.name = c.output;
  t.dtype = info.dtype;
  t.shape = info.shape;
  t.op = OpKind::copy;
  t.source = c.ref;
  if (c.output != c.input_name)
    t.note = "from " + c.input_name;
  return t;
}

// The input's [E, A, B] piece becomes [experts, cols, A] (this rank's experts and columns); the
// down piece folds the layer's scale when the adapter says so, and to_hf adds ones for the scale.
void emit_expert(PlanContext& ctx, const Classified& c) {
  auto it = ctx.expert_out.find(c.layer);
  if (it == ctx.expert_out.end())
    return; // the group had problems, already reported
  const ExpertOut& eo = it->second;
  const ExpertGroup& g = ctx.groups.at(c.layer);
  const bool down = c.action == RuleAction::expert_down;
  // Only the piece the group kept was validated; a second one was refused by
  // group_expert_pieces, and its shape may not even be 3-D.
  if ((down ? g.down : g.gate_up) != &c)
    return;
  const TensorInfo& info = ctx.input.info(c.ref);
  OutputTensor t;
  t.name = c.output;
  t.op = OpKind::transpose;
  t.source = c.ref;
  t.dtype = down ? eo.down_dtype : eo.gate_dtype;
  t.expert_begin = eo.expert_begin;
  t.experts = eo.experts;
  t.cols = info.shape[2] / ctx.options.ep_shard_size;
  t.col_begin = ctx.options.ep_shard_rank * t.cols;
  t.shape = {t.experts, t.cols, info.shape[1]};
  if (down && ctx.spec.fold_scale) {
    t.scale = g.scale->ref;
    t.note = "transpose, fold " + g.scale->input_name;
  } else {
    t.note = "transpose";
  }
  t.note += " from " + c.input_name;
  const std::string down_name = t.name;
  emit_tensor(ctx, std::move(t));
  if (down && !c.extra.empty()) {
    OutputTensor ones;
    ones.name = c.extra;
    ones.op = OpKind::ones;
    ones.dtype = eo.ones_dtype;
    ones.shape = {info.shape[0]};
    ones.note = "ones (scale stays folded in " + down_name + ")";
    emit_tensor(ctx, std::move(ones));
  }
}

} // namespace

void emit_output_tensors(PlanContext& ctx) {
  auto has_key = [&](auto pred) {
    return std::any_of(ctx.classified.begin(), ctx.classified.end(),
                       [&](const Classified& c) { return pred(c.input_name); });
  };
  const bool has_lm_head = has_key([](const std::string& k) { return k == "lm_head.weight"; });
  const bool has_lora =
      has_key([](const std::string& k) { return k.find(".lora_") != std::string::npos; });
  const std::string_view head_source = ctx.spec.tied_head_source;
  const bool want_tied_head =
      !head_source.empty() && ctx.options.tied_head && !has_lm_head && !has_lora;
  bool tied_head_done = false;

  for (const Classified& c : ctx.classified) {
    switch (c.action) {
    case RuleAction::drop:
    case RuleAction::expert_scale:
    case RuleAction::block_scale: // consumed by its weight's dequantization
      ++ctx.plan.dropped;
      break;
    case RuleAction::reject:
    case RuleAction::rename_continue:
      break;
    case RuleAction::rename:
      if (ctx.block_scales.count(c.input_name)) {
        emit_dequant(ctx, c);
        break;
      }
      if (quantized_output(ctx, c.output)) {
        emit_quantized(ctx, copy_of(ctx, c));
        break;
      }
      emit_tensor(ctx, copy_of(ctx, c));
      if (want_tied_head && c.output == head_source) {
        // The tied head is a second copy of the embedding, right after it.
        OutputTensor head = copy_of(ctx, c);
        head.name = "lm_head.weight";
        head.note = "tied to " + c.output;
        emit_tensor(ctx, std::move(head));
        tied_head_done = true;
      }
      break;
    case RuleAction::expert_gate_up:
    case RuleAction::expert_down:
      emit_expert(ctx, c);
      break;
    case RuleAction::stack_piece:
      emit_stack(ctx, c);
      break;
    case RuleAction::unstack:
      emit_unstack(ctx, c);
      break;
    }
  }
  if (want_tied_head && !tied_head_done)
    ctx.problems.add(Errc::plan, "", "",
                     "the input has no lm_head.weight (tied head) and no embedding '" +
                         std::string(head_source) +
                         "' to tie it to; add the embedding or pass --no-tied-head to write no "
                         "head");
}

void check_unique_names(PlanContext& ctx) {
  // What each of the two is made of; a tensor passed through under its own name has no note.
  auto made_of = [](const OutputTensor& t) {
    return t.note.empty() ? "the input tensor of that name" : printable(t.note);
  };
  std::map<std::string_view, const OutputTensor*> seen;
  for (const OutputTensor& t : ctx.plan.tensors) {
    auto [pos, inserted] = seen.emplace(t.name, &t);
    if (!inserted)
      ctx.problems.add(Errc::plan, "", "",
                       "output tensor '" + printable(t.name) + "' would be written twice (" +
                           made_of(*pos->second) + "; " + made_of(t) + ")");
  }
  for (const OutputTensor& t : ctx.plan.tensors)
    if (!tensor_byte_size(t.dtype, t.shape))
      ctx.problems.add(Errc::plan, "", "",
                       "output tensor '" + printable(t.name) + "': size overflows 64 bits");
}

} // namespace shardshift
