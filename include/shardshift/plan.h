// plan.h: the complete description of a conversion's output, computed before any tensor byte is
// read. Every output file, every tensor in it with its source, operation, offset and size.
// Thread-safety: a Plan is an immutable value once make_plan() returns it.
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/dtype.h"
#include "shardshift/profiler.h"
#include "shardshift/status.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shardshift {

enum class Direction { from_hf, to_hf };
const char* direction_name(Direction d);

/// What produces an output tensor's bytes.
enum class OpKind {
  copy,      ///< the source's bytes unchanged (zero-copy; also the tied-head alias)
  transpose, ///< swap the last two axes of [E, A, B], optionally fold a scale, cast, slice (EP)
  ones,      ///< a vector of ones (the per-expert scale written by to_hf)
  stack,     ///< many 2-D input pieces, each transposed into its place of an [N, R, C] output
  dequant,   ///< a 2-D [R, C] weight times its block scales (FP8 block dequantization), cast
  quantize,  ///< to_hf --quantize fp8: a 2-D matrix (a weight, or one expert's transposed
             ///< column block as `transpose`) as F8_E4M3 codes of its 128 x 128 block scales
  quantize_scale, ///< the F32 block scales of the `quantize` output of the same source
};
const char* op_name(OpKind op);

/// One input matrix of a `stack` output (docs/semantics.md section 14): the 2-D piece [A, R] is
/// transposed into out[index][:, col : col + A], cast to the output dtype. A piece may live in any
/// input shard. A piece with a block scale is dequantized on the way (semantics 15.3: each
/// element times its 128 x 128 block's scale, in float32, then rounded once to the output dtype),
/// so one stacked output can mix operations piece by piece.
struct StackPiece {
  TensorRef source{};
  uint64_t index = 0; ///< position along the output's axis 0 (expert expert_begin + index)
  uint64_t col = 0;   ///< first column of the output's last axis that this piece fills
  std::optional<TensorRef> scale; ///< the piece's [ceil(A/128), ceil(R/128)] block scale
};

struct OutputTensor {
  std::string name;
  DType dtype = DType::BF16;
  std::vector<uint64_t> shape;
  uint64_t size = 0;   ///< bytes
  uint64_t offset = 0; ///< within its file's data section
  uint32_t file = 0;   ///< index into Plan::files
  OpKind op = OpKind::copy;
  TensorRef source{};             ///< copy / transpose / dequant: the input tensor
  std::optional<TensorRef> scale; ///< transpose: the folded per-expert scale; dequant: the
                                  ///< [ceil(R/128), ceil(C/128)] block scale
  // transpose: experts [expert_begin, expert_begin + experts) and input columns
  // [col_begin, col_begin + cols) of the [E, A, B] source are kept. stack: the model's experts
  // [expert_begin, expert_begin + experts) and rows [col_begin, col_begin + cols) of axis 1
  // (= columns of every piece) are kept (expert-parallel export; the whole tensor otherwise).
  uint64_t expert_begin = 0, experts = 0, col_begin = 0, cols = 0;
  /// stack: the pieces, sorted by (index, col); together they cover the [N, R, C] output exactly.
  std::vector<StackPiece> pieces;
  std::string
      note; ///< for humans: "alias of model.embed_tokens.weight", "fold router.per_expert_scale"
};

struct OutputFile {
  std::string name;              ///< "model-00001-of-00003.safetensors" or "model.safetensors"
  std::vector<uint32_t> tensors; ///< indices into Plan::tensors, in data order
  std::string header;            ///< the exact header bytes (length prefix + JSON + padding)
  uint64_t data_size = 0;
  uint64_t size() const { return header.size() + data_size; }
};

struct Plan {
  std::string adapter; ///< "diffusion_gemma" or "gemma4_moe"
  Direction direction = Direction::from_hf;
  std::vector<OutputTensor> tensors;
  std::vector<OutputFile> files;
  bool write_index = false; ///< more than one file
  std::map<std::string, std::string> weight_map;
  uint64_t total_tensor_bytes = 0;     ///< index total_size
  std::vector<std::string> side_files; ///< copied verbatim (config.json, tokenizer files)
  uint64_t dropped = 0;                ///< input tensors not written (encoder, lm_head, scales)
  uint64_t excluded = 0;               ///< removed by the exclusion pattern
  uint64_t copy_bytes = 0, transform_bytes = 0, ones_bytes = 0; ///< output bytes by operation
  uint64_t restored = 0; ///< to_hf --base: tensors copied back from the base (semantics 16)
  /// to_hf without --base: what the Hugging Face checkpoint had that this output lacks, one entry
  /// per drop rule of the family's from_hf adapter, in words ("model.encoder.* (vision tower,
  /// ...)"); empty when from_hf drops nothing or a base was given.
  std::vector<std::string> not_restored;
};

struct PlanOptions {
  std::string adapter;                     ///< "" = detect (config.json model_type, then key names)
  std::optional<Direction> direction;      ///< nullopt = detect from key names
  uint64_t max_shard_size = 5'000'000'000; ///< decimal 5 GB, like Hugging Face
  /// --dtype: the expert outputs' dtype. nullopt: keep_dtype says (from_hf by default casts to
  /// the dtype the reference takes from config.json, semantics 1.1.14 and 14.2.7).
  std::optional<DType> expert_dtype;
  bool keep_dtype = false; ///< --dtype keep given: the fold's and the input's dtypes, never cast
  std::optional<DType> scale_dtype; ///< to_hf: dtype of the emitted ones (default: down's dtype)
  std::optional<std::string> exclude =
      std::string(".*_extra_state.*"); ///< to_hf, Python re.match (docs/semantics.md 2.6, 7)
  bool tied_head = true;               ///< from_hf diffusion_gemma: emit lm_head.weight alias
  unsigned ep_size = 1, ep_rank = 0;   ///< expert-parallel export (from_hf)
  unsigned ep_shard_size = 1, ep_shard_rank = 0;
  bool align_for_reflink = true; ///< pad headers so the largest copied run keeps its page offset
  bool copy_side_files = true;
  /// to_hf deepseek_v3: write the weights the adapter names as F8_E4M3 with real 128 x 128
  /// block scales (--quantize fp8, docs/semantics.md 15.7).
  bool quantize_fp8 = false;
  /// to_hf: the original Hugging Face checkpoint whose keys from_hf dropped (--base, semantics
  /// 16); open_for_plan() attaches it. Empty: none.
  std::filesystem::path base;
};

/// Names of every model with an adapter, as PlanOptions::adapter (and --adapter) take them, for
/// help texts and errors: "diffusion_gemma", "gemma4_moe", "qwen3_moe", "deepseek_v3".
std::vector<std::string_view> adapter_models();

/// Validates `input` against the adapter and computes the whole output. Reports every problem
/// (missing expert pieces, shape or dtype disagreements, missing embedding...) before failing.
/// Does no file I/O. Each planning pass is recorded as a `plan` span of `profiler` when given.
Result<Plan> make_plan(const Checkpoint& input, const PlanOptions& options,
                       Profiler* profiler = nullptr);

/// Opens `input` for make_plan(): Checkpoint::open(), then, when options.base is set, the base
/// attached to it (Checkpoint::attach_base). --base on a from_hf conversion (forced, or detected
/// from the key names) is refused before the base is opened (Errc::invalid_argument).
Result<Checkpoint> open_for_plan(const std::filesystem::path& input, const PlanOptions& options,
                                 uint64_t memory_limit = 0);

} // namespace shardshift
