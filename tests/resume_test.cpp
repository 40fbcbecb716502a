// resume_test.cpp: --resume through the library (issue 12, "crash-safe runs that resume"). A run
// that fails with resume set keeps its staging directory, its finished files and the plan's
// fingerprint; the next run with resume keeps exactly the files that match the plan and writes
// the rest, and the output is byte-identical to an uninterrupted run. Without resume, or when the
// plan differs (other flags, an input file changed), the leftover is removed, never used.
#include "convert_harness.h"
#include "resume.h"
#include "staging.h"

#include <chrono>
#include <fcntl.h>
#include <fstream>
#include <sys/stat.h>
#include <thread>

namespace shardshift::testing {
namespace {

namespace fs = std::filesystem;

// Fails the rename that commits the output file named `victim` (after all its bytes were written).
class FailOneCommit final : public ForwardingIo {
public:
  FailOneCommit(Io& base, std::string victim) : ForwardingIo(base), victim_(std::move(victim)) {}
  int rename(const char* from, const char* to) override {
    if (std::string_view(to).ends_with("/" + victim_)) {
      errno = EIO;
      return -1;
    }
    return ForwardingIo::rename(from, to);
  }

private:
  std::string victim_;
};

// The staging directories beside `out`.
std::vector<fs::path> staging_dirs(const fs::path& out) {
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(out.parent_path()))
    if (e.path().filename().string().starts_with("." + out.filename().string() + ".shardshift-"))
      dirs.push_back(e.path());
  return dirs;
}

// Every file of `dir`, by name, with its bytes.
class Resume : public ConvertTest {
protected:
  void SetUp() override {
    ConvertTest::SetUp();
    reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 6, 4, 96, 40), 2,
                                "diffusion_gemma");
    plan_options.max_shard_size = 90'000;
    auto plan = plan_conversion(tmp / "hf", plan_options);
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    files = plan->files.size();
    ASSERT_GE(files, 5u);
    names.clear();
    for (const OutputFile& f : plan->files)
      names.push_back(f.name);
    ASSERT_TRUE(run(tmp / "hf", tmp / "ref", with({})).ok());
  }
  // Options for a run into tmp/out: the plan options, one writer lane (so files finish in plan
  // order), checksums, and whatever `more` sets.
  ConvertOptions with(std::function<void(ConvertOptions&)> more) {
    return opts([&](ConvertOptions& o) {
      o.plan = plan_options;
      o.writers = 1;
      o.checksums = true;
      if (more)
        more(o);
    });
  }
  // A run with resume that fails when it commits files[victim]: files before it are finished.
  void fail_at(size_t victim) {
    FailOneCommit io(Io::system(), names[victim]);
    auto r = run(tmp / "hf", tmp / "out", with([&](ConvertOptions& o) {
                   o.resume = true;
                   o.io = &io;
                 }));
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("run the same command with --resume"), std::string::npos)
        << r.status().message();
    ASSERT_EQ(staging_dirs(tmp / "out").size(), 1u);
    EXPECT_FALSE(fs::exists(tmp / "out"));
  }
  PlanOptions plan_options;
  size_t files = 0;
  std::vector<std::string> names;
};

TEST_F(Resume, AFailedRunIsContinuedAndGivesTheSameBytes) {
  fail_at(3);
  const fs::path staging = staging_dirs(tmp / "out").front();
  EXPECT_EQ(read_fingerprint(staging).size(), 64u);
  for (size_t i = 0; i < 3; ++i) // finished under their final names
    EXPECT_TRUE(fs::is_regular_file(staging / names[i])) << names[i];

  std::vector<std::string> notes;
  ConvertCallbacks cb;
  cb.warnings = [&](const std::vector<std::string>& w) {
    notes.insert(notes.end(), w.begin(), w.end());
  };
  ConvertOptions o = with([](ConvertOptions& o) { o.resume = true; });
  o.input = tmp / "hf";
  o.output = tmp / "out";
  o.device = "cpu";
  auto r = convert(o, cb);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->kept_files, 3u);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("3 of " + std::to_string(files) + " file(s) were finished"),
            std::string::npos)
      << notes[0];
  EXPECT_EQ(files_of(tmp / "out"), files_of(tmp / "ref"));
  EXPECT_TRUE(staging_dirs(tmp / "out").empty());
  EXPECT_FALSE(fs::exists(tmp / "out" / PLAN_FINGERPRINT_NAME));
}

