// compare_target.cpp: comparing produced bytes with the files of a directory, as they are
// produced.
#include "compare_target.h"

#include "shardshift/shard_writer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unistd.h>

namespace shardshift {

namespace fs = std::filesystem;

struct CompareTarget::OpenFile {
  std::string name;
  std::unique_ptr<MappedFile> file;
  uint64_t from = 0;     ///< offsets before this are not compared (a shard's header)
  uint64_t position = 0; ///< offset of the next produced byte
  uint64_t released = 0; ///< pages of the mapping before this were released
  FileComparison result;
};

// Writes to a compared file become comparisons; everything else goes to the wrapped Io.
class CompareTarget::ComparingIo final : public ForwardingIo {
public:
  ComparingIo(Io& base, CompareTarget& target) : ForwardingIo(base), target_(target) {}
  ssize_t write(int fd, const void* buf, size_t count) override {
    if (OpenFile* f = target_.find(fd))
      return target_.compare(*f, buf, count);
    return ForwardingIo::write(fd, buf, count);
  }
  // The writer falls back to writing from the input mapping when splice refuses: those are the
  // bytes to compare, and no kernel copy is needed to see them.
  ssize_t splice(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len) override {
    if (target_.find(fd_out)) {
      errno = EINVAL;
      return -1;
    }
    return ForwardingIo::splice(fd_in, off_in, fd_out, off_out, len);
  }
  // A compared file is opened read-only and only ever streamed to; anything else is a bug that
  // must not write.
  ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) override {
    if (target_.find(fd)) {
      errno = EBADF;
      return -1;
    }
    return ForwardingIo::pwrite(fd, buf, count, offset);
  }
  ssize_t copy_file_range(int fd_in, off_t* off_in, int fd_out, off_t* off_out,
                          size_t len) override {
    if (target_.find(fd_out)) {
      errno = EBADF;
      return -1;
    }
    return ForwardingIo::copy_file_range(fd_in, off_in, fd_out, off_out, len);
  }

private:
  CompareTarget& target_;
};

CompareTarget::CompareTarget(fs::path dir, Io& base)
    : dir_(std::move(dir)), io_(std::make_unique<ComparingIo>(base, *this)) {}

CompareTarget::~CompareTarget() = default;

Io& CompareTarget::io() {
  return *io_;
}

CompareTarget::OpenFile* CompareTarget::find(int fd) {
  std::lock_guard lock(mu_);
  auto it = open_.find(fd);
  return it == open_.end() ? nullptr : it->second.get();
}

Status CompareTarget::open(ShardWriter& writer, const OutputFile& file) {
  auto mapped = MappedFile::open(dir_ / file.name);
  if (!mapped)
    return mapped.status();
  auto f = std::make_unique<OpenFile>();
  f->name = file.name;
  f->from = file.header.size();
  f->file = std::move(mapped.value());
  const int fd = f->file->fd();
  {
    std::lock_guard lock(mu_);
    open_[fd] = std::move(f);
  }
  return writer.open_stream(fd, (dir_ / file.name).string(), file.header, file.data_size);
}

Status CompareTarget::finish(ShardWriter& writer, const OutputFile& file) {
  Status s = writer.finish();
  close_file(file, s.ok());
  return s;
}

void CompareTarget::abandon(ShardWriter& writer, const OutputFile& file) {
  writer.abandon();
  close_file(file, false);
}

void CompareTarget::close_file(const OutputFile& file, bool finished) {
  std::lock_guard lock(mu_);
  for (auto it = open_.begin(); it != open_.end(); ++it)
    if (it->second->name == file.name) {
      it->second->result.finished = finished;
      results_[file.name] = it->second->result;
      open_.erase(it); // unmaps and closes the file
      return;
    }
}

// The produced bytes [position, position + count) against the file's, in blocks of
// COMPARE_BLOCK: each block's pages are read in one call, compared and released (the partial
// last page waits for the next block), so a lane holds at most one block of the file whatever
// the size of the write, and the pipeline's budget (buffers and input) stays what bounds memory.
// Once a file differs, the rest of it is only counted: its first difference is what the user
// needs.
ssize_t CompareTarget::compare(OpenFile& f, const void* buf, size_t count) {
  constexpr uint64_t COMPARE_BLOCK = uint64_t{4} << 20;
  static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t pos = f.position;
  f.position += count;
  const MappedFile& out = *f.file;
  const uint64_t end = std::min(pos + count, out.size());
  for (uint64_t begin = std::max(pos, f.from); begin < end && !f.result.first_difference;) {
    const uint64_t length = std::min(COMPARE_BLOCK, end - begin);
    const auto* produced = static_cast<const std::byte*>(buf) + (begin - pos);
    const std::byte* found = out.bytes().data() + begin;
    out.populate(begin, length); // one call rather than one fault per page
    std::optional<uint64_t> differs;
    const bool read = run_catching_sigbus([&] {
      if (std::memcmp(produced, found, length) != 0)
        differs = begin + static_cast<uint64_t>(
                              std::mismatch(produced, produced + length, found).first - produced);
    });
    if (!read) {
      // The produced bytes of a copied tensor are the input's mapping: a page lost there is the
      // input's, which the writer names when write(2) says EFAULT, as the kernel would.
      const auto* at = static_cast<const std::byte*>(last_sigbus_address());
      if (at < found || at >= found + length) {
        errno = EFAULT;
        return -1;
      }
      std::lock_guard lock(mu_);
      if (error_.ok())
        error_ = file_changed_error(out.path());
      errno = EIO;
      return -1;
    }
    f.result.compared_bytes += length;
    f.result.first_difference = differs;
    begin += length;
    out.release(f.released, begin - f.released);
    f.released = begin - begin % page;
  }
  return static_cast<ssize_t>(count);
}

std::map<std::string, FileComparison> CompareTarget::results() const {
  std::lock_guard lock(mu_);
  return results_;
}

Status CompareTarget::error() const {
  std::lock_guard lock(mu_);
  return error_;
}

} // namespace shardshift
