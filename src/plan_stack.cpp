// plan_stack.cpp: the planning passes for output tensors made of many input tensors and input
// tensors split into many outputs (docs/semantics.md section 14). A family whose Hugging Face
// layout keeps every expert as its own 2-D tensors (qwen3_moe) stacks them into one [N, R, C]
// native tensor: each expert's pieces, transposed, side by side along the last axis. The rules
// say which piece goes into which column block (adapter.h: stack_piece, unstack); these passes
// gather the pieces, check that they cover the output exactly, and write the plan entries that
// the emitter and the transform stage turn into bytes chunk by chunk.
#include "planner.h"
#include "transpose.h"

#include <algorithm>
#include <charconv>
#include <tuple>

namespace shardshift {

namespace {

// The most experts one stacked tensor may have (semantics 14.2 rule 8): far beyond any released
// model (DeepSeek-V3 has 256), and small enough that the plan of a header naming expert 10^12,
// or a stacked tensor [10^12, 0, 8] of no bytes, cannot take the machine's memory.
constexpr uint64_t MAX_EXPERTS = uint64_t{1} << 16;

// The expert index of a key, as the reference's int() reads it (leading zeros allowed); none when
// it is not a number below MAX_EXPERTS.
std::optional<uint64_t> expert_index(const std::string& text) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value >= MAX_EXPERTS)
    return std::nullopt;
  return value;
}

std::string piece_name(const Rule* rule) {
  return rule && !rule->piece.empty() ? std::string(rule->piece) : std::string("piece");
}

// At most this many missing pieces are listed per stacked tensor; the rest are counted.
constexpr size_t MAX_LISTED = 8;

// from_hf: every expert 0..experts-1 has every slot; all pieces are 2-D of one shape and dtype.
void validate_pieces(PlanContext& ctx, StackGroup& g, uint64_t experts) {
  const unsigned slots = g.rule->slots;
  // The first MAX_LISTED missing pieces are named and the rest counted: every expert has
  // `slots` pieces, and those present are the map's.
  uint64_t present = 0;
  for (const auto& [e, slots_of] : g.pieces)
    present += uint64_t(std::count_if(slots_of.begin(), slots_of.end(),
                                      [](const Classified* c) { return c != nullptr; }));
  const uint64_t missing = experts * slots - present;
  std::vector<std::string> listed;
  for (uint64_t e = 0; e < experts && listed.size() < MAX_LISTED; ++e) {
    auto it = g.pieces.find(e);
    for (unsigned s = 0; s < slots && listed.size() < MAX_LISTED; ++s)
      if (it == g.pieces.end() || it->second[s] == nullptr)
        listed.push_back("expert " + std::to_string(e) + " " + g.slot_names[s]);
  }
  bool ok = missing == 0;
  if (missing != 0) {
    std::string list;
    for (size_t i = 0; i < listed.size(); ++i)
      list += (i ? ", " : "") + listed[i];
    if (missing > listed.size())
      list += " (and " + std::to_string(missing - listed.size()) + " more)";
    ctx.problems.add(Errc::plan, "", "",
                     printable(g.layer) + ": '" + printable(g.output) + "' needs every expert 0-" +
                         std::to_string(experts - 1) + " (" + std::to_string(slots) +
                         " pieces each); missing: " + list);
  }
  // The first piece sets the shape and dtype every other piece must have.
  const TensorInfo* first = nullptr;
  for (const auto& [e, slots_of] : g.pieces)
    for (unsigned s = 0; s < slots; ++s) {
      const Classified* c = slots_of[s];
      if (!c)
        continue;
      const TensorInfo& t = ctx.input.info(c->ref);
      const std::string where = printable(g.layer) + ": expert " + std::to_string(e) + " " +
                                piece_name(c->rule) + " '" + printable(t.name) + "'";
      if (t.shape.size() != 2) {
        ctx.problems.add(Errc::plan, "", "",
                         where + " must be 2-D, has shape " + shape_text(t.shape));
        ok = false;
        continue;
      }
      if (!first) {
        first = &t;
        continue;
      }
      if (t.shape != first->shape) {
        ctx.problems.add(Errc::plan, "", "",
                         where + " has shape " + shape_text(t.shape) + " but '" +
                             printable(first->name) + "' has " + shape_text(first->shape));
        ok = false;
      }
      if (t.dtype != first->dtype) {
        ctx.problems.add(Errc::plan, "", "",
                         where + " is " + std::string(dtype_name(t.dtype)) + " but '" +
                             printable(first->name) + "' is " +
                             std::string(dtype_name(first->dtype)));
        ok = false;
      }
    }
  if (!first)
    return;
  g.in_dtype = first->dtype;
  g.out_dtype = converted_dtype(ctx, g.in_dtype);
  // 8-bit float pieces of an adapter that dequantizes are: pair_block_scales checked them with
  // their scales (and refused any without one). Other pieces are transposed and cast, which the
  // check refuses for 8-bit floats (qwen3_moe: the reference would decode them).
  Status s = dtype_is_8bit_float(g.in_dtype) && dequantizes(ctx.spec)
                 ? Status()
                 : check_transpose_supported(g.in_dtype, false, g.in_dtype, g.out_dtype);
  if (!s.ok()) {
    ctx.problems.add(Errc::plan, "", first->name, s.message());
    ok = false;
  }
  g.experts = experts;
  g.block = first->shape[0];
  g.rows = first->shape[1];
  g.ok = ok;
}

