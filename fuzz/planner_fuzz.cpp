// planner_fuzz.cpp: make_plan over checkpoints decoded from the input, in both directions.
//
// Planning reads headers only, so the checkpoint is built in memory, as tests/planner_test.cpp
// does, holding what Checkpoint::open guarantees (unique names, sizes that fit a file, tensors
// back to back after the header); shapes may be as large as a real file allows. The input is
// text, so the corpus reads like a checkpoint listing (fuzz/corpus/planner_fuzz/):
//
//   adapter=gemma4_moe dtype=F32 ep=2/1 eps=1/0 shard=20000 tied=0 align=0 type=gemma4 exclude=RE
//   model.decoder.layers.0.experts.gate_up_proj BF16 4,6,8
//   --                                          (the next shard)
//   model.embed_tokens.weight F16 16,8
//
// Every option is optional (exclude= takes the rest of its line). Each input is planned with
// the direction detected, from_hf and to_hf. A plan may fail with any message; a plan that
// succeeds must be one the engine can run: every range inside its source, every size the
// product of its shape, and (when small enough to build) every file's header parsing back to
// exactly the planned tensors. SHARDSHIFT_FUZZ_VERBOSE=1 prints what each plan came to.
#include "shardshift/plan.h"
#include "shardshift/safetensors.h"

#include "fuzz_support.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <simdjson.h>

using namespace shardshift;
using fuzz::check;

namespace {

// The largest file a Linux file system holds (off_t).
constexpr uint64_t MAX_FILE_BYTES = uint64_t{std::numeric_limits<int64_t>::max()};
// Files of plans at most this large are built and parsed back.
constexpr uint64_t MAX_BUILT_BYTES = 1 << 20;

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  for (size_t start = 0;;) {
    size_t end = s.find(sep, start);
    parts.push_back(s.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos)
      return parts;
    start = end + 1;
  }
}

bool parse_u64(std::string_view s, uint64_t& v) {
  if (s.empty() || s.size() > 20)
    return false;
  v = 0;
  for (char c : s)
    if (c < '0' || c > '9' || __builtin_mul_overflow(v, 10, &v) ||
        __builtin_add_overflow(v, uint64_t(c - '0'), &v))
      return false;
  return true;
}

// "W/R" into two numbers below 2^16 (rank may be >= size: check_options must refuse it).
bool parse_pair(std::string_view s, unsigned& a, unsigned& b) {
  auto parts = split(s, '/');
  uint64_t x = 0, y = 0;
  if (parts.size() != 2 || !parse_u64(parts[0], x) || !parse_u64(parts[1], y) || x > 65535 ||
      y > 65535)
    return false;
  a = unsigned(x);
  b = unsigned(y);
  return true;
}

void parse_options(std::string_view line, PlanOptions& o, std::string& model_type, uint64_t& pad) {
  const char* const line_end = line.data() + line.size();
  while (!line.empty()) {
    size_t space = line.find(' ');
    std::string_view token = line.substr(0, space);
    line = space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
    size_t eq = token.find('=');
    if (eq == std::string_view::npos)
      continue;
    std::string_view key = token.substr(0, eq), value = token.substr(eq + 1);
    uint64_t n = 0;
    if (key == "exclude") {
      // The rest of the line; long patterns only make PCRE2 slow, not the planner interesting.
      const std::string_view rest(value.data(), static_cast<size_t>(line_end - value.data()));
      if (rest.size() <= 64)
        o.exclude = std::string(rest);
      return;
    }
    if (key == "adapter")
      o.adapter = std::string(value);
    else if (key == "type")
      model_type = std::string(value);
    else if (key == "dtype")
      o.expert_dtype = dtype_from_name(value);
    else if (key == "scale")
      o.scale_dtype = dtype_from_name(value);
    else if (key == "ep")
      parse_pair(value, o.ep_size, o.ep_rank);
    else if (key == "eps")
      parse_pair(value, o.ep_shard_size, o.ep_shard_rank);
    else if (key == "shard" && parse_u64(value, n))
      o.max_shard_size = n;
    else if (key == "tied")
      o.tied_head = value != "0";
    else if (key == "align")
      o.align_for_reflink = value != "0";
    else if (key == "pad" && parse_u64(value, n))
      pad = n % (1 << 20);
  }
}

// One tensor line, "NAME DTYPE D0,D1,...", into `t`; false when it is not one.
bool parse_tensor(std::string_view line, PlannedTensor& t) {
  auto fields = split(line, ' ');
  if (fields.size() < 2 || fields.size() > 3)
    return false;
  auto dtype = dtype_from_name(fields[1]);
  if (!dtype || fields[0] == "__metadata__" || !simdjson::validate_utf8(fields[0]))
    return false;
  t.name = std::string(fields[0]);
  t.dtype = *dtype;
  t.shape.clear();
  if (fields.size() == 3 && !fields[2].empty()) {
    auto dims = split(fields[2], ',');
    if (dims.size() > 8)
      return false;
    for (std::string_view d : dims) {
      uint64_t v = 0;
      if (!parse_u64(d, v))
        return false;
      t.shape.push_back(v);
    }
  }
  return true;
}

