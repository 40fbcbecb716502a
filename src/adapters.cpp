// adapters.cpp: the rule tables of every model adapter (docs: semantics.md sections 1-3).
#include "adapter.h"

#include <algorithm>
#include <array>

namespace shardshift {

namespace {

// Patterns shared by both models. Router and expert keys are recognised by the `layers.N` path
// inside them, wherever the prefix is.
constexpr std::string_view ROUTER_RENAME = R"(^(.*layers\.\d+)\.router\.(proj\.weight|scale)$)";
constexpr std::string_view GATE_TO_ROUTER = R"(^(.*layers\.\d+)\.moe\.gate\.(proj\.weight|scale)$)";
// The reference renames a router key with Python's str.replace of its `layers.N.router.ATTR`
// tail, which also rewrites any earlier copy of that text in the key (Rule::tail_from).

const AdapterSpec DIFFUSION_GEMMA_FROM_HF = {
    .model = "diffusion_gemma",
    .direction = Direction::from_hf,
    .rules =
        {
            // The encoder's layer_scalar copies and the vision tower are not part of the native
            // model.
            {RuleAction::drop, R"(^model\.encoder\.)",
             "model.encoder.* (the vision tower and the encoder's layer_scalar copies)"},
            {RuleAction::rename_continue, R"(^model\.decoder\.(.*)$)", "model.$1"},
            {RuleAction::expert_scale, R"((layers\.\d+)\.router\.per_expert_scale$)"},
            {.action = RuleAction::rename,
             .pattern = ROUTER_RENAME,
             .output = "$1.moe.gate.$2",
             .tail_from = "layers."},
            {RuleAction::expert_gate_up, R"((layers\.\d+)\.experts\.gate_up_proj$)",
             "model.{layer}.moe.experts.gate_and_up_projs"},
            {RuleAction::expert_down, R"((layers\.\d+)\.experts\.down_proj$)",
             "model.{layer}.moe.experts.down_projs"},
        },
    .tied_head_source = "model.embed_tokens.weight",
    .fold_scale = true,
    .dtype_from_config = AdapterSpec::ConfigDtype::text_config,
};

const AdapterSpec DIFFUSION_GEMMA_TO_HF = {
    .model = "diffusion_gemma",
    .direction = Direction::to_hf,
    .rules =
        {
            {RuleAction::drop, R"(^lm_head\.weight$)"},
            {.action = RuleAction::rename,
             .pattern = R"(^model\.(.*layers\.\d+)\.moe\.gate\.(proj\.weight|scale)$)",
             .output = "model.decoder.$1.router.$2",
             .tail_from = "layers."},
            // The reference strips six characters without checking them; we refuse instead.
            {RuleAction::reject, GATE_TO_ROUTER,
             "router gate key does not start with 'model.'; native diffusion_gemma keys are "
             "model.layers.N.moe.gate.*"},
            {.action = RuleAction::expert_gate_up,
             .pattern = R"((layers\.\d+)\.moe\.experts\.gate_and_up_projs$)",
             .output = "model.decoder.{layer}.experts.gate_up_proj",
             .piece = "gate_and_up_projs"},
            {.action = RuleAction::expert_down,
             .pattern = R"((layers\.\d+)\.moe\.experts\.down_projs$)",
             .output = "model.decoder.{layer}.experts.down_proj",
             .extra = "model.decoder.{layer}.router.per_expert_scale",
             .piece = "down_projs"},
            {RuleAction::rename, R"(^model\.(.*)$)", "model.decoder.$1"},
        },
    .honours_exclude = true,
    // The reference writes per_expert_scale with the model's count (2.4.2).
    .config_expert_count = "num_experts",
    .expert_router = ".gate.proj.weight",
};

const AdapterSpec GEMMA4_MOE_FROM_HF = {
    .model = "gemma4_moe",
    .direction = Direction::from_hf,
    .rules =
        {
            {RuleAction::expert_scale, R"((layers\.\d+)\.(moe|experts|router)\.per_expert_scale$)"},
            {.action = RuleAction::rename,
             .pattern = ROUTER_RENAME,
             .output = "$1.moe.gate.$2",
             .tail_from = "layers."},
            {RuleAction::expert_gate_up, R"((layers\.\d+)\.(moe|experts)\.gate_up_proj$)",
             "{P}language_model.{layer}.moe.experts.gate_and_up_projs"},
            {RuleAction::expert_down, R"((layers\.\d+)\.(moe|experts)\.down_proj$)",
             "{P}language_model.{layer}.moe.experts.down_projs"},
        },
    .fold_scale = true,
    .dtype_from_config = AdapterSpec::ConfigDtype::top_then_text_config,
};

const AdapterSpec GEMMA4_MOE_TO_HF = {
    .model = "gemma4_moe",
    .direction = Direction::to_hf,
    .rules =
        {
            {.action = RuleAction::rename,
             .pattern = GATE_TO_ROUTER,
             .output = "$1.router.$2",
             .tail_from = "layers."},
            {.action = RuleAction::expert_gate_up,
             .pattern = R"((layers\.\d+)\.moe\.experts\.gate_and_up_projs$)",
             .output = "{P}language_model.{layer}.experts.gate_up_proj",
             .piece = "gate_and_up_projs"},
            {.action = RuleAction::expert_down,
             .pattern = R"((layers\.\d+)\.moe\.experts\.down_projs$)",
             .output = "{P}language_model.{layer}.experts.down_proj",
             .extra = "{P}language_model.{layer}.router.per_expert_scale",
             .piece = "down_projs"},
        },
    .honours_exclude = true,
    .config_expert_count = "num_experts",
    .expert_router = ".gate.proj.weight",
};

// The per-expert stacking of the reference's MoE mixin (semantics 14.2), which qwen3_moe and
// deepseek_v3 share: every expert is three 2-D tensors in HF, and native stacks gate and up into
// gate_and_up_projs (slots 0 and 1 of 2) and down into down_projs. The expert pattern is the
// reference's (an optional `model.` then `language_model.` at the start).
#define MIXIN_EXPERT(proj)                                                                         \
  R"(^((?:model\.)?(?:language_model\.)?layers\.\d+)\.mlp\.experts\.(\d+)\.)" proj R"(\.weight$)"
const Rule MIXIN_STACKING[] = {
    {RuleAction::stack_piece,
     MIXIN_EXPERT("gate_proj"),
     "$1.mlp.experts.gate_and_up_projs",
     {},
     0,
     2,
     "gate_proj"},
    {RuleAction::stack_piece,
     MIXIN_EXPERT("up_proj"),
     "$1.mlp.experts.gate_and_up_projs",
     {},
     1,
     2,
     "up_proj"},
    {RuleAction::stack_piece,
     MIXIN_EXPERT("down_proj"),
     "$1.mlp.experts.down_projs",
     {},
     0,
     1,
     "down_proj"},
    // The reference's pattern is not anchored at its end: it would stack this key too.
    {RuleAction::reject,
     R"(^(?:model\.)?(?:language_model\.)?layers\.\d+\.mlp\.experts\.\d+\.(gate|up|down)_proj\.weight.*\.weight$)",
     "expert key with more after '.weight'; the reference would take it for the expert's weight"},
};
#undef MIXIN_EXPERT

/// `first`, then the mixin's stacking rules.
std::vector<Rule> then_mixin_stacking(std::initializer_list<Rule> first) {
  std::vector<Rule> rules(first);
  rules.insert(rules.end(), std::begin(MIXIN_STACKING), std::end(MIXIN_STACKING));
  return rules;
}

// qwen3_moe (semantics 14): the mixin's stacking.
const AdapterSpec QWEN3_MOE_FROM_HF = {
    .model = "qwen3_moe",
    .direction = Direction::from_hf,
    .rules = then_mixin_stacking({
        // The reference drops FP8 block scales and loads the weights unscaled (14.5).
        {RuleAction::reject, R"(_scale_inv$)",
         "FP8 block scale: shardshift does not dequantize qwen3_moe checkpoints yet (the "
         "reference would drop the scales and load the FP8 weights unscaled); convert a "
         "BF16 checkpoint"},
        {RuleAction::reject, R"(\.mlp\.experts\.\d+\..*lora_)",
         "per-expert LoRA weights are not supported for qwen3_moe; convert the base "
         "checkpoint"},
        // PEFT's ParamWrapper layout, which the reference reshapes into grouped LoRA (14.5).
        {RuleAction::reject, R"(layers\.\d+\.mlp\.experts\.(base_layer\.)?lora_[AB]\.weight$)",
         "expert LoRA weights in PEFT's ParamWrapper layout are not supported for qwen3_moe; "
         "convert the base checkpoint"},
    }),
    .dtype_from_config = AdapterSpec::ConfigDtype::top_level,
    // The reference stacks as many experts as config.json says (14.2.5).
    .config_expert_count = "num_experts",
};

// deepseek_v3 (semantics 15): the same per-expert stacking (the same mixin in the reference),
// after FP8 block dequantization of every `W` that has a `W_scale_inv`. Stacked experts and
// dequantized weights are written in config.json's torch_dtype (BF16 when it gives none) unless
// --dtype says otherwise.
const AdapterSpec DEEPSEEK_V3_FROM_HF = {
    .model = "deepseek_v3",
    .direction = Direction::from_hf,
    .rules = then_mixin_stacking({
        {RuleAction::block_scale, R"(^(.*\.weight)_scale_inv$)", "$1"},
        // The reference drops any other `_scale_inv` key without a word.
        {RuleAction::reject, R"(_scale_inv$)",
         "block scale whose name does not end in '.weight_scale_inv': no weight to apply it "
         "to (the reference would drop it silently)"},
        {RuleAction::reject, R"(\.mlp\.experts\.\d+\..*lora_)",
         "per-expert LoRA weights are not supported for deepseek_v3; convert the base "
         "checkpoint"},
        {RuleAction::reject, R"(layers\.\d+\.mlp\.experts\.(base_layer\.)?lora_[AB]\.weight$)",
         "expert LoRA weights in PEFT's ParamWrapper layout are not supported for deepseek_v3; "
         "convert the base checkpoint"},
    }),
    .dtype_from_config = AdapterSpec::ConfigDtype::top_level,
    .config_expert_count = "n_routed_experts",
};

const AdapterSpec QWEN3_MOE_TO_HF = {
    .model = "qwen3_moe",
    .direction = Direction::to_hf,
    .rules =
        {
            {RuleAction::reject, R"(\.mlp\.experts\.lora_(gate_and_up|down)_[AB]$)",
             "grouped-expert LoRA weights are not supported for qwen3_moe; merge them first"},
            // The layer is the first `layers.N` of the key and the HF prefix is always `model.`,
            // as in the reference (14.3).
            {RuleAction::unstack, R"(^.*?(layers\.\d+).*\.mlp\.experts\.gate_and_up_projs$)",
             "model.$1.mlp.experts.{expert}.gate_proj.weight",
             "model.$1.mlp.experts.{expert}.up_proj.weight", 0, 2, "gate_and_up_projs"},
            {RuleAction::unstack,
             R"(^.*?(layers\.\d+).*\.mlp\.experts\.down_projs$)",
             "model.$1.mlp.experts.{expert}.down_proj.weight",
             {},
             0,
             1,
             "down_projs"},
            {RuleAction::reject, R"(\.mlp\.experts\.(gate_and_up_projs|down_projs)$)",
             "native expert tensor without a layers.N path (the reference would crash)"},
            // The reference splits any name that holds the marker and ends like it (14.3.3).
            {RuleAction::reject,
             R"(\.mlp\.experts\.gate_and_up_projs.*\.gate_and_up_projs$|\.mlp\.experts\.down_projs.*\.down_projs$)",
             "the name holds '.mlp.experts.gate_and_up_projs' (or 'down_projs') before its end and "
             "ends like it: the reference's to_hf would split it as a layer's stacked experts, "
             "which shardshift does only where the name ends with the marker; rename the tensor"},
        },
    .honours_exclude = true,
    .config_expert_count = "num_experts",
    .config_expert_size = "moe_intermediate_size",
    .config_expert_size_default = 768, // transformers' Qwen3MoeConfig
    .expert_router = ".gate.weight",
};

// deepseek_v3 to_hf (15.4): the qwen3_moe split, unchanged (the same mixin); BF16 stays BF16.
const AdapterSpec DEEPSEEK_V3_TO_HF = [] {
  AdapterSpec spec = QWEN3_MOE_TO_HF;
  spec.model = "deepseek_v3";
  spec.rules.front().output =
      "grouped-expert LoRA weights are not supported for deepseek_v3; merge them first";
  // --quantize fp8 (15.7): the reference's list of weights kept as they are, plus the two of the
  // multi-token-prediction layer that DeepSeek's checkpoint keeps in BF16 and the reference
  // would quantize.
  spec.config_expert_count = "n_routed_experts";
  spec.config_expert_size_default = 2048; // transformers' DeepseekV3Config
  spec.quantizes = true;
  spec.not_quantized = {"input_layernorm.weight",
                        "post_attention_layernorm.weight",
                        "norm.weight",
                        "lm_head.weight",
                        "embed_tokens.weight",
                        "mlp.gate.weight",
                        "eh_proj.weight",
                        "shared_head.head.weight"};
  return spec;
}();

const std::array<const AdapterSpec*, 8> ALL_ADAPTERS = {
    &DIFFUSION_GEMMA_FROM_HF, &DIFFUSION_GEMMA_TO_HF, &GEMMA4_MOE_FROM_HF,  &GEMMA4_MOE_TO_HF,
    &QWEN3_MOE_FROM_HF,       &QWEN3_MOE_TO_HF,       &DEEPSEEK_V3_FROM_HF, &DEEPSEEK_V3_TO_HF};

bool any_key(std::span<const std::string> keys, auto&& pred) {
  return std::any_of(keys.begin(), keys.end(), pred);
}
bool contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}
// `.mlp.experts.` followed by a digit: a Hugging Face per-expert key (qwen3_moe).
bool per_expert_key(std::string_view k) {
  constexpr std::string_view marker = ".mlp.experts.";
  for (size_t at = k.find(marker); at != std::string_view::npos; at = k.find(marker, at + 1)) {
    const size_t next = at + marker.size();
    if (next < k.size() && k[next] >= '0' && k[next] <= '9')
      return true;
  }
  return false;
}
bool stacked_expert_key(std::string_view k) {
  return contains(k, ".mlp.experts.gate_and_up_projs") || contains(k, ".mlp.experts.down_projs");
}
// Keys only DeepSeek-V3 has: MLA attention, the gate's bias.
bool deepseek_key(std::string_view k) {
  return contains(k, ".self_attn.kv_a_proj_with_mqa.") ||
         contains(k, ".mlp.gate.e_score_correction_bias");
}
constexpr std::string_view KNOWN = "diffusion_gemma, gemma4_moe, qwen3_moe, deepseek_v3";

} // namespace

