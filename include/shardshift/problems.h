// problems.h: the one way shardshift collects and reports what is wrong with an input.
//
// Validation (the header parser, opening a checkpoint, the planner) reports every problem it finds
// before failing, so one run shows everything that is wrong with a download. Each problem is one
// line shaped `path: tensor 'name': what is wrong`; names come from untrusted files, so they are
// escaped (a name holding a newline or a quote cannot break the one-problem-per-line promise).
// `inspect`, `plan` and `convert` all print the Status that ProblemList::status() renders.
// Thread-safety: values; a ProblemList is filled by one thread at a time.
#pragma once

#include "shardshift/status.h"

#include <string>
#include <string_view>
#include <vector>

namespace shardshift {

/// `text` made safe to print inside quotes on one line: backslashes and single quotes are
/// escaped, control bytes become \xHH; other bytes (UTF-8 text) are kept.
std::string printable(std::string_view text);

struct Problem {
  Errc code = Errc::format;
  std::string path;   ///< the file (or checkpoint) the problem is in; may be empty
  std::string tensor; ///< the tensor's name as found (raw, escaped when rendered); may be empty
  std::string what;   ///< what is wrong and, where it helps, what to do
  /// `path: tensor 'name': what` (parts that are empty are left out).
  std::string render() const;
};

class ProblemList {
public:
  /// Records one problem. `tensor` is the raw name; it is escaped when rendered.
  void add(Errc code, std::string path, std::string tensor, std::string what);
  /// A problem about a tensor of `path`.
  void tensor(Errc code, std::string path, std::string tensor, std::string what) {
    add(code, std::move(path), std::move(tensor), std::move(what));
  }
  /// Takes over the problems of a failed sub-step (its message may hold several, one per line,
  /// already rendered).
  void add(const Status& failed);

  bool empty() const { return lines_.empty(); }
  size_t size() const { return lines_.size(); }
  /// The code of the first problem (Errc::ok when empty).
  Errc code() const { return code_; }
  /// Every problem, one per line. With a `heading`, the heading comes first, followed by
  /// " (N problem(s)):", and each problem is indented by two spaces under it.
  Status status(std::string_view heading = {}) const;
  const std::vector<std::string>& lines() const { return lines_; }

private:
  Errc code_ = Errc::ok;
  std::vector<std::string> lines_;
};

} // namespace shardshift
