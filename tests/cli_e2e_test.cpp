// cli_e2e_test.cpp: the conventions every subcommand shares, checked on the binary: help that
// fits 80 columns and explains every flag with examples, -q and --json everywhere they apply,
// strict --device, --print-size and --json agreeing, and a gzip-compressed --trace.
#include "shardshift/checkpoint.h"

#include "test_support.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <map>
#include <pty.h>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <boost/iostreams/copy.hpp>
#include <boost/iostreams/filter/gzip.hpp>
#include <boost/iostreams/filtering_stream.hpp>
#include <gtest/gtest.h>
#include <simdjson.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::lines_of;
using testing::run_shardshift;
using testing::shell_quoted;
using testing::TempDir;

// The long flags a help text lists in its option sections (lines that start with a flag).
std::vector<std::string> listed_flags(const std::string& help) {
  std::vector<std::string> flags;
  for (const std::string& line : lines_of(help)) {
    if (line == "Examples:")
      break;
    size_t start = line.find_first_not_of(' ');
    if (start == std::string::npos || start > 6 || line.compare(start, 1, "-") != 0)
      continue;
    size_t dashes = line.find("--", start);
    if (dashes == std::string::npos)
      continue;
    size_t end = line.find_first_of(" ,", dashes);
    flags.push_back(line.substr(dashes, end == std::string::npos ? end : end - dashes));
  }
  return flags;
}

// Each listed flag with its description: the lines from the flag's own line to the next flag's.
std::vector<std::pair<std::string, std::string>> flag_descriptions(const std::string& help) {
  std::vector<std::pair<std::string, std::string>> found;
  for (const std::string& line : lines_of(help)) {
    if (line == "Examples:")
      break;
    auto flag = listed_flags(line + "\n");
    if (!flag.empty())
      found.emplace_back(flag.front(), "");
    else if (line.empty() || line[0] != ' ')
      continue; // a section heading ends nothing and adds nothing
    if (!found.empty())
      found.back().second += line + "\n";
  }
  return found;
}

TEST(CliHelp, FitsEightyColumnsAndExplainsEveryFlag) {
  // Boost prints at 80 columns by default, and a line that fills all 80 is where a word would
  // be cut; every line of every help stays shorter.
  auto top = run_shardshift("--help");
  ASSERT_EQ(top.exit_code, 0);
  for (const std::string& line : lines_of(top.out))
    EXPECT_LT(line.size(), 80u) << "shardshift --help: " << line;
  for (const char* command : {"inspect", "plan", "convert", "verify", "synth"}) {
    SCOPED_TRACE(command);
    auto r = run_shardshift(std::string(command) + " --help");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    for (const std::string& line : lines_of(r.out)) {
      EXPECT_LT(line.size(), 80u) << line;
      EXPECT_TRUE(line.empty() || line.back() != ' ') << "trailing space: " << line;
    }
    EXPECT_EQ(r.out.rfind(std::string("Usage: shardshift ") + command, 0), 0u);
    for (const char* piece :
         {"\nExamples:\n  shardshift ", "\nExit status: 0 ", "  -h, --help", "  -q, --quiet"})
      EXPECT_NE(r.out.find(piece), std::string::npos) << piece;
    // Every flag comes with a description: the line after a flag's name is never another flag.
    auto flags = listed_flags(r.out);
    EXPECT_GE(flags.size(), 3u) << r.out;
    for (const std::string& flag : flags)
      EXPECT_EQ(std::count(flags.begin(), flags.end(), flag), 1) << flag << " listed twice";
    // ... and an example of its use, but --help.
    auto described = flag_descriptions(r.out);
    EXPECT_EQ(described.size(), flags.size());
    for (const auto& [flag, text] : described)
      if (flag != "--help")
        EXPECT_NE(text.find("Example"), std::string::npos) << flag << " has no example:\n" << text;
    // -h/--help is accepted the same way, and so is `shardshift help COMMAND`.
    EXPECT_EQ(run_shardshift(std::string(command) + " -h").out, r.out);
    EXPECT_EQ(run_shardshift(std::string("help ") + command).out, r.out);
  }
  auto convert = run_shardshift("convert --help").out;
  for (const char* flag : {"--trace", "--device", "--max-memory", "--only", "--json", "--stats"})
    EXPECT_NE(convert.find(flag), std::string::npos) << flag;
  EXPECT_NE(convert.find(".gz"), std::string::npos);
  EXPECT_NE(run_shardshift("synth --help").out.find("--json"), std::string::npos);
  EXPECT_NE(run_shardshift("plan --help").out.find("--print-size"), std::string::npos);
}

