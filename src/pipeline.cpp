#include "pipeline.h"

#include "shardshift/shard_writer.h"

#include "transpose.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sys/mman.h>
#include <vector>

#include <tbb/parallel_pipeline.h>
#include <tbb/task_arena.h>

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

enum class ItemKind { open_file, copy_run, transform, ones, close_file };

struct Item {
  ItemKind kind;
  uint32_t file = 0;
  const OutputTensor* tensor = nullptr; // first tensor of a copy run; the tensor of a chunk
  uint32_t run_tensors = 0;             // copy_run: how many tensors
  const Shard* shard = nullptr;         // copy_run / transform: the input shard
  uint64_t in_offset = 0, length = 0;   // copy_run: file range; transform/ones: output bytes
  TransposeArgs args;                   // transform
  std::byte* buffer = nullptr;
  uint64_t release_offset = 0, release_length = 0; // input range done once this item is written
  bool on_gpu = false;
  Status status;
};

// Buffers for chunk outputs. At most `capacity` are ever live (the pipeline's token count), so
// acquire never waits; they are allocated on first use and reused. With a GPU they are pinned,
// so device-to-host copies land in them directly.
class BufferPool {
public:
  BufferPool(uint64_t bytes, CudaTransformer* gpu) : bytes_(bytes), gpu_(gpu) {}
  ~BufferPool() {
    for (std::byte* p : all_)
      gpu_ ? gpu_->free_pinned(p) : std::free(p);
  }
  Result<std::byte*> acquire() {
    std::lock_guard lock(mu_);
    if (!free_.empty()) {
      std::byte* p = free_.back();
      free_.pop_back();
      return p;
    }
    void* p = gpu_ ? gpu_->alloc_pinned(bytes_) : std::aligned_alloc(4096, bytes_);
    if (!p)
      return Status(Errc::io,
                    "out of memory allocating a " + std::to_string(bytes_) + "-byte buffer");
    all_.push_back(static_cast<std::byte*>(p));
    return static_cast<std::byte*>(p);
  }
  void release(std::byte* p) {
    std::lock_guard lock(mu_);
    free_.push_back(p);
  }
  size_t in_use() {
    std::lock_guard lock(mu_);
    return all_.size() - free_.size();
  }

private:
  uint64_t bytes_;
  CudaTransformer* gpu_;
  std::mutex mu_;
  std::vector<std::byte*> all_, free_;
};

// Walks the plan and cuts it into work items, in output order.
class Emitter {
public:
  Emitter(const Checkpoint& in, const Plan& plan, uint64_t chunk, CudaTransformer* gpu,
          size_t first_file, size_t end_file)
      : in_(in), plan_(plan), chunk_(chunk), gpu_(gpu), f_(first_file), end_(end_file) {}

  std::unique_ptr<Item> next() {
    while (f_ < end_) {
      const OutputFile& file = plan_.files[f_];
      if (!opened_) {
        opened_ = true;
        return make(ItemKind::open_file);
      }
      if (k_ == file.tensors.size()) {
        auto item = make(ItemKind::close_file);
        ++f_;
        k_ = 0;
        opened_ = false;
        return item;
      }
      const OutputTensor& t = plan_.tensors[file.tensors[k_]];
      switch (t.op) {
      case OpKind::copy:
        return copy_run(file);
      case OpKind::ones: {
        auto item = make(ItemKind::ones);
        item->tensor = &t;
        item->length = t.size;
        ++k_;
        return item;
      }
      case OpKind::transpose:
        if (auto item = transform_chunk(t))
          return item;
        break; // an empty tensor: nothing to do, move on
      }
    }
    return nullptr;
  }

private:
  std::unique_ptr<Item> make(ItemKind kind) {
    auto item = std::make_unique<Item>();
    item->kind = kind;
    item->file = static_cast<uint32_t>(f_);
    return item;
  }

  // A run of pass-through tensors that lie back to back in one input shard becomes one copy.
  std::unique_ptr<Item> copy_run(const OutputFile& file) {
    const OutputTensor& first = plan_.tensors[file.tensors[k_]];
    auto item = make(ItemKind::copy_run);
    item->tensor = &first;
    item->shard = &in_.shard(first.source);
    item->in_offset = in_.file_offset(first.source);
    uint64_t end = item->in_offset;
    while (k_ < file.tensors.size()) {
      const OutputTensor& t = plan_.tensors[file.tensors[k_]];
      if (t.op != OpKind::copy || t.source.shard != first.source.shard ||
          in_.file_offset(t.source) != end)
        break;
      end += t.size;
      ++item->run_tensors;
      ++k_;
    }
    item->length = end - item->in_offset;
    item->release_offset = item->in_offset;
    item->release_length = item->length;
    return item;
  }

