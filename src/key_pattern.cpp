// key_pattern.cpp: see key_pattern.h. The translation walks the pattern once, as Python's parser
// reads it, tracking whether it is inside a character class, the groups open (with the flags each
// restores) and the capturing groups defined, and copies every construct both engines read the
// same way.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "key_pattern.h"

#include "shardshift/problems.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <pcre2.h>
#include <utility>
#include <vector>

namespace shardshift {

namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_octal(char c) {
  return c >= '0' && c <= '7';
}
bool is_hex(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
bool is_ascii_letter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// The code point of the UTF-8 character at `at` and its length in bytes; a byte that starts no
// valid character stands for itself (PCRE2 refuses the pattern then: it compiles in UTF mode).
std::pair<char32_t, size_t> utf8_at(std::string_view s, size_t at) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[at + k]); };
  const unsigned char lead = b(0);
  const size_t length = lead < 0x80         ? 1
                        : (lead >> 5) == 6  ? 2
                        : (lead >> 4) == 14 ? 3
                        : (lead >> 3) == 30 ? 4
                                            : 0;
  if (length == 0 || at + length > s.size())
    return {lead, 1};
  char32_t cp = length == 1 ? lead : lead & (0x7F >> length);
  for (size_t k = 1; k < length; ++k) {
    if ((b(k) & 0xC0) != 0x80)
      return {lead, 1};
    cp = (cp << 6) | (b(k) & 0x3F);
  }
  return {cp, length};
}

// Python's \s for str patterns: exactly the characters for which str.isspace() is true. Derived
// with Python 3.11.7 by grouping into ranges
//   [c for c in range(0x110000) if re.match(r'\s', chr(c))]
// (the same list as [c for c in range(0x110000) if chr(c).isspace()]). PCRE2's \s (with UCP) is
// Unicode's White_Space instead, which lacks U+001C..U+001F and, in PCRE2 10.42, has U+180E; so
// \s and \S are written out as these ranges.
constexpr std::pair<char32_t, char32_t> PYTHON_SPACE[] = {
    {0x9, 0xD},       {0x1C, 0x20},     {0x85, 0x85},     {0xA0, 0xA0},     {0x1680, 0x1680},
    {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}};

std::string hex(char32_t c) {
  char text[16];
  std::snprintf(text, sizeof text, "%x", static_cast<unsigned>(c));
  return text;
}

std::string class_range(char32_t lo, char32_t hi) {
  char text[32];
  if (lo == hi)
    std::snprintf(text, sizeof text, "\\x{%x}", static_cast<unsigned>(lo));
  else
    std::snprintf(text, sizeof text, "\\x{%x}-\\x{%x}", static_cast<unsigned>(lo),
                  static_cast<unsigned>(hi));
  return text;
}

// The inside of a character class (no brackets) holding Python's \s, or (`negated`) its
// complement among all code points, which is Python's \S.
std::string python_space_ranges(bool negated) {
  std::string out;
  char32_t next = 0; // the first code point not yet covered, for the complement
  for (auto [lo, hi] : PYTHON_SPACE) {
    if (!negated)
      out += class_range(lo, hi);
    else if (lo > next)
      out += class_range(next, lo - 1);
    next = hi + 1;
  }
  if (negated)
    out += class_range(next, 0x10FFFF);
  return out;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  if (pcre2_get_error_message(code, buffer, sizeof buffer) < 0)
    return "PCRE2 error " + std::to_string(code);
  return reinterpret_cast<const char*>(buffer);
}

// "cannot be matched as Python's re would: 'PIECE' at offset N: WHY", PIECE being
// `pattern.substr(at, length)`.
Status refusal(std::string_view pattern, size_t at, size_t length, const std::string& why) {
  return Status(Errc::invalid_argument, "cannot be matched as Python's re would: '" +
                                            printable(pattern.substr(at, length)) + "' at offset " +
                                            std::to_string(at) + ": " + why);
}

// A look-behind of the pattern, "(?<=...)" or "(?<!...)", and where its '(' is in the translation.
struct Lookbehind {
  size_t at = 0, length = 0, translated_at = 0;
};

