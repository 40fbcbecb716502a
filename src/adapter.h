// adapter.h: model adapters as data. An adapter (model x direction) is a list of rules the planner
// interprets; adding a model means adding a table in adapters.cpp and its tests, not touching the
// planner or the engine.
//
// Rules are tried in order against the input key; the first whose pattern matches decides
// (`rename_continue` rewrites the key and goes on with the next rules). A key no rule claims passes
// through unchanged. Patterns are ECMAScript regexes searched anywhere in the key (like Python's
// re.search); outputs are templates where $1..$9 are capture groups, {layer} is the `layers.N`
// text of an expert key and {P} is "model." when any input key starts with "model.", else "".
// Thread-safety: the tables are immutable.
#pragma once

#include "shardshift/plan.h"

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shardshift {

enum class RuleAction {
  drop,            ///< not written (counted as dropped)
  rename_continue, ///< rewrite the key, keep applying later rules to the new key
  rename,          ///< rewrite the key and pass the tensor through (zero-copy)
  reject,          ///< an error: `output` is the message
  expert_gate_up,  ///< [E, X, Y] -> [E, Y, X] at `output`
  expert_down,     ///< [E, X, Y] -> [E, Y, X] at `output`, times the layer's scale when from_hf;
                   ///< to_hf also emits ones(E) at `extra`
  expert_scale,    ///< the layer's per-expert scale: consumed by the fold, not written
};

struct Rule {
  RuleAction action;
  std::string_view pattern;
  std::string_view output = {}; ///< template (see above); the message for `reject`
  std::string_view extra = {};  ///< expert_down to_hf: where the ones go
};

struct AdapterSpec {
  std::string_view model;
  Direction direction;
  std::vector<Rule> rules;
  /// from_hf diffusion_gemma: write lm_head.weight as a copy of this output tensor when the input
  /// has no lm_head.weight and no LoRA keys (`.lora_`). Empty: no tied head.
  std::string_view tied_head_source = {};
  bool fold_scale = false;      ///< from_hf: expert_down multiplies by the layer's scale
  bool honours_exclude = false; ///< to_hf: the exclusion pattern applies
};

/// The adapter for (model, direction); nullptr when unknown.
const AdapterSpec* find_adapter(std::string_view model, Direction direction);
/// Names of every model with an adapter, for --help and errors.
std::vector<std::string_view> adapter_models();

/// Detects the model from `config_model_type` (config.json's "model_type", may be empty) and
/// the key names; the direction from the key names. Either can be forced. Errors say what was seen
/// and which flag sets it.
Result<const AdapterSpec*> select_adapter(std::string_view config_model_type,
                                          std::span<const std::string> keys,
                                          std::string_view forced_model,
                                          std::optional<Direction> forced_direction);

} // namespace shardshift
