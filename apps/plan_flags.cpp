// plan_flags.cpp: the flags that shape a conversion's output, and PlanOptions from them.
#include "plan_flags.h"

#include "shardshift/dtype.h"
#include "shardshift/units.h"

#include <optional>
#include <string>
#include <string_view>

namespace po = boost::program_options;

namespace shardshift::app {

namespace {

Result<std::optional<DType>> parse_dtype_flag(const std::string& text, const char* flag) {
  if (text == "keep")
    return std::optional<DType>();
  if (text == "bf16" || text == "BF16")
    return std::optional<DType>(DType::BF16);
  if (text == "f16" || text == "F16" || text == "fp16")
    return std::optional<DType>(DType::F16);
  if (text == "f32" || text == "F32" || text == "fp32")
    return std::optional<DType>(DType::F32);
  return Status(Errc::invalid_argument,
                std::string(flag) + " '" + text + "': use keep, bf16, f16 or f32");
}

} // namespace

FlagGroup output_flags() {
  FlagGroup d("What to write");
  d.flags.add_options()(
      "adapter", po::value<std::string>()->value_name("MODEL"),
      "Model adapter: diffusion_gemma, gemma4_moe, qwen3_moe or deepseek_v3. Default: the "
      "model_type of "
      "config.json, else guessed from the key names. Example: --adapter gemma4_moe")(
      "direction", po::value<std::string>()->value_name("DIRECTION"),
      "from_hf (Hugging Face to native) or to_hf (native to Hugging Face). Default: guessed "
      "from the key names. Example: --direction to_hf")(
      "max-shard-size", po::value<std::string>()->default_value("5GB")->value_name("SIZE"),
      (std::string("Largest output file; a tensor larger than SIZE gets a file of its own. ") +
       SIZE_SYNTAX + " Example: --max-shard-size 64MiB")
          .c_str())("dtype", po::value<std::string>()->value_name("DTYPE"),
                    "Dtype of the expert tensors: bf16, f16, f32, or keep (the dtypes the fold "
                    "gives: the input's, down_proj's promoted by per_expert_scale's). Other "
                    "tensors are never cast; deepseek_v3 from_hf: also the dtype of the FP8 "
                    "weights it dequantizes. Default: from_hf casts to the dtype the reference "
                    "takes from config.json (qwen3_moe, deepseek_v3: its torch_dtype; "
                    "diffusion_gemma: its text_config's; gemma4_moe: its own, else its "
                    "text_config's; bf16 when it names none; gemma families without a "
                    "config.json: keep); to_hf keeps. Example: --dtype bf16")(
      "scale-dtype", po::value<std::string>()->value_name("DTYPE"),
      "to_hf: dtype of the per_expert_scale ones it writes: bf16, f16 or f32. Default: the "
      "dtype of down_proj. Example: --scale-dtype f32")(
      "exclude", po::value<std::string>()->default_value(".*_extra_state.*")->value_name("REGEX"),
      "to_hf: drop output keys that REGEX matches at their start (like Python's re.match); an "
      "empty REGEX keeps every key. Example: --exclude ''")(
      "no-tied-head", "from_hf diffusion_gemma: do not write lm_head.weight as a copy of the "
                      "embedding. Example: convert hf native --no-tied-head")(
      "ep-size", po::value<unsigned>()->default_value(1)->value_name("N"),
      "from_hf: expert-parallel world size; only this rank's experts are written. Example: "
      "--ep-size 4 --ep-rank 1")("ep-rank",
                                 po::value<unsigned>()->default_value(0)->value_name("N"),
                                 "from_hf: expert-parallel rank, counted from 0. Example: "
                                 "--ep-size 8 --ep-rank 7 (the last of 8)")(
      "ep-shard-size", po::value<unsigned>()->default_value(1)->value_name("N"),
      "from_hf: also cut axis 1 of each expert tensor into N equal parts. Example: "
      "--ep-shard-size 2 --ep-shard-rank 0")(
      "ep-shard-rank", po::value<unsigned>()->default_value(0)->value_name("N"),
      "from_hf: which of those parts, counted from 0. Example: --ep-shard-size 2 "
      "--ep-shard-rank 1")(
      "base", po::value<std::string>()->value_name("HF_DIR"),
      "to_hf: the original Hugging Face checkpoint IN was converted from; every tensor that "
      "from_hf dropped from it (diffusion_gemma: model.encoder.*, the vision tower) is copied "
      "back into the output, zero-copy, after the converted tensors, so a round trip loses "
      "nothing. Example: convert nemo hf-out --direction to_hf --base hf-orig")(
      "quantize", po::value<std::string>()->value_name("QUANT"),
      "to_hf deepseek_v3: write the linear weights as F8_E4M3 with F32 128 x 128 block scales "
      "(W_scale_inv), each block's largest magnitude mapped to 448, as DeepSeek's own "
      "checkpoints; norms, embeddings, heads and the router stay as they are. QUANT: fp8. Only "
      "with --dtype keep (the default). Example: convert nemo hf-fp8 --direction to_hf --quantize "
      "fp8")("no-side-files",
             "Do not copy config.json, the tokenizer files and the other files of the "
             "input directory. Example: convert hf native --no-side-files")(
      "no-align", "Do not pad headers to keep copied tensors page-aligned (this disables "
                  "reflink sharing of their bytes). Example: convert hf native --no-align");
  return d;
}

Result<PlanOptions> plan_options(const po::variables_map& vm) {
  PlanOptions o;
  if (vm.count("adapter")) {
    o.adapter = vm["adapter"].as<std::string>();
    // To the library an empty adapter means "detect", as if the flag were not given: an unset
    // shell variable would let the key names choose. Refused as any unknown name is.
    if (o.adapter.empty()) {
      std::string known;
      for (std::string_view model : adapter_models())
        known += (known.empty() ? "" : ", ") + std::string(model);
      return Status(Errc::invalid_argument, "unknown adapter ''; known: " + known);
    }
  }
  if (vm.count("direction")) {
    auto d = vm["direction"].as<std::string>();
    if (d == "from_hf")
      o.direction = Direction::from_hf;
    else if (d == "to_hf")
      o.direction = Direction::to_hf;
    else
      return Status(Errc::invalid_argument, "--direction '" + d + "': use from_hf or to_hf");
  }
  auto size = parse_size(vm["max-shard-size"].as<std::string>());
  if (!size)
    return Status(Errc::invalid_argument, "--max-shard-size: " + size.status().message());
  if (*size == 0)
    return Status(Errc::invalid_argument, "--max-shard-size must be positive");
  o.max_shard_size = *size;
  if (vm.count("dtype")) {
    auto dt = parse_dtype_flag(vm["dtype"].as<std::string>(), "--dtype");
    if (!dt)
      return dt.status();
    o.expert_dtype = *dt;
    o.keep_dtype = !*dt;
  }
  if (vm.count("scale-dtype")) {
    auto sd = parse_dtype_flag(vm["scale-dtype"].as<std::string>(), "--scale-dtype");
    if (!sd)
      return sd.status();
    o.scale_dtype = *sd;
  }
  o.exclude = vm["exclude"].as<std::string>();
  o.tied_head = !vm.count("no-tied-head");
  o.ep_size = vm["ep-size"].as<unsigned>();
  o.ep_rank = vm["ep-rank"].as<unsigned>();
  o.ep_shard_size = vm["ep-shard-size"].as<unsigned>();
  o.ep_shard_rank = vm["ep-shard-rank"].as<unsigned>();
  o.copy_side_files = !vm.count("no-side-files");
  o.align_for_reflink = !vm.count("no-align");
  if (vm.count("quantize")) {
    const auto q = vm["quantize"].as<std::string>();
    if (q != "fp8")
      return Status(Errc::invalid_argument, "--quantize '" + q + "': use fp8");
    o.quantize_fp8 = true;
  }
  if (vm.count("base")) {
    o.base = vm["base"].as<std::string>();
    if (o.base.empty())
      return Status(Errc::invalid_argument, "--base needs a directory (HF_DIR)");
    if (o.direction == Direction::from_hf)
      return Status(Errc::invalid_argument,
                    "--base restores what from_hf dropped and applies to to_hf only");
  }
  return o;
}

} // namespace shardshift::app
