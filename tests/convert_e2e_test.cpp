// convert_e2e_test.cpp: the shardshift binary end to end: synth -> plan -> convert -> inspect ->
// convert back, exit codes, stdout discipline, --print-size, --trace and Ctrl-C.
#include "shardshift/checkpoint.h"
#include "shardshift/units.h"

#include "test_support.h"

#include <algorithm>
#include <cstdlib>
#include <set>
#include <signal.h>
#include <spawn.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::run_shardshift;
using testing::run_shell;
using testing::shell_quoted;
using testing::TempDir;

class ConvertCli : public ::testing::Test {
protected:
  void SetUp() override {
    auto r = run_shardshift("synth " + shell_quoted(tmp / "hf") +
                            " --layers 2 --scale 16 --max-shard-size 4MB --seed 7");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  TempDir tmp;
};

TEST_F(ConvertCli, RoundTripThroughTheBinary) {
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                          shell_quoted(tmp / "native") + " --max-shard-size 3MB");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, ""); // results go to stderr unless --json
  EXPECT_NE(r.err.find("converted "), std::string::npos) << r.err; // the one-line summary
  EXPECT_NE(r.err.find("diffusion_gemma from_hf"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err; // no progress when not a tty

  auto ins = run_shardshift("inspect " + shell_quoted(tmp / "native"));
  ASSERT_EQ(ins.exit_code, 0) << ins.err;
  EXPECT_NE(ins.out.find("model.layers.1.moe.experts.down_projs"), std::string::npos);
  EXPECT_NE(ins.out.find("lm_head.weight"), std::string::npos);

  r = run_shardshift("convert " + shell_quoted(tmp / "native") + " " + shell_quoted(tmp / "back"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("diffusion_gemma to_hf"), std::string::npos) << r.err;
  auto hf = Checkpoint::open(tmp / "hf");
  auto back = Checkpoint::open(tmp / "back");
  ASSERT_TRUE(hf.ok() && back.ok());
  // Every decoder tensor comes back; the encoder keys do not (semantics 2.7).
  for (auto& [name, ref] : hf->tensors) {
    if (name.starts_with("model.encoder.")) {
      EXPECT_FALSE(back->find(name)) << name;
      continue;
    }
    auto b = back->find(name);
    ASSERT_TRUE(b) << name;
    EXPECT_EQ(back->info(*b).shape, hf->info(ref).shape) << name;
    // Pass-through and gate_up tensors come back byte for byte.
    if (!name.ends_with("down_proj") && !name.ends_with("per_expert_scale")) {
      auto x = hf->bytes(ref), y = back->bytes(*b);
      EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << name;
    }
  }
}

// The summary calls pass-through bytes zero-copy only when the kernel moved them: where they were
// copied (here every one, by threads filling the file), it says how much was.
TEST_F(ConvertCli, TheSummarySaysHowMuchOfThePassThroughWasCopied) {
  auto moved = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                              shell_quoted(tmp / "moved") + " --json");
  ASSERT_EQ(moved.exit_code, 0) << moved.err;
  const auto number = [](const std::string& json, const std::string& key) {
    const size_t at = json.find("\"" + key + "\": ");
    return at == std::string::npos ? -1.0 : std::stod(json.substr(at + key.size() + 4));
  };
  const double zero_copy = number(moved.out, "zero_copy_bytes");
  const double copied = number(moved.out, "fallback_copy_bytes");
  ASSERT_GE(zero_copy, 0);
  ASSERT_GE(copied, 0);
  auto summary =
      run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "moved2"));
  ASSERT_EQ(summary.exit_code, 0) << summary.err;
  if (copied == 0) // the kernel moved every byte (copy_file_range within one filesystem)
    EXPECT_NE(summary.err.find("; zero-copy "), std::string::npos) << summary.err;

  auto filled =
      run_shell("SHARDSHIFT_FILL=mapped " + std::string(SHARDSHIFT_BINARY) + " convert " +
                shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "filled") + " -j 4 </dev/null");
  ASSERT_EQ(filled.exit_code, 0) << filled.err;
  EXPECT_NE(filled.err.find("; passed through "), std::string::npos) << filled.err;
  EXPECT_NE(filled.err.find(" (0 B of it zero-copy), transformed "), std::string::npos)
      << filled.err;
  EXPECT_EQ(filled.err.find("; zero-copy "), std::string::npos) << filled.err;
}