class CliCheckpoint : public ::testing::Test {
protected:
  void SetUp() override {
    auto r = run_shardshift("synth " + shell_quoted(tmp / "hf") +
                            " --layers 2 --scale 16 --max-shard-size "
                            "2MB -q");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ASSERT_EQ(r.err, "") << "-q silences synth's summary";
    ASSERT_EQ(r.out, "");
  }
  TempDir tmp;
};

TEST_F(CliCheckpoint, DeviceMustBeAutoCpuCudaOrCudaNumber) {
  for (const char* bad : {"cuda:x", "cuda:", "cuda:1x", "gpu0"}) {
    auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                            shell_quoted(tmp / "out") + " --device " + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_NE(r.err.find("--device '" + std::string(bad) + "'"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(tmp / "out"));
  }
  auto cpu = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                            shell_quoted(tmp / "out") + " --device cpu -q");
  EXPECT_EQ(cpu.exit_code, 0) << cpu.err;
}

// Boost would read "-1" into an unsigned flag as 4294967295: `--ep-size -1` ran and kept one
// expert per layer. Every whole-number flag of every command takes digits alone.
TEST_F(CliCheckpoint, WholeNumberFlagsTakeDigitsAlone) {
  const std::string in = shell_quoted(tmp / "hf"), out = shell_quoted(tmp / "out");
  const std::string commands[] = {
      "convert " + in + " " + out + " -j -1",
      "convert " + in + " " + out + " --writers=-1",
      "convert " + in + " " + out + " --ep-size -1",
      "convert " + in + " " + out + " --ep-rank -2 --ep-size 2",
      "convert " + in + " " + out + " --ep-shard-size +2",
      "convert " + in + " " + out + " --job-timeout -5",
      "convert " + in + " " + out + " --rank -1 --world-size 2",
      "convert " + in + " --pipe-to cat --uploads -1",
      "plan " + in + " --ep-size -4 --ep-rank 2",
      "verify " + in + " " + in + " -j -1",
      "synth " + out + " --seed -1 --layers 1 --scale 32",
  };
  for (const std::string& command : commands) {
    auto r = run_shardshift(command);
    EXPECT_EQ(r.exit_code, 2) << command << ": " << r.err;
    EXPECT_NE(r.err.find("expects a whole number"), std::string::npos) << command << ": " << r.err;
    EXPECT_EQ(r.out, "") << command;
    EXPECT_FALSE(std::filesystem::exists(tmp / "out")) << command;
  }
  // Digits beyond the flag's type are named as too large, not as Boost's "invalid" argument.
  for (const std::string& command :
       {"convert " + in + " " + out + " --writers 4294967296",
        "convert " + in + " " + out + " --job-timeout 99999999999",
        "synth " + out + " --seed 99999999999999999999999 --layers 1 --scale 32"}) {
    auto r = run_shardshift(command);
    EXPECT_EQ(r.exit_code, 2) << command << ": " << r.err;
    EXPECT_NE(r.err.find("': too large (at most "), std::string::npos) << command << ": " << r.err;
    EXPECT_FALSE(std::filesystem::exists(tmp / "out")) << command;
  }
  // Zero parts is refused by name, not as a rank out of range.
  auto zero = run_shardshift("plan " + in + " --ep-size 0");
  EXPECT_EQ(zero.exit_code, 2);
  EXPECT_NE(zero.err.find("--ep-size 0: the parts are counted from 1"), std::string::npos)
      << zero.err;
}

// --job-timeout outside a job of several processes changes nothing, and the user is told so.
TEST_F(CliCheckpoint, JobTimeoutOfZeroIsAUsageError) {
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "out") +
                          " --rank 0 --world-size 2 --job-timeout 0");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--job-timeout must be at least 1"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "out"));
}

TEST_F(CliCheckpoint, JobTimeoutOutsideAJobIsNamedUseless) {
  const std::string in = shell_quoted(tmp / "hf"), out = shell_quoted(tmp / "out");
  auto alone = run_shardshift("convert " + in + " " + out + " --job-timeout 60");
  EXPECT_EQ(alone.exit_code, 0) << alone.err;
  EXPECT_NE(alone.err.find("warning: --job-timeout has no effect: this run is one process"),
            std::string::npos)
      << alone.err;
  auto plain = run_shardshift("convert " + in + " " + out + " --force");
  EXPECT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(plain.err.find("--job-timeout"), std::string::npos) << plain.err;
}

