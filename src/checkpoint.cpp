// checkpoint.cpp: opening a checkpoint (one file, an indexed directory, or a directory of shards).
//
// Every shard is mapped and its header validated, and for an indexed directory the index is
// cross-checked against the headers (docs/format.md, "The index"). All problems of all files are
// collected before failing, so one run shows everything that is wrong with a download.
#include "shardshift/checkpoint.h"

#include "json_reader.h"

#include <algorithm>
#include <set>

#include <simdjson.h>
#include <tbb/parallel_for.h>

namespace shardshift {

namespace fs = std::filesystem;

namespace {

// Problems collected across files; the Status takes the code of the first one.
struct Problems {
  Errc code = Errc::ok;
  std::vector<std::string> lines;

  void add(Errc c, const std::string& message) {
    if (code == Errc::ok)
      code = c;
    // Multi-line messages (a header with several problems) stay one problem per line.
    size_t start = 0;
    while (start <= message.size()) {
      size_t nl = message.find('\n', start);
      if (nl == std::string::npos)
        nl = message.size();
      if (nl > start)
        lines.push_back(message.substr(start, nl - start));
      start = nl + 1;
    }
  }
  void add(const Status& s) { add(s.code(), s.message()); }
  bool empty() const { return lines.empty(); }
  Status status() const {
    std::string message;
    for (const auto& l : lines)
      message += (message.empty() ? "" : "\n") + l;
    return error(code, message);
  }
};

struct Index {
  std::vector<std::pair<std::string, std::string>> weight_map; // tensor -> shard file, file order
  Metadata metadata;
};

// Parses model.safetensors.index.json with the same care as a safetensors header: one object,
// duplicate keys refused at any level, every value visited. Returns false when the index cannot
// be used at all (the problems say why).
bool parse_index(const std::string& path, Index& index, Problems& problems) {
  auto loaded = simdjson::padded_string::load(path);
  if (loaded.error()) {
    problems.add(Errc::io,
                 path + ": cannot read the index: " + simdjson::error_message(loaded.error()));
    return false;
  }
  simdjson::padded_string json = std::move(loaded).value_unsafe();
  std::string_view text(json.data(), json.size());
  auto fail = [&](const std::string& what) {
    problems.add(Errc::format, path + ": " + what);
    return false;
  };
  auto json_error = [&](simdjson::error_code ec) {
    return fail(std::string("index is not valid JSON: ") + simdjson::error_message(ec));
  };
  if (!text.empty() && text[0] == '\0')
    return fail("index starts with a NUL byte");
  if (text.size() >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0)
    return fail("index starts with a UTF-8 byte-order mark");
  if (!simdjson::validate_utf8(text))
    return fail("index is not valid UTF-8");

  using simdjson::ondemand::json_type;
  simdjson::ondemand::parser parser;
  simdjson::ondemand::document doc;
  if (auto ec = parser.iterate(json).get(doc))
    return json_error(ec);
  json_type type;
  if (auto ec = doc.type().get(type))
    return json_error(ec);
  if (type != json_type::object)
    return fail("index must be one JSON object, found " + std::string(json::type_name(type)));
  simdjson::ondemand::object root;
  if (auto ec = doc.get_object().get(root))
    return json_error(ec);

  bool have_weight_map = false, usable = true;
  std::set<std::string, std::less<>> seen;
  for (auto field_result : root) {
    std::string key;
    simdjson::ondemand::value value;
    bool duplicate;
    if (auto ec = json::read_field(std::move(field_result), seen, key, value, duplicate))
      return json_error(ec);
    if (duplicate) {
      fail("duplicate key '" + json::printable(key) + "'");
      usable = false;
      continue;
    }
    json_type vtype;
    if (auto ec = value.type().get(vtype))
      return json_error(ec);

    if (key == "weight_map" || key == "metadata") {
      if (vtype != json_type::object) {
        fail("'" + key + "' must be an object, found " + std::string(json::type_name(vtype)));
        usable = false;
        continue;
      }
      simdjson::ondemand::object object;
      if (auto ec = value.get_object().get(object))
        return json_error(ec);
      std::set<std::string, std::less<>> names;
      for (auto entry_result : object) {
        std::string name;
        simdjson::ondemand::value v;
        bool duplicate;
        if (auto ec = json::read_field(std::move(entry_result), names, name, v, duplicate))
          return json_error(ec);
        if (duplicate) {
          fail(key + ": duplicate key '" + json::printable(name) + "'");
          usable = false;
          continue;
        }
        json_type etype;
        if (auto ec = v.type().get(etype))
          return json_error(ec);
        std::string stored;
        if (etype == json_type::string) {
          std::string_view s;
          if (auto ec = v.get_string().get(s))
            return json_error(ec);
          stored = std::string(s);
        } else if (key == "weight_map") {
          fail("weight_map: tensor '" + json::printable(name) +
               "': the shard file name must be a string, found " +
               std::string(json::type_name(etype)));
          usable = false;
          continue;
        } else {
          // Metadata values other than strings (total_size is a number) are kept as JSON text.
          std::vector<std::string> nested;
          if (auto ec = json::visit_compact(v, stored, nested))
            return json_error(ec);
          for (const auto& n : nested)
            fail("metadata: '" + json::printable(name) + "': " + n);
          if (!nested.empty())
            usable = false;
        }
        if (key == "weight_map")
          index.weight_map.emplace_back(std::move(name), std::move(stored));
        else
          index.metadata.emplace_back(std::move(name), std::move(stored));
      }
      if (key == "weight_map")
        have_weight_map = true;
    } else {
      // Other top-level keys are not ours to interpret, but they must still be valid JSON.
      std::string ignored;
      std::vector<std::string> nested;
      if (auto ec = json::visit_compact(value, ignored, nested))
        return json_error(ec);
      for (const auto& n : nested)
        fail("'" + json::printable(key) + "': " + n);
      if (!nested.empty())
        usable = false;
    }
  }
  // simdjson 3.0.1 has no document::at_end(); current_location() is OUT_OF_BOUNDS exactly when
  // every token was consumed, so anything else means text after the object.
  if (doc.current_location().error() != simdjson::OUT_OF_BOUNDS)
    return fail("index has content after its JSON object (exactly one object is allowed)");
  if (!have_weight_map)
    return fail("index has no 'weight_map' object");
  std::sort(index.metadata.begin(), index.metadata.end());
  return usable;
}

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

} // namespace

Result<Checkpoint> Checkpoint::open(const fs::path& path) {
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (ec || !fs::exists(status))
    return error(Errc::io, path.string() + ": no such file or directory");

  Checkpoint ckpt;
  Problems problems;
  std::vector<std::string> shard_names;
  Index index;

  if (fs::is_regular_file(status)) {
    ckpt.single_file = true;
    ckpt.root = path.has_parent_path() ? path.parent_path() : fs::path(".");
    shard_names.push_back(path.filename().string());
  } else if (fs::is_directory(status)) {
    ckpt.root = path;
    std::vector<std::string> regular_files;
    for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec))
      if (is_regular(*it))
        regular_files.push_back(it->path().filename().string());
    if (ec)
      return error(Errc::io, path.string() + ": cannot list the directory: " + ec.message());
    std::sort(regular_files.begin(), regular_files.end());

