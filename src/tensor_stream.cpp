// tensor_stream.cpp: for_each_converted_tensor(). The conversion's own parts, minus the writing:
// the plan says what each output tensor is, the Emitter cuts each output file into the same items
// the pipeline moves (copy runs, transform chunks, ones), and the TransformStage produces a
// chunk's bytes exactly as it does for convert(). What is left here is the bookkeeping that turns
// items (which follow output files) into pieces of tensors (which the callback wants).
#include "shardshift/tensor_stream.h"

#include "shardshift/checkpoint.h"
#include "shardshift/profiler.h"

#include "emitter.h"
#include "transform_stage.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace shardshift {

namespace {

// Walks one output file's tensors in data order while its items arrive, and hands their bytes to
// the callback. `k` is the tensor being handed out, `done` how many of its bytes already were.
class TensorWalk {
public:
  TensorWalk(const Checkpoint& input, const Plan& plan, const StreamOptions& options,
             const TensorPieceCallback& callback, StreamSummary& summary)
      : input_(input), plan_(plan), options_(options), callback_(callback), summary_(summary) {}

  /// Hands out the item's bytes; false when the callback asked to stop or an error was left in
  /// status().
  bool take(Item& item, std::vector<std::byte>& buffer, TransformStage& transformer) {
    switch (item.kind) {
    case ItemKind::open_file:
      file_ = &plan_.files[item.file];
      k_ = 0;
      done_ = 0;
      return hand_out_empty();
    case ItemKind::close_file:
      if (!hand_out_empty())
        return false;
      if (k_ != file_->tensors.size())
        return fail("a file's items ended before its tensors");
      return true;
    case ItemKind::copy_run:
      return take_copy(item);
    case ItemKind::transform:
    case ItemKind::ones:
      return take_produced(item, buffer, transformer);
    }
    return fail("unknown item");
  }

  const Status& status() const { return status_; }
  /// The callback returned false (status() is ok then).
  bool stopped() const { return stopped_; }

private:
  const OutputTensor& current() const { return plan_.tensors[file_->tensors[k_]]; }

  bool fail(const std::string& what) {
    status_ = error(Errc::format, "tensor stream: internal error: " + what);
    return false;
  }

  // Calls the callback with pieces of at most max_piece_bytes of `bytes`, the current tensor's
  // bytes from offset done_; moves to the next tensor when its last byte is out.
  bool hand_out(std::span<const std::byte> bytes, const MappedFile* mapped) {
    const OutputTensor& t = current();
    const ConvertedTensor view{t.name, t.dtype, t.shape, t.size, t.op, file_->name};
    for (uint64_t at = 0; at < bytes.size();) {
      if (options_.cancel && options_.cancel->load()) {
        status_ = error(Errc::interrupted, "interrupted");
        return false;
      }
      const auto piece =
          bytes.subspan(at, std::min<uint64_t>(bytes.size() - at, options_.max_piece_bytes));
      bool more = true;
      if (mapped) {
        // A view of the mapping: touch its pages under the guard first, so that a file that
        // shrank is reported before the callback sees the piece; the callback itself runs under
        // the guard too, so a file that shrinks while it reads is an error, not a crash.
        mapped->populate(static_cast<uint64_t>(piece.data() - mapped->bytes().data()),
                         piece.size());
        Status guarded = guard_mapped_access(*mapped, [&] {
          for (uint64_t p = 0; p < piece.size(); p += 4096)
            (void)*static_cast<const volatile std::byte*>(piece.data() + p);
          more = callback_(view, piece, done_);
        });
        if (!guarded.ok()) {
          status_ = std::move(guarded);
          return false;
        }
      } else {
        more = callback_(view, piece, done_);
      }
      done_ += piece.size();
      summary_.bytes += piece.size();
      at += piece.size();
      if (done_ == t.size)
        next_tensor();
      if (!more) {
        stopped_ = true;
        return false;
      }
    }
    return true;
  }

  void next_tensor() {
    ++k_;
    done_ = 0;
    ++summary_.tensors;
  }