TEST_F(Resume, ChecksumsOfKeptFilesAreReadBackFromDisk) {
  fail_at(2);
  auto r = run(tmp / "hf", tmp / "out", with([](ConvertOptions& o) { o.resume = true; }));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->kept_files, 2u);
  // SHA256SUMS lists every file, the kept ones included, as an uninterrupted run does.
  EXPECT_EQ(read_bytes(tmp / "out" / "SHA256SUMS"), read_bytes(tmp / "ref" / "SHA256SUMS"));
  auto check = run_shell("cd " + shell_quoted(tmp / "out") + " && sha256sum -c --quiet SHA256SUMS");
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
}

TEST_F(Resume, AKeptFileThatDoesNotMatchThePlanIsWrittenAgain) {
  fail_at(3);
  const fs::path staging = staging_dirs(tmp / "out").front();
  // One finished file cut short, one with a changed header byte: neither can be trusted.
  fs::resize_file(staging / names[0], fs::file_size(staging / names[0]) - 1);
  std::string second = read_bytes(staging / names[1]);
  second[9] ^= 1;
  write_bytes(staging / names[1], second);
  auto r = run(tmp / "hf", tmp / "out", with([](ConvertOptions& o) { o.resume = true; }));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kept_files, 1u);
  EXPECT_EQ(files_of(tmp / "out"), files_of(tmp / "ref"));
}

// A FIFO at a finished file's name is not that file, and looking at it must not wait for a
// writer that never comes (opening it for reading blocked the resume for ever, deaf to signals).
TEST_F(Resume, AFifoAtAKeptNameIsWrittenAgainWithoutWaiting) {
  fail_at(3);
  const fs::path staging = staging_dirs(tmp / "out").front();
  fs::remove(staging / names[0]);
  ASSERT_EQ(::mkfifo((staging / names[0]).c_str(), 0600), 0);
  auto r = run(tmp / "hf", tmp / "out", with([](ConvertOptions& o) { o.resume = true; }));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->kept_files, 2u); // of the three finished
  EXPECT_EQ(files_of(tmp / "out"), files_of(tmp / "ref"));
}

TEST_F(Resume, WithoutResumeTheLeftoverIsRemovedNotUsed) {
  fail_at(3);
  std::vector<std::string> notes;
  ConvertCallbacks cb;
  cb.warnings = [&](const std::vector<std::string>& w) {
    notes.insert(notes.end(), w.begin(), w.end());
  };
  ConvertOptions o = with({});
  o.input = tmp / "hf";
  o.output = tmp / "out";
  o.device = "cpu";
  auto r = convert(o, cb);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->kept_files, 0u);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("removed the staging directory of an earlier run"), std::string::npos);
  EXPECT_EQ(files_of(tmp / "out"), files_of(tmp / "ref"));
  EXPECT_TRUE(staging_dirs(tmp / "out").empty());
}