// to_hf: the stacked input is [N, R, C] with C a multiple of the slot count.
void validate_whole(PlanContext& ctx, StackGroup& g) {
  const TensorInfo& t = ctx.input.info(g.whole->ref);
  const unsigned slots = g.rule->slots;
  if (t.shape.size() != 3) {
    ctx.problems.add(Errc::plan, "", t.name,
                     "stacked expert tensor must be 3-D [E, R, C], has shape " +
                         shape_text(t.shape));
    return;
  }
  if (t.shape[2] % slots != 0) {
    ctx.problems.add(Errc::plan, "", t.name,
                     "last axis of " + shape_text(t.shape) + " does not split into " +
                         std::to_string(slots) + " equal blocks");
    return;
  }
  g.in_dtype = t.dtype;
  g.out_dtype = ctx.options.expert_dtype.value_or(t.dtype);
  Status s = check_transpose_supported(g.in_dtype, false, g.in_dtype, g.out_dtype);
  if (!s.ok()) {
    ctx.problems.add(Errc::plan, "", t.name, s.message());
    return;
  }
  if (t.shape[0] > MAX_EXPERTS) {
    ctx.problems.add(Errc::plan, "", t.name,
                     "stacked expert tensor " + shape_text(t.shape) + " has more than " +
                         std::to_string(MAX_EXPERTS) + " experts, which shardshift does not take");
    return;
  }
  g.experts = t.shape[0];
  g.rows = t.shape[1];
  g.block = t.shape[2] / slots;
  g.ok = true;
}

// from_hf: a layer whose experts have pieces of one stack and not one piece of the other (all
// 16 down_proj gone, say) would convert into a layer without that stacked tensor. validate_pieces
// sees only the pieces a stack has, so the absent stack is reported here, with the pieces the
// adapter's table gives it. (to_hf's whole tensors: check_expert_layers.)
void report_half_layer(PlanContext& ctx, const std::string& layer, StackGroup& present) {
  if (present.whole)
    return;
  const unsigned missing_slots = present.rule->slots == 2 ? 1 : 2;
  std::string missing;
  for (const Rule& r : ctx.spec.rules)
    if (r.action == RuleAction::stack_piece && r.slots == missing_slots)
      missing += (missing.empty() ? "" : " and ") + piece_name(&r);
  std::string has;
  for (const std::string& name : present.slot_names)
    has += (has.empty() ? "" : " and ") + name;
  ctx.problems.add(Errc::plan, "", "",
                   printable(layer) + ": its experts have " + has + " (for '" +
                       printable(present.output) + "') but no " + missing +
                       " at all; every MoE layer needs both stacks, and the output would lack "
                       "one; convert a checkpoint that has every expert's pieces");
  present.ok = false;
}

