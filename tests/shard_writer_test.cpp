// shard_writer_test.cpp: header construction, the streaming writer's round trips through the
// hardened reader, its zero-copy paths, and its behaviour under injected faults (full disk, short
// writes, broken pipe, refused copies).
#include "shardshift/checkpoint.h"
#include "shardshift/dtype.h"
#include "shardshift/safetensors.h"
#include "shardshift/shard_writer.h"

#include "test_support.h"

#include <algorithm>
#include <cstring>
#include <fcntl.h>
#include <optional>
#include <random>
#include <signal.h>
#include <thread>
#include <unistd.h>

#include <gtest/gtest.h>

namespace shardshift {
namespace {

namespace fs = std::filesystem;
using testing::list_dir;
using testing::read_bytes;
using testing::TempDir;

std::span<const std::byte> as_span(const std::string& s) {
  return std::as_bytes(std::span(s));
}

uint64_t header_length(const std::string& header) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | static_cast<unsigned char>(header[i]);
  return n;
}

std::string header_json(const std::string& header) {
  return header.substr(8);
}

// Files whose name marks them as a writer's temporary file.
std::vector<std::string> temp_files(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& name : list_dir(dir))
    if (name.find(".shardshift-tmp") != std::string::npos)
      out.push_back(name);
  return out;
}

// An Io that misbehaves on request. Every knob defaults to "behave like the kernel".
class FaultIo : public ForwardingIo {
public:
  FaultIo() : ForwardingIo(Io::system()) {}
  std::optional<uint64_t> space_left; ///< bytes pwrite/write accept before ENOSPC
  size_t max_per_call = SIZE_MAX;     ///< short writes: at most this many bytes per call
  int eintr_every = 0;                ///< every Nth write call fails with EINTR
  int fallocate_errno = 0;
  int write_errno = 0;     ///< pwrite/write fail with this (after space_left, when both)
  int copy_errno = 0;      ///< copy_file_range/splice fail with this
  int copy_fail_after = 0; ///< ... after this many successful copy calls
  int write_calls = 0, copy_calls = 0;
  size_t largest_write = 0;

  ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) override {
    ssize_t n = limit(count);
    if (n < 0)
      return n;
    return ForwardingIo::pwrite(fd, buf, static_cast<size_t>(n), offset);
  }
  ssize_t write(int fd, const void* buf, size_t count) override {
    ssize_t n = limit(count);
    if (n < 0)
      return n;
    return ForwardingIo::write(fd, buf, static_cast<size_t>(n));
  }
  ssize_t copy_file_range(int in, off_t* in_off, int out, off_t* out_off, size_t len) override {
    if (++copy_calls > copy_fail_after && copy_errno)
      return errno = copy_errno, -1;
    return ForwardingIo::copy_file_range(in, in_off, out, out_off, std::min(len, max_per_call));
  }
  ssize_t splice(int in, off_t* in_off, int out, off_t* out_off, size_t len) override {
    if (++copy_calls > copy_fail_after && copy_errno)
      return errno = copy_errno, -1;
    return ForwardingIo::splice(in, in_off, out, out_off, std::min(len, max_per_call));
  }
  int fallocate(int fd, off_t offset, off_t length) override {
    if (fallocate_errno)
      return errno = fallocate_errno, -1;
    return ForwardingIo::fallocate(fd, offset, length);
  }

private:
  ssize_t limit(size_t count) {
    ++write_calls;
    if (eintr_every && write_calls % eintr_every == 0)
      return errno = EINTR, -1;
    count = std::min(count, max_per_call);
    if (space_left) {
      if (*space_left == 0)
        return errno = ENOSPC, -1;
      count = static_cast<size_t>(std::min<uint64_t>(count, *space_left));
      *space_left -= count;
    } else if (write_errno) {
      return errno = write_errno, -1;
    }
    largest_write = std::max(largest_write, count);
    return static_cast<ssize_t>(count);
  }
};

struct Tensor {
  PlannedTensor planned;
  std::string bytes;
};

