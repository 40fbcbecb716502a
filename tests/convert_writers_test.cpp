// convert_writers_test.cpp: output files as units of work. Several writer lanes, thread counts and
// memory budgets (down to the smallest chunk, which cuts copy runs into many pieces) give the same
// bytes as one lane, and those bytes match the independent reference; a failure in one lane stops
// every lane and leaves nothing behind.
#include "shardshift/io.h"

#include "convert_harness.h"
#include "emitter.h"
#include "pipeline.h"
#include "sha256.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <sys/mount.h>
#include <thread>
#include <tuple>

namespace shardshift::testing {
namespace {

using reference::Dict;

// Sets an environment variable for a scope, restoring what was there.
class ScopedEnv {
public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name))
      old_ = old;
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST_F(ConvertTest, WritersThreadsBudgetsAndFillsGiveTheSameBytes) {
  // Pass-through tensors larger than the smallest chunk (64 KiB), so copy runs are cut in pieces.
  Dict in = reference::tiny_diffusion(rng, 6, 4, 96, 40);
  in["model.decoder.embed_tokens.weight"] = reference::random_tensor(rng, DType::BF16, {512, 96});
  reference::write_checkpoint(tmp / "hf", in, 3, "diffusion_gemma");

  std::optional<ScopedEnv> fill(std::in_place, "SHARDSHIFT_FILL", "write");
  auto base = run(tmp / "hf", tmp / "w1", opts([](ConvertOptions& o) {
                    o.writers = 1;
                    o.plan.max_shard_size = 120'000;
                  }));
  ASSERT_TRUE(base.ok());
  ASSERT_GE(base->files, 4u) << "the test needs several output files";
  EXPECT_EQ(base->writers, 1u);
  EXPECT_FALSE(base->filled_by_threads);
  reference::expect_same(reference::read_checkpoint(tmp / "w1"),
                         reference::ref_from_hf(in, true, {}));
  const auto want = files_of(tmp / "w1");

  // Each file written in order by its lane, and filled by the threads that run its items.
  int n = 0;
  for (const char* mode : {"write", "mapped"}) {
    fill.emplace("SHARDSHIFT_FILL", mode);
    const bool mapped = std::string_view(mode) == "mapped";
    for (unsigned writers : {1u, 2u, 3u, 16u})
      for (unsigned threads : {1u, 2u, 5u})
        for (uint64_t budget : {uint64_t{256} << 10, uint64_t{1} << 30}) {
          const std::string out = "out" + std::to_string(n++);
          auto r = run(tmp / "hf", tmp / out, opts([&](ConvertOptions& o) {
                         o.writers = writers;
                         o.threads = threads;
                         o.max_memory = budget;
                         o.plan.max_shard_size = 120'000;
                       }));
          ASSERT_TRUE(r.ok()) << mode << ", " << writers << " writers, " << threads
                              << " threads: " << r.status().message();
          EXPECT_EQ(r->writers, std::min<uint64_t>(writers, base->files));
          EXPECT_EQ(r->filled_by_threads, mapped);
          if (mapped) // no byte went through the kernel's copy: each was put in place by a thread
            EXPECT_EQ(r->zero_copy_bytes, 0u);
          EXPECT_EQ(files_of(tmp / out), want) << mode << ", " << writers << " writers, " << threads
                                               << " threads, budget " << budget;
        }
  }
}

// A tiny diffusion_gemma checkpoint in three shards at tmp/hf, planned into output files of at
// most 120 kB: more files than the lanes the tests below run.
class SeveralFilesTest : public ConvertTest {
protected:
  void SetUp() override {
    ConvertTest::SetUp();
    reference::write_checkpoint(tmp / "hf", reference::tiny_diffusion(rng, 6, 4, 96, 40), 3,
                                "diffusion_gemma");
    plan_options.max_shard_size = 120'000;
    auto planned = plan_conversion(tmp / "hf", plan_options);
    ASSERT_TRUE(planned.ok());
    plan = std::move(*planned);
    ASSERT_GE(plan.files.size(), 4u) << "the tests need more files than lanes";
  }
  PlanOptions plan_options;
  Plan plan;
};

TEST_F(SeveralFilesTest, EachLaneSaysWhenItEndedAndItsLastFile) {
  std::set<std::string> names;
  for (const OutputFile& f : plan.files)
    names.insert(f.name);
  for (unsigned writers : {1u, 3u}) {
    auto r = run(tmp / "hf", tmp / ("out" + std::to_string(writers)), opts([&](ConvertOptions& o) {
                   o.writers = writers;
                   o.plan = plan_options;
                 }));
    ASSERT_TRUE(r.ok());
    // Every lane that wrote a file, in the order they ended (a lane that found the queue empty,
    // the files being small, is not listed).
    ASSERT_GE(r->lane_ends.size(), 1u);
    ASSERT_LE(r->lane_ends.size(), writers);
    std::set<std::string> last_files;
    double before = 0;
    for (const ConvertSummary::LaneEnd& lane : r->lane_ends) {
      EXPECT_GE(lane.seconds, before) << "in the order they ended";
      EXPECT_LE(lane.seconds, r->seconds);
      EXPECT_TRUE(names.contains(lane.file)) << "'" << lane.file << "'";
      last_files.insert(lane.file);
      before = lane.seconds;
    }
    EXPECT_EQ(last_files.size(), r->lane_ends.size()) << "each lane ends with a file of its own";
    // Lanes take files in the plan's order, so whichever lane took the plan's last file ended
    // with it; one lane wrote them all and ended with it.
    EXPECT_TRUE(last_files.contains(plan.files.back().name));
  }
}

// Where files are filled at their offsets, a lane out of files takes items of the open file with
// the most bytes left. Lane A takes the plan's first file; lane B takes the second and cuts it to
// its close, then helps with A's (once it is open), and the two cut A's items in turns. The items
// and their offsets are those one lane alone cuts, in the same order, so the bytes cannot differ;
// every cut data item counts on the file until filled.
TEST_F(SeveralFilesTest, ALaneOutOfFilesHelpsWithTheOpenFileWithTheMostLeft) {
  auto input = open_for_plan(tmp / "hf", plan_options);
  ASSERT_TRUE(input.ok()) << input.status().message();
  const std::vector<uint32_t> files = {0, 1};
  const uint64_t chunk = 64 << 10; // the smallest: many items per file
  struct Cut {
    ItemKind kind;
    uint32_t file;
    uint64_t offset, length;
    std::string tensor;
    bool operator==(const Cut&) const = default;
  };
  auto cut_of = [](const Item& item) {
    return Cut{item.kind, item.file, item.fill_offset, item.length,
               item.tensor ? item.tensor->name : std::string()};
  };

  // One lane alone: every item of both files in order, each data item at the next offset.
  std::vector<Cut> alone;
  {
    FileQueue queue(files, plan, true, true);
    Emitter lane(*input, plan, chunk, nullptr, queue);
    std::vector<std::unique_ptr<Item>> held; // the items hold their files' counts
    while (auto item = lane.next()) {
      if (item->kind == ItemKind::open_file)
        item->fill->opened = true; // what the write stage does once the file is open
      alone.push_back(cut_of(*item));
      held.push_back(std::move(item));
    }
    EXPECT_EQ(lane.helped_bytes(), 0u);
  }
  uint64_t offset = 0, data_items = 0;
  for (const Cut& c : alone) {
    if (c.kind == ItemKind::open_file)
      offset = plan.files[c.file].header.size();
    else if (c.kind == ItemKind::close_file)
      EXPECT_EQ(offset, plan.files[c.file].size()) << "the items fill file " << c.file;
    else {
      EXPECT_EQ(c.offset, offset);
      offset += c.length;
      ++data_items;
    }
  }
  ASSERT_GT(data_items, 8u) << "the test needs files of many items";

  FileQueue queue(files, plan, true, true);
  Emitter a(*input, plan, chunk, nullptr, queue), b(*input, plan, chunk, nullptr, queue);
  std::vector<std::unique_ptr<Item>> held;
  auto open = a.next();
  ASSERT_TRUE(open);
  ASSERT_EQ(open->kind, ItemKind::open_file);
  ASSERT_EQ(open->file, 0u);
  const std::shared_ptr<FillingFile> first = open->fill;
  ASSERT_TRUE(first);
  std::vector<Cut> of_first = {cut_of(*open)};
  held.push_back(std::move(open));
  // B cuts the second file to its close; the first is not open yet, so B has nothing to help.
  std::vector<Cut> of_second;
  while (true) {
    auto item = b.next();
    ASSERT_TRUE(item);
    ASSERT_EQ(item->file, 1u);
    of_second.push_back(cut_of(*item));
    const bool close = item->kind == ItemKind::close_file;
    held.push_back(std::move(item));
    if (close)
      break;
  }
  EXPECT_FALSE(b.next()) << "helped with a file not open yet";
  first->opened = true;
  // Now A and B take the first file's items in turns until it is cut to its close.
  uint64_t helped = 0;
  for (int turn = 0;; ++turn) {
    auto item = (turn % 2 ? b : a).next();
    ASSERT_TRUE(item) << "the file ended without its close";
    EXPECT_EQ(item->file, 0u);
    EXPECT_EQ(item->fill, first);
    if (turn % 2 && item->kind != ItemKind::close_file)
      helped += item->length;
    of_first.push_back(cut_of(*item));
    const bool close = item->kind == ItemKind::close_file;
    held.push_back(std::move(item));
    if (close)
      break;
  }
  EXPECT_FALSE(a.next());
  EXPECT_FALSE(b.next());
  EXPECT_GT(helped, 0u);
  EXPECT_EQ(b.helped_bytes(), helped);
  EXPECT_EQ(a.helped_bytes(), 0u);
  std::vector<Cut> both = of_first;
  both.insert(both.end(), of_second.begin(), of_second.end());
  EXPECT_TRUE(both == alone) << "the two lanes cut other items than one lane alone";
  // Each data item cut and not yet filled counts, plus one for the close not yet given back.
  uint64_t first_items = 0;
  for (const Cut& c : of_first)
    first_items += c.kind != ItemKind::open_file && c.kind != ItemKind::close_file;
  EXPECT_EQ(first->pending.load(), first_items + 1);
}

// Lanes cutting at the same time, on their own threads, as the pipelines run them: every item one
// lane alone cuts is cut exactly once, at the same offset, whichever lane cuts it, and each file's
// pending count holds one for each of its data items plus its close. Many rounds, with as many
// lanes as files and more, so that lanes end, help and race for the same file's lock.
TEST_F(SeveralFilesTest, LanesCuttingAtOnceCutEveryItemOnceAtItsOffset) {
  auto input = open_for_plan(tmp / "hf", plan_options);
  ASSERT_TRUE(input.ok()) << input.status().message();
  std::vector<uint32_t> files(plan.files.size());
  for (uint32_t i = 0; i < files.size(); ++i)
    files[i] = i;
  const uint64_t chunk = 64 << 10;
  using Cut = std::tuple<uint32_t, uint64_t, int, uint64_t, std::string>; // file, offset, kind...
  const auto cut_of = [](const Item& item) {
    return Cut{item.file, item.fill_offset, int(item.kind), item.length,
               item.tensor ? item.tensor->name : std::string()};
  };
  std::vector<Cut> alone;
  {
    FileQueue queue(files, plan, true, true);
    Emitter lane(*input, plan, chunk, nullptr, queue);
    std::vector<std::unique_ptr<Item>> held;
    while (auto item = lane.next()) {
      if (item->kind == ItemKind::open_file)
        item->fill->opened = true;
      alone.push_back(cut_of(*item));
      held.push_back(std::move(item));
    }
  }
  std::sort(alone.begin(), alone.end());
  uint64_t helped_any = 0;
  for (int round = 0; round < 40; ++round) {
    const unsigned lanes = 2 + unsigned(round) % 4 * 2; // 2, 4, 6, 8 lanes
    FileQueue queue(files, plan, true, true);
    std::vector<std::vector<Cut>> cuts(lanes);
    std::vector<std::vector<std::unique_ptr<Item>>> held(lanes);
    std::vector<uint64_t> helped(lanes);
    std::vector<std::thread> threads;
    for (unsigned l = 0; l < lanes; ++l)
      threads.emplace_back([&, l] {
        Emitter lane(*input, plan, chunk, nullptr, queue);
        while (auto item = lane.next()) {
          if (item->kind == ItemKind::open_file)
            item->fill->opened = true; // what the write stage does once the file is open
          cuts[l].push_back(cut_of(*item));
          held[l].push_back(std::move(item));
        }
        helped[l] = lane.helped_bytes();
      });
    for (auto& t : threads)
      t.join();
    std::vector<Cut> all;
    std::map<FillingFile*, uint64_t> pending_want;
    for (unsigned l = 0; l < lanes; ++l) {
      all.insert(all.end(), cuts[l].begin(), cuts[l].end());
      for (const auto& item : held[l])
        pending_want[item->fill.get()] += item->kind != ItemKind::open_file;
      helped_any += helped[l];
    }
    std::sort(all.begin(), all.end());
    ASSERT_TRUE(all == alone) << "round " << round << ", " << lanes
                              << " lanes: the items cut differ from one lane's";
    ASSERT_EQ(pending_want.size(), files.size());
    for (const auto& [fill, want] : pending_want)
      EXPECT_EQ(fill->pending.load(), want) << "round " << round;
  }
  std::cout << "bytes cut by helping lanes over all rounds: " << helped_any << "\n";
}

// A lane out of files helps only with the file that would be written last, alone: the open one
// holding more than half of the bytes left. Three lanes take a file each and open it; a fourth,
// finding the queue empty, helps with the largest only if it dominates (the test's files are of
// about one size: it does not). Once the second file is cut to its end and the third to less than
// the first has left, the first dominates and is helped; once the first is cut too, the third,
// alone, is helped whatever its size.
TEST_F(SeveralFilesTest, ALaneHelpsOnlyWithTheFileThatWouldEndAlone) {
  auto input = open_for_plan(tmp / "hf", plan_options);
  ASSERT_TRUE(input.ok()) << input.status().message();
  const uint64_t chunk = 64 << 10;
  for (uint32_t shift = 0; shift < 3; ++shift) { // three sets of files
    const std::vector<uint32_t> files = {shift, shift + 1, shift + 2};
    FileQueue queue(files, plan, true, true);
    std::vector<std::unique_ptr<Emitter>> lanes;
    std::vector<std::unique_ptr<Item>> held;
    std::map<uint32_t, uint64_t> left; // data bytes not yet cut, by file
    auto take = [&](std::unique_ptr<Item> item) {
      if (item->is_data())
        left[item->file] -= item->length;
      held.push_back(std::move(item));
    };
    for (int i = 0; i < 3; ++i) {
      lanes.push_back(std::make_unique<Emitter>(*input, plan, chunk, nullptr, queue));
      auto open = lanes.back()->next();
      ASSERT_TRUE(open && open->kind == ItemKind::open_file);
      open->fill->opened = true;
      left[open->file] = plan.files[open->file].data_size;
      take(std::move(open));
    }
    auto most = [&] {
      uint64_t total = 0, best = 0;
      uint32_t file = 0;
      for (auto [f, l] : left) {
        total += l;
        if (l > best) {
          best = l;
          file = f;
        }
      }
      return std::pair{file, 2 * best > total};
    };
    Emitter fourth(*input, plan, chunk, nullptr, queue);
    auto helped = fourth.next();
    std::cout << "[ files ] " << left[shift] << ", " << left[shift + 1] << ", " << left[shift + 2]
              << " bytes: " << (helped ? "helped" : "not helped") << "\n";
    if (auto [file, dominates] = most(); dominates) {
      ASSERT_TRUE(helped) << "did not help with a file holding most of the bytes left";
      EXPECT_EQ(helped->file, file);
      take(std::move(helped));
    } else {
      EXPECT_FALSE(helped) << "helped with file " << helped->file << " holding at most half";
    }
    // Lane 1 cuts its file to its end, lane 2 its own to less than lane 0's has left.
    auto cut_until = [&](Emitter& lane, uint32_t file, auto done) {
      while (!done()) {
        auto item = lane.next();
        ASSERT_TRUE(item);
        ASSERT_EQ(item->file, file);
        const bool closed = item->kind == ItemKind::close_file;
        take(std::move(item));
        if (closed)
          return;
      }
    };
    cut_until(*lanes[1], shift + 1, [] { return false; });
    cut_until(*lanes[2], shift + 2, [&] { return left[shift + 2] < left[shift]; });
    ASSERT_TRUE(most().second);
    Emitter fifth(*input, plan, chunk, nullptr, queue);
    auto first = fifth.next();
    ASSERT_TRUE(first) << "did not help with the file holding most of the bytes left";
    EXPECT_EQ(first->file, shift);
    EXPECT_GT(fifth.helped_bytes(), 0u);
    take(std::move(first));
    // Lane 0 cuts its file to its end: the third is left alone, and helped.
    cut_until(*lanes[0], shift, [] { return false; });
    Emitter sixth(*input, plan, chunk, nullptr, queue);
    auto last = sixth.next();
    ASSERT_TRUE(last) << "did not help with the last file";
    EXPECT_EQ(last->file, shift + 2);
    take(std::move(last));
  }
}

// Where files are filled at their offsets but cannot be mapped (an Io decorator sees every byte;
// a filesystem without shared writable mappings), each item goes in place by a positioned
// write, from any lane: the same bytes as one lane writing in order.
TEST_F(SeveralFilesTest, FilesFilledAtTheirOffsetsWithoutAMappingGiveTheSameBytes) {
  auto base = run(tmp / "hf", tmp / "w1", opts([&](ConvertOptions& o) {
                    o.writers = 1;
                    o.plan = plan_options;
                  }));
  ASSERT_TRUE(base.ok());
  ScopedEnv fill("SHARDSHIFT_FILL", "mapped");
  ForwardingIo io(Io::system());
  auto r = run(tmp / "hf", tmp / "out", opts([&](ConvertOptions& o) {
                 o.writers = 3;
                 o.threads = 5;
                 o.max_memory = 256 << 10;
                 o.plan = plan_options;
                 o.io = &io;
               }));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->filled_by_threads);
  EXPECT_TRUE(files_of(tmp / "out") == files_of(tmp / "w1"));
}

