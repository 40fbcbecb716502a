#include "shardshift/profiler.h"

#include "shardshift/json_text.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <sys/resource.h>
#include <unistd.h>

namespace shardshift {

const char* stage_name(Stage stage) {
  static const char* const NAMES[STAGE_COUNT] = {
      "plan",       "read",    "transform_cpu", "transform_gpu", "gpu_stage", "gpu_h2d",
      "gpu_kernel", "gpu_d2h", "write_copy",    "write_data",    "commit",    "wait"};
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
std::string micros(uint64_t ns) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", static_cast<double>(ns) / 1000.0);
  return buf;
}
} // namespace

Status Profiler::write_trace(const std::filesystem::path& path) const {
  std::lock_guard lock(mu_);
  // Threads are tids 1..n of pid 1; extra tracks (CUDA streams) are tids 1000+k.
  const int pid = 1;
  std::string out = "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  bool first = true;
  auto sep = [&] {
    if (!first)
      out += ",\n";
    first = false;
  };
  auto meta = [&](int tid, const std::string& name, int sort) {
    sep();
    out += "{\"ph\":\"M\",\"pid\":" + std::to_string(pid) + ",\"tid\":" + std::to_string(tid) +
           ",\"name\":\"thread_name\",\"args\":{\"name\":";
    append_json_string(out, name);
    out += "}},\n{\"ph\":\"M\",\"pid\":" + std::to_string(pid) + ",\"tid\":" + std::to_string(tid) +
           ",\"name\":\"thread_sort_index\",\"args\":{\"sort_index\":" + std::to_string(sort) +
           "}}";
  };
  sep();
  out += "{\"ph\":\"M\",\"pid\":1,\"name\":\"process_name\",\"args\":{\"name\":\"shardshift\"}}";
  for (auto& b : buffers_)
    meta(b->track + 1, b->name, b->track);
  for (size_t k = 0; k < extra_tracks_.size(); ++k)
    meta(1000 + static_cast<int>(k), extra_tracks_[k], 1000 + static_cast<int>(k));
  for (auto& b : buffers_) {
    for (const Event& e : b->events) {
      sep();
      int tid = e.track >= 0 ? 1000 + e.track : b->track + 1;
      out += "{\"ph\":\"X\",\"pid\":1,\"tid\":" + std::to_string(tid) + ",\"cat\":\"" +
             stage_name(e.stage) + "\",\"name\":\"" + stage_name(e.stage) +
             "\",\"ts\":" + micros(e.t0) + ",\"dur\":" + micros(e.t1 > e.t0 ? e.t1 - e.t0 : 0) +
             ",\"args\":{\"bytes\":" + std::to_string(e.bytes);
      if (!e.tensor.empty()) {
        out += ",\"tensor\":";
        append_json_string(out, e.tensor);
      }
      out += "}}";
    }
  }
  for (const CounterSample& c : counters_) {
    sep();
    out += "{\"ph\":\"C\",\"pid\":1,\"name\":";
    append_json_string(out, c.name);
    out += ",\"ts\":" + micros(c.t) + ",\"args\":{\"value\":" + std::to_string(c.value) + "}}";
  }
  out += "\n]}\n";
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(out.data(), static_cast<std::streamsize>(out.size()));
  f.close();
  if (!f)
    return Status(Errc::io, path.string() + ": cannot write the trace file");
  return {};
}

uint64_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;
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
