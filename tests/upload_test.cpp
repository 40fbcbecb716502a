// upload_test.cpp: --pipe-to and --checksums. Every output file is streamed into its own command;
// the commands here are small shell uploaders that, like real ones, commit an object only when
// they read their input to its end (`cat > .part && mv`), so an object appears only for a file
// shardshift delivered whole. The index must arrive last, and never after a failure.
#include "convert_harness.h"

#include <atomic>
#include <chrono>
#include <thread>

namespace shardshift::testing {
namespace {

// An uploader into `dir` that records the order in which objects were committed.
std::string uploader(const std::filesystem::path& dir, const std::string& fail_for = "") {
  const std::string d = shell_quoted(dir);
  std::string cmd = "cat > " + d + "/.{name}.part && mv " + d + "/.{name}.part " + d +
                    "/{name} && echo {name} >> " + d + "/.order";
  if (!fail_for.empty())
    cmd = "if [ {name} = '" + fail_for + "' ]; then cat > /dev/null; exit 1; fi; " + cmd;
  return cmd;
}

std::vector<std::string> visible_files(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  for (const std::string& name : list_dir(dir))
    if (!name.starts_with("."))
      out.push_back(name);
  return out;
}

class UploadTest : public ConvertTest {
protected:
  void SetUp() override {
    ConvertTest::SetUp();
    reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 4, 4, 64, 24), 2,
                                "diffusion_gemma");
    std::filesystem::create_directory(tmp / "bucket");
  }
  // The name of output file `i` of the plan pipe_options gives (which has at least 3 files).
  std::string planned_file(size_t i) {
    PlanOptions po;
    po.max_shard_size = 40'000;
    auto plan = plan_conversion(tmp / "hf", po);
    EXPECT_TRUE(plan.ok());
    EXPECT_GE(plan.ok() ? plan->files.size() : 0, 3u);
    return plan.ok() && i < plan->files.size() ? plan->files[i].name : std::string();
  }
  ConvertOptions pipe_options(const std::string& command) {
    ConvertOptions o;
    o.input = tmp / "hf";
    o.pipe_to = command;
    o.uploads = 3;
    o.checksums = true;
    o.device = "cpu";
    o.plan.max_shard_size = 40'000;
    return o;
  }
};

TEST_F(UploadTest, EveryFileDeliveredWholeChecksumsBeforeTheIndexLast) {
  auto r = convert(pipe_options(uploader(tmp / "bucket")));
  ASSERT_TRUE(r.ok()) << r.status().message();
  // The same conversion into a directory, for comparison.
  auto local = run(tmp / "hf", tmp / "dir", opts([](ConvertOptions& o) {
                     o.plan.max_shard_size = 40'000;
                     o.checksums = true;
                   }));
  ASSERT_TRUE(local.ok());
  const auto names = visible_files(tmp / "dir");
  ASSERT_EQ(visible_files(tmp / "bucket"), names);
  for (const std::string& name : names)
    EXPECT_EQ(read_bytes(tmp / "bucket" / name), read_bytes(tmp / "dir" / name)) << name;
  auto check = run_shell("cd " + shell_quoted(tmp / "bucket") + " && sha256sum -c SHA256SUMS");
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;

  const auto order = lines_of(read_bytes(tmp / "bucket" / ".order"));
  ASSERT_GE(order.size(), 3u);
  EXPECT_EQ(order.back(), "model.safetensors.index.json");
  EXPECT_EQ(order[order.size() - 2], "SHA256SUMS");
  ASSERT_FALSE(r->deliveries.empty());
  for (const FileDelivery& d : r->deliveries)
    EXPECT_EQ(d.state, "delivered") << d.name;
  EXPECT_EQ(r->checksums.size(), names.size() - 1); // every file but SHA256SUMS itself
}

TEST_F(UploadTest, AFailedUploadCommitsNeitherThatFileNorTheIndex) {
  const std::string victim = planned_file(1);
  ASSERT_FALSE(victim.empty());
  auto r = convert(pipe_options(uploader(tmp / "bucket", victim)));
  ASSERT_FALSE(r.ok());
  const std::string& m = r.status().message();
  EXPECT_NE(m.find(victim + ": failed: the command exited with status 1"), std::string::npos) << m;
  EXPECT_NE(m.find("model.safetensors.index.json: not started"), std::string::npos) << m;
  const auto in_bucket = visible_files(tmp / "bucket");
  EXPECT_EQ(std::count(in_bucket.begin(), in_bucket.end(), victim), 0);
  EXPECT_EQ(std::count(in_bucket.begin(), in_bucket.end(), "model.safetensors.index.json"), 0);
  EXPECT_EQ(std::count(in_bucket.begin(), in_bucket.end(), "SHA256SUMS"), 0);
}