const AdapterSpec* find_adapter(std::string_view model, Direction direction) {
  for (const AdapterSpec* a : ALL_ADAPTERS)
    if (a->model == model && a->direction == direction)
      return a;
  return nullptr;
}

std::vector<std::string_view> adapter_models() {
  return {"diffusion_gemma", "gemma4_moe", "qwen3_moe", "deepseek_v3"};
}

Result<const AdapterSpec*> select_adapter(std::string_view config_model_type,
                                          std::span<const std::string> keys,
                                          std::string_view forced_model,
                                          std::optional<Direction> forced_direction) {
  std::string model(forced_model);
  if (model.empty()) {
    if (config_model_type == "diffusion_gemma" || contains(config_model_type, "diffusion"))
      model = "diffusion_gemma";
    else if (config_model_type.starts_with("gemma4") || config_model_type.starts_with("gemma3n"))
      model = "gemma4_moe";
    else if (config_model_type == "qwen3_moe")
      model = "qwen3_moe";
    else if (config_model_type == "deepseek_v3")
      model = "deepseek_v3";
    else if (any_key(keys, [](auto& k) {
               return k.starts_with("model.decoder.") || k.starts_with("model.encoder.");
             }))
      model = "diffusion_gemma";
    // DeepSeek's and Qwen3's expert keys before gemma4's `language_model.`: the reference
    // takes theirs under that prefix too, and gemma4 has neither kind.
    else if (any_key(keys, [](auto& k) { return deepseek_key(k); }))
      model = "deepseek_v3";
    else if (any_key(keys, [](auto& k) { return per_expert_key(k) || stacked_expert_key(k); }))
      model = "qwen3_moe";
    else if (any_key(keys, [](auto& k) { return contains(k, "language_model."); }))
      model = "gemma4_moe";
    else if (any_key(keys, [](auto& k) { return k.starts_with("model.layers."); }))
      model = "diffusion_gemma"; // native diffusion_gemma keeps one stack at model.*
    else
      return Status(Errc::invalid_argument,
                    "cannot tell the model of this checkpoint (config.json model_type '" +
                        std::string(config_model_type) +
                        "', no recognisable keys); pass --adapter diffusion_gemma, gemma4_moe, "
                        "qwen3_moe or deepseek_v3");
  }
  Direction direction;
  if (forced_direction) {
    direction = *forced_direction;
  } else {
    bool native = any_key(keys, [](auto& k) {
      return contains(k, ".moe.experts.gate_and_up_projs") ||
             contains(k, ".moe.experts.down_projs") || contains(k, ".moe.gate.") ||
             stacked_expert_key(k);
    });
    bool hf = any_key(keys, [](auto& k) {
      return k.ends_with(".gate_up_proj") || k.ends_with(".down_proj") || contains(k, ".router.") ||
             k.starts_with("model.decoder.") || k.starts_with("model.encoder.") ||
             per_expert_key(k) || k.ends_with("_scale_inv");
    });
    if (native == hf)
      return Status(
          Errc::invalid_argument,
          std::string("cannot tell the direction of this checkpoint (") +
              (native ? "it has both Hugging Face and native keys" : "no router or expert keys") +
              "); pass --direction from_hf or to_hf");
    direction = native ? Direction::to_hf : Direction::from_hf;
  }
  const AdapterSpec* spec = find_adapter(model, direction);
  if (!spec)
    return Status(Errc::invalid_argument,
                  "unknown adapter '" + model + "'; known: " + std::string(KNOWN));
  return spec;
}

} // namespace shardshift