// --checksums hashes each file's bytes in order on one lane, so lanes do not help with each
// other's files there; the files are still filled by several threads, and each digest is that of
// the file on disk.
TEST_F(SeveralFilesTest, WithChecksumsEachFileIsHashedWholeByTheLaneThatTookIt) {
  ScopedEnv fill("SHARDSHIFT_FILL", "mapped");
  auto r = run(tmp / "hf", tmp / "out", opts([&](ConvertOptions& o) {
                 o.writers = 2;
                 o.threads = 5;
                 o.max_memory = 256 << 10;
                 o.checksums = true;
                 o.plan = plan_options;
               }));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->filled_by_threads);
  EXPECT_EQ(r->helped_bytes, 0u);
  const auto written = files_of(tmp / "out");
  const std::map<std::string, std::string> digests(r->checksums.begin(), r->checksums.end());
  for (const OutputFile& file : plan.files) {
    ASSERT_TRUE(written.contains(file.name) && digests.contains(file.name)) << file.name;
    EXPECT_EQ(digests.at(file.name), sha256_hex(std::as_bytes(std::span(written.at(file.name)))))
        << file.name;
  }
}

// --stats accounts for the lanes' time beyond the writes: each output file's opening (its temp
// name and the space reserved for it) and the input pages given back once written, which run on
// any thread after the lane's in-order write.
TEST_F(SeveralFilesTest, StatsCountEachFileOpenedAndEveryInputByteGivenBack) {
  uint64_t file_bytes = 0;
  for (const OutputFile& f : plan.files)
    file_bytes += f.size();
  for (unsigned writers : {1u, 3u}) {
    auto r = run(tmp / "hf", tmp / ("out" + std::to_string(writers)), opts([&](ConvertOptions& o) {
                   o.writers = writers;
                   o.plan = plan_options;
                 }));
    ASSERT_TRUE(r.ok());
    const StageSummary& open = r->stages[static_cast<int>(Stage::open)];
    const StageSummary& release = r->stages[static_cast<int>(Stage::release)];
    EXPECT_STREQ(stage_name(Stage::open), "open");
    EXPECT_STREQ(stage_name(Stage::release), "release");
    EXPECT_EQ(open.count, plan.files.size()) << writers << " lanes";
    EXPECT_EQ(open.bytes, file_bytes);
    // The experts are transposed within BF16 and nothing is filled in, so every byte read (copied
    // or transformed) was given back once, and nothing else was.
    ASSERT_GT(r->transformed_bytes, 0u);
    EXPECT_EQ(release.bytes, r->zero_copy_bytes + r->fallback_copy_bytes + r->transformed_bytes)
        << writers << " lanes";
    EXPECT_GT(release.count, 0u);
  }
}

