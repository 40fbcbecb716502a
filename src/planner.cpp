// planner.cpp: make_plan(), the list of planning passes (planner.h says what each one does), and
// the checks that come before them. The passes are in plan_classify.cpp, plan_validate.cpp,
// plan_emit.cpp and plan_layout.cpp.
#include "planner.h"

#include <algorithm>

namespace shardshift {

const char* direction_name(Direction d) {
  return d == Direction::from_hf ? "from_hf" : "to_hf";
}

const char* op_name(OpKind op) {
  switch (op) {
  case OpKind::copy:
    return "copy";
  case OpKind::transpose:
    return "transpose";
  case OpKind::ones:
    return "ones";
  case OpKind::stack:
    return "stack";
  case OpKind::dequant:
    return "dequant";
  case OpKind::quantize:
    return "quantize";
  case OpKind::quantize_scale:
    return "quantize_scale";
  }
  return "?";
}

namespace {

std::vector<TensorRef> shard_order(const Checkpoint& input, uint32_t begin, uint32_t end) {
  std::vector<TensorRef> order;
  for (uint32_t s = begin; s < end; ++s)
    for (uint32_t t = 0; t < input.shards[s].header.tensors.size(); ++t)
      order.push_back({s, t});
  return order;
}

} // namespace

std::vector<TensorRef> data_order(const Checkpoint& input) {
  return shard_order(input, 0, input.own_shard_count());
}

std::vector<TensorRef> base_order(const Checkpoint& input) {
  return shard_order(input, input.own_shard_count(), static_cast<uint32_t>(input.shards.size()));
}

Status check_options(PlanContext& ctx) {
  const PlanOptions& o = ctx.options;
  if (o.ep_size == 0 || o.ep_shard_size == 0)
    return Status(Errc::invalid_argument,
                  std::string(o.ep_size == 0 ? "--ep-size" : "--ep-shard-size") +
                      " 0: the parts are counted from 1 (1, the default, keeps them whole)");
  if (o.ep_rank >= o.ep_size)
    return Status(Errc::invalid_argument, "--ep-rank must be below --ep-size");
  if (o.ep_shard_rank >= o.ep_shard_size)
    return Status(Errc::invalid_argument, "--ep-shard-rank must be below --ep-shard-size");
  const bool expert_parallel = o.ep_size > 1 || o.ep_shard_size > 1;
  if (expert_parallel && !ctx.spec.expert_parallel)
    return Status(Errc::invalid_argument, "expert-parallel export (--ep-size, --ep-shard-size) is "
                                          "not offered for " +
                                              std::string(ctx.spec.model) + " yet");
  if (expert_parallel && ctx.spec.direction != Direction::from_hf)
    return Status(Errc::invalid_argument,
                  "expert-parallel export (--ep-size, --ep-shard-size) applies to from_hf only");
  if (o.quantize_fp8 && !(ctx.spec.quantizes && ctx.spec.direction == Direction::to_hf))
    return Status(Errc::invalid_argument,
                  "--quantize fp8 applies to deepseek_v3 to_hf only (this is " +
                      std::string(ctx.spec.model) + " " + direction_name(ctx.spec.direction) + ")");
  if (o.quantize_fp8 && o.expert_dtype)
    return Status(Errc::invalid_argument,
                  "--quantize fp8 writes F8_E4M3 weights; --dtype must be keep");
  // Flags of the other direction (or of another model) would change nothing here: refused, so
  // that a user who gave one learns it had no effect.
  const std::string here = std::string(ctx.spec.model) + " " + direction_name(ctx.spec.direction);
  if (!ctx.spec.honours_exclude && o.exclude != PlanOptions{}.exclude)
    return Status(Errc::invalid_argument,
                  "--exclude applies to to_hf only (it removes keys of the Hugging Face output, "
                  "as the reference's to_hf does); this is " +
                      here);
  const bool writes_ones =
      std::any_of(ctx.spec.rules.begin(), ctx.spec.rules.end(), [](const Rule& r) {
        return r.action == RuleAction::expert_down && !r.extra.empty();
      });
  if (o.scale_dtype && !(writes_ones && ctx.spec.direction == Direction::to_hf))
    return Status(Errc::invalid_argument,
                  "--scale-dtype sets the dtype of the per_expert_scale that to_hf writes for "
                  "diffusion_gemma and gemma4_moe; this is " +
                      here + ", which writes none");
  if (!o.tied_head && ctx.spec.tied_head_source.empty())
    return Status(Errc::invalid_argument,
                  "--no-tied-head applies where from_hf writes a tied lm_head.weight "
                  "(diffusion_gemma); this is " +
                      here + ", which writes none");
  if (ctx.spec.honours_exclude && o.exclude && !o.exclude->empty()) {
    auto pattern = KeyPattern::compile(*o.exclude);
    if (!pattern)
      return Status(Errc::invalid_argument,
                    "--exclude '" + printable(*o.exclude) + "' " + pattern.status().message());
    ctx.exclude = std::move(pattern).value();
  }
  return {};
}

Result<Plan> make_plan(const Checkpoint& input, const PlanOptions& options, Profiler* profiler) {
  std::vector<std::string> keys;
  for (TensorRef r : data_order(input))
    keys.push_back(input.info(r).name);
  // config.json's model_type names the adapter. A file simdjson cannot read may be one Python's
  // json reads (NaN, Infinity, integers beyond 64 bits), whose model_type the reference would
  // take: guessing from the keys instead could pick another adapter.
  if (!input.config_error.empty() && options.adapter.empty())
    return Status(Errc::format, (input.root / "config.json").string() +
                                    ": is not JSON that shardshift can read (" +
                                    input.config_error +
                                    "), so its model_type cannot name the adapter (Python's json "
                                    "also takes NaN, Infinity and integers beyond 64 bits): make "
                                    "it plain JSON, or give --adapter");
  auto selected = select_adapter(input.config_model_type, keys, options.adapter, options.direction);
  if (!selected)
    return selected.status();
  PlanContext ctx(input, options, **selected);
  if (Status s = check_options(ctx); !s.ok())
    return s;
  if (input.base_first_shard && ctx.spec.direction != Direction::to_hf)
    return Status(Errc::invalid_argument,
                  "--base restores what from_hf dropped and applies to to_hf only; " +
                      input.root.string() + " is converted from_hf (Hugging Face to native)");
  if (!options.base.empty() && !input.base_first_shard)
    return Status(Errc::invalid_argument, "--base " + options.base.string() +
                                              " is not attached to the input (open_for_plan)");

  // The checking passes collect every problem; the plan fails with all of them at once.
  const std::pair<const char*, void (*)(PlanContext&)> checking[] = {
      {"read_config_facts", read_config_facts},
      {"classify_keys", classify_keys},
      {"check_adapter_fits_keys", check_adapter_fits_keys},
      {"group_expert_pieces", group_expert_pieces},
      {"check_expert_layers", check_expert_layers},
      {"validate_groups", validate_groups},
      {"pair_block_scales", pair_block_scales},
      {"group_stacks", group_stacks},
      {"validate_stacks", validate_stacks},
      {"emit_output_tensors", emit_output_tensors},
      {"restore_base_keys", restore_base_keys},
      {"check_unique_names", check_unique_names},
  };
  for (auto [name, pass] : checking) {
    PassTimer timer(profiler, name);
    pass(ctx);
  }
  if (!ctx.problems.empty())
    return ctx.problems.status(input.root.string() + ": the checkpoint does not fit the " +
                               std::string(ctx.spec.model) + " " +
                               direction_name(ctx.spec.direction) + " adapter");

  {
    PassTimer timer(profiler, "cut_files");
    cut_files(ctx);
  }
  {
    PassTimer timer(profiler, "lay_out_headers");
    if (Status s = lay_out_headers(ctx); !s.ok())
      return s;
  }
  {
    PassTimer timer(profiler, "summarize");
    summarize(ctx);
  }
  return std::move(ctx.plan);
}

} // namespace shardshift
