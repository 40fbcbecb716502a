// problems.cpp: rendering problems, one per line, with untrusted names escaped.
#include "shardshift/problems.h"

#include <cstring>

namespace shardshift {

std::string printable(std::string_view text) {
  static const char* const HEX = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += HEX[c >> 4];
      out += HEX[c & 15];
    } else {
      out += ch;
    }
  }
  return out;
}

std::string Problem::render() const {
  std::string line = path;
  if (!tensor.empty())
    line += (line.empty() ? "" : ": ") + std::string("tensor '") + printable(tensor) + "'";
  if (!what.empty())
    line += (line.empty() ? "" : ": ") + what;
  // `what` is written by shardshift but may quote file content; keep it on one line too.
  for (char& c : line)
    if (c == '\n' || c == '\r')
      c = ' ';
  return line;
}

void ProblemList::add(Errc code, std::string path, std::string tensor, std::string what) {
  if (code_ == Errc::ok)
    code_ = code;
  lines_.push_back(Problem{code, std::move(path), std::move(tensor), std::move(what)}.render());
}

void ProblemList::add(const Status& failed) {
  if (failed.ok())
    return;
  if (code_ == Errc::ok)
    code_ = failed.code();
  const std::string& message = failed.message();
  size_t start = 0;
  while (start <= message.size()) {
    size_t nl = message.find('\n', start);
    if (nl == std::string::npos)
      nl = message.size();
    // A nested list's indentation is dropped: problems are flat, one per line.
    size_t first = message.find_first_not_of(' ', start);
    if (first != std::string::npos && first < nl)
      lines_.push_back(message.substr(first, nl - first));
    start = nl + 1;
  }
}

Status ProblemList::status(std::string_view heading) const {
  if (lines_.empty())
    return {};
  std::string message;
  if (!heading.empty()) {
    message = std::string(heading) + " (" + std::to_string(lines_.size()) + " problem" +
              (lines_.size() > 1 ? "s" : "") + "):";
    for (const std::string& line : lines_)
      message += "\n  " + line;
  } else {
    for (const std::string& line : lines_)
      message += (message.empty() ? "" : "\n") + line;
  }
  return Status(code_, std::move(message));
}

std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r returns the text (possibly not in buf); thread-safe unlike strerror.
  return strerror_r(err, buf, sizeof buf);
}

} // namespace shardshift
