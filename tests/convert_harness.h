// convert_harness.h: what the convert*_test programs share: running convert() on the CPU, building
// options inline, and the ConvertTest fixture (a seeded generator and a scratch directory).
#pragma once

#include "shardshift/convert.h"

#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "test_support.h"

#include <filesystem>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <random>

#include <gtest/gtest.h>

namespace shardshift::testing {

/// convert() from `in` to `out` on the CPU with `o`'s other settings; a failure's message is
/// printed.
inline Result<ConvertSummary> run(const std::filesystem::path& in, const std::filesystem::path& out,
                                  ConvertOptions o = {}) {
  o.input = in;
  o.output = out;
  o.device = "cpu";
  auto r = convert(o);
  if (!r.ok())
    std::cout << "[ convert ] " << r.status().message() << "\n";
  return r;
}

/// Default options changed by `f`.
inline ConvertOptions opts(std::function<void(ConvertOptions&)> f) {
  ConvertOptions o;
  f(o);
  return o;
}

/// One run of a byte-identity test: -j, --writers and --max-memory.
struct RunSetting {
  unsigned threads, writers;
  uint64_t memory;
};

/// Converts `in` into `out` once per setting (each run's options from `base`, replacing `out`),
/// expecting every run to succeed and every run's files to equal the first's; the last run's
/// output is left in `out` for the caller to check against its reference.
inline void expect_same_files_for_every_setting(const std::filesystem::path& in,
                                                const std::filesystem::path& out,
                                                const ConvertOptions& base,
                                                std::initializer_list<RunSetting> settings) {
  std::optional<std::map<std::string, std::string>> first;
  for (const RunSetting& s : settings) {
    SCOPED_TRACE("-j " + std::to_string(s.threads) + " --writers " + std::to_string(s.writers) +
                 " --max-memory " + std::to_string(s.memory));
    ConvertOptions o = base;
    o.threads = s.threads;
    o.writers = s.writers;
    o.max_memory = s.memory;
    o.force = true;
    auto r = run(in, out, o);
    ASSERT_TRUE(r.ok()) << r.status().message();
    auto files = files_of(out);
    if (!first)
      first = std::move(files);
    else
      EXPECT_TRUE(files == *first);
  }
}

class ConvertTest : public ::testing::Test {
protected:
  void SetUp() override { rng.seed(test_seed()); }
  std::mt19937_64 rng;
  TempDir tmp;
};

} // namespace shardshift::testing

namespace shardshift {

// The names the convert*_test programs (whose tests live in namespace shardshift) use unqualified:
// the harness, the reference's Dict and generators, and fs.
namespace fs = std::filesystem;
using namespace reference;
using testing::ConvertTest;
using testing::expect_same_files_for_every_setting;
using testing::opts;
using testing::run;
using testing::TempDir;

} // namespace shardshift
