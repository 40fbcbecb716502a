// planner.h: planning as a list of named passes over one context (the route from an input key to
// an output tensor at an offset in a file). make_plan() in planner.cpp is the list; each pass
// lives in a plan_*.cpp file, fits on one screen, records its own profiler span and is unit-tested
// on its own (tests/planner_test.cpp).
//
//   classify_keys        every input key, in data order, through the adapter's rules
//   check_adapter_fits_keys  the adapter converts some key, and --direction is the keys' own
//   group_expert_pieces  the expert pieces (gate_up, down, scale) of each layer, duplicates refused
//   check_expert_layers  to_hf: a MoE layer with some native expert tensors has them all
//                        (plan_experts.cpp)
//   validate_groups      all pieces present, shapes and dtypes agree, the EP split is even
//   pair_block_scales    each FP8 block scale with its weight, shapes checked; FP8 weights
//                        without one refused (plan_dequant.cpp, semantics 15)
//   group_stacks         per-expert pieces of each stacked output (from_hf), or the stacked
//                        inputs to split (to_hf), duplicates refused (plan_stack.cpp)
//   validate_stacks      every expert and piece present, one shape and dtype per stack
//   emit_output_tensors  output tensors in input order (tied head, ones, --exclude, FP8
//                        quantization of to_hf weights: plan_quantize.cpp, semantics 15.7)
//   restore_base_keys    to_hf: the keys from_hf dropped, copied back from --base after the
//                        converted tensors; without a base, the note of what is missing
//                        (plan_base.cpp, semantics 16)
//   check_unique_names   no output name twice, no size past 64 bits
//   cut_files            Hugging Face's greedy split into files, copies first in each file
//   lay_out_headers      offsets and the exact header bytes of each file (page alignment)
//   summarize            weight map, totals by operation, side files
//
// Passes never do file I/O: everything they read is in the opened Checkpoint. Problems are
// collected in the context; make_plan fails with all of them after the checking passes.
// Thread-safety: a PlanContext is used by one thread.
#pragma once

#include "shardshift/plan.h"
#include "shardshift/problems.h"
#include "shardshift/profiler.h"

#include "adapter.h"
#include "key_pattern.h"

#include <map>
#include <optional>
#include <regex>
#include <string>
#include <vector>

namespace shardshift {

/// What the rules decided for one input key.
struct Classified {
  TensorRef ref;
  std::string input_name;
  RuleAction action = RuleAction::rename; ///< rename = pass through under `output`
  std::string output;                     ///< the output name (the message for `reject`)
  std::string extra;                      ///< expert_down to_hf: the ones tensor's name
  std::string layer;                      ///< expert pieces: "layers.N"
  const Rule* rule = nullptr;             ///< the deciding rule (not set for drop, reject,
                                          ///< expert_scale, nor for a key no rule claims)
  std::string expert;                     ///< stack_piece: the expert index as written
};

/// One stacked output tensor and what makes it (set by group_stacks, checked by validate_stacks).
/// from_hf: pieces[expert][slot] are the per-expert inputs; to_hf: `whole` is the stacked input.
struct StackGroup {
  std::string output; ///< from_hf: the stacked tensor's name
  std::string layer;  ///< the rule's group 1 (layer path or number), to pair gate_up and down
  const Rule* rule = nullptr;
  std::map<uint64_t, std::vector<const Classified*>> pieces; ///< expert -> slot -> piece
  const Classified* whole = nullptr;                         ///< to_hf: the [N, R, C] input
  std::vector<std::string> slot_names;                       ///< from_hf: "gate_proj", ...
  bool ok = false;                                           ///< validate_stacks found no problem
  uint64_t experts = 0;                                      ///< N
  uint64_t rows = 0;  ///< R: rows of each expert's output matrix (from_hf: piece axis 1)
  uint64_t block = 0; ///< A: columns per slot (from_hf: piece axis 0)
  DType in_dtype = DType::BF16, out_dtype = DType::BF16;
  bool emitted = false; ///< from_hf: written at its first piece in data order
};

/// The pieces of one layer's experts (pointers into PlanContext::classified).
struct ExpertGroup {
  const Classified* gate_up = nullptr;
  const Classified* down = nullptr;
  const Classified* scale = nullptr;
};

/// What a valid group turns into (set by validate_groups).
struct ExpertOut {
  DType gate_dtype = DType::BF16, down_dtype = DType::BF16, ones_dtype = DType::BF16;
  uint64_t expert_begin = 0, experts = 0; ///< this rank's experts (EP)
};

struct PlanContext {
  PlanContext(const Checkpoint& in, const PlanOptions& opts, const AdapterSpec& adapter)
      : input(in), options(opts), spec(adapter) {}