  // The next chunk of an expert tensor: whole experts when one expert's input and output fit in a
  // chunk, else a range of output rows of a single expert (CPU only: the GPU takes whole experts).
  std::unique_ptr<Item> transform_chunk(const OutputTensor& t) {
    const TensorInfo& src = in_.info(t.source);
    const uint64_t A = src.shape[1], B = src.shape[2];
    const uint64_t es_in = dtype_bits(src.dtype) / 8, es_out = dtype_bits(t.dtype) / 8;
    const uint64_t out_row = A * es_out; // one output row (one input column)
    const uint64_t expert_out = t.cols * out_row;
    const uint64_t expert_in = A * B * es_in;
    if (t.experts == 0 || t.cols == 0 || A == 0) {
      ++k_;
      return nullptr;
    }
    auto item = make(ItemKind::transform);
    item->tensor = &t;
    item->shard = &in_.shard(t.source);
    uint64_t e0 = e_, c0 = c_, ne, nc;
    if (std::max(expert_out, expert_in) <= chunk_) {
      ne = std::min(t.experts - e0, chunk_ / std::max(expert_out, expert_in));
      nc = t.cols;
      e_ += ne;
    } else {
      ne = 1;
      nc = std::min(t.cols - c0, std::max<uint64_t>(1, chunk_ / out_row));
      c_ += nc;
      if (c_ == t.cols) {
        c_ = 0;
        ++e_;
      }
    }
    const uint64_t in_base = in_.file_offset(t.source) + (t.expert_begin + e0) * expert_in;
    TransposeArgs& a = item->args;
    a.src = in_.bytes(t.source).data() + (t.expert_begin + e0) * expert_in;
    a.experts = ne;
    a.A = A;
    a.B = B;
    a.col_begin = t.col_begin + c0;
    a.cols = nc;
    a.src_dtype = src.dtype;
    a.dst_dtype = t.dtype;
    if (t.scale) {
      const TensorInfo& sc = in_.info(*t.scale);
      a.scales = in_.bytes(*t.scale).data() + (t.expert_begin + e0) * (dtype_bits(sc.dtype) / 8);
      a.scale_dtype = sc.dtype;
    }
    item->length = ne * nc * out_row;
    item->on_gpu = gpu_ && nc == t.cols; // the GPU stage works on whole expert matrices
    // The input experts are released once their last output row is written.
    if (c_ == 0) {
      item->release_offset = in_base;
      item->release_length = ne * expert_in;
    }
    item->shard->file->will_need(in_base, ne * expert_in);
    if (e_ == t.experts) {
      e_ = 0;
      ++k_;
    }
    return item;
  }

  const Checkpoint& in_;
  const Plan& plan_;
  uint64_t chunk_;
  CudaTransformer* gpu_;
  size_t f_, end_, k_ = 0;
  bool opened_ = false;
  uint64_t e_ = 0, c_ = 0;
};

void fill_ones(std::byte* dst, DType dtype, uint64_t count) {
  const uint64_t es = dtype_bits(dtype) / 8;
  uint64_t one = 0;
  switch (dtype) {
  case DType::BF16:
    one = 0x3F80;
    break;
  case DType::F16:
    one = 0x3C00;
    break;
  case DType::F32:
    one = 0x3F800000u;
    break;
  case DType::F64:
    one = 0x3FF0000000000000ull;
    break;
  default:
    one = 1;
    break; // integer types
  }
  for (uint64_t i = 0; i < count; ++i)
    std::memcpy(dst + i * es, &one, es); // little-endian
}

} // namespace

