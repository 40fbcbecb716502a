// cuda_convert_test.cpp: whole conversions are byte-identical between --device cpu and
// --device cuda (and across thread counts and memory budgets on the GPU). Skips without a GPU.
#include "shardshift/convert.h"
#include "shardshift/synth.h"

#include "cuda_transform.h"
#include "test_support.h"
#include "transpose.h"

#include <cstdlib>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::string all_bytes(const fs::path& dir) {
  std::string all;
  for (auto& name : testing::list_dir(dir))
    all += name + ":" + testing::read_bytes(dir / name);
  return all;
}

Result<ConvertSummary> convert_on(const fs::path& in, const fs::path& out,
                                  const std::string& device, unsigned threads = 0,
                                  uint64_t mem = uint64_t{1} << 30,
                                  std::optional<DType> dtype = std::nullopt,
                                  bool wait_for_gpu = true) {
  ConvertOptions o;
  // The GPU opens beside the work by default (gpu_handle.h), and these small conversions can end
  // before it is open; waiting makes them exercise it.
  o.wait_for_gpu = wait_for_gpu;
  o.input = in;
  o.output = out;
  o.device = device;
  o.threads = threads;
  o.max_memory = mem;
  o.plan.expert_dtype = dtype;
  o.plan.max_shard_size = 20'000'000;
  return convert(o);
}

TEST(CudaConvert, DevicesGiveByteIdenticalCheckpoints) {
  if (CudaTransformer::device_count() == 0)
    GTEST_SKIP() << "no usable CUDA device";
  TempDir tmp;
  for (const char* model : {"diffusion_gemma", "gemma4_moe"}) {
    SCOPED_TRACE(model);
    SynthOptions so;
    so.out = tmp / (std::string(model) + "-hf");
    so.model = model;
    so.layers = 3;
    so.seed = testing::test_seed();
    so.scale_hidden = so.scale_intermediate = 4;
    so.scale_experts = 8;
    so.scale_vocab = 16;
    ASSERT_TRUE(synth(so, Io::system(), {}).ok());
    for (std::optional<DType> dtype : {std::optional<DType>(), std::optional<DType>(DType::F16),
                                       std::optional<DType>(DType::F32)}) {
      std::string tag = std::string(model) + (dtype ? std::string(dtype_name(*dtype)) : "keep");
      auto cpu = convert_on(so.out, tmp / (tag + "-cpu"), "cpu", 0, uint64_t{1} << 30, dtype);
      ASSERT_TRUE(cpu.ok()) << cpu.status().message();
      auto gpu = convert_on(so.out, tmp / (tag + "-gpu"), "cuda", 0, uint64_t{1} << 30, dtype);
      ASSERT_TRUE(gpu.ok()) << gpu.status().message();
      // The DeviceRouter measures both devices on the first chunks, so the GPU takes some.
      EXPECT_GT(gpu->gpu_bytes, 0u) << "the GPU transformed nothing";
      EXPECT_EQ(gpu->gpu_bytes + gpu->cpu_bytes, cpu->cpu_bytes);
      // A transpose reads as many elements as it writes: bytes in and out differ by the dtypes.
      const uint64_t in_bits = 16, out_bits = dtype ? dtype_bits(*dtype) : 16;
      EXPECT_EQ(gpu->gpu_input_bytes * out_bits, gpu->gpu_bytes * in_bits) << tag;
      EXPECT_LE(gpu->gpu_in_place_bytes, gpu->gpu_input_bytes) << tag;
      EXPECT_TRUE(all_bytes(tmp / (tag + "-cpu")) == all_bytes(tmp / (tag + "-gpu"))) << tag;
      // And back to HF on the GPU, compared with the CPU again.
      auto back_cpu = convert_on(tmp / (tag + "-cpu"), tmp / (tag + "-back-cpu"), "cpu");
      auto back_gpu = convert_on(tmp / (tag + "-gpu"), tmp / (tag + "-back-gpu"), "cuda:0");
      ASSERT_TRUE(back_cpu.ok() && back_gpu.ok());
      EXPECT_TRUE(all_bytes(tmp / (tag + "-back-cpu")) == all_bytes(tmp / (tag + "-back-gpu")))
          << tag;
    }
    // Small budgets cut experts differently; the bytes must not change.
    for (uint64_t mem : {uint64_t{4} << 20, uint64_t{64} << 20}) {
      fs::path out = tmp / (std::string(model) + "-gpu-" + std::to_string(mem));
      ASSERT_TRUE(convert_on(so.out, out, "cuda", 2, mem).ok());
      EXPECT_TRUE(all_bytes(out) == all_bytes(tmp / (std::string(model) + "keep-cpu"))) << mem;
    }
  }
}

