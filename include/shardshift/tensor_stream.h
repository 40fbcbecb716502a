// tensor_stream.h: converted tensors handed to a program one by one, without writing files.
//
// A trainer that refits an inference server, or a server that loads weights over its own
// transport, wants the converted tensors themselves, not a directory of shards. This call makes
// the same plan convert() makes and produces the same bytes by the same per-chunk operations,
// but hands each tensor's bytes to a callback in bounded pieces instead of writing them:
//
//   shardshift::StreamOptions stream;
//   stream.max_piece_bytes = 16 << 20;
//   auto done = shardshift::for_each_converted_tensor(
//       "ckpt-hf", {}, stream,
//       [&](const shardshift::ConvertedTensor& t, std::span<const std::byte> piece,
//           uint64_t offset) { return send(t.name, offset, piece); });
//
// Order: tensors come in the order a converted directory holds them (its files in plan order,
// each file's tensors in data order), and each tensor's pieces in increasing offset, back to back:
// the pieces of one tensor concatenated are exactly its bytes in a file convert() writes. A tensor
// of zero bytes gets one call with an empty piece.
//
// Memory: a pass-through tensor's pieces are views of the mapped input (never copied) whose pages
// are released (MADV_DONTNEED) once handed out; a transformed tensor's pieces come from one buffer
// of about max_piece_bytes (at least one output row of an expert), reused for the next chunk. So
// the memory held is a few pieces whatever the model's size.
// Input that changes underneath: a view is handed out under guard_mapped_access() (mapped_file.h),
// its pages read first, so an input file that shrank is reported as Errc::file_changed; should it
// shrink while the callback reads the view, the call also ends with Errc::file_changed, but that
// callback invocation is abandoned mid-way (siglongjmp): objects it created are not destroyed.
// Thread-safety: the callback is called from the calling thread, one call at a time; concurrent
// calls to for_each_converted_tensor() with different callbacks are independent.
#pragma once

#include "shardshift/dtype.h"
#include "shardshift/plan.h"
#include "shardshift/status.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string_view>

namespace shardshift {

struct StreamOptions {
  /// No piece handed to the callback is longer than this (bytes). REQUIRES: > 0.
  uint64_t max_piece_bytes = uint64_t{64} << 20;
  /// When set and true, the walk stops before the next piece with Errc::interrupted.
  const std::atomic<bool>* cancel = nullptr;
};

/// One output tensor, as the callback sees it. The views stay valid for the duration of the
/// for_each_converted_tensor() call (they point into its plan).
struct ConvertedTensor {
  std::string_view name;           ///< its name in the converted checkpoint
  DType dtype = DType::BF16;       ///< its dtype there
  std::span<const uint64_t> shape; ///< its shape there
  uint64_t size = 0;               ///< bytes in all (the pieces' lengths add up to this)
  OpKind op = OpKind::copy;        ///< how its bytes were produced
  std::string_view file;           ///< the output file a conversion would put it in
};

/// Called for each piece of each tensor: `piece` holds the tensor's bytes [offset, offset +
/// piece.size()), valid only during the call (copy what must outlive it). Return false to stop
/// the walk: for_each_converted_tensor() then returns at once, successfully, with
/// StreamSummary::complete false.
using TensorPieceCallback = std::function<bool(const ConvertedTensor& tensor,
                                               std::span<const std::byte> piece, uint64_t offset)>;

struct StreamSummary {
  uint64_t tensors = 0;  ///< tensors whose last piece was handed out
  uint64_t bytes = 0;    ///< bytes handed out
  bool complete = false; ///< every tensor was handed out (the callback never returned false)
  std::string adapter;   ///< the adapter the plan used ("diffusion_gemma", "gemma4_moe")
  Direction direction = Direction::from_hf;
};

/// Opens `input` (a checkpoint, as convert() takes it), plans its conversion with `plan` (as
/// convert() does: same adapter and direction detection, same checks, same errors) and hands
/// every output tensor's bytes to `callback` in pieces of at most `stream.max_piece_bytes`,
/// without writing anything. Side files (config.json...) and the index are not part of the
/// stream; plan_conversion() lists them. Errors: those of Checkpoint::open() and make_plan();
/// Errc::file_changed when an input file shrinks while being read; Errc::interrupted on cancel;
/// Errc::invalid_argument when max_piece_bytes is 0.
Result<StreamSummary> for_each_converted_tensor(const std::filesystem::path& input,
                                                const PlanOptions& plan,
                                                const StreamOptions& stream,
                                                const TensorPieceCallback& callback);

} // namespace shardshift