// The pattern as PCRE2 compiles it, and what matching it needs to know.
struct Translation {
  std::string pcre2;
  bool caseless = false; ///< case-insensitive somewhere ((?i), (?i:...))
  std::vector<Lookbehind> lookbehinds;
};

// A group being translated: what its ')' closes and restores.
struct Group {
  bool caseless = false, verbose = false; ///< the flags in force outside it
  int number = 0;                         ///< a capturing group's number
  int lookbehind = -1;                    ///< a look-behind's index in Translation::lookbehinds
  bool outermost_lookbehind = false;      ///< the look-behind no other look-behind holds
};

class Translator {
public:
  explicit Translator(std::string_view p) : p_(p) {}

  Result<Translation> run() {
    while (i_ < p_.size()) {
      const size_t at = i_;
      const bool outside = !in_class_, repeat = outside && quantifier();
      // Python refuses a quantifier after a quantified item ("multiple repeat") even with a
      // comment or verbose white space between them; PCRE2 reads "a+(?#)+" as "a++".
      if (repeat && after_quantifier_ && separated_)
        return refuse(at, 1,
                      "Python refuses a quantifier after a quantified item (multiple repeat)");
      Status s = in_class_ ? class_item() : p_[i_] == '\\' ? escape() : outside_char();
      if (s.ok() && outside && p_[at] == '\\')
        s = cased(at, atom_, atom_);
      if (!s.ok())
        return s;
      if (outside && !separator_) {
        after_quantifier_ = repeat;
        separated_ = false;
      }
      separated_ = separated_ || separator_;
      separator_ = false;
    }
    for (Lookbehind& open : lookbehinds_) // unterminated: PCRE2 says so; quote up to the end
      if (open.length == 0)
        open.length = p_.size() - open.at;
    return Translation{std::move(out_), uses_caseless_, std::move(lookbehinds_)};
  }

private:
  Status refuse(size_t at, size_t length, const std::string& why) const {
    return refusal(p_, at, length, why);
  }

  // Whether a quantifier begins at i_: '*', '+', '?' or, as Python reads braces, "{m,n}" with
  // m and n optional ("{}" and anything else are the characters themselves).
  bool quantifier() const {
    const char c = p_[i_];
    if (c == '*' || c == '+' || c == '?')
      return true;
    if (c != '{' || i_ + 1 >= p_.size() || p_[i_ + 1] == '}')
      return false;
    size_t j = i_ + 1;
    while (j < p_.size() && is_digit(p_[j]))
      ++j;
    if (j < p_.size() && p_[j] == ',')
      for (++j; j < p_.size() && is_digit(p_[j]);)
        ++j;
    return j < p_.size() && p_[j] == '}';
  }

  // The characters `lo`..`hi` (-1: none), written from `at` to here. Under (?i), Python pairs
  // U+0130 (İ) and U+0131 (ı) with 'i' and 'I' (its simple lowercase and uppercase, and a fix for
  // ı); PCRE2's Unicode case folding does not. Every other character matches the same ASCII
  // letters in both under (?i), found with Python 3.11.7 and PCRE2 10.42 by matching (?i)C, (?i)[C]
  // and (?i)[^C] against the 128 ASCII characters for every code point C. Keys that are not ASCII
  // are refused by match() instead.
  Status cased(size_t at, int64_t lo, int64_t hi) const {
    if (!caseless_ || lo < 0 || hi < 0x130 || lo > 0x131)
      return {};
    return refuse(at, i_ - at,
                  "under (?i) Python matches U+0130 and U+0131 (İ, ı) with 'i' and 'I', PCRE2 "
                  "does not; write the characters out without (?i), e.g. [iIİı]");
  }

  // A backreference to group `number` (\N, (?P=name)), which Python allows only to a group
  // defined and closed before it, and inside a look-behind only to one defined outside it; PCRE2
  // allows more, matching what Python refuses.
  Status reference(int number, size_t at, size_t length) const {
    if (number > groups_)
      return refuse(at, length,
                    "Python refuses a reference to a group defined after it (invalid group "
                    "reference)");
    if (!closed_[number])
      return refuse(at, length, "Python refuses a reference to a group still open at it");
    if (lookbehind_groups_ >= 0 && number > lookbehind_groups_)
      return refuse(at, length,
                    "Python refuses a reference to a group defined in the same look-behind");
    return {};
  }

