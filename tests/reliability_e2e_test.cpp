// reliability_e2e_test.cpp: the promises of issue 12 ("Nothing lost, ever") that this part keeps,
// through the shardshift binary:
//   - input is sacred: no flag removes or overwrites a path that is, contains or lies inside an
//     input (real paths, links resolved, both directions); --force replaces only a directory
//     holding shardshift's marker (or an empty one), and only while it holds nothing the
//     marker does not list                                     (defect 1: --force deleted IN)
//   - a deeply nested index is a format error, not a crash     (defect 2: SIGSEGV)
//   - OUT's problems fail before anything is written           (defect 8: dangling symlink)
//   - a stray shard is a warning and is not copied             (defect 10)
#include "shardshift/checkpoint.h"

#include "test_support.h"

#include <filesystem>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::list_dir;
using testing::read_bytes;
using testing::run_shardshift;
using testing::shell_quoted;
using testing::write_bytes;

class Reliability : public ::testing::Test {
protected:
  // p/in: a small sharded Hugging Face checkpoint; p/other.txt: an unrelated file beside it.
  void SetUp() override {
    fs::create_directory(tmp / "p");
    auto r = run_shardshift("synth " + shell_quoted(in()) + " --layers 1 --scale 32 --seed 1 -q " +
                            "--max-shard-size 1MB");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    write_bytes(tmp / "p" / "other.txt", "keep me");
    for (const std::string& name : list_dir(in()))
      before_[name] = read_bytes(in() / name);
    ASSERT_GT(before_.size(), 2u);
  }
  fs::path in() const { return tmp / "p" / "in"; }
  // The input and the file beside it are exactly as they were.
  void expect_input_intact() const {
    std::map<std::string, std::string> now;
    for (const std::string& name : list_dir(in()))
      now[name] = read_bytes(in() / name);
    EXPECT_TRUE(now == before_) << "the input changed";
    EXPECT_EQ(read_bytes(tmp / "p" / "other.txt"), "keep me");
  }
  testing::CommandResult convert(const fs::path& from, const fs::path& to,
                                 const std::string& flags = "--force -q") {
    return run_shardshift("convert " + shell_quoted(from) + " " + shell_quoted(to) + " " + flags);
  }

  testing::TempDir tmp;
  std::map<std::string, std::string> before_;
};

TEST_F(Reliability, ForceNeverReplacesOrWritesIntoTheInput) {
  const fs::path shard = in() / "model-00001-of-00002.safetensors";
  ASSERT_TRUE(fs::exists(shard));
  struct Case {
    fs::path from, to;
    const char* relation;
  };
  const Case cases[] = {
      {in(), tmp / "p", "OUT is the parent of IN (the reported defect)"},
      {in(), tmp.path(), "OUT is an ancestor of IN"},
      {in(), in(), "OUT is IN"},
      {in(), in() / "sub", "OUT inside IN"},
      {in(), in() / "model.safetensors.index.json", "OUT is a file of IN"},
      {shard, in(), "IN a file whose directory is OUT"},
      {shard, tmp / "p", "IN a file inside OUT"},
      {shard, shard, "OUT is the input file"},
      {in(), tmp / "p" / "." / "in" / "..", "OUT spelled with . and .."},
  };
  for (const Case& c : cases) {
    for (const char* flags : {"--force -q", "-q"}) {
      auto r = convert(c.from, c.to, flags);
      EXPECT_EQ(r.exit_code, 2) << c.relation << " " << flags << ": " << r.err;
      EXPECT_NE(r.err.find("the output must not"), std::string::npos) << c.relation << r.err;
      expect_input_intact();
    }
  }
  EXPECT_FALSE(fs::exists(in() / "sub"));
  EXPECT_EQ(list_dir(tmp / "p"), (std::vector<std::string>{"in", "other.txt"}));
}