TEST_F(Resume, ADifferentPlanOrAChangedInputIsNeverResumed) {
  struct Case {
    const char* what;
    std::function<void(ConvertOptions&)> flags;
    bool touch_input;
  };
  const Case cases[] = {
      {"another --dtype", [](ConvertOptions& o) { o.plan.expert_dtype = DType::F32; }, false},
      {"another --max-shard-size", [](ConvertOptions& o) { o.plan.max_shard_size = 300'000; },
       false},
      {"an input shard modified since", nullptr, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    fs::remove_all(tmp / "out");
    fs::remove_all(tmp / "ref2");
    fail_at(3);
    if (c.touch_input) { // same bytes, a later modification time: the run cannot know
      fs::path shard;
      for (const std::string& name : list_dir(tmp / "hf"))
        if (name.ends_with(".safetensors"))
          shard = tmp / "hf" / name;
      ASSERT_FALSE(shard.empty());
      struct timespec times[2] = {{0, UTIME_OMIT}, {1'000'000'000, 0}};
      ASSERT_EQ(::utimensat(AT_FDCWD, shard.c_str(), times, 0), 0);
    }
    auto r = run(tmp / "hf", tmp / "out", with([&](ConvertOptions& o) {
                   o.resume = true;
                   if (c.flags)
                     c.flags(o);
                 }));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->kept_files, 0u);
    ASSERT_TRUE(run(tmp / "hf", tmp / "ref2", with([&](ConvertOptions& o) {
                      if (c.flags)
                        c.flags(o);
                    }))
                    .ok());
    EXPECT_EQ(files_of(tmp / "out"), files_of(tmp / "ref2"));
    EXPECT_TRUE(staging_dirs(tmp / "out").empty());
  }
}

TEST_F(Resume, TheFingerprintFollowsThePlanAndTheInputFiles) {
  auto input = Checkpoint::open(tmp / "hf");
  ASSERT_TRUE(input.ok());
  auto plan = make_plan(*input, plan_options);
  ASSERT_TRUE(plan.ok());
  const std::string base = plan_fingerprint(*input, *plan);
  EXPECT_EQ(base.size(), 64u);
  EXPECT_EQ(plan_fingerprint(*input, *plan), base); // a function of its inputs
  PlanOptions other = plan_options;
  other.expert_dtype = DType::F32;
  auto plan2 = make_plan(*input, other);
  ASSERT_TRUE(plan2.ok());
  EXPECT_NE(plan_fingerprint(*input, *plan2), base);
}

// A shard rewritten in place with its modification time put back (touch -r, cp -p onto it) is
// another input: its change time moved, and with it both kinds of fingerprint.
TEST_F(Resume, AShardRewrittenWithItsTimePutBackIsAnotherInput) {
  const fs::path shard = tmp / "hf" / "part-0.safetensors";
  ASSERT_TRUE(fs::exists(shard));
  auto fingerprints = [&] {
    auto input = Checkpoint::open(tmp / "hf");
    EXPECT_TRUE(input.ok());
    auto plan = make_plan(*input, plan_options);
    EXPECT_TRUE(plan.ok());
    return std::pair{plan_fingerprint(*input, *plan, InputIdentity::local),
                     plan_fingerprint(*input, *plan, InputIdentity::shared)};
  };
  const auto before = fingerprints();
  struct stat st {};
  ASSERT_EQ(::stat(shard.c_str(), &st), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(20)); // a later change time
  std::string bytes = read_bytes(shard);
  bytes.back() ^= 0x55; // a byte of tensor data
  {
    std::ofstream out(shard, std::ios::binary | std::ios::in | std::ios::out);
    out.seekp(static_cast<std::streamoff>(bytes.size() - 1));
    out.put(bytes.back());
  }
  const timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, shard.c_str(), times, 0), 0);
  struct stat after_st {};
  ASSERT_EQ(::stat(shard.c_str(), &after_st), 0);
  ASSERT_EQ(after_st.st_mtim.tv_nsec, st.st_mtim.tv_nsec) << "the time was put back";
  const auto after = fingerprints();
  EXPECT_NE(after.first, before.first);
  EXPECT_NE(after.second, before.second);
  EXPECT_NE(before.first, before.second); // the two identities are told apart
}

TEST_F(Resume, TheFingerprintCoversEveryPieceOfAStackedTensor) {
  reference::write_checkpoint(tmp / "qwen", reference::tiny_qwen3(rng, 1, 3, 4, 2), 2, "qwen3_moe");
  auto input = Checkpoint::open(tmp / "qwen");
  ASSERT_TRUE(input.ok()) << input.status().message();
  auto plan = make_plan(*input, PlanOptions{});
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  const std::string base = plan_fingerprint(*input, *plan);
  auto stacked = std::find_if(plan->tensors.begin(), plan->tensors.end(),
                              [](const OutputTensor& t) { return t.pieces.size() >= 2; });
  ASSERT_NE(stacked, plan->tensors.end());
  std::swap(stacked->pieces[0].source, stacked->pieces[1].source); // same sizes, other bytes
  EXPECT_NE(plan_fingerprint(*input, *plan), base);
}

TEST_F(Resume, ResumeIsRefusedWhereNothingCanBeTakenBack) {
  auto to_stdout = run(tmp / "hf", "-", with([](ConvertOptions& o) {
                         o.resume = true;
                         o.only = "model.safetensors.index.json";
                       }));
  ASSERT_FALSE(to_stdout.ok());
  EXPECT_EQ(to_stdout.status().code(), Errc::invalid_argument);
  auto piped = run(tmp / "hf", "", with([](ConvertOptions& o) {
                     o.resume = true;
                     o.pipe_to = "cat > /dev/null";
                   }));
  ASSERT_FALSE(piped.ok());
  EXPECT_EQ(piped.status().code(), Errc::invalid_argument);
  EXPECT_NE(piped.status().message().find("--resume"), std::string::npos);
}

} // namespace
} // namespace shardshift::testing