  // \0 with up to two more octal digits (a character in both), or \1 .. \9 (the same
  // backreference in both); octal escapes and references above 9 are read differently.
  Status digit_escape(char e) {
    if (e == '0') {
      size_t j = i_ + 2;
      while (j < p_.size() && j < i_ + 4 && is_octal(p_[j]))
        ++j;
      atom_ = std::stoi(std::string(p_.substr(i_ + 1, j - i_ - 1)), nullptr, 8);
      return copy(j - i_);
    }
    if (in_class_ || (i_ + 2 < p_.size() && is_digit(p_[i_ + 2])))
      return refuse(i_, in_class_ ? 2 : 3,
                    "octal escapes and backreferences above 9 are read differently by Python "
                    "and PCRE2; use \\xHH or (?P<name>...) with (?P=name)");
    if (Status s = reference(e - '0', i_, 2); !s.ok())
      return s;
    return copy(2);
  }

  // \xHH, \uHHHH or \UHHHHHHHH: exactly `digits` hex digits, a code point, written \x{...}.
  Status hex_escape(size_t digits) {
    if (i_ + 2 + digits > p_.size())
      return refuse(i_, 2, "needs exactly " + std::to_string(digits) + " hex digits");
    const std::string text(p_.substr(i_ + 2, digits));
    for (char h : text)
      if (!is_hex(h))
        return refuse(i_, 2 + digits, "needs exactly " + std::to_string(digits) + " hex digits");
    atom_ = static_cast<int64_t>(std::stoul(text, nullptr, 16));
    if (atom_ > 0x10FFFF)
      return refuse(i_, 2 + digits, "is not a Unicode code point");
    out_ += "\\x{" + text + "}";
    i_ += 2 + digits;
    return {};
  }

  // Python's escapes, one by one. Letters Python does not know are errors in Python and mean
  // something else in PCRE2, so only the listed ones pass. Sets `atom_` to the character an
  // escape stands for, or to -1 for a class (\d, \s, ...) or an assertion.
  Status escape() {
    atom_ = -1;
    at_start_ = false;
    if (i_ + 1 >= p_.size())
      return refuse(i_, 1, "a pattern cannot end with a backslash");
    const char e = p_[i_ + 1];
    if (is_digit(e))
      return digit_escape(e);
    if (!is_ascii_letter(e)) { // an escaped punctuation (or non-ASCII) character is itself in both
      const auto [cp, length] = utf8_at(p_, i_ + 1);
      atom_ = cp;
      return copy(1 + length);
    }
    switch (e) {
    case 's': // Python's whitespace, which is not PCRE2's: written out (PYTHON_SPACE)
    case 'S':
      out_ += in_class_ ? python_space_ranges(e == 'S')
                        : (e == 'S' ? "[^" : "[") + python_space_ranges(false) + "]";
      i_ += 2;
      return {};
    case 'd':
    case 'D':
    case 'w':
    case 'W':
      return copy(2);
    case 'b': // a word boundary outside a class, a backspace inside one, in both
      atom_ = in_class_ ? 0x08 : -1;
      return copy(2);
    case 'a':
    case 'f':
    case 'n':
    case 'r':
    case 't':
      atom_ = e == 'a' ? 0x07 : e == 'f' ? 0x0C : e == 'n' ? 0x0A : e == 'r' ? 0x0D : 0x09;
      return copy(2);
    case 'A':
    case 'B':
    case 'Z':
      if (in_class_)
        return refuse(i_, 2, "Python refuses this escape inside a character class");
      if (e == 'Z') { // Python's \Z is the very end; PCRE2's \Z also matches before a final \n
        out_ += "\\z";
        i_ += 2;
        return {};
      }
      return copy(2);
    case 'v': // a vertical tab in Python, any vertical space in PCRE2
      atom_ = 0x0B;
      out_ += "\\x0b";
      i_ += 2;
      return {};
    case 'x':
    case 'u':
    case 'U':
      return hex_escape(e == 'x' ? 2 : e == 'u' ? 4 : 8);
    case 'N':
      return refuse(
          i_, 2, "named characters (\\N{...}) are not supported; write the character or \\uXXXX");
    default:
      return refuse(i_, 2,
                    "Python has no such escape (it refuses the pattern) and PCRE2 gives it "
                    "another meaning");
    }
  }