// Fails the rename that commits one chosen output file.
class FailOneCommit final : public ForwardingIo {
public:
  FailOneCommit(Io& base, std::string victim) : ForwardingIo(base), victim_(std::move(victim)) {}
  int rename(const char* from, const char* to) override {
    if (std::string_view(to).ends_with(victim_)) {
      errno = EIO;
      return -1;
    }
    return ForwardingIo::rename(from, to);
  }

private:
  std::string victim_;
};

TEST_F(ConvertTest, AFailingLaneStopsEveryLaneAndLeavesNothing) {
  Dict in = reference::tiny_diffusion(rng, 6, 4, 96, 40);
  reference::write_checkpoint(tmp / "hf", in, 2, "diffusion_gemma");
  std::filesystem::create_directory(tmp / "parent");
  PlanOptions plan_options;
  plan_options.max_shard_size = 90'000;
  auto plan = plan_conversion(tmp / "hf", plan_options);
  ASSERT_TRUE(plan.ok());
  ASSERT_GE(plan->files.size(), 4u);
  const std::string victim = plan->files[1].name;
  FailOneCommit io(Io::system(), victim);
  // Files written in order by their lanes, and filled at their offsets (here by positioned
  // writes: the decorator maps nothing), where lanes out of files help with the others'.
  for (const char* mode : {"write", "mapped"}) {
    ScopedEnv fill("SHARDSHIFT_FILL", mode);
    auto r = run(tmp / "hf", tmp / "parent" / "out", opts([&](ConvertOptions& o) {
                   o.writers = 3;
                   o.threads = 5;
                   o.plan = plan_options;
                   o.io = &io;
                 }));
    ASSERT_FALSE(r.ok()) << mode;
    EXPECT_EQ(r.status().code(), Errc::io) << mode;
    // The message names the file where the user will look for it, not the hidden staging path.
    EXPECT_EQ(r.status().message().find(".shardshift-tmp"), std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find((tmp / "parent" / "out" / victim).string()),
              std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find(victim), std::string::npos) << r.status().message();
    EXPECT_TRUE(list_dir(tmp / "parent").empty()) << mode << ": staging or output left behind";
  }
}

