// app_cli_test.cpp: the command-line plumbing of apps/ that the e2e tests cannot see from
// outside: CancelOnSignal restores the dispositions it found, help text wraps only between
// words, and --device values are checked strictly.
#include "cli.h"
#include "signals.h"
#include "test_support.h"

#include <csignal>
#include <sstream>

#include <gtest/gtest.h>

namespace shardshift::app {
namespace {

using testing::lines_of;

volatile std::sig_atomic_t own_handler_calls = 0;
extern "C" void own_handler(int) {
  own_handler_calls = own_handler_calls + 1;
}

struct sigaction disposition(int signal) {
  struct sigaction current {};
  sigaction(signal, nullptr, &current);
  return current;
}

TEST(CancelOnSignal, SetsTheFlagAndRestoresWhatItFound) {
  struct sigaction mine {};
  mine.sa_handler = own_handler;
  sigemptyset(&mine.sa_mask);
  struct sigaction before_int {
  }, before_term{}, before_pipe{};
  sigaction(SIGINT, &mine, &before_int);
  sigaction(SIGTERM, &mine, &before_term);
  struct sigaction default_pipe {};
  default_pipe.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &default_pipe, &before_pipe);
  own_handler_calls = 0;
  {
    CancelOnSignal cancel(/*ignore_sigpipe=*/true);
    EXPECT_FALSE(cancel.cancelled());
    EXPECT_EQ(disposition(SIGPIPE).sa_handler, SIG_IGN);
    std::raise(SIGTERM);
    EXPECT_TRUE(cancel.cancelled());
    EXPECT_TRUE(cancel.flag()->load());
    EXPECT_EQ(own_handler_calls, 0) << "the guard's handler runs while it is in scope";
  }
  EXPECT_EQ(disposition(SIGINT).sa_handler, own_handler);
  EXPECT_EQ(disposition(SIGTERM).sa_handler, own_handler);
  EXPECT_EQ(disposition(SIGPIPE).sa_handler, SIG_DFL);
  std::raise(SIGINT);
  EXPECT_EQ(own_handler_calls, 1);
  {
    // A new guard starts uncancelled; without ignore_sigpipe it leaves SIGPIPE alone.
    CancelOnSignal again;
    EXPECT_FALSE(again.cancelled());
    EXPECT_EQ(disposition(SIGPIPE).sa_handler, SIG_DFL);
    std::raise(SIGINT);
    EXPECT_TRUE(again.cancelled());
  }
  EXPECT_EQ(own_handler_calls, 1);
  sigaction(SIGINT, &before_int, nullptr);
  sigaction(SIGTERM, &before_term, nullptr);
  sigaction(SIGPIPE, &before_pipe, nullptr);
}

TEST(WrapText, BreaksOnlyBetweenWordsAndStaysShort) {
  const std::string text = "A tensor larger than SIZE gets a file of its own; "
                           "model.safetensors.index.json is written last. https://ui.perfetto.dev "
                           "opens traces.\n\nSecond paragraph.";
  for (unsigned indent : {0u, 8u, 26u}) {
    std::string wrapped = wrap_text(text, indent, 60);
    std::string words;
    for (const std::string& line : lines_of(wrapped)) {
      EXPECT_LT(line.size(), 60u) << line;
      if (line.empty())
        continue;
      EXPECT_EQ(line.find_first_not_of(' '), indent) << line;
      EXPECT_NE(line.back(), ' ') << line;
      words += (words.empty() ? "" : " ") + line.substr(indent);
    }
    // Joining the lines with single spaces gives the words back unbroken.
    EXPECT_EQ(words, "A tensor larger than SIZE gets a file of its own; "
                     "model.safetensors.index.json is written last. https://ui.perfetto.dev "
                     "opens traces. Second paragraph.");
  }
  // A word longer than the line gets a line of its own rather than being cut.
  EXPECT_EQ(wrap_text("a " + std::string(30, 'x') + " b", 2, 20),
            "  a\n  " + std::string(30, 'x') + "\n  b\n");
  // Verbatim paragraphs (starting with a space) keep their lines.
  EXPECT_EQ(wrap_text(" {\"a\",\n  \"b\"}", 0), " {\"a\",\n  \"b\"}\n");
}

TEST(PrintHelp, EveryFlagWithItsDefaultAndNoLineFillsTheWidth) {
  namespace po = boost::program_options;
  FlagGroup group("Options");
  group.flags.add_options()("max-shard-size",
                            po::value<std::string>()->default_value("5GB")->value_name("SIZE"),
                            "Largest output file; model.safetensors.index.json and "
                            "https://ui.perfetto.dev are long words that must not be cut.")(
      "an-unusually-long-flag-name", po::value<unsigned>()->value_name("N"), "Goes below.");
  add_common_flags(group, "Quiet.", "a result.");
  std::ostringstream out;
  print_help(out,
             {.usage = "shardshift x",
              .description = "Does x.",
              .examples = "shardshift x",
              .exit_status = "0 fine."},
             {&group});
  const std::string help = out.str();
  for (const std::string& line : lines_of(help)) {
    EXPECT_LT(line.size(), HELP_WIDTH) << line;
    EXPECT_TRUE(line.empty() || line.back() != ' ') << line;
  }
  for (const char* piece :
       {"      --max-shard-size SIZE\n                          Largest output file;",
        "Default: 5GB.", "model.safetensors.index.json", "https://ui.perfetto.dev", "  -q, --quiet",
        "  -h, --help", "      --json", "--an-unusually-long-flag-name N\n",
        "Examples:\n  shardshift x\n", "Exit status: 0"})
    EXPECT_NE(help.find(piece), std::string::npos) << piece << "\n" << help;
}

TEST(CheckDevice, OnlyDigitsAfterCuda) {
  for (const char* good : {"auto", "cpu", "cuda", "cuda:0", "cuda:7", "cuda:123456789"})
    EXPECT_EQ(check_device(good), "") << good;
  for (const char* bad : {"cuda:x", "cuda:", "cuda:1x", "cuda:-1", "cuda: 1", "cuda:+1",
                          "cuda:1234567890", "gpu", "CUDA", "", "cuda0"})
    EXPECT_NE(check_device(bad), "") << bad;
}

} // namespace
} // namespace shardshift::app