TEST_F(Reliability, RealPathsAreCompared) {
  // A symlink to an ancestor of IN, used as OUT's parent: the real OUT contains IN.
  fs::create_directory_symlink(tmp.path(), tmp / "alias");
  auto r = convert(in(), tmp / "alias" / "p");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("the output must not be the input or contain it"), std::string::npos)
      << r.err;
  // IN given through a link, OUT its real parent.
  r = convert(tmp / "alias" / "p" / "in", tmp / "p");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  // A hub-cache layout: the shards are links into blobs/ elsewhere. A directory holding blobs/
  // (even one with shardshift's marker) is not replaced.
  fs::create_directories(tmp / "cache" / "blobs");
  fs::create_directories(tmp / "snap");
  for (const std::string& name : list_dir(in())) {
    fs::copy_file(in() / name, tmp / "cache" / "blobs" / name);
    fs::create_symlink(tmp / "cache" / "blobs" / name, tmp / "snap" / name);
  }
  write_bytes(tmp / "cache" / OUTPUT_MARKER_NAME, "shardshift-output 1\n");
  r = convert(tmp / "snap", tmp / "cache");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("blobs"), std::string::npos) << r.err;
  EXPECT_EQ(list_dir(tmp / "cache" / "blobs").size(), before_.size());
  expect_input_intact();
}

TEST_F(Reliability, ForceReplacesOnlyAPreviousOutput) {
  // A directory shardshift did not write is refused, and left as it was.
  fs::create_directory(tmp / "mine");
  write_bytes(tmp / "mine" / "notes.txt", "precious");
  auto r = convert(in(), tmp / "mine");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("exists and is not a previous shardshift output (it has no "
                       ".shardshift-output file), so --force will not replace it"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(list_dir(tmp / "mine"), std::vector<std::string>{"notes.txt"});
  // A marker that is not shardshift's, or a link to one, proves nothing.
  write_bytes(tmp / "mine" / OUTPUT_MARKER_NAME, "something else\n");
  EXPECT_EQ(convert(in(), tmp / "mine").exit_code, 2);
  fs::remove(tmp / "mine" / OUTPUT_MARKER_NAME);
  write_bytes(tmp / "marker", "shardshift-output 1\n");
  fs::create_symlink(tmp / "marker", tmp / "mine" / OUTPUT_MARKER_NAME);
  EXPECT_EQ(convert(in(), tmp / "mine").exit_code, 2);
  EXPECT_EQ(read_bytes(tmp / "mine" / "notes.txt"), "precious");

  // Every output carries the marker, which lists the files the run wrote; --force replaces such
  // an output, its own files only (here an output of more shards than the new one has).
  ASSERT_EQ(convert(in(), tmp / "out", "-q --max-shard-size 200KB --checksums").exit_code, 0);
  const std::string marker = read_bytes(tmp / "out" / OUTPUT_MARKER_NAME);
  EXPECT_EQ(marker.rfind("shardshift-output 2\n", 0), 0u) << marker;
  for (const std::string& name : list_dir(tmp / "out"))
    if (name != OUTPUT_MARKER_NAME)
      EXPECT_NE(marker.find("\n" + name + "\n"), std::string::npos) << name << " is not listed";
  const size_t old_files = list_dir(tmp / "out").size();
  r = convert(in(), tmp / "out");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_LT(list_dir(tmp / "out").size(), old_files);
  // A file or a directory it does not list is the user's: --force refuses, naming them, and
  // removes nothing; once they are moved out, --force replaces the output.
  write_bytes(tmp / "out" / "notes.txt", "the user's");
  fs::create_directories(tmp / "out" / "runs");
  write_bytes(tmp / "out" / "runs" / "train.log", "the user's too");
  r = convert(in(), tmp / "out");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("out: holds 2 entries that shardshift did not write (notes.txt, runs/), "
                       "which --force would remove with the old output"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(read_bytes(tmp / "out" / "notes.txt"), "the user's");
  EXPECT_EQ(read_bytes(tmp / "out" / "runs" / "train.log"), "the user's too");
  fs::remove(tmp / "out" / "notes.txt");
  fs::remove_all(tmp / "out" / "runs");
  // A link or a FIFO, even at a name the marker lists, is not a file shardshift wrote: named for
  // what it is, and kept.
  const std::string listed = list_dir(tmp / "out").front() == OUTPUT_MARKER_NAME
                                 ? list_dir(tmp / "out").back()
                                 : list_dir(tmp / "out").front();
  fs::rename(tmp / "out" / listed, tmp / "kept");
  fs::create_symlink(tmp / "kept", tmp / "out" / listed);
  ASSERT_EQ(::mkfifo((tmp / "out" / "pipe").c_str(), 0600), 0);
  r = convert(in(), tmp / "out");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(listed + " (a symbolic link)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("pipe (a FIFO)"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_symlink(tmp / "out" / listed));
  EXPECT_TRUE(fs::is_fifo(tmp / "out" / "pipe"));
  fs::remove(tmp / "out" / listed);
  fs::remove(tmp / "out" / "pipe");
  fs::rename(tmp / "kept", tmp / "out" / listed);
  EXPECT_EQ(convert(in(), tmp / "out").exit_code, 0);
  // A marker larger than any shardshift writes is not read, and proves nothing.
  const std::string good_marker = read_bytes(tmp / "out" / OUTPUT_MARKER_NAME);
  fs::resize_file(tmp / "out" / OUTPUT_MARKER_NAME, (64u << 20) + 1);
  r = convert(in(), tmp / "out");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("is larger than 64 MiB, more than any shardshift writes"), std::string::npos)
      << r.err;
  write_bytes(tmp / "out" / OUTPUT_MARKER_NAME, good_marker);
  EXPECT_EQ(convert(in(), tmp / "out").exit_code, 0);
  // A marker naming what shardshift never writes (absolute paths, "..") stands for nothing
  // (it once made --force loop for ever on "/x").
  write_bytes(tmp / "out" / OUTPUT_MARKER_NAME,
              read_bytes(tmp / "out" / OUTPUT_MARKER_NAME) + "/x\n//\n../outside\n");
  EXPECT_EQ(convert(in(), tmp / "out").exit_code, 0);
  // An output of an older shardshift (format 1, no list) is replaced whole, as it was then.
  write_bytes(tmp / "out" / OUTPUT_MARKER_NAME, "shardshift-output 1\n");
  write_bytes(tmp / "out" / "stale.txt", "from an older run");
  r = convert(in(), tmp / "out");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "out" / "stale.txt"));
  EXPECT_TRUE(fs::exists(tmp / "out" / OUTPUT_MARKER_NAME));
  fs::create_directory(tmp / "empty");
  EXPECT_EQ(convert(in(), tmp / "empty").exit_code, 0);
  // Without --force an existing output is refused as before.
  r = convert(in(), tmp / "out", "-q");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("already exists; pass --force to replace it"), std::string::npos) << r.err;
  expect_input_intact();
}

