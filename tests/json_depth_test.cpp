// json_depth_test.cpp: every JSON reader refuses nesting deeper than MAX_JSON_DEPTH with a format
// error instead of recursing until the stack ends (issue 12, defect 2: a 40 KB index of 20,000
// nested arrays crashed every command with SIGSEGV).
#include "shardshift/checkpoint.h"
#include "shardshift/safetensors.h"

#include "checkpoint_config.h"
#include "json_reader.h"
#include "test_support.h"

#include <string>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

constexpr int DEEP = 20'000;
const char* const TOO_DEEP = "nesting deeper than 64 levels";

std::string nested_arrays(int depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

std::string index_with_metadata(const std::string& value) {
  return R"({"metadata": {"total_size": 4, "x": )" + value +
         R"(}, "weight_map": {"a": "model.safetensors"}})";
}

TEST(JsonDepth, CountsBracketsOutsideStrings) {
  EXPECT_EQ(json::nesting_depth("{}"), 1u);
  EXPECT_EQ(json::nesting_depth(R"({"a": [[1], {"b": []}]})"), 4u);
  EXPECT_EQ(json::nesting_depth(R"({"a": "[[[[{{{{", "b": "\"[[["})"), 1u);
  EXPECT_EQ(json::nesting_depth(nested_arrays(DEEP)), 65u) << "counting stops past the limit";
  EXPECT_EQ(json::precheck(nested_arrays(64)), json::Precheck::ok);
  EXPECT_EQ(json::precheck(nested_arrays(65)), json::Precheck::too_deep);
}

TEST(JsonDepth, IndexRefusesDeepMetadata) {
  for (const std::string& text :
       {index_with_metadata(nested_arrays(DEEP)),
        R"({"other": )" + nested_arrays(DEEP) + R"(, "weight_map": {"a": "model.safetensors"}})"}) {
    auto index = parse_index("m/model.safetensors.index.json", text);
    ASSERT_FALSE(index.ok());
    EXPECT_EQ(index.status().code(), Errc::format);
    EXPECT_NE(index.status().message().find(TOO_DEEP), std::string::npos)
        << index.status().message();
  }
  // Ordinary nesting is still read (and kept as compact JSON text).
  auto index = parse_index("i", index_with_metadata(nested_arrays(10)));
  ASSERT_TRUE(index.ok()) << index.status().message();
}

TEST(JsonDepth, HeaderRefusesDeepNesting) {
  for (const std::string& json :
       {R"({"__metadata__": {"x": )" + nested_arrays(DEEP) + "}}",
        R"({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": )" +
            nested_arrays(DEEP) + "}}"}) {
    const std::string file = testing::raw_safetensors(json, std::string(1, '\0'));
    auto header = parse_header("m.safetensors", std::as_bytes(std::span(file)));
    ASSERT_FALSE(header.ok());
    EXPECT_EQ(header.status().code(), Errc::format);
    EXPECT_NE(header.status().message().find(TOO_DEEP), std::string::npos)
        << header.status().message();
  }
}

TEST(JsonDepth, ConfigRefusesDeepNesting) {
  testing::TempDir tmp;
  testing::write_bytes(tmp / "config.json",
                       R"({"model_type": "gemma4", "x": )" + nested_arrays(DEEP) + "}");
  auto type = read_config_model_type(tmp / "config.json");
  ASSERT_FALSE(type.ok());
  EXPECT_EQ(type.status().code(), Errc::format);
  EXPECT_EQ(type.status().message(),
            (tmp / "config.json").string() +
                ": has nesting deeper than 64 levels of arrays and objects");
  testing::write_bytes(tmp / "config.json",
                       R"({"model_type": "gemma4", "x": )" + nested_arrays(60) + "}");
  EXPECT_EQ(read_config_model_type(tmp / "config.json").value(), "gemma4");
}

TEST(JsonDepth, CheckpointWithDeepIndexFailsToOpen) {
  testing::TempDir tmp;
  std::filesystem::create_directory(tmp / "m");
  testing::write_bytes(
      tmp / "m" / "model.safetensors",
      testing::raw_safetensors(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})",
                               std::string(4, '\1')));
  testing::write_bytes(tmp / "m" / "model.safetensors.index.json",
                       index_with_metadata(nested_arrays(DEEP)));
  auto ckpt = Checkpoint::open(tmp / "m");
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.status().message().find(TOO_DEEP), std::string::npos) << ckpt.status().message();
}

} // namespace
} // namespace shardshift
