// fuzz_support.h: what the libFuzzer targets share. A target may only crash (and so report a bug)
// through check(): the library itself must turn every input into a value or an error.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace shardshift::fuzz {

/// Stops the run with `what` when a property of a successful parse or plan does not hold. libFuzzer
/// saves the input that got here, like any crash.
inline void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz property failed: %s\n", what);
    std::abort();
  }
}

} // namespace shardshift::fuzz
