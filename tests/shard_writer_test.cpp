// shard_writer_test.cpp: the streaming writer's round trips through the hardened reader, its
// zero-copy paths, and its behaviour under injected faults (full disk, short writes, refused
// copies).
#include "shardshift/checkpoint.h"

#include "shard_writer_support.h"
#include "test_support.h"

#include <atomic>
#include <condition_variable>
#include <fcntl.h>
#include <fstream>
#include <mutex>
#include <numeric>
#include <random>
#include <sys/statvfs.h>
#include <thread>
#include <unistd.h>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

using namespace writer_test;

// ---------------------------------------------------------------------------------------------
// Round trips through the reader

TEST(ShardWriter, RoundTripsEveryDtype) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  std::vector<Tensor> tensors;
  for (int d = 0; d < DTYPE_COUNT; ++d) {
    const auto dtype = static_cast<DType>(d);
    for (int k = 0; k < 4; ++k) {
      std::vector<uint64_t> shape;
      if (k == 1) {
        shape = {3, 0, 2}; // zero elements: legal and empty
      } else if (k != 0) {
        shape.resize(1 + rng() % 4);
        for (auto& s : shape)
          s = 1 + rng() % 5;
      }
      // Sub-byte dtypes need a bit count that is a multiple of 8; four elements always give one.
      if (!tensor_byte_size(dtype, shape))
        shape.push_back(4);
      std::string name = std::string(dtype_name(dtype)) + "." + std::to_string(k);
      tensors.push_back(make_tensor(name, dtype, shape, rng));
    }
  }
  std::shuffle(tensors.begin(), tensors.end(), rng);
  const fs::path path = dir / "model.safetensors";
  Status s = write_shard(Io::system(), path, tensors);
  ASSERT_TRUE(s.ok()) << s.message();
  expect_file_holds(path, tensors);
  EXPECT_TRUE(temp_files(dir.path()).empty());

  // The checkpoint-level reader sees the same tensors.
  auto checkpoint = Checkpoint::open(path);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().message();
  ASSERT_EQ(checkpoint->tensors.size(), tensors.size());
  for (const auto& t : tensors) {
    auto ref = checkpoint->find(t.planned.name);
    ASSERT_TRUE(ref.has_value()) << t.planned.name;
    auto bytes = checkpoint->bytes(*ref);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()), t.bytes);
  }
}

TEST(ShardWriter, HeaderOnlyFileWithNoTensors) {
  TempDir dir;
  Status s = write_shard(Io::system(), dir / "empty.safetensors", {});
  ASSERT_TRUE(s.ok()) << s.message();
  expect_file_holds(dir / "empty.safetensors", {});
}

