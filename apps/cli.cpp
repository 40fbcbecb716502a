#include "cli.h"

#include "shardshift/convert.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <fcntl.h>
#include <iostream>
#include <limits>
#include <sstream>

namespace shardshift::app {

namespace po = boost::program_options;

namespace {

// Flag descriptions start in this column; a flag whose name and value reach it gets its
// description on the next line instead.
constexpr unsigned DESCRIPTION_COLUMN = 26;

std::vector<std::string_view> split(std::string_view text, std::string_view separator) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (;;) {
    size_t end = text.find(separator, start);
    if (end == std::string_view::npos) {
      parts.push_back(text.substr(start));
      return parts;
    }
    parts.push_back(text.substr(start, end - start));
    start = end + separator.size();
  }
}

void print_option(std::ostream& out, const po::option_description& option) {
  std::string line = "  ";
  const std::string short_name =
      option.canonical_display_name(po::command_line_style::allow_dash_for_short);
  line += short_name.size() == 2 && short_name[0] == '-' ? short_name + ", " : "    ";
  line += option.canonical_display_name(po::command_line_style::allow_long);
  // A description may end with "Example: ..."; the example gets a line of its own, after the
  // default, so that it reads as one piece.
  std::string description = option.description(), example;
  if (size_t at = description.find(" Example: "); at != std::string::npos) {
    example = description.substr(at + 1);
    description.resize(at);
  }
  if (option.semantic()->max_tokens() > 0) {
    // Boost names a value "PLACEHOLDER (=default)"; the default is moved into the description
    // so that every flag states it the same way.
    std::string parameter = option.semantic()->name();
    if (size_t open = parameter.find(" (="); open != std::string::npos) {
      std::string fallback = parameter.substr(open + 3, parameter.size() - open - 4);
      parameter.resize(open);
      description += " Default: " + (fallback.empty() ? std::string("''") : fallback) + ".";
    }
    line += " " + parameter;
  }
  std::string wrapped = wrap_text(description, DESCRIPTION_COLUMN);
  if (!example.empty())
    wrapped += wrap_text(example, DESCRIPTION_COLUMN);
  if (line.size() + 2 <= DESCRIPTION_COLUMN) {
    line.resize(DESCRIPTION_COLUMN, ' ');
    out << line << wrapped.substr(DESCRIPTION_COLUMN);
  } else {
    out << line << "\n" << wrapped;
  }
}

} // namespace

const char* const SIZE_SYNTAX =
    "SIZE is a byte count with an optional unit: kB, MB, GB, TB are powers of 1000 (5GB = 5e9 "
    "bytes, as Hugging Face counts); KiB, MiB, GiB, TiB are powers of 1024. 5Gb (bits to "
    "Hugging Face) and a bare 5G (GiB to dd) are refused.";

void print_warnings(const std::vector<std::string>& warnings, bool quiet) {
  if (!quiet)
    for (const std::string& w : warnings)
      std::cerr << "shardshift: warning: " << w << "\n";
}

int report_error(const Status& status) {
  std::string text;
  for (std::string_view line : split(status.message(), "\n"))
    if (!line.empty())
      text += "shardshift: " + std::string(line) + "\n";
  std::cerr << text;
  if (status.code() == Errc::invalid_argument)
    return EXIT_USAGE;
  if (status.code() == Errc::interrupted)
    return EXIT_INTERRUPTED;
  return EXIT_FAIL;
}

int usage_error(const std::string& command, const std::string& message) {
  std::cerr << "shardshift " << command << ": " << message << "\n"
            << "Run 'shardshift " << command << " --help' for the options.\n";
  return EXIT_USAGE;
}

namespace {

// Boost reads "-1" into an unsigned flag as 4294967295 (strtoul wraps it), so a typo such as
// `--ep-size -1` would run with a nonsense value. The value of every unsigned flag must be
// digits alone; the message names the flag.
std::string whole_number_problem(const po::parsed_options& parsed,
                                 const po::options_description& options) {
  for (const po::option& given : parsed.options) {
    const po::option_description* flag = options.find_nothrow(given.string_key, false);
    if (given.position_key != -1 || !flag)
      continue;
    const po::value_semantic* semantic = flag->semantic().get();
    const bool narrow = dynamic_cast<const po::typed_value<unsigned>*>(semantic) != nullptr;
    if (!narrow && !dynamic_cast<const po::typed_value<unsigned long>*>(semantic) &&
        !dynamic_cast<const po::typed_value<unsigned long long>*>(semantic))
      continue;
    const unsigned long long most =
        narrow ? std::numeric_limits<unsigned>::max() : std::numeric_limits<uint64_t>::max();
    for (const std::string& value : given.value) {
      if (value.empty() || value.find_first_not_of("0123456789") != std::string::npos)
        return "--" + given.string_key + " '" + value + "': expects a whole number (digits only)";
      unsigned long long n = 0;
      const auto [end, err] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (err != std::errc() || n > most)
        return "--" + given.string_key + " '" + value + "': too large (at most " +
               std::to_string(most) + ")";
    }
  }
  return {};
}

// An empty IN, OUT or PATH ('' from an unset shell variable) would be read as the current
// directory by some calls and refused with a puzzling message by others: name it at once.
std::string empty_path_problem(const po::parsed_options& parsed) {
  for (const po::option& given : parsed.options) {
    if (given.position_key == -1 || given.value.empty() || !given.value.front().empty())
      continue;
    const std::string& key = given.string_key;
    const std::string name = key == "input" ? "IN" : key == "path" ? "PATH" : "OUT";
    return name + " is empty (''); give a path";
  }
  return {};
}

// Boost refuses `--flag=` ("should follow immediately after the equal sign"), where a shell
// user means the empty value, as `--flag ''` gives it (`--exclude=` keeps every key, as
// `exclude_key_regex=""` does in the reference). Such an argument of a flag that takes a value is
// split in two; anything after a bare "--" is an operand and left alone.
std::vector<std::string> split_empty_values(int argc, char** argv,
                                            const po::options_description& options) {
  std::vector<std::string> args;
  bool operands = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    operands = operands || arg == "--";
    if (!operands && arg.size() > 3 && arg.starts_with("--") && arg.ends_with('=')) {
      const std::string name(arg.substr(2, arg.size() - 3));
      const po::option_description* flag = options.find_nothrow(name, false);
      if (flag && flag->semantic()->max_tokens() > 0) {
        args.push_back("--" + name);
        args.emplace_back();
        continue;
      }
    }
    args.emplace_back(arg);
  }
  return args;
}

} // namespace

