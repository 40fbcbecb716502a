// pipeline.cpp: run_pipeline() wires the stage objects into one bounded tbb::parallel_pipeline
// (pipeline.h draws it), and size_pipeline() turns the memory budget into chunks and tokens.
#include "pipeline.h"

#include "buffer_pool.h"
#include "emitter.h"
#include "gpu_retirement.h"
#include "progress_meter.h"
#include "sha256.h"
#include "transform_stage.h"
#include "write_stage.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <linux/magic.h>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <sys/vfs.h>
#include <thread>
#include <vector>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/parallel_pipeline.h>
#include <tbb/task_arena.h>

namespace shardshift {

void size_pipeline(uint64_t max_memory, unsigned threads, unsigned gpu_slots, unsigned writers,
                   uint64_t* chunk_bytes, unsigned* tokens) {
  writers = std::max(1u, writers);
  constexpr uint64_t MIN_CHUNK = 64 << 10;
  uint64_t t = std::max<uint64_t>(3, (uint64_t{threads} + 2 + writers - 1) / writers);
  // No more tokens than the budget holds at the smallest chunk: a -j far beyond the cores would
  // otherwise put more in flight than --max-memory (the chunk stops shrinking at MIN_CHUNK).
  const uint64_t fit = max_memory / MIN_CHUNK;
  if (fit > gpu_slots)
    t = std::min(t, std::max<uint64_t>(3, (fit - gpu_slots) / (2ull * writers)));
  uint64_t chunk = max_memory / (2ull * writers * t + gpu_slots);
  chunk &= ~uint64_t{4095};
  chunk = std::clamp<uint64_t>(chunk, MIN_CHUNK, 64ull << 20);
  *chunk_bytes = chunk;
  *tokens = static_cast<unsigned>(t);
}

unsigned default_writers(unsigned threads, size_t files, bool gpu) {
  // One per thread up to 8 threads, then one per two threads (at least 8).
  const unsigned per_threads = std::max(std::min(threads, 8u), threads / 2);
  size_t lanes = std::min<size_t>({per_threads, files, 16});
  // With the GPU taking the transforms, a lane holds a thread only while it writes, and from 4
  // threads up the cores are not all busy: a few files (at most two per lane) get a lane each,
  // so that none is left to be written by one lane alone at the end.
  if (gpu && threads >= 4 && files <= 2 * size_t{per_threads})
    lanes = std::min<size_t>(files, 16);
  return static_cast<unsigned>(std::max<size_t>(1, lanes));
}

FillMode fill_mode(unsigned threads, unsigned writers, const Io& io, bool tmpfs) {
  if (const char* forced = std::getenv("SHARDSHIFT_FILL")) {
    if (std::string_view(forced) == "write")
      return FillMode::write;
    if (std::string_view(forced) == "mapped")
      return FillMode::mapped;
  }
  if (!tmpfs || !io.maps_writes() || threads < 3 * std::max(1u, writers))
    return FillMode::write;
  return FillMode::mapped;
}

bool on_tmpfs(const std::filesystem::path& dir) {
  struct statfs info;
  std::error_code ec;
  const std::filesystem::path where =
      std::filesystem::exists(dir, ec) || !dir.has_parent_path() ? dir : dir.parent_path();
  return ::statfs(where.empty() ? "." : where.c_str(), &info) == 0 && info.f_type == TMPFS_MAGIC;
}

namespace {

// The first failure of any stage; later ones are dropped (they are usually its consequences).
// The first one also tells the output target (OutputTarget::run_failed).
class FailureLatch {
public:
  explicit FailureLatch(OutputTarget& target) : target_(target) {}
  void fail(Status s) {
    {
      std::lock_guard lock(mu_);
      if (!first_.ok())
        return;
      first_ = std::move(s);
      failed_ = true;
    }
    target_.run_failed();
  }
  bool failed() const { return failed_; }
  Status first() const {
    std::lock_guard lock(mu_);
    return first_;
  }

private:
  OutputTarget& target_;
  mutable std::mutex mu_;
  Status first_;
  std::atomic<bool> failed_{false};
};

// What every lane shares.
struct Shared {
  const Checkpoint& input;
  const Plan& plan;
  const PipelineConfig& config;
  Profiler& profiler;
  Io& io;
  OutputTarget& target;
  FileQueue& queue;
  FailureLatch& failure;
  BufferPool& pool;
  TransformStage& transformer;
  ProgressMeter& meter;
  GpuRetirement& retirement;
};

// One writer lane: a bounded pipeline over the files it takes from the queue. Its stages are the
// member functions below, in the order items pass through them.
class Lane {
public:
  explicit Lane(Shared& s)
      : s_(s), emitter_(s.input, s.plan, s.config.chunk_bytes, s.config.gpu, s.queue),
        writer_(s.io, s.input, s.plan, s.target, s.profiler, s.config.cancel) {}

