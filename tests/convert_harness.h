// convert_harness.h: what the convert*_test programs share: running convert() on the CPU, building
// options inline, and the ConvertTest fixture (a seeded generator and a scratch directory).
#pragma once

#include "shardshift/convert.h"

#include "reference/checkpoint_files.h"
#include "reference/convert_reference.h"
#include "test_support.h"

#include <filesystem>
#include <functional>
#include <iostream>
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
using testing::opts;
using testing::run;
using testing::TempDir;

} // namespace shardshift
