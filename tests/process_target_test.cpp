// process_target_test.cpp: output files streamed into one command each. A finished file reaches
// its command whole and then counts only if the command exits 0; a failed file's command is
// interrupted before its input ends, so it cannot take the file for complete.
#include "shardshift/checkpoint.h"
#include "shardshift/convert.h"
#include "shardshift/plan.h"

#include "pipeline.h"
#include "process_target.h"
#include "reference/checkpoint_files.h"
#include "test_support.h"

#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <numeric>
#include <thread>

#include <gtest/gtest.h>

namespace shardshift::testing {
namespace {

class ProcessTargetTest : public ::testing::Test {
protected:
  void SetUp() override { old_ = std::signal(SIGPIPE, SIG_IGN); } // as the app does
  void TearDown() override { std::signal(SIGPIPE, old_); }
  TempDir tmp;
  void (*old_)(int) = nullptr;
};

// Waits until `path` exists (a command's sign that its signal traps are set).
void wait_for_file(const std::filesystem::path& path) {
  for (int i = 0; i < 1000 && !std::filesystem::exists(path); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
}

OutputFile small_file(const std::string& name, const std::string& header, uint64_t data) {
  OutputFile f;
  f.name = name;
  f.header = header;
  f.data_size = data;
  return f;
}

TEST(ProcessTargetCommand, QuotesEveryValue) {
  EXPECT_EQ(shell_quote("a b"), "'a b'");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
  EXPECT_EQ(expand_command("up {name} --size {size} {other}", "x'; rm -rf /; '", 42),
            "up 'x'\\''; rm -rf /; '\\''' --size 42 {other}");
}

TEST(ProcessTargetCommand, RefusesAPlaceholderInsideQuotes) {
  // Inside quotes the quoted value would be literal, or end them: refused, naming the placeholder.
  for (const char* bad : {"cat > '/x/{name}'", "cat > \"/x/{name}\"", "up \"{size}\"",
                          "echo \"$(echo '{name}')\"", "a 'b' \"c {name}\""}) {
    const Status s = check_command_template(bad);
    EXPECT_EQ(s.code(), Errc::invalid_argument) << bad;
    EXPECT_NE(s.message().find("stands inside quotes"), std::string::npos) << bad;
  }
  // A here-document's body and a comment are not shell words either: a name such as
  // '$(touch x)' would run in the one, a line break in a name would end the other.
  for (const char* bad : {"cat > /dev/null <<EOF\n{name}\nEOF", "cat <<-X; echo {name}",
                          "cat > /dev/null # {name}", "up;#{size}", "a\n# '{name}'"}) {
    const Status s = check_command_template(bad);
    EXPECT_EQ(s.code(), Errc::invalid_argument) << bad;
    EXPECT_TRUE(s.message().find("here-document") != std::string::npos ||
                s.message().find("in a comment") != std::string::npos)
        << bad << ": " << s.message();
  }
  // A backslash would take the value's opening quote as a plain character, and bash evaluates
  // an arithmetic expression, subscripts and command substitutions in them included: with a name
  // such as 'a";touch x;"' or 'a[$(touch x)]' either runs code. A template left inside quotes
  // would have the value's quotes close them.
  const std::vector<std::pair<const char*, const char*>> unsafe = {
      {"cat >/dev/null; echo \"got \\{name}\"", "after a backslash"},
      {"cat >/dev/null; : \\{name}'", "after a backslash"},
      {"up \\{size}", "after a backslash"},
      {"echo $(( {size} + 1 ))", "in an arithmetic expression"},
      {"echo \"$(( {size} ))\"", "in an arithmetic expression"},
      {"(( {size} > 0 )) && cat", "in an arithmetic expression"},
      {"cat > {name} '", "ends inside quotes"},
      {"cat > $(echo {name}", "ends inside quotes"}};
  for (auto [bad, why] : unsafe) {
    const Status s = check_command_template(bad);
    EXPECT_EQ(s.code(), Errc::invalid_argument) << bad;
    EXPECT_NE(s.message().find(why), std::string::npos) << bad << ": " << s.message();
  }
  // Bare, also inside a word, after closed quotes, escaped quotes, or a command substitution
  // inside double quotes (which starts unquoted again).
  for (const char* good :
       {"cat > /x/{name}", "aws s3 cp - \"s3://$b/n/\"{name} --expected-size {size}",
        "echo \\'{name}", "a 'it'\\''s' {name}", "mkdir -p \"$(dirname /x/{name})\" && cat",
        "echo '{other}' {name}", "cat <<< {name}", "up a#b {name}", "cat # note\nup {name}",
        "n=$((1 + 2)); cat > /x/$n-{name}", "echo \\\\ {name}"})
    EXPECT_TRUE(check_command_template(good).ok())
        << good << ": " << check_command_template(good).message();
}

TEST_F(ProcessTargetTest, AFinishedFileReachesItsCommandWhole) {
  ProcessTarget target("cat > " + shell_quote((tmp / "got").string()) + "-{name}");
  const OutputFile f = small_file("a.bin", "HEADER", 5);
  ShardWriter w;
  ASSERT_TRUE(target.open(w, f).ok());
  ASSERT_TRUE(w.append(std::as_bytes(std::span("12345", 5))).ok());
  ASSERT_TRUE(target.finish(w, f).ok());
  EXPECT_EQ(read_bytes(tmp.path().string() + "/got-a.bin"), "HEADER12345");
}

// The name and size are in the command's environment too, for a script that takes them there;
// a variable of the same name from shardshift's own environment does not leak through.
TEST_F(ProcessTargetTest, TheCommandGetsTheNameAndSizeInItsEnvironment) {
  ::setenv("SHARDSHIFT_NAME", "stale", 1);
  ProcessTarget target(
      "cat > /dev/null; printf '%s %s' \"$SHARDSHIFT_NAME\" \"$SHARDSHIFT_SIZE\" > " +
      shell_quote((tmp / "env").string()));
  const OutputFile f = small_file("it's a.bin", "HEADER", 5);
  ShardWriter w;
  const Status opened = target.open(w, f);
  ::unsetenv("SHARDSHIFT_NAME");
  ASSERT_TRUE(opened.ok());
  ASSERT_TRUE(w.append(std::as_bytes(std::span("12345", 5))).ok());
  ASSERT_TRUE(target.finish(w, f).ok());
  EXPECT_EQ(read_bytes(tmp / "env"), "it's a.bin 11");
}

TEST_F(ProcessTargetTest, ACommandThatFailsFailsTheFile) {
  ProcessTarget target("cat > /dev/null; exit 3");
  const OutputFile f = small_file("b.bin", "H", 0);
  ShardWriter w;
  ASSERT_TRUE(target.open(w, f).ok());
  Status s = target.finish(w, f);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("b.bin: the command exited with status 3"), std::string::npos)
      << s.message();
}

// A command that exits 0 but left bytes in its pipe did not take the whole file (an uploader that
// stopped early and says it succeeded): not delivered. Both a large file, cut 100 bytes short,
// and a small one the command never read; and the same command reading everything is delivered.
TEST_F(ProcessTargetTest, ACommandThatExitsZeroWithoutReadingItAllFailsTheFile) {
  const std::string big(200'000, 'x');
  struct Case {
    const char* command;
    std::string data;
    uint64_t unread;
  };
  const Case cases[] = {
      {"head -c $(({size} - 100)) > /dev/null; sleep 0.5", big, 100}, // (the shell holds stdin)
      {"sleep 0.5; exit 0", "small", 6}, // ends after the bytes are in its pipe
      {"cat > /dev/null", big, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.command);
    ProcessTarget target(c.command);
    const OutputFile f = small_file("c.bin", "H", c.data.size());
    ShardWriter w;
    ASSERT_TRUE(target.open(w, f).ok());
    ASSERT_TRUE(w.append(std::as_bytes(std::span(c.data.data(), c.data.size()))).ok());
    Status s = target.finish(w, f);
    if (c.unread == 0) {
      EXPECT_TRUE(s.ok()) << s.message();
      EXPECT_EQ(target.outcome("c.bin").state, Delivery::delivered);
      continue;
    }
    ASSERT_FALSE(s.ok());
    EXPECT_NE(target.outcome("c.bin").state, Delivery::delivered);
    EXPECT_NE(s.message().find("c.bin: the command exited with status 0 without reading the "
                               "last " +
                               std::to_string(c.unread) + " of its " + std::to_string(f.size()) +
                               " bytes"),
              std::string::npos)
        << s.message();
  }
}

TEST_F(ProcessTargetTest, AnAbandonedFileIsInterruptedBeforeItsInputEnds) {
  // The command records its reader's exit status once the reader is done. Fed to the end, the
  // reader sees end of input and exits 0; abandoned, the command must be stopped by a signal
  // while its input is still open, so it never gets to record anything.
  const std::string status = shell_quote((tmp / "status").string());
  const std::string ready = shell_quote((tmp / "ready").string());
  const std::string command = "touch " + ready + "; cat > /dev/null; echo $? > " + status;
  const OutputFile f = small_file("c.bin", "HEADER", 10);
  {
    ProcessTarget target(command);
    ShardWriter w;
    ASSERT_TRUE(target.open(w, f).ok());
    ASSERT_TRUE(w.append(std::as_bytes(std::span("0123456789", 10))).ok());
    ASSERT_TRUE(target.finish(w, f).ok());
    EXPECT_EQ(read_bytes(tmp / "status"), "0\n") << "the control: a finished file's command ends";
  }
  std::filesystem::remove(tmp / "status");
  std::filesystem::remove(tmp / "ready");
  ProcessTarget target(command, std::chrono::milliseconds(2000));
  ShardWriter w;
  ASSERT_TRUE(target.open(w, f).ok());
  ASSERT_TRUE(w.append(std::as_bytes(std::span("01234", 5))).ok());
  wait_for_file(tmp / "ready");
  target.abandon(w, f);
  EXPECT_FALSE(std::filesystem::exists(tmp / "status"))
      << "the command finished normally: " << read_bytes(tmp / "status");
}

TEST_F(ProcessTargetTest, ACommandThatIgnoresSigintIsStoppedAnyway) {
  const std::string marker = shell_quote((tmp / "marker").string());
  const std::string ready = shell_quote((tmp / "ready").string());
  ProcessTarget target("trap '' INT; touch " + ready + "; sleep 30; echo eof > " + marker,
                       std::chrono::milliseconds(100));
  const OutputFile f = small_file("d.bin", "H", 10);
  ShardWriter w;
  ASSERT_TRUE(target.open(w, f).ok());
  wait_for_file(tmp / "ready");
  const auto t0 = std::chrono::steady_clock::now();
  target.abandon(w, f);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  EXPECT_FALSE(std::filesystem::exists(tmp / "marker"));
}

// The run fails (here: the target is told so), and the commands still being fed are interrupted:
// one that had quit on its own first (the failure itself, say) is reported for how it ended, one
// that was interrupted as the run's doing.
TEST_F(ProcessTargetTest, AfterTheRunFailsEachCommandIsReportedForWhatEndedIt) {
  const std::string ready = shell_quote((tmp / "ready").string());
  const std::string quitting = shell_quote((tmp / "quitting").string());
  // quit.bin's command reads the header open() writes (so that open cannot meet a closed pipe),
  // then quits.
  ProcessTarget target("if [ {name} = quit.bin ]; then head -c 1 > /dev/null; touch " + quitting +
                           "; exit 5; fi; touch " + ready + "; sleep 32; cat > /dev/null",
                       std::chrono::milliseconds(100));
  const OutputFile quit = small_file("quit.bin", "H", 10),
                   stalled = small_file("stalled.bin", "H", 10);
  ShardWriter wq, ws;
  ASSERT_TRUE(target.open(wq, quit).ok());
  ASSERT_TRUE(target.open(ws, stalled).ok());
  wait_for_file(tmp / "ready");
  wait_for_file(tmp / "quitting");
  std::this_thread::sleep_for(std::chrono::milliseconds(300)); // quit.bin's command has exited
  target.run_failed();
  // The watcher signals every group still open, both; then the files are abandoned.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  target.abandon(wq, quit);
  target.abandon(ws, stalled);
  EXPECT_EQ(target.outcome("quit.bin").detail.rfind("stopped before its end", 0), std::string::npos)
      << target.outcome("quit.bin").detail;
  EXPECT_EQ(target.outcome("quit.bin").detail.find("the run failed"), std::string::npos)
      << target.outcome("quit.bin").detail;
  EXPECT_EQ(target.outcome("stalled.bin").detail,
            "not finished: the run failed, so its command was interrupted");
}

// A command may leave a job in the background reading its input and exit at once. When the file
// is abandoned, that reader must be stopped too before its input closes: it would otherwise see a
// plain end of input and take the cut file for a whole one.
TEST_F(ProcessTargetTest, AReaderLeftInTheBackgroundIsInterruptedToo) {
  const std::string marker = shell_quote((tmp / "eof").string());
  const std::string ready = shell_quote((tmp / "ready").string());
  // Without job control an asynchronous list has stdin on /dev/null; fd 3 passes the pipe on.
  ProcessTarget target("exec 3<&0; (cat <&3 > /dev/null && echo eof > " + marker + ") & touch " +
                           ready + "; exit 0",
                       std::chrono::milliseconds(200));
  const OutputFile f = small_file("e.bin", "H", 10);
  ShardWriter w;
  ASSERT_TRUE(target.open(w, f).ok());
  ASSERT_TRUE(w.append(std::as_bytes(std::span("01234", 5))).ok());
  wait_for_file(tmp / "ready");
  std::this_thread::sleep_for(std::chrono::milliseconds(100)); // the shell has exited
  target.abandon(w, f);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_FALSE(std::filesystem::exists(tmp / "eof"))
      << "the background reader saw the end of a cut file as a complete input";
}

// A file's inputs are checked once its command has read it all (what it read may have been the
// inputs' pages, spliced); that wait also ends when the command exits, so a job it left in the
// background holding the pipe unread does not hold the run: the file fails at once, with that
// job still alive (fd 3 passes the pipe on, as above).
TEST_F(ProcessTargetTest, AnUnreadingJobLeftInTheBackgroundDoesNotHoldTheFilesEnd) {
  const std::string payload(20'000, 'p'); // fits the pipe: the splice needs no reader
  write_bytes(tmp / "src", payload);
  const int src = ::open((tmp / "src").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(src, 0);
  const std::string pid_file = shell_quote((tmp / "job").string());
  ProcessTarget target("exec 3<&0; sleep 60 <&3 & echo $! > " + pid_file + "; exit 0");
  const OutputFile f = small_file("g.bin", "H", payload.size());
  ShardWriter w;
  bool checked = false;
  w.set_final_check([&] {
    checked = true;
    return Status();
  });
  ASSERT_TRUE(target.open(w, f).ok());
  ASSERT_TRUE(w.append_copy(src, 0, payload.size(), std::as_bytes(std::span(payload))).ok());
  wait_for_file(tmp / "job");
  const Status s = target.finish(w, f);
  const pid_t job = std::stoi(read_bytes(tmp / "job"));
  const bool job_alive = ::kill(job, 0) == 0;
  ::kill(job, SIGKILL);
  ::close(src);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("without reading the last 20001 of its 20001 bytes"),
            std::string::npos)
      << s.message();
  EXPECT_TRUE(job_alive) << "the file's end waited for the background job to go away";
  EXPECT_TRUE(checked);
}

// True once process `pid` has ended (gone, or a zombie nobody has reaped yet).
bool process_ended(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line))
    return true;
  const size_t paren = line.rfind(')');
  return paren == std::string::npos || line.substr(paren + 2, 1) == "Z";
}

TEST_F(ProcessTargetTest, ACommandIsInterruptedWhenShardshiftIsKilled) {
  // kill -9 of the process that feeds a command closes its end of the pipe, which the command
  // would take for a complete input (an uploader then commits a truncated object). The guard
  // holding a second write end must interrupt the command instead: it never records an exit.
  const std::string status = shell_quote((tmp / "status").string());
  const std::string ready = shell_quote((tmp / "ready").string());
  const std::string pid = shell_quote((tmp / "pid").string());
  const std::string command =
      "echo $$ > " + pid + "; touch " + ready + "; cat > /dev/null; echo $? > " + status;
  EXPECT_EXIT(
      {
        ProcessTarget target(command, std::chrono::milliseconds(500));
        const OutputFile f = small_file("k.bin", "HEADER", 10);
        ShardWriter w;
        if (!target.open(w, f).ok() || !w.append(std::as_bytes(std::span("01234", 5))).ok())
          std::_Exit(3);
        for (int i = 0; i < 2000 && !std::filesystem::exists(tmp / "ready"); ++i)
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        raise(SIGKILL); // no destructor, no abandon: only the guard can act
      },
      ::testing::KilledBySignal(SIGKILL), "");
  ASSERT_TRUE(std::filesystem::exists(tmp / "pid"));
  const pid_t shell = std::stoi(read_bytes(tmp / "pid"));
  for (int i = 0; i < 1000 && !process_ended(shell); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(process_ended(shell)) << "the command still runs 10 s after its starter died";
  EXPECT_FALSE(std::filesystem::exists(tmp / "status"))
      << "the command took the cut input for complete: " << read_bytes(tmp / "status");
}

// Runs the pipeline over every file of `plan` into `target`, in 64 KiB chunks, 3 tokens a lane.
Result<PipelineResult> pipe_every_file(const Checkpoint& input, const Plan& plan,
                                       OutputTarget& target, unsigned writers) {
  std::vector<uint32_t> files(plan.files.size());
  std::iota(files.begin(), files.end(), 0u);
  PipelineConfig config;
  config.writers = writers;
  config.chunk_bytes = 64 << 10;
  config.tokens = 3;
  Profiler profiler(false);
  return run_pipeline(input, plan, files, target, config, profiler);
}

TEST_F(ProcessTargetTest, PipelineStreamsEveryFileIntoItsCommandWithSeveralLanes) {
  std::mt19937_64 rng(test_seed());
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 4, 4, 64, 24), 2,
                              "diffusion_gemma");
  auto input = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(input.ok()) << input.status().message();
  PlanOptions po;
  po.max_shard_size = 40'000;
  auto plan = make_plan(*input, po);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  ASSERT_GE(plan->files.size(), 3u);