// A layer's gate-and-up stack (two slots) and down stack (one slot) describe one MLP: from_hf
// pieces [I, H] and [H, I]; to_hf inputs [E, H, 2I] and [E, I, H]. Their sizes must agree.
void check_layer_pairs(PlanContext& ctx) {
  std::map<std::string, std::pair<StackGroup*, StackGroup*>> by_layer;
  for (auto& [key, g] : ctx.stacks)
    (g.rule->slots == 2 ? by_layer[g.layer].first : by_layer[g.layer].second) = &g;
  for (auto& [layer, pair] : by_layer) {
    auto [up, down] = pair;
    if (!up || !down) {
      report_half_layer(ctx, layer, up ? *up : *down);
      continue;
    }
    if (!up->ok || !down->ok)
      continue;
    if (up->experts == down->experts && up->block == down->rows && up->rows == down->block)
      continue;
    auto name = [&](const StackGroup* g) {
      return g->whole ? "'" + printable(g->whole->input_name) + "'"
                      : "'" + printable(g->output) + "'";
    };
    ctx.problems.add(
        Errc::plan, "", "",
        printable(layer) + ": the expert sizes of " + name(up) + " (" +
            std::to_string(up->experts) + " experts, " + piece_name(up->rule) + " blocks of " +
            std::to_string(up->block) + " x " + std::to_string(up->rows) + ") and " + name(down) +
            " (" + std::to_string(down->experts) + " experts, " + std::to_string(down->block) +
            " x " + std::to_string(down->rows) + ") disagree" +
            (ctx.spec.direction == Direction::to_hf
                 ? ep_shard_part_hint(up->rows, up->block, down->rows, down->block)
                 : ""));
    up->ok = down->ok = false;
  }
}

// The second sharding (--ep-shard-size S) keeps rows [k * R / S, (k + 1) * R / S) of each
// stacked output's axis 1 (H for gate_and_up, I for down): refuse an R that S does not divide.
void check_ep_rows(PlanContext& ctx) {
  const uint64_t n = ctx.options.ep_shard_size;
  if (n <= 1)
    return;
  for (auto& [key, g] : ctx.stacks)
    if (g.ok && !g.whole && g.rows % n != 0) {
      ctx.problems.add(Errc::plan, "", g.output,
                       "axis 1 of size " + std::to_string(g.rows) + " does not split evenly into " +
                           std::to_string(n) +
                           " shards (--ep-shard-size); shardshift writes no partial rows");
      g.ok = false;
    }
}

} // namespace

void group_stacks(PlanContext& ctx) {
  for (const Classified& c : ctx.classified) {
    if (c.action == RuleAction::unstack) {
      StackGroup& g = ctx.stacks[c.input_name];
      g.whole = &c;
      g.layer = c.layer;
      g.rule = c.rule;
      continue;
    }
    if (c.action != RuleAction::stack_piece)
      continue;
    const std::optional<uint64_t> e = expert_index(c.expert);
    if (!e) {
      ctx.problems.add(Errc::plan, "", c.input_name,
                       "expert index '" + c.expert + "' is too large (shardshift takes at most " +
                           std::to_string(MAX_EXPERTS) + " experts per layer)");
      continue;
    }
    StackGroup& g = ctx.stacks[c.output];
    g.output = c.output;
    g.layer = c.layer;
    if (!g.rule || c.rule->slot == 0)
      g.rule = c.rule; // any rule of the stack gives the slot count; slot 0 names it
    g.slot_names.resize(c.rule->slots, "piece");
    g.slot_names[c.rule->slot] = piece_name(c.rule);
    std::vector<const Classified*>& slots = g.pieces[*e];
    slots.resize(c.rule->slots, nullptr);
    const Classified*& slot = slots[c.rule->slot];
    if (slot)
      ctx.problems.add(Errc::plan, "", c.input_name,
                       c.layer + ": expert " + std::to_string(*e) + " already has its " +
                           piece_name(c.rule) + " in '" + printable(slot->input_name) + "'");
    else
      slot = &c;
  }
}

