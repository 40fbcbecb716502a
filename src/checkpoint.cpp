// checkpoint.cpp: opening a checkpoint (one file, an indexed directory, or a directory of shards).
//
// Every shard is mapped and its header validated, and for an indexed directory the index is
// cross-checked against the headers (docs/format.md, "The index"). All problems of all files are
// collected before failing, so one run shows everything that is wrong with a download.
#include "shardshift/checkpoint.h"

#include "shardshift/problems.h"

#include "checkpoint_config.h"

#include <algorithm>
#include <set>

#include <simdjson.h>
#include <tbb/parallel_for.h>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

// What is wrong with a shard path from the index, or "" when it names a file inside the
// checkpoint directory. A NUL byte would end the name the system sees early: another file.
std::string shard_path_problem(const std::string& file) {
  if (file.empty())
    return "is empty";
  if (file.find('\0') != std::string::npos)
    return "holds a NUL byte, which no file name can";
  fs::path p(file);
  if (p.is_absolute() || p.has_root_name() || p.has_root_directory())
    return "must be relative to the checkpoint directory, without '..'";
  for (const auto& part : p)
    if (part == "..")
      return "must be relative to the checkpoint directory, without '..'";
  return "";
}

bool is_regular(const fs::directory_entry& entry) {
  std::error_code ec;
  return entry.is_regular_file(ec); // follows symlinks: hub caches link shards into blobs/
}

bool is_shard_name(const std::string& f) {
  return f.size() > 12 && f.ends_with(".safetensors");
}