// "out/" (a shell's completion adds the slash) is the directory "out", made and replaced as such.
TEST_F(CliCheckpoint, AnOutputWithATrailingSlashIsThatDirectory) {
  const std::string in = shell_quoted(tmp / "hf");
  auto first =
      run_shardshift("convert " + in + " " + shell_quoted(tmp.path().string() + "/out/") + " -q");
  ASSERT_EQ(first.exit_code, 0) << first.err;
  ASSERT_TRUE(fs::is_regular_file(tmp / "out" / "model.safetensors"));
  auto again = run_shardshift("convert " + in + " " + shell_quoted(tmp.path().string() + "/out//") +
                              " --force -q");
  EXPECT_EQ(again.exit_code, 0) << again.err;
  auto check = run_shardshift("verify " + in + " " + shell_quoted(tmp / "out") + " -q");
  EXPECT_EQ(check.exit_code, 0) << check.err;
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(tmp.path())) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 2u) << "only hf and out: no staging directory or old output is left";
}

// A name of up to 255 bytes (the longest a filesystem takes), for a side file or for OUT, has
// temporary names that are valid too: the conversion, its --force and its trace succeed.
TEST_F(CliCheckpoint, TheLongestNamesConvert) {
  const std::string side(255, 'b'), out(255, 'o');
  testing::write_bytes(tmp / "hf" / side, "x\n");
  const std::string in = shell_quoted(tmp / "hf");
  for (const char* again : {"", " --force"}) {
    auto r = run_shardshift("convert " + in + " " + shell_quoted(tmp / out) + again +
                            " --checksums -q --trace " + shell_quoted(tmp / std::string(255, 't')));
    ASSERT_EQ(r.exit_code, 0) << again << ": " << r.err;
  }
  EXPECT_EQ(testing::read_bytes(tmp / out / side), "x\n");
  auto check = run_shardshift("verify " + in + " " + shell_quoted(tmp / out) + " -q");
  EXPECT_EQ(check.exit_code, 0) << check.err;
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(tmp.path()))
    left.push_back(e.path().filename().string().substr(0, 1));
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"h", "o", "t"})) << "no temporary name is left";
}

// One byte more than a filesystem takes: refused before any work (exit 2), not at the final
// rename after it all (found by an audit on 2026-12-06), by convert and by synth alike.
TEST_F(CliCheckpoint, AnOutputNameLongerThanTheFilesystemTakesIsRefusedFirst) {
  const std::string out(256, 'o');
  for (const std::string& command :
       {"convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / out),
        "synth " + shell_quoted(tmp / out) + " --layers 1 --scale 8"}) {
    auto r = run_shardshift(command);
    EXPECT_EQ(r.exit_code, 2) << command << ": " << r.err;
    EXPECT_NE(r.err.find("the output's name is 256 bytes long, more than the 255 its filesystem "
                         "takes; choose a shorter OUT"),
              std::string::npos)
        << r.err;
  }
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(tmp.path()))
    left.push_back(e.path().filename().string());
  EXPECT_EQ(left, (std::vector<std::string>{"hf"})) << "nothing was written beside IN";
}

// An empty argument (an unset shell variable) is named, not taken for the current directory.
TEST_F(CliCheckpoint, EmptyPathsAreNamed) {
  const std::string in = shell_quoted(tmp / "hf");
  const std::pair<std::string, std::string> cases[] = {
      {"convert " + in + " ''", "OUT is empty ('')"},
      {"convert '' " + shell_quoted(tmp / "out"), "IN is empty ('')"},
      {"plan ''", "IN is empty ('')"},
      {"verify " + in + " ''", "OUT is empty ('')"},
      {"inspect ''", "PATH is empty ('')"},
      {"synth ''", "OUT is empty ('')"},
      {"convert " + in + " --pipe-to ''", "--pipe-to is empty ('')"},
      {"convert " + in + " " + shell_quoted(tmp / "out") + " --trace ''", "--trace is empty ('')"},
  };
  for (const auto& [command, message] : cases) {
    auto r = run_shardshift(command);
    EXPECT_EQ(r.exit_code, 2) << command << ": " << r.err;
    EXPECT_NE(r.err.find(message), std::string::npos) << command << ": " << r.err;
  }
  EXPECT_EQ(testing::list_dir(tmp.path()), std::vector<std::string>{"hf"});
}

// --uploads without --pipe-to would be ignored without a word (as if it sped up a directory).
TEST_F(CliCheckpoint, ForceWithoutAnOutToReplaceIsAUsageError) {
  for (const char* where : {" --pipe-to 'cat > /dev/null'", " - --only config.json"}) {
    auto r = testing::run_shell(std::string(SHARDSHIFT_BINARY) + " convert " +
                                shell_quoted(tmp / "hf") + where + " --force | cat");
    EXPECT_NE(r.err.find("--force replaces an existing OUT"), std::string::npos) << where << r.err;
  }
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") +
                          " --pipe-to 'cat > /dev/null' --force");
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