// A file system mounted inside an old output is not the output's, whatever its marker says:
// --force would empty it with the old output. Refused with both marker formats; needs root.
TEST_F(Reliability, ForceNeverEmptiesAFileSystemMountedInside) {
  ASSERT_EQ(convert(in(), tmp / "out", "-q").exit_code, 0);
  fs::create_directory(tmp / "out" / "m nt");
  const std::string mount_point = shell_quoted(tmp / "out" / "m nt");
  if (testing::run_shell("mount -t tmpfs -o size=1m tmpfs " + mount_point).exit_code != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root)";
  struct Unmount {
    std::string point;
    ~Unmount() { testing::run_shell("umount " + point); }
  } unmount{mount_point};
  write_bytes(tmp / "out" / "m nt" / "data", "the user's");
  const std::string marker = read_bytes(tmp / "out" / OUTPUT_MARKER_NAME);
  for (const std::string& first_line :
       {std::string("shardshift-output 2"), std::string("shardshift-output 1")}) {
    SCOPED_TRACE(first_line);
    write_bytes(tmp / "out" / OUTPUT_MARKER_NAME, first_line + marker.substr(marker.find('\n')));
    auto r = convert(in(), tmp / "out");
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("out: a file system is mounted inside it (m nt), which --force would "
                         "empty with the old output"),
              std::string::npos)
        << r.err;
    EXPECT_EQ(read_bytes(tmp / "out" / "m nt" / "data"), "the user's");
  }
}

TEST_F(Reliability, OutputProblemsFailBeforeWriting) {
  // A dangling symlink used to fail at the final rename, after the whole output was written.
  fs::create_symlink(tmp / "nowhere" / "x", tmp / "dangling");
  for (const char* flags : {"-q", "--force -q"}) {
    auto r = convert(in(), tmp / "dangling", flags);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("dangling: is a symbolic link (to '" + (tmp / "nowhere" / "x").string() +
                         "', which does not exist)"),
              std::string::npos)
        << r.err;
  }
  // A link to a directory: the rename would replace the link, not what it points to.
  fs::create_directory(tmp / "real");
  fs::create_directory_symlink(tmp / "real", tmp / "link");
  EXPECT_EQ(convert(in(), tmp / "link").exit_code, 2);
  // An existing file, with or without --force.
  write_bytes(tmp / "file", "keep");
  EXPECT_EQ(convert(in(), tmp / "file").exit_code, 2);
  EXPECT_EQ(convert(in(), tmp / "file", "-q").exit_code, 2);
  EXPECT_EQ(read_bytes(tmp / "file"), "keep");
  // A parent that is a file, or missing.
  EXPECT_EQ(convert(in(), tmp / "file" / "out").exit_code, 2);
  EXPECT_EQ(convert(in(), tmp / "missing" / "out").exit_code, 2);
  // Nothing was created anywhere: no output, no staging directory.
  EXPECT_EQ(list_dir(tmp.path()),
            (std::vector<std::string>{"dangling", "file", "link", "p", "real"}));
  EXPECT_TRUE(list_dir(tmp / "real").empty());
  expect_input_intact();
}

