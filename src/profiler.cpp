#include "shardshift/profiler.h"

#include "shardshift/json_text.h"
#include "shardshift/shard_writer.h"

#include "temp_name.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fcntl.h>
#include <functional>
#include <malloc.h>
#include <optional>
#include <sys/resource.h>
#include <unistd.h>

#include <boost/iostreams/filter/gzip.hpp>
#include <boost/iostreams/operations.hpp>

namespace shardshift {

const char* stage_name(Stage stage) {
  static const char* const NAMES[STAGE_COUNT] = {
      "plan",       "read",     "transform_cpu", "transform_gpu", "gpu_stage", "gpu_h2d",
      "gpu_kernel", "gpu_d2h",  "write_copy",    "write_data",    "commit",    "wait",
      "hash",       "gpu_open", "gpu_close",     "release",       "open"};
  return NAMES[static_cast<int>(stage)];
}

struct Profiler::ThreadBuffer {
  int track = 0;
  std::string name;
  std::vector<Event> events;
  std::vector<uint64_t> durations[STAGE_COUNT]; // for percentiles (always kept: 8 bytes a span)
};

namespace {
std::atomic<uint64_t> next_profiler_id{1};
struct LocalCache {
  uint64_t id = 0;
  Profiler::ThreadBuffer* buffer = nullptr;
};
thread_local LocalCache local_cache;
} // namespace

Profiler::Profiler(bool keep_trace)
    : keep_trace_(keep_trace), start_(std::chrono::steady_clock::now()),
      id_(next_profiler_id.fetch_add(1)) {}

Profiler::~Profiler() = default;

Profiler::ThreadBuffer& Profiler::local() {
  if (local_cache.id == id_)
    return *local_cache.buffer;
  std::lock_guard lock(mu_);
  auto buf = std::make_unique<ThreadBuffer>();
  buf->track = static_cast<int>(buffers_.size());
  buf->name = "thread " + std::to_string(buf->track);
  local_cache = {id_, buf.get()};
  buffers_.push_back(std::move(buf));
  return *local_cache.buffer;
}

void Profiler::record(Stage stage, uint64_t t0, uint64_t t1, uint64_t bytes,
                      std::string_view tensor, int track) {
  uint64_t dur = t1 > t0 ? t1 - t0 : 0;
  Totals& tot = totals_[static_cast<int>(stage)];
  tot.count.fetch_add(1, std::memory_order_relaxed);
  tot.bytes.fetch_add(bytes, std::memory_order_relaxed);
  tot.busy_ns.fetch_add(dur, std::memory_order_relaxed);
  ThreadBuffer& buf = local();
  buf.durations[static_cast<int>(stage)].push_back(dur);
  if (keep_trace_)
    buf.events.push_back({stage, track, t0, t1, bytes, std::string(tensor)});
}

void Profiler::counter(std::string_view name, uint64_t t, int64_t value) {
  if (!keep_trace_)
    return;
  std::lock_guard lock(mu_);
  counters_.push_back({std::string(name), t, value});
}

void Profiler::name_thread(std::string name) {
  local().name = std::move(name);
}

int Profiler::track_id(const std::string& name) {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < extra_tracks_.size(); ++i)
    if (extra_tracks_[i] == name)
      return static_cast<int>(i);
  extra_tracks_.push_back(name);
  return static_cast<int>(extra_tracks_.size() - 1);
}

std::vector<StageSummary> Profiler::summaries() const {
  std::lock_guard lock(mu_);
  std::vector<StageSummary> out;
  for (int s = 0; s < STAGE_COUNT; ++s) {
    StageSummary sum{static_cast<Stage>(s)};
    sum.count = totals_[s].count.load();
    sum.bytes = totals_[s].bytes.load();
    sum.busy_ns = totals_[s].busy_ns.load();
    std::vector<uint64_t> all;
    for (auto& b : buffers_)
      all.insert(all.end(), b->durations[s].begin(), b->durations[s].end());
    if (!all.empty()) {
      auto pct = [&](double p) {
        size_t k = std::min(all.size() - 1,
                            static_cast<size_t>(p * static_cast<double>(all.size() - 1) + 0.5));
        std::nth_element(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(k), all.end());
        return all[k];
      };
      sum.p50_ns = pct(0.50);
      sum.p99_ns = pct(0.99);
    }
    out.push_back(sum);
  }
  return out;
}