namespace {

void check_expert_count(PlanContext& ctx) {
  for (auto& [name, g] : ctx.stacks) {
    if (!g.whole || !g.ok)
      continue;
    const auto expected = model_expert_count(ctx, g.whole->input_name);
    if (!expected || g.experts == expected->count)
      continue;
    ctx.problems.add(Errc::plan, "", g.whole->input_name,
                     expert_count_problem(g.experts, *expected));
    g.ok = false;
  }
}

// to_hf: the reference splits gate_and_up_projs [E, H, 2I] at config.json's I, whatever the
// tensor's last axis, and passes down_projs [E, I, H] through unsplit when its axis 1 is not I.
// Where config.json does not give I, its config class's default stands in. shardshift splits at
// the tensor's own middle: where the two disagree, refused.
void check_expert_size(PlanContext& ctx) {
  const std::string_view key = ctx.spec.config_expert_size;
  if (key.empty())
    return;
  if (ctx.input.config_not_counts.count(key)) // no whole number: read_config_facts said so
    return;
  const auto given = ctx.input.config_counts.find(key);
  const bool said = given != ctx.input.config_counts.end();
  if (!said && ctx.spec.config_expert_size_default == 0)
    return;
  const uint64_t size = said ? given->second : ctx.spec.config_expert_size_default;
  const auto& side = ctx.input.other_files;
  const bool has_config = std::find(side.begin(), side.end(), "config.json") != side.end();
  const std::string whose =
      said ? "config.json's " + std::string(key) + " is " + std::to_string(size)
           : (has_config              ? "config.json gives no " + std::string(key)
              : ctx.input.single_file ? std::string("IN is one file, and no config.json is read")
                                      : std::string("there is no config.json")) +
                 ", which the reference's " + std::string(ctx.spec.model) +
                 " config then takes as " + std::to_string(size);
  for (auto& [name, g] : ctx.stacks) {
    if (!g.whole || !g.ok)
      continue;
    const bool gate_up = g.rule->slots == 2;
    const uint64_t i = gate_up ? g.block : g.rows;
    if (i == size)
      continue;
    ctx.problems.add(Errc::plan, "", g.whole->input_name,
                     "has an expert intermediate size of " + std::to_string(i) + ", but " + whose +
                         (gate_up ? ": the reference's to_hf would split it at " +
                                        std::to_string(size) + " columns"
                                  : ": the reference's to_hf would pass it through unsplit") +
                         (said ? "; make config.json agree with the tensors"
                               : "; give \"" + std::string(key) + "\": " + std::to_string(i) +
                                     " in config.json"));
    g.ok = false;
  }
}

} // namespace

// to_hf: each expert tensor holds the model's experts, as many as config.json says. The
// reference's to_hf splits a stacked tensor only when its axis 0 is that count and raises
// otherwise, and writes gemma's per_expert_scale with that count; without the check, one
// expert-parallel rank's export (experts 8 to 15, say) would come out as experts 0 to 7 of a
// checkpoint whose router still has them all. Where config.json does not give the count, the
// layer's router does: its axis 0 is the model's expert count in every rank's export.
std::optional<ExpertCount> model_expert_count(const PlanContext& ctx, std::string_view name) {
  const std::string_view key = ctx.spec.config_expert_count;
  if (key.empty())
    return std::nullopt;
  if (auto count = ctx.input.config_counts.find(key); count != ctx.input.config_counts.end())
    return ExpertCount{count->second, "config.json's " + std::string(key) + " is " +
                                          std::to_string(count->second)};
  const size_t experts = name.rfind(".experts.");
  if (ctx.spec.expert_router.empty() || experts == std::string_view::npos)
    return std::nullopt;
  const std::string router = std::string(name.substr(0, experts)).append(ctx.spec.expert_router);
  const auto ref = ctx.input.find(router);
  if (!ref || ctx.input.info(*ref).shape.size() != 2)
    return std::nullopt;
  const uint64_t rows = ctx.input.info(*ref).shape[0];
  return ExpertCount{rows, "its layer's router '" + printable(router) + "' has " +
                               std::to_string(rows) + " rows, and config.json gives no " +
                               std::string(key)};
}

std::string expert_count_problem(uint64_t held, const ExpertCount& expected) {
  return "holds " + std::to_string(held) + " experts, but " + expected.said +
         " (one expert-parallel rank's export?): the reference's to_hf refuses such a tensor, or "
         "writes the model's count beside it, and converting it would number its experts from 0 "
         "whatever their place in the model; convert the whole export";
}

void validate_stacks(PlanContext& ctx) {
  // One expert count for the whole model, as the reference's n_routed_experts: the highest
  // index seen, plus one. A layer missing its last experts is then reported, not shrunk.
  uint64_t experts = 0;
  for (const auto& [key, g] : ctx.stacks)
    if (!g.pieces.empty())
      experts = std::max(experts, g.pieces.rbegin()->first + 1);
  // The reference stacks the count config.json gives, where it gives one: with fewer, it stacks
  // each layer's first experts more than once; with more, it fails.
  const std::string_view count_key = ctx.spec.config_expert_count;
  if (const auto said = ctx.input.config_counts.find(count_key);
      experts > 0 && !count_key.empty() && said != ctx.input.config_counts.end() &&
      said->second != experts)
    ctx.problems.add(Errc::plan, "", "",
                     "the checkpoint's experts are 0-" + std::to_string(experts - 1) + " (" +
                         std::to_string(experts) + "), but config.json's " +
                         std::string(count_key) +
                         " is " + std::to_string(said->second) +
                         ": the reference stacks that many; make config.json agree with the "
                         "checkpoint");
  for (auto& [key, g] : ctx.stacks) {
    if (g.whole)
      validate_whole(ctx, g);
    else
      validate_pieces(ctx, g, experts);
  }
  check_layer_pairs(ctx);
  check_ep_rows(ctx);
  check_expert_count(ctx);
  check_expert_size(ctx);
}