TEST(ShardWriter, AppendCopyFromAnotherFile) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  const std::string source = testing::random_bytes(rng, 300'000);
  testing::write_bytes(dir / "source.bin", source);
  int in = ::open((dir / "source.bin").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(in, 0);

  // Three tensors copied from odd offsets of the source, one appended from memory in between.
  struct Piece {
    uint64_t offset, length;
  };
  const Piece pieces[] = {{1, 100'000}, {123'457, 60'000}, {299'000, 1'000}};
  std::vector<Tensor> expected;
  for (size_t i = 0; i < 3; ++i)
    expected.push_back({{"copied." + std::to_string(i), DType::U8, {pieces[i].length}},
                        source.substr(pieces[i].offset, pieces[i].length)});
  expected.push_back(make_tensor("inline", DType::F32, {7, 3}, rng));

  FaultIo io;               // behaves like the kernel; counts the copy calls
  io.max_per_call = 50'000; // force several copy_file_range calls per tensor
  std::vector<PlannedTensor> planned;
  uint64_t data_size = 0;
  for (const auto& t : expected)
    planned.push_back(t.planned), data_size += t.bytes.size();
  auto header = build_header(planned, {});
  ASSERT_TRUE(header.ok());
  ShardWriter writer(io);
  ASSERT_TRUE(writer.open(dir / "out.safetensors", header.value(), data_size).ok());
  for (size_t i = 0; i < 3; ++i) {
    bool zero_copy = false;
    Status s = writer.append_copy(in, pieces[i].offset, pieces[i].length,
                                  as_span(expected[i].bytes), &zero_copy);
    ASSERT_TRUE(s.ok()) << s.message();
    // Linux (5.3+) copies between any two regular files of one filesystem.
    EXPECT_TRUE(zero_copy);
  }
  ASSERT_TRUE(writer.append(as_span(expected[3].bytes)).ok());
  Status s = writer.finish();
  ASSERT_TRUE(s.ok()) << s.message();
  ::close(in);
  EXPECT_GE(io.copy_calls, 5) << "each copy is cut into calls of at most max_per_call bytes";
  expect_file_holds(dir / "out.safetensors", expected);
}

TEST(ShardWriter, RefusedCopyFallsBackToWrite) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  const std::string source = testing::random_bytes(rng, 200'000);
  testing::write_bytes(dir / "source.bin", source);
  int in = ::open((dir / "source.bin").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(in, 0);

  for (int fail_after : {0, 2}) { // refused outright, or after some bytes went through
    SCOPED_TRACE(fail_after);
    FaultIo io;
    io.copy_errno = EXDEV;
    io.copy_fail_after = fail_after;
    io.max_per_call = 30'000;
    std::vector<Tensor> expected = {{{"t", DType::U8, {150'000}}, source.substr(17, 150'000)}};
    auto header = build_header(std::vector{expected[0].planned}, {});
    ASSERT_TRUE(header.ok());
    ShardWriter writer(io);
    const fs::path path = dir / ("out" + std::to_string(fail_after) + ".safetensors");
    ASSERT_TRUE(writer.open(path, header.value(), 150'000).ok());
    bool zero_copy = true;
    Status s = writer.append_copy(in, 17, 150'000, as_span(expected[0].bytes), &zero_copy);
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_FALSE(zero_copy);
    EXPECT_EQ(io.copy_calls, fail_after + 1);
    ASSERT_TRUE(writer.finish().ok());
    expect_file_holds(path, expected);
  }
  ::close(in);
}

TEST(ShardWriter, CopyFailureOtherThanRefusalIsAnError) {
  TempDir dir;
  testing::write_bytes(dir / "source.bin", std::string(1000, 'x'));
  int in = ::open((dir / "source.bin").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(in, 0);
  FaultIo io;
  io.copy_errno = ENOSPC;
  std::string fallback(1000, 'x');
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {1000}}}, {});
  ASSERT_TRUE(header.ok());
  ShardWriter writer(io);
  ASSERT_TRUE(writer.open(dir / "out.safetensors", header.value(), 1000).ok());
  Status s = writer.append_copy(in, 0, 1000, as_span(fallback));
  ::close(in);
  EXPECT_EQ(s.code(), Errc::no_space);
  EXPECT_TRUE(temp_files(dir.path()).empty());
  EXPECT_FALSE(fs::exists(dir / "out.safetensors"));
}

// ---------------------------------------------------------------------------------------------
// Faults

TEST(ShardWriter, DiskFullMidWay) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  std::vector<Tensor> tensors = {make_tensor("a", DType::BF16, {1000}, rng),
                                 make_tensor("b", DType::F32, {2000}, rng)};
  FaultIo io;
  io.fallocate_errno = EOPNOTSUPP; // a filesystem that cannot reserve: the disk fills while writing
  io.space_left = 5000;
  auto header = build_header(std::vector{tensors[0].planned, tensors[1].planned}, {});
  ASSERT_TRUE(header.ok());
  const uint64_t total = header->size() + 2000 + 8000;
  ShardWriter writer(io);
  ASSERT_TRUE(writer.open(dir / "full.safetensors", header.value(), 10'000).ok());
  ASSERT_TRUE(writer.append(as_span(tensors[0].bytes)).ok());
  Status s = writer.append(as_span(tensors[1].bytes));
  ASSERT_EQ(s.code(), Errc::no_space) << s.message();
  EXPECT_EQ(s.message(), (dir / "full.safetensors").string() +
                             ": disk full after writing 5000 of " + std::to_string(total) +
                             " bytes; free space or choose another output directory");
  // Nothing is left behind, not even before the caller abandons.
  EXPECT_TRUE(list_dir(dir.path()).empty());

  // Sticky: later calls report the first error, even once the disk has room again.
  io.space_left.reset();
  EXPECT_EQ(writer.append(as_span(tensors[1].bytes)).message(), s.message());
  EXPECT_EQ(writer.finish().message(), s.message());
  EXPECT_EQ(writer.status().code(), Errc::no_space);
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

// ENOSPC where a file is created: the file system may have bytes to spare but no inode left;
// the message says both.
TEST(ShardWriter, NoRoomToCreateTheFileNamesInodesToo) {
  TempDir dir;
  FaultIo io;
  io.create_errno = ENOSPC;
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {100}}}, {});
  ASSERT_TRUE(header.ok());
  ShardWriter writer(io);
  Status s = writer.open(dir / "x.safetensors", header.value(), 100);
  EXPECT_EQ(s.code(), Errc::no_space);
  EXPECT_NE(s.message().find("x.safetensors: cannot create the file: the file system has no "
                             "space or no free inodes left"),
            std::string::npos)
      << s.message();
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(ShardWriter, DiskFullWhenReserving) {
  TempDir dir;
  FaultIo io;
  io.fallocate_errno = ENOSPC;
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {100}}}, {});
  ASSERT_TRUE(header.ok());
  ShardWriter writer(io);
  Status s = writer.open(dir / "x.safetensors", header.value(), 100);
  EXPECT_EQ(s.code(), Errc::no_space);
  EXPECT_NE(s.message().find("free space or choose another output directory"), std::string::npos);
  EXPECT_EQ(io.write_calls, 0) << "nothing is written once the reservation fails";
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(ShardWriter, UnsupportedReservationIsIgnored) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  for (int err : {EOPNOTSUPP, ENOSYS}) {
    FaultIo io;
    io.fallocate_errno = err;
    std::vector<Tensor> tensors = {make_tensor("t", DType::I32, {33}, rng)};
    Status s = write_shard(io, dir / "t.safetensors", tensors);
    ASSERT_TRUE(s.ok()) << s.message();
    expect_file_holds(dir / "t.safetensors", tensors);
  }
}

TEST(ShardWriter, ShortWritesAndInterruptsStillProduceTheFile) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  std::vector<Tensor> tensors = {make_tensor("a", DType::F64, {11, 13}, rng),
                                 make_tensor("b", DType::U8, {1}, rng),
                                 make_tensor("c", DType::F8_E4M3, {997}, rng)};
  FaultIo io;
  io.max_per_call = 7;
  io.eintr_every = 5;
  Status s = write_shard(io, dir / "short.safetensors", tensors);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_GT(io.write_calls, 100);
  EXPECT_LE(io.largest_write, 7u);
  expect_file_holds(dir / "short.safetensors", tensors);
}

TEST(ShardWriter, OtherWriteErrorsAreIoErrors) {
  TempDir dir;
  FaultIo io;
  io.write_errno = EIO;
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {4}}}, {});
  ASSERT_TRUE(header.ok());
  ShardWriter writer(io);
  Status s = writer.open(dir / "eio.safetensors", header.value(), 4);
  EXPECT_EQ(s.code(), Errc::io);
  EXPECT_NE(s.message().find(errno_text(EIO)), std::string::npos) << s.message();
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(ShardWriter, FinishWithTooFewBytesFails) {
  TempDir dir;
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {10}}}, {});
  ASSERT_TRUE(header.ok());
  ShardWriter writer;
  ASSERT_TRUE(writer.open(dir / "short.safetensors", header.value(), 10).ok());
  ASSERT_TRUE(writer.append(as_span(std::string(9, 'z'))).ok());
  Status s = writer.finish();
  EXPECT_EQ(s.code(), Errc::io);
  EXPECT_NE(s.message().find("internal: wrote " + std::to_string(header->size() + 9) + " of " +
                             std::to_string(header->size() + 10) + " bytes"),
            std::string::npos)
      << s.message();
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(ShardWriter, WritingPastThePlannedSizeFails) {
  TempDir dir;
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {2}}}, {});
  ASSERT_TRUE(header.ok());
  ShardWriter writer;
  ASSERT_TRUE(writer.open(dir / "long.safetensors", header.value(), 2).ok());
  EXPECT_EQ(writer.append(as_span(std::string(3, 'z'))).code(), Errc::io);
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(ShardWriter, AbandonAndDestructorRemoveTheTempFile) {
  TempDir dir;
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {10}}}, {});
  ASSERT_TRUE(header.ok());
  {
    ShardWriter writer;
    ASSERT_TRUE(writer.open(dir / "a.safetensors", header.value(), 10).ok());
    auto temps = temp_files(dir.path());
    ASSERT_EQ(temps.size(), 1u);
    EXPECT_EQ(
        temps[0].rfind(".a.safetensors.shardshift-tmp-" + std::to_string(::getpid()) + "-", 0), 0u)
        << temps[0];
    writer.abandon();
    EXPECT_TRUE(list_dir(dir.path()).empty());
    EXPECT_EQ(writer.append(as_span(std::string(10, 'z'))).code(), Errc::io);
  }
  {
    ShardWriter writer;
    ASSERT_TRUE(writer.open(dir / "b.safetensors", header.value(), 10).ok());
    ASSERT_EQ(temp_files(dir.path()).size(), 1u);
  }
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(ShardWriter, FinishReplacesAnExistingFileAtomically) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  testing::write_bytes(dir / "m.safetensors", "old contents");
  std::vector<Tensor> tensors = {make_tensor("t", DType::U16, {9}, rng)};
  ASSERT_TRUE(write_shard(Io::system(), dir / "m.safetensors", tensors).ok());
  expect_file_holds(dir / "m.safetensors", tensors);
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"m.safetensors"});
}

} // namespace
} // namespace shardshift