  // One item of a character class, read as Python reads it: a ']' that ends the class, or a
  // character or class escape, possibly followed by '-' and the end of a range.
  Status class_item() {
    if (p_[i_] == ']' && i_ != class_first_) { // a ']' first in the class is a literal in both
      in_class_ = false;
      return copy(1);
    }
    const size_t at = i_;
    Status s = class_atom();
    if (!s.ok())
      return s;
    // "a-" before the closing ']' is two characters, in both.
    if (i_ + 1 >= p_.size() || p_[i_] != '-' || p_[i_ + 1] == ']')
      return cased(at, atom_, atom_);
    const int64_t lo = atom_;
    out_ += '-';
    ++i_;
    s = class_atom();
    if (!s.ok())
      return s;
    // Python refuses a class escape at either end of a range; PCRE2 would read "\s-a" with
    // Python's \s written out as a range of other ends.
    if (lo < 0 || atom_ < 0)
      return refuse(at, i_ - at,
                    "Python refuses a class escape (\\d, \\s, \\w, ...) at either end of a range "
                    "(bad character range); escape the '-' to mean the character");
    return cased(at, lo, atom_);
  }

  // A character of a class, or an escape: sets `atom_` (see escape()).
  Status class_atom() {
    if (p_[i_] == '\\')
      return escape();
    if (p_[i_] == '[' && i_ + 1 < p_.size() &&
        (p_[i_ + 1] == ':' || p_[i_ + 1] == '.' || p_[i_ + 1] == '='))
      return refuse_posix(i_);
    const auto [cp, length] = utf8_at(p_, i_);
    atom_ = cp;
    return copy(length);
  }

  // "[:alpha:]" inside a class is a POSIX class for PCRE2 but the characters ":alph" for Python.
  Status refuse_posix(size_t at) const {
    size_t end = p_.find(']', at + 2);
    return refuse(at, end == std::string_view::npos ? 2 : end + 1 - at,
                  "POSIX classes mean a named class in PCRE2 but a set of characters in Python; "
                  "write the characters out (e.g. [a-zA-Z] for [:alpha:])");
  }