// Adds one shard holding `tensors` back to back after a header of the size shardshift would
// write (plus `pad` bytes); tensors that would not fit a real file are left out.
void add_shard(Checkpoint& c, const std::vector<PlannedTensor>& tensors, uint64_t pad) {
  Shard shard;
  auto header = build_header(tensors, HeaderOptions{});
  if (!header)
    return;
  shard.header.header_length = header->size() - 8 + pad;
  shard.header.data_start = header->size() + pad;
  uint64_t offset = 0;
  for (const PlannedTensor& p : tensors) {
    auto size = tensor_byte_size(p.dtype, p.shape);
    uint64_t end = 0;
    if (!size || __builtin_add_overflow(offset, *size, &end) ||
        end > MAX_FILE_BYTES - shard.header.data_start)
      continue;
    TensorInfo t;
    t.name = p.name;
    t.dtype = p.dtype;
    t.shape = p.shape;
    t.begin = offset;
    t.end = offset = end;
    shard.header.tensors.push_back(std::move(t));
  }
  // What the parser fills: the name index.
  auto& h = shard.header;
  h.by_name.resize(h.tensors.size());
  for (uint32_t i = 0; i < h.by_name.size(); ++i)
    h.by_name[i] = i;
  std::sort(h.by_name.begin(), h.by_name.end(),
            [&](uint32_t a, uint32_t b) { return h.tensors[a].name < h.tensors[b].name; });
  const auto index = static_cast<uint32_t>(c.shards.size());
  for (uint32_t j = 0; j < h.tensors.size(); ++j)
    c.tensors.emplace(h.tensors[j].name, TensorRef{index, j});
  c.shards.push_back(std::move(shard));
}

Checkpoint decode(std::string_view text, PlanOptions& options) {
  Checkpoint c;
  c.root = "/fuzz/ckpt";
  auto lines = split(text, '\n');
  uint64_t pad = 0;
  parse_options(lines[0], options, c.config_model_type, pad);
  std::set<std::string> names; // a name in two shards is refused by Checkpoint::open
  std::vector<PlannedTensor> shard;
  for (size_t i = 1; i < lines.size(); ++i) {
    PlannedTensor t;
    if (lines[i] == "--") {
      if (c.shards.size() < 16)
        add_shard(c, shard, pad);
      shard.clear();
    } else if (parse_tensor(lines[i], t) && names.insert(t.name).second) {
      shard.push_back(std::move(t));
    }
  }
  if (!shard.empty() || c.shards.empty())
    add_shard(c, shard, pad);
  for (size_t s = 0; s < c.shards.size(); ++s)
    c.shards[s].file_name = shard_file_name(s, c.shards.size());
  c.has_index = c.shards.size() > 1;
  c.other_files = {"config.json"};
  return c;
}

bool source_exists(const Checkpoint& in, TensorRef r) {
  return r.shard < in.shards.size() && r.tensor < in.shards[r.shard].header.tensors.size();
}

uint64_t blocks_of(uint64_t n) {
  return n / 128 + (n % 128 != 0);
}

// An FP8 block scale for an [R, C] weight: [ceil(R/128), ceil(C/128)] (docs/semantics.md 15).
bool block_scale_fits(const Checkpoint& in, TensorRef scale, uint64_t rows, uint64_t cols) {
  return source_exists(in, scale) &&
         in.info(scale).shape == std::vector<uint64_t>{blocks_of(rows), blocks_of(cols)};
}

// transpose: [E, A, B] -> this rank's [experts, cols, A] (or, one expert taken apart by to_hf's
// unstack, [cols, A]); a folded scale has E entries.
void check_transpose(const Checkpoint& in, const OutputTensor& t, const TensorInfo& src) {
  check(src.shape.size() == 3, "a transpose of a tensor that is not [E, A, B]");
  const bool one_expert = t.experts == 1 && t.shape == std::vector<uint64_t>{t.cols, src.shape[1]};
  check(t.expert_begin + t.experts <= src.shape[0] && t.col_begin + t.cols <= src.shape[2] &&
            (one_expert || t.shape == std::vector<uint64_t>{t.experts, t.cols, src.shape[1]}),
        "a transpose outside its source");
  if (t.scale) {
    check(source_exists(in, *t.scale), "a folded scale that does not exist");
    auto count = element_count(in.info(*t.scale).shape);
    check(count && *count == src.shape[0], "a folded scale of the wrong length");
  }
}

