// shard_writer_support.h: what the writer's tests share: a fault-injecting Io, a one-call shard
// writer, and a bit-exact check of a written file through the hardened reader.
#pragma once

#include "shardshift/dtype.h"
#include "shardshift/io.h"
#include "shardshift/safetensors.h"
#include "shardshift/shard_writer.h"

#include "test_support.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <fcntl.h>
#include <filesystem>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shardshift::writer_test {

namespace fs = std::filesystem;
using testing::list_dir;
using testing::read_bytes;
using testing::TempDir;

inline std::span<const std::byte> as_span(const std::string& s) {
  return std::as_bytes(std::span(s));
}

inline uint64_t header_length(const std::string& header) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | static_cast<unsigned char>(header[i]);
  return n;
}

inline std::string header_json(const std::string& header) {
  return header.substr(8);
}

// Files whose name marks them as a writer's temporary file.
inline std::vector<std::string> temp_files(const fs::path& dir) {
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
  int create_errno = 0;    ///< open with O_CREAT fails with this
  int write_errno = 0;     ///< pwrite/write fail with this (after space_left, when both)
  int copy_errno = 0;      ///< copy_file_range/splice fail with this
  int copy_fail_after = 0; ///< ... after this many successful copy calls
  int write_calls = 0, copy_calls = 0;
  size_t largest_write = 0;

  int open(const char* path, int flags, unsigned mode) override {
    if (create_errno && (flags & O_CREAT))
      return errno = create_errno, -1;
    return ForwardingIo::open(path, flags, mode);
  }
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
inline Status write_shard(Io& io, const fs::path& path, const std::vector<Tensor>& tensors,
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
inline void expect_file_holds(const fs::path& path, const std::vector<Tensor>& expected) {
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

inline Tensor make_tensor(std::string name, DType dtype, std::vector<uint64_t> shape,
                          std::mt19937_64& rng) {
  auto size = tensor_byte_size(dtype, shape);
  EXPECT_TRUE(size.has_value());
  return {{std::move(name), dtype, std::move(shape)}, testing::random_bytes(rng, size.value_or(0))};
}

} // namespace shardshift::writer_test