// Without waiting, the GPU joins a run already under way: the buffers made before it opened are
// pinned in place on its opening thread, and chunks reach it only then. The bytes are the same
// whenever it arrives (this run may or may not see it: only the bytes are asserted).
TEST(CudaConvert, AGpuThatOpensDuringTheRunChangesNoByte) {
  if (CudaTransformer::device_count() == 0)
    GTEST_SKIP() << "no usable CUDA device";
  TempDir tmp;
  SynthOptions so;
  so.out = tmp / "hf";
  so.layers = 4;
  so.seed = testing::test_seed();
  so.scale_hidden = so.scale_intermediate = 2;
  so.scale_experts = 4;
  so.scale_vocab = 8;
  ASSERT_TRUE(synth(so, Io::system(), {}).ok());
  auto cpu = convert_on(so.out, tmp / "cpu", "cpu", 2, uint64_t{16} << 20);
  ASSERT_TRUE(cpu.ok()) << cpu.status().message();
  for (int round = 0; round < 3; ++round) {
    const fs::path out = tmp / ("gpu" + std::to_string(round));
    auto gpu = convert_on(so.out, out, "cuda", 2, uint64_t{16} << 20, std::nullopt, false);
    ASSERT_TRUE(gpu.ok()) << gpu.status().message();
    std::printf("round %d: the GPU took %llu of %llu transformed bytes\n", round,
                static_cast<unsigned long long>(gpu->gpu_bytes),
                static_cast<unsigned long long>(gpu->gpu_bytes + gpu->cpu_bytes));
    EXPECT_EQ(gpu->gpu_bytes + gpu->cpu_bytes, cpu->cpu_bytes);
    EXPECT_TRUE(all_bytes(out) == all_bytes(tmp / "cpu")) << round;
  }
}

// DeepSeek-V3 from FP8: the GPU dequantizes stacked expert pieces and dense weights (dequant_cuda)
// with the CPU's bits, whatever the budget cuts and for every --dtype.
TEST(CudaConvert, Fp8DeepSeekIsByteIdenticalOnBothDevices) {
  if (CudaTransformer::device_count() == 0)
    GTEST_SKIP() << "no usable CUDA device";
  TempDir tmp;
  SynthOptions so;
  so.out = tmp / "hf";
  so.model = "deepseek_v3";
  so.layers = 5;
  so.seed = testing::test_seed();
  so.scale_hidden = 14; // H 512: 4 blocks of 128
  so.scale_intermediate = 8;
  so.scale_experts = 32;
  so.scale_vocab = 64;
  ASSERT_TRUE(synth(so, Io::system(), {}).ok());
  for (std::optional<DType> dtype : {std::optional<DType>(), std::optional<DType>(DType::F16),
                                     std::optional<DType>(DType::F32)}) {
    const std::string tag = dtype ? std::string(dtype_name(*dtype)) : "keep";
    auto cpu = convert_on(so.out, tmp / (tag + "-cpu"), "cpu", 0, uint64_t{1} << 30, dtype);
    ASSERT_TRUE(cpu.ok()) << cpu.status().message();
    auto gpu = convert_on(so.out, tmp / (tag + "-gpu"), "cuda", 2, uint64_t{1} << 30, dtype);
    ASSERT_TRUE(gpu.ok()) << gpu.status().message();
    EXPECT_GT(gpu->gpu_bytes, 0u) << "the GPU dequantized nothing";
    // FP8 in: at least one byte read per element written (two bytes in BF16, four in F32); a
    // column range of a transposed weight uploads whole rows.
    const uint64_t out_bytes = dtype ? dtype_bits(*dtype) / 8 : 2;
    EXPECT_GE(gpu->gpu_input_bytes * out_bytes, gpu->gpu_bytes) << tag;
    EXPECT_LE(gpu->gpu_in_place_bytes, gpu->gpu_input_bytes) << tag;
    EXPECT_TRUE(all_bytes(tmp / (tag + "-cpu")) == all_bytes(tmp / (tag + "-gpu"))) << tag;
  }
  // Small budgets cut experts into row ranges (strided pieces on the GPU).
  for (uint64_t mem : {uint64_t{4} << 20, uint64_t{24} << 20}) {
    const fs::path out = tmp / ("gpu-" + std::to_string(mem));
    auto r = convert_on(so.out, out, "cuda", 2, mem);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_TRUE(all_bytes(out) == all_bytes(tmp / "keep-cpu")) << mem;
  }
  // auto: an FP8 plan takes the GPU with at most 4 threads and the CPU beyond, whatever its SIMD
  // kernel (docs/PERFORMANCE.md, "The last file written alone").
  auto a = convert_on(so.out, tmp / "auto", "auto", 2);
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->device.rfind("cuda:0", 0), 0u) << a->device;
  EXPECT_TRUE(all_bytes(tmp / "auto") == all_bytes(tmp / "keep-cpu"));
  auto wide = convert_on(so.out, tmp / "auto-wide", "auto", 8);
  ASSERT_TRUE(wide.ok()) << wide.status().message();
  EXPECT_EQ(wide->device.rfind("cpu", 0), 0u) << wide->device;
}