// A file-size limit (ulimit -f) sends SIGXFSZ at the write that passes it, whose default action
// ends the process with no message and the staging directory left behind. The write fails with
// EFBIG instead: a clear error, exit 1, nothing left.
TEST_F(Reliability, AFileSizeLimitIsAnErrorAndLeavesNothing) {
  auto r = testing::run_shell("ulimit -f 200 && " + std::string(SHARDSHIFT_BINARY) + " convert " +
                              shell_quoted(in()) + " " + shell_quoted(tmp / "p" / "out") +
                              " -q </dev/null");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("File too large"), std::string::npos) << r.err;
  EXPECT_EQ(list_dir(tmp / "p"), (std::vector<std::string>{"in", "other.txt"}));
  expect_input_intact();
}

// A tar stream into a file that a size limit stops where an entry's data ends: the file is cut
// back inside that entry (tar_target.h), and the message counts what the file then holds, not
// what was written before the cut. The limits are chosen from the whole archive's entries so
// that the short write ends between an entry's last data byte and the end of the header after it
// (the run_shell's sh counts ulimit -f in blocks of 512 bytes).
TEST_F(Reliability, AStoppedTarStreamSaysWhatItsFileHolds) {
  const fs::path whole = tmp / "p" / "whole.tar";
  ASSERT_EQ(testing::run_shell(std::string(SHARDSHIFT_BINARY) + " convert " + shell_quoted(in()) +
                               " - --format tar -q </dev/null >" + shell_quoted(whole))
                .exit_code,
            0);
  const std::string archive = testing::read_bytes(whole);
  std::vector<uint64_t> limits; // in blocks of 512 bytes, as sh's ulimit -f takes them
  for (uint64_t at = 0; at + 512 <= archive.size() && archive[at] != '\0';) {
    const uint64_t size = std::stoull(archive.substr(at + 124, 11), nullptr, 8);
    const uint64_t data_end = at + 512 + size, next = at + 512 + (size + 511) / 512 * 512;
    for (uint64_t blocks = data_end / 512; blocks * 512 < next + 512; ++blocks)
      if (blocks * 512 >= data_end && blocks * 512 < archive.size() && size > 0)
        limits.push_back(blocks);
    at = next;
  }
  ASSERT_FALSE(limits.empty()) << "no entry ends where a limit can stop the stream";
  for (uint64_t limit : limits) {
    SCOPED_TRACE(limit);
    const fs::path out = tmp / "p" / "out.tar";
    auto r = testing::run_shell("ulimit -f " + std::to_string(limit) + " && " +
                                std::string(SHARDSHIFT_BINARY) + " convert " + shell_quoted(in()) +
                                " - --format tar -q </dev/null >" + shell_quoted(out));
    ASSERT_EQ(r.exit_code, 1) << r.err;
    const size_t at = r.err.find(" bytes had been written to stdout");
    ASSERT_NE(at, std::string::npos) << r.err;
    const size_t from = r.err.find_last_not_of("0123456789", at - 1) + 1;
    EXPECT_EQ(std::stoull(r.err.substr(from, at - from)), fs::file_size(out)) << r.err;
    EXPECT_LT(fs::file_size(out), limit * 512) << "cut back inside the entry";
    EXPECT_NE(testing::run_shell("tar -tf " + shell_quoted(out) + " >/dev/null").exit_code, 0);
    fs::remove(out);
  }
}