  WriteTotals run() {
    auto produce =
        tbb::make_filter<void, Item*>(tbb::filter_mode::serial_in_order,
                                      [this](tbb::flow_control& fc) { return emit(fc); }) &
        tbb::make_filter<Item*, Item*>(tbb::filter_mode::parallel,
                                       [this](Item* item) { return transform(item); });
    auto consume = tbb::make_filter<Item*, Item*>(tbb::filter_mode::serial_in_order,
                                                  [this](Item* item) { return write(item); }) &
                   tbb::make_filter<Item*, void>(tbb::filter_mode::parallel,
                                                 [this](Item* item) { give_back(item); });
    if (s_.config.digests)
      tbb::parallel_pipeline(s_.config.tokens, produce &
                                                   tbb::make_filter<Item*, Item*>(
                                                       tbb::filter_mode::serial_in_order,
                                                       [this](Item* i) { return hash(i); }) &
                                                   consume);
    else
      tbb::parallel_pipeline(s_.config.tokens, produce & consume);
    writer_.abandon();
    return writer_.totals();
  }

  /// The last file this lane wrote (UINT32_MAX: none).
  uint32_t last_file() const { return last_file_; }
  /// Bytes it wrote of files other lanes took (emitter.h).
  uint64_t helped_bytes() const { return emitter_.helped_bytes(); }

private:
  // Stage 1: the next item, with a buffer when it needs one (a token holds at most one).
  Item* emit(tbb::flow_control& fc) {
    if (!s_.failure.failed() && s_.config.cancel && s_.config.cancel->load())
      s_.failure.fail(Status(Errc::interrupted, "interrupted"));
    const uint64_t t0 = s_.profiler.now();
    if (s_.config.file_at_a_time && emitter_.between_files())
      while (open_files_.load() > 0 && !s_.failure.failed() &&
             !(s_.config.cancel && s_.config.cancel->load()))
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::unique_ptr<Item> item = s_.failure.failed() ? nullptr : emitter_.next();
    if (item && item->kind == ItemKind::open_file)
      ++open_files_;
    if (item && (item->kind == ItemKind::transform || item->kind == ItemKind::ones)) {
      auto buffer = s_.pool.acquire();
      if (!buffer) {
        s_.failure.fail(buffer.status());
        item.reset();
      } else {
        item->buffer = item->args.dst = *buffer;
        s_.meter.add_in_flight(item->length);
      }
    }
    if (!item) {
      fc.stop();
      s_.retirement.lane_stopped();
      return nullptr;
    }
    s_.profiler.record(Stage::read, t0, s_.profiler.now(),
                       item->kind == ItemKind::transform ? item->length : 0,
                       item->tensor ? std::string_view(item->tensor->name) : std::string_view());
    return item.release();
  }

  // Stage 2: produce the item's bytes.
  Item* transform(Item* item) {
    if (!s_.failure.failed()) {
      s_.transformer.run(*item);
      if (!item->status.ok())
        s_.failure.fail(item->status);
    }
    return item;
  }

  // Stage 2b (--checksums): hash each file's bytes in order, from the buffers and, for copies,
  // from the mapping (the pages the kernel copies from), while stage 3 writes the item before.
  Item* hash(Item* item) {
    if (s_.failure.failed())
      return item;
    const uint64_t t0 = s_.profiler.now();
    switch (item->kind) {
    case ItemKind::open_file:
      sha_.reset();
      sha_.update(s_.plan.files[item->file].header);
      break;
    case ItemKind::copy_run: {
      const MappedFile& in = *item->shard->file;
      auto view = in.view(item->in_offset, item->length);
      in.populate(item->in_offset, item->length); // one call rather than a fault per page
      Status st = view ? guard_mapped_access(in, [&] { sha_.update(*view); }) : view.status();
      if (!st.ok())
        s_.failure.fail(std::move(st));
      break;
    }
    case ItemKind::transform:
    case ItemKind::ones:
      sha_.update({item->buffer, item->length});
      break;
    case ItemKind::close_file:
      (*s_.config.digests)[item->file] = sha_.hex();
      break;
    }
    const bool bytes = item->is_data();
    s_.profiler.record(Stage::hash, t0, s_.profiler.now(), bytes ? item->length : 0);
    return item;
  }