Result<PipelineResult> run_pipeline(const Checkpoint& input, const Plan& plan,
                                    const std::filesystem::path& dir, const PipelineConfig& config,
                                    Profiler& profiler) {
  Io& io = config.io ? *config.io : Io::system();
  BufferPool pool(config.chunk_bytes, config.gpu);
  const bool stream = config.stream_fd >= 0;
  Emitter emitter(input, plan, config.chunk_bytes, config.gpu, stream ? config.only_file : 0,
                  stream ? config.only_file + 1 : plan.files.size());
  PipelineResult result;

  std::mutex error_mu;
  Status first_error;
  std::atomic<bool> failed{false};
  auto fail = [&](Status s) {
    std::lock_guard lock(error_mu);
    if (first_error.ok())
      first_error = std::move(s);
    failed = true;
  };

  uint64_t total = 0;
  for (size_t f = 0; f < plan.files.size(); ++f)
    if (!stream || f == config.only_file)
      total += plan.files[f].size();
  std::atomic<uint64_t> in_flight{0};
  std::unique_ptr<ShardWriter> writer;
  uint64_t done = 0;
  uint64_t last_progress = 0, last_write_end = 0;
  std::atomic<uint64_t> gpu_bytes{0}, cpu_bytes{0};

  auto emit = [&](tbb::flow_control& fc) -> Item* {
    if (failed || (config.cancel && config.cancel->load())) {
      if (!failed)
        fail(Status(Errc::interrupted, "interrupted"));
      fc.stop();
      return nullptr;
    }
    uint64_t t0 = profiler.now();
    std::unique_ptr<Item> item = emitter.next();
    if (!item) {
      fc.stop();
      return nullptr;
    }
    if (item->kind == ItemKind::transform || item->kind == ItemKind::ones) {
      auto buf = pool.acquire();
      if (!buf) {
        fail(buf.status());
        fc.stop();
        return nullptr;
      }
      item->buffer = *buf;
      item->args.dst = *buf;
      in_flight += item->length;
    }
    profiler.record(Stage::read, t0, profiler.now(),
                    item->kind == ItemKind::transform ? item->length : 0,
                    item->tensor ? std::string_view(item->tensor->name) : std::string_view());
    return item.release();
  };

  auto transform = [&](Item* item) -> Item* {
    if (failed)
      return item;
    static thread_local const Profiler* named = nullptr;
    if (named != &profiler) {
      profiler.name_thread("worker " +
                           std::to_string(tbb::this_task_arena::current_thread_index()));
      named = &profiler;
    }
    if (item->kind == ItemKind::ones) {
      fill_ones(item->buffer, item->tensor->dtype,
                item->tensor->shape.empty() ? 1 : item->tensor->shape[0]);
      return item;
    }
    if (item->kind != ItemKind::transform)
      return item;
    const uint64_t t0 = profiler.now();
    const MappedFile& file = *item->shard->file;
    // The kernels read the input through the mapping; fault its pages in with one call.
    file.populate(static_cast<uint64_t>(item->args.src - file.bytes().data()),
                  item->args.experts * item->args.A * item->args.B *
                      (dtype_bits(item->args.src_dtype) / 8));
    if (item->on_gpu) {
      CudaTimings tm;
      Status gpu_status;
      Status guard =
          guard_mapped_access(file, [&] { gpu_status = config.gpu->run(item->args, &tm); });
      item->status = guard.ok() ? gpu_status : guard;
      const uint64_t t1 = profiler.now();
      profiler.record(Stage::transform_gpu, t0, t1, item->length, item->tensor->name);
      int track = profiler.track_id("cuda stream " + std::to_string(tm.stream));
      uint64_t t = t0;
      for (auto [stage, ns] : {std::pair{Stage::gpu_stage, tm.stage_ns},
                               {Stage::gpu_h2d, tm.h2d_ns},
                               {Stage::gpu_kernel, tm.kernel_ns},
                               {Stage::gpu_d2h, tm.d2h_ns}}) {
        profiler.record(stage, t, t + ns, item->length, item->tensor->name, track);
        t += ns;
      }
      gpu_bytes += item->length;
    } else {
      item->status = guard_mapped_access(file, [&] { transpose_fold_cpu(item->args); });
      profiler.record(Stage::transform_cpu, t0, profiler.now(), item->length, item->tensor->name);
      cpu_bytes += item->length;
    }
    if (!item->status.ok())
      fail(item->status);
    return item;
  };

  auto write = [&](Item* raw) {
    std::unique_ptr<Item> item(raw);
    const uint64_t t0 = profiler.now();
    if (last_write_end)
      profiler.record(Stage::wait, last_write_end, t0, 0);
    const std::string_view name =
        item->tensor ? std::string_view(item->tensor->name) : std::string_view();
    if (!failed) {
      Status s;
      const OutputFile& file = plan.files[item->file];
      switch (item->kind) {
      case ItemKind::open_file:
        writer = std::make_unique<ShardWriter>(io);
        s = stream ? writer->open_stream(config.stream_fd, file.name, file.header, file.data_size)
                   : writer->open(dir / file.name, file.header, file.data_size);
        done += file.header.size();
        break;
      case ItemKind::copy_run: {
        const MappedFile& in = *item->shard->file;
        bool zero_copy = false;
        auto view = in.view(item->in_offset, item->length);
        if (!view) {
          s = view.status();
          break;
        }
        // Filesystems share extents (reflink) only for whole blocks at block-aligned offsets on
        // both sides. When the plan kept this run's offset modulo 4096, copy the unaligned head
        // and tail separately so the aligned middle can be shared instead of copied.
        uint64_t head = 0, body = item->length;
        const uint64_t out_pos = writer->bytes_written();
        if (item->in_offset % 4096 == out_pos % 4096 && item->length > 2 * 4096) {
          head = (4096 - item->in_offset % 4096) % 4096;
          body = (item->length - head) & ~uint64_t{4095};
        }
        const uint64_t pieces[3][2] = {
            {0, head}, {head, body}, {head + body, item->length - head - body}};
        Status copy_status;
        s = guard_mapped_access(in, [&] {
          for (auto& [off, len] : pieces) {
            if (len == 0 || !copy_status.ok())
              continue;
            copy_status = writer->append_copy(in.fd(), item->in_offset + off, len,
                                              view->subspan(off, len), &zero_copy);
          }
        });
        if (s.ok())
          s = copy_status;
        (zero_copy ? result.zero_copy_bytes : result.fallback_copy_bytes) += item->length;
        profiler.record(Stage::write_copy, t0, profiler.now(), item->length, name);
        done += item->length;
        break;
      }
      case ItemKind::transform:
      case ItemKind::ones:
        s = writer->append({item->buffer, item->length});
        if (item->kind == ItemKind::ones)
          result.ones_bytes += item->length;
        profiler.record(Stage::write_data, t0, profiler.now(), item->length, name);
        done += item->length;
        break;
      case ItemKind::close_file: {
        uint64_t c0 = profiler.now();
        s = writer->finish();
        result.output_bytes += file.size();
        writer.reset();
        profiler.record(Stage::commit, c0, profiler.now(), file.size(), file.name);
        break;
      }
      }
      if (!s.ok())
        fail(s);
    }
    if (item->release_length)
      item->shard->file->release(item->release_offset, item->release_length);
    // Sampled before this item's buffer goes back, so the figure includes the chunk just written.
    const uint64_t flight = in_flight.load();
    if (item->buffer) {
      pool.release(item->buffer);
      in_flight -= item->length;
    }
    const uint64_t now = profiler.now();
    last_write_end = now;
    if (now - last_progress > 200'000'000 || item->kind == ItemKind::close_file) {
      last_progress = now;
      profiler.counter("bytes in flight", now, static_cast<int64_t>(flight));
      profiler.counter(config.gpu ? "pinned buffers in use" : "buffers in use", now,
                       static_cast<int64_t>(pool.in_use()));
      profiler.counter("rss", now, static_cast<int64_t>(current_rss_bytes()));
      if (config.progress) {
        Progress p;
        p.bytes_done = done;
        p.bytes_total = total;
        p.file = item->file + 1;
        p.files = static_cast<uint32_t>(plan.files.size());
        p.in_flight_bytes = flight;
        p.elapsed_s = static_cast<double>(now) / 1e9;
        config.progress(p);
      }
    }
  };

  profiler.name_thread("main");
  tbb::parallel_pipeline(
      config.tokens, tbb::make_filter<void, Item*>(tbb::filter_mode::serial_in_order, emit) &
                         tbb::make_filter<Item*, Item*>(tbb::filter_mode::parallel, transform) &
                         tbb::make_filter<Item*, void>(tbb::filter_mode::serial_in_order, write));
  if (writer)
    writer->abandon();
  if (failed)
    return first_error;
  result.cpu_bytes = cpu_bytes;
  result.gpu_bytes = gpu_bytes;
  return result;
}

} // namespace shardshift