TEST_F(ConvertCli, JsonGoesToStdoutAlone) {
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n") +
                          " --json -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out.front(), '{');
  EXPECT_NE(r.out.find("\"transformed_bytes\": "), std::string::npos) << r.out;
  auto p = run_shardshift("plan " + shell_quoted(tmp / "hf") + " --json");
  ASSERT_EQ(p.exit_code, 0) << p.err;
  EXPECT_NE(p.out.find("\"files\": ["), std::string::npos);
}

TEST_F(ConvertCli, PrintSizeMatchesTheFilesWritten) {
  auto p =
      run_shardshift("plan " + shell_quoted(tmp / "hf") + " --print-size --max-shard-size 2MB");
  ASSERT_EQ(p.exit_code, 0) << p.err;
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n") +
                          " --max-shard-size 2MB");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream lines(p.out);
  uint64_t size;
  std::string name;
  int n = 0;
  while (lines >> size >> name) {
    EXPECT_EQ(fs::file_size(tmp / "n" / name), size) << name;
    ++n;
  }
  EXPECT_GT(n, 1);
}

// A side file whose name holds a line break or a backslash keeps one line in --print-size,
// escaped as sha256sum escapes names, and the line read back names the file convert writes.
TEST_F(ConvertCli, PrintSizeKeepsEveryNameOnOneLine) {
  testing::write_bytes(tmp / "hf" / "new\nline.txt", "xy");
  testing::write_bytes(tmp / "hf" / "back\\slash.txt", "z");
  auto p = run_shardshift("plan " + shell_quoted(tmp / "hf") + " --print-size");
  ASSERT_EQ(p.exit_code, 0) << p.err;
  EXPECT_NE(p.out.find("\n\\2\tnew\\nline.txt\n"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("\n\\1\tback\\\\slash.txt\n"), std::string::npos) << p.out;
  ASSERT_EQ(run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n"))
                .exit_code,
            0);
  size_t files = 0;
  for (std::string line : testing::lines_of(p.out)) {
    const bool escaped = line[0] == '\\';
    const size_t tab = line.find('\t');
    ASSERT_NE(tab, std::string::npos) << line;
    const uint64_t size = std::stoull(line.substr(escaped, tab - escaped));
    std::string name;
    for (size_t i = tab + 1; i < line.size(); ++i) {
      if (escaped && line[i] == '\\')
        name += line[++i] == 'n' ? '\n' : line[i]; // \n or \\ in this test's names
      else
        name += line[i];
    }
    EXPECT_EQ(fs::file_size(tmp / "n" / name), size) << line;
    ++files;
  }
  auto written = testing::list_dir(tmp / "n");
  std::erase(written, std::string(OUTPUT_MARKER_NAME)); // the directory's marker, not an output
  EXPECT_EQ(files, written.size());
}

TEST_F(ConvertCli, StreamsOneFileToStdout) {
  // Each output file streamed through a pipe equals the file a directory conversion writes.
  ASSERT_EQ(run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "dir") +
                           " --max-shard-size 2MB -q")
                .exit_code,
            0);
  auto files = testing::list_dir(tmp / "dir");
  std::erase(files, std::string(OUTPUT_MARKER_NAME)); // the directory's marker, not an output file
  ASSERT_GT(files.size(), 3u);
  for (const std::string& name : files) {
    auto r = testing::run_shell(std::string(SHARDSHIFT_BINARY) + " convert " +
                                shell_quoted(tmp / "hf") + " - --max-shard-size 2MB --only " +
                                name + " | cat > " + shell_quoted(tmp / "streamed"));
    ASSERT_EQ(r.exit_code, 0) << name << ": " << r.err;
    const std::string bytes = testing::read_bytes(tmp / "dir" / name);
    EXPECT_TRUE(testing::read_bytes(tmp / "streamed") == bytes) << name;
    // The summary counts that one file: its bytes, and no tensor for the index or a side file.
    EXPECT_NE(r.err.find("into 1 file(s) in -: " + format_bytes(bytes.size()) + " in"),
              std::string::npos)
        << name << ": " << r.err;
    if (!name.ends_with(".safetensors"))
      EXPECT_EQ(r.err.rfind("converted 0 tensors ", 0), 0u) << name << ": " << r.err;
  }
  auto many = run_shardshift("convert " + shell_quoted(tmp / "hf") + " - --max-shard-size 2MB");
  EXPECT_EQ(many.exit_code, 2);
  EXPECT_NE(many.err.find("--only"), std::string::npos) << many.err;
  auto unknown =
      run_shardshift("convert " + shell_quoted(tmp / "hf") + " - --only nope.safetensors");
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_EQ(run_shardshift("convert " + shell_quoted(tmp / "hf") + " - --json").exit_code, 2);
}

