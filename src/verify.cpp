// verify.cpp: the verification driver. Read verify() top to bottom: check OUT, open and plan as
// convert() does, then the three steps of verify.h: the files (list, sizes, headers), the data
// (the conversion run again into a CompareTarget), SHA256SUMS.
#include "shardshift/verify.h"

#include "shardshift/problems.h"

#include "compare_target.h"
#include "engine.h"
#include "listing_line.h"
#include "pipeline.h"
#include "sha256.h"
#include "side_files.h"

#include <algorithm>
#include <cerrno>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

#include <tbb/global_control.h>

namespace shardshift {

namespace fs = std::filesystem;
using Kind = Difference::Kind;

const char* difference_kind_name(Kind kind) {
  switch (kind) {
  case Kind::missing:
    return "missing";
  case Kind::extra:
    return "extra";
  case Kind::size:
    return "size";
  case Kind::header:
    return "header";
  case Kind::data:
    return "data";
  case Kind::checksum:
    return "checksum";
  }
  return "?";
}

std::string Difference::text() const {
  return printable(file) + ": " + detail;
}

namespace {

constexpr size_t READ_BLOCK = size_t{1} << 20; // reads of OUT outside the pipeline

// A file the conversion writes, as the plan knows it before any data is produced.
struct Expected {
  std::string name;
  uint64_t size = 0;
  std::string_view head;  ///< bytes known up front: a shard's header, or the whole index
  int plan_file = -1;     ///< index into Plan::files, or -1 (index, side file)
  bool present = false;   ///< OUT holds it as a regular file (step 1)
  bool same_start = true; ///< its size and known bytes matched (step 1)
};

Status read_error(const fs::path& path, int err) {
  return Status(Errc::io, path.string() + ": cannot read: " + errno_text(err));
}

// The offset of the first byte where the file at `path` differs from `expected` within both, or
// nullopt; read in blocks, so a file of any size costs READ_BLOCK of memory.
Result<std::optional<uint64_t>> first_difference(const fs::path& path, std::string_view expected) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return read_error(path, errno);
  std::vector<char> block(std::min(expected.size(), READ_BLOCK));
  uint64_t at = 0;
  std::optional<uint64_t> differs;
  while (at < expected.size() && !differs) {
    const ssize_t n = ::pread(fd, block.data(), std::min(block.size(), expected.size() - at),
                              static_cast<off_t>(at));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return read_error(path, err);
    }
    if (n == 0)
      break; // the file is shorter: its size is reported on its own
    const std::string_view want = expected.substr(at, static_cast<size_t>(n));
    auto [mine, theirs] = std::mismatch(want.begin(), want.end(), block.begin());
    if (mine != want.end())
      differs = at + static_cast<uint64_t>(mine - want.begin());
    at += static_cast<uint64_t>(n);
  }
  ::close(fd);
  return differs;
}

// SHA-256 of a regular file of OUT, read in blocks. Anything else is refused without reading:
// opening a FIFO would wait for a writer, and a device may never end.
Result<std::string> hash_file(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return read_error(path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status(Errc::io, path.string() + ": is not a regular file");
  }
  std::vector<std::byte> block(READ_BLOCK);
  Sha256 sha;
  for (;;) {
    const ssize_t n = ::read(fd, block.data(), block.size());
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return read_error(path, err);
    }
    if (n == 0)
      break;
    sha.update(std::span(block.data(), static_cast<size_t>(n)));
  }
  ::close(fd);
  return sha.hex();
}

Difference difference(Kind kind, std::string file, std::string detail, uint64_t offset = 0) {
  Difference d;
  d.kind = kind;
  d.file = std::move(file);
  d.detail = std::move(detail);
  d.offset = offset;
  return d;
}

std::string bytes_text(uint64_t n) {
  return std::to_string(n) + (n == 1 ? " byte" : " bytes");
}

// Everything the conversion writes, in the order it writes it (shards, index, side files).
Result<std::vector<Expected>> expected_files(const Checkpoint& input, const Plan& plan,
                                             const std::string& index_text) {
  auto sizes = list_output_files(input, plan);
  if (!sizes)
    return sizes.status();
  std::vector<Expected> files;
  for (const OutputFileSize& f : *sizes) {
    Expected e;
    e.name = f.name;
    e.size = f.size;
    if (files.size() < plan.files.size()) { // list_output_files puts the shards first
      e.plan_file = static_cast<int>(files.size());
      e.head = plan.files[files.size()].header;
    } else if (plan.write_index && f.name == INDEX_FILE_NAME) {
      e.head = index_text;
    }
    files.push_back(std::move(e));
  }
  return files;
}

