// profiler_test.cpp: --stats aggregates and the Chrome trace event file, checked against the
// trace event format (JSON object form, "traceEvents" array of X / M / C events), plain and
// gzip-compressed, and written whole or not at all through the Io seam.
#include "shardshift/io.h"
#include "shardshift/profiler.h"

#include "test_support.h"

#include <cerrno>
#include <set>
#include <sstream>
#include <thread>

#include <boost/iostreams/copy.hpp>
#include <boost/iostreams/filter/gzip.hpp>
#include <boost/iostreams/filtering_stream.hpp>
#include <gtest/gtest.h>
#include <simdjson.h>

namespace shardshift {
namespace {

TEST(Profiler, SummariesCountBytesAndPercentiles) {
  Profiler p(false);
  for (uint64_t i = 1; i <= 100; ++i)
    p.record(Stage::transform_cpu, 0, i * 1000, 10);
  p.record(Stage::write_data, 5, 7, 3);
  auto s = p.summaries();
  ASSERT_EQ(s.size(), static_cast<size_t>(STAGE_COUNT));
  const StageSummary& t = s[static_cast<int>(Stage::transform_cpu)];
  EXPECT_EQ(t.count, 100u);
  EXPECT_EQ(t.bytes, 1000u);
  EXPECT_EQ(t.busy_ns, 5050u * 1000);
  EXPECT_EQ(t.p50_ns, 51000u); // nearest rank over 1..100 us
  EXPECT_EQ(t.p99_ns, 99000u);
  EXPECT_EQ(s[static_cast<int>(Stage::write_data)].busy_ns, 2u);
  EXPECT_EQ(s[static_cast<int>(Stage::read)].count, 0u);
}

TEST(Profiler, TraceFollowsTheTraceEventFormat) {
  testing::TempDir tmp;
  Profiler p(true);
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&, t] {
      p.name_thread("worker " + std::to_string(t));
      for (int i = 0; i < 5; ++i)
        p.record(Stage::transform_cpu, i * 100, i * 100 + 50, 4096, "layers.\"0\"\n.down");
    });
  for (auto& th : threads)
    th.join();
  int stream = p.track_id("cuda stream 0");
  EXPECT_EQ(p.track_id("cuda stream 0"), stream);
  p.record(Stage::gpu_kernel, 10, 20, 8, "x", stream);
  p.counter("bytes in flight", 15, 12345);
  ASSERT_TRUE(p.write_trace(tmp / "t.json").ok());

  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.load((tmp / "t.json").string()).get(doc), simdjson::SUCCESS);
  simdjson::dom::array events;
  ASSERT_EQ(doc["traceEvents"].get_array().get(events), simdjson::SUCCESS);
  int complete = 0, counters = 0, names = 0;
  std::set<int64_t> worker_tids;
  std::set<std::string> thread_names;
  for (simdjson::dom::element e : events) {
    std::string_view ph;
    ASSERT_EQ(e["ph"].get_string().get(ph), simdjson::SUCCESS);
    int64_t pid;
    ASSERT_EQ(e["pid"].get_int64().get(pid), simdjson::SUCCESS);
    std::string_view name;
    ASSERT_EQ(e["name"].get_string().get(name), simdjson::SUCCESS);
    if (ph == "X") {
      double ts, dur;
      ASSERT_EQ(e["ts"].get_double().get(ts), simdjson::SUCCESS);
      ASSERT_EQ(e["dur"].get_double().get(dur), simdjson::SUCCESS);
      EXPECT_GE(dur, 0);
      int64_t tid;
      ASSERT_EQ(e["tid"].get_int64().get(tid), simdjson::SUCCESS);
      uint64_t bytes;
      ASSERT_EQ(e["args"]["bytes"].get_uint64().get(bytes), simdjson::SUCCESS);
      if (name == "transform_cpu") {
        worker_tids.insert(tid);
        std::string_view tensor;
        ASSERT_EQ(e["args"]["tensor"].get_string().get(tensor), simdjson::SUCCESS);
        EXPECT_EQ(tensor, "layers.\"0\"\n.down"); // escaped and unescaped faithfully
      } else {
        EXPECT_GE(tid, 1000); // extra tracks (CUDA streams) live apart from threads
      }
      ++complete;
    } else if (ph == "C") {
      int64_t v;
      ASSERT_EQ(e["args"]["value"].get_int64().get(v), simdjson::SUCCESS);
      EXPECT_EQ(v, 12345);
      ++counters;
    } else if (ph == "M") {
      if (name == "thread_name") {
        std::string_view n;
        ASSERT_EQ(e["args"]["name"].get_string().get(n), simdjson::SUCCESS);
        thread_names.insert(std::string(n));
        ++names;
      }
    } else {
      ADD_FAILURE() << "unexpected phase " << ph;
    }
  }
  EXPECT_EQ(complete, 16);
  EXPECT_EQ(counters, 1);
  EXPECT_EQ(worker_tids.size(), 3u); // one track per worker thread
  EXPECT_TRUE(thread_names.count("worker 2"));
  EXPECT_TRUE(thread_names.count("cuda stream 0"));
  EXPECT_EQ(names, 5); // three workers, the main thread (it recorded the GPU span), one stream
}

