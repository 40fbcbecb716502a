// key_pattern_test.cpp: --exclude matches as Python's re.match does (src/key_pattern.h): a table
// of patterns and keys with Python's answers, the constructs refused because PCRE2 would read them
// differently, and the planner using it.
#include "shardshift/convert.h"

#include "key_pattern.h"
#include "planner.h"
#include "reference/checkpoint_files.h"
#include "test_support.h"

#include <string>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

struct Row {
  const char* pattern;
  const char* key;
  bool python; ///< bool(re.match(pattern, key)) in Python 3.11
};

// Computed with python3 (3.11.7) while writing this test: bool(re.match(pattern, key)) for each
// row, printed as C++ literals by a small script (non-ASCII keys as their UTF-8 bytes). Do not
// edit an answer by hand: rerun Python. The rows cover the default pattern, anchoring, $ and \Z
// before a final newline, \A, (?i) and scoped flags, lookbehind, named groups and
// backreferences, {,n}, '.' and keys with newlines, (?s), (?m), Unicode \d and \w, \uXXXX,
// \v, conditionals, and Unicode case folding (the Kelvin sign, no full folding of 'ß').
const Row PYTHON_ROWS[] = {
    {".*_extra_state.*", "model.layers.0.mlp._extra_state", true},
    {".*_extra_state.*", "model.layers.0.mlp.weight", false},
    {".*_extra_state.*", "_extra_state", true},
    {"layers", "model.layers.0.weight", false},
    {"model", "model.layers.0.weight", true},
    {"model\\.layers\\.0", "model.layers.0.weight", true},
    {"model\\.layers\\.0$", "model.layers.0", true},
    {"model\\.layers\\.0$", "model.layers.0\n", true},
    {"model\\.layers\\.0\\Z", "model.layers.0\n", false},
    {"model\\.layers\\.0\\Z", "model.layers.0", true},
    {"\\Amodel", "model.x", true},
    {"\\Amodel", "xmodel", false},
    {"(?i)MODEL\\.", "model.x", true},
    {"(?i:LM)_head", "lm_head.weight", true},
    {"(?i:LM)_HEAD", "lm_head.weight", false},
    {".*(?<=experts)\\.gate", "model.experts.gate", true},
    {".*(?<!experts)\\.gate", "model.experts.gate", false},
    {".*(?<!experts)\\.gate", "model.router.gate", true},
    {"(?P<p>model)\\.(?P=p)", "model.model.x", true},
    {"(?P<p>model)\\.(?P=p)", "model.layers", false},
    {"(model)\\.\\1", "model.model", true},
    {"a{,2}b", "aab", true},
    {"a{,2}b", "aaab", false},
    {"a{,2}b", "b", true},
    {"x{,}y", "xxxy", true},
    {".*\\n.*", "a\nb", true},
    {".*", "a\nb", true},
    {"a.b", "a\nb", false},
    {"(?s)a.b", "a\nb", true},
    {"(?m)a$", "a\nb", true},
    {"a$", "a\nb", false},
    {"(?m)a\\n^b", "a\nb", true},
    {"\\d+",
     "\xd9\xa3"
     "\xd9\xa4"
     "",
     true},
    {"\\w+\\.weight",
     "caf\xc3\xa9"
     ".weight",
     true},
    {"\\w+\\.weight\\Z",
     "caf\xc3\xa9"
     ".weight",
     true},
    {"[\\w.]+\\Z", "model.layers.0.weight", true},
    {"[^.]+\\.[0-9]", "layers.7", true},
    {"[]x]+\\Z", "]x]", true},
    {"\\x41", "A", true},
    {"\\u00e9",
     "\xc3\xa9"
     "",
     true},
    {"\\U0001F600",
     "\xf0\x9f\x98\x80"
     "",
     true},
    {"a\\vb", "a\vb", true},
    {"a\\vb", "a\nb", false},
    {"a(?=b)", "ab", true},
    {"a(?!b)", "ab", false},
    {"(?:ab)+\\Z", "ababab", true},
    {"(?x) a b # comment", "ab", true},
    {"(a)?(?(1)b|c)", "ab", true},
    {"(a)?(?(1)b|c)", "c", true},
    {"\\bx", "x y", true},
    {"(?i)stra\\u00dfe", "STRASSE", false},
    {"(?i)\\u212a", "k", true},
};

TEST(KeyPattern, MatchesLikePythonReMatch) {
  for (const Row& row : PYTHON_ROWS) {
    auto pattern = KeyPattern::compile(row.pattern);
    ASSERT_TRUE(pattern.ok()) << row.pattern << ": " << pattern.status().message();
    auto matched = pattern->match(row.key);
    ASSERT_TRUE(matched.ok()) << matched.status().message();
    EXPECT_EQ(*matched, row.python)
        << "re.match(" << ::testing::PrintToString(row.pattern) << ", "
        << ::testing::PrintToString(row.key) << ") is " << (row.python ? "a match" : "None")
        << " in Python; PCRE2 ran '" << pattern->translated() << "'";
  }
}

