// safetensors_build_test.cpp: header construction (build_header): exact text, offsets, padding,
// escaping, and what it refuses.
#include "shard_writer_support.h"
#include "test_support.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using namespace writer_test;

// ---------------------------------------------------------------------------------------------
// build_header

TEST(BuildHeader, ExactTextOrderAndOffsets) {
  std::vector<PlannedTensor> tensors = {{"b", DType::BF16, {2, 3}},
                                        {"a", DType::F32, {}},
                                        {"c", DType::U8, {0, 4}},
                                        {"d", DType::I64, {5}}};
  auto header = build_header(tensors, {});
  ASSERT_TRUE(header.ok()) << header.status().message();
  const std::string json = R"({"__metadata__":{"format":"pt"},)"
                           R"("b":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},)"
                           R"("a":{"dtype":"F32","shape":[],"data_offsets":[12,16]},)"
                           R"("c":{"dtype":"U8","shape":[0,4],"data_offsets":[16,16]},)"
                           R"("d":{"dtype":"I64","shape":[5],"data_offsets":[16,56]}})";
  std::string text = header_json(header.value());
  ASSERT_GE(text.size(), json.size());
  EXPECT_EQ(text.substr(0, json.size()), json);
  EXPECT_EQ(text.find_first_not_of(' ', json.size()), std::string::npos) << "padding is spaces";
  EXPECT_LT(text.size() - json.size(), 8u);
  EXPECT_EQ(header_length(header.value()), text.size());
}

TEST(BuildHeader, PadsTheDataStartToEightBytes) {
  for (size_t name_length = 1; name_length <= 24; ++name_length) {
    std::vector<PlannedTensor> tensors = {{std::string(name_length, 'x'), DType::F16, {3}}};
    auto header = build_header(tensors, {});
    ASSERT_TRUE(header.ok());
    EXPECT_EQ(header->size() % 8, 0u) << name_length;
    EXPECT_EQ(header_length(header.value()) + 8, header->size());
  }
}

TEST(BuildHeader, DataStartModulo4096) {
  std::vector<PlannedTensor> tensors = {{"weight", DType::BF16, {16, 16}}};
  for (uint64_t mod : {0u, 7u, 8u, 100u, 512u, 4095u}) {
    HeaderOptions options;
    options.data_start_mod_4096 = mod;
    auto header = build_header(tensors, options);
    ASSERT_TRUE(header.ok()) << mod;
    EXPECT_EQ(header->size() % 4096, mod);
    EXPECT_EQ(header_length(header.value()) + 8, header->size());
    // Still a header the reader accepts.
    std::string file = header.value() + std::string(512, '\x11');
    auto parsed = parse_header("mod.safetensors", as_span(file));
    ASSERT_TRUE(parsed.ok()) << parsed.status().message();
    EXPECT_EQ(parsed->data_start % 4096, mod);
  }
  HeaderOptions bad;
  bad.data_start_mod_4096 = 4096;
  EXPECT_EQ(build_header(tensors, bad).status().code(), Errc::invalid_argument);
}

TEST(BuildHeader, EscapesNamesAndMetadata) {
  const std::string name =
      std::string("q\"uote\\back\nline\x01\x1f") + "\xC3\xA9\xE2\x82\xAC" + "\xF0\x9F\x98\x80";
  HeaderOptions options;
  options.metadata = {{"format", "pt"}, {"note", "tab\there \"x\""}};
  std::vector<PlannedTensor> tensors = {{name, DType::U8, {1}}};
  auto header = build_header(tensors, options);
  ASSERT_TRUE(header.ok()) << header.status().message();
  const std::string expected_name =
      R"("q\"uote\\back\nline\u0001\u001f)" + std::string("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"");
  EXPECT_NE(header->find(expected_name), std::string::npos) << header.value();
  EXPECT_NE(header->find(R"("note":"tab\there \"x\"")"), std::string::npos) << header.value();

  std::string file = header.value() + "A";
  auto parsed = parse_header("escape.safetensors", as_span(file));
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  ASSERT_EQ(parsed->tensors.size(), 1u);
  EXPECT_EQ(parsed->tensors[0].name, name);
  EXPECT_EQ(parsed->metadata, options.metadata);
}

TEST(BuildHeader, NoMetadataObjectWhenEmpty) {
  HeaderOptions options;
  options.metadata.clear();
  std::vector<PlannedTensor> tensors = {{"x", DType::U8, {2}}};
  auto header = build_header(tensors, options);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->find("__metadata__"), std::string::npos);
  EXPECT_EQ(header_json(header.value()).substr(0, 5), R"({"x":)");
}

TEST(BuildHeader, Rejects) {
  auto rejects = [](std::vector<PlannedTensor> tensors, const std::string& fragment,
                    HeaderOptions options = {}) {
    auto header = build_header(tensors, options);
    ASSERT_FALSE(header.ok()) << fragment;
    EXPECT_EQ(header.status().code(), Errc::invalid_argument);
    EXPECT_NE(header.status().message().find(fragment), std::string::npos)
        << header.status().message();
  };
  rejects({{"__metadata__", DType::U8, {1}}}, "'__metadata__'");
  rejects({{"a", DType::U8, {1}}, {"b", DType::U8, {1}}, {"a", DType::F32, {2}}},
          "tensor 'a': duplicate");
  rejects({{"huge", DType::BF16, {uint64_t{1} << 40, uint64_t{1} << 40}}}, "tensor 'huge'");
  // Each size fits in 64 bits (bits included), the running sum does not: 8 x (2^61 - 1) bytes
  // still fit, the ninth tensor overflows.
  std::vector<PlannedTensor> many;
  for (int i = 0; i < 9; ++i)
    many.push_back({"t" + std::to_string(i), DType::U8, {(uint64_t{1} << 61) - 1}});
  rejects(many, "tensor 't8': data offsets overflow");
  rejects({{"odd", DType::F4, {3}}}, "tensor 'odd'");
  rejects({{"bad\xC3", DType::U8, {1}}}, "UTF-8");
  HeaderOptions dup_meta;
  dup_meta.metadata = {{"format", "pt"}, {"format", "np"}};
  rejects({{"a", DType::U8, {1}}}, "duplicate metadata key", dup_meta);
  rejects({{std::string(MAX_HEADER_BYTES, 'n'), DType::U8, {1}}}, "exceeds");
}

} // namespace
} // namespace shardshift