// Writes `tensors` as one shard through `io`; returns the writer's final status.
Status write_shard(Io& io, const fs::path& path, const std::vector<Tensor>& tensors,
                   const HeaderOptions& options = {}) {
  std::vector<PlannedTensor> planned;
  uint64_t data_size = 0;
  for (const auto& t : tensors) {
    planned.push_back(t.planned);
    data_size += t.bytes.size();
  }
  auto header = build_header(planned, options);
  if (!header.ok())
    return header.status();
  ShardWriter writer(io);
  if (Status s = writer.open(path, header.value(), data_size); !s.ok())
    return s;
  for (const auto& t : tensors)
    if (Status s = writer.append(as_span(t.bytes)); !s.ok())
      return s;
  return writer.finish();
}

// Parses `path` with the hardened reader and checks every tensor against `expected` bit-exact.
void expect_file_holds(const fs::path& path, const std::vector<Tensor>& expected) {
  std::string file = read_bytes(path);
  auto header = parse_header(path.string(), as_span(file));
  ASSERT_TRUE(header.ok()) << header.status().message();
  ASSERT_EQ(header->tensors.size(), expected.size());
  for (const auto& t : expected) {
    const TensorInfo* info = header->find(t.planned.name);
    ASSERT_NE(info, nullptr) << t.planned.name;
    EXPECT_EQ(info->dtype, t.planned.dtype) << t.planned.name;
    EXPECT_EQ(info->shape, t.planned.shape) << t.planned.name;
    ASSERT_EQ(info->size(), t.bytes.size()) << t.planned.name;
    EXPECT_EQ(file.substr(header->data_start + info->begin, info->size()), t.bytes)
        << t.planned.name;
  }
  EXPECT_EQ(header->metadata, (Metadata{{"format", "pt"}}));
}

Tensor make_tensor(std::string name, DType dtype, std::vector<uint64_t> shape,
                   std::mt19937_64& rng) {
  auto size = tensor_byte_size(dtype, shape);
  EXPECT_TRUE(size.has_value());
  return {{std::move(name), dtype, std::move(shape)}, testing::random_bytes(rng, size.value_or(0))};
}

// ---------------------------------------------------------------------------------------------
// build_header

TEST(BuildHeader, ExactTextOrderAndOffsets) {
  std::vector<PlannedTensor> tensors = {{"b", DType::BF16, {2, 3}},
                                        {"a", DType::F32, {}},
                                        {"c", DType::U8, {0, 4}},
                                        {"d", DType::I64, {5}}};
  auto header = build_header(tensors, {});
  ASSERT_TRUE(header.ok()) << header.status().message();
  const std::string json = R"({"__metadata__":{"format":"pt"},)"
                           R"("b":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},)"
                           R"("a":{"dtype":"F32","shape":[],"data_offsets":[12,16]},)"
                           R"("c":{"dtype":"U8","shape":[0,4],"data_offsets":[16,16]},)"
                           R"("d":{"dtype":"I64","shape":[5],"data_offsets":[16,56]}})";
  std::string text = header_json(header.value());
  ASSERT_GE(text.size(), json.size());
  EXPECT_EQ(text.substr(0, json.size()), json);
  EXPECT_EQ(text.find_first_not_of(' ', json.size()), std::string::npos) << "padding is spaces";
  EXPECT_LT(text.size() - json.size(), 8u);
  EXPECT_EQ(header_length(header.value()), text.size());
}

TEST(BuildHeader, PadsTheDataStartToEightBytes) {
  for (size_t name_length = 1; name_length <= 24; ++name_length) {
    std::vector<PlannedTensor> tensors = {{std::string(name_length, 'x'), DType::F16, {3}}};
    auto header = build_header(tensors, {});
    ASSERT_TRUE(header.ok());
    EXPECT_EQ(header->size() % 8, 0u) << name_length;
    EXPECT_EQ(header_length(header.value()) + 8, header->size());
  }
}