// --device auto takes the GPU only where it was measured faster (docs/PERFORMANCE.md, "A GPU slot
// free once its work is done", "The last file written alone"): for a plan that dequantizes FP8,
// with at most 4 threads where the
// CPU has a SIMD kernel; on a CPU with only the portable kernels (SHARDSHIFT_SIMD=portable stands
// for one), always. The rule itself is DeviceChoice.* (device_choice_test.cpp); here it opens a
// real GPU, or does not, and the bytes are the same.
TEST(CudaConvert, AutoTakesTheGpuToDequantizeWithFewThreadsOrOnAPortableCpu) {
  if (CudaTransformer::device_count() == 0)
    GTEST_SKIP() << "no usable CUDA device";
  TempDir tmp;
  SynthOptions so;
  so.out = tmp / "ds";
  so.model = "deepseek_v3";
  so.layers = 2;
  so.mtp_layers = 0;
  so.seed = testing::test_seed();
  so.scale_hidden = 14;
  so.scale_intermediate = 8;
  so.scale_experts = 64;
  so.scale_vocab = 64;
  ASSERT_TRUE(synth(so, Io::system(), {}).ok());
  auto few = convert_on(so.out, tmp / "n", "auto", 2);
  ASSERT_TRUE(few.ok()) << few.status().message();
  EXPECT_EQ(few->device.rfind("cuda:0", 0), 0u) << few->device;
  auto wide = convert_on(so.out, tmp / "w", "auto", 8);
  ASSERT_TRUE(wide.ok()) << wide.status().message();
  EXPECT_EQ(wide->device.rfind("cpu", 0), 0u) << wide->device;
  EXPECT_TRUE(all_bytes(tmp / "n") == all_bytes(tmp / "w"));

  SynthOptions gemma;
  gemma.out = tmp / "gemma";
  gemma.layers = 1;
  gemma.scale_hidden = gemma.scale_intermediate = gemma.scale_vocab = 8;
  ASSERT_TRUE(synth(gemma, Io::system(), {}).ok());
  auto transposes = convert_on(gemma.out, tmp / "t", "auto", 2);
  ASSERT_TRUE(transposes.ok()) << transposes.status().message();
  EXPECT_EQ(transposes->device.rfind("cpu", 0), 0u) << transposes->device;
  ::setenv("SHARDSHIFT_SIMD", "portable", 1);
  auto portable = convert_on(gemma.out, tmp / "p", "auto", 8);
  ::unsetenv("SHARDSHIFT_SIMD");
  ASSERT_TRUE(portable.ok()) << portable.status().message();
  EXPECT_EQ(portable->device.rfind("cuda:0", 0), 0u) << portable->device;
  EXPECT_TRUE(all_bytes(tmp / "t") == all_bytes(tmp / "p"));
  auto bad = convert_on(gemma.out, tmp / "m", "cuda:99");
  EXPECT_FALSE(bad.ok());
}

} // namespace
} // namespace shardshift