// The regular files of a directory, sorted by name.
Result<std::vector<std::string>> regular_files_of(const fs::path& dir) {
  std::error_code ec;
  std::vector<std::string> files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (is_regular(*it))
      files.push_back(it->path().filename().string());
  if (ec)
    return error(Errc::io, dir.string() + ": cannot list the directory: " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

// The files in the subdirectories of `root` (tokenizer assets, Meta's original/), as relative paths
// ("original/params.json"), appended to `files`. They are side files: copied verbatim to the same
// place, streamed under that name; a *.safetensors among them is one too (the model's shards are
// those at the top, or the index's). Regular files and links to regular files are taken, a link
// wherever it points, as at the top (a hub cache links each file into its blobs/ directory).
// A link that points nowhere, here or at the top, is a problem. Not taken: hidden subdirectories
// (.git, the .cache/ of `huggingface-cli download --local-dir`), which hold a tool's state and
// would copy a git clone's LFS objects a second time; and links to directories, which are reported
// as problems rather than followed, since one can lead out of the input (and upload what is there)
// or back into it (a loop).
void list_subdirectories(const fs::path& root, const fs::path& rel, std::vector<std::string>* files,
                         ProblemList& problems) {
  std::error_code ec;
  const fs::path dir = root / rel;
  std::vector<fs::path> subdirectories;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code entry_ec;
    const fs::file_status link = it->symlink_status(entry_ec);
    const fs::file_status target = it->status(entry_ec);
    if (fs::is_directory(target)) {
      if (fs::is_symlink(link)) {
        std::error_code read_ec;
        problems.add(Errc::format, it->path().string(), {},
                     "a link to the directory '" + fs::read_symlink(it->path(), read_ec).string() +
                         "'; side files are copied from real subdirectories only, and a "
                         "link may lead out of the input: replace it by a copy (cp -rL) or "
                         "remove it");
      } else if (!name.starts_with(".")) {
        subdirectories.push_back(rel / name);
      }
    } else if (!rel.empty() && fs::is_regular_file(target)) {
      files->push_back((rel / name).generic_string());
    } else if (fs::is_symlink(link) && !fs::exists(target)) {
      // Left out silently, the output would lack a file the model needs (a tokenizer whose
      // blob an interrupted hub download never fetched).
      std::error_code read_ec;
      problems.add(Errc::format, it->path().string(), {},
                   "a link to '" + fs::read_symlink(it->path(), read_ec).string() +
                       "', which does not exist (an unfinished download?); fetch the file it "
                       "points to, or remove the link");
    } else if (!fs::is_regular_file(target) && fs::exists(target) && !name.starts_with(".")) {
      // A FIFO, a socket or a device (a link to /dev/null too): not a file to copy, and left out
      // silently the output would lack a name the input has.
      const char* what = fs::is_fifo(target)             ? "a FIFO"
                         : fs::is_socket(target)         ? "a socket"
                         : fs::is_character_file(target) ? "a character device"
                         : fs::is_block_file(target)     ? "a block device"
                                                         : "not a regular file";
      problems.add(Errc::format, it->path().string(), {},
                   std::string(fs::is_symlink(link) ? "a link to " : "") + what +
                       ", not a file: side files are copied as regular files only; move it out "
                       "of the input");
    }
  }
  if (ec)
    problems.add(Errc::io, dir.string(), {}, "cannot list the directory: " + ec.message());
  for (const fs::path& sub : subdirectories)
    list_subdirectories(root, sub, files, problems);
}

// A *.safetensors file of an indexed directory that the index does not list is a leftover of
// another download or run: it is neither read nor copied (it is not a side file), and the user
// hears about it, since a wrong index is as likely as a stray file.
std::vector<std::string> stray_shards(const std::vector<std::string>& regular_files,
                                      const std::set<std::string>& listed) {
  std::vector<std::string> stray;
  for (const auto& f : regular_files)
    if (is_shard_name(f) && !listed.count(f))
      stray.push_back(f);
  return stray;
}

std::string stray_warning(const fs::path& root, const std::string& file) {
  return (root / file).string() + ": not listed in " + INDEX_FILE_NAME +
         "; ignored (not converted, not copied into the output)";
}

// What opening a checkpoint collects on its way; the steps below fill it in order.
struct Opening {
  Checkpoint ckpt;
  ProblemList problems;
  std::vector<std::string> shard_names;          ///< the shards to read, sorted
  Index index;                                   ///< when ckpt.has_index
  std::vector<Status> shard_status;              ///< per shard: mapped and parsed, or why not
  std::set<std::string, std::less<>> duplicated; ///< tensor names found in two shards
  uint64_t header_bytes = 0;                     ///< the shards' header lengths, summed
};

// The index's shards: each listed path must stay inside the directory and exist. Fails only when
// the index itself cannot be read or parsed; other problems are collected.
Status use_index(Opening& o, const fs::path& dir, const std::vector<std::string>& regular_files,
                 std::vector<std::string>* stray) {
  const std::string index_path = (dir / INDEX_FILE_NAME).string();
  o.ckpt.has_index = true;
  errno = 0;
  auto loaded = simdjson::padded_string::load(index_path);
  if (loaded.error()) {
    // simdjson says only "Error reading the file"; errno says why (as config.json's reader does).
    const int err = errno;
    return error(Errc::io, index_path + ": cannot read the index: " +
                               (err ? errno_text(err) : simdjson::error_message(loaded.error())));
  }
  auto parsed = parse_index(index_path, std::string_view(loaded.value_unsafe()));
  if (!parsed)
    return parsed.status();
  o.index = std::move(parsed).value();
  o.ckpt.index_metadata = o.index.metadata;
  std::set<std::string> listed, reported;
  // "./model-00001-of-00002.safetensors" is that shard, as Hugging Face's loader reads it, not
  // a second one under another spelling.
  for (auto& [name, file] : o.index.weight_map)
    if (shard_path_problem(file).empty())
      file = fs::path(file).lexically_normal().generic_string();
  for (const auto& [name, file] : o.index.weight_map) {
    if (const std::string problem = shard_path_problem(file); !problem.empty()) {
      if (reported.insert(file).second)
        o.problems.tensor(Errc::format, index_path, name,
                          "shard path '" + printable(file) + "' " + problem);
      continue;
    }
    listed.insert(file);
  }
  for (const auto& file : listed) {
    std::error_code ec;
    auto st = fs::status(dir / file, ec);
    if (ec || !fs::is_regular_file(st)) {
      size_t count = 0;
      for (const auto& [name, f] : o.index.weight_map)
        count += f == file;
      o.problems.add(Errc::format, index_path, {},
                     "shard '" + printable(file) + "' is listed for " + std::to_string(count) +
                         " tensor(s) but is missing");
      continue;
    }
    o.shard_names.push_back(file);
  }
  *stray = stray_shards(regular_files, listed);
  for (const auto& f : *stray)
    o.ckpt.warnings.push_back(stray_warning(dir, f));
  return {};
}

// Which files are shards (one file; the index's; or every *.safetensors) and which are side
// files to copy.
Status find_files(Opening& o, const fs::path& path) {
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (ec || !fs::exists(status))
    return error(Errc::io, path.string() + ": no such file or directory");
  if (fs::is_regular_file(status)) {
    o.ckpt.single_file = true;
    o.ckpt.root = path.has_parent_path() ? path.parent_path() : fs::path(".");
    o.ckpt.config_beside = fs::exists(o.ckpt.root / "config.json", ec);
    o.shard_names.push_back(path.filename().string());
    return {};
  }
  if (!fs::is_directory(status))
    return error(Errc::io, path.string() + ": not a file or directory");
  o.ckpt.root = path;
  auto listing = regular_files_of(path);
  if (!listing)
    return listing.status();
  const std::vector<std::string>& regular_files = *listing;
  std::vector<std::string> stray;
  if (std::binary_search(regular_files.begin(), regular_files.end(), INDEX_FILE_NAME)) {
    if (Status s = use_index(o, path, regular_files, &stray); !s.ok())
      return s;
  } else {
    for (const auto& f : regular_files)
      if (is_shard_name(f))
        o.shard_names.push_back(f);
    if (o.shard_names.empty())
      return error(Errc::format, path.string() + ": no *.safetensors files and no " +
                                     INDEX_FILE_NAME + " in this directory");
  }
  std::set<std::string> not_side(o.shard_names.begin(), o.shard_names.end());
  not_side.insert(stray.begin(), stray.end());
  not_side.insert(INDEX_FILE_NAME);
  not_side.insert(OUTPUT_MARKER_NAME); // a previous output's marker is not part of the model
  // Nor is a previous output's SHA256SUMS (--checksums): it holds the digests of the input's
  // shards, which the conversion rewrites, so a copy would be wrong in OUT (and --checksums
  // writes OUT's own under that name).
  not_side.insert(CHECKSUMS_FILE_NAME);
  for (const auto& f : regular_files)
    if (!not_side.count(f))
      o.ckpt.other_files.push_back(f);
  // Below the top level only the index can name a shard ("sub/model.safetensors"); every other
  // file there is a side file.
  std::vector<std::string> below;
  list_subdirectories(path, {}, &below, o.problems);
  for (auto& f : below)
    if (!not_side.count(f))
      o.ckpt.other_files.push_back(std::move(f));
  std::sort(o.ckpt.other_files.begin(), o.ckpt.other_files.end());
  std::sort(o.shard_names.begin(), o.shard_names.end());
  return {};
}

// Map every shard and read its header's length, so that their total can be checked before any
// is parsed.
void map_shards(Opening& o) {
  Checkpoint& ckpt = o.ckpt;
  ckpt.shards.resize(o.shard_names.size());
  o.shard_status.assign(o.shard_names.size(), Status());
  o.header_bytes = 0;
  for (size_t i = 0; i < o.shard_names.size(); ++i) {
    Shard& shard = ckpt.shards[i];
    shard.file_name = o.shard_names[i];
    auto mapped = MappedFile::open(ckpt.root / shard.file_name);
    if (!mapped) {
      o.shard_status[i] = mapped.status();
      continue;
    }
    shard.file = std::move(mapped).value();
    uint64_t length = 0;
    if (Status s = guard_mapped_access(*shard.file,
                                       [&] {
                                         const auto bytes = shard.file->bytes();
                                         for (size_t b = 0; b < 8 && b < bytes.size(); ++b)
                                           length |= uint64_t(std::to_integer<uint8_t>(bytes[b]))
                                                     << (8 * b);
                                       });
        !s.ok())
      o.shard_status[i] = s;
    // A length past the file's end is the parser's to report; only what is there gets parsed.
    o.header_bytes += std::min(length, shard.file->size());
  }
}

// The headers' parsed form must fit the memory limit (Checkpoint::open), with at least half of it
// left for the data in flight, as the engine requires once it knows the exact figure.
//
// The advice is the smallest budget in whole MiB that passes this check: the check allows
// header_bytes <= limit / (2 * HEADER_MEMORY_FACTOR), a division a MiB makes exactly, so the
// figure is 2 * HEADER_MEMORY_FACTOR * header_bytes rounded up to a MiB. Nothing more is needed
// for the data in flight: that is the half the check already keeps back, and the pipeline sizes
// its chunks to whatever it gets (size_pipeline). (The advice once added 64 MiB, so that a
// 6 MiB need was told as 69 MiB.) The engine weighs the exact figure once the input is parsed
// and planned, and may still ask for more, with advice of its own: a to_hf of stacked experts
// plans three tensors per expert from each input tensor, more than the factor allows for.
Status check_header_memory(const Opening& o, uint64_t memory_limit) {
  constexpr uint64_t MIB = uint64_t{1} << 20;
  static_assert(MIB % (2 * HEADER_MEMORY_FACTOR) == 0, "the advice relies on an exact division");
  if (memory_limit == 0 || o.header_bytes <= memory_limit / (2 * HEADER_MEMORY_FACTOR))
    return {};
  const uint64_t need_mib = (2 * HEADER_MEMORY_FACTOR * o.header_bytes + MIB - 1) / MIB;
  return Status(Errc::unsupported,
                o.ckpt.root.string() + ": the headers of the " +
                    std::to_string(o.shard_names.size()) + " shard(s) hold " +
                    std::to_string(o.header_bytes) + " bytes of JSON, which take up to " +
                    std::to_string(HEADER_MEMORY_FACTOR) +
                    " times as much memory once parsed and planned: more than half of the "
                    "memory budget of " +
                    std::to_string(memory_limit) + " bytes; raise it (--max-memory " +
                    std::to_string(need_mib) + "MiB)");
}

// Validate every header. Headers are independent, so they are parsed in parallel; each slot's
// Status is merged in shard order afterwards so messages come out deterministically. The header's
// pages are released once parsed: the parsed form is what the conversion keeps.
void parse_headers(Opening& o) {
  Checkpoint& ckpt = o.ckpt;
  tbb::parallel_for(size_t{0}, o.shard_names.size(), [&](size_t i) {
    Shard& shard = ckpt.shards[i];
    if (!shard.file || !o.shard_status[i].ok())
      return;
    Result<Header> header = error(Errc::format, "unreachable");
    // A SIGBUS during the parse skips destructors of the parser's locals (a bounded leak on a
    // path that ends the run); the objects that outlive the guard are declared outside it.
    Status guarded = guard_mapped_access(
        *shard.file, [&] { header = parse_header(shard.file->path(), shard.file->bytes()); });
    if (!guarded.ok())
      o.shard_status[i] = guarded;
    else if (!header.ok())
      o.shard_status[i] = header.status();
    else
      shard.header = std::move(header).value();
    if (shard.header.data_start > 0)
      shard.file->release(0, shard.header.data_start);
  });
  for (const auto& s : o.shard_status)
    if (!s.ok())
      o.problems.add(s);
}

// Every tensor, by name; a name in two shards is ambiguous whatever the index says.
void index_tensors(Opening& o) {
  Checkpoint& ckpt = o.ckpt;
  for (uint32_t i = 0; i < ckpt.shards.size(); ++i) {
    const auto& tensors = ckpt.shards[i].header.tensors;
    for (uint32_t j = 0; j < tensors.size(); ++j) {
      auto [it, inserted] = ckpt.tensors.emplace(tensors[j].name, TensorRef{i, j});
      if (!inserted) {
        o.duplicated.insert(tensors[j].name);
        o.problems.tensor(Errc::format, ckpt.shards[i].file->path(), tensors[j].name,
                          "also in shard '" + printable(ckpt.shards[it->second.shard].file_name) +
                              "' (a tensor may be stored in only one shard)");
      }
    }
  }
}

// The index and the headers must agree: every listed tensor in its shard, every tensor listed.
void check_index(Opening& o) {
  const Checkpoint& ckpt = o.ckpt;
  const std::string index_path = (ckpt.root / INDEX_FILE_NAME).string();
  // Only shards whose header was read: a broken shard's problems are already reported, and
  // listing all its tensors as missing would bury them.
  std::map<std::string, const Shard*, std::less<>> opened;
  for (size_t i = 0; i < ckpt.shards.size(); ++i)
    if (o.shard_status[i].ok())
      opened.emplace(ckpt.shards[i].file_name, &ckpt.shards[i]);
  std::map<std::string, std::string, std::less<>> listed(o.index.weight_map.begin(),
                                                         o.index.weight_map.end());
  for (const auto& [name, file] : o.index.weight_map) {
    auto shard_it = opened.find(file);
    if (shard_it == opened.end() || shard_it->second->header.find(name))
      continue; // present, or an unusable or missing shard: reported above
    auto elsewhere = ckpt.tensors.find(name);
    std::string where =
        elsewhere == ckpt.tensors.end()
            ? "no shard has it"
            : "it is in shard '" + printable(ckpt.shards[elsewhere->second.shard].file_name) + "'";
    o.problems.tensor(Errc::format, index_path, name,
                      "listed in shard '" + printable(file) + "', which lacks it (" + where + ")");
  }
  for (const auto& s : ckpt.shards)
    for (const auto& t : s.header.tensors)
      if (!listed.count(t.name) && !o.duplicated.count(t.name))
        o.problems.tensor(Errc::format, s.file->path(), t.name,
                          std::string("not listed in ") + INDEX_FILE_NAME);
}

// config.json names the model; read now so planning does no file I/O.
void read_config(Opening& o) {
  const auto& side = o.ckpt.other_files;
  if (std::find(side.begin(), side.end(), "config.json") == side.end())
    return;
  auto config = shardshift::read_config(o.ckpt.root / "config.json");
  if (config) {
    o.ckpt.config_model_type = std::move(config->model_type);
    o.ckpt.config_counts = std::move(config->counts);
    o.ckpt.config_not_counts = std::move(config->not_counts);
    o.ckpt.config_dtypes = std::move(config->dtypes);
    o.ckpt.config_dtype_not_string = std::move(config->dtype_not_string);
    o.ckpt.config_has_text_config = config->has_text_config;
    o.ckpt.config_not_object = std::move(config->not_object);
    o.ckpt.config_text_config_not_object = std::move(config->text_config_not_object);
    o.ckpt.config_error = std::move(config->error);
  } else {
    o.problems.add(config.status());
  }
}

} // namespace

