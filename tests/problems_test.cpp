// problems_test.cpp: ProblemList renders one problem per line, escapes untrusted names, and
// merges the problems of a failed sub-step.
#include "shardshift/problems.h"

#include <cerrno>
#include <string>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

TEST(ProblemList, EmptyIsOk) {
  ProblemList problems;
  EXPECT_TRUE(problems.empty());
  EXPECT_TRUE(problems.status().ok());
  EXPECT_EQ(problems.code(), Errc::ok);
}

TEST(ProblemList, EscapesANameWithANewlineAndAQuote) {
  ProblemList problems;
  problems.tensor(Errc::format, "x.safetensors", "evil\nname's", "unknown dtype 'Q'");
  Status s = problems.status();
  EXPECT_EQ(s.code(), Errc::format);
  EXPECT_EQ(s.message(), "x.safetensors: tensor 'evil\\x0aname\\'s': unknown dtype 'Q'");
  EXPECT_EQ(s.message().find('\n'), std::string::npos);
}

TEST(ProblemList, OnePerLineWithTheFirstCode) {
  ProblemList problems;
  problems.add(Errc::io, "a", {}, "cannot read");
  problems.tensor(Errc::format, "b", "w", "bad");
  EXPECT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems.status().code(), Errc::io);
  EXPECT_EQ(problems.status().message(), "a: cannot read\nb: tensor 'w': bad");
  EXPECT_EQ(problems.status("cannot open").message(),
            "cannot open (2 problems):\n  a: cannot read\n  b: tensor 'w': bad");
}

TEST(ProblemList, TakesOverTheLinesOfAFailedStep) {
  ProblemList problems;
  problems.add(Status());
  EXPECT_TRUE(problems.empty());
  problems.add(Status(Errc::format, "f: one\n\nf: two"));
  problems.add(Errc::io, "g", {}, "three");
  EXPECT_EQ(problems.code(), Errc::format);
  EXPECT_EQ(problems.status().message(), "f: one\nf: two\ng: three");
}

TEST(Printable, EscapesControlBytesQuotesAndBackslashes) {
  EXPECT_EQ(printable("plain.name"), "plain.name");
  EXPECT_EQ(printable("a'b\\c\t\x7f"), "a\\'b\\\\c\\x09\\x7f");
  EXPECT_EQ(printable("caf\xC3\xA9"), "caf\xC3\xA9"); // UTF-8 text is kept
}

TEST(ErrnoText, IsTheSystemText) {
  EXPECT_EQ(errno_text(ENOENT), "No such file or directory");
  EXPECT_EQ(errno_text(ENOSPC), "No space left on device");
}

} // namespace
} // namespace shardshift
