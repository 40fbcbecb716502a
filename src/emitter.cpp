// emitter.cpp: cutting the plan into work items. Copies become the longest runs that are
// contiguous in one input shard (one copy_file_range each); expert tensors become chunks of whole
// experts, or of output rows of one expert when an expert is larger than a chunk.
#include "emitter.h"

#include <algorithm>

namespace shardshift {

std::unique_ptr<Item> Emitter::next() {
  for (;;) {
    if (!have_file_) {
      if (!queue_.take(&f_))
        return nullptr;
      have_file_ = true;
      opened_ = false;
      k_ = 0;
    }
    const OutputFile& file = plan_.files[f_];
    if (!opened_) {
      opened_ = true;
      return make(ItemKind::open_file);
    }
    if (k_ == file.tensors.size()) {
      have_file_ = false;
      return make(ItemKind::close_file);
    }
    const OutputTensor& t = plan_.tensors[file.tensors[k_]];
    switch (t.op) {
    case OpKind::copy:
      return copy_piece(file);
    case OpKind::ones: {
      auto item = make(ItemKind::ones);
      item->tensor = &t;
      item->length = t.size;
      ++k_;
      return item;
    }
    case OpKind::transpose:
      if (auto item = transform_chunk(t))
        return item;
      break; // an empty tensor: nothing to do, move on
    }
  }
}

std::unique_ptr<Item> Emitter::make(ItemKind kind) {
  auto item = std::make_unique<Item>();
  item->kind = kind;
  item->file = static_cast<uint32_t>(f_);
  return item;
}

// Pass-through tensors that lie back to back in one input shard form a run, copied as one range.
// A run is cut into pieces of at most a chunk, so that a copy that falls back to writing from the
// mapping (another filesystem, a pipe) holds at most a chunk of input pages before they are
// released, like a transform chunk. Piece boundaries inside a run sit at page multiples of the
// input offset, so a run whose output offset the plan kept congruent (reflink_alignment) is cut
// at whole blocks on both sides and can still share extents.
std::unique_ptr<Item> Emitter::copy_piece(const OutputFile& file) {
  const OutputTensor& first = plan_.tensors[file.tensors[k_]];
  const uint64_t run_begin = in_.file_offset(first.source);
  uint64_t run_end = run_begin;
  size_t j = k_;
  while (j < file.tensors.size()) {
    const OutputTensor& t = plan_.tensors[file.tensors[j]];
    if (t.op != OpKind::copy || t.source.shard != first.source.shard ||
        in_.file_offset(t.source) != run_end)
      break;
    run_end += t.size;
    ++j;
  }
  const uint64_t begin = run_begin + run_done_;
  uint64_t end = run_end;
  if (end - begin > chunk_) {
    end = (begin + chunk_) / 4096 * 4096;
    if (end <= begin)
      end = begin + chunk_;
  }
  auto item = make(ItemKind::copy_run);
  item->tensor = &first;
  item->shard = &in_.shard(first.source);
  item->in_offset = begin;
  item->length = end - begin;
  item->release_offset = begin;
  item->release_length = item->length;
  if (end == run_end) {
    k_ = j;
    run_done_ = 0;
  } else {
    run_done_ = end - run_begin;
  }
  return item;
}

// The next chunk of an expert tensor: whole experts when one expert's input and output fit in a
// chunk, else a range of output rows of a single expert (CPU only: the GPU takes whole experts).
std::unique_ptr<Item> Emitter::transform_chunk(const OutputTensor& t) {
  const TensorInfo& src = in_.info(t.source);
  const uint64_t A = src.shape[1], B = src.shape[2];
  const uint64_t es_in = dtype_bits(src.dtype) / 8, es_out = dtype_bits(t.dtype) / 8;
  const uint64_t out_row = A * es_out; // one output row (one input column)
  const uint64_t expert_out = t.cols * out_row;
  const uint64_t expert_in = A * B * es_in;
  if (t.experts == 0 || t.cols == 0 || A == 0) {
    ++k_;
    return nullptr;
  }
  auto item = make(ItemKind::transform);
  item->tensor = &t;
  item->shard = &in_.shard(t.source);
  uint64_t e0 = e_, c0 = c_, ne, nc;
  if (std::max(expert_out, expert_in) <= chunk_) {
    ne = std::min(t.experts - e0, chunk_ / std::max(expert_out, expert_in));
    nc = t.cols;
    e_ += ne;
  } else {
    ne = 1;
    nc = std::min(t.cols - c0, std::max<uint64_t>(1, chunk_ / out_row));
    c_ += nc;
    if (c_ == t.cols) {
      c_ = 0;
      ++e_;
    }
  }
  const uint64_t in_base = in_.file_offset(t.source) + (t.expert_begin + e0) * expert_in;
  TransposeArgs& a = item->args;
  a.src = in_.bytes(t.source).data() + (t.expert_begin + e0) * expert_in;
  a.experts = ne;
  a.A = A;
  a.B = B;
  a.col_begin = t.col_begin + c0;
  a.cols = nc;
  a.src_dtype = src.dtype;
  a.dst_dtype = t.dtype;
  if (t.scale) {
    const TensorInfo& sc = in_.info(*t.scale);
    a.scales = in_.bytes(*t.scale).data() + (t.expert_begin + e0) * (dtype_bits(sc.dtype) / 8);
    a.scale_dtype = sc.dtype;
  }
  item->length = ne * nc * out_row;
  item->on_gpu = gpu_ && nc == t.cols; // the GPU stage works on whole expert matrices
  // The input experts are released once their last output row is written.
  if (c_ == 0) {
    item->release_offset = in_base;
    item->release_length = ne * expert_in;
  }
  item->shard->file->will_need(in_base, ne * expert_in);
  if (e_ == t.experts) {
    e_ = 0;
    ++k_;
  }
  return item;
}

} // namespace shardshift