// Every file in OUT the way a checkpoint directory is read (checkpoint.cpp): the top level
// whole, subdirectories except hidden ones (a download tool's .cache/), as relative names.
void list_output(const fs::path& root, const fs::path& rel, std::vector<std::string>* files,
                 std::vector<std::pair<std::string, std::string>>* odd) {
  std::error_code ec;
  std::vector<fs::path> subdirectories;
  for (fs::directory_iterator it(root / rel, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = (rel / it->path().filename()).generic_string();
    std::error_code entry_ec;
    const bool link = it->is_symlink(entry_ec);
    if (it->is_directory(entry_ec)) {
      if (link)
        odd->emplace_back(name, "a link to a directory, which the conversion does not write");
      else if (!it->path().filename().string().starts_with("."))
        subdirectories.push_back(rel / it->path().filename());
    } else {
      files->push_back(name);
    }
  }
  for (const fs::path& sub : subdirectories)
    list_output(root, sub, files, odd);
}

// Step 1: every expected file present, with its size and known bytes; nothing else in OUT.
Status check_files(const fs::path& out, std::vector<Expected>& expected,
                   std::vector<Difference>* found, uint64_t* compared) {
  for (Expected& e : expected) {
    const fs::path path = out / e.name;
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    if (!fs::exists(st)) {
      found->push_back(difference(Kind::missing, e.name, "missing from OUT"));
      continue;
    }
    if (!fs::is_regular_file(st)) {
      found->push_back(difference(Kind::missing, e.name, "is not a regular file in OUT"));
      continue;
    }
    e.present = true;
    const uint64_t size = fs::file_size(path, ec);
    if (ec)
      return Status(Errc::io, path.string() + ": cannot stat: " + ec.message());
    if (size != e.size) {
      e.same_start = false;
      found->push_back(difference(Kind::size, e.name,
                                  "size " + bytes_text(size) + ", expected " + bytes_text(e.size) +
                                      " (" +
                                      bytes_text(size < e.size ? e.size - size : size - e.size) +
                                      (size < e.size ? " short)" : " too many)")));
    }
    if (e.head.empty())
      continue;
    auto differs = first_difference(path, e.head);
    if (!differs)
      return differs.status();
    *compared += std::min<uint64_t>(size, e.head.size());
    if (*differs) {
      e.same_start = false;
      const bool index = e.plan_file < 0;
      found->push_back(difference(Kind::header, e.name,
                                  (index ? "differs from the index the conversion writes at byte "
                                         : "header differs from the conversion's at byte ") +
                                      std::to_string(**differs) + " (of " +
                                      bytes_text(e.head.size()) + ")",
                                  **differs));
    }
  }
  std::set<std::string> known{CHECKSUMS_FILE_NAME, OUTPUT_MARKER_NAME};
  for (const Expected& e : expected)
    known.insert(e.name);
  std::vector<std::string> files;
  std::vector<std::pair<std::string, std::string>> odd;
  list_output(out, {}, &files, &odd);
  std::sort(files.begin(), files.end());
  for (const std::string& f : files)
    if (!known.count(f))
      found->push_back(difference(Kind::extra, f, "not part of the conversion's output"));
  for (auto& [name, what] : odd)
    found->push_back(difference(Kind::extra, name, what));
  return {};
}

// Where byte `offset` of plan file `file` lies, for people.
std::string locate(const Plan& plan, uint32_t file, uint64_t offset, std::string* tensor) {
  const OutputFile& f = plan.files[file];
  const uint64_t at = offset - f.header.size();
  for (uint32_t i : f.tensors) {
    const OutputTensor& t = plan.tensors[i];
    if (at >= t.offset && at - t.offset < t.size) {
      *tensor = t.name;
      return "in tensor '" + printable(t.name) + "' (byte " + std::to_string(at - t.offset) +
             " of its " + std::to_string(t.size) + ")";
    }
  }
  return "outside every tensor";
}

// What step 2 hands step 3: the digest of every file found identical, by name.
using KnownDigests = std::map<std::string, std::string>;

// Step 2: the conversion run again into a CompareTarget over OUT. Files absent from OUT are
// left out (step 1 reported them).
Status compare_data(const VerifyOptions& options, const Checkpoint& input, const Plan& plan,
                    const std::vector<Expected>& expected, bool want_digests,
                    const VerifyCallbacks& callbacks, uint64_t held, VerifySummary* summary,
                    KnownDigests* digests, Profiler& profiler) {
  std::vector<uint32_t> files;
  std::vector<const Expected*> side_files;
  for (const Expected& e : expected) {
    if (!e.present)
      continue;
    if (e.plan_file >= 0)
      files.push_back(static_cast<uint32_t>(e.plan_file));
    else if (e.name != INDEX_FILE_NAME || !plan.write_index)
      side_files.push_back(&e);
  }
  const unsigned threads =
      options.threads ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, threads);
  CompareTarget target(options.output);
  // The engine exactly as convert() configures it for a directory output of these files.
  ConvertOptions shape;
  shape.writers = options.writers;
  shape.max_memory = options.max_memory;
  shape.device = options.device;
  shape.owns_gpu = options.owns_gpu;
  shape.cancel = options.cancel;
  ConvertCallbacks progress;
  progress.progress = callbacks.progress;
  auto engine = configure_engine(shape, threads, std::max<size_t>(1, files.size()),
                                 plan_dequantizes(plan), target.io(), progress, held, &profiler);
  if (!engine)
    return engine.status();
  std::vector<std::string> shard_digests(plan.files.size());
  if (want_digests)
    engine->config.digests = &shard_digests;

  auto moved = run_pipeline(input, plan, files, target, engine->config, profiler);
  summary->device = engine->device(); // after the run: the GPU opens beside it
  if (!moved)
    return target.error().ok() ? moved.status() : target.error();
  std::map<std::string, std::string> side_digests;
  for (const Expected* e : side_files) {
    if (options.cancel && options.cancel->load())
      return Status(Errc::interrupted, "interrupted");
    std::string* digest = want_digests ? &side_digests[e->name] : nullptr;
    if (Status s = deliver_side_file(target, target.io(), input, e->name,
                                     engine->config.chunk_bytes, digest);
        !s.ok())
      return target.error().ok() ? s : target.error();
  }

  const auto results = target.results();
  for (const Expected& e : expected) {
    auto r = results.find(e.name);
    if (r == results.end())
      continue;
    summary->compared_bytes += r->second.compared_bytes;
    if (const auto& at = r->second.first_difference) {
      Difference d = difference(Kind::data, e.name, "", *at);
      d.detail = e.plan_file >= 0
                     ? "data differs at byte " + std::to_string(*at) + ", " +
                           locate(plan, static_cast<uint32_t>(e.plan_file), *at, &d.tensor)
                     : "differs from the input's at byte " + std::to_string(*at);
      summary->differences.push_back(std::move(d));
    } else if (e.same_start && want_digests) {
      (*digests)[e.name] =
          e.plan_file >= 0 ? shard_digests[static_cast<size_t>(e.plan_file)] : side_digests[e.name];
    }
  }
  return {};
}

