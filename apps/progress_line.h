// progress_line.h: the one progress line of the tool. It is drawn on stderr, rewritten in place,
// only when stderr is a terminal (a log file or a pipe gets no carriage returns), at most five
// times a second, and cut to the terminal's width so it never wraps. clear() (or the destructor)
// erases it, so a summary printed next starts on a clean line.
// Thread-safety: one thread at a time.
#pragma once

#include <chrono>
#include <string_view>

namespace shardshift::app {

class ProgressLine {
public:
  /// Drawn only when `quiet` is false and stderr is a terminal.
  explicit ProgressLine(bool quiet);
  ~ProgressLine() { clear(); }
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  bool enabled() const { return enabled_; }
  /// True when a new line may be drawn now (enabled, and 200 ms since the last one); callers
  /// check it before formatting the text.
  bool due() const;
  /// Replaces the line with `text`.
  void draw(std::string_view text);
  /// Erases the line if one is shown.
  void clear();
  /// Seconds since construction (for rates).
  double elapsed_seconds() const;

private:
  bool enabled_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point start_, last_{};
};

} // namespace shardshift::app
