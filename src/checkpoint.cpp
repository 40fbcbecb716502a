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

// A shard path from the index must stay inside the checkpoint directory.
bool safe_relative_path(const std::string& file) {
  if (file.empty())
    return false;
  fs::path p(file);
  if (p.is_absolute() || p.has_root_name() || p.has_root_directory())
    return false;
  for (const auto& part : p)
    if (part == "..")
      return false;
  return true;
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

} // namespace

Result<Checkpoint> Checkpoint::open(const fs::path& path) {
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (ec || !fs::exists(status))
    return error(Errc::io, path.string() + ": no such file or directory");

  Checkpoint ckpt;
  ProblemList problems;
  std::vector<std::string> shard_names;
  Index index;

  if (fs::is_regular_file(status)) {
    ckpt.single_file = true;
    ckpt.root = path.has_parent_path() ? path.parent_path() : fs::path(".");
    shard_names.push_back(path.filename().string());
  } else if (fs::is_directory(status)) {
    ckpt.root = path;
    auto listing = regular_files_of(path);
    if (!listing)
      return listing.status();
    const std::vector<std::string>& regular_files = *listing;
    std::vector<std::string> stray;

    std::string index_path = (path / INDEX_FILE_NAME).string();
    if (std::binary_search(regular_files.begin(), regular_files.end(), INDEX_FILE_NAME)) {
      ckpt.has_index = true;
      auto loaded = simdjson::padded_string::load(index_path);
      if (loaded.error())
        return error(Errc::io, index_path + ": cannot read the index: " +
                                   simdjson::error_message(loaded.error()));
      auto parsed = parse_index(index_path, std::string_view(loaded.value_unsafe()));
      if (!parsed)
        return parsed.status();
      index = std::move(parsed).value();
      ckpt.index_metadata = index.metadata;
      std::set<std::string> listed, reported;
      for (const auto& [name, file] : index.weight_map) {
        if (!safe_relative_path(file)) {
          if (reported.insert(file).second)
            problems.tensor(Errc::format, index_path, name,
                            "shard path '" + printable(file) +
                                "' must be relative to the checkpoint directory, without '..'");
          continue;
        }
        listed.insert(file);
      }
      for (const auto& file : listed) {
        auto st = fs::status(path / file, ec);
        if (ec || !fs::is_regular_file(st)) {
          size_t count = 0;
          for (const auto& [name, f] : index.weight_map)
            count += f == file;
          problems.add(Errc::format, index_path, {},
                       "shard '" + printable(file) + "' is listed for " + std::to_string(count) +
                           " tensor(s) but is missing");
          continue;
        }
        shard_names.push_back(file);
      }
      stray = stray_shards(regular_files, listed);
      for (const auto& f : stray)
        ckpt.warnings.push_back(stray_warning(path, f));
    } else {
      for (const auto& f : regular_files)
        if (is_shard_name(f))
          shard_names.push_back(f);
      if (shard_names.empty())
        return error(Errc::format, path.string() + ": no *.safetensors files and no " +
                                       INDEX_FILE_NAME + " in this directory");
    }
    std::set<std::string> not_side(shard_names.begin(), shard_names.end());
    not_side.insert(stray.begin(), stray.end());
    not_side.insert(INDEX_FILE_NAME);
    not_side.insert(OUTPUT_MARKER_NAME); // a previous output's marker is not part of the model
    for (const auto& f : regular_files)
      if (!not_side.count(f))
        ckpt.other_files.push_back(f);
  } else {
    return error(Errc::io, path.string() + ": not a file or directory");
  }
  std::sort(shard_names.begin(), shard_names.end());

  // Map and validate every shard. Headers are independent, so they are read in parallel; each
  // slot's Status is merged in shard order afterwards so messages come out deterministically.
  ckpt.shards.resize(shard_names.size());
  std::vector<Status> shard_status(shard_names.size());
  tbb::parallel_for(size_t{0}, shard_names.size(), [&](size_t i) {
    Shard& shard = ckpt.shards[i];
    shard.file_name = shard_names[i];
    auto mapped = MappedFile::open(ckpt.root / shard.file_name);
    if (!mapped) {
      shard_status[i] = mapped.status();
      return;
    }
    shard.file = std::move(mapped).value();
    Result<Header> header = error(Errc::format, "unreachable");
    // A SIGBUS during the parse skips destructors of the parser's locals (a bounded leak on a
    // path that ends the run); the objects that outlive the guard are declared outside it.
    Status guarded = guard_mapped_access(
        *shard.file, [&] { header = parse_header(shard.file->path(), shard.file->bytes()); });
    if (!guarded.ok())
      shard_status[i] = guarded;
    else if (!header.ok())
      shard_status[i] = header.status();
    else
      shard.header = std::move(header).value();
  });
  for (const auto& s : shard_status)
    if (!s.ok())
      problems.add(s);

  // Every tensor, by name; a name in two shards is ambiguous whatever the index says.
  std::set<std::string, std::less<>> duplicated;
  for (uint32_t i = 0; i < ckpt.shards.size(); ++i) {
    const auto& tensors = ckpt.shards[i].header.tensors;
    for (uint32_t j = 0; j < tensors.size(); ++j) {
      auto [it, inserted] = ckpt.tensors.emplace(tensors[j].name, TensorRef{i, j});
      if (!inserted) {
        duplicated.insert(tensors[j].name);
        problems.tensor(Errc::format, ckpt.shards[i].file->path(), tensors[j].name,
                        "also in shard '" + printable(ckpt.shards[it->second.shard].file_name) +
                            "' (a tensor may be stored in only one shard)");
      }
    }
  }

  if (ckpt.has_index) {
    std::string index_path = (ckpt.root / INDEX_FILE_NAME).string();
    // Only shards whose header was read: a broken shard's problems are already reported, and
    // listing all its tensors as missing would bury them.
    std::map<std::string, const Shard*, std::less<>> opened;
    for (size_t i = 0; i < ckpt.shards.size(); ++i)
      if (shard_status[i].ok())
        opened.emplace(ckpt.shards[i].file_name, &ckpt.shards[i]);
    std::map<std::string, std::string, std::less<>> listed(index.weight_map.begin(),
                                                           index.weight_map.end());
    for (const auto& [name, file] : index.weight_map) {
      auto shard_it = opened.find(file);
      if (shard_it == opened.end())
        continue; // unusable or missing shard: reported above
      const Shard* shard = shard_it->second;
      if (shard->header.find(name))
        continue;
      auto elsewhere = ckpt.tensors.find(name);
      std::string where = elsewhere == ckpt.tensors.end()
                              ? "no shard has it"
                              : "it is in shard '" +
                                    printable(ckpt.shards[elsewhere->second.shard].file_name) + "'";
      problems.tensor(Errc::format, index_path, name,
                      "listed in shard '" + printable(file) + "', which lacks it (" + where + ")");
    }
    for (const auto& s : ckpt.shards) {
      for (const auto& t : s.header.tensors) {
        if (listed.count(t.name) || duplicated.count(t.name))
          continue;
        problems.tensor(Errc::format, s.file->path(), t.name,
                        std::string("not listed in ") + INDEX_FILE_NAME);
      }
    }
  }

  // config.json names the model; read now so planning does no file I/O.
  if (std::find(ckpt.other_files.begin(), ckpt.other_files.end(), "config.json") !=
      ckpt.other_files.end()) {
    auto model_type = read_config_model_type(ckpt.root / "config.json");
    if (model_type)
      ckpt.config_model_type = std::move(*model_type);
    else
      problems.add(model_type.status());
  }

  if (!problems.empty())
    return problems.status();
  return ckpt;
}

std::vector<std::string> checkpoint_warnings(const fs::path& path) {
  std::error_code ec;
  const fs::path index_path = path / INDEX_FILE_NAME;
  if (!fs::is_directory(path, ec) || !fs::is_regular_file(index_path, ec))
    return {};
  auto listing = regular_files_of(path);
  simdjson::padded_string text;
  if (!listing || simdjson::padded_string::load(index_path.string()).get(text))
    return {};
  auto index = parse_index(index_path.string(), std::string_view(text));
  if (!index)
    return {};
  std::set<std::string> listed;
  for (const auto& [name, file] : index->weight_map)
    listed.insert(file);
  std::vector<std::string> warnings;
  for (const auto& f : stray_shards(*listing, listed))
    warnings.push_back(stray_warning(path, f));
  return warnings;
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

uint64_t Checkpoint::total_tensor_bytes() const {
  uint64_t total = 0;
  for (const auto& s : shards)
    total += s.header.data_size();
  return total;
}

} // namespace shardshift