// A full device behind stdout is not "choose another output directory": there is none.
TEST_F(ConvertCli, AFullStdoutSaysWhereSpaceIsMissing) {
  const std::string whole =
      std::string(SHARDSHIFT_BINARY) + " convert " + shell_quoted(tmp / "hf") + " - -q";
  auto one = run_shell(whole + " --max-shard-size 100MB > /dev/full");
  EXPECT_EQ(one.exit_code, 1) << one.err;
  EXPECT_NE(one.err.find("no space left where the stream is written"), std::string::npos)
      << one.err;
  EXPECT_EQ(one.err.find("output directory"), std::string::npos) << one.err;
  auto tar = run_shell(whole + " --format tar > /dev/full");
  EXPECT_EQ(tar.exit_code, 1) << tar.err;
  EXPECT_NE(tar.err.find("No space left on device"), std::string::npos) << tar.err;
}

TEST_F(ConvertCli, ExitCodes) {
  EXPECT_EQ(run_shardshift("convert " + shell_quoted(tmp / "hf")).exit_code, 2); // missing OUT
  EXPECT_EQ(run_shardshift("convert --bogus a b").exit_code, 2);                 // unknown flag
  EXPECT_EQ(run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "x") +
                           " --max-memory 12XB")
                .exit_code,
            2);
  EXPECT_EQ(run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "x") +
                           " --dtype int4")
                .exit_code,
            2);
  EXPECT_EQ(run_shardshift("nonsense").exit_code, 2);
  // A --device that is not auto, cpu, cuda or cuda:DIGITS is a usage error, not GPU 0.
  EXPECT_EQ(run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "x") +
                           " --device cuda:x")
                .exit_code,
            2);
  auto missing =
      run_shardshift("convert " + shell_quoted(tmp / "nope") + " " + shell_quoted(tmp / "x"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("nope"), std::string::npos) << missing.err;
  // --device cuda without a GPU (or without CUDA) is a clear error, not a silent fallback.
  // Into a directory the devices are counted beside the work, so the run has begun when it
  // fails: it must leave nothing behind, neither OUT nor a staging directory.
  if (std::getenv("SHARDSHIFT_EXPECT_GPU") == nullptr) {
    const auto entries = [&] {
      std::set<std::string> names;
      for (const auto& e : fs::directory_iterator(tmp.path()))
        names.insert(e.path().filename().string());
      return names;
    };
    const std::set<std::string> before = entries();
    auto cuda = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " +
                               shell_quoted(tmp / "x") + " --device cuda");
    if (cuda.exit_code != 0) {
      EXPECT_EQ(cuda.exit_code, 1);
      EXPECT_NE(cuda.err.find("--device cuda: no usable CUDA GPU"), std::string::npos) << cuda.err;
      EXPECT_EQ(entries(), before);
    }
  }
  auto help = run_shardshift("convert --help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag :
       {"--max-memory", "--device", "--dtype", "--exclude", "--ep-size", "--trace", "--stats",
        "--force", "--no-tied-head", "--writers", "Example"})
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
}

TEST_F(ConvertCli, CorruptInputFailsCleanly) {
  // Truncate one shard: the header promises more data than the file holds.
  fs::path shard;
  for (auto& e : fs::directory_iterator(tmp / "hf"))
    if (e.path().extension() == ".safetensors")
      shard = e.path();
  fs::resize_file(shard, fs::file_size(shard) - 100);
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(shard.filename().string()), std::string::npos) << r.err;
  EXPECT_EQ(testing::list_dir(tmp.path()), std::vector<std::string>{"hf"}); // nothing left behind
}