TEST(BuildHeader, DataStartModulo4096) {
  std::vector<PlannedTensor> tensors = {{"weight", DType::BF16, {16, 16}}};
  for (uint64_t mod : {0u, 7u, 8u, 100u, 512u, 4095u}) {
    HeaderOptions options;
    options.data_start_mod_4096 = mod;
    auto header = build_header(tensors, options);
    ASSERT_TRUE(header.ok()) << mod;
    EXPECT_EQ(header->size() % 4096, mod);
    EXPECT_EQ(header_length(header.value()) + 8, header->size());
    // Still a header the reader accepts.
    std::string file = header.value() + std::string(512, '\x11');
    auto parsed = parse_header("mod.safetensors", as_span(file));
    ASSERT_TRUE(parsed.ok()) << parsed.status().message();
    EXPECT_EQ(parsed->data_start % 4096, mod);
  }
  HeaderOptions bad;
  bad.data_start_mod_4096 = 4096;
  EXPECT_EQ(build_header(tensors, bad).status().code(), Errc::invalid_argument);
}

TEST(BuildHeader, EscapesNamesAndMetadata) {
  const std::string name =
      std::string("q\"uote\\back\nline\x01\x1f") + "\xC3\xA9\xE2\x82\xAC" + "\xF0\x9F\x98\x80";
  HeaderOptions options;
  options.metadata = {{"format", "pt"}, {"note", "tab\there \"x\""}};
  std::vector<PlannedTensor> tensors = {{name, DType::U8, {1}}};
  auto header = build_header(tensors, options);
  ASSERT_TRUE(header.ok()) << header.status().message();
  const std::string expected_name =
      R"("q\"uote\\back\nline\u0001\u001f)" + std::string("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"");
  EXPECT_NE(header->find(expected_name), std::string::npos) << header.value();
  EXPECT_NE(header->find(R"("note":"tab\there \"x\"")"), std::string::npos) << header.value();

  std::string file = header.value() + "A";
  auto parsed = parse_header("escape.safetensors", as_span(file));
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  ASSERT_EQ(parsed->tensors.size(), 1u);
  EXPECT_EQ(parsed->tensors[0].name, name);
  EXPECT_EQ(parsed->metadata, options.metadata);
}

TEST(BuildHeader, NoMetadataObjectWhenEmpty) {
  HeaderOptions options;
  options.metadata.clear();
  std::vector<PlannedTensor> tensors = {{"x", DType::U8, {2}}};
  auto header = build_header(tensors, options);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->find("__metadata__"), std::string::npos);
  EXPECT_EQ(header_json(header.value()).substr(0, 5), R"({"x":)");
}

TEST(BuildHeader, Rejects) {
  auto rejects = [](std::vector<PlannedTensor> tensors, const std::string& fragment,
                    HeaderOptions options = {}) {
    auto header = build_header(tensors, options);
    ASSERT_FALSE(header.ok()) << fragment;
    EXPECT_EQ(header.status().code(), Errc::invalid_argument);
    EXPECT_NE(header.status().message().find(fragment), std::string::npos)
        << header.status().message();
  };
  rejects({{"__metadata__", DType::U8, {1}}}, "'__metadata__'");
  rejects({{"a", DType::U8, {1}}, {"b", DType::U8, {1}}, {"a", DType::F32, {2}}},
          "tensor 'a': duplicate");
  rejects({{"huge", DType::BF16, {uint64_t{1} << 40, uint64_t{1} << 40}}}, "tensor 'huge'");
  // Each size fits in 64 bits (bits included), the running sum does not: 8 x (2^61 - 1) bytes
  // still fit, the ninth tensor overflows.
  std::vector<PlannedTensor> many;
  for (int i = 0; i < 9; ++i)
    many.push_back({"t" + std::to_string(i), DType::U8, {(uint64_t{1} << 61) - 1}});
  rejects(many, "tensor 't8': data offsets overflow");
  rejects({{"odd", DType::F4, {3}}}, "tensor 'odd'");
  rejects({{"bad\xC3", DType::U8, {1}}}, "UTF-8");
  HeaderOptions dup_meta;
  dup_meta.metadata = {{"format", "pt"}, {"format", "np"}};
  rejects({{"a", DType::U8, {1}}}, "duplicate metadata key", dup_meta);
  rejects({{std::string(MAX_HEADER_BYTES, 'n'), DType::U8, {1}}}, "exceeds");
}

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
  EXPECT_NE(s.message().find(std::strerror(EIO)), std::string::npos) << s.message();
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

// ---------------------------------------------------------------------------------------------
// Streams

class IgnoreSigpipe {
public:
  IgnoreSigpipe() { old_ = ::signal(SIGPIPE, SIG_IGN); }
  ~IgnoreSigpipe() { ::signal(SIGPIPE, old_); }

private:
  sighandler_t old_;
};

TEST(ShardWriterStream, BrokenPipe) {
  IgnoreSigpipe ignore; // as the app does
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  ::close(fds[0]); // the reader is gone before anything is written
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {10}}}, {});
  ASSERT_TRUE(header.ok());
  ShardWriter writer;
  Status s = writer.open_stream(fds[1], "<stdout>", header.value(), 10);
  EXPECT_EQ(s.code(), Errc::broken_pipe);
  EXPECT_EQ(s.message(), "<stdout>: the reader of the output pipe went away after 0 bytes");
  EXPECT_EQ(writer.append(as_span(std::string(10, 'z'))).code(), Errc::broken_pipe);
  ::close(fds[1]);
}