  // Tensors of zero bytes get no item of their own (or an empty one): each gets one call with an
  // empty piece when the walk reaches it.
  bool hand_out_empty() {
    while (k_ < file_->tensors.size() && current().size == 0) {
      const OutputTensor& t = current();
      const ConvertedTensor view{t.name, t.dtype, t.shape, t.size, t.op, file_->name};
      const bool more = callback_(view, {}, 0);
      next_tensor();
      if (!more) {
        stopped_ = true;
        return false;
      }
    }
    return true;
  }

  // A copy run covers pass-through tensors that lie back to back in the input as in the output;
  // the piece [in_offset, in_offset + length) is split at their boundaries.
  bool take_copy(const Item& item) {
    uint64_t at = item.in_offset;
    const uint64_t end = item.in_offset + item.length;
    while (at < end) {
      if (!hand_out_empty())
        return false;
      if (k_ == file_->tensors.size() || current().op != OpKind::copy)
        return fail("a copy run outlasts its tensors");
      const OutputTensor& t = current();
      const uint64_t begin = input_.file_offset(t.source);
      if (at != begin + done_)
        return fail("a copy run skips bytes of '" + t.name + "'");
      const uint64_t length = std::min(end, begin + t.size) - at;
      const auto bytes = input_.bytes(t.source).subspan(done_, length);
      if (!hand_out(bytes, item.shard->file.get()))
        return false;
      at += length;
    }
    return true;
  }

  // Transform chunks and ones: the TransformStage fills the buffer, as in the pipeline.
  bool take_produced(Item& item, std::vector<std::byte>& buffer, TransformStage& transformer) {
    if (!hand_out_empty())
      return false;
    if (k_ == file_->tensors.size() || item.tensor != &current())
      return fail("an item out of order");
    if (buffer.size() < item.length)
      buffer.resize(item.length);
    item.buffer = item.args.dst = buffer.data();
    transformer.run(item);
    if (!item.status.ok()) {
      status_ = item.status;
      return false;
    }
    return hand_out({buffer.data(), item.length}, nullptr);
  }

  const Checkpoint& input_;
  const Plan& plan_;
  const StreamOptions& options_;
  const TensorPieceCallback& callback_;
  StreamSummary& summary_;
  const OutputFile* file_ = nullptr;
  size_t k_ = 0;
  uint64_t done_ = 0;
  Status status_;
  bool stopped_ = false;
};

} // namespace

Result<StreamSummary> for_each_converted_tensor(const std::filesystem::path& input,
                                                const PlanOptions& plan_options,
                                                const StreamOptions& options,
                                                const TensorPieceCallback& callback) {
  if (options.max_piece_bytes == 0)
    return error(Errc::invalid_argument, "tensor stream: max_piece_bytes must be positive");
  auto opened = open_for_plan(input, plan_options);
  if (!opened)
    return opened.status();
  const Checkpoint& checkpoint = *opened;
  auto planned = make_plan(checkpoint, plan_options);
  if (!planned)
    return planned.status();
  const Plan& plan = *planned;

  StreamSummary summary;
  summary.adapter = plan.adapter;
  summary.direction = plan.direction;

  // Every file, in plan order, through one Emitter on this thread: items come in output order.
  // The chunk is the piece bound (transform chunks are cut to it; one expert row longer than it
  // is cut again when handed out), and the CPU does every transform (no GPU staging to set up
  // for what is usually a one-off walk).
  std::vector<uint32_t> files(plan.files.size());
  for (uint32_t f = 0; f < files.size(); ++f)
    files[f] = f;
  FileQueue queue(files, plan);
  Emitter emitter(checkpoint, plan, options.max_piece_bytes, nullptr, queue);
  Profiler profiler(false);
  TransformStage transformer(nullptr, nullptr, profiler);
  TensorWalk walk(checkpoint, plan, options, callback, summary);
  std::vector<std::byte> buffer;

  while (std::unique_ptr<Item> item = emitter.next()) {
    const bool more = walk.take(*item, buffer, transformer);
    // What the item read of the input is done with: drop it from the mapping, as the pipeline's
    // write stage does, so the resident set stays flat.
    item->release_input();
    if (!more) {
      if (!walk.stopped())
        return walk.status();
      return summary;
    }
  }
  summary.complete = true;
  return summary;
}

} // namespace shardshift