namespace {

// A Boost.Iostreams sink over a descriptor that writes through Io, so a fault-injecting Io sees
// every byte of the trace. The first failure's errno is kept in `*error` and thrown: the filter
// in front of the sink stops at once, and write_trace turns the errno into its Status.
class IoSink {
public:
  using char_type = char;
  using category = boost::iostreams::sink_tag;
  IoSink(Io& io, int fd, int* error) : io_(&io), fd_(fd), error_(error) {}
  std::streamsize write(const char* s, std::streamsize n) {
    std::streamsize done = 0;
    while (done < n) {
      size_t chunk = std::min(static_cast<size_t>(n - done), MAX_IO_CHUNK);
      ssize_t w = io_->write(fd_, s + done, chunk);
      if (w < 0 && errno == EINTR)
        continue;
      if (w <= 0) { // 0 would loop forever: report it as an I/O error
        *error_ = w < 0 ? errno : EIO;
        throw std::ios_base::failure("trace write failed");
      }
      done += w;
    }
    return n;
  }

private:
  Io* io_;
  int fd_;
  int* error_;
};

// The trace's bytes on their way to the file: straight into the sink, or through gzip first.
class TraceStream {
public:
  TraceStream(IoSink sink, bool gzip) : sink_(sink) {
    if (gzip)
      gzip_.emplace(boost::iostreams::gzip_params(), std::streamsize{1} << 16);
  }
  void write(std::string_view text) {
    if (gzip_)
      boost::iostreams::write(*gzip_, sink_, text.data(),
                              static_cast<std::streamsize>(text.size()));
    else
      sink_.write(text.data(), static_cast<std::streamsize>(text.size()));
  }
  /// Flushes the compressor and writes the gzip trailer.
  void close() {
    if (gzip_)
      boost::iostreams::close(*gzip_, sink_, std::ios_base::out);
  }

private:
  IoSink sink_;
  std::optional<boost::iostreams::gzip_compressor> gzip_;
};

// The trace's temporary name beside its final one, in the pattern remove_temp_files() knows.
std::filesystem::path trace_temp_path(const std::filesystem::path& path, int attempt) {
  static std::atomic<uint64_t> counter{0};
  return path.parent_path() /
         (temp_name_prefix(path.filename().string()) + std::to_string(::getpid()) + "-" +
          std::to_string(counter.fetch_add(1)) + "-" + std::to_string(attempt));
}

} // namespace