  const Checkpoint& input;
  const PlanOptions& options;
  const AdapterSpec& spec;
  std::optional<KeyPattern> exclude; ///< compiled --exclude (re.match) when the adapter honours it
  /// read_config_facts: the dtype the reference adapter casts the expert outputs (and dequantized
  /// weights) to (spec.dtype_from_config), where --dtype does not say

  std::optional<DType> adapter_dtype;

  std::vector<Classified> classified; ///< every input key, in data order
  std::map<std::string, ExpertGroup> groups;
  std::map<std::string, ExpertOut> expert_out; ///< only groups without problems
  std::map<std::string, StackGroup> stacks;    ///< by output name (from_hf) or input name (to_hf)
  /// pair_block_scales: weight input name -> its block scale (only pairs without problems)
  std::map<std::string, const Classified*> block_scales;
  std::vector<std::vector<uint32_t>> file_tensors; ///< cut_files: tensor indices per file
  /// Output names --exclude removed: the output would have had them (restore_base_keys counts
  /// their layers as the output's).
  std::vector<std::string> excluded_names;
  ProblemList problems;
  Plan plan; ///< filled pass by pass
};

/// Input tensors in data order: shard by shard, offset by offset. Output follows this order so
/// the input is read front to back. Only the input's own shards (not an attached --base).
std::vector<TensorRef> data_order(const Checkpoint& input);
/// The attached --base's tensors in the same order (empty without one).
std::vector<TensorRef> base_order(const Checkpoint& input);
/// Each of `refs` (tensors of `ckpt`) through `spec`'s rules (classify_keys' rule walk).
std::vector<Classified> classify_refs(const AdapterSpec& spec, const Checkpoint& ckpt,
                                      const std::vector<TensorRef>& refs);

/// Checks the options that do not depend on the keys (EP ranks, --exclude) and compiles the
/// exclusion pattern into ctx.exclude. A bad option fails at once (Errc::invalid_argument).
Status check_options(PlanContext& ctx);

void classify_keys(PlanContext& ctx);
void check_adapter_fits_keys(PlanContext& ctx);
void group_expert_pieces(PlanContext& ctx);
void check_expert_layers(PlanContext& ctx);
void validate_groups(PlanContext& ctx);
void pair_block_scales(PlanContext& ctx);
/// Whether the adapter dequantizes 8-bit float weights with block scales (has a block_scale
/// rule): then pair_block_scales checks every such weight; otherwise they are cast like others.
bool dequantizes(const AdapterSpec& spec);
/// The dtype a dequantized weight or a stacked expert tensor is written in: --dtype, else the
/// adapter's default, else `input`.
/// The model's expert count, and where it comes from (for messages).
struct ExpertCount {
  uint64_t count = 0;
  std::string said; ///< "config.json's num_experts is 16", or the router's rows
};
/// to_hf: how many experts the expert tensor `name` must hold: config.json's
/// spec.config_expert_count, else the rows of its layer's router (spec.expert_router beside
/// `.experts.`); nullopt when neither says (or the adapter checks none).
std::optional<ExpertCount> model_expert_count(const PlanContext& ctx, std::string_view name);
/// The problem of an expert tensor holding `held` experts where `expected` says otherwise.
std::string expert_count_problem(uint64_t held, const ExpertCount& expected);

/// What the adapter takes from config.json, as its reference does: where it casts like its
/// reference (spec.dtype_from_config) and --dtype is not given, the dtype into ctx.adapter_dtype
/// (config_dtype, of the top level or of text_config as the spec says); a value shardshift cannot
/// write, or a top level and a text_config that could each be the reference's and differ, is a
/// problem that names them and --dtype. A config.json that is not JSON simdjson reads is a
/// problem where the adapter needs a value from it.
void read_config_facts(PlanContext& ctx);
/// The dtype config.json gives at `level` ("" or "text_config."): "dtype", else "torch_dtype", as
/// transformers keeps them; BF16 when neither is given (the reference's get_dtype(None,
/// torch.bfloat16)). nullopt, with a problem, for a value shardshift cannot write.
std::optional<DType> config_dtype(PlanContext& ctx, std::string_view level);
/// The dtype a stacked expert or a dequantized weight of dtype `input` is written in: --dtype,
/// else the adapter's (read_config_facts), else `input`.
DType converted_dtype(const PlanContext& ctx, DType input);
void group_stacks(PlanContext& ctx);
void validate_stacks(PlanContext& ctx);
/// emit_output_tensors' helpers for the stacking rules (plan_stack.cpp): the stacked output at
/// its first piece (from_hf), or every expert's matrices of a stacked input (to_hf).
void emit_stack(PlanContext& ctx, const Classified& c);
void emit_unstack(PlanContext& ctx, const Classified& c);
/// emit_output_tensors' helper for a pass-through weight with a block scale (plan_dequant.cpp).
void emit_dequant(PlanContext& ctx, const Classified& c);
/// Adds an output tensor unless --exclude removes it (then false); sets its size.
bool emit_tensor(PlanContext& ctx, OutputTensor t);
/// to_hf --quantize fp8 (plan_quantize.cpp, semantics 15.7): whether the output weight `name` is
/// written in FP8, and emit_tensor's replacement for it: `t` (a copy of a 2-D tensor or an
/// expert's transpose) becomes its F8_E4M3 codes and its `_scale_inv` block scales.
bool quantized_output(const PlanContext& ctx, std::string_view name);
void emit_quantized(PlanContext& ctx, OutputTensor t);
void emit_output_tensors(PlanContext& ctx);
void restore_base_keys(PlanContext& ctx);
void check_unique_names(PlanContext& ctx);
void cut_files(PlanContext& ctx);
Status lay_out_headers(PlanContext& ctx);
void summarize(PlanContext& ctx);

/// The page-alignment heuristic: the data-section start (mod 4096) that keeps the longest run of
/// input-contiguous copies at its input offset modulo 4096, so copy_file_range can share those
/// extents (reflink). nullopt when no run is worth it (< 4096 bytes) or when it would break the
/// data section's 8-byte alignment. `tensors` are one file's tensors with offsets assigned.
std::optional<uint64_t> reflink_alignment(const Checkpoint& input,
                                          const std::vector<OutputTensor>& all,
                                          const std::vector<uint32_t>& tensors);

/// The expert-parallel range [begin, begin + count) of rank `r` among `w` for `e` experts
/// (docs/semantics.md 1.2): the first e % w ranks get one expert more.
std::pair<uint64_t, uint64_t> ep_range(uint64_t e, uint64_t w, uint64_t r);

/// to_hf: where a layer's gate_and_up [E, A, 2B] and down [E, C, D] disagree as one part of a
/// from_hf --ep-shard-size S export does (D = A * S and B = C * S, S > 1), the sentence that says
/// so and what to do, to end the problem's message; "" otherwise.
std::string ep_shard_part_hint(uint64_t gate_up_rows, uint64_t gate_up_half, uint64_t down_rows,
                               uint64_t down_cols);

/// Records one pass as a plan-stage span named after it (when a profiler is given).
class PassTimer {
public:
  PassTimer(Profiler* profiler, const char* name)
      : profiler_(profiler), name_(name), t0_(profiler ? profiler->now() : 0) {}
  ~PassTimer() {
    if (profiler_)
      profiler_->record(Stage::plan, t0_, profiler_->now(), 0, name_);
  }
  PassTimer(const PassTimer&) = delete;
  PassTimer& operator=(const PassTimer&) = delete;

private:
  Profiler* profiler_;
  const char* name_;
  uint64_t t0_;
};

} // namespace shardshift
