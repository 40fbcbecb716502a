// cmd_synth.cpp: `shardshift synth OUT`: writes a synthetic checkpoint (library: synth.h) and
// draws its progress.
#include "shardshift/synth.h"
#include "shardshift/units.h"

#include "commands.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <signal.h>
#include <string>
#include <unistd.h>

#include <boost/program_options.hpp>

namespace shardshift::app {

namespace po = boost::program_options;

namespace {

const char* const SYNTH_HELP = R"(Usage: shardshift synth OUT [options]

Writes a synthetic Hugging Face checkpoint into the directory OUT with the real key inventory and
tensor shapes of the model (all BF16, deterministic pseudo-random values from --seed), sharded
like Hugging Face: model-0000i-of-0000N.safetensors plus model.safetensors.index.json, or a single
model.safetensors; and a config.json. Memory stays flat whatever the size.

At full size (no --scale) diffusion_gemma is about 1.52 GB per layer plus 1.5 GB of embedding.

Options:
  --model NAME           diffusion_gemma (default): keys under model.decoder.* and
                         model.encoder.*, no lm_head; or gemma4_moe: keys under
                         model.language_model.*, model.vision_tower.*, plus lm_head.weight
  --layers N             number of decoder layers (default 30, as the real model); layers with
                         L % 6 == 5 are full-attention layers (no v_proj)
  --seed S               seed of the values (default 0); the same seed gives identical bytes
  --scale K              divide every size by K: hidden 2816 (and the attention, dense-MLP and
                         vision sizes), expert intermediate 704, experts 128, vocabulary 262144
                         (default 1). Every size must stay at least 1.
  --scale-hidden K       override --scale for the hidden, attention, dense-MLP and vision sizes
  --scale-intermediate K override for the expert intermediate size (default: --scale-hidden)
  --scale-experts K      override for the number of experts
  --scale-vocab K        override for the vocabulary size
  --max-shard-size SIZE  largest shard, e.g. 5GB (default), 64MiB, 1000000; a tensor larger
                         than SIZE gets a shard of its own
  --force                write into an existing non-empty OUT: its *.safetensors files, index
                         and config.json are removed first (other files are kept)
  -h, --help             show this help

Exit status: 0 written, 1 failed (nothing is left behind), 2 bad usage or OUT exists without
--force, 130 interrupted.

Examples:
  shardshift synth demo-hf --layers 2 --scale 8
  shardshift synth moe-hf --model gemma4_moe --layers 4 --scale-experts 4 --max-shard-size 1GB
)";

std::atomic<bool> g_cancel{false};

extern "C" void on_interrupt(int) {
  g_cancel.store(true);
}

// Draws "synth: 1.52 GB / 3.05 GB (412 MB/s)" on one terminal line, at most five times a second.
class ProgressLine {
public:
  explicit ProgressLine(bool enabled) : enabled_(enabled) {}
  void update(uint64_t done, uint64_t total) {
    if (!enabled_)
      return;
    auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(200))
      return;
    last_ = now;
    double seconds = std::chrono::duration<double>(now - start_).count();
    std::fprintf(stderr, "\rsynth: %s / %s (%s)\x1b[K", format_bytes(done).c_str(),
                 format_bytes(total).c_str(),
                 format_rate(seconds > 0 ? static_cast<double>(done) / seconds : 0).c_str());
    drawn_ = true;
  }
  void clear() {
    if (drawn_)
      std::fputs("\r\x1b[K", stderr);
    drawn_ = false;
  }

private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), last_{};
};

} // namespace

int cmd_synth(int argc, char** argv) {
  std::string out, model, max_shard_size;
  long long layers = 30, scale = 1;
  uint64_t seed = 0;
  std::optional<long long> scale_hidden, scale_intermediate, scale_experts, scale_vocab;
  auto optional_into = [](std::optional<long long>& target) {
    return po::value<long long>()->notifier([&target](long long v) { target = v; });
  };

  po::options_description flags("synth options");
  auto add = flags.add_options();
  add("help,h", "");
  add("out", po::value(&out), "");
  add("model", po::value(&model)->default_value("diffusion_gemma"), "");
  add("layers", po::value(&layers)->default_value(30), "");
  add("seed", po::value(&seed)->default_value(0), "");
  add("scale", po::value(&scale)->default_value(1), "");
  add("scale-hidden", optional_into(scale_hidden), "");
  add("scale-intermediate", optional_into(scale_intermediate), "");
  add("scale-experts", optional_into(scale_experts), "");
  add("scale-vocab", optional_into(scale_vocab), "");
  add("max-shard-size", po::value(&max_shard_size)->default_value("5GB"), "");
  add("force", "");
  po::positional_options_description positional;
  positional.add("out", 1);

  po::variables_map vm;
  if (int rc; !parse_args("synth", argc, argv, flags, positional, vm, &rc))
    return rc;
  if (vm.count("help")) {
    std::cout << SYNTH_HELP;
    return EXIT_OK;
  }
  if (out.empty())
    return usage_error("synth", "missing the output directory OUT");
  if (layers < 0 || layers > 100000)
    return usage_error("synth", "--layers must be between 0 and 100000");
  // Scales are checked here (positive, 32-bit) and against the sizes they divide by synth().
  for (long long value : {scale, scale_hidden.value_or(1), scale_intermediate.value_or(1),
                          scale_experts.value_or(1), scale_vocab.value_or(1)})
    if (value < 1 || value > 1'000'000'000)
      return usage_error("synth", "scale factors must be positive integers");

  SynthOptions options;
  options.out = out;
  options.model = model;
  options.layers = static_cast<unsigned>(layers);
  options.seed = seed;
  options.scale_hidden = static_cast<unsigned>(scale_hidden.value_or(scale));
  options.scale_intermediate =
      static_cast<unsigned>(scale_intermediate.value_or(options.scale_hidden));
  options.scale_experts = static_cast<unsigned>(scale_experts.value_or(scale));
  options.scale_vocab = static_cast<unsigned>(scale_vocab.value_or(scale));
  options.force = vm.count("force") > 0;
  options.cancel = &g_cancel;

  auto shard_size = parse_size(max_shard_size);
  if (!shard_size.ok())
    return usage_error("synth", shard_size.status().message());
  options.max_shard_size = shard_size.value();

  // Ctrl-C stops at the next chunk so synth() can remove what it wrote; the previous handlers
  // come back afterwards.
  struct sigaction action = {};
  struct sigaction old_int = {};
  struct sigaction old_term = {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, &old_int);
  sigaction(SIGTERM, &action, &old_term);

  ProgressLine line(::isatty(STDERR_FILENO) == 1);
  auto start = std::chrono::steady_clock::now();
  SynthSummary summary;
  Status status = synth(
      options, Io::system(), [&](uint64_t done, uint64_t total) { line.update(done, total); },
      &summary);
  line.clear();
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (!status.ok())
    return report_error(status);

  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "synth: wrote %llu tensors, %s in %llu shard%s to %s (%.1f s)\n",
               static_cast<unsigned long long>(summary.tensors),
               format_bytes(summary.bytes).c_str(), static_cast<unsigned long long>(summary.shards),
               summary.shards == 1 ? "" : "s", out.c_str(), seconds);
  return EXIT_OK;
}

} // namespace shardshift::app