bool parse_args(const std::string& command, int argc, char** argv,
                const po::options_description& options,
                const po::positional_options_description& positional, po::variables_map& vm,
                int* exit_code) {
  try {
    const po::parsed_options parsed =
        po::command_line_parser(split_empty_values(argc, argv, options))
            .options(options)
            .positional(positional)
            .run();
    std::string problem = whole_number_problem(parsed, options);
    if (problem.empty())
      problem = empty_path_problem(parsed);
    if (!problem.empty()) {
      *exit_code = usage_error(command, problem);
      return false;
    }
    po::store(parsed, vm);
    po::notify(vm);
    return true;
  } catch (const po::error& e) {
    *exit_code = usage_error(command, e.what());
    return false;
  }
}

// print_help lays the flags out itself (it never breaks a word); the widths are given so that
// Boost's own printer, should anything use it, keeps to the same width.
FlagGroup::FlagGroup(std::string heading)
    : caption(std::move(heading)), flags(caption, HELP_WIDTH, HELP_WIDTH / 2) {}

void add_common_flags(FlagGroup& group, const std::string& quiet_meaning,
                      const std::string& json_result) {
  if (!json_result.empty())
    group.flags.add_options()("json", ("Print the result as one JSON object on stdout, and nothing "
                                       "else there: " +
                                       json_result + " Example: --json | python3 -m json.tool")
                                          .c_str());
  group.flags.add_options()(
      "quiet,q", (quiet_meaning + " Example: -q, in a script that reads the exit status").c_str())(
      "help,h", "Show this help and exit.");
}

std::string wrap_text(std::string_view text, unsigned indent, unsigned width) {
  std::string out;
  const std::string margin(indent, ' ');
  bool first_paragraph = true;
  for (std::string_view paragraph : split(text, "\n\n")) {
    if (!first_paragraph)
      out += "\n";
    first_paragraph = false;
    if (!paragraph.empty() && paragraph[0] == ' ') {
      for (std::string_view line : split(paragraph, "\n"))
        out += margin + std::string(line) + "\n";
      continue;
    }
    std::string line;
    size_t i = 0;
    while (i < paragraph.size()) {
      while (i < paragraph.size() && std::isspace(static_cast<unsigned char>(paragraph[i])))
        ++i;
      size_t end = i;
      while (end < paragraph.size() && !std::isspace(static_cast<unsigned char>(paragraph[end])))
        ++end;
      if (end == i)
        break;
      std::string_view word = paragraph.substr(i, end - i);
      i = end;
      // Lines stay strictly shorter than `width`: a line that fills the last column wraps
      // on some terminals.
      if (!line.empty() && margin.size() + line.size() + 1 + word.size() >= width) {
        out += margin + line + "\n";
        line.clear();
      }
      if (!line.empty())
        line += ' ';
      line += word;
    }
    if (!line.empty())
      out += margin + line + "\n";
  }
  return out;
}

void print_help(std::ostream& out, const HelpText& text,
                const std::vector<const FlagGroup*>& groups) {
  std::ostringstream s;
  s << "Usage: " << text.usage << "\n\n" << wrap_text(text.description, 0);
  for (const FlagGroup* group : groups) {
    s << "\n" << group->caption << ":\n";
    for (const auto& option : group->flags.options())
      print_option(s, *option);
  }
  s << "\nExamples:\n";
  for (std::string_view line : split(text.examples, "\n"))
    if (!line.empty())
      s << "  " << line << "\n";
  s << "\n" << wrap_text("Exit status: " + text.exit_status, 0);
  out << s.str();
}

std::string json_stdout_problem() {
  const int flags = ::fcntl(STDOUT_FILENO, F_GETFL);
  if (flags >= 0 && (flags & O_ACCMODE) != O_RDONLY)
    return "";
  return "--json writes its report to stdout, which is not open for writing (closed, or opened "
         "for reading only): redirect it to a file, or drop --json";
}

bool json_report_written(const std::string& command, const std::string& done) {
  std::cout.flush();
  if (std::cout)
    return true;
  std::cerr << "shardshift " << command << ": " << done
            << ", but the --json report could not be written to stdout\n";
  return false;
}

bool stdout_ok(const std::string& command) {
  std::cout.flush();
  if (std::cout)
    return true;
  std::cerr << "shardshift " << command << ": cannot write the result to stdout\n";
  return false;
}

std::string check_device(std::string_view device) {
  auto parsed = parse_device(device);
  return parsed ? std::string() : parsed.status().message();
}

} // namespace shardshift::app
