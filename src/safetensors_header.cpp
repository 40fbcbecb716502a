// safetensors_header.cpp: the hardened header parser (docs/format.md lists every rule it enforces).
//
// The parser never trusts a number from the file: lengths are checked before any span is made,
// products are checked for overflow, and the tensors' byte ranges must tile the data section
// exactly. It collects every problem it can find instead of stopping at the first, because a user
// fixing a broken writer wants the whole list at once. Once the JSON itself is malformed nothing
// after that point can be trusted, so a JSON syntax error ends the collection.
#include "shardshift/problems.h"
#include "shardshift/safetensors.h"

#include "json_reader.h"

#include <algorithm>
#include <optional>

#include <simdjson.h>

namespace shardshift {

namespace {

using simdjson::ondemand::json_type;

// What the parser learned about one tensor entry, valid or not.
struct Entry {
  TensorInfo info;
  bool has_dtype = false, has_shape = false, has_offsets = false;
  bool dtype_ok = false, shape_ok = false, offsets_ok = false;
};

class HeaderParser {
public:
  explicit HeaderParser(std::string_view path) : path_(path) {}

  Result<Header> parse(std::span<const std::byte> file);

private:
  void problem(std::string text) { problems_.add(Errc::format, path_, {}, std::move(text)); }
  void tensor_problem(std::string_view name, std::string text) {
    problems_.tensor(Errc::format, path_, std::string(name), std::move(text));
  }
  // Text after a complete object, whether the walk reached it or simdjson refused the text on
  // its account first.
  bool content_after_object() {
    problem("header has content after its JSON object (exactly one object is allowed)");
    return false;
  }
  // A malformed JSON text: report what and, where the parser knows it, where (a byte of the
  // file: the header starts after its 8-byte length), and stop reading it. simdjson refuses a
  // complete object followed by other text with a message about an unfinished object or string,
  // so that case is told apart first.
  bool json_error(simdjson::error_code ec) {
    if (json_ && json::object_then_more(*json_))
      return content_after_object();
    std::string where;
    const char* at = nullptr;
    if (doc_ && !doc_->current_location().get(at) && at >= text_begin_ && at < text_end_)
      where = " (near byte " + std::to_string(8 + (at - text_begin_)) + " of the file)";
    problem(std::string("header is not valid JSON: ") + simdjson::error_message(ec) + where);
    return false;
  }

  bool parse_json(const std::string& text);
  bool parse_metadata(simdjson::ondemand::value value);
  bool parse_entry(std::string_view name, simdjson::ondemand::value value);
  bool parse_dtype(Entry& entry, simdjson::ondemand::value value);
  bool parse_uint_array(Entry& entry, simdjson::ondemand::value value, const char* what,
                        std::vector<uint64_t>& out, bool& ok);
  void check_sizes(const Entry& entry);
  void check_layout(uint64_t data_size);