void Profiler::write_trace_events(JsonWriter& w,
                                  const std::function<void(std::string_view)>& flush) const {
  // Threads are tids 1..n of pid 1; extra tracks (CUDA streams) are tids 1000+k.
  // Timestamps are microseconds with nanosecond digits, as the format expects.
  constexpr int PID = 1;
  constexpr size_t FLUSH_BYTES = size_t{1} << 20;
  auto micros = [](uint64_t ns) { return static_cast<double>(ns) / 1000.0; };
  auto maybe_flush = [&] {
    if (w.text().size() >= FLUSH_BYTES)
      flush(w.take());
  };
  auto thread_meta = [&](int tid, const std::string& name, int sort) {
    w.line_break().begin_object().key("ph").value("M").key("pid").value(PID).key("tid").value(tid);
    w.key("name").value("thread_name").key("args").begin_object().key("name").value(name);
    w.end_object().end_object();
    w.line_break().begin_object().key("ph").value("M").key("pid").value(PID).key("tid").value(tid);
    w.key("name").value("thread_sort_index").key("args").begin_object().key("sort_index");
    w.value(sort).end_object().end_object();
  };
  w.begin_object().key("displayTimeUnit").value("ms").key("traceEvents").begin_array();
  w.line_break().begin_object().key("ph").value("M").key("pid").value(PID);
  w.key("name").value("process_name").key("args").begin_object().key("name").value("shardshift");
  w.end_object().end_object();
  for (auto& b : buffers_)
    thread_meta(b->track + 1, b->name, b->track);
  for (size_t k = 0; k < extra_tracks_.size(); ++k)
    thread_meta(1000 + static_cast<int>(k), extra_tracks_[k], 1000 + static_cast<int>(k));
  for (auto& b : buffers_) {
    for (const Event& e : b->events) {
      int tid = e.track >= 0 ? 1000 + e.track : b->track + 1;
      w.line_break().begin_object().key("ph").value("X").key("pid").value(PID).key("tid").value(
          tid);
      w.key("cat").value(stage_name(e.stage)).key("name").value(stage_name(e.stage));
      w.key("ts").fixed(micros(e.t0), 3).key("dur").fixed(micros(e.t1 > e.t0 ? e.t1 - e.t0 : 0), 3);
      w.key("args").begin_object().key("bytes").value(e.bytes);
      if (!e.tensor.empty())
        w.key("tensor").value(e.tensor);
      w.end_object().end_object();
      maybe_flush();
    }
  }
  for (const CounterSample& c : counters_) {
    w.line_break().begin_object().key("ph").value("C").key("pid").value(PID).key("name").value(
        c.name);
    w.key("ts").fixed(micros(c.t), 3).key("args").begin_object().key("value").value(c.value);
    w.end_object().end_object();
    maybe_flush();
  }
  w.end_array().end_object();
  flush(w.take() + "\n");
}

Status Profiler::write_trace(const std::filesystem::path& path, Io& io) const {
  std::lock_guard lock(mu_);
  const bool gzip = path.extension() == ".gz";

  // O_EXCL: never write through a name someone else created.
  std::filesystem::path temp;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    temp = trace_temp_path(path, attempt);
    fd = io.open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    const int err = errno; // before building the message can change it
    if (fd < 0 && (err != EEXIST || attempt >= 8))
      return Status(Errc::io, path.string() + ": cannot create the trace file: " + errno_text(err));
  }

  // Stream the events through gzip (or not) into the temporary file, then make it durable and
  // give it its name. Any failure removes the temporary file: a trace is whole or absent.
  int write_error = 0;
  const char* failed = "cannot write the trace file";
  try {
    TraceStream stream(IoSink(io, fd, &write_error), gzip);
    JsonWriter w(JsonStyle::compact);
    write_trace_events(w, [&](std::string_view chunk) { stream.write(chunk); });
    stream.close();
  } catch (const std::exception&) {
    if (write_error == 0)
      write_error = EIO; // the compressor itself failed (out of memory)
  }
  if (write_error == 0 && io.fsync(fd) != 0) {
    write_error = errno;
    failed = "cannot sync the trace file";
  }
  if (io.close(fd) != 0 && write_error == 0) {
    write_error = errno;
    failed = "cannot close the trace file";
  }
  if (write_error == 0 && io.rename(temp.c_str(), path.c_str()) != 0) {
    write_error = errno;
    failed = "cannot rename the trace file into place";
  }
  if (write_error != 0) {
    io.unlink(temp.c_str());
    return Status(write_error == ENOSPC || write_error == EDQUOT ? Errc::no_space : Errc::io,
                  path.string() + ": " + failed + ": " + errno_text(write_error));
  }
  return sync_directory(io, std::filesystem::absolute(path).parent_path());
}

uint64_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;
}

uint64_t heap_in_use_bytes() {
  const struct mallinfo2 m = mallinfo2();
  return static_cast<uint64_t>(m.uordblks) + static_cast<uint64_t>(m.hblkhd);
}

uint64_t current_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f)
    return 0;
  unsigned long long size = 0, resident = 0;
  int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) : 0;
}

} // namespace shardshift