namespace shardshift {
namespace {

// Records the write-back requests of a file being written.
class WriteBehindIo final : public ForwardingIo {
public:
  WriteBehindIo() : ForwardingIo(Io::system()) {}
  struct Call {
    off_t offset, length;
    unsigned flags;
  };
  std::vector<Call> calls;
  int sync_file_range(int fd, off_t offset, off_t length, unsigned flags) override {
    calls.push_back({offset, length, flags});
    return ForwardingIo::sync_file_range(fd, offset, length, flags);
  }
};

TEST(ShardWriter, WritesBackAsItGoesSoAtMostTwoWindowsAreDirty) {
  testing::TempDir dir;
  WriteBehindIo io;
  ShardWriter writer(io);
  const std::string chunk(5 << 20, 'x'); // 5 MiB appends, 100 MiB in all
  ASSERT_TRUE(writer.open(dir / "f.safetensors", std::string(), 20 * chunk.size()).ok());
  uint64_t written = 0;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(writer.append(std::as_bytes(std::span(chunk))).ok());
    written += chunk.size();
    // Everything but the last two windows (of at least 8 MiB) has been written back and waited for.
    uint64_t waited = 0;
    for (const auto& c : io.calls)
      if (c.flags & SYNC_FILE_RANGE_WAIT_AFTER)
        waited = std::max<uint64_t>(waited, c.offset + c.length);
    EXPECT_LE(written - waited, uint64_t{2} * ((8 << 20) + chunk.size())) << "after " << written;
  }
  ASSERT_TRUE(writer.finish().ok());
  // Write-back was started on contiguous windows from the start of the file.
  uint64_t next = 0;
  for (const auto& c : io.calls)
    if (c.flags == SYNC_FILE_RANGE_WRITE) {
      EXPECT_EQ(static_cast<uint64_t>(c.offset), next);
      EXPECT_GE(static_cast<uint64_t>(c.length), uint64_t{8} << 20);
      next = static_cast<uint64_t>(c.offset + c.length);
    }
  EXPECT_GE(next, uint64_t{80} << 20);
}

// Sets a cancel flag once `after` bytes have gone through pwrite or copy_file_range, as a
// Ctrl-C arriving in the middle of one large append or copy would.
class CancelAfterIo final : public ForwardingIo {
public:
  CancelAfterIo(std::atomic<bool>& cancel, uint64_t after)
      : ForwardingIo(Io::system()), cancel_(cancel), after_(after) {}
  uint64_t largest_call = 0;
  ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) override {
    return count_bytes(ForwardingIo::pwrite(fd, buf, count, offset), count);
  }
  ssize_t copy_file_range(int in, off_t* in_off, int out, off_t* out_off, size_t len) override {
    return count_bytes(ForwardingIo::copy_file_range(in, in_off, out, out_off, len), len);
  }

private:
  ssize_t count_bytes(ssize_t n, size_t asked) {
    largest_call = std::max<uint64_t>(largest_call, asked);
    if (n > 0 && (done_ += uint64_t(n)) >= after_)
      cancel_ = true;
    return n;
  }
  std::atomic<bool>& cancel_;
  uint64_t after_, done_ = 0;
};