TEST_F(CliCheckpoint, UploadsWithoutPipeToIsAUsageError) {
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "out") +
                          " --uploads 8");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("without --pipe-to it has nothing to set"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "out"));
}

// --format dir with --pipe-to, and --writers with --only (one file), would change nothing.
TEST_F(CliCheckpoint, FormatDirWithPipeToAndWritersWithOnlyAreUsageErrors) {
  struct Case {
    std::string flags, says;
  };
  for (const Case& c : {Case{" --pipe-to 'cat > /dev/null; : {name}' --format dir",
                             "--format dir writes a directory OUT; --pipe-to hands each file to "
                             "its own command instead, so it has nothing to set"},
                        Case{" - --only config.json --writers 4",
                             "--writers sets how many output files are written at once; --only "
                             "streams one, so it has nothing to set"}}) {
    auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + c.flags);
    EXPECT_EQ(r.exit_code, 2) << c.flags << r.err;
    EXPECT_EQ(r.out, "") << c.flags;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << c.flags << r.err;
  }
}

// Streams have no place for SHA256SUMS (one file on stdout) and nothing to fsync: --checksums
// and --no-sync there would be ignored without a word.
TEST_F(CliCheckpoint, StreamFlagsWithNothingToSetAreUsageErrors) {
  const std::string in = "convert " + shell_quoted(tmp / "hf");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {" - --checksums", "OUT '-' without --format tar is one file on stdout"},
      {" - --no-sync", "OUT '-' streams to stdout and syncs nothing"},
      {" --pipe-to 'cat > /dev/null' --no-sync", "--pipe-to streams into commands"}};
  for (const auto& [flags, why] : cases) {
    auto r = testing::run_shell(std::string(SHARDSHIFT_BINARY) + " " + in + flags + " | cat");
    EXPECT_NE(r.err.find(why), std::string::npos) << flags << ": " << r.err;
    EXPECT_EQ(r.out, "") << flags;
  }
  auto r = run_shardshift(in + " - --checksums");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  // In a tar stream SHA256SUMS is a member of the archive: accepted.
  auto tar = testing::run_shell(std::string(SHARDSHIFT_BINARY) + " " + in +
                                " - --format tar --checksums -q | tar t");
  EXPECT_EQ(tar.exit_code, 0) << tar.err;
  EXPECT_NE(tar.out.find("SHA256SUMS"), std::string::npos) << tar.out;
}

// OUT '-' redirected into the input (`1<> shard`, `>> config.json`) would overwrite a shard while
// it is read, or grow a side file: refused before a byte is written, the input unchanged.
TEST_F(CliCheckpoint, StdoutIntoTheInputIsRefused) {
  const std::string shard = (tmp / "hf" / "model.safetensors").string();
  const std::string before = testing::read_bytes(shard);
  for (const std::string& redirect :
       {"1<> " + shell_quoted(shard), ">> " + shell_quoted(tmp / "hf" / "config.json")}) {
    auto r = testing::run_shell(std::string(SHARDSHIFT_BINARY) + " convert " +
                                shell_quoted(tmp / "hf") + " - " + redirect);
    EXPECT_EQ(r.exit_code, 2) << redirect << ": " << r.err;
    EXPECT_NE(r.err.find("stdout (OUT '-') is "), std::string::npos) << r.err;
  }
  EXPECT_EQ(testing::read_bytes(shard), before);
  auto outside =
      testing::run_shell(std::string(SHARDSHIFT_BINARY) + " convert " + shell_quoted(tmp / "hf") +
                         " - -q > " + shell_quoted(tmp / "one.safetensors"));
  EXPECT_EQ(outside.exit_code, 0) << outside.err;
}

// A stdout closed at start (`>&-`) or open for reading only is refused before any work (exit 2):
// closed, its number would have gone to the next file opened (the input directory, a shard), and
// the stream into that.
TEST_F(CliCheckpoint, StdoutClosedOrReadOnlyIsRefused) {
  const std::string shard = (tmp / "hf" / "model.safetensors").string();
  const std::string before = testing::read_bytes(shard);
  for (const std::string& args : {std::string(" - --format tar >&-"), std::string(" - >&-"),
                                  std::string(" - --format tar 1< /dev/null"),
                                  " - 1< " + shell_quoted(tmp / "hf" / "config.json")}) {
    auto r = testing::run_shell(std::string(SHARDSHIFT_BINARY) + " convert " +
                                shell_quoted(tmp / "hf") + args);
    EXPECT_EQ(r.exit_code, 2) << args << ": " << r.err;
    EXPECT_NE(r.err.find("stdout is not open for writing"), std::string::npos) << r.err;
  }
  EXPECT_EQ(testing::read_bytes(shard), before);
}