  // Stage 3: write in order.
  Item* write(Item* item) {
    const uint64_t t0 = s_.profiler.now();
    if (last_write_end_)
      s_.profiler.record(Stage::wait, last_write_end_, t0, 0);
    const uint64_t before = writer_.totals().done;
    last_file_ = item->file;
    // Items emitted before a Ctrl-C are not written after it (the emitter stops at the next one).
    if (!s_.failure.failed() && s_.config.cancel && s_.config.cancel->load())
      s_.failure.fail(Status(Errc::interrupted, "interrupted"));
    if (!s_.failure.failed())
      if (Status st = writer_.write(*item); !st.ok())
        s_.failure.fail(std::move(st));
    if (item->kind == ItemKind::close_file)
      --open_files_;
    item->written = writer_.totals().done - before;
    last_write_end_ = s_.profiler.now();
    return item;
  }

  // Stage 4 (parallel): an item of a file filled at its offsets put in place (write_stage.h),
  // then what the written item held given back, off the lane's one writing thread: its input
  // pages (dropping them from the mapping is page-table work that grows with the bytes) and its
  // buffer. Releasing after the write is safe for any later item: a released page that is read
  // again faults back in.
  void give_back(Item* raw) {
    std::unique_ptr<Item> item(raw);
    // A chunk's input is done with once it is transformed, so it goes before the copy into the
    // mapped file (which makes pages of its own); a copy run's input is what is copied.
    const std::shared_ptr<FillingFile> file = item->fill; // fill() takes the item's
    const bool input_first = file && item->kind != ItemKind::copy_run;
    if (input_first)
      give_back_input(*item, file.get());
    if (file)
      if (Status st = writer_.fill(*item, s_.failure.failed()); !st.ok())
        s_.failure.fail(std::move(st));
    if (!input_first)
      give_back_input(*item, file.get());
    s_.meter.wrote(*item, item->written);
    s_.retirement.wrote(s_.meter.done(), s_.profiler.now());
    if (item->buffer) {
      s_.pool.release(item->buffer);
      s_.meter.sub_in_flight(item->length);
    }
  }

  // Where lanes share the file, once no earlier reader of it runs (release_order.h).
  void give_back_input(const Item& item, FillingFile* file) {
    const uint64_t t0 = s_.profiler.now();
    const uint64_t released = file ? Item::release_ranges(file->release.given_back(
                                         item.fill_seq, item.release_after, item.input_ranges()))
                                   : item.release_input();
    if (released)
      s_.profiler.record(Stage::release, t0, s_.profiler.now(), released);
  }

