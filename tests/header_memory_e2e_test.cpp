// header_memory_e2e_test.cpp: the memory a checkpoint's headers take once parsed and planned is
// part of --max-memory (issue 12, defect 7: 20 shards with 90 MB headers took 3.9 GB under a
// 64 MiB budget). Input whose headers would take more than half the budget is refused before any
// header is parsed, so the process's own peak stays small; what the parsed input and the plan
// hold is taken from the pipeline's share. This program measures its own peak RSS (getrusage),
// so the refusal is its first test.
#include "shardshift/checkpoint.h"
#include "shardshift/profiler.h"

#include "engine.h"
#include "test_support.h"

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::raw_safetensors;
using testing::TempDir;
using testing::write_bytes;

// `shards` files of `tensors` one-element BF16 tensors each: headers of ~100 bytes per 2 bytes of
// data, the shape that makes headers large.
void write_many_tensors(const std::filesystem::path& dir, int shards, int tensors) {
  std::filesystem::create_directories(dir);
  for (int s = 0; s < shards; ++s) {
    std::string json = "{";
    for (int t = 0; t < tensors; ++t) {
      if (t)
        json += ",";
      json += "\"model.decoder.layers." + std::to_string(s) + ".extra.piece_" + std::to_string(t) +
              ".weight\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[" +
              std::to_string(2 * t) + "," + std::to_string(2 * t + 2) + "]}";
    }
    json += "}";
    write_bytes(dir / ("part-" + std::to_string(s) + ".safetensors"),
                raw_safetensors(json, std::string(2 * static_cast<size_t>(tensors), '\1')));
  }
}

TEST(HeaderMemory, HeadersThatWouldNotFitAreRefusedBeforeTheyAreParsed) {
  TempDir tmp;
  write_many_tensors(tmp / "in", 4, 60'000); // ~22 MB of headers, ~300 MB once parsed
  const uint64_t before = peak_rss_bytes();
  constexpr uint64_t BUDGET = 64 << 20;
  auto opened = Checkpoint::open(tmp / "in", BUDGET);
  const uint64_t peak = peak_rss_bytes();
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Errc::unsupported);
  EXPECT_NE(opened.status().message().find("raise it (--max-memory "), std::string::npos)
      << opened.status().message();
  std::cout << "[ peak ] " << ((peak - before) >> 20) << " MiB more while refusing\n";
  EXPECT_LT(peak - before, uint64_t{16} << 20) << "the headers were parsed before the refusal";

  // Without a limit the same input opens (it is valid), and its parsed form is what the check
  // guards against: many times the headers' bytes.
  const uint64_t heap0 = heap_in_use_bytes();
  auto unlimited = Checkpoint::open(tmp / "in");
  ASSERT_TRUE(unlimited.ok()) << unlimited.status().message();
  const uint64_t parsed = heap_in_use_bytes() - heap0;
  std::cout << "[ parsed ] " << (parsed >> 20) << " MiB for 240,000 tensors\n";
  EXPECT_LT(parsed, 22u * HEADER_MEMORY_FACTOR << 20); // the factor covers the parsed form
}

TEST(HeaderMemory, WhatTheInputHoldsComesOutOfThePipelinesShare) {
  ConvertOptions o;
  o.device = "cpu";
  o.max_memory = 256 << 20;
  auto full = configure_engine(o, 4, 8, false, Io::system(), {}, 0);
  ASSERT_TRUE(full.ok());
  auto reduced = configure_engine(o, 4, 8, false, Io::system(), {}, 100 << 20);
  ASSERT_TRUE(reduced.ok());
  EXPECT_LT(reduced->config.chunk_bytes, full->config.chunk_bytes);
  // Memory in flight (the pipeline's formula) plus what is held stays within the budget.
  const PipelineConfig& c = reduced->config;
  EXPECT_LE(uint64_t{c.writers} * c.tokens * 2 * c.chunk_bytes + (100 << 20), o.max_memory);
  auto refused = configure_engine(o, 4, 8, false, Io::system(), {}, 129 << 20);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Errc::unsupported);
  EXPECT_NE(refused.status().message().find("--max-memory 322MiB"), std::string::npos)
      << refused.status().message();
}

} // namespace
} // namespace shardshift