// What a terminal on one of the standard streams saw of a run, and how it ended.
struct TerminalRun {
  int exit_code = -1;
  std::string terminal; ///< every byte written to the terminal (the pseudo-terminal's master)
  std::string other;    ///< what went to the other stream (a file)
};

// Runs shardshift with `args` and `fd` (stdout or stderr) on a pseudo-terminal `columns` wide;
// the other of the two goes to a file, stdin is /dev/null.
TerminalRun run_on_terminal(const std::vector<std::string>& args, int fd, unsigned short columns,
                            const fs::path& scratch) {
  TerminalRun r;
  winsize size{};
  size.ws_row = 24;
  size.ws_col = columns;
  int master = -1, slave = -1;
  if (::openpty(&master, &slave, nullptr, nullptr, &size) != 0) {
    ADD_FAILURE() << "openpty: " << std::strerror(errno);
    return r;
  }
  const fs::path other = scratch / "other-stream";
  std::vector<char*> argv{const_cast<char*>(SHARDSHIFT_BINARY)};
  for (const std::string& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int file = ::open(other.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int null = ::open("/dev/null", O_RDONLY);
    if (file < 0 || null < 0 || ::dup2(null, STDIN_FILENO) < 0 || ::dup2(slave, fd) < 0 ||
        ::dup2(file, fd == STDOUT_FILENO ? STDERR_FILENO : STDOUT_FILENO) < 0)
      ::_exit(127);
    ::close(master);
    ::execv(SHARDSHIFT_BINARY, argv.data());
    ::_exit(127);
  }
  ::close(slave);
  // Read until every copy of the slave is closed (the process ended): then read() fails (EIO).
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(master, buf, sizeof buf);
    if (n > 0)
      r.terminal.append(buf, size_t(n));
    else if (n < 0 && errno == EINTR)
      continue;
    else
      break;
  }
  ::close(master);
  const int status = testing::wait_status(pid);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.other = testing::read_bytes(other);
  return r;
}

// Rule 10.4: OUT '-' with a terminal on stdout is refused before any work (exit 2), and not one
// byte of the checkpoint reaches the terminal; with stdout redirected, the same run streams.
TEST_F(CliCheckpoint, ATerminalOnStdoutIsRefused) {
  const std::string in = (tmp / "hf").string();
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"convert", in, "-", "--only", "config.json"},
        std::vector<std::string>{"convert", in, "-", "--format", "tar"}}) {
    const TerminalRun r = run_on_terminal(args, STDOUT_FILENO, 80, tmp.path());
    EXPECT_EQ(r.exit_code, 2) << args.back() << ": " << r.other;
    EXPECT_NE(r.other.find("refusing to write binary output to a terminal"), std::string::npos)
        << r.other;
    EXPECT_EQ(r.terminal, "") << "the terminal got bytes";
  }
  auto piped = testing::run_shell(std::string(SHARDSHIFT_BINARY) + " convert " +
                                  shell_quoted(tmp / "hf") + " - --format tar -q | tar t");
  EXPECT_EQ(piped.exit_code, 0) << piped.err;
  EXPECT_NE(piped.out.find("config.json"), std::string::npos) << piped.out;
}

// Rule 10.5: with stderr a terminal, convert draws a progress line there, each drawing cut to one
// column less than the terminal's width and wiped before the summary; -q draws none; stdout stays
// empty either way.
TEST_F(CliCheckpoint, AProgressLineOnlyOnATerminalAndNarrowerThanIt) {
  const unsigned short columns = 40;
  const TerminalRun r =
      run_on_terminal({"convert", (tmp / "hf").string(), (tmp / "out").string(), "--no-sync"},
                      STDERR_FILENO, columns, tmp.path());
  ASSERT_EQ(r.exit_code, 0) << r.terminal;
  EXPECT_EQ(r.other, "") << "stdout holds results only";
  const std::string draw = "\r\x1b[K";
  size_t at = r.terminal.find(draw + "[shard ");
  ASSERT_NE(at, std::string::npos) << "no progress line: " << r.terminal;
  int drawings = 0;
  for (; at != std::string::npos; at = r.terminal.find(draw + "[shard ", at + 1)) {
    const size_t begin = at + draw.size();
    const size_t end = r.terminal.find_first_of("\r\n", begin);
    ASSERT_NE(end, std::string::npos) << "a progress line never wiped: " << r.terminal;
    EXPECT_LE(end - begin, size_t(columns - 1)) << r.terminal.substr(begin, end - begin);
    ++drawings;
  }
  // The last drawing is wiped ("\r\x1b[K" with nothing after it) before the summary.
  const size_t summary = r.terminal.find("converted");
  ASSERT_NE(summary, std::string::npos) << r.terminal;
  EXPECT_EQ(r.terminal.rfind(draw, summary) + draw.size(), summary) << r.terminal;
  EXPECT_GE(drawings, 1);

  fs::remove_all(tmp / "out");
  const TerminalRun quiet =
      run_on_terminal({"convert", (tmp / "hf").string(), (tmp / "out").string(), "--no-sync", "-q"},
                      STDERR_FILENO, columns, tmp.path());
  EXPECT_EQ(quiet.exit_code, 0) << quiet.terminal;
  EXPECT_EQ(quiet.terminal, "") << "-q: nothing on the terminal";
  EXPECT_EQ(quiet.other, "");
}