TEST(ShardWriter, StopsWithinAPieceOnceCancelled) {
  testing::TempDir dir;
  const std::string data(64 << 20, 'c'); // one 64 MiB append, and one 64 MiB copy
  { std::ofstream(dir / "in.bin", std::ios::binary) << data; }
  for (bool copy : {false, true}) {
    SCOPED_TRACE(copy ? "append_copy" : "append");
    std::atomic<bool> cancel{false};
    CancelAfterIo io(cancel, 1 << 20);
    ShardWriter writer(io);
    writer.set_cancel(&cancel);
    ASSERT_TRUE(writer.open(dir / "f.safetensors", std::string(), data.size()).ok());
    Status s;
    if (copy) {
      const int in = ::open((dir / "in.bin").c_str(), O_RDONLY);
      ASSERT_GE(in, 0);
      s = writer.append_copy(in, 0, data.size(), std::as_bytes(std::span(data)));
      ::close(in);
    } else {
      s = writer.append(std::as_bytes(std::span(data)));
    }
    EXPECT_EQ(s.code(), Errc::interrupted) << s.message();
    // The piece in progress when the flag was set is the last one.
    EXPECT_LE(writer.bytes_written(), ShardWriter::WRITE_PIECE);
    EXPECT_LE(io.largest_call, ShardWriter::WRITE_PIECE);
    writer.abandon();
    EXPECT_EQ(testing::list_dir(dir.path()), std::vector<std::string>{"in.bin"})
        << "the temporary file was not removed";
  }
}