TEST_F(ConvertCli, TraceIsChromeTraceJson) {
  auto r = run_shardshift("convert " + shell_quoted(tmp / "hf") + " " + shell_quoted(tmp / "n") +
                          " --trace " + shell_quoted(tmp / "t.json") + " --stats");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string trace = testing::read_bytes(tmp / "t.json");
  EXPECT_EQ(trace.rfind("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[", 0), 0u);
  EXPECT_NE(trace.find("\"ph\":\"X\""), std::string::npos);
  EXPECT_NE(trace.find("\"name\":\"thread_name\""), std::string::npos);
  EXPECT_NE(r.err.find("transform_cpu"), std::string::npos) << r.err; // the --stats table
  // Its rows in the order a chunk meets the stages, not the order they were added in.
  size_t before = 0;
  for (const char* row : {"\nplan ", "\nopen ", "\nread ", "\ntransform_cpu ", "\nwrite_data ",
                          "\nrelease ", "\ncommit "}) {
    const size_t at = r.err.find(row);
    ASSERT_NE(at, std::string::npos) << row << " in\n" << r.err;
    EXPECT_GT(at, before) << row << " in\n" << r.err;
    before = at;
  }
}

// Starts `convert big n -j THREADS --max-memory 1MiB ARGS...` with `env` added to the
// environment, sends `signal` as soon as the staging directory appears (the pipeline is running),
// and checks the exit status 130 and that nothing but the inputs is left.
void interrupt_and_expect_nothing_left(const fs::path& dir, const char* threads,
                                       std::vector<std::string> args,
                                       const std::vector<std::string>& env, int signal = SIGINT) {
  auto big = run_shardshift("synth " + shell_quoted(dir / "big") + " --layers 4 --scale 4");
  ASSERT_EQ(big.exit_code, 0) << big.err;
  std::vector<std::string> words = {SHARDSHIFT_BINARY,    "convert", (dir / "big").string(),
                                    (dir / "n").string(), "-j",      threads,
                                    "--max-memory",       "1MiB"};
  words.insert(words.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& w : words)
    argv.push_back(w.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_words(env);
  for (char** e = environ; *e; ++e)
    env_words.emplace_back(*e);
  std::vector<char*> envp;
  for (std::string& e : env_words)
    envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, SHARDSHIFT_BINARY, nullptr, nullptr, argv.data(), envp.data()), 0);
  bool signalled = false;
  for (int i = 0; i < 20000 && !signalled; ++i) {
    for (auto& e : fs::directory_iterator(dir))
      if (e.path().filename().string().starts_with(".n.shardshift-tmp")) {
        kill(pid, signal);
        signalled = true;
      }
    if (waitpid(pid, nullptr, WNOHANG) == pid)
      FAIL() << "finished before it could be interrupted";
    usleep(200);
  }
  ASSERT_TRUE(signalled);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_EQ(testing::list_dir(dir), (std::vector<std::string>{"big", "hf"}));
}

TEST_F(ConvertCli, InterruptRemovesEverything) {
  interrupt_and_expect_nothing_left(tmp.path(), "1", {}, {});
}

// A closed terminal or a dropped ssh session: SIGHUP stops the run like Ctrl-C (it killed the
// process and left the staging directory behind).
TEST_F(ConvertCli, HangupRemovesEverything) {
  interrupt_and_expect_nothing_left(tmp.path(), "1", {}, {}, SIGHUP);
}

// Under nohup (SIGHUP ignored when the run starts) a hangup is not a request to stop.
TEST_F(ConvertCli, HangupIgnoredOnEntryKeepsRunning) {
  auto big = run_shardshift("synth " + shell_quoted(tmp / "big") + " --layers 4 --scale 4 -q");
  ASSERT_EQ(big.exit_code, 0) << big.err;
  const std::string script =
      "trap \"\" HUP; cd " + shell_quoted(tmp.path()) + " || exit; " + SHARDSHIFT_BINARY +
      " convert big n -j 1 --max-memory 1MiB -q & pid=$!; "
      "until ls -A | grep -q \"^[.]n[.]shardshift-tmp\" || ! kill -0 $pid; do :; done; "
      "kill -HUP $pid && echo sent; wait $pid";
  auto r = run_shell("sh -c " + shell_quoted(script));
  ASSERT_EQ(r.out, "sent\n") << "finished before the hangup could be sent: " << r.err;
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(tmp / "n" / OUTPUT_MARKER_NAME)) << "OUT committed: " << r.err;
}

// The same with the output's files (six, of at most 40 MB) filled at their offsets by several
// threads through shared mappings, two lanes at once: the interrupted files, opened mapped and
// filled out of order, go too, and so do those finished before the signal.
TEST_F(ConvertCli, InterruptRemovesEverythingWhenThreadsFillTheFiles) {
  interrupt_and_expect_nothing_left(tmp.path(), "6", {"--writers", "2", "--max-shard-size", "40MB"},
                                    {"SHARDSHIFT_FILL=mapped"});
}

} // namespace
} // namespace shardshift
