// transform_stage.cpp: running one chunk on the CPU or the CUDA stage, with its profiler spans.
#include "transform_stage.h"

#include "gpu_wait.h"

#include <algorithm>
#include <cstring>
#include <string>

#include <tbb/task_arena.h>

namespace shardshift {

uint64_t one_bits(DType dtype) {
  switch (dtype) {
  case DType::BF16:
    return 0x3F80;
  case DType::F16:
    return 0x3C00;
  case DType::F32:
  case DType::C64: // 1 + 0i: the real part, then a zero imaginary part
    return 0x3F800000u;
  case DType::F64:
    return 0x3FF0000000000000ull;
  case DType::F8_E4M3: // exponent bias 7
    return 0x38;
  case DType::F8_E5M2: // exponent bias 15
    return 0x3C;
  case DType::F8_E4M3FNUZ: // exponent bias 8
  case DType::F8_E5M2FNUZ: // exponent bias 16
    return 0x40;
  case DType::F8_E8M0: // 2^(e - 127)
    return 0x7F;
  default:
    return 1; // integers and BOOL
  }
}

void fill_ones(std::byte* dst, DType dtype, uint64_t count) {
  const uint64_t es = dtype_bits(dtype) / 8;
  const uint64_t one = one_bits(dtype);
  std::memset(dst, 0, count * es);
  for (uint64_t i = 0; i < count; ++i)
    std::memcpy(dst + i * es, &one, std::min<uint64_t>(es, 8)); // little-endian
}

void TransformStage::run(Item& item) {
  // Each worker thread names its profiler track once.
  static thread_local const Profiler* named = nullptr;
  if (named != &profiler_) {
    profiler_.name_thread("worker " + std::to_string(tbb::this_task_arena::current_thread_index()));
    named = &profiler_;
  }
  if (item.kind == ItemKind::ones) {
    fill_ones(item.buffer, item.tensor->dtype,
              item.tensor->shape.empty() ? 1 : item.tensor->shape[0]);
    return;
  }
  if (item.kind != ItemKind::transform)
    return;
  const uint64_t t0 = profiler_.now();
  if (item.quantize) {
    run_quantize(item, t0);
    return;
  }
  // Held to the end of the chunk, the wait for the GPU included: the device is not closed under it.
  const GpuHandle::Use gpu = item.on_gpu ? gpu_for(item) : GpuHandle::Use();
  if (!item.status.ok())
    return;
  if (!item.parts.empty()) {
    if (gpu && dequant_router_.prefer_gpu()) {
      GpuCall call(*this, item, t0);
      if (run_gpu_dequant(item, *gpu, call)) {
        dequant_router_.record(true, item.length, call.thread_ns());
        return;
      }
    }
    run_stack(item, t0);
    if (gpu)
      dequant_router_.record(false, item.length, profiler_.now() - t0);
    return;
  }
  const MappedFile& file = *item.shard->file;
  // The kernels read the input through the mapping; fault its pages in with one call.
  file.populate(static_cast<uint64_t>(item.args.src - file.bytes().data()),
                item.args.experts * item.args.A * item.args.B *
                    (dtype_bits(item.args.src_dtype) / 8));
  // A chunk the GPU can take goes there when the router finds it the cheaper device and a
  // staging slot is free; otherwise the CPU does it. Each records what it cost this thread.
  if (gpu && router_.prefer_gpu()) {
    GpuCall call(*this, item, t0);
    if (run_gpu(item, *gpu, call)) {
      router_.record(true, item.length, call.thread_ns());
      return;
    }
  }
  run_cpu(item, t0);
  if (gpu)
    router_.record(false, item.length, profiler_.now() - t0);
}

// Until the GPU has opened (gpu_handle.h), and once it is retired, its chunks run on the CPU; the
// router compares the devices only while both can run. A GPU that was asked for by name and could
// not be opened fails the run at the next chunk it could have taken, as it would have before any
// work.
GpuHandle::Use TransformStage::gpu_for(Item& item) {
  if (!handle_)
    return {};
  GpuHandle::Use gpu = handle_->use();
  if (!gpu) {
    item.status = handle_->required_status();
    return {};
  }
  return pool_->pinned(item.buffer) ? std::move(gpu) : GpuHandle::Use();
}

TransformStage::GpuCall::GpuCall(TransformStage& stage, const Item& item, uint64_t t0)
    : stage_(stage), item_(item), t0_(t0) {
  if (GpuWait suspend = suspending_wait())
    wait = [this, suspend = std::move(suspend)](const std::function<bool(GpuWake, void*)>& arm) {
      // The part before the wait is this thread's; the rest is recorded by whichever thread
      // the task goes on on.
      suspended_at_ = stage_.profiler_.now();
      stage_.profiler_.record(Stage::transform_gpu, t0_, suspended_at_, item_.length,
                              item_.tensor->name);
      suspend(arm);
      resumed_at_ = stage_.profiler_.now();
      suspended_ = true;
    };
}

uint64_t TransformStage::GpuCall::thread_ns() const {
  return stage_.profiler_.now() - t0_ - (resumed_at_ - suspended_at_);
}

void TransformStage::GpuCall::record(const CudaTimings& tm) {
  Profiler& profiler = stage_.profiler_;
  if (!suspended_) // asleep on the stream, or failed before the wait: one span, the whole call
    profiler.record(Stage::transform_gpu, t0_, profiler.now(), item_.length, item_.tensor->name);
  else // the part after the wait (the bytes were counted with the first)
    profiler.record(Stage::transform_gpu, resumed_at_, profiler.now(), 0, item_.tensor->name);
  // The phases measured on the device, laid end to end on the stream's own track.
  const int track = profiler.track_id("cuda stream " + std::to_string(tm.stream));
  uint64_t t = t0_;
  for (auto [stage, ns] : {std::pair{Stage::gpu_stage, tm.stage_ns},
                           {Stage::gpu_h2d, tm.h2d_ns},
                           {Stage::gpu_kernel, tm.kernel_ns},
                           {Stage::gpu_d2h, tm.d2h_ns}}) {
    profiler.record(stage, t, t + ns, item_.length, item_.tensor->name, track);
    t += ns;
  }
  stage_.gpu_bytes_ += item_.length;
  stage_.gpu_input_bytes_ += tm.input_bytes;
  stage_.gpu_in_place_bytes_ += tm.in_place_bytes;
}

// The GPU takes the chunk when one of its staging slots is free at once; otherwise the CPU does
// it (same bits), so a busy GPU never holds the pipeline back. Only the staging copies read the
// mapping under its SIGBUS guard: the wait for the GPU may go on on another thread.
bool TransformStage::run_gpu(Item& item, CudaTransformer& gpu, GpuCall& call) {
  const MappedFile& file = *item.shard->file;
  const StagingGuard guard = [&file](size_t, const std::function<void()>& copy) {
    return guard_mapped_access(file, copy);
  };
  CudaTimings tm;
  bool ran = false;
  const Status status = gpu.try_run(item.args, guard, call.wait, &tm, &ran);
  if (status.ok() && !ran)
    return false;
  item.status = status;
  call.record(tm);
  return true;
}

namespace {

// Faults in the pages one dequantizing part reads: whole rows [begin, begin + count) of the
// weight, or every row when it is transposed.
void populate_dequant_input(const StackPart& part) {
  const DequantArgs& d = part.dq;
  const MappedFile& file = *part.shard->file;
  const uint64_t es = dtype_bits(d.src_dtype) / 8;
  const uint64_t first = d.transpose ? 0 : d.begin * d.C * es;
  const uint64_t length = (d.transpose ? d.R : d.count) * d.C * es;
  file.populate(static_cast<uint64_t>(d.src - file.bytes().data()) + first, length);
}

// Copies a part's (small) scale tensor out of its mapping under its own file's guard: it may lie
// in another shard than the weight, and a SIGBUS guard names one file.
Status copy_scales(const StackPart& part, std::vector<std::byte>& out) {
  out.resize(part.scale_bytes);
  const std::byte* planned = part.dq.scales;
  return guard_mapped_access(*part.scale_shard->file,
                             [&] { std::memcpy(out.data(), planned, part.scale_bytes); });
}

} // namespace

bool TransformStage::run_gpu_dequant(Item& item, CudaTransformer& gpu, GpuCall& call) {
  for (const StackPart& part : item.parts)
    if (!part.dequant)
      return false;
  std::vector<std::vector<std::byte>> scales(item.parts.size());
  std::vector<CudaDequantPart> parts(item.parts.size());
  for (size_t i = 0; i < item.parts.size(); ++i) {
    if (Status s = copy_scales(item.parts[i], scales[i]); !s) {
      item.status = s;
      return true;
    }
    parts[i].args = item.parts[i].dq;
    parts[i].args.scales = scales[i].data();
    parts[i].dst_offset = item.parts[i].dst_offset;
    populate_dequant_input(item.parts[i]);
  }
  // The GPU stage copies each part's input out of its mapping under that file's guard.
  const StagingGuard guard = [&](size_t i, const std::function<void()>& copy) {
    return guard_mapped_access(*item.parts[i].shard->file, copy);
  };
  CudaTimings tm;
  bool ran = false;
  const Status status =
      gpu.try_run_dequant(parts, item.buffer, item.length, guard, call.wait, &tm, &ran);
  if (status.ok() && !ran)
    return false;
  item.status = status;
  call.record(tm);
  return true;
}

void TransformStage::run_cpu(Item& item, uint64_t t0) {
  item.status = guard_mapped_access(*item.shard->file, [&] { transpose_fold_cpu(item.args); });
  profiler_.record(Stage::transform_cpu, t0, profiler_.now(), item.length, item.tensor->name);
  cpu_bytes_ += item.length;
}

// A stacked chunk is one transpose per piece, each from its own mapping (pieces may be in
// different shards) into its columns of the buffer. The CUDA stage has no strided output rows,
// so these run on the CPU whatever the device (semantics 14.1: the same bits on every device).
void TransformStage::run_stack(Item& item, uint64_t t0) {
  std::vector<std::byte> scales; // a dequantized part's scale tensor, copied under its own guard
  for (StackPart& part : item.parts) {
    const MappedFile& file = *part.shard->file;
    if (part.dequant) {
      run_dequant(item, part, scales);
      if (!item.status.ok())
        break;
      continue;
    }
    const TransposeArgs& a = part.args;
    file.populate(static_cast<uint64_t>(a.src - file.bytes().data()),
                  a.A * a.B * (dtype_bits(a.src_dtype) / 8));
    part.args.dst = item.buffer + part.dst_offset;
    item.status = guard_mapped_access(file, [&] { transpose_fold_cpu(part.args); });
    if (!item.status.ok())
      break;
  }
  profiler_.record(Stage::transform_cpu, t0, profiler_.now(), item.length, item.tensor->name);
  cpu_bytes_ += item.length;
}

// A dequantizing part (semantics 15.3). Its scale tensor may lie in another shard than the
// weight, and the SIGBUS guard covers one file, so the (small) scale tensor is first copied out
// under its own file's guard; the kernel then reads only the weight's mapping.
void TransformStage::run_dequant(Item& item, StackPart& part, std::vector<std::byte>& scales) {
  item.status = copy_scales(part, scales);
  if (!item.status.ok())
    return;
  DequantArgs d = part.dq;
  d.scales = scales.data();
  d.dst = item.buffer + part.dst_offset;
  populate_dequant_input(part);
  item.status = guard_mapped_access(*part.shard->file, [&] { dequant_cpu(d); });
}

// A chunk of a --quantize fp8 output (semantics 15.7), read through the source's mapping under
// its SIGBUS guard. A block with a NaN or an infinity has no FP8 scale: the error names the
// input file, the input tensor and the output weight, then the element.
void TransformStage::run_quantize(Item& item, uint64_t t0) {
  QuantizeArgs q = *item.quantize;
  q.dst = item.buffer;
  Status kernel;
  item.status = guard_mapped_access(*item.shard->file, [&] { kernel = quantize_cpu(q); });
  if (item.status.ok() && !kernel.ok()) {
    const std::string& out = item.tensor->name;
    const std::string weight =
        item.tensor->op == OpKind::quantize_scale && out.ends_with("_scale_inv")
            ? out.substr(0, out.size() - 10)
            : out;
    item.status =
        Status(kernel.code(), item.shard->file_name + ": tensor '" + item.quantize_source +
                                  "': --quantize fp8 of '" + weight + "': " + kernel.message());
  }
  profiler_.record(Stage::transform_cpu, t0, profiler_.now(), item.length, item.tensor->name);
  cpu_bytes_ += item.length;
}

} // namespace shardshift
