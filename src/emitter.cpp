// emitter.cpp: cutting the plan into work items. Copies become the longest runs that are
// contiguous in one input shard (one copy_file_range each); expert tensors become chunks of whole
// experts, or of output rows of one expert when an expert is larger than a chunk.
#include "emitter.h"

#include <algorithm>

namespace shardshift {

std::shared_ptr<FileWork> FileQueue::take() {
  const size_t i = next_.fetch_add(1);
  if (i >= files_.size())
    return nullptr;
  auto work = std::make_shared<FileWork>();
  work->at.file = files_[i];
  const OutputFile& file = plan_.files[files_[i]];
  work->left = file.data_size;
  if (filled_) {
    work->fill = std::make_shared<FillingFile>();
    work->fill->file = &file;
  }
  if (help_) {
    std::lock_guard lock(mu_);
    std::erase_if(active_, [](const std::shared_ptr<FileWork>& w) { return w->left.load() == 0; });
    active_.push_back(work);
  }
  return work;
}

std::shared_ptr<FileWork> FileQueue::help() {
  if (!help_)
    return nullptr;
  std::lock_guard lock(mu_);
  std::shared_ptr<FileWork> best;
  uint64_t best_left = 0, total_left = 0;
  for (const auto& w : active_) {
    const uint64_t left = w->left.load();
    total_left += left;
    if (left > best_left && w->fill->opened.load(std::memory_order_acquire)) {
      best = w;
      best_left = left;
    }
  }
  // Only the file that would otherwise be written last, by its lane alone: one holding more than
  // half of what is left. Lanes that fill one file together cost the kernel more per byte (all
  // but one of them copy through the mapping), which pays only where cores would idle.
  if (!best || 2 * best_left <= total_left)
    return nullptr;
  return best;
}

std::unique_ptr<Item> Emitter::next() {
  for (;;) {
    if (!work_) {
      work_ = queue_.take();
      helping_ = !work_;
      if (!work_)
        work_ = queue_.help();
      if (!work_)
        return nullptr;
    }
    std::unique_ptr<Item> item;
    {
      std::lock_guard lock(work_->mu);
      at_ = &work_->at;
      item = cut();
      if (item && work_->fill) {
        item->fill = work_->fill;
        item->fill_seq = at_->seq++;
        work_->fill->release.cut(item->fill_seq);
      }
      if (item && item->is_data()) {
        if (work_->fill) {
          item->fill_offset = at_->offset;
          at_->offset += item->length;
          work_->fill->pending.fetch_add(1); // given back when the item is filled
        }
        work_->left -= item->length;
        if (helping_)
          helped_bytes_ += item->length;
      }
      at_ = nullptr;
    }
    if (item) {
      if (item->kind == ItemKind::close_file)
        work_.reset();
      return item;
    }
    work_.reset(); // cut to its end by another lane
  }
}

// The current file's next item, from the cursor at_.
std::unique_ptr<Item> Emitter::cut() {
  for (;;) {
    if (at_->closed)
      return nullptr;
    const OutputFile& file = plan_.files[at_->file];
    if (!at_->opened) {
      at_->opened = true;
      at_->offset = file.header.size();
      return make(ItemKind::open_file);
    }
    if (at_->k == file.tensors.size()) {
      at_->closed = true;
      return make(ItemKind::close_file);
    }
    const OutputTensor& t = plan_.tensors[file.tensors[at_->k]];
    switch (t.op) {
    case OpKind::copy:
      return copy_piece(file);
    case OpKind::ones: {
      auto item = make(ItemKind::ones);
      item->tensor = &t;
      item->length = t.size;
      ++at_->k;
      return item;
    }
    case OpKind::transpose:
      if (auto item = transform_chunk(t))
        return item;
      break; // an empty tensor: nothing to do, move on
    case OpKind::stack:
      if (auto item = stack_chunk(t))
        return item;
      break;
    case OpKind::dequant:
      if (auto item = dequant_chunk(t))
        return item;
      break;
    case OpKind::quantize:
    case OpKind::quantize_scale:
      if (auto item = quantize_chunk(t))
        return item;
      break;
    }
  }
}

std::unique_ptr<Item> Emitter::make(ItemKind kind) {
  auto item = std::make_unique<Item>();
  item->kind = kind;
  item->file = at_->file;
  item->release_after = at_->seq; // the input it releases is its own, unless set otherwise
  return item;
}

// Pass-through tensors that lie back to back in one input shard form a run, copied as one range.
// A run is cut into pieces of at most a chunk, so that a copy that falls back to writing from the
// mapping (another filesystem, a pipe) holds at most a chunk of input pages before they are
// released, like a transform chunk. Piece boundaries inside a run sit at page multiples of the
// input offset, so a run whose output offset the plan kept congruent (reflink_alignment) is cut
// at whole blocks on both sides and can still share extents.
std::unique_ptr<Item> Emitter::copy_piece(const OutputFile& file) {
  const OutputTensor& first = plan_.tensors[file.tensors[at_->k]];
  const uint64_t run_begin = in_.file_offset(first.source);
  uint64_t run_end = run_begin;
  size_t j = at_->k;
  while (j < file.tensors.size()) {
    const OutputTensor& t = plan_.tensors[file.tensors[j]];
    if (t.op != OpKind::copy || t.source.shard != first.source.shard ||
        in_.file_offset(t.source) != run_end)
      break;
    run_end += t.size;
    ++j;
  }
  const uint64_t begin = run_begin + at_->run_done;
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
    at_->k = j;
    at_->run_done = 0;
  } else {
    at_->run_done = end - run_begin;
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
    ++at_->k;
    return nullptr;
  }
  auto item = make(ItemKind::transform);
  item->tensor = &t;
  item->shard = &in_.shard(t.source);
  uint64_t e0 = at_->e, c0 = at_->c, ne, nc;
  if (std::max(expert_out, expert_in) <= chunk_) {
    ne = std::min(t.experts - e0, chunk_ / std::max(expert_out, expert_in));
    nc = t.cols;
    at_->e += ne;
  } else {
    ne = 1;
    nc = std::min(t.cols - c0, std::max<uint64_t>(1, chunk_ / out_row));
    if (c0 == 0)
      at_->readers = at_->seq; // every chunk of this expert reads all of its input
    item->release_after = at_->readers;
    at_->c += nc;
    if (at_->c == t.cols) {
      at_->c = 0;
      ++at_->e;
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
  if (at_->c == 0) {
    item->release_offset = in_base;
    item->release_length = ne * expert_in;
  }
  item->shard->file->will_need(in_base, ne * expert_in);
  if (at_->e == t.experts) {
    at_->e = 0;
    ++at_->k;
  }
  return item;
}

// Rows per chunk when a tensor is cut into rows: at least one, and whole 128-row block rows when
// a chunk holds one or more, so that a chunk of a dequantized weight reads each of its scales'
// blocks once (the bytes do not depend on the cut).
uint64_t Emitter::block_rows(uint64_t rows) {
  if (rows >= FP8_BLOCK)
    return rows / FP8_BLOCK * FP8_BLOCK;
  return std::max<uint64_t>(1, rows);
}

// A part that dequantizes (semantics 15.3): `source` [A, B] with its block scale, output rows
// [begin, begin + count) of the weight (rows, or columns when transposed), rows `pitch` apart.
void Emitter::set_dequant(StackPart& part, TensorRef source, TensorRef scale, bool transpose,
                          uint64_t begin, uint64_t count, uint64_t pitch, DType dst) {
  const TensorInfo& info = in_.info(source);
  const TensorInfo& sc = in_.info(scale);
  part.dequant = true;
  DequantArgs& d = part.dq;
  d.src = in_.bytes(source).data();
  d.scales = in_.bytes(scale).data();
  d.R = info.shape[0];
  d.C = info.shape[1];
  d.transpose = transpose;
  d.begin = begin;
  d.count = count;
  d.dst_pitch = pitch;
  d.src_dtype = info.dtype;
  d.scale_dtype = sc.dtype;
  d.dst_dtype = dst;
  part.scale_shard = &in_.shard(scale);
  part.scale_bytes = in_.bytes(scale).size();
}

// The next chunk of a dequantized weight [R, C] (semantics 15.3): a range of whole rows, in
// 128-row block rows when the chunk holds one. Input rows are released once written.
std::unique_ptr<Item> Emitter::dequant_chunk(const OutputTensor& t) {
  const TensorInfo& src = in_.info(t.source);
  const uint64_t R = t.shape[0], C = t.shape[1];
  if (R == 0 || C == 0) {
    ++at_->k;
    return nullptr;
  }
  const uint64_t es_in = dtype_bits(src.dtype) / 8, es_out = dtype_bits(t.dtype) / 8;
  const uint64_t out_row = C * es_out, in_row = C * es_in;
  const uint64_t r0 = at_->c;
  const uint64_t nr = std::min(R - r0, block_rows(chunk_ / std::max(out_row, in_row)));
  auto item = make(ItemKind::transform);
  item->tensor = &t;
  StackPart part;
  part.shard = &in_.shard(t.source);
  set_dequant(part, t.source, *t.scale, false, r0, nr, 0, t.dtype);
  const uint64_t in_offset = in_.file_offset(t.source) + r0 * in_row;
  part.shard->file->will_need(in_offset, nr * in_row);
  item->releases.push_back({part.shard, in_offset, nr * in_row});
  item->shard = part.shard;
  item->parts.push_back(part);
  item->length = nr * out_row;
  item->on_gpu = gpu_ != nullptr; // dequant_cuda.cu, same bits as the CPU
  at_->c += nr;
  if (at_->c == R) {
    at_->c = 0;
    ++at_->k;
  }
  return item;
}

// The next chunk of a stacked tensor [N, R, C] (semantics 14.1): whole experts when one expert's
// output and its pieces fit in a chunk, else a range of output rows of one expert. Output row j
// of expert e is row j of every piece's transpose, side by side, so a chunk is one strided
// transpose per piece of its experts, each into its columns of the buffer. The pieces may lie in
// different shards; each is released once its expert's last row is written.
std::unique_ptr<Item> Emitter::stack_chunk(const OutputTensor& t) {
  const uint64_t N = t.shape[0], R = t.shape[1], C = t.shape[2];
  if (N == 0 || R == 0 || C == 0 || t.pieces.empty()) {
    ++at_->k;
    return nullptr;
  }
  const uint64_t per_expert = t.pieces.size() / N; // validated: every expert has every piece
  const uint64_t es_out = dtype_bits(t.dtype) / 8;
  const uint64_t out_row = C * es_out, expert_out = R * out_row;
  uint64_t expert_in = 0;
  for (uint64_t j = 0; j < per_expert; ++j)
    expert_in += in_.bytes(t.pieces[j].source).size();
  auto item = make(ItemKind::transform);
  item->tensor = &t;
  const uint64_t e0 = at_->e, r0 = at_->c;
  uint64_t ne, nr;
  if (std::max(expert_out, expert_in) <= chunk_) {
    ne = std::min(N - e0, chunk_ / std::max(expert_out, expert_in));
    nr = R;
    at_->e += ne;
  } else {
    ne = 1;
    nr = std::min(R - r0, block_rows(chunk_ / out_row));
    if (r0 == 0)
      at_->readers = at_->seq; // every chunk of this expert reads all of its pieces
    item->release_after = at_->readers;
    at_->c += nr;
    if (at_->c == R) {
      at_->c = 0;
      ++at_->e;
    }
  }
  for (uint64_t e = e0; e < e0 + ne; ++e)
    for (uint64_t j = 0; j < per_expert; ++j) {
      const StackPiece& p = t.pieces[e * per_expert + j];
      const TensorInfo& info = in_.info(p.source);
      const uint64_t in_offset = in_.file_offset(p.source);
      const uint64_t in_bytes = in_.bytes(p.source).size();
      StackPart part;
      part.shard = &in_.shard(p.source);
      TransposeArgs& a = part.args;
      a.src = in_.bytes(p.source).data();
      a.experts = 1;
      a.A = info.shape[0];
      a.B = info.shape[1];
      a.col_begin = t.col_begin + r0; // EP second sharding: this rank's rows start there
      a.cols = nr;
      a.src_dtype = info.dtype;
      a.dst_dtype = t.dtype;
      a.dst_pitch = C;
      part.dst_offset = (e - e0) * nr * out_row + p.col * es_out;
      if (p.scale)
        set_dequant(part, p.source, *p.scale, true, t.col_begin + r0, nr, C, t.dtype);
      if (r0 == 0)
        part.shard->file->will_need(in_offset, in_bytes);
      if (at_->c == 0)
        item->releases.push_back({part.shard, in_offset, in_bytes});
      item->parts.push_back(part);
    }
  item->shard = item->parts.front().shard;
  item->length = ne * nr * out_row;
  // The CUDA stage dequantizes (dequant_cuda.cu, same bits); plain transposes of stacked pieces
  // move bytes only and stay on the CPU (the GPU round trip costs a thread more than they do).
  item->on_gpu = gpu_ != nullptr && std::all_of(item->parts.begin(), item->parts.end(),
                                                [](const StackPart& p) { return p.dequant; });
  if (at_->e == N) {
    at_->e = 0;
    ++at_->k;
  }
  return item;
}

// The next chunk of a --quantize fp8 output (semantics 15.7). The matrix X [R, C] is a 2-D
// source, or (3-D source) columns [col_begin, col_begin + R) of expert expert_begin, transposed.
// A chunk of codes is a range of X's rows, in whole 128-row block rows when the chunk holds one
// (a row range that cuts a block still reads the whole block for its scale); a chunk of scales is
// a range of block rows. The input rows read are released once written; an expert's whole input
// once the tensor's last chunk is (every chunk reads across all its rows).
std::unique_ptr<Item> Emitter::quantize_chunk(const OutputTensor& t) {
  const TensorInfo& src = in_.info(t.source);
  const bool expert = src.shape.size() == 3;
  const uint64_t es_in = dtype_bits(src.dtype) / 8;
  QuantizeArgs q;
  q.src_dtype = src.dtype;
  q.scales = t.op == OpKind::quantize_scale;
  uint64_t in_base = in_.file_offset(t.source), in_bytes = 0;
  if (expert) {
    const uint64_t A = src.shape[1], B = src.shape[2];
    q.R = t.cols;
    q.C = A;
    q.row_stride = 1;
    q.col_stride = B;
    in_base += t.expert_begin * A * B * es_in;
    in_bytes = A * B * es_in;
    q.src = in_.bytes(t.source).data() + (t.expert_begin * A * B + t.col_begin) * es_in;
  } else {
    q.R = src.shape[0];
    q.C = src.shape[1];
    q.src = in_.bytes(t.source).data();
  }
  const uint64_t units = q.scales ? scale_blocks(q.R) : q.R;
  if (units == 0 || q.C == 0) {
    ++at_->k;
    return nullptr;
  }
  // Bytes per unit: a row of codes reads a row of X; a block row of scales reads 128 rows.
  const uint64_t unit_in = q.C * es_in * (q.scales ? FP8_BLOCK : 1);
  const uint64_t unit_out = q.scales ? scale_blocks(q.C) * 4 : q.C;
  const uint64_t per_chunk = chunk_ / std::max(unit_in, unit_out);
  q.begin = at_->c;
  q.count =
      std::min(units - at_->c, q.scales ? std::max<uint64_t>(1, per_chunk) : block_rows(per_chunk));
  auto item = make(ItemKind::transform);
  item->tensor = &t;
  item->shard = &in_.shard(t.source);
  item->length = q.count * unit_out;
  item->on_gpu = false; // no CUDA kernel: the CPU on every device, same bits
  if (q.begin == 0)
    at_->readers = at_->seq;
  // An expert's chunks all read its whole input; a 2-D source's, a block cut between two chunks.
  item->release_after = expert ? at_->readers : at_->seq - (q.begin > 0 ? 1 : 0);
  at_->c += q.count;
  const bool last = at_->c == units;
  if (!expert) {
    // X's rows [first, end) as read by this chunk (whole blocks, for the scales).
    const uint64_t first = q.scales ? q.begin * FP8_BLOCK : q.begin / FP8_BLOCK * FP8_BLOCK;
    const uint64_t end = std::min(q.R, q.scales ? (q.begin + q.count) * FP8_BLOCK
                                                : scale_blocks(q.begin + q.count) * FP8_BLOCK);
    const uint64_t row = q.C * es_in;
    item->shard->file->will_need(in_base + first * row, (end - first) * row);
    // Release only rows no later chunk of this tensor reads again (a cut block is read twice).
    const uint64_t done = last || q.scales ? end : (q.begin + q.count) / FP8_BLOCK * FP8_BLOCK;
    const uint64_t from = std::min(first, done);
    if (done > from)
      item->releases.push_back({item->shard, in_base + from * row, (done - from) * row});
  } else {
    if (q.begin == 0)
      item->shard->file->will_need(in_base, in_bytes);
    if (last)
      item->releases.push_back({item->shard, in_base, in_bytes});
  }
  item->quantize = q;
  item->quantize_source = src.name;
  if (last) {
    at_->c = 0;
    ++at_->k;
  }
  return item;
}

} // namespace shardshift