TEST(Profiler, DisabledTraceKeepsNoEvents) {
  testing::TempDir tmp;
  Profiler p(false);
  p.record(Stage::read, 0, 10, 1, "t");
  p.counter("rss", 1, 2);
  ASSERT_TRUE(p.write_trace(tmp / "t.json").ok());
  std::string text = testing::read_bytes(tmp / "t.json");
  EXPECT_EQ(text.find("\"ph\":\"X\""), std::string::npos);
  EXPECT_EQ(text.find("\"ph\":\"C\""), std::string::npos);
  EXPECT_EQ(p.summaries()[static_cast<int>(Stage::read)].count, 1u); // stats still counted
}

// A profiler with a little of everything, for the file tests.
void record_some(Profiler& p, int spans) {
  p.name_thread("writer");
  for (int i = 0; i < spans; ++i)
    p.record(Stage::write_data, i * 10, i * 10 + 5, 4096, "model.layers." + std::to_string(i));
  p.counter("bytes in flight", 3, 42);
}

std::string gunzip(const std::string& compressed) {
  std::istringstream in(compressed);
  boost::iostreams::filtering_istream gz;
  gz.push(boost::iostreams::gzip_decompressor());
  gz.push(in);
  std::ostringstream out;
  boost::iostreams::copy(gz, out);
  return out.str();
}

TEST(Profiler, GzTraceDecompressesToThePlainTrace) {
  testing::TempDir tmp;
  Profiler p(true);
  record_some(p, 20000); // several megabytes of JSON: streamed in pieces through the compressor
  ASSERT_TRUE(p.write_trace(tmp / "t.json").ok());
  ASSERT_TRUE(p.write_trace(tmp / "t.json.gz").ok());
  const std::string plain = testing::read_bytes(tmp / "t.json");
  const std::string compressed = testing::read_bytes(tmp / "t.json.gz");
  ASSERT_GE(compressed.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(compressed[0]), 0x1f); // the gzip magic
  EXPECT_EQ(static_cast<unsigned char>(compressed[1]), 0x8b);
  EXPECT_LT(compressed.size(), plain.size() / 4);
  const std::string text = gunzip(compressed);
  EXPECT_EQ(text, plain);

  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  ASSERT_EQ(parser.parse(text).get(doc), simdjson::SUCCESS);
  simdjson::dom::array events;
  ASSERT_EQ(doc["traceEvents"].get_array().get(events), simdjson::SUCCESS);
  size_t spans = 0;
  for (simdjson::dom::element e : events)
    if (std::string_view(e["ph"]) == "X")
      ++spans;
  EXPECT_EQ(spans, 20000u);
  EXPECT_EQ(testing::list_dir(tmp.path()), (std::vector<std::string>{"t.json", "t.json.gz"}));
}

// Fails one kind of call (write, fsync or rename) with ENOSPC after letting `allowed` of them
// through; everything else reaches the kernel.
class FailingIo : public ForwardingIo {
public:
  enum Op { write_op, fsync_op, rename_op };
  FailingIo(Op op, int allowed) : ForwardingIo(Io::system()), op_(op), allowed_(allowed) {}
  ssize_t write(int fd, const void* buf, size_t count) override {
    if (op_ == write_op && allowed_-- <= 0)
      return fail();
    return ForwardingIo::write(fd, buf, count);
  }
  int fsync(int fd) override {
    if (op_ == fsync_op && allowed_-- <= 0)
      return fail();
    return ForwardingIo::fsync(fd);
  }
  int rename(const char* from, const char* to) override {
    if (op_ == rename_op && allowed_-- <= 0)
      return fail();
    return ForwardingIo::rename(from, to);
  }

private:
  int fail() {
    errno = ENOSPC;
    return -1;
  }
  Op op_;
  int allowed_;
};

TEST(Profiler, FailedTraceWriteLeavesNoFile) {
  struct Case {
    FailingIo::Op op;
    int allowed;
    const char* name;
  };
  for (const Case& c :
       {Case{FailingIo::write_op, 0, "t.json"}, Case{FailingIo::write_op, 2, "t.json.gz"},
        Case{FailingIo::write_op, 0, "t.json.gz"}, Case{FailingIo::fsync_op, 0, "t.json.gz"},
        Case{FailingIo::rename_op, 0, "t.json"}}) {
    SCOPED_TRACE(std::string(c.name) + " op " + std::to_string(c.op) + " after " +
                 std::to_string(c.allowed));
    testing::TempDir tmp;
    Profiler p(true);
    record_some(p, 50000); // large enough that the compressed trace takes several writes
    FailingIo io(c.op, c.allowed);
    Status s = p.write_trace(tmp / c.name, io);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), Errc::no_space);
    EXPECT_NE(s.message().find((tmp / c.name).string()), std::string::npos) << s.message();
    EXPECT_TRUE(testing::list_dir(tmp.path()).empty()) << "neither the trace nor its temp file";
  }
}

TEST(Profiler, PeakRssIsPlausible) {
  EXPECT_GT(peak_rss_bytes(), 1u << 20);
  EXPECT_GE(peak_rss_bytes() + (1 << 20), current_rss_bytes());
}

} // namespace
} // namespace shardshift
