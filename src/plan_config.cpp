// plan_config.cpp: read_config_facts, the pass that takes from config.json what the reference's
// model class builds its adapter with (the dtype it casts the expert outputs to; the expert count
// and size that the checks read, refused where they are no whole numbers), and converted_dtype,
// the output dtype it gives.
#include "planner.h"

#include <algorithm>

namespace shardshift {

void read_config_facts(PlanContext& ctx) {
  using ConfigDtype = AdapterSpec::ConfigDtype;
  const auto& side = ctx.input.other_files;
  const bool has_config = std::find(side.begin(), side.end(), "config.json") != side.end();
  // The gemma families keep the input's dtype without a config.json: the adapter alone is the
  // reference then, and shardshift's default stands for its constructor's (semantics 8).
  const bool wants_dtype = ctx.spec.dtype_from_config != ConfigDtype::none &&
                           !ctx.options.expert_dtype &&
                           (has_config || ctx.spec.dtype_from_config == ConfigDtype::top_level);
  const std::string_view count = ctx.spec.config_expert_count, size = ctx.spec.config_expert_size;
  const std::string model(ctx.spec.model);
  if (!ctx.input.config_error.empty() && (wants_dtype || !count.empty() || !size.empty())) {
    std::string what = wants_dtype ? "dtype (torch_dtype)" : "";
    for (std::string_view key : {count, size})
      if (!key.empty())
        what += (what.empty() ? "" : " and ") + std::string(key);
    ctx.problems.add(Errc::plan, "", "",
                     "config.json is not JSON that shardshift can read (" + ctx.input.config_error +
                         "), and the " + model + " reference reads its " + what +
                         " (Python's json also takes NaN, Infinity and integers beyond 64 bits): "
                         "make it plain JSON" +
                         (wants_dtype ? ", or give --dtype bf16|f16|f32" : ""));
    return;
  }
  // A count the reference reads that is no whole number (3.0, -1, null, "16"): it splits or
  // stacks the experts by it, or fails on it.
  for (std::string_view key : {count, size})
    if (const auto odd = ctx.input.config_not_counts.find(key);
        !key.empty() && odd != ctx.input.config_not_counts.end())
      ctx.problems.add(
          Errc::plan, "", "",
          "config.json's " + std::string(key) + " is " + printable(odd->second) +
              ", not a whole number; the " + model +
              " reference splits or stacks the experts by it (or fails): give " +
              (key == count ? "the model's expert count" : "the experts' intermediate size"));
  if (!wants_dtype)
    return;
  if (ctx.spec.dtype_from_config == ConfigDtype::top_level) {
    if (const auto d = config_dtype(ctx, ""))
      ctx.adapter_dtype = *d;
    return;
  }
  // text_config: the model class reads its text_config's dtype, BF16 where that gives none; but
  // transformers, loading a model, may set every sub-config's dtype to the top level's. Where the
  // two could differ, which the reference uses depends on how it was run: refuse.
  const auto nested = config_dtype(ctx, "text_config.");
  const auto top = config_dtype(ctx, "");
  if (!nested || !top)
    return;
  const auto& given = ctx.input.config_dtypes;
  if (given.count("dtype") + given.count("torch_dtype") > 0 && *top != *nested) {
    const bool nested_given =
        given.count("text_config.dtype") + given.count("text_config.torch_dtype") > 0;
    const std::string where =
        nested_given ? " in text_config"
        : ctx.input.config_has_text_config
            ? " in text_config (which gives none: the reference takes none as BF16)"
            : " for text_config (config.json has none, and the model class builds one with "
              "no dtype, which the reference takes as BF16)";
    ctx.problems.add(Errc::plan, "", "",
                     "config.json gives the dtype " + std::string(dtype_name(*top)) +
                         " at its top level and " + std::string(dtype_name(*nested)) + where +
                         "; the " + model +
                         " reference casts the experts to text_config's, which transformers may "
                         "set to the top level's when it loads the model: choose with --dtype "
                         "bf16|f16|f32");
    return;
  }
  ctx.adapter_dtype = *nested;
}

std::optional<DType> config_dtype(PlanContext& ctx, std::string_view level) {
  // transformers keeps "dtype" over "torch_dtype" (its older name) when both are given.
  const auto& given = ctx.input.config_dtypes;
  auto it = given.find(std::string(level) + "dtype");
  if (it == given.end())
    it = given.find(std::string(level) + "torch_dtype");
  if (it == given.end())
    return DType::BF16; // get_dtype(None, torch.bfloat16)
  const std::string which = "config.json's " + it->first;
  const std::string model(ctx.spec.model);
  const auto& not_string = ctx.input.config_dtype_not_string;
  if (std::find(not_string.begin(), not_string.end(), it->first) != not_string.end()) {
    ctx.problems.add(Errc::plan, "", "",
                     which + " is " + printable(it->second) +
                         ", not a dtype name; the reference casts the " + model +
                         " experts to the dtype it names: give it with --dtype bf16|f16|f32");
    return std::nullopt;
  }
  // The names transformers turns into the dtypes shardshift writes (getattr(torch, name)).
  static const std::pair<std::string_view, DType> NAMES[] = {{"bfloat16", DType::BF16},
                                                             {"float16", DType::F16},
                                                             {"half", DType::F16},
                                                             {"float32", DType::F32},
                                                             {"float", DType::F32}};
  std::string_view name = it->second;
  if (name.starts_with("torch."))
    name.remove_prefix(6);
  for (const auto& [known, dtype] : NAMES)
    if (name == known)
      return dtype;
  ctx.problems.add(Errc::plan, "", "",
                   which + " is '" + printable(it->second) +
                       "', which shardshift does not write the " + model +
                       " experts in (the reference casts them to it); choose with --dtype "
                       "bf16|f16|f32");
  return std::nullopt;
}

DType converted_dtype(const PlanContext& ctx, DType input) {
  return ctx.options.expert_dtype.value_or(ctx.adapter_dtype.value_or(input));
}

} // namespace shardshift
