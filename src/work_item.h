// work_item.h: the unit that flows through the pipeline (pipeline.h). The emitter cuts the plan
// into items in output order; the transform stage fills the buffers of transform and ones items;
// the write stage moves every item's bytes to its output file; then what it held is given back.
// Thread-safety: an item belongs to one stage at a time (TBB hands it over).
#pragma once

#include "shardshift/checkpoint.h"
#include "shardshift/plan.h"

#include "dequant.h"
#include "quantize.h"
#include "transpose.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace shardshift {

struct FillingFile; // write_stage.h

enum class ItemKind {
  open_file,  ///< start plan.files[file]: write its header
  copy_run,   ///< (a piece of) a run of pass-through tensors back to back in one input shard
  transform,  ///< a chunk of an expert tensor (whole experts, or rows of one expert) or of a
              ///< dequantized weight (rows)
  ones,       ///< a vector of ones
  close_file, ///< finish plan.files[file]: check its size, fsync, rename
};

/// A range of one input shard's file.
struct InputRange {
  const Shard* shard = nullptr;
  uint64_t offset = 0, length = 0;
};

/// One transpose of a stacked chunk (OpKind::stack): a piece's rows into its columns of the
/// item's buffer, `dst_offset` bytes in. args.dst is set from the buffer when the item runs.
struct StackPart {
  const Shard* shard = nullptr; ///< the piece's shard (for populate and the SIGBUS guard)
  TransposeArgs args;
  uint64_t dst_offset = 0;
  /// A piece with a block scale, or a chunk of a dequant tensor (semantics 15): `dq` replaces
  /// `args` (dq.dst is set from the buffer, dq.scales from a copy of the scale tensor, which may
  /// lie in another shard: `scale_shard`, `scale_bytes` bytes at dq.scales as planned).
  bool dequant = false;
  DequantArgs dq;
  const Shard* scale_shard = nullptr;
  uint64_t scale_bytes = 0;
};

struct Item {
  ItemKind kind = ItemKind::open_file;
  /// Whether the item carries bytes of its file's data (not its open or close).
  bool is_data() const { return kind != ItemKind::open_file && kind != ItemKind::close_file; }
  uint32_t file = 0;
  const OutputTensor* tensor = nullptr; ///< first tensor of a copy run; the tensor of a chunk
  const Shard* shard = nullptr;         ///< copy_run / transform: the input shard
  uint64_t in_offset = 0;               ///< copy_run: file offset of the range in the shard
  uint64_t length = 0;                  ///< copy_run: range length; transform/ones: output bytes
  TransposeArgs args;                   ///< transform
  std::byte* buffer = nullptr;          ///< transform / ones: the output bytes (from BufferPool)
  uint64_t release_offset = 0, release_length = 0; ///< input range done once this is written
  bool on_gpu = false;                             ///< transform: run by the CUDA stage
  /// transform of a stack tensor: its transposes (CPU only), and the input ranges done once the
  /// item is written, in any shards (the write stage releases them beside release_offset).
  std::vector<StackPart> parts;
  std::vector<InputRange> releases;
  /// transform of a quantize / quantize_scale tensor (semantics 15.7, CPU only): rows of its
  /// codes or of its block scales; args.dst is set from the buffer when the item runs.
  std::optional<QuantizeArgs> quantize;
  std::string quantize_source; ///< the input tensor's name, for errors
  Status status;
  uint64_t written = 0; ///< bytes the write stage counted for it (the header's, for open_file)
  /// The file this item belongs to, when it is filled at its offsets (emitter.h): its place,
  /// fill_offset, was fixed when the item was cut, and the step after the write stage puts the
  /// bytes there (WriteStage::fill). Open and close items carry it too.
  std::shared_ptr<FillingFile> fill;
  uint64_t fill_offset = 0;
  uint64_t fill_seq = 0; ///< with `fill`: its place among the file's items in cut order
  /// With `fill`: the first item (fill_seq) that read the input this one releases; the input
  /// waits until every item from that one to this is given back (release_order.h).
  uint64_t release_after = 0;

  /// The input this item leaves done once it is written: release_offset and `releases`.
  std::vector<InputRange> input_ranges() const {
    std::vector<InputRange> ranges;
    if (release_length)
      ranges.push_back({shard, release_offset, release_length});
    ranges.insert(ranges.end(), releases.begin(), releases.end());
    return ranges;
  }

  /// Drops the input this item read from the mappings (input_ranges()), once it is written;
  /// returns the bytes. Safe whatever still runs: a page read again faults back in (and stays:
  /// where lanes share a file, ReleaseOrder decides when).
  uint64_t release_input() const { return release_ranges(input_ranges()); }

  static uint64_t release_ranges(const std::vector<InputRange>& ranges) {
    uint64_t bytes = 0;
    for (const InputRange& r : ranges) {
      r.shard->file->release(r.offset, r.length);
      bytes += r.length;
    }
    return bytes;
  }
};

} // namespace shardshift
