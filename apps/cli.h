// cli.h: what every subcommand shares, so the four of them look and behave alike: exit codes,
// error and usage reports, argv parsing, the help layout, the stdout check and --device checking.
//
// Flag conventions (every command follows them; `shardshift CMD --help` lists each command's):
//   - long flags are lower-case words joined by '-'; negations start with "no-"; only -h (--help),
//     -q (--quiet) and -j (--jobs) have short forms;
//   - positional arguments and value placeholders are upper-case (IN, OUT, PATH, N, SIZE, FILE);
//   - sizes take one syntax everywhere (units::parse_size): 5GB = 5e9 bytes, 64MiB = 64 * 2^20;
//   - --json prints one JSON object (built by JsonWriter) on stdout and nothing else goes there;
//   - -q/--quiet silences what is only for a person watching: the progress line, the summary and
//     the default listings; errors are always reported, and --json output is always printed;
//   - stdout carries results, stderr carries progress, summaries and errors.
#pragma once

#include "shardshift/status.h"

#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

#include <boost/program_options.hpp>

namespace shardshift::app {

inline constexpr int EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130;

/// Help is laid out for terminals this wide; every line stays shorter than this, and text is
/// only ever wrapped between words.
inline constexpr unsigned HELP_WIDTH = 80;

/// Prints `shardshift: <line>` on stderr for every line of the status's message (one problem per
/// line, each greppable alone) and returns the exit code for it: 2 for invalid_argument, 130 for
/// interrupted, 1 otherwise.
int report_error(const Status& status);
/// Prints each of the input's warnings (Checkpoint::warnings) as `shardshift: warning: ...` on
/// stderr, unless `quiet`.
void print_warnings(const std::vector<std::string>& warnings, bool quiet);
/// Prints a usage error with a hint to run `shardshift CMD --help`; returns 2.
int usage_error(const std::string& command, const std::string& message);

/// Parses a subcommand's argv (argv[0] is its name) into `vm`. Returns true when parsing
/// succeeded; otherwise prints the usage error and sets `*exit_code` to 2.
bool parse_args(const std::string& command, int argc, char** argv,
                const boost::program_options::options_description& options,
                const boost::program_options::positional_options_description& positional,
                boost::program_options::variables_map& vm, int* exit_code);

/// A group of flags under a heading in --help ("How to run").
struct FlagGroup {
  explicit FlagGroup(std::string heading);
  std::string caption;
  boost::program_options::options_description flags;
};
/// Adds -h/--help and -q/--quiet (with what quiet means for this command), and --json with
/// what the JSON holds when `json_result` is not empty.
void add_common_flags(FlagGroup& group, const std::string& quiet_meaning,
                      const std::string& json_result);
/// The one sentence every size flag uses to say what a SIZE is.
extern const char* const SIZE_SYNTAX;

/// The parts of a command's --help besides its flags.
struct HelpText {
  std::string usage;       ///< "shardshift convert IN OUT [options]"
  std::string description; ///< paragraphs separated by blank lines; wrapped to HELP_WIDTH.
                           ///< A paragraph whose lines start with a space is printed verbatim.
  std::string examples;    ///< one example per line, printed verbatim (indented by 2)
  std::string exit_status; ///< wrapped like the description
};
/// Prints the whole help: usage, description, each group of flags (name line, then the
/// description wrapped at a fixed column, with the default value), examples and exit status.
void print_help(std::ostream& out, const HelpText& text,
                const std::vector<const FlagGroup*>& groups);
/// Wraps `text` (paragraphs separated by blank lines) to lines shorter than `width`, each
/// starting with `indent` spaces; breaks only between words (a word longer than a line gets a
/// line of its own).
std::string wrap_text(std::string_view text, unsigned indent, unsigned width = HELP_WIDTH);

/// With --json, before any work: "" when stdout is open for writing, else why not, for a usage
/// error (closed at start, stdout is /dev/null opened for reading: main.cpp). Found only after the
/// work, it would fail a run whose output is complete.
std::string json_stdout_problem();
/// After the work, the --json report written: flushes stdout; false, having said on stderr that
/// the work itself is done (`done`: "the conversion finished and its output is complete (OUT)"),
/// when it could not be written.
bool json_report_written(const std::string& command, const std::string& done);
/// Flushes stdout; on failure (a closed pipe, a full disk) reports it for `command` and returns
/// false.
bool stdout_ok(const std::string& command);

/// Checks a --device value with the library's parse_device, before any work, so that a bad value
/// is a usage error. Returns an empty string when valid, else the reason.
std::string check_device(std::string_view device);

} // namespace shardshift::app
