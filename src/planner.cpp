// planner.cpp: make_plan(): interprets an adapter's rules over the input's keys and lays out the
// whole output (files, order, offsets, headers) before any tensor byte is read.
//
// Order of the passes:
//   1. classify every input key by the adapter's rules (rename, drop, expert piece, reject);
//   2. validate the expert groups of each layer (all pieces present, shapes and dtypes agree);
//   3. add the derived tensors (tied lm_head, per-expert ones) and apply the exclusion pattern;
//   4. shard like Hugging Face (greedy in input order, max_shard_size), copies first in each file;
//   5. build each file's exact header.
// Every problem found in 1-3 is collected; the plan fails with all of them at once.
#include "shardshift/plan.h"
#include "shardshift/shard_writer.h"

#include "adapter.h"
#include "transpose.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <regex>
#include <set>

#include <simdjson.h>

namespace shardshift {

const char* direction_name(Direction d) {
  return d == Direction::from_hf ? "from_hf" : "to_hf";
}

const char* op_name(OpKind op) {
  switch (op) {
  case OpKind::copy:
    return "copy";
  case OpKind::transpose:
    return "transpose";
  case OpKind::ones:
    return "ones";
  }
  return "?";
}

namespace {

std::string shape_text(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// What the rules decided for one input key.
struct Classified {
  TensorRef ref;
  std::string input_name;
  RuleAction action = RuleAction::rename; // rename = pass through under `output`
  std::string output;                     // output name (or message for reject)
  std::string extra;                      // expert_down to_hf: ones tensor name
  std::string layer;                      // expert pieces: "layers.N"
};

struct ExpertGroup {
  const Classified* gate_up = nullptr;
  const Classified* down = nullptr;
  const Classified* scale = nullptr;
};

std::string expand(std::string_view tmpl, const std::smatch& m, std::string_view layer,
                   std::string_view prefix) {
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    char c = tmpl[i];
    if (c == '$' && i + 1 < tmpl.size() && tmpl[i + 1] >= '1' && tmpl[i + 1] <= '9') {
      out += m[tmpl[i + 1] - '0'].str();
      ++i;
    } else if (tmpl.substr(i).starts_with("{layer}")) {
      out += layer;
      i += 6;
    } else if (tmpl.substr(i).starts_with("{P}")) {
      out += prefix;
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

struct CompiledRule {
  const Rule* rule;
  std::regex re;
};

Classified classify(const std::vector<CompiledRule>& rules, const std::string& key,
                    std::string_view prefix) {
  Classified c;
  c.input_name = key;
  std::string name = key;
  for (const CompiledRule& cr : rules) {
    std::smatch m;
    if (!std::regex_search(name, m, cr.re))
      continue;
    // Expert rules capture the layer path as group 1.
    std::string layer = m.size() > 1 ? m[1].str() : std::string();
    switch (cr.rule->action) {
    case RuleAction::rename_continue:
      name = expand(cr.rule->output, m, layer, prefix);
      continue;
    case RuleAction::drop:
    case RuleAction::expert_scale:
      c.action = cr.rule->action;
      c.layer = layer;
      return c;
    case RuleAction::reject:
      c.action = RuleAction::reject;
      c.output = std::string(cr.rule->output);
      return c;
    case RuleAction::rename:
    case RuleAction::expert_gate_up:
    case RuleAction::expert_down:
      c.action = cr.rule->action;
      c.layer = layer;
      c.output = expand(cr.rule->output, m, layer, prefix);
      if (!cr.rule->extra.empty())
        c.extra = expand(cr.rule->extra, m, layer, prefix);
      return c;
    }
  }
  c.action = RuleAction::rename;
  c.output = name;
  return c;
}

// Expert-parallel range of rank r among w for e experts (semantics 1.2).
std::pair<uint64_t, uint64_t> ep_range(uint64_t e, uint64_t w, uint64_t r) {
  uint64_t base = e / w, rem = e % w;
  if (r < rem)
    return {r * (base + 1), base + 1};
  return {r * base + rem, base};
}

} // namespace

Result<Plan> make_plan(const Checkpoint& input, const PlanOptions& options) {
  std::vector<std::string> problems;
  auto problem = [&](const std::string& s) { problems.push_back(s); };

  // Input keys in data order: shard by shard, offset by offset. Output follows this order so the
  // input is read front to back.
  std::vector<TensorRef> order;
  for (uint32_t s = 0; s < input.shards.size(); ++s)
    for (uint32_t t = 0; t < input.shards[s].header.tensors.size(); ++t)
      order.push_back({s, t});
  std::vector<std::string> keys;
  for (TensorRef r : order)
    keys.push_back(input.info(r).name);

  // The model type comes from config.json when the checkpoint has one; a missing or unreadable
  // config is not an error (the key names decide then).
  std::string model_type;
  if (std::find(input.other_files.begin(), input.other_files.end(), "config.json") !=
      input.other_files.end()) {
    simdjson::dom::parser parser;
    simdjson::dom::element config;
    std::string_view type;
    if (parser.load((input.root / "config.json").string()).get(config) == simdjson::SUCCESS &&
        config["model_type"].get_string().get(type) == simdjson::SUCCESS)
      model_type = std::string(type);
  }
  auto selected = select_adapter(model_type, keys, options.adapter, options.direction);
  if (!selected)
    return selected.status();
  const AdapterSpec& spec = **selected;
  const Direction dir = spec.direction;

  if (options.ep_size == 0 || options.ep_rank >= options.ep_size)
    return Status(Errc::invalid_argument, "--ep-rank must be below --ep-size");
  if (options.ep_shard_size == 0 || options.ep_shard_rank >= options.ep_shard_size)
    return Status(Errc::invalid_argument, "--ep-shard-rank must be below --ep-shard-size");
  const bool expert_parallel = options.ep_size > 1 || options.ep_shard_size > 1;
  if (expert_parallel && dir != Direction::from_hf)
    return Status(Errc::invalid_argument,
                  "expert-parallel export (--ep-size, --ep-shard-size) applies to from_hf only");

  std::vector<CompiledRule> rules;
  for (const Rule& r : spec.rules)
    rules.push_back({&r, std::regex(r.pattern.begin(), r.pattern.end())});
  const bool any_model_prefix =
      std::any_of(keys.begin(), keys.end(), [](auto& k) { return k.starts_with("model."); });
  const std::string prefix = any_model_prefix ? "model." : "";

  // Pass 1: classify.
  std::vector<Classified> classified;
  classified.reserve(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    Classified c = classify(rules, keys[i], prefix);
    c.ref = order[i];
    classified.push_back(std::move(c));
  }

  Plan plan;
  plan.adapter = std::string(spec.model);
  plan.direction = dir;

  // Pass 2: expert groups by layer path.
  std::map<std::string, ExpertGroup> groups;
  for (const Classified& c : classified) {
    switch (c.action) {
    case RuleAction::reject:
      problem("tensor '" + c.input_name + "': " + c.output);
      break;
    case RuleAction::expert_gate_up:
    case RuleAction::expert_down:
    case RuleAction::expert_scale: {
      ExpertGroup& g = groups[c.layer];
      const Classified*& slot = c.action == RuleAction::expert_gate_up ? g.gate_up
                                : c.action == RuleAction::expert_down  ? g.down
                                                                       : g.scale;
      if (slot)
        problem("tensor '" + c.input_name + "': " + c.layer +
                " already has this expert piece in '" + slot->input_name + "'");
      else
        slot = &c;
      break;
    }
    default:
      break;
    }
  }

  // Per-group validation; results used when emitting.
  struct ExpertOut {
    DType gate_dtype, down_dtype, ones_dtype;
    uint64_t expert_begin = 0, experts = 0;
  };
  std::map<std::string, ExpertOut> expert_out;
  for (auto& [layer, g] : groups) {
    const TensorInfo* gu = g.gate_up ? &input.info(g.gate_up->ref) : nullptr;
    const TensorInfo* dn = g.down ? &input.info(g.down->ref) : nullptr;
    const TensorInfo* sc = g.scale ? &input.info(g.scale->ref) : nullptr;
    if (spec.fold_scale) {
      std::vector<std::string> missing;
      if (!gu)
        missing.push_back("gate_up_proj");
      if (!dn)
        missing.push_back("down_proj");
      if (!sc)
        missing.push_back("per_expert_scale");
      if (!missing.empty()) {
        std::string m;
        for (auto& s : missing)
          m += (m.empty() ? "" : ", ") + s;
        problem(layer + ": incomplete expert weights: missing " + m +
                " (every MoE layer needs gate_up_proj, down_proj and router.per_expert_scale)");
        continue;
      }
    }
    bool ok = true;
    auto need_3d = [&](const TensorInfo* t) {
      if (t && t->shape.size() != 3) {
        problem("tensor '" + t->name + "': expert tensor must be 3-D [E, A, B], has shape " +
                shape_text(t->shape));
        ok = false;
      }
    };
    need_3d(gu);
    need_3d(dn);
    if (sc && sc->shape.size() != 1) {
      problem("tensor '" + sc->name + "': per_expert_scale must be 1-D [E], has shape " +
              shape_text(sc->shape));
      ok = false;
    }
    if (!ok)
      continue;
    uint64_t e = gu ? gu->shape[0] : dn->shape[0];
    if (gu && dn && gu->shape[0] != dn->shape[0]) {
      problem(layer + ": expert count disagrees: '" + gu->name + "' " + shape_text(gu->shape) +
              " vs '" + dn->name + "' " + shape_text(dn->shape));
      ok = false;
    }
    if (sc && sc->shape[0] != e) {
      problem(layer + ": '" + sc->name + "' has " + std::to_string(sc->shape[0]) +
              " scales but the layer has " + std::to_string(e) + " experts");
      ok = false;
    }
    // Hidden size: from_hf gate_up [E, 2I, H] / down [E, H, I]; to_hf gate_and_up [E, H, 2I] / down
    // [E, I, H].
    if (gu && dn) {
      uint64_t h_gu = dir == Direction::from_hf ? gu->shape[2] : gu->shape[1];
      uint64_t h_dn = dir == Direction::from_hf ? dn->shape[1] : dn->shape[2];
      if (h_gu != h_dn) {
        problem(layer + ": hidden size disagrees: '" + gu->name + "' " + shape_text(gu->shape) +
                " vs '" + dn->name + "' " + shape_text(dn->shape));
        ok = false;
      }
    }
    ExpertOut eo{};
    DType down_p = dn ? dn->dtype : DType::BF16;
    if (dn) {
      bool fold = spec.fold_scale;
      Status s = check_transpose_supported(
          dn->dtype, fold, sc ? sc->dtype : dn->dtype,
          options.expert_dtype.value_or(fold ? promote_types(dn->dtype, sc->dtype) : dn->dtype));
      if (!s.ok()) {
        problem("tensor '" + dn->name + "': " + s.message());
        ok = false;
      } else if (fold) {
        down_p = promote_types(dn->dtype, sc->dtype);
      }
    }
    if (gu) {
      Status s = check_transpose_supported(gu->dtype, false, gu->dtype,
                                           options.expert_dtype.value_or(gu->dtype));
      if (!s.ok()) {
        problem("tensor '" + gu->name + "': " + s.message());
        ok = false;
      }
    }
    if (!ok)
      continue;
    eo.gate_dtype = options.expert_dtype.value_or(gu ? gu->dtype : DType::BF16);
    eo.down_dtype = options.expert_dtype.value_or(down_p);
    eo.ones_dtype = options.scale_dtype.value_or(eo.down_dtype);
    auto [eb, ne] = ep_range(e, options.ep_size, options.ep_rank);
    eo.expert_begin = eb;
    eo.experts = ne;
    expert_out[layer] = eo;
  }
  if (expert_parallel) {
    // The second sharding keeps rows of output axis 1 (= input axis 2): refuse remainders.
    for (auto& [layer, g] : groups)
      for (const Classified* c : {g.gate_up, g.down}) {
        if (!c || !expert_out.count(layer))
          continue;
        const TensorInfo& t = input.info(c->ref);
        if (t.shape[2] % options.ep_shard_size != 0)
          problem("tensor '" + t.name + "': axis of size " + std::to_string(t.shape[2]) +
                  " does not split evenly into " + std::to_string(options.ep_shard_size) +
                  " shards (--ep-shard-size); the reference would silently drop rows");
      }
  }

  std::optional<std::regex> exclude;
  if (spec.honours_exclude && options.exclude && !options.exclude->empty()) {
    try {
      exclude.emplace(*options.exclude);
    } catch (const std::regex_error& e) {
      return Status(Errc::invalid_argument, "--exclude '" + *options.exclude +
                                                "' is not a valid regular expression: " + e.what());
    }
  }
  auto excluded = [&](const std::string& name) {
    return exclude && std::regex_search(name, *exclude, std::regex_constants::match_continuous);
  };

  // Pass 3: emit output tensors in input order.
  std::vector<OutputTensor>& out = plan.tensors;
  auto emit = [&](OutputTensor t) {
    if (excluded(t.name)) {
      ++plan.excluded;
      return;
    }
    auto size = tensor_byte_size(t.dtype, t.shape);
    t.size = size.value_or(0);
    out.push_back(std::move(t));
  };
  const bool has_lm_head =
      std::any_of(keys.begin(), keys.end(), [](auto& k) { return k == "lm_head.weight"; });
  const bool has_lora = std::any_of(keys.begin(), keys.end(),
                                    [](auto& k) { return k.find(".lora_") != std::string::npos; });
  const bool want_tied_head =
      !spec.tied_head_source.empty() && options.tied_head && !has_lm_head && !has_lora;
  bool tied_head_done = false;

  for (const Classified& c : classified) {
    const TensorInfo& info = input.info(c.ref);
    switch (c.action) {
    case RuleAction::drop:
    case RuleAction::expert_scale:
      ++plan.dropped;
      break;
    case RuleAction::reject:
    case RuleAction::rename_continue:
      break;
    case RuleAction::rename: {
      OutputTensor t;
      t.name = c.output;
      t.dtype = info.dtype;
      t.shape = info.shape;
      t.op = OpKind::copy;
      t.source = c.ref;
      if (c.output != c.input_name)
        t.note = "from " + c.input_name;
      emit(t);
      if (want_tied_head && c.output == spec.tied_head_source) {
        OutputTensor head = t;
        head.name = "lm_head.weight";
        head.note = "tied to " + c.output;
        emit(head);
        tied_head_done = true;
      }
      break;
    }
    case RuleAction::expert_gate_up:
    case RuleAction::expert_down: {
      auto it = expert_out.find(c.layer);
      if (it == expert_out.end())
        break; // the group had problems, already reported
      const ExpertOut& eo = it->second;
      const ExpertGroup& g = groups[c.layer];
      bool down = c.action == RuleAction::expert_down;
      OutputTensor t;
      t.name = c.output;
      t.op = OpKind::transpose;
      t.source = c.ref;
      t.dtype = down ? eo.down_dtype : eo.gate_dtype;
      t.expert_begin = eo.expert_begin;
      t.experts = eo.experts;
      uint64_t n = info.shape[2] / options.ep_shard_size;
      t.col_begin = options.ep_shard_rank * n;
      t.cols = n;
      t.shape = {t.experts, t.cols, info.shape[1]};
      if (down && spec.fold_scale) {
        t.scale = g.scale->ref;
        t.note = "transpose, fold " + g.scale->input_name;
      } else {
        t.note = "transpose";
      }
      t.note += " from " + c.input_name;
      emit(t);
      if (down && !c.extra.empty()) {
        OutputTensor ones;
        ones.name = c.extra;
        ones.op = OpKind::ones;
        ones.dtype = eo.ones_dtype;
        ones.shape = {info.shape[0]};
        ones.note = "ones (scale stays folded in " + t.name + ")";
        emit(ones);
      }
      break;
    }
    }
  }
  if (want_tied_head && !tied_head_done)
    problem("the input has no lm_head.weight (tied head) and no embedding '" +
            std::string(spec.tied_head_source) +
            "' to tie it to; add the embedding or pass --no-tied-head to write no head");

  // Output names must be unique (e.g. both model.decoder.x and model.x in the input).
  {
    std::map<std::string_view, const OutputTensor*> seen;
    for (const OutputTensor& t : out) {
      auto [pos, inserted] = seen.emplace(t.name, &t);
      if (!inserted)
        problem("output tensor '" + t.name + "' would be written twice (" + pos->second->note +
                "; " + t.note + ")");
    }
  }
  for (const OutputTensor& t : out)
    if (!tensor_byte_size(t.dtype, t.shape))
      problem("output tensor '" + t.name + "': size overflows 64 bits");

  if (!problems.empty()) {
    std::string msg = input.root.string() + ": the checkpoint does not fit the " +
                      std::string(spec.model) + " " + direction_name(dir) + " adapter (" +
                      std::to_string(problems.size()) + " problem" +
                      (problems.size() > 1 ? "s" : "") + "):";
    for (auto& p : problems)
      msg += "\n  " + p;
    return Status(Errc::plan, msg);
  }

  // Pass 4: shard greedily in input order, like Hugging Face's split: a new file starts when the
  // next tensor would push the current one over the limit; a tensor larger than the limit gets a
  // file of its own.
  std::vector<std::vector<uint32_t>> shards;
  uint64_t current = 0;
  for (uint32_t i = 0; i < out.size(); ++i) {
    if (shards.empty() || (current > 0 && current + out[i].size > options.max_shard_size)) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += out[i].size;
  }
  if (shards.empty())
    shards.emplace_back(); // an empty checkpoint is still one valid file

  const size_t nfiles = shards.size();
  for (size_t f = 0; f < nfiles; ++f) {
    OutputFile file;
    if (nfiles == 1) {
      file.name = "model.safetensors";
    } else {
      char buf[64];
      std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", f + 1, nfiles);
      file.name = buf;
    }
    // Copies first (they need no buffer and may share extents), then everything else; each group
    // keeps input order.
    std::stable_partition(shards[f].begin(), shards[f].end(),
                          [&](uint32_t i) { return out[i].op == OpKind::copy; });
    file.tensors = shards[f];
    uint64_t off = 0;
    std::vector<PlannedTensor> planned;
    for (uint32_t i : file.tensors) {
      out[i].file = static_cast<uint32_t>(f);
      out[i].offset = off;
      off += out[i].size;
      planned.push_back({out[i].name, out[i].dtype, out[i].shape});
    }
    file.data_size = off;

    // Pick the data start so the largest run of input-contiguous copies keeps its offset modulo
    // 4096 in the output: then copy_file_range can share those extents (reflink) on XFS/btrfs.
    HeaderOptions ho;
    if (options.align_for_reflink) {
      uint64_t best_len = 0, best_in = 0, best_out = 0;
      for (size_t k = 0; k < file.tensors.size();) {
        const OutputTensor& first = out[file.tensors[k]];
        if (first.op != OpKind::copy)
          break;
        uint64_t run_len = first.size;
        uint64_t in_end = input.file_offset(first.source) + first.size;
        size_t j = k + 1;
        while (j < file.tensors.size()) {
          const OutputTensor& t = out[file.tensors[j]];
          if (t.op != OpKind::copy || t.source.shard != first.source.shard ||
              input.file_offset(t.source) != in_end)
            break;
          run_len += t.size;
          in_end += t.size;
          ++j;
        }
        if (run_len > best_len) {
          best_len = run_len;
          best_in = input.file_offset(first.source);
          best_out = first.offset;
        }
        k = j;
      }
      // Only when that keeps the data section 8-byte aligned, as the reference writer does.
      uint64_t mod = (best_in - best_out) % 4096;
      if (best_len >= 4096 && mod % 8 == 0)
        ho.data_start_mod_4096 = mod;
    }
    auto header = build_header(planned, ho);
    if (!header)
      return header.status();
    file.header = std::move(header.value());
    plan.files.push_back(std::move(file));
  }

  for (const OutputTensor& t : out) {
    plan.total_tensor_bytes += t.size;
    plan.weight_map[t.name] = plan.files[t.file].name;
    (t.op == OpKind::copy   ? plan.copy_bytes
     : t.op == OpKind::ones ? plan.ones_bytes
                            : plan.transform_bytes) += t.size;
  }
  plan.write_index = plan.files.size() > 1;
  if (options.copy_side_files)
    plan.side_files = input.other_files;
  return plan;
}

} // namespace shardshift
