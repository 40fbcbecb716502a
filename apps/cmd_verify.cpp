// cmd_verify.cpp: `shardshift verify IN OUT`: flags, progress, the verdict and --json. The work
// itself is shardshift::verify() (include/shardshift/verify.h).
#include "shardshift/json_text.h"
#include "shardshift/units.h"
#include "shardshift/verify.h"

#include "cli.h"
#include "commands.h"
#include "plan_flags.h"
#include "progress_line.h"
#include "signals.h"

#include <cstdio>
#include <iostream>

#include <boost/program_options.hpp>

namespace po = boost::program_options;

namespace shardshift::app {

namespace {

const HelpText VERIFY_HELP = {
    .usage = "shardshift verify IN OUT [options]",
    .description =
        "Checks that the directory OUT holds exactly what converting IN gives, e.g. after a copy "
        "or a download. First the files: every file the conversion writes is in OUT with its "
        "exact size, each shard's header and the index are the same bytes, and OUT holds "
        "nothing else (its .shardshift-output marker and SHA256SUMS aside). Then the data: the "
        "conversion runs again as a stream, on the same devices and within the same memory "
        "budget as convert, and every byte it produces is compared with OUT's; nothing is "
        "written. Last, when OUT has SHA256SUMS, each of its lines is checked as sha256sum -c "
        "does. Every difference is printed on stdout, one per line, naming the file and, for "
        "data, the first differing byte and its tensor; then a one-line verdict.\n\n"
        "The flags under 'What to write' must be the ones the conversion was run with (their "
        "defaults are convert's): the output depends on them, and other values give other "
        "bytes, reported as differences.",
    .examples = "shardshift verify diffusiongemma-26B nemo-26B\n"
                "shardshift verify nemo-26B hf-26B --direction to_hf --dtype bf16\n"
                "shardshift verify nemo-26B hf-26B --base diffusiongemma-26B  # to_hf --base\n"
                "shardshift verify hf /mnt/copy/nemo --quick    # files, sizes, headers only\n"
                "shardshift verify hf nemo --json | jq .differences",
    .exit_status = "0 identical, 1 different (or IN or OUT cannot be read), 2 bad usage, 130 "
                   "interrupted.",
};

// The flags of `verify`, in the groups its --help shows.
struct VerifyFlags {
  FlagGroup what = output_flags();
  FlagGroup run{"How to run"};
  FlagGroup report{"Reporting"};
};

void add_verify_flags(VerifyFlags& f) {
  f.run.flags.add_options()(
      "quick", "Compare only the files, their sizes, the shards' headers and the index: no "
               "tensor data is read, so a damaged tensor is not found; SHA256SUMS is not checked. "
               "Example: verify hf native --quick")(
      "jobs,j", po::value<unsigned>()->default_value(0)->value_name("N"),
      "Worker threads; 0 uses every core. Example: -j 8")(
      "writers", po::value<unsigned>()->default_value(0)->value_name("N"),
      "Files compared at once, each by its own bounded pipeline within the one memory budget; "
      "0 picks as convert does. Example: --writers 2")(
      "max-memory", po::value<std::string>()->default_value("1GiB")->value_name("SIZE"),
      (std::string("Budget for buffers and mapped input and output in flight, as for convert. ") +
       SIZE_SYNTAX + " Example: --max-memory 4GiB")
          .c_str())("device", po::value<std::string>()->default_value("auto")->value_name("DEVICE"),
                    "Where expert tensors are recomputed: auto, cpu, cuda or cuda:N, as for "
                    "convert (every device gives the same bits). Example: --device cpu");
  add_common_flags(f.report,
                   "Print nothing on stdout and no progress: the exit status says whether OUT "
                   "is identical (errors are still reported).",
                   "the verdict (\"identical\": true or false; null with --quick when it "
                   "found no difference), what was compared, every difference (kind, file, "
                   "detail, offset, tensor) and the SHA256SUMS lines that hold.");
}

Result<VerifyOptions> verify_options(const po::variables_map& vm) {
  auto plan = plan_options(vm);
  if (!plan)
    return plan.status();
  VerifyOptions o;
  o.input = vm["input"].as<std::string>();
  o.output = vm["output"].as<std::string>();
  if (o.output == "-")
    return Status(Errc::invalid_argument,
                  "OUT must be the directory a conversion wrote; a stream ('-') cannot be "
                  "verified (write it to a directory, or check it with sha256sum -c)");
  o.plan = *plan;
  o.quick = vm.count("quick") > 0;
  o.threads = vm["jobs"].as<unsigned>();
  o.writers = vm["writers"].as<unsigned>();
  auto mem = parse_size(vm["max-memory"].as<std::string>());
  if (!mem)
    return Status(Errc::invalid_argument, "--max-memory: " + mem.status().message());
  if (*mem < (1u << 20))
    return Status(Errc::invalid_argument, "--max-memory must be at least 1MiB");
  o.max_memory = *mem;
  o.device = vm["device"].as<std::string>();
  if (std::string why = check_device(o.device); !why.empty())
    return Status(Errc::invalid_argument, why);
  o.owns_gpu = true; // this process is the GPU's one user
  return o;
}

std::string progress_text(const Progress& p) {
  const double rate = p.elapsed_s > 0 ? static_cast<double>(p.bytes_done) / p.elapsed_s : 0;
  return "verify: [file " + std::to_string(p.file) + "/" + std::to_string(p.files) + "] " +
         format_bytes(p.bytes_done) + " / " + format_bytes(p.bytes_total) + " compared  " +
         format_rate(rate);
}

// The last line on stdout: the verdict.
std::string verdict(const VerifySummary& s) {
  const std::string counted =
      std::to_string(s.files) + (s.files == 1 ? " file, " : " files, ") + format_bytes(s.bytes);
  if (!s.identical())
    return "different: " + std::to_string(s.differences.size()) +
           (s.differences.size() == 1 ? " difference" : " differences") + " (" + counted +
           (s.quick ? " expected; --quick: tensor data not compared)" : " expected)");
  if (s.quick)
    return "identical headers and sizes: " + counted + " (--quick: tensor data not compared)";
  std::string line = "identical: " + counted;
  if (s.checksum_file)
    line += "; SHA256SUMS: " + std::to_string(s.checksums_ok) + " OK";
  return line;
}

std::string summary_json(const VerifySummary& s) {
  JsonWriter w;
  // --quick compared no tensor data: it cannot say "identical", only find a difference. Its
  // "identical" is null then, which a script testing it (jq -e .identical) does not take for yes.
  w.begin_object().key("identical");
  if (s.quick && s.identical())
    w.null();
  else
    w.value(s.identical());
  w.key("quick").value(s.quick);
  w.key("adapter").value(s.adapter).key("direction").value(direction_name(s.direction));
  w.key("device").value(s.device).key("files").value(s.files).key("bytes").value(s.bytes);
  w.key("compared_bytes").value(s.compared_bytes);
  w.key("checksum_file").value(s.checksum_file).key("checksums_ok").value(s.checksums_ok);
  w.key("differences").begin_array();
  for (const Difference& d : s.differences) {
    w.line_break().begin_object().key("kind").value(difference_kind_name(d.kind));
    w.key("file").value(d.file).key("detail").value(d.detail);
    if (d.kind == Difference::Kind::header || d.kind == Difference::Kind::data)
      w.key("offset").value(d.offset);
    if (!d.tensor.empty())
      w.key("tensor").value(d.tensor);
    w.end_object();
  }
  w.end_array().key("seconds").value(s.seconds).key("peak_rss").value(s.peak_rss);
  w.end_object();
  return w.take() + "\n";
}

int run_verify(VerifyOptions& o, const po::variables_map& vm) {
  const bool quiet = vm.count("quiet") > 0, json = vm.count("json") > 0;
  CancelOnSignal cancel(/*ignore_sigpipe=*/true);
  o.cancel = cancel.flag();
  ProgressLine line(quiet || json);
  VerifyCallbacks cb;
  cb.warnings = [quiet](const std::vector<std::string>& w) { print_warnings(w, quiet); };
  if (line.enabled())
    cb.progress = [&line](const Progress& p) {
      if (line.due())
        line.draw(progress_text(p));
    };
  auto result = verify(o, cb);
  line.clear();
  if (!result) {
    if (result.status().code() == Errc::interrupted) {
      std::cerr << "shardshift: interrupted; " << o.output.string() << " was not verified\n";
      return EXIT_INTERRUPTED;
    }
    return report_error(result.status());
  }
  const VerifySummary& s = *result;
  if (json) {
    std::cout << summary_json(s);
  } else if (!quiet) {
    std::string text;
    for (const Difference& d : s.differences)
      text += d.text() + "\n";
    std::cout << text << verdict(s) << "\n";
    if (!s.quick) {
      const double rate = s.seconds > 0 ? static_cast<double>(s.compared_bytes) / s.seconds : 0;
      std::fprintf(stderr, "compared %s in %.2fs (%s) on %s; peak RSS %s\n",
                   format_bytes(s.compared_bytes).c_str(), s.seconds, format_rate(rate).c_str(),
                   s.device.c_str(), format_bytes(s.peak_rss).c_str());
    }
  }
  if (!stdout_ok("verify"))
    return EXIT_FAIL;
  return s.identical() ? EXIT_OK : EXIT_FAIL;
}

} // namespace

int cmd_verify(int argc, char** argv) {
  VerifyFlags flags;
  add_verify_flags(flags);
  po::options_description all;
  all.add(flags.what.flags).add(flags.run.flags).add(flags.report.flags);
  all.add_options()("input", po::value<std::string>())("output", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("input", 1).add("output", 1);
  po::variables_map vm;
  if (int rc; !parse_args("verify", argc, argv, all, pos, vm, &rc))
    return rc;
  if (vm.count("help")) {
    print_help(std::cout, VERIFY_HELP, {&flags.what, &flags.run, &flags.report});
    return EXIT_OK;
  }
  if (!vm.count("input") || !vm.count("output"))
    return usage_error("verify", "expected two arguments: IN (the checkpoint that was "
                                 "converted) and OUT (the directory to check)");
  auto options = verify_options(vm);
  if (!options)
    return usage_error("verify", options.status().message());
  return run_verify(*options, vm);
}

} // namespace shardshift::app
