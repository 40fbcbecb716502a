// plan_validate.cpp: validate_groups, the pass that checks each layer's expert pieces before any
// output is planned from them: every piece present (when the scale is folded), 3-D pieces that
// agree on the expert count and the hidden size, dtypes the transpose-fold supports, and an
// expert-parallel split that loses no rows. Groups with problems get no ExpertOut; their tensors
// are then skipped by emit_output_tensors (the problems are already reported).
#include "planner.h"
#include "transpose.h"

namespace shardshift {

std::pair<uint64_t, uint64_t> ep_range(uint64_t e, uint64_t w, uint64_t r) {
  uint64_t base = e / w, rem = e % w;
  if (r < rem)
    return {r * (base + 1), base + 1};
  return {r * base + rem, base};
}

std::string ep_shard_part_hint(uint64_t gate_up_rows, uint64_t gate_up_half, uint64_t down_rows,
                               uint64_t down_cols) {
  if (gate_up_rows == 0 || down_cols % gate_up_rows != 0)
    return {};
  const uint64_t s = down_cols / gate_up_rows;
  if (s < 2 || gate_up_half != down_rows * s)
    return {};
  const std::string n = std::to_string(s);
  return "; these are the shapes of one part of a from_hf export with --ep-shard-size " + n +
         ", which keeps 1/" + n +
         " of axis 1 of each expert tensor: to_hf needs whole expert "
         "tensors, so convert the export made without --ep-shard-size";
}

namespace {

// The input pieces of one group (nullptr where absent).
struct Pieces {
  const TensorInfo* gate_up;
  const TensorInfo* down;
  const TensorInfo* scale;
};

std::string quoted(const TensorInfo& t) {
  return "'" + printable(t.name) + "' " + shape_text(t.shape);
}

// Folding needs all three pieces; without a fold, a lone piece is converted on its own.
bool check_complete(PlanContext& ctx, const std::string& layer, const Pieces& p) {
  if (!ctx.spec.fold_scale)
    return true;
  std::string missing;
  for (auto [piece, name] :
       {std::pair{p.gate_up, "gate_up_proj"}, {p.down, "down_proj"}, {p.scale, "per_expert_scale"}})
    if (!piece)
      missing += (missing.empty() ? "" : ", ") + std::string(name);
  if (missing.empty())
    return true;
  ctx.problems.add(Errc::plan, "", "",
                   layer + ": incomplete expert weights: missing " + missing +
                       " (every MoE layer needs gate_up_proj, down_proj and "
                       "router.per_expert_scale)");
  return false;
}

// Shapes: [E, A, B] pieces with one E, one hidden size, and E scales. Sets *experts.
bool check_shapes(PlanContext& ctx, const std::string& layer, const Pieces& p, uint64_t* experts) {
  bool ok = true;
  for (const TensorInfo* t : {p.gate_up, p.down})
    if (t && t->shape.size() != 3) {
      ctx.problems.add(Errc::plan, "", t->name,
                       "expert tensor must be 3-D [E, A, B], has shape " + shape_text(t->shape));
      ok = false;
    }
  if (p.scale && p.scale->shape.size() != 1) {
    ctx.problems.add(Errc::plan, "", p.scale->name,
                     "per_expert_scale must be 1-D [E], has shape " + shape_text(p.scale->shape));
    ok = false;
  }
  if (!ok || (!p.gate_up && !p.down))
    return false;
  const uint64_t e = p.gate_up ? p.gate_up->shape[0] : p.down->shape[0];
  if (p.gate_up && p.down && p.gate_up->shape[0] != p.down->shape[0]) {
    ctx.problems.add(Errc::plan, "", "",
                     layer + ": expert count disagrees: " + quoted(*p.gate_up) + " vs " +
                         quoted(*p.down));
    ok = false;
  }
  if (p.scale && p.scale->shape[0] != e) {
    ctx.problems.add(Errc::plan, "", "",
                     layer + ": '" + printable(p.scale->name) + "' has " +
                         std::to_string(p.scale->shape[0]) + " scales but the layer has " +
                         std::to_string(e) + " experts");
    ok = false;
  }
  // Hidden size: from_hf gate_up [E, 2I, H] / down [E, H, I]; to_hf gate_and_up [E, H, 2I] /
  // down [E, I, H].
  if (p.gate_up && p.down) {
    const bool from_hf = ctx.spec.direction == Direction::from_hf;
    const uint64_t h_gu = from_hf ? p.gate_up->shape[2] : p.gate_up->shape[1];
    const uint64_t h_dn = from_hf ? p.down->shape[1] : p.down->shape[2];
    if (h_gu != h_dn) {
      const std::string hint =
          from_hf ? "" : ep_shard_part_hint(h_gu, p.gate_up->shape[2] / 2, p.down->shape[1], h_dn);
      ctx.problems.add(Errc::plan, "", "",
                       layer + ": hidden size disagrees: " + quoted(*p.gate_up) + " vs " +
                           quoted(*p.down) + hint);
      ok = false;
    }
  }
  *experts = e;
  return ok;
}

// Dtypes the transpose-fold supports, and the output dtypes (docs/semantics.md 1.1: the fold
// computes in the promoted type of down and scale; --dtype, else the dtype the reference takes from
// config.json, overrides every expert output).
bool check_dtypes(PlanContext& ctx, const Pieces& p, ExpertOut* eo) {
  const std::optional<DType> forced =
      ctx.options.expert_dtype ? ctx.options.expert_dtype : ctx.adapter_dtype;
  bool ok = true;
  DType down_out = p.down ? p.down->dtype : DType::BF16;
  if (p.down) {
    const bool fold = ctx.spec.fold_scale;
    const DType scale = p.scale ? p.scale->dtype : p.down->dtype;
    const DType promoted = fold ? promote_types(p.down->dtype, scale) : p.down->dtype;
    Status s = check_transpose_supported(p.down->dtype, fold, scale, forced.value_or(promoted));
    if (!s.ok()) {
      ctx.problems.add(Errc::plan, "", p.down->name, s.message());
      ok = false;
    }
    down_out = promoted;
  }
  if (p.gate_up) {
    Status s = check_transpose_supported(p.gate_up->dtype, false, p.gate_up->dtype,
                                         forced.value_or(p.gate_up->dtype));
    if (!s.ok()) {
      ctx.problems.add(Errc::plan, "", p.gate_up->name, s.message());
      ok = false;
    }
  }
  eo->gate_dtype = forced.value_or(p.gate_up ? p.gate_up->dtype : DType::BF16);
  eo->down_dtype = forced.value_or(down_out);
  eo->ones_dtype = ctx.options.scale_dtype.value_or(eo->down_dtype);
  if (p.down && ctx.spec.direction == Direction::to_hf && dtype_bits(eo->ones_dtype) < 8) {
    ctx.problems.add(Errc::unsupported, "", p.down->name,
                     std::string("cannot write the per-expert scale as ones in ") +
                         std::string(dtype_name(eo->ones_dtype)) +
                         " (sub-byte dtype); pass --scale-dtype");
    ok = false;
  }
  return ok;
}

// The second sharding keeps rows of output axis 1 (= input axis 2): refuse remainders, which the
// reference would silently drop.
void check_ep_split(PlanContext& ctx, const Pieces& p) {
  const uint64_t n = ctx.options.ep_shard_size;
  for (const TensorInfo* t : {p.gate_up, p.down})
    if (t && t->shape[2] % n != 0)
      ctx.problems.add(Errc::plan, "", t->name,
                       "axis of size " + std::to_string(t->shape[2]) +
                           " does not split evenly into " + std::to_string(n) +
                           " shards (--ep-shard-size); the reference would silently drop rows");
}

} // namespace

void validate_groups(PlanContext& ctx) {
  const PlanOptions& o = ctx.options;
  for (const auto& [layer, g] : ctx.groups) {
    auto info = [&](const Classified* c) { return c ? &ctx.input.info(c->ref) : nullptr; };
    const Pieces p{info(g.gate_up), info(g.down), info(g.scale)};
    uint64_t experts = 0;
    ExpertOut eo;
    if (!check_complete(ctx, layer, p) || !check_shapes(ctx, layer, p, &experts) ||
        !check_dtypes(ctx, p, &eo))
      continue;
    if (ctx.spec.direction == Direction::to_hf && g.down) {
      // The reference writes per_expert_scale with the model's count (2.4.2).
      const auto expected = model_expert_count(ctx, g.down->input_name);
      if (expected && experts != expected->count) {
        ctx.problems.add(Errc::plan, "", g.down->input_name,
                         expert_count_problem(experts, *expected));
        continue;
      }
    }
    std::tie(eo.expert_begin, eo.experts) = ep_range(experts, o.ep_size, o.ep_rank);
    ctx.expert_out[layer] = eo;
    if (o.ep_size > 1 || o.ep_shard_size > 1)
      check_ep_split(ctx, p);
  }
}

} // namespace shardshift