  std::string path_;
  simdjson::ondemand::document* doc_ = nullptr;   ///< while parse_json reads the text
  const simdjson::padded_string* json_ = nullptr; ///< the text, while parse_json reads it
  const char* text_begin_ = nullptr;
  const char* text_end_ = nullptr;
  ProblemList problems_;
  std::vector<Entry> entries_;
  Metadata metadata_;
  bool duplicate_tensor_ = false;
};

Result<Header> HeaderParser::parse(std::span<const std::byte> file) {
  // Rules 1-3: the length prefix and where the data section starts.
  if (file.size() < 8) {
    problem("file is " + std::to_string(file.size()) +
            " bytes, shorter than the 8-byte header length prefix (not a safetensors file)");
    return problems_.status();
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | std::to_integer<uint64_t>(file[i]);
  if (n > MAX_HEADER_BYTES) {
    problem("header length " + std::to_string(n) + " exceeds the limit of " +
            std::to_string(MAX_HEADER_BYTES) + " bytes (corrupt length prefix?)");
    return problems_.status();
  }
  uint64_t data_start = 0;
  if (__builtin_add_overflow(uint64_t{8}, n, &data_start) || data_start > file.size()) {
    problem("header length " + std::to_string(n) + " runs past the end of the file (size " +
            std::to_string(file.size()) + ")");
    return problems_.status();
  }

  // Rule 4: the header text. Copy it out of the mapping into our own buffer: simdjson reads up to
  // SIMDJSON_PADDING bytes past its input, and the mapping may end right after the header.
  std::string text(reinterpret_cast<const char*>(file.data()) + 8, n);
  if (auto bad = json::precheck(text); bad != json::Precheck::ok) {
    // A NUL or a byte-order mark is where an object should open; say what was expected.
    problem("header " + std::string(json::describe(bad)) +
            (bad == json::Precheck::not_utf8 ? "" : " (expected a JSON object)"));
    return problems_.status();
  }

  // Rules 5-14, entry by entry.
  if (!parse_json(text))
    return problems_.status();
  for (const auto& entry : entries_)
    check_sizes(entry);

  // Rules 15-16: the byte ranges tile the data section exactly.
  check_layout(file.size() - data_start);

  if (!problems_.empty())
    return problems_.status();

  Header header;
  header.header_length = n;
  header.data_start = data_start;
  header.tensors.reserve(entries_.size());
  for (auto& entry : entries_)
    header.tensors.push_back(std::move(entry.info));
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  header.by_name.resize(header.tensors.size());
  for (uint32_t i = 0; i < header.by_name.size(); ++i)
    header.by_name[i] = i;
  std::sort(header.by_name.begin(), header.by_name.end(), [&](uint32_t a, uint32_t b) {
    return header.tensors[a].name < header.tensors[b].name;
  });
  std::sort(metadata_.begin(), metadata_.end());
  header.metadata = std::move(metadata_);
  return header;
}

// Returns false when the JSON text is malformed (the problem is recorded).
bool HeaderParser::parse_json(const std::string& text) {
  simdjson::padded_string json(text);
  simdjson::ondemand::parser parser;
  simdjson::ondemand::document doc;
  json_ = &json;
  text_begin_ = json.data();
  text_end_ = json.data() + json.size();
  struct Forget { // json_error may look at the text and the document only while they live
    HeaderParser& parser;
    ~Forget() {
      parser.doc_ = nullptr;
      parser.json_ = nullptr;
    }
  } forget{*this};
  if (auto ec = parser.iterate(json).get(doc)) {
    if (ec == simdjson::EMPTY) {
      problem("header is empty or only whitespace (expected a JSON object)");
      return false;
    }
    return json_error(ec);
  }
  doc_ = &doc;
  json_type type;
  if (auto ec = doc.type().get(type))
    return json_error(ec);
  if (type != json_type::object) {
    problem("header must be one JSON object, found " + std::string(json::type_name(type)));
    return false;
  }
  simdjson::ondemand::object root;
  if (auto ec = doc.get_object().get(root))
    return json_error(ec);

  bool ok = true;
  auto ec = json::for_each_field(
      root, [&](const std::string& key, simdjson::ondemand::value field_value, bool duplicate) {
        if (duplicate) {
          if (key == "__metadata__") {
            problem("duplicate key '__metadata__'");
          } else {
            tensor_problem(key, "duplicate key: the tensor is listed twice");
            // The second entry's byte range is not in entries_, so gaps found later would be noise.
            duplicate_tensor_ = true;
          }
          return true; // the value is skipped; the file is rejected anyway
        }
        ok = key == "__metadata__" ? parse_metadata(field_value) : parse_entry(key, field_value);
        return ok;
      });
  if (ec)
    return json_error(ec);
  if (!ok)
    return false;
  if (!json::at_end(doc))
    return content_after_object();
  return true;
}

bool HeaderParser::parse_metadata(simdjson::ondemand::value value) {
  json_type type;
  if (auto ec = value.type().get(type))
    return json_error(ec);
  if (type != json_type::object) {
    problem("__metadata__ must be an object of strings, found " +
            std::string(json::type_name(type)));
    return true;
  }
  simdjson::ondemand::object object;
  if (auto ec = value.get_object().get(object))
    return json_error(ec);
  auto ec = json::for_each_field(
      object, [&](std::string& key, simdjson::ondemand::value v, bool duplicate) {
        if (duplicate) {
          problem("__metadata__: duplicate key '" + printable(key) + "'");
          return simdjson::SUCCESS;
        }
        json_type vtype;
        if (auto ec = v.type().get(vtype))
          return ec;
        if (vtype != json_type::string) {
          problem("__metadata__: value of '" + printable(key) + "' must be a string, found " +
                  std::string(json::type_name(vtype)));
          return simdjson::SUCCESS;
        }
        std::string_view s;
        if (auto ec = v.get_string().get(s))
          return ec;
        metadata_.emplace_back(std::move(key), std::string(s));
        return simdjson::SUCCESS;
      });
  if (ec)
    return json_error(ec);
  return true;
}

bool HeaderParser::parse_entry(std::string_view name, simdjson::ondemand::value value) {
  Entry entry;
  entry.info.name = std::string(name);
  json_type type;
  if (auto ec = value.type().get(type))
    return json_error(ec);
  if (type != json_type::object) {
    tensor_problem(name, "entry must be an object with dtype, shape and data_offsets, found " +
                             std::string(json::type_name(type)));
    entries_.push_back(std::move(entry));
    return true;
  }
  simdjson::ondemand::object object;
  if (auto ec = value.get_object().get(object))
    return json_error(ec);
  bool ok = true;
  auto ec = json::for_each_field(
      object, [&](const std::string& key, simdjson::ondemand::value field_value, bool duplicate) {
        if (duplicate) {
          tensor_problem(name, "duplicate key '" + printable(key) + "' in its entry");
          // A repeated key makes the entry ambiguous; the value read first would be kept otherwise.
          if (key == "dtype")
            entry.dtype_ok = false;
          if (key == "shape")
            entry.shape_ok = false;
          if (key == "data_offsets")
            entry.offsets_ok = false;
          return true;
        }
        if (key == "dtype") {
          entry.has_dtype = true;
          ok = parse_dtype(entry, field_value);
        } else if (key == "shape") {
          entry.has_shape = true;
          ok = parse_uint_array(entry, field_value, "shape", entry.info.shape, entry.shape_ok);
        } else if (key == "data_offsets") {
          entry.has_offsets = true;
          std::vector<uint64_t> offsets;
          ok = parse_uint_array(entry, field_value, "data_offsets", offsets, entry.offsets_ok);
          if (ok && entry.offsets_ok) {
            if (offsets.size() != 2) {
              tensor_problem(name,
                             "data_offsets must be exactly two integers [BEGIN, END], found " +
                                 std::to_string(offsets.size()));
              entry.offsets_ok = false;
            } else if (offsets[1] < offsets[0]) {
              tensor_problem(name, "data_offsets [" + std::to_string(offsets[0]) + "," +
                                       std::to_string(offsets[1]) + "] end before they begin");
              entry.offsets_ok = false;
            } else {
              entry.info.begin = offsets[0];
              entry.info.end = offsets[1];
            }
          }
        } else {
          tensor_problem(name, "unknown key '" + printable(key) +
                                   "' in its entry (allowed: dtype, shape, data_offsets)");
        }
        return ok;
      });
  if (ec)
    return json_error(ec);
  if (!ok)
    return false;
  if (!entry.has_dtype)
    tensor_problem(name, "entry lacks 'dtype'");
  if (!entry.has_shape)
    tensor_problem(name, "entry lacks 'shape'");
  if (!entry.has_offsets)
    tensor_problem(name, "entry lacks 'data_offsets'");
  entries_.push_back(std::move(entry));
  return true;
}

bool HeaderParser::parse_dtype(Entry& entry, simdjson::ondemand::value value) {
  json_type type;
  if (auto ec = value.type().get(type))
    return json_error(ec);
  if (type != json_type::string) {
    tensor_problem(entry.info.name,
                   "dtype must be a string, found " + std::string(json::type_name(type)));
    return true;
  }
  std::string_view name;
  if (auto ec = value.get_string().get(name))
    return json_error(ec);
  auto dtype = dtype_from_name(name);
  if (!dtype) {
    tensor_problem(entry.info.name,
                   "unknown dtype '" + printable(name) + "' (dtype names are case-sensitive)");
    return true;
  }
  entry.info.dtype = *dtype;
  entry.dtype_ok = true;
  return true;
}

// Reads an array of plain non-negative integers. Sets `ok` to whether every entry was one;
// returns false only when the JSON is malformed.
bool HeaderParser::parse_uint_array(Entry& entry, simdjson::ondemand::value value, const char* what,
                                    std::vector<uint64_t>& out, bool& ok) {
  ok = false;
  out.clear();
  json_type type;
  if (auto ec = value.type().get(type))
    return json_error(ec);
  if (type != json_type::array) {
    tensor_problem(entry.info.name, std::string(what) + " must be an array of integers, found " +
                                        std::string(json::type_name(type)));
    return true;
  }
  simdjson::ondemand::array array;
  if (auto ec = value.get_array().get(array))
    return json_error(ec);
  bool all_ok = true;
  size_t index = 0;
  for (auto element_result : array) {
    simdjson::ondemand::value element;
    if (auto ec = std::move(element_result).get(element))
      return json_error(ec);
    json_type etype;
    if (auto ec = element.type().get(etype))
      return json_error(ec);
    auto prefix = [&] { return std::string(what) + " entry " + std::to_string(index); };
    if (etype != json_type::number) {
      tensor_problem(entry.info.name, prefix() + " must be an integer, found " +
                                          std::string(json::type_name(etype)));
      all_ok = false;
      ++index;
      continue;
    }
    // The raw token tells "3" from "3.0" and "3e0", which the number parser would all accept.
    std::string_view token = element.raw_json_token();
    uint64_t v = 0;
    auto kind = json::parse_uint_token(token, v);
    if (kind != json::UintToken::ok) {
      tensor_problem(entry.info.name, prefix() + " " + json::describe_uint_problem(kind, token));
      // A token that is not even a JSON number ("01", "1x") means the text is malformed, and
      // nothing after it can be trusted.
      double ignored;
      if (element.get_double().get(ignored) != simdjson::SUCCESS)
        return false;
      all_ok = false;
      ++index;
      continue;
    }
    out.push_back(v);
    ++index;
  }
  ok = all_ok;
  return true;
}

// Rules 12-14 for one entry whose dtype, shape and offsets were readable.
void HeaderParser::check_sizes(const Entry& entry) {
  if (!entry.dtype_ok || !entry.shape_ok || !entry.offsets_ok)
    return;
  const auto& t = entry.info;
  auto count = element_count(t.shape);
  if (!count) {
    tensor_problem(t.name,
                   "element count of shape " + shape_text(t.shape, ",") + " overflows 64 bits");
    return;
  }
  uint64_t bits = 0;
  if (__builtin_mul_overflow(*count, uint64_t{dtype_bits(t.dtype)}, &bits)) {
    tensor_problem(t.name, "bit count of shape " + shape_text(t.shape, ",") + " x " +
                               std::string(dtype_name(t.dtype)) + " overflows 64 bits");
    return;
  }
  if (bits % 8 != 0) {
    tensor_problem(t.name, "shape " + shape_text(t.shape, ",") + " x " +
                               std::string(dtype_name(t.dtype)) + " is " + std::to_string(bits) +
                               " bits, not a whole number of bytes");
    return;
  }
  if (bits / 8 != t.end - t.begin) {
    tensor_problem(t.name, "shape " + shape_text(t.shape, ",") + " x " +
                               std::string(dtype_name(t.dtype)) + " is " +
                               std::to_string(bits / 8) + " bytes but data_offsets span " +
                               std::to_string(t.end - t.begin));
  }
}

// Rules 15-16. Sorted by (begin, end), each tensor must begin exactly where the previous one ended,
// so an empty tensor may sit at any boundary between neighbours but never inside another tensor.
void HeaderParser::check_layout(uint64_t data_size) {
  // A tensor whose offsets could not be read leaves a hole that is not a real gap: skip the layout
  // checks rather than report consequences of a problem already reported.
  if (duplicate_tensor_)
    return;
  for (const auto& e : entries_)
    if (!e.offsets_ok)
      return;

  std::vector<const TensorInfo*> order;
  order.reserve(entries_.size());
  for (const auto& e : entries_)
    order.push_back(&e.info);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });

  uint64_t cursor = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* t : order) {
    if (t->begin > cursor) {
      if (!previous)
        tensor_problem(t->name, "the first tensor in data order begins at offset " +
                                    std::to_string(t->begin) + ", not 0 (" +
                                    std::to_string(t->begin) + " unused bytes)");
      else
        tensor_problem(t->name, "gap of " + std::to_string(t->begin - cursor) +
                                    " bytes before it: tensor '" + printable(previous->name) +
                                    "' ends at " + std::to_string(cursor) +
                                    ", this one begins at " + std::to_string(t->begin));
    } else if (t->begin < cursor) {
      tensor_problem(t->name, "overlaps tensor '" + printable(previous->name) + "': it begins at " +
                                  std::to_string(t->begin) + ", before '" +
                                  printable(previous->name) + "' ends at " +
                                  std::to_string(cursor));
    }
    if (t->end >= cursor) {
      cursor = t->end;
      previous = t;
    }
  }

  if (cursor < data_size) {
    std::string where = previous ? "after the last tensor ('" + printable(previous->name) +
                                       "' ends at " + std::to_string(cursor) + ")"
                                 : "but the header lists no tensors";
    problem("data section has " + std::to_string(data_size - cursor) + " unused bytes " + where +
            "; 8 + header length + data must equal the file size");
  } else if (cursor > data_size) {
    tensor_problem(previous->name, "ends at offset " + std::to_string(cursor) +
                                       " but the data section has only " +
                                       std::to_string(data_size) + " bytes (file truncated?)");
  }
}

} // namespace

Result<Header> parse_header(std::string_view path, std::span<const std::byte> file) {
  return HeaderParser(path).parse(file);
}

const TensorInfo* Header::find(std::string_view name) const {
  auto it = std::lower_bound(by_name.begin(), by_name.end(), name,
                             [&](uint32_t i, std::string_view n) { return tensors[i].name < n; });
  if (it == by_name.end() || tensors[*it].name != name)
    return nullptr;
  return &tensors[*it];
}

uint64_t Header::data_size() const {
  uint64_t total = 0;
  for (const auto& t : tensors)
    total += t.size();
  return total;
}

} // namespace shardshift