    std::string index_path = (path / INDEX_FILE_NAME).string();
    if (std::binary_search(regular_files.begin(), regular_files.end(), INDEX_FILE_NAME)) {
      ckpt.has_index = true;
      if (!parse_index(index_path, index, problems))
        return problems.status();
      ckpt.index_metadata = index.metadata;
      std::set<std::string> listed, reported;
      for (const auto& [name, file] : index.weight_map) {
        if (!safe_relative_path(file)) {
          if (reported.insert(file).second)
            problems.add(Errc::format,
                         index_path + ": tensor '" + json::printable(name) + "': shard path '" +
                             json::printable(file) +
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
          problems.add(Errc::format, index_path + ": shard '" + json::printable(file) +
                                         "' is listed for " + std::to_string(count) +
                                         " tensor(s) but is missing");
          continue;
        }
        shard_names.push_back(file);
      }
    } else {
      for (const auto& f : regular_files)
        if (f.size() > 12 && f.ends_with(".safetensors"))
          shard_names.push_back(f);
      if (shard_names.empty())
        return error(Errc::format, path.string() + ": no *.safetensors files and no " +
                                       INDEX_FILE_NAME + " in this directory");
    }
    std::set<std::string> shard_set(shard_names.begin(), shard_names.end());
    for (const auto& f : regular_files)
      if (f != INDEX_FILE_NAME && !shard_set.count(f))
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
        problems.add(Errc::format, ckpt.shards[i].file->path() + ": tensor '" +
                                       json::printable(tensors[j].name) + "': also in shard '" +
                                       ckpt.shards[it->second.shard].file_name +
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
      std::string where =
          elsewhere == ckpt.tensors.end()
              ? "no shard has it"
              : "it is in shard '" + ckpt.shards[elsewhere->second.shard].file_name + "'";
      problems.add(Errc::format, index_path + ": tensor '" + json::printable(name) +
                                     "': listed in shard '" + json::printable(file) +
                                     "', which lacks it (" + where + ")");
    }
    for (const auto& s : ckpt.shards) {
      for (const auto& t : s.header.tensors) {
        if (listed.count(t.name) || duplicated.count(t.name))
          continue;
        problems.add(Errc::format, s.file->path() + ": tensor '" + json::printable(t.name) +
                                       "': not listed in " + INDEX_FILE_NAME);
      }
    }
  }

  if (!problems.empty())
    return problems.status();
  return ckpt;
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