  Status outside_char() {
    const char c = p_[i_];
    if (verbose_ && (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f')) {
      separator_ = true;
      return copy(1); // PCRE2's extended mode skips the same ASCII white space
    }
    if (verbose_ && c == '#') {
      separator_ = true;
      return verbose_comment();
    }
    if (c == '(' && i_ + 1 < p_.size() && p_[i_ + 1] == '?')
      return group(); // flags and comments are no item: group() says what is
    at_start_ = false;
    if (c == '[') {
      out_ += '[';
      ++i_;
      if (i_ < p_.size() && p_[i_] == '^') {
        out_ += '^';
        ++i_;
      }
      // "[:alpha:]" without the outer brackets: a set in Python, an error in PCRE2.
      if (i_ < p_.size() && (p_[i_] == ':' || p_[i_] == '.' || p_[i_] == '=') &&
          p_.find(std::string{p_[i_], ']'}, i_ + 1) != std::string_view::npos)
        return refuse_posix(i_ - 1);
      in_class_ = true;
      class_first_ = i_;
      return {};
    }
    if (c == '{' && quantifier()) { // whole, so that run() sees one quantifier
      const size_t close = p_.find('}', i_);
      if (p_[i_ + 1] == ',') { // Python reads {,n} as {0,n}; PCRE2 10.42 as the literal text
        out_ += "{0";
        ++i_;
      }
      return copy(close + 1 - i_);
    }
    if (c == '(' && i_ + 1 < p_.size() && p_[i_ + 1] == '*')
      return refuse(i_, 2, "PCRE2 verbs ((*VERB)) are not Python syntax");
    if (c == '(') { // a numbered group
      open(Group{.number = new_group()});
      return copy(1);
    }
    if (c == ')')
      return close();
    const auto [cp, length] = utf8_at(p_, i_);
    // PCRE2's extended mode also skips these (Unicode's Pattern_White_Space); Python's verbose
    // mode reads them as themselves.
    if (verbose_ && (cp == 0x85 || cp == 0x200E || cp == 0x200F || cp == 0x2028 || cp == 0x2029)) {
      out_ += "\\x{" + hex(cp) + "}";
      i_ += length;
      return {};
    }
    const size_t at = i_;
    out_.append(p_.substr(i_, length));
    i_ += length;
    return cased(at, cp, cp);
  }

  void open(Group group) {
    group.caseless = caseless_;
    group.verbose = verbose_;
    open_.push_back(group);
  }

  // The number of a capturing group opening here.
  int new_group() {
    closed_.push_back(false);
    return ++groups_;
  }

  // A ')': the flags of the group it closes end with it.
  Status close() {
    if (open_.empty()) // PCRE2 refuses the pattern, as Python does
      return copy(1);
    const Group group = open_.back();
    open_.pop_back();
    caseless_ = group.caseless;
    verbose_ = group.verbose;
    if (group.number > 0)
      closed_[group.number] = true;
    if (group.outermost_lookbehind)
      lookbehind_groups_ = -1;
    if (group.lookbehind >= 0) { // the end of the group of its branches, too (see group())
      Lookbehind& lookbehind = lookbehinds_[group.lookbehind];
      lookbehind.length = i_ + 1 - lookbehind.at;
      out_ += ')';
    }
    return copy(1);
  }

  // The flags `on` and `off` (letters of "imsx") from here to the end of the group or pattern.
  void apply(std::string_view on, std::string_view off) {
    if (on.find('i') != std::string_view::npos)
      caseless_ = uses_caseless_ = true;
    if (on.find('x') != std::string_view::npos)
      verbose_ = true;
    if (off.find('i') != std::string_view::npos)
      caseless_ = false;
    if (off.find('x') != std::string_view::npos)
      verbose_ = false;
  }

  // A '#' comment of the verbose mode, up to the end of the line. Python reads it token by token,
  // a backslash and the character after it being one, so "\<newline>" does not end it; PCRE2
  // would end it there. The comment's text is left out: PCRE2 gets an empty one.
  Status verbose_comment() {
    size_t j = i_ + 1;
    while (j < p_.size() && p_[j] != '\n')
      j += p_[j] == '\\' ? 2 : 1;
    if (j > p_.size())
      return refuse(p_.size() - 1, 1, "a pattern cannot end with a backslash");
    out_ += j < p_.size() ? "#\n" : "#";
    i_ = std::min(j + 1, p_.size());
    return {};
  }

  // "(?" extensions: the ones Python has, and the inline flags both read alike.
  Status group() {
    const std::string_view rest = p_.substr(i_ + 2);
    auto starts = [&](std::string_view s) { return rest.starts_with(s); };
    if (starts("#")) { // a comment, up to the first ')' that no backslash escapes (as for Python)
      size_t j = i_ + 3;
      while (j < p_.size() && p_[j] != ')')
        j += p_[j] == '\\' ? 2 : 1;
      if (j >= p_.size())
        return refuse(i_, p_.size() - i_,
                      "an unterminated comment (Python: missing ), unterminated comment)");
      separator_ = true;
      out_ += "(?#)"; // its text left out: PCRE2 would end it at an escaped ')'
      i_ = j + 1;
      return {};
    }
    if (!starts("-") && (rest.empty() || !is_ascii_letter(rest[0]) || starts("P")))
      at_start_ = false; // anything but flags is an item
    if (starts("P=")) {  // a named backreference, "(?P=name)": no group
      const size_t close = p_.find(')', i_);
      if (close == std::string_view::npos) // PCRE2 refuses it, as Python does
        return copy(p_.size() - i_);
      const auto name = names_.find(p_.substr(i_ + 4, close - i_ - 4));
      if (name == names_.end()) // PCRE2 would look further on
        return refuse(i_, close + 1 - i_, "Python refuses a name no group before it has");
      if (Status s = reference(name->second, i_, close + 1 - i_); !s.ok())
        return s;
      return copy(close + 1 - i_);
    }
    if (starts("P<")) { // a named group, "(?P<name>"
      const size_t close = p_.find('>', i_);
      if (close == std::string_view::npos) // PCRE2 refuses it, as Python does
        return copy(p_.size() - i_);
      const int number = new_group();
      names_.emplace(p_.substr(i_ + 4, close - i_ - 4), number); // twice: PCRE2 refuses it
      open(Group{.number = number});
      return copy(close + 1 - i_);
    }
    if (starts(":") || starts("=") || starts("!") || starts(">")) {
      open(Group{});
      return copy(3);
    }
    if (starts("<=") || starts("<!")) {
      // Python wants one width for the whole look-behind; PCRE2 10.42 one width for each of its
      // branches, which may differ ("(?<=c|bc)"). Its branches go into one group, "(?<=(?:c|bc))",
      // whose alternatives PCRE2 does want to be of one width: it then refuses what Python
      // refuses (PCRE2_ERROR_LOOKBEHIND_NOT_FIXED_LENGTH, said as Python says it by compile()).
      Group group{.lookbehind = static_cast<int>(lookbehinds_.size())};
      lookbehinds_.push_back(Lookbehind{.at = i_, .translated_at = out_.size()});
      if (lookbehind_groups_ < 0) {
        lookbehind_groups_ = groups_;
        group.outermost_lookbehind = true;
      }
      open(group);
      out_.append(p_.substr(i_, 4));
      out_ += "(?:";
      i_ += 4;
      return {};
    }
    if (starts("("))
      return conditional();
    return flags();
  }

  // "(?(id)yes|no)": Python's condition is a group's number or name, which PCRE2 reads alike;
  // PCRE2's other conditions ("(?(?=a)...)", "(?(R)...)", "(?(DEFINE)...)", ...) are refused, as
  // are the names PCRE2 would read as one of them.
  Status conditional() {
    const size_t close = p_.find(')', i_ + 3);
    if (close == std::string_view::npos)
      return refuse(i_, p_.size() - i_, "an unterminated condition");
    const std::string_view id = p_.substr(i_ + 3, close - i_ - 3);
    const size_t length = close + 1 - i_;
    const auto digits = [](std::string_view s) {
      return !s.empty() && std::all_of(s.begin(), s.end(), is_digit);
    };
    const bool name =
        !id.empty() && !is_digit(id[0]) && std::all_of(id.begin(), id.end(), [](char c) {
          return is_ascii_letter(c) || is_digit(c) || c == '_' ||
                 static_cast<unsigned char>(c) >= 0x80;
        });
    if (!digits(id) && !name)
      return refuse(i_, length,
                    "only (?(number)...) and (?(name)...) are Python syntax; PCRE2 would read "
                    "this as another kind of condition");
    if (id == "R" || id == "DEFINE" || id.starts_with("VERSION") ||
        (id[0] == 'R' && digits(id.substr(1))))
      return refuse(i_, length,
                    "only (?(number)...) and (?(name)...) are Python syntax; PCRE2 reads R, Rn, "
                    "DEFINE and VERSION as conditions of its own, whatever the groups' names");
    int number = 0;
    if (name) {
      const auto named = names_.find(id);
      if (named == names_.end()) // PCRE2 would look further on
        return refuse(i_, length, "Python refuses a name no group before it has");
      number = named->second;
    } else {
      if (id.size() > 9 || std::stoi(std::string(id)) == 0) // 0, or more groups than anyone has
        return refuse(i_, length, "Python refuses this group number (bad group number)");
      // A later group's number too, in both; one that no group has is refused by both.
      number = std::stoi(std::string(id));
    }
    if (lookbehind_groups_ >= 0)
      if (Status s = reference(number, i_, length); !s.ok())
        return s;
    open(Group{});
    return copy(length);
  }

  // Inline flags, in Python's grammar: "(?imsxu)" at the very start of the pattern (global), or
  // "(?imsxu-imsx:...)" anywhere (scoped). 'u' is Python's default for str patterns and dropped.
  Status flags() {
    size_t j = i_ + 2;
    std::string on, off;
    bool turning_off = false;
    for (; j < p_.size() && (is_ascii_letter(p_[j]) || p_[j] == '-'); ++j) {
      const char f = p_[j];
      if (f == '-') {
        if (turning_off)
          return refuse(i_, j + 1 - i_, "not Python syntax (missing :)");
        turning_off = true;
        continue;
      }
      if (f == 'a' || f == 'L')
        return refuse(i_, j + 1 - i_,
                      std::string("the flag '") + f +
                          "' (ASCII-only or locale classes) cannot be matched alike");
      if (f == 't')
        return refuse(i_, j + 1 - i_,
                      "the flag 't' (Python's deprecated template mode) is not supported");
      if (f != 'i' && f != 'm' && f != 's' && f != 'x' && f != 'u')
        return refuse(i_, j + 1 - i_, "not Python syntax (unknown flag)");
      if (turning_off && f == 'u')
        return refuse(i_, j + 1 - i_, "Python cannot turn off the flag 'u'");
      std::string& set = turning_off ? off : on;
      if (f != 'u' && set.find(f) == std::string::npos)
        set += f; // once: PCRE2 reads "xx" as another flag than 'x'
    }
    const size_t length = std::min(j + 1, p_.size()) - i_;
    if (j >= p_.size() || j == i_ + 2 || (p_[j] != ')' && p_[j] != ':'))
      return refuse(i_, length, "not Python syntax");
    if (turning_off && (p_[j] != ':' || p_[j - 1] == '-'))
      return refuse(i_, length,
                    p_[j] != ':' ? "not Python syntax (missing :)"
                                 : "not Python syntax (missing flag)");
    for (char f : off)
      if (on.find(f) != std::string::npos)
        return refuse(i_, length, "Python refuses a flag turned on and off");
    if (p_[j] == ')') { // global: for the whole pattern
      // Python 3.11 refuses global flags anywhere else; PCRE2 would apply them from there on.
      if (!at_start_ || !open_.empty())
        return refuse(i_, length,
                      "Python refuses global flags not at the start of the expression; move "
                      "them to the start or scope them, as in (?i:...)");
      apply(on, "");
      if (!on.empty())
        out_ += "(?" + on + ")";
      i_ += length;
      return {};
    }
    at_start_ = false;
    open(Group{});
    apply(on, off);
    out_ += "(?" + on + (off.empty() ? "" : "-" + off) + ":";
    i_ += length;
    return {};
  }

  Status copy(size_t n) {
    out_.append(p_.substr(i_, n));
    i_ += n;
    return {};
  }

  std::string_view p_;
  std::string out_;
  size_t i_ = 0;
  bool in_class_ = false;
  size_t class_first_ = 0;
  int64_t atom_ = -1; ///< the character the last escape or class atom stands for; -1: none
  // The flags in force ((?i), (?x)) and the groups open, each with the flags to restore at its
  // ')'. Python allows global flags only before anything else: `at_start_`.
  bool caseless_ = false, verbose_ = false, uses_caseless_ = false, at_start_ = true;
  // Comments and verbose white space separate tokens (`separator_`: the one just read is one);
  // a quantifier after a quantifier and such a separator is refused (see run()).
  bool separator_ = false, separated_ = false, after_quantifier_ = false;
  std::vector<Group> open_;
  // Capturing groups: how many opened so far, which of them closed (by number), their names, and
  // how many were opened before the outermost look-behind open here (-1: none is).
  int groups_ = 0;
  std::vector<bool> closed_{false};
  std::map<std::string, int, std::less<>> names_;
  int lookbehind_groups_ = -1;
  std::vector<Lookbehind> lookbehinds_;
};

} // namespace