// Writes a shard to a pipe with `io` while a thread drains it; returns the bytes that came out.
std::string stream_through_pipe(Io& io, const std::string& header, const std::string& payload,
                                int copy_fd, Status* status, bool* zero_copy) {
  int fds[2];
  EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  std::string received;
  std::thread reader([&] {
    char buf[65536];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0)
      received.append(buf, static_cast<size_t>(n));
  });
  ShardWriter writer(io);
  *status = writer.open_stream(fds[1], "<pipe>", header, payload.size());
  if (status->ok())
    *status = writer.append_copy(copy_fd, 0, payload.size(), as_span(payload), zero_copy);
  if (status->ok())
    *status = writer.finish();
  ::close(fds[1]);
  reader.join();
  ::close(fds[0]);
  return received;
}

TEST(ShardWriterStream, SpliceAndFallbackToAPipe) {
  std::mt19937_64 rng(testing::test_seed());
  TempDir dir;
  const std::string payload = testing::random_bytes(rng, 1'000'000);
  testing::write_bytes(dir / "payload.bin", payload);
  int in = ::open((dir / "payload.bin").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(in, 0);
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {payload.size()}}}, {});
  ASSERT_TRUE(header.ok());

  for (int refuse : {0, EINVAL}) {
    SCOPED_TRACE(refuse);
    FaultIo io;
    io.copy_errno = refuse;
    Status s;
    bool zero_copy = false;
    std::string out = stream_through_pipe(io, header.value(), payload, in, &s, &zero_copy);
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_EQ(zero_copy, refuse == 0);
    EXPECT_EQ(out, header.value() + payload);
    auto parsed = parse_header("<pipe>", as_span(out));
    EXPECT_TRUE(parsed.ok()) << parsed.status().message();
  }
  ::close(in);
}

TEST(ShardWriterStream, FinishChecksTheCount) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  auto header = build_header(std::vector<PlannedTensor>{{"t", DType::U8, {4}}}, {});
  ASSERT_TRUE(header.ok());
  ShardWriter writer;
  ASSERT_TRUE(writer.open_stream(fds[1], "<pipe>", header.value(), 4).ok());
  ASSERT_TRUE(writer.append(as_span(std::string(3, 'z'))).ok());
  EXPECT_EQ(writer.finish().code(), Errc::io);
  // The descriptor belongs to the caller: still open.
  EXPECT_EQ(::write(fds[1], "x", 1), 1);
  ::close(fds[0]);
  ::close(fds[1]);
}