// Step 3: OUT/SHA256SUMS checked line by line, as `sha256sum -c` does, relative to OUT.
Status check_checksum_file(const fs::path& out, const KnownDigests& known, VerifySummary* summary) {
  const fs::path path = out / CHECKSUMS_FILE_NAME;
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return read_error(path, errno);
  std::string line;
  uint64_t checked = 0; // lines of the checksum format
  for (uint64_t number = 1; std::getline(in, line); ++number) {
    if (line.ends_with('\r')) // written on Windows; sha256sum -c takes it too
      line.pop_back();
    if (line.empty())
      continue;
    auto problem = [&](const std::string& what) {
      summary->differences.push_back(difference(Kind::checksum, CHECKSUMS_FILE_NAME,
                                                "line " + std::to_string(number) + ": " + what));
    };
    // A line that starts with a backslash has its name escaped (listing_line).
    const bool escaped = line.starts_with('\\');
    if (escaped)
      line.erase(0, 1);
    // "<64 hex digits> <' ' or '*'><name>", the GNU coreutils format.
    const bool hex = line.size() > 66 && line.find_first_not_of("0123456789abcdefABCDEF") == 64 &&
                     line[64] == ' ' && (line[65] == ' ' || line[65] == '*');
    if (!hex) {
      problem("not a checksum line of the sha256sum format ('<sha256>  <file>')");
      continue;
    }
    std::string digest = line.substr(0, 64);
    std::transform(digest.begin(), digest.end(), digest.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    std::optional<std::string> unescaped =
        escaped ? listing_name_unescape(std::string_view(line).substr(66)) : line.substr(66);
    if (!unescaped) {
      problem("an escape other than \\\\, \\n or \\r in the file name");
      continue;
    }
    ++checked;
    const std::string& name = *unescaped;
    const fs::path rel = fs::path(name).lexically_normal();
    if (rel.is_absolute() || rel.empty() || *rel.begin() == "..") {
      problem("'" + printable(name) + "' is not a file of OUT");
      continue;
    }
    std::string actual;
    if (auto k = known.find(rel.generic_string()); k != known.end()) {
      actual = k->second;
    } else {
      auto hashed = hash_file(out / rel);
      if (!hashed) {
        problem(printable(name) + ": FAILED open or read");
        continue;
      }
      actual = *hashed;
    }
    if (actual == digest)
      ++summary->checksums_ok;
    else
      problem(printable(name) + ": FAILED (its SHA-256 is " + actual + ")");
  }
  if (in.bad())
    return read_error(path, errno);
  if (checked == 0) // as sha256sum -c, which fails such a file
    summary->differences.push_back(
        difference(Kind::checksum, CHECKSUMS_FILE_NAME, "no checksum lines ('<sha256>  <file>')"));
  return {};
}

Status check_output_dir(const fs::path& output) {
  if (output == "-")
    return Status(Errc::invalid_argument,
                  "verify reads OUT as a directory; a stream ('-') cannot be verified");
  std::error_code ec;
  const fs::file_status st = fs::status(output, ec);
  if (!fs::exists(st))
    return Status(Errc::io, output.string() + ": cannot open: " +
                                (ec ? ec.message() : std::string("No such file or directory")));
  if (!fs::is_directory(st))
    return Status(Errc::io, output.string() + ": is not a directory; verify checks the "
                                              "directory a conversion wrote");
  return {};
}

} // namespace