// --json's report goes to stdout after the work: a stdout that cannot take it is refused before
// any (exit 2), and one that fails at the end says the output is complete, not that the run
// failed with nothing left.
TEST_F(Reliability, AJsonReportThatCannotBeWrittenDoesNotHideACompleteOutput) {
  auto closed = convert(in(), tmp / "p" / "out", "-q --json >&-");
  EXPECT_EQ(closed.exit_code, 2) << closed.err;
  EXPECT_NE(closed.err.find("--json writes its report to stdout, which is not open for writing"),
            std::string::npos)
      << closed.err;
  EXPECT_FALSE(fs::exists(tmp / "p" / "out"));
  auto full = convert(in(), tmp / "p" / "out", "-q --json >/dev/full");
  EXPECT_EQ(full.exit_code, 1) << full.err;
  EXPECT_NE(full.err.find("the conversion finished and its output is complete (" +
                          (tmp / "p" / "out").string() +
                          "), but the --json report could not be written to stdout"),
            std::string::npos)
      << full.err;
  EXPECT_TRUE(fs::exists(tmp / "p" / "out" / "model.safetensors"));
  // synth likewise.
  const std::string synth =
      "synth " + shell_quoted(tmp / "p" / "s") + " --layers 1 --scale 32 -q --json";
  auto synth_closed = run_shardshift(synth + " >&-");
  EXPECT_EQ(synth_closed.exit_code, 2) << synth_closed.err;
  EXPECT_FALSE(fs::exists(tmp / "p" / "s"));
  auto synth_full = run_shardshift(synth + " >/dev/full");
  EXPECT_EQ(synth_full.exit_code, 1) << synth_full.err;
  EXPECT_NE(synth_full.err.find("the checkpoint is written (" + (tmp / "p" / "s").string() +
                                "), but the --json report could not be written to stdout"),
            std::string::npos)
      << synth_full.err;
}

TEST_F(Reliability, UnwritableParentFailsBeforeWriting) {
  if (geteuid() == 0)
    GTEST_SKIP() << "root may write any directory";
  fs::create_directory(tmp / "ro");
  fs::permissions(tmp / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  auto r = convert(in(), tmp / "ro" / "out");
  fs::permissions(tmp / "ro", fs::perms::owner_all);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("cannot create the output in this directory"), std::string::npos) << r.err;
}

TEST_F(Reliability, DeeplyNestedIndexIsAnErrorNotACrash) {
  // 20,000 nested arrays (40 KB) in the index's metadata crashed every command (SIGSEGV).
  const fs::path index = in() / INDEX_FILE_NAME;
  std::string text = read_bytes(index);
  const size_t at = text.find("\"metadata\"");
  ASSERT_NE(at, std::string::npos) << text;
  text.insert(text.find('{', at) + 1,
              "\"deep\": " + std::string(20'000, '[') + std::string(20'000, ']') + ", ");
  write_bytes(index, text);
  for (const std::string& command :
       {"inspect " + shell_quoted(in()), "plan " + shell_quoted(in()),
        "convert " + shell_quoted(in()) + " " + shell_quoted(tmp / "n")}) {
    auto r = run_shardshift(command);
    EXPECT_EQ(r.exit_code, 1) << command << ": " << r.err;
    EXPECT_NE(r.err.find(index.string() +
                         ": index has nesting deeper than 64 levels of arrays and objects"),
              std::string::npos)
        << command << ": " << r.err;
  }
  EXPECT_FALSE(fs::exists(tmp / "n"));
}

TEST_F(Reliability, StrayShardIsAWarningAndIsNotCopied) {
  fs::copy_file(in() / "model-00001-of-00002.safetensors", in() / "leftover.safetensors");
  const std::string warning = "shardshift: warning: " + (in() / "leftover.safetensors").string() +
                              ": not listed in model.safetensors.index.json; ignored (not "
                              "converted, not copied into the output)\n";
  for (const std::string& command :
       {"inspect " + shell_quoted(in()), "plan " + shell_quoted(in()),
        "convert " + shell_quoted(in()) + " " + shell_quoted(tmp / "n")}) {
    auto r = run_shardshift(command);
    EXPECT_EQ(r.exit_code, 0) << command << ": " << r.err;
    EXPECT_EQ(r.err.rfind(warning, 0), 0u) << command << ": " << r.err;
    auto quiet = run_shardshift(command + " -q --force");
    if (command.starts_with("convert"))
      EXPECT_EQ(quiet.err, "") << command;
  }
  EXPECT_EQ(list_dir(tmp / "n"),
            (std::vector<std::string>{".shardshift-output", "config.json", "model.safetensors"}));
  EXPECT_EQ(run_shardshift("inspect " + shell_quoted(in()) + " -q").err, "");
}

} // namespace
} // namespace shardshift
