// plan_experts.cpp: check_expert_layers, the to_hf pass that refuses a native MoE layer holding
// some of its expert tensors but not all (docs/semantics.md 2.8 and 14.3). Each native expert
// tensor is converted on its own (gate_and_up_projs into the gate and up projections, down_projs
// into the down projection and, for the gemma families, the ones of per_expert_scale), so without
// this check a layer missing one converts without an error into a checkpoint that silently lacks
// that layer's tensors. What a layer needs is read from the adapter's table (every rule that
// claims a native expert tensor), so one check serves every family. A layer with no expert tensor
// at all is a dense layer (deepseek_v3's first layers) and needs none; an expert-parallel
// checkpoint has fewer experts in each tensor, but every tensor. from_hf checks the Hugging Face
// pieces in validate_groups and validate_stacks.
#include "planner.h"

namespace shardshift {

namespace {

// A to_hf rule that claims one of a MoE layer's native expert tensors.
bool expert_tensor_rule(const Rule& r) {
  return r.action == RuleAction::expert_gate_up || r.action == RuleAction::expert_down ||
         r.action == RuleAction::unstack;
}

std::string piece_of(const Rule& r) {
  return std::string(r.piece.empty() ? r.pattern : r.piece);
}

// "a", "a and b", "a, b and c".
std::string listed(const std::vector<std::string>& items) {
  std::string text;
  for (size_t i = 0; i < items.size(); ++i)
    text += (i == 0 ? "" : i + 1 == items.size() ? " and " : ", ") + items[i];
  return text;
}

// One layer that has `present` (rule -> its input) of `needed`, and not all of them.
void report_incomplete(PlanContext& ctx, const std::string& layer,
                       const std::vector<const Rule*>& needed,
                       const std::map<const Rule*, const Classified*>& present) {
  std::vector<std::string> has, missing, all;
  for (const Rule* r : needed) {
    all.push_back(piece_of(*r));
    auto it = present.find(r);
    if (it == present.end())
      missing.push_back(piece_of(*r));
    else
      has.push_back(piece_of(*r) + " '" + printable(it->second->input_name) + "'");
  }
  ctx.problems.add(Errc::plan, "", "",
                   printable(layer) + ": incomplete expert tensors: has " + listed(has) +
                       " but is missing " + listed(missing) + " (every MoE layer of a native " +
                       std::string(ctx.spec.model) + " checkpoint has " + listed(all) +
                       "; the output would lack the Hugging Face tensors made from the missing " +
                       "ones); convert a native checkpoint that has them all");
}

} // namespace

void check_expert_layers(PlanContext& ctx) {
  if (ctx.spec.direction != Direction::to_hf)
    return;
  std::vector<const Rule*> needed;
  for (const Rule& r : ctx.spec.rules)
    if (expert_tensor_rule(r))
      needed.push_back(&r);
  // The first input each rule claims in each layer; a second one is reported by
  // group_expert_pieces or check_unique_names.
  std::map<std::string, std::map<const Rule*, const Classified*>> layers;
  for (const Classified& c : ctx.classified)
    if (c.rule && expert_tensor_rule(*c.rule))
      layers[c.layer].emplace(c.rule, &c);
  for (const auto& [layer, present] : layers)
    if (present.size() != needed.size())
      report_incomplete(ctx, layer, needed, present);
}

} // namespace shardshift