  Shared& s_;
  Emitter emitter_;
  WriteStage writer_;
  Sha256 sha_;
  uint64_t last_write_end_ = 0;
  uint32_t last_file_ = UINT32_MAX;
  std::atomic<unsigned> open_files_{0}; ///< files whose open this lane cut and close not written
};

} // namespace

Result<PipelineResult> run_pipeline(const Checkpoint& input, const Plan& plan,
                                    std::span<const uint32_t> files, OutputTarget& target,
                                    const PipelineConfig& config, Profiler& profiler) {
  uint64_t total = 0;
  for (uint32_t f : files)
    total += plan.files[f].size();
  const unsigned lanes = std::max<unsigned>(
      1, std::min<unsigned>(config.writers, static_cast<unsigned>(files.size())));

  // Lanes help with each other's files where the files are filled at their offsets, and each
  // file's bytes are not hashed in order (--checksums: one lane hashes a file from start to end).
  // SHARDSHIFT_LANES_HELP=no turns it off, for comparisons.
  const char* help_env = std::getenv("SHARDSHIFT_LANES_HELP");
  const bool help = !config.digests && !(help_env && std::string_view(help_env) == "no");
  FileQueue queue(files, plan, target.fills_at_offsets(), help);
  const bool helping = queue.helps() && lanes > 1;
  const uint64_t retire_ahead_ns = helping && config.gpu_retire_ahead_ns == GpuRetirement::AHEAD_NS
                                       ? GpuRetirement::HELPING_AHEAD_NS
                                       : config.gpu_retire_ahead_ns;
  FailureLatch failure(target);
  // The pool may outlive this call: the GPU's closing thread unlocks its buffers.
  auto pool = std::make_shared<BufferPool>(config.chunk_bytes, config.gpu);
  TransformStage transformer(config.gpu, pool.get(), profiler);
  ProgressMeter meter(profiler, *pool, config.gpu != nullptr, total,
                      static_cast<uint32_t>(files.size()), config.progress);
  GpuRetirement retirement(lanes, total, retire_ahead_ns, profiler.now(), [&config, pool] {
    if (config.gpu)
      config.gpu->retire([pool](CudaTransformer& device) { pool->unpin_all(device); });
  });
  Shared shared{input,  plan,      config,  profiler, config.io ? *config.io : Io::system(),
                target, queue,     failure, *pool,    transformer,
                meter,  retirement};

  // Lanes run side by side on the one task arena; each blocks only in its own write calls.
  std::vector<WriteTotals> totals(lanes);
  std::vector<LaneEnd> ends(lanes);
  std::vector<uint64_t> helped(lanes);
  profiler.name_thread("main");
  auto run_lane = [&](unsigned i) {
    Lane lane(shared);
    totals[i] = lane.run();
    ends[i] = {profiler.now(), lane.last_file()};
    helped[i] = lane.helped_bytes();
  };
  auto run_lanes = [&] {
    if (!config.file_at_a_time) {
      tbb::parallel_for(0u, lanes, run_lane);
      return;
    }
    // Lanes that wait on commands (--pipe-to): a task per lane (simple_partitioner), each run in
    // isolation, so that a thread waiting inside one lane's pipeline runs only that lane's tasks
    // and never starts another lane nested on its stack, where a lane waiting on its command
    // would hold up both.
    tbb::parallel_for(
        tbb::blocked_range<unsigned>(0, lanes, 1),
        [&](const tbb::blocked_range<unsigned>& range) {
          for (unsigned i = range.begin(); i != range.end(); ++i)
            tbb::this_task_arena::isolate([&] { run_lane(i); });
        },
        tbb::simple_partitioner());
  };
  if (config.arena_threads) { // the default arena has one thread per core, whatever the limit
    tbb::task_arena arena(static_cast<int>(config.arena_threads));
    arena.execute(run_lanes);
  } else {
    run_lanes();
  }
  if (failure.failed())
    return failure.first();
  // An input rewritten in place while it was read (at the same size: no page vanished, so no
  // SIGBUS) gives bytes of both versions. Asked here, before the caller commits OUT, delivers the
  // index or ends the archive, so such a run fails as a truncated input does.
  if (Status s = input.unchanged(); !s)
    return s;
  // A GPU asked for by name that could not be opened fails the run even if no chunk noticed
  // (the CPU did them all while it was opening), as it would have before any work.
  if (config.gpu && config.gpu->required()) {
    config.gpu->wait();
    if (Status s = config.gpu->required_status(); !s)
      return s;
  }

  PipelineResult result;
  for (const WriteTotals& t : totals) {
    result.zero_copy_bytes += t.zero_copy_bytes;
    result.fallback_copy_bytes += t.fallback_copy_bytes;
    result.ones_bytes += t.ones_bytes;
    result.output_bytes += t.output_bytes;
  }
  result.cpu_bytes = transformer.cpu_bytes();
  result.gpu_bytes = transformer.gpu_bytes();
  result.gpu_in_place_bytes = transformer.gpu_in_place_bytes();
  result.gpu_input_bytes = transformer.gpu_input_bytes();
  for (uint64_t h : helped)
    result.helped_bytes += h;
  std::sort(ends.begin(), ends.end(),
            [](const LaneEnd& a, const LaneEnd& b) { return a.end_ns < b.end_ns; });
  result.lanes = std::move(ends);
  return result;
}

} // namespace shardshift
