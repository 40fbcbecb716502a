// emitter.cpp: cutting the plan into work items. Copies become the longest runs that are
// contiguous in one input shard (one copy_file_range each); expert tensors become chunks of whole
// experts, or of output rows of one expert when an expert is larger than a chunk.
#include "emitter.h"

#include <algorithm>

namespace shardshift {

std::unique_ptr<Item> Emitter::next() {
  while (f_ < end_) {
    const OutputFile& file = plan_.files[f_];
    if (!opened_) {
      opened_ = true;
      return make(ItemKind::open_file);
    }
    if (k_ == file.tensors.size()) {
      auto item = make(ItemKind::close_file);
      ++f_;
      k_ = 0;
      opened_ = false;
      return item;
    }
    const OutputTensor& t = plan_.tensors[file.tensors[k_]];
    switch (t.op) {
    case OpKind::copy:
      return copy_run(file);
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
  return nullptr;
}

std::unique_ptr<Item> Emitter::make(ItemKind kind) {
  auto item = std::make_unique<Item>();
  item->kind = kind;
  item->file = static_cast<uint32_t>(f_);
  return item;
}

// A run of pass-through tensors that lie back to back in one input shard becomes one copy.
std::unique_ptr<Item> Emitter::copy_run(const OutputFile& file) {
  const OutputTensor& first = plan_.tensors[file.tensors[k_]];
  auto item = make(ItemKind::copy_run);
  item->tensor = &first;
  item->shard = &in_.shard(first.source);
  item->in_offset = in_.file_offset(first.source);
  uint64_t end = item->in_offset;
  while (k_ < file.tensors.size()) {
    const OutputTensor& t = plan_.tensors[file.tensors[k_]];
    if (t.op != OpKind::copy || t.source.shard != first.source.shard ||
        in_.file_offset(t.source) != end)
      break;
    end += t.size;
    ++item->run_tensors;
    ++k_;
  }
  item->length = end - item->in_offset;
  item->release_offset = item->in_offset;
  item->release_length = item->length;
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
