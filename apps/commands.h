// commands.h: the subcommands of the shardshift tool. Each parses its own flags (Boost
// program_options), calls the library, draws progress on stderr and returns the exit code:
// 0 success, 1 failure, 2 usage error, 130 interrupted.
#pragma once

#include "shardshift/status.h"

#include <string>

#include <boost/program_options.hpp>

namespace shardshift::app {

inline constexpr int EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130;

int cmd_inspect(int argc, char** argv);
int cmd_synth(int argc, char** argv);
int cmd_plan(int argc, char** argv);
int cmd_convert(int argc, char** argv);

/// Prints `shardshift: <message>` on stderr and returns the exit code for `status`
/// (2 for invalid_argument, 130 for interrupted, 1 otherwise).
int report_error(const Status& status);
/// Prints a usage error with a hint to run `shardshift CMD --help`; returns 2.
int usage_error(const std::string& command, const std::string& message);

/// Parses a subcommand's argv (argv[0] is its name) into `vm`. Returns true when parsing
/// succeeded; otherwise prints the usage error and sets `*exit_code` to 2.
bool parse_args(const std::string& command, int argc, char** argv,
                const boost::program_options::options_description& options,
                const boost::program_options::positional_options_description& positional,
                boost::program_options::variables_map& vm, int* exit_code);

} // namespace shardshift::app