TEST_F(UploadTest, CancellingInterruptsTheUploadsInFlightAndDeliversNoIndex) {
  std::atomic<bool> cancel{false};
  ConvertOptions o = pipe_options(uploader(tmp / "bucket"));
  o.cancel = &cancel;
  o.max_memory = 1 << 20; // small chunks: many progress reports while files are open
  ConvertCallbacks cb;
  cb.progress = [&](const Progress& p) {
    if (p.bytes_done > p.bytes_total / 3)
      cancel = true;
  };
  auto r = convert(o, cb);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::interrupted) << r.status().message();
  const auto in_bucket = visible_files(tmp / "bucket");
  EXPECT_EQ(std::count(in_bucket.begin(), in_bucket.end(), "model.safetensors.index.json"), 0);
  // Every object that exists is whole: it equals the same file of a local conversion.
  auto local =
      run(tmp / "hf", tmp / "dir", opts([](ConvertOptions& o) { o.plan.max_shard_size = 40'000; }));
  ASSERT_TRUE(local.ok());
  for (const std::string& name : in_bucket)
    EXPECT_EQ(read_bytes(tmp / "bucket" / name), read_bytes(tmp / "dir" / name)) << name;
}

// A Ctrl-C reaches shardshift alone (each command leads a group of its own), and a command may
// not be reading (a stalled network), so the lane writing into it is blocked on a full pipe; or
// it read everything and still works (an upload's last part). Cancelling interrupts the commands
// either way, within moments rather than when they are done, and the run is interrupted.
TEST_F(UploadTest, CancellingStopsCommandsThatDoNotReadOrDoNotEnd) {
  for (const char* command : {"sleep 30", "cat > /dev/null; sleep 30"}) {
    SCOPED_TRACE(command);
    std::atomic<bool> cancel{false};
    ConvertOptions o = pipe_options(command);
    o.cancel = &cancel;
    std::thread canceller([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      cancel = true;
    });
    const auto start = std::chrono::steady_clock::now();
    auto r = convert(o);
    const auto took = std::chrono::steady_clock::now() - start;
    canceller.join();
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Errc::interrupted) << r.status().message();
    // Not the 30 s of the commands (the grace period is 5 s; these die of the first SIGINT).
    EXPECT_LT(took, std::chrono::seconds(10));
    auto left = run_shell("pgrep -f '^sleep 3[0]$' || true");
    EXPECT_EQ(left.out, "") << "commands left running";
  }
}

// A command that fails while others are stalled (a network that stopped, say): the run fails at
// once (their `sleep 31` is another than the test above's, which may run beside this one),
// interrupting the commands still being fed, rather than when they read again; each file is
// reported for what became of it.
TEST_F(UploadTest, AFailureInterruptsTheCommandsStillBeingFed) {
  const std::string victim = planned_file(0); // among the first commands started
  ASSERT_FALSE(victim.empty());
  ConvertOptions o =
      pipe_options("if [ {name} = '" + victim + "' ]; then exit 5; fi; sleep 31; cat > /dev/null");
  const auto start = std::chrono::steady_clock::now();
  auto r = convert(o);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().code(), Errc::interrupted) << r.status().message();
  const std::string& m = r.status().message();
  EXPECT_NE(m.find(victim + ": failed: the command exited with status 5"), std::string::npos) << m;
  EXPECT_NE(m.find(": failed: not finished: the run failed, so its command was interrupted"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("model.safetensors.index.json: not started"), std::string::npos) << m;
  // Not the 31 s of the stalled commands (they die of the first SIGINT).
  EXPECT_LT(took, std::chrono::seconds(10));
  auto left = run_shell("pgrep -f '^sleep 3[1]$' || true");
  EXPECT_EQ(left.out, "") << "commands left running";
  EXPECT_TRUE(visible_files(tmp / "bucket").empty());
}

// --uploads N runs N commands at once, whatever -j: a lane waits on its command (in the write
// stage, and before its next file), not on a core. With one thread, three uploads overlapped
// two at a time at most before (the default arena has a thread per core, and a lane took its
// next file while its last was still uploading, leaving another lane without one).
TEST_F(UploadTest, UploadsRunAtOnceWhateverTheThreads) {
  const std::string log = shell_quoted(tmp / "log");
  ConvertOptions o =
      pipe_options("echo s >> " + log + "; cat > /dev/null; sleep 0.5; echo e >> " + log);
  o.checksums = false;
  o.threads = 1;
  o.uploads = 3;
  o.plan.max_shard_size = 20'000; // 6 or more shards
  auto r = convert(o);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_GE(r->files, 6u);
  // Appends of a line are atomic and in time order: the most starts without their end.
  int running = 0, most = 0;
  for (char c : read_bytes(tmp / "log"))
    if (c == 's')
      most = std::max(most, ++running);
    else if (c == 'e')
      --running;
  EXPECT_EQ(most, 3);
}

TEST_F(UploadTest, PipeToRefusesAnOutAndOnly) {
  ConvertOptions o = pipe_options("cat > /dev/null");
  o.output = tmp / "out";
  auto r = convert(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Errc::invalid_argument);
  o.output.clear();
  o.only = "model.safetensors.index.json";
  EXPECT_EQ(convert(o).status().code(), Errc::invalid_argument);
}

TEST_F(ConvertTest, ChecksumsOfADirectoryOutputPassSha256sum) {
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 2, 4, 64, 24), 1,
                              "diffusion_gemma");
  auto r = run(tmp / "hf", tmp / "out", opts([](ConvertOptions& o) {
                 o.checksums = true;
                 o.plan.max_shard_size = 30'000;
                 o.writers = 2;
               }));
  ASSERT_TRUE(r.ok());
  auto check = run_shell("cd " + shell_quoted(tmp / "out") + " && sha256sum -c SHA256SUMS");
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  // Every file of the output but SHA256SUMS and the marker is listed once.
  const auto sums = lines_of(read_bytes(tmp / "out" / "SHA256SUMS"));
  const auto files = visible_files(tmp / "out");
  EXPECT_EQ(sums.size() + 1, files.size());
  EXPECT_EQ(r->checksums.size(), sums.size());
  // The summary's digests are the files' digests.
  for (const auto& [name, digest] : r->checksums) {
    auto one = run_shell("sha256sum " + shell_quoted(tmp / "out" / name));
    EXPECT_EQ(one.out.substr(0, 64), digest) << name;
  }
}

} // namespace
} // namespace shardshift::testing