TEST_F(ConvertTest, AFilesystemFullWhileFillingFilesOnATmpfsFailsCleanly) {
  // A tmpfs that holds any one output file but not all of them. Files filled by several threads
  // have their free space checked at the opening, not reserved: files filled side by side pass
  // that check, and one runs out while it is filled (or, opened after the others took the space,
  // fails the check). Files written in order are reserved: one fails its reservation. Either
  // way: a full disk, and nothing left.
  Dict in = reference::tiny_diffusion(rng, 6, 4, 96, 40);
  in["model.decoder.embed_tokens.weight"] = reference::random_tensor(rng, DType::BF16, {1024, 96});
  reference::write_checkpoint(tmp / "hf", in, 3, "diffusion_gemma");
  auto sized = run(tmp / "hf", tmp / "sized",
                   opts([](ConvertOptions& o) { o.plan.max_shard_size = 120'000; }));
  ASSERT_TRUE(sized.ok());
  ASSERT_GE(sized->files, 4u);
  uint64_t largest = 0;
  for (const auto& [name, bytes] : files_of(tmp / "sized"))
    largest = std::max<uint64_t>(largest, bytes.size());
  ASSERT_GT(sized->output_bytes, 2 * largest);
  std::filesystem::create_directory(tmp / "mnt");
  const std::string size = "size=" + std::to_string((largest * 3 / 2 + 8192) / 4096 * 4096);
  if (::mount("tmpfs", (tmp / "mnt").c_str(), "tmpfs", 0, size.c_str()) != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno) << ")";
  struct Unmount {
    std::filesystem::path at;
    ~Unmount() { ::umount(at.c_str()); }
  } unmount{tmp / "mnt"};
  for (const char* mode : {"mapped", "write"}) {
    ScopedEnv fill("SHARDSHIFT_FILL", mode);
    auto r = run(tmp / "hf", tmp / "mnt" / "out", opts([&](ConvertOptions& o) {
                   o.writers = static_cast<unsigned>(sized->files);
                   o.threads = 4;
                   o.plan.max_shard_size = 120'000;
                 }));
    const std::vector<std::string> left = list_dir(tmp / "mnt");
    ASSERT_FALSE(r.ok()) << mode;
    EXPECT_EQ(r.status().code(), Errc::no_space) << mode << ": " << r.status().message();
    EXPECT_NE(r.status().message().find("free space or choose another output directory"),
              std::string::npos)
        << r.status().message();
    EXPECT_TRUE(left.empty()) << mode << ": left on the full filesystem: " << left.front();
    std::cout << "[ note ] " << mode << ": " << r.status().message() << "\n";
  }
}

TEST(WriterLanes, DefaultFollowsThreadsAndFiles) {
  EXPECT_EQ(default_writers(1, 10), 1u);
  EXPECT_EQ(default_writers(2, 10), 2u);
  EXPECT_EQ(default_writers(4, 10), 4u);
  EXPECT_EQ(default_writers(8, 10), 8u);
  EXPECT_EQ(default_writers(12, 10), 8u);
  EXPECT_EQ(default_writers(16, 10), 8u);
  EXPECT_EQ(default_writers(24, 100), 12u);
  EXPECT_EQ(default_writers(16, 3), 3u);
  EXPECT_EQ(default_writers(64, 100), 16u);
  EXPECT_EQ(default_writers(8, 0), 1u);
}

TEST(WriterLanes, WithTheGpuAFewFilesGetALaneEach) {
  // From 4 threads, files up to twice the lanes get one each; more files, as without the GPU.
  EXPECT_EQ(default_writers(4, 5, true), 5u);
  EXPECT_EQ(default_writers(4, 8, true), 8u);
  EXPECT_EQ(default_writers(4, 9, true), 4u);
  EXPECT_EQ(default_writers(16, 12, true), 12u);
  EXPECT_EQ(default_writers(16, 40, true), 8u);
  EXPECT_EQ(default_writers(64, 30, true), 16u);
  EXPECT_EQ(default_writers(4, 3, true), 3u);
  // Below 4 threads writing keeps every core busy: one lane per thread, as without the GPU.
  EXPECT_EQ(default_writers(2, 3, true), 2u);
  EXPECT_EQ(default_writers(2, 5, true), 2u);
  EXPECT_EQ(default_writers(4, 5, false), 4u);
}

TEST(WriterLanes, FilesAreFilledByThreadsOnlyOnATmpfsWithThreadsToSpare) {
  ScopedEnv unset("SHARDSHIFT_FILL", nullptr);
  Io& io = Io::system();
  EXPECT_EQ(fill_mode(16, 5, io, true), FillMode::mapped); // DeepSeek-V3's 5 files
  EXPECT_EQ(fill_mode(16, 4, io, true), FillMode::mapped);
  EXPECT_EQ(fill_mode(3, 1, io, true), FillMode::mapped);
  EXPECT_EQ(fill_mode(16, 8, io, true), FillMode::write); // every thread a lane or a transform
  EXPECT_EQ(fill_mode(4, 4, io, true), FillMode::write);
  EXPECT_EQ(fill_mode(2, 1, io, true), FillMode::write);
  EXPECT_EQ(fill_mode(16, 1, io, false), FillMode::write); // a disk: writes
  // A decorator (a test's fault injection) sees every write.
  ForwardingIo decorated(io);
  EXPECT_EQ(fill_mode(16, 1, decorated, true), FillMode::write);
  {
    ScopedEnv forced("SHARDSHIFT_FILL", "mapped");
    EXPECT_EQ(fill_mode(2, 2, io, false), FillMode::mapped);
  }
  {
    ScopedEnv forced("SHARDSHIFT_FILL", "write");
    EXPECT_EQ(fill_mode(16, 1, io, true), FillMode::write);
  }
  EXPECT_FALSE(on_tmpfs("/proc"));
  if (on_tmpfs("/dev/shm")) // where it is one: a directory not made yet is judged by its parent
    EXPECT_TRUE(on_tmpfs("/dev/shm/not-made-yet"));
}

TEST(WriterLanes, MemoryInFlightStaysOneFormula) {
  // writers * tokens * 2 chunks (+ GPU slots) fit the budget whatever the lane count.
  for (unsigned writers : {1u, 2u, 4u, 8u, 16u})
    for (unsigned threads : {2u, 16u})
      for (unsigned slots : {0u, 16u}) {
        uint64_t chunk = 0;
        unsigned tokens = 0;
        const uint64_t budget = uint64_t{1} << 30;
        size_pipeline(budget, threads, slots, writers, &chunk, &tokens);
        EXPECT_GE(tokens, 3u);
        EXPECT_LE((2ull * writers * tokens + slots) * chunk, budget)
            << writers << " writers, " << threads << " threads";
        EXPECT_EQ(chunk % 4096, 0u);
      }
  uint64_t chunk = 0;
  unsigned tokens = 0;
  size_pipeline(uint64_t{1} << 30, 16, 0, 1, &chunk, &tokens);
  EXPECT_EQ(tokens, 18u); // one lane: threads + 2, as before lanes existed
  // A -j far beyond any machine's cores (up to the largest the flag takes) gets no more tokens
  // than the budget holds at the smallest chunk, and the sum does not wrap.
  for (unsigned threads : {100'000u, 4'294'967'295u})
    for (uint64_t budget : {uint64_t{64} << 20, uint64_t{1} << 30}) {
      size_pipeline(budget, threads, 16, 1, &chunk, &tokens);
      EXPECT_GE(tokens, 3u);
      EXPECT_LE((2ull * tokens + 16) * chunk, budget) << threads << " threads, budget " << budget;
    }
}

} // namespace
} // namespace shardshift::testing
