// cmd_synth.cpp: `shardshift synth OUT`: writes a synthetic checkpoint (library: synth.h) and
// draws its progress.
#include "shardshift/json_text.h"
#include "shardshift/synth.h"
#include "shardshift/units.h"

#include "cli.h"
#include "commands.h"
#include "progress_line.h"
#include "signals.h"

#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

#include <boost/program_options.hpp>

namespace shardshift::app {

namespace po = boost::program_options;

namespace {

const HelpText SYNTH_HELP = {
    .usage = "shardshift synth OUT [options]",
    .description =
        "Writes a synthetic Hugging Face checkpoint into the directory OUT with the real key "
        "inventory, dtypes and tensor shapes of the model (BF16; deepseek_v3's linear weights "
        "F8_E4M3 with F32 block scales; deterministic pseudo-random values from --seed), sharded "
        "like Hugging Face: model-0000i-of-0000N.safetensors plus "
        "model.safetensors.index.json, or a single model.safetensors; and a config.json. Memory "
        "stays flat whatever the size.\n\n"
        "At full size (no --scale) diffusion_gemma is about 1.52 GB per layer plus 1.5 GB of "
        "embedding; qwen3_moe about 1.23 GB per layer plus 1.24 GB of embedding and head; "
        "deepseek_v3 about 11.5 GB per MoE layer (FP8), 0.6 GB per dense layer, plus 3.7 GB of "
        "embedding and head and 15 GB for the multi-token-prediction layer.",
    .examples = "shardshift synth demo-hf --layers 2 --scale 8\n"
                "shardshift synth moe-hf --model gemma4_moe --layers 4 --scale-experts 4 \\\n"
                "    --max-shard-size 1GB\n"
                "shardshift synth big-hf --seed 3 --force -q --json > summary.json",
    .exit_status = "0 written, 1 failed (nothing is left behind), 2 bad usage, OUT exists "
                   "without --force or OUT's parent directory does not exist, 130 interrupted.",
};

// Parsed as signed so that "--layers -1" is refused with a clear message instead of wrapping.
po::typed_value<long long>* optional_into(std::optional<long long>& target) {
  return po::value<long long>()->value_name("N")->notifier([&target](long long v) { target = v; });
}

} // namespace

namespace {

// The flags of `synth` and the values they are parsed into.
struct SynthFlags {
  std::string model, max_shard_size;
  long long layers = 30, scale = 1, mtp_layers = 1;
  uint64_t seed = 0;
  std::optional<long long> scale_hidden, scale_intermediate, scale_experts, scale_vocab;
  FlagGroup group{"Options"};
};

void add_synth_flags(SynthFlags& f) {
  f.group.flags.add_options()(
      "model", po::value(&f.model)->default_value("diffusion_gemma")->value_name("MODEL"),
      "diffusion_gemma: keys under model.decoder.* and model.encoder.*, no lm_head; or "
      "gemma4_moe: keys under model.language_model.* and model.vision_tower.*, plus "
      "lm_head.weight; or qwen3_moe (Qwen3-30B-A3B: H 2048, 128 experts of I 768, every expert "
      "as its own gate_proj, up_proj and down_proj); or deepseek_v3 (DeepSeek-V3: H 7168, the "
      "first 3 layers dense, 256 routed + 1 shared expert of I 2048, MLA attention, FP8 "
      "weights with F32 128 x 128 block scales). Example: --model gemma4_moe")(
      "layers", po::value(&f.layers)->default_value(30)->value_name("N"),
      "Number of decoder layers (diffusion_gemma and gemma4_moe: 30 in the real model, layers "
      "with L % 6 == 5 full-attention layers without v_proj; qwen3_moe: 48; deepseek_v3: 61, "
      "the first 3 dense). Example: --layers 2")(
      "mtp-layers", po::value(&f.mtp_layers)->default_value(1)->value_name("N"),
      "deepseek_v3: multi-token-prediction layers after the decoder layers (1 in the real "
      "model, model.layers.61); refused with another --model. Example: --mtp-layers 0")(
      "seed", po::value(&f.seed)->default_value(0)->value_name("N"),
      "Seed of the values; the same seed gives identical bytes. Example: --seed 7")(
      "scale", po::value(&f.scale)->default_value(1)->value_name("N"),
      "Divide every size of the model by N: the hidden size (and the attention, dense-MLP and "
      "vision sizes), the expert intermediate size, the number of experts and the vocabulary "
      "(diffusion_gemma and gemma4_moe: 2816, 704, 128, 262144; qwen3_moe: 2048, 768, 128, "
      "151936; deepseek_v3: 7168, 2048, 256, 129280). Every size must stay at least 1. Example: "
      "--scale 8")(
      "scale-hidden", optional_into(f.scale_hidden),
      "Divisor for the hidden, attention, dense-MLP and vision sizes instead of --scale. "
      "Example: --scale-hidden 4 --scale-experts 1")(
      "scale-intermediate", optional_into(f.scale_intermediate),
      "Divisor for the expert intermediate size. Default: --scale-hidden. Example: "
      "--scale-intermediate 2")(
      "scale-experts", optional_into(f.scale_experts),
      "Divisor for the number of experts instead of --scale. Example: --scale-experts 4")(
      "scale-vocab", optional_into(f.scale_vocab),
      "Divisor for the vocabulary size instead of --scale. Example: --scale-vocab 64")(
      "max-shard-size", po::value(&f.max_shard_size)->default_value("5GB")->value_name("SIZE"),
      (std::string("Largest shard; a tensor larger than SIZE gets a shard of its own. ") +
       SIZE_SYNTAX + " Example: --max-shard-size 64MiB")
          .c_str())("force", "Write into an existing non-empty OUT: its *.safetensors files, "
                             "index and config.json are removed first (other files are kept). "
                             "Example: synth demo --force");
  add_common_flags(f.group, "No progress line and no summary on stderr.",
                   "the output directory, model, tensor count, bytes, shard count and seconds.");
}

// SynthOptions from the parsed flags; a bad value is a usage error (its message).
Result<SynthOptions> synth_options(const SynthFlags& f, const po::variables_map& vm) {
  if (f.layers < 0 || f.layers > 100000)
    return Status(Errc::invalid_argument, "--layers must be between 0 and 100000");
  // Scales are checked here (positive, 32-bit) and against the sizes they divide by synth().
  for (long long value : {f.scale, f.scale_hidden.value_or(1), f.scale_intermediate.value_or(1),
                          f.scale_experts.value_or(1), f.scale_vocab.value_or(1)})
    if (value < 1 || value > 1'000'000'000)
      return Status(Errc::invalid_argument, "scale factors must be positive integers");
  SynthOptions options;
  options.out = vm["out"].as<std::string>();
  options.model = f.model;
  options.layers = static_cast<unsigned>(f.layers);
  if (f.mtp_layers < 0 || f.mtp_layers > 16)
    return Status(Errc::invalid_argument, "--mtp-layers must be between 0 and 16");
  // Only DeepSeek-V3 has multi-token-prediction layers: for another model the flag would be
  // ignored without a word (README: a flag with nothing to set is refused).
  if (!vm["mtp-layers"].defaulted() && f.model != "deepseek_v3")
    return Status(Errc::invalid_argument,
                  "--mtp-layers applies to --model deepseek_v3 only; " + f.model +
                      " has no multi-token-prediction layers, so it has nothing to set");
  options.mtp_layers = static_cast<unsigned>(f.mtp_layers);
  options.seed = f.seed;
  options.scale_hidden = static_cast<unsigned>(f.scale_hidden.value_or(f.scale));
  options.scale_intermediate =
      static_cast<unsigned>(f.scale_intermediate.value_or(options.scale_hidden));
  options.scale_experts = static_cast<unsigned>(f.scale_experts.value_or(f.scale));
  options.scale_vocab = static_cast<unsigned>(f.scale_vocab.value_or(f.scale));
  options.force = vm.count("force") > 0;
  auto shard_size = parse_size(f.max_shard_size);
  if (!shard_size.ok())
    return Status(Errc::invalid_argument, "--max-shard-size: " + shard_size.status().message());
  if (*shard_size == 0)
    return Status(Errc::invalid_argument, "--max-shard-size must be positive");
  options.max_shard_size = shard_size.value();
  return options;
}

// Writes the checkpoint with a progress line and Ctrl-C handling; prints the summary.
int run_synth(SynthOptions& options, bool quiet, bool json) {
  // Ctrl-C stops at the next chunk so synth() can remove what it wrote.
  CancelOnSignal cancel;
  options.cancel = cancel.flag();
  ProgressLine line(quiet);
  SynthSummary summary;
  Status status = synth(
      options, Io::system(),
      [&](uint64_t done, uint64_t total) {
        if (!line.due() && done < total)
          return;
        double seconds = line.elapsed_seconds();
        line.draw("synth: " + format_bytes(done) + " / " + format_bytes(total) + " (" +
                  format_rate(seconds > 0 ? static_cast<double>(done) / seconds : 0) + ")");
      },
      &summary);
  line.clear();
  if (!status.ok())
    return report_error(status);

  const double seconds = line.elapsed_seconds();
  const std::string out = options.out.string();
  if (!quiet)
    std::fprintf(stderr, "synth: wrote %llu tensors, %s in %llu shard%s to %s (%.1f s)\n",
                 static_cast<unsigned long long>(summary.tensors),
                 format_bytes(summary.bytes).c_str(),
                 static_cast<unsigned long long>(summary.shards), summary.shards == 1 ? "" : "s",
                 out.c_str(), seconds);
  if (json) {
    JsonWriter w;
    w.begin_object().key("output").value(out).key("model").value(options.model);
    w.key("layers").value(options.layers).key("seed").value(options.seed);
    w.key("tensors").value(summary.tensors).key("bytes").value(summary.bytes);
    w.key("shards").value(summary.shards).key("seconds").value(seconds).end_object();
    std::cout << w.take() << "\n";
    if (!json_report_written("synth", "the checkpoint is written (" + out + ")"))
      return EXIT_FAIL;
  }
  return EXIT_OK;
}

} // namespace

int cmd_synth(int argc, char** argv) {
  SynthFlags f;
  add_synth_flags(f);
  po::options_description all;
  all.add(f.group.flags).add_options()("out", po::value<std::string>());
  po::positional_options_description positional;
  positional.add("out", 1);

  po::variables_map vm;
  if (int rc; !parse_args("synth", argc, argv, all, positional, vm, &rc))
    return rc;
  if (vm.count("help")) {
    print_help(std::cout, SYNTH_HELP, {&f.group});
    return EXIT_OK;
  }
  if (!vm.count("out") || vm["out"].as<std::string>().empty())
    return usage_error("synth", "missing the output directory OUT");
  auto options = synth_options(f, vm);
  if (!options)
    return usage_error("synth", options.status().message());
  if (const std::string problem = vm.count("json") ? json_stdout_problem() : ""; !problem.empty())
    return usage_error("synth", problem);
  return run_synth(*options, vm.count("quiet") > 0, vm.count("json") > 0);
}

} // namespace shardshift::app
