// tensor_stream_test: for_each_converted_tensor() hands out exactly the bytes convert() writes,
// tensor by tensor, in pieces that never exceed the bound, and stops when the callback says so.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/synth.h"
#include "shardshift/tensor_stream.h"

#include "test_support.h"

#include <atomic>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using testing::TempDir;

// One tiny checkpoint per model, converted both ways by convert(): what the stream must match.
class TensorStream : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    tmp_ = new TempDir;
    for (const char* model : {"diffusion_gemma", "gemma4_moe"}) {
      SynthOptions so;
      so.out = *tmp_ / (std::string(model) + "-hf");
      so.model = model;
      so.layers = 2;
      so.scale_hidden = so.scale_intermediate = 32;
      so.scale_experts = 16;
      so.scale_vocab = 256;
      so.max_shard_size = 200'000; // several shards, and copy runs that end at shard ends
      ASSERT_TRUE(synth(so, Io::system(), {}).ok());
      ConvertOptions native;
      native.input = so.out;
      native.output = *tmp_ / (std::string(model) + "-native");
      native.plan.max_shard_size = 300'000;
      auto to_native = convert(native);
      ASSERT_TRUE(to_native.ok()) << to_native.status().message();
      ConvertOptions hf; // back: transposes again and writes per-expert scales of ones
      hf.input = native.output;
      hf.output = *tmp_ / (std::string(model) + "-back");
      hf.plan.direction = Direction::to_hf;
      auto to_hf = convert(hf);
      ASSERT_TRUE(to_hf.ok()) << to_hf.status().message();
    }
  }
  static void TearDownTestSuite() {
    delete tmp_;
    tmp_ = nullptr;
  }
  static std::filesystem::path path(const std::string& name) { return *tmp_ / name; }

  // Streams `input` with `plan` and a bound of `max_piece` bytes, reassembles each tensor from its
  // pieces (checking they come in order, back to back, within the bound, with a stable
  // description) and compares every tensor with the one convert() wrote to `converted`.
  static void expect_stream_equals(const std::filesystem::path& input, const PlanOptions& plan,
                                   const std::filesystem::path& converted, uint64_t max_piece) {
    SCOPED_TRACE(input.filename().string() + ", pieces of at most " + std::to_string(max_piece));
    auto out = Checkpoint::open(converted);
    ASSERT_TRUE(out.ok()) << out.status().message();
    std::map<std::string, std::string> streamed;
    std::vector<std::string> order;
    uint64_t calls = 0, too_long = 0, out_of_order = 0, wrong_description = 0;
    StreamOptions options;
    options.max_piece_bytes = max_piece;
    auto result = for_each_converted_tensor(
        input, plan, options,
        [&](const ConvertedTensor& t, std::span<const std::byte> piece, uint64_t offset) {
          ++calls;
          too_long += piece.size() > max_piece;
          std::string& bytes = streamed[std::string(t.name)];
          if (offset == 0 && bytes.empty())
            order.emplace_back(t.name);
          out_of_order += offset != bytes.size();
          bytes.append(reinterpret_cast<const char*>(piece.data()), piece.size());
          auto ref = out->find(t.name);
          if (!ref || out->info(*ref).dtype != t.dtype ||
              !std::equal(t.shape.begin(), t.shape.end(), out->info(*ref).shape.begin(),
                          out->info(*ref).shape.end()) ||
              t.size != out->bytes(*ref).size())
            ++wrong_description;
          return true;
        });
    ASSERT_TRUE(result.ok()) << result.status().message();
    EXPECT_TRUE(result->complete);
    EXPECT_EQ(too_long, 0u);
    EXPECT_EQ(out_of_order, 0u);
    EXPECT_EQ(wrong_description, 0u);
    EXPECT_EQ(result->tensors, out->tensors.size());
    EXPECT_EQ(order.size(), out->tensors.size()) << "each tensor is handed out once";
    uint64_t total = 0;
    for (const auto& [name, ref] : out->tensors) {
      SCOPED_TRACE(name);
      auto expected = out->bytes(ref);
      ASSERT_TRUE(streamed.count(name));
      const std::string& got = streamed[name];
      ASSERT_EQ(got.size(), expected.size());
      EXPECT_EQ(std::memcmp(got.data(), expected.data(), got.size()), 0);
      total += got.size();
    }
    EXPECT_EQ(result->bytes, total);
    // Tensors come in the order a conversion writes them: its files in plan order, each file's
    // tensors in data order.
    auto planned = plan_conversion(input, plan);
    ASSERT_TRUE(planned.ok()) << planned.status().message();
    std::vector<std::string> file_order;
    for (const OutputFile& file : planned->files)
      for (uint32_t t : file.tensors)
        file_order.push_back(planned->tensors[t].name);
    EXPECT_EQ(order, file_order);
    EXPECT_GT(calls, out->tensors.size() - 1);
  }

  static TempDir* tmp_;
};
TempDir* TensorStream::tmp_ = nullptr;