// --pipe-to --json: what the commands print goes to stderr, so stdout is the JSON alone; without
// --json their stdout stays shardshift's (a caller may collect what they print there).
TEST_F(CliCheckpoint, PipeToJsonKeepsTheCommandsOutputOffStdout) {
  const std::string convert = "convert " + shell_quoted(tmp / "hf") +
                              " --pipe-to 'cat > /dev/null; echo uploaded {name}' -q";
  auto json = run_shardshift(convert + " --json");
  ASSERT_EQ(json.exit_code, 0) << json.err;
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  EXPECT_EQ(parser.parse(json.out).get(doc), simdjson::SUCCESS) << json.out;
  EXPECT_EQ(json.out.find("uploaded"), std::string::npos) << json.out;
  EXPECT_NE(json.err.find("uploaded config.json"), std::string::npos) << json.err;
  auto plain = run_shardshift(convert);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_NE(plain.out.find("uploaded config.json"), std::string::npos) << plain.out;
}

// A failed --pipe-to run with --json still puts on stdout, as one JSON object, which files were
// delivered (what a caller must clean up or may keep): before, stdout was empty.
TEST_F(CliCheckpoint, PipeToJsonReportsEveryFileOfAFailedRun) {
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") +
                          " --json -q --pipe-to 'if [ {name} = config.json ]; then exit 3; fi; "
                          "cat > /dev/null'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(r.out).get(doc), simdjson::SUCCESS) << r.out;
  EXPECT_FALSE(bool(doc["ok"]));
  EXPECT_FALSE(bool(doc["interrupted"]));
  std::map<std::string, std::string> states;
  for (simdjson::dom::element d : simdjson::dom::array(doc["deliveries"]))
    states[std::string(std::string_view(d["name"]))] = std::string(std::string_view(d["state"]));
  EXPECT_EQ(states["model.safetensors"], "delivered") << r.out;
  EXPECT_EQ(states["config.json"].rfind("failed: the command exited with status 3", 0), 0u)
      << r.out;
  EXPECT_EQ(states["model.safetensors.index.json"], "") << "a single file has no index";
  EXPECT_NE(std::string_view(doc["error"]).find("config.json"), std::string::npos);
  // No index to withhold: the report says that nothing marks the delivered file unfinished.
  EXPECT_NE(std::string_view(doc["error"]).find("this checkpoint has no index"), std::string::npos)
      << r.out;

  // A run that fails before any command starts (a shard whose header is damaged) prints the
  // object too, with no deliveries.
  std::filesystem::create_directory(tmp / "bad");
  testing::write_bytes(tmp / "bad" / "model.safetensors", "this is no safetensors file");
  auto early = run_shardshift("convert " + shell_quoted(tmp / "bad") +
                              " --json -q --pipe-to 'cat > /dev/null; : {name}'");
  EXPECT_EQ(early.exit_code, 1) << early.err;
  ASSERT_EQ(parser.parse(early.out).get(doc), simdjson::SUCCESS) << early.out;
  EXPECT_FALSE(bool(doc["ok"]));
  EXPECT_EQ(simdjson::dom::array(doc["deliveries"]).size(), 0u) << early.out;
  EXPECT_NE(std::string_view(doc["error"]).find("model.safetensors"), std::string::npos)
      << early.out;
}