TEST(ShardWriter, AStreamIsNeverWrittenBack) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  WriteBehindIo io;
  ShardWriter writer(io);
  const std::string chunk(1 << 20, 'y');
  std::thread reader([&] {
    char buf[1 << 16];
    while (::read(fds[0], buf, sizeof buf) > 0) {
    }
  });
  ASSERT_TRUE(writer.open_stream(fds[1], "s", std::string(), 40 * chunk.size()).ok());
  for (int i = 0; i < 40; ++i)
    ASSERT_TRUE(writer.append(std::as_bytes(std::span(chunk))).ok());
  ASSERT_TRUE(writer.finish().ok());
  ::close(fds[1]);
  reader.join();
  ::close(fds[0]);
  EXPECT_TRUE(io.calls.empty());
}

// ---------------------------------------------------------------------------------------------
// Files filled at their offsets (open_mapped, claim, fill)

TEST(ShardWriter, AMappedFileIsFilledByThreadsInAnyOrder) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  // Pieces of random sizes (some larger than a WRITE_PIECE, some not page multiples), claimed and
  // filled by four threads in a shuffled order: the file holds each at its offset.
  std::string data;
  std::vector<std::pair<uint64_t, uint64_t>> pieces; // offset in data, length
  while (data.size() < (uint64_t{20} << 20)) {
    const uint64_t length =
        rng() % 3 == 0 ? rng() % 100 : 1 + rng() % (ShardWriter::WRITE_PIECE * 3 / 2);
    pieces.emplace_back(data.size(), length);
    for (uint64_t i = 0; i < length; ++i)
      data.push_back(static_cast<char>(rng()));
  }
  const std::string header = "HEADER-BYTES";
  ShardWriter writer;
  ASSERT_TRUE(writer.open_mapped(dir / "f.safetensors", header, data.size()).ok());
  ASSERT_TRUE(writer.mapped()) << "this filesystem refused a shared writable mapping";
  std::vector<size_t> order(pieces.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::shuffle(order.begin(), order.end(), rng);
  std::atomic<size_t> next{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (size_t k; (k = next.fetch_add(1)) < order.size();) {
        const auto [at, length] = pieces[order[k]];
        if (!writer.claim(header.size() + at, length).ok() ||
            !writer.fill(header.size() + at, as_span(data).subspan(at, length)).ok())
          ++failures;
      }
    });
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_FALSE(writer.fill(header.size() + data.size() - 4, as_span(data).first(5)).ok())
      << "filled past the end of the file";
  ASSERT_TRUE(writer.finish().ok()) << writer.status().message();
  EXPECT_TRUE(testing::read_bytes(dir / "f.safetensors") == header + data);
  EXPECT_TRUE(temp_files(dir.path()).empty());

  ShardWriter small;
  ASSERT_TRUE(small.open_mapped(dir / "small", header, 10).ok());
  EXPECT_FALSE(small.claim(header.size() - 1, 2).ok()) << "claimed bytes of the header";
  EXPECT_TRUE(small.claim(header.size(), 6).ok());
  EXPECT_FALSE(small.claim(header.size() + 6, 5).ok()) << "claimed past the planned size";
  EXPECT_TRUE(small.claim(header.size() + 6, 3).ok());
  EXPECT_FALSE(small.finish().ok()) << "finished with a byte never claimed";
}

