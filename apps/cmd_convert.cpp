// cmd_convert.cpp: `shardshift convert` and `shardshift plan`: flags, progress, summary, --json,
// --stats and --trace (the flags that shape the output are plan_flags.h's, shared with verify).
// The work itself is shardshift::convert() / make_plan(), and the size of every output file
// (--print-size) is list_output_files().
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/dtype.h"
#include "shardshift/json_text.h"
#include "shardshift/plan.h"
#include "shardshift/ranks.h"
#include "shardshift/units.h"

#include "cli.h"
#include "commands.h"
#include "plan_flags.h"
#include "progress_line.h"
#include "signals.h"

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <iterator>

#include <boost/program_options.hpp>

namespace po = boost::program_options;

namespace shardshift::app {

namespace {

std::string duration(double s) {
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  else
    std::snprintf(buf, sizeof buf, "%d:%02d", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return buf;
}

// The last line of a to_hf summary whose output lacks what from_hf dropped (semantics 16).
std::string not_restored_note(const std::vector<std::string>& missing) {
  if (missing.empty())
    return {};
  std::string what;
  for (const std::string& m : missing)
    what += (what.empty() ? "" : ", ") + m;
  return "note: the Hugging Face checkpoint had " + what +
         ", which from_hf dropped and this output lacks; pass --base HF_DIR to restore them\n";
}

void not_restored_json(JsonWriter& w, const std::vector<std::string>& missing) {
  w.key("not_restored").begin_array();
  for (const std::string& m : missing)
    w.value(m);
  w.end_array();
}

std::string plan_text(const Plan& plan) {
  std::string s = "adapter " + plan.adapter + " " + direction_name(plan.direction) + ": " +
                  std::to_string(plan.tensors.size()) + " tensors in " +
                  std::to_string(plan.files.size()) + " file(s), " +
                  format_bytes(plan.total_tensor_bytes) + " (" + format_bytes(plan.copy_bytes) +
                  " copied, " + format_bytes(plan.transform_bytes) + " transformed); " +
                  std::to_string(plan.dropped) + " input tensors dropped, " +
                  std::to_string(plan.excluded) + " excluded" +
                  (plan.restored ? ", " + std::to_string(plan.restored) + " restored from --base"
                                 : std::string()) +
                  "\n";
  for (const OutputFile& f : plan.files) {
    s += f.name + "  " + std::to_string(f.size()) + " bytes, " + std::to_string(f.tensors.size()) +
         " tensors\n";
    for (uint32_t i : f.tensors) {
      const OutputTensor& t = plan.tensors[i];
      s += "  " + std::to_string(t.offset) + "\t" + std::to_string(t.size) + "\t" + op_name(t.op) +
           "\t" + t.name + "\t" + std::string(dtype_name(t.dtype)) + shape_text(t.shape);
      if (!t.note.empty())
        s += "\t(" + t.note + ")";
      s += "\n";
    }
  }
  if (plan.write_index)
    s += std::string(INDEX_FILE_NAME) + "\n";
  for (auto& side : plan.side_files)
    s += side + " (copied)\n";
  s += not_restored_note(plan.not_restored);
  return s;
}

// One line per output file and per tensor, so the JSON stays readable with grep.
std::string plan_json(const Plan& plan, const std::vector<OutputFileSize>& outputs) {
  JsonWriter w;
  w.begin_object().key("adapter").value(plan.adapter);
  w.key("direction").value(direction_name(plan.direction));
  w.key("total_size").value(plan.total_tensor_bytes).key("copy_bytes").value(plan.copy_bytes);
  w.key("transform_bytes").value(plan.transform_bytes).key("dropped").value(plan.dropped);
  w.key("excluded").value(plan.excluded).key("index").value(plan.write_index);
  w.key("restored").value(plan.restored);
  not_restored_json(w, plan.not_restored);
  w.key("side_files").begin_array();
  for (const std::string& name : plan.side_files)
    w.value(name);
  w.end_array().key("files").begin_array();
  for (const OutputFile& file : plan.files) {
    w.line_break().begin_object().key("name").value(file.name).key("size").value(file.size());
    w.key("header_size").value(file.header.size()).key("tensors").begin_array();
    for (uint32_t i : file.tensors) {
      const OutputTensor& t = plan.tensors[i];
      w.line_break().begin_object().key("name").value(t.name).key("dtype").value(
          dtype_name(t.dtype));
      w.key("shape").begin_array();
      for (uint64_t d : t.shape)
        w.value(d);
      w.end_array().key("offset").value(t.offset).key("size").value(t.size);
      w.key("op").value(op_name(t.op)).key("note").value(t.note).end_object();
    }
    w.end_array().end_object();
  }
  w.end_array().key("outputs").begin_array();
  for (const OutputFileSize& f : outputs)
    w.line_break().begin_object().key("name").value(f.name).key("size").value(f.size).end_object();
  w.end_array().end_object();
  return w.take() + "\n";
}

std::string summary_json(const ConvertSummary& s, const std::string& output, double rate) {
  JsonWriter w;
  w.begin_object()
      .key("adapter")
      .value(s.adapter)
      .key("direction")
      .value(direction_name(s.direction));
  w.key("device").value(s.device).key("output").value(output);
  if (!s.deliveries.empty()) {
    w.key("deliveries").begin_array();
    for (const FileDelivery& d : s.deliveries)
      w.begin_object().key("name").value(d.name).key("state").value(d.state).end_object();
    w.end_array();
  }
  if (!s.checksums.empty()) {
    w.key("sha256").begin_object();
    for (const auto& [name, digest] : s.checksums)
      w.key(name).value(digest);
    w.end_object();
  }
  w.key("tensors").value(s.tensors).key("files").value(s.files);
  w.key("output_bytes").value(s.output_bytes).key("zero_copy_bytes").value(s.zero_copy_bytes);
  w.key("fallback_copy_bytes").value(s.fallback_copy_bytes);
  w.key("transformed_bytes").value(s.transformed_bytes);
  w.key("cpu_bytes").value(s.cpu_bytes).key("gpu_bytes").value(s.gpu_bytes);
  w.key("gpu_input_bytes").value(s.gpu_input_bytes);
  w.key("gpu_in_place_bytes").value(s.gpu_in_place_bytes);
  w.key("dropped").value(s.dropped).key("excluded").value(s.excluded);
  w.key("restored").value(s.restored);
  not_restored_json(w, s.not_restored);
  w.key("seconds").value(s.seconds).key("bytes_per_second").value(rate);
  w.key("peak_rss").value(s.peak_rss).key("chunk_bytes").value(s.chunk_bytes);
  w.key("tokens").value(s.tokens).key("writers").value(s.writers);
  w.key("filled_by_threads").value(s.filled_by_threads);
  w.key("helped_bytes").value(s.helped_bytes);
  w.key("lane_ends").begin_array();
  for (const ConvertSummary::LaneEnd& lane : s.lane_ends)
    w.begin_object().key("seconds").value(lane.seconds).key("file").value(lane.file).end_object();
  w.end_array();
  w.key("kept_files").value(s.kept_files).key("kept_bytes").value(s.kept_bytes);
  if (!s.rank.empty())
    w.key("rank").value(s.rank);
  w.key("stages").begin_object();
  for (const StageSummary& st : s.stages) {
    if (st.count == 0)
      continue;
    w.key(stage_name(st.stage)).begin_object().key("count").value(st.count);
    w.key("bytes").value(st.bytes).key("busy_ns").value(st.busy_ns);
    w.key("p50_ns").value(st.p50_ns).key("p99_ns").value(st.p99_ns).end_object();
  }
  w.end_object().end_object();
  return w.take() + "\n";
}

std::string summary_line(const ConvertSummary& s, const std::string& output, double rate) {
  // With a GPU, the CPU takes the chunks the GPU was not worth or free for (and all of them
  // while it opens): say how much the GPU did.
  std::string device = s.device;
  if (device.rfind("cuda", 0) == 0)
    device += ", " + format_bytes(s.gpu_bytes) + " of it on the GPU";
  // Tensors only renamed were moved by the kernel (zero-copy) unless it refused (another
  // filesystem) or threads filled the file: then say how much of them was copied.
  std::string passed = "zero-copy " + format_bytes(s.zero_copy_bytes);
  if (s.fallback_copy_bytes > 0)
    passed = "passed through " + format_bytes(s.zero_copy_bytes + s.fallback_copy_bytes) + " (" +
             format_bytes(s.zero_copy_bytes) + " of it zero-copy)";
  char buf[1024];
  std::snprintf(
      buf, sizeof buf,
      "converted %llu tensors (%s %s) into %llu file(s) in %s: %s in %.2fs (%s); "
      "%s, transformed %s on %s; peak RSS %s\n",
      static_cast<unsigned long long>(s.tensors), s.adapter.c_str(), direction_name(s.direction),
      static_cast<unsigned long long>(s.files), output.c_str(),
      format_bytes(s.output_bytes).c_str(), s.seconds, format_rate(rate).c_str(), passed.c_str(),
      format_bytes(s.transformed_bytes).c_str(), device.c_str(), format_bytes(s.peak_rss).c_str());
  return buf;
}

// When the lanes ended: the gap before the last is the last file written by one lane alone, a
// tail more lanes (--writers) or smaller files (--max-shard-size) can shorten; where files are
// filled by several threads, lanes out of files help with the others' instead.
void print_lane_ends(const ConvertSummary& s) {
  const std::vector<ConvertSummary::LaneEnd>& ends = s.lane_ends;
  if (ends.size() < 2)
    return;
  std::string times;
  for (const ConvertSummary::LaneEnd& lane : ends) {
    char t[32];
    std::snprintf(t, sizeof t, "%s%.2f", times.empty() ? "" : ", ", lane.seconds);
    times += t;
  }
  const ConvertSummary::LaneEnd& last = ends.back();
  std::string helped;
  if (s.filled_by_threads)
    helped = "; " + format_bytes(s.helped_bytes) + " written by lanes helping with another's file";
  std::fprintf(stderr, "lanes: ended at %s s; the last (%s) wrote alone for %.2f s%s\n",
               times.c_str(), last.file.c_str(), last.seconds - ends[ends.size() - 2].seconds,
               helped.c_str());
}

void print_stats(const ConvertSummary& s) {
  std::fprintf(stderr, "%-14s %8s %12s %10s %7s %12s %10s %10s\n", "stage", "count", "bytes",
               "busy", "share", "rate", "p50", "p99");
  // In the order a chunk meets them, the GPU's opening and closing last.
  static constexpr Stage ORDER[] = {Stage::plan,          Stage::open,          Stage::read,
                                    Stage::transform_cpu, Stage::transform_gpu, Stage::gpu_stage,
                                    Stage::gpu_h2d,       Stage::gpu_kernel,    Stage::gpu_d2h,
                                    Stage::hash,          Stage::write_copy,    Stage::write_data,
                                    Stage::wait,          Stage::release,       Stage::commit,
                                    Stage::gpu_open,      Stage::gpu_close};
  static_assert(std::size(ORDER) == STAGE_COUNT, "every stage once");
  for (Stage stage : ORDER) {
    if (static_cast<size_t>(stage) >= s.stages.size())
      continue;
    const StageSummary& st = s.stages[static_cast<size_t>(stage)];
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
  if (s.gpu_bytes > 0)
    std::fprintf(
        stderr, "gpu input: %s, %s of it read in place from the mappings, the rest staged\n",
        format_bytes(s.gpu_input_bytes).c_str(), format_bytes(s.gpu_in_place_bytes).c_str());
  std::fprintf(stderr, "memory: %llu writer lane(s) x %llu tokens x %s chunks; peak RSS %s\n",
               static_cast<unsigned long long>(s.writers),
               static_cast<unsigned long long>(s.tokens), format_bytes(s.chunk_bytes).c_str(),
               format_bytes(s.peak_rss).c_str());
  if (s.filled_by_threads)
    std::fprintf(stderr, "files: each filled by several threads (a tmpfs, with threads to "
                         "spare; README, --writers)\n");
  print_lane_ends(s);
}

std::string progress_text(const Progress& p) {
  double rate = p.elapsed_s > 0 ? static_cast<double>(p.bytes_done) / p.elapsed_s : 0;
  double eta = rate > 0 ? static_cast<double>(p.bytes_total - p.bytes_done) / rate : 0;
  char buf[256];
  std::snprintf(buf, sizeof buf, "[shard %u/%u] %s / %s  %s  ETA %s  in flight %s", p.file, p.files,
                format_bytes(p.bytes_done).c_str(), format_bytes(p.bytes_total).c_str(),
                format_rate(rate).c_str(), duration(eta).c_str(),
                format_bytes(p.in_flight_bytes).c_str());
  return buf;
}

} // namespace

int cmd_plan(int argc, char** argv) {
  const HelpText help = {
      .usage = "shardshift plan IN [options]",
      .description =
          "Validates the checkpoint IN against its adapter and prints the complete output plan "
          "(every file, every tensor with its offset, size and operation) without reading "
          "tensor data or writing anything. The flags that shape the output are those of "
          "'shardshift convert', so a plan shows exactly what that convert would write.",
      .examples = "shardshift plan demo-hf --max-shard-size 64MiB\n"
                  "shardshift plan demo-hf --print-size    # exact size of every output file\n"
                  "shardshift plan nemo-26B --direction to_hf --json > plan.json",
      .exit_status = "0 the conversion is possible, 1 it is not (problems on stderr), 2 bad "
                     "usage.",
  };
  FlagGroup what = output_flags();
  FlagGroup report("Output of plan");
  report.flags.add_options()(
      "print-size", "Print only 'SIZE<TAB>NAME' for every file OUT will hold: the shards, "
                    "the index and the side files, each with its exact size in bytes, e.g. "
                    "for an upload tool that wants sizes ahead of time. A name holding a line "
                    "break or a backslash is escaped as sha256sum escapes it (the line starts "
                    "with '\\'). Example: plan hf native "
                    "--print-size | sort -n | tail -1");
  add_common_flags(report,
                   "Print nothing on stdout (unless --json or --print-size): only check that IN "
                   "can be converted, and let the exit status say so.",
                   "the totals, each output file with its tensors (name, dtype, shape, offset, "
                   "size, op, note), and \"outputs\", every file with its size.");
  po::options_description all;
  all.add(what.flags).add(report.flags).add_options()("input", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("input", 1);
  po::variables_map vm;
  if (int rc; !parse_args("plan", argc, argv, all, pos, vm, &rc))
    return rc;
  if (vm.count("help")) {
    print_help(std::cout, help, {&what, &report});
    return EXIT_OK;
  }
  if (!vm.count("input"))
    return usage_error("plan", "missing the input checkpoint IN");
  const bool json = vm.count("json") > 0, print_size = vm.count("print-size") > 0;
  if (json && print_size)
    return usage_error("plan", "--json and --print-size both choose what stdout holds; use one");
  auto opts = plan_options(vm);
  if (!opts)
    return usage_error("plan", opts.status().message());

  auto input = open_for_plan(vm["input"].as<std::string>(), *opts);
  if (!input)
    return report_error(input.status());
  print_warnings(input->warnings, vm.count("quiet") > 0);
  auto plan = make_plan(*input, *opts);
  if (!plan)
    return report_error(plan.status());
  if (json || print_size) {
    auto outputs = list_output_files(*input, *plan);
    if (!outputs)
      return report_error(outputs.status());
    if (json) {
      std::cout << plan_json(*plan, *outputs);
    } else {
      std::cout << output_sizes_text(*outputs);
    }
  } else if (!vm.count("quiet")) {
    std::cout << plan_text(*plan);
  }
  return stdout_ok("plan") ? EXIT_OK : EXIT_FAIL;
}

namespace {

const HelpText CONVERT_HELP = {
    .usage = "shardshift convert IN OUT [options]\n       shardshift convert IN --pipe-to COMMAND "
             "[options]\n       shardshift convert IN - --format tar [options]",
    .description =
        "Converts the checkpoint IN (a .safetensors file or a directory of shards) into the "
        "directory OUT, shard by shard with bounded memory. OUT appears complete or not at "
        "all: it is written under a temporary name and renamed into place, and Ctrl-C or an "
        "error removes everything written so far.",
    .examples = "shardshift convert diffusiongemma-26B nemo-26B    # HF -> native, detected\n"
                "shardshift convert nemo-26B hf-26B --direction to_hf --dtype bf16\n"
                "shardshift convert hf ep-r1 --ep-size 4 --ep-rank 1 --max-memory 4GiB -j 8\n"
                "shardshift convert hf nemo --stats --trace run.json.gz  # see ui.perfetto.dev\n"
                "shardshift convert hf --checksums --pipe-to \\\n"
                "    'aws s3 cp - s3://b/nemo/{name} --expected-size {size}'\n"
                "shardshift convert hf - --only model-00002-of-00011.safetensors | upload-tool\n"
                "shardshift convert hf - --format tar | ssh host tar x -C /models/nemo\n"
                "shardshift convert nemo hf-back --direction to_hf --base hf  # lose nothing",
    .exit_status = "0 converted, 1 failed (nothing is left behind), 2 bad usage, 130 "
                   "interrupted.",
};

// The flags of `convert`, in the groups its --help shows.
struct ConvertFlags {
  FlagGroup what = output_flags();
  FlagGroup run{"How to run"};
  FlagGroup report{"Reporting"};
};

// The flags of a job of several processes writing one OUT (ranks.h, job.h).
void add_job_flags(FlagGroup& run) {
  run.flags.add_options()(
      "rank", po::value<unsigned>()->value_name("R"),
      "This process's rank in a job of several processes writing one OUT together (each "
      "converts its share of the output files, rank 0 commits); needs --world-size. Without "
      "them, taken from the launcher: torchrun, mpirun (Open MPI), PMI (MPICH), srun. Example: "
      "--rank 0 --world-size 4")("world-size", po::value<unsigned>()->value_name("N"),
                                 "The number of processes of the job (see --rank). Example: "
                                 "--rank 3 --world-size 4")(
      "job-timeout", po::value<unsigned>()->default_value(120)->value_name("SECONDS"),
      "In a job of several processes: a rank silent this long (no heartbeat in the shared "
      "staging directory) is taken for dead and the job fails. Under mpirun (coordinated "
      "through MPI) it bounds the waits for every rank to agree on the plan and for rank 0's "
      "commit; a rank that dies is mpirun's to see. Example: --job-timeout 600")(
      "ep-from-launcher",
      "Each process of the job writes its own expert-parallel checkpoint: --ep-size is the "
      "world size and --ep-rank the rank (from the launcher or --rank/--world-size), and "
      "'{rank}' in OUT is replaced by the rank. Example: mpirun -np 4 shardshift convert hf "
      "'ep-{rank}' --ep-from-launcher");
}

// Where the output goes other than a directory (stdout, a tar stream, upload commands), and its
// checksums.
void add_delivery_flags(FlagGroup& run) {
  run.flags.add_options()(
      "only", po::value<std::string>()->value_name("NAME"),
      "With OUT '-': stream only the output file NAME (a shard, the index or a side file) to "
      "stdout, e.g. into an upload tool. Not needed when the output is a single file. "
      "Example: - --only model-00001-of-00004.safetensors")(
      "pipe-to", po::value<std::string>()->value_name("COMMAND"),
      "Instead of OUT: stream every output file into its own COMMAND (run by sh -c, {name} and "
      "{size} replaced, shell-quoted: write them bare, never inside quotes; also in its "
      "environment as SHARDSHIFT_NAME and SHARDSHIFT_SIZE), e.g. an uploader "
      "reading stdin; with --json, its stdout goes to stderr. The index goes last, "
      "only after every shard was delivered; a file that fails has its command interrupted "
      "(SIGINT, then SIGTERM, SIGKILL) before its input ends, so the uploader discards it. "
      "Example: --pipe-to 'aws s3 cp - s3://bucket/native/{name} --expected-size {size}'")(
      "format", po::value<std::string>()->default_value("dir")->value_name("FORMAT"),
      "dir: OUT is a directory (or, with OUT '-', one of its files: --only). tar: the whole "
      "output directory (shards, side files, SHA256SUMS, the index last) as one POSIX tar "
      "stream to stdout; needs OUT '-'. A failed run ends the stream without the end-of-archive "
      "blocks, so tar x reports it. Example: - --format tar | ssh host tar x -C /models/nemo")(
      "uploads", po::value<unsigned>()->default_value(4)->value_name("N"),
      "With --pipe-to (only): commands running at once, whatever -j is: a thread "
      "waits on each, beside the -j threads that convert. Example: --uploads 8")(
      "checksums", "Compute the SHA-256 of every output file while it is written (no second "
                   "read) and write them as SHA256SUMS (sha256sum -c format) beside the output, "
                   "or deliver it before the index with --pipe-to; also in --json. Example: "
                   "convert hf native --checksums && (cd native && sha256sum -c SHA256SUMS)");
}

void add_convert_flags(ConvertFlags& f) {
  FlagGroup& run = f.run;
  FlagGroup& report = f.report;
  run.flags.add_options()("jobs,j", po::value<unsigned>()->default_value(0)->value_name("N"),
                          "Worker threads; 0 uses every core. Example: -j 8")(
      "writers", po::value<unsigned>()->default_value(0)->value_name("N"),
      "Output files written at once, each by its own bounded pipeline within the one memory "
      "budget; 0 picks one per thread up to 8 threads, then one per two threads (at least 8), "
      "at most one per file and 16; with the GPU and 4 threads or more, one per file when the "
      "files are at most twice that. Into a tmpfs with at least 3 threads per writer, each "
      "file is filled by several threads, and a writer out of files helps with the file that "
      "would end last, alone. Example: --writers 2")(
      "max-memory", po::value<std::string>()->default_value("1GiB")->value_name("SIZE"),
      (std::string("Budget for buffers and mapped input in flight; peak memory stays within "
                   "it plus the program: about 20 MB, and about 200 MB more once the CUDA runtime "
                   "is loaded. ") +
       SIZE_SYNTAX + " Example: --max-memory 4GiB")
          .c_str())("device", po::value<std::string>()->default_value("auto")->value_name("DEVICE"),
                    "Where expert tensors are transformed and FP8 weights dequantized: auto "
                    "(a usable GPU where it was measured faster: to dequantize FP8 with at most "
                    "4 threads, or on a CPU without SIMD kernels; else the CPU), cpu, "
                    "cuda (GPU 0, beside the CPU, which starts while the GPU opens) or cuda:N (GPU "
                    "number N); the bytes are the same on every device; the summary says how "
                    "much the GPU did. Example: --device cuda:1")(
      "force", "Replace OUT if it exists. Example: "
               "convert hf native --force")(
      "resume", "Continue a run into the same OUT that was killed, interrupted or failed: its "
                "finished files are kept (when the same input files and flags give the same "
                "plan) and only the rest is converted; if this run fails too, what "
                "it finished is kept for the next --resume. Without --resume, such leftovers are "
                "removed. Example: convert hf native --resume");
  add_job_flags(run);
  run.flags.add_options()(
      "no-sync", "Skip fsync: faster, and still never a partial file under a final name, but "
                 "a power loss can lose what the page cache had not yet written (as with cp). "
                 "Example: convert hf /dev/shm/native --no-sync");
  add_delivery_flags(run);
  report.flags.add_options()("stats",
                             "Print a table of the pipeline stages on stderr: count, bytes, "
                             "busy time, share, rate, p50 and p99 per stage. Example: convert hf "
                             "native --stats")(
      "trace", po::value<std::string>()->value_name("FILE"),
      "Write a Chrome trace of every stage to FILE, gzip-compressed when FILE ends in .gz; "
      "open it in https://ui.perfetto.dev or chrome://tracing. Checked before any work: not an "
      "input, not inside IN or OUT, in an existing directory. Example: --trace run.json.gz");
  add_common_flags(report, "No progress line and no summary on stderr.",
                   "what was converted, the byte counts by path (zero-copy, transformed, cpu, "
                   "gpu), time, rate, peak RSS and the per-stage figures of --stats.");
}

// ConvertOptions from the parsed flags; a bad value is a usage error (its message).
// --ep-from-launcher: one single-process conversion per rank, each into its own OUT ({rank}
// replaced), of its own experts (--ep-size and --ep-rank from the launcher's variables).
Status take_ep_from_launcher(ConvertOptions& o) {
  auto rank = detect_rank(o.rank, o.world_size, environment());
  if (!rank)
    return rank.status();
  if (o.plan.ep_size != 1 || o.plan.ep_rank != 0)
    return Status(Errc::invalid_argument, "--ep-from-launcher sets --ep-size and --ep-rank; "
                                          "give one or the other");
  std::string out = o.output.string();
  const size_t at = out.find("{rank}");
  if (at == std::string::npos)
    return Status(Errc::invalid_argument,
                  "--ep-from-launcher: OUT must contain {rank}, so that each process writes "
                  "its own checkpoint (e.g. 'native-ep{rank}')");
  out.replace(at, 6, std::to_string(rank->rank));
  o.output = out;
  o.plan.ep_size = rank->world;
  o.plan.ep_rank = rank->rank;
  o.rank = 0;
  o.world_size = 1;
  return {};
}

// Flags that clash with where the output goes, or would be silently ignored there (README: a
// flag with nothing to set is refused).
Status check_output_flags(const ConvertOptions& o, const po::variables_map& vm) {
  if (o.output == "-" && vm.count("json"))
    return Status(Errc::invalid_argument, "--json and OUT '-' both write to stdout; use one");
  if (const std::string problem = vm.count("json") ? json_stdout_problem() : ""; !problem.empty())
    return Status(Errc::invalid_argument, problem);
  if (o.output == "-" && o.format != OutputFormat::tar && o.checksums)
    return Status(Errc::invalid_argument,
                  "--checksums writes SHA256SUMS beside the output, and OUT '-' without "
                  "--format tar is one file on stdout with no place for it; add --format tar "
                  "(SHA256SUMS goes into the archive), or pipe stdout through sha256sum");
  if ((o.output == "-" || vm.count("pipe-to")) && !o.sync)
    return Status(Errc::invalid_argument,
                  std::string("--no-sync skips the fsyncs of files written into OUT; ") +
                      (o.output == "-" ? "OUT '-' streams to stdout"
                                       : "--pipe-to streams into "
                                         "commands") +
                      " and syncs nothing, so it has nothing to set");
  if (vm.count("pipe-to") && !vm["format"].defaulted() && o.format == OutputFormat::dir)
    return Status(Errc::invalid_argument,
                  "--format dir writes a directory OUT; --pipe-to hands each file to its own "
                  "command instead, so it has nothing to set");
  if (!o.only.empty() && !vm["writers"].defaulted())
    return Status(Errc::invalid_argument,
                  "--writers sets how many output files are written at once; --only streams "
                  "one, so it has nothing to set");
  return {};
}

Result<ConvertOptions> convert_options(const po::variables_map& vm) {
  auto opts = plan_options(vm);
  if (!opts)
    return opts.status();
  ConvertOptions o;
  for (const char* flag : {"pipe-to", "trace", "only"})
    if (vm.count(flag) && vm[flag].as<std::string>().empty())
      return Status(Errc::invalid_argument, std::string("--") + flag + " is empty ('')");
  o.input = vm["input"].as<std::string>();
  if (vm.count("output"))
    o.output = vm["output"].as<std::string>();
  if (vm.count("pipe-to"))
    o.pipe_to = vm["pipe-to"].as<std::string>();
  o.uploads = vm["uploads"].as<unsigned>();
  if (!vm["uploads"].defaulted() && !vm.count("pipe-to"))
    return Status(Errc::invalid_argument, "--uploads sets how many --pipe-to commands run at "
                                          "once; without --pipe-to it has nothing to set");
  if (o.uploads == 0)
    return Status(Errc::invalid_argument, "--uploads must be at least 1");
  o.checksums = vm.count("checksums") > 0;
  o.plan = *opts;
  o.threads = vm["jobs"].as<unsigned>();
  o.writers = vm["writers"].as<unsigned>();
  auto mem = parse_size(vm["max-memory"].as<std::string>());
  if (!mem)
    return Status(Errc::invalid_argument, "--max-memory: " + mem.status().message());
  if (*mem < (1u << 20))
    return Status(Errc::invalid_argument, "--max-memory must be at least 1MiB");
  o.max_memory = *mem;
  o.device = vm["device"].as<std::string>();
  // Strictly here: the library would read "cuda:x" as a GPU number.
  if (std::string why = check_device(o.device); !why.empty())
    return Status(Errc::invalid_argument, why);
  o.owns_gpu = true; // this process is the GPU's one user
  o.force = vm.count("force") > 0;
  o.resume = vm.count("resume") > 0;
  if (vm.count("rank"))
    o.rank = vm["rank"].as<unsigned>();
  if (vm.count("world-size"))
    o.world_size = vm["world-size"].as<unsigned>();
  o.job_timeout = std::chrono::seconds(vm["job-timeout"].as<unsigned>());
  if (o.job_timeout.count() == 0) // every rank would fail at its first look at the others
    return Status(Errc::invalid_argument,
                  "--job-timeout must be at least 1 (seconds a rank waits for a sign of life)");
  if (vm.count("ep-from-launcher"))
    if (Status s = take_ep_from_launcher(o); !s.ok())
      return s;
  o.sync = vm.count("no-sync") == 0;
  if (vm.count("only"))
    o.only = vm["only"].as<std::string>();
  if (const std::string format = vm["format"].as<std::string>(); format == "tar")
    o.format = OutputFormat::tar;
  else if (format != "dir")
    return Status(Errc::invalid_argument, "--format '" + format + "': use dir or tar");
  if (Status s = check_output_flags(o, vm); !s.ok())
    return s;
  o.pipe_to_stdout_to_stderr = vm.count("json") > 0; // stdout holds the JSON alone
  o.trace = vm.count("trace") > 0;
  if (o.trace)
    o.trace_file = vm["trace"].as<std::string>();
  return o;
}

// --pipe-to --json, a failed run: one JSON object with "ok": false and every file's state.
void print_failed_deliveries(const Status& failed, const std::vector<FileDelivery>& deliveries) {
  JsonWriter w;
  w.begin_object().key("ok").value(false).key("error").value(failed.message());
  w.key("interrupted").value(failed.code() == Errc::interrupted);
  w.key("deliveries").begin_array();
  for (const FileDelivery& d : deliveries)
    w.line_break()
        .begin_object()
        .key("name")
        .value(d.name)
        .key("state")
        .value(d.state)
        .end_object();
  w.end_array().end_object();
  std::cout << w.take() << "\n" << std::flush;
}

// A failed run: what it says on stderr, and its exit code.
int report_failed_run(const ConvertOptions& o, const Status& failed) {
  if (failed.code() == Errc::interrupted) {
    // A rank of a job says where it stopped: a rank waiting for rank 0's commit cannot know
    // whether it happened.
    auto rank = detect_rank(o.rank, o.world_size, environment());
    const bool in_a_job = rank && rank->world > 1;
    if (!o.pipe_to.empty() || o.output == "-" || o.resume || in_a_job)
      report_error(failed); // every file's state, what went to stdout, what is kept
    else
      std::cerr << "shardshift: interrupted; nothing was written to " << o.output.string() << "\n";
    return EXIT_INTERRUPTED;
  }
  return report_error(failed);
}

// A finished run: the summary line and what follows it on stderr, --stats, and --json on stdout.
// Returns the exit code (EXIT_FAIL when the JSON could not be written).
int print_summary(const ConvertOptions& o, const ConvertSummary& s, const po::variables_map& vm) {
  const bool quiet = vm.count("quiet") > 0;
  const std::string where = o.pipe_to.empty() ? o.output.string() : "--pipe-to commands";
  const double rate = s.seconds > 0 ? static_cast<double>(s.output_bytes) / s.seconds : 0;
  if (!quiet)
    std::fputs(((s.rank.empty() ? "" : s.rank + ": ") + summary_line(s, where, rate)).c_str(),
               stderr);
  if (!quiet && s.kept_files > 0)
    std::fprintf(stderr, "  resumed: %llu file(s), %s, were kept from the earlier run\n",
                 static_cast<unsigned long long>(s.kept_files), format_bytes(s.kept_bytes).c_str());
  if (!quiet)
    for (const FileDelivery& d : s.deliveries)
      std::fprintf(stderr, "  %s: %s\n", d.name.c_str(), d.state.c_str());
  if (vm.count("stats"))
    print_stats(s);
  if (!quiet && s.restored > 0)
    std::fprintf(stderr, "  restored from --base: %llu tensor(s)\n",
                 static_cast<unsigned long long>(s.restored));
  if (!quiet) // last: what the output lacks and how to restore it
    std::fputs(not_restored_note(s.not_restored).c_str(), stderr);
  if (vm.count("json")) {
    std::cout << summary_json(s, where, rate);
    if (!json_report_written("convert",
                             "the conversion finished and its output is complete (" + where + ")"))
      return EXIT_FAIL;
  }
  return EXIT_OK;
}

// Runs the conversion with a progress line, Ctrl-C handling and the trace; prints the summary.
int run_convert(ConvertOptions& o, const po::variables_map& vm) {
  const bool quiet = vm.count("quiet") > 0;
  // Ctrl-C stops the pipeline at its next chunk, and convert() removes the staging directory.
  CancelOnSignal cancel(/*ignore_sigpipe=*/true);
  o.cancel = cancel.flag();
  ProgressLine line(quiet);
  ConvertCallbacks cb;
  cb.warnings = [quiet](const std::vector<std::string>& w) { print_warnings(w, quiet); };
  if (line.enabled())
    cb.progress = [&line](const Progress& p) {
      if (line.due())
        line.draw(progress_text(p));
    };
  if (!vm["job-timeout"].defaulted())
    if (auto rank = detect_rank(o.rank, o.world_size, environment()); rank && rank->world == 1)
      print_warnings({"--job-timeout has no effect: this run is one process, not one of a job's "
                      "ranks (no --world-size above 1, and no launcher's variables: mpirun, "
                      "srun, torchrun)"},
                     quiet);
  // --pipe-to --json: a failed run still says on stdout which files were delivered (a caller
  // removes those objects, or keeps them for a rerun), as one JSON object with "ok": false; with
  // no deliveries where it failed before any command started.
  std::vector<FileDelivery> deliveries;
  const bool report_deliveries = vm.count("json") && !o.pipe_to.empty();
  if (report_deliveries)
    cb.delivered = [&deliveries](const std::vector<FileDelivery>& d) { deliveries = d; };
  Profiler profiler(o.trace);
  auto result = convert(o, cb, &profiler);
  line.clear();
  if (!result && report_deliveries)
    print_failed_deliveries(result.status(), deliveries);

  int exit_code = EXIT_OK;
  // A run refused before any work (a bad flag, OUT or --trace itself) recorded nothing and
  // writes no trace: the file could be where it must not go.
  const std::vector<StageSummary> stages = profiler.summaries();
  const bool worked = std::any_of(stages.begin(), stages.end(),
                                  [](const StageSummary& st) { return st.count > 0; });
  if (o.trace && worked)
    if (Status s = profiler.write_trace(o.trace_file); !s.ok())
      exit_code = report_error(
          !result ? s
                  : Status(s.code(), "the conversion finished and its output is complete, but " +
                                         s.message()));
  if (!result)
    return report_failed_run(o, result.status());
  if (int rc = print_summary(o, *result, vm); rc != EXIT_OK)
    return rc;
  return exit_code;
}

} // namespace

int cmd_convert(int argc, char** argv) {
  ConvertFlags flags;
  add_convert_flags(flags);
  po::options_description all;
  all.add(flags.what.flags).add(flags.run.flags).add(flags.report.flags);
  all.add_options()("input", po::value<std::string>())("output", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("input", 1).add("output", 1);
  po::variables_map vm;
  if (int rc; !parse_args("convert", argc, argv, all, pos, vm, &rc))
    return rc;
  if (vm.count("help")) {
    print_help(std::cout, CONVERT_HELP, {&flags.what, &flags.run, &flags.report});
    return EXIT_OK;
  }
  if (!vm.count("input") || (!vm.count("output") && !vm.count("pipe-to")))
    return usage_error("convert", "expected two arguments: IN OUT (or IN --pipe-to COMMAND)");
  auto options = convert_options(vm);
  if (!options)
    return usage_error("convert", options.status().message());
  return run_convert(*options, vm);
}

} // namespace shardshift::app
