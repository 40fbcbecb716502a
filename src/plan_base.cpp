// plan_base.cpp: restore_base_keys, the pass that makes HF -> native -> HF lose nothing
// (docs/semantics.md section 16). With `--base DIR` attached, DIR's keys go through the family's
// from_hf rules, and every key a `drop` rule claims (and only those: keys that from_hf consumes
// into another tensor, such as block scales or per-expert pieces, are not dropped) becomes a
// pass-through copy from DIR's shard, after the converted tensors, in DIR's data order. Without
// a base, the to_hf plan lists the family's drop rules in words, for the note that says what the
// output lacks.
#include "planner.h"

#include <set>

namespace shardshift {

namespace {

// DIR must be a Hugging Face checkpoint of the conversion's model, told apart as IN is
// (config.json's model_type, then the key names: semantics 6).
bool check_base_family(PlanContext& ctx, const std::vector<TensorRef>& order) {
  const Checkpoint& in = ctx.input;
  const std::string base = in.base_root.string();
  std::vector<std::string> keys;
  keys.reserve(order.size());
  for (TensorRef r : order)
    keys.push_back(in.info(r).name);
  auto detected = select_adapter(in.base_config_model_type, keys, "", std::nullopt);
  if (!detected) {
    ctx.problems.add(Errc::plan, base, "",
                     "--base: cannot tell which model this checkpoint is (" +
                         detected.status().message() +
                         "); give the Hugging Face checkpoint IN was converted from");
    return false;
  }
  const AdapterSpec& spec = **detected;
  const std::string seen = in.base_config_model_type.empty()
                               ? std::string("by its key names")
                               : "config.json model_type '" +
                                     printable(in.base_config_model_type) + "'";
  if (spec.model != ctx.spec.model) {
    ctx.problems.add(Errc::plan, base, "",
                     "--base is a " + std::string(spec.model) + " checkpoint (" + seen +
                         ") but this conversion is " + std::string(ctx.spec.model) +
                         "; give the Hugging Face checkpoint IN was converted from");
    return false;
  }
  if (spec.direction != Direction::from_hf) {
    ctx.problems.add(Errc::plan, base, "",
                     "--base is a native checkpoint (its keys are NeMo Automodel's); give the "
                     "original Hugging Face checkpoint IN was converted from");
    return false;
  }
  return true;
}

} // namespace

void restore_base_keys(PlanContext& ctx) {
  if (ctx.spec.direction != Direction::to_hf)
    return;
  const AdapterSpec* from_hf = find_adapter(ctx.spec.model, Direction::from_hf);
  if (!from_hf)
    return;
  const Checkpoint& in = ctx.input;
  if (!in.base_first_shard) {
    for (const Rule& r : from_hf->rules)
      if (r.action == RuleAction::drop)
        ctx.plan.not_restored.emplace_back(r.output.empty() ? r.pattern : r.output);
    return;
  }
  const std::vector<TensorRef> order = base_order(in);
  if (!check_base_family(ctx, order))
    return;

  std::map<std::string_view, const OutputTensor*> converted;
  for (const OutputTensor& t : ctx.plan.tensors)
    converted.emplace(t.name, &t);
  std::vector<OutputTensor> restored;
  for (const Classified& c : classify_refs(*from_hf, in, order)) {
    if (c.action != RuleAction::drop)
      continue;
    const TensorInfo& info = in.info(c.ref);
    const std::string& file = in.shard(c.ref).file_name; // the shard's path
    if (auto it = converted.find(info.name); it != converted.end()) {
      ctx.problems.add(Errc::plan, file, info.name,
                       "would be restored from --base, but the to_hf conversion writes a tensor "
                       "of this name too (" +
                           printable(it->second->note.empty() ? "from the input"
                                                              : it->second->note) +
                           "); the native checkpoint already has it, so leave out --base or "
                           "remove it from IN");
      continue;
    }
    OutputTensor t;
    t.name = info.name;
    t.dtype = info.dtype;
    t.shape = info.shape;
    t.op = OpKind::copy;
    t.source = c.ref;
    t.note = "restored from --base " + file;
    restored.push_back(std::move(t));
  }
  for (OutputTensor& t : restored) {
    const size_t before = ctx.plan.tensors.size();
    emit_tensor(ctx, std::move(t));
    ctx.plan.restored += ctx.plan.tensors.size() - before;
  }
}

} // namespace shardshift
