// checkpoint_config_test.cpp: config.json's model_type is read when a checkpoint is opened, so
// planning does no file I/O; a config that is not JSON gives no model type (the planner then
// refuses unless --adapter is given, semantics 6.1).
#include "shardshift/checkpoint.h"

#include "checkpoint_config.h"
#include "test_support.h"

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::raw_safetensors;
using testing::TempDir;
using testing::write_bytes;

TEST(CheckpointConfig, ReadsModelTypeWhenOpening) {
  TempDir dir;
  write_bytes(dir / "model.safetensors",
              raw_safetensors(R"({"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})",
                              std::string(8, 'x')));
  write_bytes(dir / "config.json", R"({"architectures":["X"],"model_type":"gemma4_moe"})");
  auto c = Checkpoint::open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->config_model_type, "gemma4_moe");
}

TEST(CheckpointConfig, NotJsonOrNoStringModelTypeIsEmpty) {
  TempDir dir;
  for (const char* text : {"not json", "[1, 2]", R"({"model_type": 3})", "{}", ""}) {
    write_bytes(dir / "config.json", text);
    auto t = read_config_model_type(dir / "config.json");
    ASSERT_TRUE(t.ok()) << text;
    EXPECT_EQ(*t, "") << text;
  }
}

// Python's json, which transformers reads config.json with, keeps the last of a repeated key;
// so does shardshift, for the model type, the whole numbers and the dtype. A file simdjson cannot
// read (Python's json takes NaN) says why, so that an adapter needing a value refuses.
TEST(CheckpointConfig, ARepeatedKeyCountsAsItsLastAndAnUnreadableFileSaysWhy) {
  TempDir dir;
  write_bytes(dir / "config.json",
              R"({"model_type": "gemma4_moe", "num_experts": 4, "moe_intermediate_size": 12,
                  "model_type": "qwen3_moe", "num_experts": 8, "moe_intermediate_size": "x",
                  "torch_dtype": "float64", "torch_dtype": "bfloat16", "dtype": null})");
  auto facts = read_config(dir / "config.json");
  ASSERT_TRUE(facts.ok()) << facts.status().message();
  EXPECT_EQ(facts->model_type, "qwen3_moe");
  EXPECT_EQ(facts->counts.at("num_experts"), 8u);
  EXPECT_FALSE(facts->counts.count("moe_intermediate_size")) << "its last value is no number";
  EXPECT_EQ(facts->dtypes,
            (std::map<std::string, std::string, std::less<>>{{"torch_dtype", "bfloat16"}}));
  EXPECT_EQ(facts->error, "");

  write_bytes(dir / "config.json", R"({"model_type": "qwen3_moe", "router_aux_loss_coef": NaN})");
  auto nan = read_config(dir / "config.json");
  ASSERT_TRUE(nan.ok());
  EXPECT_NE(nan->error, "");
  EXPECT_EQ(nan->model_type, "");
}

// The gemma families' model classes build their adapter with text_config's dtype: a composite
// config's "text_config" object is read for it too, under prefixed keys; a later "text_config"
// replaces an earlier one, as in Python, and one that is no object has no dtype.
TEST(CheckpointConfig, TextConfigsDtypeIsReadUnderItsOwnKeys) {
  TempDir dir;
  using Dtypes = std::map<std::string, std::string, std::less<>>;
  write_bytes(dir / "config.json",
              R"({"model_type": "diffusion_gemma", "dtype": "bfloat16",
                  "text_config": {"torch_dtype": "float32", "dtype": 16, "num_experts": 4}})");
  auto facts = read_config(dir / "config.json");
  ASSERT_TRUE(facts.ok()) << facts.status().message();
  EXPECT_TRUE(facts->has_text_config);
  EXPECT_EQ(facts->dtypes, (Dtypes{{"dtype", "bfloat16"},
                                   {"text_config.dtype", "16"},
                                   {"text_config.torch_dtype", "float32"}}));
  EXPECT_EQ(facts->dtype_not_string, std::vector<std::string>{"text_config.dtype"});
  EXPECT_FALSE(facts->counts.count("num_experts")) << "only the top level's numbers are counts";

  write_bytes(dir / "config.json",
              R"({"text_config": {"torch_dtype": "float16", "dtype": 3}, "torch_dtype": "float32",
                  "text_config": {"dtype": "bfloat16"}})");
  auto replaced = read_config(dir / "config.json");
  ASSERT_TRUE(replaced.ok());
  EXPECT_TRUE(replaced->has_text_config);
  EXPECT_EQ(replaced->dtypes,
            (Dtypes{{"text_config.dtype", "bfloat16"}, {"torch_dtype", "float32"}}));
  EXPECT_TRUE(replaced->dtype_not_string.empty());

  write_bytes(dir / "config.json", R"({"text_config": {"dtype": "float16"}, "text_config": null})");
  auto not_object = read_config(dir / "config.json");
  ASSERT_TRUE(not_object.ok());
  EXPECT_FALSE(not_object->has_text_config);
  EXPECT_TRUE(not_object->dtypes.empty());
}

TEST(CheckpointConfig, MissingFileIsAnIoErrorNamingIt) {
  TempDir dir;
  auto t = read_config_model_type(dir / "config.json");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), Errc::io);
  EXPECT_NE(t.status().message().find("config.json: cannot read"), std::string::npos)
      << t.status().message();
}

} // namespace
} // namespace shardshift