// ---------------------------------------------------------------------------------------------
// Index and small files

TEST(WriteIndex, MatchesPythonJsonDumps) {
  TempDir dir;
  std::map<std::string, std::string> weight_map = {
      {"model.layers.1.w", "model-00002-of-00002.safetensors"},
      {"lm_head.weight", "model-00001-of-00002.safetensors"},
      {"model.layers.0.w", "model-00001-of-00002.safetensors"},
      {"quote\"back\\slash\ttab\x7f", "model-00001-of-00002.safetensors"},
      {"caf\xC3\xA9.\xF0\x9F\x98\x80", "model-00002-of-00002.safetensors"},
  };
  Status s = write_index(Io::system(), dir.path(), 123456789012, weight_map);
  ASSERT_TRUE(s.ok()) << s.message();
  // What json.dumps({"metadata": ..., "weight_map": ...}, indent=2, sort_keys=True) + "\n" gives.
  const std::string expected = R"({
  "metadata": {
    "total_size": 123456789012
  },
  "weight_map": {
    "caf\u00e9.\ud83d\ude00": "model-00002-of-00002.safetensors",
    "lm_head.weight": "model-00001-of-00002.safetensors",
    "model.layers.0.w": "model-00001-of-00002.safetensors",
    "model.layers.1.w": "model-00002-of-00002.safetensors",
    "quote\"back\\slash\ttab\u007f": "model-00001-of-00002.safetensors"
  }
}
)";
  EXPECT_EQ(read_bytes(dir / "model.safetensors.index.json"), expected);
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"model.safetensors.index.json"});
}

TEST(WriteIndex, EmptyWeightMap) {
  TempDir dir;
  ASSERT_TRUE(write_index(Io::system(), dir.path(), 0, {}).ok());
  EXPECT_EQ(read_bytes(dir / "model.safetensors.index.json"),
            "{\n  \"metadata\": {\n    \"total_size\": 0\n  },\n  \"weight_map\": {}\n}\n");
}

TEST(WriteFileAtomic, WritesAndLeavesNoTemp) {
  TempDir dir;
  const std::string text = "{\"model_type\": \"x\"}\n";
  ASSERT_TRUE(write_file_atomic(Io::system(), dir / "config.json", as_span(text)).ok());
  EXPECT_EQ(read_bytes(dir / "config.json"), text);
  ASSERT_TRUE(write_file_atomic(Io::system(), dir / "empty", {}).ok());
  EXPECT_EQ(read_bytes(dir / "empty"), "");
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"config.json", "empty"}));

  FaultIo full;
  full.fallocate_errno = EOPNOTSUPP;
  full.space_left = 3;
  Status s = write_file_atomic(full, dir / "config.json", as_span(std::string("replacement")));
  EXPECT_EQ(s.code(), Errc::no_space);
  EXPECT_EQ(read_bytes(dir / "config.json"), text) << "the old file survives a failed write";
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"config.json", "empty"}));
}

TEST(RemoveTempFiles, RemovesOnlyOurs) {
  TempDir dir;
  for (const char* name : {".model.safetensors.shardshift-tmp-12-abcdef", ".x.shardshift-tmp",
                           "model.safetensors", ".hidden", "shardshift-tmp-visible"})
    testing::write_bytes(dir / name, "x");
  remove_temp_files(Io::system(), dir.path());
  EXPECT_EQ(list_dir(dir.path()),
            (std::vector<std::string>{".hidden", "model.safetensors", "shardshift-tmp-visible"}));
}

TEST(SyncDirectory, ReportsAMissingDirectory) {
  TempDir dir;
  EXPECT_TRUE(sync_directory(Io::system(), dir.path()).ok());
  Status s = sync_directory(Io::system(), dir / "missing");
  EXPECT_EQ(s.code(), Errc::io);
  EXPECT_NE(s.message().find("missing"), std::string::npos);
}

} // namespace
} // namespace shardshift
