// tar_target.cpp: ustar headers (pax where ustar has no room), padding and the end of archive.
#include "tar_target.h"

#include "stream_fd.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

namespace shardshift {

namespace {

constexpr size_t BLOCK = 512;
// ustar's limits: a size field of 11 octal digits, a name of 100 bytes, a prefix of 155.
constexpr uint64_t USTAR_MAX_SIZE = (uint64_t{1} << 33) - 1;
constexpr size_t NAME_LEN = 100, PREFIX_LEN = 155;

// `value` as `width - 1` octal digits and a NUL, as ustar's numeric fields are written.
void put_octal(char* field, size_t width, uint64_t value) {
  std::snprintf(field, width, "%0*llo", static_cast<int>(width - 1),
                static_cast<unsigned long long>(value));
}

// Where ustar can hold `name`: in name alone (prefix empty), or split at a '/' into prefix and
// name. False when neither fits: the path then goes in a pax header.
bool split_ustar_name(std::string_view name, std::string_view* prefix, std::string_view* rest) {
  if (name.size() <= NAME_LEN) {
    *prefix = {};
    *rest = name;
    return true;
  }
  // The first '/' that leaves a name of at most 100 bytes gives the shortest prefix.
  for (size_t slash = name.find('/'); slash != std::string_view::npos;
       slash = name.find('/', slash + 1)) {
    if (name.size() - slash - 1 <= NAME_LEN && name.size() - slash - 1 > 0) {
      if (slash > PREFIX_LEN)
        return false;
      *prefix = name.substr(0, slash);
      *rest = name.substr(slash + 1);
      return true;
    }
  }
  return false;
}

// One ustar block. Fields not named here are zeros: no link name, no user or group name, device
// numbers 0.
std::string ustar_block(std::string_view prefix, std::string_view name, uint64_t size, char type) {
  std::array<char, BLOCK> b{};
  if (!name.empty())
    std::memcpy(&b[0], name.data(), std::min(name.size(), NAME_LEN));
  put_octal(&b[100], 8, type == '5' ? 0755 : 0644);
  put_octal(&b[108], 8, 0);                                  // uid
  put_octal(&b[116], 8, 0);                                  // gid
  put_octal(&b[124], 12, size <= USTAR_MAX_SIZE ? size : 0); // larger: the pax size rules
  put_octal(&b[136], 12, 0);                                 // mtime: fixed, for identical runs
  b[156] = type;
  std::memcpy(&b[257], "ustar", 6); // magic "ustar\0", version "00"
  std::memcpy(&b[263], "00", 2);
  put_octal(&b[329], 8, 0); // devmajor
  put_octal(&b[337], 8, 0); // devminor
  if (!prefix.empty())      // an empty view may have no data pointer, which memcpy must not get
    std::memcpy(&b[345], prefix.data(), std::min(prefix.size(), PREFIX_LEN));
  // The checksum is the sum of the block's bytes with its own field read as eight spaces.
  std::memset(&b[148], ' ', 8);
  unsigned sum = 0;
  for (char c : b)
    sum += static_cast<unsigned char>(c);
  std::snprintf(&b[148], 8, "%06o", sum); // six digits, a NUL, and the space kept from above
  return std::string(b.data(), b.size());
}

// A pax record: "LENGTH key=value\n", where LENGTH counts the whole record, its own digits too.
std::string pax_record(std::string_view key, std::string_view value) {
  const size_t base = key.size() + value.size() + 3; // ' ', '=', '\n'
  size_t length = base + 1;
  while (length != base + std::to_string(length).size())
    length = base + std::to_string(length).size();
  return std::to_string(length) + " " + std::string(key) + "=" + std::string(value) + "\n";
}

} // namespace

uint64_t tar_padding(uint64_t size) {
  return (BLOCK - size % BLOCK) % BLOCK;
}

std::string tar_header(std::string_view name, uint64_t size, char type) {
  std::string_view prefix, rest;
  const bool name_fits = split_ustar_name(name, &prefix, &rest);
  if (name_fits && size <= USTAR_MAX_SIZE)
    return ustar_block(prefix, rest, size, type);
  std::string records;
  if (!name_fits)
    records += pax_record("path", name);
  if (size > USTAR_MAX_SIZE)
    records += pax_record("size", std::to_string(size));
  // The extended header's own name is read by no extracting tar; a fixed one keeps runs equal.
  std::string_view base = name.substr(0, name.find_last_not_of('/') + 1);
  base = base.substr(base.find_last_of('/') == std::string_view::npos ? 0
                                                                      : base.find_last_of('/') + 1);
  const std::string pax_name = "PaxHeaders/" + std::string(base.substr(0, NAME_LEN - 11));
  std::string out = ustar_block({}, pax_name, records.size(), 'x');
  out += records;
  out.append(tar_padding(records.size()), '\0');
  // The ustar fields still carry what fits, for readers that ignore pax: the name's tail.
  std::string_view tail = name.size() > NAME_LEN ? name.substr(name.size() - NAME_LEN) : name;
  out += ustar_block(name_fits ? prefix : std::string_view(), name_fits ? rest : tail, size, type);
  return out;
}

TarTarget::TarTarget(Io& io, int fd, const std::atomic<bool>* cancel)
    : io_(io), fd_(fd), cancel_(cancel) {
  struct stat st {};
  regular_ = ::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode);
}

