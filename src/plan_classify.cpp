// plan_classify.cpp: the first two planning passes. classify_keys runs every input key through the
// adapter's rules (adapter.h says how rules match and what templates expand to);
// group_expert_pieces gathers each layer's expert pieces for validation.
#include "planner.h"

#include <algorithm>

namespace shardshift {

namespace {

// Expands an output template: $1..$9 are capture groups, {layer} the expert's `layers.N`,
// {P} the "model." prefix when the input uses one.
std::string expand(std::string_view tmpl, const std::smatch& m, std::string_view layer,
                   std::string_view prefix) {
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    char c = tmpl[i];
    if (c == '$' && i + 1 < tmpl.size() && tmpl[i + 1] >= '1' && tmpl[i + 1] <= '9') {
      out += m[tmpl[i + 1] - '0'].str();
      ++i;
    } else if (tmpl.substr(i).starts_with("{layer}")) {
      out += layer;
      i += 6;
    } else if (tmpl.substr(i).starts_with("{P}")) {
      out += prefix;
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

constexpr size_t MAX_RENAMED_KEY = 4096;

// Whether `key` holds, where the rules read a number (after `layers.` or `experts.`), a character
// Python's \d matches (any Unicode decimal digit) other than 0-9: the rules' \d (ECMAScript) takes
// 0-9 only. Asked of KeyPattern, which reads \d as Python does.
bool holds_other_digit(const std::string& key) {
  if (std::all_of(key.begin(), key.end(), [](char c) { return (unsigned char)c < 0x80; }))
    return false;
  static const KeyPattern other_digit =
      KeyPattern::compile(R"(.*?(?:layers|experts)\.\d*(?![0-9])\d)").value();
  Result<bool> m = other_digit.match(key);
  return !m || *m; // a key PCRE2 gives up on is refused too
}

// Why the rules cannot read `key` as the reference reads it, or "" when they can.
std::string unreadable_name(const std::string& key) {
  // The rules' '.' and '$' stop at a line break (ECMAScript), where the reference's prefix tests
  // and Python's '$' do not: such a key would keep its old name here and be renamed there.
  if (key.find_first_of("\n\r") != std::string::npos)
    return "the name holds a line break, which the renaming rules cannot read as the reference "
           "does; rename the tensor";
  // std::regex matches by recursion, one frame per character: a name of tens of kilobytes
  // overflows the stack. Real names are a few hundred bytes.
  if (key.size() > MAX_RENAMED_KEY)
    return "the name is " + std::to_string(key.size()) +
           " bytes long; shardshift's renaming "
           "rules read names of at most " +
           std::to_string(MAX_RENAMED_KEY) + " bytes: rename the tensor";
  if (holds_other_digit(key))
    return "the name holds a decimal digit other than 0-9 in a layer or expert number, which the "
           "reference's patterns (Python's \\d) read as a digit and shardshift's rules do not; "
           "rename the tensor";
  return {};
}

// Rule::tail_from: the reference's str.replace rewrites every copy of the name's tail (from the
// last `from` on), the rule the end only. Why `name` is refused, or "".
std::string repeated_tail(const std::string& name, std::string_view from) {
  const size_t at = from.empty() ? std::string::npos : name.rfind(from);
  if (at == std::string::npos)
    return {};
  const std::string tail = name.substr(at);
  if (name.find(tail) == at)
    return {};
  return "the name holds '" + printable(tail) +
         "' twice; the reference renames both, shardshift's rules the last only: rename the tensor";
}

struct CompiledRule {
  const Rule* rule;
  std::regex re;
};

// The first rule whose pattern matches decides; rename_continue rewrites the key and goes on.
Classified classify(const std::vector<CompiledRule>& rules, const std::string& key,
                    std::string_view prefix) {
  Classified c;
  c.input_name = key;
  if (std::string why = unreadable_name(key); !why.empty()) {
    c.action = RuleAction::reject;
    c.output = std::move(why);
    return c;
  }
  std::string name = key;
  for (const CompiledRule& cr : rules) {
    std::smatch m;
    if (!std::regex_search(name, m, cr.re))
      continue;
    // Expert rules capture the layer path as group 1.
    std::string layer = m.size() > 1 ? m[1].str() : std::string();
    switch (cr.rule->action) {
    case RuleAction::rename_continue:
      name = expand(cr.rule->output, m, layer, prefix);
      continue;
    case RuleAction::drop:
    case RuleAction::expert_scale:
      c.action = cr.rule->action;
      c.layer = layer;
      return c;
    case RuleAction::reject:
      c.action = RuleAction::reject;
      c.output = std::string(cr.rule->output);
      return c;
    case RuleAction::stack_piece:
    case RuleAction::unstack:
      if (cr.rule->action == RuleAction::stack_piece && m.size() > 2)
        c.expert = m[2].str();
      [[fallthrough]];
    case RuleAction::rename:
      if (std::string why = repeated_tail(name, cr.rule->tail_from); !why.empty()) {
        c.action = RuleAction::reject;
        c.output = std::move(why);
        return c;
      }
      [[fallthrough]];
    case RuleAction::block_scale: // output: the weight's name
    case RuleAction::expert_gate_up:
    case RuleAction::expert_down:
      c.action = cr.rule->action;
      c.rule = cr.rule;
      c.layer = layer;
      c.output = expand(cr.rule->output, m, layer, prefix);
      if (!cr.rule->extra.empty())
        c.extra = expand(cr.rule->extra, m, layer, prefix);
      return c;
    }
  }
  c.action = RuleAction::rename; // no rule claims the key: it passes through unchanged
  c.output = name;
  return c;
}

} // namespace

std::vector<Classified> classify_refs(const AdapterSpec& spec, const Checkpoint& ckpt,
                                      const std::vector<TensorRef>& refs) {
  std::vector<CompiledRule> rules;
  for (const Rule& r : spec.rules)
    rules.push_back({&r, std::regex(r.pattern.begin(), r.pattern.end())});
  const bool model_prefix = std::any_of(refs.begin(), refs.end(), [&](TensorRef r) {
    return ckpt.info(r).name.starts_with("model.");
  });
  const std::string prefix = model_prefix ? "model." : "";

  std::vector<Classified> classified;
  classified.reserve(refs.size());
  for (TensorRef r : refs) {
    Classified c = classify(rules, ckpt.info(r).name, prefix);
    c.ref = r;
    classified.push_back(std::move(c));
  }
  return classified;
}

void classify_keys(PlanContext& ctx) {
  ctx.classified = classify_refs(ctx.spec, ctx.input, data_order(ctx.input));
}

namespace {

// Whether one of the adapter's rules decided what becomes of the key (a plain rename of a prefix
// is not a rule's decision).
bool ruled(const Classified& c) {
  return c.rule || c.action != RuleAction::rename;
}

} // namespace

// The reference converts whatever it is given: an adapter that claims no key (no rule, and no
// prefix it renames) copies IN unchanged, and to_hf of a Hugging Face checkpoint renames model.* to
// model.decoder.decoder.*. Both come from a config.json model_type, --adapter or --direction that
// does not fit the keys, and are refused, with what the keys alone say.
void check_adapter_fits_keys(PlanContext& ctx) {
  std::vector<std::string> keys;
  bool claimed = false;
  for (const Classified& c : ctx.classified) {
    claimed = claimed || ruled(c) || c.output != c.input_name;
    keys.push_back(c.input_name);
  }
  if (keys.empty())
    return;
  if (ctx.options.direction) {
    // The direction the keys give for this model, where they give one.
    auto layout = select_adapter("", keys, ctx.spec.model, std::nullopt);
    if (layout && (*layout)->direction != ctx.spec.direction) {
      ctx.problems.add(Errc::plan, "", "",
                       std::string("--direction ") + direction_name(ctx.spec.direction) +
                           " does not fit the keys, which are of the layout converted " +
                           direction_name((*layout)->direction) +
                           ": drop --direction, or give the checkpoint it was meant for");
      return;
    }
  }
  if (claimed)
    return;
  // Converting nothing is what the reference does with a checkpoint that has nothing of this
  // layout (a DeepSeek-V3 of dense layers only, say), and is kept; refused only where the keys
  // alone (no config.json, no flag) name another adapter, which would convert some of them.
  auto other = select_adapter("", keys, "", std::nullopt);
  if (!other || *other == &ctx.spec)
    return;
  const std::vector<Classified> by_other = classify_refs(**other, ctx.input, data_order(ctx.input));
  if (std::none_of(by_other.begin(), by_other.end(), ruled))
    return;
  const std::string model((*other)->model), direction = direction_name((*other)->direction);
  ctx.problems.add(
      Errc::plan, "", "",
      "no key is one the " + std::string(ctx.spec.model) + " " +
          direction_name(ctx.spec.direction) +
          " adapter converts (no expert or router tensor of its layout), so the output would be "
          "the input unchanged; the keys are those of " +
          model + " " + direction + " (--adapter " + model + " --direction " + direction + ")" +
          (ctx.input.config_model_type.empty()
               ? std::string()
               : "; config.json's model_type is '" + printable(ctx.input.config_model_type) + "'"));
}

void group_expert_pieces(PlanContext& ctx) {
  for (const Classified& c : ctx.classified) {
    switch (c.action) {
    case RuleAction::reject:
      ctx.problems.add(Errc::plan, "", c.input_name, c.output);
      break;
    case RuleAction::expert_gate_up:
    case RuleAction::expert_down:
    case RuleAction::expert_scale: {
      ExpertGroup& g = ctx.groups[c.layer];
      const Classified*& slot = c.action == RuleAction::expert_gate_up ? g.gate_up
                                : c.action == RuleAction::expert_down  ? g.down
                                                                       : g.scale;
      if (slot)
        ctx.problems.add(Errc::plan, "", c.input_name,
                         c.layer + " already has this expert piece in '" +
                             printable(slot->input_name) + "'");
      else
        slot = &c;
      break;
    }
    default:
      break;
    }
  }
}

} // namespace shardshift
