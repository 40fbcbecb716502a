// status.h: the one error vocabulary of shardshift.
//
// Every library call that can fail returns a Status or a Result<T>. Both are [[nodiscard]].
// A message is shaped `path: tensor 'name': what went wrong`; validation that finds several
// problems puts one per line. The library never prints and never exits: apps/ maps Errc to exit
// codes. Thread-safety: values; no shared state.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace shardshift {

enum class Errc {
  ok = 0,
  io,               ///< a system call failed (open, read, write, rename...)
  no_space,         ///< the disk is full (ENOSPC, EDQUOT)
  broken_pipe,      ///< the reader of a pipe went away (EPIPE)
  format,           ///< an input file is not valid safetensors / index JSON
  file_changed,     ///< an input file shrank or changed while mapped (SIGBUS)
  plan,             ///< the input does not fit the adapter (missing pieces, shapes, dtypes)
  unsupported,      ///< a valid request shardshift cannot do (e.g. folding an integer tensor)
  invalid_argument, ///< a bad option value (maps to exit code 2 in the app)
  interrupted,      ///< cancelled (Ctrl-C)
  cuda,             ///< a CUDA call failed or no usable GPU
};

/// Short lower-case name of an error code ("io", "format", ...).
const char* errc_name(Errc code);

class [[nodiscard]] Status {
public:
  Status() = default;
  Status(Errc code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok_status() { return {}; }

  bool ok() const { return code_ == Errc::ok; }
  explicit operator bool() const { return ok(); }
  Errc code() const { return code_; }
  const std::string& message() const { return message_; }
  void ignore() const {}

private:
  Errc code_ = Errc::ok;
  std::string message_;
};

inline Status error(Errc code, std::string message) {
  return {code, std::move(message)};
}

/// The system's text for an errno value ("No space left on device"); thread-safe.
std::string errno_text(int err);

/// A value or the Status that explains why there is none.
template <class T> class [[nodiscard]] Result {
public:
  Result(T value) : v_(std::move(value)) {}
  Result(Status status) : v_(std::move(status)) { assert(!std::get<Status>(v_).ok()); }

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  /// The error; an ok Status when there is a value. A reference, so
  /// `const std::string& m = r.status().message();` stays valid as long as `r`.
  const Status& status() const {
    static const Status OK;
    return ok() ? OK : std::get<1>(v_);
  }

private:
  std::variant<T, Status> v_;
};

} // namespace shardshift