TEST_F(TensorStream, EveryTensorEqualsTheConvertedFileInBothDirections) {
  PlanOptions from_hf;
  from_hf.max_shard_size = 300'000;
  PlanOptions to_hf;
  to_hf.direction = Direction::to_hf;
  for (const char* model : {"diffusion_gemma", "gemma4_moe"}) {
    const std::string m = model;
    expect_stream_equals(path(m + "-hf"), from_hf, path(m + "-native"), 64 << 10);
    expect_stream_equals(path(m + "-native"), to_hf, path(m + "-back"), 64 << 10);
  }
}

TEST_F(TensorStream, PiecesNeverExceedTheBound) {
  // 100 bytes is shorter than one output row of an expert (transform chunks are cut again), 1000
  // is no multiple of a page (copy pieces), 1 GiB holds every tensor whole.
  PlanOptions from_hf;
  from_hf.max_shard_size = 300'000;
  PlanOptions to_hf;
  to_hf.direction = Direction::to_hf;
  for (uint64_t bound : {uint64_t{100}, uint64_t{1000}, uint64_t{1} << 30}) {
    expect_stream_equals(path("diffusion_gemma-hf"), from_hf, path("diffusion_gemma-native"),
                         bound);
    expect_stream_equals(path("gemma4_moe-native"), to_hf, path("gemma4_moe-back"), bound);
  }
}

TEST_F(TensorStream, ReturningFalseStopsAtOnce) {
  for (uint64_t stop_after : {1, 3, 50}) {
    uint64_t calls = 0;
    StreamOptions options;
    options.max_piece_bytes = 1000;
    auto result = for_each_converted_tensor(path("diffusion_gemma-hf"), {}, options,
                                            [&](const ConvertedTensor&, std::span<const std::byte>,
                                                uint64_t) { return ++calls < stop_after; });
    ASSERT_TRUE(result.ok()) << result.status().message();
    EXPECT_EQ(calls, stop_after);
    EXPECT_FALSE(result->complete);
  }
}

TEST_F(TensorStream, ReportsBadArgumentsInputsAndCancellation) {
  auto ignore = [](const ConvertedTensor&, std::span<const std::byte>, uint64_t) { return true; };
  StreamOptions zero;
  zero.max_piece_bytes = 0;
  auto r = for_each_converted_tensor(path("diffusion_gemma-hf"), {}, zero, ignore);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::invalid_argument);

  r = for_each_converted_tensor(path("no-such-checkpoint"), {}, {}, ignore);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("no-such-checkpoint"), std::string::npos)
      << r.status().message();

  PlanOptions unknown;
  unknown.adapter = "no_such_model";
  r = for_each_converted_tensor(path("diffusion_gemma-hf"), unknown, {}, ignore);
  ASSERT_FALSE(r.ok()) << "the plan's errors are the stream's";

  std::atomic<bool> cancel{true};
  StreamOptions cancelled;
  cancelled.cancel = &cancel;
  r = for_each_converted_tensor(path("diffusion_gemma-hf"), {}, cancelled, ignore);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::interrupted);
}

} // namespace
} // namespace shardshift
