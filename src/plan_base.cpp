// plan_base.cpp: restore_base_keys, the pass that makes HF -> native -> HF lose nothing
// (docs/semantics.md section 16). With `--base DIR` attached, DIR's keys go through the family's
// from_hf rules, and every key a `drop` rule claims (and only those: keys that from_hf consumes
// into another tensor, such as block scales or per-expert pieces, are not dropped) becomes a
// pass-through copy from DIR's shard, after the converted tensors, in DIR's data order. Without
// a base, the to_hf plan lists the family's drop rules in words, for the note that says what the
// output lacks. A base that is evidently not the checkpoint IN was converted from (another
// family, another size, other layers) restores nothing and fails the plan: its keys would be
// another model's, written into this one.
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
  const std::string seen =
      in.base_config_model_type.empty()
          ? std::string("by its key names")
          : "config.json model_type '" + printable(in.base_config_model_type) + "'";
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

const char* const BASE_ADVICE = "; pass the Hugging Face checkpoint IN came from";

// An expert tensor made from one expert-parallel rank's native checkpoint (--ep-size on from_hf)
// holds that rank's experts only: axis 0 is shorter than the base's, the rest alike. The router's
// weights, copied whole, still tell a base with another expert count.
bool holds_some_experts(const OutputTensor& t, const std::vector<uint64_t>& base_shape) {
  if (t.op != OpKind::transpose && t.op != OpKind::ones)
    return false;
  return !t.shape.empty() && t.shape.size() == base_shape.size() && t.shape[0] < base_shape[0] &&
         std::equal(t.shape.begin() + 1, t.shape.end(), base_shape.begin() + 1);
}

// Every tensor the conversion writes and DIR also holds must have DIR's shape: a base of the same
// family but another size (hidden size, expert count, vocabulary) has the same names. Dtypes may
// differ (--dtype, FP8 dequantized to BF16), so only shapes are compared; names DIR lacks (FP8
// scales of --quantize fp8 against a BF16 base) are not its to judge. A key from_hf drops that
// the conversion writes too is a clash of its own, reported by restore_base_keys.
bool check_base_shapes(PlanContext& ctx, const std::vector<Classified>& base) {
  std::map<std::string_view, const TensorInfo*> by_name;
  for (const Classified& c : base)
    if (c.action != RuleAction::drop)
      by_name.emplace(ctx.input.info(c.ref).name, &ctx.input.info(c.ref));
  for (const OutputTensor& t : ctx.plan.tensors) {
    auto it = by_name.find(t.name);
    if (it == by_name.end() || it->second->shape == t.shape ||
        holds_some_experts(t, it->second->shape))
      continue;
    ctx.problems.add(Errc::plan, ctx.input.base_root.string(), "",
                     "--base is not the checkpoint IN was converted from: tensor '" +
                         printable(t.name) + "' is " + shape_text(it->second->shape) +
                         " there and " + shape_text(t.shape) + " in this output" + BASE_ADVICE);
    return false;
  }
  return true;
}

// The layer path of a key: the text up to the number of its first `layers.N` that a dot or the
// end follows ("model.decoder.layers.2"), and where that number begins (what comes before it
// names the stack of layers); nullopt without one.
struct LayerPath {
  std::string_view path;
  size_t number_at;
  std::string_view stack() const { return path.substr(0, number_at); }
};
std::optional<LayerPath> layer_path(std::string_view name) {
  constexpr std::string_view marker = "layers.";
  for (size_t at = name.find(marker); at != std::string_view::npos;
       at = name.find(marker, at + 1)) {
    if (at != 0 && name[at - 1] != '.')
      continue;
    const size_t number_at = at + marker.size();
    size_t end = number_at;
    while (end < name.size() && name[end] >= '0' && name[end] <= '9')
      ++end;
    if (end > number_at && (end == name.size() || name[end] == '.'))
      return LayerPath{name.substr(0, end), number_at};
  }
  return std::nullopt;
}

// The layer paths of a set of keys, and their stacks ("model.decoder.layers.").
struct LayerSet {
  std::set<std::string_view> paths, stacks;
  void add(std::string_view name) {
    if (auto l = layer_path(name)) {
      paths.insert(l->path);
      stacks.insert(l->stack());
    }
  }
  // A layer of a stack this holds, but not that layer.
  bool lacks(const std::optional<LayerPath>& l) const {
    return l && stacks.contains(l->stack()) && !paths.contains(l->path);
  }
};

// DIR and the output must have the same layers in each stack of layers both hold. With more
// layers (a deeper model of the same size), what DIR restores of the layers IN lacks (the
// encoder's layer_scalar copies of diffusion_gemma) would belong to no layer of the output; with
// fewer, the output would lack them for its last layers. Only the stacks that from_hf converts
// are compared: a dropped stack (the vision tower's blocks) counts its own layers. A layer whose
// every tensor --exclude removed is still one of the output's: the user dropped it, not the
// conversion.
bool check_base_layers(PlanContext& ctx, const std::vector<Classified>& base) {
  LayerSet out, in_base;
  for (const OutputTensor& t : ctx.plan.tensors)
    out.add(t.name);
  for (const std::string& name : ctx.excluded_names)
    out.add(name);
  for (const Classified& c : base)
    if (c.action != RuleAction::drop)
      in_base.add(ctx.input.info(c.ref).name);
  const std::string dir = ctx.input.base_root.string();
  const std::string heading = "--base is not the checkpoint IN was converted from: ";
  for (const Classified& c : base) {
    const std::string& name = ctx.input.info(c.ref).name;
    const auto l = layer_path(name);
    if (c.action == RuleAction::drop || !out.lacks(l))
      continue;
    ctx.problems.add(Errc::plan, dir, "",
                     heading + "it has layer '" + printable(l->path) + "' (tensor '" +
                         printable(name) + "'), which this output lacks" + BASE_ADVICE);
    return false;
  }
  for (const OutputTensor& t : ctx.plan.tensors) {
    const auto l = layer_path(t.name);
    if (!in_base.lacks(l))
      continue;
    ctx.problems.add(Errc::plan, dir, "",
                     heading + "this output has layer '" + printable(l->path) + "' (tensor '" +
                         printable(t.name) + "'), which the base lacks" + BASE_ADVICE);
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
  const std::vector<Classified> base = classify_refs(*from_hf, in, order);
  if (!check_base_shapes(ctx, base) || !check_base_layers(ctx, base))
    return;

  std::map<std::string_view, const OutputTensor*> converted;
  for (const OutputTensor& t : ctx.plan.tensors)
    converted.emplace(t.name, &t);
  std::vector<OutputTensor> restored;
  for (const Classified& c : base) {
    if (c.action != RuleAction::drop)
      continue;
    const TensorInfo& info = in.info(c.ref);
    const std::string& file = in.shard(c.ref).file_name; // the shard's path
    if (auto it = converted.find(info.name); it != converted.end()) {
      ctx.problems.add(
          Errc::plan, file, info.name,
          "would be restored from --base, but the to_hf conversion writes a tensor "
          "of this name too (" +
              printable(it->second->note.empty() ? "from the input" : it->second->note) +
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