struct KeyPattern::Code {
  pcre2_code* code = nullptr;
  bool caseless = false; ///< see KeyPattern::match()
  ~Code() { pcre2_code_free(code); }
};

Result<std::string> translate_python_pattern(std::string_view python_pattern) {
  auto translated = Translator(python_pattern).run();
  if (!translated)
    return translated.status();
  return std::move(translated->pcre2);
}

Result<KeyPattern> KeyPattern::compile(std::string_view python_pattern) {
  auto translation = Translator(python_pattern).run();
  if (!translation)
    return translation.status();
  const std::string* translated = &translation->pcre2;
  // Newlines are "\n" alone, as in Python: '.', '$' and (?m)'s '^' look at nothing else.
  std::unique_ptr<pcre2_compile_context, void (*)(pcre2_compile_context*)> context(
      pcre2_compile_context_create(nullptr), pcre2_compile_context_free);
  if (!context)
    return Status(Errc::io, "cannot allocate a PCRE2 compile context");
  pcre2_set_newline(context.get(), PCRE2_NEWLINE_LF);
  pcre2_set_bsr(context.get(), PCRE2_BSR_UNICODE);
#if PCRE2_MAJOR > 10 || (PCRE2_MAJOR == 10 && PCRE2_MINOR >= 43)
  // From PCRE2 10.43 a look-behind may vary in width by default; Python's must not (the
  // fixed-width refusal below relies on PCRE2 refusing it too).
  pcre2_set_max_varlookbehind(context.get(), 0);
#endif
  // ANCHORED: re.match tries the start only. UCP: \d \w \b are Unicode, as for Python str (\s is
  // written out, see PYTHON_SPACE).
  // ALT_CIRCUMFLEX: (?m)'s '^' also matches after a final newline, as in Python.
  // MATCH_INVALID_UTF: a key is never an error, whatever bytes it holds.
  const uint32_t options = PCRE2_ANCHORED | PCRE2_UTF | PCRE2_UCP | PCRE2_ALT_CIRCUMFLEX |
                           PCRE2_MATCH_INVALID_UTF | PCRE2_NEVER_BACKSLASH_C;
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  auto code = std::make_shared<Code>();
  code->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated->data()), translated->size(),
                             options, &error_code, &error_offset, context.get());
  if (!code->code && error_code == PCRE2_ERROR_LOOKBEHIND_NOT_FIXED_LENGTH)
    for (const Lookbehind& l : translation->lookbehinds) // PCRE2 points at its '('
      if (l.translated_at == error_offset)
        return refusal(python_pattern, l.at, l.length,
                       "a look-behind must match one fixed width, the same in each of its "
                       "branches (Python: look-behind requires fixed-width pattern)");
  if (!code->code) // the offset is PCRE2's, in the translation when that differs
    return Status(Errc::invalid_argument,
                  "is not a valid regular expression: " + pcre2_message(error_code) +
                      " (near offset " + std::to_string(error_offset) +
                      (*translated == python_pattern
                           ? std::string(")")
                           : " of its PCRE2 form '" + printable(*translated) + "')"));
  code->caseless = translation->caseless;
  KeyPattern pattern;
  pattern.code_ = std::move(code);
  pattern.pattern_ = std::string(python_pattern);
  pattern.pcre2_ = std::move(translation->pcre2);
  return pattern;
}

