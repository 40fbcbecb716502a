// plan_config.cpp: read_config_facts, the pass that takes from config.json what the reference's
// model class builds its adapter with (the dtype it casts the expert outputs to; the expert count
// and size that the checks read, refused where they are no whole numbers), and converted_dtype,
// the output dtype it gives.
#include "planner.h"

#include <algorithm>

namespace shardshift {

namespace {

using ConfigDtype = AdapterSpec::ConfigDtype;

// What the reference's adapter would read from config.json, in a message's words.
std::string what_is_read(const PlanContext& ctx, bool wants_dtype) {
  std::string what;
  if (wants_dtype)
    what = ctx.spec.dtype_from_config == ConfigDtype::top_level ? "dtype (torch_dtype)"
                                                                : "text config's dtype";
  for (std::string_view key : {ctx.spec.config_expert_count, ctx.spec.config_expert_size})
    if (!key.empty())
      what += (what.empty() ? "" : " and ") + std::string(key);
  return what;
}

// The dtype the reference casts to, from config.json as spec.dtype_from_config says (semantics
// 1.1.14, 14.2.7); nullopt, with a problem, where it cannot be known.
std::optional<DType> reference_dtype(PlanContext& ctx) {
  const std::string model(ctx.spec.model);
  if (ctx.spec.dtype_from_config == ConfigDtype::top_level)
    return config_dtype(ctx, "");
  // transformers cannot load a text_config that is neither an object nor null.
  if (const std::string& odd = ctx.input.config_text_config_not_object; !odd.empty()) {
    ctx.problems.add(Errc::plan, "", "",
                     "config.json's text_config is " + printable(odd) +
                         ", neither an object nor null: transformers cannot load such a config, "
                         "and the " +
                         model +
                         " reference casts the experts to its text config's dtype: make "
                         "text_config the text model's config, or choose with --dtype "
                         "bf16|f16|f32");
    return std::nullopt;
  }
  const auto& given = ctx.input.config_dtypes;
  const bool top_given = given.count("dtype") + given.count("torch_dtype") > 0;
  const bool nested_given =
      given.count("text_config.dtype") + given.count("text_config.torch_dtype") > 0;
  const auto top = top_given ? config_dtype(ctx, "") : std::optional<DType>(DType::BF16);
  const auto nested = config_dtype(ctx, "text_config.");
  if (!top || !nested)
    return std::nullopt;
  // gemma4_moe's model class sets every sub-config's dtype to the top level's when that gives
  // one; a config with no text_config is the text config itself.
  if (ctx.spec.dtype_from_config == ConfigDtype::top_then_text_config)
    return top_given ? top : nested;
  // diffusion_gemma's model class reads text_config's own (BF16 where it gives none), which
  // NeMo's loading leaves as config.json has it; transformers' from_pretrained sets it to the
  // top level's. Where the two differ, which a run used depends on how it loaded the model.
  if (top_given && *top != *nested) {
    const std::string where =
        nested_given ? " in text_config"
        : ctx.input.config_has_text_config
            ? " for text_config, which gives none (the reference takes none as BF16)"
            : " for text_config, which config.json has none of (the model class then builds one "
              "with no dtype, which the reference takes as BF16)";
    ctx.problems.add(Errc::plan, "", "",
                     "config.json gives the dtype " + std::string(dtype_name(*top)) +
                         " at its top level and " + std::string(dtype_name(*nested)) + where +
                         "; the " + model +
                         " model class casts the experts to text_config's, but transformers' "
                         "from_pretrained sets it to the top level's, so which one a run used "
                         "depends on how it loaded the model: choose with --dtype bf16|f16|f32");
    return std::nullopt;
  }
  return nested;
}

} // namespace

void read_config_facts(PlanContext& ctx) {
  const auto& side = ctx.input.other_files;
  const bool has_config = std::find(side.begin(), side.end(), "config.json") != side.end();
  // The gemma families keep the fold's dtypes without a config.json: the adapter alone is the
  // reference then, and shardshift's default stands for its constructor's (semantics 8).
  const bool wants_dtype = ctx.spec.dtype_from_config != ConfigDtype::none &&
                           !ctx.options.expert_dtype && !ctx.options.keep_dtype &&
                           (has_config || ctx.input.config_beside ||
                            ctx.spec.dtype_from_config == ConfigDtype::top_level);
  const std::string_view count = ctx.spec.config_expert_count, size = ctx.spec.config_expert_size;
  const std::string model(ctx.spec.model);
  const std::string what = what_is_read(ctx, wants_dtype);
  const std::string or_dtype = wants_dtype ? ", or choose with --dtype bf16|f16|f32" : "";
  if (what.empty())
    return;
  // One file given as IN: the config.json beside it is not read (it may be one shard of many).
  if (ctx.input.single_file && ctx.input.config_beside && wants_dtype) {
    ctx.problems.add(Errc::plan, "", "",
                     "IN is one file, and shardshift reads no config.json for it, but there is "
                     "one beside it (" +
                         printable((ctx.input.root / "config.json").string()) +
                         "), from which the " + model + " reference takes its " + what +
                         ": convert the directory" + or_dtype);
    return;
  }
  if (!ctx.input.config_error.empty()) {
    ctx.problems.add(Errc::plan, "", "",
                     "config.json is not JSON that shardshift can read (" + ctx.input.config_error +
                         "), and the " + model + " reference reads its " + what +
                         " (Python's json also takes NaN, Infinity and integers beyond 64 bits): "
                         "make it plain JSON" +
                         or_dtype);
    return;
  }
  if (!ctx.input.config_not_object.empty()) {
    ctx.problems.add(Errc::plan, "", "",
                     "config.json's top level is " + printable(ctx.input.config_not_object) +
                         ", no JSON object: transformers cannot load it, and the " + model +
                         " reference reads its " + what + " from it: make it the model's config" +
                         or_dtype);
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
  // Where the dtype cannot be known the run is refused already; BF16 stands in for it, so that
  // later checks (an FP8 weight cannot be dequantized to its own dtype) do not report it again.
  if (wants_dtype)
    ctx.adapter_dtype = reference_dtype(ctx).value_or(DType::BF16);
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
  // transformers turns the name into a dtype with getattr(torch, name): these are the names of
  // the dtypes shardshift writes ("torch.float16" is none: getattr fails on it).
  static const std::pair<std::string_view, DType> NAMES[] = {{"bfloat16", DType::BF16},
                                                             {"float16", DType::F16},
                                                             {"half", DType::F16},
                                                             {"float32", DType::F32},
                                                             {"float", DType::F32}};
  for (const auto& [known, dtype] : NAMES)
    if (it->second == known)
      return dtype;
  // Names of torch's other dtypes, which the reference would cast to.
  static const std::string_view OTHER_TORCH[] = {
      "float64",         "double", "complex64", "cfloat",        "complex128",  "cdouble",
      "uint8",           "int8",   "int16",     "short",         "int32",       "int",
      "int64",           "long",   "bool",      "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
      "float8_e5m2fnuz", "uint16", "uint32",    "uint64"};
  const bool torch_dtype = std::find(std::begin(OTHER_TORCH), std::end(OTHER_TORCH), it->second) !=
                           std::end(OTHER_TORCH);
  ctx.problems.add(Errc::plan, "", "",
                   which + " is '" + printable(it->second) + "', " +
                       (torch_dtype ? "which shardshift does not write the " + model +
                                          " experts in (the reference casts them to it)"
                                    : "which is no name of a torch dtype (transformers reads it "
                                      "with getattr(torch, name) and cannot load the config; "
                                      "'bfloat16', 'float16' and 'float32' are)") +
                       "; choose with --dtype bf16|f16|f32");
  return std::nullopt;
}

DType converted_dtype(const PlanContext& ctx, DType input) {
  return ctx.options.expert_dtype.value_or(ctx.adapter_dtype.value_or(input));
}

} // namespace shardshift
