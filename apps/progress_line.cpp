#include "progress_line.h"

#include <cstdio>
#include <string>
#include <sys/ioctl.h>
#include <unistd.h>

namespace shardshift::app {

namespace {

// Columns of the terminal on stderr; 80 when it will not say.
size_t terminal_columns() {
  winsize ws{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    return ws.ws_col;
  return 80;
}

} // namespace

ProgressLine::ProgressLine(bool quiet)
    : enabled_(!quiet && ::isatty(STDERR_FILENO) == 1), start_(std::chrono::steady_clock::now()) {}

bool ProgressLine::due() const {
  return enabled_ && std::chrono::steady_clock::now() - last_ >= std::chrono::milliseconds(200);
}

void ProgressLine::draw(std::string_view text) {
  if (!enabled_)
    return;
  last_ = std::chrono::steady_clock::now();
  // One column short of the width: a line that fills the last column wraps on some terminals,
  // and "\r" then returns to the wrong line.
  const size_t columns = terminal_columns();
  if (text.size() >= columns)
    text = text.substr(0, columns - 1);
  std::string line = "\r\x1b[K";
  line += text;
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
  shown_ = true;
}

void ProgressLine::clear() {
  if (!shown_)
    return;
  std::fputs("\r\x1b[K", stderr);
  std::fflush(stderr);
  shown_ = false;
}

double ProgressLine::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

} // namespace shardshift::app