TEST(KeyPattern, TranslatesPythonOnlySpellings) {
  auto t = [](const char* p) { return translate_python_pattern(p).value(); };
  EXPECT_EQ(t("a\\Z"), "a\\z");
  EXPECT_EQ(t("a{,3}"), "a{0,3}");
  EXPECT_EQ(t("a{,}"), "a{0,}");
  EXPECT_EQ(t("a{2,}"), "a{2,}");
  EXPECT_EQ(t("\\u00e9\\U0001F600"), "\\x{00e9}\\x{0001F600}");
  EXPECT_EQ(t("a\\vb[\\v]"), "a\\x0bb[\\x0b]");
  EXPECT_EQ(t("(?u)a(?iu:b)"), "a(?i:b)");
  EXPECT_EQ(t("[Z]"), "[Z]"); // a plain Z is untouched
  EXPECT_EQ(t("(?P<n>x)(?P=n)"), "(?P<n>x)(?P=n)");
}

TEST(KeyPattern, RefusesWhatPythonReadsDifferently) {
  // Each would compile in PCRE2 (or in Python) with another meaning; the error names the piece
  // (quoted as messages quote text: a backslash doubled).
  const std::pair<const char*, const char*> refused[] = {
      {"[[:alpha:]]+", "'[:alpha:]' at offset 1: POSIX classes"}, // a set of characters in Python
      {"[:alpha:]", "'[:alpha:]' at offset 0: POSIX classes"},
      {"x[[.a.]]", "'[.a.]' at offset 2"},
      {"\\N{DIGIT ONE}", "'\\\\N' at offset 0"},
      {"(?a)\\w", "the flag 'a'"},
      {"\\p{L}", "'\\\\p' at offset 0"},
      {"\\G", "'\\\\G' at offset 0"},
      {"\\K", "'\\\\K'"},
      {"\\12", "'\\\\12' at offset 0"},
      {"(*UTF)a", "'(*' at offset 0"},
      {"(?|a)", "not Python syntax"},
      {"(?R)", "not Python syntax"},
      {"(?(R)a|b)", "only (?(number)...) and (?(name)...)"},
      {"[\\A]", "inside a character class"},
      {"\\x4", "exactly 2 hex digits"},
      {"a\\", "cannot end with a backslash"},
  };
  for (auto [pattern, why] : refused) {
    auto r = KeyPattern::compile(pattern);
    ASSERT_FALSE(r.ok()) << pattern << " was accepted as '" << r->translated() << "'";
    EXPECT_EQ(r.status().code(), Errc::invalid_argument);
    EXPECT_NE(r.status().message().find(why), std::string::npos)
        << pattern << ": " << r.status().message();
    EXPECT_EQ(r.status().message().rfind("cannot be matched as Python's re would: ", 0), 0u)
        << r.status().message();
  }
  auto broken = KeyPattern::compile("([unclosed");
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.status().message().rfind("is not a valid regular expression: ", 0), 0u)
      << broken.status().message();
}

TEST(KeyPattern, AKeyIsNeverAnError) {
  // Bytes that are not UTF-8 (a key is validated text, but the matcher must not depend on it).
  auto p = KeyPattern::compile(".*state");
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->match("\xff\xfe").value());
  EXPECT_TRUE(p->match("x\xff_state").value());
  EXPECT_TRUE(p->match(std::string("a\0b_state", 9)).value());
}

// The planner's --exclude with patterns std::regex (ECMAScript) read differently or refused:
// \Z (a literal 'Z' there), (?i), a lookbehind and a named group.
TEST(KeyPattern, PlannerExcludesAsTheReferenceWould) {
  testing::TempDir tmp;
  std::mt19937_64 rng(testing::test_seed());
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 2, 2, 4, 2));
  ConvertOptions to_native;
  to_native.input = tmp / "hf";
  to_native.output = tmp / "native";
  to_native.device = "cpu";
  ASSERT_TRUE(convert(to_native).ok());
  auto input = Checkpoint::open(tmp / "native");
  ASSERT_TRUE(input.ok()) << input.status().message();
  auto excluded = [&](const std::string& pattern) -> int64_t {
    PlanOptions o;
    o.direction = Direction::to_hf;
    o.exclude = pattern;
    auto plan = make_plan(*input, o);
    if (!plan.ok()) {
      ADD_FAILURE() << pattern << ": " << plan.status().message();
      return -1;
    }
    return static_cast<int64_t>(plan->excluded);
  };
  // Output (Hugging Face) names: model.decoder.norm.weight is the one norm outside the layers.
  EXPECT_EQ(excluded("model\\.decoder\\.norm\\.weight\\Z"), 1);
  EXPECT_EQ(excluded("(?i)MODEL\\.DECODER\\.NORM"), 1);
  EXPECT_EQ(excluded(".*(?<=decoder)\\.norm"), 1);
  EXPECT_EQ(excluded("(?P<m>model)\\.decoder\\.norm"), 1);
  EXPECT_EQ(excluded("decoder\\.norm"), 0); // anchored at the start, like re.match
  EXPECT_EQ(excluded(".*_extra_state.*"), 0);
  PlanOptions posix;
  posix.direction = Direction::to_hf;
  posix.exclude = "[[:alpha:]]+";
  auto refused = make_plan(*input, posix);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Errc::invalid_argument);
  EXPECT_EQ(refused.status().message().rfind("--exclude '[[:alpha:]]+' cannot be matched", 0), 0u)
      << refused.status().message();
}

} // namespace
} // namespace shardshift