TEST(ShardWriter, AFileNotOpenedForFillingRefusesClaims) {
  TempDir dir;
  ShardWriter writer;
  ASSERT_TRUE(writer.open(dir / "f", "H", 3).ok());
  EXPECT_FALSE(writer.claim(1, 3).ok());
  EXPECT_FALSE(writer.fill(1, as_span(std::string("abc"))).ok());
}

TEST(ShardWriter, UnderADecoratorAMappedOpenWrites) {
  // A decorator (a fault-injecting test double) must see every byte: no mapping then.
  TempDir dir;
  ForwardingIo io(Io::system());
  ShardWriter writer(io);
  ASSERT_TRUE(writer.open_mapped(dir / "f", "H", 3).ok());
  EXPECT_FALSE(writer.mapped());
  // Filled by positioned writes, which the decorator sees, in any order.
  ASSERT_TRUE(writer.claim(3, 1).ok());
  ASSERT_TRUE(writer.fill(3, as_span(std::string("c"))).ok());
  ASSERT_TRUE(writer.claim(1, 2).ok());
  ASSERT_TRUE(writer.fill(1, as_span(std::string("ab"))).ok());
  ASSERT_TRUE(writer.finish().ok());
  EXPECT_EQ(testing::read_bytes(dir / "f"), "Habc");
}

