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

// `c` as UTF-8.
std::string utf8(char32_t c) {
  std::string s;
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else if (c < 0x800) {
    s += static_cast<char>(0xC0 | (c >> 6));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    s += static_cast<char>(0xE0 | (c >> 12));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (c >> 18));
    s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  }
  return s;
}

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
// \v, conditionals, Unicode case folding (the Kelvin sign, no full folding of 'ß') and \s.
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
    // \s and \S are Python's str.isspace() set: U+001C..U+001F in and U+180E out (PCRE2's own \s
    // is the other way round for these), inside and outside classes, negated or not.
    {"a\\sb",
     "a\x1c"
     "b",
     true},
    {"a\\sb",
     "a\x1f"
     "b",
     true},
    {"a\\sb",
     "a\xe1\xa0\x8e"
     "b",
     false},
    {"a\\sb",
     "a\xc2\x85"
     "b",
     true},
    {"a\\sb",
     "a\xe3\x80\x80"
     "b",
     true},
    {"a\\sb", "a\nb", true},
    {"a\\Sb",
     "a\x1c"
     "b",
     false},
    {"a\\Sb",
     "a\xe1\xa0\x8e"
     "b",
     true},
    {"a\\Sb", "axb", true},
    {"[\\s,]+\\Z", " ,\x1d", true},
    {"[\\s,]+\\Z", " ,\xe1\xa0\x8e", false},
    {"[^\\s]", "\x1e", false},
    {"[^\\s]", "\xe1\xa0\x8e", true},
    {"[\\S]", "\x1f", false},
    {"[\\S]", "x", true},
    {"[\\S]", "\xf4\x8f\xbf\xbf", true},
    {"[^\\S]", "\x1c", true},
    {"[^\\S]", "x", false},
    {"[^\\S]", "\xe1\xa0\x8e", false},
    {"[\\S,]+\\Z", "a,\xe1\xa0\x8e", true},
    {"[\\S,]+\\Z", "a,\x1c", false},
    {"[^\\S,]+\\Z", "\x1c\xe2\x80\xa8", true},
    {"[^\\S,]+\\Z", "\x1c,", false},
    {"[\\s-]+\\Z", "-\x1c", true},
    {"(?i)\\s", "\x1f", true},
    // Global flags at the start (after comments and other flags too), scoped flags on and off,
    // a repeated flag ("xx" is another flag to PCRE2), comments as Python ends them (a backslash
    // takes the next character along, even a ')' or a line break) and the characters that PCRE2's
    // verbose mode would skip but Python's reads (U+0085, U+200E, U+2028, ...).
    {"(?#c)(?i)A", "a", true},
    {"(?x) (?i)A", "a", true},
    {"(?i)(?x)A B", "ab", true},
    {"(?ii)a", "A", true},
    {"(?x:a b)c d", "abc d", true},
    {"(?x:a b)c d", "abcd", false},
    {"(?i:a)B", "AB", true},
    {"(?i)a(?-i:B)", "Ab", false},
    {"(?x)a#\\\nb", "a", true},
    {"(?#a\\)(b)", "x", true},
    {"(?xx)[ a]", " ", true},
    {"(?x)a\xc2\x85"
     "b",
     "ab", false},
    {"(?x)a\xc2\x85"
     "b",
     "a\xc2\x85"
     "b",
     true},
    {"(?x)a\xe2\x80\xa8"
     "b",
     "a\xe2\x80\xa8"
     "b",
     true},
    {"(?x)a\xe2\x80\x8e"
     "b",
     "ab", false},
    {"(?u-i:a)", "A", false},
    {"(?i-m:a$)", "A\nb", false},
    // Look-behinds whose branches have one width, and backreferences to groups before them.
    {"..(?<=ab|cd)x", "cdx", true},
    {"..(?<=ab|cd)x", "abx", true},
    {"..(?<=ab|cd)x", "acx", false},
    {".(?<!a|b)x", "cx", true},
    {".(?<!a|b)x", "bx", false},
    {"(a)(?<=\\1)", "a", true},
    {"..(?<=a(?:b|c))", "ac", true},
    {"(?P<p>.)(?<=(?P=p))", "a", true},
    {".(?<=[ab]|\\d)", "7", true},
    // Conditions on a group's name, on a later group's number, without a "no" branch.
    {"(?P<n>a)?(?(n)b|c)", "ab", true},
    {"(?P<n>a)?(?(n)b|c)", "c", true},
    {"(?P<n>a)?(?(n)b|c)", "b", false},
    {"(?(1)b|c)(a)?", "ca", true},
    {"(a)?(?(1)b)", "a", true},
    // (?i) on ASCII keys: ASCII ranges, and the non-ASCII pattern characters Python and PCRE2
    // both pair with ASCII letters (U+017F with 's' and 'S', U+212A with 'k' and 'K', above).
    {"(?i)x\\.I", "x.i", true},
    {"(?i)x\\.i", "X.I", true},
    {"(?i)[h-j]+\\Z", "HiJ", true},
    {"(?i)[a-z]+\\Z", "Kelvin", true},
    {"(?i)k", "K", true},
    {"(?i)s", "S", true},
    {"(?i)[^k]", "K", false},
    {"(?i)\\u017f", "s", true},
    {"(?i)\\u017f", "S", true},
    {"(?i)[\\u0100-\\u012f\\u0132-\\u0200]", "s", true},
    {"(?i)[\\u0100-\\u012f\\u0132-\\u0200]", "i", false},
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

