// engine.cpp: picking the device and splitting the memory budget for one run of the pipeline.
#include "engine.h"

#include "driver_files.h"
#include "outputs.h"
#include "transpose.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string_view>

namespace shardshift {

namespace {

// Whether the device option may open a GPU for this plan: a device named, or auto where it takes
// the GPU (auto_uses_gpu) and the NVIDIA driver's device nodes exist (Linux: /dev/nvidiactl; WSL:
// /dev/dxg; without them there is no GPU to find, and auto stays on the CPU without starting the
// opening or sizing for it).
bool may_open_gpu(const std::string& device, unsigned threads, bool dequantizes) {
  if (device == "cpu")
    return false;
  if (device != "auto")
    return true;
  return auto_uses_gpu(threads, detect_simd_level(), dequantizes) &&
         (std::filesystem::exists("/dev/nvidiactl") || std::filesystem::exists("/dev/dxg"));
}

// Starts opening the CUDA stage when the device option asks for (or allows) it; nullptr means
// CPU. The GPU opens beside the work (gpu_handle.h): a device that fails to open is found out on
// the opening thread, and fails the run only when it was asked for by name.
Result<std::unique_ptr<GpuHandle>> open_device(const std::string& device, unsigned threads,
                                               bool dequantizes, uint64_t chunk, unsigned slots,
                                               bool count_first, bool owns_device,
                                               Profiler* profiler) {
  if (!may_open_gpu(device, threads, dequantizes))
    return std::unique_ptr<GpuHandle>();
  if (owns_device) // before counting the devices starts the driver (driver_files.h)
    gpu_driver_files_before_cuda();
  auto parsed = parse_device(device);
  if (!parsed)
    return parsed.status();
  const int ordinal = std::max(0, *parsed);
  // Counting devices is the driver's start (0.1-0.2 s on the H200 host). Where the output is a
  // stream (stdout, commands), it comes before the work, so that a device asked for by name and
  // missing is told before a stream has begun. Into a directory it is part of the opening,
  // beside the work: a missing device fails the run at the first chunk it could have taken (or
  // at its end), before anything is committed under OUT.
  if (count_first) {
    const int count = CudaTransformer::device_count();
    if (device == "auto" && count == 0)
      return std::unique_ptr<GpuHandle>();
    if (device != "auto")
      if (Status s = check_device_count(device, ordinal, count); !s)
        return s;
  }
  return std::make_unique<GpuHandle>(ordinal, chunk, slots, device != "auto", device, owns_device,
                                     profiler);
}

} // namespace

Result<PlannedInput>
open_and_plan(const std::filesystem::path& input, const PlanOptions& options, uint64_t max_memory,
              const std::function<void(const std::vector<std::string>&)>& warnings,
              Profiler& profiler) {
  const uint64_t t0 = profiler.now();
  const uint64_t heap_before = heap_in_use_bytes();
  auto opened = open_for_plan(input, options, max_memory);
  if (!opened)
    return opened.status();
  profiler.record(Stage::plan, t0, profiler.now(), 0, "open_checkpoint");
  if (warnings && !opened->warnings.empty())
    warnings(opened->warnings);
  auto planned = make_plan(*opened, options, &profiler);
  if (!planned)
    return planned.status();
  PlannedInput p{std::move(opened.value()), std::move(planned.value()), 0};
  p.held = std::max(heap_in_use_bytes(), heap_before) - heap_before;
  return p;
}

bool plan_dequantizes(const Plan& plan) {
  for (const OutputTensor& t : plan.tensors) {
    if (t.op == OpKind::dequant)
      return true;
    for (const StackPiece& p : t.pieces)
      if (p.scale)
        return true;
  }
  return false;
}

// The GPU only where it was measured faster. A GPU chunk costs its thread only the staging (the
// task is suspended while the GPU works, and its slot is free again once the GPU is done), but
// opening the device costs the process about 0.35 s of CPU, and its bytes still cross host
// memory, which the writer lanes share. FP8 dequantization is arithmetic the GPU takes off the
// CPU: with 2 threads DeepSeek-V3 ran 1.13-1.14x faster on the GPU (and 0.99-1.09x on earlier
// hosts and code); with 4, 1.15x once the GPU's runs write a few files with a lane each (even
// before: "The last file written alone"), with 16 slower. Transposes cost the
// CPU about what the staging costs: diffusion_gemma with 2 threads ran 0.85-0.94x (0.94-1.11x on
// earlier code), slower with more. Where the two are even, the CPU holds less memory (about
// 0.4 GB against 0.9 GB at 2 threads). A CPU with only the portable kernels always gains.
bool auto_uses_gpu(unsigned threads, SimdLevel simd, bool dequantizes) {
  constexpr unsigned MOST_THREADS = 4;
  return simd == SimdLevel::portable || (dequantizes && threads <= MOST_THREADS);
}

std::string Engine::device() const {
  return gpu ? gpu->description()
             : std::string("cpu (") + simd_level_name(detect_simd_level()) + ")";
}

Result<Engine> configure_engine(const ConvertOptions& options, unsigned threads, size_t files,
                                bool dequantizes, Io& io, const ConvertCallbacks& callbacks,
                                uint64_t held, Profiler* profiler) {
  // The advice is the smallest budget in whole MiB that passes this check, 2 * held rounded up
  // (not 64 MiB more, as it once said: the other half is the data in flight, and the pipeline
  // sizes its chunks to it). `held` is measured for this input and these options, and
  // --max-memory does not change it, so the same command with the advised budget measures the
  // same figure and passes. (Other flags may move it by a few hundred bytes: -q, say.)
  constexpr uint64_t MIB = uint64_t{1} << 20;
  if (held > options.max_memory / 2)
    return Status(Errc::unsupported,
                  "the parsed input and its plan take " + std::to_string(held) +
                      " bytes, more than half of the memory budget of " +
                      std::to_string(options.max_memory) +
                      " bytes, leaving too little for the data in flight; raise it (--max-memory " +
                      std::to_string((2 * held + MIB - 1) / MIB) + "MiB)");
  const uint64_t budget = options.max_memory - held;
  Engine e;
  PipelineConfig& c = e.config;
  c.writers = options.writers ? options.writers
                              : default_writers(threads, files,
                                                may_open_gpu(options.device, threads, dequantizes));
  if (!options.pipe_to.empty()) // each lane feeds one command: --uploads of them at once
    c.writers = options.uploads ? options.uploads : 4;
  if (options.format == OutputFormat::tar) // one stream, its entries in order
    c.writers = 1;
  c.writers =
      static_cast<unsigned>(std::clamp<size_t>(files, 1, c.writers)); // a lane per file at most
  // The GPU stage is bound by host memory traffic (each byte is staged into pinned memory, then
  // uploaded and downloaded), so it wants about one staging slot per core doing those copies.
  const unsigned gpu_slots = options.device == "cpu" ? 0 : std::clamp(threads, 2u, 16u);
  const bool stream = is_stream(options) || !options.pipe_to.empty();
  // The staging directory the files are written in lies beside OUT.
  c.fill = stream ? FillMode::write
                  : fill_mode(threads, c.writers, io, on_tmpfs(options.output.parent_path()));
  size_pipeline(budget, threads, gpu_slots, c.writers, &c.chunk_bytes, &c.tokens);
  auto gpu = open_device(options.device, threads, dequantizes, c.chunk_bytes, gpu_slots, stream,
                         options.owns_gpu, profiler);
  if (!gpu)
    return gpu.status();
  e.gpu = std::move(gpu.value());
  if (e.gpu && options.wait_for_gpu) {
    e.gpu->wait();
    if (Status s = e.gpu->required_status(); !s)
      return s;
    if (!e.gpu->opened()) // auto, and it did not open
      e.gpu.reset();
  }
  if (!e.gpu) // the CPU alone: no staging slots to budget for
    size_pipeline(budget, threads, 0, c.writers, &c.chunk_bytes, &c.tokens);
  c.gpu = e.gpu.get();
  // Waiting for the GPU (tests and benchmarks of its path) also keeps it to the last chunk, as
  // SHARDSHIFT_GPU_CLOSE=late does (for comparisons: the closing after the last chunk).
  const char* close = std::getenv("SHARDSHIFT_GPU_CLOSE");
  if (options.wait_for_gpu || (close && std::string_view(close) == "late"))
    c.gpu_retire_ahead_ns = 0;
  c.io = &io;
  c.cancel = options.cancel;
  c.progress = callbacks.progress;
  return e;
}

} // namespace shardshift