void TarTarget::data_ends_in(uint64_t left) {
  if (!regular_)
    return;
  if (const off_t at = ::lseek(fd_, 0, SEEK_CUR); at >= 0)
    data_end_ = at + static_cast<off_t>(left);
}

// `bytes`, written until all went out. A full non-blocking stream (stream_fd.h) is waited on until
// the run is stopped.
Status TarTarget::write(std::string_view bytes, const std::string& what) {
  while (!bytes.empty()) {
    const ssize_t w = io_.write(fd_, bytes.data(), std::min(bytes.size(), MAX_IO_CHUNK));
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { // full (stream_fd.h)
      if (wait_writable(fd_, cancel_))
        continue;
      return Status(Errc::interrupted, "interrupted");
    }
    if (w <= 0)
      return Status(w < 0 && errno == EPIPE ? Errc::broken_pipe : Errc::io,
                    what + ": cannot write the tar stream to stdout: " +
                        (w < 0 ? errno_text(errno) : std::string("no progress")));
    bytes.remove_prefix(static_cast<size_t>(w));
  }
  return {};
}

// Readers take a stream cut at an entry's end, or anywhere in the block after it (a header cut
// short), for a whole archive; between the held bytes and the next file's full header there is no
// other place to stop. So these bytes go out in one write: on a pipe, whole or not at all when
// at most PIPE_BUF; when longer (many directory entries, a long name's pax header), once the
// pipe is empty and can take them all, which it then does in one write too.
Status TarTarget::write_after_held(std::string bytes, const std::string& what) {
  std::string out = std::move(held_);
  out += bytes;
  held_.clear();
  struct stat st {};
  if (out.size() > PIPE_BUF && ::fstat(fd_, &st) == 0 && S_ISFIFO(st.st_mode)) {
    if (const int capacity = ::fcntl(fd_, F_GETPIPE_SZ);
        capacity >= 0 && static_cast<size_t>(capacity) < out.size() && out.size() <= INT_MAX)
      ::fcntl(fd_, F_SETPIPE_SZ, static_cast<int>(out.size())); // else: as much as it takes
    for (int queued = 1; ::ioctl(fd_, FIONREAD, &queued) == 0 && queued > 0;) {
      if (cancel_ && cancel_->load())
        return Status(Errc::interrupted, "interrupted");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  return write(out, what);
}

// "a/b/c.json" needs the entries "a/" and "a/b/" first, so that tar x makes the directories with
// a fixed mode whatever the umask of the writer (the umask of the reader still applies).
void TarTarget::hold_directories(std::string_view name) {
  for (size_t slash = name.find('/'); slash != std::string_view::npos;
       slash = name.find('/', slash + 1)) {
    std::string dir(name.substr(0, slash + 1));
    if (directories_.insert(dir).second)
      held_ += tar_header(dir, 0, '5');
  }
}

Status TarTarget::open(ShardWriter& writer, const OutputFile& file) {
  hold_directories(file.name);
  if (file.size() == 0) { // an empty file (a side file) ends with its header: held whole
    held_ += tar_header(file.name, 0);
  } else if (Status s = write_after_held(tar_header(file.name, file.size()), file.name); !s.ok()) {
    return s;
  } else {
    data_ends_in(file.size());
  }
  // Its last byte is held, to go out with what follows (see tar_target.h).
  return writer.open_stream(fd_, file.name, file.header, file.data_size, 1);
}

Status TarTarget::finish(ShardWriter& writer, const OutputFile& file) {
  if (Status s = writer.finish(); !s.ok()) // checks that every planned byte went out
    return s;
  if (file.size() == 0)
    return {}; // its header is held already
  held_ = writer.take_held();
  held_.append(tar_padding(file.size()), '\0');
  return {};
}

void TarTarget::abandon(ShardWriter& writer, const OutputFile&) {
  writer.abandon();
}

Status TarTarget::deliver(const std::string& name, std::string_view bytes) {
  hold_directories(name);
  if (bytes.empty()) { // an entry of no bytes ends with its header: held whole
    held_ += tar_header(name, 0);
    return {};
  }
  std::string start = tar_header(name, bytes.size());
  if (bytes.size() <= BLOCK) // small: with its header, ending before its last byte
    start.append(bytes.substr(0, bytes.size() - 1));
  if (Status s = write_after_held(std::move(start), name); !s.ok())
    return s;
  data_ends_in(bytes.size() <= BLOCK ? 1 : bytes.size());
  if (bytes.size() > BLOCK) // the rest but the last byte: any write of it ends inside the entry
    if (Status s = write(bytes.substr(0, bytes.size() - 1), name); !s.ok())
      return s;
  held_.assign(1, bytes.back());
  held_.append(tar_padding(bytes.size()), '\0');
  return {};
}

void TarTarget::end_incomplete() {
  held_.clear(); // the stream stays inside the last entry begun
  // Unless a short write into a file took the held bytes and stopped after them: the file then
  // ends at an entry's end, or in the header block after it, which readers take for the end.
  // The cut is best done; the run has failed and says so either way.
  const off_t at = regular_ && data_end_ > 0 ? ::lseek(fd_, 0, SEEK_CUR) : -1;
  if (data_end_ > 0 && at >= data_end_ && io_.ftruncate(fd_, data_end_ - 1) == 0)
    ::lseek(fd_, data_end_ - 1, SEEK_SET);
}

Status TarTarget::close() {
  return write_after_held(std::string(2 * BLOCK, '\0'), "end of archive");
}

} // namespace shardshift