Result<bool> KeyPattern::match(std::string_view key) const {
  // Under (?i) Python compares characters by its simple lowercase and uppercase, PCRE2 by
  // Unicode case folding: the two differ for some non-ASCII characters (Python matches "x.İ" and
  // "x.ı" with (?i)x\.i, PCRE2 does not). For ASCII keys they agree (see Translator::cased()).
  if (code_->caseless && std::any_of(key.begin(), key.end(),
                                     [](char c) { return static_cast<unsigned char>(c) >= 0x80; }))
    return Status(Errc::unsupported,
                  "'" + printable(key) +
                      "': a case-insensitive pattern ((?i)) cannot be matched as Python's re "
                      "would against a name that is not ASCII: Python's case rules for non-ASCII "
                      "characters are not PCRE2's; spell the cases out instead, e.g. [Mm]odel");
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> data(
      pcre2_match_data_create_from_pattern(code_->code, nullptr), pcre2_match_data_free);
  if (!data)
    return Status(Errc::io, "cannot allocate PCRE2 match data");
  const int rc = pcre2_match(code_->code, reinterpret_cast<PCRE2_SPTR>(key.data()), key.size(), 0,
                             0, data.get(), nullptr);
  if (rc >= 0)
    return true;
  if (rc == PCRE2_ERROR_NOMATCH)
    return false;
  return Status(Errc::unsupported, "'" + printable(key) + "': " + pcre2_message(rc) +
                                       " (Python would keep trying; simplify the pattern)");
}

} // namespace shardshift
