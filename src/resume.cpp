// resume.cpp: the plan fingerprint, adopting the staging directory of a run that did not finish,
// and sorting what it holds into files to keep and files to write again.
#include "resume.h"

#include "sha256.h"
#include "staging.h"

#include <cerrno>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view FINGERPRINT_FORMAT = "shardshift-plan 1";

// Fields are written with their lengths, so no two different plans give the same text.
class FingerprintText {
public:
  FingerprintText& add(std::string_view s) {
    sha_.update(std::to_string(s.size()));
    sha_.update(":");
    sha_.update(s);
    return *this;
  }
  FingerprintText& add(uint64_t v) { return add(std::string_view(std::to_string(v))); }
  std::string hex() { return sha_.hex(); }

private:
  Sha256 sha_;
};

// What tells a later run that an input file is the one this plan was made from.
void add_identity(FingerprintText& f, const Shard& shard, InputIdentity identity) {
  f.add(shard.file_name).add(shard.file->size());
  struct stat st {};
  if (::fstat(shard.file->fd(), &st) != 0)
    return;
  auto ns = [](const timespec& t) {
    return static_cast<uint64_t>(t.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(t.tv_nsec);
  };
  f.add(ns(st.st_mtim)).add(ns(st.st_ctim));
  if (identity == InputIdentity::local)
    f.add(static_cast<uint64_t>(st.st_ino)).add(static_cast<uint64_t>(st.st_dev));
}

void add_source(FingerprintText& f, const Checkpoint& input, const TensorRef& ref) {
  f.add(input.shard(ref).file_name).add(input.info(ref).name);
}

} // namespace

std::string plan_fingerprint(const Checkpoint& input, const Plan& plan, InputIdentity identity) {
  FingerprintText f;
  f.add(FINGERPRINT_FORMAT).add(plan.adapter).add(direction_name(plan.direction));
  f.add(input.shards.size());
  for (const Shard& shard : input.shards)
    add_identity(f, shard, identity);
  f.add(plan.files.size());
  for (const OutputFile& file : plan.files) {
    f.add(file.name).add(file.header).add(file.data_size).add(file.tensors.size());
    for (uint32_t i : file.tensors) {
      const OutputTensor& t = plan.tensors[i];
      f.add(t.name).add(dtype_name(t.dtype)).add(t.size).add(t.offset).add(op_name(t.op));
      f.add(t.shape.size());
      for (uint64_t d : t.shape)
        f.add(d);
      if (t.op == OpKind::copy || t.op == OpKind::transpose || t.op == OpKind::dequant ||
          t.op == OpKind::quantize || t.op == OpKind::quantize_scale)
        add_source(f, input, t.source);
      f.add(t.pieces.size()); // stack: each piece's source and place
      for (const StackPiece& piece : t.pieces) {
        add_source(f, input, piece.source);
        f.add(piece.index).add(piece.col).add(piece.scale.has_value());
        if (piece.scale)
          add_source(f, input, *piece.scale);
      }
      f.add(t.scale.has_value());
      if (t.scale)
        add_source(f, input, *t.scale);
      f.add(t.expert_begin).add(t.experts).add(t.col_begin).add(t.cols);
    }
  }
  return f.hex();
}

std::string fingerprint_file_text(const std::string& fingerprint) {
  return std::string(FINGERPRINT_FORMAT) + "\n" + fingerprint + "\n";
}

std::string read_fingerprint(const fs::path& staging) {
  std::error_code ec;
  const fs::path file = staging / PLAN_FINGERPRINT_NAME;
  if (!fs::is_regular_file(fs::symlink_status(file, ec)) || fs::file_size(file, ec) > 4096)
    return {};
  std::ifstream in(file, std::ios::binary);
  std::string format, fingerprint;
  std::getline(in, format);
  std::getline(in, fingerprint);
  if (format != FINGERPRINT_FORMAT || fingerprint.size() != 64)
    return {};
  return fingerprint;
}

AdoptedStaging adopt_staging(Io& io, const fs::path& output, const std::string& fingerprint,
                             const fs::path& staging) {
  AdoptedStaging adopted;
  for (const fs::path& dir : abandoned_staging_dirs(output)) {
    if (read_fingerprint(dir) != fingerprint)
      continue;
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
      continue;
    // The lock decides between two runs resuming at once; the loser looks on.
    if (flock(fd, LOCK_EX | LOCK_NB) != 0 || read_fingerprint(dir) != fingerprint) {
      ::close(fd);
      continue;
    }
    // Renamed under our own process id, so no other run takes it for abandoned while we write.
    if (io.rename(dir.c_str(), staging.c_str()) != 0) {
      ::close(fd);
      continue;
    }
    adopted.lock = fd;
    adopted.from = dir.string();
    return adopted;
  }
  return adopted;
}

bool keeps_file(const fs::path& path, const OutputFile& file) {
  // O_NONBLOCK: a FIFO at the name opens at once (and is then no regular file), rather than
  // waiting for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0)
    return false;
  struct stat st {};
  bool ok = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
            static_cast<uint64_t>(st.st_size) == file.size();
  std::string header(ok ? file.header.size() : 0, '\0');
  ok = ok && ::pread(fd, header.data(), header.size(), 0) == static_cast<ssize_t>(header.size()) &&
       header == file.header;
  ::close(fd);
  return ok;
}

KeptFiles keep_finished_files(Io& io, const fs::path& staging, const Plan& plan) {
  KeptFiles kept;
  kept.finished.assign(plan.files.size(), false);
  std::map<std::string, size_t, std::less<>> by_name;
  for (size_t i = 0; i < plan.files.size(); ++i)
    by_name.emplace(plan.files[i].name, i);
  std::vector<fs::path> rest;
  std::error_code ec;
  for (fs::directory_iterator it(staging, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name == PLAN_FINGERPRINT_NAME)
      continue;
    auto found = by_name.find(name);
    if (found != by_name.end() && keeps_file(it->path(), plan.files[found->second])) {
      kept.finished[found->second] = true;
      ++kept.files;
      kept.bytes += plan.files[found->second].size();
      continue;
    }
    // Temporary files of the interrupted writers, side files, the index: written again.
    rest.push_back(it->path());
  }
  for (const fs::path& p : rest)
    remove_tree(io, p).ignore(); // whatever stays is removed with the staging directory
  return kept;
}

Result<std::string> sha256_of_file(const fs::path& path, uint64_t chunk) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return Status(Errc::io, path.string() + ": cannot open: " + errno_text(errno));
  Sha256 sha;
  std::vector<std::byte> buf(std::max<uint64_t>(chunk, 4096));
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return Status(Errc::io, path.string() + ": cannot read: " + errno_text(err));
    }
    if (n == 0)
      break;
    sha.update(std::span(buf.data(), static_cast<size_t>(n)));
  }
  ::close(fd);
  return sha.hex();
}

} // namespace shardshift
