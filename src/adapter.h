// adapter.h: model adapters as data. An adapter (model x direction) is a list of rules the planner
// interprets; adding a model means adding a table in adapters.cpp and its tests, not touching the
// planner or the engine.
//
// Rules are tried in order against the input key; the first whose pattern matches decides
// (`rename_continue` rewrites the key and goes on with the next rules). A key no rule claims passes
// through unchanged. Patterns are ECMAScript regexes searched anywhere in the key (like Python's
// re.search); outputs are templates where $1..$9 are capture groups, {layer} is the `layers.N`
// text of an expert key and {P} is "model." when any input key starts with "model.", else "".
// Stacking rules (`stack_piece`, `unstack`, docs/semantics.md section 14) capture the layer path
// as group 1 and, for `stack_piece`, the expert index as group 2; {expert} in an `unstack`
// template is the expert index.
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
  drop,            ///< not written (counted as dropped); `output`: what it is, in words, for
                   ///< the to_hf note of what a round trip lacks without --base (semantics 16)
  rename_continue, ///< rewrite the key, keep applying later rules to the new key
  rename,          ///< rewrite the key and pass the tensor through (zero-copy)
  reject,          ///< an error: `output` is the message
  expert_gate_up,  ///< [E, X, Y] -> [E, Y, X] at `output`
  expert_down,     ///< [E, X, Y] -> [E, Y, X] at `output`, times the layer's scale when from_hf;
                   ///< to_hf also emits ones(E) at `extra`
  expert_scale,    ///< the layer's per-expert scale: consumed by the fold, not written
  stack_piece,     ///< one expert's 2-D [A, R] matrix: transposed into column block `slot` of
                   ///< `slots` of the [N, R, slots * A] output `output` (from_hf qwen3_moe)
  unstack,         ///< [N, R, C]: each expert's column block k of `slots`, transposed, becomes
                   ///< a 2-D tensor; block 0 is named by `output`, block 1 by `extra` (to_hf)
  block_scale,     ///< `W_scale_inv`, the block scales of the weight `W` (group 1): consumed by
                   ///< W's dequantization (semantics 15), not written; W's own rule still
                   ///< decides W's name and place (pass-through becomes dequant, stack_piece a
                   ///< dequantized piece)
};

struct Rule {
  RuleAction action;
  std::string_view pattern;
  std::string_view output = {}; ///< template (see above); the message for `reject`; the words
                                ///< for `drop`
  std::string_view extra = {};  ///< expert_down to_hf: where the ones go; unstack: block 1
  unsigned slot = 0, slots = 1; ///< stack_piece: which column block; both: how many blocks
  /// stack_piece / unstack, and to_hf's expert_gate_up / expert_down: the piece's name in
  /// messages (to_hf: the native tensor, which every MoE layer must have: plan_experts.cpp)
  std::string_view piece = {};
  /// rename: the reference renames with Python's str.replace of the key's tail from the last
  /// occurrence of this text ("layers."), which rewrites every copy of that tail; the rule
  /// rewrites the end only, so a key holding its tail twice is refused. Empty: not checked.
  std::string_view tail_from = {};
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
  bool expert_parallel = true;  ///< --ep-size / --ep-shard-size are offered
  /// from_hf: where the expert outputs (and dequantized weights) are cast, when --dtype is not
  /// given, to the dtype config.json gives, as the reference's model class builds its adapter with
  /// get_dtype(config.torch_dtype, torch.bfloat16) and the adapter casts to it.
  ///   none: the input's dtype is kept (no config dtype is read);
  ///   top_level: config.json's own (semantics 14.2.7, 15.2.6), BF16 when it gives none or
  ///     there is no config.json;
  ///   text_config: diffusion_gemma's model class reads its text_config's dtype (1.1.14); BF16
  ///     when text_config gives none; a top level naming another is refused (transformers'
  ///     from_pretrained copies it down); no config.json: kept;
  ///   top_then_text_config: gemma4_moe's model class sets text_config's dtype to the top
  ///     level's when that gives one, else keeps text_config's (BF16 when none); no config.json:
  ///     kept.
  enum class ConfigDtype { none, top_level, text_config, top_then_text_config };
  ConfigDtype dtype_from_config = ConfigDtype::none;
  /// to_hf: --quantize fp8 is offered (semantics 15.7); it quantizes every output key ending in
  /// `.weight` that contains none of `not_quantized`.
  bool quantizes = false;
  std::vector<std::string_view> not_quantized = {};
  /// The key of config.json that gives the model's expert count (qwen3_moe, diffusion_gemma
  /// and gemma4_moe "num_experts", deepseek_v3 "n_routed_experts"). to_hf: an expert tensor
  /// holding another count is refused, as the reference's split refuses it (or, for gemma, writes
  /// per_expert_scale with the model's count beside it). from_hf of the stacked families: a
  /// checkpoint whose experts (highest index + 1) are another count is refused, as the reference
  /// stacks the count config.json gives. Empty: not checked.
  std::string_view config_expert_count = {};
  /// to_hf with per-expert output keys: the key of config.json that gives each expert's
  /// intermediate size I ("moe_intermediate_size"), where the reference splits gate_and_up_projs
  /// (and splits down_projs only when its axis 1 is I). A stacked tensor of another I is refused;
  /// empty: not checked.
  std::string_view config_expert_size = {};
  /// The I the reference splits at when config.json does not give it: its config class's default
  /// (transformers' Qwen3MoeConfig 768, DeepseekV3Config 2048). A stacked tensor of another I is
  /// then refused too; 0: not checked.
  uint64_t config_expert_size_default = 0;
  /// to_hf, where config.json does not give that count: the router beside a layer's experts
  /// (".gate.weight": `...mlp.experts.down_projs` -> `...mlp.gate.weight`), whose axis 0 is the
  /// model's expert count. Empty: not checked.
  std::string_view expert_router = {};
};

/// The adapter for (model, direction); nullptr when unknown.
const AdapterSpec* find_adapter(std::string_view model, Direction direction);

/// Detects the model from `config_model_type` (config.json's "model_type", may be empty) and
/// the key names; the direction from the key names. Either can be forced. Errors say what was seen
/// and which flag sets it.
Result<const AdapterSpec*> select_adapter(std::string_view config_model_type,
                                          std::span<const std::string> keys,
                                          std::string_view forced_model,
                                          std::optional<Direction> forced_direction);

} // namespace shardshift