// Python's \s is the 29 code points for which str.isspace() is true; computed with python3
// (3.11.7): [hex(c) for c in range(0x110000) if re.match(r'\s', chr(c))]. Every spelling of \s and
// \S, inside a class or not, must agree with that list over all code points.
TEST(KeyPattern, WhitespaceIsPythonsIsspace) {
  const char32_t python_space[] = {0x9,    0xa,    0xb,    0xc,    0xd,    0x1c,   0x1d,   0x1e,
                                   0x1f,   0x20,   0x85,   0xa0,   0x1680, 0x2000, 0x2001, 0x2002,
                                   0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a,
                                   0x2028, 0x2029, 0x202f, 0x205f, 0x3000};
  const std::pair<const char*, bool> spellings[] = {
      {"\\s\\Z", true},     {"[\\s]\\Z", true},    {"[^\\S]\\Z", true},
      {"[x\\s]\\Z", true},  {"\\S\\Z", false},     {"[\\S]\\Z", false},
      {"[^\\s]\\Z", false}, {"[^x\\s]\\Z", false}, {"[\\S\\s]\\Z", false}};
  for (auto [spelling, is_space] : spellings) {
    auto pattern = KeyPattern::compile(spelling);
    ASSERT_TRUE(pattern.ok()) << spelling << ": " << pattern.status().message();
    const bool everything = std::string_view(spelling) == "[\\S\\s]\\Z";
    size_t listed = 0;
    for (char32_t c = 0; c <= 0x10FFFF; ++c) {
      if (c >= 0xD800 && c <= 0xDFFF)
        continue; // no key holds a surrogate: keys are UTF-8
      const bool space = listed < std::size(python_space) && python_space[listed] == c;
      listed += space;
      const bool x = c == 'x' && std::string_view(spelling).find('x') != std::string_view::npos;
      const bool expected = everything || (space == is_space) != x;
      auto matched = pattern->match(utf8(c));
      ASSERT_TRUE(matched.ok()) << matched.status().message();
      ASSERT_EQ(*matched, expected) << spelling << " on U+" << std::hex << uint32_t(c);
    }
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
  const std::string space = "\\x{9}-\\x{d}\\x{1c}-\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}"
                            "\\x{2028}-\\x{2029}\\x{202f}\\x{205f}\\x{3000}";
  EXPECT_EQ(t("a\\sb"), "a[" + space + "]b");
  EXPECT_EQ(t("\\S"), "[^" + space + "]");
  EXPECT_EQ(t("(?ix)a # b\n c"), "(?ix)a #\n c");  // a comment's text is left out
  EXPECT_EQ(t("a(?#x\\)(y)b"), "a(?#)b");          // Python's comment ends at the last ')'
  EXPECT_EQ(t("(?xx)(?ii-ss:a)"), "(?x)(?i-s:a)"); // each flag once
  EXPECT_EQ(t("(?x)a\u2028b c"), "(?x)a\\x{2028}b c");
  EXPECT_EQ(t("(?x:\u2028)\u2028"), "(?x:\\x{2028})\u2028");  // verbose mode's scope only
  EXPECT_EQ(t("(?<=a|b)x(?<!c)"), "(?<=(?:a|b))x(?<!(?:c))"); // one width for all branches
  EXPECT_EQ(t("(?i:x)\\u0130"), "(?i:x)\\x{0130}");           // İ outside the scope of (?i)
  EXPECT_EQ(t("[^\\s,]"), "[^" + space + ",]");
  EXPECT_EQ(t("[\\S]"),
            "[\\x{0}-\\x{8}\\x{e}-\\x{1b}\\x{21}-\\x{84}\\x{86}-\\x{9f}\\x{a1}-\\x{167f}"
            "\\x{1681}-\\x{1fff}\\x{200b}-\\x{2027}\\x{202a}-\\x{202e}\\x{2030}-\\x{205e}"
            "\\x{2060}-\\x{2fff}\\x{3001}-\\x{10ffff}]");
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
      // Python 3.11: "global flags not at the start of the expression"; PCRE2 applies them there
      {"x\\.a(?i)BC", "'(?i)' at offset 4: Python refuses global flags not at the start"},
      {"a|(?i)b", "'(?i)' at offset 2: Python refuses global flags"},
      {"((?i)a)", "'(?i)' at offset 1: Python refuses global flags"},
      {"(?:)(?i)a", "Python refuses global flags"},
      {"(?-i)a", "missing :"},           // Python turns flags off only in a group
      {"(?i-i:a)", "turned on and off"}, // PCRE2 would read the last one
      {"(?-u:a)", "cannot turn off the flag 'u'"},
      {"(?t)a", "the flag 't'"},
      {"(?#a\\)b", "unterminated comment"}, // Python's comment does not end at "\)"
      {"(?x)a#\\", "cannot end with a backslash"},
      // Python: "look-behind requires fixed-width pattern"; PCRE2 allows branches of different
      // fixed widths
      {"(?<=c|bc)", "'(?<=c|bc)' at offset 0: a look-behind must match one fixed width"},
      {"x(?<!a|bc)", "'(?<!a|bc)' at offset 1: a look-behind must match one fixed width"},
      {"(?<=a|)", "one fixed width"},
      {"..(?<=a(?<=a|bc))", "'(?<=a|bc)' at offset 7: a look-behind must match"},
      {"(?<=a+)", "'(?<=a+)' at offset 0: a look-behind must match"}, // refused by both
      // Python refuses these references; PCRE2 would look forward, or into the group
      {"\\1(a)|b", "'\\\\1' at offset 0: Python refuses a reference to a group defined after it"},
      {"(a\\1)|b", "'\\\\1' at offset 2: Python refuses a reference to a group still open"},
      {".(?<=(a)\\1)", "'\\\\1' at offset 8: Python refuses a reference to a group defined in the "
                       "same look-behind"},
      {"(?P=n)(?P<n>a)|b", "'(?P=n)' at offset 0: Python refuses a name no group before it has"},
      // Under (?i), Python pairs U+0130 and U+0131 with 'i' and 'I', PCRE2 does not
      {"(?i)x\\.\\u0130", "'\\\\u0130' at offset 7: under (?i) Python matches U+0130 and U+0131"},
      {"(?i)\xc4\xb1", "'\xc4\xb1' at offset 4: under (?i)"},
      {"(?i)[\\u0100-\\u0200]", "'\\\\u0100-\\\\u0200' at offset 5: under (?i)"},
      {"x(?i:[^\\u0131])", "under (?i)"},
      // Python: "multiple repeat"; PCRE2 reads the second quantifier as lazy or possessive
      {"a+(?#c)+", "'+' at offset 7: Python refuses a quantifier after a quantified item"},
      {"(?x)a{2} ?", "'?' at offset 9: Python refuses a quantifier after a quantified item"},
      // Python's conditions are a group's number or name; PCRE2 has more kinds
      {"(?(R)a|b)", "only (?(number)...) and (?(name)...)"},
      {"(?(?=a)abc|ABC)", "'(?(?=a)' at offset 0: only (?(number)...) and (?(name)...)"},
      {"(?(DEFINE)a)b", "'(?(DEFINE)' at offset 0: only (?(number)...) and (?(name)...)"},
      {"(?(R1)a|b)(c)", "PCRE2 reads R, Rn, DEFINE and VERSION as conditions of its own"},
      {"(?(n)b|c)(?P<n>a)", "'(?(n)' at offset 0: Python refuses a name no group before it has"},
      {"(?(0)b|c)", "Python refuses this group number"},
      {"(?<=(a)(?(1)b|c))", "'(?(1)' at offset 7: Python refuses a reference to a group defined in "
                            "the same look-behind"},
      {"[\\A]", "inside a character class"},
      {"\\x4", "exactly 2 hex digits"},
      // Python: "bad character range"; PCRE2 would read '-' after a class escape as itself
      {"[\\w-a]", "'\\\\w-a' at offset 1: Python refuses a class escape"},
      {"[a-\\s]", "at either end of a range"},
      {"[\\s-\\uffff]", "at either end of a range"},
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
  EXPECT_EQ(broken.status().message().find("PCRE2 form"), std::string::npos)
      << broken.status().message();
  // PCRE2's offset is in the translation; where that differs from the user's pattern the message
  // says so and shows it, rather than pass it off as what the user wrote.
  auto translated = KeyPattern::compile("\\Z(");
  ASSERT_FALSE(translated.ok());
  EXPECT_NE(translated.status().message().find("(near offset 3 of its PCRE2 form '\\\\z(')"),
            std::string::npos)
      << translated.status().message();
}

// Python's (?i) and PCRE2's differ on some non-ASCII characters (Python's own case rules against
// Unicode case folding), so a case-insensitive pattern refuses a key that is not ASCII, naming it,
// rather than guess. Python's answers, computed with python3 (3.11.7): re.match(r'(?i)x\.i', k)
// matches all of 'x.İ', 'x.ı', 'x.I' and 'x.i'; PCRE2 matched only the last two.
TEST(KeyPattern, CaseInsensitivePatternRefusesKeysThatAreNotAscii) {
  auto p = KeyPattern::compile("(?i)x\\.i");
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->match("x.I").value());
  EXPECT_TRUE(p->match("x.i").value());
  for (const char* key : {"x.\xc4\xb0", "x.\xc4\xb1", "y.\xc3\xa9"}) {
    auto r = p->match(key);
    ASSERT_FALSE(r.ok()) << key;
    EXPECT_EQ(r.status().code(), Errc::unsupported);
    EXPECT_EQ(
        r.status().message().rfind("'" + std::string(key) + "': a case-insensitive pattern", 0), 0u)
        << r.status().message();
  }
  // (?i) anywhere, even where it cannot apply to the key.
  auto scoped = KeyPattern::compile("(?i:a)|b");
  ASSERT_TRUE(scoped.ok());
  EXPECT_FALSE(scoped->match("b\xc3\xa9").ok());
  // Without (?i), a key that is not ASCII is matched as ever.
  auto cased = KeyPattern::compile("x\\.i");
  ASSERT_TRUE(cased.ok());
  EXPECT_FALSE(cased->match("x.\xc4\xb0").value());
  EXPECT_TRUE(cased->match("x.i\xc3\xa9").value());
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
  // (?i) and an output name that is not ASCII: the plan fails, naming the tensor.
  {
    reference::Dict hf = reference::tiny_diffusion(rng, 2, 2, 4, 2);
    hf["model.decoder.caf\xc3\xa9.weight"] = reference::random_tensor(rng, DType::BF16, {2});
    reference::write_checkpoint(tmp / "hf2", hf);
    ConvertOptions o = to_native;
    o.input = tmp / "hf2";
    o.output = tmp / "native2";
    ASSERT_TRUE(convert(o).ok());
    auto other = Checkpoint::open(tmp / "native2");
    ASSERT_TRUE(other.ok()) << other.status().message();
    PlanOptions caseless;
    caseless.direction = Direction::to_hf;
    caseless.exclude = "(?i)MODEL\\.DECODER\\.NORM";
    auto plan = make_plan(*other, caseless);
    ASSERT_FALSE(plan.ok());
    EXPECT_EQ(plan.status().code(), Errc::unsupported);
    EXPECT_NE(plan.status().message().find(
                  "--exclude: 'model.decoder.caf\xc3\xa9.weight': a case-insensitive pattern"),
              std::string::npos)
        << plan.status().message();
    caseless.exclude = "model\\.decoder\\.norm"; // the same keys without (?i): no problem
    auto fine = make_plan(*other, caseless);
    ASSERT_TRUE(fine.ok()) << fine.status().message();
    EXPECT_EQ(fine->excluded, 1u);
  }
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