// Lets files be mapped, and holds a write once hold() is called until go(): so that a fill can
// be made to find another thread writing, and copy through the mapping.
class HeldWriteIo final : public ForwardingIo {
public:
  HeldWriteIo() : ForwardingIo(Io::system()) {}
  bool maps_writes() const override { return true; }
  ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) override {
    {
      std::unique_lock lock(mu_);
      if (held_) {
        writing_ = true;
        cv_.notify_all();
        cv_.wait(lock, [&] { return !held_; });
      }
    }
    return ForwardingIo::pwrite(fd, buf, count, offset);
  }
  void hold() {
    std::lock_guard lock(mu_);
    held_ = true;
  }
  void wait_writing() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return writing_; });
  }
  void go() {
    std::lock_guard lock(mu_);
    held_ = false;
    cv_.notify_all();
  }

private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false, writing_ = false;
};

TEST(ShardWriter, AFillThatFindsAnotherWritingCopiesThroughTheMapping) {
  TempDir dir;
  std::string data(3 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<char>(i * 7 + i / 4093);
  HeldWriteIo io;
  ShardWriter writer(io);
  ASSERT_TRUE(writer.open_mapped(dir / "f", "H", data.size()).ok());
  ASSERT_TRUE(writer.mapped());
  const uint64_t a = 1, b = 1 + (1 << 20);
  ASSERT_TRUE(writer.claim(a, 1 << 20).ok());
  ASSERT_TRUE(writer.claim(b, data.size() - (1 << 20)).ok());
  io.hold();
  Status first;
  std::thread t([&] { first = writer.fill(a, as_span(data).first(1 << 20)); });
  io.wait_writing();
  // The first fill holds the write: this one copies through the mapping, not a byte by pwrite.
  Status second = writer.fill(b, as_span(data).subspan(1 << 20));
  io.go();
  t.join();
  ASSERT_TRUE(first.ok()) << first.message();
  ASSERT_TRUE(second.ok()) << second.message();
  ASSERT_TRUE(writer.finish().ok());
  EXPECT_TRUE(testing::read_bytes(dir / "f") == "H" + data);
}

TEST(ShardWriter, AMappedFileTruncatedUnderItFailsTheFillWithoutACrash) {
  TempDir dir;
  HeldWriteIo io;
  ShardWriter writer(io);
  const std::string data(1 << 20, 'z');
  ASSERT_TRUE(writer.open_mapped(dir / "f", "H", 2 * data.size()).ok());
  ASSERT_TRUE(writer.mapped());
  const uint64_t a = 1, b = 1 + data.size();
  ASSERT_TRUE(writer.claim(a, data.size()).ok());
  ASSERT_TRUE(writer.claim(b, data.size()).ok());
  const std::vector<std::string> temps = temp_files(dir.path());
  ASSERT_EQ(temps.size(), 1u);
  ASSERT_EQ(::truncate((dir / temps[0]).c_str(), 0), 0); // another process, say
  io.hold();
  std::thread t([&] { (void)writer.fill(a, as_span(data)); });
  io.wait_writing();
  Status s = writer.fill(b, as_span(data)); // through the mapping: past the file's new end
  io.go();
  t.join();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Errc::io);
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.message();
  writer.abandon();
  EXPECT_TRUE(temp_files(dir.path()).empty());
  EXPECT_FALSE(fs::exists(dir / "f"));
}

TEST(ShardWriter, AMappedOpenRefusesMoreThanTheFilesystemHolds) {
  TempDir dir;
  struct statvfs info;
  ASSERT_EQ(::statvfs(dir.path().c_str(), &info), 0);
  const uint64_t free_bytes = static_cast<uint64_t>(info.f_bavail) * info.f_frsize;
  ShardWriter writer;
  Status s = writer.open_mapped(dir / "f", "H", 2 * free_bytes + (uint64_t{1} << 30));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Errc::no_space);
  EXPECT_NE(s.message().find("free space or choose another output directory"), std::string::npos)
      << s.message();
  EXPECT_TRUE(testing::list_dir(dir.path()).empty()) << "the temporary file was left";
}

} // namespace
} // namespace shardshift
