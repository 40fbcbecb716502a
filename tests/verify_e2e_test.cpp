// verify_e2e_test.cpp: `shardshift verify` through the binary: a one-line verdict and exit 0 for
// a converted output (with SHA256SUMS checked), the differences on stdout then "different: ..."
// and exit 1 for a damaged one, --quick saying that it compared headers and sizes only, --json,
// -q, other conversion flags reported as differences, and usage errors (OUT '-') exiting 2.
#include "shardshift/convert.h"

#include "test_support.h"

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <simdjson.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::lines_of;
using testing::run_shardshift;
using testing::shell_quoted;

class VerifyCli : public ::testing::Test {
protected:
  void SetUp() override {
    auto made = run_shardshift("synth " + shell_quoted(tmp / "hf") +
                               " --layers 2 --scale 16 --max-shard-size 2MB -q");
    ASSERT_EQ(made.exit_code, 0) << made.err;
    auto converted = run_shardshift("convert " + paths() + " --checksums -q " + SHARDS);
    ASSERT_EQ(converted.exit_code, 0) << converted.err;
  }
  std::string paths() const { return shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n"); }
  testing::CommandResult verify(const std::string& flags) {
    return run_shardshift("verify " + paths() + " " + flags);
  }
  // Flips a byte of the first transposed tensor in the output, as the plan places it; returns
  // its file, offset and tensor name.
  void damage_expert_tensor(std::string* file, uint64_t* offset, std::string* tensor) {
    PlanOptions o;
    o.max_shard_size = 2'000'000;
    auto plan = plan_conversion(tmp / "hf", o);
    ASSERT_TRUE(plan.ok());
    for (const OutputFile& f : plan->files)
      for (uint32_t i : f.tensors)
        if (plan->tensors[i].op == OpKind::transpose) {
          *file = f.name;
          *offset = f.header.size() + plan->tensors[i].offset + 1001;
          *tensor = plan->tensors[i].name;
          std::fstream out(tmp / "n" / f.name, std::ios::in | std::ios::out | std::ios::binary);
          out.seekg(static_cast<std::streamoff>(*offset));
          char c = 0;
          out.get(c);
          out.seekp(static_cast<std::streamoff>(*offset));
          out.put(static_cast<char>(c ^ 1));
          return;
        }
    FAIL() << "no transposed tensor";
  }

  static constexpr const char* SHARDS = "--max-shard-size 2MB";
  testing::TempDir tmp;
};

TEST_F(VerifyCli, AConvertedOutputIsIdentical) {
  auto r = verify(SHARDS);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 1u) << r.out;
  EXPECT_EQ(lines[0].rfind("identical: ", 0), 0u) << lines[0];
  EXPECT_NE(lines[0].find(" files, "), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("; SHA256SUMS: "), std::string::npos) << lines[0];
  EXPECT_NE(r.err.find("compared "), std::string::npos) << r.err;

  auto quick = verify(std::string(SHARDS) + " --quick");
  EXPECT_EQ(quick.exit_code, 0) << quick.err;
  EXPECT_EQ(quick.out.rfind("identical headers and sizes: ", 0), 0u) << quick.out;
  EXPECT_NE(quick.out.find("(--quick: tensor data not compared)"), std::string::npos);

  auto quiet = verify(std::string(SHARDS) + " -q");
  EXPECT_EQ(quiet.exit_code, 0);
  EXPECT_EQ(quiet.out + quiet.err, "");
}

TEST_F(VerifyCli, ADamagedTensorIsNamedAndExitsOne) {
  std::string file, tensor;
  uint64_t offset = 0;
  damage_expert_tensor(&file, &offset, &tensor);
  auto r = verify(SHARDS);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  const auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_EQ(lines[0], file + ": data differs at byte " + std::to_string(offset) + ", in tensor '" +
                          tensor + "' (byte 1001 of its " +
                          lines[0].substr(lines[0].rfind(' ') + 1));
  EXPECT_EQ(lines[1].rfind("SHA256SUMS: line ", 0), 0u) << lines[1];
  EXPECT_NE(lines[1].find(file + ": FAILED"), std::string::npos) << lines[1];
  EXPECT_EQ(lines[2].rfind("different: 2 differences", 0), 0u) << lines[2];

  // --quick reads no tensor data: it cannot see this, and says what it compared.
  auto quick = verify(std::string(SHARDS) + " --quick");
  EXPECT_EQ(quick.exit_code, 0);
  EXPECT_EQ(quick.out.rfind("identical headers and sizes: ", 0), 0u) << quick.out;
  // Nor does its --json say "identical": a script reading .identical gets null, not true.
  auto quick_json = verify(std::string(SHARDS) + " --quick --json");
  EXPECT_EQ(quick_json.exit_code, 0);
  simdjson::dom::parser quick_parser;
  simdjson::dom::element quick_doc;
  ASSERT_EQ(quick_parser.parse(quick_json.out).get(quick_doc), simdjson::SUCCESS) << quick_json.out;
  EXPECT_TRUE(quick_doc["identical"].is_null()) << quick_json.out;
  EXPECT_TRUE(quick_doc["quick"].get_bool().value());

  auto json = verify(std::string(SHARDS) + " --json");
  EXPECT_EQ(json.exit_code, 1);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(json.out).get(doc), simdjson::SUCCESS) << json.out;
  EXPECT_FALSE(doc["identical"].get_bool().value());
  simdjson::dom::array differences = doc["differences"].get_array().value();
  ASSERT_EQ(differences.size(), 2u);
  simdjson::dom::element first = differences.at(0).value();
  EXPECT_EQ(std::string(first["kind"].get_string().value()), "data");
  EXPECT_EQ(std::string(first["file"].get_string().value()), file);
  EXPECT_EQ(first["offset"].get_uint64().value(), offset);
  EXPECT_EQ(std::string(first["tensor"].get_string().value()), tensor);
  EXPECT_EQ(json.err, "");

  auto quiet = verify(std::string(SHARDS) + " -q");
  EXPECT_EQ(quiet.exit_code, 1);
  EXPECT_EQ(quiet.out, "");
}

TEST_F(VerifyCli, OtherConversionFlagsAreDifferences) {
  // The shards were cut at 2 MB: with the default 5 GB the conversion is one other file.
  auto shards = verify("");
  EXPECT_EQ(shards.exit_code, 1);
  EXPECT_NE(shards.out.find("model.safetensors: missing from OUT"), std::string::npos)
      << shards.out;
  auto dtype = verify(std::string(SHARDS) + " --dtype f32 --quick");
  EXPECT_EQ(dtype.exit_code, 1);
  EXPECT_NE(dtype.out.find("different: "), std::string::npos) << dtype.out;
}

TEST_F(VerifyCli, UsageAndReadErrors) {
  auto stream = run_shardshift("verify " + shell_quoted(tmp / "hf") + " -");
  EXPECT_EQ(stream.exit_code, 2);
  EXPECT_NE(stream.err.find("a stream ('-') cannot be verified"), std::string::npos) << stream.err;
  auto one = run_shardshift("verify " + shell_quoted(tmp / "hf"));
  EXPECT_EQ(one.exit_code, 2);
  auto device = verify("--device cuda:x");
  EXPECT_EQ(device.exit_code, 2);
  auto missing =
      run_shardshift("verify " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "none"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find((tmp / "none").string() + ": cannot open"), std::string::npos)
      << missing.err;
  EXPECT_EQ(missing.out, "");
}

} // namespace
} // namespace shardshift
