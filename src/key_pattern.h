// key_pattern.h: a tensor-name pattern with the meaning of Python's re.match, for --exclude.
//
// The reference (NeMo Automodel) drops keys with re.match(pattern, key). shardshift compiles the
// same text with PCRE2, the engine closest to Python's `re`, anchored at the start only, in UTF
// mode with Unicode classes (\d, \w, \b as in Python 3 str patterns). The spellings whose meaning
// differs are translated first (\Z -> \z, {,n} -> {0,n}, \v, \uXXXX, \UXXXXXXXX, \s and \S
// written out as classes of exactly Python's whitespace, a look-behind's branches grouped so that
// PCRE2 wants one width for all), and every construct that would still match differently, that
// Python does not have (POSIX classes, octal and multi-digit escapes, PCRE2-only groups, verbs and
// conditions, letter escapes Python does not know) or that Python 3.11 refuses (global flags not at
// the start, references to groups not yet closed, ...) is refused with an error naming it, so a
// pattern never silently keeps or drops different keys than the reference would. Under (?i) the
// two engines' case rules differ for some non-ASCII characters: match() fails on such keys.
// Thread-safety: a compiled KeyPattern is immutable; match() may be called from any thread.
#pragma once

#include "shardshift/status.h"

#include <memory>
#include <string>
#include <string_view>

namespace shardshift {

class KeyPattern {
public:
  /// Translates and compiles `python_pattern`. Fails (Errc::invalid_argument) with a message
  /// naming the construct that Python and PCRE2 would read differently ("cannot be matched as
  /// Python's re would: ...") or PCRE2's own error ("is not a valid regular expression: ..."),
  /// worded to follow the pattern's name.
  static Result<KeyPattern> compile(std::string_view python_pattern);

  /// Whether re.match(pattern, key) would match. Fails (Errc::unsupported, naming the key) when
  /// PCRE2 gives up (its backtracking limit), where Python would keep searching, and when the
  /// pattern is case-insensitive ((?i) anywhere) and the key is not ASCII, whose case Python and
  /// PCRE2 compare by different rules.
  Result<bool> match(std::string_view key) const;

  const std::string& pattern() const { return pattern_; }  ///< as the user wrote it
  const std::string& translated() const { return pcre2_; } ///< as PCRE2 compiles it

private:
  struct Code;
  std::shared_ptr<const Code> code_;
  std::string pattern_, pcre2_;
};

/// The PCRE2 spelling of a Python `re` pattern, or the reason it has none (see above).
Result<std::string> translate_python_pattern(std::string_view python_pattern);

} // namespace shardshift