// stack: [N, R, C] filled by 2-D [A, R] pieces, each transposed into out[index][:, col : col + A];
// sorted by (index, col), they tile every row of experts exactly.
void check_stack(const Checkpoint& in, const OutputTensor& t) {
  check(t.shape.size() == 3, "a stack that is not [N, R, C]");
  const uint64_t n = t.shape[0], r = t.shape[1], c = t.shape[2];
  // An expert-parallel rank past the last expert (E < --ep-size) keeps none (semantics 14.7).
  if (n == 0) {
    check(t.pieces.empty() && t.size == 0, "a stack of no experts that reads pieces");
    return;
  }
  check(!t.pieces.empty(), "a stack of experts that has no pieces");
  uint64_t index = 0, col = 0;
  for (const StackPiece& p : t.pieces) {
    check(source_exists(in, p.source), "a stack piece that does not exist");
    const TensorInfo& src = in.info(p.source);
    // With the second sharding (--ep-shard-size) the output keeps rows [col_begin, col_begin +
    // r) of axis 1, i.e. those columns of every piece (semantics 14.7).
    check(src.shape.size() == 2 && t.cols == r && t.col_begin + r <= src.shape[1],
          "a stack piece that is not [A, R] or whose columns do not hold the output's rows");
    if (col == c && p.index == index + 1) {
      index = p.index;
      col = 0;
    }
    check(p.index == index && p.col == col && src.shape[0] <= c - col,
          "stack pieces that do not tile the output");
    col += src.shape[0];
    if (p.scale)
      check(block_scale_fits(in, *p.scale, src.shape[0], src.shape[1]),
            "a stack piece's block scale does not fit it");
  }
  check(index + 1 == n && col == c, "stack pieces that do not cover the output");
}

// What the engine relies on in a plan.
void check_plan(const Checkpoint& in, const Plan& plan) {
  check(plan.weight_map.size() == plan.tensors.size(), "weight map and tensors disagree");
  for (const OutputTensor& t : plan.tensors) {
    auto size = tensor_byte_size(t.dtype, t.shape);
    check(size && *size == t.size, "a tensor's size is not its shape's");
    check(t.file < plan.files.size(), "a tensor in no file");
    uint64_t end = 0;
    check(!__builtin_add_overflow(t.offset, t.size, &end) && end <= plan.files[t.file].data_size,
          "a tensor past its file's data");
    if (t.op == OpKind::ones) {
      check(t.shape.size() == 1, "ones that are not a vector");
      continue;
    }
    if (t.op == OpKind::stack) {
      check_stack(in, t);
      continue;
    }
    check(source_exists(in, t.source), "a source that does not exist");
    const TensorInfo& src = in.info(t.source);
    switch (t.op) {
    case OpKind::copy:
      check(src.size() == t.size && src.dtype == t.dtype && src.shape == t.shape,
            "a copy that is not its source");
      break;
    case OpKind::transpose:
      check_transpose(in, t, src);
      break;
    case OpKind::dequant:
      check(src.shape.size() == 2 && t.shape == src.shape && t.scale &&
                block_scale_fits(in, *t.scale, src.shape[0], src.shape[1]),
            "a dequantized weight whose shape or block scale does not fit");
      break;
    default:
      check(false, "an operation this target does not know (add its checks)");
    }
  }
  uint64_t total = 0;
  for (const OutputFile& f : plan.files) {
    check(!__builtin_add_overflow(total, f.data_size, &total), "total size overflows");
    if (f.data_size > MAX_BUILT_BYTES || f.header.size() > MAX_BUILT_BYTES)
      continue;
    // The file as the writer lays it out (data zeroed) parses to the planned tensors.
    std::string bytes = f.header;
    bytes.resize(f.header.size() + f.data_size);
    auto parsed = parse_header(f.name, std::as_bytes(std::span(bytes.data(), bytes.size())));
    check(parsed.ok(), "a planned file's header does not parse");
    check(parsed->tensors.size() == f.tensors.size(), "a planned file lists other tensors");
    for (uint32_t i : f.tensors) {
      const OutputTensor& t = plan.tensors[i];
      const TensorInfo* got = parsed->find(t.name);
      check(got && got->begin == t.offset && got->size() == t.size && got->dtype == t.dtype &&
                got->shape == t.shape,
            "a planned file's header disagrees with the plan");
    }
  }
  check(total == plan.total_tensor_bytes, "total_tensor_bytes is not the files' sum");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 16384) // a few hundred keys are enough; more only slows the run
    return 0;
  // SHARDSHIFT_FUZZ_VERBOSE=1 prints each plan's outcome (to see what a corpus file reaches).
  static const bool verbose = std::getenv("SHARDSHIFT_FUZZ_VERBOSE") != nullptr;
  PlanOptions options;
  const Checkpoint input =
      decode(std::string_view(reinterpret_cast<const char*>(data), size), options);
  for (std::optional<Direction> direction :
       {std::optional<Direction>(), std::optional(Direction::from_hf),
        std::optional(Direction::to_hf)}) {
    options.direction = direction;
    auto plan = make_plan(input, options);
    if (verbose)
      std::fprintf(stderr, "%s: %s\n",
                   direction ? direction_name(*direction) : "detected direction",
                   plan.ok() ? (std::to_string(plan->files.size()) + " file(s), " +
                                std::to_string(plan->tensors.size()) + " tensor(s)")
                                   .c_str()
                             : plan.status().message().c_str());
    if (plan.ok())
      check_plan(input, *plan);
    else
      check(!plan.status().message().empty(), "an error without a message");
  }
  return 0;
}
