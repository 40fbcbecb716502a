// shardshift: the command-line tool. This file only dispatches to a subcommand (commands.h); what
// the subcommands share (help layout, errors, exit codes) is in cli.h.
#include "shardshift/version.h"

#include "cli.h"
#include "commands.h"

#include <cerrno>
#include <fcntl.h>
#include <iostream>
#include <string>
#include <string_view>
#include <unistd.h>

static const char* const USAGE =
    R"(shardshift: convert Mixture-of-Experts safetensors checkpoints between the
Hugging Face layout and NeMo Automodel's native layout, as a stream with
bounded memory.

Usage: shardshift COMMAND [ARGS...]

Commands:
  convert IN OUT   convert a checkpoint (HF <-> native), writing OUT shard by
                   shard
  plan IN          validate IN and print the conversion plan without writing
                   anything
  verify IN OUT    check that OUT holds exactly what converting IN gives (after
                   a copy or a download)
  inspect PATH     validate a checkpoint and list its tensors
  synth OUT        write a synthetic checkpoint of a supported model (--model)
                   (demo and test data)

Every command takes -h/--help and -q/--quiet; --json prints its result as JSON.
Run 'shardshift COMMAND --help' for the options of a command, and
'shardshift --version' for the version and the features of this build.

Examples:
  shardshift synth demo-hf --model diffusion_gemma --layers 2 --scale 8
  shardshift convert demo-hf demo-native
  shardshift verify demo-hf demo-native
)";

// The first line is what help2man and scripts read ("shardshift 0.1.0"); the others say what this
// build can do, one "key: value" line each, so a bug report carries them.
static int print_version() {
  const shardshift::BuildInfo info = shardshift::build_info();
  auto joined = [](const std::vector<std::string>& words) {
    std::string text;
    for (const std::string& w : words)
      text += (text.empty() ? "" : " ") + w;
    return text;
  };
  std::cout << "shardshift " << info.version << "\n"
            << "revision: " << info.git_revision << "\n"
            << "build: " << (info.build_type.empty() ? "default" : info.build_type) << "\n"
            << "simd: " << joined(info.simd_compiled) << " (this CPU: " << info.simd_running
            << ")\n"
            << "cuda: " << (info.cuda ? "on" : "off");
  if (info.cuda)
    std::cout << " (architectures " << info.cuda_architectures << "; " << info.cuda_devices
              << (info.cuda_devices == 1 ? " device" : " devices") << " usable)";
  std::cout << "\nmodels: " << joined(info.models) << "\n"
            << "mpi: " << (info.mpi ? "on (jobs started by mpirun coordinate through MPI)" : "off")
            << "\n";
  return shardshift::app::stdout_ok("--version") ? shardshift::app::EXIT_OK
                                                 : shardshift::app::EXIT_FAIL;
}

int main(int argc, char** argv) {
  using namespace shardshift::app;
  // A descriptor 0, 1 or 2 closed at start (`>&-`) would be the number the next open() returns:
  // an input file or an output file would become stdout, and a stream or a JSON report would be
  // written into it. /dev/null takes each such number first; stdout's is opened for reading,
  // so that OUT '-' is refused as for a stdout that cannot be written, and other output to it
  // fails rather than vanishes.
  for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; ++fd)
    if (::fcntl(fd, F_GETFD) < 0 && errno == EBADF)
      ::open("/dev/null", fd == STDERR_FILENO ? O_WRONLY : O_RDONLY);
  if (argc < 2) {
    std::cerr << USAGE;
    return EXIT_USAGE;
  }
  std::string_view cmd = argv[1];
  // `shardshift help convert` is `shardshift convert --help`, as git and cargo read it.
  static char help_flag[] = "--help";
  char* help_argv[] = {argv[0], argc > 2 ? argv[2] : nullptr, help_flag, nullptr};
  if (cmd == "help" && argc == 3) {
    cmd = argv[2];
    argc = 3;
    argv = help_argv;
  } else if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::cout << USAGE;
    return EXIT_OK;
  }
  if (cmd == "--version")
    return print_version();
  // Each command sees its own name as argv[0].
  int sub_argc = argc - 1;
  char** sub_argv = argv + 1;
  if (cmd == "inspect")
    return cmd_inspect(sub_argc, sub_argv);
  if (cmd == "synth")
    return cmd_synth(sub_argc, sub_argv);
  if (cmd == "plan")
    return cmd_plan(sub_argc, sub_argv);
  if (cmd == "convert")
    return cmd_convert(sub_argc, sub_argv);
  if (cmd == "verify")
    return cmd_verify(sub_argc, sub_argv);
  std::cerr << "shardshift: unknown command '" << cmd << "'\n\n" << USAGE;
  return EXIT_USAGE;
}