Result<VerifySummary> verify(const VerifyOptions& options, const VerifyCallbacks& callbacks,
                             Profiler* external_profiler) {
  Profiler local_profiler(false);
  Profiler& profiler = external_profiler ? *external_profiler : local_profiler;

  // Check OUT and the options, open and plan IN as convert() does. Nothing is compared yet.
  if (Status s = check_output_dir(options.output); !s.ok())
    return s;
  if (auto device = parse_device(options.device); !device)
    return device.status();
  auto opened =
      open_and_plan(options.input, options.plan, options.max_memory, callbacks.warnings, profiler);
  if (!opened)
    return opened.status();
  const Checkpoint& input = opened->input;
  const Plan& plan = opened->plan;
  std::string index_text;
  if (plan.write_index) {
    auto text = index_json(plan.total_tensor_bytes, plan.weight_map);
    if (!text)
      return text.status();
    index_text = std::move(*text);
  }
  auto expected = expected_files(input, plan, index_text);
  if (!expected)
    return expected.status();

  VerifySummary summary;
  summary.adapter = plan.adapter;
  summary.direction = plan.direction;
  summary.quick = options.quick;
  for (const Expected& e : *expected) {
    ++summary.files;
    summary.bytes += e.size;
  }
  std::error_code ec;
  const fs::file_status sums = fs::status(options.output / CHECKSUMS_FILE_NAME, ec);
  summary.checksum_file = fs::is_regular_file(sums);

  // 1. The files: list, sizes, headers and the index.
  if (Status s =
          check_files(options.output, *expected, &summary.differences, &summary.compared_bytes);
      !s.ok())
    return s;

  if (!options.quick) {
    // 2. The data, recomputed as a stream and compared as it is produced.
    KnownDigests digests;
    // As for convert, the parsed headers and the plan come out of the budget.
    if (Status s = compare_data(options, input, plan, *expected, summary.checksum_file, callbacks,
                                opened->held, &summary, &digests, profiler);
        !s.ok())
      return s;
    // 3. SHA256SUMS, like sha256sum -c.
    if (summary.checksum_file) {
      if (plan.write_index)
        if (auto it = std::find_if(expected->begin(), expected->end(),
                                   [](const Expected& e) { return e.name == INDEX_FILE_NAME; });
            it != expected->end() && it->present && it->same_start)
          digests[INDEX_FILE_NAME] = sha256_hex(std::as_bytes(std::span(index_text)));
      if (Status s = check_checksum_file(options.output, digests, &summary); !s.ok())
        return s;
    } else if (fs::exists(sums)) { // a directory, a FIFO: nothing could check it
      summary.differences.push_back(
          difference(Kind::checksum, CHECKSUMS_FILE_NAME, "is not a regular file"));
    }
  }
  summary.seconds = static_cast<double>(profiler.now()) / 1e9;
  summary.peak_rss = peak_rss_bytes();
  return summary;
}

} // namespace shardshift