  // The same files written into a directory, for comparison.
  ConvertOptions o;
  o.input = tmp / "hf";
  o.output = tmp / "dir";
  o.device = "cpu";
  o.plan = po;
  ASSERT_TRUE(convert(o).ok());

  std::filesystem::create_directory(tmp / "piped");
  ProcessTarget target("cat > " + shell_quote((tmp / "piped").string()) + "/{name}");
  auto moved = pipe_every_file(*input, *plan, target, /*writers=*/3);
  ASSERT_TRUE(moved.ok()) << moved.status().message();
  for (const OutputFile& f : plan->files)
    EXPECT_EQ(read_bytes(tmp / "piped" / f.name), read_bytes(tmp / "dir" / f.name)) << f.name;
}

TEST_F(ProcessTargetTest, AFailingCommandFailsThePipelineAndInterruptsTheOthers) {
  std::mt19937_64 rng(test_seed());
  reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 4, 4, 64, 24), 1,
                              "diffusion_gemma");
  auto input = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(input.ok());
  PlanOptions po;
  po.max_shard_size = 40'000;
  auto plan = make_plan(*input, po);
  ASSERT_TRUE(plan.ok());
  const std::string victim = plan->files[0].name;
  // The first file's command exits at once without reading (EPIPE for the writer, or a non-zero
  // exit); the others would complete.
  ProcessTarget target("if [ {name} = " + victim + " ]; then exit 7; fi; cat > /dev/null");
  auto moved = pipe_every_file(*input, *plan, target, /*writers=*/2);
  ASSERT_FALSE(moved.ok());
  EXPECT_NE(moved.status().message().find(victim), std::string::npos) << moved.status().message();
}

} // namespace
} // namespace shardshift::testing