// A command line that names no file gets every file alike (cat > FILE keeps the last): said.
TEST_F(CliCheckpoint, PipeToWithoutANameWarnsWhereSeveralFilesGo) {
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " --pipe-to 'cat > /dev/null'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: --pipe-to: the command names no file"), std::string::npos)
      << r.err;
  // A script that reads $SHARDSHIFT_NAME names the file too, where the command line cannot show
  // it.
  std::filesystem::create_directory(tmp / "up");
  testing::write_bytes(tmp / "up.sh", "#!/bin/sh\nexec cat > \"" + (tmp / "up").string() +
                                          "/$SHARDSHIFT_NAME\"\n");
  testing::write_bytes(tmp / "up_noname.sh", "#!/bin/sh\nexec cat > /dev/null\n");
  auto script = run_shardshift("convert " + shell_quoted(tmp / "hf") + " --pipe-to 'sh " +
                               (tmp / "up_noname.sh").string() + "'");
  EXPECT_EQ(script.exit_code, 0) << script.err;
  EXPECT_NE(script.err.find("names no file"), std::string::npos) << script.err;
  for (const std::string named :
       {std::string(" --pipe-to 'cat > /dev/null; : {name}'"),
        std::string(" --pipe-to 'cat > /dev/null; : \"$SHARDSHIFT_NAME\"'"),
        " --pipe-to 'sh " + (tmp / "up.sh").string() + "'"}) {
    auto ok = run_shardshift("convert " + shell_quoted(tmp / "hf") + named);
    EXPECT_EQ(ok.exit_code, 0) << ok.err;
    EXPECT_EQ(ok.err.find("names no file"), std::string::npos) << named << ok.err;
  }
}

// A side file may be named '$(touch x)': quoted by the user, {name} would run it. Refused before
// anything is read or started.
TEST_F(CliCheckpoint, PipeToRefusesAQuotedPlaceholder) {
  testing::write_bytes(tmp / "hf" / "$(touch PWNED)", "x");
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " --pipe-to " +
                          shell_quoted("cat > \"" + (tmp / "got").string() + "-{name}\""));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--pipe-to: {name} stands inside quotes"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists("PWNED"));
  EXPECT_FALSE(std::filesystem::exists(tmp / "PWNED"));
  for (const std::string& name : testing::list_dir(tmp.path()))
    EXPECT_FALSE(name.starts_with("got")) << name;
}

// The list of files that ends a failed --pipe-to run keeps one line per file: a side file's name
// cannot add a line of its own (a fake "delivered", say).
TEST_F(CliCheckpoint, PipeToFailureListsEveryFileOnOneLine) {
  testing::write_bytes(tmp / "hf" / "evil\nconfig.json: delivered", "x");
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " --pipe-to 'exit 3'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("evil\\x0aconfig.json: delivered: not started"), std::string::npos) << r.err;
  size_t naming_it = 0; // the lines that end like the fake one: the escaped name's alone
  for (const std::string& line : testing::lines_of(r.err))
    if (line.find("config.json: delivered: not started") != std::string::npos) {
      ++naming_it;
      EXPECT_NE(line.find("evil\\x0a"), std::string::npos) << line;
    }
  EXPECT_EQ(naming_it, 1u) << r.err;
}

TEST_F(CliCheckpoint, QuietAndJsonMeanTheSameEverywhere) {
  // -q: nothing but errors; --json is printed even then.
  auto inspect = run_shardshift("inspect -q " + shell_quoted(tmp / "hf"));
  EXPECT_EQ(inspect.exit_code, 0);
  EXPECT_EQ(inspect.out + inspect.err, "");
  auto plan = run_shardshift("plan --quiet " + shell_quoted(tmp / "hf"));
  EXPECT_EQ(plan.exit_code, 0);
  EXPECT_EQ(plan.out + plan.err, "");
  auto bad = run_shardshift("inspect -q " + shell_quoted(tmp / "nothing"));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err, "");

  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  auto synth =
      run_shardshift("synth " + shell_quoted(tmp / "s") + " --layers 1 --scale 32 -q --json");
  ASSERT_EQ(synth.exit_code, 0) << synth.err;
  EXPECT_EQ(synth.err, "");
  ASSERT_EQ(parser.parse(synth.out).get(doc), simdjson::SUCCESS) << synth.out;
  EXPECT_EQ(std::string_view(doc["output"]), (tmp / "s").string());
  EXPECT_EQ(uint64_t(doc["shards"]), 1u);
  const uint64_t tensors = doc["tensors"];
  EXPECT_GT(tensors, 10u);
  EXPECT_GT(uint64_t(doc["bytes"]), 0u);

  auto ins = run_shardshift("inspect -q --json " + shell_quoted(tmp / "s"));
  ASSERT_EQ(ins.exit_code, 0);
  ASSERT_EQ(parser.parse(ins.out).get(doc), simdjson::SUCCESS) << ins.out;
  EXPECT_EQ(uint64_t(doc["tensor_count"]), tensors);
}