Result<Checkpoint> Checkpoint::open(const fs::path& path, uint64_t memory_limit) {
  Opening o;
  if (Status s = find_files(o, path); !s.ok())
    return s;
  map_shards(o);
  if (Status s = check_header_memory(o, memory_limit); !s.ok())
    return s;
  parse_headers(o);
  index_tensors(o);
  if (o.ckpt.has_index)
    check_index(o);
  read_config(o);
  if (!o.problems.empty())
    return o.problems.status();
  return std::move(o.ckpt);
}

std::optional<TensorRef> Checkpoint::find(std::string_view name) const {
  auto it = tensors.find(name);
  if (it == tensors.end())
    return std::nullopt;
  return it->second;
}

std::span<const std::byte> Checkpoint::bytes(TensorRef ref) const {
  // The header parser checked every range against the file size, so no further check is needed.
  const Shard& s = shards[ref.shard];
  const TensorInfo& t = s.header.tensors[ref.tensor];
  return s.file->bytes().subspan(s.header.data_start + t.begin, t.size());
}

Status Checkpoint::unchanged() const {
  for (const Shard& shard : shards)
    if (Status s = shard.file->unchanged(); !s.ok())
      return s;
  return {};
}

uint64_t Checkpoint::total_tensor_bytes() const {
  uint64_t total = 0;
  for (const auto& s : shards)
    total += s.header.data_size();
  return total;
}

} // namespace shardshift