void emit_stack(PlanContext& ctx, const Classified& c) {
  auto it = ctx.stacks.find(c.output);
  if (it == ctx.stacks.end() || !it->second.ok || it->second.emitted)
    return;
  StackGroup& g = it->second;
  g.emitted = true;
  const unsigned slots = g.rule->slots;
  const PlanOptions& o = ctx.options;
  OutputTensor t;
  t.name = g.output;
  t.op = OpKind::stack;
  t.dtype = g.out_dtype;
  // Expert-parallel export (semantics 14.7): this rank's experts, and with the second sharding
  // its rows of axis 1 (= columns of every piece); the other ranks' pieces are not read.
  std::tie(t.expert_begin, t.experts) = ep_range(g.experts, o.ep_size, o.ep_rank);
  // A rank with no expert (fewer experts than ranks): the reference skips every piece and writes
  // no stacked tensor at all (14.7.1).
  if (t.experts == 0)
    return;
  t.cols = g.rows / o.ep_shard_size;
  t.col_begin = o.ep_shard_rank * t.cols;
  t.shape = {t.experts, t.cols, slots * g.block};
  bool dequantized = false;
  for (const auto& [e, pieces] : g.pieces) {
    if (e < t.expert_begin || e >= t.expert_begin + t.experts)
      continue;
    for (unsigned s = 0; s < slots; ++s) {
      StackPiece p{pieces[s]->ref, e - t.expert_begin, s * g.block, std::nullopt};
      if (auto it = ctx.block_scales.find(pieces[s]->input_name); it != ctx.block_scales.end()) {
        p.scale = it->second->ref;
        dequantized = true;
      }
      t.pieces.push_back(p);
    }
  }
  std::string names;
  for (unsigned s = 0; s < slots; ++s)
    names += (s ? ", " : "") + g.slot_names[s];
  const bool ep = o.ep_size > 1 || o.ep_shard_size > 1;
  t.note = "stack of " + names + " of " +
           (ep ? "experts [" + std::to_string(t.expert_begin) + ", " +
                     std::to_string(t.expert_begin + t.experts) + ") of " +
                     std::to_string(g.experts) + ", rows [" + std::to_string(t.col_begin) + ", " +
                     std::to_string(t.col_begin + t.cols) + ") of " + std::to_string(g.rows)
               : std::to_string(g.experts) + " experts") +
           (dequantized ? ", dequantized" : "") + ", transposed, from " + g.layer;
  emit_tensor(ctx, std::move(t));
}

void emit_unstack(PlanContext& ctx, const Classified& c) {
  auto it = ctx.stacks.find(c.input_name);
  if (it == ctx.stacks.end() || !it->second.ok || it->second.whole != &c)
    return;
  const StackGroup& g = it->second;
  for (uint64_t e = 0; e < g.experts; ++e)
    for (unsigned s = 0; s < g.rule->slots; ++s) {
      std::string name(s == 0 ? c.output : c.extra);
      const std::string marker = "{expert}";
      for (size_t at = name.find(marker); at != std::string::npos; at = name.find(marker))
        name.replace(at, marker.size(), std::to_string(e));
      OutputTensor t;
      t.name = std::move(name);
      t.op = OpKind::transpose;
      t.source = c.ref;
      t.dtype = g.out_dtype;
      t.expert_begin = e;
      t.experts = 1;
      t.col_begin = s * g.block;
      t.cols = g.block;
      t.shape = {g.block, g.rows};
      t.note = "transpose of expert " + std::to_string(e) + ", columns [" +
               std::to_string(t.col_begin) + ", " + std::to_string(t.col_begin + t.cols) + ") of " +
               c.input_name;
      if (quantized_output(ctx, t.name))
        emit_quantized(ctx, std::move(t));
      else
        emit_tensor(ctx, std::move(t));
    }
}

} // namespace shardshift