TEST_F(CliCheckpoint, PlanJsonOutputsMatchPrintSizeAndTheFilesWritten) {
  // 2MB shards: several files and an index.
  auto sizes =
      run_shardshift("plan " + shell_quoted(tmp / "hf") + " --print-size --max-shard-size 2MB");
  ASSERT_EQ(sizes.exit_code, 0) << sizes.err;
  auto json = run_shardshift("plan " + shell_quoted(tmp / "hf") + " --json --max-shard-size 2MB");
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(run_shardshift("plan " + shell_quoted(tmp / "hf") + " --json --print-size").exit_code,
            2);

  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(json.out).get(doc), simdjson::SUCCESS) << json.out;
  std::string from_json;
  for (simdjson::dom::element f : simdjson::dom::array(doc["outputs"]))
    from_json += std::to_string(uint64_t(f["size"])) + "\t" +
                 std::string(std::string_view(f["name"])) + "\n";
  EXPECT_EQ(from_json, sizes.out);
  EXPECT_NE(sizes.out.find("\tmodel.safetensors.index.json\n"), std::string::npos) << sizes.out;
  EXPECT_NE(sizes.out.find("\tconfig.json\n"), std::string::npos) << sizes.out;

  ASSERT_EQ(run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n") +
                           " --max-shard-size 2MB -q")
                .exit_code,
            0);
  std::vector<std::string> listed;
  for (const std::string& line : lines_of(sizes.out)) {
    std::string name = line.substr(line.find('\t') + 1);
    EXPECT_EQ(std::to_string(fs::file_size(tmp / "n" / name)), line.substr(0, line.find('\t')))
        << name;
    listed.push_back(name);
  }
  std::sort(listed.begin(), listed.end());
  // Every file written is listed, and no other; the output marker (.shardshift-output) is
  // shardshift's own, not part of the checkpoint, and is not listed.
  auto written = testing::list_dir(tmp / "n");
  std::erase(written, std::string(OUTPUT_MARKER_NAME));
  EXPECT_EQ(listed, written) << "every file written is listed, and no other";
}

TEST_F(CliCheckpoint, GzTraceOpensAsJson) {
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n") +
                          " -q --trace " + shell_quoted(tmp / "run.json.gz"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream compressed(testing::read_bytes(tmp / "run.json.gz"));
  boost::iostreams::filtering_istream gz;
  gz.push(boost::iostreams::gzip_decompressor());
  gz.push(compressed);
  std::ostringstream text;
  boost::iostreams::copy(gz, text);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(text.str()).get(doc), simdjson::SUCCESS) << text.str().substr(0, 200);
  size_t spans = 0;
  for (simdjson::dom::element e : simdjson::dom::array(doc["traceEvents"]))
    spans += std::string_view(e["ph"]) == "X";
  EXPECT_GT(spans, 10u);
  // Only the trace and the inputs: no temporary file left beside it.
  EXPECT_EQ(testing::list_dir(tmp.path()), (std::vector<std::string>{"hf", "n", "run.json.gz"}));

  auto unwritable =
      run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "m") +
                     " -q --trace " + shell_quoted(tmp / "no-such-dir" / "t.json"));
  // Refused before any work, as a bad OUT is: nothing converted.
  EXPECT_EQ(unwritable.exit_code, 2);
  EXPECT_NE(unwritable.err.find("no-such-dir"), std::string::npos) << unwritable.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "m"));
}

// The trace never goes over or into what the conversion reads, nor into OUT (it would become part
// of the output): refused before any work, the input byte for byte as it was, no trace written.
TEST_F(CliCheckpoint, TraceIsNeverWrittenOverTheInputOrIntoTheOutput) {
  const auto before = testing::files_of(tmp / "hf");
  ASSERT_FALSE(before.empty());
  const std::string shard = before.rbegin()->first; // a file the conversion reads
  struct Case {
    std::filesystem::path trace;
    std::string message;
  };
  const Case cases[] = {
      {tmp / "hf" / shard, "which this conversion reads"},
      {tmp / "hf" / "new-trace.json", "which this conversion reads"},
      {tmp / "hf", "which this conversion reads"},
      {tmp / "out" / "t.json", "would become part of the output directory"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.trace.string());
    for (const char* out : {"out", "-"}) {
      auto r = testing::run_shell(std::string(SHARDSHIFT_BINARY) + " convert " +
                                  shell_quoted(tmp / "hf") + " " +
                                  (out == std::string("-") ? "-" : shell_quoted(tmp / out)) +
                                  " -q --trace " + shell_quoted(c.trace) + " > /dev/null");
      EXPECT_EQ(r.exit_code, 2) << r.err;
      if (out == std::string("out")) // with OUT '-', tmp/out is only a missing directory
        EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
      EXPECT_FALSE(std::filesystem::exists(tmp / "out"));
      EXPECT_EQ(testing::files_of(tmp / "hf"), before) << "the input changed";
    }
  }
}

} // namespace
} // namespace shardshift
