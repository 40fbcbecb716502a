// pipeline.cpp: run_pipeline() wires the stage objects into one bounded tbb::parallel_pipeline
// (pipeline.h draws it), and size_pipeline() turns the memory budget into chunks and tokens.
#include "pipeline.h"

#include "buffer_pool.h"
#include "emitter.h"
#include "progress_meter.h"
#include "transform_stage.h"
#include "write_stage.h"

#include <algorithm>
#include <memory>
#include <mutex>

#include <tbb/parallel_pipeline.h>

namespace shardshift {

void size_pipeline(uint64_t max_memory, unsigned threads, unsigned gpu_slots, uint64_t* chunk_bytes,
                   unsigned* tokens) {
  unsigned t = std::max(3u, threads + 2);
  uint64_t chunk = max_memory / (2ull * t + gpu_slots);
  chunk &= ~uint64_t{4095};
  chunk = std::clamp<uint64_t>(chunk, 64 << 10, 64ull << 20);
  *chunk_bytes = chunk;
  *tokens = t;
}

namespace {

// The first failure of any stage; later ones are dropped (they are usually its consequences).
class FailureLatch {
public:
  void fail(Status s) {
    std::lock_guard lock(mu_);
    if (first_.ok())
      first_ = std::move(s);
    failed_ = true;
  }
  bool failed() const { return failed_; }
  Status first() const {
    std::lock_guard lock(mu_);
    return first_;
  }

private:
  mutable std::mutex mu_;
  Status first_;
  std::atomic<bool> failed_{false};
};

} // namespace

Result<PipelineResult> run_pipeline(const Checkpoint& input, const Plan& plan,
                                    const std::filesystem::path& dir, const PipelineConfig& config,
                                    Profiler& profiler) {
  Io& io = config.io ? *config.io : Io::system();
  const bool stream = config.stream_fd >= 0;
  const size_t first = stream ? config.only_file : 0;
  const size_t end = stream ? config.only_file + 1 : plan.files.size();
  uint64_t total = 0;
  for (size_t f = first; f < end; ++f)
    total += plan.files[f].size();

  FailureLatch failure;
  BufferPool pool(config.chunk_bytes, config.gpu);
  Emitter emitter(input, plan, config.chunk_bytes, config.gpu, first, end);
  TransformStage transformer(config.gpu, profiler);
  DirectoryTarget directory(dir);
  StreamTarget stream_target(config.stream_fd);
  WriteStage writer(io, plan, stream ? static_cast<OutputTarget&>(stream_target) : directory,
                    profiler);
  ProgressMeter meter(profiler, pool, config.gpu != nullptr, total,
                      static_cast<uint32_t>(plan.files.size()), config.progress);

  // Stage 1: the next item, with a buffer when it needs one (a token holds at most one).
  auto emit = [&](tbb::flow_control& fc) -> Item* {
    if (!failure.failed() && config.cancel && config.cancel->load())
      failure.fail(Status(Errc::interrupted, "interrupted"));
    const uint64_t t0 = profiler.now();
    std::unique_ptr<Item> item = failure.failed() ? nullptr : emitter.next();
    if (item && (item->kind == ItemKind::transform || item->kind == ItemKind::ones)) {
      auto buffer = pool.acquire();
      if (!buffer) {
        failure.fail(buffer.status());
        item.reset();
      } else {
        item->buffer = item->args.dst = *buffer;
        meter.add_in_flight(item->length);
      }
    }
    if (!item) {
      fc.stop();
      return nullptr;
    }
    profiler.record(Stage::read, t0, profiler.now(),
                    item->kind == ItemKind::transform ? item->length : 0,
                    item->tensor ? std::string_view(item->tensor->name) : std::string_view());
    return item.release();
  };

  // Stage 2: produce the item's bytes.
  auto transform = [&](Item* item) -> Item* {
    if (!failure.failed()) {
      transformer.run(*item);
      if (!item->status.ok())
        failure.fail(item->status);
    }
    return item;
  };

  // Stage 3: write in order, then give back what the item held (input pages, its buffer).
  auto write = [&](Item* raw) {
    std::unique_ptr<Item> item(raw);
    meter.before_write(profiler.now());
    if (!failure.failed())
      if (Status s = writer.write(*item); !s.ok())
        failure.fail(std::move(s));
    if (item->release_length)
      item->shard->file->release(item->release_offset, item->release_length);
    meter.after_write(*item, writer.totals().done);
    if (item->buffer) {
      pool.release(item->buffer);
      meter.sub_in_flight(item->length);
    }
  };

  profiler.name_thread("main");
  tbb::parallel_pipeline(
      config.tokens, tbb::make_filter<void, Item*>(tbb::filter_mode::serial_in_order, emit) &
                         tbb::make_filter<Item*, Item*>(tbb::filter_mode::parallel, transform) &
                         tbb::make_filter<Item*, void>(tbb::filter_mode::serial_in_order, write));
  writer.abandon();
  if (failure.failed())
    return failure.first();
  const WriteTotals& t = writer.totals();
  PipelineResult result;
  result.zero_copy_bytes = t.zero_copy_bytes;
  result.fallback_copy_bytes = t.fallback_copy_bytes;
  result.ones_bytes = t.ones_bytes;
  result.output_bytes = t.output_bytes;
  result.cpu_bytes = transformer.cpu_bytes();
  result.gpu_bytes = transformer.gpu_bytes();
  return result;
}

} // namespace shardshift
