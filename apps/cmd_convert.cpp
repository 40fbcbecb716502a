// cmd_convert.cpp: `shardshift convert` and `shardshift plan`: flags, progress, summary, --json,
// --stats and --trace. The work itself is shardshift::convert() / plan_conversion().
#include "shardshift/convert.h"
#include "shardshift/json_text.h"
#include "shardshift/shard_writer.h"
#include "shardshift/units.h"

#include "commands.h"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <unistd.h>

#include <boost/program_options.hpp>

namespace po = boost::program_options;

namespace shardshift::app {

namespace {

std::atomic<bool> interrupted{false};

void on_signal(int) {
  // A second Ctrl-C while cleaning up stops at once.
  if (interrupted.exchange(true))
    std::_Exit(EXIT_INTERRUPTED);
}

std::string shape_json(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string duration(double s) {
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  else
    std::snprintf(buf, sizeof buf, "%d:%02d", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return buf;
}

// Flags shared by plan and convert: what the output is.
void add_plan_options(po::options_description& d) {
  d.add_options()("adapter", po::value<std::string>()->value_name("MODEL"),
                  "model adapter: diffusion_gemma or gemma4_moe (default: config.json model_type, "
                  "then key names)")("direction", po::value<std::string>()->value_name("DIR"),
                                     "from_hf (Hugging Face -> native) or to_hf (native -> Hugging "
                                     "Face); default: from the key names")(
      "max-shard-size", po::value<std::string>()->default_value("5GB")->value_name("SIZE"),
      "largest output file (HF convention, decimal: 5GB = 5e9 bytes; also 64MiB, 1GiB...); a "
      "larger "
      "tensor gets a file of its own")(
      "dtype", po::value<std::string>()->default_value("keep")->value_name("T"),
      "expert tensor dtype: keep, bf16, f16 or f32 (other tensors are never cast)")(
      "scale-dtype", po::value<std::string>()->value_name("T"),
      "to_hf: dtype of the emitted per_expert_scale ones (default: the down_proj dtype)")(
      "exclude", po::value<std::string>()->default_value(".*_extra_state.*")->value_name("REGEX"),
      "to_hf: drop output keys matching REGEX at their start (Python re.match); '' keeps all")(
      "no-tied-head",
      "from_hf diffusion_gemma: do not write lm_head.weight as a copy of the embedding")(
      "ep-size", po::value<unsigned>()->default_value(1)->value_name("W"),
      "from_hf: expert-parallel world size; write only this rank's experts")(
      "ep-rank", po::value<unsigned>()->default_value(0)->value_name("R"),
      "from_hf: expert-parallel rank (0-based)")(
      "ep-shard-size", po::value<unsigned>()->default_value(1)->value_name("S"),
      "from_hf: second sharding of each expert tensor's axis 1 into S equal parts")(
      "ep-shard-rank", po::value<unsigned>()->default_value(0)->value_name("K"),
      "from_hf: which of those parts")(
      "no-side-files",
      "do not copy config.json, tokenizer files and other files of the input directory")(
      "no-align",
      "do not pad headers to keep copied tensors page-aligned (disables reflink sharing)")(
      "json", "print a machine-readable JSON result on stdout (nothing else goes to stdout)")(
      "help,h", "show this help");
}

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

Result<PlanOptions> plan_options(const po::variables_map& vm) {
  PlanOptions o;
  if (vm.count("adapter"))
    o.adapter = vm["adapter"].as<std::string>();
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
  auto dt = parse_dtype_flag(vm["dtype"].as<std::string>(), "--dtype");
  if (!dt)
    return dt.status();
  o.expert_dtype = *dt;
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
  return o;
}

// Every file OUT will hold, with its exact size: what an upload loop needs ahead of time.
void print_sizes(const Plan& plan, const std::filesystem::path& input) {
  for (const OutputFile& f : plan.files)
    std::cout << f.size() << "\t" << f.name << "\n";
  if (plan.write_index)
    if (auto text = index_json(plan.total_tensor_bytes, plan.weight_map))
      std::cout << text->size() << "\t" << INDEX_FILE_NAME << "\n";
  for (const std::string& name : plan.side_files) {
    std::error_code ec;
    uint64_t size = std::filesystem::file_size(input / name, ec);
    if (!ec)
      std::cout << size << "\t" << name << "\n";
  }
}

void print_plan_text(const Plan& plan) {
  std::cout << "adapter " << plan.adapter << " " << direction_name(plan.direction) << ": "
            << plan.tensors.size() << " tensors in " << plan.files.size() << " file(s), "
            << format_bytes(plan.total_tensor_bytes) << " (" << format_bytes(plan.copy_bytes)
            << " copied, " << format_bytes(plan.transform_bytes) << " transformed); "
            << plan.dropped << " input tensors dropped, " << plan.excluded << " excluded\n";
  for (const OutputFile& f : plan.files) {
    std::cout << f.name << "  " << f.size() << " bytes, " << f.tensors.size() << " tensors\n";
    for (uint32_t i : f.tensors) {
      const OutputTensor& t = plan.tensors[i];
      std::cout << "  " << t.offset << "\t" << t.size << "\t" << op_name(t.op) << "\t" << t.name
                << "\t" << dtype_name(t.dtype) << shape_json(t.shape);
      if (!t.note.empty())
        std::cout << "\t(" << t.note << ")";
      std::cout << "\n";
    }
  }
  if (plan.write_index)
    std::cout << "model.safetensors.index.json\n";
  for (auto& s : plan.side_files)
    std::cout << s << " (copied)\n";
}

void print_plan_json(const Plan& plan) {
  std::ostringstream o;
  o << "{\"adapter\": " << json_string(plan.adapter) << ", \"direction\": \""
    << direction_name(plan.direction) << "\", \"total_size\": " << plan.total_tensor_bytes
    << ", \"copy_bytes\": " << plan.copy_bytes << ", \"transform_bytes\": " << plan.transform_bytes
    << ", \"dropped\": " << plan.dropped << ", \"excluded\": " << plan.excluded
    << ", \"index\": " << (plan.write_index ? "true" : "false") << ", \"side_files\": [";
  for (size_t i = 0; i < plan.side_files.size(); ++i)
    o << (i ? ", " : "") << json_string(plan.side_files[i]);
  o << "], \"files\": [";
  for (size_t f = 0; f < plan.files.size(); ++f) {
    const OutputFile& file = plan.files[f];
    o << (f ? ",\n  " : "\n  ") << "{\"name\": " << json_string(file.name)
      << ", \"size\": " << file.size() << ", \"header_size\": " << file.header.size()
      << ", \"tensors\": [";
    for (size_t k = 0; k < file.tensors.size(); ++k) {
      const OutputTensor& t = plan.tensors[file.tensors[k]];
      o << (k ? ",\n    " : "\n    ") << "{\"name\": " << json_string(t.name) << ", \"dtype\": \""
        << dtype_name(t.dtype) << "\", \"shape\": " << shape_json(t.shape)
        << ", \"offset\": " << t.offset << ", \"size\": " << t.size << ", \"op\": \""
        << op_name(t.op) << "\", \"note\": " << json_string(t.note) << "}";
    }
    o << "]}";
  }
  o << "]}\n";
  std::cout << o.str();
}

} // namespace

int cmd_plan(int argc, char** argv) {
  static const char* const USAGE =
      "Usage: shardshift plan IN [options]\n\n"
      "Validates IN against its adapter and prints the complete output plan (every file, every\n"
      "tensor with its offset, size and operation) without reading tensor data or writing "
      "anything.\n\n"
      "Example:\n  shardshift plan demo-hf --max-shard-size 64MiB\n"
      "  shardshift plan demo-hf --print-size     # exact size of each output file, for upload "
      "tools";
  po::options_description visible("Options");
  add_plan_options(visible);
  visible.add_options()("print-size", "print only 'SIZE<TAB>FILE' for every file OUT will hold "
                                      "(shards, index, side files)");
  po::options_description all;
  all.add(visible).add_options()("input", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("input", 1);
  po::variables_map vm;
  if (int rc; !parse_args("plan", argc, argv, all, pos, vm, &rc))
    return rc;
  if (vm.count("help")) {
    std::cout << USAGE << "\n\n" << visible << "\n";
    return EXIT_OK;
  }
  if (!vm.count("input"))
    return usage_error("plan", "missing the input checkpoint IN");
  auto opts = plan_options(vm);
  if (!opts)
    return usage_error("plan", opts.status().message());
  auto plan = plan_conversion(vm["input"].as<std::string>(), *opts);
  if (!plan)
    return report_error(plan.status());
  if (vm.count("json"))
    print_plan_json(*plan);
  else if (vm.count("print-size"))
    print_sizes(*plan, vm["input"].as<std::string>());
  else
    print_plan_text(*plan);
  return EXIT_OK;
}

int cmd_convert(int argc, char** argv) {
  static const char* const USAGE =
      "Usage: shardshift convert IN OUT [options]\n\n"
      "Converts the checkpoint IN (a .safetensors file or a directory of shards) into the "
      "directory\n"
      "OUT, shard by shard with bounded memory. OUT appears complete or not at all.\n\n"
      "Examples:\n"
      "  shardshift convert diffusiongemma-26B nemo-26B                  # HF -> native, detected\n"
      "  shardshift convert nemo-26B hf-26B --direction to_hf --dtype bf16\n"
      "  shardshift convert hf ep-r1 --ep-size 4 --ep-rank 1 --max-memory 4GiB -j 8 --stats\n"
      "  shardshift convert hf - --only model-00002-of-00011.safetensors | aws s3 cp - s3://b/m2";
  po::options_description visible("Options");
  add_plan_options(visible);
  visible.add_options()("jobs,j", po::value<unsigned>()->default_value(0)->value_name("N"),
                        "worker threads (0: all cores)")(
      "max-memory", po::value<std::string>()->default_value("1GiB")->value_name("SIZE"),
      "budget for buffers and mapped input in flight; peak memory stays within this plus ~200 MB")(
      "device", po::value<std::string>()->default_value("auto")->value_name("D"),
      "where expert tensors are transformed: auto (GPU when usable), cpu, cuda, cuda:N")(
      "force", "replace OUT if it exists")(
      "no-sync",
      "skip fsync: faster, and still never a partial file under a final name, but a power "
      "loss can lose what the page cache had not written (cp does not sync either)")(
      "only", po::value<std::string>()->value_name("NAME"),
      "with OUT '-': stream this one output file (a shard, model.safetensors.index.json or a side "
      "file) to stdout, e.g. into an upload tool; not needed when the output is a single file")(
      "stats", "print a per-stage table (count, bytes, busy time, share, rate, p50/p99) on stderr")(
      "trace", po::value<std::string>()->value_name("FILE"),
      "write a Chrome trace (open in https://ui.perfetto.dev or chrome://tracing)")(
      "quiet,q", "no progress line and no summary");
  po::options_description all;
  all.add(visible).add_options()("input", po::value<std::string>())("output",
                                                                    po::value<std::string>());
  po::positional_options_description pos;
  pos.add("input", 1).add("output", 1);
  po::variables_map vm;
  if (int rc; !parse_args("convert", argc, argv, all, pos, vm, &rc))
    return rc;
  if (vm.count("help")) {
    std::cout << USAGE << "\n\n" << visible << "\n";
    return EXIT_OK;
  }
  if (!vm.count("input") || !vm.count("output"))
    return usage_error("convert", "expected two arguments: IN OUT");
  auto opts = plan_options(vm);
  if (!opts)
    return usage_error("convert", opts.status().message());
  ConvertOptions o;
  o.input = vm["input"].as<std::string>();
  o.output = vm["output"].as<std::string>();
  o.plan = *opts;
  o.threads = vm["jobs"].as<unsigned>();
  auto mem = parse_size(vm["max-memory"].as<std::string>());
  if (!mem)
    return usage_error("convert", "--max-memory: " + mem.status().message());
  if (*mem < (1u << 20))
    return usage_error("convert", "--max-memory must be at least 1MiB");
  o.max_memory = *mem;
  o.device = vm["device"].as<std::string>();
  o.force = vm.count("force") > 0;
  o.sync = vm.count("no-sync") == 0;
  if (vm.count("only"))
    o.only = vm["only"].as<std::string>();
  if (o.output == "-" && vm.count("json"))
    return usage_error("convert", "--json and OUT '-' both write to stdout; use one");
  o.trace = vm.count("trace") > 0;
  o.cancel = &interrupted;
  const bool quiet = vm.count("quiet") > 0, json = vm.count("json") > 0;

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGPIPE, SIG_IGN);

  const bool tty = isatty(STDERR_FILENO) && !quiet;
  ConvertCallbacks cb;
  if (tty) {
    cb.progress = [](const Progress& p) {
      double rate = p.elapsed_s > 0 ? static_cast<double>(p.bytes_done) / p.elapsed_s : 0;
      double eta = rate > 0 ? static_cast<double>(p.bytes_total - p.bytes_done) / rate : 0;
      std::fprintf(stderr, "\r\033[K[shard %u/%u] %s / %s  %s  ETA %s  in flight %s", p.file,
                   p.files, format_bytes(p.bytes_done).c_str(), format_bytes(p.bytes_total).c_str(),
                   format_rate(rate).c_str(), duration(eta).c_str(),
                   format_bytes(p.in_flight_bytes).c_str());
      std::fflush(stderr);
    };
  }
  Profiler profiler(o.trace);
  auto result = convert(o, cb, &profiler);
  if (tty)
    std::fprintf(stderr, "\r\033[K");
  if (o.trace) {
    if (Status s = profiler.write_trace(vm["trace"].as<std::string>()); !s.ok())
      std::cerr << "shardshift: " << s.message() << "\n";
  }
  if (!result) {
    if (result.status().code() == Errc::interrupted) {
      std::cerr << "shardshift: interrupted; nothing was written to " << o.output.string() << "\n";
      return EXIT_INTERRUPTED;
    }
    return report_error(result.status());
  }
  const ConvertSummary& s = *result;
  const double rate = s.seconds > 0 ? static_cast<double>(s.output_bytes) / s.seconds : 0;
  if (!quiet) {
    std::fprintf(stderr,
                 "converted %llu tensors (%s %s) into %llu file(s) in %s: %s in %.2fs (%s); "
                 "zero-copy %s, transformed %s on %s; peak RSS %s\n",
                 static_cast<unsigned long long>(s.tensors), s.adapter.c_str(),
                 direction_name(s.direction), static_cast<unsigned long long>(s.files),
                 o.output.c_str(), format_bytes(s.output_bytes).c_str(), s.seconds,
                 format_rate(rate).c_str(),
                 format_bytes(s.zero_copy_bytes + s.fallback_copy_bytes).c_str(),
                 format_bytes(s.transformed_bytes).c_str(), s.device.c_str(),
                 format_bytes(s.peak_rss).c_str());
  }
  if (vm.count("stats")) {
    std::fprintf(stderr, "%-14s %8s %12s %10s %7s %12s %10s %10s\n", "stage", "count", "bytes",
                 "busy", "share", "rate", "p50", "p99");
    for (const StageSummary& st : s.stages) {
      if (st.count == 0)
        continue;
      double busy = static_cast<double>(st.busy_ns) / 1e9;
      std::fprintf(stderr, "%-14s %8llu %12s %9.3fs %6.1f%% %12s %8.2fms %8.2fms\n",
                   stage_name(st.stage), static_cast<unsigned long long>(st.count),
                   format_bytes(st.bytes).c_str(), busy,
                   s.seconds > 0 ? 100.0 * busy / s.seconds : 0.0,
                   format_rate(busy > 0 ? static_cast<double>(st.bytes) / busy : 0).c_str(),
                   static_cast<double>(st.p50_ns) / 1e6, static_cast<double>(st.p99_ns) / 1e6);
    }
    std::fprintf(
        stderr,
        "bytes: zero-copy %s, copied through the page cache %s, transformed %s (cpu %s, gpu %s)\n",
        format_bytes(s.zero_copy_bytes).c_str(), format_bytes(s.fallback_copy_bytes).c_str(),
        format_bytes(s.transformed_bytes).c_str(), format_bytes(s.cpu_bytes).c_str(),
        format_bytes(s.gpu_bytes).c_str());
    std::fprintf(stderr, "memory: %llu tokens x %s chunks; peak RSS %s\n",
                 static_cast<unsigned long long>(s.tokens), format_bytes(s.chunk_bytes).c_str(),
                 format_bytes(s.peak_rss).c_str());
  }
  if (json) {
    std::ostringstream j;
    j << "{\"adapter\": " << json_string(s.adapter) << ", \"direction\": \""
      << direction_name(s.direction) << "\", \"device\": " << json_string(s.device)
      << ", \"output\": " << json_string(o.output.string()) << ", \"tensors\": " << s.tensors
      << ", \"files\": " << s.files << ", \"output_bytes\": " << s.output_bytes
      << ", \"zero_copy_bytes\": " << s.zero_copy_bytes
      << ", \"fallback_copy_bytes\": " << s.fallback_copy_bytes
      << ", \"transformed_bytes\": " << s.transformed_bytes << ", \"cpu_bytes\": " << s.cpu_bytes
      << ", \"gpu_bytes\": " << s.gpu_bytes << ", \"dropped\": " << s.dropped
      << ", \"excluded\": " << s.excluded << ", \"seconds\": " << s.seconds
      << ", \"bytes_per_second\": " << rate << ", \"peak_rss\": " << s.peak_rss
      << ", \"chunk_bytes\": " << s.chunk_bytes << ", \"tokens\": " << s.tokens
      << ", \"stages\": {";
    bool first = true;
    for (const StageSummary& st : s.stages) {
      if (st.count == 0)
        continue;
      j << (first ? "" : ", ") << "\"" << stage_name(st.stage) << "\": {\"count\": " << st.count
        << ", \"bytes\": " << st.bytes << ", \"busy_ns\": " << st.busy_ns
        << ", \"p50_ns\": " << st.p50_ns << ", \"p99_ns\": " << st.p99_ns << "}";
      first = false;
    }
    j << "}}\n";
    std::cout << j.str();
  }
  return EXIT_OK;
}

} // namespace shardshift::app
