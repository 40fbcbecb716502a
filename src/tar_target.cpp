// tar_target.cpp: ustar headers (pax where ustar has no room), padding and the end of archive.
#include "tar_target.h"

#include "stream_fd.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>

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

Status TarTarget::write(std::string_view bytes, const std::string& what, bool room_when_stopped) {
  while (!bytes.empty()) {
    const ssize_t n = io_.write(fd_, bytes.data(), std::min(bytes.size(), MAX_IO_CHUNK));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { // full (stream_fd.h)
      if (wait_writable(fd_, cancel_))
        continue;
      if (room_when_stopped && make_room(fd_, bytes.size())) {
        room_when_stopped = false; // once: then the rest goes, or nothing does
        continue;
      }
      return Status(Errc::interrupted, "interrupted");
    }
    if (n <= 0)
      return Status(n < 0 && errno == EPIPE ? Errc::broken_pipe : Errc::io,
                    what + ": cannot write the tar stream to stdout: " +
                        (n < 0 ? errno_text(errno) : std::string("no progress")));
    bytes.remove_prefix(static_cast<size_t>(n));
    inside_entry_ = true; // until the caller has written the entry's last byte
  }
  return {};
}

// "a/b/c.json" needs the entries "a/" and "a/b/" first, so that tar x makes the directories with
// a fixed mode whatever the umask of the writer (the umask of the reader still applies).
Status TarTarget::write_directories(std::string_view name) {
  for (size_t slash = name.find('/'); slash != std::string_view::npos;
       slash = name.find('/', slash + 1)) {
    std::string dir(name.substr(0, slash + 1));
    if (!directories_.insert(dir).second)
      continue;
    if (Status s = write(tar_header(dir, 0, '5'), dir); !s.ok())
      return s;
    inside_entry_ = false;
  }
  return {};
}

Status TarTarget::open(ShardWriter& writer, const OutputFile& file) {
  if (Status s = write_directories(file.name); !s.ok())
    return s;
  if (Status s = write(tar_header(file.name, file.size()), file.name); !s.ok())
    return s;
  return writer.open_stream(fd_, file.name, file.header, file.data_size);
}

Status TarTarget::finish(ShardWriter& writer, const OutputFile& file) {
  if (Status s = writer.finish(); !s.ok()) // checks that every planned byte went out
    return s;
  if (Status s = write(std::string(tar_padding(file.size()), '\0'), file.name); !s.ok())
    return s;
  inside_entry_ = false;
  return {};
}

void TarTarget::abandon(ShardWriter& writer, const OutputFile& file) {
  // Every byte out and nothing to pad: the stream stands at a boundary after all.
  if (writer.bytes_written() == file.size() && tar_padding(file.size()) == 0)
    inside_entry_ = false;
  writer.abandon();
}

Status TarTarget::deliver(const std::string& name, std::string_view bytes) {
  if (Status s = write_directories(name); !s.ok())
    return s;
  if (Status s = write(tar_header(name, bytes.size()), name); !s.ok())
    return s;
  if (Status s = write(bytes, name); !s.ok())
    return s;
  if (Status s = write(std::string(tar_padding(bytes.size()), '\0'), name); !s.ok())
    return s;
  inside_entry_ = false;
  return {};
}

void TarTarget::end_incomplete() {
  if (inside_entry_)
    return; // the missing bytes already make it a truncated archive
  // A block whose checksum field is zeros: no tar takes it for a header, nor for the end. GNU
  // tar fails on it. A reader that takes a bad header after the first entry for the archive's
  // end (Python's tarfile) does not; but a bad header right after an extended header is an
  // error to every reader, so one comes first, saying why.
  const std::string why = "shardshift: this tar stream is incomplete: the conversion failed\n";
  const std::string records = pax_record("comment", why.substr(0, why.size() - 1));
  std::string out = ustar_block({}, "PaxHeaders/incomplete", records.size(), 'x');
  out += records;
  out.append(tar_padding(records.size()), '\0');
  std::string block = why;
  block.resize(BLOCK, '\0');
  out += block;
  // Stopped (now or while this waits) with a full pipe: room for the block, so that the stream
  // never ends at an entry's boundary, which a reader that reads on later would take for a whole
  // archive. Without that room, the write gives up; cut inside the block, the stream is a
  // truncated archive all the same.
  write(out, "end of a failed stream", true).ignore();
  inside_entry_ = true;
}

Status TarTarget::close() {
  return write(std::string(2 * BLOCK, '\0'), "end of archive");
}

} // namespace shardshift
